//! The rest of Envoy's Wasm surface, exercised through the Rust SDK. `configuration.mode`
//! picks the filter:
//!
//! - `http`: request header `x-test` picks a scenario — `props` (the properties named in
//!   `x-props`, dotted, come back as `x-prop-<path>` response headers), `grpc-unary`,
//!   `grpc-stream`, `grpc-cancel`, `foreign`, `read-shared`;
//! - `net`: a network filter (`net`: `upper`, `report`, `hold-line`, `route`, `close-on`,
//!   `pause-connect`), counting its close callbacks in shared data;
//! - `auth-random`, `body-redact`, `config-header`, `headers-log`, `grpc-auth`, `hello`: filters
//!   that behave as the proxy-wasm Rust SDK's examples (http_auth_random, http_body,
//!   http_config, http_headers, grpc_auth_random, hello_world) are documented to in Envoy.

mod pb;

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel, PeerType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Clone, Default, Deserialize)]
#[serde(default)]
struct Config {
    mode: String,
    grpc_cluster: String,
    callout_cluster: String,
    /// net: what the network filter does.
    net: String,
    /// net/route: the cluster to send the connection to; config-header: the header's value.
    value: String,
    needle: String,
    /// The request header listing properties to report (default `x-props`).
    props_header: String,
}

#[derive(Default)]
struct Root {
    config: Config,
    ticks: u32,
}

fn bump_shared(key: &str) -> u64 {
    for _ in 0..10 {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let n = value.and_then(|v| String::from_utf8(v).ok()).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) + 1;
        if hostcalls::set_shared_data(key, Some(n.to_string().as_bytes()), cas).is_ok() {
            return n;
        }
    }
    0
}

fn read_shared(key: &str) -> String {
    hostcalls::get_shared_data(key)
        .ok()
        .and_then(|(v, _)| v)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(|| "0".into())
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        // config-header takes its configuration raw, as the SDK's http_config does.
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(c) => self.config = c,
            Err(_) => {
                self.config = Config {
                    mode: "config-header".into(),
                    value: String::from_utf8_lossy(&bytes).into_owned(),
                    ..Config::default()
                }
            }
        }
        if self.config.mode == "hello" {
            log::info("Hello, World!");
            self.set_tick_period(Duration::from_millis(100));
        }
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let now = self.get_current_time().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut lucky = [0u8; 1];
        let _ = getrandom(&mut lucky);
        log::info(&format!("It's {now}, your lucky number is {}.", lucky[0]));
        bump_shared("hello.ticks");
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(if self.config.mode == "net" { ContextType::StreamContext } else { ContextType::HttpContext })
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { id: context_id, config: self.config.clone(), ..Http::default() }))
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Net { id: context_id, config: self.config.clone(), ..Net::default() }))
    }
}

/// WASI randomness through std's source (the SDK's hello_world uses getrandom for the same).
fn getrandom(buf: &mut [u8]) -> Result<(), ()> {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let v = RandomState::new().build_hasher().finish();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (v >> ((i % 8) * 8)) as u8;
    }
    Ok(())
}

mod log {
    use proxy_wasm::hostcalls;
    use proxy_wasm::types::LogLevel;

    pub fn info(message: &str) {
        let _ = hostcalls::log(LogLevel::Info, message);
    }
}

#[derive(Default)]
struct Http {
    id: u32,
    config: Config,
    test: String,
    /// Response headers to add.
    reply: Vec<(String, String)>,
    /// gRPC stream callbacks in order, and the messages received.
    order: Vec<&'static str>,
    messages: Vec<String>,
    grpc_token: Option<u32>,
    /// The properties to report, read with the request headers (they are gone by the response).
    wanted: String,
}

impl Http {
    fn note(&mut self, k: &str, v: impl ToString) {
        self.reply.push((k.to_owned(), v.to_string()));
    }

    fn header(&self, name: &str) -> String {
        self.get_http_request_header(name).unwrap_or_default()
    }

    fn grpc_cluster(&self) -> String {
        let over = self.header("x-grpc-cluster");
        if over.is_empty() { self.config.grpc_cluster.clone() } else { over }
    }

    fn props(&mut self) {
        let wanted = std::mem::take(&mut self.wanted);
        for path in wanted.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let segments: Vec<&str> = path.split('.').collect();
            let rendered = match self.get_property(segments) {
                None => "absent".to_owned(),
                Some(v)
                    if v.len() == 8
                        && (path.ends_with("port") || path.ends_with(".id") || path.ends_with("_count")) =>
                {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&v);
                    u64::from_le_bytes(b).to_string()
                }
                Some(v) if v.len() == 1 && (v[0] == 0 || v[0] == 1) => (v[0] == 1).to_string(),
                Some(v) => String::from_utf8(v).unwrap_or_else(|e| format!("bytes:{}", e.as_bytes().len())),
            };
            self.note(&format!("x-prop-{path}"), rendered);
        }
    }

    fn grpc_unary(&mut self) -> Action {
        let text = self.header("x-grpc-text");
        let status: u32 = self.header("x-grpc-status").parse().unwrap_or(0);
        let delay: u32 = self.header("x-grpc-delay-ms").parse().unwrap_or(0);
        let timeout: u64 = self.header("x-grpc-timeout-ms").parse().unwrap_or(5000);
        let message = pb::echo_request(&text, status, "refused by the echo service", delay);
        let cluster = self.grpc_cluster();
        match self.dispatch_grpc_call(
            &cluster,
            "meshwork.test.v1.Echo",
            "Unary",
            vec![("x-tenant", b"acme"), ("trace-bin", &[0, 1, 2, 250])],
            Some(&message),
            Duration::from_millis(timeout),
        ) {
            Ok(token) => {
                self.grpc_token = Some(token);
                Action::Pause
            }
            Err(e) => {
                self.note("x-grpc-dispatch-error", format!("{e:?}"));
                Action::Continue
            }
        }
    }

    fn grpc_stream(&mut self) -> Action {
        let cluster = self.grpc_cluster();
        let token = match self.open_grpc_stream(&cluster, "meshwork.test.v1.Echo", "Bidi", vec![("x-tenant", b"acme")])
        {
            Ok(t) => t,
            Err(e) => {
                self.note("x-grpc-dispatch-error", format!("{e:?}"));
                return Action::Continue;
            }
        };
        self.grpc_token = Some(token);
        let fail: u32 = self.header("x-grpc-status").parse().unwrap_or(0);
        let words = self.header("x-grpc-words");
        let words: Vec<&str> = words.split(',').filter(|w| !w.is_empty()).collect();
        for (i, w) in words.iter().enumerate() {
            let status = if i + 1 == words.len() { fail } else { 0 };
            self.send_grpc_stream_message(token, Some(&pb::echo_request(w, status, "stream refused", 0)), false);
        }
        // The half-close: the server ends its side after echoing everything.
        self.close_grpc_stream(token);
        Action::Pause
    }

    fn foreign(&mut self) {
        let text = b"hello hello hello hello hello hello".to_vec();
        let compressed = hostcalls::call_foreign_function("compress", Some(&text)).ok().flatten().unwrap_or_default();
        let back = hostcalls::call_foreign_function("uncompress", Some(&compressed)).ok().flatten().unwrap_or_default();
        self.note("x-foreign-compress", if back == text && compressed.len() < text.len() { "ok" } else { "broken" });
        let unknown = hostcalls::call_foreign_function("no_such_function", None).err();
        self.note("x-foreign-unknown", format!("{unknown:?}"));
        let key = self.header("x-state-key");
        if !key.is_empty() {
            let mut args = Vec::new();
            pb::string(&mut args, 1, key.as_bytes());
            pb::string(&mut args, 2, self.header("x-state-value").as_bytes());
            let set = hostcalls::call_foreign_function("set_envoy_filter_state", Some(&args));
            self.note("x-foreign-set-state", format!("{:?}", set.map(|_| ())));
            let read = self.get_property(vec!["filter_state", &key]).map(|v| String::from_utf8_lossy(&v).into_owned());
            self.note("x-foreign-state", read.unwrap_or_else(|| "absent".into()));
        }
        let reroute = self.header("x-reroute");
        if !reroute.is_empty() {
            self.set_http_request_header(":path", Some(&reroute));
            let cleared = hostcalls::call_foreign_function("clear_route_cache", None);
            self.note("x-foreign-clear-route-cache", format!("{:?}", cleared.map(|_| ())));
        }
    }
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, size: usize) {
        if self.test == "grpc-cancel" {
            bump_shared("grpc.after-cancel");
            return;
        }
        if self.config.mode == "grpc-auth" {
            if status_code.is_multiple_of(2) {
                log::info("Access granted.");
                self.resume_http_request();
            } else {
                log::info("Access forbidden.");
                self.send_grpc_response(
                    GrpcStatusCode::Aborted,
                    Some("Aborted by Proxy-Wasm!"),
                    vec![("Powered-By", b"proxy-wasm")],
                );
            }
            return;
        }
        let _ = token;
        self.note("x-grpc-status", status_code);
        if status_code == 0 {
            let body = self.get_grpc_call_response_body(0, size).unwrap_or_default();
            let (text, metadata) = pb::echo_reply(&body);
            self.note("x-grpc-reply", text);
            for (k, v) in metadata {
                if k == "x-tenant" || k == "trace-bin" || k == "grpc-timeout" {
                    self.note(&format!("x-grpc-seen-{k}"), v);
                }
            }
        } else {
            let (_, message) = self.get_grpc_status();
            self.note("x-grpc-message", message.unwrap_or_default());
        }
        self.resume_http_request();
    }

    fn on_grpc_stream_initial_metadata(&mut self, _: u32, n: u32) {
        self.order.push("initial");
        let _ = n;
    }

    fn on_grpc_stream_message(&mut self, _: u32, size: usize) {
        self.order.push("message");
        let body = self.get_grpc_stream_message(0, size).unwrap_or_default();
        self.messages.push(pb::echo_reply(&body).0);
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _: u32, _: u32) {
        self.order.push("trailers");
    }

    fn on_grpc_stream_close(&mut self, _: u32, status_code: u32) {
        self.order.push("close");
        let (_, message) = self.get_grpc_status();
        let order = self.order.join(",");
        let messages = self.messages.join(",");
        self.note("x-stream-order", order);
        self.note("x-stream-replies", messages);
        self.note("x-stream-status", status_code);
        self.note("x-stream-message", message.unwrap_or_default());
        self.resume_http_request();
    }

    fn on_http_call_response(&mut self, _: u32, _: usize, body_size: usize, _: usize) {
        // auth-random: an even first byte grants access (the SDK's http_auth_random).
        if let Some(body) = self.get_http_call_response_body(0, body_size)
            && !body.is_empty()
            && body[0] % 2 == 0
        {
            log::info("Access granted.");
            self.resume_http_request();
            return;
        }
        log::info("Access forbidden.");
        self.send_http_response(403, vec![("Powered-By", "proxy-wasm")], Some(b"Access forbidden.\n"));
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        match self.config.mode.as_str() {
            "auth-random" => {
                let path = self.header("x-auth-path");
                let path = if path.is_empty() { "/bytes/1".to_owned() } else { path };
                let cluster = if self.config.callout_cluster.is_empty() {
                    "httpbin".to_owned()
                } else {
                    self.config.callout_cluster.clone()
                };
                self.dispatch_http_call(
                    &cluster,
                    vec![(":method", "GET"), (":path", &path), (":authority", "httpbin.org")],
                    None,
                    vec![],
                    Duration::from_secs(1),
                )
                .unwrap();
                return Action::Pause;
            }
            "headers-log" => {
                for (name, value) in &self.get_http_request_headers() {
                    log::info(&format!("#{} -> {}: {}", self.id, name, value));
                }
                if self.header(":path") == "/hello" {
                    self.send_http_response(
                        200,
                        vec![("Hello", "World"), ("Powered-By", "proxy-wasm")],
                        Some(b"Hello, World!\n"),
                    );
                    return Action::Pause;
                }
                return Action::Continue;
            }
            "grpc-auth" => {
                if !self.header("content-type").starts_with("application/grpc") {
                    self.send_http_response(
                        503,
                        vec![("Powered-By", "proxy-wasm")],
                        Some(b"Service accessible only to gRPC clients.\n"),
                    );
                    return Action::Pause;
                }
                if self.header(":path").starts_with("/grpc.reflection") {
                    return Action::Continue;
                }
                // The decision comes from the echo service: it answers the status asked for.
                let code: u32 = self.header("x-auth-code").parse().unwrap_or(0);
                let cluster = self.grpc_cluster();
                self.dispatch_grpc_call(
                    &cluster,
                    "meshwork.test.v1.Echo",
                    "Unary",
                    vec![],
                    Some(&pb::echo_request("", code, "decided", 0)),
                    Duration::from_secs(1),
                )
                .unwrap();
                return Action::Pause;
            }
            "http" => {}
            _ => return Action::Continue,
        }
        self.test = self.header("x-test");
        let name = if self.config.props_header.is_empty() { "x-props" } else { self.config.props_header.as_str() };
        self.wanted = self.header(name);
        match self.test.as_str() {
            "grpc-unary" => return self.grpc_unary(),
            "grpc-stream" => return self.grpc_stream(),
            "grpc-cancel" => {
                let cluster = self.grpc_cluster();
                let message = pb::echo_request("never", 0, "", 500);
                if let Ok(token) = self.dispatch_grpc_call(
                    &cluster,
                    "meshwork.test.v1.Echo",
                    "Unary",
                    vec![],
                    Some(&message),
                    Duration::from_secs(5),
                ) {
                    self.cancel_grpc_call(token);
                    self.note("x-grpc-cancelled", token);
                }
            }
            "read-shared" => {
                let key = self.header("x-key");
                let value = read_shared(&key);
                self.note("x-shared-value", value);
            }
            "foreign" => self.foreign(),
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        match self.config.mode.as_str() {
            "auth-random" | "grpc-auth" => self.set_http_response_header("Powered-By", Some("proxy-wasm")),
            "body-redact" => self.set_http_response_header("content-length", None),
            "config-header" => {
                let value = self.config.value.clone();
                self.add_http_response_header("custom-header", &value);
            }
            "headers-log" => {
                for (name, value) in &self.get_http_response_headers() {
                    log::info(&format!("#{} <- {}: {}", self.id, name, value));
                }
            }
            _ => {}
        }
        if !self.wanted.is_empty() {
            self.props();
        }
        for (k, v) in std::mem::take(&mut self.reply) {
            self.add_http_response_header(&k, &v);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.config.mode != "body-redact" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_response_body(0, body_size)
            && String::from_utf8_lossy(&body).contains("secret")
        {
            let new_body = format!("Original message body ({body_size} bytes) redacted.\n");
            self.set_http_response_body(0, body_size, new_body.as_bytes());
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.config.mode == "headers-log" {
            log::info(&format!("#{} completed.", self.id));
        }
    }
}

#[derive(Default)]
struct Net {
    id: u32,
    config: Config,
    reported: bool,
    seen: usize,
    /// pause-connect: the callout answered.
    allowed: bool,
}

impl Context for Net {
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {
        // pause-connect: the callout decided; let the connection (and what it held) through.
        bump_shared("net.callout-answered");
        self.allowed = true;
        self.resume_downstream();
    }
}

impl StreamContext for Net {
    fn on_new_connection(&mut self) -> Action {
        bump_shared("net.connections");
        match self.config.net.as_str() {
            "route" => {
                let mut args = Vec::new();
                pb::string(&mut args, 1, b"envoy.tcp_proxy.cluster");
                pb::string(&mut args, 2, self.config.value.as_bytes());
                let _ = hostcalls::call_foreign_function("set_envoy_filter_state", Some(&args));
                Action::Continue
            }
            "pause-connect" => {
                let cluster = self.config.callout_cluster.clone();
                match self.dispatch_http_call(
                    &cluster,
                    vec![(":method", "GET"), (":path", "/?delay=100ms"), (":authority", "side")],
                    None,
                    vec![],
                    Duration::from_secs(5),
                ) {
                    Ok(_) => Action::Pause,
                    Err(_) => Action::Continue,
                }
            }
            _ => Action::Continue,
        }
    }

    fn on_downstream_data(&mut self, size: usize, end_of_stream: bool) -> Action {
        let data = self.get_downstream_data(0, size).unwrap_or_default();
        self.seen = size;
        match self.config.net.as_str() {
            "upper" => {
                self.set_downstream_data(0, size, &data.to_ascii_uppercase());
                Action::Continue
            }
            "hold-line" => {
                if data.contains(&b'\n') || end_of_stream {
                    bump_shared(&format!("net.hold.released.{size}"));
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            // Nothing passes until the callout started in on_new_connection answers.
            "pause-connect" if !self.allowed => Action::Pause,
            "close-on" => {
                let needle = self.config.needle.as_bytes();
                if !needle.is_empty() && data.windows(needle.len()).any(|w| w == needle) {
                    self.close_downstream();
                    return Action::Pause;
                }
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_upstream_data(&mut self, size: usize, _: bool) -> Action {
        if self.config.net == "report" && !self.reported && size > 0 {
            self.reported = true;
            let text = |p: Vec<&str>| {
                self.get_property(p).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_else(|| "none".into())
            };
            let mtls = self.get_property(vec!["connection", "mtls"]).is_some_and(|v| v.first() == Some(&1));
            let line = format!(
                "tls={} mtls={} peer={} src={} upstream={} id={}\n",
                text(vec!["connection", "tls_version"]),
                mtls,
                text(vec!["connection", "subject_peer_certificate"]),
                text(vec!["source", "address"]),
                text(vec!["upstream", "address"]),
                self.id
            );
            self.set_upstream_data(0, 0, line.as_bytes());
        }
        Action::Continue
    }

    fn on_downstream_close(&mut self, peer: PeerType) {
        bump_shared(&format!("net.downstream-close.{}", peer as u32));
    }

    fn on_upstream_close(&mut self, _: PeerType) {
        bump_shared("net.upstream-close");
    }

    fn on_log(&mut self) {
        bump_shared("net.log");
        let _ = self.seen;
    }
}
