//! `measure`: in-path measurement as a proxy-wasm HTTP filter.
//!
//! Per route it counts requests by status class, records upstream latency and body sizes as
//! histogram metrics, and adds a `Server-Timing` header to every response. The decisions (route
//! label, status class, metric names, timing) live in `meshwork-measure-core`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use meshwork_filter_support::{config, configured, now_ns, property, property_i64, route_name, tagged};
use meshwork_measure_core::{PrefixRoute, StatusClass, StreamTimes, route_for_path, write_server_timing};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
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
    /// Metric ids per route label, defined once, so a request formats no metric names.
    routes: RefCell<HashMap<String, Rc<RouteMetrics>>>,
    /// The route of the previous request: most requests repeat it, and a string compare is
    /// cheaper than hashing.
    last: RefCell<Option<Rc<RouteMetrics>>>,
}

/// The metrics of one route label.
struct RouteMetrics {
    name: String,
    /// Per status class, defined on first use (0: not yet; metric ids are never 0).
    requests: [Cell<u32>; 6],
    upstream_latency_us: u32,
    request_body_bytes: u32,
    response_body_bytes: u32,
}

impl Shared {
    fn metric_name(&self, name: &str, tags: &[(&str, &str)]) -> String {
        tagged(&format!("{}_{name}", self.config.metric_prefix), tags)
    }

    fn define(&self, kind: MetricType, name: &str, tags: &[(&str, &str)]) -> u32 {
        hostcalls::define_metric(kind, &self.metric_name(name, tags)).unwrap_or(0)
    }

    /// The metrics of `label`. Cardinality is bounded: once `max_routes` labels exist, new ones
    /// are counted as `other`.
    fn route(&self, label: String) -> Rc<RouteMetrics> {
        if let Some(last) = self.last.borrow().as_ref()
            && last.name == label
        {
            return last.clone();
        }
        let found = self.routes.borrow().get(&label).cloned();
        let route = found.unwrap_or_else(|| self.new_route(label));
        *self.last.borrow_mut() = Some(route.clone());
        route
    }

    fn new_route(&self, label: String) -> Rc<RouteMetrics> {
        let label = if self.routes.borrow().len() >= self.config.max_routes { "other".to_owned() } else { label };
        if let Some(r) = self.routes.borrow().get(&label) {
            return r.clone();
        }
        let tags = [("route", label.as_str())];
        let metrics = Rc::new(RouteMetrics {
            requests: Default::default(),
            upstream_latency_us: self.define(MetricType::Histogram, "upstream_latency_us", &tags),
            request_body_bytes: self.define(MetricType::Histogram, "request_body_bytes", &tags),
            response_body_bytes: self.define(MetricType::Histogram, "response_body_bytes", &tags),
            name: label.clone(),
        });
        self.routes.borrow_mut().insert(label, metrics.clone());
        metrics
    }

    fn count(&self, route: &RouteMetrics, class: StatusClass) {
        let cell = &route.requests[class as usize];
        if cell.get() == 0 {
            let tags = [("route", route.name.as_str()), ("class", class.as_str())];
            cell.set(self.define(MetricType::Counter, "requests_total", &tags));
        }
        let _ = hostcalls::increment_metric(cell.get(), 1);
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
        let config: Config = match config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => return configured("measure", Err(e)),
        };
        self.shared = Some(Rc::new(Shared { config, routes: RefCell::default(), last: RefCell::default() }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(Measure {
            shared,
            route: None,
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
    route: Option<Rc<RouteMetrics>>,
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
        let fallback = route_name().and_then(|r| String::from_utf8(r).ok()).unwrap_or_else(|| "default".into());
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
        self.route = Some(self.shared.route(self.route_label()));
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
        // A stream that never reached this filter (an earlier filter answered) is still
        // counted: request headers are readable in on_log.
        let route = match self.route.take() {
            Some(r) => r,
            None => self.shared.route(self.route_label()),
        };
        let status = self.status.or_else(|| property_i64(b"response\0code").map(|c| c as u32)).unwrap_or(0);
        self.shared.count(&route, StatusClass::of(status));
        // Only responses that came from the upstream have an upstream latency; local replies (a
        // rate limiter's 429, say) are counted above but not timed.
        if let Some(ns) = self.times.upstream_latency_ns()
            && property(b"response\0code_details").as_deref() == Some(b"via_upstream")
        {
            let _ = hostcalls::record_metric(route.upstream_latency_us, ns / 1_000);
        }
        let _ = hostcalls::record_metric(route.request_body_bytes, self.request_bytes);
        let _ = hostcalls::record_metric(route.response_body_bytes, self.response_bytes);
    }
}
