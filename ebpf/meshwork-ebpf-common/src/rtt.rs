//! sockops-rtt: per-destination TCP round-trip times in the log-linear buckets of
//! `meshwork-log-histogram` (1/32 of a power of two wide, so a percentile read from bucket bounds
//! is within about 3% of the truth), plus connection counters.
//!
//! The kernel only increments `counts[bucket_index(rtt_us)]`; user space rebuilds a
//! `meshwork_log_histogram::Histogram` from the counts and reads percentiles the same way the
//! filters and the proxy do. Values are microseconds (the unit of `srtt_us`), capped at
//! [`RTT_MAX_US`] so the array stays a few KiB instead of the 15 KiB a full u64 range needs.

use meshwork_log_histogram::{SUB_BUCKET_BITS, SUB_BUCKETS, bucket_index};

/// RTTs are recorded up to 2^27 µs (134 s); longer ones land in the last bucket.
pub const RTT_VALUE_BITS: u32 = 27;
pub const RTT_MAX_US: u64 = (1 << RTT_VALUE_BITS) - 1;
/// The buckets `bucket_index` uses for values up to [`RTT_MAX_US`] (the first ones of its layout).
pub const RTT_BUCKETS: usize = (RTT_VALUE_BITS - SUB_BUCKET_BITS + 1) as usize * SUB_BUCKETS;

/// The bucket of an RTT sample, always `< RTT_BUCKETS`.
#[inline(always)]
pub fn rtt_bucket(rtt_us: u64) -> usize {
    bucket_index(if rtt_us > RTT_MAX_US { RTT_MAX_US } else { rtt_us })
}

/// Everything recorded for one destination. Updated with atomic adds by every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RttStats {
    /// RTT samples recorded (one per BPF_SOCK_OPS_RTT_CB: every ACK that updated the estimate).
    pub samples: u64,
    pub sum_us: u64,
    /// Connections this host opened that were established (BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB).
    pub active_established: u64,
    /// Connections accepted from this peer (BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB).
    pub passive_established: u64,
    /// Connects that went from SYN_SENT straight to CLOSE: refused or timed out.
    pub failed_connects: u64,
    /// Segments retransmitted (BPF_SOCK_OPS_RETRANS_CB).
    pub retransmits: u64,
    /// Retransmission timer expiries (BPF_SOCK_OPS_RTO_CB).
    pub rto_timeouts: u64,
    pub counts: [u64; RTT_BUCKETS],
}

impl RttStats {
    pub const ZERO: RttStats = RttStats {
        samples: 0,
        sum_us: 0,
        active_established: 0,
        passive_established: 0,
        failed_connects: 0,
        retransmits: 0,
        rto_timeouts: 0,
        counts: [0; RTT_BUCKETS],
    };
}

/// TCP states as the kernel numbers them (include/net/tcp_states.h), for BPF_SOCK_OPS_STATE_CB.
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const CLOSE: u32 = 7;
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwork_log_histogram::{bucket_lower, bucket_upper};

    #[test]
    fn buckets_cover_the_range_and_no_more() {
        assert_eq!(rtt_bucket(RTT_MAX_US), RTT_BUCKETS - 1);
        assert_eq!(rtt_bucket(u64::MAX), RTT_BUCKETS - 1);
        assert_eq!(bucket_upper(RTT_BUCKETS - 1), RTT_MAX_US);
        assert_eq!(rtt_bucket(0), 0);
        // 20 ms lands in a bucket at most 1/32 wide.
        let i = rtt_bucket(20_000);
        assert!(bucket_lower(i) <= 20_000 && 20_000 <= bucket_upper(i));
        assert!((bucket_upper(i) - bucket_lower(i) + 1) * 32 <= bucket_lower(i) + 32);
    }

    #[test]
    fn value_is_a_few_kib() {
        assert_eq!(RTT_BUCKETS, 736);
        assert_eq!(core::mem::size_of::<RttStats>(), 8 * (7 + 736));
    }
}
