//! What a run produced: one [`AssertionResult`] per assertion and target, and the
//! [`RunRecord`] that reports and attestations are written from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How one assertion ended on one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// The implementation did something the assertion forbids; the reason says what.
    Fail(String),
    /// The target cannot express what the assertion needs (never counted as a failure).
    Unsupported(String),
    /// Not run: filtered out, or a prerequisite is missing on this machine.
    Skipped(String),
}

impl Verdict {
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "fail",
            Verdict::Unsupported(_) => "unsupported",
            Verdict::Skipped(_) => "skipped",
        }
    }
}

/// Which suite an assertion belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuiteName {
    /// SMI v1alpha4 TrafficSplit, v1alpha3 TrafficTarget / HTTPRouteGroup, TrafficMetrics.
    Smi,
    /// Gateway API GAMMA, profile MESH-HTTP.
    Gamma,
    /// One per Service Mesh Pattern.
    Patterns,
}

/// GAMMA's support levels; SMI and pattern assertions are all core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Core,
    Extended,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AssertionResult {
    /// `suite/test/assertion`, e.g. `gamma/MeshHTTPRouteWeight/70-30`.
    pub id: String,
    pub suite: SuiteName,
    /// The upstream test name this assertion belongs to (GAMMA's ShortName, SMI's spec).
    pub test: String,
    /// The section of the spec it checks.
    pub spec: String,
    pub level: Level,
    /// Features it needs (GAMMA's feature names where they exist).
    pub features: Vec<String>,
    pub target: String,
    pub verdict: Verdict,
    /// With `--repeat N`: how many of the runs passed (a verdict from flaky runs is a failure
    /// whose reason says so).
    pub runs: u32,
    pub passes: u32,
    pub millis: u64,
    /// The configuration the adapter generated for this test (what reproduce re-runs).
    pub configuration: String,
}

/// A file the run's results are about, by content digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    pub path: PathBuf,
    /// Lower-case hex.
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Implementation {
    /// `meshwork`, `nginx`, `haproxy`…
    pub project: String,
    pub version: String,
    pub organization: String,
    pub url: String,
}

/// Facts about the machine a run happened on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub os: String,
    pub kernel: String,
    pub cpus: usize,
    pub hostname: String,
}

/// Everything a run did: enough to report it, attest it and re-run it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// meshwork-conformance's suite version (the crate version).
    pub suite_version: String,
    pub target: String,
    pub implementation: Implementation,
    /// The implementation's binaries and filter modules.
    pub artifacts: Vec<Artifact>,
    /// The command line that re-runs this (its arguments after `meshwork conformance run`).
    pub arguments: Vec<String>,
    /// RFC 3339.
    pub started: String,
    pub finished: String,
    pub machine: Machine,
    pub results: Vec<AssertionResult>,
}
