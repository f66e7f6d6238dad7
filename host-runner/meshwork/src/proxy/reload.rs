//! Reloading the configuration without dropping a request (SIGHUP, admin `POST /reload`).
//!
//! 1. The file is read and checked, and its filters are compiled (from the caches when
//!    unchanged) — a bad file is refused here, with the old configuration still serving.
//! 2. Every worker builds a generation from it: routes, pools, and fresh VMs that have run
//!    `on_vm_start` and `on_configure`. If any worker fails, every worker drops what it built.
//! 3. Every worker switches. Requests already running keep the old generation's routes,
//!    clusters and VMs until they finish; listeners keep their sockets.
//!
//! The listeners' addresses, the admin address and the number of workers are fixed for the
//! life of the process (they name sockets and threads); changing them needs a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use meshwork_wasm_host::metrics::Metric;
use meshwork_wasm_host::{Services, WasmEngine};
use tokio::sync::mpsc;

use super::generation::Blueprint;
use super::worker::Command;
use crate::config::ProxyConfig;

/// Where the configuration comes from, to read it again, and what the command line adds.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub kind: ConfigKind,
    /// `--resolve` overrides.
    pub resolve: std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
    /// How `oci://` and `http(s)://` modules are pulled.
    pub pull: crate::modules::PullSettings,
    /// Services imported from other meshes (the configuration's `federation:` section), added
    /// to every configuration read.
    pub imports: Arc<crate::federation::imports::Imports>,
}

#[derive(Clone, Debug)]
pub enum ConfigKind {
    Native(PathBuf),
    Envoy {
        path: PathBuf,
        allow_unsupported: bool,
    },
    /// Istio WasmPlugin documents, run as the sidecar of `workload`.
    Istio {
        files: Vec<PathBuf>,
        workload: crate::istio::Workload,
    },
    /// Kuma MeshProxyPatch documents, run as the dataplane of `workload`.
    Kuma {
        files: Vec<PathBuf>,
        workload: crate::istio::Workload,
    },
}

impl ConfigSource {
    /// The configuration with the services imported so far.
    pub fn load(&self) -> anyhow::Result<ProxyConfig> {
        Ok(self.with_imports(self.load_file()?))
    }

    /// `config` (as read) with the services imported so far added.
    pub fn with_imports(&self, mut config: ProxyConfig) -> ProxyConfig {
        if let Some(federation) = config.federation.clone() {
            crate::federation::proxy::merge(&mut config, &federation, &self.imports.snapshot());
        }
        config
    }

    /// The configuration as the file says.
    fn load_file(&self) -> anyhow::Result<ProxyConfig> {
        let mut config = match &self.kind {
            ConfigKind::Native(path) => ProxyConfig::load(path)?,
            ConfigKind::Envoy { path, allow_unsupported } => crate::envoy::load(path, *allow_unsupported)?,
            ConfigKind::Istio { files, workload } => crate::istio::load(files, workload)?,
            ConfigKind::Kuma { files, workload } => crate::kuma::load(files, workload)?,
        };
        config.resolve.clone_from(&self.resolve);
        crate::modules::fetch_all(&mut config, &self.pull)?;
        Ok(config)
    }
}

/// What a reload changed.
#[derive(Clone, Debug)]
pub struct ReloadReport {
    pub generation: u64,
    pub filters: usize,
    pub clusters: usize,
    pub routes: usize,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "configuration generation {} in force: {} filter(s), {} cluster(s), {} route(s)",
            self.generation, self.filters, self.clusters, self.routes
        )
    }
}

struct State {
    blueprint: Arc<Blueprint>,
    generation: u64,
    /// The configuration in force as its file said it, before imported services were added:
    /// what a change to the imports is applied to (the file is not read again for it).
    read: Arc<ProxyConfig>,
}

pub struct Reloader {
    source: ConfigSource,
    engine: WasmEngine,
    services: Arc<Services>,
    workers: Vec<mpsc::UnboundedSender<Command>>,
    state: Mutex<State>,
    reloads: Arc<Metric>,
    failures: Arc<Metric>,
}

/// How long a worker may take to build its generation (its filters' start-up included).
const WORKER_TIMEOUT: Duration = Duration::from_secs(60);

impl Reloader {
    pub fn new(
        source: ConfigSource,
        engine: WasmEngine,
        services: Arc<Services>,
        workers: Vec<mpsc::UnboundedSender<Command>>,
        blueprint: Arc<Blueprint>,
    ) -> Reloader {
        let reloads = services.metrics.counter("meshwork_config_reloads_total;.;outcome=.=ok");
        let failures = services.metrics.counter("meshwork_config_reloads_total;.;outcome=.=refused");
        Reloader {
            source,
            engine,
            services,
            workers,
            // Nothing is imported before start-up, so the configuration in force is as read.
            state: Mutex::new(State { read: blueprint.config.clone(), blueprint, generation: 1 }),
            reloads,
            failures,
        }
    }

    /// Reads the configuration again and puts it in force on every worker, or refuses it and
    /// keeps the current one.
    pub fn reload(&self) -> anyhow::Result<ReloadReport> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.source.load_file().and_then(|read| {
            unchangeable(&state.read, &read)?;
            let read = Arc::new(read);
            let config = self.source.with_imports((*read).clone());
            let blueprint = Blueprint::build(config, &self.engine, &self.services)?;
            let report = self.put_in_force(&mut state, Arc::new(blueprint))?;
            state.read = read;
            Ok(report)
        });
        self.count(&result);
        result
    }

    /// Puts the imported services in force on the configuration already in force.
    pub fn refresh_imports(&self) -> anyhow::Result<ReloadReport> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let config = self.source.with_imports((*state.read).clone());
        let result = state.blueprint.with_routes(config).and_then(|b| self.put_in_force(&mut state, Arc::new(b)));
        self.count(&result);
        result
    }

    fn count(&self, result: &anyhow::Result<ReloadReport>) {
        match result {
            Ok(_) => self.reloads.increment(1).ok(),
            Err(_) => self.failures.increment(1).ok(),
        };
    }

    /// Every worker builds its generation from `blueprint`, then (all having succeeded) every
    /// worker switches to it.
    fn put_in_force(&self, state: &mut State, blueprint: Arc<Blueprint>) -> anyhow::Result<ReloadReport> {
        let replies: Vec<_> = self
            .workers
            .iter()
            .map(|w| {
                let (reply, rx) = std::sync::mpsc::channel();
                let sent = w.send(Command::Prepare { blueprint: blueprint.clone(), reply }).is_ok();
                (sent, rx)
            })
            .collect();
        let mut failure = None;
        for (i, (sent, rx)) in replies.into_iter().enumerate() {
            let outcome = if sent {
                rx.recv_timeout(WORKER_TIMEOUT).map_err(|_| "did not answer".to_string())
            } else {
                Err("has stopped".into())
            };
            if let Err(e) | Ok(Err(e)) = outcome {
                failure.get_or_insert(format!("worker {i}: {e}"));
            }
        }
        if let Some(e) = failure {
            for w in &self.workers {
                let _ = w.send(Command::Abort);
            }
            bail!("the new configuration did not start: {e}");
        }
        let acks: Vec<_> = self
            .workers
            .iter()
            .map(|w| {
                let (reply, rx) = std::sync::mpsc::channel();
                let _ = w.send(Command::Commit { reply });
                rx
            })
            .collect();
        for rx in acks {
            let _ = rx.recv_timeout(WORKER_TIMEOUT);
        }
        super::stats::publish_limits(&self.services, &blueprint.config);
        state.generation += 1;
        let c = &blueprint.config;
        let report = ReloadReport {
            generation: state.generation,
            filters: c.all_filters().count(),
            clusters: c.clusters.len(),
            routes: c.routes(),
        };
        state.blueprint = blueprint;
        Ok(report)
    }
}

/// Settings that name sockets and threads cannot change without a restart: the listeners
/// (their number, order and addresses; a port 0 in the new file means "the one bound"), the
/// admin address, the number of workers and the federation section. Everything a listener does may change.
fn unchangeable(old: &ProxyConfig, new: &ProxyConfig) -> anyhow::Result<()> {
    let same_listeners = old.listeners.len() == new.listeners.len()
        && old.listeners.iter().zip(&new.listeners).all(|(o, n)| {
            o.address.ip() == n.address.ip()
                && (n.address.port() == 0 || o.address.port() == n.address.port())
                && std::mem::discriminant(&o.kind) == std::mem::discriminant(&n.kind)
        });
    let checks = [
        ("listen", same_listeners),
        ("admin", old.admin.map(|a| a.ip()) == new.admin.map(|a| a.ip())),
        ("workers", old.workers == new.workers),
        // Its streams were opened at start-up.
        ("federation", old.federation == new.federation),
    ];
    for (field, same) in checks {
        if !same {
            return Err(anyhow::anyhow!(
                "{field} cannot change on reload (restart meshwork to change it; listeners keep their number, kind and addresses)"
            ))
            .context("the new configuration was refused; the old one keeps serving");
        }
    }
    Ok(())
}
