//! Hostile filters: infinite loops, traps, memory bombs, header floods, wild pointers, garbage
//! return values. Every request must be answered per the fail policy, the proxy must keep
//! serving, and the VM must come back.

use meshwork_e2e::*;

fn misbehaving_proxy(up: &Upstream, misdeed: &str, at: &str, fail: &str, restarts: u32, workers: usize) -> Proxy {
    // A memory bomb must meet the memory cap, not the deadline, even on a loaded machine.
    let callback_timeout = if misdeed == "memory" { "2s" } else { "50ms" };
    proxy(&format!(
        r#"workers: {workers}
clusters: [{}]
route: {{cluster: app}}
filters:
  - name: m
    module: {}
    configuration: {{do: {misdeed}, at: {at}}}
    fail: {fail}
    limits: {{memory: 32MiB, callback_timeout: {callback_timeout}, max_restarts_per_minute: {restarts}}}
"#,
        cluster("app", up),
        wasm("misbehave").display()
    ))
}

/// Misbehaving and well-behaved requests at the same time; returns both sets of outcomes.
type Outcomes = Vec<Result<Reply, String>>;

fn mixed_storm(p: &Proxy, n: usize) -> (Outcomes, Outcomes) {
    let url = p.url("/");
    let bad_url = url.clone();
    let bad = std::thread::spawn(move || storm(n, 8, &bad_url, &[("x-misbehave", "1")]));
    let good = storm(n, 8, &url, &[]);
    (bad.join().unwrap(), good)
}

fn check(misdeed: &str, at: &str, fail: &str, kind: &str) {
    let up = upstream("app");
    let p = misbehaving_proxy(&up, misdeed, at, fail, 1000, 2);
    assert_eq!(get(&p.url("/"), &[]).header("x-misbehave-ok"), Some("1"), "the filter works before");
    let (bad, good) = mixed_storm(&p, 24);
    let label = format!("{misdeed} at {at}, fail {fail}");
    for r in &bad {
        let r = r.as_ref().unwrap_or_else(|e| panic!("{label}: a misbehaving request got no answer: {e}"));
        match fail {
            "closed" => assert_eq!(r.status, 503, "{label}: {}", r.text()),
            _ => {
                assert_eq!(r.status, 200, "{label}: fail open passes the request: {}", r.text());
                assert_eq!(r.header("x-misbehave-ok"), None, "{label}: the failed filter was skipped");
            }
        }
    }
    for r in &good {
        let r = r.as_ref().unwrap_or_else(|e| panic!("{label}: a well-behaved request got no answer: {e}"));
        // A well-behaved stream sharing a VM that just died gets the fail policy too.
        let allowed: &[u16] = if fail == "closed" { &[200, 503] } else { &[200] };
        assert!(allowed.contains(&r.status), "{label}: {} {}", r.status, r.text());
    }
    for _ in 0..4 {
        let r = get(&p.url("/"), &[]);
        assert_eq!(r.status, 200, "{label}: the proxy serves afterwards");
        assert_eq!(r.header("x-misbehave-ok"), Some("1"), "{label}: with a rebuilt VM");
    }
    // Requests whose VM died under them count as `vm_failed`; together at least one per
    // misbehaving request.
    let own = p.stat("meshwork_filter_failures_total", &[("filter", "m"), ("kind", kind)]).unwrap_or(0);
    let all = p.stat_sum("meshwork_filter_failures_total", &[("filter", "m")]);
    assert!(own >= 1 && all >= 24, "{label}: {own} failures of kind {kind}, {all} in all");
    assert!(p.stat("meshwork_filter_vm_restarts_total", &[("filter", "m")]).unwrap() >= 1, "{label}");
    assert!(p.process.logged("filter VM failed"), "{label}: the failure is logged");
}

#[test]
fn infinite_loops_are_interrupted() {
    check("loop", "request_headers", "closed", "timeout");
    check("loop", "response_headers", "open", "timeout");
}

#[test]
fn traps_fail_the_stream_per_policy() {
    check("trap", "request_headers", "open", "trap");
    check("trap", "response_headers", "closed", "trap");
    // A body callback only runs for a request with a body.
    let up = upstream("app");
    let p = misbehaving_proxy(&up, "trap", "request_body", "closed", 1000, 1);
    assert_eq!(post(&p.url("/"), &[("x-misbehave", "1")], b"some body").status, 503);
    assert_eq!(get(&p.url("/"), &[("x-misbehave", "1")]).status, 200, "no body, no body callback");
    assert_eq!(post(&p.url("/"), &[], b"some body").status, 200);
    assert_eq!(up.requests(), 2);
}

#[test]
fn memory_bombs_hit_the_cap() {
    check("memory", "request_headers", "closed", "memory");
    check("memory", "request_headers", "open", "memory");
}

#[test]
fn header_floods_are_cut_off() {
    check("headers-10k", "request_headers", "open", "trap");
    check("headers-10k", "response_headers", "closed", "trap");
}

#[test]
fn crash_loops_are_rate_limited() {
    let up = upstream("app");
    let p = misbehaving_proxy(&up, "trap", "request_headers", "closed", 3, 1);
    // Every misbehaving request kills the VM: the first VM and 3 rebuilds, then the budget
    // (3 a minute) is spent and the filter stays down.
    for _ in 0..8 {
        assert_eq!(get(&p.url("/"), &[("x-misbehave", "1")]).status, 503);
    }
    let r = get(&p.url("/"), &[]);
    assert_eq!(r.status, 503, "fail closed while the filter is down: {}", r.text());
    assert!(r.text().contains("filter m is unavailable"), "{}", r.text());
    assert_eq!(p.stat("meshwork_filter_vm_restarts_total", &[("filter", "m")]), Some(3));
    assert_eq!(p.stat("meshwork_filter_unavailable_rq_total", &[]), Some(5));
    let mut process = p.process;
    assert!(process.alive(), "the proxy is still up");
}

fn wat_proxy(up: &Upstream, module: &std::path::Path, fail: &str) -> Proxy {
    proxy(&format!(
        "clusters: [{}]\nroute: {{cluster: app}}\nfilters: [{{name: w, module: {}, fail: {fail}, limits: {{callback_timeout: 50ms}}}}]\n",
        cluster("app", up),
        module.display()
    ))
}

/// A minimal proxy-wasm module: bump allocator, one request-headers callback body.
fn module(on_request_headers: &str, malloc_result: Option<u32>, extra: &str) -> String {
    let malloc = match malloc_result {
        Some(p) => format!("(func (export \"malloc\") (param i32) (result i32) i32.const {p})"),
        None => "(func (export \"malloc\") (param $n i32) (result i32) (local $p i32)
                   global.get $heap local.set $p
                   (global.set $heap (i32.add (global.get $heap) (local.get $n)))
                   local.get $p)"
            .into(),
    };
    format!(
        r#"(module
  (import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  {malloc}
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    {on_request_headers})
  (data (i32.const 300) ":path")
  {extra}
)"#
    )
}

/// Stores a status as one ASCII digit (status 6 → '6') at `at`.
fn digit(at: u32, call: &str) -> String {
    format!("(i32.store8 (i32.const {at}) (i32.add (i32.const 48) {call}))")
}

const REPLY_WITH_DIGITS: &str = "(drop (call $reply (i32.const 200) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 6) (i32.const 0) (i32.const 0) (i32.const -1))) (i32.const 1)";

#[test]
fn wild_pointers_get_invalid_memory_access_not_a_crash() {
    let up = upstream("app");
    let dir = scratch("wild");
    let body = [
        digit(100, "(call $get (i32.const 0) (i32.const 0xFFFFFFF0) (i32.const 16) (i32.const 200) (i32.const 204))"),
        digit(101, "(call $get (i32.const 0) (i32.const 300) (i32.const 5) (i32.const 0xFFFFFFFC) (i32.const 204))"),
        digit(102, "(call $log (i32.const 2) (i32.const 65530) (i32.const 100))"),
        digit(103, "(call $prop (i32.const 0x7FFFFFFF) (i32.const 10) (i32.const 200) (i32.const 204))"),
        digit(104, "(call $log (i32.const 2) (i32.const 10) (i32.const 0xFFFFFFFF))"),
        digit(
            105,
            "(call $set_shared (i32.const 0xFFFFFF00) (i32.const 512) (i32.const 0) (i32.const 0) (i32.const 0))",
        ),
        REPLY_WITH_DIGITS.into(),
    ]
    .join("\n");
    let path = wat_module(&dir, "wild", &module(&body, None, ""));
    let p = wat_proxy(&up, &path, "closed");
    for _ in 0..3 {
        let r = get(&p.url("/"), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "666666", "every wild pointer got INVALID_MEMORY_ACCESS (6)");
    }
    assert_eq!(p.stat("meshwork_filter_failures_total", &[("filter", "w")]), None, "and nothing failed");

    // A guest allocator that answers with an out-of-bounds pointer is also just a status.
    let path = wat_module(
        &dir,
        "bad-malloc",
        &module(
            &[
                digit(100, "(call $get (i32.const 0) (i32.const 300) (i32.const 5) (i32.const 200) (i32.const 204))"),
                "(i32.store8 (i32.const 101) (i32.const 33))".into(),
                "(i32.store8 (i32.const 102) (i32.const 33))".into(),
                "(i32.store8 (i32.const 103) (i32.const 33))".into(),
                "(i32.store8 (i32.const 104) (i32.const 33))".into(),
                "(i32.store8 (i32.const 105) (i32.const 33))".into(),
                REPLY_WITH_DIGITS.into(),
            ]
            .join("\n"),
            Some(0xFFFF_FF00),
            "",
        ),
    );
    let p = wat_proxy(&up, &path, "closed");
    assert_eq!(get(&p.url("/"), &[]).text(), "6!!!!!");
}

#[test]
fn garbage_return_values_fail_the_filter() {
    let up = upstream("app");
    let dir = scratch("garbage");
    let path = wat_module(&dir, "garbage", &module("(i32.const 42)", None, ""));
    let closed = wat_proxy(&up, &path, "closed");
    let r = get(&closed.url("/"), &[]);
    assert_eq!(r.status, 503, "fail closed");
    assert_eq!(closed.stat("meshwork_filter_failures_total", &[("filter", "w"), ("kind", "bad_return")]), Some(1));
    assert!(closed.process.logged("proxy_on_request_headers returned 42"), "{}", closed.process.stderr());
    let open = wat_proxy(&up, &path, "open");
    assert_eq!(get(&open.url("/"), &[]).status, 200, "fail open");
}

#[test]
fn hostile_wat_modules_are_contained() {
    let up = upstream("app");
    let dir = scratch("hostile");
    for (name, body, kind) in [
        ("spin", "(loop $l (br $l)) (i32.const 0)", "timeout"),
        ("unreachable", "unreachable", "trap"),
        ("grow", "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 64)) (i32.const -1)))) (i32.const 0)", "memory"),
    ] {
        let path = wat_module(&dir, name, &module(body, None, ""));
        let p = wat_proxy(&up, &path, "closed");
        let results = storm(10, 5, &p.url("/"), &[]);
        for r in &results {
            assert_eq!(r.as_ref().unwrap_or_else(|e| panic!("{name}: unanswered: {e}")).status, 503, "{name}");
        }
        assert_eq!(p.stat("meshwork_filter_failures_total", &[("filter", "w"), ("kind", kind)]), Some(10), "{name}");
    }
}

#[test]
fn start_up_failures_name_the_filter_and_the_reason() {
    let up = upstream("app");
    let dir = scratch("startup");
    let reject = wat_module(
        &dir,
        "reject",
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
             (func (export "malloc") (param i32) (result i32) i32.const 1024)
             (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 0))"#,
    );
    let no_memory = wat_module(
        &dir,
        "no-memory",
        r#"(module (func (export "proxy_abi_version_0_2_1")) (func (export "malloc") (param i32) (result i32) i32.const 0))"#,
    );
    let no_abi = wat_module(&dir, "no-abi", r#"(module (memory (export "memory") 1))"#);
    let trap_start = wat_module(
        &dir,
        "trap-start",
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
             (func (export "malloc") (param i32) (result i32) i32.const 1024)
             (func (export "_start") unreachable))"#,
    );
    for (module, expect) in [
        (&reject, "filter w: proxy_on_vm_start returned false"),
        (&no_memory, "does not export a memory named \"memory\""),
        (&no_abi, "exports no proxy_abi_version_* marker"),
        (&trap_start, "filter w: _start failed: trapped"),
    ] {
        let err = match try_proxy(&format!(
            "clusters: [{}]\nroute: {{cluster: app}}\nfilters: [{{name: w, module: {}}}]\n",
            cluster("app", &up),
            module.display()
        )) {
            Ok(_) => panic!("{} started", module.display()),
            Err(e) => e,
        };
        assert!(err.contains(expect), "{}: {err}", module.display());
    }
}
