//! The proxy with the product filters, over real sockets: forwarding, rate limiting across
//! workers, measurement scraped from the admin port, Envoy bootstraps, a non-Rust SDK, errors.

use meshwork_e2e::*;

fn yaml_filters(filters: &str) -> String {
    format!("filters:\n{filters}")
}

#[test]
fn forwards_http1_and_h2c_without_filters() {
    let up = upstream("app");
    let p = proxy(&format!("workers: 2\nclusters: [{}]\nroute: {{cluster: app}}\n", cluster("app", &up)));
    let r = get(&p.url("/hello?x=1"), &[("x-custom", "v")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/hello?x=1");
    assert_eq!(r.echoed("x-custom").as_deref(), Some("v"));
    let r = get_h2(&p.url("/over-h2?size=5"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"xxxxx");
    let r = post(&p.url("/upload"), &[], &vec![b'a'; 100_000]);
    assert_eq!(r.json()["body_bytes"], 100_000);
    assert_eq!(up.requests(), 3);
}

#[test]
fn upstream_failures_and_route_timeouts_get_envoys_answers() {
    let up = upstream("app");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for filters in ["", &yaml_filters(&format!("  - {{name: measure, module: {}}}\n", wasm("measure").display()))] {
        let p = proxy(&format!(
            "clusters: [{}, {{name: gone, endpoints: [\"{closed}\"]}}]\nroutes:\n  - {{prefix: /gone, cluster: gone}}\n  - {{prefix: /, cluster: app, timeout: 300ms}}\n{filters}",
            cluster("app", &up)
        ));
        let r = get(&p.url("/gone"), &[]);
        assert_eq!(r.status, 503, "{filters}");
        assert!(r.text().contains("upstream connect error"), "{}", r.text());
        let r = get(&p.url("/slow?delay=3s"), &[]);
        assert_eq!(r.status, 504, "{filters}");
        assert!(r.text().contains("upstream request timeout"));
        let r = get(&p.url("/fast"), &[]);
        assert_eq!(r.status, 200);
    }
}

#[test]
fn rate_limit_is_exact_across_two_workers() {
    let up = upstream("app");
    let p = proxy(&format!(
        "workers: 2\nclusters: [{}]\nroute: {{cluster: app, name: api}}\n{}",
        cluster("app", &up),
        yaml_filters(&format!(
            "  - name: rl\n    module: {}\n    configuration: {{rate: 1, period: 1h, burst: 25}}\n",
            wasm("local-rate-limit").display()
        ))
    ));
    let results = storm(120, 24, &p.url("/limited"), &[]);
    let statuses: Vec<u16> = results.iter().map(|r| r.as_ref().expect("every request answered").status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 25, "exactly the burst passes");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 95);
    assert_eq!(up.requests(), 25, "only admitted requests reached the upstream");
    let limited = results.iter().flatten().find(|r| r.status == 429).unwrap();
    assert_eq!(limited.header("x-ratelimit-limit"), Some("25"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert!(limited.header("retry-after").is_some());
    let reset: u64 = limited.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset > 3000 && reset <= 3600 * 25, "{reset}");
    // Both workers took connections, so the agreement above was across workers.
    for w in ["0", "1"] {
        assert!(p.stat("meshwork_downstream_cx_total", &[("worker", w)]).unwrap() > 0, "worker {w} served nothing");
    }
    assert_eq!(p.stat("meshwork_local_rate_limit_requests_total", &[("outcome", "allowed")]), Some(25));
    assert_eq!(p.stat("meshwork_local_rate_limit_requests_total", &[("outcome", "limited")]), Some(95));
}

#[test]
fn rate_limit_keys_by_header_and_refills() {
    let up = upstream("app");
    let p = proxy(&format!(
        "clusters: [{}]\nroute: {{cluster: app}}\n{}",
        cluster("app", &up),
        yaml_filters(&format!(
            "  - name: rl\n    module: {}\n    configuration: {{rate: 2, period: 1s, burst: 2, key: {{header: x-user}}, headers_on_success: true}}\n",
            wasm("local-rate-limit").display()
        ))
    ));
    let codes =
        |user: &str, n: usize| -> Vec<u16> { (0..n).map(|_| get(&p.url("/"), &[("x-user", user)]).status).collect() };
    assert_eq!(codes("alice", 3), [200, 200, 429]);
    assert_eq!(codes("bob", 3), [200, 200, 429], "another key has its own bucket");
    let ok = get(&p.url("/"), &[("x-user", "carol")]);
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("1"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(codes("alice", 1), [200], "the bucket refilled");
}

#[test]
fn measure_metrics_are_scraped_from_the_admin_port() {
    let up = upstream("app");
    let p = proxy(&format!(
        "workers: 2\nclusters: [{}]\nroute: {{cluster: app, name: catchall}}\n{}",
        cluster("app", &up),
        yaml_filters(&format!(
            "  - name: measure\n    module: {}\n    configuration: {{routes: [{{name: api, prefix: /api/}}]}}\n",
            wasm("measure").display()
        ))
    ));
    for _ in 0..10 {
        let r = get(&p.url("/api/items?delay=20ms&size=300"), &[]);
        assert_eq!(r.status, 200);
        let timing = r.header("server-timing").expect("Server-Timing");
        assert!(timing.starts_with("upstream;dur="), "{timing}");
        let ms: f64 = timing["upstream;dur=".len()..].split(',').next().unwrap().parse().unwrap();
        assert!(ms >= 20.0, "{timing}");
    }
    for _ in 0..5 {
        assert_eq!(get(&p.url("/api/broken?status=503&size=0"), &[]).status, 503);
    }
    for _ in 0..3 {
        assert_eq!(get(&p.url("/other"), &[]).status, 200);
    }
    let text = get(&p.admin_url("/stats/prometheus"), &[]).text();
    assert!(text.contains("meshwork_measure_requests_total{route=\"api\",class=\"2xx\"} 10\n"), "{text}");
    assert!(text.contains("meshwork_measure_requests_total{route=\"api\",class=\"5xx\"} 5\n"), "{text}");
    assert!(text.contains("meshwork_measure_requests_total{route=\"catchall\",class=\"2xx\"} 3\n"), "{text}");
    assert!(text.contains("# TYPE meshwork_measure_upstream_latency_us histogram"), "{text}");
    assert!(text.contains("meshwork_measure_upstream_latency_us_count{route=\"api\"} 15\n"), "{text}");
    assert!(text.contains("meshwork_measure_response_body_bytes_sum{route=\"api\"} 3000\n"), "{text}");
    assert!(text.contains("meshwork_downstream_rq_total{class=\"2xx\"} 13\n"), "{text}");
    let h = p.histogram("meshwork_measure_upstream_latency_us", &[("route", "api")]).unwrap();
    let p50 = h["quantiles"][0]["value"].as_u64().unwrap();
    assert!(p50 >= 20_000, "p50 {p50}us is below the upstream's 20ms delay");
}

#[test]
fn envoy_bootstrap_runs_with_its_wasm_filters() {
    let up = upstream("app");
    let dir = scratch("envoy");
    let envoy = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: app}}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: measure
                root_id: measure
                vm_config:
                  vm_id: measure
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {measure}}}}}
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: ratelimit
                root_id: ratelimit
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{{"rate": 1, "period": "1h", "burst": 3}}'
                vm_config:
                  vm_id: ratelimit
                  code: {{local: {{filename: {rl}}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#,
        measure = wasm("measure").display(),
        rl = wasm("local-rate-limit").display(),
        port = up.addr.port()
    );
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, &envoy).unwrap();
    let process = Process::start(&["run", "--envoy-config", path.to_str().unwrap()]).unwrap();
    let line = process.first_line.clone();
    let url = line.split("listening on ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    let codes: Vec<u16> = (0..5).map(|_| get(&format!("{url}/"), &[]).status).collect();
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    assert!(get(&format!("{url}/"), &[]).header("server-timing").is_some(), "measure runs before the limiter");
    // measure counted all six requests but timed only the three the upstream answered.
    let admin = line.split("admin on ").nth(1).unwrap().trim().to_owned();
    let text = get(&format!("{admin}/stats/prometheus"), &[]).text();
    assert!(text.contains("meshwork_measure_requests_total{route=\"route-0\",class=\"2xx\"} 3\n"), "{text}");
    assert!(text.contains("meshwork_measure_requests_total{route=\"route-0\",class=\"4xx\"} 3\n"), "{text}");
    assert!(text.contains("meshwork_measure_upstream_latency_us_count{route=\"route-0\"} 3\n"), "{text}");

    // An unsupported field is named, and the run refused.
    let bad = envoy
        .replace("    connect_timeout: 1s\n", "    connect_timeout: 1s\n    outlier_detection: {consecutive_5xx: 3}\n");
    let bad_path = dir.join("bad.yaml");
    std::fs::write(&bad_path, bad).unwrap();
    let (code, _, stderr) = run(&["run", "--envoy-config", bad_path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("static_resources.clusters[0].outlier_detection: not supported"), "{stderr}");
}

#[test]
fn assemblyscript_filter_behaves_as_in_envoy() {
    let up = upstream("app");
    let p = proxy(&format!(
        "clusters: [{}]\nroute: {{cluster: app}}\n{}",
        cluster("app", &up),
        yaml_filters(&format!(
            "  - name: as\n    module: {}\n    root_id: as_headers\n    configuration: \"hello from config\"\n",
            wasm("as-headers").display()
        ))
    ));
    let r = get(&p.url("/"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-as-config"), Some("hello from config"));
    let r = get(&p.url("/"), &[("x-as-deny", "please")]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-as-denied"), Some("1"));
    assert_eq!(r.text(), "denied by the AssemblyScript filter\n");
    assert_eq!(r.header("x-as-config"), Some("hello from config"), "local replies pass the filter's response callback");
    assert_eq!(up.requests(), 1);
    assert!(p.process.logged("as-headers: denying request, x-as-deny=please"));
}

#[test]
fn bad_configs_and_modules_fail_start_up_with_clear_errors() {
    let dir = scratch("bad");
    let up = upstream("app");
    let start = |yaml: &str| -> String {
        match try_proxy(yaml) {
            Ok(_) => panic!("started with a bad config:\n{yaml}"),
            Err(e) => e,
        }
    };
    let base = format!("clusters: [{}]\nroute: {{cluster: app}}\n", cluster("app", &up));
    let err = start(&format!("{base}filters: [{{name: f, module: /nonexistent/x.wasm}}]"));
    assert!(err.contains("cannot read /nonexistent/x.wasm"), "{err}");
    let not_wasm = dir.join("notwasm.wasm");
    std::fs::write(&not_wasm, "hello").unwrap();
    let err = start(&format!("{base}filters: [{{name: f, module: {}}}]", not_wasm.display()));
    assert!(err.contains("not a WebAssembly module"), "{err}");
    let missing = wat_module(
        &dir,
        "missing-import",
        r#"(module (import "env" "proxy_frobnicate" (func (param i32) (result i32)))
             (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
             (func (export "malloc") (param i32) (result i32) i32.const 0))"#,
    );
    let err = start(&format!("{base}filters: [{{name: f, module: {}}}]", missing.display()));
    assert!(
        err.contains("missing-import.wasm imports env.proxy_frobnicate (function), which this host does not provide"),
        "{err}"
    );
    let err = start(&format!(
        "{base}filters: [{{name: rl, module: {}, configuration: {{rate: 0}}}}]",
        wasm("local-rate-limit").display()
    ));
    assert!(err.contains("proxy_on_configure returned false"), "{err}");
    assert!(
        err.contains("local-rate-limit: rate must be at least 1"),
        "the filter's own log line explains why:\n{err}"
    );
    let err = start(&format!("{base}bogus_field: 1"));
    assert!(err.contains("unknown field `bogus_field`"), "{err}");
    let err = start("clusters: []\nroute: {cluster: nowhere}");
    assert!(err.contains("cluster \"nowhere\", which is not defined"), "{err}");
    let (code, _, stderr) = run(&["run", "--config", "/nonexistent.yaml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read config /nonexistent.yaml"), "{stderr}");
}

#[test]
fn clients_sending_too_many_headers_are_refused_and_the_proxy_keeps_serving() {
    let up = upstream("app");
    let p = proxy(&format!(
        "clusters: [{}]\nroute: {{cluster: app}}\nfilters: [{{name: measure, module: {}}}]\n",
        cluster("app", &up),
        wasm("measure").display()
    ));
    let many: Vec<(String, String)> = (0..10_000).map(|i| (format!("x-h{i}"), "1".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    match try_request("GET", &p.url("/"), &refs, b"") {
        Ok(r) => assert_eq!(r.status, 431),
        Err(e) => assert!(e.contains("request") || e.contains("body"), "{e}"),
    }
    assert_eq!(up.requests(), 0);
    assert_eq!(get(&p.url("/"), &[]).status, 200);
}
