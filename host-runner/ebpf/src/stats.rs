//! Reads a loaded instance's pinned maps into stats: text for people, JSON for machines,
//! Prometheus text for scrapers. RTT percentiles come from the kernel's log-linear bucket counts
//! through `meshwork_log_histogram::Histogram`, as the filters' and the proxy's do.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use meshwork_circuit_breaker::{Phase, Reason};
use meshwork_ebpf_common::addr::{Addr16, DestKey, as_v4};
use meshwork_ebpf_common::breaker::{BreakerConfig, BreakerSlot};
use meshwork_ebpf_common::ratelimit::{RateLimit, SourceState, totals};
use meshwork_ebpf_common::rtt::RttStats;
use meshwork_log_histogram::{Histogram, bucket_lower, bucket_upper};
use serde::Serialize;

use crate::instance::{self, Instance};
use crate::{EbpfError, Program};

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "program", rename_all = "kebab-case")]
pub enum Stats {
    XdpRatelimit(RateLimitStats),
    SockopsRtt(RttReport),
    ConnectBreaker(BreakerReport),
    XdpPass { instance: String },
}

#[derive(Clone, Debug, Serialize)]
pub struct RateLimitStats {
    pub instance: String,
    pub totals: BTreeMap<String, u64>,
    pub default_limit: LimitView,
    pub overrides: Vec<OverrideView>,
    /// Busiest sources first.
    pub sources: Vec<SourceView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LimitView {
    pub rate: u64,
    pub period_ns: u64,
    pub burst: u64,
}

impl From<RateLimit> for LimitView {
    fn from(l: RateLimit) -> LimitView {
        LimitView { rate: l.rate, period_ns: l.period_ns, burst: l.burst }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct OverrideView {
    pub prefix: String,
    pub limit: LimitView,
}

#[derive(Clone, Debug, Serialize)]
pub struct SourceView {
    pub source: String,
    pub passed: u64,
    pub dropped: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RttReport {
    pub instance: String,
    pub destinations: Vec<DestinationRtt>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DestinationRtt {
    pub destination: String,
    pub samples: u64,
    pub mean_us: f64,
    /// Upper bounds of the buckets holding each quantile (within 1/32 of the true value).
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub active_established: u64,
    pub passive_established: u64,
    pub failed_connects: u64,
    pub retransmits: u64,
    pub rto_timeouts: u64,
    /// Non-empty buckets: (lower µs, upper µs, count).
    pub buckets: Vec<(u64, u64, u64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BreakerReport {
    pub instance: String,
    pub destinations: Vec<DestinationBreaker>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DestinationBreaker {
    pub destination: String,
    pub state: &'static str,
    pub reason: &'static str,
    pub allowed: u64,
    pub probes: u64,
    pub rejected: u64,
    pub failures: u64,
    pub successes: u64,
    pub contended: u64,
}

fn open(name: &str, map: &str) -> Result<Map, EbpfError> {
    let path = instance::maps_dir(name).join(map);
    let data = MapData::from_pin(&path).map_err(|e| match e {
        aya::maps::MapError::SyscallError(ref s) if s.io_error.kind() == std::io::ErrorKind::NotFound => {
            EbpfError::NoInstance(name.to_owned())
        }
        other => EbpfError::Aya { context: format!("opening {}", path.display()), source: Box::new(other) },
    })?;
    Map::from_map_data(data).map_err(EbpfError::aya(format!("reading {}", path.display())))
}

fn read_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |e| EbpfError::Aya { context: format!("reading {map}"), source: Box::new(e) }
}

/// Reads the stats of instance `name`; `program` when there is no record to say which it is.
pub fn read(name: &str, program: Option<Program>) -> Result<Stats, EbpfError> {
    instance::check_name(name)?;
    let program = match program.or_else(|| Instance::read(name).ok().flatten().map(|i| i.program)) {
        Some(p) => p,
        None => Program::from_name(name).ok_or_else(|| EbpfError::NoInstance(name.to_owned()))?,
    };
    let instance = name.to_owned();
    Ok(match program {
        Program::XdpRatelimit => Stats::XdpRatelimit(read_ratelimit(instance)?),
        Program::SockopsRtt => Stats::SockopsRtt(read_rtt(instance)?),
        Program::ConnectBreaker => Stats::ConnectBreaker(read_breaker(instance)?),
        Program::XdpPass => Stats::XdpPass { instance },
    })
}

fn read_ratelimit(instance: String) -> Result<RateLimitStats, EbpfError> {
    let per_cpu: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open(&instance, "RL_TOTALS")?).map_err(read_err("RL_TOTALS"))?;
    let mut totals_out = BTreeMap::new();
    for (i, name) in totals::NAMES.iter().enumerate() {
        let values = per_cpu.get(&(i as u32), 0).map_err(read_err("RL_TOTALS"))?;
        totals_out.insert((*name).to_owned(), values.iter().sum());
    }
    let config: Array<MapData, RateLimit> =
        Array::try_from(open(&instance, "RL_CONFIG")?).map_err(read_err("RL_CONFIG"))?;
    let default_limit = config.get(&0, 0).map_err(read_err("RL_CONFIG"))?.into();
    let trie: LpmTrie<MapData, Addr16, RateLimit> =
        LpmTrie::try_from(open(&instance, "RL_OVERRIDES")?).map_err(read_err("RL_OVERRIDES"))?;
    let mut overrides = Vec::new();
    for item in trie.iter() {
        let (key, limit) = item.map_err(read_err("RL_OVERRIDES"))?;
        let (addr, len) = (key.data(), key.prefix_len());
        let prefix = match as_v4(&addr) {
            Some(v4) => format!("{}/{}", Ipv4Addr::from(v4), len.saturating_sub(96)),
            None => format!("{}/{len}", Ipv6Addr::from(addr)),
        };
        overrides.push(OverrideView { prefix, limit: limit.into() });
    }
    let sources_map: HashMap<MapData, Addr16, SourceState> =
        HashMap::try_from(open(&instance, "RL_SOURCES")?).map_err(read_err("RL_SOURCES"))?;
    let mut sources = Vec::new();
    for item in sources_map.iter() {
        let (addr, state) = item.map_err(read_err("RL_SOURCES"))?;
        sources.push(SourceView { source: ip(&addr).to_string(), passed: state.passed, dropped: state.dropped });
    }
    sources.sort_by(|a, b| (b.passed + b.dropped).cmp(&(a.passed + a.dropped)).then(a.source.cmp(&b.source)));
    Ok(RateLimitStats { instance, totals: totals_out, default_limit, overrides, sources })
}

fn ip(addr: &Addr16) -> IpAddr {
    match as_v4(addr) {
        Some(v4) => IpAddr::V4(v4.into()),
        None => IpAddr::V6((*addr).into()),
    }
}

fn destination(key: &DestKey) -> String {
    SocketAddr::new(ip(&key.addr), key.port).to_string()
}

/// Percentiles of one destination's bucket counts.
pub fn rtt_view(key: &DestKey, stats: &RttStats) -> DestinationRtt {
    let mut histogram = Box::<Histogram>::default();
    let mut buckets = Vec::new();
    for (i, count) in stats.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        // Every value of a bucket reads back as its upper bound, as the filters report.
        histogram.record_n(bucket_upper(i), *count);
        buckets.push((bucket_lower(i), bucket_upper(i), *count));
    }
    DestinationRtt {
        destination: destination(key),
        samples: stats.samples,
        mean_us: if stats.samples == 0 { 0.0 } else { stats.sum_us as f64 / stats.samples as f64 },
        p50_us: histogram.value_at_quantile(0.5),
        p90_us: histogram.value_at_quantile(0.9),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        active_established: stats.active_established,
        passive_established: stats.passive_established,
        failed_connects: stats.failed_connects,
        retransmits: stats.retransmits,
        rto_timeouts: stats.rto_timeouts,
        buckets,
    }
}

fn read_rtt(instance: String) -> Result<RttReport, EbpfError> {
    let map: HashMap<MapData, DestKey, RttStats> =
        HashMap::try_from(open(&instance, "RTT_DESTS")?).map_err(read_err("RTT_DESTS"))?;
    let mut destinations = Vec::new();
    for item in map.iter() {
        let (key, stats) = item.map_err(read_err("RTT_DESTS"))?;
        destinations.push(rtt_view(&key, &stats));
    }
    destinations.sort_by(|a, b| a.destination.cmp(&b.destination));
    Ok(RttReport { instance, destinations })
}

fn read_breaker(instance: String) -> Result<BreakerReport, EbpfError> {
    let _config: Array<MapData, BreakerConfig> =
        Array::try_from(open(&instance, "CB_CONFIG")?).map_err(read_err("CB_CONFIG"))?;
    let map: HashMap<MapData, DestKey, BreakerSlot> =
        HashMap::try_from(open(&instance, "CB_DESTS")?).map_err(read_err("CB_DESTS"))?;
    let mut destinations = Vec::new();
    for item in map.iter() {
        let (key, slot) = item.map_err(read_err("CB_DESTS"))?;
        let breaker = slot.breaker();
        destinations.push(DestinationBreaker {
            destination: destination(&key),
            state: match breaker.map(|b| b.phase) {
                Some(Phase::Closed) => "closed",
                Some(Phase::Open) => "open",
                Some(Phase::HalfOpen) => "half_open",
                None => "unknown",
            },
            reason: breaker.map(|b| b.reason).unwrap_or(Reason::None).as_str(),
            allowed: slot.allowed,
            probes: slot.probes,
            rejected: slot.rejected,
            failures: slot.failures,
            successes: slot.successes,
            contended: slot.contended,
        });
    }
    destinations.sort_by(|a, b| a.destination.cmp(&b.destination));
    Ok(BreakerReport { instance, destinations })
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Stats {
    pub fn text(&self) -> String {
        let mut out = String::new();
        match self {
            Stats::XdpRatelimit(s) => {
                let l = &s.default_limit;
                let _ = writeln!(
                    out,
                    "xdp-ratelimit {}: {} per {} ms per source, burst {}",
                    s.instance,
                    l.rate,
                    l.period_ns as f64 / 1e6,
                    l.burst
                );
                for o in &s.overrides {
                    let _ = writeln!(
                        out,
                        "  override {}: {} per {} ms, burst {}",
                        o.prefix,
                        o.limit.rate,
                        o.limit.period_ns as f64 / 1e6,
                        o.limit.burst
                    );
                }
                let totals: Vec<String> = s.totals.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(out, "  packets: {}", totals.join(", "));
                let _ = writeln!(out, "  {:<40} {:>12} {:>12}", "source", "passed", "dropped");
                for src in s.sources.iter().take(50) {
                    let _ = writeln!(out, "  {:<40} {:>12} {:>12}", src.source, src.passed, src.dropped);
                }
            }
            Stats::SockopsRtt(r) => {
                let _ = writeln!(out, "sockops-rtt {}: TCP round-trip times (µs) per destination", r.instance);
                let _ = writeln!(
                    out,
                    "  {:<28} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>7}",
                    "destination", "samples", "p50", "p90", "p99", "max", "conns", "failed", "retrans"
                );
                for d in &r.destinations {
                    let _ = writeln!(
                        out,
                        "  {:<28} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6} {:>7}",
                        d.destination,
                        d.samples,
                        d.p50_us,
                        d.p90_us,
                        d.p99_us,
                        d.max_us,
                        d.active_established + d.passive_established,
                        d.failed_connects,
                        d.retransmits
                    );
                }
            }
            Stats::ConnectBreaker(r) => {
                let _ = writeln!(out, "connect-breaker {}: destinations that have failed", r.instance);
                let _ = writeln!(
                    out,
                    "  {:<28} {:<10} {:<22} {:>8} {:>6} {:>8} {:>8} {:>9}",
                    "destination", "state", "reason", "allowed", "probes", "rejected", "failures", "successes"
                );
                for d in &r.destinations {
                    let _ = writeln!(
                        out,
                        "  {:<28} {:<10} {:<22} {:>8} {:>6} {:>8} {:>8} {:>9}",
                        d.destination, d.state, d.reason, d.allowed, d.probes, d.rejected, d.failures, d.successes
                    );
                }
            }
            Stats::XdpPass { instance } => {
                let _ = writeln!(out, "xdp-pass {instance}: passes every packet; nothing to count");
            }
        }
        out
    }

    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        match self {
            Stats::XdpRatelimit(s) => {
                let i = label(&s.instance);
                let _ = writeln!(out, "# TYPE meshwork_ebpf_ratelimit_packets_total counter");
                for (k, v) in &s.totals {
                    let _ =
                        writeln!(out, "meshwork_ebpf_ratelimit_packets_total{{instance=\"{i}\",result=\"{k}\"}} {v}");
                }
                let _ = writeln!(out, "# TYPE meshwork_ebpf_ratelimit_source_packets_total counter");
                for src in &s.sources {
                    for (result, v) in [("passed", src.passed), ("dropped", src.dropped)] {
                        let _ = writeln!(
                            out,
                            "meshwork_ebpf_ratelimit_source_packets_total{{instance=\"{i}\",source=\"{}\",result=\"{result}\"}} {v}",
                            src.source
                        );
                    }
                }
            }
            Stats::SockopsRtt(r) => {
                let i = label(&r.instance);
                let _ = writeln!(out, "# TYPE meshwork_ebpf_tcp_rtt_us summary");
                for d in &r.destinations {
                    let l = format!("instance=\"{i}\",destination=\"{}\"", d.destination);
                    for (q, v) in [("0.5", d.p50_us), ("0.9", d.p90_us), ("0.99", d.p99_us), ("0.999", d.p999_us)] {
                        let _ = writeln!(out, "meshwork_ebpf_tcp_rtt_us{{{l},quantile=\"{q}\"}} {v}");
                    }
                    let _ =
                        writeln!(out, "meshwork_ebpf_tcp_rtt_us_sum{{{l}}} {}", (d.mean_us * d.samples as f64).round());
                    let _ = writeln!(out, "meshwork_ebpf_tcp_rtt_us_count{{{l}}} {}", d.samples);
                }
                for (metric, pick) in [
                    (
                        "meshwork_ebpf_tcp_connections_active_total",
                        (|d: &DestinationRtt| d.active_established) as fn(&DestinationRtt) -> u64,
                    ),
                    ("meshwork_ebpf_tcp_connections_passive_total", |d| d.passive_established),
                    ("meshwork_ebpf_tcp_failed_connects_total", |d| d.failed_connects),
                    ("meshwork_ebpf_tcp_retransmits_total", |d| d.retransmits),
                    ("meshwork_ebpf_tcp_rto_timeouts_total", |d| d.rto_timeouts),
                ] {
                    let _ = writeln!(out, "# TYPE {metric} counter");
                    for d in &r.destinations {
                        let _ =
                            writeln!(out, "{metric}{{instance=\"{i}\",destination=\"{}\"}} {}", d.destination, pick(d));
                    }
                }
            }
            Stats::ConnectBreaker(r) => {
                let i = label(&r.instance);
                let _ = writeln!(out, "# TYPE meshwork_ebpf_connect_breaker_state gauge");
                for d in &r.destinations {
                    for state in ["closed", "open", "half_open"] {
                        let _ = writeln!(
                            out,
                            "meshwork_ebpf_connect_breaker_state{{instance=\"{i}\",destination=\"{}\",state=\"{state}\"}} {}",
                            d.destination,
                            (d.state == state) as u8
                        );
                    }
                }
                let _ = writeln!(out, "# TYPE meshwork_ebpf_connect_breaker_connects_total counter");
                for d in &r.destinations {
                    for (outcome, v) in [("allowed", d.allowed), ("probe", d.probes), ("rejected", d.rejected)] {
                        let _ = writeln!(
                            out,
                            "meshwork_ebpf_connect_breaker_connects_total{{instance=\"{i}\",destination=\"{}\",outcome=\"{outcome}\"}} {v}",
                            d.destination
                        );
                    }
                }
                let _ = writeln!(out, "# TYPE meshwork_ebpf_connect_breaker_outcomes_total counter");
                for d in &r.destinations {
                    for (result, v) in [("failure", d.failures), ("success", d.successes)] {
                        let _ = writeln!(
                            out,
                            "meshwork_ebpf_connect_breaker_outcomes_total{{instance=\"{i}\",destination=\"{}\",result=\"{result}\"}} {v}",
                            d.destination
                        );
                    }
                }
            }
            Stats::XdpPass { .. } => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwork_ebpf_common::addr::mapped_v4;
    use meshwork_ebpf_common::rtt::rtt_bucket;
    use proptest::prelude::*;

    proptest! {
        /// Percentiles from kernel-style bucket counts are within 1/32 of the true values.
        #[test]
        fn percentiles_from_buckets_are_within_a_bucket(mut values in proptest::collection::vec(1u64..5_000_000, 1..400)) {
            let mut stats = RttStats::ZERO;
            for v in &values {
                stats.counts[rtt_bucket(*v)] += 1;
                stats.samples += 1;
                stats.sum_us += v;
            }
            let view = rtt_view(&DestKey::new(mapped_v4([198, 18, 0, 2]), 80), &stats);
            values.sort_unstable();
            for (q, got) in [(0.5, view.p50_us), (0.9, view.p90_us), (0.99, view.p99_us)] {
                let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
                let truth = values[rank - 1] as f64;
                prop_assert!(got as f64 >= truth && (got as f64 - truth) / truth <= 1.0 / 32.0 + 1e-9, "q{q}: {got} vs {truth}");
            }
            prop_assert_eq!(view.destination, "198.18.0.2:80");
        }
    }
}
