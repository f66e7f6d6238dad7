//! `meshwork run --kuma FILE...`: Kuma `MeshProxyPatch` policies (`kuma.io/v1alpha1`, or the
//! universal `type: MeshProxyPatch` form) run as a Kuma dataplane runs them on its inbound
//! listener.
//!
//! What runs: `spec.default.appendModifications[].httpFilter` additions (AddFirst, AddBefore,
//! AddAfter) on `origin: inbound`, each `value` an Envoy `HttpFilter` in YAML translated by the
//! Envoy bootstrap translator ([`crate::envoy::wasm_http_filter`]). The chain starts as a
//! dataplane's inbound chain without other policies: just `envoy.filters.http.router`.
//! Modifications apply in Kuma's merge order: policies by how specific their targetRef is (Mesh,
//! MeshSubset, Dataplane by labels, Dataplane by name), equal ones by name; `appendModifications`
//! lists are concatenated in that order, and each one is applied to the chain the previous ones left.
//!
//! What does not: modifications that only touch other origins (outbound, gateway...) are skipped
//! with a note; Patch, Remove, AddLast (after the terminal router, which Envoy refuses) and
//! cluster, listener, network-filter or virtual-host modifications of the inbound are refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use meshwork_wasm_host::NodeInfo;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{FilterConfig, ProxyConfig};
use crate::istio::{Document, Inbound, KubeObject, Translation, Workload, inbound_config, read_documents};

const API_VERSION: &str = "kuma.io/v1alpha1";
const ROUTER: &str = "envoy.filters.http.router";
/// Kuma puts every workload in this mesh unless a policy's `kuma.io/mesh` label says otherwise.
const MESH: &str = "default";

/// The universal form (`kumactl apply`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UniversalDoc {
    #[serde(rename = "type")]
    #[allow(dead_code, reason = "checked before the document is parsed")]
    kind: String,
    name: String,
    mesh: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "policy labels do not change what it does")]
    labels: BTreeMap<String, String>,
    #[allow(dead_code, reason = "what the control plane reports; ignored")]
    creation_time: Option<Value>,
    #[allow(dead_code, reason = "what the control plane reports; ignored")]
    modification_time: Option<Value>,
    spec: Spec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    target_ref: Option<TargetRef>,
    #[serde(default)]
    default: Conf,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TargetRef {
    kind: String,
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    tags: Option<BTreeMap<String, String>>,
    section_name: Option<String>,
    mesh: Option<String>,
    proxy_types: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    append_modifications: Vec<Modification>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Modification {
    cluster: Option<Value>,
    listener: Option<Value>,
    network_filter: Option<Value>,
    http_filter: Option<HttpFilterMod>,
    virtual_host: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpFilterMod {
    #[serde(rename = "match")]
    matcher: Option<HttpFilterMatch>,
    operation: Operation,
    value: Option<String>,
    json_patches: Option<Value>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpFilterMatch {
    origin: Option<String>,
    name: Option<String>,
    listener_name: Option<String>,
    listener_tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Add,
    Remove,
    Patch,
    AddFirst,
    AddLast,
    AddBefore,
    AddAfter,
}

/// A policy that targets the workload, before ordering.
struct Selected<'a> {
    doc: &'a Document,
    name: String,
    /// How specific its targetRef is: Kuma applies less specific policies first.
    level: u8,
    modifications: Vec<Modification>,
}

/// Reads `files` and builds the proxy; logs the notes and warnings.
pub fn load(files: &[PathBuf], workload: &Workload) -> anyhow::Result<ProxyConfig> {
    let mut docs = Vec::new();
    for f in files {
        docs.extend(read_documents(f)?);
    }
    let t = translate(&docs, workload)?;
    for n in &t.notes {
        tracing::info!("{n}");
    }
    for w in &t.warnings {
        tracing::warn!("{w}");
    }
    Ok(t.config)
}

/// The proxy a Kuma dataplane for `workload` would be with these MeshProxyPatch policies.
pub fn translate(docs: &[Document], workload: &Workload) -> anyhow::Result<Translation> {
    let listener = format!("inbound:{}:{}", workload.listen.ip(), workload.listen.port());
    let mut p = Patching {
        workload,
        listener: &listener,
        chain: vec![(ROUTER.to_owned(), None)],
        notes: Vec::new(),
        warnings: Vec::new(),
    };
    let mut selected = Vec::new();
    for doc in docs {
        if let Some(s) = policy(doc, workload, &mut p.notes)? {
            selected.push(s);
        }
    }
    selected.sort_by(|a, b| (a.level, &a.name).cmp(&(b.level, &b.name)));
    for s in &selected {
        let what = format!("{} (MeshProxyPatch {})", s.doc.origin, s.name);
        for (i, m) in s.modifications.iter().enumerate() {
            p.modify(m, s.doc, &format!("{what}: spec.default.appendModifications[{i}]"))?;
        }
    }
    let Patching { chain, mut notes, mut warnings, .. } = p;
    let filters: Vec<FilterConfig> = chain.into_iter().filter_map(|(_, f)| f).collect();
    if filters.is_empty() {
        warnings.push(format!(
            "no MeshProxyPatch adds an HTTP filter to the inbound of workload {}/{}; the listener only forwards",
            workload.namespace, workload.name
        ));
    } else {
        let order: Vec<&str> = filters.iter().map(|f| f.plugin.name.as_str()).collect();
        notes.push(format!("HTTP filter order: {}, then the router", order.join(", ")));
    }
    let port = workload.upstream_port();
    let inbound = Inbound {
        listener,
        cluster: format!("localhost:{port}"),
        // Kuma's default MeshTimeout for inbound traffic.
        route_timeout: Some(Duration::from_secs(15)),
        connect_timeout: Duration::from_secs(5),
        max_retries: 3,
    };
    let (name, ns) = (&workload.name, &workload.namespace);
    let node = NodeInfo {
        // `<mesh>.<dataplane>`, a Kubernetes dataplane being named `<pod>.<namespace>`.
        id: format!("{MESH}.{name}.{ns}"),
        // The `kuma.io/service` tag Kubernetes workloads get.
        cluster: format!("{name}_{ns}_svc_{port}"),
        ..NodeInfo::default()
    };
    let config = inbound_config(workload, inbound, filters, false, node)?;
    Ok(Translation { config, notes, warnings })
}

/// One document: the policy when it targets the workload, else `None` (with a note saying why).
fn policy<'a>(doc: &'a Document, w: &Workload, notes: &mut Vec<String>) -> anyhow::Result<Option<Selected<'a>>> {
    let origin = &doc.origin;
    let (name, mesh, spec) = match (doc.str("kind"), doc.str("type")) {
        (Some("MeshProxyPatch"), _) => {
            let api = doc.str("apiVersion").unwrap_or_default();
            if api != API_VERSION {
                bail!("{origin}: MeshProxyPatch apiVersion {api:?} is not {API_VERSION}");
            }
            let d: KubeObject<Spec> =
                doc.parse().with_context(|| format!("{origin} (MeshProxyPatch {})", doc.name()))?;
            let name = d.metadata.name.with_context(|| format!("{origin}: metadata.name is missing"))?;
            (name, d.metadata.labels.get("kuma.io/mesh").cloned(), d.spec)
        }
        (None, Some("MeshProxyPatch")) => {
            let label = doc.str("name").unwrap_or("(unnamed)");
            let d: UniversalDoc = doc.parse().with_context(|| format!("{origin} (MeshProxyPatch {label})"))?;
            (d.name, d.mesh, d.spec)
        }
        (kind, kind_type) => {
            let what = match (kind, kind_type) {
                (Some(k), _) => format!("a {k} ({})", doc.str("apiVersion").unwrap_or_default()),
                (None, Some(t)) => format!("a {t}"),
                (None, None) => "a document without `kind`".to_owned(),
            };
            bail!("{origin} is {what}: --kuma runs MeshProxyPatch ({API_VERSION}) documents only");
        }
    };
    let what = format!("{origin} (MeshProxyPatch {name})");
    if let Some(m) = mesh.filter(|m| m != MESH) {
        notes.push(format!("{what}: not applied: it is for mesh {m}, the workload is in mesh {MESH}"));
        return Ok(None);
    }
    let level = match &spec.target_ref {
        None => 0,
        Some(t) => match target_level(t, w, &what)? {
            Ok(level) => level,
            Err(why) => {
                notes.push(format!("{what}: not applied: {why}"));
                return Ok(None);
            }
        },
    };
    notes.push(format!("{what}: applies to the workload"));
    Ok(Some(Selected { doc, name, level, modifications: spec.default.append_modifications }))
}

/// How specific a targetRef that selects the workload is, or why it does not select it.
fn target_level(t: &TargetRef, w: &Workload, what: &str) -> anyhow::Result<Result<u8, String>> {
    if let Some(types) = &t.proxy_types
        && !types.iter().any(|p| p == "Sidecar")
    {
        return Ok(Err(format!("spec.targetRef.proxyTypes {types:?} leave out Sidecar")));
    }
    if let Some(m) = t.mesh.as_deref().filter(|m| *m != MESH) {
        return Ok(Err(format!("spec.targetRef.mesh is {m}")));
    }
    let labels = |l: &BTreeMap<String, String>, field: &str| {
        if w.has_labels(l) {
            Ok(())
        } else {
            Err(format!("spec.targetRef.{field} {l:?} are not all among the workload's labels {:?}", w.labels))
        }
    };
    Ok(match t.kind.as_str() {
        "Mesh" => Ok(0),
        "MeshSubset" => labels(t.tags.as_ref().unwrap_or(&BTreeMap::new()), "tags").map(|()| 1),
        "Dataplane" => {
            if let Some(l) = &t.labels
                && let Err(why) = labels(l, "labels")
            {
                return Ok(Err(why));
            }
            if let Some(ns) = t.namespace.as_deref().filter(|ns| *ns != w.namespace) {
                return Ok(Err(format!("spec.targetRef.namespace is {ns}, the workload's {}", w.namespace)));
            }
            if let Some(section) = t.section_name.as_deref().filter(|s| *s != w.upstream_port().to_string()) {
                return Ok(Err(format!("spec.targetRef.sectionName {section} is not the workload's port")));
            }
            match t.name.as_deref() {
                Some(n) if n != w.name => Err(format!("spec.targetRef.name is {n}, the workload is {}", w.name)),
                Some(_) => Ok(3),
                None => Ok(2),
            }
        }
        other => bail!("{what}: spec.targetRef.kind {other}: meshwork runs Mesh, MeshSubset and Dataplane targets"),
    })
}

/// The workload's inbound chain while policies patch it, and what the patching had to say.
struct Patching<'a> {
    workload: &'a Workload,
    listener: &'a str,
    /// HttpFilter names in order; the router is the only filter without a module.
    chain: Vec<(String, Option<FilterConfig>)>,
    notes: Vec<String>,
    warnings: Vec<String>,
}

impl Patching<'_> {
    /// Applies one modification to the inbound self.chain.
    fn modify(&mut self, m: &Modification, doc: &Document, what: &str) -> anyhow::Result<()> {
        let others = [
            ("cluster", "clusters", &m.cluster),
            ("listener", "listeners", &m.listener),
            ("networkFilter", "network filters", &m.network_filter),
            ("virtualHost", "virtual hosts", &m.virtual_host),
        ];
        let given: Vec<&str> = others.iter().filter(|(_, _, v)| v.is_some()).map(|(k, _, _)| *k).collect();
        match (given.as_slice(), &m.http_filter) {
            ([], Some(h)) => self.http_filter(h, doc, &format!("{what}.httpFilter")),
            ([kind], None) => {
                let (_, resources, value) = others.iter().find(|(k, _, _)| k == kind).expect("given");
                let origin = value.as_ref().and_then(|v| v.pointer("/match/origin")).and_then(Value::as_str);
                let operation = value.as_ref().and_then(|v| v.get("operation")).and_then(Value::as_str);
                // Adding a cluster changes no traffic of the inbound: it is how a patch gives
                // Envoy's remote Wasm code (`http_uri.cluster`) a way to its host, which meshwork
                // reaches itself.
                if *kind == "cluster" && operation == Some("Add") {
                    self.notes.push(format!(
                        "{what}.cluster: a cluster Add, not needed by meshwork (it fetches http modules itself)"
                    ));
                    return Ok(());
                }
                match origin {
                    Some(o) if o != "inbound" => {
                        self.notes.push(format!(
                            "{what}.{kind}: skipped: it patches {o} {resources}, which meshwork does not run"
                        ));
                        Ok(())
                    }
                    _ => bail!(
                        "{what}.{kind}: not supported: meshwork does not build Envoy {resources} to patch; only httpFilter \
                     additions run (give match.origin to aim it at other traffic)"
                    ),
                }
            }
            _ => bail!("{what}: give exactly one of cluster, listener, networkFilter, httpFilter, virtualHost"),
        }
    }

    fn http_filter(&mut self, h: &HttpFilterMod, doc: &Document, what: &str) -> anyhow::Result<()> {
        let (w, listener) = (self.workload, self.listener);
        let m = h.matcher.clone().unwrap_or_default();
        if let Some(o) = m.origin.as_deref().filter(|o| *o != "inbound") {
            self.notes.push(format!("{what}: skipped: match.origin {o}; meshwork runs the inbound listener only"));
            return Ok(());
        }
        if let Some(l) = m.listener_name.as_deref().filter(|l| *l != listener) {
            self.notes.push(format!("{what}: skipped: match.listenerName {l} is not the inbound listener {listener}"));
            return Ok(());
        }
        if let Some(tags) = &m.listener_tags
            && !w.has_labels(tags)
        {
            self.notes
                .push(format!("{what}: skipped: match.listenerTags {tags:?} are not all among the workload's labels"));
            return Ok(());
        }
        if h.json_patches.is_some() {
            bail!("{what}.jsonPatches: not supported (they patch existing filters; meshwork only adds filters)");
        }
        let op = h.operation;
        let position = match op {
            Operation::AddFirst => Some(0),
            Operation::AddBefore | Operation::AddAfter => {
                let target = m.name.as_deref().with_context(|| format!("{what}: {op:?} needs match.name"))?;
                if op == Operation::AddAfter && target == ROUTER {
                    bail!(
                        "{what}: AddAfter {ROUTER} puts a filter after the terminal router, a chain Envoy refuses; use AddBefore"
                    );
                }
                match self.chain.iter().position(|(n, _)| n == target) {
                    Some(i) => Some(if op == Operation::AddBefore { i } else { i + 1 }),
                    None => {
                        // Kuma adds nothing when the filter to insert next to is absent.
                        self.warnings.push(format!(
                            "{what}: not added: the inbound chain has no filter named {target} (it has {})",
                            self.chain.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                        ));
                        None
                    }
                }
            }
            Operation::AddLast => bail!(
                "{what}: AddLast puts a filter after {ROUTER}, the terminal filter, a chain Envoy refuses; use AddBefore \
             with match.name {ROUTER}"
            ),
            Operation::Patch | Operation::Remove => bail!(
                "{what}.operation {op:?}: not supported: meshwork adds Wasm filters; it cannot patch or remove the \
             filters Kuma generates"
            ),
            Operation::Add => {
                bail!("{what}.operation Add is not an httpFilter operation (AddFirst, AddBefore, AddAfter)")
            }
        };
        let text = h.value.as_deref().with_context(|| format!("{what}.value is missing ({op:?} needs the filter)"))?;
        let value: Value = meshwork_yaml::from_str(text)
            .map_err(anyhow::Error::new)
            .with_context(|| format!("{what}.value is not valid YAML"))?;
        let value = proto_field_names(value);
        let http_name = value.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let (filter, envoy_warnings) = crate::envoy::wasm_http_filter(&value, &format!("{what}.value"), &doc.base)?;
        self.warnings.extend(envoy_warnings.into_iter().map(|e| format!("{what}.value: {e}")));
        if let Some(i) = position {
            self.notes.push(format!("{what}: {op:?} adds filter {}", filter.plugin.name));
            self.chain.insert(i, (http_name, Some(filter)));
        }
        Ok(())
    }
}

/// Protobuf's JSON names (`typedConfig`, `vmConfig`), which Kuma's values are usually written
/// in, as the field names the Envoy translator reads (`typed_config`). The keys of
/// `key_values` are environment variable names, not fields, and stay as they are.
fn proto_field_names(value: Value) -> Value {
    match value {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, v) in o {
                let key = if k.starts_with('@') { k } else { snake_case(&k) };
                let v = if key == "key_values" { v } else { proto_field_names(v) };
                out.insert(key, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(proto_field_names).collect()),
        other => other,
    }
}

fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if !out.is_empty() {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::ModuleSource;
    use crate::istio::documents;

    fn workload(labels: &[(&str, &str)]) -> Workload {
        Workload::from_flags(
            "127.0.0.1:8080",
            "127.0.0.1:15006".parse().unwrap(),
            None,
            labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            "shop".into(),
            None,
        )
        .unwrap()
    }

    fn run(yaml: &str, w: &Workload) -> anyhow::Result<Translation> {
        translate(&documents(yaml, "mpp.yaml", Path::new("/cfg")).unwrap(), w)
    }

    fn names(t: &Translation) -> Vec<&str> {
        t.config.listeners[0].filters().iter().map(|f| f.plugin.name.as_str()).collect()
    }

    /// An HttpFilter value with a Wasm filter named `name` (proto JSON names, as Kuma's docs).
    fn value(name: &str) -> String {
        format!(
            "name: envoy.filters.http.wasm\n          typedConfig:\n            '@type': type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n            config:\n              name: {name}\n              rootId: {name}-root\n              configuration: {{'@type': type.googleapis.com/google.protobuf.StringValue, value: '{{\"rate\":3}}'}}\n              failOpen: true\n              vmConfig:\n                vmId: {name}-vm\n                environmentVariables: {{keyValues: {{POD_NAME: reviews}}}}\n                code: {{local: {{filename: filters/{name}.wasm}}}}"
        )
    }

    fn patch(name: &str, target: &str, mods: &[(&str, &str, &str)]) -> String {
        let mut out = format!(
            "apiVersion: kuma.io/v1alpha1\nkind: MeshProxyPatch\nmetadata: {{name: {name}, namespace: kuma-system}}\nspec:\n  targetRef: {target}\n  default:\n    appendModifications:\n"
        );
        for (op, matcher, filter) in mods {
            out.push_str(&format!(
                "    - httpFilter:\n        operation: {op}\n        match: {matcher}\n        value: |\n          {}\n",
                value(filter)
            ));
        }
        out.push_str("---\n");
        out
    }

    const BEFORE_ROUTER: &str = "{name: envoy.filters.http.router, origin: inbound}";

    #[test]
    fn value_translates_like_an_envoy_http_filter() {
        let t = run(&patch("p", "{kind: Mesh}", &[("AddBefore", BEFORE_ROUTER, "rl")]), &workload(&[])).unwrap();
        let f = &t.config.listeners[0].filters()[0];
        assert_eq!(f.module, PathBuf::from("/cfg/filters/rl.wasm"));
        assert_eq!(f.source, ModuleSource::File { sha256: None });
        let p = &f.plugin;
        assert_eq!((p.name.as_str(), p.root_id.as_str(), p.vm_id.as_str()), ("rl", "rl-root", "rl-vm"));
        assert_eq!(&p.configuration[..], br#"{"rate":3}"#);
        assert!(p.fail_open);
        assert_eq!(p.env, [("POD_NAME".to_owned(), "reviews".to_owned())]);
        let c = &t.config;
        assert_eq!(c.clusters[0].name, "localhost:8080");
        assert_eq!(c.listeners[0].name, "inbound:127.0.0.1:15006");
        assert_eq!(c.listeners[0].settings.direction, meshwork_wasm_host::TrafficDirection::Inbound);
        assert_eq!((c.node.id.as_str(), c.node.cluster.as_str()), ("default.meshwork.shop", "meshwork_shop_svc_8080"));
    }

    #[test]
    fn operations_order_the_chain() {
        // AddBefore the router in turn: a, b; AddFirst: c; AddAfter c: d; AddBefore b: e.
        let yaml = patch(
            "p",
            "{kind: Mesh}",
            &[
                ("AddBefore", BEFORE_ROUTER, "a"),
                ("AddBefore", BEFORE_ROUTER, "b"),
                ("AddFirst", "{origin: inbound}", "c"),
                ("AddAfter", "{name: envoy.filters.http.wasm}", "d"),
            ],
        );
        assert_eq!(names(&run(&yaml, &workload(&[])).unwrap()), ["c", "d", "a", "b"]);
        // Policies: less specific targets first, then by name.
        let yaml = [
            patch("z-mesh", "{kind: Mesh}", &[("AddBefore", BEFORE_ROUTER, "mesh")]),
            patch("a-dp-name", "{kind: Dataplane, name: meshwork}", &[("AddBefore", BEFORE_ROUTER, "by-name")]),
            patch("b-dp-labels", "{kind: Dataplane, labels: {app: web}}", &[("AddBefore", BEFORE_ROUTER, "by-labels")]),
            patch("c-other", "{kind: Dataplane, labels: {app: db}}", &[("AddBefore", BEFORE_ROUTER, "never")]),
        ]
        .concat();
        let t = run(&yaml, &workload(&[("app", "web")])).unwrap();
        // The workload's name defaults to its app label: `web`, so the by-name policy misses.
        assert_eq!(names(&t), ["mesh", "by-labels"]);
        let t = run(&yaml, &Workload { name: "meshwork".into(), ..workload(&[("app", "web")]) }).unwrap();
        assert_eq!(names(&t), ["mesh", "by-labels", "by-name"]);
        assert!(t.notes.iter().any(|n| n.contains("c-other") && n.contains("\"db\"")), "{:?}", t.notes);
    }

    #[test]
    fn other_origins_are_skipped_and_unsupported_operations_refused() {
        let w = workload(&[]);
        let t = run(
            &patch("p", "{kind: Mesh}", &[("AddBefore", "{name: envoy.filters.http.router, origin: outbound}", "o")]),
            &w,
        )
        .unwrap();
        assert!(names(&t).is_empty());
        assert!(t.notes.iter().any(|n| n.contains("match.origin outbound")), "{:?}", t.notes);
        let t = run(&patch("p", "{kind: Mesh}", &[("AddBefore", "{name: envoy.filters.http.rbac}", "x")]), &w).unwrap();
        assert!(
            names(&t).is_empty() && t.warnings.iter().any(|n| n.contains("no filter named envoy.filters.http.rbac"))
        );
        let err = |yaml: &str| format!("{:#}", run(yaml, &w).unwrap_err());
        let e = err(&patch("p", "{kind: Mesh}", &[("AddLast", "{origin: inbound}", "x")]));
        assert!(e.contains(
            "mpp.yaml document 1 (MeshProxyPatch p): spec.default.appendModifications[0].httpFilter: AddLast"
        ));
        assert!(
            err(&patch("p", "{kind: Mesh}", &[("Patch", BEFORE_ROUTER, "x")]))
                .contains("operation Patch: not supported")
        );
        assert!(
            err(&patch("p", "{kind: Mesh}", &[("AddBefore", "{origin: inbound}", "x")])).contains("needs match.name")
        );
        let cluster = "apiVersion: kuma.io/v1alpha1\nkind: MeshProxyPatch\nmetadata: {name: c}\nspec:\n  default:\n    appendModifications:\n    - cluster: {operation: Patch, match: {origin: inbound}, value: 'connectTimeout: 1s'}\n";
        assert!(err(cluster).contains("appendModifications[0].cluster: not supported"));
        let outbound = cluster.replace("origin: inbound", "origin: outbound");
        assert!(run(&outbound, &w).unwrap().notes.iter().any(|n| n.contains("skipped: it patches outbound clusters")));
        assert!(
            err(&patch("p", "{kind: MeshService, name: web}", &[("AddFirst", "{}", "x")]))
                .contains("spec.targetRef.kind MeshService")
        );
        let vs = "apiVersion: kuma.io/v1alpha1\nkind: MeshTimeout\nmetadata: {name: t}\nspec: {}\n";
        assert!(
            err(vs).contains("mpp.yaml document 1 is a MeshTimeout (kuma.io/v1alpha1): --kuma runs MeshProxyPatch")
        );
        // A value that is not a Wasm filter, or a Wasm filter with a field meshwork lacks.
        let lua = patch("p", "{kind: Mesh}", &[("AddFirst", "{}", "x")])
            .replace("envoy.extensions.filters.http.wasm.v3.Wasm", "envoy.extensions.filters.http.lua.v3.Lua");
        assert!(err(&lua).contains("only envoy.filters.http.wasm filters"), "{}", err(&lua));
        let odd = patch("p", "{kind: Mesh}", &[("AddFirst", "{}", "x")])
            .replace("failOpen: true", "nackOnCodeCacheMiss: true\n              oddField: 1");
        assert!(err(&odd).contains("odd_field: not supported"), "{}", err(&odd));
    }

    #[test]
    fn universal_form_and_mesh_label() {
        let yaml = format!(
            "type: MeshProxyPatch\nname: u\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  default:\n    appendModifications:\n    - httpFilter:\n        operation: AddBefore\n        match: {BEFORE_ROUTER}\n        value: |\n          {}\n",
            value("uni")
        );
        assert_eq!(names(&run(&yaml, &workload(&[])).unwrap()), ["uni"]);
        let other_mesh = patch("p", "{kind: Mesh}", &[("AddBefore", BEFORE_ROUTER, "x")])
            .replace("namespace: kuma-system", "namespace: kuma-system, labels: {kuma.io/mesh: payments}");
        let t = run(&other_mesh, &workload(&[])).unwrap();
        assert!(names(&t).is_empty() && t.notes.iter().any(|n| n.contains("mesh payments")));
    }

    #[test]
    fn proto_names_become_envoy_field_names() {
        let v = serde_json::json!({"typedConfig": {"@type": "t", "vmConfig": {"environmentVariables": {"keyValues": {"MY_VAR": "x"}}}}});
        assert_eq!(
            proto_field_names(v),
            serde_json::json!({"typed_config": {"@type": "t", "vm_config": {"environment_variables": {"key_values": {"MY_VAR": "x"}}}}})
        );
    }
}
