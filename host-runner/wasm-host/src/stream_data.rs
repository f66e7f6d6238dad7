//! One HTTP stream's state as every filter of its chain sees it through hostcalls.
//!
//! The engine owns the flow of a stream; hostcalls reach this shared part through the context
//! id. Borrows of it are short and never held across a call into a VM.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::headers::HeaderMap;

/// One certificate as Envoy's properties describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject in RFC 2253 form (`CN=client,O=Acme`).
    pub subject: String,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// Lowercase hex SHA-256 of the DER.
    pub sha256: String,
}

/// What a TLS handshake established, for the `connection.*` and `upstream.*` properties.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2`, `TLSv1.3`.
    pub version: &'static str,
    /// The SNI the client asked for (downstream), or sent (upstream).
    pub server_name: String,
    /// The certificate this side presented.
    pub local: Option<std::sync::Arc<CertInfo>>,
    /// The certificate the other side presented (validated when the configuration asks).
    pub peer: Option<CertInfo>,
    pub alpn: Option<String>,
}

/// The direction of the listener a stream arrived on (Envoy's `TrafficDirection`): filters
/// written for sidecars read it as `listener_direction` to tell inbound from outbound traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficDirection {
    #[default]
    Unspecified,
    Inbound,
    Outbound,
}

impl TrafficDirection {
    /// The enum's number in Envoy's API, which is what the property holds.
    pub fn envoy_value(self) -> i64 {
        match self {
            TrafficDirection::Unspecified => 0,
            TrafficDirection::Inbound => 1,
            TrafficDirection::Outbound => 2,
        }
    }
}

/// What the proxy knows about a stream, for properties.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    pub start_time: SystemTime,
    pub protocol: &'static str,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    pub connection_id: u64,
    /// The client connection's TLS, if it has any.
    pub tls: Option<Rc<TlsInfo>>,
    /// The upstream connection's TLS, once one is chosen and it has any.
    pub upstream_tls: Option<Rc<TlsInfo>>,
    /// Why the last upstream connection attempt failed (`upstream.transport_failure_reason`).
    pub upstream_failure: Option<String>,
    /// Upstream attempts so far (`upstream.request_attempt_count`).
    pub upstream_attempts: u32,
    pub route_name: Rc<str>,
    pub cluster_name: Rc<str>,
    /// The listener's direction (`listener_direction`).
    pub direction: TrafficDirection,
    pub upstream: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub response_code: Option<u32>,
    pub response_code_details: Option<String>,
    /// Body bytes seen, by [`Dir`].
    pub body_bytes: PerDir<u64>,
    pub request_duration: Option<Duration>,
}

impl Default for StreamInfo {
    fn default() -> Self {
        StreamInfo::new(Rc::from(""), Rc::from(""))
    }
}

impl StreamInfo {
    /// A stream starting now on `route` to `cluster` (names shared, not copied).
    pub fn new(route_name: Rc<str>, cluster_name: Rc<str>) -> StreamInfo {
        StreamInfo {
            start_time: SystemTime::now(),
            protocol: "HTTP/1.1",
            source: None,
            destination: None,
            connection_id: 0,
            tls: None,
            upstream_tls: None,
            upstream_failure: None,
            upstream_attempts: 0,
            route_name,
            cluster_name,
            direction: TrafficDirection::Unspecified,
            upstream: None,
            upstream_local: None,
            response_code: None,
            response_code_details: None,
            body_bytes: PerDir([0; 2]),
            request_duration: None,
        }
    }
}

/// A reply a filter asked for with `proxy_send_local_response`.
#[derive(Clone, Debug)]
pub struct LocalReply {
    pub status: u32,
    pub details: String,
    pub body: Bytes,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub grpc_status: Option<u32>,
}

/// A direction of a stream: requests flow client → upstream, responses back. Everything
/// the host keeps per direction is an array indexed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    Request = 0,
    Response = 1,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::Request, Dir::Response];

    pub fn other(self) -> Dir {
        match self {
            Dir::Request => Dir::Response,
            Dir::Response => Dir::Request,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One value per direction, indexed by [`Dir`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerDir<T>(pub [T; 2]);

impl<T> std::ops::Index<Dir> for PerDir<T> {
    type Output = T;
    fn index(&self, d: Dir) -> &T {
        &self.0[d as usize]
    }
}

impl<T> std::ops::IndexMut<Dir> for PerDir<T> {
    fn index_mut(&mut self, d: Dir) -> &mut T {
        &mut self.0[d as usize]
    }
}

/// Things a filter asked for during a callback. Envoy runs them after the VM call returns.
#[derive(Clone, Debug, Default)]
pub struct Actions {
    /// `proxy_continue_stream`, per direction.
    pub resume: PerDir<bool>,
    pub close: bool,
    pub local_reply: Option<LocalReply>,
}

impl Actions {
    pub fn is_empty(&self) -> bool {
        !self.resume[Dir::Request] && !self.resume[Dir::Response] && !self.close && self.local_reply.is_none()
    }
}

/// Which maps and buffers a filter may touch right now (Envoy drops its pointers to a map as
/// soon as the callback that owns it continues), per direction.
#[derive(Clone, Copy, Debug, Default)]
pub struct Access {
    pub headers: PerDir<bool>,
    pub trailers: PerDir<bool>,
    pub body: PerDir<bool>,
    /// In the last body chunk without trailers: trailers may be added.
    pub may_add_trailers: PerDir<bool>,
}

/// Body bytes held at one filter. Chunks are kept as the proxy received them (no copy) until
/// a filter buffers more or edits them.
#[derive(Debug, Default)]
pub enum Body {
    #[default]
    Empty,
    Shared(Bytes),
    Owned(BytesMut),
}

impl Body {
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Body::Empty => &[],
            Body::Shared(b) => b,
            Body::Owned(b) => b,
        }
    }

    pub fn clear(&mut self) {
        *self = Body::Empty;
    }

    /// Adds `chunk` at the end; the first chunk is held without copying.
    pub fn append(&mut self, chunk: Bytes) {
        match self {
            Body::Empty => *self = Body::Shared(chunk),
            _ if chunk.is_empty() => {}
            _ => self.owned().extend_from_slice(&chunk),
        }
    }

    /// The bytes as an editable buffer (copied once if still shared).
    pub fn owned(&mut self) -> &mut BytesMut {
        if !matches!(self, Body::Owned(_)) {
            *self = Body::Owned(BytesMut::from(self.as_slice()));
        }
        match self {
            Body::Owned(b) => b,
            _ => unreachable!("just made owned"),
        }
    }

    pub fn take(&mut self) -> Bytes {
        match std::mem::take(self) {
            Body::Empty => Bytes::new(),
            Body::Shared(b) => b,
            Body::Owned(b) => b.freeze(),
        }
    }
}

/// The part of a stream that belongs to one filter of the chain.
#[derive(Debug, Default)]
pub struct StageData {
    /// The filter's context id in its VM; 0 until `proxy_on_context_create` ran.
    pub context_id: u32,
    pub access: Access,
    /// Body bytes held at this filter (paused or buffering), readable as HTTP_*_BODY.
    pub body: PerDir<Body>,
    pub actions: Actions,
}

/// Shared per-stream state.
#[derive(Debug, Default)]
pub struct StreamData {
    /// Request and response headers (pseudo-headers included), by [`Dir`].
    pub headers: PerDir<HeaderMap>,
    pub trailers: PerDir<Option<HeaderMap>>,
    pub info: StreamInfo,
    /// Values set with `proxy_set_property`, readable by every filter of the stream.
    pub filter_state: HashMap<Vec<u8>, Bytes>,
    pub stages: Vec<StageData>,
    /// The access-log phase: maps are read-only and request trailers are gone.
    pub in_log: bool,
    /// A filter changed the body: a Content-Length from the origin no longer holds, so the
    /// proxy drops it (if the headers have not left yet).
    pub body_rewritten: PerDir<bool>,
    /// Some stage has actions waiting (spares the engine a scan of every stage).
    pub actions_pending: bool,
    /// A TCP connection through network filters: stage bodies hold DOWNSTREAM_DATA
    /// ([`Dir::Request`]) and UPSTREAM_DATA ([`Dir::Response`]).
    pub network: bool,
    /// A filter called `clear_route_cache`: the proxy chooses the route again before the
    /// request goes upstream.
    pub route_cache_cleared: bool,
    /// Whoever drives each side of the stream (the client-facing response, the upstream-facing
    /// request body): both are woken when a filter acts from outside a callback.
    wakers: PerDir<Option<Waker>>,
}

pub type SharedStream = Rc<RefCell<StreamData>>;

impl StreamData {
    pub fn new(request_headers: HeaderMap, info: StreamInfo, stages: usize) -> StreamData {
        StreamData {
            headers: PerDir([request_headers, HeaderMap::new()]),
            info,
            stages: (0..stages).map(|_| StageData::default()).collect(),
            ..StreamData::default()
        }
    }

    /// Remembers who drives `side` of the stream (the direction whose output it takes).
    pub fn set_waker(&mut self, side: Dir, waker: &Waker) {
        match &self.wakers[side] {
            Some(w) if w.will_wake(waker) => {}
            _ => self.wakers[side] = Some(waker.clone()),
        }
    }

    /// Wakes the driver of `side`, if one waits.
    pub fn wake(&self, side: Dir) {
        if let Some(w) = &self.wakers[side] {
            w.wake_by_ref();
        }
    }

    /// Records actions from a callback and wakes whoever drives the stream.
    pub fn act(&mut self, stage: usize, f: impl FnOnce(&mut Actions)) {
        if let Some(s) = self.stages.get_mut(stage) {
            f(&mut s.actions);
            self.actions_pending = true;
        }
        self.wake(Dir::Request);
        self.wake(Dir::Response);
    }
}
