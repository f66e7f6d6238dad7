//! xdp-ratelimit: a token bucket per source address (IPv4 and IPv6), with per-prefix limits.
//!
//! Maps (user space writes the first two, reads the last two):
//! - `RL_CONFIG[0]`: the default limit; a rate of 0 (never configured) passes everything.
//! - `RL_OVERRIDES`: LPM trie, IPv4-mapped prefix -> limit for sources inside it;
//!   `RL_OVERRIDE_COUNT[0]`: how many there are (0: no lookup).
//! - `RL_SOURCES`: LRU hash, source -> bucket and passed/dropped counters.
//! - `RL_TOTALS`: per-CPU counters (`meshwork_ebpf_common::ratelimit::totals`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use meshwork_ebpf_common::{
    addr::{Addr16, mapped_v4},
    ratelimit::{self, RateLimit, SourceState, Verdict, totals},
};
use meshwork_ebpf_programs::{atomic, license, packet_bytes};

license!();

#[map]
static RL_CONFIG: Array<RateLimit> = Array::with_max_entries(1, 0);
#[map]
static RL_OVERRIDES: LpmTrie<Addr16, RateLimit> = LpmTrie::with_max_entries(1024, 0);
/// Entry 0: how many overrides user space wrote. With none, the LPM lookup (about a fifth of
/// this program's cost per packet) is skipped.
#[map]
static RL_OVERRIDE_COUNT: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static RL_SOURCES: LruHashMap<Addr16, SourceState> = LruHashMap::with_max_entries(65536, 0);
#[map]
static RL_TOTALS: PerCpuArray<u64> = PerCpuArray::with_max_entries(totals::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;

#[xdp]
pub fn xdp_ratelimit(ctx: XdpContext) -> u32 {
    let Some(source) = source_address(&ctx) else {
        count(totals::NOT_IP);
        return xdp_action::XDP_PASS;
    };
    let Some(limit) = limit_for(&source) else {
        return xdp_action::XDP_PASS;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(state) = bucket(&source, &limit, now) else {
        count(totals::TABLE_FULL);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: `state` points into a live RL_SOURCES value for the rest of this run.
    let (units, last_ns, passed, dropped) = unsafe {
        (
            atomic(&raw mut (*state).units),
            atomic(&raw mut (*state).last_ns),
            atomic(&raw mut (*state).passed),
            atomic(&raw mut (*state).dropped),
        )
    };
    match ratelimit::take(units, last_ns, &limit, now, 1) {
        Verdict::Pass => {
            passed.fetch_add(1);
            count(totals::PASSED);
            xdp_action::XDP_PASS
        }
        Verdict::Drop => {
            dropped.fetch_add(1);
            count(totals::DROPPED);
            xdp_action::XDP_DROP
        }
        Verdict::Contended => {
            dropped.fetch_add(1);
            count(totals::CONTENDED);
            xdp_action::XDP_DROP
        }
    }
}

/// The IPv4-mapped or IPv6 source address of an Ethernet frame, behind up to two VLAN tags
/// (802.1ad and/or 802.1Q: a tag must not be a way around the limit); `None` for anything else.
#[inline(always)]
fn source_address(ctx: &XdpContext) -> Option<Addr16> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut l3 = ETH_HLEN;
    let mut ethertype = u16::from_be_bytes(packet_bytes::<2>(data, end, l3 - 2)?);
    if ethertype == ETH_P_8021AD || ethertype == ETH_P_8021Q {
        l3 += VLAN_HLEN;
        ethertype = u16::from_be_bytes(packet_bytes::<2>(data, end, l3 - 2)?);
    }
    if ethertype == ETH_P_8021Q {
        l3 += VLAN_HLEN;
        ethertype = u16::from_be_bytes(packet_bytes::<2>(data, end, l3 - 2)?);
    }
    match ethertype {
        // Version/IHL .. source address: the first 16 bytes of the header.
        ETH_P_IP => Some(mapped_v4(packet_bytes::<4>(data, end, l3 + 12)?)),
        ETH_P_IPV6 => packet_bytes::<16>(data, end, l3 + 8),
        _ => None,
    }
}

/// The most specific override covering `source`, else the default; `None` when unconfigured.
#[inline(always)]
fn limit_for(source: &Addr16) -> Option<RateLimit> {
    if RL_OVERRIDE_COUNT.get(0).is_some_and(|n| *n != 0)
        && let Some(limit) = RL_OVERRIDES.get(Key::new(128, *source))
    {
        return Some(*limit);
    }
    let limit = *RL_CONFIG.get(0)?;
    if limit.rate == 0 { None } else { Some(limit) }
}

/// The source's bucket, created full on its first packet.
#[inline(always)]
fn bucket(source: &Addr16, limit: &RateLimit, now: u64) -> Option<*mut SourceState> {
    if let Some(state) = RL_SOURCES.get_ptr_mut(source) {
        return Some(state);
    }
    // NOEXIST: when another CPU created it first, keep theirs (its tokens may already be spent).
    let _ = RL_SOURCES.insert(source, SourceState::full(limit, now), BPF_NOEXIST as u64);
    RL_SOURCES.get_ptr_mut(source)
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = RL_TOTALS.get_ptr_mut(index) {
        // SAFETY: a per-CPU value: only this CPU writes it, and it is not preempted in XDP.
        unsafe { *counter += 1 };
    }
}
