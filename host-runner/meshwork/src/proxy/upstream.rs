//! Upstream clusters of one worker: HTTP/1.1 connection pools per endpoint, round robin, and
//! the cluster's circuit (requests and retries in flight, shared by every worker).
//!
//! A connection goes back to its pool only after its response body has been read to the end,
//! so a pooled connection is always idle. Everything but the circuit is single-threaded.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::body::{BoxError, ProxyBody};
use super::stats::ClusterMetrics;
use crate::config::RetryBudget;

/// Why an upstream request produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connection to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("upstream {0} reset the request: {1}")]
    Reset(SocketAddr, hyper::Error),
}

pub struct Endpoint {
    pub addr: SocketAddr,
    idle: RefCell<Vec<SendRequest<ProxyBody>>>,
}

pub struct Cluster {
    pub name: Rc<str>,
    endpoints: Vec<Rc<Endpoint>>,
    next: Cell<usize>,
    connect_timeout: Duration,
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
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

impl Cluster {
    pub fn new(
        name: String,
        endpoints: &[SocketAddr],
        connect_timeout: Duration,
        circuit: Arc<Circuit>,
        metrics: ClusterMetrics,
    ) -> Cluster {
        Cluster {
            name: Rc::from(name),
            endpoints: endpoints
                .iter()
                .map(|addr| Rc::new(Endpoint { addr: *addr, idle: RefCell::default() }))
                .collect(),
            next: Cell::new(0),
            connect_timeout,
            circuit,
            metrics,
        }
    }

    fn pick(&self) -> Rc<Endpoint> {
        let i = self.next.get();
        self.next.set(i.wrapping_add(1));
        self.endpoints[i % self.endpoints.len()].clone()
    }

    /// Sends `request` to the next endpoint, reusing an idle connection when there is one.
    pub async fn send(&self, request: Request<ProxyBody>) -> Result<(Response<PooledBody>, SocketAddr), UpstreamError> {
        let endpoint = self.pick();
        let in_flight = self.circuit.request_started();
        let mut sender = self.checkout(&endpoint).await?;
        let response = sender.send_request(request).await.map_err(|e| UpstreamError::Reset(endpoint.addr, e))?;
        let (parts, body) = response.into_parts();
        let mut pooled = PooledBody { body, pool: Some((endpoint.clone(), sender)), _in_flight: in_flight };
        if pooled.body.is_end_stream() {
            pooled.release();
        }
        Ok((Response::from_parts(parts, pooled), endpoint.addr))
    }

    async fn checkout(&self, endpoint: &Endpoint) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        loop {
            let Some(mut sender) = endpoint.idle.borrow_mut().pop() else {
                break;
            };
            if sender.is_closed() {
                continue;
            }
            // The previous response was read to the end; the connection task may need a turn
            // to notice, so wait for it rather than open another connection.
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        self.connect(endpoint.addr).await
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(addr))?
            .map_err(|e| UpstreamError::Connect(addr, e))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_headers(super::listener::MAX_HEADERS)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Reset(addr, e))?;
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%addr, "upstream connection closed: {e}");
            }
        });
        Ok(sender)
    }
}

/// An upstream response body that gives its connection back to the pool at its end.
pub struct PooledBody {
    body: Incoming,
    pool: Option<(Rc<Endpoint>, SendRequest<ProxyBody>)>,
    _in_flight: InFlight,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((endpoint, sender)) = self.pool.take()
            && !sender.is_closed()
        {
            endpoint.idle.borrow_mut().push(sender);
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
