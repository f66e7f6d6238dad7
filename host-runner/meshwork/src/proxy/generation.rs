//! A configuration in force: what the whole process builds once from a [`ProxyConfig`]
//! ([`Blueprint`]: compiled filters, TLS configurations, cluster circuit state shared by all
//! workers) and what each worker builds from it ([`Generation`]: per listener its routes and
//! filter VMs, and the upstream pools every listener shares).
//!
//! A reload builds a new generation next to the old one; requests and connections already
//! running keep the `Rc`s they took from the old one (routes, clusters, VMs) and finish on it.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use meshwork_wasm_host::{PluginTemplate, PluginVm, Services, WasmEngine};

use super::dispatch::{FilterSlot, WorkerDispatcher};
use super::router::Target;
use super::stats::ClusterMetrics;
use super::upstream::{Circuit, Cluster, Upstreams};
use super::worker::Worker;

use crate::config::{HeaderMods, ListenerConfig, ListenerKind, PathRewrite, ProxyConfig, RouteMatch, RouteTarget};
use crate::route_spec;
use crate::tls::{ClientTls, ServerTls};

/// What every worker's generation is built from.
pub struct Blueprint {
    pub config: Arc<ProxyConfig>,
    /// Per listener, its filters compiled and linked.
    pub listener_filters: Vec<Vec<PluginTemplate>>,
    /// Per listener, its TLS (loaded, watched for changes).
    pub listener_tls: Vec<Option<Arc<ServerTls>>>,
    pub services: Vec<PluginTemplate>,
    pub cluster_tls: HashMap<String, Arc<ClientTls>>,
    /// Retry admission per cluster, shared by every worker (Envoy's circuit breakers are
    /// per cluster, not per worker).
    pub circuits: HashMap<String, Arc<Circuit>>,
    /// Which build of the filters this is: workers keep their VMs when it does not change.
    pub filters_id: u64,
}

fn next_filters_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Loads the TLS of each cluster that has some.
fn cluster_tls(config: &ProxyConfig) -> anyhow::Result<HashMap<String, Arc<ClientTls>>> {
    let mut loaded = HashMap::new();
    for c in &config.clusters {
        if let Some(spec) = &c.tls {
            let tls = ClientTls::shared(spec.clone()).with_context(|| format!("cluster {} tls", c.name))?;
            loaded.insert(c.name.clone(), tls);
        }
    }
    Ok(loaded)
}

impl Blueprint {
    /// Loads and links every filter of `config` (compiling it, or taking it from the caches)
    /// and every TLS file it names.
    pub fn build(config: ProxyConfig, engine: &WasmEngine, services: &Arc<Services>) -> anyhow::Result<Blueprint> {
        let clusters: Arc<HashSet<String>> = Arc::new(config.clusters.iter().map(|c| c.name.clone()).collect());
        let template = |f: &crate::config::FilterConfig| -> anyhow::Result<PluginTemplate> {
            let module = engine
                .load(&f.module, f.plugin.limits.max_module_bytes)
                .with_context(|| format!("filter {}", f.plugin.name))?;
            PluginTemplate::new(engine, module, f.plugin.clone(), services.clone(), clusters.clone())
                .with_context(|| format!("filter {}", f.plugin.name))
        };
        let mut listener_filters = Vec::new();
        let mut listener_tls = Vec::new();
        for l in &config.listeners {
            let templates = l.filters().iter().map(template).collect::<anyhow::Result<Vec<_>>>()?;
            if let ListenerKind::Tcp(_) = l.kind
                && let Some(t) = templates.iter().find(|t| !t.module.info.exports_network_callbacks())
            {
                anyhow::bail!(
                    "listener {:?}: filter {} exports no network callbacks (proxy_on_new_connection, proxy_on_downstream_data…); it is an HTTP filter",
                    l.name,
                    t.plugin.name
                );
            }
            listener_filters.push(templates);
            let tls =
                l.tls.clone().map(ServerTls::load).transpose().with_context(|| format!("listener {:?} tls", l.name))?;
            listener_tls.push(tls);
        }
        let services_templates = config.services.iter().map(template).collect::<anyhow::Result<Vec<_>>>()?;
        let circuits = config
            .clusters
            .iter()
            .map(|c| (c.name.clone(), Arc::new(Circuit::new(c.max_retries, c.retry_budget))))
            .collect();
        Ok(Blueprint {
            cluster_tls: cluster_tls(&config)?,
            config: Arc::new(config),
            listener_filters,
            listener_tls,
            services: services_templates,
            circuits,
            filters_id: next_filters_id(),
        })
    }

    /// `config`, which differs from `self`'s only in its clusters and routes (imported
    /// services came or went): the filters, listener TLS and circuits of clusters that stay
    /// are `self`'s, so workers keep their VMs and retry budgets keep counting.
    pub fn with_routes(&self, config: ProxyConfig) -> anyhow::Result<Blueprint> {
        let circuits = config
            .clusters
            .iter()
            .map(|c| {
                let unchanged = self.config.clusters.iter().find(|old| old.name == c.name) == Some(c);
                let kept = self.circuits.get(&c.name).filter(|_| unchanged);
                let circuit = kept.cloned().unwrap_or_else(|| Arc::new(Circuit::new(c.max_retries, c.retry_budget)));
                (c.name.clone(), circuit)
            })
            .collect();
        Ok(Blueprint {
            cluster_tls: cluster_tls(&config)?,
            config: Arc::new(config),
            listener_filters: self.listener_filters.clone(),
            listener_tls: self.listener_tls.clone(),
            services: self.services.clone(),
            circuits,
            filters_id: self.filters_id,
        })
    }

    /// Every filter template, for a check that starts each once.
    pub fn templates(&self) -> impl Iterator<Item = &PluginTemplate> {
        self.listener_filters.iter().flatten().chain(&self.services)
    }
}

pub struct Route {
    pub name: Rc<str>,
    pub matcher: RouteMatch,
    pub target: Target,
    pub timeout: Option<Duration>,
    pub rewrite: Option<PathRewrite>,
    pub request_headers: HeaderMods,
    pub response_headers: HeaderMods,
}

/// The filters a stream runs through, or the reason it cannot run.
pub enum Chain {
    /// No filters configured: the no-filter path.
    Empty,
    Ready(Vec<Rc<PluginVm>>),
    /// A fail-closed filter has no working VM (start-up failing, restart budget spent).
    Unavailable(String),
}

/// A listener's routes, those for exact host names indexed by host: a proxy importing
/// thousands of federated services looks the request's host up instead of trying every route.
/// Each host's list holds its own routes and the general ones, in configuration order, so
/// choosing among them is the same choice as among all routes.
struct RouteTable {
    /// Routes for every host or for wildcards.
    general: Vec<Rc<Route>>,
    by_host: HashMap<String, Vec<Rc<Route>>>,
    first_match: bool,
}

impl RouteTable {
    fn new(routes: Vec<Rc<Route>>, first_match: bool) -> RouteTable {
        let mut general: Vec<(usize, Rc<Route>)> = Vec::new();
        let mut hosted: HashMap<String, Vec<(usize, Rc<Route>)>> = HashMap::new();
        for (i, route) in routes.into_iter().enumerate() {
            let hosts = &route.matcher.hosts;
            if hosts.is_empty() || hosts.iter().any(|h| h.starts_with("*.")) {
                general.push((i, route));
            } else {
                for host in hosts {
                    hosted.entry(host.clone()).or_default().push((i, route.clone()));
                }
            }
        }
        // Each host's own routes and the general ones, merged by their place in the configuration.
        let by_host = hosted
            .into_iter()
            .map(|(host, own)| {
                let mut all: Vec<(usize, Rc<Route>)> = own.into_iter().chain(general.iter().cloned()).collect();
                all.sort_by_key(|(i, _)| *i);
                (host, all.into_iter().map(|(_, r)| r).collect())
            })
            .collect();
        RouteTable { general: general.into_iter().map(|(_, r)| r).collect(), by_host, first_match }
    }

    /// The first that matches (Envoy's rule, for Envoy configurations), else by Gateway API's
    /// precedence ([`crate::route_spec::select`]); either way in configuration order.
    fn select(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Rc<Route>> {
        let candidates = match self.by_host.is_empty() {
            true => None,
            false => route_spec::host_of(uri, headers).and_then(|h| self.by_host.get(&h)),
        };
        let candidates = candidates.unwrap_or(&self.general);
        route_spec::select(candidates, |r| &r.matcher, self.first_match, method, uri, headers).cloned()
    }
}

/// One listener on one worker: its routes and filters.
pub struct ListenerGeneration {
    pub index: usize,
    pub settings: ListenerConfig,
    routes: RouteTable,
    pub filters: Vec<Rc<FilterSlot>>,
    pub filter_buffer_limit: usize,
    pub tls: Option<Arc<ServerTls>>,
    /// A TCP listener's cluster.
    pub tcp_cluster: Option<Rc<Cluster>>,
}

impl ListenerGeneration {
    /// The route for this request: the first that matches (Envoy's rule, for Envoy
    /// configurations), else by Gateway API's precedence ([`crate::route_spec::select`]).
    pub fn route(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Rc<Route>> {
        self.routes.select(method, uri, headers)
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

/// One worker's view of a configuration.
pub struct Generation {
    pub config: Arc<ProxyConfig>,
    pub listeners: Vec<ListenerGeneration>,
    upstreams: Rc<Upstreams>,
    /// Wasm services run on worker 0 only (they are process-wide singletons); held here so
    /// they live as long as the generation.
    services: Vec<Rc<FilterSlot>>,
    /// What the VMs' callouts and timers go through, and the filter build they came from.
    dispatcher: Rc<WorkerDispatcher>,
    filters_id: u64,
}

impl Generation {
    /// Builds this worker's routes, pools and VMs; fails if any filter does not start. When
    /// `previous` runs the same build of the filters (only imported services changed), its
    /// VMs carry on: their state is kept and nothing runs `on_configure` again.
    pub fn build(
        blueprint: &Blueprint,
        worker: &Rc<Worker>,
        previous: Option<&Generation>,
    ) -> anyhow::Result<Generation> {
        let config = &blueprint.config;
        let resolve = Rc::new(config.resolve.clone());
        let upstreams = Rc::new(Upstreams::new(config.clusters.iter().map(|c| {
            let circuit = blueprint.circuits.get(&c.name).cloned().unwrap_or_else(|| Arc::new(Circuit::unlimited()));
            let metrics = ClusterMetrics::new(&worker.services, &c.name);
            Cluster::new(c, blueprint.cluster_tls.get(&c.name).cloned(), resolve.clone(), circuit, metrics)
        })));
        let kept =
            previous.filter(|p| p.filters_id == blueprint.filters_id && p.listeners.len() == config.listeners.len());
        let dispatcher = match kept {
            Some(p) => p.dispatcher.clone(),
            None => WorkerDispatcher::new(upstreams.clone()),
        };
        let start = |templates: &[PluginTemplate]| -> anyhow::Result<Vec<Rc<FilterSlot>>> {
            templates
                .iter()
                .map(|t| {
                    FilterSlot::start(t.clone(), dispatcher.clone(), worker)
                        .with_context(|| format!("worker {}", worker.index))
                })
                .collect()
        };
        let mut listeners = Vec::new();
        for (index, l) in config.listeners.iter().enumerate() {
            let filters = match kept {
                Some(p) => p.listeners[index].filters.clone(),
                None => start(&blueprint.listener_filters[index])?,
            };
            let (routes, first_match, filter_buffer_limit, tcp_cluster) = match &l.kind {
                ListenerKind::Http(h) => {
                    let routes = h
                        .routes
                        .iter()
                        .filter_map(|r| {
                            let target = match &r.target {
                                RouteTarget::Cluster(c) => Target::Cluster(upstreams.get(c)?),
                                RouteTarget::ClusterHeader(h) => {
                                    Target::Header(http::HeaderName::from_bytes(h.as_bytes()).ok()?)
                                }
                                RouteTarget::Direct { status, body } => {
                                    Target::Direct { status: *status, body: Bytes::clone(body) }
                                }
                                RouteTarget::Weighted(backends) => Target::Weighted(
                                    backends
                                        .iter()
                                        .map(|(c, w)| Some((upstreams.get(c)?, *w)))
                                        .collect::<Option<Vec<_>>>()?,
                                ),
                                RouteTarget::Redirect(r) => Target::Redirect(r.clone()),
                            };
                            Some(Rc::new(Route {
                                name: Rc::from(r.name.as_str()),
                                matcher: r.matcher.clone(),
                                target,
                                timeout: r.timeout,
                                rewrite: r.rewrite.clone(),
                                request_headers: r.request_headers.clone(),
                                response_headers: r.response_headers.clone(),
                            }))
                        })
                        .collect();
                    (routes, h.first_match, h.filter_buffer_limit.unwrap_or(l.settings.buffer_limit), None)
                }
                ListenerKind::Tcp(t) => (Vec::new(), false, l.settings.buffer_limit, upstreams.get(&t.cluster)),
            };
            listeners.push(ListenerGeneration {
                index,
                settings: l.settings.clone(),
                routes: RouteTable::new(routes, first_match),
                filters,
                filter_buffer_limit,
                tls: blueprint.listener_tls[index].clone(),
                tcp_cluster,
            });
        }
        let services = match kept {
            Some(p) => p.services.clone(),
            None if worker.index == 0 => start(&blueprint.services)?,
            None => Vec::new(),
        };
        Ok(Generation {
            config: config.clone(),
            listeners,
            upstreams,
            services,
            dispatcher,
            filters_id: blueprint.filters_id,
        })
    }

    /// A generation that serves nothing (a worker's state before its first one is built).
    pub fn empty(blueprint: &Blueprint) -> Generation {
        let upstreams = Rc::new(Upstreams::new(std::iter::empty()));
        Generation {
            config: blueprint.config.clone(),
            listeners: Vec::new(),
            dispatcher: WorkerDispatcher::new(upstreams.clone()),
            upstreams,
            services: Vec::new(),
            filters_id: 0,
        }
    }

    /// Sends the VMs' callouts to this generation's clusters (once it is in force).
    pub fn bind_dispatcher(&self) {
        self.dispatcher.rebind(self.upstreams.clone());
    }

    pub fn listener(&self, index: usize) -> Option<&ListenerGeneration> {
        self.listeners.get(index)
    }

    pub fn cluster(&self, name: &str) -> Option<Rc<Cluster>> {
        self.upstreams.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_spec::PathMatch;

    fn route(name: &str, hosts: &[&str]) -> Rc<Route> {
        Rc::new(Route {
            name: Rc::from(name),
            matcher: RouteMatch {
                path: PathMatch::Prefix("/".into()),
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                ..RouteMatch::default()
            },
            target: Target::Direct { status: 200, body: Bytes::new() },
            timeout: None,
            rewrite: None,
            request_headers: HeaderMods::default(),
            response_headers: HeaderMods::default(),
        })
    }

    fn chosen(table: &RouteTable, host: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, host.parse().unwrap());
        table.select(&Method::GET, &"/x".parse().unwrap(), &headers).map(|r| r.name.to_string()).unwrap_or_default()
    }

    /// Looking a host up chooses exactly what trying every route would: by precedence, or the
    /// first in configuration order for Envoy configurations.
    #[test]
    fn the_host_index_chooses_as_the_whole_list_would() {
        let routes = || vec![route("any", &[]), route("a", &["a.example"]), route("wild", &["*.example"])];
        let precedence = RouteTable::new(routes(), false);
        assert_eq!(chosen(&precedence, "a.example"), "a");
        assert_eq!(chosen(&precedence, "b.example:8080"), "wild");
        assert_eq!(chosen(&precedence, "c.other"), "any");
        let first_match = RouteTable::new(routes(), true);
        assert_eq!(chosen(&first_match, "a.example"), "any", "the general route comes first in the file");
    }
}
