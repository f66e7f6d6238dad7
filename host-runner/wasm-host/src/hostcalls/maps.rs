//! Header and trailer maps: get, pairs, add, replace, remove, size.
//!
//! Availability follows Envoy: a stream map is writable only during its callback (or while the
//! stream is paused from it); after `Continue` it is gone (BadArgument for single values, an
//! empty list for pairs). In `on_log` the request/response headers and response trailers are
//! readable. Callout response maps are read-only and exist only during the callout callback.

use wasmtime::{Caller, Linker};

use crate::abi::{MapType, Status};
use crate::headers::{HeaderError, HeaderMap, decode_pairs};
use crate::host_state::HostState;
use crate::memory::{Hc, copy_out, finish, read, with_bytes, with_two, write_u32};
use crate::stream_data::{Dir, StreamData};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Availability {
    ReadWrite,
    ReadOnly,
    Missing,
}

fn stream_availability(data: &StreamData, stage: usize, t: MapType) -> Availability {
    let Some(a) = data.stages.get(stage).map(|s| s.access) else {
        return Availability::Missing;
    };
    let log_read = |exists: bool| {
        if exists { Availability::ReadOnly } else { Availability::Missing }
    };
    let live = |ok: bool| {
        if ok { Availability::ReadWrite } else { Availability::Missing }
    };
    let Some((d, trailers)) = stream_map_of(t) else {
        return Availability::Missing;
    };
    match (d, trailers, data.in_log) {
        (_, false, true) => Availability::ReadOnly,
        (Dir::Response, true, true) => log_read(data.trailers[Dir::Response].is_some()),
        (Dir::Request, true, true) => Availability::Missing,
        (d, false, false) => live(a.headers[d]),
        (d, true, false) => live(a.trailers[d] || a.may_add_trailers[d]),
    }
}

/// The direction of a stream map, and whether it is the trailers.
fn stream_map_of(t: MapType) -> Option<(Dir, bool)> {
    match t {
        MapType::RequestHeaders => Some((Dir::Request, false)),
        MapType::RequestTrailers => Some((Dir::Request, true)),
        MapType::ResponseHeaders => Some((Dir::Response, false)),
        MapType::ResponseTrailers => Some((Dir::Response, true)),
        _ => None,
    }
}

fn stream_map(data: &mut StreamData, d: Dir, trailers: bool) -> &mut HeaderMap {
    if trailers {
        // Trailers come into being when a filter adds to them in the last body chunk.
        data.trailers[d].get_or_insert_with(HeaderMap::new)
    } else {
        &mut data.headers[d]
    }
}

/// Runs `f` on map `t` of the effective context if the map is available at least as `need`.
/// Returns `Ok(None)` when it is not, with the availability, so each call picks its status.
fn with_map<R>(
    state: &mut HostState,
    t: MapType,
    need: Availability,
    f: impl FnOnce(&mut HeaderMap) -> R,
) -> Result<R, (Availability, bool)> {
    if matches!(t, MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers) {
        let Some(resp) = state.callout_response.as_mut() else {
            return Err((Availability::Missing, false));
        };
        if need == Availability::ReadWrite {
            return Err((Availability::ReadOnly, false));
        }
        let map = if t == MapType::HttpCallResponseHeaders { &mut resp.headers } else { &mut resp.trailers };
        return Ok(f(map));
    }
    if matches!(t, MapType::GrpcInitialMetadata | MapType::GrpcTrailingMetadata) {
        // Read-only, and only during its callback. Envoy reaches these maps through a path
        // that wants them mutable for the size, so size (like any change) is BadArgument.
        let received = state.grpc_received.as_mut();
        let map = received.and_then(|r| {
            if t == MapType::GrpcInitialMetadata { r.initial_metadata.as_mut() } else { r.trailing_metadata.as_mut() }
        });
        return match map {
            Some(map) if need != Availability::ReadWrite => Ok(f(map)),
            Some(_) => Err((Availability::ReadOnly, false)),
            None => Err((Availability::Missing, false)),
        };
    }
    let Some((stream, stage)) = state.stream() else {
        return Err((Availability::Missing, false));
    };
    let mut data = stream.borrow_mut();
    let have = stream_availability(&data, stage, t);
    let in_log = data.in_log;
    let enough = match need {
        Availability::ReadWrite => have == Availability::ReadWrite,
        _ => have != Availability::Missing,
    };
    if !enough {
        return Err((have, in_log));
    }
    let Some((d, trailers)) = stream_map_of(t) else {
        return Err((Availability::Missing, in_log));
    };
    Ok(f(stream_map(&mut data, d, trailers)))
}

fn map_type(raw: u32) -> Hc<MapType> {
    MapType::from_raw(raw).ok_or(Status::BadArgument.into())
}

fn header_status(e: HeaderError, state: &HostState) -> Status {
    tracing::warn!(filter = %state.plugin.name, "refused header change: {e:?}");
    match e {
        HeaderError::InvalidName | HeaderError::InvalidValue | HeaderError::TooMany => Status::BadArgument,
    }
}

pub fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>, t: u32, kp: u32, ks: u32, vpp: u32, vsp: u32| {
            finish((|| {
                let t = map_type(t)?;
                let found = with_bytes(&mut c, kp, ks, |key, state| {
                    with_map(state, t, Availability::ReadOnly, |m| m.get(key).map(<[u8]>::to_vec))
                })?;
                let value = match found {
                    Ok(v) => v,
                    Err((_, true)) => return Err(Status::NotFound.into()),
                    Err(_) => return Err(Status::BadArgument.into()),
                };
                let value = value.ok_or(Status::NotFound)?;
                copy_out(&mut c, &value, vpp, vsp)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, HostState>, t: u32, pp: u32, sp: u32| {
            finish((|| {
                let t = map_type(t)?;
                // An unavailable map reads as empty, never as an error.
                let pairs = with_map(c.data_mut(), t, Availability::ReadOnly, |m| m.to_pairs()).unwrap_or_default();
                copy_out(&mut c, &pairs, pp, sp)
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_set_header_map_pairs", |mut c: Caller<'_, HostState>, t: u32, p: u32, s: u32| {
        finish((|| {
            let t = map_type(t)?;
            let data = read(&c, p, s)?;
            let filter = c.data().plugin.name.clone();
            let pairs = decode_pairs(&data);
            if pairs.is_none() {
                // Envoy parses a malformed buffer as an empty map and clears the headers; we
                // do the same so filters behave alike, but say so.
                tracing::warn!(%filter, "proxy_set_header_map_pairs got malformed pairs; the map is now empty (as in Envoy)");
                c.data_mut().abi_warnings += 1;
            }
            let pairs = pairs.unwrap_or_default();
            let result = with_map(c.data_mut(), t, Availability::ReadWrite, |m| m.set_from_pairs(&pairs))
                .map_err(|_| Status::BadArgument)?;
            result.map_err(|e| header_status(e, c.data()).into())
        })())
    })?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, HostState>, t: u32, kp: u32, ks: u32, vp: u32, vs: u32| {
            finish((|| {
                let t = map_type(t)?;
                let result = with_two(&mut c, (kp, ks), (vp, vs), |key, value, state| {
                    with_map(state, t, Availability::ReadWrite, |m| m.add(key, value))
                })?
                .map_err(|_| Status::BadArgument)?;
                result.map_err(|e| header_status(e, c.data()).into())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, HostState>, t: u32, kp: u32, ks: u32, vp: u32, vs: u32| {
            finish((|| {
                let t = map_type(t)?;
                let result = with_two(&mut c, (kp, ks), (vp, vs), |key, value, state| {
                    with_map(state, t, Availability::ReadWrite, |m| m.replace(key, value))
                })?
                .map_err(|_| Status::BadArgument)?;
                result.map_err(|e| header_status(e, c.data()).into())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, HostState>, t: u32, kp: u32, ks: u32| {
            finish((|| {
                let t = map_type(t)?;
                with_bytes(&mut c, kp, ks, |key, state| with_map(state, t, Availability::ReadWrite, |m| m.remove(key)))?
                    .map_err(|_| Status::BadArgument.into())
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_get_header_map_size", |mut c: Caller<'_, HostState>, t: u32, rp: u32| {
        finish((|| {
            let t = map_type(t)?;
            let size = with_map(c.data_mut(), t, Availability::ReadWrite, |m| m.byte_size())
                .map_err(|_| Status::BadArgument)?;
            write_u32(&mut c, rp, size as u32)
        })())
    })?;
    Ok(())
}
