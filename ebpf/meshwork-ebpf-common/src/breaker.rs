//! connect-breaker: one `meshwork_circuit_breaker::Breaker` per TCP destination, driven by
//! connect hooks (admission) and sock_ops (outcomes).
//!
//! The state machine runs unchanged in the kernel. Its state is kept in the pattern's own
//! 42-byte encoding (the one the Wasm filter keeps in shared data): user space is built by a
//! different compiler than the BPF object, so the in-memory layout of `Breaker` is no contract,
//! the encoding is. A slot's state is changed under a try-lock (one CAS on `lock`); a CPU that
//! cannot take it within [`crate::MAX_LOCK_SPINS`] tries lets the connect through and counts it as
//! contended, because a breaker must never block traffic on its own bookkeeping.

use meshwork_cas_table::SlotState;
use meshwork_circuit_breaker::{Admission, Breaker, Config, FailureRatio};
pub use meshwork_circuit_breaker::{Phase, Reason};

/// Encoded length of a `Breaker` (`SlotState::LEN`), rounded up to a multiple of 8.
pub const STATE_LEN: usize = 48;
const _: () = assert!(<Breaker as SlotState>::LEN <= STATE_LEN);

/// The config user space writes (index 0 of `CB_CONFIG`). Zero fields mean "off" as in the
/// filter's JSON config.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    /// Failure ratio threshold in per mille; 0: no ratio trigger.
    pub ratio_per_mille: u32,
    pub ratio_min_requests: u32,
    pub probes: u32,
    pub ratio_window_ns: u64,
    pub cool_down_ns: u64,
}

impl BreakerConfig {
    /// The pattern's config (probes beyond u16 are clamped; validation refuses them first).
    #[inline(always)]
    pub fn pattern(&self) -> Config {
        Config {
            consecutive_failures: self.consecutive_failures,
            failure_ratio: if self.ratio_per_mille == 0 {
                None
            } else {
                Some(FailureRatio {
                    per_mille: self.ratio_per_mille,
                    min_requests: self.ratio_min_requests,
                    window_ns: self.ratio_window_ns,
                })
            },
            cool_down_ns: self.cool_down_ns,
            probes: if self.probes > u16::MAX as u32 { u16::MAX } else { self.probes as u16 },
        }
    }

    pub fn validate(&self) -> Result<(), meshwork_circuit_breaker::ConfigError> {
        if self.probes > u16::MAX as u32 {
            return Err(meshwork_circuit_breaker::ConfigError::ZeroProbes);
        }
        self.pattern().validate()
    }
}

/// One destination's breaker and counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerSlot {
    /// 0: free; 1: a CPU is changing `state`.
    pub lock: u64,
    /// `Breaker` in its `SlotState` encoding.
    pub state: [u8; STATE_LEN],
    pub allowed: u64,
    pub probes: u64,
    pub rejected: u64,
    pub failures: u64,
    pub successes: u64,
    pub contended: u64,
}

impl BreakerSlot {
    #[inline(always)]
    pub fn new(now_ns: u64) -> BreakerSlot {
        let mut slot = BreakerSlot {
            lock: 0,
            state: [0; STATE_LEN],
            allowed: 0,
            probes: 0,
            rejected: 0,
            failures: 0,
            successes: 0,
            contended: 0,
        };
        store(&mut slot.state, &Breaker::new(now_ns));
        slot
    }

    /// The breaker, for user space.
    pub fn breaker(&self) -> Option<Breaker> {
        load(&self.state)
    }
}

#[inline(always)]
fn load(state: &[u8; STATE_LEN]) -> Option<Breaker> {
    <Breaker as SlotState>::decode(&state[..<Breaker as SlotState>::LEN])
}

#[inline(always)]
fn store(state: &mut [u8; STATE_LEN], breaker: &Breaker) {
    breaker.encode(&mut state[..<Breaker as SlotState>::LEN]);
}

/// What a connect gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connect {
    Allow,
    /// Allowed as a half-open probe of round `round`: remember it with the socket.
    Probe {
        round: u64,
    },
    Reject,
}

/// Decides a connect from the encoded state (the caller holds the slot's lock).
#[inline(always)]
pub fn admit(state: &mut [u8; STATE_LEN], config: &BreakerConfig, now_ns: u64) -> Connect {
    let Some(mut breaker) = load(state) else { return Connect::Allow };
    let before = breaker;
    let admission = breaker.admit(&config.pattern(), now_ns);
    if breaker != before {
        store(state, &breaker);
    }
    match admission {
        Admission::Allow => Connect::Allow,
        Admission::Probe { round } => Connect::Probe { round },
        Admission::Reject { .. } => Connect::Reject,
    }
}

/// Records a connection's outcome (the caller holds the slot's lock). `probe`: the round the
/// connect was admitted in as a probe.
#[inline(always)]
pub fn record(state: &mut [u8; STATE_LEN], config: &BreakerConfig, now_ns: u64, probe: Option<u64>, failed: bool) {
    let Some(mut breaker) = load(state) else { return };
    let before = breaker;
    breaker.record(&config.pattern(), now_ns, probe, failed);
    if breaker != before {
        store(state, &breaker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn config() -> BreakerConfig {
        BreakerConfig { consecutive_failures: 3, cool_down_ns: 100 * MS, probes: 1, ..Default::default() }
    }

    #[test]
    fn encoded_state_drives_the_pattern_state_machine() {
        let c = config();
        let mut slot = BreakerSlot::new(0);
        for t in 0..3 {
            assert_eq!(admit(&mut slot.state, &c, t), Connect::Allow);
            record(&mut slot.state, &c, t, None, true);
        }
        assert_eq!(slot.breaker().unwrap().phase, Phase::Open);
        assert_eq!(admit(&mut slot.state, &c, 50 * MS), Connect::Reject);
        // After the cool-down exactly one probe goes through.
        let Connect::Probe { round } = admit(&mut slot.state, &c, 110 * MS) else { panic!("no probe") };
        assert_eq!(admit(&mut slot.state, &c, 111 * MS), Connect::Reject);
        // It fails: open again, for another cool-down.
        record(&mut slot.state, &c, 112 * MS, Some(round), true);
        assert_eq!(slot.breaker().unwrap().reason, Reason::ProbeFailed);
        assert_eq!(admit(&mut slot.state, &c, 150 * MS), Connect::Reject);
        let Connect::Probe { round } = admit(&mut slot.state, &c, 220 * MS) else { panic!("no probe") };
        record(&mut slot.state, &c, 221 * MS, Some(round), false);
        assert_eq!(slot.breaker().unwrap().phase, Phase::Closed);
        assert_eq!(admit(&mut slot.state, &c, 222 * MS), Connect::Allow);
    }

    #[test]
    fn config_maps_zero_to_off_and_validates() {
        assert_eq!(config().pattern().failure_ratio, None);
        assert!(config().validate().is_ok());
        assert!(BreakerConfig { probes: 0, ..config() }.validate().is_err());
        assert!(BreakerConfig { consecutive_failures: 0, ..config() }.validate().is_err());
        let ratio = BreakerConfig {
            consecutive_failures: 0,
            ratio_per_mille: 500,
            ratio_min_requests: 4,
            ratio_window_ns: 1000 * MS,
            ..config()
        };
        assert!(ratio.validate().is_ok());
        assert!(BreakerConfig { ratio_per_mille: 1001, ..ratio }.validate().is_err());
    }

    #[test]
    fn garbage_state_fails_open() {
        let mut state = [0xffu8; STATE_LEN];
        assert_eq!(admit(&mut state, &config(), 0), Connect::Allow);
    }
}
