//! Gateway API `ConformanceReport` (gateway-api conformance/apis/v1) for profile MESH-HTTP, so
//! a run can be compared with, or submitted beside, the upstream reports in
//! conformance/reports/<version>/.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::outcome::{Level, RunRecord, SuiteName, Verdict};

/// The Gateway API release whose GAMMA tests the suite follows.
pub const GATEWAY_API_VERSION: &str = "v1.3.0";
pub const PROFILE: &str = "MESH-HTTP";
/// MESH-HTTP's core features: every test needs them, so they are not listed as extended ones.
const CORE_FEATURES: [&str; 2] = ["Mesh", "HTTPRoute"];

// Field order is alphabetical because upstream reports are written through JSON maps
// (sigs.k8s.io/yaml), so this order makes our reports diff cleanly against theirs.

#[derive(Serialize)]
struct ConformanceReport<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    date: &'a str,
    #[serde(rename = "gatewayAPIChannel")]
    gateway_api_channel: &'static str,
    #[serde(rename = "gatewayAPIVersion")]
    gateway_api_version: &'static str,
    implementation: Implementation<'a>,
    kind: &'static str,
    mode: &'static str,
    profiles: Vec<ProfileReport>,
}

#[derive(Serialize)]
struct Implementation<'a> {
    contact: Vec<String>,
    organization: &'a str,
    project: &'a str,
    url: &'a str,
    version: &'a str,
}

#[derive(Serialize)]
struct ProfileReport {
    core: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    extended: Option<Status>,
    name: &'static str,
    summary: String,
}

/// Upstream's `Status`, and for extended its `ExtendedStatus` (the two feature lists).
#[derive(Serialize)]
struct Status {
    #[serde(rename = "failedTests", skip_serializing_if = "Vec::is_empty")]
    failed_tests: Vec<String>,
    result: Outcome,
    #[serde(rename = "skippedTests", skip_serializing_if = "Vec::is_empty")]
    skipped_tests: Vec<String>,
    statistics: Statistics,
    #[serde(rename = "supportedFeatures", skip_serializing_if = "Option::is_none")]
    supported_features: Option<Vec<String>>,
    #[serde(rename = "unsupportedFeatures", skip_serializing_if = "Option::is_none")]
    unsupported_features: Option<Vec<String>>,
}

/// Capitalised: upstream's `Statistics` struct has no json tags.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Statistics {
    failed: u32,
    passed: u32,
    skipped: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Success,
    Partial,
    Failure,
}

/// One GAMMA test, folded from its assertions.
#[derive(Default)]
struct Test {
    extended: bool,
    failed: bool,
    unsupported: bool,
    skipped: bool,
    features: BTreeSet<String>,
}

/// The MESH-HTTP `ConformanceReport` YAML for the record's GAMMA results.
///
/// A test fails if any of its assertions fails; otherwise it is skipped if any assertion was
/// unsupported or skipped, and passes only if all of them passed. Unsupported extended tests
/// are left out of the counts, as upstream leaves out tests of features an implementation does
/// not claim; their features are listed as unsupported. A test is extended if any assertion is. The extended
/// section is left out when the run has no extended test, as upstream does.
pub fn gamma_report(record: &RunRecord) -> String {
    let mut tests: BTreeMap<&str, Test> = BTreeMap::new();
    for r in record.results.iter().filter(|r| r.suite == SuiteName::Gamma) {
        let t = tests.entry(r.test.as_str()).or_default();
        t.extended |= r.level == Level::Extended;
        match r.verdict {
            Verdict::Pass => {}
            Verdict::Fail(_) => t.failed = true,
            Verdict::Unsupported(_) => t.unsupported = true,
            Verdict::Skipped(_) => t.skipped = true,
        }
        t.features.extend(r.features.iter().filter(|f| !CORE_FEATURES.contains(&f.as_str())).cloned());
    }

    let core = status(tests.iter().filter(|(_, t)| !t.extended));
    let extended = tests.values().any(|t| t.extended).then(|| {
        let mut s = status(tests.iter().filter(|(_, t)| t.extended));
        // A feature is supported if some test needing it could run; unsupported if every test
        // needing it was unsupported. Filtered-out tests say nothing about their features.
        let ran = tests.values().filter(|t| t.extended && !t.unsupported && !t.skipped);
        let supported: BTreeSet<&String> = ran.flat_map(|t| &t.features).collect();
        let unsupported: BTreeSet<&String> = tests
            .values()
            .filter(|t| t.extended && t.unsupported)
            .flat_map(|t| &t.features)
            .filter(|f| !supported.contains(f))
            .collect();
        s.supported_features = Some(supported.into_iter().cloned().collect());
        s.unsupported_features = Some(unsupported.into_iter().cloned().collect());
        s
    });
    let summary = summary(&core, extended.as_ref());

    let i = &record.implementation;
    let report = ConformanceReport {
        api_version: "gateway.networking.k8s.io/v1",
        date: &record.finished,
        gateway_api_channel: "standard",
        gateway_api_version: GATEWAY_API_VERSION,
        implementation: Implementation {
            contact: vec![],
            organization: &i.organization,
            project: &i.project,
            url: &i.url,
            version: &i.version,
        },
        kind: "ConformanceReport",
        mode: "default",
        profiles: vec![ProfileReport { core, extended, name: PROFILE, summary }],
    };
    // Plain scalars, as upstream writes them (the default folds the long summary line).
    let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
    serde_saphyr::to_string_with_options(&report, options)
        .expect("a report of strings, lists and integers always serialises")
}

fn status<'a>(tests: impl Iterator<Item = (&'a &'a str, &'a Test)>) -> Status {
    let (mut failed_tests, mut skipped_tests, mut passed) = (vec![], vec![], 0);
    for (name, t) in tests {
        // As upstream: an extended test of a feature the implementation does not support is
        // not run, so it is neither passed nor skipped (its feature is listed as unsupported).
        // A core test cannot be unsupported; it counts as skipped.
        if t.extended && t.unsupported && !t.failed {
            continue;
        }
        if t.failed {
            failed_tests.push(name.to_string());
        } else if t.unsupported || t.skipped {
            skipped_tests.push(name.to_string());
        } else {
            passed += 1;
        }
    }
    let result = match (failed_tests.is_empty(), skipped_tests.is_empty()) {
        (true, true) => Outcome::Success,
        (true, false) => Outcome::Partial,
        (false, _) => Outcome::Failure,
    };
    let statistics = Statistics { failed: failed_tests.len() as u32, passed, skipped: skipped_tests.len() as u32 };
    Status { failed_tests, result, skipped_tests, statistics, supported_features: None, unsupported_features: None }
}

/// Upstream's wording (conformance/utils/suite/reports.go `buildSummary`).
fn summary(core: &Status, extended: Option<&Status>) -> String {
    let one = |level: &str, s: &Status| match s.result {
        Outcome::Success => format!("{level} tests succeeded."),
        Outcome::Partial => {
            format!("{level} tests partially succeeded with {} test skips.", s.statistics.skipped)
        }
        Outcome::Failure => format!("{level} tests failed with {} test failures.", s.statistics.failed),
    };
    let mut out = one("Core", core);
    if let Some(e) = extended {
        out.push(' ');
        out.push_str(&one("Extended", e));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::outcome::Level::{Core, Extended};
    use crate::report::fixtures::{record, result};

    fn parse(yaml: &str) -> Value {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    #[test]
    fn all_passing_core_only_is_success_without_extended() {
        let rec = record(
            "meshwork",
            vec![
                result("gamma/MeshBasic/200", SuiteName::Gamma, Core, &["Mesh"], Verdict::Pass),
                result("gamma/MeshTrafficSplit/v1", SuiteName::Gamma, Core, &["Mesh"], Verdict::Pass),
                result("gamma/MeshTrafficSplit/v2", SuiteName::Gamma, Core, &["Mesh"], Verdict::Pass),
                // Not GAMMA: must not count.
                result("smi/TrafficSplit/x", SuiteName::Smi, Core, &[], Verdict::Fail("no".into())),
            ],
        );
        let yaml = gamma_report(&rec);
        let v = parse(&yaml);
        assert_eq!(v["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(v["kind"], "ConformanceReport");
        assert_eq!(v["gatewayAPIVersion"], "v1.3.0");
        assert_eq!(v["gatewayAPIChannel"], "standard");
        assert_eq!(v["mode"], "default");
        assert_eq!(v["date"], "2025-06-06T15:28:42Z");
        assert_eq!(v["implementation"]["contact"], serde_json::json!([]));
        assert_eq!(v["implementation"]["organization"], "meshwork");
        let p = &v["profiles"][0];
        assert_eq!(p["name"], "MESH-HTTP");
        assert_eq!(p["core"]["result"], "success");
        assert_eq!(p["core"]["statistics"], serde_json::json!({"Passed": 2, "Skipped": 0, "Failed": 0}));
        assert!(p["core"].get("failedTests").is_none());
        assert!(p.get("extended").is_none());
        assert_eq!(p["summary"], "Core tests succeeded.");
        // Upstream's (alphabetical) key order.
        assert!(yaml.find("apiVersion").unwrap() < yaml.find("date").unwrap());
        assert!(yaml.find("implementation").unwrap() < yaml.find("kind").unwrap());
    }

    #[test]
    fn failures_skips_and_unsupported_features() {
        let rec = record(
            "nginx",
            vec![
                result("gamma/MeshBasic/200", SuiteName::Gamma, Core, &["Mesh"], Verdict::Pass),
                result("gamma/MeshPorts/a", SuiteName::Gamma, Core, &["Mesh"], Verdict::Pass),
                result("gamma/MeshPorts/b", SuiteName::Gamma, Core, &["Mesh"], Verdict::Skipped("filtered".into())),
                result(
                    "gamma/MeshHTTPRouteRewritePath/a",
                    SuiteName::Gamma,
                    Extended,
                    &["Mesh", "HTTPRoute", "MeshHTTPRouteRewritePath"],
                    Verdict::Unsupported("cannot rewrite".into()),
                ),
                result(
                    "gamma/MeshHTTPRouteQueryParamMatching/a",
                    SuiteName::Gamma,
                    Extended,
                    &["HTTPRouteQueryParamMatching"],
                    Verdict::Pass,
                ),
                result(
                    "gamma/MeshHTTPRouteQueryParamMatching/b",
                    SuiteName::Gamma,
                    Extended,
                    &["HTTPRouteQueryParamMatching"],
                    Verdict::Fail("wrong backend".into()),
                ),
                result("gamma/MeshHTTPRouteMatching/a", SuiteName::Gamma, Extended, &["X"], Verdict::Pass),
            ],
        );
        let yaml = gamma_report(&rec);
        let v = parse(&yaml);
        let p = &v["profiles"][0];
        assert_eq!(p["core"]["result"], "partial");
        assert_eq!(p["core"]["statistics"], serde_json::json!({"Passed": 1, "Skipped": 1, "Failed": 0}));
        assert_eq!(p["core"]["skippedTests"], serde_json::json!(["MeshPorts"]));
        let e = &p["extended"];
        assert_eq!(e["result"], "failure");
        assert_eq!(e["statistics"], serde_json::json!({"Passed": 1, "Skipped": 0, "Failed": 1}));
        assert_eq!(e["failedTests"], serde_json::json!(["MeshHTTPRouteQueryParamMatching"]));
        assert!(e.get("skippedTests").is_none_or(|s| s.as_array().is_some_and(|a| a.is_empty())), "{e}");
        assert_eq!(e["supportedFeatures"], serde_json::json!(["HTTPRouteQueryParamMatching", "X"]));
        assert_eq!(e["unsupportedFeatures"], serde_json::json!(["MeshHTTPRouteRewritePath"]));
        assert_eq!(
            p["summary"],
            "Core tests partially succeeded with 1 test skips. Extended tests failed with 1 test failures."
        );
        assert!(yaml.contains("\n  summary: Core tests partially succeeded with 1 test skips. Extended tests failed"));
    }
}
