//! One simulation per playground; each asks the pattern crate for every decision.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use meshwork_bulkhead::{Acquire, Bulkhead, Config as BulkheadConfig};
use meshwork_circuit_breaker::{Admission, Breaker, Config as BreakerConfig, FailureRatio, Phase};
use meshwork_retry::{Budget, BudgetConfig};
use meshwork_token_bucket::{Limit, State};

use crate::{Events, Queue, Rng, Table, arrivals};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

type Params = BTreeMap<String, f64>;

fn ns_of_seconds(p: &Params, key: &str) -> u64 {
    (p[key] * S as f64) as u64
}

fn ms(p: &Params, key: &str) -> u64 {
    (p[key] * MS as f64) as u64
}

fn int(p: &Params, key: &str) -> u64 {
    p[key].round() as u64
}

pub(crate) fn token_bucket(p: &Params, table: &mut Table) {
    let third = table.end_ns / 3;
    let limit =
        Limit::new(int(p, "limit"), ms(p, "period_ms"), int(p, "burst")).expect("the sliders' ranges are valid limits");
    let mut state = State::full(&limit, 0);
    table.level(0, 2, limit.burst);
    for at in arrivals(p["rate"], table.end_ns, Some((third, 2 * third, p["spike"]))) {
        let d = state.take(&limit, at, 1);
        table.count(at, if d.allowed { 0 } else { 1 });
        table.level(at, 2, d.remaining);
    }
}

pub(crate) fn circuit_breaker(p: &Params, table: &mut Table) {
    let ratio = p["ratio"];
    let config = BreakerConfig {
        consecutive_failures: int(p, "consecutive_failures") as u32,
        failure_ratio: (ratio > 0.0).then(|| FailureRatio {
            per_mille: ((ratio * 1000.0).round() as u32).clamp(1, 1000),
            min_requests: int(p, "min_requests") as u32,
            window_ns: ms(p, "window_ms"),
        }),
        cool_down_ns: ms(p, "cool_down_ms"),
        probes: int(p, "probes") as u16,
    };
    // A configuration the filter would refuse opens nothing: every request passes.
    let valid = config.validate().is_ok();
    let (from, to) = (ns_of_seconds(p, "outage_from"), ns_of_seconds(p, "outage_to"));
    let latency = ms(p, "latency_ms");
    let mut rng = Rng::new(int(p, "seed"));
    let mut breaker = Breaker::new(0);
    // Outcomes arrive `latency` after their request: (when, probe round + 1 or 0, failed).
    let mut pending: Events<(u64, bool)> = Events::new();
    let phase_code = |b: &Breaker| match b.phase {
        Phase::Closed => 0,
        Phase::Open => 1,
        Phase::HalfOpen => 2,
    };
    let settle = |until: u64, breaker: &mut Breaker, pending: &mut Events<(u64, bool)>, table: &mut Table| {
        while let Some(Reverse((when, (round, failed)))) = pending.peek().copied() {
            if when > until {
                break;
            }
            pending.pop();
            if valid {
                breaker.record(&config, when, round.checked_sub(1), failed);
            }
            table.level(when, 4, phase_code(breaker));
        }
    };
    for at in arrivals(p["rate"], table.end_ns, None) {
        settle(at, &mut breaker, &mut pending, table);
        let admission = if valid { breaker.admit(&config, at) } else { Admission::Allow };
        let round = match admission {
            Admission::Allow => {
                table.count(at, 0);
                0
            }
            Admission::Probe { round } => {
                table.count(at, 1);
                round + 1
            }
            Admission::Reject { .. } => {
                table.count(at, 2);
                table.level(at, 4, phase_code(&breaker));
                continue;
            }
        };
        let failed = at >= from && at < to && rng.next_f64() < p["failure_ratio"];
        if failed {
            table.count(at, 3);
        }
        pending.push(Reverse((at + latency, (round, failed))));
        table.level(at, 4, phase_code(&breaker));
    }
    settle(table.end_ns, &mut breaker, &mut pending, table);
}

pub(crate) fn retry_budget(p: &Params, table: &mut Table) {
    let config = BudgetConfig {
        per_mille: (p["budget_ratio"] * 1000.0).round() as u32,
        min_per_second: int(p, "min_per_second") as u32,
        window_ns: ms(p, "window_ms"),
    };
    let (from, to) = (ns_of_seconds(p, "outage_from"), ns_of_seconds(p, "outage_to"));
    let max_retries = int(p, "max_retries");
    let mut rng = Rng::new(int(p, "seed"));
    let mut budget = Budget::new(0);
    for at in arrivals(p["rate"], table.end_ns, None) {
        let ratio = if at >= from && at < to { p["failure_ratio"] } else { p["baseline_failure_ratio"] };
        table.count(at, 0);
        budget.record_request(&config, at);
        let mut failed = rng.next_f64() < ratio;
        let mut tries = 0;
        while failed && tries < max_retries {
            if !budget.try_retry(&config, at) {
                table.count(at, 2);
                break;
            }
            tries += 1;
            table.count(at, 1);
            failed = rng.next_f64() < ratio;
        }
        if failed {
            table.count(at, 3);
        }
    }
}

pub(crate) fn bulkhead(p: &Params, table: &mut Table) {
    const HOLDER: u32 = 1;
    let config =
        BulkheadConfig { max_concurrent: int(p, "max_concurrent") as u32, max_queued: int(p, "max_queued") as u32 };
    let (slow_from, slow_to) = (ns_of_seconds(p, "slow_from"), ns_of_seconds(p, "slow_to"));
    let latency = |at: u64| {
        let base = p["latency_ms"] * MS as f64;
        (if at >= slow_from && at < slow_to { base * p["slowdown"] } else { base }) as u64
    };
    let queue_timeout = ms(p, "queue_timeout_ms");
    let mut bulkhead = Bulkhead::default();
    let mut completions: Events<()> = Events::new();
    // Queued requests' deadlines, first come first served.
    let mut queue = Queue::new();
    let run_until = |until: u64,
                     bulkhead: &mut Bulkhead,
                     completions: &mut Events<()>,
                     queue: &mut Queue,
                     table: &mut Table| loop {
        let done = completions.peek().map(|Reverse((t, ()))| *t);
        let expiry = queue.front().copied();
        let next = match (done, expiry) {
            (Some(d), Some(e)) => d.min(e),
            (Some(d), None) => d,
            (None, Some(e)) => e,
            (None, None) => break,
        };
        if next > until {
            break;
        }
        if done == Some(next) {
            completions.pop();
            bulkhead.release(HOLDER);
            while !queue.is_empty() && bulkhead.promote(&config, HOLDER) {
                queue.pop_front();
                table.count(next, 1);
                completions.push(Reverse((next + latency(next), ())));
            }
        } else {
            queue.pop_front();
            bulkhead.leave_queue(HOLDER);
            table.count(next, 3);
        }
        table.level(next, 4, bulkhead.in_flight() as u64);
    };
    for at in arrivals(p["rate"], table.end_ns, None) {
        run_until(at, &mut bulkhead, &mut completions, &mut queue, table);
        match bulkhead.acquire(&config, HOLDER) {
            Acquire::Admitted => {
                table.count(at, 0);
                completions.push(Reverse((at + latency(at), ())));
            }
            Acquire::Queued => queue.push_back(at + queue_timeout),
            Acquire::Rejected => table.count(at, 2),
        }
        table.level(at, 4, bulkhead.in_flight() as u64);
    }
    run_until(table.end_ns, &mut bulkhead, &mut completions, &mut queue, table);
}
