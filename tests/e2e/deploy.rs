//! `meshwork deploy`: every filter and pattern of the catalog for every mesh, each document
//! valid against its kind's schema; hand-written documents refused with the document, the
//! field and the reason; options reaching the documents; a filter's configuration checked by
//! starting it; `--apply` without a cluster; the filter READMEs' snippets are this command's
//! output (`UPDATE_SNIPPETS=1` rewrites them).

use std::path::Path;

use meshwork_e2e::*;
use serde_json::Value;

const MESHES: [&str; 7] = ["envoy", "envoy-bootstrap", "istio", "envoy-gateway", "consul", "kuma", "meshwork"];

fn deploy(args: &[&str]) -> (i32, String, String) {
    let catalog = root().join("catalog");
    let mut all = vec!["deploy", "--catalog", catalog.to_str().unwrap()];
    all.extend_from_slice(args);
    run(&all)
}

fn items(kind: &str) -> Vec<String> {
    let (code, out, err) =
        run(&["catalog", "--catalog", root().join("catalog").to_str().unwrap(), "list", "--kind", kind]);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| l.split_whitespace().next().unwrap().to_owned()).collect()
}

fn validate(file: &Path) -> (i32, String, String) {
    deploy(&["--validate", file.to_str().unwrap()])
}

#[test]
fn every_item_deploys_to_every_mesh_and_validates() {
    let dir = scratch("deploy-all");
    let mut count = 0;
    for id in items("filter").into_iter().chain(items("pattern")) {
        for mesh in MESHES {
            // Envoy Gateway takes code from a URL or an image, not a file.
            let mut args = vec![id.as_str(), "--mesh", mesh, "--no-check"];
            if mesh == "envoy-gateway" {
                args.extend(["--url", "https://modules.example.com/wasm"]);
            }
            let (code, out, err) = deploy(&args);
            assert_eq!(code, 0, "{id} {mesh}: {err}");
            let file = dir.join(format!("{}-{mesh}.yaml", id.replace('/', "-")));
            std::fs::write(&file, &out).unwrap();
            let (code, ok, err) = validate(&file);
            assert_eq!(code, 0, "{id} {mesh}: {err}\n{out}");
            assert!(ok.lines().all(|l| l.starts_with("ok: ")) && !ok.is_empty(), "{id} {mesh}: {ok}");
            count += 1;
        }
    }
    assert_eq!(count, 15 * MESHES.len(), "10 filters and 5 patterns");
    for id in items("ebpf") {
        // Only the rate limiter needs a configuration.
        let mut args = vec![id.as_str()];
        if id == "ebpf/xdp-ratelimit" {
            args.extend(["--ebpf-config", "{rate: 1000, burst: 2000}"]);
        }
        let (code, out, err) = deploy(&args);
        assert_eq!(code, 0, "{id}: {err}");
        let file = dir.join(format!("{}.yaml", id.replace('/', "-")));
        std::fs::write(&file, &out).unwrap();
        let (code, ok, err) = validate(&file);
        assert_eq!((code, ok.trim()), (0, format!("ok: DaemonSet meshwork-{}", &id[5..]).as_str()), "{id}: {err}");
    }
}

#[test]
fn a_pattern_is_one_document_per_filter_in_chain_order() {
    let (code, out, err) = deploy(&["pattern/resilient-upstream", "--mesh", "istio", "--output", "json", "--no-check"]);
    assert_eq!(code, 0, "{err}");
    let docs: Vec<Value> = serde_json::from_str(&out).unwrap();
    let order: Vec<(&str, i64)> = docs
        .iter()
        .map(|d| (d["metadata"]["name"].as_str().unwrap(), d["spec"]["priority"].as_i64().unwrap()))
        .collect();
    assert_eq!(order, [("breaker", 30), ("retry", 20), ("timeout", 10)], "Istio runs higher priorities first");
    let (code, out, err) = deploy(&["pattern/resilient-upstream", "--mesh", "kuma", "--output", "json", "--no-check"]);
    assert_eq!(code, 0, "{err}");
    let docs: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mods = docs[0]["spec"]["default"]["appendModifications"].as_array().unwrap();
    let names: Vec<String> = mods
        .iter()
        .map(|m| {
            let filter: Value = serde_saphyr::from_str(m["httpFilter"]["value"].as_str().unwrap()).unwrap();
            filter["typedConfig"]["config"]["name"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(names, ["breaker", "retry", "timeout"]);
    assert!(mods.iter().all(|m| m["httpFilter"]["operation"] == "AddBefore"));
}

#[test]
fn options_reach_the_documents() {
    let dir = scratch("deploy-options");
    let values = dir.join("values.yaml");
    std::fs::write(&values, "budget: {ratio: 0.1}\nretry_on: [5xx]\n").unwrap();
    let (code, out, err) = deploy(&[
        "filter/retry",
        "--mesh",
        "istio",
        "--namespace",
        "shop",
        "--selector",
        "app=frontend",
        "--image",
        "registry.example.com/meshwork/retry:0.1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "--fail",
        "open",
        "--values",
        values.to_str().unwrap(),
        "--set",
        "max_retries=5",
        "--set",
        "mode=envoy",
        "--phase",
        "AUTHZ",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let docs: Vec<Value> = serde_json::from_str(&out).unwrap();
    let spec = &docs[0]["spec"];
    assert_eq!(docs[0]["metadata"]["namespace"], "shop");
    assert_eq!(spec["selector"]["matchLabels"]["app"], "frontend");
    assert_eq!(spec["sha256"], "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    assert!(spec["url"].as_str().unwrap().starts_with("oci://registry.example.com/meshwork/retry:0.1.0"));
    assert_eq!((spec["failStrategy"].as_str(), spec["phase"].as_str()), (Some("FAIL_OPEN"), Some("AUTHZ")));
    let config = &spec["pluginConfig"];
    assert_eq!((config["max_retries"].as_i64(), config["mode"].as_str()), (Some(5), Some("envoy")));
    assert_eq!(config["budget"]["ratio"], 0.1);
    assert_eq!(config["budget"]["window"], "10s", "--values merges, it does not replace");
    assert_eq!(config["retry_on"], serde_json::json!(["5xx"]));

    // Envoy Gateway: target refs; Consul: its HCL, and the inbound-only limit said.
    let (code, out, err) = deploy(&[
        "filter/retry",
        "--mesh",
        "envoy-gateway",
        "--target-ref",
        "HTTPRoute/checkout",
        "--url",
        "https://modules.example.com/wasm",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let docs: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(docs[0]["spec"]["targetRefs"][0]["name"], "checkout");
    assert_eq!(docs[0]["spec"]["wasm"][0]["code"]["type"], "HTTP");
    assert_eq!(docs[0]["spec"]["wasm"][0]["code"]["http"]["url"], "https://modules.example.com/wasm/retry.wasm");
    let (code, out, err) = deploy(&["filter/retry", "--mesh", "consul", "--service", "checkout", "--output", "hcl"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Kind     = \"service-defaults\"") && out.contains("\"builtin/wasm\""), "{out}");
    assert!(err.contains("inbound"), "the inbound-only limit is stated: {err}");
}

#[test]
fn what_a_mesh_cannot_express_is_refused() {
    let (code, _, err) = deploy(&["filter/retry", "--mesh", "envoy-gateway", "--no-check"]);
    assert_ne!(code, 0);
    assert!(err.contains("Envoy Gateway") && err.contains("not a file"), "{err}");
    let (code, _, err) = deploy(&["filter/retry", "--mesh", "consul", "--image", "r.example/retry:1", "--no-check"]);
    assert_ne!(code, 0);
    assert!(err.contains("Consul"), "{err}");
    let (code, _, err) = deploy(&["filter/retry", "--mesh", "istio", "--phase", "EARLY", "--no-check"]);
    assert_ne!(code, 0);
    assert!(err.contains("AUTHN, AUTHZ and STATS"), "{err}");
    let (code, _, err) = deploy(&["policy/retries-bounded"]);
    assert_ne!(code, 0);
    assert!(err.contains("check-policy"), "{err}");
}

#[test]
fn a_filter_refusing_its_configuration_stops_the_deploy() {
    let (code, out, err) = deploy(&["filter/local-rate-limit", "--mesh", "istio", "--set", "rate=-3"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.is_empty(), "nothing is written: {out}");
    assert!(err.contains("refused its configuration") && err.contains("rate"), "{err}");
    // --set reaches nested fields; a correct value deploys.
    let (code, out, err) =
        deploy(&["filter/local-rate-limit", "--mesh", "istio", "--set", "rate=7", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()[0]["spec"]["pluginConfig"]["rate"], 7);
}

#[test]
fn hand_written_documents_are_refused_with_document_field_and_reason() {
    let dir = scratch("deploy-validate");
    let cases = [
        (
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: bad}\nspec: {url: oci://r/x, sha256: XYZ, phase: EARLY}\n",
            &["WasmPlugin/bad", "/spec/sha256", "/spec/phase"][..],
        ),
        (
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: nourl}\nspec: {pluginConfig: {a: 1}}\n",
            &["WasmPlugin/nourl", "url"][..],
        ),
        (
            "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata: {name: p}\nspec: {wasm: []}\n",
            &["EnvoyExtensionPolicy/p", "targetRefs"][..],
        ),
        (
            "apiVersion: kuma.io/v1alpha1\nkind: MeshProxyPatch\nmetadata: {name: k, namespace: kuma-system}\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    appendModifications:\n    - httpFilter: {operation: AddBefore, match: {name: envoy.filters.http.router}, value: 'just: text'}\n",
            &["MeshProxyPatch/k", "/spec/default/appendModifications/0/httpFilter/value"][..],
        ),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", &["not a document meshwork deploys"][..]),
    ];
    for (i, (text, wants)) in cases.iter().enumerate() {
        let file = dir.join(format!("case{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let (code, out, err) = validate(&file);
        assert_ne!(code, 0, "case {i} passed: {out}");
        for want in *wants {
            assert!(err.contains(want), "case {i}: {want:?} not in {err}");
        }
    }
    let (code, _, err) = deploy(&["--validate", dir.join("missing.yaml").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("missing.yaml"), "{err}");
}

#[test]
fn apply_needs_a_cluster_and_kubernetes_documents() {
    let (code, _, err) = run_with(
        &["deploy", "filter/retry", "--mesh", "istio", "--apply", "--no-check"],
        b"",
        &[("KUBECONFIG", "/nonexistent/kubeconfig"), ("KUBERNETES_SERVICE_HOST", "")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no cluster to apply to"), "{err}");
    let (code, _, err) = deploy(&["filter/retry", "--mesh", "envoy", "--apply", "--no-check"]);
    assert_ne!(code, 0);
    assert!(err.contains("--apply sends Kubernetes objects"), "{err}");
}

/// Snippets in the filter READMEs follow a line `<!-- meshwork deploy ARGS -->` and are that
/// command's output; with UPDATE_SNIPPETS=1 this test writes them instead of comparing.
#[test]
fn readme_snippets_are_the_generators_output() {
    let update = std::env::var_os("UPDATE_SNIPPETS").is_some();
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("filters")).unwrap() {
        let readme = entry.unwrap().path().join("README.md");
        let Ok(text) = std::fs::read_to_string(&readme) else { continue };
        let mut out = String::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            out.push_str(line);
            out.push('\n');
            let Some(args) = line.strip_prefix("<!-- meshwork deploy ").and_then(|l| l.strip_suffix(" -->")) else {
                continue;
            };
            let args: Vec<&str> = args.split_whitespace().collect();
            let (code, generated, err) = deploy(&args);
            assert_eq!(code, 0, "{}: meshwork deploy {args:?}: {err}", readme.display());
            let fence = lines.next().unwrap_or_default();
            assert!(fence.starts_with("```"), "{}: a code block must follow {line}", readme.display());
            let mut current = String::new();
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                current.push_str(l);
                current.push('\n');
            }
            if !update {
                assert_eq!(
                    current,
                    generated,
                    "{}: the snippet after {line} is not what the command writes (UPDATE_SNIPPETS=1 rewrites it)",
                    readme.display()
                );
            }
            out.push_str(fence);
            out.push('\n');
            out.push_str(&generated);
            out.push_str("```\n");
            checked += 1;
        }
        if update && out != text {
            std::fs::write(&readme, out).unwrap();
        }
    }
    assert!(checked >= 18, "the filter READMEs' Envoy and Istio snippets (found {checked})");
}
