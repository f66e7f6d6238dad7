//! The circuit-breaker filter through `meshwork run` with two workers against the sample app:
//! the app's counters prove exactly how many requests reached it.

use std::time::{Duration, Instant};

use meshwork_e2e::*;

fn breaker_proxy(up: &Upstream, route: &str, config: &str, more_filters: &str) -> Proxy {
    proxy(&format!(
        "workers: 2\nclusters: [{}]\nroute: {route}\nfilters:\n  - name: cb\n    module: {}\n    configuration: {config}\n{more_filters}",
        cluster("app", up),
        wasm("circuit-breaker").display()
    ))
}

fn circuit(r: &Reply) -> Option<&str> {
    r.header("x-meshwork-circuit")
}

#[test]
fn opens_after_exactly_n_failures_across_workers_and_half_opens_on_time() {
    let up = upstream("app");
    let p =
        breaker_proxy(&up, "{cluster: app}", "{consecutive_failures: 5, cool_down: 1500ms, half_open_probes: 2}", "");
    for _ in 0..5 {
        let r = get(&p.url("/x?status=503"), &[]);
        assert_eq!((r.status, circuit(&r)), (503, None), "failures from the upstream pass through");
    }
    let opened = Instant::now();
    for _ in 0..10 {
        let r = get(&p.url("/x"), &[]);
        assert_eq!((r.status, circuit(&r)), (503, Some("open")));
        assert_eq!(r.header("x-meshwork-circuit-reason"), Some("consecutive-failures"));
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(up.requests(), 5, "opened on exactly the 5th failure, whichever worker saw it");
    assert!(opened.elapsed() < Duration::from_millis(1500), "the checks above ran within the cool-down");

    // After the cool-down, at most two probes go through at once.
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(opened.elapsed()));
    let results = storm(3, 3, &p.url("/probe?delay=400ms"), &[]);
    let statuses: Vec<(u16, Option<String>)> =
        results.iter().map(|r| r.as_ref().unwrap()).map(|r| (r.status, circuit(r).map(str::to_owned))).collect();
    assert_eq!(statuses.iter().filter(|s| s.0 == 200).count(), 2, "{statuses:?}");
    assert!(statuses.contains(&(503, Some("half-open".into()))), "{statuses:?}");
    assert_eq!(up.stats()["by_path"]["/probe"], 2);

    // Both probes succeeded: closed again.
    for _ in 0..6 {
        assert_eq!(get(&p.url("/after"), &[]).status, 200);
    }
    let transitions = |to| p.stat_sum("meshwork_circuit_breaker_transitions_total", &[("to", to)]);
    assert_eq!((transitions("open"), transitions("half_open"), transitions("closed")), (1, 1, 1));
    assert_eq!(p.stat_sum("meshwork_circuit_breaker_requests_total", &[("outcome", "rejected")]), 11);
}

#[test]
fn a_failed_probe_opens_the_circuit_again() {
    let up = upstream("app");
    let p = breaker_proxy(&up, "{cluster: app}", "{consecutive_failures: 3, cool_down: 300ms}", "");
    for _ in 0..3 {
        get(&p.url("/x?status=500"), &[]);
    }
    assert_eq!(circuit(&get(&p.url("/x"), &[])), Some("open"));
    std::thread::sleep(Duration::from_millis(350));
    let probe = get(&p.url("/x?status=502"), &[]);
    assert_eq!((probe.status, circuit(&probe)), (502, None), "the probe reached the upstream");
    let r = get(&p.url("/x"), &[]);
    assert_eq!((circuit(&r), r.header("x-meshwork-circuit-reason")), (Some("open"), Some("probe-failed")));
    assert_eq!(up.requests(), 4);
}

#[test]
fn a_failure_ratio_opens_it_once_the_minimum_is_reached() {
    let up = upstream("app");
    let p = breaker_proxy(
        &up,
        "{cluster: app}",
        "{consecutive_failures: 0, failure_ratio: {threshold: 0.5, min_requests: 10, window: 20s}}",
        "",
    );
    for i in 0..9 {
        let status = if i % 2 == 0 { 500 } else { 200 }; // 5 failures of 9: under the minimum
        assert_eq!(get(&p.url(&format!("/x?status={status}")), &[]).status, status);
    }
    assert_eq!(get(&p.url("/x"), &[]).status, 200, "the 10th request: 5 failures of 10");
    let r = get(&p.url("/x"), &[]);
    assert_eq!((circuit(&r), r.header("x-meshwork-circuit-reason")), (Some("open"), Some("failure-ratio")));
    assert_eq!(up.requests(), 10);
}

#[test]
fn router_timeouts_and_connect_failures_count_but_local_replies_do_not() {
    let up = upstream("app");
    let config = "{consecutive_failures: 3, cool_down: 1m}";
    let p = breaker_proxy(&up, "{cluster: app, timeout: 150ms}", config, "");
    for _ in 0..3 {
        assert_eq!(get(&p.url("/slow?delay=2s"), &[]).status, 504);
    }
    assert_eq!(circuit(&get(&p.url("/x"), &[])), Some("open"), "three route timeouts open it");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let p = proxy(&format!(
        "clusters: [{{name: gone, endpoints: [\"{closed}\"]}}]\nroute: {{cluster: gone}}\nfilters:\n  - {{name: cb, module: {}, configuration: {config}}}\n",
        wasm("circuit-breaker").display()
    ));
    for _ in 0..3 {
        let r = get(&p.url("/x"), &[]);
        assert_eq!((r.status, circuit(&r)), (503, None));
    }
    assert_eq!(circuit(&get(&p.url("/x"), &[])), Some("open"), "three connect failures open it");

    // A rate limiter after the breaker answers 503 itself: those are not the upstream's failures.
    let rl = format!(
        "  - {{name: rl, module: {}, configuration: {{rate: 1, period: 1h, burst: 2, status: 503}}}}\n",
        wasm("local-rate-limit").display()
    );
    let p = breaker_proxy(&up, "{cluster: app}", config, &rl);
    let statuses: Vec<u16> = (0..8).map(|_| get(&p.url("/limited"), &[]).status).collect();
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503, 503, 503]);
    assert_eq!(p.stat_sum("meshwork_circuit_breaker_requests_total", &[("outcome", "rejected")]), 0);
    assert_eq!(p.stat_sum("meshwork_circuit_breaker_transitions_total", &[("to", "open")]), 0);
}

#[test]
fn each_key_has_its_own_circuit() {
    let up = upstream("app");
    let p =
        breaker_proxy(&up, "{cluster: app}", "{key: {header: x-tenant}, consecutive_failures: 2, cool_down: 1m}", "");
    for _ in 0..2 {
        get(&p.url("/x?status=503"), &[("x-tenant", "a")]);
    }
    assert_eq!(circuit(&get(&p.url("/x"), &[("x-tenant", "a")])), Some("open"));
    let b = get(&p.url("/x"), &[("x-tenant", "b")]);
    assert_eq!((b.status, circuit(&b)), (200, None), "tenant b is unaffected");
    assert_eq!(get(&p.url("/x"), &[]).status, 200, "requests without the header share the key -");
}

#[test]
fn bad_configuration_is_refused_with_the_reason() {
    let up = upstream("app");
    for (config, message) in [
        ("{consecutive_failures: 0}", "set consecutive_failures above 0"),
        ("{failure_ratio: {threshold: 1.5}}", "threshold 1.5 must be above 0"),
        ("{half_open_probes: 0}", "half_open_probes must be at least 1"),
        ("{failure_on: [teapot]}", "unknown variant `teapot`"),
    ] {
        let err = try_proxy(&format!(
            "clusters: [{}]\nroute: {{cluster: app}}\nfilters: [{{name: cb, module: {}, configuration: {config}}}]\n",
            cluster("app", &up),
            wasm("circuit-breaker").display()
        ))
        .err()
        .expect("refused");
        assert!(err.contains(message), "{config}: {err}");
    }
}
