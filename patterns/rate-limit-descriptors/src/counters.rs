//! Fixed-window counters in memory: the service's default store. Each counter behaves like a
//! Redis key under `INCRBY` + `EXPIRE`, so both stores give the same answers.

use alloc::collections::BTreeMap;
use alloc::string::String;

const SWEEP_EVERY_NS: u64 = 1_000_000_000;

#[derive(Debug, Default)]
pub struct Counters {
    /// key → (count, expires at ns).
    counts: BTreeMap<String, (u64, u64)>,
    next_sweep_ns: u64,
}

impl Counters {
    /// Adds `hits` to `key` and returns its new count. A counter that has expired starts
    /// again from zero; every add keeps the counter alive for `ttl_s` more seconds. Expired
    /// counters are dropped at most once a second of clock time, so memory follows the
    /// number of live windows, not the history.
    pub fn add(&mut self, key: &str, hits: u64, ttl_s: u64, now_ns: u64) -> u64 {
        if now_ns >= self.next_sweep_ns {
            self.counts.retain(|_, (_, expires)| *expires > now_ns);
            self.next_sweep_ns = now_ns.saturating_add(SWEEP_EVERY_NS);
        }
        let expires = now_ns.saturating_add(ttl_s.saturating_mul(1_000_000_000));
        match self.counts.get_mut(key) {
            Some((count, at)) if *at > now_ns => {
                *count = count.saturating_add(hits);
                *at = expires;
                *count
            }
            Some(slot) => {
                *slot = (hits, expires);
                hits
            }
            None => {
                self.counts.insert(key.into(), (hits, expires));
                hits
            }
        }
    }

    /// Counters held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn counts_until_expiry_then_restarts() {
        let mut c = Counters::default();
        assert_eq!(c.add("k", 1, 60, 0), 1);
        assert_eq!(c.add("k", 2, 60, 10 * S), 3);
        assert_eq!(c.add("k", 1, 60, 70 * S - 1), 4);
        assert_eq!(c.add("k", 1, 60, 131 * S), 1);
    }

    #[test]
    fn expired_counters_are_dropped() {
        let mut c = Counters::default();
        for i in 0..100u64 {
            c.add(&alloc::format!("k{i}"), 1, 1, i * S);
        }
        // Each sweep keeps only the counters still alive.
        assert!(c.len() <= 2, "{}", c.len());
    }
}
