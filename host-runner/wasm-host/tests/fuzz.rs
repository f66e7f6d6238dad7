//! Property-based fuzzing of what a filter controls: the header-pairs encoding it hands the
//! host, and the hostcall surface as a whole — modules generated per case call random
//! hostcalls with random arguments (wild pointers and sizes among them) from inside a stream's
//! callbacks. The host must never panic, hang or corrupt a stream; a VM may trap and fail, and
//! then the fail policy answers.
//!
//! `make test` runs a few cases of each; `make fuzz` runs thousands (FUZZ_CASES=N).

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use meshwork_wasm_host::headers::{HeaderMap, decode_pairs, encode_pairs};
use meshwork_wasm_host::{
    Dir, Dispatcher, FilterStream, HttpCallRequest, Output, PluginConfig, PluginTemplate, PluginVm, QueueOwner,
    Services, StreamInfo, WasmEngine,
};
use proptest::prelude::*;

fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_or_are_refused(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_pairs(&data);
    }

    #[test]
    fn encoded_pairs_decode_to_themselves(
        pairs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..80)), 0..20)
    ) {
        let borrowed: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        let encoded = encode_pairs(&borrowed);
        prop_assert_eq!(decode_pairs(&encoded), Some(borrowed));
    }

    #[test]
    fn truncated_or_inflated_encodings_never_read_out_of_bounds(
        pairs in proptest::collection::vec(("[a-z]{1,8}", "[ -~]{0,16}"), 1..8),
        cut in 0usize..64,
        bump in any::<u32>(),
    ) {
        let borrowed: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
        let mut encoded = encode_pairs(&borrowed);
        let len = encoded.len();
        let _ = decode_pairs(&encoded[..len.saturating_sub(cut)]);
        // A count or a size field claiming far more than is there.
        let at = (bump as usize % (len / 4).max(1)) * 4;
        encoded[at..at + 4].copy_from_slice(&bump.to_le_bytes());
        let _ = decode_pairs(&encoded);
    }
}

/// Hostcalls a generated module may call: name and parameter types.
const HOSTCALLS: &[(&str, &[&str])] = &[
    ("proxy_log", &["i32", "i32", "i32"]),
    ("proxy_get_log_level", &["i32"]),
    ("proxy_get_current_time_nanoseconds", &["i32"]),
    ("proxy_set_tick_period_milliseconds", &["i32"]),
    ("proxy_get_status", &["i32", "i32", "i32"]),
    ("proxy_done", &[]),
    ("proxy_set_effective_context", &["i32"]),
    ("proxy_get_buffer_bytes", &["i32", "i32", "i32", "i32", "i32"]),
    ("proxy_get_buffer_status", &["i32", "i32", "i32"]),
    ("proxy_set_buffer_bytes", &["i32", "i32", "i32", "i32", "i32"]),
    ("proxy_get_header_map_value", &["i32", "i32", "i32", "i32", "i32"]),
    ("proxy_get_header_map_pairs", &["i32", "i32", "i32"]),
    ("proxy_set_header_map_pairs", &["i32", "i32", "i32"]),
    ("proxy_add_header_map_value", &["i32", "i32", "i32", "i32", "i32"]),
    ("proxy_replace_header_map_value", &["i32", "i32", "i32", "i32", "i32"]),
    ("proxy_remove_header_map_value", &["i32", "i32", "i32"]),
    ("proxy_get_header_map_size", &["i32", "i32"]),
    ("proxy_continue_stream", &["i32"]),
    ("proxy_close_stream", &["i32"]),
    ("proxy_send_local_response", &["i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32"]),
    ("proxy_http_call", &["i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32"]),
    ("proxy_get_shared_data", &["i32", "i32", "i32", "i32", "i32"]),
    ("proxy_set_shared_data", &["i32", "i32", "i32", "i32", "i32"]),
    ("proxy_register_shared_queue", &["i32", "i32", "i32"]),
    ("proxy_resolve_shared_queue", &["i32", "i32", "i32", "i32", "i32"]),
    ("proxy_enqueue_shared_queue", &["i32", "i32", "i32"]),
    ("proxy_dequeue_shared_queue", &["i32", "i32", "i32"]),
    ("proxy_define_metric", &["i32", "i32", "i32", "i32"]),
    ("proxy_increment_metric", &["i32", "i64"]),
    ("proxy_record_metric", &["i32", "i64"]),
    ("proxy_get_metric", &["i32", "i32"]),
    ("proxy_get_property", &["i32", "i32", "i32", "i32"]),
    ("proxy_set_property", &["i32", "i32", "i32", "i32"]),
];

/// An argument: mostly small numbers and addresses inside the module's memory (so calls get
/// past the bounds checks), sometimes anything.
fn argument() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..8,
        4 => 0i64..70_000,
        1 => any::<u32>().prop_map(i64::from),
        1 => Just(i64::from(u32::MAX)),
    ]
}

fn call() -> impl Strategy<Value = (usize, Vec<i64>)> {
    (0..HOSTCALLS.len(), proptest::collection::vec(argument(), 10))
}

/// A module whose stream callbacks make the given hostcalls; its memory starts with `data`.
fn module(calls: &[(usize, Vec<i64>)], data: &[u8]) -> String {
    let mut imports = String::new();
    for (name, params) in HOSTCALLS {
        imports.push_str(&format!(
            "(import \"env\" \"{name}\" (func ${name} (param {}) (result i32)))\n",
            params.join(" ")
        ));
    }
    let mut body = String::new();
    for (i, args) in calls {
        let (name, params) = HOSTCALLS[*i];
        body.push_str(&format!("(drop (call ${name}"));
        for (p, a) in params.iter().zip(args) {
            body.push_str(&format!(" ({p}.const {})", *a as u32));
        }
        body.push_str("))\n");
    }
    let hex: String = data.iter().map(|b| format!("\\{b:02x}")).collect();
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (data (i32.const 0) "{hex}")
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    global.get $heap local.set $p
    (global.set $heap (i32.and (i32.add (global.get $heap) (local.get $n)) (i32.const 131071)))
    local.get $p)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func $calls {body})
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $calls) i32.const 0)
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (call $calls) i32.const 0)
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $calls) i32.const 0)
  (func (export "proxy_on_log") (param i32) (call $calls))
  (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
  (func (export "proxy_on_delete") (param i32)))"#
    )
}

struct Nothing;
impl Dispatcher for Nothing {
    fn http_call(&self, _: &Rc<PluginVm>, _: HttpCallRequest) {}
    fn set_tick_period(&self, _: &Rc<PluginVm>, _: Duration) {}
}
impl QueueOwner for Nothing {
    fn queue_ready(&self, _: u32) {}
}

fn engine() -> &'static WasmEngine {
    static ENGINE: OnceLock<WasmEngine> = OnceLock::new();
    ENGINE.get_or_init(|| WasmEngine::new(None).expect("engine"))
}

fn request() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [(":method", "POST"), (":path", "/f"), (":authority", "app"), ("x-a", "1")] {
        h.add(k.as_bytes(), v.as_bytes()).unwrap();
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(12), ..ProptestConfig::default() })]

    #[test]
    fn random_hostcalls_never_hurt_the_host(
        calls in proptest::collection::vec(call(), 1..24),
        data in proptest::collection::vec(any::<u8>(), 0..256),
        fail_open in any::<bool>(),
    ) {
        let wasm = wat::parse_str(module(&calls, &data)).expect("generated module");
        let module = engine().load_bytes(std::path::Path::new("fuzz.wasm"), &wasm).expect("load");
        let mut plugin = PluginConfig::new("fuzz");
        plugin.fail_open = fail_open;
        plugin.limits.callback_timeout = Duration::from_secs(2);
        let services = Services::new(Default::default());
        let clusters = Arc::new(["c".to_string()].into_iter().collect::<HashSet<_>>());
        let template = PluginTemplate::new(engine(), module, plugin, services, clusters).expect("link");
        let vm = template.instantiate(Rc::new(Nothing), Arc::new(Nothing)).expect("start");
        let mut s = FilterStream::new([vm], request(), StreamInfo::default()).with_buffer_limit(1 << 16);
        s.request_headers(false);
        s.request_data(Bytes::from_static(b"some body"), true);
        s.process_actions();
        let mut response = HeaderMap::new();
        response.add(b":status", b"200").unwrap();
        s.response_headers(response, true);
        // Whatever the filter did, the stream ended one way: passed, answered locally, or reset.
        let outputs: Vec<Output> = std::iter::from_fn(|| s.next_output(Dir::Response)).collect();
        prop_assert!(s.is_reset() || !outputs.is_empty() || s.is_local_reply() || s.request_aborted());
        s.finish();
    }
}
