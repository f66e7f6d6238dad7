//! `meshwork run`: the proxy. N workers, each a single-threaded runtime with its own listener
//! socket (SO_REUSEPORT), its own VM per filter, and its own upstream pools, as Envoy's workers.
//!
//! - [`listener`]: accepting under connection caps, the PROXY protocol ([`proxy_protocol`]),
//!   TLS, connection timers, draining;
//! - [`tcp`]: TCP listeners: network filters in front of a TCP proxy;
//! - [`request`]: what every request shares (authority, routing, header sanitation, the trust
//!   boundary, the mapping from failures to local replies);
//! - [`forward`] (no filters) and [`stream`] (through the filter chain): the two paths, which
//!   differ only in the engine;
//! - [`router`], [`upstream`]: clusters, retries under the clusters' circuits, timeouts;
//! - [`generation`], [`reload`]: the configuration in force and its replacement without loss.

pub mod body;
mod callout;
mod dispatch;
mod forward;
pub mod generation;
mod grpc;
pub mod listener;
mod proxy_protocol;
pub mod reload;
mod request;
mod router;
mod stats;
mod stream;
mod tcp;
pub mod upstream;
pub mod worker;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use anyhow::{Context, bail};
use meshwork_wasm_host::{Services, WasmEngine};
use tokio::sync::mpsc;

use crate::config::ProxyConfig;
use generation::Blueprint;
use listener::ConnectionCaps;
use reload::{ConfigSource, Reloader};
use worker::{Command, Worker};

/// Where a started proxy listens, and how to reload it.
pub struct Proxy {
    /// Every listener's name, scheme and bound address, in configuration order.
    pub listeners: Vec<(String, &'static str, SocketAddr)>,
    pub admin: Option<SocketAddr>,
    pub reloader: Arc<Reloader>,
}

fn engine(config: &ProxyConfig) -> anyhow::Result<WasmEngine> {
    Ok(WasmEngine::new(config.cache_dir.clone().or_else(default_cache_dir))?)
}

/// Loads and starts every filter once on a throwaway VM (Envoy's "canary"), without binding
/// anything: `meshwork run --check`.
pub fn check(config: ProxyConfig) -> anyhow::Result<()> {
    struct Nothing;
    impl meshwork_wasm_host::Dispatcher for Nothing {
        fn http_call(&self, _: &Rc<meshwork_wasm_host::PluginVm>, _: meshwork_wasm_host::HttpCallRequest) {}
        fn set_tick_period(&self, _: &Rc<meshwork_wasm_host::PluginVm>, _: std::time::Duration) {}
    }
    impl meshwork_wasm_host::QueueOwner for Nothing {
        fn queue_ready(&self, _: u32) {}
    }
    let engine = engine(&config)?;
    let services = Services::new(config.node.clone());
    let blueprint = Blueprint::build(config, &engine, &services)?;
    for template in blueprint.templates() {
        template.instantiate(Rc::new(Nothing), Arc::new(Nothing))?;
    }
    Ok(())
}

/// Loads every filter, binds the listeners, starts the workers and the admin listener.
/// Returns once every worker has started its VMs, or with the first start-up error.
pub fn start(config: ProxyConfig, source: ConfigSource) -> anyhow::Result<Proxy> {
    let engine = engine(&config)?;
    let services = Services::new(config.node.clone());
    raise_descriptor_limit();
    stats::publish_limits(&services, &config);
    let blueprint = Arc::new(Blueprint::build(config, &engine, &services)?);
    let config = blueprint.config.clone();
    // One socket per listener per worker (SO_REUSEPORT), bound before any worker starts.
    let mut sockets: Vec<Vec<std::net::TcpListener>> = Vec::new();
    let mut bound = Vec::new();
    for l in &config.listeners {
        let listeners = bind(l.address, config.workers).with_context(|| format!("listener {:?}", l.name))?;
        bound.push((l.name.clone(), l.scheme(), listeners[0].local_addr()?));
        sockets.push(listeners);
    }
    // After raising the descriptor limit: the default cap follows it.
    let max_connections = config.max_connections.unwrap_or_else(crate::config::default_max_connections);
    let global = Arc::new(AtomicUsize::new(0));
    let per_listener: Vec<Arc<AtomicUsize>> = config.listeners.iter().map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut commands = Vec::new();
    for index in 0..config.workers {
        let (tx, rx) = mpsc::unbounded_channel();
        commands.push(tx);
        let mine: Vec<(usize, std::net::TcpListener, ConnectionCaps)> = sockets
            .iter_mut()
            .enumerate()
            .map(|(l, socks)| {
                let caps = ConnectionCaps::new(
                    global.clone(),
                    max_connections,
                    per_listener[l].clone(),
                    config.listeners[l].settings.max_connections.unwrap_or(usize::MAX),
                );
                (l, socks.remove(0), caps)
            })
            .collect();
        let (blueprint, services, ready) = (blueprint.clone(), services.clone(), ready_tx.clone());
        std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || run_worker(index, &blueprint, services, mine, rx, ready))
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
    let imports = source.imports.clone();
    let reloader = Arc::new(Reloader::new(source, engine, services.clone(), commands, blueprint));
    if let Some(federation) = &config.federation {
        crate::federation::proxy::start(federation.clone(), imports, reloader.clone(), services.clone())?;
    }
    let admin = match config.admin {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    %addr,
                    "the admin listener is reachable from other hosts (admin_allow_non_loopback): anyone who can connect can stop and reload this proxy"
                );
            }
            Some(crate::admin::start(addr, services, reloader.clone())?)
        }
        None => None,
    };
    Ok(Proxy { listeners: bound, admin, reloader })
}

pub(crate) fn default_cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("meshwork").join("modules"))
}

/// Lifts the descriptor soft limit to the hard limit, as Envoy's and nginx's operators are told
/// to: every connection needs one descriptor, proxied ones two.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write one rlimit through valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
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

/// Keeps a timer a second ahead of this worker's clock. tokio's time driver writes to its
/// wake-up eventfd whenever a timer is set earlier than the deadline it last parked for — and,
/// when no timer exists, for every timer. A request's timers are often the worker's only ones,
/// so without an anchor every request would pay that syscall; with it, only timeouts under a
/// second do.
async fn anchor_timer() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
    }
}

fn run_worker(
    index: usize,
    blueprint: &Blueprint,
    services: Arc<Services>,
    listeners: Vec<(usize, std::net::TcpListener, ConnectionCaps)>,
    mut commands: mpsc::UnboundedReceiver<Command>,
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
        let (worker, queues) = match Worker::start(index, services, blueprint) {
            Ok(w) => w,
            Err(e) => {
                let _ = ready.send(Err(format!("{e:#}")));
                return;
            }
        };
        let mut accepting = Vec::new();
        for (l, socket, caps) in listeners {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(socket) => accepting.push((l, socket, caps)),
                Err(e) => {
                    let _ = ready.send(Err(format!("worker {index}: {e}")));
                    return;
                }
            }
        }
        let _ = ready.send(Ok(()));
        tokio::task::spawn_local(anchor_timer());
        tokio::task::spawn_local(worker.clone().deliver_queues(queues));
        for (l, socket, caps) in accepting {
            tokio::task::spawn_local(listener::accept_loop(socket, l, worker.clone(), caps));
        }
        while let Some(command) = commands.recv().await {
            worker.handle(command);
        }
    });
}

/// Runs until SIGINT or SIGTERM; reloads on SIGHUP.
pub fn wait_for_shutdown(reloader: &Reloader) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r,
                _ = term.recv() => return Ok(()),
                _ = hangup.recv() => match reloader.reload() {
                    Ok(report) => tracing::info!("SIGHUP: {report}"),
                    Err(e) => tracing::error!("SIGHUP: the configuration was not reloaded, the old one keeps serving: {e:#}"),
                },
            }
        }
    })?;
    Ok(())
}
