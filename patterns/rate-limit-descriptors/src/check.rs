//! One call to the rate-limit service, decided: which counters a request touches, and the
//! answer once the store has added the hits (`ShouldRateLimit` of Envoy's RLS API).
//!
//! The store (memory or Redis) sits between [`Check::new`] and [`Check::finish`], so the
//! decision is the same whichever store counts, and the service can await a remote one.

use alloc::borrow::ToOwned;
use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;

use crate::descriptor::Descriptor;
use crate::limits::{Limit, Limits, Rule};
use crate::window::{Unit, Window};

/// `RateLimitRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Request {
    #[cfg_attr(feature = "serde", serde(default))]
    pub domain: String,
    #[cfg_attr(feature = "serde", serde(default))]
    pub descriptors: Vec<Descriptor>,
    /// Hits this request counts for; 0 means 1 (proto3's default).
    #[cfg_attr(feature = "serde", serde(default, alias = "hitsAddend"))]
    pub hits_addend: u32,
}

/// Why a request to the service is refused (HTTP 400), naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    EmptyDomain,
    NoDescriptors,
    NoEntries { descriptor: usize },
    EmptyKey { descriptor: usize, entry: usize },
}

impl core::fmt::Display for RequestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RequestError::EmptyDomain => f.write_str("domain: must not be empty"),
            RequestError::NoDescriptors => f.write_str("descriptors: must not be empty"),
            RequestError::NoEntries { descriptor } => write!(f, "descriptors[{descriptor}].entries: must not be empty"),
            RequestError::EmptyKey { descriptor, entry } => {
                write!(f, "descriptors[{descriptor}].entries[{entry}].key: must not be empty")
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Ok,
    OverLimit,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    /// The limit that applied; `None` when none did (no match, unlimited, replaced).
    pub current_limit: Option<CurrentLimit>,
    pub limit_remaining: u32,
    pub duration_until_reset_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentLimit {
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub name: Option<String>,
}

/// `RateLimitResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub overall_code: Code,
    pub statuses: Vec<Status>,
}

/// A counter to add hits to, and how long it must live (its window's length: a counter
/// created at the start of a window lasts to its end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Increment {
    pub key: String,
    pub hits: u64,
    pub ttl_s: u64,
}

enum Slot<'a> {
    /// No limit: no match, unlimited, or replaced by another matched limit.
    Free,
    Counted {
        limit: &'a Limit,
        requests_per_unit: u32,
        window: Window,
        key: String,
    },
}

/// A request resolved against the limits, waiting for its counts.
pub struct Check<'a> {
    slots: Vec<Slot<'a>>,
    hits: u64,
    now_ns: u64,
}

impl<'a> Check<'a> {
    pub fn new(limits: &'a Limits, request: &Request, now_ns: u64) -> Result<Check<'a>, RequestError> {
        if request.domain.is_empty() {
            return Err(RequestError::EmptyDomain);
        }
        if request.descriptors.is_empty() {
            return Err(RequestError::NoDescriptors);
        }
        for (descriptor, d) in request.descriptors.iter().enumerate() {
            if d.entries.is_empty() {
                return Err(RequestError::NoEntries { descriptor });
            }
            if let Some(entry) = d.entries.iter().position(|e| e.key.is_empty()) {
                return Err(RequestError::EmptyKey { descriptor, entry });
            }
        }
        let matched: Vec<Option<&Limit>> =
            request.descriptors.iter().map(|d| limits.limit_for(&request.domain, d)).collect();
        // A limit that another matched limit replaces does not apply to this request.
        let replaced: BTreeSet<&str> =
            matched.iter().flatten().flat_map(|l| l.replaces.iter().map(String::as_str)).collect();
        let slots = matched
            .into_iter()
            .zip(&request.descriptors)
            .map(|(limit, descriptor)| match limit {
                Some(limit) if !limit.name.as_deref().is_some_and(|n| replaced.contains(n)) => match limit.rule {
                    Rule::Unlimited => Slot::Free,
                    Rule::PerUnit { requests_per_unit, unit } => {
                        let window = Window::at(now_ns, unit);
                        let key = window.counter_key(&request.domain, descriptor);
                        Slot::Counted { limit, requests_per_unit, window, key }
                    }
                },
                _ => Slot::Free,
            })
            .collect();
        Ok(Check { slots, hits: u64::from(request.hits_addend.max(1)), now_ns })
    }

    /// The counters to add this request's hits to, in descriptor order.
    pub fn increments(&self) -> Vec<Increment> {
        self.slots
            .iter()
            .filter_map(|s| match s {
                Slot::Counted { key, window, .. } => {
                    Some(Increment { key: key.to_owned(), hits: self.hits, ttl_s: window.unit.seconds() })
                }
                Slot::Free => None,
            })
            .collect()
    }

    /// The answer, given each increment's count after adding (same order as
    /// [`Check::increments`]). A descriptor is over its limit when its count after this
    /// request's hits exceeds `requests_per_unit`; in shadow mode it still answers OK.
    pub fn finish(self, counts_after: &[u64]) -> Response {
        let mut counts = counts_after.iter().copied();
        let mut overall_code = Code::Ok;
        let statuses = self
            .slots
            .iter()
            .map(|slot| match slot {
                Slot::Free => {
                    Status { code: Code::Ok, current_limit: None, limit_remaining: 0, duration_until_reset_ns: 0 }
                }
                Slot::Counted { limit, requests_per_unit, window, .. } => {
                    let after = counts.next().unwrap_or(u64::MAX);
                    let over = after > u64::from(*requests_per_unit);
                    let code = if over && !limit.shadow_mode { Code::OverLimit } else { Code::Ok };
                    if code == Code::OverLimit {
                        overall_code = Code::OverLimit;
                    }
                    Status {
                        code,
                        current_limit: Some(CurrentLimit {
                            requests_per_unit: *requests_per_unit,
                            unit: window.unit,
                            name: limit.name.clone(),
                        }),
                        limit_remaining: u64::from(*requests_per_unit).saturating_sub(after) as u32,
                        duration_until_reset_ns: window.reset_after_ns(self.now_ns),
                    }
                }
            })
            .collect();
        Response { overall_code, statuses }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Counters;
    use crate::limits::DomainSpec;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    fn limits(yaml: &str) -> Limits {
        let mut l = Limits::default();
        l.add(&serde_saphyr::from_str::<DomainSpec>(yaml).unwrap()).unwrap();
        l
    }

    fn ask(limits: &Limits, counters: &mut Counters, descriptors: Vec<Descriptor>, hits: u32, now: u64) -> Response {
        let request = Request { domain: "edge".into(), descriptors, hits_addend: hits };
        let check = Check::new(limits, &request, now).unwrap();
        let counts: Vec<u64> = check.increments().iter().map(|i| counters.add(&i.key, i.hits, i.ttl_s, now)).collect();
        check.finish(&counts)
    }

    fn user(v: &str) -> Descriptor {
        Descriptor::new([("user", v)])
    }

    const PER_USER: &str =
        "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 3}\n";

    #[test]
    fn counts_per_value_and_resets_with_the_window() {
        let l = limits(PER_USER);
        let mut c = Counters::default();
        let t = 600 * S + S / 2;
        let codes: Vec<Code> = (0..5).map(|_| ask(&l, &mut c, vec![user("a")], 1, t).overall_code).collect();
        assert_eq!(codes, [Code::Ok, Code::Ok, Code::Ok, Code::OverLimit, Code::OverLimit]);
        assert_eq!(ask(&l, &mut c, vec![user("b")], 1, t).overall_code, Code::Ok);
        let r = ask(&l, &mut c, vec![user("b")], 1, t);
        let s = &r.statuses[0];
        assert_eq!(s.limit_remaining, 1);
        assert_eq!(s.duration_until_reset_ns, 60 * S - S / 2);
        assert_eq!(s.current_limit, Some(CurrentLimit { requests_per_unit: 3, unit: Unit::Minute, name: None }));
        // The next minute starts afresh.
        assert_eq!(ask(&l, &mut c, vec![user("a")], 1, 660 * S).overall_code, Code::Ok);
    }

    #[test]
    fn hits_addend_counts_several() {
        let l = limits(PER_USER);
        let mut c = Counters::default();
        assert_eq!(ask(&l, &mut c, vec![user("a")], 3, 0).overall_code, Code::Ok);
        assert_eq!(ask(&l, &mut c, vec![user("a")], 0, 0).overall_code, Code::OverLimit);
    }

    #[test]
    fn any_over_limit_descriptor_limits_the_request() {
        let l = limits(
            "domain: edge\ndescriptors:\n  - {key: user, rate_limit: {unit: hour, requests_per_unit: 1}}\n  - {key: all, rate_limit: {unit: hour, requests_per_unit: 100}}\n  - {key: free}\n",
        );
        let mut c = Counters::default();
        let ds = || vec![user("a"), Descriptor::new([("all", "x")]), Descriptor::new([("free", "x")])];
        let first = ask(&l, &mut c, ds(), 1, 0);
        assert_eq!(first.overall_code, Code::Ok);
        assert_eq!(
            first.statuses[2],
            Status { code: Code::Ok, current_limit: None, limit_remaining: 0, duration_until_reset_ns: 0 }
        );
        let second = ask(&l, &mut c, ds(), 1, 0);
        assert_eq!(second.overall_code, Code::OverLimit);
        assert_eq!(second.statuses[0].code, Code::OverLimit);
        assert_eq!(second.statuses[1].code, Code::Ok);
        assert_eq!(second.statuses[1].limit_remaining, 98);
    }

    #[test]
    fn shadow_mode_counts_but_answers_ok() {
        let l = limits(
            "domain: edge\ndescriptors:\n  - {key: user, shadow_mode: true, rate_limit: {unit: hour, requests_per_unit: 1}}\n",
        );
        let mut c = Counters::default();
        ask(&l, &mut c, vec![user("a")], 1, 0);
        let r = ask(&l, &mut c, vec![user("a")], 1, 0);
        assert_eq!(r.overall_code, Code::Ok);
        assert_eq!(r.statuses[0].limit_remaining, 0);
    }

    #[test]
    fn unlimited_and_replaced_limits_do_not_count() {
        let l = limits(
            "domain: edge\ndescriptors:
  - {key: user, value: root, rate_limit: {unlimited: true}}
  - {key: user, rate_limit: {unit: hour, requests_per_unit: 1, name: per-user}}
  - {key: plan, value: gold, rate_limit: {unit: hour, requests_per_unit: 5, replaces: [{name: per-user}]}}\n",
        );
        let mut c = Counters::default();
        for _ in 0..3 {
            let check =
                Check::new(&l, &Request { domain: "edge".into(), descriptors: vec![user("root")], hits_addend: 1 }, 0)
                    .unwrap();
            assert!(check.increments().is_empty());
            assert_eq!(check.finish(&[]).overall_code, Code::Ok);
        }
        let gold = || vec![user("a"), Descriptor::new([("plan", "gold")])];
        let codes: Vec<Code> = (0..6).map(|_| ask(&l, &mut c, gold(), 1, 0).overall_code).collect();
        assert_eq!(codes, [Code::Ok, Code::Ok, Code::Ok, Code::Ok, Code::Ok, Code::OverLimit]);
        assert_eq!(ask(&l, &mut c, vec![user("a")], 1, 0).overall_code, Code::Ok);
        assert_eq!(ask(&l, &mut c, vec![user("a")], 1, 0).overall_code, Code::OverLimit);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let l = limits(PER_USER);
        let bad = |domain: &str, descriptors: Vec<Descriptor>| {
            Check::new(&l, &Request { domain: domain.into(), descriptors, hits_addend: 1 }, 0)
                .err()
                .unwrap()
                .to_string()
        };
        assert_eq!(bad("", vec![user("a")]), "domain: must not be empty");
        assert_eq!(bad("edge", vec![]), "descriptors: must not be empty");
        assert_eq!(bad("edge", vec![user("a"), Descriptor::default()]), "descriptors[1].entries: must not be empty");
        assert_eq!(
            bad("edge", vec![Descriptor::new([("a", "1"), ("", "2")])]),
            "descriptors[0].entries[1].key: must not be empty"
        );
        // An unknown domain is not an error: it has no limits.
        let r =
            Check::new(&l, &Request { domain: "elsewhere".into(), descriptors: vec![user("a")], hits_addend: 1 }, 0)
                .unwrap();
        assert_eq!(r.finish(&[]).overall_code, Code::Ok);
    }

    proptest! {
        /// However requests for a few users arrive over a few windows, each user gets exactly
        /// the first `limit` requests of each window admitted, and never more.
        #[test]
        fn never_more_than_the_limit_per_window_per_value(
            limit in 0u32..6,
            unit in prop_oneof![Just(Unit::Second), Just(Unit::Minute)],
            steps in proptest::collection::vec((0u64..3_000_000_000, 0usize..3, 1u32..3), 1..200),
        ) {
            let l = limits(&alloc::format!(
                "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {{unit: {}, requests_per_unit: {limit}}}\n",
                unit.name()
            ));
            let mut c = Counters::default();
            let mut now = 1_700_000_000 * S;
            // (user, window start) → (hits asked, hits admitted)
            let mut seen: alloc::collections::BTreeMap<(usize, u64), (u64, u64)> = Default::default();
            for (advance, who, hits) in steps {
                now += advance;
                let r = ask(&l, &mut c, vec![user(["a", "b", "c"][who])], hits, now);
                let e = seen.entry((who, Window::at(now, unit).start_s)).or_default();
                let fits = e.0 + u64::from(hits) <= u64::from(limit);
                e.0 += u64::from(hits);
                prop_assert_eq!(r.overall_code == Code::Ok, fits);
                if r.overall_code == Code::Ok {
                    e.1 += u64::from(hits);
                    prop_assert_eq!(u64::from(r.statuses[0].limit_remaining), u64::from(limit) - e.1);
                }
                prop_assert!(e.1 <= u64::from(limit));
                let reset = r.statuses[0].duration_until_reset_ns;
                prop_assert!(reset > 0 && reset <= unit.seconds() * S);
            }
        }
    }
}
