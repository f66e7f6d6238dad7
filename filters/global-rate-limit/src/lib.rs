//! `global-rate-limit`: Envoy's global rate limiting as a proxy-wasm filter.
//!
//! For each request the filter builds descriptors from request attributes with Envoy's route
//! `rate_limits` actions, asks a rate-limit service — Envoy's RLS API over gRPC
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, as Envoy's own rate-limit
//! filter calls it) or in JSON (`POST /json`, as envoyproxy/ratelimit and `meshwork
//! ratelimit-service` also serve it) — and holds the request until the answer: OK resumes it, OVER_LIMIT answers 429 with
//! `x-envoy-ratelimited: true` and the draft RateLimit headers. When the service cannot
//! decide (down, too slow, a non-RLS answer) `failure_mode_deny` chooses: let the request
//! through (the default, as Envoy's) or refuse it with `status_on_error`.
//!
//! The descriptor actions and the reading of answers are in `meshwork_rate_limit_descriptors`.

use std::rc::Rc;
use std::time::Duration;

use meshwork_filter_support::callout::CalloutResponse;
use meshwork_filter_support::{ConfigDuration, cluster_name, configured, property_string, tagged};
use meshwork_rate_limit_descriptors::actions::{RateLimitRule, RequestAttributes, descriptors};
use meshwork_rate_limit_descriptors::wire::{Verdict, WireResponse};
use meshwork_rate_limit_descriptors::{check, proto};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(GlobalRateLimitRoot::default()) });
}}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The rate-limit domain every request of this filter is checked in.
    domain: String,
    rate_limit_service: ServiceConfig,
    /// How long to wait for the service's answer.
    #[serde(default = "default_timeout")]
    timeout: ConfigDuration,
    /// Refuse requests the service could not decide (false: let them through).
    #[serde(default)]
    failure_mode_deny: bool,
    /// Envoy's route `rate_limits`: each entry builds one descriptor from its actions.
    rate_limits: Vec<RateLimitRule>,
    #[serde(default = "too_many_requests")]
    rate_limited_status: u32,
    /// The status of refused requests when `failure_mode_deny` applies.
    #[serde(default = "internal_server_error")]
    status_on_error: u32,
    #[serde(default)]
    enable_x_ratelimit_headers: RateLimitHeaders,
    #[serde(default)]
    disable_x_envoy_ratelimited_header: bool,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ServiceConfig {
    /// The cluster the service is reached through (as the proxy names it).
    cluster: String,
    /// `:authority` of the callout; the cluster's name when absent.
    authority: Option<String>,
    #[serde(default = "json_path")]
    path: String,
    /// `grpc`: the API's gRPC form (the cluster must speak HTTP/2); `json`: `POST path`.
    #[serde(default)]
    protocol: Protocol,
}

#[derive(Deserialize, Debug, Default, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Protocol {
    #[default]
    Json,
    Grpc,
}

/// Envoy's `enable_x_ratelimit_headers`.
#[derive(Deserialize, Debug, Default, PartialEq, Eq)]
enum RateLimitHeaders {
    #[default]
    #[serde(rename = "DRAFT_VERSION_03")]
    DraftVersion03,
    #[serde(rename = "OFF")]
    Off,
}

fn default_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(100))
}
fn too_many_requests() -> u32 {
    429
}
fn internal_server_error() -> u32 {
    500
}
fn json_path() -> String {
    "/json".into()
}

/// Outcomes counted in `meshwork_global_rate_limit_requests_total{plugin, outcome}`.
#[derive(Clone, Copy)]
enum Outcome {
    Allowed = 0,
    Limited = 1,
    /// The service could not decide; the failure mode then let the request through or not.
    Failed = 2,
}

struct Filter {
    config: Config,
    authority: String,
    outcomes: [u32; 3],
}

impl Filter {
    fn count(&self, outcome: Outcome) {
        let _ = hostcalls::increment_metric(self.outcomes[outcome as usize], 1);
    }
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

#[derive(Default)]
struct GlobalRateLimitRoot {
    filter: Option<Rc<Filter>>,
}

impl GlobalRateLimitRoot {
    fn configure(&mut self, bytes: &[u8]) -> Result<(), String> {
        let config: Config = meshwork_filter_support::config::parse(bytes)?;
        if config.domain.is_empty() {
            return Err("domain: must not be empty".into());
        }
        if config.rate_limit_service.cluster.is_empty() {
            return Err("rate_limit_service.cluster: must not be empty".into());
        }
        if !config.rate_limit_service.path.starts_with('/') {
            return Err(format!("rate_limit_service.path: {:?} must start with /", config.rate_limit_service.path));
        }
        if config.rate_limits.is_empty() {
            return Err("rate_limits: must not be empty (nothing would be checked)".into());
        }
        for (i, rule) in config.rate_limits.iter().enumerate() {
            rule.validate(&format!("rate_limits[{i}]"))?;
        }
        let timeout = config.timeout.0;
        if timeout.is_zero() || timeout.as_millis() >= 1 << 31 {
            return Err(format!("timeout: {timeout:?} must be at least 1ms and under 2^31 ms"));
        }
        for (field, status) in
            [("rate_limited_status", config.rate_limited_status), ("status_on_error", config.status_on_error)]
        {
            if !(200..=599).contains(&status) {
                return Err(format!("{field}: {status} is not an HTTP status code"));
            }
        }
        let plugin = property_string(&["plugin_name"]).unwrap_or_else(|| "global-rate-limit".into());
        let outcomes = ["allowed", "limited", "failed"].map(|outcome| {
            let name =
                tagged("meshwork_global_rate_limit_requests_total", &[("plugin", &plugin), ("outcome", outcome)]);
            hostcalls::define_metric(MetricType::Counter, &name).unwrap_or(0)
        });
        let authority =
            config.rate_limit_service.authority.clone().unwrap_or_else(|| config.rate_limit_service.cluster.clone());
        self.filter = Some(Rc::new(Filter { config, authority, outcomes }));
        Ok(())
    }
}

impl Context for GlobalRateLimitRoot {}

impl RootContext for GlobalRateLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        configured("global-rate-limit", self.configure(&bytes))
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(GlobalRateLimit { filter: self.filter.clone()?, response_headers: Vec::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The request as the descriptor actions see it, read through hostcalls.
struct StreamAttributes;

impl RequestAttributes for StreamAttributes {
    fn header(&self, name: &str) -> Option<String> {
        let value = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()?;
        Some(String::from_utf8_lossy(&value).into_owned())
    }

    fn remote_address(&self) -> Option<String> {
        property_string(&["source", "address"]).filter(|a| !a.is_empty())
    }

    fn destination_cluster(&self) -> Option<String> {
        cluster_name().map(|c| String::from_utf8_lossy(&c).into_owned())
    }

    fn source_cluster(&self) -> Option<String> {
        property_string(&["node", "cluster"])
            .or_else(|| property_string(&["xds", "node", "cluster"]))
            .filter(|c| !c.is_empty())
    }
}

struct GlobalRateLimit {
    filter: Rc<Filter>,
    /// Draft RateLimit headers for the upstream's response of an allowed request.
    response_headers: Vec<(&'static str, String)>,
}

impl GlobalRateLimit {
    /// The service could not decide: count it, then let the request through or refuse it.
    /// Returns what the request-headers callback should answer.
    fn undecided(&self, why: &str) -> Action {
        let filter = &self.filter;
        filter.count(Outcome::Failed);
        let mode = if filter.config.failure_mode_deny { "refusing" } else { "allowing" };
        log(LogLevel::Warn, &format!("global-rate-limit: {why}; {mode} the request"));
        if filter.config.failure_mode_deny {
            self.send_http_response(
                filter.config.status_on_error,
                vec![("content-type", "text/plain")],
                Some(b"rate limit service unavailable\n"),
            );
            return Action::Pause;
        }
        Action::Continue
    }

    fn limited(&self, answer: &WireResponse) {
        let config = &self.filter.config;
        self.filter.count(Outcome::Limited);
        let mut headers: Vec<(&str, String)> = vec![("content-type", "text/plain".into())];
        if !config.disable_x_envoy_ratelimited_header {
            headers.push(("x-envoy-ratelimited", "true".into()));
        }
        if config.enable_x_ratelimit_headers == RateLimitHeaders::DraftVersion03 {
            headers.extend(answer.ratelimit_headers());
        }
        let headers = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_http_response(config.rate_limited_status, headers, Some(b"rate limited\n"));
    }
}

/// The service's answer, or why there is none. envoyproxy/ratelimit answers OVER_LIMIT with
/// HTTP 429 and a body, so both 200 and 429 carry an answer.
fn read_answer(response: &CalloutResponse) -> Result<WireResponse, String> {
    match response.status {
        0 => return Err("the rate limit service closed the connection without answering".into()),
        200 | 429 => {}
        status => {
            let body = String::from_utf8_lossy(&response.body[..response.body.len().min(200)]).into_owned();
            return Err(format!("the rate limit service answered {status}: {:?}", body.trim_end()));
        }
    }
    let answer: WireResponse = serde_json::from_slice(&response.body)
        .map_err(|e| format!("the rate limit service's answer is not a RateLimitResponse: {e}"))?;
    match answer.verdict() {
        Some(_) => Ok(answer),
        None => Err("the rate limit service answered with overall code UNKNOWN (none given)".into()),
    }
}

impl Context for GlobalRateLimit {
    fn on_http_call_response(&mut self, _token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let response = CalloutResponse::read(num_headers, body_size);
        self.answered(read_answer(&response));
    }

    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        let answer = if status_code == 0 {
            let body = self.get_grpc_call_response_body(0, response_size).unwrap_or_default();
            proto::decode_response(&body)
                .map_err(|e| format!("the rate limit service's answer is not a RateLimitResponse: {e}"))
                .and_then(|a| match a.verdict() {
                    Some(_) => Ok(a),
                    None => Err("the rate limit service answered with overall code UNKNOWN (none given)".into()),
                })
        } else {
            let (_, message) = self.get_grpc_status();
            Err(format!("the rate limit service answered gRPC status {status_code} ({})", message.unwrap_or_default()))
        };
        self.answered(answer);
    }
}

impl GlobalRateLimit {
    /// Acts on the service's answer, or on why there is none.
    fn answered(&mut self, answer: Result<WireResponse, String>) {
        let answer = match answer {
            Ok(a) => a,
            Err(why) => {
                if self.undecided(&why) == Action::Continue {
                    self.resume_http_request();
                }
                return;
            }
        };
        match answer.verdict() {
            Some(Verdict::Limit) => self.limited(&answer),
            _ => {
                self.filter.count(Outcome::Allowed);
                if self.filter.config.enable_x_ratelimit_headers == RateLimitHeaders::DraftVersion03 {
                    self.response_headers = answer.ratelimit_headers();
                }
                self.resume_http_request();
            }
        }
    }
}

impl HttpContext for GlobalRateLimit {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = &self.filter.config;
        let descriptors = descriptors(&config.rate_limits, &StreamAttributes);
        if descriptors.is_empty() {
            // No rule applies (Envoy does not call the service either).
            return Action::Continue;
        }
        let request = check::Request { domain: config.domain.clone(), descriptors, hits_addend: 1 };
        let service = &config.rate_limit_service;
        if service.protocol == Protocol::Grpc {
            let message = proto::encode_request(&request);
            let sent = self.dispatch_grpc_call(
                &service.cluster,
                proto::SERVICE,
                proto::METHOD,
                vec![],
                Some(&message),
                config.timeout.0,
            );
            return match sent {
                Ok(_) => Action::Pause,
                Err(status) => self.undecided(&format!("cannot call cluster {:?} ({status:?})", service.cluster)),
            };
        }
        let body = match serde_json::to_vec(&request) {
            Ok(b) => b,
            Err(e) => return self.undecided(&format!("cannot write the request: {e}")),
        };
        let headers = vec![
            (":method", "POST"),
            (":path", service.path.as_str()),
            (":authority", self.filter.authority.as_str()),
            ("content-type", "application/json"),
        ];
        match self.dispatch_http_call(&service.cluster, headers, Some(&body), vec![], config.timeout.0) {
            // Held (with any body) until the answer arrives.
            Ok(_) => Action::Pause,
            Err(status) => self.undecided(&format!("cannot call cluster {:?} ({status:?})", service.cluster)),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(name, Some(&value));
        }
        Action::Continue
    }
}
