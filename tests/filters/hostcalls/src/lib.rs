//! A test filter that exercises every hostcall group. The request header `x-test` picks a
//! scenario; results come back as response headers (`x-…`) or request headers the sample
//! upstream echoes. The `raw` module calls hostcalls directly to observe exact status codes.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Direct ABI calls, for status codes the SDK hides or panics on.
mod raw {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_len: usize,
            ret: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_size(map: u32, ret: *mut usize) -> u32;
        pub fn proxy_continue_stream(stream: u32) -> u32;
        pub fn proxy_set_buffer_bytes(buffer: u32, start: usize, len: usize, data: *const u8, data_len: usize) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max: usize,
            ret: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_get_buffer_status(buffer: u32, len: *mut usize, flags: *mut u32) -> u32;
        pub fn proxy_done() -> u32;
        pub fn proxy_set_effective_context(id: u32) -> u32;
        pub fn proxy_log(level: u32, msg: *const u8, len: usize) -> u32;
        pub fn proxy_get_log_level(ret: *mut u32) -> u32;
        pub fn proxy_increment_metric(id: u32, delta: i64) -> u32;
        pub fn proxy_get_metric(id: u32, ret: *mut u64) -> u32;
        pub fn proxy_define_metric(kind: u32, name: *const u8, len: usize, ret: *mut u32) -> u32;
        pub fn proxy_http_call(
            cluster: *const u8,
            cluster_len: usize,
            headers: *const u8,
            headers_len: usize,
            body: *const u8,
            body_len: usize,
            trailers: *const u8,
            trailers_len: usize,
            timeout: u32,
            token: *mut u32,
        ) -> u32;
        pub fn proxy_get_property(path: *const u8, len: usize, ret: *mut *mut u8, ret_len: *mut usize) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_len: usize,
            value: *const u8,
            value_len: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_register_shared_queue(name: *const u8, len: usize, ret: *mut u32) -> u32;
        pub fn proxy_enqueue_shared_queue(queue: u32, value: *const u8, len: usize) -> u32;
        pub fn proxy_grpc_call(
            a: *const u8,
            b: usize,
            c: *const u8,
            d: usize,
            e: *const u8,
            f: usize,
            g: *const u8,
            h: usize,
            i: *const u8,
            j: usize,
            timeout: u32,
            token: *mut u32,
        ) -> u32;
    }
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        pub fn random_get(buf: *mut u8, len: usize) -> u16;
        pub fn clock_time_get(id: u32, precision: u64, ret: *mut u64) -> u16;
        pub fn fd_write(fd: u32, iovs: *const [usize; 2], n: usize, written: *mut usize) -> u16;
    }
}

/// `(0, 0)`-terminated pairs in the ABI's map encoding.
fn pairs(items: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (items.len() as u32).to_le_bytes().to_vec();
    for (k, v) in items {
        out.extend((k.len() as u32).to_le_bytes());
        out.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in items {
        out.extend(k.as_bytes());
        out.push(0);
        out.extend(v.as_bytes());
        out.push(0);
    }
    out
}

#[derive(Deserialize, Default, Clone)]
#[serde(default)]
struct Config {
    /// Tick period in milliseconds (0: no timer).
    tick_ms: u64,
    /// Register and consume the shared queue "test.queue".
    queue: bool,
    /// Cluster for callouts.
    callout_cluster: String,
    /// This instance reads the property an earlier instance set (two-filter chains).
    reader: bool,
}

#[derive(Default)]
struct Root {
    config: Rc<Config>,
    queue: Option<u32>,
    ticks: Rc<Cell<u64>>,
}

fn bump_shared(key: &str) -> u64 {
    loop {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let n = value.and_then(|v| v.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0) + 1;
        match hostcalls::set_shared_data(key, Some(&n.to_le_bytes()), cas) {
            Ok(()) => return n,
            Err(Status::CasMismatch) => continue,
            Err(_) => return 0,
        }
    }
}

fn read_shared(key: &str) -> u64 {
    hostcalls::get_shared_data(key)
        .ok()
        .and_then(|(v, _)| v)
        .and_then(|v| v.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        // The plugin configuration is not readable in on_vm_start (as in Envoy).
        let status = unsafe {
            let (mut p, mut l) = (std::ptr::null_mut(), 0);
            raw::proxy_get_buffer_bytes(7, 0, 100, &mut p, &mut l)
        };
        bump_shared(&format!("test.vm_start.config_status.{status}"));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config: Config = if bytes.is_empty() {
            Config::default()
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(c) => c,
                Err(e) => {
                    let _ = hostcalls::log(LogLevel::Error, &format!("hostcalls test filter: bad configuration: {e}"));
                    return false;
                }
            }
        };
        // Shared-data keys are created by unconditional writes, so two workers that both find a
        // key missing would both "create" it: counters bumped under traffic exist from here on.
        for key in ["test.counter", "test.ticks", "test.queue.received"] {
            if let Ok((None, None)) = hostcalls::get_shared_data(key) {
                let _ = hostcalls::set_shared_data(key, Some(&0u64.to_le_bytes()), None);
            }
        }
        if config.tick_ms > 0 {
            self.set_tick_period(Duration::from_millis(config.tick_ms));
        }
        if config.queue {
            self.queue = Some(self.register_shared_queue("test.queue"));
        }
        self.config = Rc::new(config);
        true
    }

    fn on_tick(&mut self) {
        self.ticks.set(self.ticks.get() + 1);
        bump_shared("test.ticks");
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            bump_shared("test.queue.received");
            bump_shared(&format!("test.queue.item.{}", String::from_utf8_lossy(&item)));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id: context_id,
            config: self.config.clone(),
            queue: self.queue,
            test: String::new(),
            reply: Vec::new(),
            callout_token: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    config: Rc<Config>,
    queue: Option<u32>,
    test: String,
    /// Response headers to add on the way back.
    reply: Vec<(String, String)>,
    callout_token: Option<u32>,
}

impl Stream {
    fn note(&mut self, name: &str, value: impl ToString) {
        self.reply.push((name.to_owned(), value.to_string()));
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn raw_statuses_request(&mut self) {
        unsafe {
            let (mut p, mut l) = (std::ptr::null_mut(), 0usize);
            self.note("x-status-continue-upstream", raw::proxy_continue_stream(3));
            self.note("x-status-bad-stream-type", raw::proxy_continue_stream(9));
            self.note("x-status-set-body-outside-callback", raw::proxy_set_buffer_bytes(0, 0, 0, b"x".as_ptr(), 1));
            self.note("x-status-get-body-outside-callback", raw::proxy_get_buffer_bytes(0, 0, 10, &mut p, &mut l));
            self.note("x-status-plugin-config-after-start", raw::proxy_get_buffer_bytes(7, 0, 10, &mut p, &mut l));
            self.note("x-status-bad-buffer-type", raw::proxy_get_buffer_bytes(42, 0, 10, &mut p, &mut l));
            self.note("x-status-done-on-stream", raw::proxy_done());
            self.note("x-status-bad-effective-context", raw::proxy_set_effective_context(999_999));
            self.note("x-status-own-effective-context", raw::proxy_set_effective_context(self.id));
            self.note("x-status-bad-log-level", raw::proxy_log(9, b"x".as_ptr(), 1));
            let mut level = 99;
            self.note("x-status-get-log-level", raw::proxy_get_log_level(&mut level));
            self.note("x-log-level", level);
            let mut size = 0usize;
            self.note("x-status-header-map-size", raw::proxy_get_header_map_size(0, &mut size));
            self.note("x-header-map-size", size);
            self.note("x-status-header-map-size-callout-map", raw::proxy_get_header_map_size(6, &mut size));
            let (mut blen, mut flags) = (0usize, 0u32);
            self.note("x-status-buffer-status-vm-config", raw::proxy_get_buffer_status(6, &mut blen, &mut flags));
            let key = b"x-missing";
            self.note(
                "x-status-missing-header",
                raw::proxy_get_header_map_value(0, key.as_ptr(), key.len(), &mut p, &mut l),
            );
            self.note(
                "x-status-bad-map-type",
                raw::proxy_get_header_map_value(42, key.as_ptr(), key.len(), &mut p, &mut l),
            );
            let mut id = 0;
            let name = b"test_histogram";
            raw::proxy_define_metric(2, name.as_ptr(), name.len(), &mut id);
            let mut value = 0u64;
            self.note("x-status-get-histogram", raw::proxy_get_metric(id, &mut value));
            self.note("x-status-increment-histogram", raw::proxy_increment_metric(id, 1));
            let name = b"test_counter_zero";
            raw::proxy_define_metric(0, name.as_ptr(), name.len(), &mut id);
            self.note("x-status-increment-counter-by-zero", raw::proxy_increment_metric(id, 0));
            self.note("x-status-unknown-metric", raw::proxy_get_metric(4_000_000, &mut value));
            self.note("x-status-bad-metric-type", raw::proxy_define_metric(7, name.as_ptr(), name.len(), &mut id));
            let config = self.config.clone();
            let cluster = config.callout_cluster.as_bytes();
            let headers = pairs(&[(":method", "GET"), (":path", "/")]);
            let mut token = 0;
            self.note(
                "x-status-callout-without-authority",
                raw::proxy_http_call(
                    cluster.as_ptr(),
                    cluster.len(),
                    headers.as_ptr(),
                    headers.len(),
                    std::ptr::null(),
                    0,
                    std::ptr::null(),
                    0,
                    1000,
                    &mut token,
                ),
            );
            let headers = pairs(&[(":method", "GET"), (":path", "/"), (":authority", "x")]);
            let nope = b"no-such-cluster";
            self.note(
                "x-status-callout-unknown-cluster",
                raw::proxy_http_call(
                    nope.as_ptr(),
                    nope.len(),
                    headers.as_ptr(),
                    headers.len(),
                    std::ptr::null(),
                    0,
                    std::ptr::null(),
                    0,
                    1000,
                    &mut token,
                ),
            );
            self.note(
                "x-status-callout-huge-timeout",
                raw::proxy_http_call(
                    cluster.as_ptr(),
                    cluster.len(),
                    headers.as_ptr(),
                    headers.len(),
                    std::ptr::null(),
                    0,
                    std::ptr::null(),
                    0,
                    u32::MAX,
                    &mut token,
                ),
            );
            let path = b"no_such_property";
            self.note("x-status-unknown-property", raw::proxy_get_property(path.as_ptr(), path.len(), &mut p, &mut l));
            let path = b"request";
            self.note(
                "x-status-whole-request-property",
                raw::proxy_get_property(path.as_ptr(), path.len(), &mut p, &mut l),
            );
            // A plain cluster name is taken as one (Envoy); an unknown one is ParseFailure.
            let unknown = b"no-such-cluster";
            self.note(
                "x-status-grpc-unknown-cluster",
                raw::proxy_grpc_call(
                    unknown.as_ptr(),
                    unknown.len(),
                    b"s".as_ptr(),
                    1,
                    b"m".as_ptr(),
                    1,
                    std::ptr::null(),
                    0,
                    std::ptr::null(),
                    0,
                    100,
                    &mut token,
                ),
            );
            self.note(
                "x-status-grpc-call",
                raw::proxy_grpc_call(
                    cluster.as_ptr(),
                    cluster.len(),
                    b"s".as_ptr(),
                    1,
                    b"m".as_ptr(),
                    1,
                    std::ptr::null(),
                    0,
                    std::ptr::null(),
                    0,
                    100,
                    &mut token,
                ),
            );
            self.note("x-grpc-call-token-kind", token & 3);
        }
    }
}

impl Stream {
    /// `x-budget: shared|queue|metrics|callouts|log` tries `x-n` of that resource at once and
    /// reports `x-budget-ok` (how many the host accepted) and `x-budget-refused` (the status
    /// of the first refusal, or none).
    fn budget_scenario(&mut self) {
        let what = self.get_http_request_header("x-budget").unwrap_or_default();
        let n: usize = self.get_http_request_header("x-n").and_then(|v| v.parse().ok()).unwrap_or(1);
        let salt = self.get_http_request_header("x-salt").unwrap_or_default();
        let mut statuses = Vec::with_capacity(n);
        unsafe {
            match what.as_str() {
                "shared" => {
                    let value = [7u8; 100];
                    for i in 0..n {
                        let key = format!("budget.{salt}.{i}");
                        statuses.push(raw::proxy_set_shared_data(
                            key.as_ptr(),
                            key.len(),
                            value.as_ptr(),
                            value.len(),
                            0,
                        ));
                    }
                }
                "queue" => {
                    let name = format!("budget.queue.{salt}");
                    let mut id = 0;
                    statuses.push(raw::proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id));
                    for _ in 1..n {
                        statuses.push(raw::proxy_enqueue_shared_queue(id, b"item".as_ptr(), 4));
                    }
                }
                "queues" => {
                    for i in 0..n {
                        let name = format!("budget.queues.{salt}.{i}");
                        let mut id = 0;
                        statuses.push(raw::proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id));
                    }
                }
                "metrics" => {
                    for i in 0..n {
                        let name = format!("budget_metric_{salt}_{i}");
                        let mut id = 0;
                        statuses.push(raw::proxy_define_metric(0, name.as_ptr(), name.len(), &mut id));
                    }
                }
                "callouts" => {
                    for _ in 0..n {
                        let sent = self.dispatch_http_call(
                            &self.config.callout_cluster,
                            vec![(":method", "GET"), (":path", "/side?delay=2s"), (":authority", "side")],
                            None,
                            vec![],
                            Duration::from_secs(5),
                        );
                        statuses.push(sent.map_or_else(|e| e as u32, |_| 0));
                    }
                }
                "log" => {
                    let text = vec![b'l'; n];
                    statuses.push(raw::proxy_log(2, text.as_ptr(), text.len()));
                    let iov = [text.as_ptr() as usize, text.len()];
                    let mut written = 0usize;
                    statuses.push(u32::from(raw::fd_write(1, &iov, 1, &mut written)));
                    self.note("x-budget-written", written);
                }
                _ => {}
            }
        }
        self.note("x-budget-ok", statuses.iter().filter(|s| **s == 0).count());
        let refused = statuses.iter().find(|s| **s != 0).map_or("none".to_string(), |s| s.to_string());
        self.note("x-budget-refused", refused);
    }
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
        if Some(token) != self.callout_token {
            return;
        }
        let status = self.get_http_call_response_header(":status").unwrap_or_else(|| "none".into());
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        self.set_http_request_header("x-callout-status", Some(&status));
        self.set_http_request_header("x-callout-body-bytes", Some(&body.len().to_string()));
        self.set_http_request_header("x-callout-headers", Some(&num_headers.to_string()));
        self.set_http_request_header("x-callout-trailers", Some(&num_trailers.to_string()));
        self.note("x-callout-status", status);
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.test = self.get_http_request_header("x-test").unwrap_or_default();
        self.note("x-num-headers", num_headers);
        self.note("x-headers-eos", end_of_stream);
        if self.config.reader {
            let seen = self.property(&["meshwork.test.note"]).map(|v| String::from_utf8_lossy(&v).into_owned());
            self.note("x-prop-from-previous-filter", seen.unwrap_or_else(|| "none".into()));
            return Action::Continue;
        }
        match self.test.as_str() {
            "headers" => {
                let got = self.get_http_request_header("x-get").unwrap_or_else(|| "absent".into());
                self.add_http_request_header("x-added", "1");
                self.set_http_request_header("x-replace", Some("new"));
                self.remove_http_request_header("x-remove");
                self.add_http_request_header("x-got", &got);
                self.note("x-request-pairs", self.get_http_request_headers().len());
            }
            "set-pairs" => {
                let mut all = self.get_http_request_headers();
                all.retain(|(k, _)| k != "x-drop-me");
                all.push(("x-from-pairs".into(), "yes".into()));
                self.set_http_request_headers(all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
            }
            "rewrite-path" => self.set_http_request_header(":path", Some("/rewritten?size=7")),
            "local" => {
                self.send_http_response(
                    418,
                    vec![("x-local", "yes"), ("content-type", "text/teapot")],
                    Some(b"short and stout"),
                );
                return Action::Pause;
            }
            "callout" | "callout-timeout" => {
                let path = if self.test == "callout" { "/side?size=3" } else { "/side?delay=2s" };
                let timeout = Duration::from_millis(if self.test == "callout" { 2000 } else { 100 });
                match self.dispatch_http_call(
                    &self.config.callout_cluster,
                    vec![(":method", "GET"), (":path", path), (":authority", "side")],
                    None,
                    vec![],
                    timeout,
                ) {
                    Ok(token) => {
                        self.callout_token = Some(token);
                        return Action::Pause;
                    }
                    Err(e) => self.note("x-callout-error", format!("{e:?}")),
                }
            }
            "props" => {
                let text = |v: Option<Vec<u8>>| {
                    v.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|| "absent".into())
                };
                let int = |v: Option<Vec<u8>>| {
                    v.and_then(|b| b.try_into().ok())
                        .map(i64::from_le_bytes)
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "absent".into())
                };
                let path = text(self.property(&["request", "path"]));
                let method = text(self.property(&["request", "method"]));
                let source = text(self.property(&["source", "address"]));
                let plugin = text(self.property(&["plugin_name"]));
                let root = text(self.property(&["plugin_root_id"]));
                let vm = text(self.property(&["plugin_vm_id"]));
                let route = text(self.property(&["xds", "route_name"]));
                let protocol = text(self.property(&["request", "protocol"]));
                let id = text(self.property(&["request", "id"]));
                let time = int(self.property(&["request", "time"]));
                let dest_port = int(self.property(&["destination", "port"]));
                let node = text(self.property(&["xds", "node", "id"]));
                for (k, v) in [
                    ("x-prop-request-path", path),
                    ("x-prop-request-method", method),
                    ("x-prop-source-address", source),
                    ("x-prop-plugin-name", plugin),
                    ("x-prop-plugin-root-id", root),
                    ("x-prop-plugin-vm-id", vm),
                    ("x-prop-route-name", route),
                    ("x-prop-protocol", protocol),
                    ("x-prop-request-id", id),
                    ("x-prop-request-time-ns", time),
                    ("x-prop-destination-port", dest_port),
                    ("x-prop-node-id", node),
                ] {
                    self.note(k, v);
                }
                self.set_property(vec!["meshwork.test.note"], Some(b"left by the first filter"));
            }
            "shared" => {
                let n = bump_shared("test.counter");
                self.note("x-shared-counter", n);
            }
            "queue" => {
                if let Some(q) = self.queue {
                    let item = self.get_http_request_header("x-item").unwrap_or_else(|| "none".into());
                    let _ = self.enqueue_shared_queue(q, Some(item.as_bytes()));
                    self.note("x-enqueued", item);
                }
            }
            "queue-count" => {
                self.note("x-queue-received", read_shared("test.queue.received"));
                if let Some(item) = self.get_http_request_header("x-item") {
                    self.note("x-queue-item-seen", read_shared(&format!("test.queue.item.{item}")));
                }
            }
            "ticks" => self.note("x-ticks", read_shared("test.ticks")),
            "read-shared" => {
                let key = self.get_http_request_header("x-key").unwrap_or_default();
                self.note("x-shared-value", read_shared(&key));
            }
            "vm-start" => self.note("x-vm-start-plugin-config-status-1", read_shared("test.vm_start.config_status.1")),
            "metrics" => {
                let counter =
                    hostcalls::define_metric(MetricType::Counter, "test_filter_requests;.;scenario=.=metrics")
                        .unwrap_or(0);
                let gauge = hostcalls::define_metric(MetricType::Gauge, "test_filter_gauge").unwrap_or(0);
                let histogram = hostcalls::define_metric(MetricType::Histogram, "test_filter_sizes").unwrap_or(0);
                let _ = hostcalls::increment_metric(counter, 2);
                let _ = hostcalls::record_metric(gauge, 40);
                let _ = hostcalls::increment_metric(gauge, -3);
                let _ = hostcalls::record_metric(histogram, 1234);
                self.note(
                    "x-metric-counter",
                    hostcalls::get_metric(counter).map(|v| v.to_string()).unwrap_or_default(),
                );
                self.note("x-metric-gauge", hostcalls::get_metric(gauge).map(|v| v.to_string()).unwrap_or_default());
                self.note("x-metric-negative-counter", format!("{:?}", hostcalls::increment_metric(counter, -1).err()));
            }
            "log" => {
                for (level, name) in [
                    (LogLevel::Trace, "trace"),
                    (LogLevel::Info, "info"),
                    (LogLevel::Warn, "warn"),
                    (LogLevel::Error, "error"),
                ] {
                    let _ = hostcalls::log(level, &format!("hostcalls-test log at {name}"));
                }
                println!("hostcalls-test says hello on stdout");
                eprintln!("hostcalls-test says hello on stderr");
            }
            "wasi" => {
                let env = std::env::var("MESHWORK_TEST_ENV").unwrap_or_else(|_| "unset".into());
                self.note("x-wasi-env", env);
                let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                self.note("x-wasi-clock-secs", now);
                let mut buf = [0u8; 32];
                let errno = unsafe { raw::random_get(buf.as_mut_ptr(), buf.len()) };
                self.note("x-wasi-random-errno", errno);
                self.note("x-wasi-random-nonzero", buf.iter().any(|b| *b != 0));
                let mut t = 0u64;
                self.note("x-wasi-bad-clock-errno", unsafe { raw::clock_time_get(7, 0, &mut t) });
                let msg = b"x";
                let iov = [msg.as_ptr() as usize, 1];
                let mut written = 0;
                self.note("x-wasi-fd-write-bad-fd", unsafe { raw::fd_write(9, &iov, 1, &mut written) });
            }
            "statuses" => self.raw_statuses_request(),
            "budget" => self.budget_scenario(),
            "callout-delay" | "callout-timeout-zero" => {
                // Holds the request (and its body) until a callout to `/side?delay=…` answers;
                // with timeout 0 the host's longest callout wait applies.
                let delay = self.get_http_request_header("x-delay").unwrap_or_else(|| "0s".into());
                let path = format!("/side?delay={delay}");
                let timeout = if self.test == "callout-timeout-zero" { 0 } else { 30_000 };
                let sent = self.dispatch_http_call(
                    &self.config.callout_cluster,
                    vec![(":method", "GET"), (":path", &path), (":authority", "side")],
                    None,
                    vec![],
                    Duration::from_millis(timeout),
                );
                let status = match sent {
                    Ok(token) => {
                        self.callout_token = Some(token);
                        return Action::Pause;
                    }
                    Err(e) => e as u32,
                };
                self.note("x-callout-error", status);
            }
            "pause-then-continue" => {
                // A timer-less resume: continue_stream inside the same callback.
                self.resume_http_request();
                return Action::Pause;
            }
            "close" => {
                self.reset_http_request();
                return Action::Pause;
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.test != "body" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let upper = body.to_ascii_uppercase();
        self.set_http_request_body(0, body_size, &upper);
        self.note("x-request-body-seen", body_size);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, num_headers: usize, _end_of_stream: bool) -> Action {
        if self.test == "statuses" {
            // Request headers are gone once they continued (Envoy): BadArgument.
            let key = b"x-test";
            let (mut p, mut l) = (std::ptr::null_mut(), 0usize);
            let status = unsafe { raw::proxy_get_header_map_value(0, key.as_ptr(), key.len(), &mut p, &mut l) };
            self.note("x-status-request-header-in-response", status);
        }
        if self.test == "headers" {
            self.remove_http_response_header("x-upstream-name");
            self.note("x-response-num-headers", num_headers);
        }
        if self.test == "body-append" {
            self.set_http_response_header("content-length", None);
        }
        for (k, v) in std::mem::take(&mut self.reply) {
            self.add_http_response_header(&k, &v);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.test != "body-append" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.set_http_response_body(usize::MAX, 0, b"[appended by filter]");
        self.add_http_response_trailer("x-body-size-seen", &body_size.to_string());
        Action::Continue
    }

    fn on_log(&mut self) {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        if !self.test.is_empty() {
            bump_shared(&format!("test.logged.{}.{status}", self.test));
        }
    }
}
