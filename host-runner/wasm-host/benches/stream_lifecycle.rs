//! The cost of one HTTP stream through the host, without any network: context creation,
//! request headers, response headers and body, on_log, on_done, on_delete.
//!
//! Prints nanoseconds per stream for an empty chain, a module whose callbacks do nothing (the
//! host's own overhead) and each filter module named on the command line. Callouts a filter
//! makes are answered at once, in process, with a 200 (`{"overallCode":"OK"}` for a rate-limit
//! service's `/json`): a callout-mode filter's happy path is measured without a network.
//! `cargo bench -p meshwork-wasm-host --bench stream_lifecycle -- $PWD/target/filters/measure.wasm`
//! (an argument may carry a configuration: `FILE.wasm={"rate":1000}`).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshwork_wasm_host::{
    Dispatcher, FilterStream, HeaderMap, HttpCallRequest, HttpCallResponse, Output, PluginConfig, PluginTemplate,
    PluginVm, QueueOwner, Services, StreamInfo, WasmEngine,
};

thread_local! {
    /// Callouts made during a callback, answered after it returns (never re-entrantly).
    static CALLOUTS: RefCell<Vec<(Rc<PluginVm>, HttpCallRequest)>> = const { RefCell::new(Vec::new()) };
}

struct Nothing;
impl Dispatcher for Nothing {
    fn http_call(&self, vm: &Rc<PluginVm>, call: HttpCallRequest) {
        CALLOUTS.with(|c| c.borrow_mut().push((vm.clone(), call)));
    }
    fn set_tick_period(&self, _: &Rc<PluginVm>, _: Duration) {}
}

fn answer(call: &HttpCallRequest) -> HttpCallResponse {
    let body: &'static [u8] = if call.headers.get(b":path") == Some(b"/json") {
        br#"{"overallCode":"OK"}"#
    } else {
        b"hello from upstream\n"
    };
    let mut headers = HeaderMap::new();
    for (k, v) in [(":status", "200"), ("content-type", "text/plain")] {
        headers.add(k.as_bytes(), v.as_bytes()).unwrap();
    }
    HttpCallResponse { headers, body: Bytes::from_static(body), trailers: HeaderMap::new() }
}
impl QueueOwner for Nothing {
    fn queue_ready(&self, _: u32) {}
}

const NOOP: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0)
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) i32.const 0)
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) i32.const 0)
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
  (func (export "proxy_on_delete") (param i32)))"#;

fn request() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        (":authority", "app.example:8080"),
        (":path", "/api/items?page=2"),
        (":method", "GET"),
        (":scheme", "http"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("x-request-id", "2f1c6a1e-8a9e-4c0b-9f5e-6a2b1e0c9d77"),
    ] {
        h.add(k.as_bytes(), v.as_bytes()).unwrap();
    }
    h
}

fn response() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        (":status", "200"),
        ("content-type", "text/plain"),
        ("content-length", "20"),
        ("date", "Sun, 22 Nov 2026 05:00:00 GMT"),
    ] {
        h.add(k.as_bytes(), v.as_bytes()).unwrap();
    }
    h
}

fn one_stream(vms: &[Rc<PluginVm>], req: &HeaderMap, resp: &HeaderMap, body: &Bytes) {
    let info = StreamInfo::new(Rc::from("bench-route"), Rc::from("bench-cluster"));
    let mut s = FilterStream::new(vms.to_vec(), req.clone(), info);
    s.request_headers(true);
    while s.next_output(meshwork_wasm_host::Dir::Request).is_some() {}
    loop {
        let calls = CALLOUTS.with(|c| std::mem::take(&mut *c.borrow_mut()));
        if calls.is_empty() {
            break;
        }
        for (vm, call) in calls {
            vm.on_http_call_response(call.token, Some(answer(&call))).expect("callout response");
        }
        s.process_actions();
        while s.next_output(meshwork_wasm_host::Dir::Request).is_some() {}
    }
    if !s.is_local_reply() {
        s.response_headers(resp.clone(), false);
        s.response_data(body.clone(), true);
    }
    while let Some(o) = s.next_output(meshwork_wasm_host::Dir::Response) {
        std::hint::black_box(&o);
        if matches!(o, Output::Data { end_stream: true, .. }) {
            break;
        }
    }
}

/// Median of five timed runs of `iterations` streams, in ns per stream.
fn measure(vms: &[Rc<PluginVm>], iterations: u32) -> f64 {
    let (req, resp, body) = (request(), response(), Bytes::from_static(b"hello from upstream\n"));
    for _ in 0..iterations / 10 {
        one_stream(vms, &req, &resp, &body);
    }
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                one_stream(vms, &req, &resp, &body);
            }
            start.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect();
    runs.sort_by(|a, b| a.total_cmp(b));
    runs[2]
}

fn vm(engine: &WasmEngine, services: &Arc<Services>, path: &Path, bytes: Option<&[u8]>, config: &str) -> Rc<PluginVm> {
    let module = match bytes {
        Some(b) => engine.load_bytes(path, b).expect("module"),
        None => engine.load(path, u64::MAX).expect("module"),
    };
    let mut plugin = PluginConfig::new(path.file_stem().and_then(|s| s.to_str()).unwrap_or("filter"));
    plugin.configuration = Bytes::copy_from_slice(config.as_bytes());
    // Callouts may name the stream's cluster or the rate-limit service's; the bench answers
    // them itself.
    let clusters = Arc::new(["bench-cluster".to_string(), "rls".to_string()].into_iter().collect());
    let template = PluginTemplate::new(engine, module, plugin, services.clone(), clusters).expect("link");
    template.instantiate(Rc::new(Nothing), Arc::new(Nothing)).expect("start")
}

fn main() {
    let args: Vec<PathBuf> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).map(PathBuf::from).collect();
    // BENCH_ITERATIONS=200 makes a run short enough for `valgrind --tool=callgrind`.
    let iterations = std::env::var("BENCH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let engine = WasmEngine::new(None).expect("engine");
    let services = Services::new(Default::default());
    // BENCH_CASE=empty|noop|filters runs one case only (for instruction counting).
    let case = std::env::var("BENCH_CASE").unwrap_or_default();
    if case == "empty" {
        println!("stream lifecycle, empty chain: {:.0} ns", measure(&[], iterations));
        return;
    }
    let empty = if case.is_empty() { measure(&[], iterations) } else { 0.0 };
    println!("stream lifecycle, {:<46} {empty:>8.0} ns", "empty chain");
    let noop_wasm = wat::parse_str(NOOP).expect("wat");
    if case.is_empty() || case == "noop" {
        let noop = vm(&engine, &services, Path::new("noop.wasm"), Some(&noop_wasm), "");
        let host = measure(&[noop], iterations);
        println!(
            "stream lifecycle, {:<46} {host:>8.0} ns  (host overhead per filter: {:.0} ns)",
            "one no-op filter",
            host - empty
        );
        if case == "noop" {
            return;
        }
    }
    // An argument is FILE.wasm or FILE.wasm=CONFIGURATION.
    for arg in args {
        let arg = arg.to_string_lossy().into_owned();
        let (path, config) =
            arg.split_once(".wasm=").map_or((arg.clone(), String::new()), |(p, c)| (format!("{p}.wasm"), c.to_owned()));
        let path = PathBuf::from(path);
        let filter = vm(&engine, &services, &path, None, &config);
        let t = measure(&[filter], iterations);
        // A label such as `retry {"mode":"envoy"}` tells apart runs of one module.
        let mut label = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !config.is_empty() && config != "{}" {
            label = format!("{label} {}", config.chars().take(28).collect::<String>());
        }
        println!("stream lifecycle, {label:<46} {t:>8.0} ns  (added by the filter: {:.0} ns)", t - empty);
    }
}
