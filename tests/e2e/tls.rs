//! TLS with rustls, end to end over real sockets: termination with SNI certificate selection,
//! ALPN, client certificates (optional and required), rotation without a restart, the
//! `connection.*` properties filters see; clusters over TLS and mTLS with SAN checks and
//! HTTP/2; the same from an Envoy bootstrap's Downstream/UpstreamTlsContext.

use std::time::Duration;

use meshwork_e2e::tls::{Client, Pki, common_name, request};
use meshwork_e2e::*;

fn client(pki: &Pki, sni: &str) -> Client {
    Client { sni: sni.into(), roots: vec![pki.ca_der()], identity: None, alpn: vec![b"http/1.1".to_vec()] }
}

const PROPS: &str = "connection.tls_version,connection.mtls,connection.requested_server_name,\
connection.subject_local_certificate,connection.subject_peer_certificate,connection.uri_san_peer_certificate,\
connection.dns_san_local_certificate,connection.sha256_peer_certificate_digest,request.scheme,request.protocol";

fn surface_filter(extra: &str) -> String {
    format!("{{name: surface, module: {}, configuration: {{mode: http{extra}}}}}", wasm("surface").display())
}

#[test]
fn termination_chooses_certificates_by_sni_and_filters_see_the_connection() {
    let dir = scratch("tls-termination");
    let pki = Pki::new(&dir, "mesh");
    let a = pki.issue("a", "a.test", &["a.test"], &[]);
    let b = pki.issue("b", "b.test", &["b.test", "*.b.test"], &["spiffe://mesh/b"]);
    let app = upstream("app");
    let p = listeners(&format!(
        r#"
clusters: [{app}]
listeners:
  - name: secure
    listen: 127.0.0.1:0
    listener:
      tls:
        certificates: [{{cert: {ac}, key: {ak}}}, {{cert: {bc}, key: {bk}}}]
        client_ca: {ca}
    route: {{cluster: app}}
    filters: [{filter}]
"#,
        app = cluster("app", &app),
        ac = a.cert.display(),
        ak = a.key.display(),
        bc = b.cert.display(),
        bk = b.key.display(),
        ca = pki.ca().display(),
        filter = surface_filter(""),
    ));
    let addr = p.addr("secure");
    let props = [("x-test", "props"), ("x-props", PROPS)];
    let seen = request(addr, &client(&pki, "a.test"), "/", &props).unwrap();
    assert_eq!(seen.reply.status, 200);
    assert_eq!(common_name(&seen.server_cert), "a.test");
    let r = &seen.reply;
    assert_eq!(r.header("x-prop-connection.tls_version"), Some("TLSv1.3"));
    assert_eq!(r.header("x-prop-connection.mtls"), Some("false"));
    assert_eq!(r.header("x-prop-connection.requested_server_name"), Some("a.test"));
    assert_eq!(r.header("x-prop-connection.subject_local_certificate"), Some("CN=a.test,O=meshwork tests"));
    assert_eq!(r.header("x-prop-connection.subject_peer_certificate"), Some("absent"), "no client certificate");
    assert_eq!(r.header("x-prop-connection.dns_san_local_certificate"), Some("a.test"));
    assert_eq!(r.header("x-prop-request.scheme"), Some("https"));
    assert_eq!(r.echoed("x-forwarded-proto").as_deref(), Some("https"));

    // Another name, a wildcard, and one no certificate has (the first is the default).
    assert_eq!(common_name(&request(addr, &client(&pki, "b.test"), "/", &[]).unwrap().server_cert), "b.test");
    assert_eq!(common_name(&request(addr, &client(&pki, "x.b.test"), "/", &[]).unwrap().server_cert), "b.test");
    let unknown = request(addr, &client(&pki, "nobody.test"), "/", &[]).err().expect("the default certificate");
    assert!(unknown.contains("not valid for name"), "a.test's certificate, not valid for nobody.test: {unknown}");

    // ALPN: h2 when the client offers it.
    let h2 = Client { alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()], ..client(&pki, "a.test") };
    let seen = request(addr, &h2, "/", &props).unwrap();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.reply.header("x-prop-request.protocol"), Some("HTTP/2"));

    // An (optional) client certificate: mTLS, and the peer's identity.
    let me = pki.issue("client", "client", &[], &["spiffe://mesh/ns/default/sa/client"]);
    let mutual = Client { identity: Some(me.clone()), ..client(&pki, "a.test") };
    let r = request(addr, &mutual, "/", &props).unwrap().reply;
    assert_eq!(r.header("x-prop-connection.mtls"), Some("true"));
    assert_eq!(r.header("x-prop-connection.subject_peer_certificate"), Some("CN=client,O=meshwork tests"));
    assert_eq!(r.header("x-prop-connection.uri_san_peer_certificate"), Some("spiffe://mesh/ns/default/sa/client"));
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(me.der.as_ref()).iter().map(|b| format!("{b:02x}")).collect()
    };
    assert_eq!(r.header("x-prop-connection.sha256_peer_certificate_digest"), Some(digest.as_str()));
}

#[test]
fn required_client_certificates_refuse_strangers() {
    let dir = scratch("tls-mtls");
    let pki = Pki::new(&dir, "mesh");
    let other = Pki::new(&dir, "other");
    let server = pki.issue("server", "server.test", &["server.test"], &[]);
    let app = upstream("app");
    let p = listeners(&format!(
        "admin: 127.0.0.1:0\nclusters: [{}]\nlisteners:\n  - name: secure\n    listen: 127.0.0.1:0\n    listener: {{tls: {{certificates: [{{cert: {}, key: {}}}], client_ca: {}, require_client_certificate: true}}}}\n    route: {{cluster: app}}\n",
        cluster("app", &app),
        server.cert.display(),
        server.key.display(),
        pki.ca().display()
    ));
    let addr = p.addr("secure");
    let base = client(&pki, "server.test");
    assert!(request(addr, &base, "/", &[]).is_err(), "no client certificate");
    let stranger = other.issue("stranger", "stranger", &[], &[]);
    let strange = Client { identity: Some(stranger), ..client(&pki, "server.test") };
    assert!(request(addr, &strange, "/", &[]).is_err(), "a certificate from another CA");
    let member = pki.issue("member", "member", &[], &[]);
    let ok = Client { identity: Some(member), ..client(&pki, "server.test") };
    assert_eq!(request(addr, &ok, "/", &[]).unwrap().reply.status, 200);
    let admin = format!("http://{}", p.admin.unwrap());
    let text = get(&format!("{admin}/stats/prometheus"), &[]).text();
    let failures: i64 = text
        .lines()
        .find(|l| l.starts_with("meshwork_downstream_cx_tls_handshake_errors_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(failures >= 2, "failed handshakes are counted: {failures}");
}

#[test]
fn certificates_rotate_without_a_restart() {
    let dir = scratch("tls-rotate");
    let pki = Pki::new(&dir, "mesh");
    let v1 = pki.issue("server", "v1", &["rotate.test"], &[]);
    let app = upstream("app");
    let p = listeners(&format!(
        "clusters: [{}]\nlisteners:\n  - name: secure\n    listen: 127.0.0.1:0\n    listener: {{tls: {{certificates: [{{cert: {}, key: {}}}]}}}}\n    route: {{cluster: app}}\n",
        cluster("app", &app),
        v1.cert.display(),
        v1.key.display(),
    ));
    let addr = p.addr("secure");
    let c = client(&pki, "rotate.test");
    assert_eq!(common_name(&request(addr, &c, "/", &[]).unwrap().server_cert), "v1");
    std::thread::sleep(Duration::from_millis(1100));
    pki.issue("server", "v2", &["rotate.test"], &[]);
    let rotated = eventually(Duration::from_secs(10), || {
        let cn = common_name(&request(addr, &c, "/", &[]).ok()?.server_cert);
        (cn == "v2").then_some(())
    });
    assert!(rotated.is_some(), "new handshakes use the new certificate");
    // A broken file is refused; the certificate in force keeps serving.
    std::fs::write(&v1.cert, "not a certificate").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(common_name(&request(addr, &c, "/", &[]).unwrap().server_cert), "v2");
    assert!(p.process.logged("do not load, the previous ones keep serving"), "{}", p.process.stderr());
}

/// A backend meshwork that takes only mTLS clients (and speaks h2 and HTTP/1.1), in front of
/// the sample app; its filter reports what it saw of the connection.
fn backend(pki: &Pki, app: &Upstream) -> Listeners {
    let server = pki.issue("backend", "backend", &["backend.internal"], &["spiffe://mesh/backend"]);
    listeners(&format!(
        "clusters: [{}]\nlisteners:\n  - name: backend\n    listen: 127.0.0.1:0\n    listener: {{tls: {{certificates: [{{cert: {}, key: {}}}], client_ca: {}, require_client_certificate: true}}}}\n    route: {{cluster: app}}\n    filters: [{}]\n",
        cluster("app", app),
        server.cert.display(),
        server.key.display(),
        pki.ca().display(),
        surface_filter(", props_header: x-backend-props"),
    ))
}

#[test]
fn clusters_speak_tls_and_mtls_with_san_checks_and_http2() {
    let dir = scratch("tls-upstream");
    let pki = Pki::new(&dir, "mesh");
    let other = Pki::new(&dir, "other");
    let app = upstream("app");
    let b = backend(&pki, &app);
    let front_cert = pki.issue("front", "front", &[], &["spiffe://mesh/front"]);
    let cluster_tls = |name: &str, trust: &std::path::Path, san: &str, h2: bool| {
        format!(
            "{{name: {name}, endpoints: [\"{}\"], http2: {h2}, tls: {{trust: {}, sni: backend.internal, verify_san: [\"{san}\"], cert: {}, key: {}, alpn: [{}]}}}}",
            b.addr("backend"),
            trust.display(),
            front_cert.cert.display(),
            front_cert.key.display(),
            if h2 { "h2" } else { "http/1.1" }
        )
    };
    let front = proxy(&format!(
        "clusters:\n  - {}\n  - {}\n  - {}\n  - {}\nroutes:\n  - {{prefix: /h1, cluster: h1}}\n  - {{prefix: /h2, cluster: h2}}\n  - {{prefix: /wrong-san, cluster: wrong-san}}\n  - {{prefix: /wrong-ca, cluster: wrong-ca}}\nfilters: [{}]\n",
        cluster_tls("h1", &pki.ca(), "spiffe://mesh/backend", false),
        cluster_tls("h2", &pki.ca(), "spiffe://mesh/backend", true),
        cluster_tls("wrong-san", &pki.ca(), "spiffe://mesh/other", false),
        cluster_tls("wrong-ca", &other.ca(), "spiffe://mesh/backend", false),
        surface_filter(""),
    ));
    let headers = [
        ("x-test", "props"),
        (
            "x-props",
            "upstream.tls_version,upstream.subject_peer_certificate,upstream.uri_san_peer_certificate,upstream.subject_local_certificate,upstream.address",
        ),
        (
            "x-backend-props",
            "connection.mtls,connection.uri_san_peer_certificate,request.protocol,connection.requested_server_name",
        ),
    ];
    for (path, protocol) in [("/h1", "HTTP/1.1"), ("/h2", "HTTP/2")] {
        let r = get(&front.url(path), &headers);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("x-upstream-name"), Some("app"));
        assert_eq!(r.header("x-prop-upstream.tls_version"), Some("TLSv1.3"), "{path}");
        assert_eq!(r.header("x-prop-upstream.subject_peer_certificate"), Some("CN=backend,O=meshwork tests"));
        assert_eq!(r.header("x-prop-upstream.uri_san_peer_certificate"), Some("spiffe://mesh/backend"));
        assert_eq!(r.header("x-prop-upstream.subject_local_certificate"), Some("CN=front,O=meshwork tests"));
        assert_eq!(r.header("x-prop-upstream.address"), Some(b.addr("backend").to_string().as_str()));
        // What the backend saw: a client certificate, the SNI, the protocol.
        assert_eq!(r.header("x-prop-connection.mtls"), Some("true"));
        assert_eq!(r.header("x-prop-connection.uri_san_peer_certificate"), Some("spiffe://mesh/front"));
        assert_eq!(r.header("x-prop-connection.requested_server_name"), Some("backend.internal"));
        assert_eq!(r.header("x-prop-request.protocol"), Some(protocol), "{path}");
    }
    for path in ["/wrong-san", "/wrong-ca"] {
        let r = get(&front.url(path), &[]);
        assert_eq!(r.status, 503, "{path}: the backend's certificate is refused");
        assert!(r.text().contains("connection failure"), "{path}: {}", r.text());
    }
}

#[test]
fn envoy_tls_contexts_configure_the_same() {
    let dir = scratch("tls-envoy");
    let pki = Pki::new(&dir, "mesh");
    let app = upstream("app");
    let b = backend(&pki, &app);
    let server = pki.issue("edge", "edge", &["edge.test"], &[]);
    let front_cert = pki.issue("front", "front", &[], &["spiffe://mesh/front"]);
    let port = free_port();
    let envoy = format!(
        r#"
static_resources:
  listeners:
  - name: edge
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {sc}}}, private_key: {{filename: {sk}}}}}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: edge
          route_config:
            virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: backend}}}}]}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: backend
    type: STATIC
    load_assignment: {{cluster_name: backend, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {bport}}}}}}}}}]}}]}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: backend.internal
        common_tls_context:
          tls_certificates: [{{certificate_chain: {{filename: {fc}}}, private_key: {{filename: {fk}}}}}]
          validation_context:
            trusted_ca: {{filename: {ca}}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "spiffe://mesh/backend"}}}}]
"#,
        sc = server.cert.display(),
        sk = server.key.display(),
        fc = front_cert.cert.display(),
        fk = front_cert.key.display(),
        ca = pki.ca().display(),
        bport = b.addr("backend").port(),
    );
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, envoy).unwrap();
    let process = Process::start(&["run", "--envoy-config", path.to_str().unwrap()]).unwrap();
    assert!(process.first_line.contains(&format!("https://127.0.0.1:{port} (edge)")), "{}", process.first_line);
    let seen = request(format!("127.0.0.1:{port}").parse().unwrap(), &client(&pki, "edge.test"), "/", &[]).unwrap();
    assert_eq!(seen.reply.status, 200, "{}", seen.reply.text());
    assert_eq!(seen.reply.header("x-upstream-name"), Some("app"), "through the mTLS backend to the app");
}
