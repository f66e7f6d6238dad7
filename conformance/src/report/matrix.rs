//! The comparison matrix: several runs (one per target) side by side, assertion × target, and
//! the divergences between them, where one implementation passes what another fails. Those are
//! the interesting rows: either a bug in one implementation or an ambiguity in the spec.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::outcome::{AssertionResult, RunRecord, SuiteName, Verdict};
use crate::report::{escape_xml as esc, reason, suite_word};

/// An assertion that passes on some targets and fails on others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Divergence {
    pub id: String,
    pub suite: SuiteName,
    pub passing: Vec<String>,
    pub failing: Vec<FailingTarget>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailingTarget {
    pub target: String,
    pub reason: String,
}

/// Rows keyed by (suite, id), each with one optional cell per record, in the records' order.
type Rows<'a> = BTreeMap<(SuiteName, &'a str), Vec<Option<&'a AssertionResult>>>;

fn rows(records: &[RunRecord]) -> Rows<'_> {
    let mut rows: Rows = BTreeMap::new();
    for (col, rec) in records.iter().enumerate() {
        for r in &rec.results {
            rows.entry((r.suite, r.id.as_str())).or_insert_with(|| vec![None; records.len()])[col] = Some(r);
        }
    }
    rows
}

/// Every assertion some target passes and another fails, ordered by suite and id; unsupported
/// and skipped cells do not diverge (a target that cannot express a test has no opinion on it).
pub fn divergences(records: &[RunRecord]) -> Vec<Divergence> {
    rows(records)
        .into_iter()
        .filter_map(|((suite, id), cells)| {
            let mut passing = vec![];
            let mut failing = vec![];
            for (rec, cell) in records.iter().zip(&cells) {
                match cell.map(|r| &r.verdict) {
                    Some(Verdict::Pass) => passing.push(rec.target.clone()),
                    Some(Verdict::Fail(why)) => {
                        failing.push(FailingTarget { target: rec.target.clone(), reason: why.clone() })
                    }
                    _ => {}
                }
            }
            (!passing.is_empty() && !failing.is_empty()).then(|| Divergence {
                id: id.to_string(),
                suite,
                passing,
                failing,
            })
        })
        .collect()
}

fn symbol(cell: Option<&AssertionResult>) -> &'static str {
    match cell.map(|r| &r.verdict) {
        Some(Verdict::Pass) => "✓",
        Some(Verdict::Fail(_)) => "✗",
        Some(Verdict::Unsupported(_)) => "–",
        Some(Verdict::Skipped(_)) => "·",
        None => "",
    }
}

/// Table cells cannot hold `|` or line breaks, and Markdown renders `<…>` as HTML.
fn md(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The matrix as a Markdown table (✓ pass, ✗ fail, – unsupported, · skipped, blank: not in
/// that target's run), followed by the divergences with the failing targets' reasons.
pub fn matrix_markdown(records: &[RunRecord]) -> String {
    let mut s = String::from("| assertion | suite |");
    for rec in records {
        let _ = write!(s, " {} |", md(&rec.target));
    }
    s.push_str("\n|---|---|");
    s.push_str(&":-:|".repeat(records.len()));
    s.push('\n');
    for ((suite, id), cells) in rows(records) {
        let _ = write!(s, "| {} | {} |", md(id), suite_word(suite));
        for cell in cells {
            let _ = write!(s, " {} |", symbol(cell));
        }
        s.push('\n');
    }
    s.push_str("\n✓ pass, ✗ fail, – unsupported, · skipped; blank: not run on that target.\n");
    let divs = divergences(records);
    if !divs.is_empty() {
        let _ = writeln!(s, "\n### Divergences ({})\n", divs.len());
        for d in divs {
            let _ = write!(s, "- {}: passes on {}; fails on ", md(&d.id), d.passing.join(", "));
            let fails: Vec<String> = d.failing.iter().map(|f| format!("{} ({})", f.target, md(&f.reason))).collect();
            let _ = writeln!(s, "{}", fails.join(", "));
        }
    }
    s
}

#[derive(Serialize)]
struct MatrixJson<'a> {
    targets: Vec<&'a str>,
    rows: Vec<Row<'a>>,
    divergences: Vec<Divergence>,
}

#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    suite: SuiteName,
    /// Target → verdict word; a target that did not run the assertion is absent.
    results: BTreeMap<&'a str, &'static str>,
}

/// The matrix as JSON: `{targets, rows: [{id, suite, results: {target: word}}], divergences}`.
pub fn matrix_json(records: &[RunRecord]) -> String {
    let rows = rows(records)
        .into_iter()
        .map(|((suite, id), cells)| Row {
            id,
            suite,
            results: records
                .iter()
                .zip(cells)
                .filter_map(|(rec, c)| c.map(|r| (rec.target.as_str(), r.verdict.word())))
                .collect(),
        })
        .collect();
    let m = MatrixJson {
        targets: records.iter().map(|r| r.target.as_str()).collect(),
        rows,
        divergences: divergences(records),
    };
    serde_json::to_string_pretty(&m).expect("strings, lists and maps with string keys always serialise")
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 8px}\
th{background:#f4f4f4;position:sticky;top:0}td.c{text-align:center;font-weight:bold}\
td.pass{background:#e3f6e3;color:#1a7f1a}td.fail{background:#fbe2e2;color:#b00020}\
td.unsupported{background:#f0f0f0;color:#777}td.skipped{color:#aaa}\
tr.div td.id{border-left:4px solid #b00020}code{font-size:13px}.why{color:#555}";

/// The matrix as one self-contained HTML page (inline CSS, no scripts, no external requests);
/// hovering a cell shows its reason.
pub fn matrix_html(records: &[RunRecord]) -> String {
    let divs = divergences(records);
    let mut h = String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ = writeln!(h, "<title>meshwork conformance matrix</title><style>{CSS}</style></head><body>");
    h.push_str("<h1>Conformance matrix</h1>\n<p>✓ pass, ✗ fail, – unsupported, · skipped; hover for the reason.</p>\n");
    h.push_str("<table>\n<tr><th>assertion</th><th>suite</th>");
    for rec in records {
        let i = &rec.implementation;
        let _ = write!(h, "<th title=\"{} {}\">{}</th>", esc(&i.project), esc(&i.version), esc(&rec.target));
    }
    h.push_str("</tr>\n");
    for ((suite, id), cells) in rows(records) {
        let class = if divs.iter().any(|d| d.id == id) { " class=\"div\"" } else { "" };
        let _ = write!(h, "<tr{class}><td class=\"id\"><code>{}</code></td><td>{}</td>", esc(id), suite_word(suite));
        for cell in cells {
            match cell {
                Some(r) => {
                    let _ = write!(
                        h,
                        "<td class=\"c {}\" title=\"{}\">{}</td>",
                        r.verdict.word(),
                        esc(reason(&r.verdict)),
                        symbol(cell)
                    );
                }
                None => h.push_str("<td class=\"c\" title=\"not run\"></td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("<tr><th colspan=\"2\">passed</th>");
    for rec in records {
        let passed = rec.results.iter().filter(|r| r.verdict == Verdict::Pass).count();
        let _ = write!(h, "<th>{passed}/{}</th>", rec.results.len());
    }
    h.push_str("</tr>\n</table>\n");
    if !divs.is_empty() {
        let _ = writeln!(h, "<h2>Divergences ({})</h2>\n<ul>", divs.len());
        for d in &divs {
            let _ =
                write!(h, "<li><code>{}</code>: passes on {}; fails on <ul>", esc(&d.id), esc(&d.passing.join(", ")));
            for f in &d.failing {
                let _ = write!(h, "<li>{}: <span class=\"why\">{}</span></li>", esc(&f.target), esc(&f.reason));
            }
            h.push_str("</ul></li>\n");
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::outcome::Level::Core;
    use crate::report::fixtures::{record, result};

    fn records() -> Vec<RunRecord> {
        let r = |id: &str, v: Verdict| result(id, SuiteName::Gamma, Core, &[], v);
        vec![
            record(
                "meshwork",
                vec![
                    r("gamma/MeshBasic/200", Verdict::Pass),
                    r("gamma/MeshPorts/a", Verdict::Pass),
                    r("gamma/MeshRedirect/a", Verdict::Unsupported("n/a".into())),
                ],
            ),
            record(
                "nginx",
                vec![
                    r("gamma/MeshBasic/200", Verdict::Pass),
                    r("gamma/MeshPorts/a", Verdict::Fail("got 404 | <b>".into())),
                    r("gamma/MeshRedirect/a", Verdict::Fail("no".into())),
                    r("gamma/OnlyHere/a", Verdict::Skipped("filtered".into())),
                ],
            ),
            record("haproxy", vec![r("gamma/MeshPorts/a", Verdict::Fail("got 503".into()))]),
        ]
    }

    #[test]
    fn divergence_needs_a_pass_and_a_fail() {
        let d = divergences(&records());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].id, "gamma/MeshPorts/a");
        assert_eq!(d[0].passing, ["meshwork"]);
        assert_eq!(
            d[0].failing,
            [
                FailingTarget { target: "nginx".into(), reason: "got 404 | <b>".into() },
                FailingTarget { target: "haproxy".into(), reason: "got 503".into() }
            ]
        );
    }

    #[test]
    fn markdown_cells() {
        let m = matrix_markdown(&records());
        assert!(m.starts_with("| assertion | suite | meshwork | nginx | haproxy |\n|---|---|:-:|:-:|:-:|\n"), "{m}");
        assert!(m.contains("| gamma/MeshBasic/200 | gamma | ✓ | ✓ |  |\n"), "{m}");
        assert!(m.contains("| gamma/MeshPorts/a | gamma | ✓ | ✗ | ✗ |\n"), "{m}");
        assert!(m.contains("| gamma/MeshRedirect/a | gamma | – | ✗ |  |\n"), "{m}");
        assert!(m.contains("| gamma/OnlyHere/a | gamma |  | · |  |\n"), "{m}");
        assert!(
            m.contains(
                "- gamma/MeshPorts/a: passes on meshwork; fails on nginx (got 404 \\| &lt;b&gt;), haproxy (got 503)"
            ),
            "{m}"
        );
    }

    #[test]
    fn json_shape() {
        let v: Value = serde_json::from_str(&matrix_json(&records())).unwrap();
        assert_eq!(v["targets"], serde_json::json!(["meshwork", "nginx", "haproxy"]));
        let rows = v["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 4);
        let ports = rows.iter().find(|r| r["id"] == "gamma/MeshPorts/a").unwrap();
        assert_eq!(ports["suite"], "gamma");
        assert_eq!(ports["results"], serde_json::json!({"meshwork": "pass", "nginx": "fail", "haproxy": "fail"}));
        let only = rows.iter().find(|r| r["id"] == "gamma/OnlyHere/a").unwrap();
        assert_eq!(only["results"], serde_json::json!({"nginx": "skipped"}));
        assert_eq!(v["divergences"][0]["failing"][1]["target"], "haproxy");
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let h = matrix_html(&records());
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(!h.contains("http://") && !h.contains("https://") && !h.contains("<script"), "{h}");
        assert!(!h.contains("<b>"), "reasons must be escaped");
        assert!(h.contains("got 404 | &lt;b&gt;"));
        assert!(h.contains("<td class=\"c fail\" title=\"got 503\">✗</td>"));
        assert!(h.contains("<tr class=\"div\"><td class=\"id\"><code>gamma/MeshPorts/a</code>"));
        assert_eq!(h.matches("<tr").count(), 6);
    }
}
