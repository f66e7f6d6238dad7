//! `--find-max`: the highest open-loop rate that meets a latency objective and an error
//! budget. As in Nighthawk's adaptive load controller: always open loop, each step a fixed-
//! duration run scored pass/fail; an exponential search brackets the limit, then a binary
//! search narrows it.

use std::time::Duration;

use serde::Serialize;

use crate::error::LoadError;
use crate::histogram;
use crate::run::RunResult;
use crate::spec::{LoadSpec, Slo, Stop};
use crate::svg::{Chart, Series};

#[derive(Debug, Clone)]
pub struct SearchConfig {
    pub slo: Slo,
    pub max_error_rate: f64,
    pub start_rps: f64,
    pub max_rps: f64,
    pub step: Duration,
    /// Stop when the bracket [pass, fail] is narrower than this fraction of the pass rate.
    pub precision: f64,
    pub max_steps: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub phase: &'static str,
    pub rps: f64,
    pub achieved_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Latency at the SLO's percentile.
    pub slo_ms: f64,
    pub error_rate: f64,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Search {
    pub slo: String,
    pub max_error_rate: f64,
    pub steps: Vec<Step>,
    /// The highest rate that passed.
    pub max_rps: Option<f64>,
    /// The lowest rate that failed.
    pub first_fail_rps: Option<f64>,
}

pub fn score(r: &RunResult, rps: f64, phase: &'static str, cfg: &SearchConfig) -> Step {
    let h = &r.latency;
    let slo_us = histogram::at(h, cfg.slo.percentile);
    let error_rate = r.counters.error_rate();
    Step {
        phase,
        rps,
        achieved_rps: r.achieved_rps(),
        p50_ms: histogram::ms(histogram::at(h, 50.0)),
        p99_ms: histogram::ms(histogram::at(h, 99.0)),
        p999_ms: histogram::ms(histogram::at(h, 99.9)),
        slo_ms: histogram::ms(slo_us),
        error_rate,
        pass: !h.is_empty() && slo_us <= cfg.slo.max_us && error_rate <= cfg.max_error_rate,
    }
}

/// Runs the search; `run_step` performs one fixed-duration open-loop run of the given spec.
pub fn search(
    base: &LoadSpec,
    cfg: &SearchConfig,
    mut run_step: impl FnMut(&LoadSpec) -> Result<RunResult, LoadError>,
    mut on_step: impl FnMut(&Step),
) -> Result<Search, LoadError> {
    if !(cfg.start_rps > 0.0 && cfg.max_rps >= cfg.start_rps) {
        return Err(LoadError::BadInput("--start-rps must be > 0 and <= --max-rps".into()));
    }
    let mut steps = Vec::new();
    let mut probe = |rps: f64, phase: &'static str, steps: &mut Vec<Step>| -> Result<bool, LoadError> {
        let mut spec = base.clone();
        spec.rps = Some(rps);
        spec.stop = Stop::Duration(cfg.step);
        let r = run_step(&spec)?;
        let step = score(&r, rps, phase, cfg);
        on_step(&step);
        let pass = step.pass;
        steps.push(step);
        Ok(pass)
    };
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    // Exponential: double until a step fails (or halve until one passes).
    let mut rps = cfg.start_rps;
    while steps.len() < cfg.max_steps {
        if probe(rps, "exponential", &mut steps)? {
            lo = Some(rps);
            if hi.is_some() || rps >= cfg.max_rps {
                break;
            }
            rps = (rps * 2.0).min(cfg.max_rps);
        } else {
            hi = Some(rps);
            if lo.is_some() || rps <= 1.0 {
                break;
            }
            rps /= 2.0;
        }
    }
    // Binary: narrow [lo, hi] to the precision asked for.
    if let (Some(mut l), Some(mut h)) = (lo, hi) {
        while steps.len() < cfg.max_steps && (h - l) > cfg.precision * l {
            let mid = ((l + h) / 2.0).round().max(1.0);
            if mid <= l || mid >= h {
                break;
            }
            if probe(mid, "binary", &mut steps)? {
                l = mid;
            } else {
                h = mid;
            }
        }
        lo = Some(l);
        hi = Some(h);
    }
    Ok(Search {
        slo: format!("p{}<={}ms", cfg.slo.percentile, cfg.slo.max_us as f64 / 1000.0),
        max_error_rate: cfg.max_error_rate,
        steps,
        max_rps: lo,
        first_fail_rps: hi,
    })
}

pub fn table(s: &Search) -> String {
    let mut out = format!(
        "{:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}  {}\n",
        "phase", "rps", "achieved", "p50 ms", "p99 ms", "p99.9 ms", "errors", "SLO"
    );
    for st in &s.steps {
        out.push_str(&format!(
            "{:<12} {:>10.1} {:>10.1} {:>10.3} {:>10.3} {:>10.3} {:>7.3}%  {}\n",
            st.phase,
            st.rps,
            st.achieved_rps,
            st.p50_ms,
            st.p99_ms,
            st.p999_ms,
            st.error_rate * 100.0,
            if st.pass { "pass" } else { "FAIL" }
        ));
    }
    match s.max_rps {
        Some(m) => out.push_str(&format!(
            "highest rate meeting {} with errors <= {}%: {m:.1} req/s{}\n",
            s.slo,
            s.max_error_rate * 100.0,
            s.first_fail_rps.map(|f| format!(" (first failing rate: {f:.1})")).unwrap_or_default()
        )),
        None => out.push_str(&format!("no rate met {} (lowest tried failed)\n", s.slo)),
    }
    out
}

/// Latency against offered rate, with the SLO as a line.
pub fn svg(s: &Search, slo: &Slo) -> String {
    let mut steps: Vec<&Step> = s.steps.iter().collect();
    steps.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let line = |name: &str, f: fn(&Step) -> f64| Series {
        name: name.into(),
        points: steps.iter().map(|st| (st.rps, f(st))).collect(),
    };
    let max_x = steps.last().map_or(1.0, |s| s.rps);
    Chart {
        title: format!(
            "latency vs offered rate (max meeting {}: {})",
            s.slo,
            s.max_rps.map_or("none".into(), |m| format!("{m:.0} req/s"))
        ),
        x_label: "offered rate (req/s, open loop)".into(),
        y_label: "latency (ms)".into(),
        x_ticks: (0..=5).map(|i| (max_x * i as f64 / 5.0, format!("{:.0}", max_x * i as f64 / 5.0))).collect(),
        series: vec![line("p50", |s| s.p50_ms), line("p99", |s| s.p99_ms), line("p99.9", |s| s.p999_ms)],
        lines: vec![(
            format!("SLO p{} <= {} ms", slo.percentile, slo.max_us as f64 / 1000.0),
            slo.max_us as f64 / 1000.0,
        )],
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Counters;
    use crate::spec::{RequestSpec, Target};

    fn base() -> LoadSpec {
        LoadSpec {
            target: Target::parse("http://127.0.0.1:1/").unwrap(),
            request: RequestSpec { method: "GET".into(), headers: vec![], body: vec![] },
            http2: false,
            streams: 1,
            rps: None,
            connections: 4,
            threads: 1,
            stop: Stop::Duration(Duration::from_secs(1)),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(1),
            start_at_unix_ns: None,
            samples_file: None,
        }
    }

    /// A model server: 5 ms below capacity, queueing latency above it.
    fn model(capacity: f64) -> impl FnMut(&LoadSpec) -> Result<RunResult, LoadError> {
        move |spec| {
            let rps = spec.rps.unwrap();
            let mut h = histogram::new_latency();
            let lat = if rps <= capacity { 5_000 } else { 5_000 + ((rps - capacity) * 1000.0) as u64 };
            h.record_n(lat, 1000).unwrap();
            Ok(RunResult {
                spec: spec.clone(),
                workers: 1,
                start_unix_ns: 0,
                end_unix_ns: 0,
                window_s: 1.0,
                counters: Counters { responses: 1000, ..Counters::default() },
                latency: h,
            })
        }
    }

    #[test]
    fn converges_on_the_capacity() {
        let cfg = SearchConfig {
            slo: Slo::parse("p99<=10ms").unwrap(),
            max_error_rate: 0.001,
            start_rps: 10.0,
            max_rps: 1e6,
            step: Duration::from_secs(1),
            precision: 0.02,
            max_steps: 40,
        };
        // Passes while rps <= capacity + 5.
        let s = search(&base(), &cfg, model(730.0), |_| {}).unwrap();
        let max = s.max_rps.unwrap();
        assert!((max - 735.0).abs() / 735.0 <= 0.02, "{max}");
        assert!(s.steps.iter().any(|st| st.phase == "binary"));
        assert!(table(&s).contains("highest rate"));
        assert!(svg(&s, &cfg.slo).contains("<polyline"));
    }

    #[test]
    fn reports_when_nothing_passes() {
        let cfg = SearchConfig {
            slo: Slo::parse("p99<=1ms").unwrap(),
            max_error_rate: 0.0,
            start_rps: 8.0,
            max_rps: 100.0,
            step: Duration::from_secs(1),
            precision: 0.05,
            max_steps: 10,
        };
        let s = search(&base(), &cfg, model(1e9), |_| {}).unwrap();
        assert_eq!(s.max_rps, None);
    }
}
