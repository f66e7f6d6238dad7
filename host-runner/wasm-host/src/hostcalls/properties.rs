//! Properties.

use wasmtime::{Caller, Linker};

use crate::host_state::HostState;
use crate::memory::{copy_out, finish, read, with_bytes};
use crate::properties;

pub fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, HostState>, pp: u32, ps: u32, vpp: u32, vsp: u32| {
            finish((|| {
                let value = with_bytes(&mut c, pp, ps, |path, state| {
                    let stream = state.stream();
                    let data = stream.as_ref().map(|(s, _)| s.borrow());
                    properties::get(&state.plugin, &state.services, data.as_deref(), path)
                })??;
                copy_out(&mut c, &value.serialise()?, vpp, vsp)
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_set_property", |c: Caller<'_, HostState>, pp: u32, ps: u32, vp: u32, vs: u32| {
        finish((|| {
            let path = read(&c, pp, ps)?;
            let value = read(&c, vp, vs)?;
            let stream = c.data().stream();
            let mut data = stream.as_ref().map(|(s, _)| s.borrow_mut());
            Ok(properties::set(data.as_deref_mut(), &path, &value)?)
        })())
    })?;
    Ok(())
}
