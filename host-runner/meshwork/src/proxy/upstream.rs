//! Upstream clusters of one worker: endpoints (IP addresses, or host names resolved and
//! re-resolved as Envoy's STRICT_DNS), connections over TCP or TLS, HTTP/1.1 pools and
//! shared HTTP/2 connections per endpoint, round robin, and the cluster's circuit (requests
//! and retries in flight, shared by every worker).
//!
//! An HTTP/1.1 connection goes back to its pool only after its response body has been read to
//! the end, so a pooled connection is always idle. An HTTP/2 connection is shared by every
//! request to its endpoint until it closes. Everything but the circuit is single-threaded.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use meshwork_wasm_host::TlsInfo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{BoxError, ProxyBody};
use super::listener::LocalExec;
use super::stats::ClusterMetrics;
use crate::config::{ClusterConfig, EndpointConfig, RetryBudget};
use crate::tls::ClientTls;

/// Why an upstream request produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connection to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("upstream {0} reset the request: {1}")]
    Reset(SocketAddr, hyper::Error),
    #[error("cluster has no endpoint (its host names resolved to no address)")]
    NoHealthyUpstream,
}

impl UpstreamError {
    /// Envoy's `upstream.transport_failure_reason`.
    pub fn transport_failure(&self) -> Option<String> {
        match self {
            UpstreamError::Tls(_, e) => Some(format!("TLS error: {e}")),
            _ => None,
        }
    }
}

/// A connected stream to an endpoint, plain or TLS.
pub trait UpstreamIo: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> UpstreamIo for T {}

/// What one upstream connection is, for the `upstream.*` properties.
#[derive(Debug)]
pub struct ConnInfo {
    pub addr: SocketAddr,
    pub local: Option<SocketAddr>,
    pub tls: Option<Rc<TlsInfo>>,
}

enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

pub struct Endpoint {
    pub addr: SocketAddr,
    idle: RefCell<Vec<(http1::SendRequest<ProxyBody>, Rc<ConnInfo>)>>,
    shared: RefCell<Option<(http2::SendRequest<ProxyBody>, Rc<ConnInfo>)>>,
    /// The HTTP/2 connection gRPC callouts use (its body type is tonic's).
    grpc: RefCell<Option<http2::SendRequest<tonic::body::Body>>>,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Rc<Endpoint> {
        Rc::new(Endpoint { addr, idle: RefCell::default(), shared: RefCell::default(), grpc: RefCell::default() })
    }
}

pub struct Cluster {
    pub name: Rc<str>,
    config: ClusterConfig,
    endpoints: RefCell<Vec<Rc<Endpoint>>>,
    next: Cell<usize>,
    /// When host names were last resolved (and the next resolution is due).
    resolved_at: Cell<Option<Instant>>,
    resolve: Rc<std::collections::BTreeMap<String, Vec<std::net::IpAddr>>>,
    tls: Option<Arc<ClientTls>>,
    pub circuit: Arc<Circuit>,
    pub metrics: ClusterMetrics,
}

/// What is in flight to one cluster across the process, and how many retries may join it:
/// Envoy's `max_retries` circuit breaker (default 3), or its retry budget (a percentage of the
/// requests in flight, with a floor). Every retry, whoever asked for it, must be admitted here.
#[derive(Debug)]
pub struct Circuit {
    requests: AtomicU64,
    retries: AtomicU64,
    max_retries: u32,
    budget: Option<RetryBudget>,
}

impl Circuit {
    pub fn new(max_retries: u32, budget: Option<RetryBudget>) -> Circuit {
        Circuit { requests: AtomicU64::new(0), retries: AtomicU64::new(0), max_retries, budget }
    }

    /// No cap (clusters a configuration does not describe).
    pub fn unlimited() -> Circuit {
        Circuit::new(u32::MAX, None)
    }

    /// Retries that may be in flight now.
    fn retry_limit(&self) -> u64 {
        match self.budget {
            None => u64::from(self.max_retries),
            Some(b) => {
                let share = (self.requests.load(Ordering::Relaxed) as f64 * b.percent / 100.0) as u64;
                share.max(u64::from(b.min_concurrency))
            }
        }
    }

    /// Admits one more retry, or says no (the caller answers with what it has).
    pub fn try_retry(self: &Arc<Self>) -> Option<RetryPermit> {
        let limit = self.retry_limit();
        let mut current = self.retries.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match self.retries.compare_exchange_weak(current, current + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(RetryPermit(self.clone())),
                Err(seen) => current = seen,
            }
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A retry admitted by the circuit; given back when its attempt is over.
#[derive(Debug)]
pub struct RetryPermit(Arc<Circuit>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request to the cluster in flight, until its response body is done.
#[derive(Debug)]
struct InFlight(Arc<Circuit>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Headers HTTP/1.1 uses per connection; a proxy must not forward them (RFC 9110 7.6.1).
/// Static names: removing them parses nothing per request.
const HOP_BY_HOP: [http::HeaderName; 8] = [
    http::header::CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
    http::header::PROXY_AUTHENTICATE,
];

pub fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // One cheap pass first: most messages carry none of these, and then nothing is hashed.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if let Some(listed) = headers.get(http::header::CONNECTION).and_then(|v| v.to_str().ok()).map(str::to_owned) {
        for name in listed.split(',') {
            headers.remove(name.trim());
        }
    }
    // gRPC needs `te: trailers` end to end (RFC 9113 §8.2.2 allows exactly that value).
    let te_trailers = headers.get(http::header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// Host names resolved through the system resolver (or `--resolve` overrides), every address.
fn resolve_endpoints(
    config: &ClusterConfig,
    overrides: &std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for e in &config.endpoints {
        match e {
            EndpointConfig::Ip(addr) => out.push(*addr),
            EndpointConfig::Name { host, port } => {
                if let Some(ips) = overrides.get(host) {
                    out.extend(ips.iter().map(|ip| SocketAddr::new(*ip, *port)));
                    continue;
                }
                match std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port)) {
                    Ok(addrs) => out.extend(addrs),
                    Err(e) => tracing::warn!(cluster = %config.name, %host, "cannot resolve: {e}"),
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Cluster {
    pub fn new(
        config: &ClusterConfig,
        tls: Option<Arc<ClientTls>>,
        resolve: Rc<std::collections::BTreeMap<String, Vec<std::net::IpAddr>>>,
        circuit: Arc<Circuit>,
        metrics: ClusterMetrics,
    ) -> Cluster {
        let addrs = resolve_endpoints(config, &resolve);
        let uses_dns = config.endpoints.iter().any(|e| matches!(e, EndpointConfig::Name { .. }));
        Cluster {
            name: Rc::from(config.name.as_str()),
            config: config.clone(),
            endpoints: RefCell::new(addrs.into_iter().map(Endpoint::new).collect()),
            next: Cell::new(0),
            resolved_at: Cell::new(uses_dns.then(Instant::now)),
            resolve,
            tls,
            circuit,
            metrics,
        }
    }

    /// Resolves host names again when the refresh period has passed, keeping the endpoints
    /// (and their pools) whose address stays. Name resolution blocks for as long as the
    /// resolver takes; it runs at most once per `dns_refresh` per worker.
    fn refresh(&self) {
        let Some(at) = self.resolved_at.get() else { return };
        if at.elapsed() < self.config.dns_refresh {
            return;
        }
        self.resolved_at.set(Some(Instant::now()));
        let addrs = resolve_endpoints(&self.config, &self.resolve);
        if addrs.is_empty() {
            // Keep what worked last rather than fail every request on a resolver hiccup.
            return;
        }
        let mut endpoints = self.endpoints.borrow_mut();
        let kept: Vec<Rc<Endpoint>> = addrs
            .into_iter()
            .map(|a| endpoints.iter().find(|e| e.addr == a).cloned().unwrap_or_else(|| Endpoint::new(a)))
            .collect();
        *endpoints = kept;
    }

    fn pick(&self) -> Option<Rc<Endpoint>> {
        self.refresh();
        let endpoints = self.endpoints.borrow();
        if endpoints.is_empty() {
            return None;
        }
        let i = self.next.get();
        self.next.set(i.wrapping_add(1));
        Some(endpoints[i % endpoints.len()].clone())
    }

    /// Opens a connection to `addr`: TCP, then TLS when the cluster has it. Returns the stream,
    /// what it is, and whether ALPN chose HTTP/2.
    pub async fn connect_io(
        &self,
        addr: SocketAddr,
    ) -> Result<(Box<dyn UpstreamIo>, Rc<ConnInfo>, bool), UpstreamError> {
        let stream = tokio::time::timeout(self.config.connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(addr))?
            .map_err(|e| UpstreamError::Connect(addr, e))?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let Some(tls) = &self.tls else {
            return Ok((Box::new(stream), Rc::new(ConnInfo { addr, local, tls: None }), false));
        };
        let loaded = tls.current();
        let name = tls.server_name(addr.ip());
        let connector = tokio_rustls::TlsConnector::from(loaded.config.clone());
        let handshake = connector.connect(name.clone(), stream);
        let stream = tokio::time::timeout(self.config.connect_timeout, handshake)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(addr))?
            .map_err(|e| UpstreamError::Tls(addr, e))?;
        let (_, conn) = stream.get_ref();
        let sni = match &name {
            rustls_pki_types::ServerName::DnsName(d) => Some(d.as_ref().to_owned()),
            _ => None,
        };
        let info = crate::tls::info::connection(conn, sni.as_deref(), loaded.local.clone());
        let h2 = conn.alpn_protocol() == Some(b"h2");
        Ok((Box::new(stream), Rc::new(ConnInfo { addr, local, tls: Some(Rc::new(info)) }), h2))
    }

    /// Opens a TCP (or TLS) stream to the next endpoint: the TCP proxy's upstream.
    pub async fn connect_stream(&self) -> Result<(Box<dyn UpstreamIo>, Rc<ConnInfo>), UpstreamError> {
        let endpoint = self.pick().ok_or(UpstreamError::NoHealthyUpstream)?;
        let (io, info, _) = self.connect_io(endpoint.addr).await?;
        Ok((io, info))
    }

    /// Sends `request` to the next endpoint, reusing a connection when there is one.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<(Response<PooledBody>, Rc<ConnInfo>), UpstreamError> {
        let endpoint = self.pick().ok_or(UpstreamError::NoHealthyUpstream)?;
        let in_flight = self.circuit.request_started();
        let (sender, info) = self.checkout(&endpoint).await?;
        let addr = endpoint.addr;
        match sender {
            Sender::H1(mut sender) => {
                let response = sender.send_request(request).await.map_err(|e| UpstreamError::Reset(addr, e))?;
                let (parts, body) = response.into_parts();
                let mut pooled =
                    PooledBody { body, pool: Some((endpoint.clone(), sender, info.clone())), _in_flight: in_flight };
                if pooled.body.is_end_stream() {
                    pooled.release();
                }
                Ok((Response::from_parts(parts, pooled), info))
            }
            Sender::H2(mut sender) => {
                let request = h2_request(request);
                let response = sender.send_request(request).await.map_err(|e| UpstreamError::Reset(addr, e))?;
                let (parts, body) = response.into_parts();
                Ok((Response::from_parts(parts, PooledBody { body, pool: None, _in_flight: in_flight }), info))
            }
        }
    }

    async fn checkout(&self, endpoint: &Rc<Endpoint>) -> Result<(Sender, Rc<ConnInfo>), UpstreamError> {
        if let Some((sender, info)) = endpoint.shared.borrow().as_ref()
            && !sender.is_closed()
        {
            return Ok((Sender::H2(sender.clone()), info.clone()));
        }
        loop {
            let Some((mut sender, info)) = endpoint.idle.borrow_mut().pop() else {
                break;
            };
            if sender.is_closed() {
                continue;
            }
            // The previous response was read to the end; the connection task may need a turn
            // to notice, so wait for it rather than open another connection.
            if sender.ready().await.is_ok() {
                return Ok((Sender::H1(sender), info));
            }
        }
        let addr = endpoint.addr;
        let (io, info, alpn_h2) = self.connect_io(addr).await?;
        let io = TokioIo::new(io);
        if self.config.http2 || alpn_h2 {
            let (sender, connection) = http2::Builder::new(LocalExec)
                .max_header_list_size(64 << 10)
                .handshake(io)
                .await
                .map_err(|e| UpstreamError::Reset(addr, e))?;
            tokio::task::spawn_local(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%addr, "upstream HTTP/2 connection closed: {e}");
                }
            });
            *endpoint.shared.borrow_mut() = Some((sender.clone(), info.clone()));
            return Ok((Sender::H2(sender), info));
        }
        let (sender, connection) = http1::Builder::new()
            .max_headers(super::listener::MAX_HEADERS)
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Reset(addr, e))?;
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, "upstream connection closed: {e}");
            }
        });
        Ok((Sender::H1(sender), info))
    }

    /// An HTTP/2 connection for gRPC callouts to the next endpoint (h2c, or h2 over TLS).
    pub async fn grpc_sender(&self) -> Result<(http2::SendRequest<tonic::body::Body>, SocketAddr), UpstreamError> {
        let endpoint = self.pick().ok_or(UpstreamError::NoHealthyUpstream)?;
        let addr = endpoint.addr;
        if let Some(sender) = endpoint.grpc.borrow().as_ref()
            && !sender.is_closed()
        {
            return Ok((sender.clone(), addr));
        }
        let (io, _, _) = self.connect_io(addr).await?;
        let (sender, connection) = http2::Builder::new(LocalExec)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Reset(addr, e))?;
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, "gRPC connection closed: {e}");
            }
        });
        *endpoint.grpc.borrow_mut() = Some(sender.clone());
        Ok((sender, addr))
    }
}

/// HTTP/2 requests carry the authority in `:authority`, and no `Host` (RFC 9113 §8.3.1).
fn h2_request(mut request: Request<ProxyBody>) -> Request<ProxyBody> {
    if request.uri().authority().is_none()
        && let Some(host) = request.headers_mut().remove(http::header::HOST)
        && let Ok(authority) = http::uri::Authority::try_from(host.as_bytes())
    {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    *request.version_mut() = http::Version::HTTP_2;
    request
}

/// An upstream response body that gives its HTTP/1.1 connection back to the pool at its end.
pub struct PooledBody {
    body: Incoming,
    pool: Option<(Rc<Endpoint>, http1::SendRequest<ProxyBody>, Rc<ConnInfo>)>,
    _in_flight: InFlight,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((endpoint, sender, info)) = self.pool.take()
            && !sender.is_closed()
        {
            endpoint.idle.borrow_mut().push((sender, info));
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let result = match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        match &result {
            None => this.release(),
            Some(Ok(_)) if this.body.is_end_stream() => this.release(),
            Some(Err(_)) => this.pool = None,
            _ => {}
        }
        Poll::Ready(result.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Every cluster of a worker, by name.
pub struct Upstreams {
    clusters: std::collections::HashMap<String, Rc<Cluster>>,
}

impl Upstreams {
    pub fn new(clusters: impl IntoIterator<Item = Cluster>) -> Upstreams {
        Upstreams { clusters: clusters.into_iter().map(|c| (c.name.to_string(), Rc::new(c))).collect() }
    }

    pub fn get(&self, name: &str) -> Option<Rc<Cluster>> {
        self.clusters.get(name).cloned()
    }
}
