//! Request deadlines with an injected clock: the timeout a request gets (the route's, or less
//! when the client asks for less, or more up to a cap), what is left of it at any moment, and
//! the timeout headers clients send (`grpc-timeout`, milliseconds headers).
#![no_std]

/// How a request's timeout is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The route's timeout; `None`: no limit unless the client sets one.
    pub route_ns: Option<u64>,
    /// The most a client may ask for; `None`: clients cannot change the timeout.
    pub max_client_ns: Option<u64>,
}

impl Policy {
    /// The timeout for a request whose client asked for `client_ns`.
    pub fn timeout(&self, client_ns: Option<u64>) -> Option<u64> {
        match (client_ns, self.max_client_ns) {
            (Some(asked), Some(max)) => Some(asked.min(max)),
            _ => self.route_ns,
        }
    }
}

/// When a request must be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Deadline {
    pub fn new(now_ns: u64, timeout_ns: u64) -> Deadline {
        Deadline { start_ns: now_ns, end_ns: now_ns.saturating_add(timeout_ns) }
    }

    pub fn remaining_ns(&self, now_ns: u64) -> u64 {
        self.end_ns.saturating_sub(now_ns)
    }

    pub fn expired(&self, now_ns: u64) -> bool {
        now_ns >= self.end_ns
    }

    /// The time one try may take: the per-try limit, but never past the deadline.
    pub fn for_try(&self, now_ns: u64, per_try_ns: Option<u64>) -> u64 {
        let left = self.remaining_ns(now_ns);
        per_try_ns.map_or(left, |t| t.min(left))
    }

    /// Whether an answer that came at `now_ns` came because time ran out (a host reports a
    /// timed-out callout as a failure or a 504 without saying which).
    pub fn ran_out(&self, now_ns: u64) -> bool {
        // Hosts fire timers at millisecond granularity.
        now_ns.saturating_add(1_000_000) >= self.end_ns
    }
}

/// Parses gRPC's `grpc-timeout` (`<at most 8 digits><H|M|S|m|u|n>`) into nanoseconds.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<u64> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = digits.iter().fold(0, |n, d| n * 10 + (d - b'0') as u64);
    let scale: u64 = match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    };
    Some(n.saturating_mul(scale))
}

/// Parses a header of whole milliseconds (`x-envoy-upstream-rq-timeout-ms` style).
pub fn parse_millis(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + (d - b'0') as u64).saturating_mul(1_000_000))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn clients_may_shorten_or_lengthen_up_to_the_cap() {
        let p = Policy { route_ns: Some(2000 * MS), max_client_ns: Some(5000 * MS) };
        assert_eq!(p.timeout(None), Some(2000 * MS));
        assert_eq!(p.timeout(Some(100 * MS)), Some(100 * MS));
        assert_eq!(p.timeout(Some(60_000 * MS)), Some(5000 * MS));
        let fixed = Policy { route_ns: Some(2000 * MS), max_client_ns: None };
        assert_eq!(fixed.timeout(Some(100 * MS)), Some(2000 * MS), "clients cannot change it");
    }

    #[test]
    fn tries_never_outlive_the_deadline() {
        let d = Deadline::new(1000, 500 * MS);
        assert_eq!(d.for_try(1000, Some(200 * MS)), 200 * MS);
        assert_eq!(d.for_try(1000 + 400 * MS, Some(200 * MS)), 100 * MS);
        assert_eq!(d.for_try(1000 + 600 * MS, None), 0);
        assert!(d.expired(1000 + 500 * MS) && !d.expired(1000 + 499 * MS));
        assert!(d.ran_out(1000 + 499 * MS + 500) && !d.ran_out(1000 + 100 * MS));
    }

    #[test]
    fn grpc_and_millisecond_headers() {
        assert_eq!(parse_grpc_timeout(b"250m"), Some(250 * MS));
        assert_eq!(parse_grpc_timeout(b"2S"), Some(2000 * MS));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(3_600_000 * MS));
        assert_eq!(parse_grpc_timeout(b"100u"), Some(100_000));
        for bad in [&b""[..], b"m", b"123456789m", b"12x", b"-1S", b"1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(parse_millis(b"1500"), Some(1500 * MS));
        assert_eq!(parse_millis(b"15s"), None);
    }

    proptest! {
        #[test]
        fn a_try_fits_in_what_is_left(start in 0u64..1 << 40, timeout in 0u64..1 << 40, at in 0u64..1 << 41, per_try in proptest::option::of(0u64..1 << 40)) {
            let d = Deadline::new(start, timeout);
            let now = start + at;
            let t = d.for_try(now, per_try);
            prop_assert!(now.saturating_add(t) <= d.end_ns.max(now));
            if let Some(p) = per_try { prop_assert!(t <= p); }
        }

        #[test]
        fn grpc_timeouts_round_trip(n in 0u64..100_000_000, unit in 0usize..6) {
            let (u, scale) = [(b'H', 3_600_000_000_000u64), (b'M', 60_000_000_000), (b'S', 1_000_000_000), (b'm', MS), (b'u', 1000), (b'n', 1)][unit];
            let text = std::format!("{n}{}", u as char);
            prop_assert_eq!(parse_grpc_timeout(text.as_bytes()), Some(n.saturating_mul(scale)));
        }
    }
}
