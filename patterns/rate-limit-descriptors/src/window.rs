//! Fixed windows: which window a clock reading falls in, when it resets, and the name of the
//! counter a descriptor's hits in that window are kept under.
//!
//! Windows are aligned to the Unix epoch in whole seconds (a minute window starts at a
//! multiple of 60 s), as in envoyproxy/ratelimit, so every service instance sharing a store
//! agrees on them without coordination.

use core::fmt::Write;

use alloc::string::String;

use crate::descriptor::Descriptor;

const NS_PER_S: u64 = 1_000_000_000;

/// The unit a limit counts requests per.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    pub const fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
        }
    }

    /// The name in the limits file (any case).
    pub fn parse(name: &str) -> Option<Unit> {
        [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day].into_iter().find(|u| u.name().eq_ignore_ascii_case(name))
    }

    pub const fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
        }
    }

    /// The enum name in the rate-limit service API (`RateLimitResponse.RateLimit.Unit`).
    pub const fn api_name(self) -> &'static str {
        match self {
            Unit::Second => "SECOND",
            Unit::Minute => "MINUTE",
            Unit::Hour => "HOUR",
            Unit::Day => "DAY",
        }
    }
}

/// The window a clock reading falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Seconds since the epoch at which the window opened.
    pub start_s: u64,
    pub unit: Unit,
}

impl Window {
    pub fn at(now_ns: u64, unit: Unit) -> Window {
        let now_s = now_ns / NS_PER_S;
        Window { start_s: now_s - now_s % unit.seconds(), unit }
    }

    /// Nanoseconds since the epoch at which the next window opens.
    pub fn end_ns(&self) -> u64 {
        (self.start_s + self.unit.seconds()).saturating_mul(NS_PER_S)
    }

    /// Time left in the window from `now_ns` (in (0, unit] for a `now_ns` inside it).
    pub fn reset_after_ns(&self, now_ns: u64) -> u64 {
        self.end_ns().saturating_sub(now_ns)
    }

    /// The counter for `descriptor`'s hits in this window under `domain`:
    /// `domain_key1_value1_key2_value2_<window start>`, envoyproxy/ratelimit's layout. `_` and
    /// `%` inside a domain, key or value are written `%5F` and `%25`, so two different
    /// descriptors never share a counter (without the escape, key `a_b` would meet key `a` with
    /// value `b`); names without those characters are exactly envoyproxy/ratelimit's.
    pub fn counter_key(&self, domain: &str, descriptor: &Descriptor) -> String {
        let mut key = String::with_capacity(domain.len() + 16 + descriptor.entries.len() * 16);
        push_escaped(&mut key, domain);
        for entry in &descriptor.entries {
            key.push('_');
            push_escaped(&mut key, &entry.key);
            key.push('_');
            push_escaped(&mut key, &entry.value);
        }
        let _ = write!(key, "_{}", self.start_s);
        key
    }
}

fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '_' => out.push_str("%5F"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn windows_align_to_the_epoch() {
        let t = 3_725 * NS_PER_S + 250_000_000; // 01:02:05.25
        assert_eq!(Window::at(t, Unit::Second).start_s, 3725);
        assert_eq!(Window::at(t, Unit::Minute).start_s, 3720);
        assert_eq!(Window::at(t, Unit::Hour).start_s, 3600);
        assert_eq!(Window::at(t, Unit::Day).start_s, 0);
        assert_eq!(Window::at(t, Unit::Second).reset_after_ns(t), 750_000_000);
        assert_eq!(Window::at(t, Unit::Minute).reset_after_ns(t), 54_750_000_000);
    }

    #[test]
    fn counter_keys_follow_envoyproxy_ratelimit() {
        let w = Window { start_s: 1_700_000_000, unit: Unit::Minute };
        let d = Descriptor::new([("database", "users"), ("user", "alice")]);
        assert_eq!(w.counter_key("mongo", &d), "mongo_database_users_user_alice_1700000000");
        let a = Descriptor::new([("a_b", "c")]);
        let b = Descriptor::new([("a", "b_c")]);
        assert_ne!(w.counter_key("d", &a), w.counter_key("d", &b));
        assert_eq!(w.counter_key("d", &a), "d_a%5Fb_c_1700000000");
    }

    #[test]
    fn units_parse_in_any_case() {
        assert_eq!(Unit::parse("MINUTE"), Some(Unit::Minute));
        assert_eq!(Unit::parse("second"), Some(Unit::Second));
        assert_eq!(Unit::parse("fortnight"), None);
    }

    fn unit() -> impl Strategy<Value = Unit> {
        prop_oneof![Just(Unit::Second), Just(Unit::Minute), Just(Unit::Hour), Just(Unit::Day)]
    }

    proptest! {
        #[test]
        fn a_reading_lies_in_its_window(now in 0u64..4_000_000_000 * NS_PER_S, unit in unit()) {
            let w = Window::at(now, unit);
            prop_assert!(w.start_s * NS_PER_S <= now);
            prop_assert!(now < w.end_ns());
            prop_assert_eq!(w.start_s % unit.seconds(), 0);
            let reset = w.reset_after_ns(now);
            prop_assert!(reset > 0 && reset <= unit.seconds() * NS_PER_S);
        }

        #[test]
        fn distinct_descriptors_get_distinct_counters(
            a in proptest::collection::vec(("[a_%]{0,3}", "[a_%]{0,3}"), 1..3),
            b in proptest::collection::vec(("[a_%]{0,3}", "[a_%]{0,3}"), 1..3),
        ) {
            let w = Window { start_s: 60, unit: Unit::Minute };
            let (da, db) = (Descriptor::new(a), Descriptor::new(b));
            prop_assert_eq!(da == db, w.counter_key("d_%", &da) == w.counter_key("d_%", &db));
        }
    }
}
