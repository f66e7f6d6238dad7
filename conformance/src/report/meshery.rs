//! Meshery's SMI conformance result JSON, so SMI results read like the ones Meshery's
//! `mesheryctl mesh validate --spec smi` published (every number is a string there).

use std::collections::HashMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::outcome::{RunRecord, SuiteName, Verdict};

#[derive(Serialize)]
struct MesheryResult<'a> {
    id: String,
    date: &'a str,
    mesh_name: &'a str,
    mesh_version: &'a str,
    casespassed: String,
    passpercent: String,
    details: Vec<Detail<'a>>,
}

#[derive(Serialize)]
struct Detail<'a> {
    smispec: &'a str,
    specversion: &'a str,
    assertion: &'a str,
    duration: String,
    result: &'static str,
    reason: &'a str,
    capability: &'static str,
}

/// The record's SMI results as Meshery's result JSON.
///
/// `passpercent` is over every SMI assertion, unsupported and skipped ones included (Meshery
/// had no "not run"), with at most two decimals. A spec's `capability` is FULL when all its
/// assertions pass, NONE when none does, PARTIAL otherwise. `id` is a UUID-shaped digest of the
/// target and times, so the same record always gets the same id.
pub fn meshery_report(record: &RunRecord) -> String {
    let smi: Vec<_> = record.results.iter().filter(|r| r.suite == SuiteName::Smi).collect();
    let mut per_spec: HashMap<&str, (usize, usize)> = HashMap::new();
    for r in &smi {
        let e = per_spec.entry(&r.test).or_default();
        e.0 += usize::from(r.verdict == Verdict::Pass);
        e.1 += 1;
    }
    let details: Vec<Detail> = smi
        .iter()
        .map(|r| {
            let (passed, total) = per_spec[r.test.as_str()];
            Detail {
                smispec: &r.test,
                specversion: spec_version(&r.spec),
                assertion: &r.id,
                duration: format!("{}ms", r.millis),
                result: match r.verdict {
                    Verdict::Pass => "Passing",
                    Verdict::Fail(_) => "Failing",
                    Verdict::Unsupported(_) | Verdict::Skipped(_) => "Skipped",
                },
                reason: crate::report::reason(&r.verdict),
                capability: match passed {
                    0 => "NONE",
                    p if p == total => "FULL",
                    _ => "PARTIAL",
                },
            }
        })
        .collect();
    let passed = details.iter().filter(|d| d.result == "Passing").count();
    let out = MesheryResult {
        id: run_id(record),
        date: &record.finished,
        mesh_name: &record.implementation.project,
        mesh_version: &record.implementation.version,
        casespassed: passed.to_string(),
        passpercent: percent(passed, details.len()),
        details,
    };
    serde_json::to_string_pretty(&out).expect("strings and lists always serialise")
}

/// `v1alpha4` out of e.g. "TrafficSplit v1alpha4 §backends", or "" when the spec names none.
fn spec_version(spec: &str) -> &str {
    for (i, _) in spec.match_indices('v') {
        let rest = &spec[i + 1..];
        let major = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let after = &rest[major..];
        let Some(stage) = ["alpha", "beta"].into_iter().find(|s| after.starts_with(s)) else { continue };
        let tail = &after[stage.len()..];
        let minor = tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if major > 0 && minor > 0 {
            return &spec[i..i + 1 + major + stage.len() + minor];
        }
    }
    ""
}

fn percent(n: usize, of: usize) -> String {
    if of == 0 {
        return "0".into();
    }
    let p = format!("{:.2}", n as f64 * 100.0 / of as f64);
    p.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn run_id(record: &RunRecord) -> String {
    let h = Sha256::digest(format!("{}\n{}\n{}", record.target, record.started, record.finished));
    let mut b: [u8; 16] = h[..16].try_into().expect("sha256 has 32 bytes");
    // RFC 9562 version 8 (custom) with the RFC variant bits.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::outcome::Level::Core;
    use crate::report::fixtures::{record, result};

    #[test]
    fn counts_capabilities_and_versions() {
        let mut rs = vec![
            result("smi/TrafficSplit/a", SuiteName::Smi, Core, &[], Verdict::Pass),
            result("smi/TrafficSplit/b", SuiteName::Smi, Core, &[], Verdict::Pass),
            result("smi/TrafficTarget/a", SuiteName::Smi, Core, &[], Verdict::Pass),
            result("smi/TrafficTarget/b", SuiteName::Smi, Core, &[], Verdict::Fail("allowed".into())),
            result("smi/TrafficMetrics/a", SuiteName::Smi, Core, &[], Verdict::Unsupported("no metrics".into())),
            result("smi/TrafficMetrics/b", SuiteName::Smi, Core, &[], Verdict::Skipped("filtered".into())),
            result("gamma/MeshBasic/a", SuiteName::Gamma, Core, &[], Verdict::Pass),
        ];
        rs[0].spec = "TrafficSplit v1alpha4 backends".into();
        rs[2].spec = "access/v1alpha3".into();
        rs[4].spec = "TrafficMetrics".into();
        let json = meshery_report(&record("linkerd", rs));
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["mesh_name"], "linkerd");
        assert_eq!(v["mesh_version"], "1.2.3");
        assert_eq!(v["casespassed"], "3");
        assert_eq!(v["passpercent"], "50");
        let d = v["details"].as_array().unwrap();
        assert_eq!(d.len(), 6, "only SMI results");
        assert_eq!(d[0]["smispec"], "TrafficSplit");
        assert_eq!(d[0]["specversion"], "v1alpha4");
        assert_eq!(d[0]["duration"], "1500ms");
        assert_eq!(d[0]["capability"], "FULL");
        assert_eq!(d[2]["specversion"], "v1alpha3");
        assert_eq!(d[3]["result"], "Failing");
        assert_eq!(d[3]["reason"], "allowed");
        assert_eq!(d[3]["capability"], "PARTIAL");
        assert_eq!(d[4]["specversion"], "");
        assert_eq!(d[4]["result"], "Skipped");
        assert_eq!(d[4]["capability"], "NONE");
        let id = v["id"].as_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "8");
    }

    #[test]
    fn percent_rounds_to_two_decimals() {
        assert_eq!(percent(2, 3), "66.67");
        assert_eq!(percent(1, 8), "12.5");
        assert_eq!(percent(3, 3), "100");
        assert_eq!(percent(0, 0), "0");
        assert_eq!(spec_version("v1 alpha"), "");
        assert_eq!(spec_version("specs v1beta1"), "v1beta1");
    }
}
