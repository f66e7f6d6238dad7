//! Traffic split: match rules, then a weighted pick among backends.
//!
//! The shape of SMI `TrafficSplit` and of Gateway API `HTTPRoute` rules with weighted
//! `backendRefs`: rules are tried in order and the first whose header and path conditions all
//! hold chooses the backends; a request no rule matches uses the default backends. The pick is
//! weighted: a backend with weight `w` out of a total `W` gets `w / W` of the requests, and a
//! weight of 0 is never picked. The draw is a uniform random number or, for sticky assignment,
//! a hash of a request value, so the same value always lands on the same backend.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

/// What the split needs to know about a request.
pub trait Request {
    /// The first value of a header (names are lower case).
    fn header(&self, name: &str) -> Option<&str>;
    /// The request path, query included.
    fn path(&self) -> &str;
}

/// How a header's value must look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueMatch {
    Exact(String),
    Prefix(String),
    /// Any value, the empty one included.
    Present,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lower case, as HTTP/2 and proxy-wasm hosts present header names.
    pub name: String,
    pub value: ValueMatch,
}

impl HeaderMatch {
    pub fn matches(&self, request: &impl Request) -> bool {
        match (request.header(&self.name), &self.value) {
            (None, _) => false,
            (Some(v), ValueMatch::Exact(want)) => v == want,
            (Some(v), ValueMatch::Prefix(p)) => v.starts_with(p.as_str()),
            (Some(_), ValueMatch::Present) => true,
        }
    }
}

/// Conditions that must all hold; an empty one matches every request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMatch {
    pub headers: Vec<HeaderMatch>,
    /// A plain string prefix of the path without its query (Envoy's route `prefix`).
    pub path_prefix: Option<String>,
}

impl RequestMatch {
    pub fn matches(&self, request: &impl Request) -> bool {
        let path = request.path();
        let path = path.split(['?', '#']).next().unwrap_or(path);
        self.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
            && self.headers.iter().all(|h| h.matches(request))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub weight: u32,
}

/// Why a set of backends cannot be split over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    NoBackends,
    /// Every weight is 0: no backend could ever be picked.
    ZeroTotalWeight,
}

impl core::fmt::Display for SplitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SplitError::NoBackends => "lists no backends",
            SplitError::ZeroTotalWeight => "has weights that add up to 0",
        })
    }
}

/// Backends with weights whose total is above zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    backends: Vec<Backend>,
    total: u64,
}

impl Split {
    pub fn new(backends: Vec<Backend>) -> Result<Split, SplitError> {
        if backends.is_empty() {
            return Err(SplitError::NoBackends);
        }
        let total = backends.iter().map(|b| b.weight as u64).sum();
        if total == 0 {
            return Err(SplitError::ZeroTotalWeight);
        }
        Ok(Split { backends, total })
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backend for a draw uniform over u64: `weight / total` of all draws pick each backend
    /// (the modulo bias is below total / 2^64).
    pub fn pick(&self, draw: u64) -> &Backend {
        self.pick_index(draw).1
    }

    pub fn pick_index(&self, draw: u64) -> (usize, &Backend) {
        let mut point = draw % self.total;
        for (i, b) in self.backends.iter().enumerate() {
            if point < b.weight as u64 {
                return (i, b);
            }
            point -= b.weight as u64;
        }
        unreachable!("the point is below the total of the weights")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub when: RequestMatch,
    pub split: Split,
}

/// Which rule chose the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chosen {
    Rule(usize),
    Default,
}

/// Rules in order, then the default backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    pub rules: Vec<Rule>,
    pub default: Option<Split>,
}

impl Routes {
    /// The first rule that matches, else the default; `None` when neither applies.
    pub fn select(&self, request: &impl Request) -> Option<(Chosen, &Split)> {
        match self.rules.iter().position(|r| r.when.matches(request)) {
            Some(i) => Some((Chosen::Rule(i), &self.rules[i].split)),
            None => self.default.as_ref().map(|s| (Chosen::Default, s)),
        }
    }
}

/// A draw from a request value for sticky assignment: the same value always gives the same
/// draw, and different values spread evenly (FNV-1a, then a 64-bit finaliser so the low bits
/// the modulo uses depend on every input byte).
pub fn sticky_draw(value: &[u8]) -> u64 {
    let mut x = meshwork_cas_table::key_hash(value);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::borrow::ToOwned;
    use alloc::vec;
    use proptest::prelude::*;
    use std::format;

    struct Req {
        path: String,
        headers: Vec<(String, String)>,
    }

    impl Request for Req {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
        }
        fn path(&self) -> &str {
            &self.path
        }
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> Req {
        Req { path: path.into(), headers: headers.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect() }
    }

    fn split(weights: &[(&str, u32)]) -> Split {
        Split::new(weights.iter().map(|(n, w)| Backend { name: (*n).into(), weight: *w }).collect()).unwrap()
    }

    fn header(name: &str, value: ValueMatch) -> HeaderMatch {
        HeaderMatch { name: name.into(), value }
    }

    #[test]
    fn header_conditions() {
        let r = req("/", &[("x-canary", "true"), ("x-user", "alice-1"), ("x-empty", "")]);
        assert!(header("x-canary", ValueMatch::Exact("true".into())).matches(&r));
        assert!(!header("x-canary", ValueMatch::Exact("TRUE".into())).matches(&r));
        assert!(header("x-user", ValueMatch::Prefix("alice".into())).matches(&r));
        assert!(!header("x-user", ValueMatch::Prefix("bob".into())).matches(&r));
        assert!(header("x-empty", ValueMatch::Present).matches(&r));
        assert!(!header("x-missing", ValueMatch::Present).matches(&r));
    }

    #[test]
    fn path_prefix_ignores_the_query_and_all_conditions_must_hold() {
        let m =
            RequestMatch { headers: vec![header("x-canary", ValueMatch::Present)], path_prefix: Some("/api/".into()) };
        assert!(m.matches(&req("/api/v1?x=1", &[("x-canary", "1")])));
        assert!(!m.matches(&req("/api/v1", &[])), "header missing");
        assert!(!m.matches(&req("/web?/api/", &[("x-canary", "1")])), "the query is not the path");
        assert!(RequestMatch::default().matches(&req("/anything", &[])));
    }

    #[test]
    fn first_matching_rule_wins_else_the_default() {
        let routes = Routes {
            rules: vec![
                Rule {
                    when: RequestMatch { headers: vec![header("x-canary", ValueMatch::Present)], path_prefix: None },
                    split: split(&[("v2", 1)]),
                },
                Rule {
                    when: RequestMatch { headers: vec![], path_prefix: Some("/api/".into()) },
                    split: split(&[("v3", 1)]),
                },
            ],
            default: Some(split(&[("v1", 1)])),
        };
        let pick = |r: &Req| routes.select(r).map(|(c, s)| (c, s.pick(0).name.clone()));
        assert_eq!(pick(&req("/api/x", &[("x-canary", "1")])), Some((Chosen::Rule(0), "v2".into())));
        assert_eq!(pick(&req("/api/x", &[])), Some((Chosen::Rule(1), "v3".into())));
        assert_eq!(pick(&req("/", &[])), Some((Chosen::Default, "v1".into())));
        let no_default = Routes { rules: routes.rules.clone(), default: None };
        assert_eq!(no_default.select(&req("/", &[])), None);
    }

    #[test]
    fn picks_walk_the_cumulative_weights() {
        let s = split(&[("a", 90), ("b", 0), ("c", 10)]);
        assert_eq!(s.pick(0).name, "a");
        assert_eq!(s.pick(89).name, "a");
        assert_eq!(s.pick(90).name, "c");
        assert_eq!(s.pick(99).name, "c");
        assert_eq!(s.pick(100).name, "a", "draws wrap around the total");
    }

    #[test]
    fn unusable_backend_lists_are_refused() {
        assert_eq!(Split::new(vec![]), Err(SplitError::NoBackends));
        assert_eq!(
            Split::new(vec![Backend { name: "a".into(), weight: 0 }, Backend { name: "b".into(), weight: 0 }]),
            Err(SplitError::ZeroTotalWeight)
        );
    }

    #[test]
    fn sticky_draws_are_stable_and_spread() {
        assert_eq!(sticky_draw(b"alice"), sticky_draw(b"alice"));
        let s = split(&[("a", 1), ("b", 1)]);
        let to_a = (0..2000).filter(|i| s.pick(sticky_draw(format!("user-{i}").as_bytes())).name == "a").count();
        assert!((850..1150).contains(&to_a), "{to_a} of 2000 sequential keys on a 50/50 split");
    }

    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    proptest! {
        /// Each backend's share of uniform draws is its weight's share (within 5 sigma).
        #[test]
        fn picks_follow_the_weights(weights in proptest::collection::vec(0u32..100, 1..6), seed in any::<u64>()) {
            prop_assume!(weights.iter().any(|w| *w > 0));
            let backends: Vec<Backend> =
                weights.iter().enumerate().map(|(i, w)| Backend { name: format!("b{i}"), weight: *w }).collect();
            let s = Split::new(backends).unwrap();
            let total: u32 = weights.iter().sum();
            let n = 20_000usize;
            let mut counts = vec![0usize; weights.len()];
            let mut draw = xorshift(seed);
            for _ in 0..n {
                counts[s.pick_index(draw()).0] += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                let p = *w as f64 / total as f64;
                let sigma = (n as f64 * p * (1.0 - p)).sqrt();
                prop_assert!((counts[i] as f64 - n as f64 * p).abs() <= 5.0 * sigma + 1.0,
                    "backend {i} weight {w}/{total}: {} of {n}", counts[i]);
            }
        }

        /// A backend of weight 0 is never picked, whatever the draw.
        #[test]
        fn zero_weights_are_never_picked(weights in proptest::collection::vec(0u32..5, 1..8), draw in any::<u64>()) {
            prop_assume!(weights.iter().any(|w| *w > 0));
            let backends: Vec<Backend> =
                weights.iter().enumerate().map(|(i, w)| Backend { name: format!("b{i}"), weight: *w }).collect();
            let s = Split::new(backends).unwrap();
            prop_assert!(s.pick(draw).weight > 0);
        }

        /// The chosen rule is the first whose conditions hold, and no earlier rule matched.
        #[test]
        fn rules_are_tried_in_order(
            rule_headers in proptest::collection::vec(proptest::option::of(0u8..4), 0..6),
            sent in proptest::collection::vec(0u8..4, 0..4),
            default in any::<bool>(),
        ) {
            // Rule i requires header h<k> when Some(k), or matches everything when None.
            let rules: Vec<Rule> = rule_headers.iter().enumerate().map(|(i, h)| Rule {
                when: RequestMatch {
                    headers: h.iter().map(|k| header(&format!("h{k}"), ValueMatch::Present)).collect(),
                    path_prefix: None,
                },
                split: split(&[(&format!("r{i}"), 1)]),
            }).collect();
            let routes = Routes { rules, default: default.then(|| split(&[("default", 1)])) };
            let headers: Vec<(String, String)> = sent.iter().map(|k| (format!("h{k}"), "1".to_owned())).collect();
            let r = Req { path: "/".into(), headers };
            let expected = rule_headers.iter().position(|h| h.is_none_or(|k| sent.contains(&k)));
            match (routes.select(&r), expected) {
                (Some((Chosen::Rule(i), s)), Some(e)) => {
                    prop_assert_eq!(i, e);
                    prop_assert_eq!(&s.pick(0).name, &format!("r{e}"));
                }
                (Some((Chosen::Default, _)), None) => prop_assert!(default),
                (None, None) => prop_assert!(!default),
                (got, want) => prop_assert!(false, "got {:?}, want rule {:?}", got.map(|g| g.0), want),
            }
        }

        /// Sticky assignment: a value's backend depends only on the value and the weights, and
        /// distinct values spread over the backends by weight (within 5 sigma).
        #[test]
        fn sticky_values_keep_their_backend_and_follow_the_weights(a in 1u32..100, b in 1u32..100, seed in any::<u32>()) {
            let s = split(&[("a", a), ("b", b)]);
            let rebuilt = split(&[("a", a), ("b", b)]);
            let n = 4000usize;
            let mut to_a = 0usize;
            for i in 0..n {
                let value = format!("user-{seed}-{i}");
                let first = s.pick(sticky_draw(value.as_bytes())).name.clone();
                prop_assert_eq!(&first, &rebuilt.pick(sticky_draw(value.as_bytes())).name);
                to_a += (first == "a") as usize;
            }
            let p = a as f64 / (a + b) as f64;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            prop_assert!((to_a as f64 - n as f64 * p).abs() <= 5.0 * sigma + 1.0, "{to_a} of {n} for {a}/{b}");
        }
    }
}
