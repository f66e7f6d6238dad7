//! Structural validation of the documents meshwork deploys, before a cluster or a proxy sees
//! them: JSON Schemas (`schemas/`, after the upstream CRDs and protos) checked with `jsonschema`,
//! plus the rules a schema cannot say (a Kuma `value` is YAML text that must be an Envoy
//! HttpFilter; the router ends the chain; routes name defined clusters). Every problem names the
//! document, the field (a JSON pointer) and the reason.

use std::fmt;
use std::sync::LazyLock;

use anyhow::Context as _;
use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use serde_json::{Value, json};

use crate::model::Document;
use crate::render::{HCM_TYPE, ROUTER_TYPE};

/// One thing wrong with a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `kind/name`.
    pub document: String,
    /// A JSON pointer into the document (`/spec/url`); empty for the document itself.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "(document)" } else { &self.path };
        write!(f, "{}: {path}: {}", self.document, self.reason)
    }
}

/// A compiled schema and its source, where `x-message` reasons are looked up.
struct Schema {
    source: Value,
    validator: Validator,
}

impl Schema {
    fn new(source: Value) -> Schema {
        let validator =
            jsonschema::draft202012::new(&source).unwrap_or_else(|e| panic!("a schema does not compile: {e}"));
        Schema { source, validator }
    }

    /// The schema file as is.
    fn file(text: &str) -> Schema {
        Schema::new(serde_saphyr::from_str(text).expect("a schema file is YAML"))
    }

    /// The schema file rooted at one of its `$defs`.
    fn def(text: &str, def: &str) -> Schema {
        let mut source: Value = serde_saphyr::from_str(text).expect("a schema file is YAML");
        source["$ref"] = json!(format!("#/$defs/{def}"));
        Schema::new(source)
    }

    /// The problems of `value`, their paths under `base`.
    fn check(&self, document: &str, value: &Value, base: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        for error in self.validator.iter_errors(value) {
            self.explain(document, base, &error, &mut problems);
        }
        problems
    }

    fn explain(&self, document: &str, base: &str, error: &ValidationError<'_>, out: &mut Vec<Problem>) {
        let path = format!("{base}{}", error.instance_path().as_str());
        let message = self.x_message(error);
        let problem = |path: String, reason: String| Problem { document: document.to_owned(), path, reason };
        match error.kind() {
            ValidationErrorKind::Required { property } => {
                let field = property.as_str().map_or_else(|| property.to_string(), str::to_owned);
                out.push(problem(
                    format!("{path}/{}", escape(&field)),
                    message.unwrap_or_else(|| "is required".into()),
                ));
            }
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for field in unexpected {
                    out.push(problem(format!("{path}/{}", escape(field)), "is not a field here".into()));
                }
            }
            ValidationErrorKind::Enum { options } if message.is_none() => {
                let options: Vec<String> = options.as_array().into_iter().flatten().map(Value::to_string).collect();
                out.push(problem(
                    path,
                    format!("{} is not one of {}", short(&error.instance().to_string()), options.join(", ")),
                ));
            }
            ValidationErrorKind::Constant { expected_value } if message.is_none() => {
                out.push(problem(
                    path,
                    format!("must be {expected_value} (got {})", short(&error.instance().to_string())),
                ));
            }
            _ => {
                let instance = error.instance();
                let reason = match message {
                    Some(m) if instance.is_object() || instance.is_array() => m,
                    Some(m) => format!("{m} (got {})", short(&instance.to_string())),
                    None => short(&error.to_string()),
                };
                out.push(problem(path, reason));
            }
        }
    }

    /// The `x-message` of the schema object holding the failed keyword (all of it, or the entry
    /// for that keyword), following local `$ref`s.
    fn x_message(&self, error: &ValidationError<'_>) -> Option<String> {
        let segments: Vec<String> = error
            .schema_path()
            .iter()
            .map(|s| match s {
                LocationSegment::Property(p) => p.into_owned(),
                LocationSegment::Index(i) => i.to_string(),
            })
            .collect();
        let (keyword, parents) = segments.split_last()?;
        let mut node = &self.source;
        for segment in parents {
            node = if segment == "$ref" {
                let target = node.get("$ref")?.as_str()?.strip_prefix('#')?;
                self.source.pointer(target)?
            } else {
                match node {
                    Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                    other => other.get(segment)?,
                }
            };
        }
        // A string applies to every keyword beside it; a map to the keywords it names.
        match node.get("x-message")? {
            Value::String(m) => Some(m.clone()),
            Value::Object(by_keyword) => by_keyword.get(keyword)?.as_str().map(str::to_owned),
            _ => None,
        }
    }
}

/// A JSON pointer segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn short(text: &str) -> String {
    const MAX: usize = 160;
    if text.chars().count() <= MAX { text.to_owned() } else { text.chars().take(MAX).collect::<String>() + "…" }
}

const ENVOY: &str = include_str!("../schemas/envoy.yaml");

struct Schemas {
    wasm_plugin: Schema,
    extension_policy: Schema,
    service_defaults: Schema,
    mesh_proxy_patch: Schema,
    meshwork: Schema,
    bootstrap: Schema,
    http_filters: Schema,
    kuma_http_filter: Schema,
    daemonset: Schema,
}

static SCHEMAS: LazyLock<Schemas> = LazyLock::new(|| Schemas {
    wasm_plugin: Schema::file(include_str!("../schemas/wasmplugin.yaml")),
    extension_policy: Schema::file(include_str!("../schemas/envoyextensionpolicy.yaml")),
    service_defaults: Schema::file(include_str!("../schemas/servicedefaults.yaml")),
    mesh_proxy_patch: Schema::file(include_str!("../schemas/meshproxypatch.yaml")),
    meshwork: Schema::file(include_str!("../schemas/meshwork.yaml")),
    bootstrap: Schema::def(ENVOY, "bootstrap"),
    http_filters: Schema::def(ENVOY, "httpFilters"),
    kuma_http_filter: Schema::def(ENVOY, "kumaHttpFilter"),
    daemonset: Schema::file(include_str!("../schemas/daemonset.yaml")),
});

/// The problems of one document, checked as its `kind` says.
pub fn validate(doc: &Document) -> Vec<Problem> {
    let label = format!("{}/{}", doc.kind, doc.name);
    let s = &*SCHEMAS;
    let v = &doc.value;
    match doc.kind.as_str() {
        "WasmPlugin" => s.wasm_plugin.check(&label, v, ""),
        "EnvoyExtensionPolicy" => s.extension_policy.check(&label, v, ""),
        "ServiceDefaults" => s.service_defaults.check(&label, v, ""),
        "MeshProxyPatch" => {
            let mut problems = s.mesh_proxy_patch.check(&label, v, "");
            problems.extend(kuma_values(&label, v));
            problems
        }
        "Bootstrap" => {
            let mut problems = s.bootstrap.check(&label, v, "");
            problems.extend(bootstrap_rules(&label, v));
            problems
        }
        "HttpFilters" => {
            let mut problems = s.http_filters.check(&label, v, "");
            if let Some(list) = v.as_array() {
                problems.extend(router_last(&label, list, "", false));
            }
            problems
        }
        "DaemonSet" => {
            let mut problems = s.daemonset.check(&label, v, "");
            // The API server refuses a template its own selector does not match.
            if let (Some(want), Some(have)) = (
                v.pointer("/spec/selector/matchLabels").and_then(Value::as_object),
                v.pointer("/spec/template/metadata/labels").and_then(Value::as_object),
            ) && let Some((k, _)) = want.iter().find(|(k, val)| have.get(*k) != Some(val))
            {
                problems.push(Problem {
                    document: label.clone(),
                    path: "/spec/template/metadata/labels".into(),
                    reason: format!("does not carry the selector's label {k}: the API server refuses the DaemonSet"),
                });
            }
            problems
        }
        "MeshworkConfig" => {
            let mut problems = s.meshwork.check(&label, v, "");
            problems.extend(meshwork_routes(&label, v));
            problems
        }
        _ => vec![Problem {
            document: label,
            path: String::new(),
            reason: format!(
                "not a document meshwork deploys: apiVersion {} kind {}",
                v.get("apiVersion").and_then(Value::as_str).unwrap_or("(none)"),
                v.get("kind").and_then(Value::as_str).unwrap_or(&doc.kind)
            ),
        }],
    }
}

/// Reads a user's YAML or JSON (several YAML documents, a JSON array of them, or a Kubernetes
/// `List`), recognises each document and validates it. Fails only when the text does not parse.
pub fn validate_text(text: &str) -> Result<Vec<(Document, Vec<Problem>)>, anyhow::Error> {
    let values: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(anyhow::Error::new).context("the file is not valid YAML or JSON")?;
    let mut docs = Vec::new();
    for value in values {
        recognise(value, &mut docs);
    }
    Ok(docs
        .into_iter()
        .map(|d| {
            let problems = validate(&d);
            (d, problems)
        })
        .collect())
}

/// What a parsed document is: a Kubernetes object (by kind), an Envoy bootstrap
/// (`static_resources`), a list of Envoy HTTP filters, or meshwork's YAML (`listen`/`listeners`).
fn recognise(value: Value, out: &mut Vec<Document>) {
    let doc = |kind: &str, name: String, value: Value| Document {
        kind: kind.into(),
        name,
        value,
        text: None,
        notes: Vec::new(),
    };
    match &value {
        Value::Null => {}
        Value::Object(map) if map.contains_key("apiVersion") || map.contains_key("kind") => {
            let kind = map.get("kind").and_then(Value::as_str).unwrap_or("(no kind)").to_owned();
            if kind == "List"
                && let Some(items) = map.get("items").and_then(Value::as_array)
            {
                for item in items.clone() {
                    recognise(item, out);
                }
                return;
            }
            let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("(unnamed)").to_owned();
            // Kinds meshwork does not deploy keep their kind; validate() names them.
            out.push(doc(&kind, name, value));
        }
        Value::Object(map) if map.contains_key("static_resources") => {
            out.push(doc("Bootstrap", "bootstrap".into(), value))
        }
        Value::Object(map) if map.contains_key("listen") || map.contains_key("listeners") => {
            out.push(doc("MeshworkConfig", "meshwork".into(), value))
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.get("apiVersion").is_some()) => {
            for item in items.clone() {
                recognise(item, out);
            }
        }
        Value::Array(_) => out.push(doc("HttpFilters", "http-filters".into(), value)),
        _ => out.push(doc("(unknown)", "(unnamed)".into(), value)),
    }
}

/// Kuma's validator parses each Add `value` into the Envoy resource it modifies: an HttpFilter
/// for `httpFilter`, a Cluster (here: an object with a name) for `cluster`.
fn kuma_values(label: &str, doc: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(mods) = doc.pointer("/spec/default/appendModifications").and_then(Value::as_array) else {
        return problems;
    };
    for (i, m) in mods.iter().enumerate() {
        for (key, what) in [("httpFilter", "an Envoy HttpFilter"), ("cluster", "an Envoy Cluster")] {
            let Some(text) = m.get(key).and_then(|x| x.get("value")).and_then(Value::as_str) else { continue };
            let path = format!("/spec/default/appendModifications/{i}/{key}/value");
            let problem = |reason: String| Problem { document: label.to_owned(), path: path.clone(), reason };
            let parsed: Value = match serde_saphyr::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(problem(format!("is not YAML, so not {what}: {}", short(&e.to_string()))));
                    continue;
                }
            };
            if key == "cluster" {
                if parsed.get("name").and_then(Value::as_str).is_none() {
                    problems.push(problem(format!("is not {what}: it needs a name")));
                }
                continue;
            }
            for inner in SCHEMAS.kuma_http_filter.check(label, &parsed, "") {
                let at = if inner.path.is_empty() { String::new() } else { format!("{}: ", inner.path) };
                problems.push(problem(format!("is not {what}: {at}{}", inner.reason)));
            }
        }
    }
    problems
}

/// In a bootstrap, each connection manager ends with the router; routes and remote code name
/// clusters that exist.
fn bootstrap_rules(label: &str, doc: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let listify = |v: Option<&Value>| -> Vec<Value> {
        match v {
            Some(Value::Array(items)) => items.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(one) => vec![one.clone()],
        }
    };
    let clusters: Vec<String> = listify(doc.pointer("/static_resources/clusters"))
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let listeners_path: fn(usize) -> String = if doc.pointer("/static_resources/listeners").is_some_and(Value::is_array)
    {
        |i: usize| format!("/static_resources/listeners/{i}")
    } else {
        |_: usize| "/static_resources/listeners".to_owned()
    };
    let mut missing = |path: String, cluster: &str, what: &str| {
        if !clusters.iter().any(|c| c == cluster) {
            problems.push(Problem {
                document: label.to_owned(),
                path,
                reason: format!("{what} names cluster {cluster:?}, which static_resources.clusters does not define"),
            });
        }
    };
    let mut router = Vec::new();
    for (i, listener) in listify(doc.pointer("/static_resources/listeners")).iter().enumerate() {
        for (j, chain) in listify(listener.get("filter_chains")).iter().enumerate() {
            for (k, filter) in listify(chain.get("filters")).iter().enumerate() {
                let Some(hcm) =
                    filter.get("typed_config").filter(|t| t.get("@type").and_then(Value::as_str) == Some(HCM_TYPE))
                else {
                    continue;
                };
                let base = format!("{}/filter_chains/{j}/filters/{k}/typed_config", listeners_path(i));
                for (h, vh) in listify(hcm.pointer("/route_config/virtual_hosts")).iter().enumerate() {
                    for (r, route) in listify(vh.get("routes")).iter().enumerate() {
                        if let Some(c) = route.pointer("/route/cluster").and_then(Value::as_str) {
                            let path = format!("{base}/route_config/virtual_hosts/{h}/routes/{r}/route/cluster");
                            missing(path, c, "the route");
                        }
                    }
                }
                let filters = listify(hcm.get("http_filters"));
                for (f, entry) in filters.iter().enumerate() {
                    let remote = entry.pointer("/typed_config/config/vm_config/code/remote/http_uri/cluster");
                    if let Some(c) = remote.and_then(Value::as_str) {
                        let path = format!(
                            "{base}/http_filters/{f}/typed_config/config/vm_config/code/remote/http_uri/cluster"
                        );
                        missing(path, c, "the remote code");
                    }
                }
                router.extend(router_last(label, &filters, &format!("{base}/http_filters"), true));
            }
        }
    }
    problems.extend(router);
    problems
}

/// The router is the last HTTP filter: required in a bootstrap, optional in a fragment.
fn router_last(label: &str, filters: &[Value], base: &str, required: bool) -> Vec<Problem> {
    let is_router = |f: &Value| {
        f.get("name").and_then(Value::as_str) == Some("envoy.filters.http.router")
            || f.pointer("/typed_config/@type").and_then(Value::as_str) == Some(ROUTER_TYPE)
    };
    let mut problems = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        if is_router(f) && i + 1 != filters.len() {
            problems.push(Problem {
                document: label.to_owned(),
                path: format!("{base}/{i}"),
                reason: "the router must be the last HTTP filter: filters after it never run".into(),
            });
        }
    }
    if required && !filters.last().is_some_and(is_router) {
        problems.push(Problem {
            document: label.to_owned(),
            path: base.to_owned(),
            reason: "the last HTTP filter must be envoy.filters.http.router".into(),
        });
    }
    problems
}

/// meshwork's routes name clusters it defines.
fn meshwork_routes(label: &str, doc: &Value) -> Vec<Problem> {
    let clusters: Vec<&str> = doc
        .get("clusters")
        .and_then(Value::as_array)
        .map(|c| c.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).collect())
        .unwrap_or_default();
    let mut routes: Vec<(String, &Value)> = Vec::new();
    if let Some(r) = doc.get("route") {
        routes.push(("/route".into(), r));
    }
    for (i, r) in doc.get("routes").and_then(Value::as_array).into_iter().flatten().enumerate() {
        routes.push((format!("/routes/{i}"), r));
    }
    routes
        .into_iter()
        .filter_map(|(path, r)| {
            let c = r.get("cluster").and_then(Value::as_str)?;
            (!clusters.contains(&c)).then(|| Problem {
                document: label.to_owned(),
                path: format!("{path}/cluster"),
                reason: format!("names cluster {c:?}, which `clusters` does not define"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
