//! The fault-injection filter through `meshwork run`: aborts and delays for a share of requests,
//! header-controlled faults only when configured, and the cap on active faults (released when a
//! delayed client goes away).

use std::io::Write;
use std::time::{Duration, Instant};

use meshwork_e2e::*;

/// A proxy with two workers in front of `up`, running the filter with `configuration`.
fn faulty(up: &Upstream, configuration: &str) -> Proxy {
    proxy(&format!(
        "workers: 2\nclusters: [{}]\nroute: {{cluster: app}}\nfilters:\n  - name: fault\n    module: {}\n    configuration: {configuration}\n",
        cluster("app", up),
        wasm("fault-injection").display()
    ))
}

fn counter(p: &Proxy, name: &str) -> i64 {
    p.stat(name, &[("plugin", "fault")]).unwrap_or(0)
}

/// |observed - n p| within 4.5 standard deviations of a binomial(n, p).
fn assert_binomial(observed: usize, n: usize, p: f64, what: &str) {
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let expected = n as f64 * p;
    assert!(
        (observed as f64 - expected).abs() <= 4.5 * sigma,
        "{what}: {observed} of {n}, expected {expected:.0} ± {:.0}",
        4.5 * sigma
    );
}

#[test]
fn a_full_abort_answers_every_request_and_the_upstream_sees_none() {
    let up = upstream("app");
    let p = faulty(&up, "{abort: {http_status: 503, percentage: 100}}");
    let results = storm(300, 16, &p.url("/aborted"), &[]);
    for r in &results {
        let r = r.as_ref().expect("every request is answered");
        assert_eq!(r.status, 503);
        assert_eq!(r.text(), "fault filter abort");
    }
    assert_eq!(up.requests(), 0, "no aborted request reaches the upstream");
    assert_eq!(counter(&p, "meshwork_fault_injection_aborts_injected_total"), 300);
    let active = eventually(Duration::from_secs(10), || {
        (counter(&p, "meshwork_fault_injection_active_faults") == 0).then_some(())
    });
    assert!(active.is_some(), "every abort gave its place back");
}

#[test]
fn a_partial_abort_hits_its_share_of_requests() {
    let up = upstream("app");
    let p = faulty(&up, "{abort: {http_status: 418, percentage: {numerator: 5000, denominator: TEN_THOUSAND}}}");
    let n = 1200;
    let results = storm(n, 16, &p.url("/half"), &[]);
    let statuses: Vec<u16> = results.iter().map(|r| r.as_ref().expect("answered").status).collect();
    let aborted = statuses.iter().filter(|s| **s == 418).count();
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(aborted + passed, n, "only aborts and upstream answers");
    assert_binomial(aborted, n, 0.5, "aborted at 50%");
    assert_eq!(up.requests() as usize, passed, "exactly the requests not aborted reach the upstream");
    assert_eq!(counter(&p, "meshwork_fault_injection_aborts_injected_total") as usize, aborted);
}

#[test]
fn a_delay_holds_the_request_and_the_upstream_still_answers() {
    let up = upstream("app");
    let p = faulty(&up, "{delay: {fixed_delay: 300ms, percentage: 100}}");
    for _ in 0..3 {
        let started = Instant::now();
        let r = get(&p.url("/slow"), &[]);
        assert!(started.elapsed() >= Duration::from_millis(300), "delayed only {:?}", started.elapsed());
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], "/slow", "the upstream answered after the delay");
    }
    assert_eq!(up.requests(), 3);
    assert_eq!(counter(&p, "meshwork_fault_injection_delays_injected_total"), 3);

    // A delay and an abort on one request: the abort answers when the delay ends.
    let up = upstream("app");
    let p = faulty(&up, "{delay: {fixed_delay: 300ms}, abort: {http_status: 503}}");
    let started = Instant::now();
    let r = post(&p.url("/both"), &[], b"a body waits with its request");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, 503);
    assert_eq!(up.requests(), 0);
}

#[test]
fn header_controlled_faults_apply_only_when_configured() {
    let abort_418 = [("x-envoy-fault-abort-request", "418")];
    let delay_300 = [("x-envoy-fault-delay-request", "300")];

    // Fixed faults (here at 0%): the caller's headers change nothing.
    let up = upstream("app");
    let p = faulty(&up, "{abort: {http_status: 503, percentage: 0}, delay: {fixed_delay: 1s, percentage: 0}}");
    assert_eq!(get(&p.url("/"), &abort_418).status, 200);
    assert_eq!(get(&p.url("/"), &delay_300).status, 200);
    assert_eq!(counter(&p, "meshwork_fault_injection_delays_injected_total"), 0);
    assert_eq!(counter(&p, "meshwork_fault_injection_aborts_injected_total"), 0);
    assert_eq!(up.requests(), 2);

    // header_abort / header_delay: the caller chooses.
    let up = upstream("app");
    let p = faulty(&up, "{abort: {header_abort: {}}, delay: {header_delay: {}}}");
    assert_eq!(get(&p.url("/"), &[]).status, 200, "no header, no fault");
    let r = get(&p.url("/"), &abort_418);
    assert_eq!(r.status, 418);
    assert_eq!(up.requests(), 1, "the aborted request stayed in the proxy");
    let started = Instant::now();
    assert_eq!(get(&p.url("/"), &delay_300).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let r = get(&p.url("/"), &[abort_418[0], ("x-envoy-fault-abort-request-percentage", "0")]);
    assert_eq!(r.status, 200, "a percentage header of 0 turns the fault off");
    assert_eq!(get(&p.url("/"), &[("x-envoy-fault-abort-request", "not-a-status")]).status, 200);
    assert_eq!(up.requests(), 4);

    // Header conditions restrict which requests may get a fault.
    let up = upstream("app");
    let p = faulty(&up, "{abort: {http_status: 503}, headers: [{name: x-chaos, value: \"on\"}]}");
    assert_eq!(get(&p.url("/"), &[]).status, 200);
    assert_eq!(get(&p.url("/"), &[("x-chaos", "off")]).status, 200);
    assert_eq!(get(&p.url("/"), &[("x-chaos", "on")]).status, 503);
}

/// Sends a GET on a raw connection and returns it unread.
fn open_request(p: &Proxy, headers: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(p.addr).expect("connect");
    write!(s, "GET /held HTTP/1.1\r\nhost: x\r\n{headers}\r\n").expect("send");
    s
}

#[test]
fn max_active_faults_caps_faults_and_a_reset_gives_the_place_back() {
    let up = upstream("app");
    let p = faulty(&up, "{delay: {header_delay: {}}, max_active_faults: 1}");
    let active = |n: i64| {
        eventually(Duration::from_secs(10), || {
            (counter(&p, "meshwork_fault_injection_active_faults") == n).then_some(())
        })
        .is_some()
    };

    // One request holds the only place for a minute...
    let held = open_request(&p, "x-envoy-fault-delay-request: 60000\r\n");
    assert!(active(1), "the delayed request holds a place");
    // ...so another that asks for a delay gets none.
    let r = get(&p.url("/"), &[("x-envoy-fault-delay-request", "60000")]);
    assert_eq!(r.status, 200);
    assert_eq!(counter(&p, "meshwork_fault_injection_faults_overflow_total"), 1);
    assert_eq!(counter(&p, "meshwork_fault_injection_delays_injected_total"), 1);

    // The client goes away mid-delay: the place is given back long before the delay would end.
    drop(held);
    assert!(active(0), "a reset stream released its place");
    let started = Instant::now();
    assert_eq!(get(&p.url("/"), &[("x-envoy-fault-delay-request", "200")]).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200), "the freed place serves the next fault");
    assert_eq!(counter(&p, "meshwork_fault_injection_delays_injected_total"), 2);
    assert_eq!(counter(&p, "meshwork_fault_injection_faults_overflow_total"), 1);
    assert!(active(0));
}

#[test]
fn bad_configuration_is_refused_naming_the_field() {
    let up = upstream("app");
    for (configuration, expected) in [
        ("{abort: {http_status: 700}}", "abort.http_status 700"),
        ("{abort: {http_status: 503, header_abort: {}}}", "abort: give exactly one of"),
        ("{delay: {fixed_delay: 5 parsecs}}", "delay.fixed_delay: \"5 parsecs\" has an unknown unit"),
        ("{abort: {http_status: 503, percentage: {numerator: 5, denominator: THOUSAND}}}", "abort.percentage"),
        ("{abort: {http_status: 503, percentage: 101}}", "abort.percentage: numerator 101"),
        ("{abrt: {http_status: 503}}", "unknown field `abrt`"),
        ("{headers: [{name: x-a, value: b}]}", "give abort, delay or both"),
        ("{abort: {http_status: 503}, headers: [{name: x-a}]}", "headers[0] (x-a): give exactly one of"),
    ] {
        let err = try_proxy(&format!(
            "clusters: [{}]\nroute: {{cluster: app}}\nfilters: [{{name: fault, module: {}, configuration: {configuration}}}]\n",
            cluster("app", &up),
            wasm("fault-injection").display()
        ))
        .err()
        .unwrap_or_else(|| panic!("{configuration} was accepted"));
        assert!(err.contains(expected), "{configuration}: {err}");
    }
}
