//! Every request starts here, whichever path it then takes: one Host/authority rule, one
//! route lookup, one header sanitation (hop-by-hop headers, the trust boundary for
//! `x-envoy-*`, `x-request-id`), and one mapping from failures to the local replies Envoy
//! gives. With no filters the request goes straight to the router ([`super::forward`]);
//! with filters, through the chain ([`super::stream`]). The two differ only in the engine.

use std::borrow::Cow;
use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::body::{self, BoxError, ProxyBody};
use super::generation::{Chain, Generation, ListenerGeneration, Route};
use super::listener::{ActiveStream, ClientResponseBody, CloseReason, ConnLimits, ConnState};
use super::upstream::{UpstreamError, strip_hop_by_hop};
use super::worker::Worker;
use crate::config::ListenerConfig;

pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Why the proxy answers a request itself. Both request paths map a failure to the same
/// status, response code details and body (Envoy's where Envoy has one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamFailure {
    /// The request is malformed (RFC 9112 §3.2: Host missing, repeated or invalid; an
    /// `:authority` that contradicts Host).
    BadRequest(&'static str),
    /// The client's body was malformed or ended early.
    BadRequestBody,
    NoRoute,
    NoCluster,
    /// The cluster has no endpoint to send to.
    NoHealthyUpstream,
    UpstreamConnect,
    UpstreamReset,
    /// The route timeout expired before the response began.
    RouteTimeout,
    PerTryTimeout,
    /// Nothing moved in either direction for the stream idle timeout.
    StreamIdle,
    /// A request asking for retries has a body larger than the retry buffer.
    RetryBufferOverflow,
    /// A fail-closed filter has no working VM.
    FilterUnavailable(String),
}

impl StreamFailure {
    /// (status, response code details, body).
    pub fn answer(&self) -> (u16, &'static str, Cow<'static, str>) {
        const RESET: &str = "upstream connect error or disconnect/reset before headers. reset reason: ";
        match self {
            StreamFailure::BadRequest(why) => {
                (400, why, Cow::Owned(format!("bad request: {}\n", why.replace('_', " "))))
            }
            StreamFailure::BadRequestBody => {
                (400, "request_body_invalid", Cow::Borrowed("malformed or incomplete request body\n"))
            }
            StreamFailure::NoRoute => (404, "route_not_found", Cow::Borrowed("no route matches this path\n")),
            StreamFailure::NoCluster => (404, "cluster_not_found", Cow::Borrowed("no cluster for this request\n")),
            StreamFailure::NoHealthyUpstream => (503, "no_healthy_upstream", Cow::Borrowed("no healthy upstream")),
            StreamFailure::UpstreamConnect => (
                503,
                "upstream_reset_before_response_started{connection_failure}",
                Cow::Owned(format!("{RESET}connection failure")),
            ),
            StreamFailure::UpstreamReset => (
                503,
                "upstream_reset_before_response_started{remote_reset}",
                Cow::Owned(format!("{RESET}remote reset")),
            ),
            StreamFailure::RouteTimeout => {
                (504, "upstream_response_timeout", Cow::Borrowed("upstream request timeout"))
            }
            StreamFailure::PerTryTimeout => {
                (504, "upstream_per_try_timeout", Cow::Borrowed("upstream request timeout"))
            }
            StreamFailure::StreamIdle => (408, "stream_idle_timeout", Cow::Borrowed("stream timeout")),
            StreamFailure::RetryBufferOverflow => {
                (413, "request_payload_exceeded_retry_buffer_limit", Cow::Borrowed("request body too large to retry\n"))
            }
            StreamFailure::FilterUnavailable(name) => {
                (503, "wasm_fail_stream", Cow::Owned(format!("filter {name} is unavailable (fail closed)\n")))
            }
        }
    }

    pub fn from_upstream(e: &UpstreamError) -> StreamFailure {
        match e {
            UpstreamError::Connect(..) | UpstreamError::ConnectTimeout(_) | UpstreamError::Tls(..) => {
                StreamFailure::UpstreamConnect
            }
            UpstreamError::Reset(..) => StreamFailure::UpstreamReset,
            UpstreamError::NoHealthyUpstream => StreamFailure::NoHealthyUpstream,
        }
    }

    /// The answer as a response of the no-filter path.
    pub fn response(&self) -> Response<ProxyBody> {
        let (status, _, text) = self.answer();
        plain(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), text.into_owned())
    }

    /// The answer as a local reply through the filter chain.
    pub fn local_reply(&self) -> meshwork_wasm_host::LocalReply {
        let (status, details, text) = self.answer();
        meshwork_wasm_host::LocalReply {
            status: u32::from(status),
            details: details.into(),
            body: Bytes::from(text.into_owned()),
            headers: Vec::new(),
            grpc_status: None,
        }
    }
}

pub fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A request ready for either path: its route found, its headers sanitised, `Host` set to its
/// authority and its target in origin form.
pub struct Prepared {
    pub parts: http::request::Parts,
    pub route: Rc<Route>,
    /// The client's protocol, for the filters' `request.protocol`.
    pub protocol: Version,
    /// The port the request arrived on (a redirect's port when its `Host` has none).
    pub listener_port: u16,
}

/// The authority of a request (RFC 9112 §3.2.2, RFC 9113 §8.3.1): the target's own authority
/// when it has one (absolute form, HTTP/2 `:authority`), else the single Host header.
fn authority(parts: &http::request::Parts) -> Result<Option<HeaderValue>, StreamFailure> {
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(StreamFailure::BadRequest("multiple_host_headers"));
    }
    if let Some(host) = &host
        && http::uri::Authority::try_from(host.as_bytes()).is_err()
    {
        return Err(StreamFailure::BadRequest("invalid_host_header"));
    }
    match (parts.uri.authority(), host) {
        (Some(target), host) => {
            if parts.version == Version::HTTP_2
                && let Some(host) = host
                && !host.as_bytes().eq_ignore_ascii_case(target.as_str().as_bytes())
            {
                return Err(StreamFailure::BadRequest("host_differs_from_authority"));
            }
            // A proxy replaces Host with the absolute-form target's authority (§3.2.2).
            Ok(HeaderValue::from_str(target.as_str()).ok())
        }
        (None, Some(host)) => Ok(Some(host)),
        (None, None) if parts.version == Version::HTTP_11 => Err(StreamFailure::BadRequest("missing_host_header")),
        (None, None) => Ok(None),
    }
}

/// The headers Envoy removes from external requests (its header sanitising list): the ones
/// that steer its router or claim to come from inside the mesh. Other `x-envoy-*` headers —
/// fault injection's `x-envoy-fault-*`, which a filter must be configured to honour — are
/// left to the filters, as in Envoy.
const INTERNAL_ONLY: [&str; 19] = [
    "x-envoy-attempt-count",
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-original-path",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-ms",
];

/// Removes the internal-only headers a client outside the trust boundary sent; returns how
/// many. Envoy honours them only from internal callers.
fn strip_untrusted(headers: &mut http::HeaderMap) -> usize {
    // One pass over the names first: most requests carry none, and then nothing is hashed.
    if !headers.keys().any(|n| n.as_str().starts_with("x-envoy-")) {
        return 0;
    }
    let mut removed = 0;
    for name in INTERNAL_ONLY {
        while headers.remove(name).is_some() {
            removed += 1;
        }
    }
    removed
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// The client address that counts for trust: the peer, or — when the peer is trusted and
/// vouches for proxies before it (`xff_trusted_hops`) — the `x-forwarded-for` entry that many
/// hops from the end (Envoy's `xff_num_trusted_hops`).
fn effective_client(headers: &http::HeaderMap, peer: std::net::IpAddr, settings: &ListenerConfig) -> std::net::IpAddr {
    let hops = settings.xff_trusted_hops as usize;
    if hops == 0 || !settings.trusts(peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    entries.len().checked_sub(hops).and_then(|i| entries[i].parse().ok()).unwrap_or(peer)
}

/// Applies the rules every request shares; an error is the local reply to send instead.
pub fn prepare(
    mut parts: http::request::Parts,
    listener: &ListenerGeneration,
    conn: &ConnState,
    worker: &Worker,
) -> Result<Prepared, StreamFailure> {
    let authority = authority(&parts)?;
    strip_hop_by_hop(&mut parts.headers);
    let settings = &listener.settings;
    let trusted = settings.trusts(effective_client(&parts.headers, conn.peer.ip(), settings));
    if !trusted {
        let stripped = strip_untrusted(&mut parts.headers);
        if stripped > 0 {
            worker.stats.untrusted_headers.increment(stripped as i64).ok();
        }
    }
    // x-forwarded-proto: a trusted client's own stays; everyone else's is the connection's.
    if !trusted || !parts.headers.contains_key(X_FORWARDED_PROTO) {
        parts.headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme));
    }
    if settings.use_remote_address {
        append_forwarded_for(&mut parts.headers, conn.peer.ip());
    }
    if !parts.headers.contains_key(X_REQUEST_ID) {
        parts.headers.insert(X_REQUEST_ID, worker.request_id());
    }
    match authority {
        Some(a) => {
            parts.headers.insert(http::header::HOST, a);
        }
        None => {
            parts.headers.remove(http::header::HOST);
        }
    }
    if parts.uri.authority().is_some()
        && let Some(origin_form) = parts.uri.path_and_query().and_then(|p| p.as_str().parse().ok())
    {
        parts.uri = origin_form;
    }
    // Routes match what the request is after sanitation, as Envoy's do.
    let route = listener.route(&parts.method, &parts.uri, &parts.headers).ok_or(StreamFailure::NoRoute)?;
    let protocol = parts.version;
    parts.version = Version::HTTP_11;
    Ok(Prepared { parts, route, protocol, listener_port: conn.local.port() })
}

/// Appends `ip` to `x-forwarded-for`, folding repeated headers into one list.
fn append_forwarded_for(headers: &mut http::HeaderMap, ip: std::net::IpAddr) {
    let mut list = String::new();
    for v in headers.get_all(X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()) {
        list.push_str(v);
        list.push_str(", ");
    }
    list.push_str(&ip.to_string());
    if let Ok(v) = HeaderValue::from_str(&list) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// The service of every client connection.
pub async fn serve(
    request: Request<Incoming>,
    worker: &Rc<Worker>,
    conn: &Rc<ConnState>,
    limits: ConnLimits,
) -> Result<Response<ClientResponseBody>, BoxError> {
    let stream: ActiveStream = conn.stream_started(request.version());
    let generation = worker.current();
    let mut response = handle(request, worker, &generation, conn).await?;
    drop(generation);
    if limits.max_requests.is_some_and(|max| conn.requests() >= max) && !conn.draining() {
        if conn.is_h2() {
            conn.request_drain(CloseReason::MaxRequests);
        } else {
            worker.stats.connection_closed(CloseReason::MaxRequests);
            response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
    } else if conn.draining() && !conn.is_h2() {
        response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response.map(|body| ClientResponseBody::new(body, stream)))
}

async fn handle(
    request: Request<Incoming>,
    worker: &Rc<Worker>,
    generation: &Rc<Generation>,
    conn: &ConnState,
) -> Result<Response<ProxyBody>, BoxError> {
    let Some(listener) = generation.listener(conn.listener) else {
        // The listener is gone from a reloaded configuration: this connection is draining.
        return Ok(StreamFailure::NoRoute.response());
    };
    let (parts, body) = request.into_parts();
    let prepared = match prepare(parts, listener, conn, worker) {
        Ok(p) => p,
        Err(failure) => {
            let response = failure.response();
            worker.stats.downstream_response(Some(u32::from(response.status().as_u16())));
            return Ok(response);
        }
    };
    match listener.chain() {
        Chain::Empty => Ok(super::forward::forward(prepared, body, worker, generation, listener).await),
        Chain::Ready(vms) => super::stream::handle(prepared, body, worker, generation, listener, vms, conn).await,
        Chain::Unavailable(filter) => {
            worker.stats.unavailable.increment(1).ok();
            worker.stats.downstream_response(Some(503));
            Ok(StreamFailure::FilterUnavailable(filter).response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_behind_trusted_proxies_comes_from_x_forwarded_for() {
        let mut settings =
            ListenerConfig { trusted_clients: vec!["10.0.0.0/8".parse().unwrap()], ..ListenerConfig::default() };
        let mut h = http::HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9, 10.1.1.1"));
        let lb: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(effective_client(&h, lb, &settings), lb, "no trusted hops: the peer");
        settings.xff_trusted_hops = 1;
        assert_eq!(effective_client(&h, lb, &settings), "10.1.1.1".parse::<std::net::IpAddr>().unwrap());
        settings.xff_trusted_hops = 2;
        assert_eq!(effective_client(&h, lb, &settings), "203.0.113.9".parse::<std::net::IpAddr>().unwrap());
        let outsider: std::net::IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(effective_client(&h, outsider, &settings), outsider, "an untrusted peer vouches for nothing");
        append_forwarded_for(&mut h, lb);
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "203.0.113.9, 10.1.1.1, 10.0.0.2");
    }
}
