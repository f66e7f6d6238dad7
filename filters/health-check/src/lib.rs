//! `health-check`: active probes and passive outlier ejection for a list of targets (clusters),
//! with fail-fast when none is healthy and optional client-side balancing over the healthy ones.
//!
//! - Active: the root context ticks; each tick, the worker that claims the shared probe round
//!   (a CAS slot, so workers do not multiply probes) sends `GET <path>` to every target with
//!   `proxy_http_call`. Results move targets between healthy and unhealthy by thresholds
//!   (`meshwork_health`), in a shared-data table every worker reads.
//! - Passive: in `on_log`, upstream errors (5xx, resets, connect failures, timeouts) seen by
//!   requests count against the target they went to; consecutive errors eject it for a while.
//! - Requests: with no routable target, a local 503 answers at once; with `route_header`, the
//!   filter names a routable target in that header (round robin or random), for a
//!   `cluster_header` route to follow.
//!
//! Proxy-wasm callouts address clusters, not endpoints, so a target is a cluster: meshwork's
//! clusters with one endpoint each give per-endpoint checking.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use meshwork_cas_table::Outcome as CasOutcome;
use meshwork_filter_support::config::{self, header_name};
use meshwork_filter_support::outcome::Outcome;
use meshwork_filter_support::{
    ConfigDuration, Random, SharedTable, fingerprint, now_ns, property, property_string, tagged,
};
use meshwork_health::{Ejection, Health, Policy, ProbeRound, TargetState, Thresholds, may_eject};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(HealthRoot::default()) });
}}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct TargetConfig {
    cluster: String,
    /// `:authority` of the probes; the cluster name when absent.
    authority: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct ActiveConfig {
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_interval")]
    interval: ConfigDuration,
    #[serde(default = "default_timeout")]
    timeout: ConfigDuration,
    #[serde(default = "default_healthy_threshold")]
    healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    unhealthy_threshold: u32,
    #[serde(default = "default_expected_statuses")]
    expected_statuses: Vec<u16>,
}

fn default_path() -> String {
    "/healthz".into()
}
fn default_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}
fn default_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_expected_statuses() -> Vec<u16> {
    vec![200]
}

/// Envoy's outlier detection defaults.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct PassiveConfig {
    #[serde(default = "default_consecutive_5xx")]
    consecutive_5xx: u32,
    #[serde(default = "default_base_ejection_time")]
    base_ejection_time: ConfigDuration,
    #[serde(default = "default_max_ejection_time")]
    max_ejection_time: ConfigDuration,
    #[serde(default = "default_max_ejection_percent")]
    max_ejection_percent: u32,
    #[serde(default = "yes")]
    successful_active_health_check_uneject_host: bool,
}

fn default_consecutive_5xx() -> u32 {
    5
}
fn default_base_ejection_time() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}
fn default_max_ejection_time() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}
fn default_max_ejection_percent() -> u32 {
    10
}
fn yes() -> bool {
    true
}

#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Balance {
    #[default]
    RoundRobin,
    Random,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    targets: Vec<TargetConfig>,
    /// On with defaults when absent, off when null.
    #[serde(default = "config::on", deserialize_with = "config::on_unless_null")]
    active: Option<ActiveConfig>,
    #[serde(default = "config::on", deserialize_with = "config::on_unless_null")]
    passive: Option<PassiveConfig>,
    route_header: Option<String>,
    #[serde(default)]
    balance: Balance,
    #[serde(default = "default_status")]
    status: u32,
}

fn default_status() -> u32 {
    503
}

fn nanos(field: &str, d: ConfigDuration) -> Result<u64, String> {
    match u64::try_from(d.0.as_nanos()) {
        Ok(0) | Err(_) => Err(format!("{field} must be above zero and below 500 years")),
        Ok(ns) => Ok(ns),
    }
}

/// How probing runs on this worker.
struct Probing {
    path: String,
    interval_ns: u64,
    timeout: Duration,
    expected_statuses: Vec<u16>,
    /// The shared schedule: one slot holding when the next round is due.
    round: SharedTable,
}

struct Target {
    cluster: String,
    authority: String,
    healthy_gauge: u32,
    ejected_gauge: u32,
    probe_ok: u32,
    probe_failed: u32,
    ejections: u32,
}

struct Checker {
    plugin: String,
    targets: Vec<Target>,
    policy: Policy,
    /// Every target's state, keyed by cluster name.
    table: SharedTable,
    probing: Option<Probing>,
    route_header: Option<String>,
    balance: Balance,
    status: u32,
    next: Cell<usize>,
    random: Random,
    /// Callout token → target index, for probes under way from this worker.
    in_flight: RefCell<HashMap<u32, usize>>,
    routed: u32,
    refused: u32,
}

const ROUND_KEY: &[u8] = b"round";

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

impl Checker {
    fn configure(bytes: &[u8]) -> Result<Checker, String> {
        let config = config::parse::<Config>(bytes)?;
        if config.targets.is_empty() {
            return Err("targets: list at least one cluster".into());
        }
        for (i, t) in config.targets.iter().enumerate() {
            if t.cluster.is_empty() {
                return Err(format!("targets[{i}].cluster is empty"));
            }
            if config.targets[..i].iter().any(|o| o.cluster == t.cluster) {
                return Err(format!("targets[{i}].cluster {:?} is listed twice", t.cluster));
            }
        }
        if config.active.is_none() && config.passive.is_none() {
            return Err("active and passive are both null: nothing would be checked".into());
        }
        if !(200..=599).contains(&config.status) {
            return Err(format!("status {} is not an HTTP status code", config.status));
        }
        let route_header = config.route_header.as_deref().map(|h| header_name("route_header", h)).transpose()?;
        let plugin = property_string(&["plugin_name"]).unwrap_or_else(|| "health-check".into());
        // A new configuration starts from fresh state: the namespace includes its fingerprint.
        let namespace = format!("meshwork.health-check.{plugin}.{:016x}", fingerprint(bytes));

        let thresholds = match &config.active {
            Some(a) => {
                if a.healthy_threshold == 0 || a.unhealthy_threshold == 0 {
                    return Err("active.healthy_threshold and active.unhealthy_threshold must be at least 1".into());
                }
                Thresholds { healthy: a.healthy_threshold, unhealthy: a.unhealthy_threshold }
            }
            None => Thresholds { healthy: 1, unhealthy: 1 },
        };
        let ejection = match &config.passive {
            Some(p) => {
                if p.consecutive_5xx == 0 {
                    return Err("passive.consecutive_5xx must be at least 1".into());
                }
                if p.max_ejection_percent > 100 {
                    return Err(format!("passive.max_ejection_percent {} is over 100", p.max_ejection_percent));
                }
                let base_ns = nanos("passive.base_ejection_time", p.base_ejection_time)?;
                let max_ns = nanos("passive.max_ejection_time", p.max_ejection_time)?;
                if max_ns < base_ns {
                    return Err("passive.max_ejection_time is shorter than passive.base_ejection_time".into());
                }
                Some(Ejection {
                    consecutive_errors: p.consecutive_5xx,
                    base_ns,
                    max_ns,
                    max_percent: p.max_ejection_percent,
                })
            }
            None => None,
        };
        let uneject_on_probe_success =
            config.passive.as_ref().is_some_and(|p| p.successful_active_health_check_uneject_host);
        let policy = Policy { thresholds, ejection, uneject_on_probe_success };

        let probing = match &config.active {
            None => None,
            Some(a) => {
                if !a.path.starts_with('/') {
                    return Err(format!("active.path {:?} must start with /", a.path));
                }
                if a.expected_statuses.is_empty() || a.expected_statuses.iter().any(|s| !(100..=599).contains(s)) {
                    return Err("active.expected_statuses must list HTTP statuses (100 to 599)".into());
                }
                let interval_ns = nanos("active.interval", a.interval)?;
                nanos("active.timeout", a.timeout)?;
                if a.timeout.0 >= Duration::from_millis(u32::MAX as u64 / 2) {
                    return Err("active.timeout is too long for a proxy-wasm callout".into());
                }
                let round = SharedTable::new(format!("{namespace}.round"), 1);
                round.create().map_err(|s| format!("cannot create the shared probe schedule: {s:?}"))?;
                Some(Probing {
                    path: a.path.clone(),
                    interval_ns,
                    timeout: a.timeout.0,
                    expected_statuses: a.expected_statuses.clone(),
                    round,
                })
            }
        };
        // Targets never give their slot up, so keep the table at most a quarter full: a target
        // then always finds a slot within the probe limit.
        let table = SharedTable::new(format!("{namespace}.targets"), config.targets.len() * 4 + 8);
        table.create().map_err(|s| format!("cannot create shared-data slots: {s:?}"))?;

        let metric = |kind, base: &str, tags: &[(&str, &str)]| {
            let mut all = vec![("plugin", plugin.as_str())];
            all.extend_from_slice(tags);
            hostcalls::define_metric(kind, &tagged(base, &all)).unwrap_or(0)
        };
        let targets = config
            .targets
            .iter()
            .map(|t| {
                let tag = [("target", t.cluster.as_str())];
                let probes = |result| {
                    metric(
                        MetricType::Counter,
                        "meshwork_health_check_probes_total",
                        &[("target", t.cluster.as_str()), ("result", result)],
                    )
                };
                Target {
                    cluster: t.cluster.clone(),
                    authority: t.authority.clone().unwrap_or_else(|| t.cluster.clone()),
                    healthy_gauge: metric(MetricType::Gauge, "meshwork_health_check_healthy", &tag),
                    ejected_gauge: metric(MetricType::Gauge, "meshwork_health_check_ejected", &tag),
                    probe_ok: probes("success"),
                    probe_failed: probes("failure"),
                    ejections: metric(MetricType::Counter, "meshwork_health_check_ejections_total", &tag),
                }
            })
            .collect();
        let requests =
            |outcome| metric(MetricType::Counter, "meshwork_health_check_requests_total", &[("outcome", outcome)]);
        let checker = Checker {
            routed: requests("routed"),
            refused: requests("no_healthy_target"),
            plugin,
            targets,
            policy,
            table,
            probing,
            route_header,
            balance: config.balance,
            status: config.status,
            next: Cell::new(0),
            random: Random::default(),
            in_flight: RefCell::default(),
        };
        checker.publish_all(now_ns());
        Ok(checker)
    }

    /// A target's shared state; a fresh one when the table cannot say (nothing is known then).
    fn state(&self, index: usize, now: u64) -> TargetState {
        let key = self.targets[index].cluster.as_bytes();
        self.table.read(key, &self.policy, now).unwrap_or(TargetState::FRESH)
    }

    fn publish(&self, index: usize, state: &TargetState, now: u64) {
        let t = &self.targets[index];
        let _ = hostcalls::record_metric(t.healthy_gauge, state.is_routable(now) as u64);
        let _ = hostcalls::record_metric(t.ejected_gauge, state.is_ejected(now) as u64);
    }

    /// Refreshes every gauge from the shared state (ejections end with time, not with an event).
    fn publish_all(&self, now: u64) {
        for i in 0..self.targets.len() {
            self.publish(i, &self.state(i, now), now);
        }
    }

    fn index_of(&self, cluster: &str) -> Option<usize> {
        self.targets.iter().position(|t| t.cluster == cluster)
    }

    /// How often every worker's root context ticks: a few times per probe interval, so the
    /// round is claimed close to when it is due; and often enough that gauges show ejections
    /// ending (an ejection ends with time, not with an event).
    fn tick_period(&self) -> Duration {
        let probe = self.probing.as_ref().map_or(u64::MAX, |p| p.interval_ns / 4);
        let ejection = self.policy.ejection.as_ref().map_or(u64::MAX, |e| e.base_ns / 4);
        Duration::from_nanos(probe.min(ejection).min(1_000_000_000)).max(Duration::from_millis(1))
    }

    fn tick(&self, root: &HealthRoot) {
        let now = now_ns();
        self.probe_if_due(root, now);
        self.publish_all(now);
    }

    /// Sends this round's probes, if this worker claims the round.
    fn probe_if_due(&self, root: &HealthRoot, now: u64) {
        let Some(probing) = &self.probing else { return };
        let claimed = probing.round.update(ROUND_KEY, &(), now, |r: &mut ProbeRound| r.claim(now, probing.interval_ns));
        match claimed {
            CasOutcome::Done(true) => {}
            CasOutcome::Done(false) => return,
            other => {
                log(LogLevel::Warn, &format!("health-check {}: probe schedule unavailable ({other:?})", self.plugin));
                return;
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            if self.in_flight.borrow().values().any(|&j| j == i) {
                continue; // its last probe has not answered yet: one at a time per target
            }
            let headers = vec![
                (":method", "GET"),
                (":path", probing.path.as_str()),
                (":authority", t.authority.as_str()),
                ("user-agent", "meshwork-health-check"),
            ];
            match root.dispatch_http_call(&t.cluster, headers, None, vec![], probing.timeout) {
                Ok(token) => {
                    self.in_flight.borrow_mut().insert(token, i);
                }
                Err(status) => {
                    log(
                        LogLevel::Warn,
                        &format!("health-check {}: cannot probe {}: {status:?}", self.plugin, t.cluster),
                    );
                    self.record_probe(i, false, now);
                }
            }
        }
    }

    fn record_probe(&self, index: usize, ok: bool, now: u64) {
        let t = &self.targets[index];
        let _ = hostcalls::increment_metric(if ok { t.probe_ok } else { t.probe_failed }, 1);
        let policy = &self.policy;
        let outcome = self
            .table
            .update(t.cluster.as_bytes(), policy, now, |s: &mut TargetState| (s.record_probe(ok, policy, now), *s));
        let CasOutcome::Done((effect, state)) = outcome else {
            log(
                LogLevel::Warn,
                &format!("health-check {}: cannot record a probe of {} ({outcome:?})", self.plugin, t.cluster),
            );
            return;
        };
        if let Some(health) = effect.became {
            let word = if health == Health::Healthy { "healthy" } else { "unhealthy" };
            log(LogLevel::Info, &format!("health-check {}: {} is {word}", self.plugin, t.cluster));
        }
        if effect.unejected {
            log(
                LogLevel::Info,
                &format!("health-check {}: {} answered a probe; ejection ended", self.plugin, t.cluster),
            );
        }
        self.publish(index, &state, now);
    }

    /// Feeds one request's outcome to outlier ejection.
    fn record_response(&self, index: usize, error: bool, now: u64) {
        let Some(ejection) = &self.policy.ejection else { return };
        let t = &self.targets[index];
        let may = !error || {
            let others_ejected =
                (0..self.targets.len()).filter(|&j| j != index && self.state(j, now).is_ejected(now)).count();
            may_eject(others_ejected, self.targets.len(), ejection.max_percent)
        };
        let outcome = self.table.update(t.cluster.as_bytes(), &self.policy, now, |s: &mut TargetState| {
            (s.record_response(error, may, ejection, now), *s)
        });
        if let CasOutcome::Done((true, state)) = outcome {
            let _ = hostcalls::increment_metric(t.ejections, 1);
            let ms = state.ejected_until_ns.saturating_sub(now) / 1_000_000;
            log(LogLevel::Info, &format!("health-check {}: {} ejected for {ms} ms", self.plugin, t.cluster));
            self.publish(index, &state, now);
        }
    }

    /// The targets requests may go to now.
    fn routable(&self, now: u64) -> Vec<usize> {
        (0..self.targets.len()).filter(|&i| self.state(i, now).is_routable(now)).collect()
    }

    fn choose(&self, routable: &[usize]) -> usize {
        let n = routable.len();
        let slot = match self.balance {
            Balance::RoundRobin => {
                let i = self.next.get();
                self.next.set(i.wrapping_add(1));
                i % n
            }
            Balance::Random => (self.random.next_u64() % n as u64) as usize,
        };
        routable[slot]
    }
}

#[derive(Default)]
struct HealthRoot {
    checker: Option<Rc<Checker>>,
}

impl Context for HealthRoot {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, _body_size: usize, _num_trailers: usize) {
        let Some(checker) = self.checker.clone() else { return };
        let Some(index) = checker.in_flight.borrow_mut().remove(&token) else { return };
        // No headers: the probe was reset before an answer.
        let status = if num_headers == 0 {
            None
        } else {
            self.get_http_call_response_header(":status").and_then(|s| s.parse::<u16>().ok())
        };
        let ok = status.is_some_and(|s| checker.probing.as_ref().is_some_and(|p| p.expected_statuses.contains(&s)));
        checker.record_probe(index, ok, now_ns());
    }
}

impl RootContext for HealthRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Checker::configure(&bytes) {
            Ok(checker) => {
                self.set_tick_period(checker.tick_period());
                self.checker = Some(Rc::new(checker));
                true
            }
            Err(e) => {
                log(LogLevel::Error, &format!("health-check: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(checker) = self.checker.clone() {
            checker.tick(self);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HealthCheck { checker: self.checker.clone()?, target: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct HealthCheck {
    checker: Rc<Checker>,
    /// The target this filter sent the request to.
    target: Option<usize>,
}

impl HealthCheck {
    /// The cluster the route sends this request to (Envoy's `xds.cluster_name`), if a target.
    fn routed_target(&self) -> Option<usize> {
        let cluster = property(b"xds\0cluster_name").or_else(|| property(b"cluster_name"))?;
        self.checker.index_of(std::str::from_utf8(&cluster).ok()?)
    }
}

impl Context for HealthCheck {}

impl HttpContext for HealthCheck {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let checker = Rc::clone(&self.checker);
        let now = now_ns();
        let routable = checker.routable(now);
        // Without a routing header, a request whose route names a target needs that target;
        // any other request needs some target.
        let available = match (&checker.route_header, self.routed_target()) {
            (None, Some(target)) => routable.contains(&target),
            _ => !routable.is_empty(),
        };
        if !available {
            let _ = hostcalls::increment_metric(checker.refused, 1);
            self.send_http_response(
                checker.status,
                vec![("x-meshwork-health-check", "no healthy target"), ("content-type", "text/plain")],
                Some(b"no healthy upstream\n"),
            );
            return Action::Pause;
        }
        let _ = hostcalls::increment_metric(checker.routed, 1);
        if let Some(header) = &checker.route_header {
            let target = checker.choose(&routable);
            self.set_http_request_header(header, Some(&checker.targets[target].cluster));
            self.target = Some(target);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.checker.policy.ejection.is_none() {
            return;
        }
        let error = match Outcome::of_stream() {
            Outcome::Upstream(status) => status >= 500,
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => true,
            Outcome::Local => return,
        };
        if let Some(target) = self.target.or_else(|| self.routed_target()) {
            self.checker.record_response(target, error, now_ns());
        }
    }
}
