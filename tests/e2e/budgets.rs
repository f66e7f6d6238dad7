//! Every sandbox budget, each configured small: a filter over it gets the ABI's status (the
//! SDK decides whether that is fatal), the refusal is counted in
//! `meshwork_filter_budget_exceeded_total{filter,budget}` and logged once, and the proxy keeps
//! serving. Tables past their cap fail the VM (as memory does); a module file is checked by
//! size and magic number before it is read.

use std::time::{Duration, Instant};

use meshwork_e2e::*;

/// INTERNAL_FAILURE: the spec's "the host could not do it", the answer to every budget.
const REFUSED: &str = "10";

struct Setup {
    _up: Upstream,
    _side: Upstream,
    p: Proxy,
}

fn setup(limits: &str) -> Setup {
    let up = upstream("app");
    let side = upstream("side");
    let p = proxy(&format!(
        "clusters: [{}, {}]\nroute: {{cluster: app}}\nfilters:\n  - name: probe\n    module: {}\n    configuration: {{callout_cluster: side}}\n    limits: {{{limits}}}\n",
        cluster("app", &up),
        cluster("side", &side),
        wasm("hostcalls").display()
    ));
    Setup { _up: up, _side: side, p }
}

/// Asks the probe to take `n` of `budget`; returns (accepted, first refusal).
fn probe(s: &Setup, budget: &str, n: usize, salt: &str) -> (usize, String) {
    let r =
        get(&s.p.url("/"), &[("x-test", "budget"), ("x-budget", budget), ("x-n", &n.to_string()), ("x-salt", salt)]);
    assert_eq!(r.status, 200, "{budget}: {}", r.text());
    (r.header("x-budget-ok").unwrap().parse().unwrap(), r.header("x-budget-refused").unwrap().to_owned())
}

fn exceeded(s: &Setup, budget: &str) -> i64 {
    s.p.stat("meshwork_filter_budget_exceeded_total", &[("filter", "probe"), ("budget", budget)]).unwrap_or(0)
}

#[test]
fn shared_data_stops_at_its_key_and_byte_budgets() {
    let s = setup("shared_data_keys: 50");
    // Keys: the probe's own start-up writes a few; 100-byte values.
    let (ok, refused) = probe(&s, "shared", 60, "a");
    assert!((44..50).contains(&ok) && refused == REFUSED, "50 keys in all under the vm_id ({ok} new)");
    // (+1: the probe's on_log counts the request under a new key, refused too.)
    assert_eq!(exceeded(&s, "shared_data_keys"), 60 - ok as i64 + 1);
    assert_eq!(s.p.process.stderr().matches("reached its shared_data_keys budget of 50").count(), 1, "logged once");
    // The Rust SDK panics on a status it does not expect from set_shared_data (that on_log
    // write): its VM fails and is rebuilt, and the proxy answers as the fail policy says.
    assert_eq!(s.p.stat("meshwork_filter_failures_total", &[("filter", "probe"), ("kind", "trap")]), Some(1));
    assert_eq!(get(&s.p.url("/"), &[("x-test", "headers")]).status, 200, "rebuilt and serving");
    // Bytes: many keys allowed, but 16 KiB.
    let s = setup("shared_data_bytes: 16KiB");
    let (ok, refused) = probe(&s, "shared", 400, "b");
    assert!((130..=160).contains(&ok) && refused == REFUSED, "{ok} keys of ~110 bytes fit in 16 KiB");
    assert!(exceeded(&s, "shared_data_bytes") > 0);
}

#[test]
fn queues_metrics_and_callouts_stop_at_their_budgets() {
    let s = setup("queues: 3, queue_depth: 20, metrics: 40, callouts_in_flight: 4");
    // Queue depth (the registration counts as the first of n) and queues per vm_id.
    let (ok, refused) = probe(&s, "queue", 40, "q");
    assert_eq!((ok, refused.as_str()), (21, REFUSED), "register + 20 items");
    assert_eq!(exceeded(&s, "queue_depth"), 19);
    let (ok, refused) = probe(&s, "queues", 5, "r");
    assert_eq!((ok, refused.as_str()), (2, REFUSED), "3 queues in all (one registered above)");
    assert_eq!(exceeded(&s, "queues"), 3);
    // Metrics: distinct names; defining one again is free.
    let (ok, refused) = probe(&s, "metrics", 50, "m");
    assert_eq!((ok, refused.as_str()), (40, REFUSED));
    let (ok, _) = probe(&s, "metrics", 10, "m");
    assert_eq!(ok, 10, "the same names again cost nothing");
    // Callouts in flight from one context.
    let (ok, refused) = probe(&s, "callouts", 10, "c");
    assert_eq!((ok, refused.as_str()), (4, REFUSED));
    assert_eq!(exceeded(&s, "callouts_in_flight"), 6);
    let log = s.p.process.stderr();
    assert_eq!(log.matches("reached its callouts_in_flight budget of 4").count(), 1, "{log}");
    assert_eq!(s.p.stat_sum("meshwork_filter_failures_total", &[]), 0, "statuses the SDK handles fail nothing");
    assert_eq!(get(&s.p.url("/"), &[("x-test", "headers")]).status, 200);
}

#[test]
fn log_writes_are_cut_at_their_budget() {
    let s = setup("log_bytes_per_call: 1KiB");
    let r = get(&s.p.url("/"), &[("x-test", "budget"), ("x-budget", "log"), ("x-n", "100000")]);
    assert_eq!(r.header("x-budget-refused"), Some("none"), "writing more than the budget is not an error");
    assert_eq!(r.header("x-budget-written"), Some("100000"), "WASI reports the whole write done");
    assert_eq!(exceeded(&s, "log_bytes"), 2, "proxy_log and fd_write were both cut");
    let log = s.p.process.stderr();
    let longest = log.lines().map(|l| l.matches('l').count()).max().unwrap_or(0);
    assert!(longest > 1000 && longest < 1200, "a log line carries at most 1 KiB of the message ({longest})");
}

#[test]
fn a_callout_timeout_of_zero_means_the_longest_wait_not_forever() {
    let s = setup("callout_timeout: 500ms");
    let started = Instant::now();
    let r = get(&s.p.url("/"), &[("x-test", "callout-timeout-zero"), ("x-delay", "30s")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-callout-status"), Some("504"), "the callout timed out at the VM's maximum");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // And a callout asking for more than the maximum gets the maximum.
    let started = Instant::now();
    let r = get(&s.p.url("/"), &[("x-test", "callout-delay"), ("x-delay", "30s")]);
    assert_eq!(r.header("x-callout-status"), Some("504"));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_table_grown_past_its_cap_fails_the_vm_by_kind() {
    let up = upstream("app");
    let dir = scratch("budgets");
    // A module that grows its table by 1000 elements on every request.
    let module = wat_module(
        &dir,
        "tables",
        r#"(module
          (memory (export "memory") 1)
          (table $t 10 funcref)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "malloc") (param i32) (result i32) i32.const 1024)
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (drop (table.grow $t (ref.null func) (i32.const 1000)))
            i32.const 0))"#,
    );
    let p = proxy(&format!(
        "clusters: [{}]\nroute: {{cluster: app}}\nfilters: [{{name: tables, module: {}, fail: open, limits: {{table_elements: 2500}}}}]\n",
        cluster("app", &up),
        module.display()
    ));
    let statuses: Vec<u16> = (0..4).map(|_| get(&p.url("/"), &[]).status).collect();
    assert_eq!(statuses, [200; 4], "fail open: every request still answered");
    assert_eq!(p.stat("meshwork_filter_failures_total", &[("filter", "tables"), ("kind", "table")]), Some(1));
    assert!(p.process.logged("grew a table past the cap"), "{}", p.process.stderr());
}

#[test]
fn module_files_are_checked_before_they_are_read() {
    let up = upstream("app");
    let dir = scratch("budgets");
    // A 600 MB sparse file: refused by its size at once, without reading it.
    let big = dir.join("huge.wasm");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(600 << 20).unwrap();
    let started = Instant::now();
    let err = try_proxy(&format!(
        "clusters: [{}]\nroute: {{cluster: app}}\nfilters: [{{name: huge, module: {}}}]\n",
        cluster("app", &up),
        big.display()
    ))
    .err()
    .expect("refused");
    assert!(err.contains("more than the 104857600 a module may be"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Allowed by size but not a module: refused by its first four bytes.
    let err = try_proxy(&format!(
        "clusters: [{}]\nroute: {{cluster: app}}\nfilters: [{{name: huge, module: {}, limits: {{module_size: 1GiB}}}}]\n",
        cluster("app", &up),
        big.display()
    ))
    .err()
    .expect("refused");
    assert!(err.contains("bad magic number"), "{err}");
}
