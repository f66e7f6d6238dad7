//! sockops-rtt: TCP round-trip times per destination, measured by the kernel's own RTT estimator.
//!
//! On every TCP socket of the cgroup it asks for RTT, state and retransmit callbacks, then records
//! each smoothed RTT sample (µs) into the destination's log-linear histogram and counts
//! connections, failed connects, retransmits and RTO expiries. User space turns the buckets into
//! percentiles.
//!
//! Maps: `RTT_DESTS` (LRU hash, destination -> `RttStats`, read by user space) and `RTT_ZERO`
//! (one zeroed `RttStats`, the template new entries are copied from: 6 KiB does not fit the
//! 512-byte BPF stack).
#![no_std]
#![no_main]

use aya_ebpf::EbpfContext;
use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RETRANS_CB,
        BPF_SOCK_OPS_RETRANS_CB_FLAG, BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_RTT_CB,
        BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    macros::{map, sock_ops},
    maps::{Array, LruHashMap},
    programs::SockOpsContext,
};
use meshwork_ebpf_common::{
    addr::DestKey,
    rtt::{RTT_BUCKETS, RttStats, rtt_bucket, tcp_state},
};
use meshwork_ebpf_programs::{atomic, ctx, license, request_sock_ops_callbacks, sock_ops_op, sock_ops_peer};

license!();

#[map]
static RTT_DESTS: LruHashMap<DestKey, RttStats> = LruHashMap::with_max_entries(1024, 0);
#[map]
static RTT_ZERO: Array<RttStats> = Array::with_max_entries(1, 0);

const CALLBACKS: u32 =
    BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG;

#[sock_ops]
pub fn sockops_rtt(ctx: SockOpsContext) -> u32 {
    let (op, arg0, arg1) = sock_ops_op(&ctx);
    match op {
        // Ask for callbacks before the SYN leaves, so the SYN-ACK's RTT sample is seen too.
        BPF_SOCK_OPS_TCP_CONNECT_CB => request_callbacks(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            request_callbacks(&ctx);
            add(&ctx, Counter::PassiveEstablished);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => add(&ctx, Counter::ActiveEstablished),
        BPF_SOCK_OPS_RTT_CB => record_rtt(&ctx, arg1),
        BPF_SOCK_OPS_STATE_CB => {
            if arg0 == tcp_state::SYN_SENT && arg1 == tcp_state::CLOSE {
                add(&ctx, Counter::FailedConnects);
            }
        }
        BPF_SOCK_OPS_RETRANS_CB => add(&ctx, Counter::Retransmits),
        BPF_SOCK_OPS_RTO_CB => add(&ctx, Counter::RtoTimeouts),
        _ => {}
    }
    1
}

#[inline(always)]
fn request_callbacks(ctx: &SockOpsContext) {
    request_sock_ops_callbacks(ctx, CALLBACKS);
}

/// `srtt_arg`: the callback's second argument. The kernel calls RTT_CB from its RTT estimator
/// *before* it stores the new estimate in `tp->srtt_us`, so the context field holds the previous
/// one (0 at a connection's first sample). Newer kernels (this one, 6.18) hand over the updated
/// smoothed RTT (<< 3, µs) as its second argument; older kernels pass 0 there, and then the
/// context field is the best there is, skipped while still 0.
#[inline(always)]
fn record_rtt(ctx: &SockOpsContext, srtt_arg: u32) {
    let srtt_us = if srtt_arg != 0 {
        srtt_arg as u64 >> 3
    } else {
        // SAFETY: a sock_ops context field.
        (unsafe { ctx::load_u32::<{ ctx::sock_ops::SRTT_US }>(ctx.as_ptr()) } as u64) >> 3
    };
    if srtt_us == 0 {
        return;
    }
    let Some(stats) = stats(ctx) else { return };
    let bucket = rtt_bucket(srtt_us);
    if bucket >= RTT_BUCKETS {
        return;
    }
    // SAFETY: `stats` points into a live RTT_DESTS value; `bucket` is inside `counts`.
    unsafe {
        atomic((&raw mut (*stats).counts).cast::<u64>().add(bucket)).fetch_add(1);
        atomic(&raw mut (*stats).samples).fetch_add(1);
        atomic(&raw mut (*stats).sum_us).fetch_add(srtt_us);
    }
}

#[derive(Clone, Copy)]
enum Counter {
    ActiveEstablished,
    PassiveEstablished,
    FailedConnects,
    Retransmits,
    RtoTimeouts,
}

#[inline(always)]
fn add(ctx: &SockOpsContext, counter: Counter) {
    let Some(stats) = stats(ctx) else { return };
    // SAFETY: `stats` points into a live RTT_DESTS value.
    unsafe {
        let field = match counter {
            Counter::ActiveEstablished => &raw mut (*stats).active_established,
            Counter::PassiveEstablished => &raw mut (*stats).passive_established,
            Counter::FailedConnects => &raw mut (*stats).failed_connects,
            Counter::Retransmits => &raw mut (*stats).retransmits,
            Counter::RtoTimeouts => &raw mut (*stats).rto_timeouts,
        };
        atomic(field).fetch_add(1);
    }
}

/// The destination's stats, created zeroed (from the RTT_ZERO template) on first use.
#[inline(always)]
fn stats(ctx: &SockOpsContext) -> Option<*mut RttStats> {
    let key = sock_ops_peer(ctx)?;
    if let Some(stats) = RTT_DESTS.get_ptr_mut(&key) {
        return Some(stats);
    }
    let zero = RTT_ZERO.get(0)?;
    let _ = RTT_DESTS.insert(&key, zero, BPF_NOEXIST as u64);
    RTT_DESTS.get_ptr_mut(&key)
}
