use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::model::{Fail, FilterSpec, Mesh, Module, Options};
use crate::render::render;

const SHA: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn spec(name: &str, module: Module) -> FilterSpec {
    FilterSpec {
        name: name.into(),
        module,
        root_id: name.into(),
        vm_id: name.into(),
        configuration: json!({"limit": 10}),
        fail: Fail::Closed,
        allow_on_headers_stop_iteration: false,
        env: BTreeMap::new(),
    }
}

fn file(name: &str) -> FilterSpec {
    spec(name, Module::File { path: format!("/etc/wasm/{name}.wasm"), sha256: None })
}

fn http(name: &str) -> FilterSpec {
    spec(name, Module::Http { url: format!("https://m.example/{name}.wasm"), sha256: Some(SHA.into()) })
}

fn image(name: &str) -> FilterSpec {
    spec(name, Module::Image { reference: format!("r.example/{name}:v1"), digest: Some(SHA.into()) })
}

/// A valid document of `mesh` (checked), to break one field at a time.
fn valid(mesh: Mesh, filters: &[FilterSpec]) -> Document {
    let doc = render(mesh, filters, &Options::default()).unwrap().remove(0);
    assert_eq!(validate(&doc), [], "the starting point is valid");
    doc
}

/// Sets (or, with `None`, removes) the field at a JSON pointer.
fn edit(doc: &Document, pointer: &str, value: Option<Value>) -> Document {
    let mut doc = doc.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = doc.value.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}"));
    match (target, value) {
        (Value::Object(m), Some(v)) => {
            m.insert(key.replace("~1", "/").replace("~0", "~"), v);
        }
        (Value::Object(m), None) => {
            m.remove(&key.replace("~1", "/").replace("~0", "~"));
        }
        (Value::Array(a), Some(v)) => a[key.parse::<usize>().unwrap()] = v,
        (Value::Array(a), None) => {
            a.remove(key.parse::<usize>().unwrap());
        }
        _ => panic!("{parent} is not a container"),
    }
    doc
}

/// The one problem at `path`, whose reason must contain `reason`.
#[track_caller]
/// `doc` with `value` at `pointer` (None removes it) is refused there, saying `reason`.
fn refused(doc: &Document, pointer: &str, value: Option<Value>, reason: &str) {
    expect(&edit(doc, pointer, value), pointer, reason);
}

fn expect(doc: &Document, path: &str, reason: &str) {
    let problems = validate(doc);
    assert!(
        problems.iter().any(|p| p.path == path && p.reason.contains(reason)),
        "expected {path}: …{reason}… in:\n{}",
        problems.iter().map(|p| format!("  {p}\n")).collect::<String>()
    );
    assert!(problems.iter().all(|p| p.document == format!("{}/{}", doc.kind, doc.name)));
}

#[test]
fn wasm_plugin_problems() {
    let d = valid(Mesh::Istio, &[image("auth")]);
    refused(&d, "/spec/url", None, "is required");
    refused(&d, "/spec/url", Some(json!("")), "");
    refused(&d, "/spec/url", Some(json!("ftp://x/y.wasm")), "url must have schema one of");
    refused(&d, "/spec/sha256", Some(json!("XYZ")), "\"XYZ\" does not match");
    refused(&d, "/spec/phase", Some(json!("EARLY")), "\"EARLY\" is not one of");
    refused(&d, "/spec/failStrategy", Some(json!("FAIL_CLOSED")), "is not one of");
    refused(&d, "/spec/imagePullPolicy", Some(json!("Never")), "is not one of");
    refused(&d, "/spec/type", Some(json!("TCP")), "is not one of");
    refused(&d, "/spec/priority", Some(json!("high")), "");
    refused(&d, "/spec/failstrategy", Some(json!("FAIL_OPEN")), "is not a field");
    let both = edit(
        &edit(&d, "/spec/selector", Some(json!({"matchLabels": {"app": "web"}}))),
        "/spec/targetRefs",
        Some(json!([{"kind": "Gateway", "name": "gw"}])),
    );
    expect(&both, "/spec", "only one of targetRefs or selector");
    expect(&edit(&d, "/spec/selector", Some(json!({"labels": {}}))), "/spec/selector/labels", "is not a field");
    expect(&edit(&d, "/spec/targetRefs", Some(json!([{"kind": "Gateway"}]))), "/spec/targetRefs/0/name", "is required");
    let env = |e: Value| edit(&d, "/spec/vmConfig", Some(json!({"env": [e]})));
    expect(&env(json!({"value": "x"})), "/spec/vmConfig/env/0/name", "is required");
    expect(&env(json!({"name": "X", "valueFrom": "SECRET"})), "/spec/vmConfig/env/0/valueFrom", "is not one of");
    expect(
        &env(json!({"name": "X", "valueFrom": "HOST", "value": "v"})),
        "/spec/vmConfig/env/0",
        "value may only be set when valueFrom is INLINE",
    );
    assert_eq!(validate(&env(json!({"name": "X", "valueFrom": "HOST"}))), []);
    let matched = |m: Value| edit(&d, "/spec/match", Some(m));
    assert_eq!(validate(&matched(json!([{"mode": "SERVER", "ports": [{"number": 8080}]}]))), []);
    expect(&matched(json!([{"mode": "INBOUND"}])), "/spec/match/0/mode", "is not one of");
    expect(&matched(json!([{"ports": [{"number": 0}]}])), "/spec/match/0/ports/0/number", "");
    expect(&matched(json!([{"ports": [{}]}])), "/spec/match/0/ports/0/number", "is required");
    refused(&d, "/metadata/name", Some(json!("Bad_Name")), "Kubernetes object name");
    refused(&d, "/apiVersion", Some(json!("extensions.istio.io/v1")), "");
}

#[test]
fn envoy_extension_policy_problems() {
    let d = valid(Mesh::EnvoyGateway, &[image("a"), http("b")]);
    refused(&d, "/spec/targetRefs", None, "is required");
    refused(&d, "/spec/targetRefs", Some(json!([])), "");
    refused(&d, "/spec/targetRefs/0/kind", Some(json!("Service")), "is not one of");
    refused(&d, "/spec/targetRefs/0/group", Some(json!("")), "gateway.networking.k8s.io");
    refused(&d, "/spec/wasm/0/code/type", Some(json!("File")), "is not one of");
    refused(&d, "/spec/wasm/0/code/image", None, "If type is Image, image field needs to be set");
    expect(&edit(&d, "/spec/wasm/0/code/type", Some(json!("HTTP"))), "/spec/wasm/0/code/http", "If type is HTTP");
    refused(&d, "/spec/wasm/0/code/image/url", None, "is required");
    refused(&d, "/spec/wasm/0/code/image/sha256", Some(json!("XYZ")), "does not match");
    refused(&d, "/spec/wasm/1/code/http/url", None, "is required");
    refused(&d, "/spec/wasm/1/code/http/url", Some(json!("file:///x.wasm")), "not an http(s) URL");
    refused(&d, "/spec/wasm/1/code/http/sha256", Some(json!("sha256:abc")), "does not match");
    refused(&d, "/spec/wasm/1/failOpen", Some(json!("yes")), "");
    refused(&d, "/spec/wasm/1/vmID", Some(json!("x")), "is not a field");
    refused(&d, "/kind", Some(json!("SecurityPolicy")), "");
}

#[test]
fn service_defaults_problems() {
    let d = valid(Mesh::Consul, &[file("a"), http("b")]);
    let code = "/spec/envoyExtensions/1/arguments/pluginConfig/vmConfig/code";
    refused(&d, &format!("{code}/remote/sha256"), None, "is required");
    refused(&d, &format!("{code}/remote/sha256"), Some(json!("XYZ")), "does not match");
    refused(&d, &format!("{code}/remote/httpURI/service"), None, "is required");
    refused(&d, &format!("{code}/remote/httpURI/timeout"), Some(json!("ten")), "Go duration");
    let both = edit(&d, &format!("{code}/local"), Some(json!({"filename": "/x.wasm"})));
    expect(&both, code, "exactly one of Local or Remote");
    refused(&d, code, Some(json!({})), "exactly one of Local or Remote");
    refused(&d, "/spec/envoyExtensions/0/name", None, "is required");
    let args = "/spec/envoyExtensions/0/arguments";
    refused(&d, &format!("{args}/listenerType"), Some(json!("both")), "is not one of");
    refused(&d, &format!("{args}/protocol"), None, "is required");
    refused(
        &d,
        &format!("{args}/pluginConfig/vmConfig/runtime"),
        Some(json!("envoy.wasm.runtime.v8")),
        "is not one of",
    );
    refused(&d, "/spec/protocol", Some(json!("tcp")), "must be http");
    refused(&d, "/spec/envoyExtensions/0/Required", Some(json!(true)), "is not a field");
}

#[test]
fn mesh_proxy_patch_problems() {
    let d = valid(Mesh::Kuma, &[http("a"), file("b")]);
    // Modification 0 is the module host's cluster, 1 and 2 the filters.
    let m = "/spec/default/appendModifications";
    let value = format!("{m}/1/httpFilter/value");
    refused(&d, &value, Some(json!("foo: bar\n")), "is not an Envoy HttpFilter: /name: is required");
    refused(&d, &value, Some(json!("name: envoy.filters.http.wasm\n")), "needs typedConfig");
    refused(&d, &value, Some(json!("name: [unclosed\n")), "is not YAML");
    refused(&d, &value, Some(json!("- a list\n")), "is not an Envoy HttpFilter");
    let bad_type = "name: x\ntypedConfig: {\"@type\": not a type url}\n";
    refused(&d, &value, Some(json!(bad_type)), "/typedConfig/@type: is not a type URL");
    let no_code = "name: envoy.filters.http.wasm\ntypedConfig:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n  config: {vm_config: {runtime: envoy.wasm.runtime.v8}}\n";
    refused(&d, &value, Some(json!(no_code)), "/typedConfig/config/vm_config/code: is required");
    let other = "name: envoy.filters.http.lua\ntyped_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua}\n";
    assert_eq!(validate(&edit(&d, &value, Some(json!(other)))), [], "another filter with a type URL is an HttpFilter");
    refused(&d, &format!("{m}/1/httpFilter/operation"), Some(json!("Insert")), "is not one of");
    refused(&d, &format!("{m}/1/httpFilter/match/name"), None, "match.name must be defined");
    refused(&d, &format!("{m}/1/httpFilter/value"), None, "value must be defined");
    let cluster = format!("{m}/0/cluster/value");
    refused(&d, &cluster, Some(json!("type: STATIC\n")), "an Envoy Cluster: it needs a name");
    let two = edit(&d, &format!("{m}/2/cluster"), Some(json!({"operation": "Remove"})));
    expect(&two, &format!("{m}/2"), "exactly one modification");
    refused(&d, m, Some(json!([])), "must not be empty");
    refused(&d, "/spec/targetRef/kind", Some(json!("Pod")), "is not one of");
    refused(&d, "/spec/default", None, "is required");
}

#[test]
fn envoy_filter_list_problems() {
    let d = valid(Mesh::Envoy, &[http("a"), file("b")]);
    let code = "/0/typed_config/config/vm_config/code";
    refused(&d, &format!("{code}/remote/sha256"), None, "is required");
    refused(&d, &format!("{code}/remote/sha256"), Some(json!("XYZ")), "does not match");
    refused(&d, &format!("{code}/remote/http_uri/uri"), None, "is required");
    refused(&d, &format!("{code}/remote/http_uri/cluster"), None, "is required");
    refused(&d, &format!("{code}/remote/http_uri/timeout"), Some(json!("10")), "protobuf duration");
    refused(&d, code, Some(json!({})), "exactly one of local or remote");
    let local = "/1/typed_config/config/vm_config/code/local";
    refused(&d, &format!("{local}/filename"), None, "is required");
    let vm = "/1/typed_config/config/vm_config";
    refused(&d, &format!("{vm}/runtime"), None, "is required");
    refused(&d, &format!("{vm}/runtime"), Some(json!("v8")), "is not one of");
    refused(&d, &format!("{vm}/vmId"), Some(json!("x")), "is not a field");
    let config = "/1/typed_config/config";
    refused(&d, &format!("{config}/vm_config"), None, "is required");
    refused(&d, &format!("{config}/failure_policy"), Some(json!("FAIL_CLOSE")), "is not one of");
    refused(
        &d,
        &format!("{config}/configuration/@type"),
        Some(json!("type.googleapis.com/google.protobuf.Struct")),
        "StringValue or BytesValue",
    );
    refused(&d, "/1/typed_config/@type", Some(json!("Wasm")), "is not a type URL");
    refused(&d, "/0/name", None, "is required");
    // The router may end a fragment, and nothing may follow it.
    let router = json!({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}});
    let mut with_router = d.clone();
    with_router.value.as_array_mut().unwrap().push(router.clone());
    assert_eq!(validate(&with_router), []);
    with_router.value.as_array_mut().unwrap().insert(0, router);
    expect(&with_router, "/0", "the router must be the last HTTP filter");
    // A TypedStruct-wrapped Wasm filter is checked inside.
    let wrapped = json!([{"name": "w", "typed_config": {
        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
        "type_url": WASM,
        "value": {"config": {"vm_config": {"runtime": "envoy.wasm.runtime.v8"}}},
    }}]);
    let wrapped = Document { value: wrapped, ..d.clone() };
    expect(&wrapped, "/0/typed_config/value/config/vm_config/code", "is required");
}

const WASM: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

#[test]
fn bootstrap_problems() {
    let d = valid(Mesh::EnvoyBootstrap, &[http("a"), file("b")]);
    let hcm = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config";
    let filters = format!("{hcm}/http_filters");
    expect(
        &edit(&d, &format!("{filters}/2"), None),
        &filters,
        "the last HTTP filter must be envoy.filters.http.router",
    );
    refused(
        &d,
        &format!("{filters}/0/typed_config/config/vm_config/code/remote/sha256"),
        Some(json!("XYZ")),
        "does not match",
    );
    let route = format!("{hcm}/route_config/virtual_hosts/0/routes/0/route/cluster");
    refused(&d, &route, Some(json!("nowhere")), "cluster \"nowhere\", which static_resources.clusters does not define");
    let remote = format!("{filters}/0/typed_config/config/vm_config/code/remote/http_uri/cluster");
    refused(&d, &remote, Some(json!("gone")), "the remote code names cluster \"gone\"");
    refused(&d, &format!("{hcm}/stat_prefix"), None, "is required");
    refused(&d, "/static_resources/listeners/0/address", None, "is required");
    refused(&d, "/static_resources/listeners/0/address/socket_address/port_value", Some(json!(70000)), "");
    refused(&d, "/static_resources/clusters/0/type", Some(json!("DNS")), "is not one of");
    refused(&d, "/static_resources/clusters/0/name", None, "is required");
}

#[test]
fn meshwork_config_problems() {
    let d = valid(Mesh::Meshwork, &[file("a"), image("b")]);
    refused(&d, "/filters/0/module", None, "is required");
    refused(&d, "/filters/0/fail", Some(json!("reload")), "is not one of");
    refused(&d, "/filters/1/sha256", Some(json!("XYZ")), "does not match");
    refused(&d, "/filters/0/failure_policy", Some(json!("x")), "is not a field");
    refused(&d, "/bogus", Some(json!(1)), "is not a field");
    refused(&d, "/listen", Some(json!("10000")), "is not host:port");
    refused(&d, "/route/cluster", Some(json!("api")), "names cluster \"api\"");
    refused(&d, "/clusters", None, "is required");
    expect(&edit(&d, "/listen", None), "", "no listener");
}

#[test]
fn unknown_kinds_and_text() {
    let text = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: rl, namespace: default}
spec: {url: 'oci://r.example/rl:v1', sha256: XYZ, phase: EARLY}
---
- name: envoy.filters.http.wasm
  typed_config:
    '@type': type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config: {vm_config: {runtime: envoy.wasm.runtime.v8, code: {local: {filename: /x.wasm}}}}
---
listen: 127.0.0.1:1
clusters: [{name: app, endpoints: ['127.0.0.1:2']}]
route: {cluster: app}
";
    let docs = validate_text(text).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|(d, _)| d.kind.as_str()).collect();
    assert_eq!(kinds, ["Deployment", "WasmPlugin", "HttpFilters", "MeshworkConfig"]);
    let (_, p) = &docs[0];
    assert_eq!(
        p,
        &[Problem {
            document: "Deployment/web".into(),
            path: String::new(),
            reason: "not a document meshwork deploys: apiVersion apps/v1 kind Deployment".into()
        }]
    );
    let (_, p) = &docs[1];
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["/spec/phase", "/spec/sha256"], "{p:?}");
    assert!(p.iter().all(|p| p.document == "WasmPlugin/rl"));
    assert_eq!(docs[2].1, []);
    assert_eq!(docs[3].1, []);
    assert!(validate_text("a: [unclosed").unwrap_err().to_string().contains("not valid YAML"));
    let list = r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]}"#;
    let docs = validate_text(list).unwrap();
    assert_eq!(docs[0].0.kind, "ConfigMap");
    assert!(docs[0].1[0].reason.contains("kind ConfigMap"));
    let odd = validate_text("42").unwrap();
    assert!(odd[0].1[0].reason.starts_with("not a document meshwork deploys"));
    let problem = &validate_text(text).unwrap()[1].1[1];
    assert_eq!(problem.to_string(), format!("WasmPlugin/rl: /spec/sha256: {}", problem.reason));
}

/// The catalog's hand-written files for `meshwork run` pass as they are.
#[test]
fn catalog_files_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../catalog/patterns/resilient-upstream");
    for (name, kind) in [("envoy.yaml", "Bootstrap"), ("meshwork.yaml", "MeshworkConfig")] {
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        let docs = validate_text(&text).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].0.kind, kind);
        assert_eq!(docs[0].1, [], "{name}");
    }
}
