//! Lossless distribution: worker processes (or Kubernetes pods) each run a disjoint share of one
//! schedule and ship their histogram in the HdrHistogram V2 compressed encoding; the
//! coordinator adds them bucket for bucket, so the merged histogram is the histogram of all
//! samples, not an average of percentiles.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::histogram;
use crate::run::{Counters, RunResult, unix_ns};
use crate::spec::{LoadSpec, Share};

/// Marks a worker's result line wherever it ends up (stdout, `kubectl logs --prefix`).
pub const MARKER: &str = "meshwork-load-worker-result/v1";

/// One worker's result, one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    pub kind: String,
    pub share: Share,
    pub spec: LoadSpec,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub window_s: f64,
    pub counters: Counters,
    /// HdrHistogram V2 deflate, base64; values in µs.
    pub histogram: String,
}

impl WorkerReport {
    pub fn from_result(r: &RunResult, share: Share) -> WorkerReport {
        WorkerReport {
            kind: MARKER.into(),
            share,
            spec: r.spec.clone(),
            start_unix_ns: r.start_unix_ns,
            end_unix_ns: r.end_unix_ns,
            window_s: r.window_s,
            counters: r.counters.clone(),
            histogram: histogram::encode(&r.latency),
        }
    }

    pub fn into_result(self) -> Result<RunResult, LoadError> {
        Ok(RunResult {
            latency: histogram::decode(&self.histogram)?,
            spec: self.spec,
            workers: 1,
            start_unix_ns: self.start_unix_ns,
            end_unix_ns: self.end_unix_ns,
            window_s: self.window_s,
            counters: self.counters,
        })
    }
}

/// Worker results found in text: one per line carrying the marker, anything before the
/// first `{` (a `kubectl logs --prefix` tag) ignored.
pub fn parse_reports(text: &str) -> Result<Vec<WorkerReport>, LoadError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if !line.contains(MARKER) {
            continue;
        }
        let start = line.find('{').ok_or_else(|| LoadError::Worker(format!("line {}: no JSON", n + 1)))?;
        let report: WorkerReport = serde_json::from_str(&line[start..])
            .map_err(|e| LoadError::Worker(format!("line {}: not a worker result: {e}", n + 1)))?;
        out.push(report);
    }
    Ok(out)
}

/// Merges the results of one distributed run, refusing mixes of runs and missing workers.
pub fn merge_reports(mut reports: Vec<WorkerReport>) -> Result<RunResult, LoadError> {
    reports.sort_by_key(|r| r.share.index);
    reports.dedup_by_key(|r| r.share.index);
    let first = reports.first().ok_or_else(|| LoadError::Worker("no worker results found".into()))?;
    let count = first.share.count;
    for r in &reports {
        if r.share.count != count || r.spec != first.spec {
            return Err(LoadError::Worker(format!(
                "worker {} belongs to a different run (other settings or worker count)",
                r.share.index
            )));
        }
    }
    if reports.len() != count {
        let have: Vec<String> = reports.iter().map(|r| r.share.index.to_string()).collect();
        return Err(LoadError::Worker(format!(
            "expected results from {count} workers, found {} (indices {})",
            reports.len(),
            have.join(", ")
        )));
    }
    let mut iter = reports.into_iter();
    let mut merged = iter.next().expect("checked non-empty").into_result()?;
    for r in iter {
        merged.merge(&r.into_result()?)?;
    }
    Ok(merged)
}

/// Runs `workers` processes of this binary, each with its share, started together.
pub fn run_workers(spec: &LoadSpec, workers: usize) -> Result<RunResult, LoadError> {
    let exe = std::env::current_exe().map_err(|e| LoadError::io("cannot find this executable", e))?;
    let mut spec = spec.clone();
    // Long enough for every worker to start and connect, short enough not to be noticed.
    let lead = Duration::from_millis(300 + 100 * workers as u64);
    spec.start_at_unix_ns = Some(unix_ns(SystemTime::now() + lead));
    let base_samples = spec.samples_file.clone();
    let mut children = Vec::new();
    for index in 0..workers {
        let mut s = spec.clone();
        s.samples_file = base_samples.as_ref().map(|p| format!("{p}.w{index}"));
        let json = serde_json::to_string(&s).expect("spec serialises");
        let child = Command::new(&exe)
            .args(["load", "--worker-spec", &json, "--worker-index", &index.to_string()])
            .args(["--worker-count", &workers.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LoadError::io(format!("cannot start worker {index}"), e))?;
        children.push(child);
    }
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for (index, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().map_err(|e| LoadError::io(format!("worker {index}"), e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match parse_reports(&text) {
            Ok(mut r) if out.status.success() && r.len() == 1 => {
                let mut report = r.remove(0);
                // The shared spec (without per-worker sample files) identifies the run.
                report.spec.samples_file = base_samples.clone();
                reports.push(report);
            }
            _ => failures.push(format!(
                "worker {index} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("no result")
            )),
        }
    }
    if !failures.is_empty() {
        return Err(LoadError::Worker(failures.join("; ")));
    }
    merge_reports(reports)
}

/// Reads worker results from files (worker stdout, `kubectl logs` output) and merges them.
pub fn collect(paths: &[impl AsRef<Path>]) -> Result<RunResult, LoadError> {
    let mut reports = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let files: Vec<std::path::PathBuf> = if p.is_dir() {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .map_err(|e| LoadError::io(format!("cannot read {}", p.display()), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            v
        } else {
            vec![p.to_path_buf()]
        };
        for f in files {
            let file = std::fs::File::open(&f).map_err(|e| LoadError::io(format!("cannot open {}", f.display()), e))?;
            let mut text = String::new();
            for line in BufReader::new(file).lines() {
                let line = line.map_err(|e| LoadError::io(format!("cannot read {}", f.display()), e))?;
                text.push_str(&line);
                text.push('\n');
            }
            reports.extend(parse_reports(&text)?);
        }
    }
    merge_reports(reports)
}
