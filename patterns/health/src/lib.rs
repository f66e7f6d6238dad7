//! Health checking: healthy/unhealthy thresholds for active probes, outlier ejection from responses.
//!
//! One [`TargetState`] per target, small enough for a shared-data CAS slot, holds both halves:
//!
//! - **Active**: probe results move a target between healthy and unhealthy only after
//!   `unhealthy` consecutive failures or `healthy` consecutive successes. The first result after
//!   start-up decides at once (as Envoy's first check does), so a fresh proxy neither waits for
//!   thresholds nor sends traffic to a target that is down when it starts.
//! - **Passive** (outlier ejection): `consecutive_errors` upstream errors in a row eject the
//!   target for `base × n` (capped at `max`), where `n` counts recent ejections; `n` drops by one
//!   for every `base` the target then spends un-ejected. [`may_eject`] keeps at least
//!   `100 − max_percent` % of the targets in service.
//!
//! [`ProbeRound`] lets many workers share one probing schedule: each tick, whoever claims the
//! round with compare-and-swap probes; the rest only read.
#![no_std]

/// What the active checks last concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No probe has answered yet: traffic flows (the target is innocent until probed).
    Unknown,
    Healthy,
    Unhealthy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive successes that make an unhealthy target healthy (at least 1).
    pub healthy: u32,
    /// Consecutive failures that make a healthy target unhealthy (at least 1).
    pub unhealthy: u32,
}

/// Outlier ejection settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// Consecutive upstream errors that eject a target (at least 1).
    pub consecutive_errors: u32,
    /// Ejection time for the first ejection; the n-th recent one lasts n times as long.
    pub base_ns: u64,
    /// The longest ejection (at least `base_ns`).
    pub max_ns: u64,
    /// The most targets ejected at once, in percent (Envoy's `max_ejection_percent`).
    pub max_percent: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub thresholds: Thresholds,
    pub ejection: Option<Ejection>,
    /// A successful probe ends an ejection (Envoy's `successful_active_health_check_uneject_host`).
    pub uneject_on_probe_success: bool,
}

/// One target's health, shared by every worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetState {
    pub health: Health,
    /// Consecutive probe successes, counted while unhealthy.
    pub successes: u32,
    /// Consecutive probe failures, counted while healthy.
    pub failures: u32,
    /// Consecutive upstream errors seen by requests.
    pub errors: u32,
    /// Recent ejections: the multiplier of the next ejection's length, before decay.
    pub ejections: u32,
    /// Ejected until this time (host clock, ns); in the past when not ejected.
    pub ejected_until_ns: u64,
}

/// What a probe result changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeEffect {
    /// The new health, when it changed.
    pub became: Option<Health>,
    /// The probe ended an ejection.
    pub unejected: bool,
}

impl TargetState {
    pub const ENCODED_LEN: usize = 25;

    pub const FRESH: TargetState = TargetState {
        health: Health::Unknown,
        successes: 0,
        failures: 0,
        errors: 0,
        ejections: 0,
        ejected_until_ns: 0,
    };

    pub fn is_ejected(&self, now_ns: u64) -> bool {
        now_ns < self.ejected_until_ns
    }

    /// Whether requests may go to this target now.
    pub fn is_routable(&self, now_ns: u64) -> bool {
        self.health != Health::Unhealthy && !self.is_ejected(now_ns)
    }

    /// Applies one probe result.
    pub fn record_probe(&mut self, ok: bool, policy: &Policy, now_ns: u64) -> ProbeEffect {
        let before = self.health;
        let t = &policy.thresholds;
        match (self.health, ok) {
            (Health::Unknown, true) => self.health = Health::Healthy,
            (Health::Unknown, false) => self.health = Health::Unhealthy,
            (Health::Healthy, true) => self.failures = 0,
            (Health::Healthy, false) => {
                self.failures += 1;
                if self.failures >= t.unhealthy {
                    self.health = Health::Unhealthy;
                }
            }
            (Health::Unhealthy, false) => self.successes = 0,
            (Health::Unhealthy, true) => {
                self.successes += 1;
                if self.successes >= t.healthy {
                    self.health = Health::Healthy;
                }
            }
        }
        if self.health != before {
            self.successes = 0;
            self.failures = 0;
        }
        let mut effect = ProbeEffect { became: (self.health != before).then_some(self.health), unejected: false };
        if ok && policy.uneject_on_probe_success && self.is_ejected(now_ns) {
            self.ejected_until_ns = now_ns;
            self.errors = 0;
            effect.unejected = true;
        }
        effect
    }

    /// The ejection multiplier after decay: one less for every `base` spent un-ejected.
    pub fn recent_ejections(&self, ejection: &Ejection, now_ns: u64) -> u32 {
        if self.ejections == 0 || self.is_ejected(now_ns) {
            return self.ejections;
        }
        let quiet = (now_ns - self.ejected_until_ns) / ejection.base_ns.max(1);
        self.ejections.saturating_sub(quiet.min(u32::MAX as u64) as u32)
    }

    /// Applies one request's outcome (`error`: a 5xx, a reset, a connect failure or a timeout).
    /// `may_eject` says whether another ejection fits under `max_percent` (see [`may_eject`]).
    /// Returns true when this outcome ejected the target.
    pub fn record_response(&mut self, error: bool, may_eject: bool, ejection: &Ejection, now_ns: u64) -> bool {
        if !error {
            self.errors = 0;
            return false;
        }
        if self.is_ejected(now_ns) {
            // Requests already under way when the target was ejected: nothing new to learn.
            return false;
        }
        self.errors = self.errors.saturating_add(1);
        if self.errors < ejection.consecutive_errors || !may_eject {
            // Over the threshold but refused: the next error tries again.
            return false;
        }
        let n = self.recent_ejections(ejection, now_ns).saturating_add(1);
        let length = ejection.base_ns.saturating_mul(n as u64).min(ejection.max_ns.max(ejection.base_ns));
        self.ejections = n;
        self.ejected_until_ns = now_ns.saturating_add(length);
        self.errors = 0;
        true
    }

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = match self.health {
            Health::Unknown => 0,
            Health::Healthy => 1,
            Health::Unhealthy => 2,
        };
        out[1..5].copy_from_slice(&self.successes.to_le_bytes());
        out[5..9].copy_from_slice(&self.failures.to_le_bytes());
        out[9..13].copy_from_slice(&self.errors.to_le_bytes());
        out[13..17].copy_from_slice(&self.ejections.to_le_bytes());
        out[17..25].copy_from_slice(&self.ejected_until_ns.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<TargetState> {
        let b: &[u8; Self::ENCODED_LEN] = bytes.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(TargetState {
            health: match b[0] {
                0 => Health::Unknown,
                1 => Health::Healthy,
                2 => Health::Unhealthy,
                _ => return None,
            },
            successes: u32_at(1),
            failures: u32_at(5),
            errors: u32_at(9),
            ejections: u32_at(13),
            ejected_until_ns: u64::from_le_bytes(b[17..25].try_into().ok()?),
        })
    }
}

/// Whether one more of `total` targets may be ejected while `ejected` already are: only while
/// the ejected share is below `max_percent` (so one target may always go when none is out and
/// `max_percent` is above 0, as in Envoy).
pub fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    (ejected as u64) * 100 < (max_percent as u64) * (total as u64)
}

impl meshwork_cas_table::SlotState for TargetState {
    type Config = Policy;
    const LEN: usize = TargetState::ENCODED_LEN;

    fn fresh(_: &Policy, _: u64) -> TargetState {
        TargetState::FRESH
    }

    fn is_idle(&self, policy: &Policy, now_ns: u64) -> bool {
        let decayed = policy.ejection.as_ref().map_or(0, |e| self.recent_ejections(e, now_ns));
        self.health == Health::Unknown
            && self.successes == 0
            && self.failures == 0
            && self.errors == 0
            && decayed == 0
            && !self.is_ejected(now_ns)
    }

    fn encode(&self, out: &mut [u8]) {
        out.copy_from_slice(&TargetState::encode(self));
    }

    fn decode(bytes: &[u8]) -> Option<TargetState> {
        TargetState::decode(bytes)
    }
}

/// The shared probing schedule: when the next round of probes is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRound {
    pub next_due_ns: u64,
}

impl ProbeRound {
    /// Claims the round if it is due. The next round is due one interval after this one was
    /// (keeping the cadence when ticks come a little late), or one interval from now when the
    /// schedule fell behind by more than an interval.
    pub fn claim(&mut self, now_ns: u64, interval_ns: u64) -> bool {
        if now_ns < self.next_due_ns {
            return false;
        }
        let on_cadence = self.next_due_ns.saturating_add(interval_ns);
        self.next_due_ns = if on_cadence > now_ns { on_cadence } else { now_ns.saturating_add(interval_ns) };
        true
    }
}

impl meshwork_cas_table::SlotState for ProbeRound {
    type Config = ();
    const LEN: usize = 8;

    fn fresh(_: &(), _: u64) -> ProbeRound {
        ProbeRound { next_due_ns: 0 }
    }

    /// The round's slot is never given to another key: its table holds only the round.
    fn is_idle(&self, _: &(), _: u64) -> bool {
        false
    }

    fn encode(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.next_due_ns.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<ProbeRound> {
        Some(ProbeRound { next_due_ns: u64::from_le_bytes(bytes.try_into().ok()?) })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn policy(healthy: u32, unhealthy: u32) -> Policy {
        Policy {
            thresholds: Thresholds { healthy, unhealthy },
            ejection: Some(ejection(3, 100)),
            uneject_on_probe_success: false,
        }
    }

    fn ejection(consecutive_errors: u32, max_percent: u32) -> Ejection {
        Ejection { consecutive_errors, base_ns: SEC, max_ns: 3 * SEC, max_percent }
    }

    #[test]
    fn the_first_probe_decides_then_thresholds_apply() {
        let p = policy(2, 3);
        let mut s = TargetState::FRESH;
        assert!(s.is_routable(0), "unknown targets take traffic");
        assert_eq!(s.record_probe(false, &p, 0).became, Some(Health::Unhealthy));
        assert!(!s.is_routable(0));
        assert_eq!(s.record_probe(true, &p, 0).became, None, "one success of two");
        assert_eq!(s.record_probe(false, &p, 0).became, None, "a failure restarts the count");
        assert_eq!(s.record_probe(true, &p, 0).became, None);
        assert_eq!(s.record_probe(true, &p, 0).became, Some(Health::Healthy));
        for _ in 0..2 {
            assert_eq!(s.record_probe(false, &p, 0).became, None);
        }
        assert_eq!(s.record_probe(true, &p, 0).became, None, "a success resets the failures");
        for _ in 0..2 {
            assert_eq!(s.record_probe(false, &p, 0).became, None);
        }
        assert_eq!(s.record_probe(false, &p, 0).became, Some(Health::Unhealthy));

        let mut fresh = TargetState::FRESH;
        assert_eq!(fresh.record_probe(true, &p, 0).became, Some(Health::Healthy));
    }

    #[test]
    fn consecutive_errors_eject_for_growing_capped_times() {
        let e = ejection(3, 100);
        let mut s = TargetState::FRESH;
        assert!(!s.record_response(true, true, &e, 0));
        assert!(!s.record_response(true, true, &e, 0));
        assert!(!s.record_response(false, true, &e, 0), "a success breaks the run");
        assert!(!s.record_response(true, true, &e, 0));
        assert!(!s.record_response(true, true, &e, 0));
        assert!(s.record_response(true, true, &e, 10));
        assert!(s.is_ejected(10) && !s.is_routable(SEC));
        assert!(s.is_routable(10 + SEC), "the first ejection lasts base");
        assert!(!s.record_response(true, true, &e, 20), "errors while ejected are not counted");

        // Ejected again at once: twice as long, then three times, then capped at max (3 s).
        let mut now = 10 + SEC;
        for expected in [2 * SEC, 3 * SEC, 3 * SEC] {
            for _ in 0..3 {
                s.record_response(true, true, &e, now);
            }
            assert_eq!(s.ejected_until_ns - now, expected);
            now = s.ejected_until_ns;
        }
        // Quiet time lowers the multiplier: after 2 s un-ejected, 4 - 2 = 2, so the next is 3 s (capped).
        assert_eq!(s.recent_ejections(&e, now + 2 * SEC), 2);
        assert_eq!(s.recent_ejections(&e, now + 10 * SEC), 0);
    }

    #[test]
    fn ejection_percent_is_respected() {
        assert!(may_eject(0, 2, 10), "one target may always go");
        assert!(!may_eject(1, 2, 10));
        assert!(may_eject(1, 2, 51));
        assert!(!may_eject(0, 2, 0), "0% ejects nothing");
        assert!(may_eject(4, 10, 50) && !may_eject(5, 10, 50));

        let e = ejection(1, 10);
        let mut s = TargetState::FRESH;
        assert!(!s.record_response(true, false, &e, 0), "refused");
        assert!(s.record_response(true, true, &e, 0), "the next error tries again");
    }

    #[test]
    fn a_successful_probe_can_end_an_ejection() {
        let mut p = policy(1, 1);
        let e = p.ejection.unwrap();
        let mut s = TargetState::FRESH;
        for _ in 0..3 {
            s.record_response(true, true, &e, 0);
        }
        assert!(s.is_ejected(1));
        assert!(!s.record_probe(true, &p, 1).unejected, "off by default");
        p.uneject_on_probe_success = true;
        assert!(s.record_probe(true, &p, 1).unejected);
        assert!(s.is_routable(1));
        assert!(!s.record_probe(false, &p, 1).unejected);
    }

    #[test]
    fn encoding_round_trips() {
        let s = TargetState {
            health: Health::Unhealthy,
            successes: 1,
            failures: 2,
            errors: 3,
            ejections: 4,
            ejected_until_ns: u64::MAX - 5,
        };
        assert_eq!(TargetState::decode(&s.encode()), Some(s));
        let mut bad = s.encode();
        bad[0] = 9;
        assert_eq!(TargetState::decode(&bad), None);
        assert_eq!(TargetState::decode(&[0; 24]), None);
    }

    #[test]
    fn rounds_keep_their_cadence() {
        let mut r = ProbeRound { next_due_ns: 0 };
        assert!(r.claim(1_000, 100));
        assert_eq!(r.next_due_ns, 1_100);
        assert!(!r.claim(1_099, 100));
        assert!(r.claim(1_130, 100), "a late tick still claims");
        assert_eq!(r.next_due_ns, 1_200, "and the cadence holds");
        assert!(r.claim(1_500, 100));
        assert_eq!(r.next_due_ns, 1_600, "fallen behind: restart from now");
    }

    proptest! {
        /// Health changes only after `unhealthy` failures / `healthy` successes in a row (or on
        /// the first probe), and a run of that many always changes it.
        #[test]
        fn thresholds_govern_every_change(
            healthy in 1u32..5,
            unhealthy in 1u32..5,
            results in proptest::collection::vec(any::<bool>(), 1..80),
        ) {
            let p = policy(healthy, unhealthy);
            let mut s = TargetState::FRESH;
            let mut run = (true, 0u32);
            for (i, ok) in results.iter().copied().enumerate() {
                run = if run.0 == ok { (ok, run.1 + 1) } else { (ok, 1) };
                let before = s.health;
                let became = s.record_probe(ok, &p, 0).became;
                match became {
                    None => {
                        prop_assert_eq!(s.health, before);
                        prop_assert!(i > 0, "the first probe always decides");
                    }
                    Some(Health::Healthy) => prop_assert!(ok && (i == 0 || run.1 >= healthy)),
                    Some(Health::Unhealthy) => prop_assert!(!ok && (i == 0 || run.1 >= unhealthy)),
                    Some(Health::Unknown) => prop_assert!(false, "never back to unknown"),
                }
                if i > 0 && ok && run.1 >= healthy { prop_assert_eq!(s.health, Health::Healthy); }
                if i > 0 && !ok && run.1 >= unhealthy { prop_assert_eq!(s.health, Health::Unhealthy); }
            }
        }

        /// Every ejection lasts between base and max, only after `consecutive_errors` errors in a
        /// row, and never while refused.
        #[test]
        fn ejections_are_bounded(
            consecutive in 1u32..5,
            steps in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u64..2 * SEC), 1..200),
        ) {
            let e = Ejection { consecutive_errors: consecutive, base_ns: SEC / 2, max_ns: 2 * SEC, max_percent: 50 };
            let mut s = TargetState::FRESH;
            let mut now = 0u64;
            let mut run = 0u32;
            for (error, allowed, dt) in steps {
                now += dt;
                let was_ejected = s.is_ejected(now);
                if error && !was_ejected { run += 1 } else if !error { run = 0 }
                let ejected = s.record_response(error, allowed, &e, now);
                if ejected {
                    prop_assert!(allowed && !was_ejected && run >= consecutive);
                    let length = s.ejected_until_ns - now;
                    prop_assert!((e.base_ns..=e.max_ns).contains(&length), "{length}");
                    run = 0;
                }
            }
        }

        /// Targets ejected one after another never exceed the allowed share (beyond the one
        /// that may always go).
        #[test]
        fn ejected_share_is_capped(total in 1usize..20, max_percent in 0u32..=100) {
            let mut ejected = 0;
            for _ in 0..total {
                if may_eject(ejected, total, max_percent) { ejected += 1; }
            }
            prop_assert!(ejected as u64 * 100 < max_percent as u64 * total as u64 + 100);
            prop_assert!(ejected == 0 || (ejected as u64 - 1) * 100 < max_percent as u64 * total as u64);
        }

        /// However workers' ticks interleave, at most one round is claimed per interval (plus the
        /// first), and with a tick every `tick` some worker claims within interval + tick.
        #[test]
        fn rounds_are_claimed_once_per_interval(
            interval in 10u64..1000,
            ticks in proptest::collection::vec(1u64..50, 1..300),
        ) {
            let mut round = ProbeRound { next_due_ns: 0 };
            let mut now = 1_000_000u64;
            let start = now;
            let mut claims: Vec<u64> = Vec::new();
            for dt in ticks.iter().copied() {
                now += dt;
                if round.claim(now, interval) { claims.push(now); }
            }
            let elapsed = now - start;
            prop_assert!(claims.len() as u64 <= elapsed / interval + 1);
            for w in claims.windows(2) {
                prop_assert!(w[1] - w[0] < interval + 50, "gap {} with ticks under 50", w[1] - w[0]);
            }
        }
    }

    mod shared {
        extern crate std;
        use super::super::*;
        use meshwork_cas_table::mem::{Interfering, MemStore};
        use meshwork_cas_table::{CasStore, Outcome, update};
        use proptest::prelude::*;

        fn claim(store: &mut impl CasStore, now: u64) -> bool {
            matches!(
                update(store, 1, 1, b"round", &(), now, |r: &mut ProbeRound| r.claim(now, 100)),
                Outcome::Done(true)
            )
        }

        proptest! {
            /// Workers ticking at the same moment claim a due round exactly once between them.
            #[test]
            fn one_claim_per_round_between_racing_workers(schedule in proptest::collection::vec(any::<bool>(), 0..40)) {
                // Between a read and its write, another worker may tick at the same moment.
                let mut store = Interfering::new(MemStore::created(1), &schedule, |s| claim(s, 5_000));
                let mine = (0..5).filter(|_| claim(&mut store, 5_000)).count() as u64;
                prop_assert_eq!(mine + store.rival_successes, 1);
            }
        }

        #[test]
        fn target_states_share_a_table() {
            let p = super::policy(1, 1);
            let mut store = MemStore::created(4);
            let probe = |store: &mut MemStore, key: &[u8], ok: bool| {
                update(store, 4, 4, key, &p, 0, |s: &mut TargetState| s.record_probe(ok, &p, 0))
            };
            assert!(matches!(probe(&mut store, b"a", false), Outcome::Done(e) if e.became == Some(Health::Unhealthy)));
            assert!(matches!(probe(&mut store, b"b", true), Outcome::Done(e) if e.became == Some(Health::Healthy)));
            let a: TargetState = meshwork_cas_table::read(&mut store, 4, 4, b"a", &p, 0).unwrap();
            assert_eq!(a.health, Health::Unhealthy);
        }
    }
}
