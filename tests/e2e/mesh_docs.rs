//! `meshwork run --istio` and `--kuma`: mesh documents as users write them for a cluster, run
//! with the product filters as a sidecar would run them, in the order the mesh would put them.

use std::path::{Path, PathBuf};

use meshwork_e2e::*;

/// A proxy started from mesh documents.
struct Mesh {
    _process: Process,
    url: String,
    admin: Option<String>,
    line: String,
}

impl Mesh {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

/// `meshwork run <flag> FILE --upstream <up> --listen 127.0.0.1:0 <extra…>`.
fn start(flag: &str, file: &Path, up: &Upstream, extra: &[&str]) -> Mesh {
    let upstream = up.addr.to_string();
    let mut args = vec!["run", flag, file.to_str().unwrap(), "--upstream", &upstream, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let process = Process::start(&args).unwrap_or_else(|e| panic!("{e}"));
    let line = process.first_line.clone();
    let after = |marker: &str| line.split(marker).nth(1).and_then(|r| r.split([' ', ',']).next()).map(str::to_owned);
    let url = after("listening on ").unwrap_or_else(|| panic!("no address in {line}"));
    Mesh { admin: after("admin on "), url, line, _process: process }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn statuses(m: &Mesh, n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    (0..n).map(|_| get(&m.url("/orders"), headers).status).collect()
}

/// A WasmPlugin in namespace `default`; `spec` is indented by four spaces.
fn wasm_plugin(name: &str, module: &str, spec: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  url: file://{}\n{spec}---\n",
        wasm(module).display()
    )
}

const RATE_LIMIT: &str = "  pluginConfig: {rate: 3, period: 60s, burst: 3}\n";
/// Aborts, with 503, the requests that carry `x-fault`.
const FAULT: &str =
    "  pluginConfig:\n    abort: {http_status: 503, percentage: 100}\n    headers: [{name: x-fault, present: true}]\n";

#[test]
fn istio_wasm_plugin_rate_limits_the_inbound_of_the_selected_workload() {
    let up = upstream("reviews");
    let dir = scratch("mesh-istio");
    let docs = [
        wasm_plugin("rate-limit", "local-rate-limit", &format!("  selector:\n    matchLabels: {{app: reviews}}\n{RATE_LIMIT}")),
        // Selected for another workload: it would abort everything here.
        wasm_plugin(
            "abort-ratings",
            "fault-injection",
            "  selector:\n    matchLabels: {app: ratings}\n  pluginConfig: {abort: {http_status: 500, percentage: 100}}\n",
        ),
    ]
    .concat();
    let file = write(&dir, "plugins.yaml", &docs);
    let m = start("--istio", &file, &up, &["--workload-labels", "app=reviews,version=v1"]);
    assert!(m.line.contains("(virtualInbound)") && m.line.contains("filters [default.rate-limit]"), "{}", m.line);
    assert_eq!(statuses(&m, 5, &[]), [200, 200, 200, 429, 429]);
    assert_eq!(up.requests(), 3, "limited requests never reach the workload");
}

#[test]
fn istio_priority_decides_whether_aborted_requests_spend_rate_limit_tokens() {
    let up = upstream("reviews");
    let dir = scratch("mesh-istio-order");
    // Faults first: the three aborted requests never reach the limiter, three more pass, the
    // seventh is limited. Limiter first: the aborted requests spend the tokens.
    for (fault, limiter, after_faults) in [(10, 5, vec![200, 200, 200, 429]), (5, 10, vec![429, 429, 429, 429])] {
        let docs = [
            wasm_plugin("fault", "fault-injection", &format!("  phase: AUTHZ\n  priority: {fault}\n{FAULT}")),
            wasm_plugin("limiter", "local-rate-limit", &format!("  phase: AUTHZ\n  priority: {limiter}\n{RATE_LIMIT}")),
        ]
        .concat();
        let file = write(&dir, &format!("order-{fault}.yaml"), &docs);
        let m = start("--istio", &file, &up, &[]);
        let order = if fault > limiter { "default.fault, default.limiter" } else { "default.limiter, default.fault" };
        assert!(m.line.contains(&format!("filters [{order}]")), "{}", m.line);
        assert_eq!(statuses(&m, 3, &[("x-fault", "on")]), [503, 503, 503], "fault priority {fault}");
        assert_eq!(statuses(&m, 4, &[]), after_faults, "fault priority {fault}");
    }
    // The phase comes before the priority: AUTHN runs before everything in AUTHZ.
    let docs = [
        wasm_plugin("fault", "fault-injection", &format!("  phase: AUTHN\n  priority: -100\n{FAULT}")),
        wasm_plugin("limiter", "local-rate-limit", &format!("  phase: AUTHZ\n  priority: 100\n{RATE_LIMIT}")),
    ]
    .concat();
    let m = start("--istio", &write(&dir, "phases.yaml", &docs), &up, &[]);
    assert!(m.line.contains("filters [default.fault, default.limiter]"), "{}", m.line);
    assert_eq!(statuses(&m, 3, &[("x-fault", "on")]), [503, 503, 503]);
    assert_eq!(statuses(&m, 4, &[]), [200, 200, 200, 429]);
}

#[test]
fn istio_plugins_see_a_sidecars_node_and_cluster() {
    let up = upstream("reviews");
    let dir = scratch("mesh-istio-node");
    let docs = wasm_plugin("props", "surface", "  pluginName: props-root\n  pluginConfig: {mode: http}\n");
    let m = start(
        "--istio",
        &write(&dir, "props.yaml", &docs),
        &up,
        &["--workload-labels", "app=reviews,version=v2", "--namespace", "default", "--workload-name", "reviews-v2"],
    );
    let props = [
        "node.metadata.WORKLOAD_NAME",
        "node.metadata.NAMESPACE",
        "node.metadata.MESH_ID",
        "node.metadata.CLUSTER_ID",
        "node.metadata.LABELS.version",
        "xds.node.id",
        "node.cluster",
        "xds.cluster_name",
        "plugin_name",
        "plugin_vm_id",
        "plugin_root_id",
    ];
    let r = get(&m.url("/"), &[("x-props", &props.join(","))]);
    assert_eq!(r.status, 200);
    let prop = |p: &str| r.header(&format!("x-prop-{p}")).unwrap_or("missing").to_owned();
    let port = up.addr.port();
    for (p, want) in [
        ("node.metadata.WORKLOAD_NAME", "reviews-v2".to_owned()),
        ("node.metadata.NAMESPACE", "default".to_owned()),
        ("node.metadata.MESH_ID", "cluster.local".to_owned()),
        ("node.metadata.CLUSTER_ID", "Kubernetes".to_owned()),
        ("node.metadata.LABELS.version", "v2".to_owned()),
        ("xds.node.id", "sidecar~127.0.0.1~reviews-v2.default~default.svc.cluster.local".to_owned()),
        ("node.cluster", "reviews-v2.default".to_owned()),
        ("xds.cluster_name", format!("inbound|{port}||")),
        ("plugin_name", "default.props".to_owned()),
        ("plugin_vm_id", "default.props".to_owned()),
        ("plugin_root_id", "props-root".to_owned()),
    ] {
        assert_eq!(prop(p), want, "{p}");
    }
}

#[test]
fn istio_documents_are_read_again_on_reload() {
    let up = upstream("reviews");
    let dir = scratch("mesh-istio-reload");
    let abort = "  pluginConfig: {abort: {http_status: 418, percentage: 100}}\n";
    let file = write(&dir, "plugins.yaml", &wasm_plugin("teapot", "fault-injection", abort));
    let m = start("--istio", &file, &up, &["--admin", "127.0.0.1:0"]);
    assert_eq!(get(&m.url("/"), &[]).status, 418);
    // Now aimed at another workload: after the reload nothing runs.
    let aimed = format!("  selector:\n    matchLabels: {{app: elsewhere}}\n{abort}");
    write(&dir, "plugins.yaml", &wasm_plugin("teapot", "fault-injection", &aimed));
    let admin = m.admin.as_deref().expect("admin address");
    let r = post(&format!("{admin}/reload"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&m.url("/"), &[]).status, 200);
    // A bad document is refused; the running configuration stays.
    write(&dir, "plugins.yaml", &wasm_plugin("teapot", "fault-injection", "  phase: SOMETIME\n"));
    let r = post(&format!("{admin}/reload"), &[], b"");
    assert_ne!(r.status, 200);
    assert!(r.text().contains("spec.phase"), "{}", r.text());
    assert_eq!(get(&m.url("/"), &[]).status, 200);
}

/// A MeshProxyPatch modification adding the Wasm filter `name` (`module`, `configuration` JSON).
fn http_filter(operation: &str, matcher: &str, name: &str, module: &str, configuration: &str) -> String {
    format!(
        r#"    - httpFilter:
        operation: {operation}
        match: {matcher}
        value: |
          name: envoy.filters.http.wasm
          typedConfig:
            '@type': type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
            config:
              name: {name}
              configuration:
                '@type': type.googleapis.com/google.protobuf.StringValue
                value: '{configuration}'
              vmConfig:
                vmId: {name}
                code: {{local: {{filename: {}}}}}
"#,
        wasm(module).display()
    )
}

#[test]
fn kuma_mesh_proxy_patch_adds_filters_in_its_operations_order() {
    let up = upstream("backend");
    let dir = scratch("mesh-kuma");
    let head = "apiVersion: kuma.io/v1alpha1\nkind: MeshProxyPatch\nmetadata:\n  name: wasm\n  namespace: kuma-system\nspec:\n  targetRef: {kind: Mesh}\n  default:\n    appendModifications:\n";
    let doc = [
        head,
        &http_filter(
            "AddBefore",
            "{name: envoy.filters.http.router, origin: inbound}",
            "rate-limit",
            "local-rate-limit",
            r#"{"rate": 3, "period": "60s", "burst": 3}"#,
        ),
        // First in the chain, before the limiter: aborted requests spend no tokens.
        &http_filter(
            "AddFirst",
            "{origin: inbound}",
            "fault",
            "fault-injection",
            r#"{"abort": {"http_status": 503, "percentage": 100}, "headers": [{"name": "x-fault", "present": true}]}"#,
        ),
        // Outbound traffic is not the inbound listener's.
        &http_filter(
            "AddFirst",
            "{origin: outbound}",
            "never",
            "fault-injection",
            r#"{"abort": {"http_status": 500}}"#,
        ),
    ]
    .concat();
    let m = start("--kuma", &write(&dir, "patch.yaml", &doc), &up, &[]);
    assert!(m.line.contains("filters [fault, rate-limit]"), "{}", m.line);
    assert_eq!(statuses(&m, 2, &[("x-fault", "on")]), [503, 503]);
    assert_eq!(statuses(&m, 5, &[]), [200, 200, 200, 429, 429]);
    assert_eq!(up.requests(), 3);
}

#[test]
fn bad_documents_stop_meshwork_naming_file_document_and_field() {
    let dir = scratch("mesh-refusals");
    let ok = wasm_plugin("ok", "local-rate-limit", RATE_LIMIT);
    let cases = [
        (
            "--istio",
            "phase.yaml",
            format!("{ok}{}", wasm_plugin("late", "local-rate-limit", "  phase: LATER\n")),
            "phase.yaml document 2 (WasmPlugin late): line 17 column 10: spec.phase: unknown variant `LATER`",
        ),
        (
            "--istio",
            "kind.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec: {}\n".to_owned(),
            "kind.yaml document 1 is a VirtualService (networking.istio.io/v1): --istio runs WasmPlugin",
        ),
        (
            "--istio",
            "net.yaml",
            format!("{ok}{}", wasm_plugin("tcp", "local-rate-limit", "  type: NETWORK\n")),
            "NETWORK (default.tcp) and HTTP",
        ),
        (
            "--kuma",
            "last.yaml",
            format!(
                "apiVersion: kuma.io/v1alpha1\nkind: MeshProxyPatch\nmetadata: {{name: late}}\nspec:\n  default:\n    appendModifications:\n{}",
                http_filter("AddLast", "{origin: inbound}", "x", "local-rate-limit", "{}")
            ),
            "last.yaml document 1 (MeshProxyPatch late): spec.default.appendModifications[0].httpFilter: AddLast",
        ),
    ];
    for (flag, name, text, want) in cases {
        let file = write(&dir, name, &text);
        let (code, _, err) = run(&["run", flag, file.to_str().unwrap(), "--upstream", "127.0.0.1:9", "--check"]);
        assert_ne!(code, 0, "{name}");
        assert!(err.contains(want), "{name}: {err}");
    }
    // The mesh flags belong to --istio and --kuma.
    let (code, _, err) = run(&["run", "--config", "x.yaml", "--upstream", "127.0.0.1:9"]);
    assert_ne!(code, 0);
    assert!(err.contains("--upstream"), "{err}");
    let (code, _, err) = run(&["run", "--istio", "x.yaml"]);
    assert_ne!(code, 0);
    assert!(err.contains("--upstream"), "{err}");
}
