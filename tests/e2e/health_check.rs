//! The health-check filter through `meshwork run`: two sample apps as two clusters, stopped and
//! started again under the proxy, with active probes steering traffic, fail-fast when nothing
//! is healthy, and passive ejection from what requests see.

use std::time::{Duration, Instant};

use meshwork_e2e::*;

const WAIT: Duration = Duration::from_secs(15);

const ACTIVE: &str =
    "active: {path: /healthz, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 3}";

/// Two workers, clusters `a` and `b`, and the filter with `configuration` (YAML flow mapping
/// contents) in front of `route`.
fn checked(a: &Upstream, b_addr: std::net::SocketAddr, route: &str, configuration: &str) -> Proxy {
    proxy(&format!(
        "workers: 2\nclusters: [{}, {{name: b, endpoints: [\"{b_addr}\"]}}]\nroute: {route}\nfilters:\n  - name: health\n    module: {}\n    configuration: {{targets: [{{cluster: a}}, {{cluster: b}}], {configuration}}}\n",
        cluster("a", a),
        wasm("health-check").display()
    ))
}

fn gauge(p: &Proxy, name: &str, target: &str) -> Option<i64> {
    p.stat(name, &[("plugin", "health"), ("target", target)])
}

/// Waits until `target`'s healthy gauge reads `value`.
fn healthy_becomes(p: &Proxy, target: &str, value: i64) -> bool {
    eventually(WAIT, || (gauge(p, "meshwork_health_check_healthy", target) == Some(value)).then_some(())).is_some()
}

fn probes(p: &Proxy, target: &str, result: &str) -> i64 {
    p.stat_sum("meshwork_health_check_probes_total", &[("target", target), ("result", result)])
}

/// Which upstream answered each of `n` sequential requests (`None` for a failure).
fn answers(p: &Proxy, n: usize) -> Vec<(u16, Option<String>)> {
    (0..n)
        .map(|_| {
            let r = get(&p.url("/work"), &[]);
            (r.status, r.header("x-upstream-name").map(str::to_owned))
        })
        .collect()
}

fn only_from(answers: &[(u16, Option<String>)], name: &str) -> bool {
    answers.iter().all(|(status, from)| *status == 200 && from.as_deref() == Some(name))
}

#[test]
fn probes_steer_traffic_fail_fast_when_all_are_down_and_notice_recovery() {
    let a = upstream("a");
    let b = upstream("b");
    let p = checked(
        &a,
        b.addr,
        "{cluster_header: x-meshwork-cluster}",
        &format!("route_header: x-meshwork-cluster, {ACTIVE}, passive: null"),
    );
    assert!(healthy_becomes(&p, "a", 1) && healthy_becomes(&p, "b", 1), "the first probes find both healthy");

    // Client-side balancing over the healthy targets: both get traffic.
    let both = answers(&p, 40);
    assert!(both.iter().all(|(s, _)| *s == 200));
    for name in ["a", "b"] {
        assert!(both.iter().any(|(_, from)| from.as_deref() == Some(name)), "{name} got no traffic: {both:?}");
    }

    // One worker probes per interval, not every worker: count the probes b sees in a window.
    let before = b.stats()["by_path"]["/healthz"].as_u64().unwrap_or(0);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let seen = b.stats()["by_path"]["/healthz"].as_u64().unwrap_or(0) - before;
    let rounds = started.elapsed().as_millis() as u64 / 100;
    assert!(seen >= 1 && seen <= rounds + 2, "{seen} probes in {rounds} intervals with two workers");

    // Stop a: after unhealthy_threshold failed probes, only b gets traffic.
    let Upstream { process, addr: a_addr } = a;
    drop(process);
    assert!(healthy_becomes(&p, "a", 0), "a is found unhealthy");
    assert!(probes(&p, "a", "failure") >= 3, "it took unhealthy_threshold failures");
    let rest = answers(&p, 60);
    assert!(only_from(&rest, "b"), "traffic avoids a: {rest:?}");

    // Stop b as well: requests are refused at once, without trying an upstream.
    let Upstream { process, .. } = b;
    drop(process);
    assert!(healthy_becomes(&p, "b", 0));
    let upstream_failures = p.stat_sum("meshwork_upstream_rq_failures_total", &[]);
    for _ in 0..5 {
        let r = get(&p.url("/work"), &[]);
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-meshwork-health-check"), Some("no healthy target"));
        assert_eq!(r.text(), "no healthy upstream\n");
    }
    assert_eq!(p.stat_sum("meshwork_upstream_rq_failures_total", &[]), upstream_failures, "no upstream was tried");
    assert_eq!(p.stat_sum("meshwork_health_check_requests_total", &[("outcome", "no_healthy_target")]), 5);

    // Start a again where it was: healthy after healthy_threshold good probes, and serving.
    let successes_before = probes(&p, "a", "success");
    let a = upstream_at("a", a_addr);
    assert!(healthy_becomes(&p, "a", 1), "a is found healthy again");
    assert!(probes(&p, "a", "success") - successes_before >= 2, "it took healthy_threshold successes");
    let back = answers(&p, 20);
    assert!(only_from(&back, "a"), "{back:?}");
    assert_eq!(a.stats()["by_path"]["/work"], 20, "the new process served them");
    assert_eq!(gauge(&p, "meshwork_health_check_healthy", "b"), Some(0));
}

#[test]
fn a_fixed_route_fails_fast_when_its_own_target_is_down() {
    let a = upstream("a");
    let b = upstream("b");
    let p = checked(&a, b.addr, "{cluster: a}", &format!("{ACTIVE}, passive: null"));
    assert!(healthy_becomes(&p, "a", 1));
    assert_eq!(get(&p.url("/"), &[]).header("x-upstream-name"), Some("a"));
    let Upstream { process, .. } = a;
    drop(process);
    assert!(healthy_becomes(&p, "a", 0));
    let r = get(&p.url("/"), &[]);
    assert_eq!(r.status, 503, "b is healthy, but this route goes to a");
    assert_eq!(r.header("x-meshwork-health-check"), Some("no healthy target"));
    assert_eq!(b.requests(), b.stats()["by_path"]["/healthz"].as_u64().unwrap_or(0), "b only saw probes");
}

#[test]
fn consecutive_connect_failures_eject_a_target() {
    let a = upstream("a");
    let b = upstream("b");
    let p = checked(
        &a,
        b.addr,
        "{cluster_header: x-meshwork-cluster}",
        "route_header: x-meshwork-cluster, active: null, passive: {consecutive_5xx: 3, base_ejection_time: 30s, max_ejection_percent: 50}",
    );
    assert_eq!(gauge(&p, "meshwork_health_check_healthy", "a"), Some(1), "routable until proven otherwise");
    let Upstream { process, .. } = a;
    drop(process);

    // Requests alternate between the targets until a's failures eject it.
    let mut failures = 0;
    let ejected = eventually(WAIT, || {
        let r = get(&p.url("/work"), &[]);
        failures += (r.status == 503) as usize;
        (gauge(&p, "meshwork_health_check_ejected", "a") == Some(1)).then_some(())
    });
    assert!(ejected.is_some(), "a was never ejected");
    assert!((3..=6).contains(&failures), "{failures} failed requests before the ejection");
    assert_eq!(gauge(&p, "meshwork_health_check_healthy", "a"), Some(0));
    assert_eq!(p.stat_sum("meshwork_health_check_ejections_total", &[("target", "a")]), 1);
    let rest = answers(&p, 40);
    assert!(only_from(&rest, "b"), "{rest:?}");
}

#[test]
fn upstream_5xx_eject_no_more_than_max_ejection_percent_and_ejections_end() {
    let a = upstream("a");
    let b = upstream("b");
    let p = checked(
        &a,
        b.addr,
        "{cluster_header: x-meshwork-cluster}",
        "route_header: x-meshwork-cluster, active: null, passive: {consecutive_5xx: 3, base_ejection_time: 1s, max_ejection_percent: 50}",
    );
    // Both answer 503: both collect errors, but only one of the two may be out at once.
    for _ in 0..30 {
        assert_eq!(get(&p.url("/fail?status=503"), &[]).status, 503);
    }
    let ejected_total = || p.stat_sum("meshwork_health_check_ejections_total", &[]);
    assert_eq!(ejected_total(), 1, "50% of two targets: one ejection");
    let out =
        ["a", "b"].into_iter().find(|t| gauge(&p, "meshwork_health_check_ejected", t) == Some(1)).expect("one is out");
    let other = if out == "a" { "b" } else { "a" };
    assert!(only_from(&answers(&p, 10), other));

    // The ejection ends after base_ejection_time and both serve again.
    assert!(healthy_becomes(&p, out, 1), "{out} came back");
    let both = answers(&p, 40);
    assert!(both.iter().any(|(_, f)| f.as_deref() == Some(out)), "{out} serves again: {both:?}");
}

#[test]
fn bad_configuration_is_refused_naming_the_field() {
    let a = upstream("a");
    for (configuration, expected) in [
        ("{targets: []}", "targets: list at least one cluster"),
        ("{targets: [{name: a}]}", "targets[0].name: unknown field `name`"),
        ("{active: {}}", "missing field `targets`"),
        ("{targets: [{cluster: a}], active: {interval: 0ms}}", "active.interval must be above zero"),
        (
            "{targets: [{cluster: a}], active: {interval: 5 parsecs}}",
            "active.interval: \"5 parsecs\" has an unknown unit",
        ),
        ("{targets: [{cluster: a}], active: {healthy_threshold: 0}}", "active.healthy_threshold"),
        ("{targets: [{cluster: a}], passive: {max_ejection_percent: 150}}", "passive.max_ejection_percent 150"),
        ("{targets: [{cluster: a}], balance: fastest}", "balance: unknown variant `fastest`"),
        ("{targets: [{cluster: a}], active: null, passive: null}", "nothing would be checked"),
        ("{targets: [{cluster: a}, {cluster: a}]}", "targets[1].cluster \"a\" is listed twice"),
        ("{targets: [{cluster: a}], route_header: \"x y\"}", "route_header \"x y\" is not a valid header name"),
        ("{targets: [{cluster: a}], interval: 1s}", "interval: unknown field `interval`"),
    ] {
        let err = try_proxy(&format!(
            "clusters: [{}]\nroute: {{cluster: a}}\nfilters: [{{name: health, module: {}, configuration: {configuration}}}]\n",
            cluster("a", &a),
            wasm("health-check").display()
        ))
        .err()
        .unwrap_or_else(|| panic!("{configuration} was accepted"));
        assert!(err.contains(expected), "{configuration}: {err}");
    }
}
