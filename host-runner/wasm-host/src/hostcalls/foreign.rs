//! `proxy_call_foreign_function`: Envoy's registered functions (see [`crate::foreign`]). They
//! act on the calling (not the effective) context, as Envoy's do; the result pointer and size
//! are always written, `(0, 0)` when there is no result.

use wasmtime::{Caller, Linker};

use crate::foreign::{self, StreamEffect};
use crate::host_state::{Ctx, HostState};
use crate::memory::{copy_out, finish, read};

pub fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: Caller<'_, HostState>, np: u32, ns: u32, ap: u32, as_: u32, rpp: u32, rsp: u32| {
            finish((|| {
                let name = read(&c, np, ns)?;
                let args = read(&c, ap, as_)?;
                let state = c.data();
                let stream = match state.contexts.get(&state.current_context) {
                    Some(Ctx::Stream { stream, .. }) => Some(stream.clone()),
                    _ => None,
                };
                let outcome = match foreign::call(&name, &args, stream.is_some()) {
                    Ok(o) => o,
                    Err(status) => {
                        let _ = copy_out(&mut c, &[], rpp, rsp);
                        return Err(status.into());
                    }
                };
                if let (Some(stream), Some(effect)) = (&stream, outcome.effect) {
                    let mut s = stream.borrow_mut();
                    match effect {
                        StreamEffect::SetFilterState { path, value } => {
                            s.filter_state.insert(path, value);
                        }
                        StreamEffect::ClearRouteCache => s.route_cache_cleared = true,
                    }
                }
                copy_out(&mut c, &outcome.result, rpp, rsp)
            })())
        },
    )?;
    Ok(())
}
