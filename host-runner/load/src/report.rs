//! What a run shows: the wrk2-style summary, the JSON report, fortio's result JSON, the
//! HdrHistogram percentile distribution (.hgrm).

use std::fmt::Write;

use serde_json::{Value, json};

use crate::histogram::{self, Latency, ms};
use crate::run::RunResult;
use crate::spec::Stop;

/// RFC 3339 UTC with microseconds, from Unix ns (no calendar crate needed for UTC).
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as i64;
    let micros = (unix_ns % 1_000_000_000) / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn fmt_ms(us: u64) -> String {
    let v = ms(us);
    if v >= 1000.0 {
        format!("{:.2}s", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.2}ms")
    } else {
        format!("{:.0}us", v * 1000.0)
    }
}

fn mode(r: &RunResult) -> String {
    match r.spec.rps {
        Some(rps) => format!("open loop at {rps} req/s, latency from each request's intended send time"),
        None => "closed loop, as fast as responses come back".into(),
    }
}

/// The human summary (stdout), after wrk2's.
pub fn summary(r: &RunResult) -> String {
    let s = &r.spec;
    let h = &r.latency;
    let c = &r.counters;
    let mut out = String::new();
    let what = match s.stop {
        Stop::Duration(d) => format!("{:.1}s", d.as_secs_f64()),
        Stop::Requests(n) => format!("{n} requests"),
    };
    let _ = writeln!(out, "Running {what} test @ {}", s.target.url);
    let _ = writeln!(
        out,
        "  {} thread(s) and {} connection(s){}{}, {}",
        s.threads,
        s.connections,
        if s.http2 { format!(" (HTTP/2, {} stream(s) each)", s.streams) } else { String::new() },
        if r.workers > 1 { format!(" in {} worker processes", r.workers) } else { String::new() },
        mode(r)
    );
    let _ = writeln!(out, "  Latency Distribution (HdrHistogram - Recorded Latency)");
    for p in histogram::REPORT_PERCENTILES {
        let _ = writeln!(out, "{:>8.3}%  {:>10}", p, fmt_ms(histogram::at(h, p)));
    }
    let _ = writeln!(
        out,
        "  min {}  mean {}  stdev {}  max {}",
        fmt_ms(if h.is_empty() { 0 } else { h.min() }),
        fmt_ms(h.mean() as u64),
        fmt_ms(h.stdev() as u64),
        fmt_ms(h.max())
    );
    if crate::run::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = writeln!(out, "  (interrupted: the figures cover the run until Ctrl-C)");
    }
    let _ = writeln!(out, "  {} requests in {:.2}s, {} bytes read", c.responses, r.window_s, c.bytes_read);
    let statuses: Vec<String> = c.status.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = writeln!(out, "  Status codes: {}", if statuses.is_empty() { "none".into() } else { statuses.join(", ") });
    if c.bad_status() > 0 {
        let _ = writeln!(out, "  Non-2xx or 3xx responses: {}", c.bad_status());
    }
    if c.errors_total() > 0 {
        let errors: Vec<String> = c.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "  Socket errors: {}", errors.join(", "));
    }
    match s.rps {
        Some(rps) => {
            let _ = writeln!(out, "Requests/sec: {:>10.2} (requested {rps})", r.achieved_rps());
        }
        None => {
            let _ = writeln!(out, "Requests/sec: {:>10.2}", r.achieved_rps());
        }
    }
    let _ = writeln!(out, "Transfer/sec: {:>10.2}KB", c.bytes_read as f64 / 1024.0 / r.window_s.max(1e-9));
    out
}

/// Latency statistics in milliseconds, keyed as the JSON report and SMP documents use them.
pub fn latency_ms(h: &Latency) -> Value {
    let empty = h.is_empty();
    json!({
        "min": if empty { 0.0 } else { ms(h.min()) },
        "mean": if empty { 0.0 } else { h.mean() / 1000.0 },
        "stdev": if empty { 0.0 } else { h.stdev() / 1000.0 },
        "max": ms(h.max()),
        "p50": ms(histogram::at(h, 50.0)),
        "p75": ms(histogram::at(h, 75.0)),
        "p90": ms(histogram::at(h, 90.0)),
        "p99": ms(histogram::at(h, 99.0)),
        "p99.9": ms(histogram::at(h, 99.9)),
        "p99.99": ms(histogram::at(h, 99.99)),
        "p99.999": ms(histogram::at(h, 99.999)),
    })
}

pub fn histogram_json(h: &Latency) -> Value {
    json!({
        "encoding": "HdrHistogram V2 compressed (deflate), base64",
        "unit": "us",
        "lowest": 1,
        "highest": histogram::HIGHEST_US,
        "significant_digits": histogram::SIGFIG,
        "data": histogram::encode(h),
    })
}

/// `--output json`.
pub fn json_report(r: &RunResult) -> Value {
    let s = &r.spec;
    json!({
        "url": s.target.url,
        "method": s.request.method,
        "mode": if s.rps.is_some() { "open" } else { "closed" },
        "requested_rps": s.rps,
        "achieved_rps": r.achieved_rps(),
        "connections": s.connections,
        "threads": s.threads,
        "workers": r.workers,
        "http2": s.http2,
        "duration_s": match s.stop { Stop::Duration(d) => Some(d.as_secs_f64()), Stop::Requests(_) => None },
        "requests_limit": match s.stop { Stop::Requests(n) => Some(n), Stop::Duration(_) => None },
        "warmup_s": s.warmup.as_secs_f64(),
        "window_s": r.window_s,
        "start_time": rfc3339(r.start_unix_ns),
        "end_time": rfc3339(r.end_unix_ns),
        "requests": r.counters.responses,
        "status": r.counters.status.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errors": r.counters.errors,
        "errors_total": r.counters.errors_total(),
        "non_2xx_3xx": r.counters.bad_status(),
        "error_rate": r.counters.error_rate(),
        "interrupted": crate::run::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed),
        "bytes_read": r.counters.bytes_read,
        "connects": r.counters.connects,
        "latency_ms": latency_ms(&r.latency),
        "histogram": histogram_json(&r.latency),
    })
}

/// fortio's `HistogramData` (stats package): values in seconds, buckets with cumulative
/// percent. Built from the HdrHistogram's own buckets, so nothing is re-binned.
fn fortio_histogram(h: &Latency, percentiles: &[f64]) -> Value {
    let count = h.len();
    let sec = |us: u64| us as f64 / 1e6;
    let mut data = Vec::new();
    let mut total = 0u64;
    let recorded: Vec<(u64, u64)> = histogram::buckets(h);
    let last = recorded.len().saturating_sub(1);
    for (i, (v, n)) in recorded.iter().enumerate() {
        total += n;
        let start = if i == 0 { h.min() } else { h.lowest_equivalent(*v) };
        let end = if i == last { h.max() } else { h.highest_equivalent(*v) };
        data.push(json!({
            "Start": sec(start),
            "End": sec(end),
            "Percent": 100.0 * total as f64 / count as f64,
            "Count": n,
        }));
    }
    let sum: f64 = recorded.iter().map(|(v, n)| sec(h.median_equivalent(*v)) * *n as f64).sum();
    json!({
        "Count": count,
        "Min": if count == 0 { 0.0 } else { sec(h.min()) },
        "Max": sec(h.max()),
        "Sum": sum,
        "Avg": if count == 0 { 0.0 } else { h.mean() / 1e6 },
        "StdDev": if count == 0 { 0.0 } else { h.stdev() / 1e6 },
        "Data": data,
        "Percentiles": percentiles.iter().map(|p| json!({"Percentile": p, "Value": sec(histogram::at(h, *p))})).collect::<Vec<_>>(),
    })
}

/// fortio's HTTP result JSON (`fhttp.HTTPRunnerResults`, embedding `periodic.RunnerResults`),
/// as `fortio load -json` writes it and fortio's report UI and Meshery read it.
pub fn fortio_json(r: &RunResult) -> Value {
    let s = &r.spec;
    let mut ret_codes = serde_json::Map::new();
    for (k, v) in &r.counters.status {
        ret_codes.insert(k.to_string(), json!(v));
    }
    if r.counters.errors_total() > 0 {
        // fortio files socket-level failures under -1.
        ret_codes.insert("-1".into(), json!(r.counters.errors_total()));
    }
    // Requests that failed get no latency (there was no response to time): an empty histogram.
    let errors = histogram::new_latency();
    let percentiles = [50.0, 75.0, 90.0, 99.0, 99.9];
    let exactly = match s.stop {
        Stop::Requests(n) => n as i64,
        Stop::Duration(_) => 0,
    };
    json!({
        "RunType": "HTTP",
        "Labels": format!("meshwork load {}", s.target.url),
        "StartTime": rfc3339(r.start_unix_ns),
        "RequestedQPS": match s.rps { Some(q) => format!("{q}"), None => "max".into() },
        "RequestedDuration": match s.stop {
            Stop::Duration(d) => format!("{}s", d.as_secs_f64()),
            Stop::Requests(n) => format!("exactly {n} calls"),
        },
        "ActualQPS": r.achieved_rps(),
        "ActualDuration": (r.window_s * 1e9) as u64,
        "NumThreads": s.connections,
        "Version": format!("meshwork {}", env!("CARGO_PKG_VERSION")),
        "DurationHistogram": fortio_histogram(&r.latency, &percentiles),
        "ErrorsDurationHistogram": fortio_histogram(&errors, &[]),
        "Exactly": exactly,
        "Jitter": false,
        "Uniform": true,
        "NoCatchUp": false,
        "RunID": 0,
        "AccessLoggerInfo": "",
        "ID": format!("meshwork-{}", r.start_unix_ns),
        "RetCodes": ret_codes,
        "IPCountMap": { format!("{}:{}", s.target.host, s.target.port): r.counters.connects },
        "URL": s.target.url,
        "SocketCount": r.counters.connects,
        "AbortOn": 0,
    })
}

/// HdrHistogram's percentile distribution text (`outputPercentileDistribution`, values in ms,
/// 5 ticks per half distance), as wrk2 prints it and HdrHistogram's plotter reads it.
pub fn hgrm(h: &Latency) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{:>12.3} {:>2.12} {:>10} {:>14.2}",
                    ms(v.value_iterated_to()),
                    q,
                    total,
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{:>12.3} {:>2.12} {:>10}", ms(v.value_iterated_to()), q, total);
            }
        }
    }
    let (mean, stdev) = if h.is_empty() { (0.0, 0.0) } else { (h.mean() / 1000.0, h.stdev() / 1000.0) };
    let _ = writeln!(out, "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]");
    let _ = writeln!(out, "#[Max     = {:>12.3}, Total count    = {:>12}]", ms(h.max()), h.len());
    // HdrHistogram's sub-bucket count: 2^ceil(log2(2·10^digits)), 2048 for 3 digits.
    let sub_buckets = (2.0 * 10f64.powi(i32::from(histogram::SIGFIG))).log2().ceil().exp2() as u64;
    let _ = writeln!(out, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", h.buckets(), sub_buckets);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn hgrm_ends_at_the_total() {
        let mut h = histogram::new_latency();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let text = hgrm(&h);
        let rows: Vec<Vec<f64>> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.contains("Value"))
            .map(|l| l.split_whitespace().map(|f| f.parse().unwrap()).collect())
            .collect();
        let last = rows.last().unwrap();
        assert_eq!(last[1], 1.0);
        assert_eq!(last[2], 1000.0);
        assert!((last[0] - 10.0).abs() < 0.01, "{last:?}");
        assert!(text.contains("Total count    =         1000"));
    }
}
