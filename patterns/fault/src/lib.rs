//! Fault injection: which requests get a delay or an abort, with Envoy's fault filter semantics.
//!
//! A fault is chosen per request from the configured percentages (fractions per hundred, ten
//! thousand or million, as Envoy's `FractionalPercent`) or, when the configuration allows it,
//! from the caller's `x-envoy-fault-*` headers. A delay comes first; an abort chosen for the
//! same request is sent when the delay ends. [`ActiveFaults`] caps how many requests carry a
//! fault at once across all workers (Envoy's `max_active_faults`).
#![no_std]

/// Envoy's `FractionalPercent` denominators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denominator {
    Hundred,
    TenThousand,
    Million,
}

impl Denominator {
    pub fn value(self) -> u32 {
        match self {
            Denominator::Hundred => 100,
            Denominator::TenThousand => 10_000,
            Denominator::Million => 1_000_000,
        }
    }
}

/// `numerator` out of the denominator; numerators above the denominator mean "always".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: Denominator,
}

impl Fraction {
    pub const ALWAYS: Fraction = Fraction { numerator: 100, denominator: Denominator::Hundred };

    pub fn per_hundred(numerator: u32) -> Fraction {
        Fraction { numerator, denominator: Denominator::Hundred }
    }

    /// True for a share `numerator / denominator` of uniformly random `random` values.
    /// (The modulo bias over a u64 is below 1e-13 for these denominators.)
    pub fn sample(self, random: u64) -> bool {
        (random % self.denominator.value() as u64) < self.numerator as u64
    }

    /// The same denominator with another numerator, capped by this one's (how Envoy treats the
    /// `x-envoy-fault-*-percentage` headers: the configured fraction is the most a caller gets).
    fn capped(self, numerator: u32) -> Fraction {
        Fraction { numerator: numerator.min(self.numerator), denominator: self.denominator }
    }
}

/// Where an abort's status comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortStatus {
    Fixed(u16),
    /// The caller's `x-envoy-fault-abort-request` header (Envoy's `header_abort`).
    FromHeader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortPolicy {
    pub status: AbortStatus,
    pub percentage: Fraction,
}

/// Where a delay's length comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayLength {
    FixedNs(u64),
    /// The caller's `x-envoy-fault-delay-request` header, in milliseconds (Envoy's `header_delay`).
    FromHeader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayPolicy {
    pub length: DelayLength,
    pub percentage: Fraction,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub abort: Option<AbortPolicy>,
    pub delay: Option<DelayPolicy>,
}

/// The caller's fault headers (values as sent; absent when not sent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultHeaders<'a> {
    /// `x-envoy-fault-abort-request`
    pub abort: Option<&'a str>,
    /// `x-envoy-fault-abort-request-percentage`
    pub abort_percentage: Option<&'a str>,
    /// `x-envoy-fault-delay-request`
    pub delay: Option<&'a str>,
    /// `x-envoy-fault-delay-request-percentage`
    pub delay_percentage: Option<&'a str>,
}

pub const ABORT_HEADER: &str = "x-envoy-fault-abort-request";
pub const ABORT_PERCENTAGE_HEADER: &str = "x-envoy-fault-abort-request-percentage";
pub const DELAY_HEADER: &str = "x-envoy-fault-delay-request";
pub const DELAY_PERCENTAGE_HEADER: &str = "x-envoy-fault-delay-request-percentage";

/// The faults one request gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub delay_ns: Option<u64>,
    pub abort_status: Option<u16>,
}

impl Decision {
    pub fn is_fault(&self) -> bool {
        self.delay_ns.is_some() || self.abort_status.is_some()
    }
}

/// A percentage header: a whole numerator, capped by the configured fraction; the configured
/// fraction when absent. An unreadable value disables the fault, as in Envoy.
fn effective(configured: Fraction, header: Option<&str>) -> Option<Fraction> {
    match header {
        None => Some(configured),
        Some(v) => v.trim().parse::<u32>().ok().map(|n| configured.capped(n)),
    }
}

/// Decides the faults for one request. `random` is called at most twice (once per fault kind
/// that applies), so a caller can feed a recorded sequence in tests.
pub fn decide(policy: &Policy, headers: &FaultHeaders<'_>, mut random: impl FnMut() -> u64) -> Decision {
    let mut decision = Decision::default();
    if let Some(delay) = &policy.delay {
        let (length, header_percentage) = match delay.length {
            DelayLength::FixedNs(ns) => (Some(ns), None),
            DelayLength::FromHeader => (
                headers.delay.and_then(|v| v.trim().parse::<u64>().ok()).map(|ms| ms.saturating_mul(1_000_000)),
                headers.delay_percentage,
            ),
        };
        if let (Some(ns), Some(fraction)) = (length, effective(delay.percentage, header_percentage))
            && fraction.sample(random())
        {
            decision.delay_ns = Some(ns);
        }
    }
    if let Some(abort) = &policy.abort {
        let (status, header_percentage) = match abort.status {
            AbortStatus::Fixed(s) => (Some(s), None),
            AbortStatus::FromHeader => (
                headers.abort.and_then(|v| v.trim().parse::<u16>().ok()).filter(|s| (200..600).contains(s)),
                headers.abort_percentage,
            ),
        };
        if let (Some(status), Some(fraction)) = (status, effective(abort.percentage, header_percentage))
            && fraction.sample(random())
        {
            decision.abort_status = Some(status);
        }
    }
    decision
}

/// How many requests carry a fault right now, across every worker (one shared CAS slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveFaults {
    pub count: u64,
}

impl ActiveFaults {
    /// Takes a place if fewer than `max` are taken.
    pub fn try_acquire(&mut self, max: u64) -> bool {
        let ok = self.count < max;
        if ok {
            self.count += 1;
        }
        ok
    }

    /// Gives a place back (never below zero, whatever a caller does twice).
    pub fn release(&mut self) {
        self.count = self.count.saturating_sub(1);
    }
}

impl meshwork_cas_table::SlotState for ActiveFaults {
    type Config = ();
    const LEN: usize = 8;

    fn fresh(_: &(), _: u64) -> ActiveFaults {
        ActiveFaults { count: 0 }
    }

    fn is_idle(&self, _: &(), _: u64) -> bool {
        self.count == 0
    }

    fn encode(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.count.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<ActiveFaults> {
        Some(ActiveFaults { count: u64::from_le_bytes(bytes.try_into().ok()?) })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn fixed(abort: Option<(u16, u32)>, delay: Option<(u64, u32)>) -> Policy {
        Policy {
            abort: abort
                .map(|(s, p)| AbortPolicy { status: AbortStatus::Fixed(s), percentage: Fraction::per_hundred(p) }),
            delay: delay.map(|(ms, p)| DelayPolicy {
                length: DelayLength::FixedNs(ms * MS),
                percentage: Fraction::per_hundred(p),
            }),
        }
    }

    fn from_headers(percentage: u32) -> Policy {
        Policy {
            abort: Some(AbortPolicy { status: AbortStatus::FromHeader, percentage: Fraction::per_hundred(percentage) }),
            delay: Some(DelayPolicy { length: DelayLength::FromHeader, percentage: Fraction::per_hundred(percentage) }),
        }
    }

    #[test]
    fn fixed_faults_follow_the_random_draw() {
        let p = fixed(Some((503, 50)), Some((300, 10)));
        // Draws: delay first, then abort.
        let mut draws = [5u64, 49].into_iter();
        let d = decide(&p, &FaultHeaders::default(), || draws.next().unwrap());
        assert_eq!(d, Decision { delay_ns: Some(300 * MS), abort_status: Some(503) });
        let mut draws = [10u64, 50].into_iter();
        let d = decide(&p, &FaultHeaders::default(), || draws.next().unwrap());
        assert_eq!(d, Decision::default());
        assert!(!d.is_fault());
    }

    #[test]
    fn header_faults_need_their_header_and_are_capped_by_the_configuration() {
        let p = from_headers(40);
        let none = decide(&p, &FaultHeaders::default(), || 0);
        assert_eq!(none, Decision::default(), "no header, no fault");

        let h = FaultHeaders { abort: Some("418"), delay: Some("250"), ..FaultHeaders::default() };
        assert_eq!(decide(&p, &h, || 39), Decision { delay_ns: Some(250 * MS), abort_status: Some(418) });
        assert_eq!(decide(&p, &h, || 40), Decision::default(), "configured 40% bounds the draw");

        // The percentage headers lower the share, never raise it past the configuration.
        let h = FaultHeaders { abort: Some("503"), abort_percentage: Some("100"), ..FaultHeaders::default() };
        assert_eq!(decide(&p, &h, || 45).abort_status, None);
        let h = FaultHeaders { abort: Some("503"), abort_percentage: Some("10"), ..FaultHeaders::default() };
        assert_eq!(decide(&p, &h, || 9).abort_status, Some(503));
        assert_eq!(decide(&p, &h, || 10).abort_status, None);
    }

    #[test]
    fn unreadable_headers_inject_nothing() {
        let p = from_headers(100);
        for bad in ["abc", "", "99", "600", "-1"] {
            let h = FaultHeaders { abort: Some(bad), ..FaultHeaders::default() };
            assert_eq!(decide(&p, &h, || 0).abort_status, None, "{bad:?}");
        }
        let h = FaultHeaders { delay: Some("soon"), ..FaultHeaders::default() };
        assert_eq!(decide(&p, &h, || 0).delay_ns, None);
        let h = FaultHeaders { delay: Some("5"), delay_percentage: Some("x"), ..FaultHeaders::default() };
        assert_eq!(decide(&p, &h, || 0).delay_ns, None);
    }

    #[test]
    fn fixed_faults_ignore_the_callers_headers() {
        let p = fixed(Some((503, 0)), None);
        let h = FaultHeaders { abort: Some("500"), abort_percentage: Some("100"), ..FaultHeaders::default() };
        assert_eq!(decide(&p, &h, || 0), Decision::default());
    }

    #[test]
    fn denominators_scale_the_share() {
        let f = Fraction { numerator: 1, denominator: Denominator::Million };
        assert!(f.sample(0) && f.sample(2_000_000) && !f.sample(1) && !f.sample(999_999));
        let f = Fraction { numerator: 2_500, denominator: Denominator::TenThousand };
        assert!(f.sample(2_499) && !f.sample(2_500));
        assert!(Fraction::per_hundred(150).sample(99), "over the denominator: always");
    }

    #[test]
    fn active_faults_are_capped_and_never_negative() {
        let mut a = ActiveFaults { count: 0 };
        assert!(a.try_acquire(2) && a.try_acquire(2));
        assert!(!a.try_acquire(2));
        a.release();
        a.release();
        a.release();
        assert_eq!(a.count, 0);
    }

    mod shared {
        extern crate std;
        use super::super::*;
        use meshwork_cas_table::mem::{Interfering, MemStore};
        use meshwork_cas_table::{CasStore, Outcome, update};
        use proptest::prelude::*;

        fn acquire(store: &mut impl CasStore, max: u64) -> bool {
            matches!(
                update(store, 1, 1, b"active", &(), 0, |a: &mut ActiveFaults| a.try_acquire(max)),
                Outcome::Done(true)
            )
        }

        proptest! {
            /// Racing workers never hold more than `max` places together.
            #[test]
            fn racing_workers_never_exceed_the_cap(max in 0u64..10, schedule in proptest::collection::vec(any::<bool>(), 0..100)) {
                // Between a read and its write, another worker may take a place.
                let mut store = Interfering::new(MemStore::created(1), &schedule, |s| acquire(s, max));
                let mine = (0..20).filter(|_| acquire(&mut store, max)).count() as u64;
                prop_assert_eq!(mine + store.rival_successes, max);
            }
        }
    }

    proptest! {
        /// Over many draws the share of faults is the configured fraction (within 5 sigma).
        #[test]
        fn sampled_share_matches_the_fraction(numerator in 0u32..=100, seed in any::<u64>()) {
            let p = fixed(Some((503, numerator)), None);
            let mut x = seed | 1;
            let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
            let n = 20_000u32;
            let hits = (0..n).filter(|_| decide(&p, &FaultHeaders::default(), &mut next).abort_status.is_some()).count() as f64;
            let q = numerator as f64 / 100.0;
            let sigma = (n as f64 * q * (1.0 - q)).sqrt();
            prop_assert!((hits - n as f64 * q).abs() <= 5.0 * sigma + 1.0, "{hits} of {n} for {numerator}%");
        }

        /// 0% never injects and 100% always does, whatever the draw; a fault needs a draw under
        /// its numerator.
        #[test]
        fn bounds_hold_for_every_draw(r in any::<u64>(), d in any::<u64>()) {
            let never = fixed(Some((500, 0)), Some((1, 0)));
            prop_assert_eq!(decide(&never, &FaultHeaders::default(), || r), Decision::default());
            let always = fixed(Some((500, 100)), Some((1, 100)));
            let mut draws = [r, d].into_iter();
            prop_assert_eq!(
                decide(&always, &FaultHeaders::default(), || draws.next().unwrap()),
                Decision { delay_ns: Some(MS), abort_status: Some(500) }
            );
        }

        /// A percentage header can only lower the configured share.
        #[test]
        fn percentage_headers_never_raise_the_share(configured in 0u32..=100, asked in 0u32..1000, r in any::<u64>()) {
            let p = from_headers(configured);
            let asked = std::format!("{asked}");
            let h = FaultHeaders { abort: Some("503"), abort_percentage: Some(&asked), ..FaultHeaders::default() };
            let with_header = decide(&p, &h, || r).abort_status.is_some();
            let h = FaultHeaders { abort: Some("503"), ..FaultHeaders::default() };
            let without = decide(&p, &h, || r).abort_status.is_some();
            prop_assert!(!with_header || without);
        }
    }
}
