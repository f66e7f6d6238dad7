//! `fault-injection`: delays and aborts for a share of requests, as Envoy's fault filter does.
//!
//! A delayed request is paused in `on_http_request_headers` and registered for a wake-up; the
//! root context's tick resumes it (or aborts it, when an abort was chosen too) once the delay has
//! passed. Aborts are local replies. The decision is `meshwork_fault::decide`; the cap on faults
//! under way at once is a counter in shared data, taken with CAS and given back in `on_log`,
//! which every stream reaches however it ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use meshwork_cas_table::Outcome;
use meshwork_fault::{
    ABORT_HEADER, ABORT_PERCENTAGE_HEADER, AbortPolicy, AbortStatus, ActiveFaults, DELAY_HEADER,
    DELAY_PERCENTAGE_HEADER, DelayLength, DelayPolicy, Denominator, FaultHeaders, Fraction, Policy,
};
use meshwork_filter_support::config::{self, header_name};
use meshwork_filter_support::wakeups::{Wakeups, act_for};
use meshwork_filter_support::{
    ConfigDuration, Random, SharedTable, configured, fingerprint, now_ns, property_string, tagged,
};
use meshwork_traffic_split::{HeaderMatch, Request, ValueMatch};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;
use serde_json::Value;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FaultRoot::default()) });
}}

/// A percentage: a number of percent, or Envoy's `FractionalPercent`
/// (`{"numerator": 5, "denominator": "TEN_THOUSAND"}`; denominator `HUNDRED` when absent).
fn fraction(field: &str, value: Option<&Value>) -> Result<Fraction, String> {
    let bad = || {
        format!(
            "{field}: give a number of percent or {{\"numerator\": N, \"denominator\": \"HUNDRED\" | \"TEN_THOUSAND\" | \"MILLION\"}}"
        )
    };
    let number = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad);
    let f = match value {
        None => Fraction::ALWAYS,
        Some(Value::Object(o)) => {
            if o.keys().any(|k| k != "numerator" && k != "denominator") {
                return Err(bad());
            }
            let denominator = match o.get("denominator").map(|d| d.as_str()) {
                None | Some(Some("HUNDRED")) => Denominator::Hundred,
                Some(Some("TEN_THOUSAND")) => Denominator::TenThousand,
                Some(Some("MILLION")) => Denominator::Million,
                Some(_) => return Err(bad()),
            };
            Fraction { numerator: number(o.get("numerator").unwrap_or(&Value::from(0)))?, denominator }
        }
        Some(v) => Fraction::per_hundred(number(v)?),
    };
    if f.numerator > f.denominator.value() {
        return Err(format!("{field}: numerator {} is over its denominator {}", f.numerator, f.denominator.value()));
    }
    Ok(f)
}

/// An empty object, as Envoy's `header_abort: {}` and `header_delay: {}`.
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Enabled {}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct AbortConfig {
    http_status: Option<u32>,
    header_abort: Option<Enabled>,
    percentage: Option<Value>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct DelayConfig {
    fixed_delay: Option<ConfigDuration>,
    header_delay: Option<Enabled>,
    percentage: Option<Value>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct HeaderConfig {
    name: String,
    value: Option<String>,
    prefix: Option<String>,
    present: Option<bool>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    abort: Option<AbortConfig>,
    delay: Option<DelayConfig>,
    /// Faults apply only to requests with all of these headers (Envoy's `headers`).
    #[serde(default)]
    headers: Vec<HeaderConfig>,
    /// The most requests carrying a fault at once, across workers; unlimited when absent.
    max_active_faults: Option<u64>,
}

fn header_match(i: usize, h: HeaderConfig) -> Result<HeaderMatch, String> {
    let value = match (h.value, h.prefix, h.present) {
        (Some(v), None, None) => ValueMatch::Exact(v),
        (None, Some(p), None) => ValueMatch::Prefix(p),
        (None, None, Some(true)) => ValueMatch::Present,
        _ => return Err(format!("headers[{i}] ({}): give exactly one of value, prefix or present: true", h.name)),
    };
    Ok(HeaderMatch { name: header_name(&format!("headers[{i}].name"), &h.name)?, value })
}

fn policy(config: &Config) -> Result<Policy, String> {
    let abort = match &config.abort {
        None => None,
        Some(a) => {
            let status = match (a.http_status, a.header_abort) {
                (Some(s), None) if (200..600).contains(&s) => AbortStatus::Fixed(s as u16),
                (Some(s), None) => return Err(format!("abort.http_status {s} is not an HTTP status (200 to 599)")),
                (None, Some(_)) => AbortStatus::FromHeader,
                _ => return Err("abort: give exactly one of http_status or header_abort".into()),
            };
            Some(AbortPolicy { status, percentage: fraction("abort.percentage", a.percentage.as_ref())? })
        }
    };
    let delay = match &config.delay {
        None => None,
        Some(d) => {
            let length = match (d.fixed_delay, d.header_delay) {
                (Some(ConfigDuration(t)), None) => DelayLength::FixedNs(
                    u64::try_from(t.as_nanos()).map_err(|_| "delay.fixed_delay is too long".to_string())?,
                ),
                (None, Some(_)) => DelayLength::FromHeader,
                _ => return Err("delay: give exactly one of fixed_delay or header_delay".into()),
            };
            Some(DelayPolicy { length, percentage: fraction("delay.percentage", d.percentage.as_ref())? })
        }
    };
    if abort.is_none() && delay.is_none() {
        return Err("give abort, delay or both".into());
    }
    Ok(Policy { abort, delay })
}

struct Metrics {
    delays: u32,
    aborts: u32,
    overflow: u32,
    active: u32,
}

struct Faults {
    policy: Policy,
    headers: Vec<HeaderMatch>,
    /// Whether deciding needs the request headers at all (matches or header-controlled faults).
    reads_headers: bool,
    max_active: u64,
    /// One slot: how many requests carry a fault now, across workers.
    active: SharedTable,
    metrics: Metrics,
    random: Random,
    wakeups: Wakeups,
    /// Delayed streams that are to be aborted with this status when they wake.
    abort_after_delay: RefCell<HashMap<u32, u16>>,
}

const ACTIVE_KEY: &[u8] = b"active";

impl Faults {
    /// Changes the shared count of active faults; the new count, or `None` when the slot could
    /// not be updated (then nothing was taken).
    fn change_active(&self, f: impl Fn(&mut ActiveFaults) -> bool) -> Option<bool> {
        let outcome = self.active.update(ACTIVE_KEY, &(), now_ns(), |a: &mut ActiveFaults| (f(a), a.count));
        match outcome {
            Outcome::Done((changed, count)) => {
                let _ = hostcalls::record_metric(self.metrics.active, count);
                Some(changed)
            }
            other => {
                log(LogLevel::Warn, &format!("fault-injection: active-fault counter unavailable ({other:?})"));
                None
            }
        }
    }
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

#[derive(Default)]
struct FaultRoot {
    faults: Option<Rc<Faults>>,
}

impl FaultRoot {
    fn configure(&mut self, bytes: &[u8]) -> Result<(), String> {
        let config = config::parse::<Config>(bytes)?;
        let policy = policy(&config)?;
        let headers =
            config.headers.into_iter().enumerate().map(|(i, h)| header_match(i, h)).collect::<Result<Vec<_>, _>>()?;
        let plugin = property_string(&["plugin_name"]).unwrap_or_else(|| "fault-injection".into());
        let active = SharedTable::new(format!("meshwork.fault-injection.{plugin}.{:016x}", fingerprint(bytes)), 1);
        active.create().map_err(|s| format!("cannot create the shared active-fault counter: {s:?}"))?;
        let metric =
            |kind, name: &str| hostcalls::define_metric(kind, &tagged(name, &[("plugin", &plugin)])).unwrap_or(0);
        let metrics = Metrics {
            delays: metric(MetricType::Counter, "meshwork_fault_injection_delays_injected_total"),
            aborts: metric(MetricType::Counter, "meshwork_fault_injection_aborts_injected_total"),
            overflow: metric(MetricType::Counter, "meshwork_fault_injection_faults_overflow_total"),
            active: metric(MetricType::Gauge, "meshwork_fault_injection_active_faults"),
        };
        let from_header = matches!(policy.abort, Some(AbortPolicy { status: AbortStatus::FromHeader, .. }))
            || matches!(policy.delay, Some(DelayPolicy { length: DelayLength::FromHeader, .. }));
        self.faults = Some(Rc::new(Faults {
            reads_headers: from_header || !headers.is_empty(),
            policy,
            headers,
            max_active: config.max_active_faults.unwrap_or(u64::MAX),
            active,
            metrics,
            random: Random::default(),
            wakeups: Wakeups::default(),
            abort_after_delay: RefCell::default(),
        }));
        Ok(())
    }
}

impl Context for FaultRoot {}

impl RootContext for FaultRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        configured("fault-injection", self.configure(&bytes))
    }

    fn on_tick(&mut self) {
        let Some(faults) = &self.faults else { return };
        for id in faults.wakeups.take_due(now_ns()) {
            let abort = faults.abort_after_delay.borrow_mut().remove(&id);
            if !act_for(id) {
                continue; // the stream ended while it waited; on_log gave its place back
            }
            match abort {
                Some(status) => {
                    let _ = hostcalls::increment_metric(faults.metrics.aborts, 1);
                    abort_reply(status);
                }
                None => {
                    let _ = hostcalls::resume_http_request();
                }
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Fault { id: context_id, faults: self.faults.clone()?, holds_place: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn abort_reply(status: u16) {
    let _ =
        hostcalls::send_http_response(status as u32, vec![("content-type", "text/plain")], Some(b"fault filter abort"));
}

struct Fault {
    id: u32,
    faults: Rc<Faults>,
    /// This stream counts in the shared number of active faults.
    holds_place: bool,
}

/// The request headers a match or a header-controlled fault needs, read once.
struct RequestView {
    headers: Vec<(String, String)>,
}

impl Request for RequestView {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn path(&self) -> &str {
        self.header(":path").unwrap_or("/")
    }
}

impl Context for Fault {}

impl HttpContext for Fault {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let faults = Rc::clone(&self.faults);
        let view =
            RequestView { headers: if faults.reads_headers { self.get_http_request_headers() } else { Vec::new() } };
        if !faults.headers.iter().all(|h| h.matches(&view)) {
            return Action::Continue;
        }
        let caller = FaultHeaders {
            abort: view.header(ABORT_HEADER),
            abort_percentage: view.header(ABORT_PERCENTAGE_HEADER),
            delay: view.header(DELAY_HEADER),
            delay_percentage: view.header(DELAY_PERCENTAGE_HEADER),
        };
        let decision = meshwork_fault::decide(&faults.policy, &caller, || faults.random.next_u64());
        if !decision.is_fault() {
            return Action::Continue;
        }
        match faults.change_active(|a| a.try_acquire(faults.max_active)) {
            Some(true) => self.holds_place = true,
            Some(false) => {
                let _ = hostcalls::increment_metric(faults.metrics.overflow, 1);
                return Action::Continue;
            }
            None => return Action::Continue,
        }
        if let Some(delay_ns) = decision.delay_ns {
            let _ = hostcalls::increment_metric(faults.metrics.delays, 1);
            if let Some(status) = decision.abort_status {
                faults.abort_after_delay.borrow_mut().insert(self.id, status);
            }
            faults.wakeups.schedule(self.id, now_ns().saturating_add(delay_ns));
            return Action::Pause;
        }
        if let Some(status) = decision.abort_status {
            let _ = hostcalls::increment_metric(faults.metrics.aborts, 1);
            abort_reply(status);
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.faults.abort_after_delay.borrow_mut().remove(&self.id);
        if std::mem::take(&mut self.holds_place) {
            self.faults.change_active(|a| {
                a.release();
                true
            });
        }
    }
}
