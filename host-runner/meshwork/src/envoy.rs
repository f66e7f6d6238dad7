//! `meshwork run --envoy-config envoy.yaml`: runs an Envoy static bootstrap as users write it
//! for Wasm filters.
//!
//! Understood: listeners (a list, or the single mapping Envoy's YAML loader also takes) with an
//! `http_connection_manager` (routes by prefix or path to clusters, `cluster_header`,
//! `direct_response`, route timeouts; `envoy.filters.http.wasm` filters, directly or wrapped in
//! a `TypedStruct`, then the router) or network filters (`envoy.filters.network.wasm` in front
//! of `envoy.filters.network.tcp_proxy`); TLS on listeners (`DownstreamTlsContext`, one filter
//! chain per server name) and clusters (`UpstreamTlsContext`); the PROXY protocol listener
//! filter; STATIC, STRICT_DNS and LOGICAL_DNS clusters, HTTP/2 to them; `envoy.bootstrap.wasm`
//! services; admin; node. Every other field is reported by its path. Fields that only affect
//! observability (access logs, stat prefixes) are warnings; anything that would change how
//! traffic flows is an error unless `--allow-unsupported` turns it into a warning. Nothing is
//! ignored silently.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use meshwork_wasm_host::{NodeInfo, PluginConfig};
use serde_json::{Map, Value};

use crate::config::{
    ClusterConfig, EndpointConfig, FilterConfig, HeaderMatch, HeaderMods, HttpListener, ListenerConfig, ListenerKind,
    ListenerSpec, ModuleSource, PathMatch, PathRewrite, ProxyConfig, Redirect, RetryBudget, RouteConfig, RouteMatch,
    RouteTarget, TcpListener, ValueMatch, parse_addr, parse_cidr, parse_duration,
};
use crate::tls::client::Trust;
use crate::tls::{CertificateSpec, ClientTlsSpec, ServerTlsSpec, TlsVersion};

const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const NETWORK_WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
const TCP_PROXY_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const WASM_SERVICE_TYPE: &str = "type.googleapis.com/envoy.extensions.wasm.v3.WasmService";
const DOWNSTREAM_TLS_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TLS_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// `TypedStruct` wrappers carry a message as a Struct with its type URL beside it.
const TYPED_STRUCTS: [&str; 2] =
    ["type.googleapis.com/udpa.type.v1.TypedStruct", "type.googleapis.com/xds.type.v3.TypedStruct"];
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
const BYTES_VALUE: &str = "type.googleapis.com/google.protobuf.BytesValue";

/// Fields that only change what Envoy reports, not what it does to traffic.
const OBSERVABILITY: &[&str] =
    &["access_log", "access_log_path", "stat_prefix", "tracing", "stats_config", "layered_runtime"];

struct Walker {
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Walker {
    /// Reads `value` at `path` as an object and reports every key not in `known`.
    fn object<'a>(&mut self, value: &'a Value, path: &str, known: &[&str]) -> anyhow::Result<&'a Map<String, Value>> {
        let map = value.as_object().with_context(|| format!("{path} must be an object"))?;
        for key in map.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let field = format!("{path}.{key}");
            if OBSERVABILITY.contains(&key.as_str()) {
                self.warnings.push(format!("{field}: ignored (observability only; meshwork exposes /stats instead)"));
            } else {
                self.errors.push(format!("{field}: not supported by meshwork"));
            }
        }
        Ok(map)
    }

    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }
}

fn string<'a>(map: &'a Map<String, Value>, key: &str, path: &str) -> anyhow::Result<&'a str> {
    map.get(key).and_then(Value::as_str).with_context(|| format!("{path}.{key} must be a string"))
}

/// `{socket_address: {address, port_value}}` as an endpoint: an IP address or a host name.
fn endpoint_address(w: &mut Walker, value: &Value, path: &str) -> anyhow::Result<EndpointConfig> {
    let address = w.object(value, path, &["socket_address"])?;
    let sa_path = format!("{path}.socket_address");
    let sa = w.object(
        address.get("socket_address").with_context(|| format!("{sa_path} is missing"))?,
        &sa_path,
        &["address", "port_value", "protocol", "resolver_name", "ipv4_compat"],
    )?;
    if let Some(p) = sa.get("protocol").and_then(Value::as_str)
        && p != "TCP"
    {
        w.errors.push(format!("{sa_path}.protocol: {p} is not supported (TCP only)"));
    }
    let host = string(sa, "address", &sa_path)?;
    let port = sa
        .get("port_value")
        .and_then(|p| p.as_u64().or_else(|| p.as_str().and_then(|s| s.parse().ok())))
        .with_context(|| format!("{sa_path}.port_value must be a number"))?;
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
    EndpointConfig::parse(&format!("{host}:{port}"), &sa_path)
}

/// A socket address that must be an IP address (listeners, admin).
fn socket_address(w: &mut Walker, value: &Value, path: &str) -> anyhow::Result<std::net::SocketAddr> {
    match endpoint_address(w, value, path)? {
        EndpointConfig::Ip(addr) => Ok(addr),
        EndpointConfig::Name { host, port } => parse_addr(&format!("{host}:{port}"), path)
            .with_context(|| format!("{path}: a listening address must be an IP address")),
    }
}

fn duration(value: Option<&Value>, path: &str) -> anyhow::Result<Option<Duration>> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => parse_duration(s).map(Some).with_context(|| path.to_string()),
        Some(other) => bail!("{path} must be a duration string like \"0.25s\", not {other}"),
    }
}

/// Loads and translates `path`; returns the errors (and, with `allow_unsupported`, prints them
/// as warnings).
pub fn load(path: &Path, allow_unsupported: bool) -> anyhow::Result<ProxyConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read Envoy config {}", path.display()))?;
    let value: Value = meshwork_yaml::from_str(&text)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("Envoy config {} is not valid YAML/JSON", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut w = Walker { errors: Vec::new(), warnings: Vec::new() };
    let config = translate(&mut w, &value, base).with_context(|| format!("Envoy config {}", path.display()))?;
    for warning in &w.warnings {
        eprintln!("warning: {}: {warning}", path.display());
    }
    if !w.errors.is_empty() {
        if allow_unsupported {
            for e in &w.errors {
                eprintln!("warning: {}: {e} (ignored because of --allow-unsupported)", path.display());
            }
        } else {
            bail!(
                "Envoy config {} uses what meshwork does not support:\n  {}\n(remove these fields, or pass --allow-unsupported to run without them)",
                path.display(),
                w.errors.join("\n  ")
            );
        }
    }
    config.validate()?;
    Ok(config)
}

fn translate(w: &mut Walker, root: &Value, base: &Path) -> anyhow::Result<ProxyConfig> {
    let top = w.object(root, "", &["static_resources", "admin", "node", "bootstrap_extensions", "layered_runtime"])?;
    let node = match top.get("node") {
        None => NodeInfo { id: "meshwork".into(), ..NodeInfo::default() },
        Some(n) => {
            let n = w.object(n, "node", &["id", "cluster", "metadata", "locality"])?;
            let metadata = n
                .get("metadata")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                        .collect()
                })
                .unwrap_or_else(BTreeMap::new);
            NodeInfo {
                id: n.get("id").and_then(Value::as_str).unwrap_or("meshwork").into(),
                cluster: n.get("cluster").and_then(Value::as_str).unwrap_or_default().into(),
                metadata,
                metadata_maps: BTreeMap::new(),
            }
        }
    };
    let admin = match top.get("admin") {
        None => None,
        Some(a) => {
            let a = w.object(a, "admin", &["address"])?;
            Some(socket_address(w, a.get("address").context("admin.address is missing")?, "admin.address")?)
        }
    };
    let services = match top.get("bootstrap_extensions") {
        None => Vec::new(),
        Some(list) => bootstrap_extensions(w, list, "bootstrap_extensions", base)?,
    };
    let empty = Value::Object(Map::new());
    let sr = w.object(top.get("static_resources").unwrap_or(&empty), "static_resources", &["listeners", "clusters"])?;
    let mut listeners = Vec::new();
    for (i, l) in list_or_one(sr.get("listeners")).into_iter().enumerate() {
        listeners.push(listener(w, l, &format!("static_resources.listeners[{i}]"), i, base)?);
    }
    let clusters = list_or_one(sr.get("clusters"))
        .into_iter()
        .enumerate()
        .map(|(i, c)| cluster(w, c, &format!("static_resources.clusters[{i}]"), base))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ProxyConfig {
        listeners,
        admin,
        admin_allow_non_loopback: false,
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        max_connections: None,
        clusters,
        services,
        resolve: BTreeMap::new(),
        node,
        cache_dir: None,
        federation: None,
    })
}

/// A repeated field: a list, or the single mapping Envoy's YAML loader also accepts for one.
fn list_or_one(value: Option<&Value>) -> Vec<&Value> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
    }
}

/// A message as `typed_config` gives it: directly with `@type`, or inside a `TypedStruct`.
/// Returns the type URL and the message.
fn typed<'a>(w: &mut Walker, value: &'a Value, path: &str) -> anyhow::Result<(String, &'a Value)> {
    let kind = value.get("@type").and_then(Value::as_str).with_context(|| format!("{path}.@type is missing"))?;
    if TYPED_STRUCTS.contains(&kind) {
        let t = w.object(value, path, &["@type", "type_url", "value"])?;
        let inner = string(t, "type_url", path)?.to_owned();
        let empty = &Value::Null;
        return Ok((inner, t.get("value").unwrap_or(empty)));
    }
    Ok((kind.to_owned(), value))
}

/// The fields of a message besides its `@type`.
fn message(w: &mut Walker, value: &Value, path: &str, known: &[&str]) -> anyhow::Result<Map<String, Value>> {
    if value.is_null() {
        return Ok(Map::new());
    }
    let mut with_type: Vec<&str> = known.to_vec();
    with_type.push("@type");
    let mut map = w.object(value, path, &with_type)?.clone();
    map.remove("@type");
    Ok(map)
}

/// `envoy.bootstrap.wasm` extensions: Wasm services (root context only).
fn bootstrap_extensions(w: &mut Walker, list: &Value, path: &str, base: &Path) -> anyhow::Result<Vec<FilterConfig>> {
    let mut services = Vec::new();
    for (i, ext) in list_or_one(Some(list)).into_iter().enumerate() {
        let epath = format!("{path}[{i}]");
        let e = w.object(ext, &epath, &["name", "typed_config"])?;
        let tpath = format!("{epath}.typed_config");
        let (kind, msg) = typed(w, e.get("typed_config").with_context(|| format!("{tpath} is missing"))?, &tpath)?;
        if kind != WASM_SERVICE_TYPE {
            w.errors.push(format!("{epath}: {kind} is not supported (only {WASM_SERVICE_TYPE})"));
            continue;
        }
        let service = message(w, msg, &tpath, &["config", "singleton", "stat_prefix"])?;
        if service.get("singleton").and_then(Value::as_bool) == Some(false) {
            w.warn(format!("{tpath}.singleton: false; meshwork runs a Wasm service once per process, as a singleton"));
        }
        let name = e.get("name").and_then(Value::as_str).unwrap_or("wasm_service");
        let config = service.get("config").with_context(|| format!("{tpath}.config is missing"))?;
        services.push(wasm_filter(w, config, &format!("{tpath}.config"), name, base)?);
    }
    Ok(services)
}

fn listener(w: &mut Walker, value: &Value, lpath: &str, index: usize, base: &Path) -> anyhow::Result<ListenerSpec> {
    let l = w.object(
        value,
        lpath,
        &[
            "name",
            "address",
            "filter_chains",
            "per_connection_buffer_limit_bytes",
            "listener_filters",
            "traffic_direction",
        ],
    )?;
    let name = l.get("name").and_then(Value::as_str).map_or_else(|| format!("listener-{index}"), str::to_owned);
    let mut settings = ListenerConfig::default();
    if let Some(limit) = l.get("per_connection_buffer_limit_bytes") {
        settings.buffer_limit = uint(limit, &format!("{lpath}.per_connection_buffer_limit_bytes"))? as usize;
    }
    let address = socket_address(
        w,
        l.get("address").with_context(|| format!("{lpath}.address is missing"))?,
        &format!("{lpath}.address"),
    )?;
    let mut proxy_protocol = false;
    for (i, f) in list_or_one(l.get("listener_filters")).into_iter().enumerate() {
        let fpath = format!("{lpath}.listener_filters[{i}]");
        let f = w.object(f, &fpath, &["name", "typed_config"])?;
        match string(f, "name", &fpath)? {
            "envoy.filters.listener.proxy_protocol" => proxy_protocol = true,
            // SNI is read from the ClientHello in any case.
            "envoy.filters.listener.tls_inspector" => {}
            other => w.errors.push(format!("{fpath}: {other} is not supported (proxy_protocol, tls_inspector)")),
        }
    }
    // Several filter chains are understood when they differ only in the server names they
    // match and the certificate they serve: one listener with SNI certificate selection.
    let chains = list_or_one(l.get("filter_chains"));
    if chains.is_empty() {
        bail!("{lpath}.filter_chains is missing");
    }
    let mut certificates = Vec::new();
    let mut tls: Option<ServerTlsSpec> = None;
    let mut first_filters: Option<&Value> = None;
    for (i, chain) in chains.iter().enumerate() {
        let cpath = format!("{lpath}.filter_chains[{i}]");
        let c = w.object(chain, &cpath, &["filters", "name", "filter_chain_match", "transport_socket"])?;
        let server_names: Vec<String> = match c.get("filter_chain_match") {
            None => Vec::new(),
            Some(m) => {
                let m = w.object(m, &format!("{cpath}.filter_chain_match"), &["server_names", "transport_protocol"])?;
                list_or_one(m.get("server_names")).into_iter().filter_map(Value::as_str).map(str::to_owned).collect()
            }
        };
        let filters = c.get("filters").with_context(|| format!("{cpath}.filters is missing"))?;
        match first_filters {
            None => first_filters = Some(filters),
            Some(first) if first == filters => {}
            Some(_) => bail!(
                "{cpath}: filter chains that differ in more than their server names and certificates are not supported"
            ),
        }
        match c.get("transport_socket") {
            None if chains.len() > 1 => {
                bail!("{cpath}: several filter chains are supported only with TLS (one per server name)")
            }
            None => {}
            Some(ts) => {
                let spec = downstream_tls(w, ts, &format!("{cpath}.transport_socket"), base)?;
                for mut cert in spec.certificates.clone() {
                    cert.server_names.clone_from(&server_names);
                    certificates.push(cert);
                }
                tls.get_or_insert(spec);
            }
        }
    }
    if let Some(t) = tls.as_mut() {
        t.certificates = certificates;
    }
    let cpath = format!("{lpath}.filter_chains[0]");
    let network_filters = list_or_one(first_filters);
    let is_http = network_filters
        .first()
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .is_some_and(|n| n == "envoy.filters.network.http_connection_manager");
    let kind = if is_http {
        if network_filters.len() != 1 {
            bail!("{cpath}.filters: the http_connection_manager must be the only network filter");
        }
        let fpath = format!("{cpath}.filters[0]");
        let hcm_entry = w.object(network_filters[0], &fpath, &["name", "typed_config"])?;
        let hpath = format!("{fpath}.typed_config");
        let (kind, hcm) =
            typed(w, hcm_entry.get("typed_config").with_context(|| format!("{hpath} is missing"))?, &hpath)?;
        if kind != HCM_TYPE {
            bail!("{hpath}.@type must be {HCM_TYPE}");
        }
        ListenerKind::Http(connection_manager(w, hcm, &hpath, &mut settings, base)?)
    } else {
        ListenerKind::Tcp(tcp_filters(w, &network_filters, &format!("{cpath}.filters"), base)?)
    };
    if let (Some(t), ListenerKind::Tcp(_)) = (tls.as_mut(), &kind)
        && t.alpn == ["h2", "http/1.1"]
    {
        t.alpn.clear();
    }
    Ok(ListenerSpec { name, address, settings, tls, proxy_protocol, kind })
}

/// `envoy.filters.network.wasm` filters, then `envoy.filters.network.tcp_proxy`.
fn tcp_filters(w: &mut Walker, list: &[&Value], path: &str, base: &Path) -> anyhow::Result<TcpListener> {
    let mut filters = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let fpath = format!("{path}[{i}]");
        let entry = w.object(f, &fpath, &["name", "typed_config"])?;
        let name = string(entry, "name", &fpath)?;
        let tpath = format!("{fpath}.typed_config");
        let (kind, msg) = typed(w, entry.get("typed_config").with_context(|| format!("{tpath} is missing"))?, &tpath)?;
        match kind.as_str() {
            NETWORK_WASM_TYPE => {
                let m = message(w, msg, &tpath, &["config"])?;
                let config = m.get("config").with_context(|| format!("{tpath}.config is missing"))?;
                filters.push(wasm_filter(w, config, &format!("{tpath}.config"), name, base)?);
            }
            TCP_PROXY_TYPE => {
                if i + 1 != list.len() {
                    bail!("{fpath}: the tcp_proxy must be the last network filter");
                }
                let m = message(w, msg, &tpath, &["stat_prefix", "cluster", "idle_timeout"])?;
                let cluster = m
                    .get("cluster")
                    .and_then(Value::as_str)
                    .with_context(|| format!("{tpath}.cluster must name a cluster"))?
                    .to_owned();
                if m.contains_key("idle_timeout") {
                    w.warn(format!("{tpath}.idle_timeout: meshwork uses the listener's idle timeout (1 h)"));
                }
                return Ok(TcpListener { cluster, filters });
            }
            other => bail!("{fpath} ({name}): {other} is not supported (envoy.filters.network.wasm, then tcp_proxy)"),
        }
    }
    bail!("{path}: a listener without an http_connection_manager must end with envoy.filters.network.tcp_proxy")
}

/// A file path from a `DataSource` (`{filename: …}`; inline data is not supported).
fn data_source(w: &mut Walker, value: Option<&Value>, path: &str, base: &Path) -> anyhow::Result<std::path::PathBuf> {
    let value = value.with_context(|| format!("{path} is missing"))?;
    let d = w.object(value, path, &["filename"])?;
    Ok(crate::tls::files::resolve(base, Path::new(string(d, "filename", path)?)))
}

fn tls_version(value: Option<&Value>, path: &str) -> anyhow::Result<Option<TlsVersion>> {
    Ok(match value.and_then(Value::as_str) {
        None | Some("TLS_AUTO") => None,
        Some("TLSv1_2") => Some(TlsVersion::V1_2),
        Some("TLSv1_3") => Some(TlsVersion::V1_3),
        Some(other) => bail!("{path}: {other} is not supported (TLSv1_2, TLSv1_3)"),
    })
}

/// `CommonTlsContext`: certificates, the validation context, ALPN and versions.
struct CommonTls {
    certificates: Vec<CertificateSpec>,
    ca: Option<std::path::PathBuf>,
    sans: Vec<String>,
    alpn: Option<Vec<String>>,
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
}

fn common_tls(w: &mut Walker, value: Option<&Value>, path: &str, base: &Path) -> anyhow::Result<CommonTls> {
    let empty = Value::Object(Map::new());
    let c = w.object(
        value.unwrap_or(&empty),
        path,
        &["tls_certificates", "validation_context", "alpn_protocols", "tls_params"],
    )?;
    let mut certificates = Vec::new();
    for (i, cert) in list_or_one(c.get("tls_certificates")).into_iter().enumerate() {
        let cpath = format!("{path}.tls_certificates[{i}]");
        let t = w.object(cert, &cpath, &["certificate_chain", "private_key"])?;
        certificates.push(CertificateSpec {
            cert: data_source(w, t.get("certificate_chain"), &format!("{cpath}.certificate_chain"), base)?,
            key: data_source(w, t.get("private_key"), &format!("{cpath}.private_key"), base)?,
            server_names: Vec::new(),
        });
    }
    let (mut ca, mut sans) = (None, Vec::new());
    if let Some(v) = c.get("validation_context") {
        let vpath = format!("{path}.validation_context");
        let v = w.object(v, &vpath, &["trusted_ca", "match_typed_subject_alt_names", "match_subject_alt_names"])?;
        if v.contains_key("trusted_ca") {
            ca = Some(data_source(w, v.get("trusted_ca"), &format!("{vpath}.trusted_ca"), base)?);
        }
        for (key, typed) in [("match_typed_subject_alt_names", true), ("match_subject_alt_names", false)] {
            for (i, m) in list_or_one(v.get(key)).into_iter().enumerate() {
                let mpath = format!("{vpath}.{key}[{i}]");
                let matcher = if typed {
                    let m = w.object(m, &mpath, &["san_type", "matcher"])?;
                    m.get("matcher").with_context(|| format!("{mpath}.matcher is missing"))?
                } else {
                    m
                };
                let matcher = w.object(matcher, &mpath, &["exact"])?;
                sans.push(string(matcher, "exact", &mpath)?.to_owned());
            }
        }
    }
    let alpn = c
        .get("alpn_protocols")
        .map(|a| list_or_one(Some(a)).into_iter().filter_map(Value::as_str).map(str::to_owned).collect());
    let (mut min, mut max) = (None, None);
    if let Some(p) = c.get("tls_params") {
        let ppath = format!("{path}.tls_params");
        let p = w.object(p, &ppath, &["tls_minimum_protocol_version", "tls_maximum_protocol_version"])?;
        min = tls_version(p.get("tls_minimum_protocol_version"), &ppath)?;
        max = tls_version(p.get("tls_maximum_protocol_version"), &ppath)?;
    }
    Ok(CommonTls { certificates, ca, sans, alpn, min, max })
}

fn tls_socket<'a>(w: &mut Walker, value: &'a Value, path: &str, want: &str) -> anyhow::Result<&'a Value> {
    let ts = w.object(value, path, &["name", "typed_config"])?;
    let tpath = format!("{path}.typed_config");
    let (kind, msg) = typed(w, ts.get("typed_config").with_context(|| format!("{tpath} is missing"))?, &tpath)?;
    if kind != want {
        bail!("{tpath}: {kind} is not supported (only {want})");
    }
    Ok(msg)
}

/// A listener's `DownstreamTlsContext`.
fn downstream_tls(w: &mut Walker, value: &Value, path: &str, base: &Path) -> anyhow::Result<ServerTlsSpec> {
    let msg = tls_socket(w, value, path, DOWNSTREAM_TLS_TYPE)?;
    let tpath = format!("{path}.typed_config");
    let d = message(w, msg, &tpath, &["common_tls_context", "require_client_certificate"])?;
    let require = match d.get("require_client_certificate") {
        Some(Value::Object(o)) => o.get("value").and_then(Value::as_bool).unwrap_or(false),
        Some(v) => v.as_bool().unwrap_or(false),
        None => false,
    };
    let common = common_tls(w, d.get("common_tls_context"), &format!("{tpath}.common_tls_context"), base)?;
    if common.certificates.is_empty() {
        bail!("{tpath}.common_tls_context.tls_certificates: a listener needs a certificate");
    }
    if !common.sans.is_empty() {
        w.errors.push(format!(
            "{tpath}.common_tls_context.validation_context: matching client SANs is not supported (filters see them as connection.uri_san_peer_certificate)"
        ));
    }
    if require && common.ca.is_none() {
        bail!("{tpath}.require_client_certificate needs a validation_context.trusted_ca");
    }
    Ok(ServerTlsSpec {
        certificates: common.certificates,
        client_ca: common.ca,
        require_client_certificate: require,
        alpn: common.alpn.unwrap_or_else(|| vec!["h2".into(), "http/1.1".into()]),
        min_version: common.min,
        max_version: common.max,
    })
}

/// A cluster's `UpstreamTlsContext`. Without a validation context Envoy accepts any server
/// certificate; so does meshwork, with a warning.
fn upstream_tls(w: &mut Walker, value: &Value, path: &str, base: &Path) -> anyhow::Result<ClientTlsSpec> {
    let msg = tls_socket(w, value, path, UPSTREAM_TLS_TYPE)?;
    let tpath = format!("{path}.typed_config");
    let u = message(w, msg, &tpath, &["common_tls_context", "sni"])?;
    let common = common_tls(w, u.get("common_tls_context"), &format!("{tpath}.common_tls_context"), base)?;
    let trust = match &common.ca {
        Some(ca) => Trust::Ca(ca.clone()),
        None => {
            w.warn(format!(
                "{tpath}: no validation_context.trusted_ca, so (as in Envoy) any server certificate is accepted"
            ));
            Trust::Any
        }
    };
    if common.certificates.len() > 1 {
        bail!("{tpath}.common_tls_context.tls_certificates: a cluster presents one client certificate");
    }
    let client = common.certificates.into_iter().next();
    Ok(ClientTlsSpec {
        trust,
        sni: u.get("sni").and_then(Value::as_str).map(str::to_owned),
        verify_san: common.sans,
        cert: client.as_ref().map(|c| c.cert.clone()),
        key: client.map(|c| c.key),
        alpn: common.alpn.unwrap_or_default(),
        min_version: common.min,
        max_version: common.max,
    })
}

/// A protobuf integer, which proto3 JSON may also write as a string; wrappers (`{value: N}`)
/// unwrapped.
fn uint(value: &Value, path: &str) -> anyhow::Result<u64> {
    let value = value.get("value").unwrap_or(value);
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .with_context(|| format!("{path} must be a non-negative integer"))
}

/// An `http_connection_manager`: its timeouts, limits and trust settings (into `settings`),
/// routes and HTTP filters.
fn connection_manager(
    w: &mut Walker,
    value: &Value,
    path: &str,
    settings: &mut ListenerConfig,
    base: &Path,
) -> anyhow::Result<HttpListener> {
    let hcm = message(
        w,
        value,
        path,
        &[
            "stat_prefix",
            "codec_type",
            "route_config",
            "http_filters",
            "request_headers_timeout",
            "stream_idle_timeout",
            "drain_timeout",
            "common_http_protocol_options",
            "use_remote_address",
            "xff_num_trusted_hops",
            "internal_address_config",
            "generate_request_id",
        ],
    )?;
    if let Some(codec) = hcm.get("codec_type").and_then(Value::as_str)
        && !["AUTO", "HTTP1", "HTTP2"].contains(&codec)
    {
        w.errors.push(format!("{path}.codec_type: {codec} is not supported (AUTO, HTTP1 or HTTP2)"));
    }
    // Envoy: absent keeps the default, "0s" disables.
    let timeout = |key: &str, current: Option<Duration>| -> anyhow::Result<Option<Duration>> {
        Ok(match duration(hcm.get(key), &format!("{path}.{key}"))? {
            None => current,
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
        })
    };
    settings.request_headers_timeout = timeout("request_headers_timeout", settings.request_headers_timeout)?;
    settings.stream_idle_timeout = timeout("stream_idle_timeout", settings.stream_idle_timeout)?;
    if let Some(d) = duration(hcm.get("drain_timeout"), &format!("{path}.drain_timeout"))? {
        settings.drain_timeout = d;
    }
    if let Some(common) = hcm.get("common_http_protocol_options") {
        let cpath = format!("{path}.common_http_protocol_options");
        let c = w.object(
            common,
            &cpath,
            &[
                "idle_timeout",
                "max_requests_per_connection",
                "max_connection_duration",
                "headers_with_underscores_action",
            ],
        )?;
        if let Some(d) = duration(c.get("idle_timeout"), &format!("{cpath}.idle_timeout"))? {
            settings.idle_timeout = Some(d).filter(|d| !d.is_zero());
        }
        if let Some(d) = duration(c.get("max_connection_duration"), &format!("{cpath}.max_connection_duration"))? {
            settings.max_connection_duration = Some(d).filter(|d| !d.is_zero());
        }
        if let Some(n) = c.get("max_requests_per_connection") {
            let n = uint(n, &format!("{cpath}.max_requests_per_connection"))?;
            settings.max_requests_per_connection = (n > 0).then_some(n);
        }
        if let Some(action) = c.get("headers_with_underscores_action").and_then(Value::as_str)
            && action != "ALLOW"
        {
            w.errors.push(format!("{cpath}.headers_with_underscores_action: {action} is not supported (ALLOW)"));
        }
    }
    // Envoy's default is false: the client address is the last x-forwarded-for entry and
    // nothing is appended. meshwork judges trust by the peer either way.
    settings.use_remote_address = match hcm.get("use_remote_address") {
        Some(Value::Object(o)) => o.get("value").and_then(Value::as_bool).unwrap_or(false),
        Some(v) => v.as_bool().unwrap_or(false),
        None => false,
    };
    if let Some(n) = hcm.get("xff_num_trusted_hops") {
        settings.xff_trusted_hops =
            u32::try_from(uint(n, &format!("{path}.xff_num_trusted_hops"))?).unwrap_or(u32::MAX);
    }
    if let Some(internal) = hcm.get("internal_address_config") {
        let ipath = format!("{path}.internal_address_config");
        let i = w.object(internal, &ipath, &["unix_sockets", "cidr_ranges"])?;
        for (n, range) in i.get("cidr_ranges").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let rpath = format!("{ipath}.cidr_ranges[{n}]");
            let r = w.object(range, &rpath, &["address_prefix", "prefix_len"])?;
            let prefix = string(r, "address_prefix", &rpath)?;
            let len = match r.get("prefix_len") {
                Some(l) => uint(l, &format!("{rpath}.prefix_len"))?,
                None => {
                    if prefix.contains(':') {
                        128
                    } else {
                        32
                    }
                }
            };
            settings.trusted_clients.push(parse_cidr(&format!("{prefix}/{len}")).with_context(|| rpath.clone())?);
        }
    }
    let routes = route_config(
        w,
        hcm.get("route_config").with_context(|| format!("{path}.route_config is missing"))?,
        &format!("{path}.route_config"),
    )?;
    let filters = http_filters(w, &list_or_one(hcm.get("http_filters")), &format!("{path}.http_filters"), base)?;
    Ok(HttpListener { routes, first_match: true, filters, filter_buffer_limit: None })
}

fn route_config(w: &mut Walker, value: &Value, path: &str) -> anyhow::Result<Vec<RouteConfig>> {
    let rc = w.object(value, path, &["name", "virtual_hosts"])?;
    let hosts = list_or_one(rc.get("virtual_hosts"));
    if hosts.len() != 1 {
        bail!("{path}.virtual_hosts: meshwork supports exactly one virtual host (found {})", hosts.len());
    }
    let vpath = format!("{path}.virtual_hosts[0]");
    let vh = w.object(hosts[0], &vpath, &["name", "domains", "routes"])?;
    if list_or_one(vh.get("domains")).iter().any(|d| d.as_str() != Some("*")) {
        w.errors.push(format!("{vpath}.domains: only \"*\" is supported (meshwork does not match on host)"));
    }
    let mut routes = Vec::new();
    for (i, r) in list_or_one(vh.get("routes")).into_iter().enumerate() {
        let rpath = format!("{vpath}.routes[{i}]");
        let route = w.object(
            r,
            &rpath,
            &[
                "name",
                "match",
                "route",
                "direct_response",
                "redirect",
                "request_headers_to_add",
                "request_headers_to_remove",
                "response_headers_to_add",
                "response_headers_to_remove",
            ],
        )?;
        let name = route.get("name").and_then(Value::as_str).map_or_else(|| format!("route-{i}"), str::to_owned);
        let matcher = route_match(
            w,
            route.get("match").with_context(|| format!("{rpath}.match is missing"))?,
            &format!("{rpath}.match"),
        )?;
        let mut config = RouteConfig::new(name, PathMatch::default(), RouteTarget::Cluster(String::new()));
        config.matcher = matcher;
        config.request_headers = header_mods(
            route.get("request_headers_to_add"),
            route.get("request_headers_to_remove"),
            &format!("{rpath}.request_headers_to_add"),
        )?;
        config.response_headers = header_mods(
            route.get("response_headers_to_add"),
            route.get("response_headers_to_remove"),
            &format!("{rpath}.response_headers_to_add"),
        )?;
        match (route.get("direct_response"), route.get("redirect"), route.get("route")) {
            (Some(direct), None, None) => {
                let dpath = format!("{rpath}.direct_response");
                let d = w.object(direct, &dpath, &["status", "body"])?;
                let status = u16::try_from(uint(
                    d.get("status").with_context(|| format!("{dpath}.status is missing"))?,
                    &dpath,
                )?)
                .with_context(|| format!("{dpath}.status"))?;
                let body = match d.get("body") {
                    None => Bytes::new(),
                    Some(b) => {
                        let b = w.object(b, &format!("{dpath}.body"), &["inline_string", "inline_bytes"])?;
                        match (
                            b.get("inline_string").and_then(Value::as_str),
                            b.get("inline_bytes").and_then(Value::as_str),
                        ) {
                            (Some(text), _) => Bytes::from(text.to_owned()),
                            (None, Some(b64)) => Bytes::from(
                                base64::engine::general_purpose::STANDARD
                                    .decode(b64)
                                    .with_context(|| format!("{dpath}.body.inline_bytes is not base64"))?,
                            ),
                            _ => Bytes::new(),
                        }
                    }
                };
                config.target = RouteTarget::Direct { status, body };
                config.timeout = None;
            }
            (None, Some(redirect), None) => {
                config.target = RouteTarget::Redirect(redirect_action(w, redirect, &format!("{rpath}.redirect"))?);
                config.timeout = None;
            }
            (None, None, Some(action)) => {
                let apath = format!("{rpath}.route");
                let action = w.object(
                    action,
                    &apath,
                    &["cluster", "cluster_header", "weighted_clusters", "timeout", "prefix_rewrite", "regex_rewrite"],
                )?;
                config.target =
                    match (action.get("cluster"), action.get("cluster_header"), action.get("weighted_clusters")) {
                        (Some(_), None, None) => RouteTarget::Cluster(string(action, "cluster", &apath)?.to_owned()),
                        (None, Some(_), None) => {
                            RouteTarget::ClusterHeader(string(action, "cluster_header", &apath)?.to_ascii_lowercase())
                        }
                        (None, None, Some(weighted)) => {
                            let wpath = format!("{apath}.weighted_clusters");
                            let wc = w.object(weighted, &wpath, &["clusters", "total_weight"])?;
                            let mut clusters = Vec::new();
                            for (j, c) in list_or_one(wc.get("clusters")).into_iter().enumerate() {
                                let cpath = format!("{wpath}.clusters[{j}]");
                                let c = w.object(c, &cpath, &["name", "weight"])?;
                                let weight = match c.get("weight") {
                                    Some(v) => u32::try_from(uint(v, &format!("{cpath}.weight"))?)
                                        .with_context(|| format!("{cpath}.weight"))?,
                                    None => 0,
                                };
                                clusters.push((string(c, "name", &cpath)?.to_owned(), weight));
                            }
                            if clusters.iter().all(|(_, weight)| *weight == 0) {
                                bail!("{wpath}.clusters: at least one cluster needs a weight above 0");
                            }
                            RouteTarget::Weighted(clusters)
                        }
                        _ => bail!("{apath} needs exactly one of cluster, cluster_header or weighted_clusters"),
                    };
                if let Some(p) = action.get("prefix_rewrite") {
                    let p = p.as_str().with_context(|| format!("{apath}.prefix_rewrite must be a string"))?;
                    config.rewrite = Some(PathRewrite::Prefix(p.to_owned()));
                }
                if let Some(r) = action.get("regex_rewrite") {
                    let rpath = format!("{apath}.regex_rewrite");
                    let r = w.object(r, &rpath, &["pattern", "substitution"])?;
                    let pattern =
                        regex_of(r.get("pattern").with_context(|| format!("{rpath}.pattern is missing"))?, &rpath)?;
                    let pattern = regex::Regex::new(&pattern).with_context(|| format!("{rpath}.pattern"))?;
                    config.rewrite = Some(PathRewrite::regex_re2(pattern, string(r, "substitution", &rpath)?));
                }
                // Envoy's default route timeout is 15s; "0s" disables it.
                config.timeout = match duration(action.get("timeout"), &format!("{apath}.timeout"))? {
                    None => Some(Duration::from_secs(15)),
                    Some(d) if d.is_zero() => None,
                    Some(d) => Some(d),
                };
            }
            _ => bail!("{rpath} needs exactly one of route, redirect or direct_response"),
        }
        routes.push(config);
    }
    Ok(routes)
}

/// A route's `match`: one path form, then headers (`:method` among them) and query parameters.
fn route_match(w: &mut Walker, value: &Value, path: &str) -> anyhow::Result<RouteMatch> {
    let m = w.object(
        value,
        path,
        &["prefix", "path", "path_separated_prefix", "safe_regex", "headers", "query_parameters"],
    )?;
    let text = |key: &str| m.get(key).and_then(Value::as_str).map(str::to_owned);
    let regex = match m.get("safe_regex") {
        Some(r) => Some(regex_of(r, &format!("{path}.safe_regex"))?),
        None => None,
    };
    let mut matcher = RouteMatch {
        path: match (text("prefix"), text("path"), text("path_separated_prefix"), regex) {
            (Some(p), None, None, None) => PathMatch::Prefix(p),
            (None, Some(p), None, None) => PathMatch::Exact(p),
            (None, None, Some(p), None) => PathMatch::SeparatedPrefix(p),
            (None, None, None, Some(r)) => PathMatch::regex(&r).with_context(|| format!("{path}.safe_regex"))?,
            _ => bail!("{path} needs exactly one of prefix, path, path_separated_prefix or safe_regex"),
        },
        ..RouteMatch::default()
    };
    for (i, h) in list_or_one(m.get("headers")).into_iter().enumerate() {
        let hpath = format!("{path}.headers[{i}]");
        let h = w.object(
            h,
            &hpath,
            &["name", "string_match", "exact_match", "safe_regex_match", "present_match", "invert_match"],
        )?;
        let name = string(h, "name", &hpath)?.to_ascii_lowercase();
        let value = if let Some(e) = h.get("exact_match").and_then(Value::as_str) {
            ValueMatch::Exact(e.to_owned())
        } else if let Some(r) = h.get("safe_regex_match") {
            ValueMatch::Regex(whole(&regex_of(r, &hpath)?, &hpath)?)
        } else if let Some(sm) = h.get("string_match") {
            let spath = format!("{hpath}.string_match");
            let sm = w.object(sm, &spath, &["exact", "safe_regex"])?;
            match (sm.get("exact").and_then(Value::as_str), sm.get("safe_regex")) {
                (Some(e), None) => ValueMatch::Exact(e.to_owned()),
                (None, Some(r)) => ValueMatch::Regex(whole(&regex_of(r, &spath)?, &spath)?),
                _ => bail!("{spath} needs exactly one of exact or safe_regex"),
            }
        } else if h.get("present_match").and_then(Value::as_bool) == Some(true) {
            ValueMatch::Present
        } else {
            bail!("{hpath} needs one of string_match, exact_match, safe_regex_match or present_match");
        };
        let invert = h.get("invert_match").and_then(Value::as_bool).unwrap_or(false);
        // Envoy matches the method as the `:method` pseudo-header.
        if name == ":method"
            && let (ValueMatch::Exact(m), false) = (&value, invert)
        {
            matcher.methods.push(http::Method::from_bytes(m.as_bytes()).with_context(|| format!("{hpath}: method"))?);
            continue;
        }
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| anyhow::anyhow!("{hpath}.name: {name:?} is not a header meshwork can match"))?;
        matcher.headers.push(HeaderMatch { name, value, invert });
    }
    for (i, q) in list_or_one(m.get("query_parameters")).into_iter().enumerate() {
        let qpath = format!("{path}.query_parameters[{i}]");
        let q = w.object(q, &qpath, &["name", "string_match"])?;
        let name = string(q, "name", &qpath)?.to_owned();
        let spath = format!("{qpath}.string_match");
        let sm = w.object(q.get("string_match").with_context(|| format!("{spath} is missing"))?, &spath, &["exact"])?;
        matcher.query.push((name, string(sm, "exact", &spath)?.to_owned()));
    }
    Ok(matcher)
}

/// The pattern of a RegexMatcher (`{regex: …}`, Google RE2 syntax; Rust's regex accepts it).
fn regex_of(value: &Value, path: &str) -> anyhow::Result<String> {
    value.get("regex").and_then(Value::as_str).map(str::to_owned).with_context(|| format!("{path}.regex is missing"))
}

fn whole(pattern: &str, path: &str) -> anyhow::Result<regex::Regex> {
    regex::Regex::new(&format!("^(?:{pattern})$")).with_context(|| format!("{path}: regex"))
}

/// A route's `redirect` (RedirectAction).
fn redirect_action(w: &mut Walker, value: &Value, path: &str) -> anyhow::Result<Redirect> {
    let r = w.object(
        value,
        path,
        &[
            "scheme_redirect",
            "https_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "response_code",
        ],
    )?;
    let text = |key: &str| r.get(key).and_then(Value::as_str).map(str::to_owned);
    let scheme = match (text("scheme_redirect"), r.get("https_redirect").and_then(Value::as_bool)) {
        (Some(s), _) => Some(s),
        (None, Some(true)) => Some("https".to_owned()),
        _ => None,
    };
    let port = match r.get("port_redirect") {
        Some(p) => Some(
            u16::try_from(uint(p, &format!("{path}.port_redirect"))?)
                .with_context(|| format!("{path}.port_redirect"))?,
        ),
        None => None,
    };
    let status = match r.get("response_code").and_then(Value::as_str).unwrap_or("MOVED_PERMANENTLY") {
        "MOVED_PERMANENTLY" => 301,
        "FOUND" => 302,
        "SEE_OTHER" => 303,
        "TEMPORARY_REDIRECT" => 307,
        "PERMANENT_REDIRECT" => 308,
        other => bail!("{path}.response_code: {other} is not a RedirectResponseCode"),
    };
    let path_rewrite = match (text("path_redirect"), text("prefix_rewrite")) {
        (Some(p), None) => Some(PathRewrite::Full(p)),
        (None, Some(p)) => Some(PathRewrite::Prefix(p)),
        (None, None) => None,
        _ => bail!("{path}: give path_redirect or prefix_rewrite, not both"),
    };
    Ok(Redirect { scheme, host: text("host_redirect"), port, path: path_rewrite, status })
}

/// `*_headers_to_add` (HeaderValueOption: `append_action`, or the older `append`, whose default
/// is to append) and `*_headers_to_remove`.
fn header_mods(add: Option<&Value>, remove: Option<&Value>, path: &str) -> anyhow::Result<HeaderMods> {
    let mut mods = HeaderMods::default();
    let name = |n: &str, p: &str| {
        http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
            .map_err(|_| anyhow::anyhow!("{p}: {n:?} is not a valid header name"))
    };
    for (i, option) in list_or_one(add).into_iter().enumerate() {
        let opath = format!("{path}[{i}]");
        let header = option.get("header").with_context(|| format!("{opath}.header is missing"))?;
        let key =
            header.get("key").and_then(Value::as_str).with_context(|| format!("{opath}.header.key is missing"))?;
        let value = header.get("value").and_then(Value::as_str).unwrap_or_default();
        let pair =
            (name(key, &opath)?, http::HeaderValue::from_str(value).with_context(|| format!("{opath}.header.value"))?);
        let append = match option.get("append_action").and_then(Value::as_str) {
            Some("APPEND_IF_EXISTS_OR_ADD") => true,
            Some("OVERWRITE_IF_EXISTS_OR_ADD") => false,
            Some(other) => bail!(
                "{opath}.append_action: {other} is not supported (APPEND_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS_OR_ADD)"
            ),
            None => option.get("append").and_then(Value::as_bool).unwrap_or(true),
        };
        if append { mods.add.push(pair) } else { mods.set.push(pair) }
    }
    for (i, n) in list_or_one(remove).into_iter().enumerate() {
        let n = n.as_str().with_context(|| format!("{path}: headers_to_remove[{i}] must be a string"))?;
        mods.remove.push(name(n, path)?);
    }
    Ok(mods)
}

fn http_filters(w: &mut Walker, list: &[&Value], path: &str, base: &Path) -> anyhow::Result<Vec<FilterConfig>> {
    let mut filters = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let fpath = format!("{path}[{i}]");
        let entry = w.object(f, &fpath, &["name", "typed_config"])?;
        let name = string(entry, "name", &fpath)?;
        let tpath = format!("{fpath}.typed_config");
        let kind = match entry.get("typed_config") {
            Some(t) => Some(typed(w, t, &tpath)?),
            None => None,
        };
        let is_router =
            name == "envoy.filters.http.router" || kind.as_ref().is_some_and(|(k, _)| k.ends_with(".Router"));
        if is_router {
            if i + 1 != list.len() {
                bail!("{fpath}: the router must be the last http filter");
            }
            return Ok(filters);
        }
        let Some((kind, msg)) = kind else {
            bail!("{tpath} is missing");
        };
        if kind != WASM_FILTER_TYPE {
            bail!(
                "{fpath} ({name}): only envoy.filters.http.wasm filters ({WASM_FILTER_TYPE}) and the router are supported"
            );
        }
        let m = message(w, msg, &tpath, &["config"])?;
        let config = m.get("config").with_context(|| format!("{tpath}.config is missing"))?;
        filters.push(wasm_filter(w, config, &format!("{tpath}.config"), name, base)?);
    }
    bail!("{path}: the last http filter must be envoy.filters.http.router")
}

/// One `HttpFilter` (`name`, `typed_config`) that documents embed on their own (Kuma's
/// MeshProxyPatch `value`), translated exactly as a bootstrap's Wasm http filter is. What the
/// bootstrap translation reports as unsupported is an error here; its warnings are returned.
pub(crate) fn wasm_http_filter(value: &Value, path: &str, base: &Path) -> anyhow::Result<(FilterConfig, Vec<String>)> {
    let mut w = Walker { errors: Vec::new(), warnings: Vec::new() };
    let entry = w.object(value, path, &["name", "typed_config"])?;
    let name = string(entry, "name", path)?;
    let tpath = format!("{path}.typed_config");
    let (kind, msg) = typed(&mut w, entry.get("typed_config").with_context(|| format!("{tpath} is missing"))?, &tpath)?;
    if kind != WASM_FILTER_TYPE {
        bail!("{path} ({name}): only envoy.filters.http.wasm filters ({WASM_FILTER_TYPE}) are supported, not {kind}");
    }
    let m = message(&mut w, msg, &tpath, &["config"])?;
    let config = m.get("config").with_context(|| format!("{tpath}.config is missing"))?;
    let filter = wasm_filter(&mut w, config, &format!("{tpath}.config"), name, base)?;
    if !w.errors.is_empty() {
        bail!("{}", w.errors.join("; "));
    }
    Ok((filter, w.warnings))
}

/// StringValue/BytesValue wrappers reach the plugin unwrapped; BytesValue is base64 in YAML.
fn wrapped_bytes(w: &mut Walker, value: &Value, path: &str) -> anyhow::Result<Bytes> {
    let map = w.object(value, path, &["@type", "value"])?;
    let kind = string(map, "@type", path)?;
    let text = map.get("value").and_then(Value::as_str).unwrap_or_default();
    match kind {
        STRING_VALUE => Ok(Bytes::from(text.to_owned())),
        BYTES_VALUE => Ok(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .with_context(|| format!("{path}.value is not base64"))?,
        )),
        other => {
            bail!("{path}.@type: {other} is not supported (use {STRING_VALUE} or {BYTES_VALUE})")
        }
    }
}

fn wasm_filter(
    w: &mut Walker,
    value: &Value,
    path: &str,
    filter_name: &str,
    base: &Path,
) -> anyhow::Result<FilterConfig> {
    let c = w.object(
        value,
        path,
        &[
            "name",
            "root_id",
            "configuration",
            "vm_config",
            "fail_open",
            "failure_policy",
            "allow_on_headers_stop_iteration",
        ],
    )?;
    let mut plugin = PluginConfig::new(c.get("name").and_then(Value::as_str).unwrap_or(filter_name));
    plugin.root_id = c.get("root_id").and_then(Value::as_str).unwrap_or_default().into();
    if let Some(cfg) = c.get("configuration") {
        plugin.configuration = wrapped_bytes(w, cfg, &format!("{path}.configuration"))?;
    }
    plugin.fail_open = c.get("fail_open").and_then(Value::as_bool).unwrap_or(false);
    // A BoolValue in Envoy's proto: plain `true` or `{value: true}`.
    plugin.allow_on_headers_stop_iteration = match c.get("allow_on_headers_stop_iteration") {
        Some(Value::Object(o)) => o.get("value").and_then(Value::as_bool).unwrap_or(false),
        Some(v) => v.as_bool().unwrap_or(false),
        None => false,
    };
    match c.get("failure_policy").and_then(Value::as_str) {
        None | Some("UNSPECIFIED") => {}
        Some("FAIL_OPEN") => plugin.fail_open = true,
        Some("FAIL_CLOSED") => plugin.fail_open = false,
        Some("FAIL_RELOAD") => {
            plugin.fail_open = false;
            w.warn(format!("{path}.failure_policy: FAIL_RELOAD behaves as FAIL_CLOSED plus meshwork's VM rebuild (which always happens)"));
        }
        Some(other) => bail!("{path}.failure_policy: {other} is not a failure policy"),
    }
    let vpath = format!("{path}.vm_config");
    let vm = w.object(
        c.get("vm_config").with_context(|| format!("{vpath} is missing"))?,
        &vpath,
        &[
            "vm_id",
            "runtime",
            "code",
            "configuration",
            "environment_variables",
            "allow_precompiled",
            "nack_on_code_cache_miss",
        ],
    )?;
    plugin.vm_id = vm.get("vm_id").and_then(Value::as_str).unwrap_or_default().into();
    if let Some(runtime) = vm.get("runtime").and_then(Value::as_str)
        && runtime != "envoy.wasm.runtime.wasmtime"
    {
        w.warn(format!("{vpath}.runtime: {runtime} requested; meshwork always runs wasmtime"));
    }
    if let Some(cfg) = vm.get("configuration") {
        plugin.vm_configuration = wrapped_bytes(w, cfg, &format!("{vpath}.configuration"))?;
    }
    if let Some(env) = vm.get("environment_variables") {
        let env = w.object(env, &format!("{vpath}.environment_variables"), &["key_values", "host_env_keys"])?;
        if let Some(kv) = env.get("key_values").and_then(Value::as_object) {
            plugin.env.extend(kv.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())));
        }
        for key in env.get("host_env_keys").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if let Ok(v) = std::env::var(key) {
                plugin.env.push((key.to_owned(), v));
            }
        }
    }
    let cpath = format!("{vpath}.code");
    let code =
        w.object(vm.get("code").with_context(|| format!("{cpath} is missing"))?, &cpath, &["local", "remote"])?;
    let (module, source) = match (code.get("local"), code.get("remote")) {
        (Some(local), None) => {
            let lpath = format!("{cpath}.local");
            let local = w.object(local, &lpath, &["filename"])?;
            ModuleSource::parse(string(local, "filename", &lpath)?, None, base)
        }
        (None, Some(remote)) => {
            // Envoy fetches through `http_uri.cluster`; meshwork fetches the URI directly,
            // once, at start and reload, and keeps the module cached by its sha256.
            let rpath = format!("{cpath}.remote");
            let remote = w.object(remote, &rpath, &["http_uri", "sha256", "retry_policy"])?;
            let hpath = format!("{rpath}.http_uri");
            let http_uri = w.object(
                remote.get("http_uri").with_context(|| format!("{hpath} is missing"))?,
                &hpath,
                &["uri", "cluster", "timeout"],
            )?;
            let uri = string(http_uri, "uri", &hpath)?;
            anyhow::ensure!(
                uri.starts_with("http://") || uri.starts_with("https://"),
                "{hpath}.uri {uri:?} is not an http(s) URL"
            );
            let sha256 = remote
                .get("sha256")
                .and_then(Value::as_str)
                .with_context(|| format!("{rpath}.sha256 is missing (Envoy requires it for remote code)"))?;
            ModuleSource::parse(uri, Some(sha256.to_owned()), base)
        }
        _ => anyhow::bail!("{cpath} needs exactly one of local or remote"),
    };
    Ok(FilterConfig { module, source, plugin })
}

fn cluster(w: &mut Walker, value: &Value, path: &str, base: &Path) -> anyhow::Result<ClusterConfig> {
    let c = w.object(
        value,
        path,
        &[
            "name",
            "connect_timeout",
            "type",
            "lb_policy",
            "load_assignment",
            "circuit_breakers",
            "per_connection_buffer_limit_bytes",
            "http2_protocol_options",
            "typed_extension_protocol_options",
            "transport_socket",
            "dns_refresh_rate",
            "dns_lookup_family",
        ],
    )?;
    let (max_retries, retry_budget) =
        circuit_breakers(w, c.get("circuit_breakers"), &format!("{path}.circuit_breakers"))?;
    if c.contains_key("per_connection_buffer_limit_bytes") {
        w.warn(format!(
            "{path}.per_connection_buffer_limit_bytes: upstream buffers follow the listener's limit in meshwork"
        ));
    }
    let name = string(c, "name", path)?.to_owned();
    let dns = match c.get("type").and_then(Value::as_str) {
        None | Some("STATIC") => false,
        Some("STRICT_DNS" | "LOGICAL_DNS") => true,
        Some(t) => {
            w.errors.push(format!("{path}.type: {t} is not supported (STATIC, STRICT_DNS, LOGICAL_DNS)"));
            false
        }
    };
    if let Some(lb) = c.get("lb_policy").and_then(Value::as_str)
        && lb != "ROUND_ROBIN"
    {
        w.errors.push(format!("{path}.lb_policy: {lb} is not supported (ROUND_ROBIN)"));
    }
    let apath = format!("{path}.load_assignment");
    let la = w.object(
        c.get("load_assignment").with_context(|| format!("{apath} is missing"))?,
        &apath,
        &["cluster_name", "endpoints"],
    )?;
    let mut endpoints = Vec::new();
    for (i, group) in list_or_one(la.get("endpoints")).into_iter().enumerate() {
        let gpath = format!("{apath}.endpoints[{i}]");
        let group = w.object(group, &gpath, &["lb_endpoints", "locality"])?;
        for (j, lb) in list_or_one(group.get("lb_endpoints")).into_iter().enumerate() {
            let epath = format!("{gpath}.lb_endpoints[{j}]");
            let lb = w.object(lb, &epath, &["endpoint"])?;
            let ep = w.object(
                lb.get("endpoint").with_context(|| format!("{epath}.endpoint is missing"))?,
                &format!("{epath}.endpoint"),
                &["address"],
            )?;
            let endpoint = endpoint_address(
                w,
                ep.get("address").with_context(|| format!("{epath}.endpoint.address is missing"))?,
                &format!("{epath}.endpoint.address"),
            )?;
            if !dns && matches!(endpoint, EndpointConfig::Name { .. }) {
                bail!(
                    "{epath}.endpoint.address: {endpoint} is a host name; a STATIC cluster needs IP addresses (use type: STRICT_DNS)"
                );
            }
            endpoints.push(endpoint);
        }
    }
    // HTTP/2: the deprecated cluster field, or HttpProtocolOptions' explicit config.
    let mut http2 = c.contains_key("http2_protocol_options");
    if let Some(options) = c.get("typed_extension_protocol_options") {
        let opath = format!("{path}.typed_extension_protocol_options");
        let o = w.object(options, &opath, &[HTTP_PROTOCOL_OPTIONS])?;
        if let Some(h) = o.get(HTTP_PROTOCOL_OPTIONS) {
            let hpath = format!("{opath}.{HTTP_PROTOCOL_OPTIONS}");
            let (_, msg) = typed(w, h, &hpath)?;
            let h = message(w, msg, &hpath, &["explicit_http_config", "auto_config", "common_http_protocol_options"])?;
            if let Some(e) = h.get("explicit_http_config") {
                let e = w.object(
                    e,
                    &format!("{hpath}.explicit_http_config"),
                    &["http_protocol_options", "http2_protocol_options"],
                )?;
                http2 = e.contains_key("http2_protocol_options");
            }
            if h.contains_key("auto_config") {
                w.warn(format!("{hpath}.auto_config: meshwork uses HTTP/2 when TLS ALPN negotiates it, else HTTP/1.1"));
            }
        }
    }
    let tls = match c.get("transport_socket") {
        None => None,
        Some(ts) => {
            let mut spec = upstream_tls(w, ts, &format!("{path}.transport_socket"), base)?;
            if spec.alpn.is_empty() && http2 {
                spec.alpn = vec!["h2".into()];
            }
            Some(spec)
        }
    };
    Ok(ClusterConfig {
        name,
        endpoints,
        connect_timeout: duration(c.get("connect_timeout"), &format!("{path}.connect_timeout"))?
            .unwrap_or(Duration::from_secs(5)),
        max_retries,
        retry_budget,
        http2,
        tls,
        dns_refresh: duration(c.get("dns_refresh_rate"), &format!("{path}.dns_refresh_rate"))?
            .unwrap_or(Duration::from_secs(5)),
    })
}

/// The DEFAULT priority's `max_retries` and `retry_budget` (Envoy: 3 and none).
fn circuit_breakers(w: &mut Walker, value: Option<&Value>, path: &str) -> anyhow::Result<(u32, Option<RetryBudget>)> {
    let Some(value) = value else { return Ok((3, None)) };
    let cb = w.object(value, path, &["thresholds"])?;
    let (mut max_retries, mut budget) = (3, None);
    for (i, t) in cb.get("thresholds").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let tpath = format!("{path}.thresholds[{i}]");
        let t = w.object(t, &tpath, &["priority", "max_retries", "retry_budget"])?;
        if t.get("priority").and_then(Value::as_str).is_some_and(|p| p != "DEFAULT") {
            w.warn(format!("{tpath}: only the DEFAULT priority exists in meshwork; ignored"));
            continue;
        }
        if let Some(n) = t.get("max_retries") {
            max_retries = u32::try_from(uint(n, &format!("{tpath}.max_retries"))?).unwrap_or(u32::MAX);
        }
        if let Some(b) = t.get("retry_budget") {
            let bpath = format!("{tpath}.retry_budget");
            let b = w.object(b, &bpath, &["budget_percent", "min_retry_concurrency"])?;
            let percent = match b.get("budget_percent") {
                None => 20.0,
                Some(p) => p
                    .get("value")
                    .unwrap_or(p)
                    .as_f64()
                    .with_context(|| format!("{bpath}.budget_percent must be a number"))?,
            };
            let min_concurrency = match b.get("min_retry_concurrency") {
                None => 3,
                Some(m) => u32::try_from(uint(m, &format!("{bpath}.min_retry_concurrency"))?).unwrap_or(u32::MAX),
            };
            budget = Some(RetryBudget { percent, min_concurrency });
        }
    }
    Ok((max_retries, budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPICAL: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 9901}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 0.0.0.0, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          codec_type: AUTO
          access_log:
          - name: envoy.access_loggers.stdout
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: app, timeout: 2s}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: rl
                root_id: rl_root
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"rate": 5}'
                vm_config:
                  vm_id: rl_vm
                  runtime: envoy.wasm.runtime.v8
                  code: {local: {filename: /etc/envoy/rl.wasm}}
                fail_open: true
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    connect_timeout: 0.25s
    type: STATIC
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}
"#;

    fn walk(yaml: &str) -> (anyhow::Result<ProxyConfig>, Walker) {
        let mut w = Walker { errors: Vec::new(), warnings: Vec::new() };
        let v: Value = serde_saphyr::from_str(yaml).unwrap();
        (translate(&mut w, &v, Path::new("/")), w)
    }

    fn http(c: &ProxyConfig) -> &HttpListener {
        c.listeners[0].http().expect("an HTTP listener")
    }

    #[test]
    fn typical_bootstrap_translates() {
        let (c, w) = walk(TYPICAL);
        let c = c.unwrap();
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        assert!(w.warnings.iter().any(|x| x.contains("access_log")), "{:?}", w.warnings);
        assert!(w.warnings.iter().any(|x| x.contains("runtime")), "{:?}", w.warnings);
        assert_eq!(c.listeners[0].address.port(), 10000);
        assert_eq!(c.admin.unwrap().port(), 9901);
        assert_eq!(http(&c).routes[0].timeout, Some(Duration::from_secs(2)));
        let f = &http(&c).filters[0];
        assert_eq!(f.plugin.name, "rl");
        assert_eq!(f.plugin.root_id, "rl_root");
        assert_eq!(f.plugin.vm_id, "rl_vm");
        assert_eq!(&f.plugin.configuration[..], br#"{"rate": 5}"#);
        assert!(f.plugin.fail_open);
        assert_eq!(f.module, Path::new("/etc/envoy/rl.wasm"));
        assert_eq!(c.clusters[0].connect_timeout, Duration::from_millis(250));
    }

    #[test]
    fn unsupported_fields_are_named() {
        let yaml = TYPICAL
            .replace("    lb_policy: ROUND_ROBIN", "    lb_policy: RING_HASH\n    outlier_detection: {}")
            .replace("route: {cluster: app, timeout: 2s}", "route: {cluster: app, retry_policy: {num_retries: 3}}");
        let (_, w) = walk(&yaml);
        let all = w.errors.join("\n");
        assert!(all.contains("static_resources.clusters[0].outlier_detection: not supported"), "{all}");
        assert!(all.contains("lb_policy: RING_HASH"), "{all}");
        assert!(all.contains("routes[0].route.retry_policy: not supported"), "{all}");
    }

    #[test]
    fn cluster_header_routes_translate() {
        let yaml = TYPICAL.replace("route: {cluster: app, timeout: 2s}", "route: {cluster_header: X-Version}");
        let (c, w) = walk(&yaml);
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        assert_eq!(http(&c.unwrap()).routes[0].target, RouteTarget::ClusterHeader("x-version".into()));
        let yaml = TYPICAL.replace("route: {cluster: app, timeout: 2s}", "route: {timeout: 2s}");
        let err = walk(&yaml).0.expect_err("a route without a target is refused");
        assert!(format!("{err:#}").contains("exactly one of cluster, cluster_header or weighted_clusters"), "{err:#}");
    }

    #[test]
    fn route_matches_splits_redirects_and_header_changes_translate() {
        let routes = r#"- match:
                  path_separated_prefix: /split
                  headers:
                  - {name: ":method", string_match: {exact: POST}}
                  - {name: Version, string_match: {exact: two}}
                  - {name: x-re, safe_regex_match: {regex: "a+"}, invert_match: true}
                  query_parameters: [{name: lang, string_match: {exact: en}}]
                route:
                  weighted_clusters: {clusters: [{name: app, weight: 70}, {name: app, weight: 30}]}
                  prefix_rewrite: /
                request_headers_to_add:
                - {header: {key: x-set, value: "1"}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
                - {header: {key: x-add, value: "2"}}
                request_headers_to_remove: [x-gone]
                response_headers_to_add: [{header: {key: x-out, value: "3"}, append: false}]
              - match: {safe_regex: {regex: "/old/[0-9]+"}}
                redirect: {scheme_redirect: https, port_redirect: 8443, path_redirect: /new, response_code: PERMANENT_REDIRECT}"#;
        let yaml =
            TYPICAL.replace("- match: {prefix: \"/\"}\n                route: {cluster: app, timeout: 2s}", routes);
        assert_ne!(yaml, TYPICAL);
        let (c, w) = walk(&yaml);
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        let c = c.unwrap();
        let r = &http(&c).routes;
        assert_eq!(r[0].matcher.path, PathMatch::SeparatedPrefix("/split".into()));
        assert_eq!(r[0].matcher.methods, [http::Method::POST]);
        assert_eq!(r[0].matcher.headers.len(), 2);
        assert!(r[0].matcher.headers[1].invert);
        assert_eq!(r[0].matcher.query, [("lang".to_owned(), "en".to_owned())]);
        assert_eq!(r[0].target, RouteTarget::Weighted(vec![("app".into(), 70), ("app".into(), 30)]));
        assert_eq!(r[0].rewrite, Some(PathRewrite::Prefix("/".into())));
        assert_eq!((r[0].request_headers.set.len(), r[0].request_headers.add.len()), (1, 1));
        assert_eq!(r[0].request_headers.remove, ["x-gone"]);
        assert_eq!(r[0].response_headers.set[0].0, "x-out");
        assert_eq!(
            r[1].target,
            RouteTarget::Redirect(Redirect {
                scheme: Some("https".into()),
                host: None,
                port: Some(8443),
                path: Some(PathRewrite::Full("/new".into())),
                status: 308
            })
        );
    }

    #[test]
    fn bytes_value_configuration_is_decoded() {
        let yaml = TYPICAL.replace(
            "\"@type\": type.googleapis.com/google.protobuf.StringValue\n                  value: '{\"rate\": 5}'",
            "\"@type\": type.googleapis.com/google.protobuf.BytesValue\n                  value: aGVsbG8=",
        );
        let (c, _) = walk(&yaml);
        assert_eq!(&http(&c.unwrap()).filters[0].plugin.configuration[..], b"hello");
    }

    /// The SDK examples' shape: `listeners` as one mapping without a name, the Wasm filter in a
    /// TypedStruct, direct responses matched in order, a STRICT_DNS cluster with HTTP/2.
    const SDK_STYLE: &str = r#"
static_resources:
  listeners:
    address:
      socket_address:
        address: 0.0.0.0
        port_value: 10000
    filter_chains:
      - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
              stat_prefix: ingress_http
              codec_type: AUTO
              route_config:
                name: local_routes
                virtual_hosts:
                  - name: local_service
                    domains:
                      - "*"
                    routes:
                      - match:
                          prefix: "/secret"
                        direct_response:
                          status: 200
                          body:
                            inline_string: "secret\n"
                      - match:
                          prefix: "/"
                        route:
                          cluster: grpcbin
              http_filters:
                - name: envoy.filters.http.wasm
                  typed_config:
                    "@type": type.googleapis.com/udpa.type.v1.TypedStruct
                    type_url: type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                    value:
                      config:
                        name: "http_config"
                        configuration:
                          "@type": "type.googleapis.com/google.protobuf.StringValue"
                          value: The secret to life
                        vm_config:
                          runtime: "envoy.wasm.runtime.v8"
                          code:
                            local:
                              filename: "/plugins/x.wasm"
                - name: envoy.filters.http.router
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: grpcbin
      connect_timeout: 5s
      type: STRICT_DNS
      lb_policy: ROUND_ROBIN
      http2_protocol_options: {}
      load_assignment:
        cluster_name: grpcbin
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address:
                      address: grpcbin
                      port_value: 9000
"#;

    #[test]
    fn sdk_example_shapes_translate() {
        let (c, w) = walk(SDK_STYLE);
        let c = c.unwrap();
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        let h = http(&c);
        assert!(h.first_match);
        assert_eq!(h.routes[0].target, RouteTarget::Direct { status: 200, body: Bytes::from("secret\n") });
        assert_eq!(h.filters[0].plugin.name, "http_config");
        assert_eq!(&h.filters[0].plugin.configuration[..], b"The secret to life");
        let g = &c.clusters[0];
        assert!(g.http2);
        assert_eq!(g.endpoints[0], EndpointConfig::Name { host: "grpcbin".into(), port: 9000 });
        let stat = SDK_STYLE.replace("type: STRICT_DNS", "type: STATIC");
        let err = walk(&stat).0.expect_err("a host name in a STATIC cluster is refused");
        assert!(format!("{err:#}").contains("is a host name"), "{err:#}");
    }

    #[test]
    fn tcp_listeners_with_network_filters_and_tls() {
        let yaml = r#"
static_resources:
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 10001}}
    listener_filters: [{name: envoy.filters.listener.proxy_protocol}]
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{certificate_chain: {filename: s.pem}, private_key: {filename: s.key}}]
            validation_context: {trusted_ca: {filename: ca.pem}}
      filters:
      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config: {name: net, vm_config: {code: {local: {filename: net.wasm}}}}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: backend
  clusters:
  - name: backend
    load_assignment: {cluster_name: backend, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9000}}}}]}]}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: backend.internal
        common_tls_context:
          validation_context:
            trusted_ca: {filename: ca.pem}
            match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: "spiffe://mesh/backend"}}]
"#;
        let (c, w) = walk(yaml);
        let c = c.unwrap();
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        let l = &c.listeners[0];
        assert!(l.proxy_protocol);
        let tls = l.tls.as_ref().unwrap();
        assert!(tls.require_client_certificate && tls.alpn.is_empty());
        assert_eq!(tls.client_ca.as_deref(), Some(Path::new("/ca.pem")));
        assert!(matches!(&l.kind, ListenerKind::Tcp(t) if t.cluster == "backend" && t.filters[0].plugin.name == "net"));
        let up = c.clusters[0].tls.as_ref().unwrap();
        assert_eq!(up.sni.as_deref(), Some("backend.internal"));
        assert_eq!(up.verify_san, ["spiffe://mesh/backend"]);
        assert_eq!(up.trust, Trust::Ca("/ca.pem".into()));
    }
}
