//! connect-breaker: refuses TCP connects (EPERM) to a destination whose recent connections
//! failed, with the circuit-breaker pattern's state machine (`meshwork-circuit-breaker`).
//!
//! - `breaker_connect4` / `breaker_connect6` (cgroup connect hooks) ask the destination's breaker
//!   whether the connect may go; a half-open probe is remembered by socket cookie.
//! - `breaker_sockops` (sock_ops) reports each outcome: established is a success; SYN_SENT ->
//!   CLOSE (refused or timed out) and ESTABLISHED -> CLOSE (reset) are failures.
//!
//! Maps: `CB_CONFIG[0]` (written by user space), `CB_DESTS` (LRU hash, destination -> slot with
//! the encoded breaker and counters, read by user space), `CB_PROBES` (socket cookie -> probe
//! round). A destination gets a slot on its first failure: healthy ones cost no memory.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, LruHashMap},
    programs::{SockAddrContext, SockOpsContext},
};
use meshwork_ebpf_common::{
    MAX_LOCK_SPINS,
    addr::{DestKey, mapped_v4},
    breaker::{self, BreakerConfig, BreakerSlot, Connect},
    rtt::tcp_state,
    word::Word,
};
use meshwork_ebpf_programs::{atomic, ctx, ip6_bytes, license, request_sock_ops_callbacks, sock_ops_op, sock_ops_peer};

license!();

#[map]
static CB_CONFIG: Array<BreakerConfig> = Array::with_max_entries(1, 0);
#[map]
static CB_DESTS: LruHashMap<DestKey, BreakerSlot> = LruHashMap::with_max_entries(4096, 0);
#[map]
static CB_PROBES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

const SOCK_STREAM: u32 = 1;
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn breaker_connect4(ctx: SockAddrContext) -> i32 {
    use ctx::sock_addr as f;
    let c = ctx.as_ptr();
    // SAFETY: sock_addr context fields.
    let (type_, ip, port) = unsafe {
        (ctx::load_u32::<{ f::TYPE }>(c), ctx::load_u32::<{ f::USER_IP4 }>(c), ctx::load_u32::<{ f::USER_PORT }>(c))
    };
    if type_ != SOCK_STREAM {
        return ALLOW;
    }
    connect(&ctx, DestKey::new(mapped_v4(ip.to_ne_bytes()), u16::from_be(port as u16)))
}

#[cgroup_sock_addr(connect6)]
pub fn breaker_connect6(ctx: SockAddrContext) -> i32 {
    use ctx::sock_addr as f;
    let c = ctx.as_ptr();
    // SAFETY: sock_addr context fields.
    let (type_, ip, port) = unsafe {
        (
            ctx::load_u32::<{ f::TYPE }>(c),
            [
                ctx::load_u32::<{ f::USER_IP6 }>(c),
                ctx::load_u32::<{ f::USER_IP6 + 4 }>(c),
                ctx::load_u32::<{ f::USER_IP6 + 8 }>(c),
                ctx::load_u32::<{ f::USER_IP6 + 12 }>(c),
            ],
            ctx::load_u32::<{ f::USER_PORT }>(c),
        )
    };
    if type_ != SOCK_STREAM {
        return ALLOW;
    }
    connect(&ctx, DestKey::new(ip6_bytes(ip), u16::from_be(port as u16)))
}

#[inline(always)]
fn connect(ctx: &SockAddrContext, key: DestKey) -> i32 {
    let Some(config) = CB_CONFIG.get(0) else { return ALLOW };
    // No slot: this destination never failed, so its breaker is closed.
    let Some(slot) = CB_DESTS.get_ptr_mut(&key) else { return ALLOW };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `slot` points into a live CB_DESTS value.
    let decision = unsafe {
        let Some(lock) = lock(&raw mut (*slot).lock) else {
            atomic(&raw mut (*slot).contended).fetch_add(1);
            return ALLOW;
        };
        let decision = breaker::admit(&mut (*slot).state, config, now);
        lock.swap(0);
        decision
    };
    // SAFETY: as above.
    unsafe {
        match decision {
            Connect::Allow => {
                atomic(&raw mut (*slot).allowed).fetch_add(1);
                ALLOW
            }
            Connect::Probe { round } => {
                let cookie = bpf_get_socket_cookie(ctx.as_ptr());
                let _ = CB_PROBES.insert(&cookie, &round, 0);
                atomic(&raw mut (*slot).probes).fetch_add(1);
                ALLOW
            }
            Connect::Reject => {
                atomic(&raw mut (*slot).rejected).fetch_add(1);
                REFUSE
            }
        }
    }
}

#[sock_ops]
pub fn breaker_sockops(ctx: SockOpsContext) -> u32 {
    let (op, old, new) = sock_ops_op(&ctx);
    match op {
        // sockops-rtt may share the socket: its callbacks are kept.
        BPF_SOCK_OPS_TCP_CONNECT_CB => request_sock_ops_callbacks(&ctx, BPF_SOCK_OPS_STATE_CB_FLAG),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => outcome(&ctx, false),
        BPF_SOCK_OPS_STATE_CB => {
            // Refused or timed out before establishing, or reset after.
            if new == tcp_state::CLOSE && (old == tcp_state::SYN_SENT || old == tcp_state::ESTABLISHED) {
                outcome(&ctx, true);
            }
        }
        _ => {}
    }
    1
}

#[inline(always)]
fn outcome(ctx: &SockOpsContext, failed: bool) {
    let Some(key) = sock_ops_peer(ctx) else { return };
    let Some(config) = CB_CONFIG.get(0) else { return };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let probe = CB_PROBES.get_ptr(&cookie).map(|round| unsafe { *round });
    if probe.is_some() {
        let _ = CB_PROBES.remove(&cookie);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let slot = match CB_DESTS.get_ptr_mut(&key) {
        Some(slot) => slot,
        // A success on a destination without a slot changes nothing: it is closed and clean.
        None if !failed => return,
        None => {
            let _ = CB_DESTS.insert(&key, BreakerSlot::new(now), BPF_NOEXIST as u64);
            let Some(slot) = CB_DESTS.get_ptr_mut(&key) else { return };
            slot
        }
    };
    // SAFETY: `slot` points into a live CB_DESTS value.
    unsafe {
        let counter = if failed { &raw mut (*slot).failures } else { &raw mut (*slot).successes };
        atomic(counter).fetch_add(1);
        let Some(lock) = lock(&raw mut (*slot).lock) else {
            atomic(&raw mut (*slot).contended).fetch_add(1);
            return;
        };
        breaker::record(&mut (*slot).state, config, now, probe, failed);
        lock.swap(0);
    }
}

/// Takes a slot's try-lock: `Some(lock word)` to release with `swap(0)`.
///
/// # Safety
/// `word` must point into a live map value.
#[inline(always)]
unsafe fn lock<'a>(word: *mut u64) -> Option<&'a Word> {
    let lock = unsafe { atomic(word) };
    for _ in 0..MAX_LOCK_SPINS {
        if lock.compare_exchange(0, 1) {
            return Some(lock);
        }
    }
    None
}
