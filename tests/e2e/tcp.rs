//! TCP listeners with network filters in front of a TCP proxy, several listeners in one
//! process, the PROXY protocol, and x-forwarded-for / x-forwarded-proto under the trust rules.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use meshwork_e2e::tls::{Client, Pki};
use meshwork_e2e::*;

fn filter(name: &str, mode: &str, extra: &str) -> String {
    format!(
        "{{name: {name}, vm_id: surface, module: {}, configuration: {{mode: {mode}{extra}}}}}",
        wasm("surface").display()
    )
}

/// One process: TCP listeners with the network filter in each mode, and an HTTP listener
/// whose filter reads the counters the network filters keep (same vm_id: same shared data).
fn mesh(echo: std::net::SocketAddr, other: std::net::SocketAddr, app: &Upstream, tls: Option<&str>) -> Listeners {
    let net = |name: &str, mode: &str, extra: &str| {
        format!(
            "  - name: {name}\n    listen: 127.0.0.1:0\n    protocol: tcp\n    cluster: echo\n    listener: {{buffer_limit: 64KiB}}\n    filters: [{}]\n",
            filter(name, "net", &format!(", net: {mode}{extra}"))
        )
    };
    let secure = tls.map_or(String::new(), |t| {
        format!(
            "  - name: secure\n    listen: 127.0.0.1:0\n    protocol: tcp\n    cluster: echo\n    listener: {{tls: {t}}}\n    filters: [{}]\n",
            filter("secure", "net", ", net: report")
        )
    });
    listeners(&format!(
        "clusters:\n  - {{name: echo, endpoints: [\"{echo}\"]}}\n  - {{name: other, endpoints: [\"{other}\"]}}\n  - {app}\nlisteners:\n{}{}{}{}{}{}{}  - name: web\n    listen: 127.0.0.1:0\n    route: {{cluster: app}}\n    filters: [{}]\n",
        net("upper", "upper", ""),
        net("report", "report", ""),
        net("hold", "hold-line", ""),
        net("route", "route", ", value: other"),
        net("closer", "close-on", ", needle: QUIT"),
        net("pauser", "pause-connect", ", callout_cluster: app"),
        secure,
        filter("web", "http", ""),
        app = cluster("app", app),
    ))
}

fn counter(p: &Listeners, key: &str) -> u64 {
    get(&p.url("web", "/"), &[("x-test", "read-shared"), ("x-key", key)])
        .header("x-shared-value")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn connect(p: &Listeners, name: &str) -> TcpStream {
    let s = TcpStream::connect(p.addr(name)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[test]
fn network_filters_see_and_change_the_bytes_both_ways() {
    let app = upstream("app");
    let p = mesh(tcp_echo(""), tcp_echo("other:"), &app, None);
    // upper: the filter rewrites what the client sends; the echo sends it back.
    let mut s = connect(&p, "upper");
    s.write_all(b"hello, tcp\n").unwrap();
    assert_eq!(read_exactly(&mut s, 11, Duration::from_secs(5)), b"HELLO, TCP\n");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_until_closed(&mut s, Duration::from_secs(5)), b"", "half-close passed on; the echo ended");
    // report: properties of the connection, prepended to the upstream's first bytes.
    let mut s = connect(&p, "report");
    s.write_all(b"ping").unwrap();
    let text = String::from_utf8(read_exactly(&mut s, 200, Duration::from_millis(800))).unwrap();
    assert!(text.starts_with("tls=none mtls=false peer=none src=127.0.0.1:"), "{text}");
    assert!(text.contains(" upstream=127.0.0.1:") && text.ends_with("\nping"), "{text}");
    drop(s);
    // The close callbacks and teardown ran for every connection (downstream closes are
    // Local: meshwork closed the client's side after the upstream ended).
    let closed = eventually(Duration::from_secs(5), || (counter(&p, "net.log") >= 2).then_some(()));
    assert!(closed.is_some(), "on_log after each connection");
    assert!(counter(&p, "net.upstream-close") >= 1, "the echo's end of stream");
    assert!(counter(&p, "net.downstream-close.1") + counter(&p, "net.downstream-close.2") >= 2);
}

#[test]
fn pause_holds_data_until_the_filter_continues() {
    let app = upstream("app");
    let p = mesh(tcp_echo(""), tcp_echo("other:"), &app, None);
    let mut s = connect(&p, "hold");
    s.write_all(b"par").unwrap();
    assert!(read_exactly(&mut s, 1, Duration::from_millis(300)).is_empty(), "held: no newline yet");
    s.write_all(b"tial\n").unwrap();
    assert_eq!(read_exactly(&mut s, 8, Duration::from_secs(5)), b"partial\n", "released whole");
    assert_eq!(counter(&p, "net.hold.released.8"), 1, "the filter saw the accumulated 8 bytes at once");
    // A paused new connection: the filter's callout answers, then the upstream is connected.
    let start = std::time::Instant::now();
    let mut s = connect(&p, "pauser");
    s.write_all(b"after the callout").unwrap();
    assert_eq!(read_exactly(&mut s, 17, Duration::from_secs(5)), b"after the callout");
    assert!(start.elapsed() >= Duration::from_millis(100), "held until the callout (100 ms) answered");
    assert_eq!(counter(&p, "net.callout-answered"), 1);
}

#[test]
fn filters_route_and_close_connections() {
    let app = upstream("app");
    let p = mesh(tcp_echo(""), tcp_echo("other:"), &app, None);
    // route: set_envoy_filter_state("envoy.tcp_proxy.cluster") picks the other cluster.
    let mut s = connect(&p, "route");
    s.write_all(b"x").unwrap();
    assert_eq!(read_exactly(&mut s, 7, Duration::from_secs(5)), b"other:x");
    // close-on: the filter closes the connection when it sees the needle.
    let mut s = connect(&p, "closer");
    s.write_all(b"fine\n").unwrap();
    assert_eq!(read_exactly(&mut s, 5, Duration::from_secs(5)), b"fine\n");
    s.write_all(b"QUIT\n").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)), "closed by the filter");
}

#[test]
fn a_tcp_listener_terminates_tls_and_filters_see_the_peer() {
    let dir = scratch("tcp-tls");
    let pki = Pki::new(&dir, "mesh");
    let server = pki.issue("server", "server", &["tcp.test"], &[]);
    let app = upstream("app");
    let tls = format!(
        "{{certificates: [{{cert: {}, key: {}}}], client_ca: {}, require_client_certificate: true}}",
        server.cert.display(),
        server.key.display(),
        pki.ca().display()
    );
    let p = mesh(tcp_echo(""), tcp_echo("other:"), &app, Some(&tls));
    let client = Client {
        sni: "tcp.test".into(),
        roots: vec![pki.ca_der()],
        identity: Some(pki.issue("client", "client", &[], &[])),
        alpn: vec![],
    };
    let text = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = meshwork_e2e::tls::connect(p.addr("secure"), &client).await.unwrap();
        tls.write_all(b"over tls").await.unwrap();
        tls.flush().await.unwrap();
        let mut buf = vec![0u8; 512];
        let mut got = Vec::new();
        while !got.ends_with(b"over tls") {
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.unwrap().unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    });
    assert!(text.starts_with("tls=TLSv1.3 mtls=true peer=CN=client,O=meshwork tests src=127.0.0.1:"), "{text}");
    assert!(text.ends_with("over tls"), "{text}");
}

#[test]
fn envoy_network_wasm_filters_in_front_of_tcp_proxy() {
    let echo = tcp_echo("");
    let dir = scratch("tcp-envoy");
    let port = free_port();
    let envoy = format!(
        r#"
static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config:
            name: upper
            configuration:
              "@type": type.googleapis.com/google.protobuf.StringValue
              value: '{{"mode": "net", "net": "upper"}}'
            vm_config: {{code: {{local: {{filename: {module}}}}}}}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: echo
  clusters:
  - name: echo
    load_assignment: {{cluster_name: echo, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {eport}}}}}}}}}]}}]}}
"#,
        module = wasm("surface").display(),
        eport = echo.port()
    );
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, envoy).unwrap();
    let process = Process::start(&["run", "--envoy-config", path.to_str().unwrap()]).unwrap();
    assert!(process.first_line.contains(&format!("tcp://127.0.0.1:{port} (tcp)")), "{}", process.first_line);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"envoy shape").unwrap();
    assert_eq!(read_exactly(&mut s, 11, Duration::from_secs(5)), b"ENVOY SHAPE");
}

#[test]
fn the_proxy_protocol_names_the_client() {
    let app = upstream("app");
    let p = listeners(&format!(
        "admin: 127.0.0.1:0\nclusters: [{}]\nlisteners:\n  - name: behind-lb\n    listen: 127.0.0.1:0\n    listener: {{proxy_protocol: true}}\n    route: {{cluster: app}}\n    filters: [{}]\n",
        cluster("app", &app),
        filter("props", "http", ""),
    ));
    let request = b"PROXY TCP4 203.0.113.9 10.0.0.1 5000 443\r\nGET / HTTP/1.1\r\nhost: app\r\nx-test: props\r\nx-props: source.address,source.port,destination.address\r\nconnection: close\r\n\r\n";
    let reply = raw_exchange(p.addr("behind-lb"), request, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-prop-source.address: 203.0.113.9:5000"), "{text}");
    assert!(text.contains("x-prop-source.port: 5000"), "{text}");
    assert!(text.contains("x-prop-destination.address: 10.0.0.1:443"), "{text}");
    assert!(text.contains("\"x-forwarded-for\":\"203.0.113.9\""), "the app sees the real client: {text}");
    // v2, binary.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 7, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb]);
    v2.extend_from_slice(
        b"GET / HTTP/1.1\r\nhost: app\r\nx-test: props\r\nx-props: source.address\r\nconnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&raw_exchange(p.addr("behind-lb"), &v2, Duration::from_secs(5))).into_owned();
    assert!(text.contains("x-prop-source.address: 198.51.100.7:8080"), "{text}");
    // Without the header: closed, and counted.
    let plain = raw_exchange(p.addr("behind-lb"), b"GET / HTTP/1.1\r\nhost: app\r\n\r\n", Duration::from_secs(5));
    assert!(status_of(&plain).is_none(), "no answer without the header");
    let admin = format!("http://{}", p.admin.unwrap());
    let text = get(&format!("{admin}/stats/prometheus"), &[]).text();
    assert!(text.contains("meshwork_downstream_cx_proxy_protocol_errors_total 1"), "{text}");
}

#[test]
fn forwarded_headers_follow_the_trust_rules() {
    let app = upstream("app");
    let p = listeners(&format!(
        "clusters: [{}]\nlisteners:\n  - name: edge\n    listen: 127.0.0.1:0\n    route: {{cluster: app}}\n  - name: internal\n    listen: 127.0.0.1:0\n    listener: {{trusted_clients: [127.0.0.1/32]}}\n    route: {{cluster: app}}\n  - name: behind-lb\n    listen: 127.0.0.1:0\n    listener: {{trusted_clients: [127.0.0.1/32], xff_trusted_hops: 1}}\n    route: {{cluster: app}}\n",
        cluster("app", &app),
    ));
    let headers = [("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "https"), ("x-envoy-max-retries", "5")];
    // The edge trusts nobody: its scheme replaces the client's, the peer is appended, and
    // router headers are dropped.
    let r = get(&p.url("edge", "/"), &headers);
    assert_eq!(r.echoed("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(r.echoed("x-forwarded-for").as_deref(), Some("198.51.100.7, 127.0.0.1"));
    assert_eq!(r.echoed("x-envoy-max-retries"), None);
    // An internal listener trusts loopback: its x-forwarded-proto stays.
    let r = get(&p.url("internal", "/"), &headers);
    assert_eq!(r.echoed("x-forwarded-proto").as_deref(), Some("https"));
    // Behind a trusted load balancer, the client is the last x-forwarded-for entry
    // (198.51.100.7), which is not trusted: router headers are dropped again.
    let r = get(&p.url("behind-lb", "/"), &headers);
    assert_eq!(r.echoed("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(r.echoed("x-forwarded-for").as_deref(), Some("198.51.100.7, 127.0.0.1"));
}
