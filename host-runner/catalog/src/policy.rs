//! The catalog's Rego policies, evaluated in-process with regorus over configurations: each
//! policy's rule is a set of `{path, msg}` violations of one document. `check-policy` reads any
//! YAML or JSON file (several documents in one file too), works out what each document is, and
//! runs the policies that apply to it.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::item::Kind;
use crate::load::{Catalog, Entry, Problem};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// Which document of the file (0 for single-document files).
    pub document: usize,
    /// Where in the document (`filters[1].configuration.max_retries`).
    pub path: String,
    pub msg: String,
    pub policy: String,
}

/// What a document is, for choosing the policies that judge it.
pub fn document_type(doc: &Value) -> Option<&'static str> {
    let obj = doc.as_object()?;
    let api = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if obj.contains_key("static_resources") || obj.contains_key("bootstrap_extensions") {
        Some("envoy-bootstrap")
    } else if api.starts_with("extensions.istio.io/") && obj.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
        Some("istio-wasmplugin")
    } else if obj.contains_key("displayName")
        && obj.get("kind").and_then(Value::as_str).is_some_and(|k| Kind::parse(k).is_ok())
    {
        Some("catalog-item")
    } else if ["listen", "listeners", "clusters", "filters", "route", "routes"].iter().any(|k| obj.contains_key(*k)) {
        Some("meshwork-config")
    } else {
        None
    }
}

/// Every document of a YAML (or JSON) file.
pub fn read_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.without_snippet()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

struct Policy {
    name: String,
    rule: String,
    applies_to: Vec<String>,
    engine: regorus::Engine,
}

pub struct PolicySet {
    policies: Vec<Policy>,
}

impl PolicySet {
    /// The catalog's policies, compiled.
    pub fn load(catalog: &Catalog) -> anyhow::Result<PolicySet> {
        let lib = shared_modules(catalog)?;
        let policies = catalog.of_kind(Kind::Policy).map(|e| compile(e, &lib)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(PolicySet { policies })
    }

    pub fn names(&self) -> Vec<&str> {
        self.policies.iter().map(|p| p.name.as_str()).collect()
    }

    /// The violations of one document (`document`: its index in its file).
    pub fn check(&mut self, doc: &Value, document: usize) -> anyhow::Result<Vec<Violation>> {
        let Some(kind) = document_type(doc) else {
            anyhow::bail!(
                "document {document} is none of the kinds the policies judge (meshwork config, Envoy bootstrap, Istio WasmPlugin, catalog item)"
            )
        };
        let mut out = Vec::new();
        for p in self.policies.iter_mut().filter(|p| p.applies_to.iter().any(|a| a == kind)) {
            out.extend(evaluate(p, doc, document)?);
        }
        out.sort();
        Ok(out)
    }
}

/// Rego modules every policy may import: `catalog/policies/*.rego` (helpers that find filters
/// in each kind of document).
fn shared_modules(catalog: &Catalog) -> anyhow::Result<Vec<(String, String)>> {
    let dir = catalog.root.join(Kind::Policy.dir());
    let mut out = Vec::new();
    if let Ok(read) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = read.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "rego")) {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            out.push((path.display().to_string(), text));
        }
    }
    Ok(out)
}

fn compile(entry: &Entry, lib: &[(String, String)]) -> anyhow::Result<Policy> {
    let spec = entry.item.policy.as_ref().context("policy section")?;
    let path = entry.path(&spec.rego);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut engine = regorus::Engine::new();
    for (name, module) in lib {
        engine.add_policy(name.clone(), module.clone()).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    }
    engine.add_policy(path.display().to_string(), text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Policy { name: entry.item.name.clone(), rule: spec.rule.clone(), applies_to: spec.applies_to.clone(), engine })
}

fn evaluate(p: &mut Policy, doc: &Value, document: usize) -> anyhow::Result<Vec<Violation>> {
    p.engine.set_input(regorus::Value::from(doc.clone()));
    let result = p.engine.eval_rule(p.rule.clone()).map_err(|e| anyhow::anyhow!("policy {}: {e}", p.name))?;
    if result == regorus::Value::Undefined {
        return Ok(Vec::new());
    }
    let json: Value =
        serde_json::from_str(&result.to_json_str().map_err(|e| anyhow::anyhow!("policy {}: {e}", p.name))?)?;
    let items = json.as_array().with_context(|| format!("policy {}: {} is not a set", p.name, p.rule))?;
    items
        .iter()
        .map(|v| {
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            Ok(Violation {
                document,
                path: field("path").unwrap_or_default(),
                msg: field("msg").with_context(|| format!("policy {}: a violation without msg: {v}", p.name))?,
                policy: p.name.clone(),
            })
        })
        .collect()
}

/// Every policy passes the documents it says it passes and finds violations in those it says
/// it fails (`catalog validate` runs this).
pub fn self_test(catalog: &Catalog) -> Vec<Problem> {
    let mut problems = Vec::new();
    let lib = match shared_modules(catalog) {
        Ok(lib) => lib,
        Err(e) => {
            problems.push(Problem {
                file: catalog.root.join(Kind::Policy.dir()),
                field: String::new(),
                message: format!("{e:#}"),
            });
            return problems;
        }
    };
    for entry in catalog.of_kind(Kind::Policy) {
        let spec = entry.item.policy.as_ref().expect("validated");
        let mut report = |field: String, message: String| {
            problems.push(Problem { file: entry.file(), field, message });
        };
        let mut policy = match compile(entry, &lib) {
            Ok(p) => p,
            Err(e) => {
                report("policy.rego".into(), format!("{e:#}"));
                continue;
            }
        };
        for (field, list, want_violations) in
            [("policy.passes", &spec.passes, false), ("policy.fails", &spec.fails, true)]
        {
            for (i, rel) in list.iter().enumerate() {
                let path = entry.path(rel);
                let outcome = read_documents(&path).and_then(|docs| {
                    let mut all = Vec::new();
                    for (n, d) in docs.iter().enumerate() {
                        all.extend(evaluate(&mut policy, d, n)?);
                    }
                    Ok(all)
                });
                match outcome {
                    Err(e) => report(format!("{field}[{i}]"), format!("{e:#}")),
                    Ok(v) if want_violations && v.is_empty() => report(
                        format!("{field}[{i}]"),
                        format!("{} should violate the policy but does not", path.display()),
                    ),
                    Ok(v) if !want_violations && !v.is_empty() => report(
                        format!("{field}[{i}]"),
                        format!(
                            "{} should pass but: {}",
                            path.display(),
                            v.iter().map(|v| format!("{}: {}", v.path, v.msg)).collect::<Vec<_>>().join("; ")
                        ),
                    ),
                    Ok(_) => {}
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_are_told_apart() {
        assert_eq!(document_type(&json!({"static_resources": {}})), Some("envoy-bootstrap"));
        assert_eq!(
            document_type(&json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin"})),
            Some("istio-wasmplugin")
        );
        assert_eq!(document_type(&json!({"kind": "ebpf", "displayName": "x", "name": "x"})), Some("catalog-item"));
        assert_eq!(document_type(&json!({"listen": "127.0.0.1:1"})), Some("meshwork-config"));
        assert_eq!(document_type(&json!({"hello": 1})), None);
        assert_eq!(document_type(&json!([1, 2])), None);
    }

    #[test]
    fn a_rule_set_becomes_violations() {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy(
                "t.rego".into(),
                "package t\nviolations contains {\"path\": sprintf(\"filters[%d]\", [i]), \"msg\": \"no\"} if { some i; input.filters[i].bad }"
                    .into(),
            )
            .unwrap();
        let mut p = Policy { name: "t".into(), rule: "data.t.violations".into(), applies_to: vec![], engine };
        let v = evaluate(&mut p, &json!({"filters": [{"bad": false}, {"bad": true}]}), 0).unwrap();
        assert_eq!(v, [Violation { document: 0, path: "filters[1]".into(), msg: "no".into(), policy: "t".into() }]);
        assert!(evaluate(&mut p, &json!({"filters": []}), 0).unwrap().is_empty());
    }
}
