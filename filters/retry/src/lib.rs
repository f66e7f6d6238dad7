//! `retry`: retries failed requests within a retry budget, in either of two modes.
//!
//! - **callout** (any host): the filter holds the request (headers, body, trailers), sends each
//!   try itself with `proxy_http_call`, and answers the client with the final response. Back-off
//!   waits run on the root context's tick; tries after a wait are sent from the root and their
//!   answers relayed to the stream with `proxy_set_effective_context`.
//! - **envoy**: the filter sets `x-envoy-retry-on`, `x-envoy-max-retries` and friends, and
//!   Envoy's router (or meshwork's, which honours the same headers) does the retrying.
//!
//! Both modes add `x-meshwork-attempts` to the response and keep the budget shared by all
//! workers in shared data (see `meshwork-retry`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use meshwork_cas_table::Outcome as TableOutcome;
use meshwork_filter_support::callout::{Bodies, CalloutResponse, HeldRequest, Mode};
use meshwork_filter_support::wakeups::{Wakeups, act_for};
use meshwork_filter_support::{
    ConfigDuration, Random, RequestKey, SharedTable, cluster_name, configured, fingerprint, now_ns, property_string,
    tagged,
};
use meshwork_retry::{Attempt, Budget, BudgetConfig, RetryOn, backoff_ns, is_idempotent};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RetryRoot::default()) });
}}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Condition {
    #[serde(rename = "5xx")]
    FiveXx,
    GatewayError,
    Reset,
    ConnectFailure,
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
}

impl Condition {
    fn envoy_name(self) -> &'static str {
        match self {
            Condition::FiveXx => "5xx",
            Condition::GatewayError => "gateway-error",
            Condition::Reset => "reset",
            Condition::ConnectFailure => "connect-failure",
            Condition::Retriable4xx => "retriable-4xx",
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum Methods {
    All(AllMethods),
    Listed(Vec<String>),
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum AllMethods {
    All,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct BackoffConfig {
    #[serde(default = "ms25")]
    base: ConfigDuration,
    #[serde(default = "ms250")]
    max: ConfigDuration,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct BudgetSettings {
    /// Retries per request allowed over the window.
    #[serde(default = "point_two")]
    ratio: f64,
    #[serde(default = "ten")]
    min_per_second: u32,
    #[serde(default = "ten_seconds")]
    window: ConfigDuration,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    mode: Mode,
    /// Callout mode: the cluster tries go to (default: the route's cluster).
    cluster: Option<String>,
    #[serde(default = "two")]
    max_retries: u32,
    #[serde(default = "default_retry_on")]
    retry_on: Vec<Condition>,
    #[serde(default)]
    retriable_statuses: Vec<u16>,
    /// Methods that are retried: `"all"` or a list (default: the idempotent ones).
    retriable_methods: Option<Methods>,
    per_try_timeout: Option<ConfigDuration>,
    /// Callout mode: the whole exchange, all tries and waits (default 15s, as Envoy's route).
    #[serde(default = "fifteen_seconds")]
    timeout: ConfigDuration,
    #[serde(default = "default_backoff")]
    backoff: BackoffConfig,
    #[serde(default = "default_budget")]
    budget: Option<BudgetSettings>,
    /// What the budget is kept per.
    #[serde(default)]
    key: RequestKey,
    /// Callout mode: what to do with requests that have a body. `pass`: send them on without
    /// retries (works in every host). `hold`: buffer and retry them too; the host must deliver
    /// body callbacks while headers are paused (Envoy's and meshwork's
    /// `allow_on_headers_stop_iteration`).
    #[serde(default)]
    request_bodies: Bodies,
    /// Callout mode: larger request bodies are passed on without retries.
    #[serde(default = "one_mib")]
    max_body_bytes: usize,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
}

fn two() -> u32 {
    2
}
fn default_retry_on() -> Vec<Condition> {
    vec![Condition::FiveXx, Condition::ConnectFailure, Condition::Reset]
}
fn ms25() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(25))
}
fn ms250() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(250))
}
fn point_two() -> f64 {
    0.2
}
fn ten() -> u32 {
    10
}
fn ten_seconds() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}
fn fifteen_seconds() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(15))
}
fn default_backoff() -> BackoffConfig {
    BackoffConfig { base: ms25(), max: ms250() }
}
fn default_budget() -> Option<BudgetSettings> {
    Some(BudgetSettings { ratio: point_two(), min_per_second: ten(), window: ten_seconds() })
}
fn one_mib() -> usize {
    1 << 20
}
fn default_max_keys() -> usize {
    256
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

const ATTEMPTS: &str = "x-meshwork-attempts";

/// A worker adds its requests to the shared budget after this many, or this long.
/// A try is not started with less than this left before the request's deadline: it could not
/// be answered in time, and hosts round callout timeouts to milliseconds (a try cut short by
/// the rounding would otherwise be followed by a try the upstream sees after the deadline).
const MIN_TRY_NS: u64 = 2_000_000;
const FLUSH_REQUESTS: u32 = 16;
const FLUSH_NS: u64 = 10_000_000;

/// A request being retried in callout mode.
struct Job {
    request: HeldRequest,
    cluster: String,
    key: Vec<u8>,
    /// Tries sent so far.
    attempts: u32,
    deadline_ns: u64,
}

/// Counters: requests, retries, budget_exhausted.
struct Metrics([u32; 3]);

struct Shared {
    config: Config,
    retry_on: RetryOn,
    budget: Option<BudgetConfig>,
    table: SharedTable,
    wakeups: Wakeups,
    jobs: RefCell<HashMap<u32, Job>>,
    /// Requests counted here and added to the shared budget in batches: one shared-data write
    /// per batch instead of one per request.
    unrecorded: RefCell<HashMap<Vec<u8>, u32>>,
    last_flush_ns: Cell<u64>,
    /// The budget of each key as of the last batch (envoy mode decides on it).
    seen: RefCell<HashMap<Vec<u8>, Budget>>,
    /// Tries the root sent after a back-off: callout token → stream.
    root_tokens: RefCell<HashMap<u32, u32>>,
    random: Random,
    metrics: Metrics,
    plugin: String,
}

enum Decision {
    Retry,
    Final { budget_exhausted: bool },
}

impl Shared {
    fn count(&self, which: usize, n: u32) {
        let _ = hostcalls::increment_metric(self.metrics.0[which], n as i64);
    }

    fn method_is_retriable(&self, method: &[u8]) -> bool {
        match &self.config.retriable_methods {
            None => is_idempotent(method),
            Some(Methods::All(_)) => true,
            Some(Methods::Listed(list)) => list.iter().any(|m| m.as_bytes().eq_ignore_ascii_case(method)),
        }
    }

    fn record_request(&self, key: &[u8], now: u64) {
        self.count(0, 1);
        if self.budget.is_none() {
            return;
        }
        let pending = {
            let mut unrecorded = self.unrecorded.borrow_mut();
            match unrecorded.get_mut(key) {
                Some(n) => *n += 1,
                None => {
                    unrecorded.insert(key.to_vec(), 1);
                }
            }
            unrecorded.values().sum::<u32>()
        };
        if pending >= FLUSH_REQUESTS || now.saturating_sub(self.last_flush_ns.get()) >= FLUSH_NS {
            self.flush(now);
        }
    }

    /// Adds the requests counted here to the shared budgets.
    fn flush(&self, now: u64) {
        let Some(budget) = &self.budget else { return };
        self.last_flush_ns.set(now);
        let batch = std::mem::take(&mut *self.unrecorded.borrow_mut());
        for (key, n) in batch {
            if let TableOutcome::Done(state) = self.table.update(&key, budget, now, |b: &mut Budget| {
                b.record_requests(budget, now, n);
                *b
            }) {
                self.seen.borrow_mut().insert(key, state);
            }
        }
    }

    /// Takes a retry from the budget; without a budget, always granted. A budget that cannot be
    /// reached (table full) grants it: retries then have only `max_retries` as their limit.
    fn take_retry(&self, key: &[u8], now: u64) -> bool {
        let Some(budget) = &self.budget else { return true };
        self.flush(now);
        match self.table.update(key, budget, now, |b: &mut Budget| (b.try_retry(budget, now), *b)) {
            TableOutcome::Done((granted, state)) => {
                self.seen.borrow_mut().insert(key.to_vec(), state);
                granted
            }
            _ => true,
        }
    }

    /// Envoy mode: charges the retries the router made.
    fn charge_retries(&self, key: &[u8], n: u32, now: u64) {
        self.count(1, n);
        let Some(budget) = &self.budget else { return };
        if let TableOutcome::Done(state) = self.table.update(key, budget, now, |b: &mut Budget| {
            b.record_retries(budget, now, n);
            *b
        }) {
            self.seen.borrow_mut().insert(key.to_vec(), state);
        }
    }

    /// Envoy mode: whether the budget had room at the last batch (the router retries later,
    /// and the filter charges what it did when the response says).
    fn had_room(&self, key: &[u8], now: u64) -> bool {
        let Some(budget) = &self.budget else { return true };
        if !self.seen.borrow().contains_key(key) {
            self.flush(now);
        }
        self.seen.borrow().get(key).is_none_or(|b| b.has_room(budget, now))
    }

    /// Callout mode: decides what follows a try's answer.
    fn decide(&self, job: &Job, attempt: Attempt, now: u64) -> Decision {
        if job.attempts > self.config.max_retries
            || !self.retry_on.retries(attempt)
            || now.saturating_add(MIN_TRY_NS) >= job.deadline_ns
        {
            return Decision::Final { budget_exhausted: false };
        }
        if !self.take_retry(&job.key, now) {
            self.count(2, 1);
            return Decision::Final { budget_exhausted: true };
        }
        Decision::Retry
    }

    /// Sends the next try of `stream`'s job from the active context.
    fn send_try(&self, stream: u32, from_root: bool) {
        let now = now_ns();
        let mut jobs = self.jobs.borrow_mut();
        let Some(job) = jobs.get_mut(&stream) else { return };
        if job.attempts > 0 && now.saturating_add(MIN_TRY_NS) >= job.deadline_ns {
            // The back-off ran into the deadline: the request has timed out, as Envoy's router
            // answers when its route timeout fires between tries.
            let attempts = job.attempts.to_string();
            jobs.remove(&stream);
            drop(jobs);
            if act_for(stream) {
                answer(504, &attempts, "upstream request timeout\n", &[]);
            }
            return;
        }
        job.attempts += 1;
        job.request.set_header("x-meshwork-attempt", job.attempts.to_string());
        let remaining = Duration::from_nanos(job.deadline_ns.saturating_sub(now));
        let per_try = self.config.per_try_timeout.map_or(remaining, |t| t.0.min(remaining));
        match job.request.dispatch(&job.cluster, per_try) {
            Ok(token) => {
                if from_root {
                    self.root_tokens.borrow_mut().insert(token, stream);
                }
            }
            Err(status) => {
                let attempts = job.attempts;
                let cluster = job.cluster.clone();
                jobs.remove(&stream);
                drop(jobs);
                let _ = hostcalls::log(
                    LogLevel::Error,
                    &format!("{}: cannot call cluster {cluster:?}: {status:?}", self.plugin),
                );
                if act_for(stream) {
                    answer(500, &attempts.to_string(), "retry: the upstream cluster cannot be called\n", &[]);
                }
            }
        }
    }

    /// A try of `stream` was answered: retry (now or after a back-off) or answer the client.
    fn on_answer(&self, stream: u32, response: CalloutResponse, from_root: bool) {
        let now = now_ns();
        let attempt = match response.status {
            0 => Attempt::Reset,
            s => Attempt::Status(s),
        };
        let decision = {
            let jobs = self.jobs.borrow();
            let Some(job) = jobs.get(&stream) else { return }; // the client is gone
            self.decide(job, attempt, now)
        };
        match decision {
            Decision::Retry => {
                self.count(1, 1);
                let attempts = self.jobs.borrow().get(&stream).map_or(1, |j| j.attempts);
                let backoff = &self.config.backoff;
                let wait = backoff_ns(attempts, nanos(backoff.base.0), nanos(backoff.max.0), self.random.unit());
                if wait == 0 {
                    self.send_try(stream, from_root);
                } else {
                    self.wakeups.schedule(stream, now + wait);
                }
            }
            Decision::Final { budget_exhausted } => {
                let Some(job) = self.jobs.borrow_mut().remove(&stream) else { return };
                if !act_for(stream) {
                    return;
                }
                let attempts = job.attempts.to_string();
                let mut extra = vec![(ATTEMPTS, attempts.as_str())];
                if budget_exhausted {
                    extra.push(("x-meshwork-retry-budget", "exhausted"));
                }
                if response.status == 0 {
                    answer(503, &attempts, "upstream connect error or disconnect/reset before headers\n", &extra[1..]);
                } else {
                    response.relay(&extra);
                }
            }
        }
    }
}

/// A local answer to the effective stream, with the attempt count.
fn answer(status: u32, attempts: &str, body: &str, extra: &[(&str, &str)]) {
    let mut headers = vec![(ATTEMPTS, attempts), ("content-type", "text/plain")];
    headers.extend_from_slice(extra);
    let _ = hostcalls::send_http_response(status, headers, Some(body.as_bytes()));
}

#[derive(Default)]
struct RetryRoot {
    shared: Option<Rc<Shared>>,
}

impl RetryRoot {
    fn configure(&mut self, bytes: &[u8]) -> Result<(), String> {
        let config: Config = meshwork_filter_support::config::parse(bytes)?;
        let mut retry_on = RetryOn::default();
        for c in &config.retry_on {
            match c {
                Condition::FiveXx => retry_on.server_error = true,
                Condition::GatewayError => retry_on.gateway_error = true,
                Condition::Reset => retry_on.reset = true,
                Condition::ConnectFailure => retry_on.connect_failure = true,
                Condition::Retriable4xx => retry_on.retriable_4xx = true,
            }
        }
        for s in &config.retriable_statuses {
            if !(100..=599).contains(s) {
                return Err(format!("retriable_statuses: {s} is not an HTTP status code"));
            }
            if !retry_on.add_status(*s) {
                return Err("retriable_statuses: at most 8 statuses".into());
            }
        }
        if config.max_retries > 10 {
            return Err(format!("max_retries {} is more than 10", config.max_retries));
        }
        if config.backoff.base.0.is_zero() || config.backoff.max.0 < config.backoff.base.0 {
            return Err("backoff: base must be above 0 and max at least base".into());
        }
        if config.timeout.0.is_zero() {
            return Err("timeout must be longer than 0".into());
        }
        let budget = match &config.budget {
            None => None,
            Some(b) if !(0.0..=10.0).contains(&b.ratio) => {
                return Err(format!("budget.ratio {} must be between 0 and 10", b.ratio));
            }
            Some(b) if b.window.0 < Duration::from_millis(2) => return Err("budget.window is too short".into()),
            Some(b) => Some(BudgetConfig {
                per_mille: (b.ratio * 1000.0).round() as u32,
                min_per_second: b.min_per_second,
                window_ns: nanos(b.window.0),
            }),
        };
        if config.max_keys == 0 {
            return Err("max_keys must be at least 1".into());
        }
        let plugin = property_string(&["plugin_name"]).unwrap_or_else(|| "retry".into());
        let table = SharedTable::new(format!("meshwork.retry.{plugin}.{:016x}", fingerprint(bytes)), config.max_keys);
        table.create().map_err(|s| format!("cannot create shared-data slots: {s:?}"))?;
        let metrics = Metrics(
            ["meshwork_retry_requests_total", "meshwork_retry_retries_total", "meshwork_retry_budget_exhausted_total"]
                .map(|n| {
                    hostcalls::define_metric(MetricType::Counter, &tagged(n, &[("plugin", &plugin)])).unwrap_or(0)
                }),
        );
        self.shared = Some(Rc::new(Shared {
            config,
            retry_on,
            budget,
            table,
            wakeups: Wakeups::default(),
            jobs: RefCell::default(),
            unrecorded: RefCell::default(),
            last_flush_ns: Cell::new(0),
            seen: RefCell::default(),
            root_tokens: RefCell::default(),
            random: Random::default(),
            metrics,
            plugin,
        }));
        Ok(())
    }
}

impl Context for RetryRoot {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(shared) = self.shared.clone() else { return };
        let Some(stream) = shared.root_tokens.borrow_mut().remove(&token_id) else { return };
        shared.on_answer(stream, CalloutResponse::read(num_headers, body_size), true);
    }
}

impl RootContext for RetryRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        configured("retry", self.configure(&bytes))
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        for stream in shared.wakeups.take_due(now_ns()) {
            shared.send_try(stream, true);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Retried { shared: self.shared.clone()?, id: context_id, held: None, key: Vec::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Retried {
    shared: Rc<Shared>,
    id: u32,
    /// Callout mode: the request being gathered before the first try.
    held: Option<HeldRequest>,
    key: Vec<u8>,
}

impl Retried {
    /// Callout mode: the whole request is known; send the first try.
    fn start(&mut self) -> Action {
        let Some(request) = self.held.take() else { return Action::Continue };
        let s = Rc::clone(&self.shared);
        let Some(cluster) = s.config.cluster.clone().or_else(|| cluster_name().and_then(|c| String::from_utf8(c).ok()))
        else {
            let _ =
                hostcalls::log(LogLevel::Error, &format!("{}: no cluster to send tries to; set `cluster`", s.plugin));
            answer(500, "0", "retry: no upstream cluster\n", &[]);
            return Action::Pause;
        };
        let deadline_ns = now_ns().saturating_add(nanos(s.config.timeout.0));
        let job = Job { request, cluster, key: std::mem::take(&mut self.key), attempts: 0, deadline_ns };
        s.jobs.borrow_mut().insert(self.id, job);
        s.send_try(self.id, false);
        Action::Pause
    }

    fn envoy_headers(&mut self, retriable: bool, now: u64) {
        let s = Rc::clone(&self.shared);
        let mut max_retries = 0;
        if retriable {
            max_retries = s.config.max_retries;
            if !s.had_room(&self.key, now) {
                s.count(2, 1);
                max_retries = 0;
            }
        }
        // The filter owns the retry policy: whatever the client asked for is replaced (no
        // retries is max-retries 0, whatever retry-on a client sent).
        self.set_http_request_header("x-envoy-max-retries", Some(&max_retries.to_string()));
        if max_retries == 0 {
            return;
        }
        let mut retry_on: Vec<&str> = s.config.retry_on.iter().map(|c| c.envoy_name()).collect();
        let codes = s.config.retriable_statuses.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        if !codes.is_empty() {
            retry_on.push("retriable-status-codes");
            self.set_http_request_header("x-envoy-retriable-status-codes", Some(&codes));
        }
        self.set_http_request_header("x-envoy-retry-on", Some(&retry_on.join(",")));
        if let Some(t) = s.config.per_try_timeout {
            self.set_http_request_header("x-envoy-upstream-rq-per-try-timeout-ms", Some(&t.0.as_millis().to_string()));
        }
    }
}

impl Context for Retried {
    fn on_http_call_response(&mut self, _token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let shared = Rc::clone(&self.shared);
        shared.on_answer(self.id, CalloutResponse::read(num_headers, body_size), false);
    }
}

impl HttpContext for Retried {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let s = Rc::clone(&self.shared);
        let now = now_ns();
        self.key = s.config.key.of_request();
        s.record_request(&self.key, now);
        let method = self.get_http_request_header_bytes(":method").unwrap_or_default();
        let retriable = s.method_is_retriable(&method) && s.config.max_retries > 0;
        if s.config.mode == Mode::Envoy {
            self.envoy_headers(retriable, now);
            return Action::Continue;
        }
        if !retriable || (!end_of_stream && s.config.request_bodies == Bodies::Pass) {
            return Action::Continue;
        }
        self.held = Some(HeldRequest::capture_headers());
        if end_of_stream { self.start() } else { Action::Pause }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if body_size > self.shared.config.max_body_bytes {
            // Too large to hold: pass it on untouched, without retries.
            self.held = None;
        }
        let Some(held) = &mut self.held else { return Action::Continue };
        if held.body_arrived(body_size, end_of_stream) { self.start() } else { Action::Pause }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(held) = &mut self.held else { return Action::Continue };
        held.trailers_arrived();
        self.start()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let s = Rc::clone(&self.shared);
        if s.config.mode != Mode::Envoy {
            return Action::Continue;
        }
        // Envoy reports tries only with the route's include_attempt_count_in_response.
        if let Some(attempts) = self.get_http_response_header("x-envoy-attempt-count") {
            if let Ok(n @ 2..) = attempts.parse::<u32>() {
                s.charge_retries(&self.key, n - 1, now_ns());
            }
            self.set_http_response_header(ATTEMPTS, Some(&attempts));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.shared.jobs.borrow_mut().remove(&self.id);
    }
}
