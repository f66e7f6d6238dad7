//! `local-rate-limit`: a token bucket per key, shared by every worker of the proxy.
//!
//! Buckets live in proxy-wasm shared data as a fixed table of CAS slots created at configure
//! time (see `meshwork_token_bucket::table`), so all workers agree and a full bucket admits
//! exactly `burst` requests. Limited requests get a local reply (429 by default) with
//! `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` and `retry-after`.

use std::rc::Rc;
use std::time::Duration;

use meshwork_cas_table::Outcome;
use meshwork_filter_support::{
    ConfigDuration, SharedTable, configured, fingerprint, now_ns, property_string, route_name, tagged,
};
use meshwork_token_bucket::{Limit, State};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RateLimitRoot::default()) });
}}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum KeyConfig {
    /// One bucket for everything this filter sees on its route.
    Route,
    /// One bucket per value of a request header; requests without it share the bucket "-".
    Header(String),
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Tokens added per `period`.
    rate: u64,
    #[serde(default = "one_second")]
    period: ConfigDuration,
    /// Bucket size; defaults to `rate`.
    burst: Option<u64>,
    #[serde(default = "route_key")]
    key: KeyConfig,
    #[serde(default = "too_many_requests")]
    status: u32,
    /// Most keys tracked at once (shared-data slots). Idle keys free their slot.
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    /// Add x-ratelimit-* headers to allowed responses too, not only to limited ones.
    #[serde(default)]
    headers_on_success: bool,
}

fn one_second() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn route_key() -> KeyConfig {
    KeyConfig::Route
}
fn too_many_requests() -> u32 {
    429
}
fn default_max_keys() -> usize {
    1024
}

struct Limiter {
    config: Config,
    limit: Limit,
    table: SharedTable,
    /// Counter ids for the outcomes allowed, limited, undecided (defined once).
    outcomes: [u32; 3],
}

#[derive(Default)]
struct RateLimitRoot {
    limiter: Option<Rc<Limiter>>,
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

impl RateLimitRoot {
    fn configure(&mut self, bytes: &[u8]) -> Result<(), String> {
        let config: Config = meshwork_filter_support::config::parse(bytes)?;
        let period_ns = u64::try_from(config.period.0.as_nanos()).map_err(|_| "period is too long".to_string())?;
        let limit =
            Limit::new(config.rate, period_ns, config.burst.unwrap_or(config.rate)).map_err(|e| e.to_string())?;
        if config.max_keys == 0 {
            return Err("max_keys must be at least 1".into());
        }
        if !(200..=599).contains(&config.status) {
            return Err(format!("status {} is not an HTTP status code", config.status));
        }
        let plugin = property_string(&["plugin_name"]).unwrap_or_else(|| "local-rate-limit".into());
        // A new configuration gets fresh buckets: the namespace includes its fingerprint.
        let table = SharedTable::new(
            format!("meshwork.local-rate-limit.{plugin}.{:016x}", fingerprint(bytes)),
            config.max_keys,
        );
        table.create().map_err(|s| format!("cannot create shared-data slots: {s:?}"))?;
        let outcomes = ["allowed", "limited", "undecided"].map(|outcome| {
            let name = tagged("meshwork_local_rate_limit_requests_total", &[("plugin", &plugin), ("outcome", outcome)]);
            hostcalls::define_metric(MetricType::Counter, &name).unwrap_or(0)
        });
        self.limiter = Some(Rc::new(Limiter { config, limit, table, outcomes }));
        Ok(())
    }
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        configured("local-rate-limit", self.configure(&bytes))
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimit { limiter: self.limiter.clone()?, allowed: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RateLimit {
    limiter: Rc<Limiter>,
    /// Headers to add to the upstream response when `headers_on_success` is set.
    allowed: Option<Vec<(&'static str, String)>>,
}

impl RateLimit {
    fn key(&self) -> String {
        match &self.limiter.config.key {
            KeyConfig::Route => String::from_utf8(route_name().unwrap_or_default()).unwrap_or_default(),
            KeyConfig::Header(name) => self.get_http_request_header(name).unwrap_or_else(|| "-".into()),
        }
    }

    /// Counts an outcome: 0 allowed, 1 limited, 2 undecided.
    fn count(&self, outcome: usize) {
        let _ = hostcalls::increment_metric(self.limiter.outcomes[outcome], 1);
    }
}

fn headers(limit: &Limit, remaining: u64, reset_ns: u64) -> Vec<(&'static str, String)> {
    vec![
        ("x-ratelimit-limit", limit.burst.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset", reset_ns.div_ceil(1_000_000_000).to_string()),
    ]
}

impl Context for RateLimit {}

impl HttpContext for RateLimit {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let limiter = Rc::clone(&self.limiter);
        let key = self.key();
        let now = now_ns();
        let outcome =
            limiter.table.update(key.as_bytes(), &limiter.limit, now, |s: &mut State| s.take(&limiter.limit, now, 1));
        let decision = match outcome {
            Outcome::Done(d) => d,
            other => {
                // The limiter cannot decide (table full, never created, extreme contention):
                // let the request through and say so, rather than refuse traffic blindly.
                log(LogLevel::Warn, &format!("local-rate-limit: {other:?} for key {key:?}; allowing"));
                self.count(2);
                return Action::Continue;
            }
        };
        if decision.allowed {
            self.count(0);
            if limiter.config.headers_on_success {
                self.allowed = Some(headers(&limiter.limit, decision.remaining, decision.reset_ns));
            }
            return Action::Continue;
        }
        self.count(1);
        let mut reply = headers(&limiter.limit, 0, decision.reset_ns);
        reply.push(("retry-after", decision.retry_after_ns.div_ceil(1_000_000_000).max(1).to_string()));
        reply.push(("content-type", "text/plain".into()));
        let reply: Vec<(&str, &str)> = reply.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_http_response(limiter.config.status, reply, Some(b"rate limited\n"));
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(headers) = self.allowed.take() {
            for (name, value) in headers {
                self.set_http_response_header(name, Some(&value));
            }
        }
        Action::Continue
    }
}
