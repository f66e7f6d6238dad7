//! The bulkhead filter through `meshwork run` with two workers: the cap holds across workers,
//! the queue serves in order and times out, and no way of ending a stream leaks a place.

use std::io::Write;
use std::time::Duration;

use meshwork_e2e::*;

fn bulkhead_proxy(up: &Upstream, config: &str, more_filters: &str) -> Proxy {
    proxy(&format!(
        "workers: 2\nclusters: [{}]\nroute: {{cluster: app, timeout: 5s}}\nfilters:\n  - name: bh\n    module: {}\n    configuration: {config}\n{more_filters}",
        cluster("app", up),
        wasm("bulkhead").display()
    ))
}

fn statuses(results: &[Result<Reply, String>]) -> (usize, usize, Vec<String>) {
    let ok = results.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status == 200)).count();
    let rejected: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|r| r.status == 503)
        .filter_map(|r| r.header("x-meshwork-bulkhead").map(str::to_owned))
        .collect();
    (ok, rejected.len(), rejected)
}

#[test]
fn caps_requests_in_flight_across_workers() {
    let up = upstream("app");
    let p = bulkhead_proxy(&up, "{max_concurrent: 4}", "");
    let results = storm(12, 12, &p.url("/slow?delay=700ms"), &[]);
    let (ok, rejected, why) = statuses(&results);
    assert_eq!((ok, rejected), (4, 8), "{why:?}");
    assert!(why.iter().all(|w| w == "full"));
    assert_eq!(up.requests(), 4);
    assert_eq!(p.stat_sum("meshwork_bulkhead_requests_total", &[("outcome", "rejected")]), 8);
}

#[test]
fn the_queue_waits_for_a_place_and_times_out() {
    let up = upstream("app");
    let p = bulkhead_proxy(&up, "{max_concurrent: 2, max_queued: 2, queue_timeout: 5s}", "");
    let results = storm(5, 5, &p.url("/q?delay=400ms"), &[]);
    let (ok, rejected, why) = statuses(&results);
    assert_eq!((ok, rejected), (4, 1), "two at once, two queued then served, one turned away: {why:?}");
    assert_eq!(p.stat_sum("meshwork_bulkhead_requests_total", &[("outcome", "queued")]), 2);

    let p = bulkhead_proxy(&up, "{max_concurrent: 1, max_queued: 1, queue_timeout: 200ms}", "");
    let results = storm(2, 2, &p.url("/q?delay=1500ms"), &[]);
    let (ok, _, why) = statuses(&results);
    assert_eq!((ok, why), (1, vec!["queue-timeout".to_string()]));
}

/// Sends a slow request and hangs up before the answer.
fn abandon(p: &Proxy) {
    let mut s = std::net::TcpStream::connect(p.addr).unwrap();
    s.write_all(b"GET /abandoned?delay=3s HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
}

#[test]
fn no_ending_of_a_stream_leaks_a_place() {
    let up = upstream("app");
    let more = format!(
        "  - {{name: rl, module: {}, configuration: {{rate: 1, period: 1h, burst: 6, key: {{header: x-limit}}}}}}\n  - {{name: bad, module: {}, fail: closed, configuration: {{do: trap, at: response_headers}}}}\n",
        wasm("local-rate-limit").display(),
        wasm("misbehave").display()
    );
    let p = bulkhead_proxy(&up, "{max_concurrent: 3}", &more);
    for round in 0..3 {
        // Each group has its own rate-limit bucket (6 requests), except the limited one.
        let bucket = |group: &str| format!("{group}-{round}");
        // The upstream resets the connection.
        let r = storm(6, 3, &p.url("/reset?reset=1"), &[("x-limit", &bucket("reset"))]);
        assert!(r.iter().all(|r| r.as_ref().is_ok_and(|r| r.status == 503)), "{r:?}");
        // A later filter answers locally (from the second round on, x-limit: a is spent).
        let r = storm(6, 3, &p.url("/limited"), &[("x-limit", "a")]);
        assert!(round == 0 || r.iter().all(|r| r.as_ref().is_ok_and(|r| r.status == 429)), "{r:?}");
        // A later filter's VM traps mid-stream.
        let r = storm(6, 3, &p.url("/trap"), &[("x-misbehave", "1"), ("x-limit", &bucket("trap"))]);
        assert!(r.iter().all(|r| r.as_ref().map_or(true, |r| r.status != 200)), "{r:?}");
        // Clients hang up while the upstream is still working.
        for _ in 0..3 {
            abandon(&p);
        }
    }
    // Every place must be free again: exactly three slow requests fit, the fourth does not.
    let mut attempt = 0;
    let free = eventually(Duration::from_secs(10), || {
        attempt += 1;
        let bucket = format!("after-{attempt}");
        let results = storm(4, 4, &p.url("/after?delay=600ms"), &[("x-limit", &bucket)]);
        let (ok, rejected, _) = statuses(&results);
        ((ok, rejected) == (3, 1)).then_some(())
    });
    assert!(free.is_some(), "places leaked: {}", p.process.stderr());
}

#[test]
fn keys_are_separate() {
    let up = upstream("app");
    let p = bulkhead_proxy(&up, "{max_concurrent: 1, key: {header: x-tenant}}", "");
    let a = std::thread::spawn({
        let url = p.url("/a?delay=800ms");
        move || get(&url, &[("x-tenant", "a")])
    });
    std::thread::sleep(Duration::from_millis(200));
    let a2 = get(&p.url("/a"), &[("x-tenant", "a")]);
    assert_eq!((a2.status, a2.header("x-meshwork-bulkhead")), (503, Some("full")));
    assert_eq!(get(&p.url("/b"), &[("x-tenant", "b")]).status, 200, "tenant b has its own places");
    assert_eq!(a.join().unwrap().status, 200);
}

#[test]
fn bad_configuration_is_refused_with_the_reason() {
    let up = upstream("app");
    for (config, message) in [
        ("{max_queued: 3}", "missing field `max_concurrent`"),
        ("{max_concurrent: 0}", "max_concurrent must be at least 1"),
        ("{max_concurrent: 1, lease: 10ms}", "lease must be at least 1s"),
    ] {
        let err = try_proxy(&format!(
            "clusters: [{}]\nroute: {{cluster: app}}\nfilters: [{{name: bh, module: {}, configuration: {config}}}]\n",
            cluster("app", &up),
            wasm("bulkhead").display()
        ))
        .err()
        .expect("refused");
        assert!(err.contains(message), "{config}: {err}");
    }
}
