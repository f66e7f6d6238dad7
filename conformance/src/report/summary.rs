//! The plain-text summary printed at the end of a run: counts per suite, then what needs
//! attention (failures, flaky assertions), then what the target cannot express.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::outcome::{RunRecord, SuiteName, Verdict};
use crate::report::suite_word;

#[derive(Default)]
struct Counts {
    pass: usize,
    fail: usize,
    unsupported: usize,
    skipped: usize,
}

/// A human summary of the record.
///
/// Flaky means repeated (`runs > 1`) with some but not all runs passing, whatever the verdict.
pub fn summary_report(record: &RunRecord) -> String {
    let mut per_suite: BTreeMap<SuiteName, Counts> = BTreeMap::new();
    for r in &record.results {
        let c = per_suite.entry(r.suite).or_default();
        match r.verdict {
            Verdict::Pass => c.pass += 1,
            Verdict::Fail(_) => c.fail += 1,
            Verdict::Unsupported(_) => c.unsupported += 1,
            Verdict::Skipped(_) => c.skipped += 1,
        }
    }

    let i = &record.implementation;
    let m = &record.machine;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "meshwork-conformance {} against {} ({} {})",
        record.suite_version, record.target, i.project, i.version
    );
    let _ = writeln!(
        s,
        "{} to {} on {} ({} {}, {} CPUs)\n",
        record.started, record.finished, m.hostname, m.os, m.kernel, m.cpus
    );
    let _ = writeln!(s, "{:<10} {:>6} {:>6} {:>12} {:>8}", "suite", "pass", "fail", "unsupported", "skipped");
    let mut total = Counts::default();
    for (suite, c) in &per_suite {
        let _ = writeln!(
            s,
            "{:<10} {:>6} {:>6} {:>12} {:>8}",
            suite_word(*suite),
            c.pass,
            c.fail,
            c.unsupported,
            c.skipped
        );
        total.pass += c.pass;
        total.fail += c.fail;
        total.unsupported += c.unsupported;
        total.skipped += c.skipped;
    }
    let _ = writeln!(
        s,
        "{:<10} {:>6} {:>6} {:>12} {:>8}",
        "total", total.pass, total.fail, total.unsupported, total.skipped
    );

    let section = |s: &mut String, title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            let _ = writeln!(s, "\n{title} ({}):", lines.len());
            for l in lines {
                // A multi-line reason stays under its item.
                let _ = writeln!(s, "  {}", l.replace('\n', "\n    "));
            }
        }
    };
    let with = |pick: fn(&Verdict) -> Option<&String>| -> Vec<String> {
        record.results.iter().filter_map(|r| pick(&r.verdict).map(|why| format!("{}: {why}", r.id))).collect()
    };
    section(&mut s, "Failures", with(|v| if let Verdict::Fail(w) = v { Some(w) } else { None }));
    let flaky = record
        .results
        .iter()
        .filter(|r| r.runs > 1 && r.passes > 0 && r.passes < r.runs)
        .map(|r| format!("{}: passed {} of {} runs", r.id, r.passes, r.runs))
        .collect();
    section(&mut s, "Flaky", flaky);
    section(&mut s, "Unsupported", with(|v| if let Verdict::Unsupported(w) = v { Some(w) } else { None }));
    if total.fail == 0 {
        s.push_str("\nNo failures.\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Level::Core;
    use crate::report::fixtures::{record, result};

    #[test]
    fn counts_failures_and_flaky() {
        let mut flaky = result("gamma/MeshHTTPRouteWeight/70-30", SuiteName::Gamma, Core, &[], Verdict::Pass);
        flaky.runs = 5;
        flaky.passes = 4;
        let mut steady = result("gamma/MeshBasic/200", SuiteName::Gamma, Core, &[], Verdict::Pass);
        steady.runs = 5;
        steady.passes = 5;
        let mut broken =
            result("gamma/MeshPorts/a", SuiteName::Gamma, Core, &[], Verdict::Fail("got 404\nbody: x".into()));
        broken.runs = 5;
        broken.passes = 0;
        let rec = record(
            "nginx",
            vec![
                flaky,
                steady,
                broken,
                result("smi/TrafficSplit/a", SuiteName::Smi, Core, &[], Verdict::Unsupported("no split".into())),
                result("patterns/retry/a", SuiteName::Patterns, Core, &[], Verdict::Skipped("no redis".into())),
            ],
        );
        let s = summary_report(&rec);
        let line = |name: &str| s.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().collect::<Vec<_>>();
        assert_eq!(line("gamma"), ["gamma", "2", "1", "0", "0"]);
        assert_eq!(line("smi"), ["smi", "0", "0", "1", "0"]);
        assert_eq!(line("patterns"), ["patterns", "0", "0", "0", "1"]);
        assert_eq!(line("total"), ["total", "2", "1", "1", "1"]);
        assert!(s.contains("Failures (1):\n  gamma/MeshPorts/a: got 404\n    body: x\n"), "{s}");
        assert!(s.contains("Flaky (1):\n  gamma/MeshHTTPRouteWeight/70-30: passed 4 of 5 runs\n"), "{s}");
        assert!(!s.contains("MeshBasic/200: passed") && !s.contains("of 5 runs\n  gamma/MeshPorts"), "{s}");
        assert!(s.contains("Unsupported (1):\n  smi/TrafficSplit/a: no split\n"), "{s}");
        assert!(!s.contains("No failures."));
    }
}
