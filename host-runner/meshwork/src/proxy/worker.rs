//! One worker thread: its VMs (one per filter), upstream pools, timers and callouts.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use meshwork_wasm_host::metrics::Metric;
use meshwork_wasm_host::{
    Dispatcher, HeaderMap, HttpCallRequest, HttpCallResponse, PluginTemplate, PluginVm, QueueOwner, Services,
};
use tokio::sync::mpsc;

use super::body::{self, ProxyBody};
use super::router::Target;
use super::upstream::{Cluster, Upstreams};

pub struct Route {
    pub name: Rc<str>,
    pub prefix: String,
    pub target: Target,
    pub timeout: Option<Duration>,
}

/// The client connection a request arrived on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// The filters a stream runs through, or the reason it cannot run.
pub enum Chain {
    Ready(Vec<Rc<PluginVm>>),
    /// A fail-closed filter has no working VM (start-up failing, restart budget spent).
    Unavailable(String),
}

pub struct Worker {
    routes: Vec<Rc<Route>>,
    upstreams: Rc<Upstreams>,
    pub filters: Vec<FilterSlot>,
    pub stats: Stats,
    next_connection: Cell<u64>,
    rng: Cell<u64>,
}

impl Worker {
    pub fn new(
        index: usize,
        routes: Vec<Rc<Route>>,
        upstreams: Rc<Upstreams>,
        filters: Vec<FilterSlot>,
        services: &Arc<Services>,
        clusters: &[String],
    ) -> Worker {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Worker {
            routes,
            upstreams,
            filters,
            stats: Stats::new(services, clusters, index),
            next_connection: Cell::new((index as u64) << 48),
            rng: Cell::new(u64::from_le_bytes(seed) | 1),
        }
    }

    /// The longest-prefix route for `path`.
    pub fn route(&self, path: &str) -> Option<Rc<Route>> {
        self.routes.iter().filter(|r| path.starts_with(&r.prefix)).max_by_key(|r| r.prefix.len()).cloned()
    }

    pub fn cluster(&self, name: &str) -> Option<Rc<Cluster>> {
        self.upstreams.get(name)
    }

    pub fn has_filters(&self) -> bool {
        !self.filters.is_empty()
    }

    pub fn chain(&self) -> Chain {
        let mut vms = Vec::with_capacity(self.filters.len());
        for slot in &self.filters {
            match slot.vm() {
                Some(vm) => vms.push(vm),
                None if slot.template.plugin.fail_open => {}
                None => return Chain::Unavailable(slot.template.plugin.name.clone()),
            }
        }
        Chain::Ready(vms)
    }

    pub fn connection_id(&self) -> u64 {
        let id = self.next_connection.get() + 1;
        self.next_connection.set(id);
        id
    }

    /// xorshift64: request ids and retry jitter, not secrets.
    fn next_random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    /// Uniform in [0, 1).
    pub fn random_unit(&self) -> f64 {
        (self.next_random() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A version-4 UUID for `x-request-id`, as Envoy generates, formatted by hand: this runs for
    /// every filtered request.
    pub fn request_id(&self) -> http::HeaderValue {
        let next = || self.next_random();
        let a = (next() & 0xffff_ffff_ffff_0fff) | 0x4000; // version 4
        let b = (next() & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // RFC 4122 variant
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_be_bytes());
        bytes[8..].copy_from_slice(&b.to_be_bytes());
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00000000-0000-0000-0000-000000000000";
        // Where each of the 16 bytes lands in the 8-4-4-4-12 layout.
        const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        for (byte, at) in bytes.iter().zip(AT) {
            out[at] = HEX[(byte >> 4) as usize];
            out[at + 1] = HEX[(byte & 0xf) as usize];
        }
        http::HeaderValue::from_bytes(&out).unwrap_or(http::HeaderValue::from_static("0"))
    }
}

/// A filter on this worker: its current VM, rebuilt after failures within a budget.
pub struct FilterSlot {
    pub template: PluginTemplate,
    vm: RefCell<Option<Rc<PluginVm>>>,
    restarts: RefCell<VecDeque<Instant>>,
    dispatcher: Rc<WorkerDispatcher>,
    queue_owner: Arc<dyn QueueOwner>,
    restarts_metric: Arc<Metric>,
}

impl FilterSlot {
    pub fn start(
        template: PluginTemplate,
        dispatcher: Rc<WorkerDispatcher>,
        queue_owner: Arc<dyn QueueOwner>,
    ) -> Result<FilterSlot, meshwork_wasm_host::StartError> {
        let vm = template.instantiate(dispatcher.clone(), queue_owner.clone())?;
        let restarts_metric = template
            .services
            .metrics
            .counter(&format!("meshwork_filter_vm_restarts_total;.;filter=.={}", template.plugin.name));
        Ok(FilterSlot {
            template,
            vm: RefCell::new(Some(vm)),
            restarts: RefCell::default(),
            dispatcher,
            queue_owner,
            restarts_metric,
        })
    }

    /// The VM that currently serves this filter, if it is alive.
    pub fn current(&self) -> Option<Rc<PluginVm>> {
        self.vm.borrow().clone().filter(|vm| !vm.is_failed())
    }

    /// The VM for a new stream. A failed VM is replaced by a fresh one, at most
    /// `max_restarts_per_minute` times a minute; past that the filter stays down (and its
    /// fail policy applies) until the window has room again.
    pub fn vm(&self) -> Option<Rc<PluginVm>> {
        if let Some(vm) = self.current() {
            return Some(vm);
        }
        let plugin = &self.template.plugin;
        let now = Instant::now();
        {
            let mut restarts = self.restarts.borrow_mut();
            while restarts.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
                restarts.pop_front();
            }
            if restarts.len() >= plugin.limits.max_restarts_per_minute as usize {
                return None;
            }
            restarts.push_back(now);
        }
        self.restarts_metric.increment(1).ok();
        match self.template.instantiate(self.dispatcher.clone(), self.queue_owner.clone()) {
            Ok(vm) => {
                tracing::info!(filter = %plugin.name, "rebuilt the filter's VM after a failure");
                *self.vm.borrow_mut() = Some(vm.clone());
                Some(vm)
            }
            Err(e) => {
                tracing::error!(filter = %plugin.name, "cannot rebuild the filter's VM: {e}");
                None
            }
        }
    }
}

/// Carries out VM effects on this worker: callouts and timers.
pub struct WorkerDispatcher {
    upstreams: Rc<Upstreams>,
    ticks: RefCell<HashMap<usize, tokio::task::AbortHandle>>,
}

impl WorkerDispatcher {
    pub fn new(upstreams: Rc<Upstreams>) -> Rc<WorkerDispatcher> {
        Rc::new(WorkerDispatcher { upstreams, ticks: RefCell::default() })
    }
}

impl Dispatcher for WorkerDispatcher {
    fn http_call(&self, vm: &Rc<PluginVm>, call: HttpCallRequest) {
        let cluster = self.upstreams.get(&call.cluster);
        let vm = Rc::downgrade(vm);
        tokio::task::spawn_local(async move {
            let token = call.token;
            let outcome = match cluster {
                Some(cluster) => callout(&cluster, call).await,
                None => None,
            };
            if let Some(vm) = vm.upgrade() {
                let _ = vm.on_http_call_response(token, outcome);
            }
        });
    }

    fn set_tick_period(&self, vm: &Rc<PluginVm>, period: Duration) {
        let key = Rc::as_ptr(vm) as usize;
        if let Some(old) = self.ticks.borrow_mut().remove(&key) {
            old.abort();
        }
        if period.is_zero() {
            return;
        }
        let vm: Weak<PluginVm> = Rc::downgrade(vm);
        let task = tokio::task::spawn_local(async move {
            // Like Envoy, the first tick comes one period after it was set, and each next one a
            // period after the previous callback returned.
            loop {
                tokio::time::sleep(period).await;
                let Some(vm) = vm.upgrade() else { break };
                if vm.is_failed() || vm.on_tick().is_err() {
                    break;
                }
            }
        });
        self.ticks.borrow_mut().insert(key, task.abort_handle());
    }
}

/// Most bytes of a callout response the host buffers (Envoy's async client buffers too).
const CALLOUT_MAX_BYTES: usize = 16 << 20;

/// Sends a callout. As in Envoy, a timeout or a connect failure arrives as a successful local
/// response (504 / 503); only a reset mid-response is a failure (`None`).
async fn callout(cluster: &Cluster, call: HttpCallRequest) -> Option<HttpCallResponse> {
    let HttpCallRequest { headers, body, trailers, timeout, .. } = call;
    let mut builder =
        Request::builder().method(headers.get(b":method").unwrap_or(b"GET")).uri(headers.get(b":path").unwrap_or(b"/"));
    if let Some(h) = builder.headers_mut() {
        *h = headers.regular().clone();
        if let Some(a) = headers.get(b":authority").and_then(|a| http::HeaderValue::from_bytes(a).ok()) {
            h.insert(http::header::HOST, a);
        }
        if !body.is_empty() {
            h.insert(http::header::CONTENT_LENGTH, body.len().into());
        }
    }
    let request_body: ProxyBody = if trailers.is_empty() {
        body::full(body)
    } else {
        let (tx, rx) = body::channel();
        let _ = tx.send(Ok(http_body::Frame::data(body)));
        let _ = tx.send(Ok(http_body::Frame::trailers(trailers.into_regular())));
        ProxyBody::new(rx)
    };
    let request = match builder.body(request_body) {
        Ok(r) => r,
        Err(e) => {
            return Some(local_response(400, &format!("invalid callout request: {e}")));
        }
    };
    let exchange = async {
        let (response, _) = match cluster.send(request).await {
            Ok(r) => r,
            Err(e) => return Some(local_response(503, &e.body())),
        };
        let (parts, body) = response.into_parts();
        let collected = http_body_util::Limited::new(body, CALLOUT_MAX_BYTES).collect().await.ok()?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let mut headers = HeaderMap::from_parts(
            vec![(Bytes::from_static(b":status"), Bytes::copy_from_slice(parts.status.as_str().as_bytes()))],
            parts.headers,
        );
        headers.regular_mut().remove(http::header::TRANSFER_ENCODING);
        Some(HttpCallResponse {
            headers,
            body: collected.to_bytes(),
            trailers: HeaderMap::from_parts(Vec::new(), trailers),
        })
    };
    match timeout {
        None => exchange.await,
        Some(t) => tokio::time::timeout(t, exchange)
            .await
            .unwrap_or_else(|_| Some(local_response(504, "upstream request timeout"))),
    }
}

fn local_response(status: u16, body: &str) -> HttpCallResponse {
    let mut headers = HeaderMap::new();
    let _ = headers.add(b":status", status.to_string().as_bytes());
    let _ = headers.add(b"content-length", body.len().to_string().as_bytes());
    let _ = headers.add(b"content-type", b"text/plain");
    HttpCallResponse { headers, body: Bytes::copy_from_slice(body.as_bytes()), trailers: HeaderMap::new() }
}

/// Routes `proxy_on_queue_ready` to the worker that registered a queue.
pub struct WorkerQueueOwner {
    pub tx: mpsc::UnboundedSender<(usize, u32)>,
    pub filter: usize,
}

impl QueueOwner for WorkerQueueOwner {
    fn queue_ready(&self, queue_id: u32) {
        let _ = self.tx.send((self.filter, queue_id));
    }
}

/// The proxy's own metrics, with handles resolved once per worker.
pub struct Stats {
    requests: [Arc<Metric>; 6],
    upstream_time: HashMap<String, Arc<Metric>>,
    upstream_failures: HashMap<String, Arc<Metric>>,
    upstream_timeouts: HashMap<String, Arc<Metric>>,
    upstream_retries: HashMap<String, Arc<Metric>>,
    pub connections: Arc<Metric>,
    pub unavailable: Arc<Metric>,
}

impl Stats {
    fn new(services: &Services, clusters: &[String], worker: usize) -> Stats {
        let m = &services.metrics;
        let per_cluster = |base: &str, histogram: bool| {
            clusters
                .iter()
                .map(|c| {
                    let name = format!("{base};.;cluster=.={c}");
                    (c.clone(), if histogram { m.histogram(&name) } else { m.counter(&name) })
                })
                .collect()
        };
        Stats {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx", "other"]
                .map(|class| m.counter(&format!("meshwork_downstream_rq_total;.;class=.={class}"))),
            upstream_time: per_cluster("meshwork_upstream_rq_time_us", true),
            upstream_failures: per_cluster("meshwork_upstream_rq_failures_total", false),
            upstream_timeouts: per_cluster("meshwork_upstream_rq_timeouts_total", false),
            upstream_retries: per_cluster("meshwork_upstream_rq_retries_total", false),
            connections: m.counter(&format!("meshwork_downstream_cx_total;.;worker=.={worker}")),
            unavailable: m.counter("meshwork_filter_unavailable_rq_total"),
        }
    }

    pub fn downstream_response(&self, code: Option<u32>) {
        let class = match code {
            Some(c @ 100..=599) => (c / 100 - 1) as usize,
            _ => 5,
        };
        self.requests[class].increment(1).ok();
    }

    pub fn upstream_time(&self, cluster: &str, elapsed: Duration) {
        if let Some(m) = self.upstream_time.get(cluster) {
            m.record(elapsed.as_micros() as u64);
        }
    }

    pub fn upstream_failure(&self, cluster: &str) {
        if let Some(m) = self.upstream_failures.get(cluster) {
            m.increment(1).ok();
        }
    }

    pub fn upstream_retries(&self, cluster: &str, retries: u32) {
        if let (Some(m), 1..) = (self.upstream_retries.get(cluster), retries) {
            m.increment(retries as i64).ok();
        }
    }

    pub fn upstream_timeout(&self, cluster: &str) {
        if let Some(m) = self.upstream_timeouts.get(cluster) {
            m.increment(1).ok();
        }
    }
}
