//! Token bucket with an injected clock and exact integer arithmetic.
//!
//! The state is two `u64`s so it fits a proxy-wasm shared-data value (16 bytes) or an eBPF map
//! value, and can be updated with compare-and-swap by many workers. Tokens are kept in fixed point
//! with `period_ns` as the denominator: one token is `period_ns` units and refill adds
//! `elapsed_ns * rate` units, so no fraction of a token is ever lost to rounding.
#![no_std]

/// How fast the bucket refills and how much it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Tokens added per `period_ns`.
    pub rate: u64,
    /// Length of one refill period in nanoseconds.
    pub period_ns: u64,
    /// Capacity: the most tokens the bucket holds, and so the largest burst.
    pub burst: u64,
}

/// Why a [`Limit`] cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitError {
    ZeroRate,
    ZeroPeriod,
    ZeroBurst,
    /// `burst * period_ns` must fit in a u64 (about 584 years of tokens-nanoseconds).
    TooLarge,
}

impl core::fmt::Display for LimitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            LimitError::ZeroRate => "rate must be at least 1",
            LimitError::ZeroPeriod => "period must be at least 1ns",
            LimitError::ZeroBurst => "burst must be at least 1",
            LimitError::TooLarge => "burst * period is too large",
        })
    }
}

impl Limit {
    pub fn new(rate: u64, period_ns: u64, burst: u64) -> Result<Limit, LimitError> {
        if rate == 0 {
            return Err(LimitError::ZeroRate);
        }
        if period_ns == 0 {
            return Err(LimitError::ZeroPeriod);
        }
        if burst == 0 {
            return Err(LimitError::ZeroBurst);
        }
        if burst.checked_mul(period_ns).is_none() {
            return Err(LimitError::TooLarge);
        }
        Ok(Limit { rate, period_ns, burst })
    }

    fn capacity_units(&self) -> u64 {
        self.burst * self.period_ns
    }

    /// Nanoseconds needed to refill `units` (rounded up).
    fn ns_to_refill(&self, units: u64) -> u64 {
        let ns = (units as u128).div_ceil(self.rate as u128);
        ns.min(u64::MAX as u128) as u64
    }
}

/// The bucket's state. `State::full(now)` is a bucket nobody has used yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// Tokens in fixed point: one token = `period_ns` units.
    pub units: u64,
    /// Clock reading of the last refill.
    pub last_ns: u64,
}

/// What one request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens left after this request.
    pub remaining: u64,
    /// Nanoseconds until the next token is available (0 when one is available now).
    pub retry_after_ns: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset_ns: u64,
}

impl State {
    pub const ENCODED_LEN: usize = 16;

    pub fn full(limit: &Limit, now_ns: u64) -> State {
        State { units: limit.capacity_units(), last_ns: now_ns }
    }

    /// Adds the tokens earned since `last_ns`. A clock reading older than `last_ns` (another
    /// worker's clock, or a clock step) earns nothing and does not move `last_ns` back.
    fn refill(&mut self, limit: &Limit, now_ns: u64) {
        if now_ns <= self.last_ns {
            return;
        }
        let elapsed = (now_ns - self.last_ns) as u128;
        let earned = elapsed * limit.rate as u128;
        let cap = limit.capacity_units() as u128;
        self.units = (self.units as u128 + earned).min(cap) as u64;
        self.last_ns = now_ns;
    }

    /// Takes `cost` tokens if the bucket holds them; otherwise takes nothing.
    pub fn take(&mut self, limit: &Limit, now_ns: u64, cost: u64) -> Decision {
        self.refill(limit, now_ns);
        let need = cost.saturating_mul(limit.period_ns);
        let allowed = self.units >= need;
        if allowed {
            self.units -= need;
        }
        let retry_after_ns =
            if self.units >= limit.period_ns { 0 } else { limit.ns_to_refill(limit.period_ns - self.units) };
        Decision {
            allowed,
            remaining: self.units / limit.period_ns,
            retry_after_ns,
            reset_ns: limit.ns_to_refill(limit.capacity_units() - self.units),
        }
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.units.to_le_bytes());
        out[8..].copy_from_slice(&self.last_ns.to_le_bytes());
        out
    }

    /// Reads a state written by [`State::encode`]; `None` for any other length.
    pub fn decode(bytes: &[u8]) -> Option<State> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        let (units, last) = bytes.split_at(8);
        Some(State {
            units: u64::from_le_bytes(units.try_into().ok()?),
            last_ns: u64::from_le_bytes(last.try_into().ok()?),
        })
    }
}

/// A bucket per key in a table all workers share (see `meshwork_cas_table`). A full bucket is
/// idle: it says nothing a new one would not, so its slot may go to another key.
impl meshwork_cas_table::SlotState for State {
    type Config = Limit;
    const LEN: usize = State::ENCODED_LEN;

    fn fresh(limit: &Limit, now_ns: u64) -> State {
        State::full(limit, now_ns)
    }

    fn is_idle(&self, limit: &Limit, now_ns: u64) -> bool {
        let mut refilled = *self;
        refilled.refill(limit, now_ns);
        refilled.units >= limit.capacity_units()
    }

    fn encode(&self, out: &mut [u8]) {
        out.copy_from_slice(&State::encode(self));
    }

    fn decode(bytes: &[u8]) -> Option<State> {
        State::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn full_bucket_passes_exactly_burst() {
        let limit = Limit::new(1, SEC, 5).unwrap();
        let mut s = State::full(&limit, 1000);
        let allowed = (0..20).filter(|_| s.take(&limit, 1000, 1).allowed).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn refills_at_rate_without_rounding_loss() {
        // 3 tokens per second: a token every 333_333_333.3 ns. After exactly one second,
        // exactly three tokens are back even though each third is fractional.
        let limit = Limit::new(3, SEC, 3).unwrap();
        let mut s = State::full(&limit, 0);
        for _ in 0..3 {
            assert!(s.take(&limit, 0, 1).allowed);
        }
        let d = s.take(&limit, 0, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, 333_333_334);
        let mut now = 0;
        let mut passed = 0;
        for _ in 0..100 {
            now += SEC / 100;
            if s.take(&limit, now, 1).allowed {
                passed += 1;
            }
        }
        assert_eq!(passed, 3);
    }

    #[test]
    fn decision_reports_remaining_and_reset() {
        let limit = Limit::new(10, SEC, 10).unwrap();
        let mut s = State::full(&limit, 0);
        let d = s.take(&limit, 0, 1);
        assert_eq!(d.remaining, 9);
        assert_eq!(d.retry_after_ns, 0);
        assert_eq!(d.reset_ns, SEC / 10);
    }

    #[test]
    fn old_clock_reading_earns_nothing() {
        let limit = Limit::new(1, SEC, 1).unwrap();
        let mut s = State::full(&limit, 10 * SEC);
        assert!(s.take(&limit, 10 * SEC, 1).allowed);
        assert!(!s.take(&limit, 5 * SEC, 1).allowed);
        assert_eq!(s.last_ns, 10 * SEC);
    }

    #[test]
    fn rejects_bad_limits() {
        assert_eq!(Limit::new(0, 1, 1), Err(LimitError::ZeroRate));
        assert_eq!(Limit::new(1, 0, 1), Err(LimitError::ZeroPeriod));
        assert_eq!(Limit::new(1, 1, 0), Err(LimitError::ZeroBurst));
        assert_eq!(Limit::new(1, u64::MAX, 2), Err(LimitError::TooLarge));
    }

    #[test]
    fn encoding_round_trips_and_rejects_other_lengths() {
        let s = State { units: 0xdead_beef, last_ns: 42 };
        assert_eq!(State::decode(&s.encode()), Some(s));
        assert_eq!(State::decode(&[0u8; 15]), None);
    }

    proptest! {
        /// Over any window, the bucket admits at most burst + rate * window / period.
        #[test]
        fn never_admits_more_than_burst_plus_refill(
            rate in 1u64..1000,
            period_ms in 1u64..2000,
            burst in 1u64..100,
            steps in proptest::collection::vec((0u64..50_000_000, 1u64..4), 1..300),
        ) {
            let limit = Limit::new(rate, period_ms * 1_000_000, burst).unwrap();
            let mut s = State::full(&limit, 0);
            let mut now = 0u64;
            let mut admitted = 0u128;
            for (dt, cost) in steps {
                now += dt;
                let before = s;
                let d = s.take(&limit, now, cost);
                if d.allowed {
                    admitted += cost as u128;
                } else {
                    // A refused request only refills; it takes nothing.
                    prop_assert!(s.units >= before.units || now > before.last_ns);
                }
                let bound = burst as u128 + (now as u128 * rate as u128) / limit.period_ns as u128;
                prop_assert!(admitted <= bound, "admitted {admitted} > bound {bound}");
                prop_assert!(s.units <= limit.burst * limit.period_ns);
            }
        }

        /// Requests spaced at exactly the refill interval are all admitted once the burst is spent.
        #[test]
        fn steady_rate_is_sustained(rate in 1u64..1000, burst in 1u64..50) {
            let limit = Limit::new(rate, SEC, burst).unwrap();
            let mut s = State::full(&limit, 0);
            for _ in 0..burst { prop_assert!(s.take(&limit, 0, 1).allowed); }
            let interval = SEC.div_ceil(rate);
            let results: Vec<bool> = (1..=50).map(|i| s.take(&limit, i * interval, 1).allowed).collect();
            prop_assert!(results.iter().all(|a| *a));
        }
    }

    mod shared_table {
        extern crate std;
        use super::super::*;
        use meshwork_cas_table::mem::{Interfering, MemStore};
        use meshwork_cas_table::{CasStore, Outcome, update};
        use proptest::prelude::*;

        fn take(store: &mut impl CasStore, limit: &Limit, now: u64) -> Outcome<Decision> {
            update(store, 8, 4, b"route", limit, now, |s: &mut State| s.take(limit, now, 1))
        }

        #[test]
        fn a_refilled_bucket_frees_its_slot() {
            let limit = Limit::new(1, 1_000_000_000, 2).unwrap();
            let mut store = MemStore::created(1);
            let mut go =
                |k: &[u8], now| update(&mut store, 1, 1, k, &limit, now, |s: &mut State| s.take(&limit, now, 1));
            assert!(matches!(go(b"a", 0), Outcome::Done(d) if d.allowed));
            assert_eq!(go(b"b", 0), Outcome::TableFull, "a's bucket is not full yet");
            assert!(
                matches!(go(b"b", 2_000_000_000), Outcome::Done(d) if d.allowed),
                "a refilled: b may take the slot"
            );
        }

        proptest! {
            /// Two workers racing on one key admit exactly `burst` from a full bucket together.
            #[test]
            fn racing_workers_admit_exactly_burst(
                burst in 1u64..20,
                schedule in proptest::collection::vec(any::<bool>(), 0..200),
            ) {
                let limit = Limit::new(1, 1_000_000_000_000, burst).unwrap();
                // Between a read and its write, a second worker may take a token from the same key.
                let mut store = Interfering::new(MemStore::created(8), &schedule, |s| {
                    matches!(take(s, &limit, 5), Outcome::Done(d) if d.allowed)
                });
                let mut admitted = 0;
                for _ in 0..(burst * 2 + 5) {
                    if let Outcome::Done(d) = take(&mut store, &limit, 5) {
                        admitted += d.allowed as u64;
                    }
                }
                prop_assert_eq!(admitted + store.rival_successes, burst);
            }
        }
    }
}
