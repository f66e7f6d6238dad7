//! gRPC through meshwork, over real sockets against a tonic server: filters' gRPC callouts
//! (`proxy_grpc_call`, `proxy_grpc_stream`, send, close, cancel) with Envoy's callback order
//! and statuses, and gRPC requests proxied unchanged to an HTTP/2 upstream (trailers,
//! `grpc-status`, streaming both ways).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meshwork_e2e::grpc::EchoService;
use meshwork_e2e::*;
use meshwork_grpc_api::test_echo::EchoRequest;
use meshwork_grpc_api::test_echo::echo_client::EchoClient;

/// A server that accepts connections and never says a word.
fn blackhole() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

fn surface(echo: &EchoService, app: &Upstream) -> (Proxy, RefusingPort) {
    let dead = refusing_port();
    let p = proxy(&format!(
        r#"
clusters:
  - {app}
  - {{name: echo, endpoints: ["{echo}"], http2: true}}
  - {{name: dead, endpoints: ["127.0.0.1:{dead}"], connect_timeout: 200ms}}
  - {{name: blackhole, endpoints: ["{hole}"]}}
route: {{cluster: app}}
filters:
  - {{name: surface, module: {module}, configuration: {{mode: http, grpc_cluster: echo}}}}
"#,
        app = cluster("app", app),
        echo = echo.addr,
        dead = dead.addr.port(),
        hole = blackhole(),
        module = wasm("surface").display(),
    ));
    (p, dead)
}

#[test]
fn unary_callouts_get_the_answer_or_the_status() {
    let echo = EchoService::start();
    let app = upstream("app");
    let (p, _dead) = surface(&echo, &app);
    let call = |extra: &[(&str, &str)]| {
        let mut h = vec![("x-test", "grpc-unary")];
        h.extend_from_slice(extra);
        get(&p.url("/"), &h)
    };
    let ok = call(&[("x-grpc-text", "hello")]);
    assert_eq!(ok.status, 200, "the filter resumed the request: {}", ok.text());
    assert_eq!(ok.header("x-grpc-status"), Some("0"));
    assert_eq!(ok.header("x-grpc-reply"), Some("hello"));
    // Initial metadata reached the server; binary values travel base64-encoded.
    assert_eq!(ok.header("x-grpc-seen-x-tenant"), Some("acme"));
    assert_eq!(ok.header("x-grpc-seen-trace-bin"), Some("AAEC+g"));
    // The deadline travels as grpc-timeout (digits and a unit, gRPC over HTTP/2 spec).
    let deadline = ok.header("x-grpc-seen-grpc-timeout").unwrap_or_default();
    assert!(deadline.len() > 1 && "HMSmun".contains(&deadline[deadline.len() - 1..]), "{deadline}");
    assert_eq!(echo.counters.unary.load(Ordering::SeqCst), 1);

    let refused = call(&[("x-grpc-status", "7")]);
    assert_eq!(refused.header("x-grpc-status"), Some("7"));
    assert_eq!(refused.header("x-grpc-message"), Some("refused by the echo service"));

    // The filter's deadline, against a server that never answers: Envoy reports its own
    // timeout as UNAVAILABLE with "upstream request timeout".
    let start = Instant::now();
    let late = call(&[("x-grpc-cluster", "blackhole"), ("x-grpc-timeout-ms", "200")]);
    assert!(start.elapsed() < Duration::from_millis(1500), "the deadline held: {:?}", start.elapsed());
    assert_eq!(late.header("x-grpc-status"), Some("14"), "{:?}", late.headers);
    assert_eq!(late.header("x-grpc-message"), Some("upstream request timeout"));
    // A server that honours grpc-timeout may end the call first (tonic answers CANCELLED).
    let slow = call(&[("x-grpc-delay-ms", "2000"), ("x-grpc-timeout-ms", "150")]);
    assert!(matches!(slow.header("x-grpc-status"), Some("1" | "4" | "14")), "{:?}", slow.headers);

    let gone = call(&[("x-grpc-cluster", "dead")]);
    assert_eq!(gone.header("x-grpc-status"), Some("14"), "no server: UNAVAILABLE");
    let unknown = call(&[("x-grpc-cluster", "nowhere")]);
    assert_eq!(unknown.header("x-grpc-dispatch-error"), Some("ParseFailure"), "as Envoy answers");
}

#[test]
fn streams_deliver_metadata_messages_trailers_and_close_in_order() {
    let echo = EchoService::start();
    let app = upstream("app");
    let (p, _dead) = surface(&echo, &app);
    let r = get(&p.url("/"), &[("x-test", "grpc-stream"), ("x-grpc-words", "a,b,c")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-stream-order"), Some("initial,message,message,message,trailers,close"));
    assert_eq!(r.header("x-stream-replies"), Some("A,B,C"), "sent, half-closed, all echoed");
    assert_eq!(r.header("x-stream-status"), Some("0"));
    assert_eq!(echo.counters.messages_in.load(Ordering::SeqCst), 3);

    let failed = get(&p.url("/"), &[("x-test", "grpc-stream"), ("x-grpc-words", "a,b,c"), ("x-grpc-status", "9")]);
    assert_eq!(failed.header("x-stream-replies"), Some("A,B"), "the server failed on the third");
    assert_eq!(failed.header("x-stream-status"), Some("9"));
    assert_eq!(failed.header("x-stream-message"), Some("stream refused"));
    assert!(failed.header("x-stream-order").is_some_and(|o| o.ends_with("trailers,close")));

    let gone = get(&p.url("/"), &[("x-test", "grpc-stream"), ("x-grpc-words", "a"), ("x-grpc-cluster", "dead")]);
    assert_eq!(gone.header("x-stream-status"), Some("14"));
    assert_eq!(gone.header("x-stream-order"), Some("initial,trailers,close"));
}

#[test]
fn a_cancelled_call_gets_no_callback_and_is_reset() {
    let echo = EchoService::start();
    let app = upstream("app");
    let (p, _dead) = surface(&echo, &app);
    let r = get(&p.url("/"), &[("x-test", "grpc-cancel")]);
    assert_eq!(r.status, 200);
    assert!(r.header("x-grpc-cancelled").is_some());
    std::thread::sleep(Duration::from_millis(900));
    let after = get(&p.url("/"), &[("x-test", "read-shared"), ("x-key", "grpc.after-cancel")]);
    assert_eq!(after.header("x-shared-value"), Some("0"), "no callback after proxy_grpc_cancel");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn grpc_passes_through_to_an_http2_upstream_unchanged() {
    let echo = EchoService::start();
    let p = proxy(&format!(
        "clusters: [{{name: echo, endpoints: [\"{}\"], http2: true}}]\nroute: {{cluster: echo}}\n",
        echo.addr
    ));
    runtime().block_on(async {
        let mut client = EchoClient::connect(format!("http://{}", p.addr)).await.expect("connects through meshwork");
        let reply =
            client.unary(EchoRequest { text: "through".into(), ..Default::default() }).await.expect("an OK answer");
        assert_eq!(reply.get_ref().text, "through");
        // A status and custom trailers from the server reach the client as sent.
        let mut ask = EchoRequest { status: 5, message: "no such thing".into(), ..Default::default() };
        ask.trailers.insert("x-why".into(), "gone".into());
        let status = client.unary(ask).await.expect_err("NOT_FOUND");
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "no such thing");
        assert_eq!(status.metadata().get("x-why").and_then(|v| v.to_str().ok()), Some("gone"));
        // Server streaming and bidirectional streaming.
        let mut stream = client
            .server_stream(EchoRequest { text: "tick".into(), count: 3, delay_ms: 10, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            got.push(m.text);
        }
        assert_eq!(got, ["tick #1", "tick #2", "tick #3"]);
        let outgoing = tokio_stream::iter(["x", "y"].map(|t| EchoRequest { text: t.into(), ..Default::default() }));
        let mut replies = client.bidi(outgoing).await.unwrap().into_inner();
        let mut got = Vec::new();
        while let Some(m) = replies.message().await.unwrap() {
            got.push(m.text);
        }
        assert_eq!(got, ["X", "Y"]);
    });
}
