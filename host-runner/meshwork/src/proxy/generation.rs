//! A configuration in force: what the whole process builds once from a [`ProxyConfig`]
//! ([`Blueprint`]: compiled filters, cluster circuit state shared by all workers) and what each
//! worker builds from it ([`Generation`]: its routes, upstream pools, filter VMs).
//!
//! A reload builds a new generation next to the old one; requests already running keep the
//! `Rc`s they took from the old one (routes, clusters, VMs) and finish on it.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshwork_wasm_host::{PluginTemplate, PluginVm, Services, WasmEngine};

use super::dispatch::{FilterSlot, WorkerDispatcher};
use super::router::Target;
use super::stats::ClusterMetrics;
use super::upstream::{Circuit, Cluster, Upstreams};
use super::worker::Worker;
use crate::config::{ProxyConfig, RouteTarget};

/// What every worker's generation is built from.
pub struct Blueprint {
    pub config: Arc<ProxyConfig>,
    pub templates: Vec<PluginTemplate>,
    /// Retry admission per cluster, shared by every worker (Envoy's circuit breakers are
    /// per cluster, not per worker).
    pub circuits: HashMap<String, Arc<Circuit>>,
}

impl Blueprint {
    /// Loads and links every filter of `config` (compiling it, or taking it from the caches).
    pub fn build(config: ProxyConfig, engine: &WasmEngine, services: &Arc<Services>) -> anyhow::Result<Blueprint> {
        let clusters: Arc<HashSet<String>> = Arc::new(config.clusters.iter().map(|c| c.name.clone()).collect());
        let mut templates = Vec::new();
        for f in &config.filters {
            let module = engine
                .load(&f.module, f.plugin.limits.max_module_bytes)
                .with_context(|| format!("filter {}", f.plugin.name))?;
            let template = PluginTemplate::new(engine, module, f.plugin.clone(), services.clone(), clusters.clone())
                .with_context(|| format!("filter {}", f.plugin.name))?;
            templates.push(template);
        }
        let circuits = config
            .clusters
            .iter()
            .map(|c| (c.name.clone(), Arc::new(Circuit::new(c.max_retries, c.retry_budget))))
            .collect();
        Ok(Blueprint { config: Arc::new(config), templates, circuits })
    }
}

pub struct Route {
    pub name: Rc<str>,
    pub prefix: String,
    pub target: Target,
    pub timeout: Option<Duration>,
}

/// The filters a stream runs through, or the reason it cannot run.
pub enum Chain {
    /// No filters configured: the no-filter path.
    Empty,
    Ready(Vec<Rc<PluginVm>>),
    /// A fail-closed filter has no working VM (start-up failing, restart budget spent).
    Unavailable(String),
}

/// One worker's view of a configuration.
pub struct Generation {
    pub config: Arc<ProxyConfig>,
    routes: Vec<Rc<Route>>,
    upstreams: Rc<Upstreams>,
    pub filters: Vec<Rc<FilterSlot>>,
}

impl Generation {
    /// Builds this worker's routes, pools and VMs; fails if any filter does not start.
    pub fn build(blueprint: &Blueprint, worker: &Rc<Worker>) -> anyhow::Result<Generation> {
        let config = &blueprint.config;
        let upstreams = Rc::new(Upstreams::new(config.clusters.iter().map(|c| {
            let circuit = blueprint.circuits.get(&c.name).cloned().unwrap_or_else(|| Arc::new(Circuit::unlimited()));
            let metrics = ClusterMetrics::new(&worker.services, &c.name);
            Cluster::new(c.name.clone(), &c.endpoints, c.connect_timeout, circuit, metrics)
        })));
        let routes = config
            .routes
            .iter()
            .filter_map(|r| {
                let target = match &r.target {
                    RouteTarget::Cluster(c) => Target::Cluster(upstreams.get(c)?),
                    RouteTarget::ClusterHeader(h) => Target::Header(http::HeaderName::from_bytes(h.as_bytes()).ok()?),
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
        let mut filters = Vec::new();
        for template in &blueprint.templates {
            let slot = FilterSlot::start(template.clone(), dispatcher.clone(), worker)
                .with_context(|| format!("worker {}", worker.index))?;
            filters.push(slot);
        }
        Ok(Generation { config: config.clone(), routes, upstreams, filters })
    }

    /// A generation that routes nothing (a worker's state before its first one is built).
    pub fn empty(blueprint: &Blueprint) -> Generation {
        Generation {
            config: blueprint.config.clone(),
            routes: Vec::new(),
            upstreams: Rc::new(Upstreams::new(std::iter::empty())),
            filters: Vec::new(),
        }
    }

    /// The longest-prefix route for `path`.
    pub fn route(&self, path: &str) -> Option<Rc<Route>> {
        self.routes.iter().filter(|r| path.starts_with(&r.prefix)).max_by_key(|r| r.prefix.len()).cloned()
    }

    pub fn cluster(&self, name: &str) -> Option<Rc<Cluster>> {
        self.upstreams.get(name)
    }

    /// Body bytes a stream through the filters may hold per direction.
    pub fn filter_buffer_limit(&self) -> usize {
        self.config.filter_buffer_limit.unwrap_or(self.config.listener.buffer_limit)
    }

    pub fn chain(&self) -> Chain {
        if self.filters.is_empty() {
            return Chain::Empty;
        }
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
}
