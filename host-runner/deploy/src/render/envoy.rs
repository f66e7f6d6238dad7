//! Envoy: the `envoy.filters.http.wasm` entries (a fragment for an existing bootstrap), and a
//! whole static bootstrap around them that `meshwork run --envoy-config` also runs. Kuma's
//! MeshProxyPatch carries the same entries.

use serde_json::{Map, Value, json};

use super::{HostPort, RenderError, configuration_text, image_reference, url_endpoint};
use crate::model::{Document, Fail, FilterSpec, Module, Options};

pub(crate) const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
pub(crate) const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
pub(crate) const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
const UPSTREAM_TLS_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
/// Where image modules are expected: Envoy cannot pull OCI images itself.
const IMAGE_DIR: &str = "/etc/envoy/wasm";
/// How long Envoy waits for a remote module (HttpUri.timeout is required).
const FETCH_TIMEOUT: &str = "10s";

/// The cluster Envoy fetches a remote module through (`http_uri.cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModuleCluster {
    pub name: String,
    pub endpoint: HostPort,
    pub tls: bool,
}

impl ModuleCluster {
    fn for_url(url: &str) -> ModuleCluster {
        let (endpoint, tls) = url_endpoint(url).expect("module URLs are checked before rendering");
        let host: String = endpoint.host.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        ModuleCluster { name: format!("wasm_{host}_{}", endpoint.port), endpoint, tls }
    }

    /// The Envoy cluster. HTTPS gets TLS with the host as SNI; the module's sha256 (required
    /// for remote code) is what guarantees its content.
    pub fn value(&self) -> Value {
        let mut c = cluster(&self.name, &self.endpoint);
        if self.tls {
            c["transport_socket"] = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {"@type": UPSTREAM_TLS_TYPE, "sni": self.endpoint.host},
            });
        }
        c
    }
}

/// A STATIC cluster for an IP address, STRICT_DNS for a host name.
pub(crate) fn cluster(name: &str, endpoint: &HostPort) -> Value {
    json!({
        "name": name,
        "connect_timeout": "1s",
        "type": if endpoint.is_ip() { "STATIC" } else { "STRICT_DNS" },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(endpoint)}}]}],
        },
    })
}

fn socket_address(endpoint: &HostPort) -> Value {
    json!({"socket_address": {"address": endpoint.host, "port_value": endpoint.port}})
}

/// The `envoy.filters.http.wasm` entry for `f` (`typed_config_key` is `typed_config`, or
/// Kuma's `typedConfig`), the cluster its remote code is fetched through, and notes.
pub(crate) fn wasm_filter(
    f: &FilterSpec,
    mesh: &'static str,
    typed_config_key: &str,
    notes: &mut Vec<String>,
) -> Result<(Value, Option<ModuleCluster>), RenderError> {
    let mut module_cluster = None;
    let code = match &f.module {
        Module::Image { reference, .. } => {
            let filename = format!("{IMAGE_DIR}/{}.wasm", file_stem(&f.name));
            notes.push(format!(
                "filter {}: Envoy cannot pull OCI images; pull {} to {filename} on the proxy (`meshwork pull`, oras), or deploy the module with --file or --url",
                f.name,
                image_reference(reference)
            ));
            json!({"local": {"filename": filename}})
        }
        Module::File { path, .. } => json!({"local": {"filename": path}}),
        Module::Http { url, sha256 } => {
            let Some(sha256) = sha256 else {
                return Err(RenderError::Unsupported {
                    mesh,
                    filter: f.name.clone(),
                    reason: format!(
                        "Envoy fetches remote code only with its sha256 (RemoteDataSource.sha256 is required); give the module's sha256 for {url}"
                    ),
                });
            };
            let c = ModuleCluster::for_url(url);
            let code = json!({"remote": {
                "http_uri": {"uri": url, "cluster": c.name, "timeout": FETCH_TIMEOUT},
                "sha256": sha256,
            }});
            module_cluster = Some(c);
            code
        }
    };
    let mut vm = Map::new();
    if !f.vm_id.is_empty() {
        vm.insert("vm_id".into(), json!(f.vm_id));
    }
    vm.insert("runtime".into(), json!("envoy.wasm.runtime.v8"));
    vm.insert("code".into(), code);
    if !f.env.is_empty() {
        vm.insert("environment_variables".into(), json!({"key_values": f.env}));
    }
    let mut config = Map::new();
    config.insert("name".into(), json!(f.name));
    if !f.root_id.is_empty() {
        config.insert("root_id".into(), json!(f.root_id));
    }
    if let Some(text) = configuration_text(&f.configuration) {
        config.insert("configuration".into(), json!({"@type": STRING_VALUE, "value": text}));
    }
    config.insert("failure_policy".into(), json!(failure_policy(f.fail)));
    if f.allow_on_headers_stop_iteration {
        config.insert("allow_on_headers_stop_iteration".into(), json!(true));
    }
    config.insert("vm_config".into(), Value::Object(vm));
    let mut entry = Map::new();
    entry.insert("name".into(), json!("envoy.filters.http.wasm"));
    entry.insert(typed_config_key.into(), json!({"@type": WASM_TYPE, "config": config}));
    Ok((Value::Object(entry), module_cluster))
}

fn failure_policy(fail: Fail) -> &'static str {
    match fail {
        Fail::Open => "FAIL_OPEN",
        Fail::Closed => "FAIL_CLOSED",
        Fail::Reload => "FAIL_RELOAD",
    }
}

/// A file name from a plugin name.
fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
}

/// The entries for all filters and the module clusters they need, once each.
fn entries(
    filters: &[FilterSpec],
    mesh: &'static str,
    notes: &mut Vec<String>,
) -> Result<(Vec<Value>, Vec<ModuleCluster>), RenderError> {
    let mut list = Vec::new();
    let mut clusters: Vec<ModuleCluster> = Vec::new();
    for f in filters {
        let (entry, cluster) = wasm_filter(f, mesh, "typed_config", notes)?;
        list.push(entry);
        if let Some(c) = cluster
            && !clusters.contains(&c)
        {
            clusters.push(c);
        }
    }
    Ok((list, clusters))
}

/// `Mesh::Envoy`: the `http_filters` entries, to go before the router of an existing bootstrap.
pub(super) fn http_filters(filters: &[FilterSpec]) -> Result<Vec<Document>, RenderError> {
    let mut notes = Vec::new();
    let (list, clusters) = entries(filters, "Envoy", &mut notes)?;
    for c in &clusters {
        notes.push(format!(
            "remote modules are fetched through cluster {}: the bootstrap needs it ({} {}{}) (the envoy-bootstrap rendering has it)",
            c.name,
            if c.endpoint.is_ip() { "STATIC" } else { "STRICT_DNS" },
            c.endpoint.text(),
            if c.tls { ", TLS" } else { "" }
        ));
    }
    notes.push("put these entries in http_filters, in this order, before envoy.filters.http.router".into());
    Ok(vec![Document {
        kind: "HttpFilters".into(),
        name: "http-filters".into(),
        value: Value::Array(list),
        text: None,
        notes,
    }])
}

/// `Mesh::EnvoyBootstrap`: admin, one listener routing everything to `app`, the filters then
/// the router, and the clusters (`app`, the extra ones, the module hosts).
pub(super) fn bootstrap(filters: &[FilterSpec], options: &Options) -> Result<Vec<Document>, RenderError> {
    let mut notes = Vec::new();
    let listen = HostPort::parse(&options.listen, "listen")?;
    if !listen.is_ip() {
        return Err(RenderError::Invalid {
            field: "listen".into(),
            reason: format!("{:?}: a listener address must be an IP address", options.listen),
        });
    }
    let (mut list, module_clusters) = entries(filters, "an Envoy bootstrap", &mut notes)?;
    list.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}));
    let mut clusters = vec![("app".to_owned(), cluster("app", &HostPort::parse(&options.upstream, "upstream")?))];
    for (i, extra) in options.extra_clusters.iter().enumerate() {
        let endpoint = HostPort::parse(&extra.address, &format!("extra_clusters[{i}].address"))?;
        clusters.push((extra.name.clone(), cluster(&extra.name, &endpoint)));
    }
    clusters.extend(module_clusters.iter().map(|c| (c.name.clone(), c.value())));
    unique_clusters(clusters.iter().map(|(name, _)| name.as_str()))?;
    if filters.iter().any(|f| matches!(&f.module, Module::File { path, .. } if !path.starts_with('/'))) {
        notes.push(
            "relative module paths: `meshwork run --envoy-config` reads them relative to this file, Envoy relative to its working directory"
                .into(),
        );
    }
    let value = json!({
        "admin": {"address": socket_address(&HostPort { host: "127.0.0.1".into(), port: 9901 })},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": socket_address(&listen),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": HCM_TYPE,
                        "stat_prefix": "ingress_http",
                        "route_config": {
                            "name": "local_route",
                            "virtual_hosts": [{
                                "name": "app",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                            }],
                        },
                        "http_filters": list,
                    },
                }]}],
            }],
            "clusters": clusters.into_iter().map(|(_, c)| c).collect::<Vec<_>>(),
        },
    });
    Ok(vec![Document { kind: "Bootstrap".into(), name: "bootstrap".into(), value, text: None, notes }])
}

/// Envoy (and meshwork) refuse a cluster name defined twice.
pub(crate) fn unique_clusters<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), RenderError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(RenderError::Invalid {
                field: "extra_clusters".into(),
                reason: format!(
                    "cluster {name:?} is defined twice (`app` is the upstream's; module hosts get wasm_<host>_<port>)"
                ),
            });
        }
    }
    Ok(())
}
