//! The suites, as code: every assertion names the spec section it checks, the features it
//! needs, the configuration it asks for ([`Intent`]), an observable check over real HTTP, and a
//! known-bad configuration the check must reject (the tests of the tests).

use std::future::Future;
use std::pin::Pin;

use crate::intent::Intent;
use crate::outcome::{Level, SuiteName};
use crate::probe::Probe;

pub mod gamma;
pub mod patterns;
pub mod smi;

pub type Check = fn(Probe) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

pub struct Test {
    /// `suite/test/assertion`.
    pub id: &'static str,
    pub suite: SuiteName,
    /// The upstream test or spec object it belongs to.
    pub test: &'static str,
    pub spec: &'static str,
    pub level: Level,
    /// Feature names as the spec spells them (GAMMA's SupportX names).
    pub features: &'static [&'static str],
    /// What the target must be able to do at all ("proxy-wasm", "metrics", "mtls-identity").
    pub needs: &'static [&'static str],
    pub intent: fn() -> Intent,
    pub check: Check,
    /// A configuration that breaks exactly what the check looks at.
    pub known_bad: Option<fn() -> Intent>,
    /// For statistical checks: the sample and its false-failure rate.
    pub statistics: Option<&'static str>,
}

/// Every test of every suite, in a stable order.
pub fn all() -> Vec<&'static Test> {
    gamma::TESTS.iter().chain(smi::TESTS).chain(patterns::TESTS).collect()
}

/// Tests whose suite is in `suites` (all when empty) and whose id contains `filter`.
pub fn select(suites: &[SuiteName], filter: Option<&str>) -> Vec<&'static Test> {
    all()
        .into_iter()
        .filter(|t| suites.is_empty() || suites.contains(&t.suite))
        .filter(|t| filter.is_none_or(|f| t.id.contains(f)))
        .collect()
}

/// `Err(reason)` unless `cond`.
pub fn ensure(cond: bool, reason: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(reason()) }
}

/// Boxes an async check.
#[macro_export]
macro_rules! check {
    (|$p:ident| $body:block) => {{
        fn f(
            $p: $crate::probe::Probe,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
            Box::pin(async move { $body })
        }
        f as $crate::suites::Check
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_name_their_suite() {
        let mut seen = std::collections::BTreeSet::new();
        for t in all() {
            assert!(seen.insert(t.id), "{} twice", t.id);
            let prefix = match t.suite {
                SuiteName::Gamma => "gamma/",
                SuiteName::Smi => "smi/",
                SuiteName::Patterns => "patterns/",
            };
            assert!(t.id.starts_with(prefix), "{}", t.id);
            assert!(!t.spec.is_empty());
        }
    }

    #[test]
    fn every_known_bad_configuration_differs_from_the_good_one() {
        for t in all() {
            if let Some(bad) = t.known_bad {
                let (good, bad) = (format!("{:?}", (t.intent)()), format!("{:?}", bad()));
                assert_ne!(good, bad, "{}: the known-bad configuration is the good one", t.id);
            }
        }
    }
}
