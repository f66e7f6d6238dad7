use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::envoy::WASM_TYPE;
use super::*;
use crate::model::{ExtraCluster, Fail, TargetRef};
use crate::validate::{validate, validate_text};

const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const MODULE_SHA: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn filter(name: &str, module: Module) -> FilterSpec {
    FilterSpec {
        name: name.into(),
        module,
        root_id: format!("{name}_root"),
        vm_id: name.into(),
        configuration: json!({"limit": 10, "name": name}),
        fail: Fail::Closed,
        allow_on_headers_stop_iteration: false,
        env: BTreeMap::new(),
    }
}

fn image(name: &str) -> FilterSpec {
    filter(name, Module::Image { reference: format!("ghcr.io/meshwork/{name}:v1"), digest: Some(DIGEST.into()) })
}

fn file(name: &str) -> FilterSpec {
    filter(name, Module::File { path: format!("/etc/wasm/{name}.wasm"), sha256: Some(MODULE_SHA.into()) })
}

fn http(name: &str) -> FilterSpec {
    filter(
        name,
        Module::Http { url: format!("https://modules.example.com/{name}.wasm"), sha256: Some(MODULE_SHA.into()) },
    )
}

const ALL: [Mesh; 7] =
    [Mesh::Envoy, Mesh::EnvoyBootstrap, Mesh::Istio, Mesh::EnvoyGateway, Mesh::Consul, Mesh::Kuma, Mesh::Meshwork];

/// The module kinds each mesh can express.
fn modules_for(mesh: Mesh) -> Vec<fn(&str) -> FilterSpec> {
    match mesh {
        Mesh::EnvoyGateway => vec![image, http],
        Mesh::Consul | Mesh::Kuma => vec![file, http],
        _ => vec![image, file, http],
    }
}

/// The one-filter patterns and a three-filter pattern (modules mixed) for `mesh`.
fn patterns(mesh: Mesh) -> Vec<Vec<FilterSpec>> {
    let kinds = modules_for(mesh);
    let mut out: Vec<Vec<FilterSpec>> = kinds.iter().map(|k| vec![k("solo")]).collect();
    let three: Vec<FilterSpec> =
        ["breaker", "retry", "timeout"].iter().enumerate().map(|(i, n)| kinds[i % kinds.len()](n)).collect();
    out.push(three);
    out
}

fn ok(mesh: Mesh, filters: &[FilterSpec], options: &Options) -> Vec<Document> {
    render(mesh, filters, options).unwrap_or_else(|e| panic!("{mesh:?}: {e}"))
}

fn assert_valid(docs: &[Document]) {
    for d in docs {
        let problems = validate(d);
        assert!(
            problems.is_empty(),
            "{}/{}:\n{}",
            d.kind,
            d.name,
            problems.iter().map(|p| format!("  {p}\n")).collect::<String>()
        );
    }
}

/// The names of the Envoy Wasm filters in an `http_filters` list.
fn envoy_names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|f| {
            f.pointer("/typed_config/config/name").or_else(|| f.get("name")).and_then(Value::as_str).unwrap().to_owned()
        })
        .collect()
}

fn bootstrap_filters(doc: &Document) -> &Value {
    doc.value.pointer("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters").unwrap()
}

fn err(mesh: Mesh, filters: &[FilterSpec], options: &Options) -> String {
    match render(mesh, filters, options) {
        Ok(docs) => panic!("{mesh:?} rendered what it should refuse:\n{}", to_yaml(&docs)),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_mesh_renders_every_pattern_into_valid_documents() {
    for mesh in ALL {
        for filters in patterns(mesh) {
            let docs = ok(mesh, &filters, &Options::default());
            assert!(!docs.is_empty());
            assert_valid(&docs);
            // What users get on disk reads back as the same documents, still valid.
            let back = validate_text(&to_yaml(&docs)).unwrap();
            assert_eq!(back.len(), docs.len(), "{mesh:?}");
            for ((d, problems), original) in back.iter().zip(&docs) {
                assert_eq!(d.value, original.value, "{mesh:?} YAML round trip");
                assert_eq!(d.kind, original.kind);
                assert!(problems.is_empty(), "{mesh:?}: {problems:?}");
            }
            let json: Value = serde_json::from_str(&to_json(&docs)).unwrap();
            assert_eq!(json, Value::Array(docs.iter().map(|d| d.value.clone()).collect()));
        }
    }
}

#[test]
fn chain_order_is_preserved_by_every_mesh() {
    let names = ["breaker", "retry", "timeout"];
    for mesh in ALL {
        let filters = patterns(mesh).pop().unwrap();
        let docs = ok(mesh, &filters, &Options::default());
        let order: Vec<String> = match mesh {
            Mesh::Envoy => envoy_names(&docs[0].value),
            Mesh::EnvoyBootstrap => {
                let all = envoy_names(bootstrap_filters(&docs[0]));
                assert_eq!(all.last().unwrap(), "envoy.filters.http.router", "the router ends the chain");
                all[..3].to_vec()
            }
            Mesh::Istio => {
                // Istio runs higher priority first: descending priorities in chain order.
                let p: Vec<i64> =
                    docs.iter().map(|d| d.value.pointer("/spec/priority").unwrap().as_i64().unwrap()).collect();
                assert_eq!(p, [30, 20, 10]);
                docs.iter().map(|d| d.value["metadata"]["name"].as_str().unwrap().to_owned()).collect()
            }
            Mesh::EnvoyGateway => docs[0].value["spec"]["wasm"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["name"].as_str().unwrap().to_owned())
                .collect(),
            Mesh::Consul => {
                let hcl = docs[0].text.as_deref().unwrap();
                let at: Vec<usize> = names.iter().map(|n| hcl.find(&format!("Name = \"{n}\"")).unwrap()).collect();
                assert!(at.windows(2).all(|w| w[0] < w[1]), "HCL order {at:?}");
                docs[0].value["spec"]["envoyExtensions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.pointer("/arguments/pluginConfig/name").unwrap().as_str().unwrap().to_owned())
                    .collect()
            }
            Mesh::Kuma => {
                let mods = docs[0].value.pointer("/spec/default/appendModifications").unwrap().as_array().unwrap();
                // The module host's cluster comes first, then one AddBefore-router per filter.
                assert!(mods[0].get("cluster").is_some());
                mods.iter()
                    .filter_map(|m| m.get("httpFilter"))
                    .map(|h| {
                        assert_eq!(h["operation"], "AddBefore");
                        assert_eq!(h["match"], json!({"name": "envoy.filters.http.router", "origin": "inbound"}));
                        let v: Value = serde_saphyr::from_str(h["value"].as_str().unwrap()).unwrap();
                        v.pointer("/typedConfig/config/name").unwrap().as_str().unwrap().to_owned()
                    })
                    .collect()
            }
            Mesh::Meshwork => docs[0].value["filters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap().to_owned())
                .collect(),
        };
        assert_eq!(order, names, "{mesh:?}");
    }
}

#[test]
fn envoy_entries_have_the_wasm_shape() {
    let mut f = http("rl");
    f.fail = Fail::Open;
    f.allow_on_headers_stop_iteration = true;
    f.env.insert("MODE".into(), "strict".into());
    let docs = ok(Mesh::Envoy, &[f, file("measure")], &Options::default());
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].kind, "HttpFilters");
    let e = &docs[0].value[0];
    assert_eq!(e["name"], "envoy.filters.http.wasm");
    assert_eq!(e["typed_config"]["@type"], WASM_TYPE);
    let c = &e["typed_config"]["config"];
    assert_eq!(c["name"], "rl");
    assert_eq!(c["root_id"], "rl_root");
    assert_eq!(c["failure_policy"], "FAIL_OPEN");
    assert_eq!(c["allow_on_headers_stop_iteration"], true);
    assert_eq!(c["configuration"]["@type"], "type.googleapis.com/google.protobuf.StringValue");
    let text = c["configuration"]["value"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), json!({"limit": 10, "name": "rl"}));
    let vm = &c["vm_config"];
    assert_eq!(vm["vm_id"], "rl");
    assert_eq!(vm["runtime"], "envoy.wasm.runtime.v8");
    assert_eq!(vm["environment_variables"], json!({"key_values": {"MODE": "strict"}}));
    assert_eq!(
        vm["code"],
        json!({"remote": {
            "http_uri": {"uri": "https://modules.example.com/rl.wasm", "cluster": "wasm_modules_example_com_443", "timeout": "10s"},
            "sha256": MODULE_SHA,
        }})
    );
    assert!(docs[0].notes.iter().any(|n| n.contains("wasm_modules_example_com_443")), "{:?}", docs[0].notes);
    // Only when set: the second filter has neither the option nor environment variables.
    let c2 = &docs[0].value[1]["typed_config"]["config"];
    assert!(c2.get("allow_on_headers_stop_iteration").is_none());
    assert!(c2["vm_config"].get("environment_variables").is_none());
    assert_eq!(c2["failure_policy"], "FAIL_CLOSED");
    assert_eq!(c2["vm_config"]["code"], json!({"local": {"filename": "/etc/wasm/measure.wasm"}}));
}

#[test]
fn envoy_image_modules_become_local_files_with_a_note() {
    let docs = ok(Mesh::Envoy, &[image("rl")], &Options::default());
    let code = docs[0].value.pointer("/0/typed_config/config/vm_config/code").unwrap();
    assert_eq!(code, &json!({"local": {"filename": "/etc/envoy/wasm/rl.wasm"}}));
    assert!(
        docs[0].notes.iter().any(|n| n.contains("cannot pull OCI")
            && n.contains("ghcr.io/meshwork/rl:v1")
            && n.contains("/etc/envoy/wasm/rl.wasm")),
        "{:?}",
        docs[0].notes
    );
}

#[test]
fn configuration_text_follows_meshwork() {
    let mut plain = file("plain");
    plain.configuration = json!("rate=5");
    let mut none = file("none");
    none.configuration = Value::Null;
    let docs = ok(Mesh::Envoy, &[plain.clone(), none.clone()], &Options::default());
    assert_eq!(docs[0].value.pointer("/0/typed_config/config/configuration/value").unwrap(), "rate=5");
    assert!(docs[0].value.pointer("/1/typed_config/config/configuration").is_none());
    let mw = ok(Mesh::Meshwork, &[plain.clone(), none], &Options::default());
    assert_eq!(mw[0].value["filters"][0]["configuration"], "rate=5");
    assert!(mw[0].value["filters"][1].get("configuration").is_none());
    let consul = ok(Mesh::Consul, &[plain], &Options::default());
    assert_eq!(
        consul[0].value.pointer("/spec/envoyExtensions/0/arguments/pluginConfig/configuration").unwrap(),
        "rate=5"
    );
}

#[test]
fn bootstrap_has_listener_router_and_clusters() {
    let options = Options {
        listen: "127.0.0.1:10001".into(),
        upstream: "app.internal:8080".into(),
        extra_clusters: vec![
            ExtraCluster { name: "ratelimit".into(), address: "10.0.0.7:8081".into() },
            ExtraCluster { name: "authz".into(), address: "[::1]:9000".into() },
        ],
        ..Options::default()
    };
    let mut plain = http("a");
    if let Module::Http { url, .. } = &mut plain.module {
        *url = "http://10.1.2.3:8000/a.wasm".into();
    }
    let docs = ok(Mesh::EnvoyBootstrap, &[http("rl"), http("other"), plain, file("measure")], &options);
    assert_eq!((docs.len(), docs[0].kind.as_str()), (1, "Bootstrap"));
    let v = &docs[0].value;
    assert_eq!(v.pointer("/admin/address/socket_address/address").unwrap(), "127.0.0.1");
    assert_eq!(v.pointer("/admin/address/socket_address/port_value").unwrap(), 9901);
    let l = v.pointer("/static_resources/listeners/0").unwrap();
    assert_eq!(l["address"], json!({"socket_address": {"address": "127.0.0.1", "port_value": 10001}}));
    let hcm = l.pointer("/filter_chains/0/filters/0/typed_config").unwrap();
    assert_eq!(hcm["@type"], HCM_TYPE);
    assert_eq!(hcm["stat_prefix"], "ingress_http");
    assert_eq!(
        hcm.pointer("/route_config/virtual_hosts/0").unwrap(),
        &json!({"name": "app", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]})
    );
    let filters = hcm["http_filters"].as_array().unwrap();
    assert_eq!(filters.len(), 5);
    assert_eq!(filters[4], json!({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}));
    let clusters = v.pointer("/static_resources/clusters").unwrap().as_array().unwrap();
    let by_name = |n: &str| clusters.iter().find(|c| c["name"] == n).unwrap_or_else(|| panic!("no cluster {n}"));
    // app, the two extras, and each module host once (two filters share modules.example.com).
    assert_eq!(clusters.len(), 5, "{clusters:?}");
    assert_eq!(by_name("app")["type"], "STRICT_DNS");
    assert_eq!(
        by_name("app")
            .pointer("/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/address")
            .unwrap(),
        "app.internal"
    );
    assert_eq!(by_name("ratelimit")["type"], "STATIC");
    assert_eq!(
        by_name("authz")
            .pointer("/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/address")
            .unwrap(),
        "::1"
    );
    let tls = by_name("wasm_modules_example_com_443");
    assert_eq!(tls.pointer("/transport_socket/typed_config/sni").unwrap(), "modules.example.com");
    let plain = by_name("wasm_10_1_2_3_8000");
    assert_eq!(plain["type"], "STATIC");
    assert!(plain.get("transport_socket").is_none());
    assert_valid(&docs);
}

/// What `meshwork run --envoy-config` reads (host-runner/meshwork/src/envoy.rs, its `known`
/// field lists): every key of a generated bootstrap must be among them, so meshwork runs it
/// without --allow-unsupported. `true` accepts any subtree.
fn meshwork_accepts() -> Value {
    let socket = json!({"socket_address": {"address": true, "port_value": true}});
    let wasm_config = json!({
        "name": true, "root_id": true, "fail_open": true, "failure_policy": true,
        "allow_on_headers_stop_iteration": true,
        "configuration": {"@type": true, "value": true},
        "vm_config": {
            "vm_id": true, "runtime": true, "configuration": true, "allow_precompiled": true, "nack_on_code_cache_miss": true,
            "environment_variables": {"key_values": true, "host_env_keys": true},
            "code": {"local": {"filename": true}, "remote": {"http_uri": {"uri": true, "cluster": true, "timeout": true}, "sha256": true, "retry_policy": true}},
        },
    });
    json!({
        "admin": {"address": socket},
        "static_resources": {
            "listeners": {
                "name": true, "address": socket,
                "filter_chains": {"filters": {"name": true, "typed_config": {
                    "@type": true, "stat_prefix": true, "codec_type": true,
                    "route_config": {"name": true, "virtual_hosts": {"name": true, "domains": true, "routes": {
                        "name": true, "match": {"prefix": true, "path": true}, "route": {"cluster": true, "timeout": true},
                    }}},
                    "http_filters": {"name": true, "typed_config": {"@type": true, "config": wasm_config}},
                }}},
            },
            "clusters": {
                "name": true, "connect_timeout": true, "type": true, "lb_policy": true,
                "load_assignment": {"cluster_name": true, "endpoints": {"lb_endpoints": {"endpoint": {"address": socket}}}},
                "transport_socket": {"name": true, "typed_config": {"@type": true, "sni": true, "common_tls_context": true}},
            },
        },
    })
}

fn unknown_keys(value: &Value, shape: &Value, path: &str, out: &mut Vec<String>) {
    match (value, shape) {
        (_, Value::Bool(true)) => {}
        (Value::Array(items), _) => items.iter().for_each(|i| unknown_keys(i, shape, &format!("{path}[]"), out)),
        (Value::Object(map), Value::Object(known)) => {
            for (k, v) in map {
                match known.get(k) {
                    Some(s) => unknown_keys(v, s, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        _ => {}
    }
}

#[test]
fn bootstraps_use_only_what_meshwork_run_reads() {
    let mut everything = vec![image("img"), file("f"), http("h")];
    everything[0].fail = Fail::Reload;
    everything[1].fail = Fail::Open;
    everything[1].allow_on_headers_stop_iteration = true;
    everything[2].env.insert("K".into(), "v".into());
    let options = Options {
        extra_clusters: vec![ExtraCluster { name: "ext".into(), address: "ext.local:81".into() }],
        ..Options::default()
    };
    let docs = ok(Mesh::EnvoyBootstrap, &everything, &options);
    let mut unknown = Vec::new();
    unknown_keys(&docs[0].value, &meshwork_accepts(), "", &mut unknown);
    assert!(unknown.is_empty(), "meshwork would refuse: {unknown:?}");
    // The check itself catches a field meshwork does not read.
    let mut bad = docs[0].value.clone();
    bad["static_resources"]["clusters"][0]["outlier_detection"] = json!({});
    let mut unknown = Vec::new();
    unknown_keys(&bad, &meshwork_accepts(), "", &mut unknown);
    assert_eq!(unknown, [".static_resources.clusters[].outlier_detection"]);
}

#[test]
fn istio_plugins_follow_the_wasmplugin_api() {
    let mut a = image("auth");
    a.fail = Fail::Open;
    a.env.insert("TRUST_DOMAIN".into(), "cluster.local".into());
    let mut b = file("stats");
    b.fail = Fail::Reload;
    b.root_id = String::new();
    let mut c = http("last");
    c.configuration = json!([1, 2]);
    let options = Options {
        namespace: "istio-ingress".into(),
        selector: BTreeMap::from([("istio".into(), "ingressgateway".into())]),
        istio_phase: Some("AUTHZ".into()),
        ..Options::default()
    };
    let docs = ok(Mesh::Istio, &[a, b, c], &options);
    assert_eq!(docs.len(), 3);
    let spec = |i: usize| &docs[i].value["spec"];
    assert_eq!(docs[0].value["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(docs[0].value["metadata"], json!({"name": "auth", "namespace": "istio-ingress"}));
    assert_eq!(spec(0)["selector"], json!({"matchLabels": {"istio": "ingressgateway"}}));
    assert_eq!(spec(0)["url"], "oci://ghcr.io/meshwork/auth:v1");
    assert_eq!(spec(0)["sha256"], DIGEST, "images pin the manifest digest");
    assert_eq!(spec(0)["imagePullPolicy"], "IfNotPresent");
    assert_eq!(spec(0)["pluginName"], "auth_root");
    assert_eq!(spec(0)["pluginConfig"], json!({"limit": 10, "name": "auth"}));
    assert_eq!(spec(0)["phase"], "AUTHZ");
    assert_eq!(spec(0)["failStrategy"], "FAIL_OPEN");
    assert_eq!(spec(0)["vmConfig"], json!({"env": [{"name": "TRUST_DOMAIN", "value": "cluster.local"}]}));
    assert_eq!(spec(0)["type"], "HTTP");
    assert_eq!(spec(1)["url"], "file:///etc/wasm/stats.wasm");
    assert!(spec(1).get("sha256").is_none() && spec(1).get("imagePullPolicy").is_none());
    assert!(spec(1).get("pluginName").is_none());
    assert_eq!(spec(1)["failStrategy"], "FAIL_RELOAD");
    assert_eq!(spec(2)["url"], "https://modules.example.com/last.wasm");
    assert_eq!(spec(2)["sha256"], MODULE_SHA, "http modules pin the module digest");
    assert_eq!(spec(2)["failStrategy"], "FAIL_CLOSE");
    assert!(spec(2).get("pluginConfig").is_none(), "a list is not a Struct");
    assert!(docs[2].notes.iter().any(|n| n.contains("pluginConfig")), "{:?}", docs[2].notes);
    assert_valid(&docs);

    // targetRefs instead of a selector; a JSON object given as text is still a Struct.
    let mut t = file("gw");
    t.configuration = json!("{\"a\": 1}");
    let refs = Options {
        target_refs: vec![TargetRef {
            group: "gateway.networking.k8s.io".into(),
            kind: "Gateway".into(),
            name: "edge".into(),
        }],
        ..Options::default()
    };
    let docs = ok(Mesh::Istio, &[t], &refs);
    let spec = &docs[0].value["spec"];
    assert_eq!(spec["targetRefs"], json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}]));
    assert!(spec.get("selector").is_none() && spec.get("phase").is_none());
    assert_eq!(spec["pluginConfig"], json!({"a": 1}));
}

#[test]
fn istio_notes_what_it_cannot_say() {
    let mut a = file("a");
    a.allow_on_headers_stop_iteration = true;
    let mut b = file("b");
    b.vm_id = "a".into();
    let docs = ok(Mesh::Istio, &[a, b], &Options::default());
    let notes = docs[0].notes.join("\n");
    assert!(notes.contains("allow_on_headers_stop_iteration"), "{notes}");
    assert!(notes.contains("share vm_id \"a\""), "{notes}");
    assert!(notes.contains("every workload in namespace default"), "{notes}");
    // Names Kubernetes would refuse are made valid, and said so.
    let docs = ok(Mesh::Istio, &[file("Rate_Limit")], &Options::default());
    assert_eq!(docs[0].name, "rate-limit");
    assert!(docs[0].notes.iter().any(|n| n.contains("\"rate-limit\"")), "{:?}", docs[0].notes);
}

#[test]
fn envoy_gateway_policy_carries_the_chain() {
    let mut a = image("a");
    a.fail = Fail::Open;
    if let Module::Image { reference, .. } = &mut a.module {
        *reference = format!("oci://{reference}");
    }
    let mut b = http("b");
    b.fail = Fail::Reload;
    b.root_id = String::new();
    let docs = ok(Mesh::EnvoyGateway, &[a, b], &Options { namespace: "gw".into(), ..Options::default() });
    assert_eq!(docs.len(), 1);
    let v = &docs[0].value;
    assert_eq!(v["apiVersion"], "gateway.envoyproxy.io/v1alpha1");
    assert_eq!(v["metadata"], json!({"name": "meshwork-app", "namespace": "gw"}));
    assert_eq!(
        v["spec"]["targetRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "app"}])
    );
    assert!(docs[0].notes.iter().any(|n| n.contains("HTTPRoute \"app\"")));
    let w = v["spec"]["wasm"].as_array().unwrap();
    assert_eq!(
        w[0],
        json!({"name": "a", "rootID": "a_root", "failOpen": true, "config": {"limit": 10, "name": "a"},
               "code": {"type": "Image", "image": {"url": "ghcr.io/meshwork/a:v1", "sha256": DIGEST}}})
    );
    assert_eq!(
        w[1]["code"],
        json!({"type": "HTTP", "http": {"url": "https://modules.example.com/b.wasm", "sha256": MODULE_SHA}})
    );
    assert_eq!(w[1]["failOpen"], false);
    assert!(w[1].get("rootID").is_none());
    assert!(docs[0].notes.iter().any(|n| n.contains("filter b") && n.contains("FAIL_RELOAD")), "{:?}", docs[0].notes);
    assert_valid(&docs);

    let refs = vec![TargetRef { group: "gateway.networking.k8s.io".into(), kind: "Gateway".into(), name: "eg".into() }];
    let docs = ok(Mesh::EnvoyGateway, &[image("a")], &Options { target_refs: refs, ..Options::default() });
    assert_eq!(
        docs[0].value["spec"]["targetRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"}])
    );
    assert!(docs[0].notes.iter().all(|n| !n.contains("HTTPRoute")));
}

#[test]
fn consul_service_defaults_in_crd_and_hcl() {
    let mut a = file("a");
    a.fail = Fail::Open;
    a.env.insert("K".into(), "v \"q\" ${x}".into());
    let mut b = http("b");
    b.fail = Fail::Reload;
    let docs =
        ok(Mesh::Consul, &[a, b], &Options { service: "web".into(), namespace: "shop".into(), ..Options::default() });
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(d.value["metadata"], json!({"name": "web", "namespace": "shop"}));
    assert_eq!(d.value["spec"]["protocol"], "http");
    let ext = d.value["spec"]["envoyExtensions"].as_array().unwrap();
    assert_eq!(ext[0]["name"], "builtin/wasm");
    assert_eq!(ext[0]["required"], false, "Required = false is Consul's fail open");
    assert_eq!(ext[1]["required"], true);
    let args = &ext[0]["arguments"];
    assert_eq!(args["protocol"], "http");
    assert_eq!(args["listenerType"], "inbound");
    let pc = &args["pluginConfig"];
    assert_eq!((pc["name"].as_str(), pc["rootID"].as_str()), (Some("a"), Some("a_root")));
    assert_eq!(
        serde_json::from_str::<Value>(pc["configuration"].as_str().unwrap()).unwrap(),
        json!({"limit": 10, "name": "a"})
    );
    assert_eq!(pc["vmConfig"]["runtime"], "v8");
    assert_eq!(pc["vmConfig"]["vmID"], "a");
    assert_eq!(pc["vmConfig"]["code"], json!({"local": {"filename": "/etc/wasm/a.wasm"}}));
    assert_eq!(pc["vmConfig"]["environmentVariables"], json!({"keyValues": {"K": "v \"q\" ${x}"}}));
    assert_eq!(
        ext[1].pointer("/arguments/pluginConfig/vmConfig/code").unwrap(),
        &json!({"remote": {"httpURI": {"service": {"name": "modules"}, "uri": "https://modules.example.com/b.wasm", "timeout": "10s"}, "sha256": MODULE_SHA}})
    );
    let hcl = d.text.as_deref().unwrap();
    for line in [
        "Kind     = \"service-defaults\"",
        "Name     = \"web\"",
        "Protocol = \"http\"",
        "Required = false",
        "ListenerType = \"inbound\"",
        "RootID = \"a_root\"",
        "Configuration = \"{\\\"limit\\\":10,\\\"name\\\":\\\"a\\\"}\"",
        "Filename = \"/etc/wasm/a.wasm\"",
        "\"K\" = \"v \\\"q\\\" $${x}\"",
        "Service = {",
        "URI = \"https://modules.example.com/b.wasm\"",
        &format!("SHA256 = \"{MODULE_SHA}\""),
    ] {
        assert!(hcl.contains(line), "HCL lacks {line:?}:\n{hcl}");
    }
    let notes = d.notes.join("\n");
    assert!(notes.contains("Consul's builtin/wasm patches inbound listeners only"), "{notes}");
    assert!(notes.contains("upstream of \"web\""), "{notes}");
    assert!(notes.contains("filter b: Consul has no FAIL_RELOAD"), "{notes}");
    assert!(!to_yaml(&docs).contains("EnvoyExtensions"), "the YAML holds the CRD, not the HCL");
    assert_valid(&docs);
}

#[test]
fn kuma_patch_adds_filters_before_the_router() {
    let mut a = file("a");
    a.fail = Fail::Reload;
    let docs = ok(Mesh::Kuma, &[a, file("b")], &Options::default());
    let v = &docs[0].value;
    assert_eq!(v["metadata"]["namespace"], "kuma-system");
    assert_eq!(v["spec"]["targetRef"], json!({"kind": "Mesh"}));
    let mods = v.pointer("/spec/default/appendModifications").unwrap().as_array().unwrap();
    assert_eq!(mods.len(), 2, "file modules need no cluster");
    let value: Value = serde_saphyr::from_str(mods[0]["httpFilter"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(value["name"], "envoy.filters.http.wasm");
    assert_eq!(value.pointer("/typedConfig/@type").unwrap(), WASM_TYPE);
    assert_eq!(value.pointer("/typedConfig/config/failure_policy").unwrap(), "FAIL_RELOAD");
    assert!(value.get("typed_config").is_none());
    assert_valid(&docs);

    let dp = vec![TargetRef { group: String::new(), kind: "Dataplane".into(), name: "web-1".into() }];
    let docs =
        ok(Mesh::Kuma, &[file("a")], &Options { namespace: "shop".into(), target_refs: dp, ..Options::default() });
    assert_eq!(docs[0].value["spec"]["targetRef"], json!({"kind": "Dataplane", "name": "web-1"}));
    assert_eq!(docs[0].value["metadata"]["namespace"], "shop");
    assert_valid(&docs);
}

#[test]
fn meshwork_config_is_what_meshwork_run_reads() {
    let mut a = image("a");
    a.fail = Fail::Open;
    a.allow_on_headers_stop_iteration = true;
    a.env.insert("K".into(), "v".into());
    let mut b = http("b");
    b.fail = Fail::Reload;
    let options = Options {
        listen: "127.0.0.1:10000".into(),
        upstream: "localhost:8080".into(),
        extra_clusters: vec![ExtraCluster { name: "rls".into(), address: "127.0.0.1:8081".into() }],
        ..Options::default()
    };
    let docs = ok(Mesh::Meshwork, &[a, b, file("c")], &options);
    let v = &docs[0].value;
    assert_eq!(v["listen"], "127.0.0.1:10000");
    assert_eq!(v["admin"], "127.0.0.1:9901");
    assert_eq!(
        v["clusters"],
        json!([{"name": "app", "endpoints": ["localhost:8080"]}, {"name": "rls", "endpoints": ["127.0.0.1:8081"]}])
    );
    assert_eq!(v["route"], json!({"cluster": "app", "name": "app"}));
    let f = &v["filters"];
    assert_eq!(
        f[0],
        json!({"name": "a", "module": "oci://ghcr.io/meshwork/a:v1", "sha256": DIGEST, "root_id": "a_root", "vm_id": "a",
               "configuration": {"limit": 10, "name": "a"}, "fail": "open", "allow_on_headers_stop_iteration": true, "env": {"K": "v"}})
    );
    assert_eq!(f[1]["module"], "https://modules.example.com/b.wasm");
    assert_eq!(f[1]["fail"], "closed");
    assert_eq!(f[2]["module"], "/etc/wasm/c.wasm");
    assert!(docs[0].notes.iter().any(|n| n.contains("filter b") && n.contains("FAIL_RELOAD")));
    assert_valid(&docs);
}

#[test]
fn unexpressible_combinations_are_refused() {
    let o = Options::default();
    let e = err(Mesh::EnvoyGateway, &[file("f")], &o);
    assert!(e.contains("Envoy Gateway cannot deploy filter \"f\"") && e.contains("not a file"), "{e}");
    let mut env = image("e");
    env.env.insert("K".into(), "v".into());
    let e = err(Mesh::EnvoyGateway, &[env], &o);
    assert!(e.contains("hostKeys") && e.contains('K'), "{e}");
    let mut text = image("t");
    text.configuration = json!("not json");
    assert!(err(Mesh::EnvoyGateway, &[text], &o).contains("plain text"));
    let e = err(Mesh::Consul, &[file("ok"), image("img")], &o);
    assert!(e.contains("Consul cannot deploy filter \"img\"") && e.contains("not an OCI image"), "{e}");
    let e = err(Mesh::Kuma, &[image("img")], &o);
    assert!(e.contains("Kuma cannot deploy filter \"img\"") && e.contains("cannot pull OCI images"), "{e}");
    let unpinned = filter("u", Module::Http { url: "https://m.example/u.wasm".into(), sha256: None });
    for mesh in [Mesh::Envoy, Mesh::EnvoyBootstrap, Mesh::Kuma, Mesh::Consul] {
        let e = err(mesh, std::slice::from_ref(&unpinned), &o);
        assert!(e.contains("cannot deploy filter \"u\"") && e.contains("sha256"), "{mesh:?}: {e}");
    }
    // Meshes that take an unpinned URL still render it.
    for mesh in [Mesh::Istio, Mesh::EnvoyGateway, Mesh::Meshwork] {
        ok(mesh, std::slice::from_ref(&unpinned), &o);
    }
    let relative = filter("rel", Module::File { path: "filters/rel.wasm".into(), sha256: None });
    assert!(err(Mesh::Istio, &[relative], &o).contains("absolute path"));
    let ip = filter("ip", Module::Http { url: "http://10.0.0.1/ip.wasm".into(), sha256: Some(MODULE_SHA.into()) });
    assert!(err(Mesh::Consul, &[ip], &o).contains("upstream service"));
}

#[test]
fn bad_inputs_are_refused_with_the_field() {
    let o = Options::default();
    assert_eq!(render(Mesh::Envoy, &[], &o), Err(RenderError::NoFilters));
    let e = err(Mesh::Envoy, &[file("a"), http("a")], &o);
    assert!(e.starts_with("filters[1] (a).name:") && e.contains("unique"), "{e}");
    let bad = filter("x", Module::File { path: "/x.wasm".into(), sha256: Some("XYZ".into()) });
    let e = err(Mesh::Meshwork, &[bad], &o);
    assert!(e.contains("filters[0] (x).sha256") && e.contains("\"XYZ\" is not a sha256"), "{e}");
    let other = DIGEST.replace('0', "1");
    let pinned = filter("p", Module::Image { reference: format!("r.example/p@sha256:{DIGEST}"), digest: Some(other) });
    assert!(err(Mesh::Istio, &[pinned], &o).contains("pins sha256:"));
    let ftp = filter("f", Module::Http { url: "ftp://x/f.wasm".into(), sha256: None });
    assert!(err(Mesh::Meshwork, &[ftp], &o).contains("not an http:// or https:// URL"));

    let both = Options {
        selector: BTreeMap::from([("app".into(), "web".into())]),
        target_refs: vec![TargetRef { group: String::new(), kind: "Service".into(), name: "web".into() }],
        ..Options::default()
    };
    assert!(err(Mesh::Istio, &[file("a")], &both).contains("not both"));
    let phase = Options { istio_phase: Some("EARLY".into()), ..Options::default() };
    assert!(err(Mesh::Istio, &[file("a")], &phase).starts_with("istio_phase: \"EARLY\""));
    let ns = Options { namespace: "Bad_NS".into(), ..Options::default() };
    assert!(err(Mesh::Istio, &[file("a")], &ns).starts_with("namespace:"));
    let svc = TargetRef { group: String::new(), kind: "MeshService".into(), name: "web".into() };
    let kuma = Options { target_refs: vec![svc.clone()], ..Options::default() };
    assert!(err(Mesh::Kuma, &[file("a")], &kuma).contains("a Mesh or a Dataplane"));
    let two = Options { target_refs: vec![svc.clone(), svc], ..Options::default() };
    assert!(err(Mesh::Kuma, &[file("a")], &two).contains("one targetRef"));
    let dup = Options {
        extra_clusters: vec![ExtraCluster { name: "app".into(), address: "1.2.3.4:5".into() }],
        ..Options::default()
    };
    for mesh in [Mesh::EnvoyBootstrap, Mesh::Meshwork] {
        assert!(err(mesh, &[file("a")], &dup).contains("cluster \"app\" is defined twice"), "{mesh:?}");
    }
    let host = Options { listen: "localhost:10000".into(), ..Options::default() };
    for mesh in [Mesh::EnvoyBootstrap, Mesh::Meshwork] {
        assert!(err(mesh, &[file("a")], &host).starts_with("listen:"), "{mesh:?}");
    }
    let port = Options { upstream: "app".into(), ..Options::default() };
    assert!(err(Mesh::Meshwork, &[file("a")], &port).starts_with("upstream: \"app\" is not host:port"));
}

#[test]
fn yaml_and_json_outputs() {
    let docs = ok(Mesh::Istio, &[file("a"), file("b")], &Options::default());
    let yaml = to_yaml(&docs);
    assert_eq!(yaml.matches("\n---\n").count(), 1, "{yaml}");
    assert!(yaml.starts_with("# note: no selector"), "{yaml}");
    let json: Value = serde_json::from_str(&to_json(&docs)).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    // A JSON array of documents reads back as the documents.
    let back = validate_text(&to_json(&docs)).unwrap();
    assert_eq!(back.iter().map(|(d, _)| d.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn host_ports_and_urls() {
    assert_eq!(HostPort::parse("[::1]:80", "x").unwrap(), HostPort { host: "::1".into(), port: 80 });
    assert_eq!(HostPort::parse("a.b:8080", "x").unwrap().text(), "a.b:8080");
    assert!(HostPort::parse("::1:80", "x").is_err());
    assert!(HostPort::parse("a:99999", "x").is_err());
    assert_eq!(
        url_endpoint("https://u:p@h.example/x").unwrap(),
        (HostPort { host: "h.example".into(), port: 443 }, true)
    );
    assert_eq!(url_endpoint("http://[fe80::1]:81/x").unwrap(), (HostPort { host: "fe80::1".into(), port: 81 }, false));
    assert!(url_endpoint("https:///x").is_err());
}
