//! JUnit XML, the format CI systems (GitHub, GitLab, Jenkins) already render: one
//! `<testsuite>` per suite, one `<testcase>` per assertion.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::outcome::{AssertionResult, RunRecord, SuiteName, Verdict};
use crate::report::{escape_xml as esc, suite_word};

fn secs(millis: u64) -> String {
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// The record as JUnit XML. Unsupported and skipped assertions are both `<skipped>` (JUnit has
/// no "cannot express"), told apart by the message's prefix.
pub fn junit_report(record: &RunRecord) -> String {
    let mut suites: BTreeMap<SuiteName, Vec<&AssertionResult>> = BTreeMap::new();
    for r in &record.results {
        suites.entry(r.suite).or_default().push(r);
    }
    let count = |rs: &[&AssertionResult], word: &str| rs.iter().filter(|r| r.verdict.word() == word).count();
    let all: Vec<&AssertionResult> = record.results.iter().collect();
    let total_ms: u64 = all.iter().map(|r| r.millis).sum();

    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"meshwork-conformance {}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{}\">",
        esc(&record.target),
        all.len(),
        count(&all, "fail"),
        count(&all, "unsupported") + count(&all, "skipped"),
        secs(total_ms),
    );
    for (suite, rs) in &suites {
        let name = suite_word(*suite);
        let _ = writeln!(
            x,
            "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{}\" timestamp=\"{}\" hostname=\"{}\">",
            rs.len(),
            count(rs, "fail"),
            count(rs, "unsupported") + count(rs, "skipped"),
            secs(rs.iter().map(|r| r.millis).sum()),
            esc(&record.started),
            esc(&record.machine.hostname),
        );
        x.push_str("    <properties>\n");
        for (k, v) in [
            ("target", &record.target),
            ("implementation", &record.implementation.project),
            ("implementation.version", &record.implementation.version),
            ("suite.version", &record.suite_version),
        ] {
            let _ = writeln!(x, "      <property name=\"{k}\" value=\"{}\"/>", esc(v));
        }
        x.push_str("    </properties>\n");
        for r in rs {
            let _ = write!(
                x,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{}\"",
                esc(&format!("{name}.{}", r.test)),
                esc(&r.id),
                secs(r.millis),
            );
            match &r.verdict {
                Verdict::Pass => x.push_str("/>\n"),
                Verdict::Fail(why) => {
                    let _ = writeln!(
                        x,
                        ">\n      <failure message=\"{0}\" type=\"fail\">{0}</failure>\n    </testcase>",
                        esc(why)
                    );
                }
                Verdict::Unsupported(why) | Verdict::Skipped(why) => {
                    let msg = format!("{}: {why}", r.verdict.word());
                    let _ = writeln!(x, ">\n      <skipped message=\"{}\"/>\n    </testcase>", esc(&msg));
                }
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Level::Core;
    use crate::report::fixtures::{record, result};

    /// The value of `attr` on the first element named `tag` whose text contains `having`.
    fn attr(xml: &str, tag: &str, having: &str, attr: &str) -> String {
        let start = xml
            .match_indices(&format!("<{tag} "))
            .map(|(i, _)| i)
            .find(|&i| xml[i..].split('>').next().unwrap().contains(having))
            .unwrap_or_else(|| panic!("no <{tag}> with {having} in\n{xml}"));
        let el = xml[start..].split('>').next().unwrap();
        let a = el.find(&format!(" {attr}=\"")).unwrap_or_else(|| panic!("no {attr} in {el}")) + attr.len() + 3;
        el[a..].split('"').next().unwrap().to_string()
    }

    #[test]
    fn counts_and_escaping() {
        let rec = record(
            "meshwork",
            vec![
                result("gamma/MeshBasic/200", SuiteName::Gamma, Core, &[], Verdict::Pass),
                result("gamma/MeshPorts/a", SuiteName::Gamma, Core, &[], Verdict::Fail("got <503> & \"x\"".into())),
                result("gamma/MeshPorts/b", SuiteName::Gamma, Core, &[], Verdict::Unsupported("no ports".into())),
                result("smi/TrafficSplit/a", SuiteName::Smi, Core, &[], Verdict::Skipped("filtered".into())),
                result("smi/TrafficSplit/b", SuiteName::Smi, Core, &[], Verdict::Pass),
            ],
        );
        let xml = junit_report(&rec);
        assert_eq!(attr(&xml, "testsuites", "", "tests"), "5");
        assert_eq!(attr(&xml, "testsuites", "", "failures"), "1");
        assert_eq!(attr(&xml, "testsuites", "", "skipped"), "2");
        assert_eq!(attr(&xml, "testsuites", "", "time"), "7.500");
        assert_eq!(attr(&xml, "testsuite", "name=\"gamma\"", "tests"), "3");
        assert_eq!(attr(&xml, "testsuite", "name=\"gamma\"", "failures"), "1");
        assert_eq!(attr(&xml, "testsuite", "name=\"gamma\"", "skipped"), "1");
        assert_eq!(attr(&xml, "testsuite", "name=\"gamma\"", "time"), "4.500");
        assert_eq!(attr(&xml, "testsuite", "name=\"smi\"", "tests"), "2");
        assert_eq!(attr(&xml, "testsuite", "name=\"smi\"", "failures"), "0");
        assert_eq!(attr(&xml, "testsuite", "name=\"smi\"", "skipped"), "1");
        assert_eq!(attr(&xml, "testcase", "gamma/MeshPorts/a", "classname"), "gamma.MeshPorts");
        assert_eq!(attr(&xml, "testcase", "gamma/MeshPorts/a", "time"), "1.500");
        assert_eq!(attr(&xml, "failure", "", "message"), "got &lt;503&gt; &amp; &quot;x&quot;");
        assert!(xml.contains("<skipped message=\"unsupported: no ports\"/>"));
        assert!(xml.contains("<skipped message=\"skipped: filtered\"/>"));
        // Balanced: every opened testcase with a body is closed.
        assert_eq!(xml.matches("<testsuite ").count(), xml.matches("</testsuite>").count());
        assert_eq!(xml.matches("<testcase").count(), 5);
        assert_eq!(xml.matches("</testcase>").count(), 3);
    }
}
