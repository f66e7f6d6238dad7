//! xdp-ratelimit: per-source token buckets updated with compare-and-swap.
//!
//! This is the arithmetic of `meshwork-token-bucket` (fixed point, one token = `period_ns` units,
//! refill adds `elapsed_ns * rate` units, never a fraction lost), restated for BPF. The pattern
//! crate cannot run in the kernel as it is: its refill multiplies in `u128` and its `take` uses
//! `u64::saturating_mul`, which LLVM lowers to calls to `__multi3`/`__udivti3`, and BPF has no
//! 128-bit arithmetic or libcalls, so bpf-linker refuses the object. Here the elapsed time is
//! first capped at the time a bucket needs to fill, which keeps `elapsed * rate` inside a `u64`
//! for every limit [`RateLimit::validate`] accepts; the tests prove the decisions and states equal
//! the pattern crate's, step for step.
//!
//! The two words of a bucket cannot be swapped together (BPF has 64-bit CAS only), so a take is
//! two steps, each one CAS on one word: whoever advances `last_ns` from `l` to `now` owns the
//! tokens earned in `(l, now]` and adds them to `units`, capped; a take then subtracts a token
//! from `units` if there is one. Every CPU that passes a packet took a token nobody else took, and
//! tokens are only added by the one owner of each interval, so no update is lost and the bucket
//! never passes more than `burst + rate * elapsed / period` (tested with threads on the host).

use crate::MAX_CAS_ATTEMPTS;
use crate::word::Word;

/// How fast a bucket refills and how much it holds (as `meshwork_token_bucket::Limit`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens (packets) added per `period_ns`.
    pub rate: u64,
    pub period_ns: u64,
    /// The most tokens a bucket holds: the largest burst.
    pub burst: u64,
}

/// Limits past this keep `units + elapsed * rate` inside a u64 (see [`RateLimit::validate`]).
pub const MAX_CAPACITY_UNITS: u64 = 1 << 62;
pub const MAX_RATE: u64 = 1 << 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitError {
    ZeroRate,
    ZeroPeriod,
    ZeroBurst,
    RateTooLarge,
    TooLarge,
}

impl core::fmt::Display for LimitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            LimitError::ZeroRate => "rate must be at least 1",
            LimitError::ZeroPeriod => "period must be at least 1ns",
            LimitError::ZeroBurst => "burst must be at least 1",
            LimitError::RateTooLarge => "rate must be at most 2^32 per period",
            LimitError::TooLarge => "burst * period (in ns) must be at most 2^62",
        })
    }
}

impl RateLimit {
    pub fn validate(&self) -> Result<(), LimitError> {
        if self.rate == 0 {
            return Err(LimitError::ZeroRate);
        }
        if self.period_ns == 0 {
            return Err(LimitError::ZeroPeriod);
        }
        if self.burst == 0 {
            return Err(LimitError::ZeroBurst);
        }
        if self.rate > MAX_RATE {
            return Err(LimitError::RateTooLarge);
        }
        match self.burst.checked_mul(self.period_ns) {
            Some(units) if units <= MAX_CAPACITY_UNITS => Ok(()),
            _ => Err(LimitError::TooLarge),
        }
    }

    #[inline(always)]
    pub fn capacity_units(&self) -> u64 {
        self.burst * self.period_ns
    }

    /// Nanoseconds an empty bucket needs to fill: no elapsed time beyond it earns anything.
    #[inline(always)]
    pub fn fill_ns(&self) -> u64 {
        self.capacity_units().div_ceil(self.rate)
    }
}

/// Per-source state: the bucket's two words and the source's counters. Updated in place with
/// atomics by every CPU; user space only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceState {
    /// Tokens in fixed point: one token = `period_ns` units.
    pub units: u64,
    /// Clock reading (bpf_ktime_get_ns) of the last refill.
    pub last_ns: u64,
    pub passed: u64,
    pub dropped: u64,
}

impl SourceState {
    /// A bucket nobody has used yet: full.
    #[inline(always)]
    pub fn full(limit: &RateLimit, now_ns: u64) -> SourceState {
        SourceState { units: limit.capacity_units(), last_ns: now_ns, passed: 0, dropped: 0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Every CAS attempt lost a race: the packet is dropped (never over-admit) and counted apart.
    Contended,
}

/// Takes `cost` tokens from the bucket whose words are `units` and `last_ns`, refilling first.
#[inline(always)]
pub fn take(units: &Word, last_ns: &Word, limit: &RateLimit, now_ns: u64, cost: u64) -> Verdict {
    refill(units, last_ns, limit, now_ns);
    let need = cost * limit.period_ns;
    for _ in 0..MAX_CAS_ATTEMPTS {
        let have = units.load();
        if have < need {
            return Verdict::Drop;
        }
        if units.compare_exchange(have, have - need) {
            return Verdict::Pass;
        }
    }
    Verdict::Contended
}

/// Claims the interval since `last_ns` and adds what it earned. A clock reading at or before
/// `last_ns` (another CPU got there first) earns nothing and leaves `last_ns` alone, as the
/// pattern crate's refill does.
#[inline(always)]
fn refill(units: &Word, last_ns: &Word, limit: &RateLimit, now_ns: u64) {
    let last = last_ns.load();
    if now_ns <= last || !last_ns.compare_exchange(last, now_ns) {
        // Lost the claim: the CPU that won it adds the tokens of an interval ending at or after
        // `last`; whatever it did not cover is claimed by the next packet.
        return;
    }
    let elapsed = (now_ns - last).min(limit.fill_ns());
    let earned = elapsed * limit.rate;
    let cap = limit.capacity_units();
    for _ in 0..MAX_CAS_ATTEMPTS {
        let have = units.load();
        let new = (have + earned).min(cap);
        if new == have || units.compare_exchange(have, new) {
            return;
        }
    }
}

/// Counters for the whole program, one per CPU, indexed by these constants.
pub mod totals {
    pub const PASSED: u32 = 0;
    pub const DROPPED: u32 = 1;
    /// Not IPv4 or IPv6 (ARP, ...), or too short to read: passed unlimited.
    pub const NOT_IP: u32 = 2;
    pub const CONTENDED: u32 = 3;
    /// The source table could not take a new source: passed unlimited.
    pub const TABLE_FULL: u32 = 4;
    pub const COUNT: u32 = 5;
    pub const NAMES: [&str; COUNT as usize] = ["passed", "dropped", "not_ip", "contended", "table_full"];
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use meshwork_token_bucket as pattern;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::vec::Vec;

    fn run(state: &mut SourceState, limit: &RateLimit, now: u64, cost: u64) -> Verdict {
        let units = Word::new(state.units);
        let last = Word::new(state.last_ns);
        let v = take(&units, &last, limit, now, cost);
        state.units = units.into_inner();
        state.last_ns = last.into_inner();
        v
    }

    #[test]
    fn validation_bounds_the_arithmetic() {
        let ok = RateLimit { rate: 1000, period_ns: 1_000_000_000, burst: 100 };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(RateLimit { rate: 0, ..ok }.validate(), Err(LimitError::ZeroRate));
        assert_eq!(RateLimit { period_ns: 0, ..ok }.validate(), Err(LimitError::ZeroPeriod));
        assert_eq!(RateLimit { burst: 0, ..ok }.validate(), Err(LimitError::ZeroBurst));
        assert_eq!(RateLimit { rate: MAX_RATE + 1, ..ok }.validate(), Err(LimitError::RateTooLarge));
        assert_eq!(RateLimit { burst: u64::MAX / 2, ..ok }.validate(), Err(LimitError::TooLarge));
        // The worst case validation allows still fits: a full bucket plus a whole fill's worth.
        let worst = RateLimit { rate: MAX_RATE, period_ns: MAX_CAPACITY_UNITS, burst: 1 };
        assert!(worst.validate().is_ok());
        assert!(worst.capacity_units().checked_add(worst.fill_ns() * worst.rate).is_some());
    }

    #[test]
    fn full_bucket_passes_exactly_burst_then_refills() {
        let limit = RateLimit { rate: 10, period_ns: 1_000_000_000, burst: 5 };
        let mut s = SourceState::full(&limit, 1000);
        let passed = (0..20).filter(|_| run(&mut s, &limit, 1000, 1) == Verdict::Pass).count();
        assert_eq!(passed, 5);
        // 100 ms later exactly one token is back.
        assert_eq!(run(&mut s, &limit, 1000 + 100_000_000, 1), Verdict::Pass);
        assert_eq!(run(&mut s, &limit, 1000 + 100_000_000, 1), Verdict::Drop);
    }

    proptest! {
        /// Step for step, the same decisions and the same state as meshwork-token-bucket.
        #[test]
        fn equals_the_pattern_crate(
            rate in 1u64..100_000,
            period_ns in 1u64..10_000_000_000,
            burst in 1u64..10_000,
            start in 0u64..1 << 50,
            steps in proptest::collection::vec((0u64..5_000_000_000, 1u64..4), 1..200),
        ) {
            let limit = RateLimit { rate, period_ns, burst };
            prop_assume!(limit.validate().is_ok());
            let reference = pattern::Limit::new(rate, period_ns, burst).unwrap();
            let mut ours = SourceState::full(&limit, start);
            let mut theirs = pattern::State::full(&reference, start);
            let mut now = start;
            for (dt, cost) in steps {
                // Occasionally a clock reading from the past, as another CPU may hand in.
                now = if dt % 7 == 0 { now.saturating_sub(dt / 3) } else { now + dt };
                let v = run(&mut ours, &limit, now, cost);
                let d = theirs.take(&reference, now, cost);
                prop_assert_eq!(v == Verdict::Pass, d.allowed);
                prop_assert_eq!((ours.units, ours.last_ns), (theirs.units, theirs.last_ns));
            }
        }
    }

    /// Threads hammer one bucket while the clock moves: what passes is within the token budget,
    /// and no more than a refill interval's worth short of it (nothing lost to races).
    #[test]
    fn racing_threads_pass_burst_plus_refill() {
        let limit = RateLimit { rate: 1, period_ns: 1000, burst: 500 };
        let clock = Arc::new(AtomicU64::new(1));
        let state = SourceState::full(&limit, 1);
        let units = Arc::new(Word::new(state.units));
        let last = Arc::new(Word::new(state.last_ns));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (clock, units, last) = (clock.clone(), units.clone(), last.clone());
                std::thread::spawn(move || {
                    let mut passed = 0u64;
                    for i in 0..200_000u64 {
                        let now = if i % 16 == 0 {
                            clock.fetch_add(7, Ordering::SeqCst) + 7
                        } else {
                            clock.load(Ordering::SeqCst)
                        };
                        passed += (take(&units, &last, &limit, now, 1) == Verdict::Pass) as u64;
                    }
                    passed
                })
            })
            .collect();
        let passed: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let elapsed = clock.load(Ordering::SeqCst) - 1;
        let budget = limit.burst + elapsed * limit.rate / limit.period_ns;
        assert!(passed <= budget, "passed {passed} > budget {budget}");
        // Tokens still in the bucket at the end were earned but not spent.
        let left = units.load() / limit.period_ns;
        assert!(passed + left + 2 >= budget, "passed {passed} + left {left} << budget {budget}: lost refills");
    }
}
