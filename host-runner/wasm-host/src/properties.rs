//! `proxy_get_property` / `proxy_set_property` with Envoy's attribute paths and wire encoding.
//!
//! Paths are segments separated by NUL. Values reach the guest as Envoy serialises them: strings
//! raw, integers as 8 little-endian bytes, bools as one byte, timestamps and durations as i64
//! nanoseconds, maps in the header-pairs encoding. meshwork answers both the current `xds.*`
//! names and the top-level names Envoy had before 1.33 (`route_name`, `node`, ...).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use crate::abi::Status;
use crate::headers::{HeaderMap, encode_pairs};
use crate::plugin::{PluginConfig, Services};
use crate::stream_data::{Dir, StreamData};

/// A property value before serialisation.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(Bytes),
    /// A name the stream already holds (route, cluster): shared, not copied.
    Name(Rc<str>),
    Int(i64),
    UInt(u64),
    Bool(bool),
    /// Nanoseconds.
    Duration(i64),
    /// Nanoseconds since the Unix epoch.
    Timestamp(i64),
    Map(Vec<(Bytes, Value)>),
    /// A structured value Envoy cannot serialise whole (request, response, ...).
    Unserialisable,
}

impl Value {
    fn str(s: impl AsRef<[u8]>) -> Value {
        Value::Str(Bytes::copy_from_slice(s.as_ref()))
    }

    /// The wire form; strings are lent, not copied (this runs for every property read).
    pub fn serialise(&self) -> Result<Cow<'_, [u8]>, Status> {
        Ok(match self {
            Value::Str(b) => Cow::Borrowed(b.as_ref()),
            Value::Name(n) => Cow::Borrowed(n.as_bytes()),
            Value::Int(i) | Value::Duration(i) | Value::Timestamp(i) => Cow::Owned(i.to_le_bytes().to_vec()),
            Value::UInt(u) => Cow::Owned(u.to_le_bytes().to_vec()),
            Value::Bool(b) => Cow::Owned(vec![*b as u8]),
            Value::Map(pairs) => {
                let values: Vec<(&[u8], Cow<'_, [u8]>)> =
                    pairs.iter().map(|(k, v)| Ok((k.as_ref(), v.serialise()?))).collect::<Result<_, Status>>()?;
                Cow::Owned(encode_pairs(&values.iter().map(|(k, v)| (*k, v.as_ref())).collect::<Vec<_>>()))
            }
            Value::Unserialisable => return Err(Status::SerializationFailure),
        })
    }
}

fn headers_map(h: &HeaderMap) -> Value {
    Value::Map(h.iter().map(|(k, v)| (Bytes::copy_from_slice(k), Value::str(v))).collect())
}

fn header_value(h: &HeaderMap, name: &[u8]) -> Option<Value> {
    h.get(name).map(Value::str)
}

fn addr(a: Option<SocketAddr>, field: &[u8]) -> Option<Value> {
    let a = a?;
    match field {
        b"address" => Some(Value::str(a.to_string())),
        b"port" => Some(Value::Int(a.port() as i64)),
        _ => None,
    }
}

/// A TLS attribute of `connection.*` or `upstream.*`, as Envoy's `extractSslInfo` gives it:
/// subjects are empty strings when no certificate was presented, SANs and digests absent.
fn tls_value(t: &crate::stream_data::TlsInfo, field: &[u8]) -> Option<Value> {
    let first = |sans: &[String]| sans.first().map(Value::str);
    let peer = t.peer.as_ref();
    let local = t.local.as_deref();
    match field {
        b"tls_version" => Some(Value::str(t.version)),
        b"subject_peer_certificate" => Some(Value::str(peer.map_or("", |c| c.subject.as_str()))),
        b"subject_local_certificate" => Some(Value::str(local.map_or("", |c| c.subject.as_str()))),
        b"uri_san_peer_certificate" => peer.and_then(|c| first(&c.uri_sans)),
        b"uri_san_local_certificate" => local.and_then(|c| first(&c.uri_sans)),
        b"dns_san_peer_certificate" => peer.and_then(|c| first(&c.dns_sans)),
        b"dns_san_local_certificate" => local.and_then(|c| first(&c.dns_sans)),
        b"sha256_peer_certificate_digest" => peer.map(|c| Value::str(&c.sha256)),
        _ => None,
    }
}

/// Resolves `path` for a context. `stream` is `None` in a root context, where only plugin and
/// node attributes exist.
pub fn get(
    plugin: &PluginConfig,
    services: &Services,
    stream: Option<&StreamData>,
    path: &[u8],
) -> Result<Value, Status> {
    // Segments are NUL-separated; one trailing NUL (the C++ SDK's form) is ignored.
    let path = path.strip_suffix(b"\0").unwrap_or(path);
    let mut segments = path.split(|b| *b == 0).peekable();
    let first = segments.next().ok_or(Status::SerializationFailure)?;
    let (mut value, used_next) = top_level(plugin, services, stream, first, segments.peek().copied())?;
    if used_next {
        segments.next();
    }
    // Segments the top-level lookup did not use walk into maps.
    for seg in segments {
        value = match value {
            Value::Map(pairs) => {
                pairs.into_iter().find(|(k, _)| k.as_ref() == seg).map(|(_, v)| v).ok_or(Status::NotFound)?
            }
            _ => return Err(Status::NotFound),
        };
    }
    Ok(value)
}

/// The value of a top-level name; the bool says whether it already used the next segment.
fn top_level(
    plugin: &PluginConfig,
    services: &Services,
    stream: Option<&StreamData>,
    name: &[u8],
    next: Option<&[u8]>,
) -> Result<(Value, bool), Status> {
    let node = || {
        let n = &services.node;
        Value::Map(vec![
            (Bytes::from_static(b"id"), Value::str(&n.id)),
            (Bytes::from_static(b"cluster"), Value::str(&n.cluster)),
            (
                Bytes::from_static(b"metadata"),
                Value::Map(
                    n.metadata
                        .iter()
                        .map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), Value::str(v)))
                        .chain(n.metadata_maps.iter().map(|(k, m)| {
                            let pairs =
                                m.iter().map(|(mk, mv)| (Bytes::copy_from_slice(mk.as_bytes()), Value::str(mv)));
                            (Bytes::copy_from_slice(k.as_bytes()), Value::Map(pairs.collect()))
                        }))
                        .collect(),
                ),
            ),
        ])
    };
    match name {
        b"plugin_name" => return Ok((Value::str(&plugin.name), false)),
        b"plugin_root_id" => return Ok((Value::str(&plugin.root_id), false)),
        b"plugin_vm_id" => return Ok((Value::str(&plugin.vm_id), false)),
        b"node" => return Ok((node(), false)),
        b"xds" => {
            let Some(field) = next else {
                return Ok((Value::Unserialisable, false));
            };
            let v = match field {
                b"node" => node(),
                b"route_name" => Value::Name(stream.ok_or(Status::NotFound)?.info.route_name.clone()),
                b"cluster_name" => Value::Name(stream.ok_or(Status::NotFound)?.info.cluster_name.clone()),
                b"listener_direction" => Value::Int(stream.map_or(0, |s| s.info.direction.envoy_value())),
                b"filter_chain_name" | b"virtual_host_name" => Value::str(""),
                _ => return Err(Status::NotFound),
            };
            return Ok((v, true));
        }
        _ => {}
    }
    let s = stream.ok_or(Status::NotFound)?;
    let info = &s.info;
    let leaf = |v: Option<Value>| v.map(|v| (v, true)).ok_or(Status::NotFound);
    match name {
        b"route_name" => Ok((Value::Name(info.route_name.clone()), false)),
        b"cluster_name" => Ok((Value::Name(info.cluster_name.clone()), false)),
        b"listener_direction" => Ok((Value::Int(info.direction.envoy_value()), false)),
        b"connection_id" => Ok((Value::UInt(info.connection_id), false)),
        b"request" => {
            let Some(field) = next else {
                return Ok((Value::Unserialisable, false));
            };
            let h = &s.headers[Dir::Request];
            let path = h.get(b":path").unwrap_or_default();
            leaf(match field {
                b"path" => Some(Value::str(path)),
                b"url_path" => Some(Value::str(path.split(|b| *b == b'?').next().unwrap_or_default())),
                b"query" => Some(Value::str(
                    path.splitn(2, |b| *b == b'?')
                        .nth(1)
                        .map_or(&b""[..], |q| q.split(|b| *b == b'#').next().unwrap_or_default()),
                )),
                b"host" => header_value(h, b":authority"),
                b"scheme" => header_value(h, b":scheme"),
                b"method" => header_value(h, b":method"),
                b"headers" => Some(headers_map(h)),
                b"headers_bytes" => Some(Value::Int(h.byte_size() as i64)),
                b"referer" => header_value(h, b"referer"),
                b"useragent" => header_value(h, b"user-agent"),
                b"id" => header_value(h, b"x-request-id"),
                b"time" => Some(Value::Timestamp(
                    info.start_time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64),
                )),
                b"protocol" => Some(Value::str(info.protocol)),
                b"duration" => info.request_duration.map(|d| Value::Duration(d.as_nanos() as i64)),
                b"size" => Some(Value::Int(
                    h.get_str("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(info.body_bytes[Dir::Request] as i64),
                )),
                b"total_size" => Some(Value::Int((info.body_bytes[Dir::Request] as usize + h.byte_size()) as i64)),
                _ => None,
            })
        }
        b"response" => {
            let Some(field) = next else {
                return Ok((Value::Unserialisable, false));
            };
            let h = &s.headers[Dir::Response];
            leaf(match field {
                b"code" => info.response_code.map(|c| Value::Int(c as i64)),
                b"code_details" => info.response_code_details.as_ref().map(Value::str),
                b"flags" => Some(Value::Int(0)),
                b"grpc_status" => h.get_str("grpc-status").and_then(|v| v.parse().ok()).map(Value::Int),
                b"headers" => Some(headers_map(h)),
                b"headers_bytes" => Some(Value::Int(h.byte_size() as i64)),
                b"trailers" => Some(s.trailers[Dir::Response].as_ref().map_or(Value::Map(vec![]), headers_map)),
                b"size" => Some(Value::Int(info.body_bytes[Dir::Response] as i64)),
                b"total_size" => Some(Value::Int((info.body_bytes[Dir::Response] as usize + h.byte_size()) as i64)),
                _ => None,
            })
        }
        b"source" => match next {
            Some(f) => leaf(addr(info.source, f)),
            None => Ok((Value::Unserialisable, false)),
        },
        b"destination" => match next {
            Some(f) => leaf(addr(info.destination, f)),
            None => Ok((Value::Unserialisable, false)),
        },
        b"upstream" => {
            let Some(field) = next else {
                return Ok((Value::Unserialisable, false));
            };
            // Envoy: nothing until an upstream is chosen.
            let Some(upstream) = info.upstream else {
                return Err(Status::NotFound);
            };
            leaf(match field {
                b"address" | b"port" => addr(Some(upstream), field),
                b"local_address" => info.upstream_local.map(|a| Value::str(a.to_string())),
                b"transport_failure_reason" => Some(Value::str(info.upstream_failure.as_deref().unwrap_or(""))),
                b"request_attempt_count" => Some(Value::UInt(u64::from(info.upstream_attempts.max(1)))),
                // No `mtls` under upstream, as in Envoy.
                b"mtls" => None,
                tls_field => info.upstream_tls.as_deref().and_then(|t| tls_value(t, tls_field)),
            })
        }
        b"connection" => {
            let Some(field) = next else {
                return Ok((Value::Unserialisable, false));
            };
            let tls = info.tls.as_deref();
            leaf(match field {
                b"id" => Some(Value::UInt(info.connection_id)),
                // A peer certificate was presented (Envoy's definition).
                b"mtls" => Some(Value::Bool(tls.is_some_and(|t| t.peer.is_some()))),
                b"requested_server_name" => Some(Value::str(tls.map_or("", |t| t.server_name.as_str()))),
                tls_field => tls.and_then(|t| tls_value(t, tls_field)),
            })
        }
        b"filter_state" => {
            let Some(key) = next else {
                return Ok((
                    Value::Map(
                        s.filter_state
                            .iter()
                            .map(|(k, v)| (Bytes::copy_from_slice(k), Value::Str(v.clone())))
                            .collect(),
                    ),
                    false,
                ));
            };
            leaf(s.filter_state.get(key).map(|v| Value::Str(v.clone())))
        }
        _ => {
            // Anything else is a value a filter stored with proxy_set_property.
            let key = [b"wasm.".as_slice(), name].concat();
            s.filter_state.get(&key).map(|v| (Value::Str(v.clone()), false)).ok_or(Status::NotFound)
        }
    }
}

/// Stores a value for later filters of the stream, under `wasm.<raw path>` as Envoy does.
pub fn set(stream: Option<&mut StreamData>, path: &[u8], value: &[u8]) -> Result<(), Status> {
    let s = stream.ok_or(Status::NotFound)?;
    s.filter_state.insert([b"wasm.".as_slice(), path].concat(), Bytes::copy_from_slice(value));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream_data::StreamInfo;

    fn stream() -> StreamData {
        let mut h = HeaderMap::new();
        h.add(b":method", b"POST").unwrap();
        h.add(b":path", b"/api/x?a=1#f").unwrap();
        h.add(b":authority", b"svc").unwrap();
        h.add(b"x-request-id", b"rid").unwrap();
        let info = StreamInfo {
            source: Some("10.0.0.1:5555".parse().unwrap()),
            route_name: std::rc::Rc::from("r1"),
            response_code: Some(503),
            ..StreamInfo::default()
        };
        StreamData::new(h, info, 1)
    }

    fn plugin() -> PluginConfig {
        let mut p = PluginConfig::new("measure");
        p.root_id = "root".into();
        p
    }

    fn get_bytes(s: Option<&StreamData>, path: &[u8]) -> Result<Vec<u8>, Status> {
        get(&plugin(), &Services::default(), s, path)?.serialise().map(Cow::into_owned)
    }

    #[test]
    fn request_attributes() {
        let s = stream();
        assert_eq!(get_bytes(Some(&s), b"request\0path").unwrap(), b"/api/x?a=1#f");
        assert_eq!(get_bytes(Some(&s), b"request\0url_path\0").unwrap(), b"/api/x");
        assert_eq!(get_bytes(Some(&s), b"request\0query").unwrap(), b"a=1");
        assert_eq!(get_bytes(Some(&s), b"request\0method").unwrap(), b"POST");
        assert_eq!(get_bytes(Some(&s), b"request\0id").unwrap(), b"rid");
        assert_eq!(get_bytes(Some(&s), b"request\0headers\0:authority").unwrap(), b"svc");
        assert_eq!(get_bytes(Some(&s), b"request\0time").unwrap().len(), 8);
        assert_eq!(get_bytes(Some(&s), b"request\0duration"), Err(Status::NotFound));
        assert_eq!(get_bytes(Some(&s), b"request"), Err(Status::SerializationFailure));
        assert_eq!(get_bytes(Some(&s), b"request\0nope"), Err(Status::NotFound));
    }

    #[test]
    fn typed_values_use_envoy_encoding() {
        let s = stream();
        assert_eq!(get_bytes(Some(&s), b"response\0code").unwrap(), 503i64.to_le_bytes());
        assert_eq!(get_bytes(Some(&s), b"source\0port").unwrap(), 5555i64.to_le_bytes());
        assert_eq!(get_bytes(Some(&s), b"source\0address").unwrap(), b"10.0.0.1:5555");
        assert_eq!(get_bytes(Some(&s), b"connection\0mtls").unwrap(), [0]);
        let headers = get_bytes(Some(&s), b"request\0headers").unwrap();
        assert_eq!(crate::headers::decode_pairs(&headers).unwrap().len(), 4);
    }

    #[test]
    fn tls_attributes_follow_envoy() {
        use crate::stream_data::{CertInfo, TlsInfo};
        let mut s = stream();
        assert_eq!(get_bytes(Some(&s), b"connection\0tls_version"), Err(Status::NotFound));
        assert_eq!(get_bytes(Some(&s), b"connection\0requested_server_name").unwrap(), b"");
        assert_eq!(get_bytes(Some(&s), b"upstream\0address"), Err(Status::NotFound));
        let peer = CertInfo {
            subject: "CN=client".into(),
            uri_sans: vec!["spiffe://a".into(), "spiffe://b".into()],
            dns_sans: vec![],
            sha256: "ab".repeat(32),
        };
        s.info.tls = Some(std::rc::Rc::new(TlsInfo {
            version: "TLSv1.3",
            server_name: "api.example".into(),
            local: Some(std::sync::Arc::new(CertInfo { subject: "CN=server".into(), ..CertInfo::default() })),
            peer: Some(peer),
            alpn: None,
        }));
        assert_eq!(get_bytes(Some(&s), b"connection\0tls_version").unwrap(), b"TLSv1.3");
        assert_eq!(get_bytes(Some(&s), b"connection\0mtls").unwrap(), [1]);
        assert_eq!(get_bytes(Some(&s), b"connection\0requested_server_name").unwrap(), b"api.example");
        assert_eq!(get_bytes(Some(&s), b"connection\0subject_peer_certificate").unwrap(), b"CN=client");
        assert_eq!(get_bytes(Some(&s), b"connection\0subject_local_certificate").unwrap(), b"CN=server");
        assert_eq!(get_bytes(Some(&s), b"connection\0uri_san_peer_certificate").unwrap(), b"spiffe://a");
        assert_eq!(get_bytes(Some(&s), b"connection\0dns_san_peer_certificate"), Err(Status::NotFound));
        assert_eq!(
            get_bytes(Some(&s), b"connection\0sha256_peer_certificate_digest").unwrap(),
            "ab".repeat(32).as_bytes()
        );
        s.info.upstream = Some("10.0.0.9:8443".parse().unwrap());
        assert_eq!(get_bytes(Some(&s), b"upstream\0address").unwrap(), b"10.0.0.9:8443");
        assert_eq!(get_bytes(Some(&s), b"upstream\0tls_version"), Err(Status::NotFound));
        assert_eq!(get_bytes(Some(&s), b"upstream\0mtls"), Err(Status::NotFound));
    }

    #[test]
    fn plugin_and_route_names_and_root_contexts() {
        let s = stream();
        assert_eq!(get_bytes(None, b"plugin_root_id").unwrap(), b"root");
        assert_eq!(get_bytes(None, b"plugin_name").unwrap(), b"measure");
        assert_eq!(get_bytes(Some(&s), b"xds\0route_name").unwrap(), b"r1");
        assert_eq!(get_bytes(Some(&s), b"route_name").unwrap(), b"r1");
        assert_eq!(get_bytes(None, b"request\0path"), Err(Status::NotFound));
        assert_eq!(get_bytes(None, b"xds\0node\0id").unwrap(), b"");
    }

    #[test]
    fn listener_direction_and_struct_node_metadata() {
        let mut s = stream();
        assert_eq!(get_bytes(Some(&s), b"xds\0listener_direction").unwrap(), 0i64.to_le_bytes());
        s.info.direction = crate::stream_data::TrafficDirection::Inbound;
        assert_eq!(get_bytes(Some(&s), b"xds\0listener_direction").unwrap(), 1i64.to_le_bytes());
        assert_eq!(get_bytes(Some(&s), b"listener_direction").unwrap(), 1i64.to_le_bytes());
        let mut services = Services::default();
        services.node.metadata.insert("NAMESPACE".into(), "shop".into());
        let labels = [("app".to_owned(), "reviews".to_owned()), ("version".to_owned(), "v1".to_owned())];
        services.node.metadata_maps.insert("LABELS".into(), labels.into_iter().collect());
        let read = |path: &[u8]| get(&plugin(), &services, None, path)?.serialise().map(Cow::into_owned);
        assert_eq!(read(b"node\0metadata\0NAMESPACE").unwrap(), b"shop");
        assert_eq!(read(b"xds\0node\0metadata\0LABELS\0app").unwrap(), b"reviews");
        let pairs = read(b"node\0metadata\0LABELS").unwrap();
        assert_eq!(crate::headers::decode_pairs(&pairs).unwrap().len(), 2);
        assert_eq!(read(b"node\0metadata\0LABELS\0nope"), Err(Status::NotFound));
    }

    #[test]
    fn set_property_is_read_back_by_name() {
        let mut s = stream();
        set(Some(&mut s), b"my.key", b"v1").unwrap();
        assert_eq!(get_bytes(Some(&s), b"my.key").unwrap(), b"v1");
        assert_eq!(get_bytes(Some(&s), b"filter_state\0wasm.my.key").unwrap(), b"v1");
        assert_eq!(set(None, b"k", b"v"), Err(Status::NotFound));
        assert_eq!(get_bytes(Some(&s), b"unknown"), Err(Status::NotFound));
    }
}
