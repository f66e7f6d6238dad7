//! `circuit-breaker`: stops sending requests to an upstream that keeps failing, per key
//! (cluster, route or header value), with the state shared by every worker.
//!
//! Outcomes are read in `on_log` from Envoy's response code details, so only what the upstream
//! did counts (its statuses, connect failures, resets, router timeouts), never local replies.
//! The state machine is `meshwork-circuit-breaker`; it lives in a table of shared-data slots
//! updated with compare-and-swap (see `meshwork_cas_table`).

use std::rc::Rc;
use std::time::Duration;

use meshwork_cas_table::Outcome as TableOutcome;
use meshwork_circuit_breaker::{Admission, Breaker, Config as BreakerConfig, FailureRatio, Phase};
use meshwork_filter_support::outcome::Outcome;
use meshwork_filter_support::{
    ConfigDuration, RequestKey, SharedTable, configured, fingerprint, now_ns, property_string, tagged,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BreakerRoot::default()) });
}}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RatioConfig {
    /// Failed fraction of requests (0 < threshold <= 1) that opens the circuit.
    threshold: f64,
    #[serde(default = "twenty")]
    min_requests: u32,
    #[serde(default = "ten_seconds")]
    window: ConfigDuration,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum FailureKind {
    /// Any 5xx from the upstream.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503, 504 from the upstream.
    GatewayError,
    /// The router's timeouts (route or per-try).
    Timeout,
    ConnectFailure,
    Reset,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    key: RequestKey,
    #[serde(default = "five")]
    consecutive_failures: u32,
    failure_ratio: Option<RatioConfig>,
    #[serde(default = "five_seconds")]
    cool_down: ConfigDuration,
    #[serde(default = "one")]
    half_open_probes: u16,
    #[serde(default = "default_failure_on")]
    failure_on: Vec<FailureKind>,
    /// Further upstream statuses that count as failures (e.g. 429).
    #[serde(default)]
    failure_statuses: Vec<u16>,
    #[serde(default = "service_unavailable")]
    status: u32,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
}

fn twenty() -> u32 {
    20
}
fn ten_seconds() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}
fn five() -> u32 {
    5
}
fn five_seconds() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}
fn one() -> u16 {
    1
}
fn default_failure_on() -> Vec<FailureKind> {
    vec![FailureKind::FiveXx, FailureKind::Timeout, FailureKind::ConnectFailure, FailureKind::Reset]
}
fn service_unavailable() -> u32 {
    503
}
fn default_max_keys() -> usize {
    256
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Config {
    fn is_failure(&self, outcome: Outcome) -> bool {
        let on = |k| self.failure_on.contains(&k);
        match outcome {
            Outcome::Upstream(status) => {
                (on(FailureKind::FiveXx) && (500..600).contains(&status))
                    || (on(FailureKind::GatewayError) && matches!(status, 502..=504))
                    || self.failure_statuses.contains(&status)
            }
            Outcome::ConnectFailure => on(FailureKind::ConnectFailure),
            Outcome::Reset => on(FailureKind::Reset),
            Outcome::Timeout => on(FailureKind::Timeout),
            Outcome::Local => false,
        }
    }
}

/// Counters, defined once per VM.
struct Metrics {
    /// allowed, probe, rejected, undecided
    requests: [u32; 4],
    /// open, half_open, closed
    transitions: [u32; 3],
}

struct Breakers {
    config: Config,
    breaker: BreakerConfig,
    table: SharedTable,
    metrics: Metrics,
    plugin: String,
}

impl Breakers {
    fn count_request(&self, which: usize) {
        let _ = hostcalls::increment_metric(self.metrics.requests[which], 1);
    }

    fn transition(&self, key: &[u8], before: Phase, after: &Breaker) {
        let to = match (before, after.phase) {
            (a, b) if a == b => return,
            (_, Phase::Open) => 0,
            (_, Phase::HalfOpen) => 1,
            (_, Phase::Closed) => 2,
        };
        let _ = hostcalls::increment_metric(self.metrics.transitions[to], 1);
        let key = String::from_utf8_lossy(key);
        let message = match after.phase {
            Phase::Open => format!("circuit {key:?} opened: {}", after.reason.as_str()),
            Phase::HalfOpen => format!("circuit {key:?} half-open: probing"),
            Phase::Closed => format!("circuit {key:?} closed"),
        };
        let _ = hostcalls::log(LogLevel::Info, &format!("{}: {message}", self.plugin));
    }
}

#[derive(Default)]
struct BreakerRoot {
    breakers: Option<Rc<Breakers>>,
}

impl BreakerRoot {
    fn configure(&mut self, bytes: &[u8]) -> Result<(), String> {
        let config: Config = meshwork_filter_support::config::parse(bytes)?;
        let failure_ratio = match &config.failure_ratio {
            None => None,
            Some(r) if !(r.threshold > 0.0 && r.threshold <= 1.0) => {
                return Err(format!("failure_ratio.threshold {} must be above 0 and at most 1", r.threshold));
            }
            Some(r) => Some(FailureRatio {
                per_mille: (r.threshold * 1000.0).round().max(1.0) as u32,
                min_requests: r.min_requests,
                window_ns: nanos(r.window.0),
            }),
        };
        let breaker = BreakerConfig {
            consecutive_failures: config.consecutive_failures,
            failure_ratio,
            cool_down_ns: nanos(config.cool_down.0),
            probes: config.half_open_probes,
        };
        breaker.validate().map_err(|e| e.to_string())?;
        if !(200..=599).contains(&config.status) {
            return Err(format!("status {} is not an HTTP status code", config.status));
        }
        if config.max_keys == 0 {
            return Err("max_keys must be at least 1".into());
        }
        let plugin = property_string(&["plugin_name"]).unwrap_or_else(|| "circuit-breaker".into());
        let table =
            SharedTable::new(format!("meshwork.circuit-breaker.{plugin}.{:016x}", fingerprint(bytes)), config.max_keys);
        table.create().map_err(|s| format!("cannot create shared-data slots: {s:?}"))?;
        let counter = |name: &str, tags: &[(&str, &str)]| {
            let mut all = vec![("plugin", plugin.as_str())];
            all.extend_from_slice(tags);
            hostcalls::define_metric(MetricType::Counter, &tagged(name, &all)).unwrap_or(0)
        };
        let metrics = Metrics {
            requests: ["allowed", "probe", "rejected", "undecided"]
                .map(|o| counter("meshwork_circuit_breaker_requests_total", &[("outcome", o)])),
            transitions: ["open", "half_open", "closed"]
                .map(|to| counter("meshwork_circuit_breaker_transitions_total", &[("to", to)])),
        };
        self.breakers = Some(Rc::new(Breakers { config, breaker, table, metrics, plugin }));
        Ok(())
    }
}

impl Context for BreakerRoot {}

impl RootContext for BreakerRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        configured("circuit-breaker", self.configure(&bytes))
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Guarded { breakers: self.breakers.clone()?, admitted: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A request the circuit let through: its key, and its probe round when it is a probe.
struct Admitted {
    key: Vec<u8>,
    probe: Option<u64>,
}

struct Guarded {
    breakers: Rc<Breakers>,
    admitted: Option<Admitted>,
}

impl Context for Guarded {}

impl HttpContext for Guarded {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let b = Rc::clone(&self.breakers);
        let key = b.config.key.of_request();
        let now = now_ns();
        let decided = b.table.update(&key, &b.breaker, now, |s: &mut Breaker| {
            let before = s.phase;
            (before, s.admit(&b.breaker, now), *s)
        });
        let (before, admission, after) = match decided {
            TableOutcome::Done(d) => d,
            other => {
                // No state to decide with (table full, never created, extreme contention): let
                // the request through rather than refuse traffic blindly, and say so.
                b.count_request(3);
                let _ = hostcalls::log(
                    LogLevel::Warn,
                    &format!("{}: {other:?} for key {:?}; allowing", b.plugin, String::from_utf8_lossy(&key)),
                );
                return Action::Continue;
            }
        };
        b.transition(&key, before, &after);
        match admission {
            Admission::Allow => {
                b.count_request(0);
                self.admitted = Some(Admitted { key, probe: None });
                Action::Continue
            }
            Admission::Probe { round } => {
                b.count_request(1);
                self.admitted = Some(Admitted { key, probe: Some(round) });
                Action::Continue
            }
            Admission::Reject { reason, retry_after_ns } => {
                b.count_request(2);
                let state = if after.phase == Phase::HalfOpen { "half-open" } else { "open" };
                let retry_after = retry_after_ns.div_ceil(1_000_000_000).max(1).to_string();
                self.send_http_response(
                    b.config.status,
                    vec![
                        ("x-meshwork-circuit", state),
                        ("x-meshwork-circuit-reason", reason.as_str()),
                        ("retry-after", &retry_after),
                        ("content-type", "text/plain"),
                    ],
                    Some(format!("circuit {state}: {}\n", reason.as_str()).as_bytes()),
                );
                Action::Pause
            }
        }
    }

    fn on_log(&mut self) {
        let Some(Admitted { key, probe }) = self.admitted.take() else { return };
        let b = Rc::clone(&self.breakers);
        let outcome = Outcome::of_stream();
        let now = now_ns();
        if !outcome.reached_upstream() {
            if let Some(round) = probe {
                let _ = b.table.update(&key, &b.breaker, now, |s: &mut Breaker| s.abandon_probe(round));
            }
            return;
        }
        let failed = b.config.is_failure(outcome);
        if let TableOutcome::Done((before, after)) = b.table.update(&key, &b.breaker, now, |s: &mut Breaker| {
            let before = s.phase;
            s.record(&b.breaker, now, probe, failed);
            (before, *s)
        }) {
            b.transition(&key, before, &after);
        }
    }
}
