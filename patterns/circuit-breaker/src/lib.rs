//! A circuit breaker with an injected clock, small enough to live in one shared-data slot and be
//! updated with compare-and-swap by every worker of a proxy.
//!
//! Closed, it counts outcomes and opens after `consecutive_failures` failures in a row, or when
//! failures reach `ratio` of at least `min_requests` requests over the last `window`. Open, it
//! rejects until `cool_down` has passed; then half-open, it admits at most `probes` requests.
//! All probes succeeding closes it; any probe failing opens it again. Probes that never report
//! (their stream vanished with its worker) stop counting after `cool_down`, so a lost probe
//! cannot hold the circuit half-open forever.
#![no_std]

use meshwork_cas_table::SlotState;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureRatio {
    /// Failures per thousand requests at which the circuit opens.
    pub per_mille: u32,
    /// Fewer requests than this in the window never open the circuit.
    pub min_requests: u32,
    /// The window; outcomes are counted in two buckets of half its length, so the ratio covers
    /// between half a window and a whole one of history.
    pub window_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Failures in a row that open the circuit; 0 disables this trigger.
    pub consecutive_failures: u32,
    pub failure_ratio: Option<FailureRatio>,
    pub cool_down_ns: u64,
    /// Requests admitted at once while half-open, and successes needed to close.
    pub probes: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    NoTrigger,
    ZeroProbes,
    ZeroCoolDown,
    BadRatio,
    ZeroWindow,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ConfigError::NoTrigger => "set consecutive_failures above 0, or failure_ratio, or both",
            ConfigError::ZeroProbes => "half_open_probes must be at least 1",
            ConfigError::ZeroCoolDown => "cool_down must be longer than 0",
            ConfigError::BadRatio => "failure_ratio.threshold must be above 0 and at most 1",
            ConfigError::ZeroWindow => "failure_ratio.window must be longer than 0",
        })
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.consecutive_failures == 0 && self.failure_ratio.is_none() {
            return Err(ConfigError::NoTrigger);
        }
        if self.probes == 0 {
            return Err(ConfigError::ZeroProbes);
        }
        if self.cool_down_ns == 0 {
            return Err(ConfigError::ZeroCoolDown);
        }
        if let Some(r) = self.failure_ratio {
            if r.per_mille == 0 || r.per_mille > 1000 {
                return Err(ConfigError::BadRatio);
            }
            if r.window_ns < 2 {
                return Err(ConfigError::ZeroWindow);
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open,
    HalfOpen,
}

/// Why the circuit last opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    None,
    ConsecutiveFailures,
    FailureRatio,
    ProbeFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::ConsecutiveFailures => "consecutive-failures",
            Reason::FailureRatio => "failure-ratio",
            Reason::ProbeFailed => "probe-failed",
        }
    }
}

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Allow,
    /// Allowed as one of the half-open probes of round `round`: report its outcome with it.
    Probe {
        round: u64,
    },
    /// Rejected. `retry_after_ns`: until the circuit half-opens (0 when it is half-open and its
    /// probes are all out).
    Reject {
        reason: Reason,
        retry_after_ns: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    pub phase: Phase,
    pub reason: Reason,
    pub consecutive: u32,
    bucket_start_ns: u64,
    /// (requests, failures) in the current and the previous bucket.
    current: (u32, u32),
    previous: (u32, u32),
    /// When it opened (Open) or when the current probe round began (HalfOpen).
    since_ns: u64,
    probes_out: u16,
    probe_successes: u16,
}

impl Breaker {
    pub fn new(now_ns: u64) -> Breaker {
        Breaker {
            phase: Phase::Closed,
            reason: Reason::None,
            consecutive: 0,
            bucket_start_ns: now_ns,
            current: (0, 0),
            previous: (0, 0),
            since_ns: 0,
            probes_out: 0,
            probe_successes: 0,
        }
    }

    /// Decides whether a request may go to the upstream.
    pub fn admit(&mut self, config: &Config, now_ns: u64) -> Admission {
        match self.phase {
            Phase::Closed => return Admission::Allow,
            Phase::Open => {
                let reopens = self.since_ns.saturating_add(config.cool_down_ns);
                if now_ns < reopens {
                    return Admission::Reject { reason: self.reason, retry_after_ns: reopens - now_ns };
                }
                self.start_probe_round(now_ns);
            }
            Phase::HalfOpen => {
                // Probes that have not reported within a cool-down are presumed lost.
                if now_ns >= self.since_ns.saturating_add(config.cool_down_ns) {
                    self.start_probe_round(now_ns);
                }
            }
        }
        if self.probes_out < config.probes {
            self.probes_out += 1;
            Admission::Probe { round: self.since_ns }
        } else {
            Admission::Reject { reason: self.reason, retry_after_ns: 0 }
        }
    }

    fn start_probe_round(&mut self, now_ns: u64) {
        self.phase = Phase::HalfOpen;
        self.since_ns = now_ns;
        self.probes_out = 0;
        self.probe_successes = 0;
    }

    /// Records the outcome of a request `admit` allowed (`probe`: the round of a probe).
    pub fn record(&mut self, config: &Config, now_ns: u64, probe: Option<u64>, failed: bool) {
        if let Some(round) = probe {
            if !self.is_current_round(round) {
                return; // a probe from a round that already ended
            }
            if failed {
                self.open(Reason::ProbeFailed, now_ns);
            } else {
                self.probe_successes += 1;
                if self.probe_successes >= config.probes {
                    *self = Breaker::new(now_ns);
                }
            }
            return;
        }
        if self.phase != Phase::Closed {
            return; // admitted before the circuit opened: it says nothing new
        }
        if config.failure_ratio.is_some() {
            self.roll(config, now_ns);
            self.current.0 = self.current.0.saturating_add(1);
            self.current.1 = self.current.1.saturating_add(failed as u32);
        }
        // Without a ratio, a success on a clean record changes nothing, so it is not written.
        self.consecutive = if failed { self.consecutive.saturating_add(1) } else { 0 };
        if config.consecutive_failures > 0 && self.consecutive >= config.consecutive_failures {
            self.open(Reason::ConsecutiveFailures, now_ns);
        } else if let Some(ratio) = config.failure_ratio {
            let requests = self.current.0 as u64 + self.previous.0 as u64;
            let failures = self.current.1 as u64 + self.previous.1 as u64;
            if requests >= ratio.min_requests as u64 && failures * 1000 >= ratio.per_mille as u64 * requests {
                self.open(Reason::FailureRatio, now_ns);
            }
        }
    }

    /// A probe that ended without reaching the upstream (the client left, another filter
    /// answered): its place goes to the next request.
    pub fn abandon_probe(&mut self, round: u64) {
        if self.is_current_round(round) {
            self.probes_out = self.probes_out.saturating_sub(1);
        }
    }

    fn is_current_round(&self, round: u64) -> bool {
        self.phase == Phase::HalfOpen && self.since_ns == round
    }

    fn open(&mut self, reason: Reason, now_ns: u64) {
        *self = Breaker { phase: Phase::Open, reason, since_ns: now_ns, ..Breaker::new(now_ns) };
    }

    /// Moves the two buckets forward to `now_ns`.
    fn roll(&mut self, config: &Config, now_ns: u64) {
        let Some(ratio) = config.failure_ratio else { return };
        let bucket = ratio.window_ns / 2;
        let elapsed = now_ns.saturating_sub(self.bucket_start_ns);
        if elapsed < bucket {
            return;
        }
        self.previous = if elapsed < 2 * bucket { self.current } else { (0, 0) };
        self.current = (0, 0);
        self.bucket_start_ns = now_ns - elapsed % bucket;
    }
}

impl SlotState for Breaker {
    type Config = Config;
    const LEN: usize = 1 + 1 + 4 + 8 + 16 + 8 + 2 + 2;

    fn fresh(_: &Config, now_ns: u64) -> Breaker {
        Breaker::new(now_ns)
    }

    fn is_idle(&self, config: &Config, now_ns: u64) -> bool {
        let mut rolled = *self;
        rolled.roll(config, now_ns);
        rolled.phase == Phase::Closed
            && rolled.consecutive == 0
            && rolled.current == (0, 0)
            && rolled.previous == (0, 0)
    }

    fn encode(&self, out: &mut [u8]) {
        out[0] = match self.phase {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        };
        out[1] = match self.reason {
            Reason::None => 0,
            Reason::ConsecutiveFailures => 1,
            Reason::FailureRatio => 2,
            Reason::ProbeFailed => 3,
        };
        out[2..6].copy_from_slice(&self.consecutive.to_le_bytes());
        out[6..14].copy_from_slice(&self.bucket_start_ns.to_le_bytes());
        out[14..18].copy_from_slice(&self.current.0.to_le_bytes());
        out[18..22].copy_from_slice(&self.current.1.to_le_bytes());
        out[22..26].copy_from_slice(&self.previous.0.to_le_bytes());
        out[26..30].copy_from_slice(&self.previous.1.to_le_bytes());
        out[30..38].copy_from_slice(&self.since_ns.to_le_bytes());
        out[38..40].copy_from_slice(&self.probes_out.to_le_bytes());
        out[40..42].copy_from_slice(&self.probe_successes.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Breaker> {
        let u32_at = |i: usize| Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?));
        let u64_at = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
        let u16_at = |i: usize| Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?));
        Some(Breaker {
            phase: match b.first()? {
                0 => Phase::Closed,
                1 => Phase::Open,
                2 => Phase::HalfOpen,
                _ => return None,
            },
            reason: match b.get(1)? {
                0 => Reason::None,
                1 => Reason::ConsecutiveFailures,
                2 => Reason::FailureRatio,
                3 => Reason::ProbeFailed,
                _ => return None,
            },
            consecutive: u32_at(2)?,
            bucket_start_ns: u64_at(6)?,
            current: (u32_at(14)?, u32_at(18)?),
            previous: (u32_at(22)?, u32_at(26)?),
            since_ns: u64_at(30)?,
            probes_out: u16_at(38)?,
            probe_successes: u16_at(40)?,
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn config() -> Config {
        Config { consecutive_failures: 3, failure_ratio: None, cool_down_ns: 100 * MS, probes: 2 }
    }

    #[test]
    fn opens_after_exactly_n_consecutive_failures() {
        let c = config();
        let mut b = Breaker::new(0);
        for ok in [false, false, true, false, false] {
            assert_eq!(b.admit(&c, 0), Admission::Allow);
            b.record(&c, 0, None, !ok);
        }
        assert_eq!(b.phase, Phase::Closed, "a success in between resets the count");
        b.record(&c, 1, None, true);
        assert_eq!(b.phase, Phase::Open);
        assert_eq!(
            b.admit(&c, 40 * MS),
            Admission::Reject { reason: Reason::ConsecutiveFailures, retry_after_ns: 60 * MS + 1 }
        );
    }

    #[test]
    fn half_open_admits_probes_then_closes_or_reopens() {
        let c = config();
        let mut b = Breaker::new(0);
        for _ in 0..3 {
            b.record(&c, 0, None, true);
        }
        let t = 100 * MS;
        let probe = Admission::Probe { round: t };
        assert_eq!(b.admit(&c, t), probe);
        assert_eq!(b.admit(&c, t), probe);
        assert_eq!(b.admit(&c, t), Admission::Reject { reason: Reason::ConsecutiveFailures, retry_after_ns: 0 });
        b.record(&c, t, Some(t), false);
        assert_eq!(b.phase, Phase::HalfOpen, "one success of two");
        b.record(&c, t, Some(t), false);
        assert_eq!(b.phase, Phase::Closed);
        assert_eq!(b.admit(&c, t), Admission::Allow);

        for _ in 0..3 {
            b.record(&c, t, None, true);
        }
        let t2 = t + 100 * MS;
        assert_eq!(b.admit(&c, t2), Admission::Probe { round: t2 });
        b.record(&c, t2, Some(t2), true);
        assert_eq!((b.phase, b.reason), (Phase::Open, Reason::ProbeFailed));
        assert!(matches!(b.admit(&c, t2 + 1), Admission::Reject { .. }));
    }

    #[test]
    fn lost_probes_expire_after_a_cool_down() {
        let c = config();
        let mut b = Breaker::new(0);
        for _ in 0..3 {
            b.record(&c, 0, None, true);
        }
        let t = 100 * MS;
        assert_eq!(b.admit(&c, t), Admission::Probe { round: t });
        assert_eq!(b.admit(&c, t), Admission::Probe { round: t });
        assert!(matches!(b.admit(&c, t + 99 * MS), Admission::Reject { .. }));
        let t2 = t + 100 * MS;
        assert_eq!(b.admit(&c, t2), Admission::Probe { round: t2 }, "a new round");
        b.abandon_probe(t);
        b.record(&c, t2, Some(t), false);
        assert_eq!(b.admit(&c, t2), Admission::Probe { round: t2 }, "old probes change nothing");
        assert!(matches!(b.admit(&c, t2), Admission::Reject { .. }));
        b.abandon_probe(t2);
        assert_eq!(b.admit(&c, t2), Admission::Probe { round: t2 }, "an abandoned probe frees its place");
    }

    #[test]
    fn ratio_needs_the_minimum_and_the_threshold() {
        let ratio = FailureRatio { per_mille: 500, min_requests: 10, window_ns: 1000 * MS };
        let c = Config { consecutive_failures: 0, failure_ratio: Some(ratio), ..config() };
        let mut b = Breaker::new(0);
        for i in 0..9 {
            b.record(&c, i * MS, None, i % 2 == 0); // 5 failures of 9
        }
        assert_eq!(b.phase, Phase::Closed, "under min_requests");
        b.record(&c, 9 * MS, None, false); // 5 of 10
        assert_eq!((b.phase, b.reason), (Phase::Open, Reason::FailureRatio));

        let mut b = Breaker::new(0);
        for i in 0..10 {
            b.record(&c, i * MS, None, true);
        }
        assert_eq!(b.phase, Phase::Open);
        // Old failures age out: two whole buckets later the window is empty again.
        let mut b = Breaker::new(0);
        for _ in 0..4 {
            b.record(&c, 0, None, true);
        }
        for i in 0..9 {
            b.record(&c, 1000 * MS + i, None, false);
        }
        b.record(&c, 1000 * MS + 10, None, true);
        assert_eq!(b.phase, Phase::Closed, "1 failure in 10 once the old bucket expired");
    }

    #[test]
    fn config_errors_are_named() {
        assert_eq!(Config { consecutive_failures: 0, ..config() }.validate(), Err(ConfigError::NoTrigger));
        assert_eq!(Config { probes: 0, ..config() }.validate(), Err(ConfigError::ZeroProbes));
        assert_eq!(config().validate(), Ok(()));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Admit,
        Report { index: usize, failed: bool },
        Abandon { index: usize },
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Admit),
            3 => (any::<usize>(), any::<bool>()).prop_map(|(index, failed)| Op::Report { index, failed }),
            1 => any::<usize>().prop_map(|index| Op::Abandon { index }),
            1 => (0u64..150).prop_map(|ms| Op::Wait(ms * MS)),
        ]
    }

    proptest! {
        /// Whatever happens, no more than `probes` requests of one probe round are out at once
        /// (admitted, not yet abandoned), a closed circuit never rejects, and the state survives
        /// encoding.
        #[test]
        fn never_more_probes_than_configured(ops in proptest::collection::vec(op(), 1..300), probes in 1u16..4) {
            let c = Config { probes, ..config() };
            let mut b = Breaker::new(0);
            let mut now = 0;
            let mut out: Vec<Option<u64>> = Vec::new(); // in flight: the probe round, if a probe
            let mut admitted: std::collections::HashMap<u64, i64> = std::collections::HashMap::new();
            for op in ops {
                match op {
                    Op::Admit => {
                        let phase = b.phase;
                        match b.admit(&c, now) {
                            Admission::Allow => { prop_assert_eq!(phase, Phase::Closed); out.push(None); }
                            Admission::Probe { round } => {
                                let n = admitted.entry(round).or_default();
                                *n += 1;
                                prop_assert!(*n <= probes as i64, "round {} has {} probes", round, n);
                                out.push(Some(round));
                            }
                            Admission::Reject { .. } => prop_assert_ne!(phase, Phase::Closed),
                        }
                    }
                    Op::Report { index, failed } if !out.is_empty() => {
                        let probe = out.remove(index % out.len());
                        b.record(&c, now, probe, failed);
                    }
                    Op::Abandon { index } if !out.is_empty() => {
                        if let Some(round) = out.remove(index % out.len()) {
                            b.abandon_probe(round);
                            *admitted.entry(round).or_default() -= 1;
                        }
                    }
                    Op::Wait(d) => now += d,
                    _ => {}
                }
                prop_assert!(b.probes_out <= probes);
                let mut bytes = [0u8; Breaker::LEN];
                b.encode(&mut bytes);
                prop_assert_eq!(Breaker::decode(&bytes), Some(b));
            }
        }

        /// Closed, the circuit opens on exactly the Nth failure in a row and never on successes.
        #[test]
        fn opens_on_exactly_the_nth_consecutive_failure(outcomes in proptest::collection::vec(any::<bool>(), 0..100), n in 1u32..6) {
            let c = Config { consecutive_failures: n, ..config() };
            let mut b = Breaker::new(0);
            let mut run = 0;
            for failed in outcomes {
                prop_assert_eq!(b.phase, Phase::Closed);
                b.record(&c, 0, None, failed);
                run = if failed { run + 1 } else { 0 };
                prop_assert_eq!(b.phase == Phase::Open, run == n);
                if run == n { break; }
            }
        }
    }
}
