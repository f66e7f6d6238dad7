//! Process-wide metrics: what filters define through proxy_define_metric and what the proxy
//! records about itself, rendered for Prometheus or as JSON.
//!
//! A metric is identified by its full name. Tags ride in the name in meshwork's convention
//! (`base;.;key=.=value;.;key2=.=value2`, see `meshwork-measure-core`), which Envoy extracts with
//! one `stats_tags` regex per key.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use meshwork_log_histogram::Histogram;

use crate::abi::MetricType;

/// Upper bounds of the Prometheus buckets: Envoy's defaults, so dashboards carry over.
pub const PROMETHEUS_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// One tagged series of a metric family.
type Series = (Vec<(String, String)>, Arc<Metric>);

#[derive(Debug)]
pub enum Metric {
    Counter(AtomicU64),
    Gauge(AtomicI64),
    Histogram(Mutex<Box<Histogram>>),
}

impl Metric {
    fn new(kind: MetricType) -> Metric {
        match kind {
            MetricType::Counter => Metric::Counter(AtomicU64::new(0)),
            MetricType::Gauge => Metric::Gauge(AtomicI64::new(0)),
            MetricType::Histogram => Metric::Histogram(Mutex::new(Box::default())),
        }
    }

    pub fn kind(&self) -> MetricType {
        match self {
            Metric::Counter(_) => MetricType::Counter,
            Metric::Gauge(_) => MetricType::Gauge,
            Metric::Histogram(_) => MetricType::Histogram,
        }
    }

    /// `proxy_increment_metric`: counters only go up (a delta of 0 is refused, as in Envoy);
    /// histograms cannot be incremented.
    pub fn increment(&self, delta: i64) -> Result<(), MetricError> {
        match self {
            Metric::Counter(c) if delta > 0 => {
                c.fetch_add(delta as u64, Ordering::Relaxed);
                Ok(())
            }
            Metric::Counter(_) => Err(MetricError::BadArgument),
            Metric::Gauge(g) => {
                g.fetch_add(delta, Ordering::Relaxed);
                Ok(())
            }
            Metric::Histogram(_) => Err(MetricError::BadArgument),
        }
    }

    /// `proxy_record_metric`: adds to a counter (Envoy's `add`), sets a gauge, adds a sample to
    /// a histogram.
    pub fn record(&self, value: u64) {
        match self {
            Metric::Counter(c) => {
                c.fetch_add(value, Ordering::Relaxed);
            }
            Metric::Gauge(g) => g.store(value as i64, Ordering::Relaxed),
            Metric::Histogram(h) => h.lock().unwrap_or_else(|p| p.into_inner()).record(value),
        }
    }

    /// `proxy_get_metric`: the value of a counter or gauge; histograms have none.
    pub fn get(&self) -> Result<u64, MetricError> {
        match self {
            Metric::Counter(c) => Ok(c.load(Ordering::Relaxed)),
            Metric::Gauge(g) => Ok(g.load(Ordering::Relaxed) as u64),
            Metric::Histogram(_) => Err(MetricError::BadArgument),
        }
    }

    pub fn histogram_snapshot(&self) -> Option<Box<Histogram>> {
        match self {
            Metric::Histogram(h) => Some(h.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricError {
    BadArgument,
}

/// All metrics of the process, by (type, full name).
#[derive(Debug, Default)]
pub struct MetricsRegistry {
    metrics: RwLock<BTreeMap<(String, u8), Arc<Metric>>>,
}

impl MetricsRegistry {
    /// Returns the metric named `name`, creating it on first use.
    pub fn define(&self, kind: MetricType, name: &str) -> Arc<Metric> {
        let key = (name.to_owned(), kind as u8);
        if let Some(m) = self.metrics.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Arc::clone(m);
        }
        let mut map = self.metrics.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(key).or_insert_with(|| Arc::new(Metric::new(kind))))
    }

    pub fn counter(&self, name: &str) -> Arc<Metric> {
        self.define(MetricType::Counter, name)
    }

    pub fn gauge(&self, name: &str) -> Arc<Metric> {
        self.define(MetricType::Gauge, name)
    }

    pub fn histogram(&self, name: &str) -> Arc<Metric> {
        self.define(MetricType::Histogram, name)
    }

    fn snapshot(&self) -> Vec<(String, Arc<Metric>)> {
        let map = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|((name, _), m)| (name.clone(), Arc::clone(m))).collect()
    }

    /// Prometheus text exposition format, one `# TYPE` per metric family.
    pub fn render_prometheus(&self) -> String {
        let mut families: BTreeMap<String, (MetricType, Vec<Series>)> = BTreeMap::new();
        for (name, metric) in self.snapshot() {
            let (base, tags) = split_tags(&name);
            families.entry(prometheus_name(base)).or_insert_with(|| (metric.kind(), Vec::new())).1.push((tags, metric));
        }
        let mut out = String::new();
        for (family, (kind, series)) in families {
            let type_name = match kind {
                MetricType::Counter => "counter",
                MetricType::Gauge => "gauge",
                MetricType::Histogram => "histogram",
            };
            let _ = writeln!(out, "# TYPE {family} {type_name}");
            for (tags, metric) in series {
                match &*metric {
                    Metric::Counter(c) => {
                        let _ = writeln!(out, "{family}{} {}", labels(&tags, None), c.load(Ordering::Relaxed));
                    }
                    Metric::Gauge(g) => {
                        let _ = writeln!(out, "{family}{} {}", labels(&tags, None), g.load(Ordering::Relaxed));
                    }
                    Metric::Histogram(_) => {
                        let h = metric.histogram_snapshot().unwrap_or_default();
                        for bound in PROMETHEUS_BUCKETS {
                            let below = h.count_at_or_below(bound.floor() as u64);
                            let le = format_bound(bound);
                            let _ = writeln!(out, "{family}_bucket{} {below}", labels(&tags, Some(&le)));
                        }
                        let _ = writeln!(out, "{family}_bucket{} {}", labels(&tags, Some("+Inf")), h.count());
                        let _ = writeln!(out, "{family}_sum{} {}", labels(&tags, None), h.sum());
                        let _ = writeln!(out, "{family}_count{} {}", labels(&tags, None), h.count());
                    }
                }
            }
        }
        out
    }

    /// Every metric with its tags; histograms with count, sum, min, max and percentiles.
    pub fn snapshot_values(&self) -> Vec<MetricValue> {
        self.snapshot()
            .into_iter()
            .map(|(name, metric)| {
                let (base, tags) = split_tags(&name);
                let value = match &*metric {
                    Metric::Counter(c) => Value::Counter(c.load(Ordering::Relaxed)),
                    Metric::Gauge(g) => Value::Gauge(g.load(Ordering::Relaxed)),
                    Metric::Histogram(_) => {
                        let h = metric.histogram_snapshot().unwrap_or_default();
                        Value::Histogram(HistogramSummary::of(&h))
                    }
                };
                MetricValue { name: base.to_owned(), tags, value }
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    pub name: String,
    pub tags: Vec<(String, String)>,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Counter(u64),
    Gauge(i64),
    Histogram(HistogramSummary),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSummary {
    pub count: u64,
    pub sum: u128,
    pub min: u64,
    pub max: u64,
    /// (quantile, value) for p50, p90, p99, p99.9.
    pub quantiles: Vec<(f64, u64)>,
}

impl HistogramSummary {
    pub fn of(h: &Histogram) -> HistogramSummary {
        HistogramSummary {
            count: h.count(),
            sum: h.sum(),
            min: h.min(),
            max: h.max(),
            quantiles: [0.5, 0.9, 0.99, 0.999].iter().map(|q| (*q, h.value_at_quantile(*q))).collect(),
        }
    }
}

/// Splits `base;.;k=.=v;.;k2=.=v2` into the base name and its tags.
pub fn split_tags(name: &str) -> (&str, Vec<(String, String)>) {
    let mut parts = name.split(";.;");
    let base = parts.next().unwrap_or("");
    let tags = parts.filter_map(|p| p.split_once("=.=").map(|(k, v)| (k.to_owned(), v.to_owned()))).collect();
    (base, tags)
}

/// A Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`, other characters become `_`.
pub fn prometheus_name(base: &str) -> String {
    let mut out: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn labels(tags: &[(String, String)], le: Option<&str>) -> String {
    if tags.is_empty() && le.is_none() {
        return String::new();
    }
    let mut out = String::from("{");
    let mut first = true;
    let mut push = |k: &str, v: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{}=\"", prometheus_name(k));
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    };
    for (k, v) in tags {
        push(k, v);
    }
    if let Some(le) = le {
        push("le", le);
    }
    out.push('}');
    out
}

fn format_bound(bound: f64) -> String {
    if bound.fract() == 0.0 { format!("{}", bound as u64) } else { format!("{bound}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_refuse_negative_increments_gauges_accept_them() {
        let r = MetricsRegistry::default();
        let c = r.counter("c");
        assert_eq!(c.increment(-1), Err(MetricError::BadArgument));
        assert_eq!(c.increment(0), Err(MetricError::BadArgument));
        c.increment(3).unwrap();
        c.record(2);
        assert_eq!(c.get(), Ok(5));
        let g = r.gauge("g");
        g.increment(-2).unwrap();
        assert_eq!(g.get(), Ok((-2i64) as u64));
        let h = r.histogram("h");
        assert_eq!(h.get(), Err(MetricError::BadArgument));
        assert_eq!(h.increment(1), Err(MetricError::BadArgument));
    }

    #[test]
    fn same_name_is_the_same_metric() {
        let r = MetricsRegistry::default();
        r.counter("x").increment(1).unwrap();
        r.counter("x").increment(1).unwrap();
        assert_eq!(r.counter("x").get(), Ok(2));
    }

    #[test]
    fn prometheus_text_has_tags_and_histogram_buckets() {
        let r = MetricsRegistry::default();
        r.counter("reqs;.;route=.=api;.;class=.=2xx").increment(5).unwrap();
        r.counter("reqs;.;route=.=web;.;class=.=5xx").increment(1).unwrap();
        let h = r.histogram("lat.us");
        for v in [1, 7, 7, 20_000] {
            h.record(v);
        }
        let text = r.render_prometheus();
        assert!(text.contains("# TYPE reqs counter\n"), "{text}");
        assert!(text.contains("reqs{route=\"api\",class=\"2xx\"} 5\n"), "{text}");
        assert!(text.contains("reqs{route=\"web\",class=\"5xx\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE lat_us histogram\n"), "{text}");
        assert!(text.contains("lat_us_bucket{le=\"5\"} 1\n"), "{text}");
        assert!(text.contains("lat_us_bucket{le=\"10\"} 3\n"), "{text}");
        assert!(text.contains("lat_us_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("lat_us_count 4\n"), "{text}");
        assert!(text.contains("lat_us_sum 20015\n"), "{text}");
    }

    #[test]
    fn split_tags_reads_the_convention() {
        let (base, tags) = split_tags("m;.;a=.=1;.;b=.=x/y");
        assert_eq!(base, "m");
        assert_eq!(tags, vec![("a".into(), "1".into()), ("b".into(), "x/y".into())]);
        assert_eq!(split_tags("plain").1, vec![]);
    }
}
