//! `meshwork run`: the proxy. N workers, each a single-threaded runtime with its own listener
//! socket (SO_REUSEPORT), its own VM per filter, and its own upstream pools, as Envoy's workers.

pub mod body;
mod forward;
mod router;
mod stream;
pub mod upstream;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context, bail};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshwork_wasm_host::{PluginTemplate, Services, WasmEngine};
use tokio::sync::mpsc;

use crate::config::{ProxyConfig, RouteTarget};
use body::ProxyBody;
use upstream::{Cluster, Upstreams};
use worker::{Chain, ConnInfo, FilterSlot, Route, Worker, WorkerDispatcher, WorkerQueueOwner};

/// Envoy's default limits on what a client may send in headers.
pub const MAX_HEADERS: usize = 100;
const MAX_HEADER_BUFFER: usize = 64 * 1024;

/// Where a started proxy listens.
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// Loads and starts every filter once on a throwaway VM (Envoy's "canary"), without binding
/// anything: `meshwork run --check`.
pub fn check(config: &ProxyConfig) -> anyhow::Result<()> {
    struct Nothing;
    impl meshwork_wasm_host::Dispatcher for Nothing {
        fn http_call(&self, _: &Rc<meshwork_wasm_host::PluginVm>, _: meshwork_wasm_host::HttpCallRequest) {}
        fn set_tick_period(&self, _: &Rc<meshwork_wasm_host::PluginVm>, _: std::time::Duration) {}
    }
    impl meshwork_wasm_host::QueueOwner for Nothing {
        fn queue_ready(&self, _: u32) {}
    }
    let engine = WasmEngine::new(config.cache_dir.clone().or_else(default_cache_dir))?;
    let services = Services::new(config.clusters.iter().map(|c| c.name.clone()), config.node.clone());
    for f in &config.filters {
        let module = engine.load(&f.module).with_context(|| format!("filter {}", f.plugin.name))?;
        let template = PluginTemplate::new(&engine, module, f.plugin.clone(), services.clone())
            .with_context(|| format!("filter {}", f.plugin.name))?;
        template.instantiate(Rc::new(Nothing), Arc::new(Nothing))?;
    }
    Ok(())
}

/// Loads every filter, binds the listeners, starts the workers and the admin listener.
/// Returns once every worker has started its VMs, or with the first start-up error.
pub fn start(config: ProxyConfig) -> anyhow::Result<Addresses> {
    let cache_dir = config.cache_dir.clone().or_else(default_cache_dir);
    let engine = WasmEngine::new(cache_dir)?;
    let cluster_names: Vec<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
    let services = Services::new(cluster_names.clone(), config.node.clone());
    let mut templates = Vec::new();
    for f in &config.filters {
        let module = engine.load(&f.module).with_context(|| format!("filter {}", f.plugin.name))?;
        let template = PluginTemplate::new(&engine, module, f.plugin.clone(), services.clone())
            .with_context(|| format!("filter {}", f.plugin.name))?;
        templates.push(template);
    }
    let listeners = bind(config.listen, config.workers)?;
    let listen = listeners[0].local_addr()?;
    let config = Arc::new(config);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for (index, listener) in listeners.into_iter().enumerate() {
        let (config, templates, services, names, ready) =
            (config.clone(), templates.clone(), services.clone(), cluster_names.clone(), ready_tx.clone());
        std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || run_worker(index, &config, templates, &services, &names, listener, ready))
            .context("cannot start a worker thread")?;
    }
    drop(ready_tx);
    for _ in 0..config.workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("a worker thread exited during start-up"),
        }
    }
    let admin = config.admin.map(|a| crate::admin::start(a, services.clone())).transpose()?;
    Ok(Addresses { listen, admin })
}

fn default_cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("meshwork").join("modules"))
}

/// One listening socket per worker on the same address (SO_REUSEPORT), so the kernel spreads
/// connections across workers. Port 0 picks a port once and shares it.
fn bind(addr: SocketAddr, workers: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut addr = addr;
    let mut out = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into()).with_context(|| format!("cannot listen on {addr}"))?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

#[derive(Clone, Copy)]
struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// Keeps a timer a second ahead of this worker's clock. tokio's time driver writes to its
/// wake-up eventfd whenever a timer is set earlier than the deadline it last parked for — and,
/// when no timer exists, for every timer. A request's route timeout is often the worker's only
/// timer, so without an anchor every request would pay that syscall; with it, only timeouts
/// under a second do.
async fn anchor_timer() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
    }
}

fn run_worker(
    index: usize,
    config: &ProxyConfig,
    templates: Vec<PluginTemplate>,
    services: &Arc<Services>,
    cluster_names: &[String],
    listener: std::net::TcpListener,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("worker {index}: cannot start its runtime: {e}")));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let upstreams = Rc::new(Upstreams::new(
            config.clusters.iter().map(|c| Cluster::new(c.name.clone(), &c.endpoints, c.connect_timeout)),
        ));
        let routes = config
            .routes
            .iter()
            .filter_map(|r| {
                let target = match &r.target {
                    RouteTarget::Cluster(c) => router::Target::Cluster(upstreams.get(c)?),
                    RouteTarget::ClusterHeader(h) => {
                        router::Target::Header(http::HeaderName::from_bytes(h.as_bytes()).ok()?)
                    }
                };
                Some(Rc::new(Route {
                    name: Rc::from(r.name.as_str()),
                    prefix: r.prefix.clone(),
                    target,
                    timeout: r.timeout,
                }))
            })
            .collect();
        let dispatcher = WorkerDispatcher::new(upstreams.clone());
        let (queue_tx, mut queue_rx) = mpsc::unbounded_channel();
        let mut slots = Vec::new();
        for (filter, template) in templates.into_iter().enumerate() {
            let owner = Arc::new(WorkerQueueOwner { tx: queue_tx.clone(), filter });
            match FilterSlot::start(template, dispatcher.clone(), owner) {
                Ok(slot) => slots.push(slot),
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return;
                }
            }
        }
        let worker = Rc::new(Worker::new(index, routes, upstreams.clone(), slots, services, cluster_names));
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("worker {index}: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        tokio::task::spawn_local(anchor_timer());
        let queues = worker.clone();
        tokio::task::spawn_local(async move {
            while let Some((filter, queue)) = queue_rx.recv().await {
                if let Some(vm) = queues.filters.get(filter).and_then(|s| s.current()) {
                    let _ = vm.on_queue_ready(queue);
                }
            }
        });
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::task::spawn_local(serve_connection(stream, peer, worker.clone()));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, worker: Rc<Worker>) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let conn = ConnInfo { id: worker.connection_id(), peer, local };
    worker.stats.connections.increment(1).ok();
    let service = hyper::service::service_fn(move |request| handle_request(request, worker.clone(), conn));
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    builder.http1().max_headers(MAX_HEADERS).max_buf_size(MAX_HEADER_BUFFER);
    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

pub fn plain(status: StatusCode, text: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response
}

async fn handle_request(
    request: Request<Incoming>,
    worker: Rc<Worker>,
    conn: ConnInfo,
) -> Result<Response<ProxyBody>, body::BoxError> {
    let Some(route) = worker.route(request.uri().path()) else {
        worker.stats.downstream_response(Some(404));
        return Ok(plain(StatusCode::NOT_FOUND, "no route matches this path\n"));
    };
    if !worker.has_filters() {
        return Ok(forward::forward(request, &worker, &route).await);
    }
    match worker.chain() {
        Chain::Ready(vms) => stream::handle(request, worker.clone(), route, vms, &conn).await,
        Chain::Unavailable(filter) => {
            worker.stats.unavailable.increment(1).ok();
            worker.stats.downstream_response(Some(503));
            Ok(plain(StatusCode::SERVICE_UNAVAILABLE, format!("filter {filter} is unavailable (fail closed)\n")))
        }
    }
}

/// Runs until SIGINT or SIGTERM.
pub fn wait_for_shutdown() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(())
}
