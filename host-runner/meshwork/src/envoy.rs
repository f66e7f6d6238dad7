//! `meshwork run --envoy-config envoy.yaml`: runs an Envoy static bootstrap as users write it
//! for Wasm filters.
//!
//! Understood: one listener with an http_connection_manager; its route_config (prefix or path
//! routes to clusters, route timeouts); `envoy.filters.http.wasm` filters (local code,
//! StringValue/BytesValue configuration, root_id, vm_id, fail_open / failure_policy,
//! allow_on_headers_stop_iteration,
//! environment variables) followed by the router; STATIC clusters with IP endpoints; admin;
//! node. Every other field is reported by its path. Fields that only affect observability
//! (access logs, stat prefixes) are warnings; anything that would change how traffic flows is
//! an error unless `--allow-unsupported` turns it into a warning. Nothing is ignored silently.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use meshwork_wasm_host::{NodeInfo, PluginConfig};
use serde_json::{Map, Value};

use crate::config::{
    ClusterConfig, FilterConfig, ListenerConfig, ProxyConfig, RetryBudget, RouteConfig, RouteTarget, parse_addr,
    parse_cidr, parse_duration,
};

const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
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

fn array<'a>(map: &'a Map<String, Value>, key: &str, path: &str) -> anyhow::Result<&'a Vec<Value>> {
    map.get(key).and_then(Value::as_array).with_context(|| format!("{path}.{key} must be a list"))
}

fn socket_address(w: &mut Walker, value: &Value, path: &str) -> anyhow::Result<std::net::SocketAddr> {
    let address = w.object(value, path, &["socket_address"])?;
    let sa_path = format!("{path}.socket_address");
    let sa = w.object(
        address.get("socket_address").with_context(|| format!("{sa_path} is missing"))?,
        &sa_path,
        &["address", "port_value", "protocol"],
    )?;
    if let Some(p) = sa.get("protocol").and_then(Value::as_str)
        && p != "TCP"
    {
        w.errors.push(format!("{sa_path}.protocol: {p} is not supported (TCP only)"));
    }
    let host = string(sa, "address", &sa_path)?;
    let port = sa
        .get("port_value")
        .and_then(Value::as_u64)
        .with_context(|| format!("{sa_path}.port_value must be a number"))?;
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
    parse_addr(&format!("{host}:{port}"), &sa_path)
        .with_context(|| format!("{sa_path}.address must be an IP address (meshwork does not resolve DNS names)"))
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
    let top = w.object(root, "", &["static_resources", "admin", "node"])?;
    let node = match top.get("node") {
        None => NodeInfo { id: "meshwork".into(), ..NodeInfo::default() },
        Some(n) => {
            let n = w.object(n, "node", &["id", "cluster", "metadata"])?;
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
    let sr = w.object(
        top.get("static_resources").context("static_resources is missing")?,
        "static_resources",
        &["listeners", "clusters"],
    )?;
    let listeners = array(sr, "listeners", "static_resources")?;
    if listeners.len() != 1 {
        bail!("static_resources.listeners: meshwork runs exactly one listener (found {})", listeners.len());
    }
    let lpath = "static_resources.listeners[0]";
    let listener =
        w.object(&listeners[0], lpath, &["name", "address", "filter_chains", "per_connection_buffer_limit_bytes"])?;
    let mut settings = ListenerConfig::default();
    if let Some(limit) = listener.get("per_connection_buffer_limit_bytes") {
        settings.buffer_limit = uint(limit, &format!("{lpath}.per_connection_buffer_limit_bytes"))? as usize;
    }
    let listen = socket_address(
        w,
        listener.get("address").with_context(|| format!("{lpath}.address is missing"))?,
        &format!("{lpath}.address"),
    )?;
    let chains = array(listener, "filter_chains", lpath)?;
    if chains.len() != 1 {
        bail!("{lpath}.filter_chains: meshwork supports exactly one filter chain (found {})", chains.len());
    }
    let cpath = format!("{lpath}.filter_chains[0]");
    let chain = w.object(&chains[0], &cpath, &["filters", "name"])?;
    let network_filters = array(chain, "filters", &cpath)?;
    if network_filters.len() != 1 {
        bail!(
            "{cpath}.filters: expected exactly one http_connection_manager (found {} filters)",
            network_filters.len()
        );
    }
    let fpath = format!("{cpath}.filters[0]");
    let hcm_entry = w.object(&network_filters[0], &fpath, &["name", "typed_config"])?;
    let name = string(hcm_entry, "name", &fpath)?;
    if name != "envoy.filters.network.http_connection_manager" {
        bail!("{fpath}.name: {name} is not supported (only envoy.filters.network.http_connection_manager)");
    }
    let hpath = format!("{fpath}.typed_config");
    let hcm = w.object(
        hcm_entry.get("typed_config").with_context(|| format!("{hpath} is missing"))?,
        &hpath,
        &[
            "@type",
            "stat_prefix",
            "codec_type",
            "route_config",
            "http_filters",
            "request_headers_timeout",
            "stream_idle_timeout",
            "drain_timeout",
            "common_http_protocol_options",
            "use_remote_address",
            "internal_address_config",
        ],
    )?;
    connection_manager(w, hcm, &hpath, &mut settings)?;
    if string(hcm, "@type", &hpath)? != HCM_TYPE {
        bail!("{hpath}.@type must be {HCM_TYPE}");
    }
    if let Some(codec) = hcm.get("codec_type").and_then(Value::as_str)
        && !["AUTO", "HTTP1", "HTTP2"].contains(&codec)
    {
        w.errors.push(format!("{hpath}.codec_type: {codec} is not supported (AUTO, HTTP1 or HTTP2 cleartext)"));
    }
    let routes = route_config(
        w,
        hcm.get("route_config").with_context(|| format!("{hpath}.route_config is missing"))?,
        &format!("{hpath}.route_config"),
    )?;
    let filters = http_filters(w, array(hcm, "http_filters", &hpath)?, &format!("{hpath}.http_filters"), base)?;
    let clusters = array(sr, "clusters", "static_resources")?
        .iter()
        .enumerate()
        .map(|(i, c)| cluster(w, c, &format!("static_resources.clusters[{i}]")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ProxyConfig {
        listen,
        admin,
        admin_allow_non_loopback: false,
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        listener: settings,
        max_connections: None,
        clusters,
        routes,
        filters,
        filter_buffer_limit: None,
        node,
        cache_dir: None,
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

/// The connection manager's timeouts, limits and trust settings.
fn connection_manager(
    w: &mut Walker,
    hcm: &Map<String, Value>,
    path: &str,
    settings: &mut ListenerConfig,
) -> anyhow::Result<()> {
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
    if hcm.get("use_remote_address").and_then(Value::as_bool) == Some(false) {
        w.warn(format!(
            "{path}.use_remote_address: false; meshwork always judges trust by the peer address (it does not read x-forwarded-for)"
        ));
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
    Ok(())
}

fn route_config(w: &mut Walker, value: &Value, path: &str) -> anyhow::Result<Vec<RouteConfig>> {
    let rc = w.object(value, path, &["name", "virtual_hosts"])?;
    let hosts = array(rc, "virtual_hosts", path)?;
    if hosts.len() != 1 {
        bail!("{path}.virtual_hosts: meshwork supports exactly one virtual host (found {})", hosts.len());
    }
    let vpath = format!("{path}.virtual_hosts[0]");
    let vh = w.object(&hosts[0], &vpath, &["name", "domains", "routes"])?;
    if let Some(domains) = vh.get("domains").and_then(Value::as_array)
        && domains.iter().any(|d| d.as_str() != Some("*"))
    {
        w.errors.push(format!("{vpath}.domains: only \"*\" is supported (meshwork does not match on host)"));
    }
    let mut routes = Vec::new();
    for (i, r) in array(vh, "routes", &vpath)?.iter().enumerate() {
        let rpath = format!("{vpath}.routes[{i}]");
        let route = w.object(r, &rpath, &["name", "match", "route"])?;
        let m = w.object(
            route.get("match").with_context(|| format!("{rpath}.match is missing"))?,
            &format!("{rpath}.match"),
            &["prefix", "path"],
        )?;
        let prefix = match (m.get("prefix").and_then(Value::as_str), m.get("path").and_then(Value::as_str)) {
            (Some(p), None) => p.to_owned(),
            (None, Some(p)) => {
                w.warn(format!("{rpath}.match.path: matched as a prefix by meshwork"));
                p.to_owned()
            }
            _ => bail!("{rpath}.match needs exactly one of prefix or path"),
        };
        let apath = format!("{rpath}.route");
        let action = w.object(
            route.get("route").with_context(|| format!("{apath} is missing (only route actions are supported)"))?,
            &apath,
            &["cluster", "cluster_header", "timeout"],
        )?;
        let target = match (action.get("cluster"), action.get("cluster_header")) {
            (Some(_), None) => RouteTarget::Cluster(string(action, "cluster", &apath)?.to_owned()),
            (None, Some(_)) => {
                RouteTarget::ClusterHeader(string(action, "cluster_header", &apath)?.to_ascii_lowercase())
            }
            _ => bail!("{apath} needs exactly one of cluster or cluster_header"),
        };
        routes.push(RouteConfig {
            name: route.get("name").and_then(Value::as_str).map_or_else(|| format!("route-{i}"), str::to_owned),
            prefix,
            target,
            // Envoy's default route timeout is 15s; "0s" disables it.
            timeout: match duration(action.get("timeout"), &format!("{apath}.timeout"))? {
                None => Some(Duration::from_secs(15)),
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
            },
        });
    }
    Ok(routes)
}

fn http_filters(w: &mut Walker, list: &[Value], path: &str, base: &Path) -> anyhow::Result<Vec<FilterConfig>> {
    let mut filters = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let fpath = format!("{path}[{i}]");
        let entry = w.object(f, &fpath, &["name", "typed_config"])?;
        let name = string(entry, "name", &fpath)?;
        let is_router = name == "envoy.filters.http.router"
            || entry
                .get("typed_config")
                .and_then(|t| t.get("@type"))
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(".Router"));
        if is_router {
            if i + 1 != list.len() {
                bail!("{fpath}: the router must be the last http filter");
            }
            return Ok(filters);
        }
        let tpath = format!("{fpath}.typed_config");
        let typed = entry.get("typed_config").with_context(|| format!("{tpath} is missing"))?;
        if typed.get("@type").and_then(Value::as_str) != Some(WASM_FILTER_TYPE) {
            bail!(
                "{fpath} ({name}): only envoy.filters.http.wasm filters ({WASM_FILTER_TYPE}) and the router are supported"
            );
        }
        let typed = w.object(typed, &tpath, &["@type", "config"])?;
        filters.push(wasm_filter(
            w,
            typed.get("config").with_context(|| format!("{tpath}.config is missing"))?,
            &format!("{tpath}.config"),
            name,
            base,
        )?);
    }
    bail!("{path}: the last http filter must be envoy.filters.http.router")
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
    let code = w.object(vm.get("code").with_context(|| format!("{cpath} is missing"))?, &cpath, &["local"])?;
    let lpath = format!("{cpath}.local");
    let local = w.object(
        code.get("local").with_context(|| format!("{lpath} is missing (remote code is not supported)"))?,
        &lpath,
        &["filename"],
    )?;
    let module = base.join(string(local, "filename", &lpath)?);
    Ok(FilterConfig { module, plugin })
}

fn cluster(w: &mut Walker, value: &Value, path: &str) -> anyhow::Result<ClusterConfig> {
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
    match c.get("type").and_then(Value::as_str) {
        None | Some("STATIC") => {}
        Some(t @ ("STRICT_DNS" | "LOGICAL_DNS")) => {
            w.warn(format!("{path}.type: {t} accepted only because every endpoint is an IP address"));
        }
        Some(t) => w.errors.push(format!("{path}.type: {t} is not supported (STATIC)")),
    }
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
    for (i, group) in array(la, "endpoints", &apath)?.iter().enumerate() {
        let gpath = format!("{apath}.endpoints[{i}]");
        let group = w.object(group, &gpath, &["lb_endpoints"])?;
        for (j, lb) in array(group, "lb_endpoints", &gpath)?.iter().enumerate() {
            let epath = format!("{gpath}.lb_endpoints[{j}]");
            let lb = w.object(lb, &epath, &["endpoint"])?;
            let ep = w.object(
                lb.get("endpoint").with_context(|| format!("{epath}.endpoint is missing"))?,
                &format!("{epath}.endpoint"),
                &["address"],
            )?;
            endpoints.push(socket_address(
                w,
                ep.get("address").with_context(|| format!("{epath}.endpoint.address is missing"))?,
                &format!("{epath}.endpoint.address"),
            )?);
        }
    }
    Ok(ClusterConfig {
        name,
        endpoints,
        connect_timeout: duration(c.get("connect_timeout"), &format!("{path}.connect_timeout"))?
            .unwrap_or(Duration::from_secs(5)),
        max_retries,
        retry_budget,
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

    #[test]
    fn typical_bootstrap_translates() {
        let (c, w) = walk(TYPICAL);
        let c = c.unwrap();
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        assert!(w.warnings.iter().any(|x| x.contains("access_log")), "{:?}", w.warnings);
        assert!(w.warnings.iter().any(|x| x.contains("runtime")), "{:?}", w.warnings);
        assert_eq!(c.listen.port(), 10000);
        assert_eq!(c.admin.unwrap().port(), 9901);
        assert_eq!(c.routes[0].timeout, Some(Duration::from_secs(2)));
        let f = &c.filters[0];
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
            .replace("    lb_policy: ROUND_ROBIN", "    lb_policy: RING_HASH\n    transport_socket: {name: tls}")
            .replace("route: {cluster: app, timeout: 2s}", "route: {cluster: app, retry_policy: {num_retries: 3}}");
        let (_, w) = walk(&yaml);
        let all = w.errors.join("\n");
        assert!(all.contains("static_resources.clusters[0].transport_socket: not supported"), "{all}");
        assert!(all.contains("lb_policy: RING_HASH"), "{all}");
        assert!(all.contains("routes[0].route.retry_policy: not supported"), "{all}");
    }

    #[test]
    fn cluster_header_routes_translate() {
        let yaml = TYPICAL.replace("route: {cluster: app, timeout: 2s}", "route: {cluster_header: X-Version}");
        let (c, w) = walk(&yaml);
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        assert_eq!(c.unwrap().routes[0].target, RouteTarget::ClusterHeader("x-version".into()));
        let yaml = TYPICAL.replace("route: {cluster: app, timeout: 2s}", "route: {timeout: 2s}");
        let err = walk(&yaml).0.expect_err("a route without a target is refused");
        assert!(format!("{err:#}").contains("exactly one of cluster or cluster_header"), "{err:#}");
    }

    #[test]
    fn bytes_value_configuration_is_decoded() {
        let yaml = TYPICAL.replace(
            "\"@type\": type.googleapis.com/google.protobuf.StringValue\n                  value: '{\"rate\": 5}'",
            "\"@type\": type.googleapis.com/google.protobuf.BytesValue\n                  value: aGVsbG8=",
        );
        let (c, _) = walk(&yaml);
        assert_eq!(&c.unwrap().filters[0].plugin.configuration[..], b"hello");
    }
}
