//! The catalog's playground: the decision code of `patterns/` (the code the filters run) driven
//! by a simulated traffic shape on a simulated clock, summed per 100 ms. The browser runs it
//! compiled with wasm-bindgen (`simulate_json`); the tests run the same function natively and
//! compare. Everything is deterministic: arrivals are evenly spaced and failures come from a
//! seeded generator, so the same inputs always give the same series.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use serde::{Deserialize, Serialize};

mod sims;

/// One slider.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Param {
    pub id: &'static str,
    pub label: &'static str,
    pub min: f64,
    pub max: f64,
    pub step: f64,
    pub default: f64,
    pub unit: &'static str,
    /// Part of the traffic shape rather than of the pattern's configuration.
    pub traffic: bool,
}

const fn p(
    id: &'static str,
    label: &'static str,
    min: f64,
    max: f64,
    step: f64,
    default: f64,
    unit: &'static str,
) -> Param {
    Param { id, label, min, max, step, default, unit, traffic: false }
}

const fn t(
    id: &'static str,
    label: &'static str,
    min: f64,
    max: f64,
    step: f64,
    default: f64,
    unit: &'static str,
) -> Param {
    Param { id, label, min, max, step, default, unit, traffic: true }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Playground {
    pub name: &'static str,
    pub title: &'static str,
    /// The crate whose code decides.
    pub crate_name: &'static str,
    pub summary: &'static str,
    pub params: &'static [Param],
    /// Columns of the series, one line each in the chart.
    pub columns: &'static [&'static str],
    /// What the columns count (gauges are levels at the end of each 100 ms).
    pub legend: &'static str,
}

const TRAFFIC: [Param; 2] = [
    t("rate", "Requests per second", 1.0, 2000.0, 1.0, 100.0, "req/s"),
    t("seconds", "Duration", 1.0, 60.0, 1.0, 10.0, "s"),
];

pub const PLAYGROUNDS: [Playground; 4] = [
    Playground {
        name: "token-bucket",
        title: "Token bucket (local rate limiting)",
        crate_name: "meshwork-token-bucket",
        summary: "Requests take a token each; the bucket refills at the limit's rate and holds at most its burst. A spike in the middle of the run shows the limit at work.",
        params: &[
            TRAFFIC[0],
            TRAFFIC[1],
            t("spike", "Spike (× rate, middle third)", 1.0, 10.0, 0.5, 3.0, "×"),
            p("limit", "Tokens per period", 1.0, 2000.0, 1.0, 120.0, "tokens"),
            p("period_ms", "Period", 10.0, 10000.0, 10.0, 1000.0, "ms"),
            p("burst", "Burst (bucket size)", 1.0, 2000.0, 1.0, 20.0, "tokens"),
        ],
        columns: &["allowed", "denied", "tokens"],
        legend: "allowed and denied: requests per 100 ms; tokens: whole tokens left after the last request of each 100 ms.",
    },
    Playground {
        name: "circuit-breaker",
        title: "Circuit breaker",
        crate_name: "meshwork-circuit-breaker",
        summary: "An outage makes a share of requests fail; the breaker opens on consecutive failures or a failure ratio, rejects while open, and lets probes through after the cool-down.",
        params: &[
            TRAFFIC[0],
            TRAFFIC[1],
            t("failure_ratio", "Failure ratio during the outage", 0.0, 1.0, 0.05, 0.6, ""),
            t("outage_from", "Outage starts", 0.0, 60.0, 0.5, 2.0, "s"),
            t("outage_to", "Outage ends", 0.0, 60.0, 0.5, 6.0, "s"),
            t("latency_ms", "Upstream latency", 0.0, 2000.0, 1.0, 20.0, "ms"),
            t("seed", "Random seed", 1.0, 1000.0, 1.0, 1.0, ""),
            p("consecutive_failures", "Consecutive failures to open (0: off)", 0.0, 100.0, 1.0, 5.0, ""),
            p("ratio", "Failure ratio to open (0: off)", 0.0, 1.0, 0.05, 0.5, ""),
            p("min_requests", "Fewest requests for the ratio", 1.0, 1000.0, 1.0, 20.0, ""),
            p("window_ms", "Ratio window", 100.0, 60000.0, 100.0, 10000.0, "ms"),
            p("cool_down_ms", "Cool-down", 10.0, 60000.0, 10.0, 1000.0, "ms"),
            p("probes", "Half-open probes", 1.0, 20.0, 1.0, 2.0, ""),
        ],
        columns: &["allowed", "probes", "rejected", "failed", "phase"],
        legend: "allowed, probes (half-open), rejected and failed: requests per 100 ms; phase: 0 closed, 1 open, 2 half-open.",
    },
    Playground {
        name: "retry-budget",
        title: "Retry budget",
        crate_name: "meshwork-retry",
        summary: "Failed requests are retried while retries stay within a ratio of requests over the window, plus a floor per second; during an outage the budget keeps retries from multiplying the load.",
        params: &[
            TRAFFIC[0],
            TRAFFIC[1],
            t("failure_ratio", "Failure ratio during the outage", 0.0, 1.0, 0.05, 0.8, ""),
            t("outage_from", "Outage starts", 0.0, 60.0, 0.5, 3.0, "s"),
            t("outage_to", "Outage ends", 0.0, 60.0, 0.5, 7.0, "s"),
            t("baseline_failure_ratio", "Failure ratio otherwise", 0.0, 1.0, 0.01, 0.05, ""),
            t("seed", "Random seed", 1.0, 1000.0, 1.0, 1.0, ""),
            p("max_retries", "Retries per request", 0.0, 10.0, 1.0, 3.0, ""),
            p("budget_ratio", "Budget: retries per request", 0.0, 1.0, 0.01, 0.2, ""),
            p("min_per_second", "Budget floor per second", 0.0, 1000.0, 1.0, 10.0, "retries/s"),
            p("window_ms", "Budget window", 100.0, 60000.0, 100.0, 10000.0, "ms"),
        ],
        columns: &["requests", "retries", "denied", "failed"],
        legend: "requests, retries taken, retries the budget denied, and requests that failed in the end, per 100 ms.",
    },
    Playground {
        name: "bulkhead",
        title: "Bulkhead",
        crate_name: "meshwork-bulkhead",
        summary: "At most a number of requests in flight, a bounded queue behind them that times out; what does not fit is rejected at once.",
        params: &[
            TRAFFIC[0],
            TRAFFIC[1],
            t("latency_ms", "Upstream latency", 1.0, 5000.0, 1.0, 200.0, "ms"),
            t("slow_from", "Slowdown starts", 0.0, 60.0, 0.5, 3.0, "s"),
            t("slow_to", "Slowdown ends", 0.0, 60.0, 0.5, 6.0, "s"),
            t("slowdown", "Slowdown (× latency)", 1.0, 20.0, 0.5, 4.0, "×"),
            p("max_concurrent", "Most in flight", 1.0, 1000.0, 1.0, 30.0, ""),
            p("max_queued", "Most queued", 0.0, 1000.0, 1.0, 10.0, ""),
            p("queue_timeout_ms", "Queue timeout", 1.0, 10000.0, 1.0, 100.0, "ms"),
        ],
        columns: &["admitted", "promoted", "rejected", "timed_out", "in_flight"],
        legend: "admitted at once, promoted from the queue, rejected, timed out in the queue: per 100 ms; in_flight: requests in flight at the end of each 100 ms.",
    },
];

/// Decisions summed per bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Series {
    pub playground: String,
    pub bucket_ms: u64,
    pub columns: Vec<String>,
    /// One row per bucket, one value per column.
    pub rows: Vec<Vec<u64>>,
    /// Sums over the run (for gauges such as `tokens`, the last value).
    pub totals: BTreeMap<String, u64>,
}

pub const BUCKET_MS: u64 = 100;
const MS: u64 = 1_000_000;

/// The parameters with defaults filled in and values clamped to each slider's range.
pub fn resolve(pg: &Playground, given: &BTreeMap<String, f64>) -> Result<BTreeMap<String, f64>, String> {
    if let Some(unknown) = given.keys().find(|k| !pg.params.iter().any(|p| p.id == k.as_str())) {
        return Err(format!("{}: unknown parameter {unknown:?}", pg.name));
    }
    Ok(pg
        .params
        .iter()
        .map(|p| {
            let v = given.get(p.id).copied().filter(|v| v.is_finite()).unwrap_or(p.default);
            (p.id.to_owned(), v.clamp(p.min, p.max))
        })
        .collect())
}

pub fn simulate(name: &str, given: &BTreeMap<String, f64>) -> Result<Series, String> {
    let pg = PLAYGROUNDS.iter().find(|p| p.name == name).ok_or_else(|| format!("no playground {name:?}"))?;
    let params = resolve(pg, given)?;
    let seconds = params["seconds"] as u64;
    let mut table = Table::new(pg, seconds * 1000 / BUCKET_MS);
    match pg.name {
        "token-bucket" => sims::token_bucket(&params, &mut table),
        "circuit-breaker" => sims::circuit_breaker(&params, &mut table),
        "retry-budget" => sims::retry_budget(&params, &mut table),
        "bulkhead" => sims::bulkhead(&params, &mut table),
        _ => unreachable!("every playground has a simulation"),
    }
    Ok(table.finish(pg))
}

/// `simulate` with JSON in and out, the browser's entry point.
pub fn simulate_json_str(name: &str, params_json: &str) -> Result<String, String> {
    let given: BTreeMap<String, f64> = serde_json::from_str(params_json).map_err(|e| format!("parameters: {e}"))?;
    let series = simulate(name, &given)?;
    serde_json::to_string(&series).map_err(|e| e.to_string())
}

#[cfg(target_arch = "wasm32")]
mod web {
    use wasm_bindgen::prelude::*;

    /// The series for a playground and its parameters (JSON objects in and out).
    #[wasm_bindgen]
    pub fn simulate_json(name: &str, params_json: &str) -> Result<String, JsError> {
        super::simulate_json_str(name, params_json).map_err(|e| JsError::new(&e))
    }

    /// The playgrounds and their sliders, as JSON.
    #[wasm_bindgen]
    pub fn playgrounds_json() -> String {
        serde_json::to_string(&super::PLAYGROUNDS).unwrap_or_default()
    }
}

/// Counts per bucket while a simulation runs.
pub(crate) struct Table {
    rows: Vec<Vec<u64>>,
    /// Columns that are gauges (a level at the bucket's end), not counts.
    gauges: Vec<bool>,
    pub(crate) end_ns: u64,
}

impl Table {
    fn new(pg: &Playground, buckets: u64) -> Table {
        let gauges = pg.columns.iter().map(|c| matches!(*c, "tokens" | "phase" | "in_flight")).collect();
        Table {
            rows: vec![vec![0; pg.columns.len()]; buckets.max(1) as usize],
            gauges,
            end_ns: buckets * BUCKET_MS * MS,
        }
    }

    fn bucket(&self, at_ns: u64) -> usize {
        ((at_ns / (BUCKET_MS * MS)) as usize).min(self.rows.len() - 1)
    }

    pub(crate) fn count(&mut self, at_ns: u64, column: usize) {
        let b = self.bucket(at_ns);
        self.rows[b][column] += 1;
    }

    /// A gauge's level from `at_ns` on (later buckets keep it until set again).
    pub(crate) fn level(&mut self, at_ns: u64, column: usize, value: u64) {
        let b = self.bucket(at_ns);
        for row in &mut self.rows[b..] {
            row[column] = value;
        }
    }

    fn finish(self, pg: &Playground) -> Series {
        let totals = pg
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let v = if self.gauges[i] {
                    self.rows.last().map(|r| r[i]).unwrap_or(0)
                } else {
                    self.rows.iter().map(|r| r[i]).sum()
                };
                ((*c).to_owned(), v)
            })
            .collect();
        Series {
            playground: pg.name.to_owned(),
            bucket_ms: BUCKET_MS,
            columns: pg.columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: self.rows,
            totals,
        }
    }
}

/// Evenly spaced arrivals at `rate` per second (times `factor` between `from` and `to`).
pub(crate) fn arrivals(rate: f64, end_ns: u64, spike: Option<(u64, u64, f64)>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = 0f64;
    while (at as u64) < end_ns {
        out.push(at as u64);
        let r = match spike {
            Some((from, to, factor)) if (at as u64) >= from && (at as u64) < to => rate * factor,
            _ => rate,
        };
        at += 1e9 / r;
    }
    out
}

/// xorshift64*: a small, fast, seeded generator (Vigna 2014), the same on every platform.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A min-heap of timed events.
pub(crate) type Events<T> = BinaryHeap<Reverse<(u64, T)>>;
pub(crate) type Queue = VecDeque<u64>;

#[cfg(test)]
mod tests;
