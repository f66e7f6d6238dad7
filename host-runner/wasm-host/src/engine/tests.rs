//! The stream engine on its own: a scriptable WAT filter whose callbacks return what its
//! configuration says, driven event by event, with actions injected as hostcalls record them.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::plugin::{PluginConfig, Services};
use crate::vm::{Dispatcher, PluginTemplate};
use crate::{HttpCallRequest, QueueOwner, WasmEngine};

/// Callback k (request headers, body, trailers, response headers, body, trailers) returns
/// configuration byte k minus '0'; 'X' traps; 'E' pauses (1) until the end of stream, then
/// continues; a missing byte returns 0 (Continue).
const SCRIPTED: &str = r#"(module
  (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    global.get $heap local.set $p
    global.get $heap local.get $n i32.add global.set $heap
    local.get $p)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $get (i32.const 7) (i32.const 0) (i32.const 8) (i32.const 16) (i32.const 20)))
    (memory.copy (i32.const 32) (i32.load (i32.const 16)) (i32.load (i32.const 20)))
    i32.const 1)
  (func $answer (param $k i32) (param $eos i32) (result i32) (local $c i32)
    (local.set $c (i32.load8_u (i32.add (i32.const 32) (local.get $k))))
    (if (i32.eq (local.get $c) (i32.const 88)) (then unreachable))
    (if (i32.eq (local.get $c) (i32.const 69)) (then (return (i32.eqz (local.get $eos)))))
    (if (i32.eqz (local.get $c)) (then (return (i32.const 0))))
    (i32.sub (local.get $c) (i32.const 48)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $answer (i32.const 0) (local.get 2)))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (call $answer (i32.const 1) (local.get 2)))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) (call $answer (i32.const 2) (i32.const 1)))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $answer (i32.const 3) (local.get 2)))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (call $answer (i32.const 4) (local.get 2)))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32) (call $answer (i32.const 5) (i32.const 1)))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
  (func (export "proxy_on_delete") (param i32)))"#;

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

/// A VM of the scripted filter answering with `script`.
fn filter(script: &str, fail_open: bool) -> Rc<PluginVm> {
    let bytes = wat::parse_str(SCRIPTED).expect("wat");
    let module = engine().load_bytes(std::path::Path::new("scripted.wasm"), &bytes).expect("module");
    let mut plugin = PluginConfig::new(format!("scripted-{script}"));
    plugin.configuration = Bytes::copy_from_slice(script.as_bytes());
    plugin.fail_open = fail_open;
    let services = Services::new(Default::default());
    let template = PluginTemplate::new(engine(), module, plugin, services, Arc::new(HashSet::new())).expect("link");
    template.instantiate(Rc::new(Nothing), Arc::new(Nothing)).expect("start")
}

fn request() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [(":method", "POST"), (":path", "/x"), (":authority", "app"), (":scheme", "http")] {
        h.add(k.as_bytes(), v.as_bytes()).unwrap();
    }
    h
}

fn response(status: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.add(b":status", status.as_bytes()).unwrap();
    h
}

fn stream(vms: Vec<Rc<PluginVm>>, limit: usize) -> FilterStream {
    FilterStream::new(vms, request(), StreamInfo::default()).with_buffer_limit(limit)
}

fn outputs(s: &mut FilterStream, d: Dir) -> Vec<Output> {
    std::iter::from_fn(|| s.next_output(d)).collect()
}

fn data(bytes: &'static [u8], end_stream: bool) -> Output {
    Output::Data { bytes: Bytes::from_static(bytes), end_stream }
}

/// What a hostcall records for `proxy_continue_stream` from a callout or timer.
fn continue_later(s: &mut FilterStream, stage: usize, d: Dir) {
    s.data().borrow_mut().act(stage, |a| a.resume[d] = true);
    s.process_actions();
}

#[test]
fn passes_everything_through_in_order() {
    let mut s = stream(vec![filter("", false), filter("", false)], 1 << 20);
    s.request_headers(false);
    s.request_data(Bytes::from_static(b"ab"), false);
    s.request_data(Bytes::from_static(b"cd"), true);
    assert_eq!(
        outputs(&mut s, Dir::Request),
        vec![Output::Headers { end_stream: false }, data(b"ab", false), data(b"cd", true)]
    );
    s.response_headers(response("200"), false);
    s.response_data(Bytes::from_static(b"ok"), false);
    s.response_trailers(HeaderMap::new());
    assert_eq!(
        outputs(&mut s, Dir::Response),
        vec![Output::Headers { end_stream: false }, data(b"ok", false), Output::Trailers]
    );
    assert!(s.response_started() && !s.is_reset() && !s.is_local_reply());
}

#[test]
fn paused_headers_hold_the_body_without_callbacks_and_push_back_at_the_limit() {
    // Request headers answer 1 (StopIteration → StopAllIterationAndWatermark); a body
    // callback would trap ('X'), so none may run while the headers are held.
    let mut s = stream(vec![filter("1X", false)], 10);
    s.request_headers(false);
    assert!(outputs(&mut s, Dir::Request).is_empty());
    s.request_data(Bytes::from_static(b"12345"), false);
    assert!(s.accepts(Dir::Request), "5 of 10 bytes held");
    s.request_data(Bytes::from_static(b"67890"), false);
    assert!(!s.accepts(Dir::Request), "at the limit the proxy must stop reading");
    assert_eq!(s.buffered(Dir::Request), 10);
    assert!(!s.is_local_reply(), "watermark holds push back, they are not answered");
    // The filter continues (from a callout, say): the headers go on and the body passes the
    // filter's body callback — which now must not run into 'X': use a second filter to see it.
    let mut s2 = stream(vec![filter("1", false)], 10);
    s2.request_headers(false);
    s2.request_data(Bytes::from_static(b"12345"), false);
    s2.request_data(Bytes::from_static(b"678"), true);
    continue_later(&mut s2, 0, Dir::Request);
    assert_eq!(
        outputs(&mut s2, Dir::Request),
        vec![Output::Headers { end_stream: false }, data(b"12345678", true)],
        "held data leaves in one chunk after the headers"
    );
    assert!(s2.accepts(Dir::Request));
}

#[test]
fn a_buffering_filter_past_the_limit_gets_413() {
    // Request body answers 1 (StopIterationAndBuffer).
    let mut s = stream(vec![filter("01", false)], 8);
    s.request_headers(false);
    assert_eq!(outputs(&mut s, Dir::Request), vec![Output::Headers { end_stream: false }]);
    s.request_data(Bytes::from_static(b"12345"), false);
    assert!(!s.is_local_reply());
    s.request_data(Bytes::from_static(b"6789"), false);
    assert!(s.is_local_reply(), "9 bytes buffered past a limit of 8");
    assert!(s.request_aborted());
    assert_eq!(outputs(&mut s, Dir::Request), vec![], "nothing more goes upstream");
    let out = outputs(&mut s, Dir::Response);
    assert_eq!(out[0], Output::Headers { end_stream: false });
    assert_eq!(s.data().borrow().headers[Dir::Response].get_str(":status"), Some("413"));
    assert_eq!(s.data().borrow().info.response_code_details.as_deref(), Some("request_payload_too_large"));
}

#[test]
fn a_watermark_body_hold_pushes_back_instead() {
    // Request body answers 2 (StopIterationAndWatermark).
    let mut s = stream(vec![filter("02", false)], 8);
    s.request_headers(false);
    s.request_data(Bytes::from_static(b"123456789"), false);
    assert!(!s.is_local_reply());
    assert!(!s.accepts(Dir::Request));
}

#[test]
fn a_response_buffered_past_the_limit_is_500_before_headers_and_a_reset_after() {
    // Response headers pause with StopAllIterationAndBuffer (3): the response's headers have
    // not left, so overflowing answers 500.
    let mut s = stream(vec![filter("0003", false)], 4);
    s.request_headers(true);
    s.response_headers(response("200"), false);
    s.response_data(Bytes::from_static(b"12345"), false);
    assert!(s.is_local_reply() && !s.is_reset());
    assert_eq!(s.data().borrow().headers[Dir::Response].get_str(":status"), Some("500"));
    // Headers passed, the body buffers (1): the client already has headers, so a reset.
    let mut s = stream(vec![filter("00001", false)], 4);
    s.request_headers(true);
    s.response_headers(response("200"), false);
    assert_eq!(outputs(&mut s, Dir::Response), vec![Output::Headers { end_stream: false }]);
    s.response_data(Bytes::from_static(b"12345"), false);
    assert!(s.is_reset());
    assert_eq!(outputs(&mut s, Dir::Response), vec![]);
}

#[test]
fn queued_output_counts_until_it_is_taken() {
    let mut s = stream(vec![filter("", false)], 6);
    s.request_headers(false);
    s.request_data(Bytes::from_static(b"1234"), false);
    assert!(!s.accepts(Dir::Request), "output not yet taken: read no more");
    assert_eq!(s.buffered(Dir::Request), 4);
    let _ = outputs(&mut s, Dir::Request);
    assert!(s.accepts(Dir::Request));
    assert_eq!(s.buffered(Dir::Request), 0);
}

#[test]
fn a_local_reply_from_an_action_answers_through_the_response_path() {
    let mut s = stream(vec![filter("1", false), filter("", false)], 1 << 20);
    s.request_headers(false);
    s.data().borrow_mut().act(0, |a| {
        a.local_reply = Some(LocalReply {
            status: 403,
            details: "denied".into(),
            body: Bytes::from_static(b"no"),
            headers: vec![(b"x-why".to_vec(), b"policy".to_vec())],
            grpc_status: None,
        })
    });
    s.process_actions();
    assert!(s.request_aborted());
    assert_eq!(outputs(&mut s, Dir::Request), vec![]);
    assert_eq!(outputs(&mut s, Dir::Response), vec![Output::Headers { end_stream: false }, data(b"no", true)]);
    let d = s.data().borrow();
    assert_eq!(d.headers[Dir::Response].get_str(":status"), Some("403"));
    assert_eq!(d.headers[Dir::Response].get_str("x-why"), Some("policy"));
    assert_eq!(d.headers[Dir::Response].get_str("content-length"), Some("2"));
}

#[test]
fn garbage_returns_and_traps_follow_the_fail_policy() {
    // 7 is not a headers action: fail closed answers 503.
    let mut s = stream(vec![filter("7", false)], 1 << 20);
    s.request_headers(true);
    assert!(s.is_local_reply());
    assert_eq!(s.data().borrow().headers[Dir::Response].get_str(":status"), Some("503"));
    // A trap in a fail-open filter: the filter is skipped, the request goes on.
    let mut s = stream(vec![filter("X", true)], 1 << 20);
    s.request_headers(true);
    assert_eq!(outputs(&mut s, Dir::Request), vec![Output::Headers { end_stream: true }]);
    assert!(!s.is_local_reply());
}

#[test]
fn a_reset_stops_both_directions() {
    let mut s = stream(vec![filter("", false)], 1 << 20);
    s.request_headers(false);
    s.reset();
    s.request_data(Bytes::from_static(b"late"), true);
    s.response_headers(response("200"), true);
    assert!(s.is_reset());
    assert_eq!(outputs(&mut s, Dir::Request), vec![]);
    assert_eq!(outputs(&mut s, Dir::Response), vec![]);
}

#[test]
fn a_buffering_filter_releases_to_the_next_one_at_the_end() {
    let mut s = stream(vec![filter("0E", false), filter("0E", false)], 1 << 20);
    s.request_headers(false);
    assert_eq!(outputs(&mut s, Dir::Request), vec![Output::Headers { end_stream: false }]);
    s.request_data(Bytes::from_static(b"hello"), false);
    assert_eq!(outputs(&mut s, Dir::Request), vec![]);
    s.request_data(Bytes::from_static(b" world"), true);
    assert_eq!(outputs(&mut s, Dir::Request), vec![data(b"hello world", true)]);
}
