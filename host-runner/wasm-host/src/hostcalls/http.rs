//! HTTP callouts (`proxy_http_call`).

use std::time::Duration;

use bytes::Bytes;
use wasmtime::{Caller, Linker};

use crate::abi::Status;
use crate::headers::{HeaderMap, decode_pairs};
use crate::host_state::{HostState, HttpCallRequest};
use crate::memory::{finish, read, read_string, write_u32};

/// Callout headers; a header HTTP cannot carry (CR/LF/NUL, bad name) refuses the call rather
/// than being dropped on the way.
fn to_map(pairs: &[u8]) -> Result<HeaderMap, Status> {
    let mut map = HeaderMap::new();
    for (k, v) in decode_pairs(pairs).unwrap_or_default() {
        map.add(&k.to_ascii_lowercase(), v).map_err(|_| Status::BadArgument)?;
    }
    Ok(map)
}

pub fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, HostState>,
         up: u32,
         us: u32,
         hp: u32,
         hs: u32,
         bp: u32,
         bs: u32,
         tp: u32,
         ts: u32,
         timeout_ms: u32,
         token_ptr: u32| {
            finish((|| {
                let cluster = read_string(&c, up, us)?;
                let headers = read(&c, hp, hs)?;
                let body = Bytes::from(read(&c, bp, bs)?);
                let trailers = read(&c, tp, ts)?;
                write_u32(&mut c, token_ptr, 0)?;
                let headers = to_map(&headers)?;
                let trailers = to_map(&trailers)?;
                if timeout_ms > i32::MAX as u32 {
                    return Err(Status::BadArgument.into());
                }
                if !c.data().clusters.contains(&cluster) {
                    tracing::debug!(filter = %c.data().plugin.name, %cluster, "proxy_http_call to an unknown cluster");
                    return Err(Status::BadArgument.into());
                }
                if [&b":path"[..], b":method", b":authority"].iter().any(|h| headers.get(h).is_none()) {
                    return Err(Status::BadArgument.into());
                }
                let state = c.data_mut();
                // The spec's answer when the host cannot send the call.
                let token = state.start_callout().ok_or(Status::InternalFailure)?;
                // 0 is "no timeout" in Envoy; here it is the longest a VM may wait, so a
                // forgotten callout cannot hold its context (and its stream) forever.
                let max = state.plugin.limits.max_callout_timeout;
                let timeout = match timeout_ms {
                    0 => max,
                    ms => Duration::from_millis(ms as u64).min(max),
                };
                state.effects.http_calls.push(HttpCallRequest { token, cluster, headers, body, trailers, timeout });
                write_u32(&mut c, token_ptr, token)
            })())
        },
    )?;
    Ok(())
}
