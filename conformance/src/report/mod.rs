//! Reports written from a [`RunRecord`]: each format is a pure function from the record (or, for
//! the matrix, several records) to a string, so the runner, `reproduce` and tests all produce
//! byte-identical reports from the same results.
//!
//! [`RunRecord`]: crate::outcome::RunRecord

pub mod gamma;
pub mod junit;
pub mod matrix;
pub mod meshery;
pub mod summary;

pub use gamma::gamma_report;
pub use junit::junit_report;
pub use matrix::{Divergence, FailingTarget, divergences, matrix_html, matrix_json, matrix_markdown};
pub use meshery::meshery_report;
pub use summary::summary_report;

/// Escapes text for XML and HTML content and (double- or single-quoted) attribute values.
///
/// Newlines and tabs become character references so attribute values survive attribute-value
/// normalisation; characters XML 1.0 forbids (most C0 controls, lone surrogates cannot occur in
/// a `str`, U+FFFE/U+FFFF) become U+FFFD, since a failure reason may quote arbitrary bytes.
pub(crate) fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The suite's name as it appears in ids and serialised records (`smi`, `gamma`, `patterns`).
pub(crate) fn suite_word(s: crate::outcome::SuiteName) -> &'static str {
    use crate::outcome::SuiteName;
    match s {
        SuiteName::Smi => "smi",
        SuiteName::Gamma => "gamma",
        SuiteName::Patterns => "patterns",
    }
}

/// The reason a verdict carries, or "" for a pass.
pub(crate) fn reason(v: &crate::outcome::Verdict) -> &str {
    use crate::outcome::Verdict;
    match v {
        Verdict::Pass => "",
        Verdict::Fail(r) | Verdict::Unsupported(r) | Verdict::Skipped(r) => r,
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small hand-made records the report tests share.

    use crate::outcome::*;

    pub fn result(id: &str, suite: SuiteName, level: Level, features: &[&str], verdict: Verdict) -> AssertionResult {
        let mut parts = id.split('/');
        let _suite = parts.next();
        let test = parts.next().unwrap_or(id).to_string();
        AssertionResult {
            id: id.to_string(),
            suite,
            test,
            spec: String::new(),
            level,
            features: features.iter().map(|f| f.to_string()).collect(),
            target: "meshwork".into(),
            verdict,
            runs: 1,
            passes: 1,
            millis: 1500,
            configuration: format!("config for {id}"),
        }
    }

    pub fn record(target: &str, results: Vec<AssertionResult>) -> RunRecord {
        RunRecord {
            suite_version: "0.1.0".into(),
            target: target.into(),
            implementation: Implementation {
                project: target.into(),
                version: "1.2.3".into(),
                organization: "meshwork".into(),
                url: "https://example.invalid/meshwork".into(),
            },
            artifacts: vec![],
            arguments: vec!["--target".into(), target.into()],
            started: "2025-06-06T15:00:00Z".into(),
            finished: "2025-06-06T15:28:42Z".into(),
            machine: Machine { os: "linux".into(), kernel: "6.8".into(), cpus: 2, hostname: "box".into() },
            results: results.into_iter().map(|r| AssertionResult { target: target.into(), ..r }).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(escape_xml("a<b>&\"c'\n\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;&#10;\u{fffd}");
    }
}
