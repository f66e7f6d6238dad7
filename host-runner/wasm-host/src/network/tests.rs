//! The network filter engine on its own: a scriptable WAT filter whose callbacks answer what
//! its configuration says, driven event by event.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::plugin::{PluginConfig, Services};
use crate::vm::{Dispatcher, PluginTemplate};
use crate::{HttpCallRequest, QueueOwner, WasmEngine};

/// Byte 0 of the configuration answers `proxy_on_new_connection`, byte 1 downstream data,
/// byte 2 upstream data: '0' continue, '1' pause, 'E' pause until the end of stream, 'X' trap.
/// Close callbacks count into memory at 64 (downstream) and 68 (upstream).
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
  (func (export "proxy_on_new_connection") (param i32) (result i32) (call $answer (i32.const 0) (i32.const 1)))
  (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32) (call $answer (i32.const 1) (local.get 2)))
  (func (export "proxy_on_upstream_data") (param i32 i32 i32) (result i32) (call $answer (i32.const 2) (local.get 2)))
  (func (export "proxy_on_downstream_connection_close") (param i32 i32)
    (i32.store (i32.const 64) (i32.add (i32.load (i32.const 64)) (i32.const 1))))
  (func (export "proxy_on_upstream_connection_close") (param i32 i32)
    (i32.store (i32.const 68) (i32.add (i32.load (i32.const 68)) (i32.const 1))))
  (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
  (func (export "proxy_on_log") (param i32))
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

fn filter(script: &str, fail_open: bool) -> Rc<PluginVm> {
    let bytes = wat::parse_str(SCRIPTED).expect("wat");
    let module = engine().load_bytes(std::path::Path::new("net.wasm"), &bytes).expect("module");
    let mut plugin = PluginConfig::new(format!("net-{script}"));
    plugin.configuration = Bytes::copy_from_slice(script.as_bytes());
    plugin.fail_open = fail_open;
    let template =
        PluginTemplate::new(engine(), module, plugin, Services::new(Default::default()), Arc::new(HashSet::new()))
            .expect("link");
    template.instantiate(Rc::new(Nothing), Arc::new(Nothing)).expect("start")
}

fn conn(vms: Vec<Rc<PluginVm>>) -> ConnectionStream {
    let mut c = ConnectionStream::new(vms, StreamInfo::default(), 1 << 20);
    c.open();
    c
}

fn out(c: &mut ConnectionStream, d: Dir) -> Vec<u8> {
    std::iter::from_fn(|| c.next_output(d)).flat_map(|b| b.to_vec()).collect()
}

fn resume(c: &mut ConnectionStream, stage: usize, d: Dir) {
    c.data().borrow_mut().act(stage, |a| a.resume[d] = true);
    c.process_actions();
}

#[test]
fn passes_bytes_both_ways_and_ends_every_context() {
    let vm = filter("000", false);
    let mut c = conn(vec![vm.clone(), filter("000", false)]);
    assert!(c.may_connect());
    c.data_in(Dir::Request, Bytes::from_static(b"ping"), false);
    assert_eq!(out(&mut c, Dir::Request), b"ping");
    c.data_in(Dir::Response, Bytes::from_static(b"pong"), true);
    assert_eq!(out(&mut c, Dir::Response), b"pong");
    assert!(c.output_ended(Dir::Response));
    c.upstream_closed();
    c.downstream_closed(Peer::Local);
    c.finish();
    assert!(c.data().borrow().stages.iter().all(|s| s.context_id != 0));
}

#[test]
fn a_paused_new_connection_holds_the_upstream_and_the_data() {
    let mut c = conn(vec![filter("100", false)]);
    assert!(!c.may_connect(), "the filter paused the new connection");
    c.data_in(Dir::Request, Bytes::from_static(b"early"), false);
    // The paused filter still sees data; it continues it, which opens the connection.
    assert!(c.may_connect());
    assert_eq!(out(&mut c, Dir::Request), b"early");

    let mut c = conn(vec![filter("110", false)]);
    c.data_in(Dir::Request, Bytes::from_static(b"held"), false);
    assert!(!c.may_connect());
    assert!(out(&mut c, Dir::Request).is_empty());
    resume(&mut c, 0, Dir::Request);
    assert!(c.may_connect());
    assert_eq!(out(&mut c, Dir::Request), b"held");
}

#[test]
fn pause_accumulates_until_continue() {
    let mut c = conn(vec![filter("0E0", false), filter("000", false)]);
    c.data_in(Dir::Request, Bytes::from_static(b"a"), false);
    c.data_in(Dir::Request, Bytes::from_static(b"b"), false);
    assert!(out(&mut c, Dir::Request).is_empty(), "held at the first filter");
    assert_eq!(c.buffered(Dir::Request), 2);
    c.data_in(Dir::Request, Bytes::from_static(b"c"), true);
    assert_eq!(out(&mut c, Dir::Request), b"abc");
    assert!(c.output_ended(Dir::Request));
    // Upstream data passes the filters in reverse order: the second one holds here.
    let mut c = conn(vec![filter("000", false), filter("001", false)]);
    c.data_in(Dir::Response, Bytes::from_static(b"x"), false);
    assert!(out(&mut c, Dir::Response).is_empty());
    resume(&mut c, 1, Dir::Response);
    assert_eq!(out(&mut c, Dir::Response), b"x");
}

#[test]
fn failures_follow_the_fail_policy() {
    let mut closed = conn(vec![filter("0X0", false)]);
    closed.data_in(Dir::Request, Bytes::from_static(b"boom"), false);
    assert!(closed.is_closed());
    assert!(out(&mut closed, Dir::Request).is_empty());
    let mut open = conn(vec![filter("0X0", true)]);
    open.data_in(Dir::Request, Bytes::from_static(b"boom"), false);
    assert!(!open.is_closed());
    assert_eq!(out(&mut open, Dir::Request), b"boom");
}

#[test]
fn a_filter_closing_the_connection_closes_it() {
    let mut c = conn(vec![filter("000", false)]);
    c.data().borrow_mut().act(0, |a| a.close = true);
    c.process_actions();
    assert!(c.is_closed());
}
