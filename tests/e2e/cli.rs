//! `meshwork filter inspect` and `meshwork upstream`, as users call them.

use meshwork_e2e::*;

#[test]
fn inspect_reports_abi_callbacks_and_imports() {
    let (code, out, _) = run(&["filter", "inspect", wasm("measure").to_str().unwrap(), "--output", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["abi_versions"], serde_json::json!(["0.2.1"]));
    assert_eq!(v["loadable"], true);
    assert_eq!(v["allocator"], "proxy_on_memory_allocate");
    let callbacks: Vec<&str> = v["callbacks"].as_array().unwrap().iter().filter_map(|c| c.as_str()).collect();
    assert!(callbacks.contains(&"proxy_on_request_headers") && callbacks.contains(&"proxy_on_log"));
    assert!(!callbacks.contains(&"proxy_on_memory_allocate"));
    let imports = v["imports"].as_array().unwrap();
    assert!(imports.iter().any(|i| i["module"] == "env" && i["name"] == "proxy_define_metric"));
    assert_eq!(v["missing_imports"], serde_json::json!([]));

    let (code, out, _) = run(&["filter", "inspect", wasm("as-headers").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("proxy-wasm ABI: 0.2.0"), "{out}");
    assert!(out.contains("wasi_unstable.proc_exit"), "{out}");
    assert!(out.contains("loadable by meshwork: yes"), "{out}");
}

#[test]
fn inspect_names_what_the_host_lacks() {
    let dir = scratch("inspect");
    let path = wat_module(
        &dir,
        "needs-more",
        r#"(module (import "env" "proxy_get_configuration" (func (param i32 i32) (result i32)))
             (import "env" "envoy_resolve_dns" (func (param i32 i32 i32) (result i32)))
             (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
             (func (export "malloc") (param i32) (result i32) i32.const 0))"#,
    );
    let (code, out, _) = run(&["filter", "inspect", path.to_str().unwrap(), "--output", "json"]);
    assert_eq!(code, 2, "a module this host cannot load exits 2");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["missing_imports"], serde_json::json!(["env.proxy_get_configuration", "env.envoy_resolve_dns"]));
    assert_eq!(v["loadable"], false);
    let text = std::fs::write(dir.join("not.wasm"), "text")
        .map(|_| run(&["filter", "inspect", dir.join("not.wasm").to_str().unwrap()]));
    let (code, _, err) = text.unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("not a WebAssembly module"), "{err}");
    let (code, _, err) = run(&["filter", "inspect", "/no/such.wasm"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /no/such.wasm"), "{err}");
}

#[test]
fn sample_app_answers_as_asked_and_counts() {
    let up = upstream("sample");
    let r = get(&up.url("/a?status=503&size=4&header=x-one:1&header=x-two:2"), &[]);
    assert_eq!(r.status, 503);
    assert_eq!(&r.body[..], b"xxxx");
    assert_eq!(r.header("x-one"), Some("1"));
    assert_eq!(r.header("x-two"), Some("2"));
    assert_eq!(r.header("x-upstream-name"), Some("sample"));
    let start = std::time::Instant::now();
    let r = get(&up.url("/b?key=k1"), &[("x-upstream-delay", "150ms"), ("x-echo-me", "yes")]);
    assert!(start.elapsed() >= std::time::Duration::from_millis(150));
    assert_eq!(r.json()["headers"]["x-echo-me"], "yes");
    assert_eq!(r.json()["method"], "GET");
    let r = post(&up.url("/c"), &[], b"payload");
    assert_eq!(r.json()["body"], "payload");
    assert_eq!(get(&up.url("/d?status=abc"), &[]).status, 400);
    assert!(try_request("GET", &up.url("/e?reset=1"), &[], b"").is_err(), "reset=1 drops the connection");
    let stats = up.stats();
    assert_eq!(stats["requests_total"], 5, "{stats}");
    assert_eq!(stats["by_path"]["/a"], 1);
    assert_eq!(stats["by_status"]["503"], 1);
    assert_eq!(stats["by_key"]["k1"], 1);
    post(&up.url("/stats/reset"), &[], b"");
    assert_eq!(up.requests(), 0);
}

#[test]
fn example_configurations_check_out() {
    // Every filter ships an example; every example must start.
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("filters")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("Cargo.toml").exists() || dir.ends_with("support") {
            continue;
        }
        let path = dir.join("example.yaml");
        assert!(path.exists(), "{} has no example.yaml", dir.display());
        let (code, out, err) = run(&["run", "--config", path.to_str().unwrap(), "--check"]);
        assert_eq!(code, 0, "{}: {err}", path.display());
        assert!(out.contains("configuration ok ("), "{out}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} examples");
    let dir = scratch("check");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "listen: 127.0.0.1:1\nclusters: [{{name: a, endpoints: [\"127.0.0.1:2\"]}}]\nroute: {{cluster: a}}\nfilters: [{{name: rl, module: {}, configuration: {{burst: 5}}}}]\n",
            wasm("local-rate-limit").display()
        ),
    )
    .unwrap();
    let (code, _, err) = run(&["run", "--config", bad.to_str().unwrap(), "--check"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing field `rate`"), "the filter's reason is shown: {err}");
}

#[test]
fn compiled_modules_are_cached_on_disk() {
    let dir = scratch("cache");
    let cache = dir.join("modules");
    let config = dir.join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:1\ncache_dir: {}\nclusters: [{{name: a, endpoints: [\"127.0.0.1:2\"]}}]\nroute: {{cluster: a}}\nfilters: [{{name: m, module: {}}}]\n",
            cache.display(),
            wasm("measure").display()
        ),
    )
    .unwrap();
    let (code, _, err) = run(&["run", "--config", config.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "{err}");
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].extension().is_some_and(|e| e == "cwasm"));
    let modified = std::fs::metadata(&entries[0]).unwrap().modified().unwrap();
    let (code, _, _) = run(&["run", "--config", config.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0);
    assert_eq!(std::fs::metadata(&entries[0]).unwrap().modified().unwrap(), modified, "reused, not rewritten");
}
