use super::*;

fn run(name: &str, params: &[(&str, f64)]) -> Series {
    let given = params.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    simulate(name, &given).unwrap()
}

fn column(s: &Series, name: &str) -> Vec<u64> {
    let i = s.columns.iter().position(|c| c == name).unwrap();
    s.rows.iter().map(|r| r[i]).collect()
}

#[test]
fn the_token_bucket_never_allows_more_than_burst_plus_refill() {
    let s = run("token-bucket", &[("rate", 500.0), ("limit", 100.0), ("burst", 20.0), ("seconds", 10.0)]);
    assert_eq!(s.rows.len(), 100);
    assert!(s.totals["allowed"] <= 20 + 100 * 10, "{:?}", s.totals);
    assert!(s.totals["denied"] > 0);
    // Under the limit, nothing is denied.
    let calm = run("token-bucket", &[("rate", 50.0), ("spike", 1.0), ("limit", 100.0)]);
    assert_eq!(calm.totals["denied"], 0);
    assert_eq!(calm.totals["allowed"], 500);
}

#[test]
fn the_breaker_opens_during_the_outage_only_and_closes_after() {
    let s =
        run("circuit-breaker", &[("outage_from", 2.0), ("outage_to", 5.0), ("failure_ratio", 0.9), ("seconds", 10.0)]);
    let rejected = column(&s, "rejected");
    assert_eq!(rejected[..20].iter().sum::<u64>(), 0, "healthy before the outage");
    assert!(rejected[20..50].iter().sum::<u64>() > 0, "opens during it");
    assert!(s.totals["probes"] > 0, "probes after cool-downs");
    assert_eq!(*column(&s, "phase").last().unwrap(), 0, "closed again at the end");
    assert_eq!(s.totals["allowed"] + s.totals["probes"] + s.totals["rejected"], 1000);
}

#[test]
fn retries_stay_within_the_budget() {
    let (rate, seconds, ratio, floor) = (200.0, 10.0, 0.2, 10.0);
    let s = run(
        "retry-budget",
        &[
            ("rate", rate),
            ("seconds", seconds),
            ("budget_ratio", ratio),
            ("min_per_second", floor),
            ("failure_ratio", 1.0),
        ],
    );
    let bound = (ratio * s.totals["requests"] as f64) as u64 + (floor * seconds) as u64;
    assert!(s.totals["retries"] <= bound, "{:?} > {bound}", s.totals);
    assert!(s.totals["denied"] > 0, "the outage exhausts it");
    let unlimited = run("retry-budget", &[("budget_ratio", 1.0), ("min_per_second", 1000.0), ("failure_ratio", 1.0)]);
    assert_eq!(unlimited.totals["denied"], 0);
}

#[test]
fn the_bulkhead_caps_in_flight_and_accounts_for_every_request() {
    let s = run("bulkhead", &[("rate", 300.0), ("latency_ms", 200.0), ("max_concurrent", 30.0), ("max_queued", 10.0)]);
    assert!(column(&s, "in_flight").iter().all(|&n| n <= 30));
    let t = &s.totals;
    let arrived = 300 * 10;
    assert!(t["admitted"] + t["rejected"] + t["promoted"] + t["timed_out"] <= arrived + 10);
    assert!(t["admitted"] + t["rejected"] + t["promoted"] + t["timed_out"] >= arrived - 10);
    assert!(t["rejected"] > 0 && t["promoted"] > 0);
}

#[test]
fn same_inputs_same_series_and_bad_inputs_are_named() {
    let a = simulate_json_str("circuit-breaker", r#"{"seed": 7}"#).unwrap();
    let b = simulate_json_str("circuit-breaker", r#"{"seed": 7}"#).unwrap();
    assert_eq!(a, b);
    assert!(simulate_json_str("circuit-breaker", r#"{"sede": 7}"#).unwrap_err().contains("sede"));
    assert!(simulate_json_str("nope", "{}").unwrap_err().contains("nope"));
    // Out-of-range values are clamped to the slider.
    let clamped = run("token-bucket", &[("rate", 1e9)]);
    assert_eq!(clamped, run("token-bucket", &[("rate", 2000.0)]));
}
