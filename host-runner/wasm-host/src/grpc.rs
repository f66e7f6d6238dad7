//! gRPC calls and streams a filter starts (`proxy_grpc_call`, `proxy_grpc_stream`), as
//! Envoy's host runs them: every call belongs to the VM's root context (callbacks arrive with
//! the root id; SDKs route them to the caller themselves), tokens are `1 + 4k` for calls and
//! `2 + 4k` for streams, and the target is either a serialized `envoy.config.core.v3.GrpcService`
//! or, when the bytes do not parse as one, a cluster name.
//!
//! The host records what a callback asked for ([`GrpcEffect`]); the proxy carries it out and
//! reports back through [`crate::PluginVm`]'s `on_grpc_*` methods.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use crate::abi::Status;
use crate::headers::HeaderMap;

/// `envoy.config.core.v3.GrpcService`: only the fields the Wasm path reads.
#[derive(Clone, PartialEq, Message)]
pub struct GrpcServiceProto {
    #[prost(message, optional, tag = "1")]
    pub envoy_grpc: Option<EnvoyGrpcProto>,
    #[prost(message, optional, tag = "2")]
    pub google_grpc: Option<GoogleGrpcProto>,
    #[prost(message, repeated, tag = "5")]
    pub initial_metadata: Vec<HeaderValueProto>,
}

/// `GrpcService.EnvoyGrpc`.
#[derive(Clone, PartialEq, Message)]
pub struct EnvoyGrpcProto {
    #[prost(string, tag = "1")]
    pub cluster_name: String,
    #[prost(string, tag = "2")]
    pub authority: String,
}

/// `GrpcService.GoogleGrpc` (meshwork has no Google gRPC client; its presence is refused).
#[derive(Clone, PartialEq, Message)]
pub struct GoogleGrpcProto {
    #[prost(string, tag = "1")]
    pub target_uri: String,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderValueProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

/// Where a call goes, decoded from the filter's service bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcTarget {
    pub cluster: String,
    /// `:authority`; the cluster name when empty.
    pub authority: String,
    /// The GrpcService's `initial_metadata`, sent before the filter's own.
    pub metadata: Vec<(String, Vec<u8>)>,
}

/// Decodes the service bytes with Envoy's rule: a GrpcService if they parse as one (BadArgument
/// when it names no Envoy cluster), else a cluster name (ParseFailure when unknown). A proto
/// naming an unknown cluster is InternalFailure, as Envoy's call fails to start.
pub fn target(service: &[u8], known: impl Fn(&str) -> bool) -> Result<GrpcTarget, Status> {
    match GrpcServiceProto::decode(service) {
        Ok(proto) => {
            let Some(envoy) = proto.envoy_grpc.filter(|e| !e.cluster_name.is_empty()) else {
                return Err(Status::BadArgument);
            };
            if !known(&envoy.cluster_name) {
                return Err(Status::InternalFailure);
            }
            let metadata = proto
                .initial_metadata
                .into_iter()
                .map(|h| {
                    let value = if h.raw_value.is_empty() { h.value.into_bytes() } else { h.raw_value };
                    (h.key.to_ascii_lowercase(), value)
                })
                .collect();
            Ok(GrpcTarget { cluster: envoy.cluster_name, authority: envoy.authority, metadata })
        }
        Err(_) => {
            let name = String::from_utf8_lossy(service).into_owned();
            if !known(&name) {
                return Err(Status::ParseFailure);
            }
            Ok(GrpcTarget { cluster: name, authority: String::new(), metadata: Vec::new() })
        }
    }
}

/// A gRPC call or stream a filter opened.
#[derive(Debug)]
pub struct GrpcCallRequest {
    pub token: u32,
    pub target: GrpcTarget,
    pub service: String,
    pub method: String,
    /// The filter's initial metadata (after the GrpcService's), keys lowercased; values raw
    /// (`-bin` values are binary until the client encodes them).
    pub metadata: Vec<(String, Vec<u8>)>,
    /// The request message of a unary call; `None` opens a stream.
    pub message: Option<Bytes>,
    /// A unary call's deadline (the VM's longest callout wait when the filter gave 0).
    pub timeout: Option<Duration>,
}

/// What a callback asked of the proxy's gRPC client.
#[derive(Debug)]
pub enum GrpcEffect {
    Start(GrpcCallRequest),
    Send {
        token: u32,
        message: Bytes,
        end_stream: bool,
    },
    /// Half-close a stream: the server may still answer.
    Close {
        token: u32,
    },
    /// Reset a call or stream: no callback follows.
    Cancel {
        token: u32,
    },
}

/// A call or stream in flight, as the VM tracks it.
#[derive(Clone, Copy, Debug)]
pub struct GrpcCallState {
    pub stream: bool,
    /// The context that made it (the budget of callouts in flight is per context).
    pub context: u32,
    pub local_closed: bool,
}

pub fn is_call(token: u32) -> bool {
    token & 3 == 1
}

pub fn is_stream(token: u32) -> bool {
    token & 3 == 2
}

/// What a gRPC callback lends the filter: the message (GRPC_RECEIVE_BUFFER) and metadata maps.
#[derive(Debug, Default)]
pub struct GrpcReceived {
    pub message: Bytes,
    pub initial_metadata: Option<HeaderMap>,
    pub trailing_metadata: Option<HeaderMap>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str) -> bool {
        ["grpcbin", "rls"].contains(&name)
    }

    #[test]
    fn service_bytes_follow_envoys_rule() {
        // A plain cluster name does not parse as a GrpcService.
        assert_eq!(target(b"grpcbin", known).unwrap().cluster, "grpcbin");
        assert_eq!(target(b"rls", known).unwrap().cluster, "rls");
        assert_eq!(target(b"bogus service string", known), Err(Status::ParseFailure));
        // The empty string parses as an empty GrpcService: no target.
        assert_eq!(target(b"", known), Err(Status::BadArgument));
        let proto = GrpcServiceProto {
            envoy_grpc: Some(EnvoyGrpcProto { cluster_name: "rls".into(), authority: "rls.internal".into() }),
            google_grpc: None,
            initial_metadata: vec![HeaderValueProto { key: "X-Tenant".into(), value: "a".into(), raw_value: vec![] }],
        };
        let t = target(&proto.encode_to_vec(), known).unwrap();
        assert_eq!((t.cluster.as_str(), t.authority.as_str()), ("rls", "rls.internal"));
        assert_eq!(t.metadata, [("x-tenant".to_owned(), b"a".to_vec())]);
        let unknown = GrpcServiceProto {
            envoy_grpc: Some(EnvoyGrpcProto { cluster_name: "gone".into(), authority: String::new() }),
            ..proto
        };
        assert_eq!(target(&unknown.encode_to_vec(), known), Err(Status::InternalFailure));
    }

    #[test]
    fn token_kinds() {
        assert!(is_call(5) && !is_stream(5));
        assert!(is_stream(6) && !is_call(6));
        assert!(!is_call(4) && !is_stream(4));
    }
}
