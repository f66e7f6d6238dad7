//! The proxy in front of clients that misbehave, over real sockets: malformed and smuggling
//! requests, bodies that are malformed, abandoned or enormous, upstreams that die midway,
//! slowloris clients, idle and long-lived connections, connection caps, router headers from
//! outside the trust boundary, timers over whole responses. Limits are configured small so each
//! case runs in a few seconds. Most cases run on both request paths (no filter, and through a
//! filter chain), which must behave alike.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use meshwork_e2e::*;

/// No filter, and the measure filter (which changes nothing the proxy does).
fn chains() -> [String; 2] {
    [String::new(), format!("filters: [{{name: measure, module: {}}}]\n", wasm("measure").display())]
}

/// A chain whose filter holds each request's headers (and so its body) until a callout to the
/// `side` cluster answers after `x-delay` (the hostcalls test filter's `callout-delay`).
fn pausing_filter() -> String {
    format!(
        "filters: [{{name: hold, module: {}, configuration: {{callout_cluster: side}}}}]\n",
        wasm("hostcalls").display()
    )
}

/// A proxy to `up` (cluster `app`, and `side` when given); `extra` may bring its own `route:`.
fn proxy_with(up: &Upstream, side: Option<&Upstream>, extra: &str) -> Proxy {
    let mut clusters = vec![cluster("app", up)];
    if let Some(side) = side {
        clusters.push(cluster("side", side));
    }
    let route = if extra.contains("route:") { "" } else { "route: {cluster: app}\n" };
    proxy(&format!("clusters: [{}]\n{route}{extra}", clusters.join(", ")))
}

fn body_counts(up: &Upstream) -> (u64, u64, u64) {
    let b = &up.stats()["bodies"];
    (b["complete"].as_u64().unwrap(), b["failed"].as_u64().unwrap(), b["failed_bytes"].as_u64().unwrap())
}

#[test]
fn malformed_and_smuggling_requests_are_refused_before_the_upstream() {
    let up = upstream("app");
    for chain in chains() {
        let p = proxy_with(&up, None, &chain);
        post(&up.url("/stats/reset"), &[], b"");
        let cases: &[(&str, &[u8], u16)] = &[
            ("TE.TE", b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, identity\r\n\r\n", 400),
            ("two lengths", b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd", 400),
            ("obs-fold", b"GET / HTTP/1.1\r\nhost: a\r\nx-a: b\r\n  folded\r\n\r\n", 400),
            ("space before colon", b"GET / HTTP/1.1\r\nhost : a\r\n\r\n", 400),
            ("no Host", b"GET / HTTP/1.1\r\n\r\n", 400),
            ("two Hosts", b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
            ("bad Host", b"GET / HTTP/1.1\r\nhost: a b@c\r\n\r\n", 400),
            ("bad method", b"G(T / HTTP/1.1\r\nhost: a\r\n\r\n", 400),
        ];
        for (name, bytes, want) in cases {
            let reply = raw_exchange(p.addr, bytes, Duration::from_secs(5));
            assert_eq!(status_of(&reply), Some(*want), "{name} ({chain:?}): {}", String::from_utf8_lossy(&reply));
        }
        let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
        let reply =
            raw_exchange(p.addr, format!("GET / HTTP/1.1\r\nhost: a\r\n{many}\r\n").as_bytes(), Duration::from_secs(5));
        assert_eq!(status_of(&reply), Some(431), "150 headers");
        let huge = "v".repeat(80 << 10);
        let reply = raw_exchange(
            p.addr,
            format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {huge}\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        );
        assert_eq!(status_of(&reply), Some(431), "an 80 KiB header");
        assert_eq!(up.requests(), 0, "nothing malformed reached the upstream ({chain:?})");
        // Both framings (CL.TE): Transfer-Encoding wins and Content-Length is removed before the
        // message goes on (RFC 9112 6.3), so the upstream frames it exactly as the proxy did;
        // and the connection is closed after the answer, so bytes that followed are never read
        // as another request.
        let reply = raw_exchange(
            p.addr,
            b"POST /clte HTTP/1.1\r\nhost: a\r\ncontent-length: 30\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        let text = String::from_utf8_lossy(&reply);
        assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
        assert!(text.contains(r#""body_bytes":0"#) && !text.contains(r#""content-length":"30""#), "{text}");
        assert!(up.stats()["by_path"]["/smuggled"].is_null(), "nothing smuggled reached the upstream");
        post(&up.url("/stats/reset"), &[], b"");
        // An absolute-form target: its authority is the Host the upstream sees (RFC 9112 3.2.2).
        let reply = raw_exchange(
            p.addr,
            b"GET http://target.example/abs HTTP/1.1\r\nhost: other.example\r\nconnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        let text = String::from_utf8_lossy(&reply);
        assert_eq!(status_of(&reply), Some(200), "{text}");
        assert!(text.contains(r#""host":"target.example""#), "{text}");
        assert!(text.contains(r#""path":"/abs""#), "{text}");
        assert!(text.contains("x-request-id"), "both paths add x-request-id: {text}");
        assert_eq!(get(&p.url("/after"), &[]).status, 200, "the proxy keeps serving");
    }
}

#[test]
fn a_malformed_or_short_request_body_resets_the_upstream_request() {
    let up = upstream("app");
    for chain in chains() {
        let p = proxy_with(&up, None, &chain);
        post(&up.url("/stats/reset"), &[], b"");
        // A valid first chunk, then a chunk size that is not hex.
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.write_all(b"POST /body HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        s.write_all(b"zz\r\nworld\r\n0\r\n\r\n").unwrap();
        let reply = read_until_closed(&mut s, Duration::from_secs(5));
        assert_eq!(status_of(&reply), Some(400), "{chain:?}: {}", String::from_utf8_lossy(&reply));
        // A Content-Length the client does not reach before it leaves.
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.write_all(b"POST /body HTTP/1.1\r\nhost: a\r\ncontent-length: 100000\r\n\r\n").unwrap();
        s.write_all(&[b'x'; 1000]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
        let outcome = eventually(Duration::from_secs(5), || {
            let (complete, failed, _) = body_counts(&up);
            (complete + failed >= 2).then_some((complete, failed))
        });
        assert_eq!(outcome, Some((0, 2)), "{chain:?}: the upstream saw both bodies fail, none complete");
        assert!(p.stat("meshwork_downstream_rq_bad_body_total", &[]).unwrap_or(0) >= 1);
    }
}

#[test]
fn an_abandoned_upload_is_cut_upstream_at_once() {
    let up = upstream("app");
    let side = upstream("side");
    for chain in [String::new(), pausing_filter()] {
        let p = proxy_with(&up, Some(&side), &chain);
        post(&up.url("/stats/reset"), &[], b"");
        let mut s = TcpStream::connect(p.addr).unwrap();
        let total = 100 << 20;
        s.write_all(format!("POST /up?drain=1 HTTP/1.1\r\nhost: a\r\nx-test: callout-delay\r\nx-delay: 200ms\r\ncontent-length: {total}\r\n\r\n").as_bytes()).unwrap();
        let chunk = vec![b'u'; 64 << 10];
        for _ in 0..80 {
            s.write_all(&chunk).unwrap();
        }
        drop(s);
        let left = Instant::now();
        let outcome = eventually(Duration::from_secs(5), || {
            let (complete, failed, failed_bytes) = body_counts(&up);
            (complete + failed >= 1).then_some((complete, failed, failed_bytes))
        });
        let (complete, failed, failed_bytes) = outcome.expect("the upstream request ended");
        assert_eq!((complete, failed), (0, 1), "{chain:?}: the upload was cut, not completed");
        assert!(failed_bytes < total as u64 / 2, "{failed_bytes} bytes reached the upstream");
        assert!(left.elapsed() < Duration::from_secs(3), "cut {:?} after the client left", left.elapsed());
    }
}

#[test]
fn an_upstream_that_dies_midway_resets_the_client() {
    let up = upstream("app");
    for chain in chains() {
        let p = proxy_with(&up, None, &chain);
        let r = try_request("GET", &p.url("/cut?size=1000000&reset_after=100000&chunks=50&chunk_delay=20ms"), &[], b"");
        assert!(r.is_err(), "{chain:?}: a response cut upstream must not look complete: {:?}", r.map(|r| r.body.len()));
        assert_eq!(get(&p.url("/ok?size=10"), &[]).status, 200);
    }
}

/// Uploads `size` bytes to `url` on its own thread; returns the status (or an error).
fn upload(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &str,
    size: usize,
) -> std::thread::JoinHandle<Result<u16, String>> {
    let request =
        format!("POST {path} HTTP/1.1\r\nhost: a\r\n{headers}content-length: {size}\r\nconnection: close\r\n\r\n");
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let chunk = vec![b'b'; 256 << 10];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
            left -= n;
        }
        let reply = read_until_closed(&mut s, Duration::from_secs(60));
        status_of(&reply).ok_or_else(|| format!("no response: {}", String::from_utf8_lossy(&reply)))
    })
}

#[test]
fn memory_stays_bounded_whatever_the_bodies_and_the_peers_speed() {
    let up = upstream("app");
    let side = upstream("side");
    let limit = 256 << 10;
    for chain in [String::new(), pausing_filter()] {
        let p = proxy_with(&up, Some(&side), &format!("listener: {{buffer_limit: 256KiB}}\n{chain}"));
        post(&up.url("/stats/reset"), &[], b"");
        // Warm up (VMs, pools), then measure the peak from here.
        assert_eq!(post(&p.url("/warm?drain=1"), &[], &vec![b'w'; 1 << 20]).status, 200);
        let pid = p.process.pid();
        reset_peak_rss(pid);
        let (base, _) = rss_kib(pid);
        // Eight uploads of 32 MiB (128 times the limit each) to an upstream that waits a second
        // before reading, through a filter that holds each request first.
        let size = 32 << 20;
        let uploads: Vec<_> = (0..8)
            .map(|_| upload(p.addr, "/up?drain=1&read_delay=1s", "x-test: callout-delay\r\nx-delay: 300ms\r\n", size))
            .collect();
        for u in uploads {
            assert_eq!(u.join().unwrap(), Ok(200), "{chain:?}");
        }
        let (_, peak) = rss_kib(pid);
        let (complete, failed, _) = body_counts(&up);
        assert_eq!((complete, failed), (9, 0), "every upload arrived whole");
        assert_eq!(up.stats()["bodies"]["complete_bytes"].as_u64(), Some(8 * size as u64 + (1 << 20)));
        // A large slow download: the client reads 16 MiB at 8 MiB/s.
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.write_all(format!("GET /down?size={} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n", 16 << 20).as_bytes())
            .unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
            std::thread::sleep(Duration::from_millis(8));
        }
        assert!(got > 16 << 20, "the whole download arrived ({got} bytes)");
        let (_, peak_after) = rss_kib(pid);
        let grown_mib = (peak.max(peak_after).saturating_sub(base)) as f64 / 1024.0;
        // Per stream at most the limit in each direction plus hyper's own buffers (~1 MiB),
        // whatever the body sizes (256 MiB moved here).
        let bound_mib = 8.0 * (2.0 * limit as f64 / (1 << 20) as f64 + 1.0) + 16.0;
        println!("{chain:?}: peak RSS grew {grown_mib:.1} MiB while 256 MiB streamed (bound {bound_mib:.0} MiB)");
        assert!(grown_mib < bound_mib, "{chain:?}: peak RSS grew {grown_mib:.1} MiB");
    }
}

#[test]
fn a_filter_that_buffers_past_the_limit_gets_413_and_nothing_reaches_the_upstream() {
    let up = upstream("app");
    let side = upstream("side");
    let p = proxy_with(
        &up,
        Some(&side),
        &format!(
            "listener: {{buffer_limit: 64KiB}}\nfilters: [{{name: upper, module: {}, configuration: {{callout_cluster: side}}}}]\n",
            wasm("hostcalls").display()
        ),
    );
    // The hostcalls filter's `body` case buffers the whole body (StopIterationAndBuffer).
    let r = post(&p.url("/b"), &[("x-test", "body")], &vec![b'a'; 1 << 20]);
    assert_eq!(r.status, 413);
    assert_eq!(up.requests(), 0);
    assert_eq!(p.stat("meshwork_filter_buffer_overflow_total", &[("direction", "request")]), Some(1));
    let r = post(&p.url("/b"), &[("x-test", "body")], &vec![b'a'; 32 << 10]);
    assert_eq!(r.status, 200, "under the limit it passes");
    assert_eq!(r.json()["body_bytes"], 32 << 10);
}

#[test]
fn slowloris_clients_are_cut_off_at_the_request_headers_timeout() {
    let up = upstream("app");
    let p = proxy_with(&up, None, "listener: {request_headers_timeout: 1s}\n");
    let mut slow: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(p.addr).unwrap()).collect();
    for s in &mut slow {
        s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").unwrap();
    }
    let started = Instant::now();
    // A byte every 300 ms keeps each connection busy but never finishes its headers.
    let mut closed = vec![false; slow.len()];
    while started.elapsed() < Duration::from_secs(4) && closed.iter().any(|c| !c) {
        for (i, s) in slow.iter_mut().enumerate() {
            if !closed[i] && (s.write_all(b"x").is_err() || closed_within(s, Duration::from_millis(1))) {
                closed[i] = true;
            }
        }
        assert_eq!(get(&p.url("/meanwhile"), &[]).status, 200, "well-behaved clients are served");
        std::thread::sleep(Duration::from_millis(300));
    }
    let n = closed.iter().filter(|c| **c).count();
    assert_eq!(n, 100, "{n} of 100 slow clients cut after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_millis(3500), "cut at {:?}", started.elapsed());
    let cut = p.stat("meshwork_downstream_cx_closed_total", &[("reason", "request_headers_timeout")]);
    assert!(cut >= Some(100), "{cut:?}");
}

#[test]
fn idle_connections_close_and_old_or_busy_ones_drain() {
    let up = upstream("app");
    let request = b"GET /k HTTP/1.1\r\nhost: a\r\n\r\n";
    // Idle: one request, then silence.
    let p = proxy_with(&up, None, "listener: {idle_timeout: 1s}\n");
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.write_all(request).unwrap();
    let mut buf = [0u8; 4096];
    assert!(s.read(&mut buf).unwrap() > 0);
    assert!(!closed_within(&mut s, Duration::from_millis(600)), "open before the idle timeout");
    assert!(closed_within(&mut s, Duration::from_secs(2)), "closed after it");
    assert_eq!(p.stat("meshwork_downstream_cx_closed_total", &[("reason", "idle_timeout")]), Some(1));
    // Max requests: the last one says Connection: close and the connection ends.
    let p = proxy_with(&up, None, "listener: {max_requests_per_connection: 2}\n");
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.write_all(request).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(request).unwrap();
    let replies = String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(3))).into_owned();
    assert_eq!(replies.matches("HTTP/1.1 200").count(), 2, "{replies}");
    assert_eq!(replies.matches("connection: close").count(), 1, "only the second says close: {replies}");
    // Max duration: a connection busy for longer is drained between requests.
    let p = proxy_with(&up, None, "listener: {max_connection_duration: 1s}\n");
    let mut s = TcpStream::connect(p.addr).unwrap();
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(4) {
        if s.write_all(request).is_err() {
            break;
        }
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        served += 1;
        if String::from_utf8_lossy(&buf[..n]).contains("connection: close") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let age = started.elapsed();
    assert!(served >= 5 && age < Duration::from_secs(3), "drained after {served} requests at {age:?}");
    assert_eq!(p.stat("meshwork_downstream_cx_closed_total", &[("reason", "max_connection_duration")]), Some(1));
}

#[test]
fn at_the_connection_cap_the_proxy_stops_accepting_until_one_closes() {
    let up = upstream("app");
    let p = proxy_with(&up, None, "limits: {max_connections: 4}\nworkers: 1\n");
    let open: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(p.addr).unwrap();
            s.write_all(b"GET /a HTTP/1.1\r\nhost: a\r\n\r\n").unwrap();
            let mut buf = [0u8; 4096];
            assert!(s.read(&mut buf).unwrap() > 0);
            s
        })
        .collect();
    // The fifth connects (the kernel's backlog) but is not served while four are open.
    let mut fifth = TcpStream::connect(p.addr).unwrap();
    fifth.write_all(b"GET /b HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").unwrap();
    let early = read_until_closed(&mut fifth, Duration::from_millis(700));
    assert!(early.is_empty(), "served past the cap: {}", String::from_utf8_lossy(&early));
    drop(open);
    let late = read_until_closed(&mut fifth, Duration::from_secs(5));
    assert_eq!(status_of(&late), Some(200), "served once a slot freed: {}", String::from_utf8_lossy(&late));
    assert!(p.stat("meshwork_downstream_cx_overflow_total", &[]) > Some(0));
    assert_eq!(p.stat("meshwork_limit", &[("limit", "max_connections")]), Some(4));
}

#[test]
fn running_out_of_descriptors_backs_off_without_flooding_the_log() {
    let up = upstream("app");
    let mut p = proxy_with(&up, None, "workers: 1\n");
    let pid = p.process.pid().to_string();
    // Fewer descriptors than the connections about to arrive.
    let status = std::process::Command::new("prlimit").args(["--pid", &pid, "--nofile=48:48"]).status();
    assert!(status.is_ok_and(|s| s.success()), "prlimit (util-linux) is needed");
    let flood: Vec<TcpStream> = (0..200).filter_map(|_| TcpStream::connect(p.addr).ok()).collect();
    std::thread::sleep(Duration::from_secs(2));
    drop(flood);
    let r = eventually(Duration::from_secs(10), || try_request("GET", &p.url("/after"), &[], b"").ok());
    assert_eq!(r.map(|r| r.status), Some(200), "serving again once descriptors free up");
    assert!(p.process.alive());
    let lines = p.process.stderr().matches("accept failed").count();
    assert!((1..=3).contains(&lines), "{lines} accept-failure log lines in ~2 s (throttled to one per 10 s)");
    assert!(p.stat("meshwork_downstream_cx_accept_errors_total", &[("kind", "resources")]) > Some(0));
}

#[test]
fn router_headers_from_outside_the_trust_boundary_change_nothing() {
    let up = upstream("app");
    let steer: &[(&str, &str)] = &[
        ("x-envoy-retry-on", "5xx,reset,connect-failure"),
        ("x-envoy-max-retries", "4294967295"),
        ("x-envoy-upstream-rq-timeout-ms", "0"),
        ("x-envoy-upstream-rq-per-try-timeout-ms", "1"),
    ];
    for (i, chain) in chains().iter().enumerate() {
        let p = proxy_with(&up, None, &format!("route: {{cluster: app, timeout: 1s}}\n{chain}"));
        let key = format!("untrusted-{i}");
        let r = get(&p.url(&format!("/r?status=503&key={key}")), steer);
        assert_eq!(r.status, 503);
        assert_eq!(up.stats()["by_key"][&key], 1, "{chain:?}: exactly one attempt");
        assert!(r.header("x-envoy-attempt-count").is_none(), "no retry policy was in force");
        assert!(p.stat("meshwork_downstream_rq_untrusted_headers_removed_total", &[]) >= Some(4));
        // Nor can a client turn the route timeout off.
        let started = Instant::now();
        let r = get(&p.url("/slow?delay=20s"), &[("x-envoy-upstream-rq-timeout-ms", "0")]);
        assert_eq!(r.status, 504, "{chain:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        // Headers the router does not read (fault injection's) are left to the filters.
        let r = get(&p.url("/echo"), &[("x-envoy-fault-delay-request", "1")]);
        assert_eq!(r.echoed("x-envoy-fault-delay-request").as_deref(), Some("1"));
    }
}

#[test]
fn every_retry_must_be_admitted_by_the_clusters_circuit() {
    let up = upstream("app");
    let trusted = "listener: {trusted_clients: [127.0.0.0/8]}\n";
    for (i, chain) in chains().iter().enumerate() {
        let p = proxy(&format!(
            "clusters: [{{name: app, endpoints: [\"{}\"], max_retries: 0}}]\nroute: {{cluster: app}}\n{trusted}{chain}",
            up.addr
        ));
        let key = format!("capped-{i}");
        let r = get(
            &p.url(&format!("/r?status=503&key={key}")),
            &[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "5")],
        );
        assert_eq!(r.status, 503);
        assert_eq!(up.stats()["by_key"][&key], 1, "{chain:?}: max_retries 0 admits no retry");
        assert_eq!(p.stat("meshwork_upstream_rq_retry_overflow_total", &[("cluster", "app")]), Some(1));
        // A trusted client may turn the route timeout off, but not the stream idle timeout.
        let p = proxy(
            &format!("clusters: [{}]\nroute: {{cluster: app}}\nlisteneR\n{chain}", cluster("app", &up))
                .replace("listeneR\n", "listener: {trusted_clients: [127.0.0.0/8], stream_idle_timeout: 1s}\n"),
        );
        let started = Instant::now();
        let r = get(&p.url("/hang?delay=30s"), &[("x-envoy-upstream-rq-timeout-ms", "0")]);
        assert_eq!(r.status, 408, "{chain:?}");
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
        assert_eq!(p.stat("meshwork_downstream_rq_idle_timeout_total", &[]), Some(1));
    }
}

#[test]
fn the_route_timeout_and_the_stream_idle_timeout_cover_the_whole_response() {
    let up = upstream("app");
    for chain in chains() {
        // Headers at once, the body over 2 s: the 500 ms route timeout ends it midway.
        let p = proxy_with(&up, None, &format!("route: {{cluster: app, timeout: 500ms}}\n{chain}"));
        let started = Instant::now();
        let r = try_request("GET", &p.url("/slow-body?size=100000&chunks=10&chunk_delay=200ms"), &[], b"");
        assert!(r.is_err(), "{chain:?}: the body was cut, not delivered short: {:?}", r.map(|r| r.body.len()));
        assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
        // No route timeout, but nothing moves for a second: the stream idle timeout ends it.
        let p = proxy_with(
            &up,
            None,
            &format!("route: {{cluster: app, timeout: 0}}\nlistener: {{stream_idle_timeout: 1s}}\n{chain}"),
        );
        let started = Instant::now();
        let r = try_request("GET", &p.url("/stalled?size=1000&chunks=2&chunk_delay=3s"), &[], b"");
        assert!(r.is_err(), "{chain:?}");
        let t = started.elapsed();
        assert!(t >= Duration::from_secs(1) && t < Duration::from_millis(2800), "{t:?}");
    }
}
