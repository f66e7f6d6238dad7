//! `timeout`: a deadline per route, answered with 504 when the upstream takes longer.
//!
//! - **callout** (any host): the filter holds the request, sends it with `proxy_http_call`
//!   under the deadline, and answers the client with the response, or with 504.
//! - **envoy**: the filter sets `x-envoy-upstream-rq-timeout-ms` and the router (Envoy's, or
//!   meshwork's, which honours it) enforces it, streaming as usual.
//!
//! Either way clients may be allowed to ask for a shorter (or, up to a cap, longer) deadline
//! with `grpc-timeout` or a milliseconds header, and the upstream is told what is left in
//! `x-envoy-expected-rq-timeout-ms`, as Envoy tells it.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use meshwork_deadline::{Deadline, Policy, parse_grpc_timeout, parse_millis};
use meshwork_filter_support::callout::{Bodies, CalloutResponse, HeldRequest, Mode};
use meshwork_filter_support::{ConfigDuration, cluster_name, configured, now_ns, property_string, route_name, tagged};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TimeoutRoot::default()) });
}}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    mode: Mode,
    /// The deadline of requests on routes not listed in `routes`.
    timeout: ConfigDuration,
    /// Deadlines by route name (`xds.route_name`).
    #[serde(default)]
    routes: HashMap<String, ConfigDuration>,
    /// Clients may set their deadline with this header (whole milliseconds)...
    client_header: Option<String>,
    /// ...or with gRPC's `grpc-timeout`...
    #[serde(default)]
    grpc_timeout: bool,
    /// ...up to this. Without it clients cannot change the deadline.
    max_client_timeout: Option<ConfigDuration>,
    /// Callout mode: where requests go (default: the route's cluster).
    cluster: Option<String>,
    /// Callout mode: requests with a body are held (needs `allow_on_headers_stop_iteration`
    /// in the host) or passed on with envoy-mode headers.
    #[serde(default)]
    request_bodies: Bodies,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

struct Shared {
    config: Config,
    /// Counters: requests, timed_out.
    metrics: [u32; 2],
    plugin: String,
}

impl Shared {
    fn route_policy(&self) -> Policy {
        let route = route_name().and_then(|r| String::from_utf8(r).ok()).unwrap_or_default();
        let route_timeout = self.config.routes.get(&route).unwrap_or(&self.config.timeout);
        Policy {
            route_ns: Some(nanos(route_timeout.0)),
            max_client_ns: self.config.max_client_timeout.map(|t| nanos(t.0)),
        }
    }
}

#[derive(Default)]
struct TimeoutRoot {
    shared: Option<Rc<Shared>>,
}

impl TimeoutRoot {
    fn configure(&mut self, bytes: &[u8]) -> Result<(), String> {
        let config: Config = meshwork_filter_support::config::parse(bytes)?;
        for (route, t) in std::iter::once((&"timeout".to_string(), &config.timeout)).chain(&config.routes) {
            if t.0 < Duration::from_millis(1) {
                return Err(format!("{route}: a timeout must be at least 1ms"));
            }
        }
        if let Some(h) = &config.client_header
            && (h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase() || b == b' ' || b == b':'))
        {
            return Err(format!("client_header {h:?} must be a lower-case header name"));
        }
        if (config.client_header.is_some() || config.grpc_timeout) && config.max_client_timeout.is_none() {
            return Err("client_header and grpc_timeout need max_client_timeout (the most a client may ask for)".into());
        }
        let plugin = property_string(&["plugin_name"]).unwrap_or_else(|| "timeout".into());
        let metrics = ["meshwork_timeout_requests_total", "meshwork_timeout_exceeded_total"]
            .map(|n| hostcalls::define_metric(MetricType::Counter, &tagged(n, &[("plugin", &plugin)])).unwrap_or(0));
        self.shared = Some(Rc::new(Shared { config, metrics, plugin }));
        Ok(())
    }
}

impl Context for TimeoutRoot {}

impl RootContext for TimeoutRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        configured("timeout", self.configure(&bytes))
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Timed { shared: self.shared.clone()?, deadline: None, held: None, answered: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Timed {
    shared: Rc<Shared>,
    deadline: Option<Deadline>,
    /// Callout mode: the request being gathered.
    held: Option<HeldRequest>,
    /// Callout mode: this filter answered; its own reply passes its response callback too.
    answered: bool,
}

impl Timed {
    /// What the client asked for, if it may ask.
    fn client_timeout(&self) -> Option<u64> {
        let c = &self.shared.config;
        let from_header =
            c.client_header.as_ref().and_then(|h| self.get_http_request_header_bytes(h)).and_then(|v| parse_millis(&v));
        let from_grpc = c
            .grpc_timeout
            .then(|| self.get_http_request_header_bytes("grpc-timeout"))
            .flatten()
            .and_then(|v| parse_grpc_timeout(&v));
        match (from_header, from_grpc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Envoy mode (or a passed-on body in callout mode): the router enforces the deadline.
    fn set_router_headers(&self, timeout_ns: u64) {
        let ms = timeout_ns.div_ceil(1_000_000).to_string();
        self.set_http_request_header("x-envoy-upstream-rq-timeout-ms", Some(&ms));
        self.set_http_request_header("x-envoy-expected-rq-timeout-ms", Some(&ms));
    }

    fn send(&mut self) -> Action {
        let (Some(mut request), Some(deadline)) = (self.held.take(), self.deadline) else { return Action::Continue };
        let s = &self.shared;
        let Some(cluster) = s.config.cluster.clone().or_else(|| cluster_name().and_then(|c| String::from_utf8(c).ok()))
        else {
            let _ = hostcalls::log(LogLevel::Error, &format!("{}: no cluster to send to; set `cluster`", s.plugin));
            self.send_http_response(500, vec![], Some(b"timeout: no upstream cluster\n"));
            return Action::Pause;
        };
        let now = now_ns();
        let left = deadline.remaining_ns(now);
        request.set_header("x-envoy-expected-rq-timeout-ms", left.div_ceil(1_000_000).to_string());
        if let Err(status) = request.dispatch(&cluster, Duration::from_nanos(left)) {
            let _ =
                hostcalls::log(LogLevel::Error, &format!("{}: cannot call cluster {cluster:?}: {status:?}", s.plugin));
            self.send_http_response(500, vec![], Some(b"timeout: the upstream cluster cannot be called\n"));
        }
        Action::Pause
    }
}

impl Context for Timed {
    fn on_http_call_response(&mut self, _token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let response = CalloutResponse::read(num_headers, body_size);
        self.answered = true;
        let ran_out = self.deadline.is_some_and(|d| d.ran_out(now_ns()));
        if ran_out && matches!(response.status, 0 | 504) {
            let _ = hostcalls::increment_metric(self.shared.metrics[1], 1);
            self.send_http_response(
                504,
                vec![("x-meshwork-timeout", "exceeded"), ("content-type", "text/plain")],
                Some(b"upstream request timeout"),
            );
        } else if response.status == 0 {
            self.send_http_response(
                503,
                vec![("content-type", "text/plain")],
                Some(b"upstream connect error or disconnect/reset before headers"),
            );
        } else {
            response.relay(&[]);
        }
    }
}

impl HttpContext for Timed {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let s = Rc::clone(&self.shared);
        let _ = hostcalls::increment_metric(s.metrics[0], 1);
        let Some(timeout) = s.route_policy().timeout(self.client_timeout()) else { return Action::Continue };
        self.deadline = Some(Deadline::new(now_ns(), timeout));
        if s.config.mode == Mode::Envoy || (!end_of_stream && s.config.request_bodies == Bodies::Pass) {
            self.set_router_headers(timeout);
            return Action::Continue;
        }
        self.held = Some(HeldRequest::capture_headers());
        if end_of_stream { self.send() } else { Action::Pause }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(held) = &mut self.held else { return Action::Continue };
        if held.body_arrived(body_size, end_of_stream) { self.send() } else { Action::Pause }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(held) = &mut self.held else { return Action::Continue };
        held.trailers_arrived();
        self.send()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Envoy mode: the router's own 504 says so in its details; mark it for clients as
        // callout mode does.
        if !self.answered
            && self.get_http_response_header(":status").as_deref() == Some("504")
            && self.deadline.is_some_and(|d| d.ran_out(now_ns()))
        {
            let _ = hostcalls::increment_metric(self.shared.metrics[1], 1);
            self.set_http_response_header("x-meshwork-timeout", Some("exceeded"));
        }
        Action::Continue
    }
}
