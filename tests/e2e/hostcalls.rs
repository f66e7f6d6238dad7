//! Every hostcall group through real filters built in this repo, in a real proxy.

use std::time::Duration;

use meshwork_e2e::*;

struct Setup {
    up: Upstream,
    _side: Upstream,
    p: Proxy,
}

/// The sample app as main upstream, a second one as the callout cluster "side", and the
/// hostcalls test filter (twice: the second instance reads what the first left).
fn setup(extra_config: &str, workers: usize) -> Setup {
    let up = upstream("main");
    let side = upstream("side");
    let hostcalls = wasm("hostcalls");
    let p = proxy(&format!(
        r#"workers: {workers}
clusters: [{main}, {side}]
route: {{cluster: main, name: test-route}}
node: {{id: test-node}}
filters:
  - name: hostcalls
    module: {hostcalls}
    root_id: hc-root
    vm_id: hc-vm
    configuration: {{callout_cluster: side{extra_config}}}
    env: {{MESHWORK_TEST_ENV: hello-env}}
  - name: reader
    module: {hostcalls}
    vm_id: reader-vm
    configuration: {{reader: true}}
"#,
        main = cluster("main", &up),
        side = cluster("side", &side),
        hostcalls = hostcalls.display(),
    ));
    Setup { up, _side: side, p }
}

fn test(s: &Setup, scenario: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![("x-test", scenario)];
    headers.extend_from_slice(extra);
    get(&s.p.url("/t"), &headers)
}

#[test]
fn header_maps_get_add_replace_remove_and_pairs() {
    let s = setup("", 1);
    let r = test(&s, "headers", &[("x-get", "got-me"), ("x-replace", "old"), ("x-remove", "bye")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-added").as_deref(), Some("1"));
    assert_eq!(r.echoed("x-replace").as_deref(), Some("new"));
    assert_eq!(r.echoed("x-remove"), None);
    assert_eq!(r.echoed("x-got").as_deref(), Some("got-me"));
    assert_eq!(r.header("x-upstream-name"), None, "removed from the response");
    assert!(r.header("x-response-num-headers").unwrap().parse::<u32>().unwrap() >= 3);
    // num_headers counts pseudo-headers too: :authority :path :method :scheme + host-less h1 headers.
    let pairs: usize = r.header("x-request-pairs").unwrap().parse().unwrap();
    assert_eq!(r.header("x-num-headers").unwrap().parse::<usize>().unwrap(), pairs);
    assert_eq!(r.header("x-headers-eos"), Some("true"), "a GET has no body");

    let r = test(&s, "set-pairs", &[("x-drop-me", "1"), ("x-keep-me", "1")]);
    assert_eq!(r.echoed("x-from-pairs").as_deref(), Some("yes"));
    assert_eq!(r.echoed("x-drop-me"), None);
    assert_eq!(r.echoed("x-keep-me").as_deref(), Some("1"));

    let r = test(&s, "rewrite-path", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"xxxxxxx", "the upstream saw the rewritten :path (/rewritten?size=7)");
    assert_eq!(s.up.stats()["by_path"]["/rewritten"], 1);
}

#[test]
fn local_reply_passes_response_callbacks_and_skips_the_upstream() {
    let s = setup("", 1);
    let r = test(&s, "local", &[]);
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-local"), Some("yes"));
    assert_eq!(r.header("content-type"), Some("text/teapot"), "the filter's header replaces the default");
    assert_eq!(r.text(), "short and stout");
    assert!(r.header("x-num-headers").is_some(), "the filter's own response callback ran");
    assert_eq!(s.up.requests(), 0);
}

#[test]
fn http_callouts_reach_the_second_cluster_and_time_out_as_504() {
    let s = setup("", 2);
    let r = test(&s, "callout", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-callout-status").as_deref(), Some("200"));
    assert_eq!(r.echoed("x-callout-body-bytes").as_deref(), Some("3"));
    assert_eq!(r.echoed("x-callout-trailers").as_deref(), Some("0"));
    assert_eq!(s._side.stats()["by_path"]["/side"], 1);
    let r = test(&s, "callout-timeout", &[]);
    assert_eq!(r.status, 200, "the stream resumes after the callout's timeout");
    assert_eq!(
        r.echoed("x-callout-status").as_deref(),
        Some("504"),
        "Envoy reports a callout timeout as a 504 response"
    );
}

#[test]
fn properties_and_filter_state_shared_between_filters() {
    let s = setup("", 1);
    let r = test(&s, "props", &[]);
    assert_eq!(r.header("x-prop-request-path"), Some("/t"));
    assert_eq!(r.header("x-prop-request-method"), Some("GET"));
    assert!(r.header("x-prop-source-address").unwrap().starts_with("127.0.0.1:"));
    assert_eq!(r.header("x-prop-plugin-name"), Some("hostcalls"));
    assert_eq!(r.header("x-prop-plugin-root-id"), Some("hc-root"));
    assert_eq!(r.header("x-prop-plugin-vm-id"), Some("hc-vm"));
    assert_eq!(r.header("x-prop-route-name"), Some("test-route"));
    assert_eq!(r.header("x-prop-protocol"), Some("HTTP/1.1"));
    assert_eq!(r.header("x-prop-node-id"), Some("test-node"));
    assert_eq!(r.header("x-prop-destination-port").unwrap(), s.p.addr.port().to_string());
    let id = r.header("x-prop-request-id").unwrap();
    assert_eq!(id.len(), 36, "a generated UUID: {id}");
    assert_eq!(r.echoed("x-request-id").as_deref(), Some(id), "and sent upstream");
    let t: u64 = r.header("x-prop-request-time-ns").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert!(t <= now && now - t < 60_000_000_000, "request.time is epoch nanoseconds");
    assert_eq!(r.header("x-prop-from-previous-filter"), Some("left by the first filter"));
    let r = test(&s, "headers", &[]);
    assert_eq!(r.header("x-prop-from-previous-filter"), Some("none"), "filter state is per stream");
}

#[test]
fn shared_data_cas_is_consistent_across_workers() {
    let s = setup("", 2);
    let results = storm(60, 12, &s.p.url("/t"), &[("x-test", "shared")]);
    let mut values: Vec<u64> = results
        .iter()
        .map(|r| r.as_ref().expect("answered").header("x-shared-counter").unwrap().parse().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (1..=60).collect::<Vec<_>>(), "every increment landed exactly once");
    assert!(s.p.stat("meshwork_downstream_cx_total", &[("worker", "1")]).unwrap() > 0);
}

#[test]
fn shared_queue_delivers_to_the_registering_root_context() {
    let s = setup(", queue: true", 2);
    for i in 0..10 {
        let r = test(&s, "queue", &[("x-item", &format!("item{i}"))]);
        assert_eq!(r.header("x-enqueued"), Some(format!("item{i}").as_str()));
    }
    let received = eventually(Duration::from_secs(5), || {
        let n: u64 = test(&s, "queue-count", &[]).header("x-queue-received")?.parse().ok()?;
        (n == 10).then_some(n)
    });
    assert_eq!(received, Some(10), "on_queue_ready dequeued every item once");
    let r = test(&s, "queue-count", &[("x-item", "item7")]);
    assert_eq!(r.header("x-queue-item-seen"), Some("1"));
}

#[test]
fn timers_fire_on_tick() {
    let s = setup(", tick_ms: 50", 1);
    std::thread::sleep(Duration::from_millis(600));
    let ticks: u64 = test(&s, "ticks", &[]).header("x-ticks").unwrap().parse().unwrap();
    assert!((5..=20).contains(&ticks), "about 12 ticks of 50ms in 600ms (plus start-up), got {ticks}");
    std::thread::sleep(Duration::from_millis(300));
    let later: u64 = test(&s, "ticks", &[]).header("x-ticks").unwrap().parse().unwrap();
    assert!(later > ticks, "the timer keeps firing");
}

#[test]
fn metrics_defined_by_filters() {
    let s = setup("", 1);
    let r = test(&s, "metrics", &[]);
    assert_eq!(r.header("x-metric-counter"), Some("2"));
    assert_eq!(r.header("x-metric-gauge"), Some("37"));
    assert_eq!(r.header("x-metric-negative-counter"), Some("Some(BadArgument)"));
    test(&s, "metrics", &[]);
    let text = get(&s.p.admin_url("/stats/prometheus"), &[]).text();
    assert!(text.contains("test_filter_requests{scenario=\"metrics\"} 4\n"), "{text}");
    assert!(text.contains("test_filter_gauge 37\n"), "each request sets 40 then subtracts 3: {text}");
    assert!(text.contains("test_filter_sizes_count 2\n"), "{text}");
    assert!(text.contains("test_filter_sizes_bucket{le=\"2500\"} 2\n"), "{text}");
}

#[test]
fn logging_at_levels_and_wasi_stdio() {
    let s = setup("", 1);
    assert_eq!(test(&s, "log", &[]).status, 200);
    let logs = s.p.process.stderr();
    assert!(logs.contains("hostcalls-test log at info"), "{logs}");
    assert!(logs.contains("hostcalls-test log at warn"), "{logs}");
    assert!(logs.contains("hostcalls-test log at error"), "{logs}");
    assert!(!logs.contains("hostcalls-test log at trace"), "below the filter's log level (info)");
    assert!(logs.contains("hostcalls-test says hello on stdout"), "fd_write to stdout is logged: {logs}");
    assert!(logs.contains("hostcalls-test says hello on stderr"), "{logs}");
    assert!(logs.contains("filter=\"hostcalls\"") || logs.contains("filter=hostcalls"), "{logs}");
}

#[test]
fn wasi_as_envoy_provides_it() {
    let s = setup("", 1);
    let r = test(&s, "wasi", &[]);
    assert_eq!(r.header("x-wasi-env"), Some("hello-env"));
    assert!(r.header("x-wasi-clock-secs").unwrap().parse::<u64>().unwrap() > 1_700_000_000);
    assert_eq!(r.header("x-wasi-random-errno"), Some("0"));
    assert_eq!(r.header("x-wasi-random-nonzero"), Some("true"));
    assert_eq!(r.header("x-wasi-bad-clock-errno"), Some("58"), "NOTSUP");
    assert_eq!(r.header("x-wasi-fd-write-bad-fd"), Some("8"), "BADF");
}

#[test]
fn status_codes_match_envoys_host() {
    let s = setup("", 1);
    let r = test(&s, "statuses", &[]);
    let expect = [
        ("x-status-continue-upstream", "12"),
        ("x-status-bad-stream-type", "2"),
        ("x-status-set-body-outside-callback", "2"),
        ("x-status-get-body-outside-callback", "0"),
        ("x-status-plugin-config-after-start", "1"),
        ("x-status-bad-buffer-type", "2"),
        ("x-status-done-on-stream", "1"),
        ("x-status-bad-effective-context", "2"),
        ("x-status-own-effective-context", "0"),
        ("x-status-bad-log-level", "2"),
        ("x-status-get-log-level", "0"),
        ("x-log-level", "2"),
        ("x-status-header-map-size", "0"),
        ("x-status-header-map-size-callout-map", "2"),
        ("x-status-buffer-status-vm-config", "0"),
        ("x-status-missing-header", "1"),
        ("x-status-bad-map-type", "2"),
        ("x-status-get-histogram", "2"),
        ("x-status-increment-histogram", "2"),
        ("x-status-increment-counter-by-zero", "2"),
        ("x-status-unknown-metric", "1"),
        ("x-status-bad-metric-type", "2"),
        ("x-status-callout-without-authority", "2"),
        ("x-status-callout-unknown-cluster", "2"),
        ("x-status-callout-huge-timeout", "2"),
        ("x-status-unknown-property", "1"),
        ("x-status-whole-request-property", "3"),
        ("x-status-grpc-unknown-cluster", "4"),
        ("x-status-grpc-call", "0"),
        ("x-grpc-call-token-kind", "1"),
        ("x-status-request-header-in-response", "2"),
    ];
    for (header, want) in expect {
        assert_eq!(r.header(header), Some(want), "{header}");
    }
    assert!(r.header("x-header-map-size").unwrap().parse::<u32>().unwrap() > 10);
    assert_eq!(test(&s, "vm-start", &[]).header("x-vm-start-plugin-config-status-1"), Some("1"));
}

#[test]
fn bodies_are_buffered_rewritten_and_trailers_added() {
    let s = setup("", 1);
    let r = post(&s.p.url("/t"), &[("x-test", "body")], b"hello world, quietly");
    assert_eq!(r.json()["body"], "HELLO WORLD, QUIETLY");
    assert_eq!(r.header("x-request-body-seen"), Some("20"), "after Pause, the last callback saw the whole body");
    // A body the proxy reads in several chunks arrives whole at the filter too.
    let big = vec![b'a'; 200_000];
    let r = post(&s.p.url("/t"), &[("x-test", "body")], &big);
    assert_eq!(r.json()["body_bytes"], 200_000);
    assert_eq!(r.header("x-request-body-seen"), Some("200000"));
    // Trailers need HTTP/2 (or a client asking for them with TE: trailers over HTTP/1.1).
    let r = get_h2(&s.p.url("/t"), &[("x-test", "body-append"), ("x-upstream-size", "10")]);
    assert_eq!(&r.body[..], b"xxxxxxxxxx[appended by filter]");
    let trailers = r.trailers.expect("trailers added in the last body chunk");
    assert_eq!(trailers.get("x-body-size-seen").unwrap(), "10");
}

#[test]
fn stream_control_continue_and_close() {
    let s = setup("", 1);
    assert_eq!(test(&s, "pause-then-continue", &[]).status, 200);
    let closed = try_request("GET", &s.p.url("/t"), &[("x-test", "close")], b"");
    assert!(closed.is_err(), "close_stream resets the stream: {closed:?}");
    assert_eq!(test(&s, "headers", &[]).status, 200, "the proxy keeps serving");
}

#[test]
fn on_log_runs_for_every_stream_and_h2c_works_through_filters() {
    let s = setup("", 1);
    let r = get_h2(&s.p.url("/t"), &[("x-test", "props")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-prop-protocol"), Some("HTTP/2"));
    test(&s, "local", &[]);
    test(&s, "local", &[]);
    let logged = eventually(Duration::from_secs(2), || {
        let n: u64 =
            test(&s, "read-shared", &[("x-key", "test.logged.local.418")]).header("x-shared-value")?.parse().ok()?;
        (n == 2).then_some(n)
    });
    assert_eq!(logged, Some(2), "on_log saw both local replies with their status");
}
