//! The proxy's own metrics, with every handle resolved once (per worker, per cluster) so that
//! counting costs an atomic add, never a lookup by name.
//!
//! Names carry their tags in the registry's `name;.;tag=.=value` form (rendered as Prometheus
//! labels on the admin listener).

use std::sync::Arc;
use std::time::Duration;

use meshwork_wasm_host::Services;
use meshwork_wasm_host::metrics::Metric;

use super::listener::CloseReason;
use crate::config::ProxyConfig;

/// Counters of one worker (tagged by worker where they describe its connections).
pub struct WorkerStats {
    requests: [Arc<Metric>; 6],
    pub connections: Arc<Metric>,
    pub unavailable: Arc<Metric>,
    /// `x-envoy-*` headers removed from clients outside the trust boundary.
    pub untrusted_headers: Arc<Metric>,
    /// Times the accept loop paused at a connection cap.
    pub accept_paused: Arc<Metric>,
    accept_errors: [Arc<Metric>; 2],
    closes: [Arc<Metric>; 5],
    /// Streams ended by the stream idle timeout.
    pub stream_idle_timeouts: Arc<Metric>,
    /// Requests whose body was malformed or cut short by the client.
    pub bad_request_bodies: Arc<Metric>,
    /// Connections closed for a missing or malformed PROXY protocol header.
    pub proxy_protocol_errors: Arc<Metric>,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_errors: Arc<Metric>,
    /// TCP proxy connections, and those whose upstream could not be reached.
    pub tcp_connections: Arc<Metric>,
    pub tcp_upstream_failures: Arc<Metric>,
}

impl WorkerStats {
    pub fn new(services: &Services, worker: usize) -> WorkerStats {
        let m = &services.metrics;
        WorkerStats {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx", "other"]
                .map(|class| m.counter(&format!("meshwork_downstream_rq_total;.;class=.={class}"))),
            connections: m.counter(&format!("meshwork_downstream_cx_total;.;worker=.={worker}")),
            unavailable: m.counter("meshwork_filter_unavailable_rq_total"),
            untrusted_headers: m.counter("meshwork_downstream_rq_untrusted_headers_removed_total"),
            accept_paused: m.counter("meshwork_downstream_cx_overflow_total"),
            accept_errors: ["resources", "other"]
                .map(|kind| m.counter(&format!("meshwork_downstream_cx_accept_errors_total;.;kind=.={kind}"))),
            closes: CloseReason::ALL
                .map(|r| m.counter(&format!("meshwork_downstream_cx_closed_total;.;reason=.={}", r.label()))),
            stream_idle_timeouts: m.counter("meshwork_downstream_rq_idle_timeout_total"),
            bad_request_bodies: m.counter("meshwork_downstream_rq_bad_body_total"),
            proxy_protocol_errors: m.counter("meshwork_downstream_cx_proxy_protocol_errors_total"),
            tls_handshake_errors: m.counter("meshwork_downstream_cx_tls_handshake_errors_total"),
            tcp_connections: m.counter("meshwork_tcp_cx_total"),
            tcp_upstream_failures: m.counter("meshwork_tcp_upstream_cx_failures_total"),
        }
    }

    pub fn downstream_response(&self, code: Option<u32>) {
        let class = match code {
            Some(c @ 100..=599) => (c / 100 - 1) as usize,
            _ => 5,
        };
        self.requests[class].increment(1).ok();
    }

    pub fn connection_closed(&self, reason: CloseReason) {
        let i = CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.closes[i].increment(1).ok();
    }

    pub fn accept_error(&self, resources: bool) {
        self.accept_errors[usize::from(!resources)].increment(1).ok();
    }
}

/// Counters of one upstream cluster (shared by every worker: same names).
pub struct ClusterMetrics {
    /// Registered by the first request timed: a histogram holds 15 KiB of buckets, which a
    /// proxy with thousands of clusters (federated services) should spend only on those used.
    time_us: std::cell::OnceCell<Arc<Metric>>,
    time_us_name: String,
    services: Arc<Services>,
    pub failures: Arc<Metric>,
    pub timeouts: Arc<Metric>,
    pub retries: Arc<Metric>,
    /// Retries not made because the cluster's `max_retries` or retry budget was reached.
    pub retry_overflow: Arc<Metric>,
}

impl ClusterMetrics {
    pub fn new(services: &Arc<Services>, cluster: &str) -> ClusterMetrics {
        let m = &services.metrics;
        let name = |base: &str| format!("{base};.;cluster=.={cluster}");
        ClusterMetrics {
            time_us: std::cell::OnceCell::new(),
            time_us_name: name("meshwork_upstream_rq_time_us"),
            services: services.clone(),
            failures: m.counter(&name("meshwork_upstream_rq_failures_total")),
            timeouts: m.counter(&name("meshwork_upstream_rq_timeouts_total")),
            retries: m.counter(&name("meshwork_upstream_rq_retries_total")),
            retry_overflow: m.counter(&name("meshwork_upstream_rq_retry_overflow_total")),
        }
    }

    pub fn time(&self, elapsed: Duration) {
        let histogram = self.time_us.get_or_init(|| self.services.metrics.histogram(&self.time_us_name));
        histogram.record(elapsed.as_micros() as u64);
    }

    pub fn retried(&self, retries: u32) {
        if retries > 0 {
            self.retries.increment(i64::from(retries)).ok();
        }
    }
}

/// Publishes the limits in force as gauges, so an operator can see them next to the counters
/// of what hit them: `meshwork_limit{limit="…", listener="…"}`.
pub fn publish_limits(services: &Services, config: &ProxyConfig) {
    let secs = |d: Option<Duration>| d.map_or(0, |d| d.as_secs_f64().ceil() as i64);
    for listener in &config.listeners {
        let l = &listener.settings;
        let filter_buffer = listener.http().and_then(|h| h.filter_buffer_limit).unwrap_or(l.buffer_limit);
        let values: [(&str, i64); 9] = [
            ("buffer_bytes", l.buffer_limit as i64),
            ("filter_buffer_bytes", filter_buffer as i64),
            ("request_headers_timeout_seconds", secs(l.request_headers_timeout)),
            ("idle_timeout_seconds", secs(l.idle_timeout)),
            ("stream_idle_timeout_seconds", secs(l.stream_idle_timeout)),
            ("max_requests_per_connection", l.max_requests_per_connection.map_or(0, |n| n as i64)),
            ("max_connection_duration_seconds", secs(l.max_connection_duration)),
            ("drain_timeout_seconds", secs(Some(l.drain_timeout))),
            ("max_connections_listener", l.max_connections.map_or(0, |n| n as i64)),
        ];
        for (name, value) in values {
            services
                .metrics
                .gauge(&format!("meshwork_limit;.;limit=.={name};.;listener=.={}", listener.name))
                .record(value.max(0) as u64);
        }
    }
    let max = config.max_connections.unwrap_or_else(crate::config::default_max_connections);
    services.metrics.gauge("meshwork_limit;.;limit=.=max_connections").record(max as u64);
    for c in &config.clusters {
        let gauge =
            |what: &str| services.metrics.gauge(&format!("meshwork_limit;.;limit=.={what};.;cluster=.={}", c.name));
        gauge("max_retries").record(u64::from(c.max_retries));
        if let Some(b) = c.retry_budget {
            gauge("retry_budget_percent").record(b.percent.round() as u64);
            gauge("retry_budget_min_concurrency").record(u64::from(b.min_concurrency));
        }
    }
}
