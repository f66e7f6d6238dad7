//! Retry decisions with an injected clock: which outcomes are retried, how long to back off, and
//! a retry budget that keeps retries from multiplying load on an upstream that is already
//! failing (retries may be at most `ratio` of requests over a window, plus a small floor per
//! second so that low-traffic routes can still retry at all — the budget of linkerd and
//! Finagle).
#![no_std]

use meshwork_cas_table::SlotState;

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Status(u16),
    ConnectFailure,
    /// Reset, or no response for another reason.
    Reset,
    /// The per-try timeout passed.
    Timeout,
}

/// Which outcomes are worth another try (Envoy's `retry_on` names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx, and connect failures, resets and timeouts.
    pub server_error: bool,
    /// 502, 503, 504, and connect failures, resets and timeouts.
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    /// 409.
    pub retriable_4xx: bool,
    /// Further statuses, e.g. 429.
    pub statuses: [u16; 8],
}

impl RetryOn {
    pub fn retries(&self, attempt: Attempt) -> bool {
        match attempt {
            Attempt::Status(s) => {
                (self.server_error && (500..600).contains(&s))
                    || (self.gateway_error && matches!(s, 502..=504))
                    || (self.retriable_4xx && s == 409)
                    || (s != 0 && self.statuses.contains(&s))
            }
            Attempt::ConnectFailure => self.connect_failure || self.server_error || self.gateway_error,
            Attempt::Reset => self.reset || self.server_error || self.gateway_error,
            Attempt::Timeout => self.server_error || self.gateway_error || self.reset,
        }
    }

    /// Adds a status; false when all places are taken.
    pub fn add_status(&mut self, status: u16) -> bool {
        match self.statuses.iter_mut().find(|s| **s == 0) {
            Some(slot) => {
                *slot = status;
                true
            }
            None => false,
        }
    }
}

/// Methods retried without asking (RFC 9110's idempotent methods).
pub fn is_idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE")
}

/// Fully jittered exponential back-off before retry `n` (1-based): `unit` (uniform in [0, 1))
/// of min(base * (2^n - 1), max), as Envoy's router.
pub fn backoff_ns(n: u32, base_ns: u64, max_ns: u64, unit: f64) -> u64 {
    let ceiling = base_ns.saturating_mul((1u64 << n.min(32)) - 1).min(max_ns);
    (ceiling as f64 * unit.clamp(0.0, 1.0)) as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Retries allowed per thousand requests in the window.
    pub per_mille: u32,
    /// Retries allowed per second regardless of the ratio.
    pub min_per_second: u32,
    /// Requests and retries are counted in two buckets of half this.
    pub window_ns: u64,
}

const SECOND: u64 = 1_000_000_000;

/// The budget's counts for one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    bucket_start_ns: u64,
    /// (requests, retries) in the current and previous bucket.
    current: (u32, u32),
    previous: (u32, u32),
    second_start_ns: u64,
    retries_this_second: u32,
}

impl Budget {
    pub fn new(now_ns: u64) -> Budget {
        Budget { bucket_start_ns: now_ns, second_start_ns: now_ns, ..Budget::default() }
    }

    fn roll(&mut self, config: &BudgetConfig, now_ns: u64) {
        let bucket = (config.window_ns / 2).max(1);
        let elapsed = now_ns.saturating_sub(self.bucket_start_ns);
        if elapsed >= bucket {
            self.previous = if elapsed < 2 * bucket { self.current } else { (0, 0) };
            self.current = (0, 0);
            self.bucket_start_ns = now_ns - elapsed % bucket;
        }
        let in_second = now_ns.saturating_sub(self.second_start_ns);
        if in_second >= SECOND {
            self.retries_this_second = 0;
            self.second_start_ns = now_ns - in_second % SECOND;
        }
    }

    /// Counts an original request (not a retry).
    pub fn record_request(&mut self, config: &BudgetConfig, now_ns: u64) {
        self.record_requests(config, now_ns, 1);
    }

    /// Counts `n` original requests at once (a worker's batch: counting late only makes the
    /// budget stricter for a moment, never looser).
    pub fn record_requests(&mut self, config: &BudgetConfig, now_ns: u64, n: u32) {
        self.roll(config, now_ns);
        self.current.0 = self.current.0.saturating_add(n);
    }

    /// Whether a retry would be allowed now, without taking it.
    pub fn has_room(&self, config: &BudgetConfig, now_ns: u64) -> bool {
        let mut probe = *self;
        probe.try_retry(config, now_ns)
    }

    /// Counts retries that happened without asking (a host's router retried on its own).
    pub fn record_retries(&mut self, config: &BudgetConfig, now_ns: u64, n: u32) {
        self.roll(config, now_ns);
        self.current.1 = self.current.1.saturating_add(n);
        self.retries_this_second = self.retries_this_second.saturating_add(n);
    }

    /// Takes a retry from the budget if it has one.
    pub fn try_retry(&mut self, config: &BudgetConfig, now_ns: u64) -> bool {
        self.roll(config, now_ns);
        let requests = self.current.0 as u64 + self.previous.0 as u64;
        let retries = self.current.1 as u64 + self.previous.1 as u64;
        let by_ratio = (retries + 1) * 1000 <= requests * config.per_mille as u64;
        let by_floor = self.retries_this_second < config.min_per_second;
        if !(by_ratio || by_floor) {
            return false;
        }
        self.current.1 = self.current.1.saturating_add(1);
        self.retries_this_second = self.retries_this_second.saturating_add(1);
        true
    }
}

impl SlotState for Budget {
    type Config = BudgetConfig;
    const LEN: usize = 8 + 16 + 8 + 4;

    fn fresh(_: &BudgetConfig, now_ns: u64) -> Budget {
        Budget::new(now_ns)
    }

    fn is_idle(&self, config: &BudgetConfig, now_ns: u64) -> bool {
        let mut rolled = *self;
        rolled.roll(config, now_ns);
        rolled.current == (0, 0) && rolled.previous == (0, 0) && rolled.retries_this_second == 0
    }

    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.bucket_start_ns.to_le_bytes());
        out[8..12].copy_from_slice(&self.current.0.to_le_bytes());
        out[12..16].copy_from_slice(&self.current.1.to_le_bytes());
        out[16..20].copy_from_slice(&self.previous.0.to_le_bytes());
        out[20..24].copy_from_slice(&self.previous.1.to_le_bytes());
        out[24..32].copy_from_slice(&self.second_start_ns.to_le_bytes());
        out[32..36].copy_from_slice(&self.retries_this_second.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Budget> {
        let u32_at = |i: usize| Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?));
        let u64_at = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
        Some(Budget {
            bucket_start_ns: u64_at(0)?,
            current: (u32_at(8)?, u32_at(12)?),
            previous: (u32_at(16)?, u32_at(20)?),
            second_start_ns: u64_at(24)?,
            retries_this_second: u32_at(32)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn retry_on_conditions() {
        let five = RetryOn { server_error: true, ..RetryOn::default() };
        assert!(five.retries(Attempt::Status(500)) && five.retries(Attempt::Reset) && five.retries(Attempt::Timeout));
        assert!(!five.retries(Attempt::Status(404)) && !five.retries(Attempt::Status(200)));
        let gw = RetryOn { gateway_error: true, ..RetryOn::default() };
        assert!(gw.retries(Attempt::Status(503)) && !gw.retries(Attempt::Status(500)));
        let cf = RetryOn { connect_failure: true, ..RetryOn::default() };
        assert!(
            cf.retries(Attempt::ConnectFailure) && !cf.retries(Attempt::Reset) && !cf.retries(Attempt::Status(503))
        );
        let mut codes = RetryOn::default();
        assert!(codes.add_status(429));
        assert!(codes.retries(Attempt::Status(429)) && !codes.retries(Attempt::Status(0)));
        assert!(is_idempotent(b"GET") && !is_idempotent(b"POST") && !is_idempotent(b"PATCH"));
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let (base, max) = (25 * MS, 250 * MS);
        assert_eq!(backoff_ns(1, base, max, 1.0), 25 * MS);
        assert_eq!(backoff_ns(2, base, max, 1.0), 75 * MS);
        assert_eq!(backoff_ns(3, base, max, 1.0), 175 * MS);
        assert_eq!(backoff_ns(4, base, max, 1.0), 250 * MS);
        assert_eq!(backoff_ns(40, base, max, 0.5), 125 * MS);
        assert_eq!(backoff_ns(1, base, max, 0.0), 0);
    }

    #[test]
    fn the_budget_allows_its_ratio_plus_the_floor() {
        let c = BudgetConfig { per_mille: 200, min_per_second: 2, window_ns: 10_000 * MS };
        let mut b = Budget::new(0);
        for _ in 0..100 {
            b.record_request(&c, 0);
        }
        let allowed = (0..100).filter(|_| b.try_retry(&c, 0)).count();
        assert_eq!(allowed, 20, "20% of 100; the floor is part of it");
        let mut b = Budget::new(0);
        assert!(b.try_retry(&c, 0) && b.try_retry(&c, 0), "two a second with no traffic");
        assert!(!b.try_retry(&c, 0));
        assert!(b.try_retry(&c, SECOND), "the next second");
    }

    proptest! {
        /// Over any run, retries never exceed ratio × requests in the window plus the floor for
        /// each second: the budget's promise.
        #[test]
        fn retries_never_exceed_ratio_plus_floor(
            steps in proptest::collection::vec((0u64..50, any::<bool>()), 1..500),
            per_mille in 0u32..1000, floor in 0u32..5,
        ) {
            let c = BudgetConfig { per_mille, min_per_second: floor, window_ns: 1000 * MS };
            let mut b = Budget::new(0);
            let mut now = 0;
            let (mut requests, mut retries) = (0u64, 0u64);
            for (wait_ms, is_retry) in steps {
                now += wait_ms * MS;
                if is_retry {
                    if b.try_retry(&c, now) { retries += 1; }
                } else {
                    b.record_request(&c, now);
                    requests += 1;
                }
                let seconds = now / SECOND + 1;
                prop_assert!(
                    retries * 1000 <= requests * per_mille as u64 + (floor as u64 * seconds) * 1000,
                    "{} retries for {} requests over {} s", retries, requests, seconds
                );
                let mut bytes = [0u8; Budget::LEN];
                b.encode(&mut bytes);
                prop_assert_eq!(Budget::decode(&bytes), Some(b));
            }
        }
    }
}
