//! What meshwork's router does after the filters, as Envoy's does: retries asked for with
//! `x-envoy-retry-on`, per-try and per-request timeouts from headers, and `cluster_header`
//! routing. Each case runs on the plain forwarding path and through a filter chain. The test
//! client is inside the listener's trust boundary (loopback is configured as trusted), as an
//! internal caller of Envoy's router would be; tests/e2e/hardening.rs checks that untrusted
//! clients cannot steer the router.

use meshwork_e2e::*;

/// Without filters, and with the measure filter (which changes nothing the router sees); the
/// test client is trusted to send router headers.
fn chains() -> [String; 2] {
    let trusted = "listener: {trusted_clients: [127.0.0.0/8]}\n";
    [trusted.to_string(), format!("{trusted}filters: [{{name: measure, module: {}}}]\n", wasm("measure").display())]
}

fn by_key(up: &Upstream, key: &str) -> u64 {
    up.stats()["by_key"][key].as_u64().unwrap_or(0)
}

#[test]
fn retries_until_the_upstream_recovers_and_reports_attempts() {
    let up = upstream("app");
    for (i, filters) in chains().iter().enumerate() {
        let p = proxy(&format!("clusters: [{}]\nroute: {{cluster: app}}\n{filters}", cluster("app", &up)));
        let retry = [("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "3")];

        // Fails twice, then answers: the third attempt's answer reaches the client.
        let key = format!("recovers-{i}");
        let r = post(&p.url(&format!("/r?status=503&fail_first=2&key={key}")), &retry, b"payload");
        assert_eq!(r.status, 200, "{filters}");
        assert_eq!(r.header("x-envoy-attempt-count"), Some("3"));
        assert_eq!(r.json()["body"], "payload", "the body is replayed on each attempt");
        assert_eq!(r.echoed("x-envoy-attempt-count").as_deref(), Some("3"), "the upstream sees the attempt number");
        assert_eq!(r.echoed("x-envoy-retry-on"), None, "control headers are not forwarded");
        assert_eq!(by_key(&up, &key), 3);

        // Never recovers: max-retries + 1 attempts, the last answer is passed on.
        let key = format!("down-{i}");
        let r = get(&p.url(&format!("/r?status=503&key={key}")), &retry);
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-envoy-attempt-count"), Some("4"));
        assert_eq!(by_key(&up, &key), 4);

        // A status the policy does not cover is not retried.
        let key = format!("notfound-{i}");
        let r = get(&p.url(&format!("/r?status=404&key={key}")), &retry);
        assert_eq!((r.status, by_key(&up, &key)), (404, 1));

        // Without retry-on, no retry and no attempt header.
        let key = format!("plain-{i}");
        let r = get(&p.url(&format!("/r?status=503&fail_first=1&key={key}")), &[]);
        assert_eq!((r.status, r.header("x-envoy-attempt-count"), by_key(&up, &key)), (503, None, 1));

        // retriable-status-codes picks statuses by number.
        let key = format!("codes-{i}");
        let r = get(
            &p.url(&format!("/r?status=429&fail_first=1&key={key}")),
            &[("x-envoy-retry-on", "retriable-status-codes"), ("x-envoy-retriable-status-codes", "429")],
        );
        assert_eq!((r.status, by_key(&up, &key)), (200, 2));

        let retries = p.stat_sum("meshwork_upstream_rq_retries_total", &[("cluster", "app")]);
        assert_eq!(retries, 2 + 3 + 1, "{filters}");
    }
}

#[test]
fn per_try_timeouts_retry_and_request_timeouts_answer_504() {
    let up = upstream("app");
    for (i, filters) in chains().iter().enumerate() {
        let p = proxy(&format!("clusters: [{}]\nroute: {{cluster: app}}\n{filters}", cluster("app", &up)));
        let key = format!("slow-once-{i}");
        let r = get(
            &p.url(&format!("/t?delay=5s&fail_first=1&key={key}")),
            &[("x-envoy-retry-on", "5xx"), ("x-envoy-upstream-rq-per-try-timeout-ms", "200")],
        );
        assert_eq!(r.status, 200, "the second try is fast: {filters}");
        assert_eq!(r.header("x-envoy-attempt-count"), Some("2"));

        let started = std::time::Instant::now();
        let r = get(&p.url("/t?delay=5s"), &[("x-envoy-upstream-rq-timeout-ms", "200")]);
        assert_eq!(r.status, 504);
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "the header shortened the 15 s route timeout");

        // The overall timeout bounds all attempts together.
        let r = get(
            &p.url("/t?delay=5s"),
            &[
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-max-retries", "10"),
                ("x-envoy-upstream-rq-per-try-timeout-ms", "100"),
                ("x-envoy-upstream-rq-timeout-ms", "450"),
            ],
        );
        assert_eq!(r.status, 504);
        assert!(started.elapsed() < std::time::Duration::from_secs(4));
    }
}

#[test]
fn connect_failures_retry_on_the_next_endpoint() {
    let up = upstream("app");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for filters in chains() {
        let p = proxy(&format!(
            "clusters: [{{name: app, endpoints: [\"{closed}\", \"{}\"]}}]\nroute: {{cluster: app}}\n{filters}",
            up.addr
        ));
        // Round robin alternates: every request that meets the closed port first is retried.
        for _ in 0..4 {
            let r = get(&p.url("/c"), &[("x-envoy-retry-on", "connect-failure")]);
            assert_eq!(r.status, 200, "{filters}");
        }
        let failures = (0..4).filter(|_| get(&p.url("/c"), &[]).status == 503).count();
        assert_eq!(failures, 2, "without retries half the requests meet the closed port");
    }
}

#[test]
fn a_request_header_picks_the_cluster() {
    let (v1, v2) = (upstream("v1"), upstream("v2"));
    for filters in chains() {
        let p = proxy(&format!(
            "clusters: [{}, {}]\nroute: {{cluster_header: x-meshwork-cluster}}\n{filters}",
            cluster("v1", &v1),
            cluster("v2", &v2)
        ));
        for version in ["v1", "v2"] {
            let r = get(&p.url("/"), &[("x-meshwork-cluster", version)]);
            assert_eq!((r.status, r.header("x-upstream-name")), (200, Some(version)), "{filters}");
        }
        assert_eq!(get(&p.url("/"), &[("x-meshwork-cluster", "v3")]).status, 404);
        assert_eq!(get(&p.url("/"), &[]).status, 404);
    }
}

#[test]
fn route_targets_are_validated() {
    let up = upstream("app");
    let err =
        try_proxy(&format!("clusters: [{}]\nroute: {{cluster: app, cluster_header: x-c}}\n", cluster("app", &up)))
            .err()
            .expect("both targets are refused");
    assert!(err.contains("exactly one of cluster, cluster_header, backends, direct_response or redirect"), "{err}");
    let err = try_proxy(&format!("clusters: [{}]\nroute: {{cluster_header: \"bad header\"}}\n", cluster("app", &up)))
        .err()
        .expect("a bad header name is refused");
    assert!(err.contains("not a valid header name"), "{err}");
}
