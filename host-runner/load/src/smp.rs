//! SMP result documents (service-mesh-performance's PerformanceTestResult, with its test
//! config, mesh config and environment inline) extended with what SMP lacks: tail percentiles,
//! the serialised histogram, the proxy's CPU and memory, and a MeshMark score.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::histogram::{self, Latency, ms};
use crate::procfs::Environment;
use crate::report::rfc3339;
use crate::run::RunResult;

pub const SMP_VERSION: &str = "v0.0.1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latencies {
    pub min: f64,
    pub average: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    /// Extensions.
    pub p99_9: f64,
    pub p99_99: f64,
}

impl Latencies {
    pub fn of(h: &Latency) -> Latencies {
        let empty = h.is_empty();
        Latencies {
            min: if empty { 0.0 } else { ms(h.min()) },
            average: if empty { 0.0 } else { h.mean() / 1000.0 },
            p50: ms(histogram::at(h, 50.0)),
            p90: ms(histogram::at(h, 90.0)),
            p99: ms(histogram::at(h, 99.0)),
            max: ms(h.max()),
            p99_9: ms(histogram::at(h, 99.9)),
            p99_99: ms(histogram::at(h, 99.99)),
        }
    }
}

/// SMP's PerformanceTestConfig.Client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientConfig {
    pub internal: bool,
    pub load_generator: String,
    pub protocol: String,
    pub connections: usize,
    /// 0: closed loop.
    pub rps: f64,
    pub headers: BTreeMap<String, String>,
    pub cookies: BTreeMap<String, String>,
    pub body: String,
    pub content_type: String,
    pub endpoint_urls: Vec<String>,
}

/// SMP's PerformanceTestConfig.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TestConfig {
    pub smp_version: String,
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub clients: Vec<ClientConfig>,
    pub duration: String,
}

/// The hop under test (SMP's ServiceMeshConfig, reduced to what one proxy hop has).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshConfig {
    pub id: String,
    /// `none` (direct), `meshwork`, or the other proxy's name.
    pub mesh_type: String,
    pub proxy_build: String,
    pub proxy_concurrency: usize,
    /// The proxy's configuration: meshwork's filter chain, or the other proxy's URL.
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistogramDoc {
    pub encoding: String,
    pub unit: String,
    pub data: String,
}

/// Measured from /proc around the measured run (warm-up excluded).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    pub proxy_pids: Vec<u32>,
    pub proxy_cpu_us_per_request: Option<f64>,
    /// CPU-seconds per second (1.0 = one core busy).
    pub proxy_cpu_cores: Option<f64>,
    pub proxy_rss_mb: Option<f64>,
    pub proxy_peak_rss_mb: Option<f64>,
    pub upstream_pids: Vec<u32>,
    pub upstream_cpu_us_per_request: Option<f64>,
    pub upstream_cpu_cores: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshMark {
    /// 0–100.
    pub score: f64,
    /// Each class's MUE (0–1).
    pub classes: BTreeMap<String, f64>,
    /// `requests_per_cpu` when upstream and proxy CPU were both measured, else
    /// `proxy_utilization` (SMP's MUE₁ = 1 − CPU utilisation).
    pub efficiency_basis: String,
    pub baseline: String,
    pub formula: String,
}

/// One scenario's SMP result document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SmpResult {
    pub smp_version: String,
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub start_time: String,
    pub end_time: String,
    pub latencies_ms: Latencies,
    pub actual_qps: f64,
    pub details_uri: String,
    pub test_id: String,
    pub mesh_config_id: String,
    pub env_id: String,
    pub config: TestConfig,
    pub mesh_config: MeshConfig,
    pub env: Environment,
    // Extensions beyond SMP.
    pub requested_qps: f64,
    pub requests: u64,
    pub errors: BTreeMap<String, u64>,
    pub status_codes: BTreeMap<String, u64>,
    pub error_rate: f64,
    pub histogram: HistogramDoc,
    pub resources: Resources,
    pub meshmark: Option<MeshMark>,
}

pub struct Scenario<'a> {
    pub name: &'a str,
    pub result: &'a RunResult,
    pub mesh: MeshConfig,
    pub resources: Resources,
}

pub fn document(test: &TestConfig, env: &Environment, s: &Scenario<'_>, details_uri: &str) -> SmpResult {
    let r = s.result;
    let mut labels = test.labels.clone();
    labels.insert("scenario".into(), s.name.to_owned());
    labels.insert("profile".into(), test.name.clone());
    SmpResult {
        smp_version: SMP_VERSION.into(),
        id: format!("{}-{}-{}", test.id, s.name, r.start_unix_ns),
        labels,
        start_time: rfc3339(r.start_unix_ns),
        end_time: rfc3339(r.end_unix_ns),
        latencies_ms: Latencies::of(&r.latency),
        actual_qps: r.achieved_rps(),
        details_uri: details_uri.to_owned(),
        test_id: test.id.clone(),
        mesh_config_id: s.mesh.id.clone(),
        env_id: env.id.clone(),
        config: test.clone(),
        mesh_config: s.mesh.clone(),
        env: env.clone(),
        requested_qps: r.spec.rps.unwrap_or(0.0),
        requests: r.counters.responses,
        errors: r.counters.errors.clone(),
        status_codes: r.counters.status.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        error_rate: r.counters.error_rate(),
        histogram: HistogramDoc {
            encoding: "HdrHistogram V2 compressed (deflate), base64".into(),
            unit: "us".into(),
            data: histogram::encode(&r.latency),
        },
        resources: s.resources.clone(),
        meshmark: None,
    }
}

pub const FORMULA: &str = "MeshMark = 100 x mean over classes of MUE; \
delivery = min(1, qps/qps_base) x (1 - error_rate); \
latency = mean over p50, p99, p99.9 of min(1, p_base/p); \
efficiency = min(1, (good_qps/cpu_cores)/(good_qps_base/cpu_cores_base)) with cpu = upstream + proxy, \
or 1 - proxy_cpu_cores/cores when the upstream's CPU is unknown";

fn ratio(base: f64, value: f64) -> f64 {
    if value <= 0.0 || base <= 0.0 { if value <= base { 1.0 } else { 0.0 } } else { (base / value).min(1.0) }
}

/// MeshMark of `s` against the baseline `base` (the direct scenario), both measured in one run.
pub fn meshmark(s: &SmpResult, base: &SmpResult, cores: usize) -> MeshMark {
    let good = |d: &SmpResult| d.actual_qps * (1.0 - d.error_rate);
    let delivered = if base.actual_qps > 0.0 { (s.actual_qps / base.actual_qps).min(1.0) } else { 1.0 };
    let delivery = delivered * (1.0 - s.error_rate);
    let l = &s.latencies_ms;
    let b = &base.latencies_ms;
    let latency = (ratio(b.p50, l.p50) + ratio(b.p99, l.p99) + ratio(b.p99_9, l.p99_9)) / 3.0;
    let cpu = |d: &SmpResult| match (d.resources.upstream_cpu_cores, d.resources.proxy_cpu_cores) {
        (Some(u), Some(p)) => Some(u + p),
        (Some(u), None) if d.resources.proxy_pids.is_empty() => Some(u),
        _ => None,
    };
    let (efficiency, basis) = match (cpu(s), cpu(base)) {
        (Some(c), Some(cb)) if c > 0.0 && cb > 0.0 && good(base) > 0.0 => {
            (((good(s) / c) / (good(base) / cb)).min(1.0), "requests_per_cpu")
        }
        _ => (1.0 - s.resources.proxy_cpu_cores.unwrap_or(0.0) / cores.max(1) as f64, "proxy_utilization"),
    };
    let classes = BTreeMap::from([
        ("delivery".to_owned(), delivery.clamp(0.0, 1.0)),
        ("latency".to_owned(), latency.clamp(0.0, 1.0)),
        ("efficiency".to_owned(), efficiency.clamp(0.0, 1.0)),
    ]);
    let score = 100.0 * classes.values().sum::<f64>() / classes.len() as f64;
    MeshMark {
        score: (score * 10.0).round() / 10.0,
        classes,
        efficiency_basis: basis.into(),
        baseline: base.labels.get("scenario").cloned().unwrap_or_default(),
        formula: FORMULA.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(qps: f64, p: f64, proxy_cpu: Option<f64>, upstream_cpu: f64) -> SmpResult {
        let env = crate::procfs::environment();
        SmpResult {
            smp_version: SMP_VERSION.into(),
            id: "x".into(),
            labels: BTreeMap::from([("scenario".into(), "s".into())]),
            start_time: String::new(),
            end_time: String::new(),
            latencies_ms: Latencies { min: p, average: p, p50: p, p90: p, p99: p, max: p, p99_9: p, p99_99: p },
            actual_qps: qps,
            details_uri: String::new(),
            test_id: String::new(),
            mesh_config_id: String::new(),
            env_id: String::new(),
            config: TestConfig {
                smp_version: SMP_VERSION.into(),
                id: String::new(),
                name: String::new(),
                labels: BTreeMap::new(),
                clients: vec![],
                duration: String::new(),
            },
            mesh_config: MeshConfig {
                id: String::new(),
                mesh_type: String::new(),
                proxy_build: String::new(),
                proxy_concurrency: 1,
                config: serde_json::Value::Null,
            },
            env,
            requested_qps: qps,
            requests: 0,
            errors: BTreeMap::new(),
            status_codes: BTreeMap::new(),
            error_rate: 0.0,
            histogram: HistogramDoc { encoding: String::new(), unit: String::new(), data: String::new() },
            resources: Resources {
                proxy_pids: if proxy_cpu.is_some() { vec![1] } else { vec![] },
                proxy_cpu_cores: proxy_cpu,
                upstream_cpu_cores: Some(upstream_cpu),
                ..Resources::default()
            },
            meshmark: None,
        }
    }

    #[test]
    fn baseline_scores_100_and_a_costly_hop_less() {
        let base = doc(1000.0, 1.0, None, 0.2);
        assert_eq!(meshmark(&base, &base, 2).score, 100.0);
        // Same throughput, twice the latency, proxy CPU equal to the upstream's.
        let hop = doc(1000.0, 2.0, Some(0.2), 0.2);
        let m = meshmark(&hop, &base, 2);
        assert_eq!(m.efficiency_basis, "requests_per_cpu");
        assert!((m.classes["latency"] - 0.5).abs() < 1e-9);
        assert!((m.classes["efficiency"] - 0.5).abs() < 1e-9);
        assert!((m.score - 66.7).abs() < 0.05, "{}", m.score);
    }
}
