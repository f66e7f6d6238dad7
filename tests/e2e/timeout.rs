//! The timeout filter through `meshwork run`: deadlines per route answered with 504 in callout
//! mode (the filter's own callout) and envoy mode (meshwork's router honouring Envoy's header).

use std::time::{Duration, Instant};

use meshwork_e2e::*;

fn timeout_proxy(up: &Upstream, config: &str) -> Proxy {
    proxy(&format!(
        "clusters: [{}]\nroutes:\n  - {{prefix: /long, cluster: app, name: long}}\n  - {{prefix: /, cluster: app, name: default}}\nfilters:\n  - name: timeout\n    module: {}\n    allow_on_headers_stop_iteration: true\n    configuration: {config}\n",
        cluster("app", up),
        wasm("timeout").display()
    ))
}

fn timed(p: &Proxy, path: &str, headers: &[(&str, &str)]) -> (Reply, Duration) {
    let started = Instant::now();
    let r = get(&p.url(path), headers);
    (r, started.elapsed())
}

#[test]
fn a_slow_upstream_gets_504_at_the_routes_deadline_in_both_modes() {
    let up = upstream("app");
    for mode in ["callout", "envoy"] {
        let p = timeout_proxy(&up, &format!("{{mode: {mode}, timeout: 300ms, routes: {{long: 3s}}}}"));
        let (r, took) = timed(&p, "/slow?delay=2s", &[]);
        assert_eq!((r.status, r.header("x-meshwork-timeout")), (504, Some("exceeded")), "{mode}");
        assert!(took >= Duration::from_millis(300), "{mode}: not before the deadline ({took:?})");
        assert!(took < Duration::from_millis(1800), "{mode}: not after the upstream answered ({took:?})");

        let (r, took) = timed(&p, "/long?delay=1s", &[]);
        assert_eq!(r.status, 200, "{mode}: the long route has 3 s");
        assert!(took >= Duration::from_secs(1));
        let expected: u64 = r.echoed("x-envoy-expected-rq-timeout-ms").unwrap().parse().unwrap();
        assert!((2000..=3000).contains(&expected), "{mode}: the upstream is told what is left: {expected}");

        let r = get(&p.url("/fast?status=201"), &[]);
        assert_eq!((r.status, r.header("x-meshwork-timeout")), (201, None), "{mode}: answers pass untouched");
        assert_eq!(p.stat_sum("meshwork_timeout_exceeded_total", &[]), 1, "{mode}");
    }
}

#[test]
fn clients_may_ask_for_less_and_up_to_the_cap() {
    let up = upstream("app");
    let p = timeout_proxy(
        &up,
        "{timeout: 5s, client_header: x-request-timeout-ms, grpc_timeout: true, max_client_timeout: 800ms}",
    );
    let (r, took) = timed(&p, "/c?delay=2s", &[("x-request-timeout-ms", "200")]);
    assert_eq!(r.status, 504);
    assert!(took < Duration::from_millis(1500));
    let (r, _) = timed(&p, "/c?delay=2s", &[("grpc-timeout", "150m")]);
    assert_eq!(r.status, 504);
    let (r, took) = timed(&p, "/c?delay=1500ms", &[("x-request-timeout-ms", "60000")]);
    assert_eq!(r.status, 504, "capped at 800 ms");
    assert!(took < Duration::from_millis(1400));
    assert_eq!(get(&p.url("/c?delay=300ms"), &[("x-request-timeout-ms", "junk")]).status, 200);
}

#[test]
fn bodies_are_held_or_passed_with_router_headers() {
    let up = upstream("app");
    let body = vec![b'z'; 200_000];
    for bodies in ["hold", "pass"] {
        let p = timeout_proxy(&up, &format!("{{timeout: 400ms, request_bodies: {bodies}}}"));
        let r = post(&p.url("/up"), &[], &body);
        assert_eq!((r.status, r.json()["body_bytes"].as_u64()), (200, Some(200_000)), "{bodies}");
        let r = post(&p.url("/up?delay=2s"), &[], &body);
        assert_eq!(r.status, 504, "{bodies}");
    }
}

#[test]
fn bad_configuration_is_refused_with_the_reason() {
    let up = upstream("app");
    for (config, message) in [
        ("{}", "missing field `timeout`"),
        ("{timeout: 0s}", "a timeout must be at least 1ms"),
        ("{timeout: 1s, client_header: x-t}", "need max_client_timeout"),
        ("{timeout: 1s, client_header: X-T, max_client_timeout: 2s}", "lower-case header name"),
    ] {
        let err = try_proxy(&format!(
            "clusters: [{}]\nroute: {{cluster: app}}\nfilters: [{{name: t, module: {}, configuration: {config}}}]\n",
            cluster("app", &up),
            wasm("timeout").display()
        ))
        .err()
        .expect("refused");
        assert!(err.contains(message), "{config}: {err}");
    }
}
