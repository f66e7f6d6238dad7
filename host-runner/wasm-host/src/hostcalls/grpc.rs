//! gRPC hostcalls: `proxy_grpc_call`, `proxy_grpc_stream`, `proxy_grpc_send`,
//! `proxy_grpc_cancel`, `proxy_grpc_close`, with the statuses Envoy returns (see
//! [`crate::grpc`] for the rules; the Rust SDK panics on any other).

use std::time::Duration;

use bytes::Bytes;
use wasmtime::{Caller, Linker};

use crate::abi::Status;
use crate::grpc::{GrpcCallRequest, GrpcEffect, is_call, is_stream, target};
use crate::headers::decode_pairs;
use crate::host_state::HostState;
use crate::memory::{Hc, finish, read, read_string, write_u32};

/// Initial metadata from header pairs; malformed pairs are an empty list, as in Envoy.
fn metadata(pairs: &[u8]) -> Vec<(String, Vec<u8>)> {
    decode_pairs(pairs)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).to_ascii_lowercase(), v.to_vec()))
        .collect()
}

/// Starts a call (`message` set) or a stream; returns its token.
fn start(
    c: &mut Caller<'_, HostState>,
    (service, service_name, method): (Vec<u8>, String, String),
    pairs: Vec<u8>,
    message: Option<Bytes>,
    timeout_ms: u32,
) -> Hc<u32> {
    let state = c.data_mut();
    let clusters = state.clusters.clone();
    let target = target(&service, |name| clusters.contains(name))?;
    // One budget for HTTP and gRPC callouts in flight; the spec's answer when the host cannot
    // start the call.
    let token = state.start_grpc(message.is_none()).ok_or(Status::InternalFailure)?;
    let max = state.plugin.limits.max_callout_timeout;
    let timeout = message.is_some().then(|| match timeout_ms {
        0 => max,
        ms => Duration::from_millis(u64::from(ms)).min(max),
    });
    state.effects.grpc.push(GrpcEffect::Start(GrpcCallRequest {
        token,
        target,
        service: service_name,
        method,
        metadata: metadata(&pairs),
        message,
        timeout,
    }));
    Ok(token)
}

pub fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: Caller<'_, HostState>,
         sp: u32,
         ss: u32,
         np: u32,
         ns: u32,
         mp: u32,
         ms: u32,
         ip: u32,
         is: u32,
         rp: u32,
         rs: u32,
         timeout_ms: u32,
         token_ptr: u32| {
            finish((|| {
                let names = (read(&c, sp, ss)?, read_string(&c, np, ns)?, read_string(&c, mp, ms)?);
                let pairs = read(&c, ip, is)?;
                let message = Bytes::from(read(&c, rp, rs)?);
                let token = start(&mut c, names, pairs, Some(message), timeout_ms)?;
                write_u32(&mut c, token_ptr, token)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: Caller<'_, HostState>,
         sp: u32,
         ss: u32,
         np: u32,
         ns: u32,
         mp: u32,
         ms: u32,
         ip: u32,
         is: u32,
         token_ptr: u32| {
            finish((|| {
                let names = (read(&c, sp, ss)?, read_string(&c, np, ns)?, read_string(&c, mp, ms)?);
                let pairs = read(&c, ip, is)?;
                let token = start(&mut c, names, pairs, None, 0)?;
                write_u32(&mut c, token_ptr, token)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut c: Caller<'_, HostState>, token: u32, mp: u32, ms: u32, end_stream: u32| {
            finish((|| {
                let message = Bytes::from(read(&c, mp, ms)?);
                if !is_stream(token) {
                    return Err(Status::BadArgument.into());
                }
                let state = c.data_mut();
                let call = state.grpc_calls.get_mut(&token).ok_or(Status::NotFound)?;
                // After a half-close Envoy sends nothing more; the message is dropped.
                if call.local_closed {
                    return Ok(());
                }
                call.local_closed = end_stream != 0;
                state.effects.grpc.push(GrpcEffect::Send { token, message, end_stream: end_stream != 0 });
                Ok(())
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_grpc_cancel", |mut c: Caller<'_, HostState>, token: u32| {
        finish((|| {
            if !is_call(token) && !is_stream(token) {
                return Err(Status::BadArgument.into());
            }
            let state = c.data_mut();
            if !state.grpc_calls.contains_key(&token) {
                return Err(Status::NotFound.into());
            }
            state.end_grpc(token);
            state.effects.grpc.push(GrpcEffect::Cancel { token });
            Ok(())
        })())
    })?;
    linker.func_wrap("env", "proxy_grpc_close", |mut c: Caller<'_, HostState>, token: u32| {
        finish((|| {
            let state = c.data_mut();
            if is_call(token) {
                // Closing a unary call is cancelling it (Envoy).
                if !state.grpc_calls.contains_key(&token) {
                    return Err(Status::NotFound.into());
                }
                state.end_grpc(token);
                state.effects.grpc.push(GrpcEffect::Cancel { token });
                return Ok(());
            }
            if !is_stream(token) {
                return Err(Status::BadArgument.into());
            }
            let call = state.grpc_calls.get_mut(&token).ok_or(Status::NotFound)?;
            if !call.local_closed {
                call.local_closed = true;
                state.effects.grpc.push(GrpcEffect::Close { token });
            }
            Ok(())
        })())
    })?;
    Ok(())
}
