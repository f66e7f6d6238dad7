//! The retry filter through `meshwork run` against the sample app, whose per-key counters prove
//! exactly how many tries reached it. Callout mode sends tries itself; envoy mode leaves them to
//! the router (meshwork's honours Envoy's retry headers).

use std::time::{Duration, Instant};

use meshwork_e2e::*;

fn retry_proxy(up: &Upstream, config: &str) -> Proxy {
    proxy(&format!(
        "workers: 2\nclusters: [{}]\nroute: {{cluster: app}}\nfilters:\n  - name: retry\n    module: {}\n    allow_on_headers_stop_iteration: true\n    configuration: {config}\n",
        cluster("app", up),
        wasm("retry").display()
    ))
}

fn tries(up: &Upstream, key: &str) -> u64 {
    up.stats()["by_key"][key].as_u64().unwrap_or(0)
}

const FAST: &str = "backoff: {base: 2ms, max: 10ms}";

#[test]
fn callout_mode_retries_until_the_upstream_recovers() {
    let up = upstream("app");
    let p = retry_proxy(&up, &format!("{{max_retries: 3, {FAST}}}"));
    let r = get(&p.url("/r?status=503&fail_first=2&key=recovers"), &[]);
    assert_eq!((r.status, r.header("x-meshwork-attempts")), (200, Some("3")));
    assert_eq!(r.echoed("x-meshwork-attempt").as_deref(), Some("3"), "the upstream sees which try it is");
    assert_eq!(tries(&up, "recovers"), 3);

    let r = get(&p.url("/r?status=500&key=down"), &[]);
    assert_eq!((r.status, r.header("x-meshwork-attempts")), (500, Some("4")), "max_retries + 1 tries");
    assert_eq!(tries(&up, "down"), 4);

    let r = get(&p.url("/r?status=404&key=notfound"), &[]);
    assert_eq!((r.status, tries(&up, "notfound")), (404, 1), "404 is not retried");

    let r = get(&p.url("/r?reset=1&fail_first=1&key=reset"), &[]);
    assert_eq!((r.status, r.header("x-meshwork-attempts"), tries(&up, "reset")), (200, Some("2"), 2));
    assert_eq!(p.stat_sum("meshwork_retry_retries_total", &[]), 2 + 3 + 1);
}

#[test]
fn only_idempotent_methods_are_retried_unless_configured() {
    let up = upstream("app");
    let p = retry_proxy(&up, &format!("{{{FAST}}}"));
    let r = post(&p.url("/r?status=503&fail_first=1&key=post"), &[], b"order");
    assert_eq!((r.status, r.header("x-meshwork-attempts"), tries(&up, "post")), (503, None, 1));
    let r = post(&p.url("/r?status=503&fail_first=1&key=put"), &[("x-http-method-override", "x")], b"x");
    assert_eq!(r.status, 503);

    // By default requests with a body go on untouched: that works in every host.
    let p = retry_proxy(&up, &format!("{{retriable_methods: all, {FAST}}}"));
    let r = post(&p.url("/r?status=503&fail_first=1&key=passed"), &[], b"body");
    assert_eq!((r.status, r.header("x-meshwork-attempts"), tries(&up, "passed")), (503, None, 1));

    // Held, the whole body is replayed on each try.
    let p = retry_proxy(&up, &format!("{{retriable_methods: all, request_bodies: hold, {FAST}}}"));
    let body = vec![b'b'; 300_000];
    let r = post(&p.url("/r?status=503&fail_first=1&key=post-all"), &[], &body);
    assert_eq!((r.status, r.header("x-meshwork-attempts")), (200, Some("2")));
    assert_eq!(r.json()["body_bytes"], 300_000, "the whole body is replayed");
    assert_eq!(tries(&up, "post-all"), 2);
    // Over max_body_bytes it goes on untouched, body and all.
    let p =
        retry_proxy(&up, &format!("{{retriable_methods: all, request_bodies: hold, max_body_bytes: 1000, {FAST}}}"));
    let r = post(&p.url("/r?status=503&fail_first=1&key=big"), &[], &body);
    assert_eq!((r.status, r.header("x-meshwork-attempts"), tries(&up, "big")), (503, None, 1));
    assert_eq!(r.json()["body_bytes"], 300_000, "the upstream got the whole body");
}

#[test]
fn a_slow_try_is_abandoned_after_the_per_try_timeout() {
    let up = upstream("app");
    let p = retry_proxy(&up, &format!("{{per_try_timeout: 200ms, timeout: 5s, {FAST}}}"));
    let started = Instant::now();
    let r = get(&p.url("/r?delay=3s&fail_first=1&key=slow"), &[]);
    assert_eq!((r.status, r.header("x-meshwork-attempts")), (200, Some("2")));
    assert!(started.elapsed().as_secs_f64() < 2.5, "the first try was not waited out");
    // The overall timeout bounds every try and wait together.
    let p = retry_proxy(&up, &format!("{{max_retries: 10, per_try_timeout: 100ms, timeout: 350ms, {FAST}}}"));
    let started = Instant::now();
    let r = get(&p.url("/r?delay=3s&key=always-slow"), &[]);
    assert_eq!(r.status, 504);
    assert!(started.elapsed().as_secs_f64() < 2.0);
    assert!(tries(&up, "always-slow") <= 4);
}

#[test]
fn the_budget_caps_retries_at_its_ratio_plus_the_floor_across_workers() {
    let up = upstream("app");
    let n = 40;
    let p = retry_proxy(&up, &format!("{{max_retries: 2, budget: {{ratio: 0.1, min_per_second: 1}}, {FAST}}}"));
    let started = Instant::now();
    let results = storm(n, 4, &p.url("/r?status=503&key=budget"), &[]);
    let seconds = started.elapsed().as_secs() + 1;
    let exhausted =
        results.iter().filter(|r| r.as_ref().unwrap().header("x-meshwork-retry-budget") == Some("exhausted")).count();
    let retries = tries(&up, "budget") - n as u64;
    assert!(retries <= n as u64 / 10 + seconds, "{retries} retries for {n} requests in {seconds} s");
    assert!(retries >= 1, "the floor allows at least one");
    assert!(exhausted > 0);
    assert_eq!(p.stat_sum("meshwork_retry_budget_exhausted_total", &[]), exhausted as i64);

    // Without a budget every request takes all its retries.
    let p = retry_proxy(&up, &format!("{{max_retries: 2, budget: null, {FAST}}}"));
    storm(n, 4, &p.url("/r?status=503&key=unbudgeted"), &[]);
    assert_eq!(tries(&up, "unbudgeted"), 3 * n as u64);
}

#[test]
fn envoy_mode_leaves_the_retries_to_the_router() {
    let up = upstream("app");
    let p = retry_proxy(&up, "{mode: envoy, max_retries: 3, retry_on: [5xx], per_try_timeout: 1s}");
    let r = get(&p.url("/r?status=503&fail_first=2&key=native"), &[]);
    assert_eq!((r.status, r.header("x-meshwork-attempts")), (200, Some("3")));
    assert_eq!(r.echoed("x-envoy-attempt-count").as_deref(), Some("3"));
    assert_eq!(tries(&up, "native"), 3);
    // The filter owns the policy: a client's own retry headers are replaced.
    let r = get(&p.url("/r?status=503&key=greedy"), &[("x-envoy-max-retries", "9")]);
    assert_eq!((r.status, r.header("x-meshwork-attempts"), tries(&up, "greedy")), (503, Some("4"), 4));
    let r = post(&p.url("/r?status=503&key=post"), &[("x-envoy-retry-on", "5xx")], b"x");
    assert_eq!((r.status, tries(&up, "post")), (503, 1), "POST is not retried, whatever the client asks");

    // The budget decides before each request: with room for two retries a second, the third
    // failing request goes without. A worker decides on the budget as it last read it (at most
    // 10 ms old), so the requests are spaced for each to see the retries before it, whichever
    // worker made them.
    let p = retry_proxy(&up, "{mode: envoy, max_retries: 1, budget: {ratio: 0, min_per_second: 2, window: 10s}}");
    let started = Instant::now();
    let statuses: Vec<u16> = (0..3)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(25));
            get(&p.url(&format!("/r?status=503&fail_first=1&key=b{i}")), &[]).status
        })
        .collect();
    if started.elapsed().as_millis() < 900 {
        assert_eq!(statuses, [200, 200, 503]);
        assert_eq!(p.stat_sum("meshwork_retry_budget_exhausted_total", &[]), 1);
    }
}

#[test]
fn bad_configuration_is_refused_with_the_reason() {
    let up = upstream("app");
    for (config, message) in [
        ("{max_retries: 50}", "max_retries 50 is more than 10"),
        ("{retry_on: [sometimes]}", "unknown variant `sometimes`"),
        ("{budget: {ratio: -1}}", "budget.ratio -1 must be between 0 and 10"),
        ("{mode: maybe}", "unknown variant `maybe`"),
        ("{retriable_statuses: [99]}", "99 is not an HTTP status code"),
    ] {
        let err = try_proxy(&format!(
            "clusters: [{}]\nroute: {{cluster: app}}\nfilters: [{{name: r, module: {}, configuration: {config}}}]\n",
            cluster("app", &up),
            wasm("retry").display()
        ))
        .err()
        .expect("refused");
        assert!(err.contains(message), "{config}: {err}");
    }
}
