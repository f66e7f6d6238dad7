//! `measure`: in-path measurement as a proxy-wasm HTTP filter.
//!
//! Per route it counts requests by status class, records upstream latency and body sizes as
//! histogram metrics, and adds a `Server-Timing` header to every response. The decisions (route
//! label, status class, metric names, timing) live in `meshwork-measure-core`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use meshwork_filter_support::{MetricCache, now_ns, property_i64, route_name, tagged};
use meshwork_measure_core::{PrefixRoute, StatusClass, StreamTimes, route_for_path, write_server_timing};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(MeasureRoot::default()) });
}}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    name: String,
    prefix: String,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Route labels by path prefix (longest wins). Unmatched paths get the host's route name.
    routes: Vec<RouteConfig>,
    /// Take the route label from this request header instead, when present.
    route_header: Option<String>,
    /// Add a `Server-Timing` header to responses.
    server_timing: bool,
    /// Most distinct route labels; further labels are counted as `other`.
    max_routes: usize,
    /// Prefix of every metric name.
    metric_prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            routes: Vec::new(),
            route_header: None,
            server_timing: true,
            max_routes: 100,
            metric_prefix: "meshwork_measure".into(),
        }
    }
}

/// What every stream of this VM shares.
struct Shared {
    config: Config,
    metrics: MetricCache,
    labels: RefCell<HashSet<String>>,
}

impl Shared {
    /// Bounds label cardinality: once `max_routes` labels exist, new ones become `other`.
    fn bounded_label(&self, label: String) -> String {
        let mut labels = self.labels.borrow_mut();
        if labels.contains(&label) {
            return label;
        }
        if labels.len() >= self.config.max_routes {
            return "other".into();
        }
        labels.insert(label.clone());
        label
    }

    fn metric(&self, name: &str, tags: &[(&str, &str)]) -> String {
        tagged(&format!("{}_{name}", self.config.metric_prefix), tags)
    }
}

#[derive(Default)]
struct MeasureRoot {
    shared: Option<Rc<Shared>>,
}

impl Context for MeasureRoot {}

impl RootContext for MeasureRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = if bytes.iter().all(u8::is_ascii_whitespace) {
            Config::default()
        } else {
            match serde_json::from_slice::<Config>(&bytes) {
                Ok(c) => c,
                Err(e) => {
                    proxy_wasm::hostcalls::log(LogLevel::Error, &format!("measure: bad configuration: {e}")).ok();
                    return false;
                }
            }
        };
        self.shared = Some(Rc::new(Shared { config, metrics: MetricCache::default(), labels: RefCell::default() }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(Measure {
            shared,
            route: String::new(),
            times: StreamTimes::default(),
            status: None,
            request_bytes: 0,
            response_bytes: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Measure {
    shared: Rc<Shared>,
    route: String,
    times: StreamTimes,
    status: Option<u32>,
    request_bytes: u64,
    response_bytes: u64,
}

impl Measure {
    fn route_label(&self) -> String {
        let config = &self.shared.config;
        if let Some(header) = &config.route_header
            && let Some(value) = self.get_http_request_header(header)
        {
            return value;
        }
        let fallback = route_name().unwrap_or_else(|| "default".into());
        if config.routes.is_empty() {
            return fallback;
        }
        let routes: Vec<PrefixRoute<'_>> =
            config.routes.iter().map(|r| PrefixRoute { name: &r.name, prefix: &r.prefix }).collect();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        route_for_path(&routes, &path, &fallback).to_owned()
    }
}

impl Context for Measure {}

impl HttpContext for Measure {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let now = now_ns();
        self.times.request_start = Some(now);
        self.times.upstream_sent = Some(now);
        self.route = self.shared.bounded_label(self.route_label());
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.request_bytes += body_size as u64;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.times.response_start = Some(now_ns());
        self.status = self.get_http_response_header(":status").and_then(|s| s.parse().ok());
        if self.shared.config.server_timing {
            let mut value = String::new();
            if write_server_timing(&mut value, &self.times).is_ok() && !value.is_empty() {
                self.add_http_response_header("server-timing", &value);
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.response_bytes += body_size as u64;
        Action::Continue
    }

    fn on_log(&mut self) {
        let shared = &self.shared;
        let route = self.route.as_str();
        let status = self.status.or_else(|| property_i64(&["response", "code"]).map(|c| c as u32)).unwrap_or(0);
        let class = StatusClass::of(status).as_str();
        shared.metrics.increment(&shared.metric("requests_total", &[("route", route), ("class", class)]), 1);
        if let Some(ns) = self.times.upstream_latency_ns() {
            shared.metrics.record(&shared.metric("upstream_latency_us", &[("route", route)]), ns / 1_000);
        }
        shared.metrics.record(&shared.metric("request_body_bytes", &[("route", route)]), self.request_bytes);
        shared.metrics.record(&shared.metric("response_body_bytes", &[("route", route)]), self.response_bytes);
    }
}
