//! Buffers: bodies, callout responses, configurations, call data.

use bytes::{Bytes, BytesMut};
use wasmtime::{Caller, Linker};

use crate::abi::{BufferType, Status};
use crate::host_state::HostState;
use crate::memory::{Hc, copy_out, finish, read, write_u32};
use crate::stream_data::Dir;

/// A buffer's bytes as the effective context sees them. `None` is Envoy's "not available"
/// (NotFound); bodies outside their callbacks read as empty, as in Envoy.
fn snapshot(state: &HostState, t: BufferType) -> Option<Bytes> {
    match t {
        BufferType::HttpRequestBody
        | BufferType::HttpResponseBody
        | BufferType::DownstreamData
        | BufferType::UpstreamData => {
            let Some((stream, stage)) = state.stream() else {
                return Some(Bytes::new());
            };
            let data = stream.borrow();
            // A body on an HTTP stream, connection data on a TCP one; the other kind is empty.
            if data.network != matches!(t, BufferType::DownstreamData | BufferType::UpstreamData) {
                return Some(Bytes::new());
            }
            let s = &data.stages[stage];
            let d = body_dir(t);
            Some(if s.access.body[d] { Bytes::copy_from_slice(s.body[d].as_slice()) } else { Bytes::new() })
        }
        BufferType::GrpcReceiveBuffer => {
            Some(state.grpc_received.as_ref().map_or_else(Bytes::new, |r| r.message.clone()))
        }
        BufferType::HttpCallResponseBody => state.callout_response.as_ref().map(|r| r.body.clone()),
        BufferType::VmConfiguration => Some(state.plugin.vm_configuration.clone()),
        BufferType::PluginConfiguration => state.plugin_config_readable.then(|| state.plugin.configuration.clone()),
        BufferType::CallData => Some(state.call_data.clone()),
    }
}

/// Request body and downstream data travel towards the upstream; the others towards the client.
fn body_dir(t: BufferType) -> Dir {
    if matches!(t, BufferType::HttpRequestBody | BufferType::DownstreamData) { Dir::Request } else { Dir::Response }
}

fn buffer_type(raw: u32) -> Hc<BufferType> {
    BufferType::from_raw(raw).ok_or(Status::BadArgument.into())
}

/// Envoy's `copyFrom` on a body: start 0 drains `length` bytes then prepends; start at or past
/// the end appends; anything in between is refused.
fn edit(buf: &mut BytesMut, start: u32, length: u32, data: &[u8]) -> Result<(), Status> {
    let (start, length) = (start as usize, length as usize);
    if start == 0 {
        let drained = length.min(buf.len());
        let rest = buf.split_off(drained);
        buf.clear();
        buf.extend_from_slice(data);
        buf.extend_from_slice(&rest);
        Ok(())
    } else if start >= buf.len() {
        buf.extend_from_slice(data);
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
}

pub fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>, t: u32, start: u32, max: u32, pp: u32, sp: u32| {
            finish((|| {
                let t = buffer_type(t)?;
                let bytes = snapshot(c.data(), t).ok_or(Status::NotFound)?;
                // Out-of-range requests are clamped, never refused.
                let start = (start as usize).min(bytes.len());
                let end = start.saturating_add(max as usize).min(bytes.len());
                copy_out(&mut c, &bytes[start..end], pp, sp)
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_get_buffer_status", |mut c: Caller<'_, HostState>, t: u32, lp: u32, fp: u32| {
        finish((|| {
            let t = buffer_type(t)?;
            let len = snapshot(c.data(), t).ok_or(Status::NotFound)?.len();
            write_u32(&mut c, lp, len as u32)?;
            write_u32(&mut c, fp, 0)
        })())
    })?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |c: Caller<'_, HostState>, t: u32, start: u32, length: u32, dp: u32, ds: u32| {
            finish((|| {
                let t = buffer_type(t)?;
                snapshot(c.data(), t).ok_or(Status::NotFound)?;
                let data = read(&c, dp, ds)?;
                let state = c.data();
                let Some((stream, stage)) = state.stream() else {
                    return Err(Status::BadArgument.into());
                };
                let mut s = stream.borrow_mut();
                let s = &mut *s;
                let st = &mut s.stages[stage];
                let connection_data = matches!(t, BufferType::DownstreamData | BufferType::UpstreamData);
                let body = matches!(t, BufferType::HttpRequestBody | BufferType::HttpResponseBody);
                if !(body && !s.network || connection_data && s.network) {
                    return Err(Status::BadArgument.into());
                }
                let d = body_dir(t);
                if !st.access.body[d] {
                    return Err(Status::BadArgument.into());
                }
                edit(st.body[d].owned(), start, length, &data)?;
                s.body_rewritten[d] = true;
                Ok(())
            })())
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_follow_envoy_copy_from() {
        let mut b = BytesMut::from(&b"hello"[..]);
        edit(&mut b, 0, 0, b">").unwrap();
        assert_eq!(&b[..], b">hello");
        edit(&mut b, 0, 1, b"").unwrap();
        assert_eq!(&b[..], b"hello");
        edit(&mut b, 0, 2, b"J").unwrap();
        assert_eq!(&b[..], b"Jllo");
        edit(&mut b, u32::MAX, 0, b"!").unwrap();
        assert_eq!(&b[..], b"Jllo!");
        edit(&mut b, 0, 100, b"all new").unwrap();
        assert_eq!(&b[..], b"all new");
        assert_eq!(edit(&mut b, 3, 1, b"x"), Err(Status::BadArgument));
    }
}
