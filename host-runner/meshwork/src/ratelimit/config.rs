//! The limits files: envoyproxy/ratelimit's YAML, one domain per file.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use meshwork_rate_limit_descriptors::limits::{DomainSpec, Limits};

/// Every file's domain; an error names the file and the field.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Limits> {
    let mut limits = Limits::default();
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read limits file {}", path.display()))?;
        add(&mut limits, path, &text)?;
    }
    Ok(limits)
}

fn add(limits: &mut Limits, path: &Path, text: &str) -> anyhow::Result<()> {
    if text.trim().is_empty() {
        return Err(anyhow!("{}: the file is empty (expected `domain:` and `descriptors:`)", path.display()));
    }
    let spec: DomainSpec = meshwork_yaml::from_str(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    limits.add(&spec).map_err(|e| anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        add(&mut Limits::default(), Path::new("limits.yaml"), text).unwrap_err().to_string()
    }

    #[test]
    fn accepts_envoyproxy_ratelimit_files() {
        let mut limits = Limits::default();
        let text = "domain: edge\ndescriptors:\n  - key: user\n    detailed_metric: true\n    rate_limit:\n      unit: MINUTE\n      requests_per_unit: 10\n  - key: generic_key\n    value: all\n    rate_limit: {unit: second, requests_per_unit: 100}\n";
        add(&mut limits, Path::new("a.yaml"), text).unwrap();
        add(&mut limits, Path::new("b.yaml"), "domain: other\n").unwrap();
        assert_eq!(limits.domains().collect::<Vec<_>>(), ["edge", "other"]);
        let again = add(&mut limits, Path::new("c.yaml"), "domain: edge\n").unwrap_err().to_string();
        assert_eq!(again, "c.yaml: domain: \"edge\" is defined more than once");
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        assert_eq!(error(""), "limits.yaml: the file is empty (expected `domain:` and `descriptors:`)");
        assert_eq!(
            error("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: weekly, requests_per_unit: 1}\n"),
            "limits.yaml: descriptors[0].rate_limit.unit: unknown unit \"weekly\" (use second, minute, hour or day)"
        );
        let unknown =
            error("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_minute: 1}\n");
        assert!(
            unknown.starts_with("limits.yaml: ")
                && unknown.contains("line 4 column 32: descriptors[0].rate_limit.requests_per_minute: unknown field `requests_per_minute`"),
            "{unknown}"
        );
        let wrong_type =
            error("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: -1}\n");
        assert!(wrong_type.contains(": descriptors[0].rate_limit.requests_per_unit: "), "{wrong_type}");
        assert!(error("descriptors: []\n").contains("missing field `domain`"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = load(&[PathBuf::from("/nonexistent/limits.yaml")]).unwrap_err();
        assert!(format!("{e:#}").starts_with("cannot read limits file /nonexistent/limits.yaml"));
    }
}
