//! Stream control: continue, close, local replies. Each only records an action; the engine
//! carries it out after the VM call returns, as Envoy defers them.

use bytes::Bytes;
use wasmtime::{Caller, Linker};

use crate::abi::{Status, StreamType};
use crate::headers::decode_pairs;
use crate::host_state::HostState;
use crate::memory::{Hc, finish, read};
use crate::stream_data::{Dir, LocalReply};

fn stream_type(raw: u32) -> Hc<StreamType> {
    StreamType::from_raw(raw).ok_or(Status::BadArgument.into())
}

pub fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_continue_stream", |c: Caller<'_, HostState>, t: u32| {
        finish((|| {
            let t = stream_type(t)?;
            if let Some((stream, stage)) = c.data().stream()
                && stream.borrow().network
            {
                // A TCP connection: resume what the filter held in either direction (Envoy
                // cannot resume the upstream direction and says Unimplemented, which the Rust
                // SDK turns into a panic; meshwork does it).
                let d = match t {
                    StreamType::Downstream => Dir::Request,
                    StreamType::Upstream => Dir::Response,
                    _ => return Ok(()),
                };
                stream.borrow_mut().act(stage, |a| a.resume[d] = true);
                return Ok(());
            }
            match t {
                StreamType::Upstream => return Err(Status::Unimplemented.into()),
                StreamType::Downstream => return Ok(()),
                t => {
                    let Some((stream, stage)) = c.data().stream() else {
                        return Ok(());
                    };
                    let mut s = stream.borrow_mut();
                    // Envoy drops its request-side map pointers on either continue.
                    let access = &mut s.stages[stage].access;
                    access.headers[Dir::Request] = false;
                    access.trailers[Dir::Request] = false;
                    access.body[Dir::Request] = false;
                    let d = if t == StreamType::HttpRequest { Dir::Request } else { Dir::Response };
                    s.act(stage, |a| a.resume[d] = true);
                }
            }
            Ok(())
        })())
    })?;
    linker.func_wrap("env", "proxy_close_stream", |c: Caller<'_, HostState>, t: u32| {
        finish((|| {
            let t = stream_type(t)?;
            if let Some((stream, stage)) = c.data().stream() {
                let network = stream.borrow().network;
                // HTTP streams close on the HTTP types; a TCP connection on either connection
                // type (both close the client connection after a flush, as in Envoy).
                let closes = match t {
                    StreamType::HttpRequest | StreamType::HttpResponse => !network,
                    StreamType::Downstream | StreamType::Upstream => network,
                };
                if closes {
                    stream.borrow_mut().act(stage, |a| a.close = true);
                }
            }
            Ok(())
        })())
    })?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |c: Caller<'_, HostState>, code: u32, dp: u32, ds: u32, bp: u32, bs: u32, hp: u32, hs: u32, grpc: u32| {
            finish((|| {
                let details = read(&c, dp, ds)?;
                let body = read(&c, bp, bs)?;
                let headers = read(&c, hp, hs)?;
                let Some((stream, stage)) = c.data().stream() else {
                    return Ok(());
                };
                let headers = decode_pairs(&headers)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
                    .collect();
                let reply = LocalReply {
                    status: code,
                    details: String::from_utf8_lossy(&details).replace(' ', "_"),
                    body: Bytes::from(body),
                    headers,
                    grpc_status: (grpc <= 16).then_some(grpc),
                };
                stream.borrow_mut().act(stage, |a| a.local_reply = Some(reply));
                Ok(())
            })())
        },
    )?;
    Ok(())
}
