//! `meshwork run --config FILE`: the native YAML configuration, and the model both it and the
//! Envoy bootstrap translation produce.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use ipnet::IpNet;
use meshwork_wasm_host::abi::LogLevel;
use meshwork_wasm_host::{NodeInfo, PluginConfig, TrafficDirection, VmLimits};
use serde::Deserialize;

pub use crate::route_spec::{
    HeaderMatch, HeaderMods, PathMatch, PathRewrite, Redirect, RouteConfig, RouteMatch, RouteTarget, ValueMatch,
};
use crate::tls::{CertificateSpec, ClientTlsSpec, ServerTlsSpec, TlsVersion};

/// Everything `meshwork run` needs, whichever file it came from.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// At least one; HTTP and TCP listeners in any mix.
    pub listeners: Vec<ListenerSpec>,
    pub admin: Option<SocketAddr>,
    /// The admin listener may bind a non-loopback address (it can stop and reload the proxy).
    pub admin_allow_non_loopback: bool,
    pub workers: usize,
    /// Most client connections the whole process holds (every listener, every worker); by
    /// default what the descriptor limit allows (see [`default_max_connections`]).
    pub max_connections: Option<usize>,
    pub clusters: Vec<ClusterConfig>,
    /// Filters that run outside any listener (Envoy's `envoy.bootstrap.wasm` WasmService):
    /// only their root context, on the main thread (one VM), ticks and queues.
    pub services: Vec<FilterConfig>,
    /// Host names resolved to these addresses instead of through DNS (`--resolve`).
    pub resolve: BTreeMap<String, Vec<IpAddr>>,
    pub node: NodeInfo,
    pub cache_dir: Option<PathBuf>,
    /// Services to import from other meshes (Hamlet), routed by their fqdn.
    pub federation: Option<crate::federation::consumer::ConsumerSpec>,
}

/// One listening address and what it serves.
#[derive(Clone, Debug)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub settings: ListenerConfig,
    pub tls: Option<ServerTlsSpec>,
    /// Read a PROXY protocol (v1 or v2) header first; its addresses are the client's.
    pub proxy_protocol: bool,
    pub kind: ListenerKind,
}

#[derive(Clone, Debug)]
pub enum ListenerKind {
    Http(HttpListener),
    Tcp(TcpListener),
}

/// An HTTP listener: routes, and the HTTP filters requests pass.
#[derive(Clone, Debug)]
pub struct HttpListener {
    pub routes: Vec<RouteConfig>,
    /// Envoy's rule (the first route that matches wins) instead of meshwork's longest prefix.
    pub first_match: bool,
    pub filters: Vec<FilterConfig>,
    /// Body bytes a stream through the filters may hold per direction (defaults to the
    /// listener's buffer limit).
    pub filter_buffer_limit: Option<usize>,
}

/// A TCP listener: network filters in front of a TCP proxy to one cluster.
#[derive(Clone, Debug)]
pub struct TcpListener {
    pub cluster: String,
    pub filters: Vec<FilterConfig>,
}

impl ListenerSpec {
    pub fn http(&self) -> Option<&HttpListener> {
        match &self.kind {
            ListenerKind::Http(h) => Some(h),
            ListenerKind::Tcp(_) => None,
        }
    }

    /// Its filters, HTTP or network.
    pub fn filters(&self) -> &[FilterConfig] {
        match &self.kind {
            ListenerKind::Http(h) => &h.filters,
            ListenerKind::Tcp(t) => &t.filters,
        }
    }

    /// How clients reach it: `http`/`https`, or `tcp`/`tls` for a TCP listener.
    pub fn scheme(&self) -> &'static str {
        match (&self.kind, self.tls.is_some()) {
            (ListenerKind::Http(_), false) => "http",
            (ListenerKind::Http(_), true) => "https",
            (ListenerKind::Tcp(_), false) => "tcp",
            (ListenerKind::Tcp(_), true) => "tls",
        }
    }
}

impl ProxyConfig {
    /// Every filter of every listener, then the services.
    pub fn all_filters(&self) -> impl Iterator<Item = &FilterConfig> {
        self.listeners.iter().flat_map(ListenerSpec::filters).chain(&self.services)
    }

    pub fn all_filters_mut(&mut self) -> impl Iterator<Item = &mut FilterConfig> {
        self.listeners
            .iter_mut()
            .flat_map(|l| match &mut l.kind {
                ListenerKind::Http(h) => h.filters.iter_mut(),
                ListenerKind::Tcp(t) => t.filters.iter_mut(),
            })
            .chain(&mut self.services)
    }

    pub fn routes(&self) -> usize {
        self.listeners.iter().filter_map(ListenerSpec::http).map(|h| h.routes.len()).sum()
    }
}

/// How a listener treats its clients: buffers, timeouts, caps, trust. Defaults are Envoy's,
/// except the request-headers timeout, which Envoy leaves off and meshwork sets to nginx's 60 s.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Bytes buffered per connection and per stream direction (Envoy's
    /// `per_connection_buffer_limit_bytes`, 1 MiB); also the HTTP/2 flow-control windows.
    pub buffer_limit: usize,
    /// From a request's first byte to the end of its headers.
    pub request_headers_timeout: Option<Duration>,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Option<Duration>,
    /// A stream with no bytes moving in either direction is ended after this (408 before the
    /// response started, a reset after).
    pub stream_idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u64>,
    /// A connection older than this is drained (`Connection: close` / GOAWAY).
    pub max_connection_duration: Option<Duration>,
    /// How long a draining connection may finish its streams before it is closed.
    pub drain_timeout: Duration,
    /// Most connections this listener holds; over it the listener stops accepting.
    pub max_connections: Option<usize>,
    /// Clients whose router-control `x-envoy-*` headers are honoured (Envoy's internal addresses);
    /// everyone else has them removed before the filters run.
    pub trusted_clients: Vec<IpNet>,
    /// Append the client's address to `x-forwarded-for` (Envoy's `use_remote_address`).
    pub use_remote_address: bool,
    /// Proxies in front that a trusted client vouches for: the client address that counts is
    /// this many entries from the end of `x-forwarded-for` (Envoy's `xff_num_trusted_hops`).
    pub xff_trusted_hops: u32,
    /// What filters read as `listener_direction`: sidecar filters (Istio's, Kuma's) tell inbound
    /// from outbound traffic by it.
    pub direction: TrafficDirection,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            buffer_limit: 1 << 20,
            request_headers_timeout: Some(Duration::from_secs(60)),
            idle_timeout: Some(Duration::from_secs(3600)),
            stream_idle_timeout: Some(Duration::from_secs(300)),
            max_requests_per_connection: None,
            max_connection_duration: None,
            drain_timeout: Duration::from_secs(5),
            max_connections: None,
            trusted_clients: Vec::new(),
            use_remote_address: true,
            xff_trusted_hops: 0,
            direction: TrafficDirection::Unspecified,
        }
    }
}

impl ListenerConfig {
    pub fn trusts(&self, client: std::net::IpAddr) -> bool {
        let client = match client {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted_clients.iter().any(|net| net.contains(&client))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    pub connect_timeout: Duration,
    /// Most retries in flight to the cluster at once, from every source (Envoy's
    /// `circuit_breakers.thresholds.max_retries`, default 3).
    pub max_retries: u32,
    /// When set, retries in flight are capped by this share of active requests instead
    /// (Envoy's `retry_budget`).
    pub retry_budget: Option<RetryBudget>,
    /// Speak HTTP/2 to it (h2c, or h2 over TLS); otherwise HTTP/1.1 unless TLS ALPN picks h2.
    pub http2: bool,
    pub tls: Option<ClientTlsSpec>,
    /// How often host names are resolved again (Envoy's `dns_refresh_rate`, 5 s).
    pub dns_refresh: Duration,
}

/// An endpoint as configured: an IP address, or a host name resolved through DNS (every
/// address it resolves to, as Envoy's STRICT_DNS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointConfig {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl EndpointConfig {
    pub fn parse(text: &str, what: &str) -> anyhow::Result<EndpointConfig> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(EndpointConfig::Ip(addr));
        }
        let (host, port) = text
            .rsplit_once(':')
            .with_context(|| format!("{what} {text:?} needs a port, like 127.0.0.1:8080 or app.internal:8080"))?;
        let port = port.parse().with_context(|| format!("{what} {text:?}: {port:?} is not a port"))?;
        if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
            bail!("{what} {text:?} is neither an IP address with a port nor a host name with a port");
        }
        Ok(EndpointConfig::Name { host: host.to_ascii_lowercase(), port })
    }
}

impl std::fmt::Display for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointConfig::Ip(a) => write!(f, "{a}"),
            EndpointConfig::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Retries in flight may be this percentage of the requests in flight…
    pub percent: f64,
    /// …but at least this many.
    pub min_concurrency: u32,
}

#[derive(Clone, Debug)]
pub struct FilterConfig {
    /// The module on local disk: the file itself, or where a pulled module was cached
    /// (empty until [`crate::modules::fetch_all`] has run).
    pub module: PathBuf,
    pub source: ModuleSource,
    pub plugin: PluginConfig,
}

/// Where a module comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleSource {
    /// A local file (`module: path` or `file://path`); with `sha256`, it must have that digest.
    File { sha256: Option<String> },
    /// `oci://registry/repository:tag` or `…@sha256:…`; `sha256` pins the manifest digest, as
    /// Istio's WasmPlugin does. `pull_policy` overrides `--pull-policy` for this module (a
    /// WasmPlugin's `imagePullPolicy`).
    Oci { reference: String, sha256: Option<String>, pull_policy: Option<meshwork_oci::fetch::PullPolicy> },
    /// `http(s)://…` (Envoy's `remote` code); `sha256` pins the module's own digest.
    Http { url: String, sha256: Option<String> },
}

impl ModuleSource {
    /// Reads a `module:` value. Local paths are relative to `base`.
    pub fn parse(text: &str, sha256: Option<String>, base: &Path) -> (PathBuf, ModuleSource) {
        if text.starts_with("oci://") {
            (PathBuf::new(), ModuleSource::Oci { reference: text.to_owned(), sha256, pull_policy: None })
        } else if text.starts_with("http://") || text.starts_with("https://") {
            (PathBuf::new(), ModuleSource::Http { url: text.to_owned(), sha256 })
        } else {
            let path = text.strip_prefix("file://").unwrap_or(text);
            (base.join(path), ModuleSource::File { sha256 })
        }
    }
}

// ----- the native file -----------------------------------------------------------------------

/// The file. Its top level is one HTTP listener (`listen`, `listener`, `route(s)`, `filters`,
/// `filter_chain`) for the common case; `listeners:` adds more, each shaped the same way.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    admin: Option<String>,
    #[serde(default)]
    admin_allow_non_loopback: bool,
    #[serde(default = "one")]
    workers: usize,
    #[serde(default)]
    listener: FileListener,
    #[serde(default)]
    limits: FileProcessLimits,
    /// None is fine when every route answers locally or goes to an imported service.
    #[serde(default)]
    clusters: Vec<FileCluster>,
    route: Option<FileRoute>,
    #[serde(default)]
    routes: Vec<FileRoute>,
    #[serde(default)]
    filters: Vec<FileFilter>,
    #[serde(default)]
    filter_chain: FileFilterChain,
    #[serde(default)]
    listeners: Vec<FileListenerEntry>,
    #[serde(default)]
    services: Vec<FileFilter>,
    #[serde(default)]
    node: FileNode,
    cache_dir: Option<PathBuf>,
    federation: Option<crate::federation::consumer::ConsumerSpec>,
}

fn one() -> usize {
    1
}

/// A `listeners:` entry: the top level's listener fields, a name and a protocol.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListenerEntry {
    name: Option<String>,
    listen: String,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    listener: FileListener,
    route: Option<FileRoute>,
    #[serde(default)]
    routes: Vec<FileRoute>,
    #[serde(default)]
    filters: Vec<FileFilter>,
    #[serde(default)]
    filter_chain: FileFilterChain,
    /// TCP: the cluster connections are proxied to.
    cluster: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Protocol {
    #[default]
    Http,
    Tcp,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileListener {
    buffer_limit: Option<String>,
    request_headers_timeout: Option<String>,
    idle_timeout: Option<String>,
    stream_idle_timeout: Option<String>,
    max_requests_per_connection: Option<u64>,
    max_connection_duration: Option<String>,
    drain_timeout: Option<String>,
    max_connections: Option<usize>,
    #[serde(default)]
    trusted_clients: Vec<String>,
    use_remote_address: Option<bool>,
    xff_trusted_hops: Option<u32>,
    #[serde(default)]
    proxy_protocol: bool,
    tls: Option<FileServerTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServerTls {
    certificates: Vec<FileCertificate>,
    client_ca: Option<PathBuf>,
    #[serde(default)]
    require_client_certificate: bool,
    alpn: Option<Vec<String>>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCertificate {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    server_names: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileProcessLimits {
    max_connections: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileFilterChain {
    buffer_limit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    name: String,
    endpoints: Vec<String>,
    connect_timeout: Option<String>,
    max_retries: Option<u32>,
    retry_budget: Option<FileRetryBudget>,
    #[serde(default)]
    http2: bool,
    tls: Option<FileClientTls>,
    dns_refresh: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClientTls {
    /// A CA bundle, `public` (Mozilla's roots) or `any` (no verification).
    trust: Option<String>,
    sni: Option<String>,
    #[serde(default)]
    verify_san: Vec<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    alpn: Vec<String>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRetryBudget {
    percent: Option<f64>,
    min_concurrency: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: Option<String>,
    // Which requests: one path form, then methods, headers and query parameters.
    prefix: Option<String>,
    path: Option<String>,
    path_separated_prefix: Option<String>,
    regex: Option<String>,
    /// Host names (the request's authority without its port); `*.example.com` takes one label.
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<FileHeaderMatch>,
    #[serde(default)]
    query: BTreeMap<String, String>,
    // What to do: exactly one.
    cluster: Option<String>,
    cluster_header: Option<String>,
    #[serde(default)]
    backends: Vec<FileBackend>,
    direct_response: Option<FileDirectResponse>,
    redirect: Option<FileRedirect>,
    // On the way.
    rewrite: Option<FileRewrite>,
    request_headers: Option<FileHeaderMods>,
    response_headers: Option<FileHeaderMods>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHeaderMatch {
    name: String,
    exact: Option<String>,
    regex: Option<String>,
    #[serde(default)]
    present: bool,
    #[serde(default)]
    invert: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    cluster: String,
    #[serde(default = "unit_weight")]
    weight: u32,
}

fn unit_weight() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRedirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    prefix: Option<String>,
    /// Envoy's default, 301.
    #[serde(default = "moved_permanently")]
    status: u16,
}

fn moved_permanently() -> u16 {
    301
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRewrite {
    path: Option<String>,
    prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHeaderMods {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDirectResponse {
    status: u16,
    #[serde(default)]
    body: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFilter {
    name: String,
    /// A path, `file://`, `oci://` or `http(s)://`.
    module: String,
    /// The digest to check: the manifest's for oci://, the module's otherwise.
    sha256: Option<String>,
    root_id: Option<String>,
    vm_id: Option<String>,
    configuration: Option<serde_json::Value>,
    vm_configuration: Option<serde_json::Value>,
    #[serde(default)]
    fail: FailPolicy,
    /// Envoy's option of the same name: Pause on headers stops only the headers.
    #[serde(default)]
    allow_on_headers_stop_iteration: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    log_level: Option<String>,
    #[serde(default)]
    limits: FileLimits,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum FailPolicy {
    Open,
    #[default]
    Closed,
}

/// A filter's sandbox (see `VmLimits` for what each one bounds).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    memory: Option<String>,
    table_elements: Option<usize>,
    callback_timeout: Option<String>,
    startup_timeout: Option<String>,
    max_restarts_per_minute: Option<u32>,
    shared_data_keys: Option<usize>,
    shared_data_bytes: Option<String>,
    queues: Option<usize>,
    queue_depth: Option<usize>,
    callouts_in_flight: Option<usize>,
    callout_timeout: Option<String>,
    metrics: Option<usize>,
    log_bytes_per_call: Option<String>,
    module_size: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileNode {
    id: Option<String>,
    cluster: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Parses "250ms", "1.5s", "2m", "1h" (see `meshwork_units`).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    meshwork_units::parse_duration(text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A timeout that "0" or "none" turns off.
fn parse_timeout(text: &str) -> anyhow::Result<Option<Duration>> {
    if text.trim() == "none" {
        return Ok(None);
    }
    Ok(Some(parse_duration(text)?).filter(|d| !d.is_zero()))
}

/// Parses "64MiB", "512KiB", "1GiB", "1048576".
pub fn parse_size(text: &str) -> anyhow::Result<usize> {
    let bytes = meshwork_units::parse_size(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    usize::try_from(bytes).with_context(|| format!("size {text:?} is too large"))
}

/// A CIDR range like `10.0.0.0/8` or `::1/128`; a bare address is one host.
pub fn parse_cidr(text: &str) -> anyhow::Result<IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .with_context(|| format!("{text:?} is not a CIDR range like 10.0.0.0/8 or an IP address"))
}

pub fn parse_addr(text: &str, what: &str) -> anyhow::Result<SocketAddr> {
    text.parse().with_context(|| format!("{what} {text:?} is not an IP address with a port, like 127.0.0.1:8080"))
}

pub fn parse_log_level(text: &str) -> anyhow::Result<LogLevel> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "warn" | "warning" => LogLevel::Warn,
        "error" => LogLevel::Error,
        "critical" => LogLevel::Critical,
        other => {
            bail!("log level {other:?} is not one of trace, debug, info, warn, error, critical")
        }
    })
}

/// A configuration value as the bytes `proxy_on_configure` receives: strings as they are,
/// anything else as JSON.
pub fn configuration_bytes(value: Option<&serde_json::Value>) -> anyhow::Result<Bytes> {
    Ok(match value {
        None | Some(serde_json::Value::Null) => Bytes::new(),
        Some(serde_json::Value::String(s)) => Bytes::from(s.clone()),
        Some(other) => Bytes::from(serde_json::to_vec(other).context("configuration cannot be written as JSON")?),
    })
}

/// The process-wide connection cap when none is configured: what the descriptor limit allows,
/// with half the descriptors kept for upstream connections and some for everything else.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through the valid pointer.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 1024 };
    let soft = usize::try_from(soft).unwrap_or(usize::MAX).min(1 << 24);
    (soft.saturating_sub(128) / 2).max(16)
}

impl ProxyConfig {
    pub fn load(path: &Path) -> anyhow::Result<ProxyConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let file: File = meshwork_yaml::from_str(&text)
            .map_err(anyhow::Error::new)
            .with_context(|| format!("config {} is not valid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        ProxyConfig::from_file(file, base).with_context(|| format!("config {} is not valid", path.display()))
    }

    fn from_file(file: File, base: &Path) -> anyhow::Result<ProxyConfig> {
        let clusters =
            file.clusters.into_iter().map(|c| cluster_config(c, base)).collect::<anyhow::Result<Vec<_>>>()?;
        let mut listeners = Vec::new();
        match file.listen {
            Some(listen) => listeners.push(listener_spec(
                FileListenerEntry {
                    name: Some("main".into()),
                    listen,
                    protocol: Protocol::Http,
                    listener: file.listener,
                    route: file.route,
                    routes: file.routes,
                    filters: file.filters,
                    filter_chain: file.filter_chain,
                    cluster: None,
                },
                "",
                base,
            )?),
            None => {
                if file.route.is_some() || !file.routes.is_empty() || !file.filters.is_empty() {
                    bail!(
                        "route, routes and filters at the top level need `listen:` (or move them into a `listeners:` entry)"
                    );
                }
            }
        }
        for (i, entry) in file.listeners.into_iter().enumerate() {
            listeners.push(listener_spec(entry, &format!("listeners[{i}]"), base)?);
        }
        let services = file
            .services
            .into_iter()
            .map(|f| filter_config(f, base))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("services")?;
        let config = ProxyConfig {
            listeners,
            admin: file.admin.as_deref().map(|a| parse_addr(a, "admin")).transpose()?,
            admin_allow_non_loopback: file.admin_allow_non_loopback,
            workers: file.workers,
            max_connections: file.limits.max_connections,
            clusters,
            services,
            resolve: BTreeMap::new(),
            node: NodeInfo {
                id: file.node.id.unwrap_or_else(|| "meshwork".into()),
                cluster: file.node.cluster.unwrap_or_default(),
                metadata: file.node.metadata,
                metadata_maps: BTreeMap::new(),
            },
            cache_dir: file.cache_dir.map(|d| base.join(d)),
            federation: file.federation.map(|mut f| f.resolve(base).map(|()| f)).transpose()?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: references between sections, counts, duplicates.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.workers == 0 || self.workers > 256 {
            bail!("workers must be between 1 and 256 (got {})", self.workers);
        }
        if self.listeners.is_empty() && self.services.is_empty() {
            bail!("no listener: add `listen:` (and a route) or a `listeners:` entry");
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.clusters {
            if !names.insert(c.name.as_str()) {
                bail!("cluster {:?} is defined twice", c.name);
            }
            if c.endpoints.is_empty() {
                bail!("cluster {:?} has no endpoints", c.name);
            }
            if let Some(b) = c.retry_budget
                && !(b.percent > 0.0 && b.percent <= 100.0)
            {
                bail!("cluster {:?} retry_budget.percent must be in (0, 100] (got {})", c.name, b.percent);
            }
        }
        let mut listener_names = std::collections::HashSet::new();
        let mut addresses = std::collections::HashSet::new();
        for l in &self.listeners {
            let what = format!("listener {:?}", l.name);
            if !listener_names.insert(l.name.as_str()) {
                bail!("{what} is defined twice; give each listener its own name");
            }
            if l.address.port() != 0 && !addresses.insert(l.address) {
                bail!("{what}: {} is already the address of another listener", l.address);
            }
            let s = &l.settings;
            if s.buffer_limit < 1024 {
                bail!("{what}: buffer_limit must be at least 1KiB (got {} bytes)", s.buffer_limit);
            }
            if s.max_connections == Some(0) {
                bail!("{what}: max_connections must be at least 1 (leave it out for no limit)");
            }
            if s.max_requests_per_connection == Some(0) {
                bail!("{what}: max_requests_per_connection must be at least 1 (leave it out for no limit)");
            }
            match &l.kind {
                ListenerKind::Http(h) => {
                    if h.routes.is_empty() {
                        bail!("{what} has no route: add `route: {{cluster: NAME}}`");
                    }
                    if h.filter_buffer_limit.is_some_and(|b| b < 1024) {
                        bail!("{what}: filter_chain.buffer_limit must be at least 1KiB");
                    }
                    for r in &h.routes {
                        if let Some(c) = r.target.clusters().into_iter().find(|c| !names.contains(*c)) {
                            bail!("route {:?} points at cluster {:?}, which is not defined", r.name, c)
                        }
                        match &r.target {
                            RouteTarget::ClusterHeader(h) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                                bail!("route {:?} cluster_header {:?} is not a valid header name", r.name, h)
                            }
                            RouteTarget::Direct { status, .. } if !(200..600).contains(status) => {
                                bail!("route {:?} direct_response status {status} is not an HTTP status", r.name)
                            }
                            _ => {}
                        }
                        if r.matcher.path.is_literal() && !r.matcher.path.text().starts_with('/') {
                            bail!("route {:?} path {:?} must start with /", r.name, r.matcher.path.text());
                        }
                    }
                }
                ListenerKind::Tcp(t) => {
                    if !names.contains(t.cluster.as_str()) {
                        bail!("{what} proxies to cluster {:?}, which is not defined", t.cluster);
                    }
                }
            }
        }
        if self.max_connections == Some(0) {
            bail!("limits.max_connections must be at least 1 (leave it out for the default)");
        }
        if let Some(admin) = self.admin
            && !admin.ip().is_loopback()
            && !self.admin_allow_non_loopback
        {
            bail!(
                "admin {admin} is not a loopback address: anyone who reaches it can stop and reload the proxy \
                 (set admin_allow_non_loopback: true if that is what you want)"
            );
        }
        let mut filter_names = std::collections::HashSet::new();
        for f in self.all_filters() {
            if !filter_names.insert(f.plugin.name.as_str()) {
                bail!("filter {:?} is defined twice; give each filter its own name", f.plugin.name);
            }
        }
        Ok(())
    }
}

fn cluster_config(c: FileCluster, base: &Path) -> anyhow::Result<ClusterConfig> {
    let what = format!("cluster {}", c.name);
    let endpoints = c
        .endpoints
        .iter()
        .map(|e| EndpointConfig::parse(e, &format!("{what} endpoint")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let connect_timeout = c
        .connect_timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .with_context(|| format!("{what} connect_timeout"))?
        .unwrap_or(Duration::from_secs(5));
    let retry_budget = c
        .retry_budget
        .map(|b| RetryBudget { percent: b.percent.unwrap_or(20.0), min_concurrency: b.min_concurrency.unwrap_or(3) });
    let tls = c.tls.map(|t| client_tls(t, base)).transpose().with_context(|| format!("{what} tls"))?;
    let dns_refresh = c
        .dns_refresh
        .as_deref()
        .map(parse_duration)
        .transpose()
        .with_context(|| format!("{what} dns_refresh"))?
        .unwrap_or(Duration::from_secs(5));
    Ok(ClusterConfig {
        name: c.name,
        endpoints,
        connect_timeout,
        max_retries: c.max_retries.unwrap_or(3),
        retry_budget,
        http2: c.http2,
        tls,
        dns_refresh,
    })
}

fn client_tls(t: FileClientTls, base: &Path) -> anyhow::Result<ClientTlsSpec> {
    use crate::tls::client::Trust;
    let trust = match t.trust.as_deref() {
        None | Some("public") => Trust::PublicRoots,
        Some("any") => Trust::Any,
        Some(path) => Trust::Ca(crate::tls::files::resolve(base, Path::new(path))),
    };
    if t.cert.is_some() != t.key.is_some() {
        bail!("a client certificate needs both cert and key");
    }
    Ok(ClientTlsSpec {
        trust,
        sni: t.sni,
        verify_san: t.verify_san,
        cert: t.cert.map(|p| crate::tls::files::resolve(base, &p)),
        key: t.key.map(|p| crate::tls::files::resolve(base, &p)),
        alpn: t.alpn,
        min_version: t.min_version,
        max_version: t.max_version,
    })
}

fn server_tls(t: FileServerTls, base: &Path, default_alpn: &[&str]) -> anyhow::Result<ServerTlsSpec> {
    if t.certificates.is_empty() {
        bail!("tls.certificates needs at least one {{cert, key}}");
    }
    if t.require_client_certificate && t.client_ca.is_none() {
        bail!("tls.require_client_certificate needs tls.client_ca (the CA client certificates must chain to)");
    }
    let resolve = |p: &Path| crate::tls::files::resolve(base, p);
    Ok(ServerTlsSpec {
        certificates: t
            .certificates
            .into_iter()
            .map(|c| CertificateSpec { cert: resolve(&c.cert), key: resolve(&c.key), server_names: c.server_names })
            .collect(),
        client_ca: t.client_ca.as_deref().map(resolve),
        require_client_certificate: t.require_client_certificate,
        alpn: t.alpn.unwrap_or_else(|| default_alpn.iter().map(|s| (*s).to_owned()).collect()),
        min_version: t.min_version,
        max_version: t.max_version,
    })
}

fn route_config(r: FileRoute) -> anyhow::Result<RouteConfig> {
    let name = r.name.unwrap_or_else(|| "default".into());
    let backends = (!r.backends.is_empty()).then_some(r.backends);
    let target = match (r.cluster, r.cluster_header, backends, r.direct_response, r.redirect) {
        (Some(c), None, None, None, None) => RouteTarget::Cluster(c),
        (None, Some(h), None, None, None) => RouteTarget::ClusterHeader(h.to_ascii_lowercase()),
        (None, None, Some(b), None, None) => {
            if b.iter().all(|b| b.weight == 0) {
                bail!("route {name:?}: backends need at least one weight above 0");
            }
            RouteTarget::Weighted(b.into_iter().map(|b| (b.cluster, b.weight)).collect())
        }
        (None, None, None, Some(d), None) => RouteTarget::Direct { status: d.status, body: Bytes::from(d.body) },
        (None, None, None, None, Some(d)) => RouteTarget::Redirect(Redirect {
            scheme: d.scheme,
            host: d.host,
            port: d.port,
            path: rewrite(d.path, d.prefix).with_context(|| format!("route {name:?} redirect"))?,
            status: match d.status {
                301 | 302 | 303 | 307 | 308 => d.status,
                s => bail!("route {name:?} redirect status {s}: use 301, 302, 303, 307 or 308"),
            },
        }),
        _ => {
            bail!("route {name:?} needs exactly one of cluster, cluster_header, backends, direct_response or redirect")
        }
    };
    let path = match (r.prefix, r.path, r.path_separated_prefix, r.regex) {
        (Some(p), None, None, None) => PathMatch::Prefix(p),
        (None, Some(p), None, None) => PathMatch::Exact(p),
        (None, None, Some(p), None) => PathMatch::SeparatedPrefix(p),
        (None, None, None, Some(p)) => PathMatch::regex(&p).with_context(|| format!("route {name:?} regex"))?,
        (None, None, None, None) => PathMatch::Prefix("/".into()),
        _ => bail!("route {name:?}: give one of prefix, path, path_separated_prefix or regex"),
    };
    let methods = r
        .methods
        .iter()
        .map(|m| http::Method::from_bytes(m.as_bytes()).with_context(|| format!("route {name:?} method {m:?}")))
        .collect::<anyhow::Result<_>>()?;
    let headers = r
        .headers
        .into_iter()
        .map(|h| {
            let header = header_name(&h.name).with_context(|| format!("route {name:?} header match"))?;
            let value = match (h.exact, h.regex, h.present) {
                (Some(e), None, false) => ValueMatch::Exact(e),
                (None, Some(r), false) => ValueMatch::Regex(
                    regex::Regex::new(&format!("^(?:{r})$"))
                        .with_context(|| format!("route {name:?} header {}", h.name))?,
                ),
                (None, None, true) => ValueMatch::Present,
                _ => bail!("route {name:?} header {}: give one of exact, regex or present: true", h.name),
            };
            Ok(HeaderMatch { name: header, value, invert: h.invert })
        })
        .collect::<anyhow::Result<_>>()?;
    let timeout = match r.timeout.as_deref() {
        None => Some(Duration::from_secs(15)),
        Some(t) => parse_timeout(t).with_context(|| format!("route {name:?} timeout"))?,
    };
    let rewrite = match r.rewrite {
        Some(w) => rewrite(w.path, w.prefix).with_context(|| format!("route {name:?} rewrite"))?,
        None => None,
    };
    let mods = |m: Option<FileHeaderMods>, which: &str| -> anyhow::Result<HeaderMods> {
        let Some(m) = m else { return Ok(HeaderMods::default()) };
        let pairs = |map: BTreeMap<String, String>| -> anyhow::Result<Vec<_>> {
            map.into_iter()
                .map(|(k, v)| {
                    let value = http::HeaderValue::from_str(&v).with_context(|| format!("header {k} value {v:?}"))?;
                    Ok((header_name(&k)?, value))
                })
                .collect()
        };
        (|| -> anyhow::Result<HeaderMods> {
            Ok(HeaderMods {
                set: pairs(m.set)?,
                add: pairs(m.add)?,
                remove: m.remove.iter().map(|k| header_name(k)).collect::<anyhow::Result<_>>()?,
            })
        })()
        .with_context(|| format!("route {name:?} {which}"))
    };
    let request_headers = mods(r.request_headers, "request_headers")?;
    let response_headers = mods(r.response_headers, "response_headers")?;
    let hosts = r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    let matcher = RouteMatch { path, hosts, methods, headers, query: r.query.into_iter().collect() };
    Ok(RouteConfig { name, matcher, target, timeout, rewrite, request_headers, response_headers })
}

fn header_name(name: &str) -> anyhow::Result<http::HeaderName> {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| anyhow::anyhow!("{name:?} is not a valid header name"))
}

/// A rewrite given as a whole path or as a prefix replacement (one of them, or neither).
fn rewrite(path: Option<String>, prefix: Option<String>) -> anyhow::Result<Option<PathRewrite>> {
    match (path, prefix) {
        (Some(p), None) => Ok(Some(PathRewrite::Full(p))),
        (None, Some(p)) => Ok(Some(PathRewrite::Prefix(p))),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => bail!("give path or prefix, not both"),
    }
}

fn filter_config(f: FileFilter, base: &Path) -> anyhow::Result<FilterConfig> {
    let mut plugin = PluginConfig::new(&f.name);
    plugin.root_id = f.root_id.unwrap_or_default();
    plugin.vm_id = f.vm_id.unwrap_or_default();
    plugin.configuration =
        configuration_bytes(f.configuration.as_ref()).with_context(|| format!("filter {}", f.name))?;
    plugin.vm_configuration =
        configuration_bytes(f.vm_configuration.as_ref()).with_context(|| format!("filter {}", f.name))?;
    plugin.fail_open = f.fail == FailPolicy::Open;
    plugin.allow_on_headers_stop_iteration = f.allow_on_headers_stop_iteration;
    plugin.env = f.env.into_iter().collect();
    if let Some(level) = f.log_level {
        plugin.log_level = parse_log_level(&level).with_context(|| format!("filter {}", f.name))?;
    }
    plugin.limits = vm_limits(f.limits).with_context(|| format!("filter {} limits", f.name))?;
    let (module, source) = ModuleSource::parse(&f.module, f.sha256, base);
    Ok(FilterConfig { module, source, plugin })
}

fn listener_spec(entry: FileListenerEntry, path: &str, base: &Path) -> anyhow::Result<ListenerSpec> {
    let name = entry.name.unwrap_or_else(|| if path.is_empty() { "main".into() } else { path.to_owned() });
    let what = format!("listener {name:?}");
    let address = parse_addr(&entry.listen, &format!("{what} listen"))?;
    let proxy_protocol = entry.listener.proxy_protocol;
    let tls_file = entry.listener.tls;
    let settings = listener_config(FileListener { tls: None, ..entry.listener }).with_context(|| what.clone())?;
    let filters = entry
        .filters
        .into_iter()
        .map(|f| filter_config(f, base))
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| what.clone())?;
    let (kind, alpn): (ListenerKind, &[&str]) = match entry.protocol {
        Protocol::Http => {
            if entry.cluster.is_some() {
                bail!("{what}: `cluster` is for TCP listeners; an HTTP listener routes with `route`/`routes`");
            }
            let routes = entry
                .route
                .into_iter()
                .chain(entry.routes)
                .map(route_config)
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| what.clone())?;
            let filter_buffer_limit = entry
                .filter_chain
                .buffer_limit
                .as_deref()
                .map(parse_size)
                .transpose()
                .with_context(|| format!("{what} filter_chain.buffer_limit"))?;
            (
                ListenerKind::Http(HttpListener { routes, first_match: false, filters, filter_buffer_limit }),
                &["h2", "http/1.1"],
            )
        }
        Protocol::Tcp => {
            if entry.route.is_some() || !entry.routes.is_empty() {
                bail!("{what}: a TCP listener has no routes; it proxies to `cluster`");
            }
            let cluster = entry.cluster.with_context(|| format!("{what}: a TCP listener needs `cluster`"))?;
            (ListenerKind::Tcp(TcpListener { cluster, filters }), &[])
        }
    };
    let tls = tls_file.map(|t| server_tls(t, base, alpn)).transpose().with_context(|| what.clone())?;
    Ok(ListenerSpec { name, address, settings, tls, proxy_protocol, kind })
}

fn listener_config(f: FileListener) -> anyhow::Result<ListenerConfig> {
    let d = ListenerConfig::default();
    let timeout = |v: Option<String>, name: &str, default: Option<Duration>| -> anyhow::Result<Option<Duration>> {
        match v {
            None => Ok(default),
            Some(t) => parse_timeout(&t).with_context(|| format!("listener.{name}")),
        }
    };
    Ok(ListenerConfig {
        buffer_limit: f
            .buffer_limit
            .as_deref()
            .map(parse_size)
            .transpose()
            .context("listener.buffer_limit")?
            .unwrap_or(d.buffer_limit),
        request_headers_timeout: timeout(
            f.request_headers_timeout,
            "request_headers_timeout",
            d.request_headers_timeout,
        )?,
        idle_timeout: timeout(f.idle_timeout, "idle_timeout", d.idle_timeout)?,
        stream_idle_timeout: timeout(f.stream_idle_timeout, "stream_idle_timeout", d.stream_idle_timeout)?,
        max_requests_per_connection: f.max_requests_per_connection,
        max_connection_duration: timeout(f.max_connection_duration, "max_connection_duration", None)?,
        drain_timeout: timeout(f.drain_timeout, "drain_timeout", Some(d.drain_timeout))?.unwrap_or_default(),
        max_connections: f.max_connections,
        trusted_clients: f
            .trusted_clients
            .iter()
            .map(|c| parse_cidr(c))
            .collect::<anyhow::Result<_>>()
            .context("listener.trusted_clients")?,
        use_remote_address: f.use_remote_address.unwrap_or(d.use_remote_address),
        xff_trusted_hops: f.xff_trusted_hops.unwrap_or(0),
        direction: d.direction,
    })
}

fn vm_limits(f: FileLimits) -> anyhow::Result<VmLimits> {
    let mut l = VmLimits::default();
    let size =
        |v: &Option<String>, name: &str| v.as_deref().map(parse_size).transpose().with_context(|| name.to_owned());
    let time =
        |v: &Option<String>, name: &str| v.as_deref().map(parse_duration).transpose().with_context(|| name.to_owned());
    if let Some(m) = size(&f.memory, "memory")? {
        l.max_memory_bytes = m;
    }
    if let Some(t) = time(&f.callback_timeout, "callback_timeout")? {
        l.callback_timeout = t;
    }
    if let Some(t) = time(&f.startup_timeout, "startup_timeout")? {
        l.startup_timeout = t;
    }
    if let Some(t) = time(&f.callout_timeout, "callout_timeout")? {
        if t.is_zero() {
            bail!("callout_timeout must be longer than 0 (it is the longest a callout may wait)");
        }
        l.max_callout_timeout = t;
    }
    if let Some(b) = size(&f.shared_data_bytes, "shared_data_bytes")? {
        l.max_shared_data_bytes = b;
    }
    if let Some(b) = size(&f.log_bytes_per_call, "log_bytes_per_call")? {
        l.max_log_bytes_per_call = b;
    }
    if let Some(b) = size(&f.module_size, "module_size")? {
        l.max_module_bytes = b as u64;
    }
    let counts = [
        (f.table_elements, &mut l.max_table_elements),
        (f.shared_data_keys, &mut l.max_shared_data_keys),
        (f.queues, &mut l.max_queues),
        (f.queue_depth, &mut l.max_queue_depth),
        (f.callouts_in_flight, &mut l.max_callouts_in_flight),
        (f.metrics, &mut l.max_metrics),
    ];
    for (value, slot) in counts {
        if let Some(v) = value {
            *slot = v;
        }
    }
    if let Some(n) = f.max_restarts_per_minute {
        l.max_restarts_per_minute = n;
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> anyhow::Result<ProxyConfig> {
        let file: File = meshwork_yaml::from_str(yaml)?;
        ProxyConfig::from_file(file, Path::new("/cfg"))
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
listen: 127.0.0.1:10000
admin: 127.0.0.1:9901
workers: 2
clusters: [{name: app, endpoints: ["127.0.0.1:8080"]}]
route: {cluster: app, timeout: 2s}
filters:
  - name: rl
    module: rl.wasm
    configuration: {rate: 5}
    fail: open
    limits: {memory: 16MiB, callback_timeout: 20ms}
  - name: raw
    module: /abs/raw.wasm
    configuration: "plain text"
"#,
        )
        .unwrap();
        assert_eq!(c.workers, 2);
        let main = c.listeners[0].http().unwrap();
        assert_eq!(main.routes[0].timeout, Some(Duration::from_secs(2)));
        assert_eq!(main.filters[0].module, PathBuf::from("/cfg/rl.wasm"));
        assert_eq!(&main.filters[0].plugin.configuration[..], br#"{"rate":5}"#);
        assert!(main.filters[0].plugin.fail_open);
        assert_eq!(main.filters[0].plugin.limits.max_memory_bytes, 16 << 20);
        assert_eq!(main.filters[1].module, PathBuf::from("/abs/raw.wasm"));
        assert_eq!(&main.filters[1].plugin.configuration[..], b"plain text");
        assert!(!main.filters[1].plugin.fail_open);
    }

    #[test]
    fn listeners_of_both_kinds_with_tls() {
        let c = parse(
            r#"
clusters:
  - {name: app, endpoints: ["app.internal:8080"], http2: true, tls: {trust: ca.pem, sni: app.internal, cert: c.pem, key: k.pem}}
  - {name: db, endpoints: ["127.0.0.1:5432"]}
listeners:
  - name: web
    listen: 127.0.0.1:8443
    listener: {tls: {certificates: [{cert: s.pem, key: s.key, server_names: [a.example]}], client_ca: ca.pem, require_client_certificate: true}, proxy_protocol: true}
    routes: [{path: /exact, direct_response: {status: 204}}, {prefix: /, cluster: app}]
  - name: db
    listen: 127.0.0.1:15432
    protocol: tcp
    cluster: db
    filters: [{name: net, module: net.wasm}]
"#,
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 2);
        let web = &c.listeners[0];
        let tls = web.tls.as_ref().unwrap();
        assert_eq!(tls.certificates[0].cert, PathBuf::from("/cfg/s.pem"));
        assert_eq!(tls.alpn, ["h2", "http/1.1"]);
        assert!(tls.require_client_certificate && web.proxy_protocol);
        let routes = &web.http().unwrap().routes;
        assert_eq!(routes[0].matcher.path, PathMatch::Exact("/exact".into()));
        assert!(matches!(routes[0].target, RouteTarget::Direct { status: 204, .. }));
        assert!(matches!(&c.listeners[1].kind, ListenerKind::Tcp(t) if t.cluster == "db" && t.filters.len() == 1));
        let app = &c.clusters[0];
        assert_eq!(app.endpoints[0], EndpointConfig::Name { host: "app.internal".into(), port: 8080 });
        assert!(app.http2);
        assert_eq!(app.tls.as_ref().unwrap().sni.as_deref(), Some("app.internal"));
    }

    #[test]
    fn routes_match_methods_headers_and_query_and_act_on_requests() {
        let c = parse(
            r#"
listen: 127.0.0.1:1
clusters: [{name: v1, endpoints: ["127.0.0.1:2"]}, {name: v2, endpoints: ["127.0.0.1:3"]}]
routes:
  - name: split
    path_separated_prefix: /split
    methods: [GET, POST]
    headers: [{name: Version, exact: two}, {name: x-any, present: true}, {name: x-re, regex: "a+"}]
    query: {lang: en}
    backends: [{cluster: v1, weight: 70}, {cluster: v2, weight: 30}]
    rewrite: {prefix: /}
    request_headers: {set: {x-set: "1"}, add: {x-add: "2"}, remove: [x-gone]}
    response_headers: {set: {x-out: "3"}}
  - {name: moved, regex: "/old/[0-9]+", redirect: {scheme: https, port: 8443, path: /new, status: 308}}
"#,
        )
        .unwrap();
        let routes = &c.listeners[0].http().unwrap().routes;
        let m = &routes[0].matcher;
        assert_eq!(m.path, PathMatch::SeparatedPrefix("/split".into()));
        assert_eq!(m.methods, [http::Method::GET, http::Method::POST]);
        assert_eq!(m.headers[0].name, "version");
        assert!(
            matches!(m.headers[1].value, ValueMatch::Present) && matches!(m.headers[2].value, ValueMatch::Regex(_))
        );
        assert_eq!(m.query, [("lang".to_owned(), "en".to_owned())]);
        assert_eq!(routes[0].target, RouteTarget::Weighted(vec![("v1".into(), 70), ("v2".into(), 30)]));
        assert_eq!(routes[0].rewrite, Some(PathRewrite::Prefix("/".into())));
        assert_eq!(routes[0].request_headers.remove, ["x-gone"]);
        let RouteTarget::Redirect(r) = &routes[1].target else { panic!("not a redirect") };
        assert_eq!((r.scheme.as_deref(), r.port, r.status), (Some("https"), Some(8443), 308));
        assert!(routes[1].matcher.path.matches("/old/12") && !routes[1].matcher.path.matches("/old/12/x"));
        let err = |routes: &str| {
            format!(
                "{:#}",
                parse(&format!(
                    "listen: 127.0.0.1:1\nclusters: [{{name: v1, endpoints: [\"127.0.0.1:2\"]}}]\nroutes: [{routes}]"
                ))
                .unwrap_err()
            )
        };
        assert!(err("{backends: [{cluster: v1, weight: 0}]}").contains("at least one weight above 0"));
        assert!(err("{backends: [{cluster: nope}]}").contains("cluster \"nope\", which is not defined"));
        assert!(err("{redirect: {status: 200}}").contains("use 301, 302, 303, 307 or 308"));
        assert!(err("{cluster: v1, regex: \"(\"}").contains("regex"));
        assert!(err("{cluster: v1, prefix: /a, path: /b}").contains("give one of prefix"));
        assert!(err("{cluster: v1, headers: [{name: a}]}").contains("give one of exact, regex or present"));
        assert!(err("{cluster: v1, methods: [\"G T\"]}").contains("method"));
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |y: &str| format!("{:#}", parse(y).unwrap_err());
        assert!(err("listen: nowhere\nclusters: []\nroute: {cluster: a}").contains("listen \"nowhere\""));
        assert!(
            err("listen: 127.0.0.1:1\nclusters: []\nroute: {cluster: a}")
                .contains("cluster \"a\", which is not defined")
        );
        assert!(
            err("listen: 127.0.0.1:1\nclusters: []\nroute: {cluster: a}\nbogus: 1").contains("unknown field `bogus`")
        );
        assert!(
            err("listen: 127.0.0.1:1\nclusters: [{name: a, endpoints: [\"127.0.0.1:2\"]}]\nroute: {cluster: a, timeout: 5 parsecs}")
                .contains("unknown unit")
        );
        assert!(
            err("listen: 127.0.0.1:1\nclusters: [{name: a, endpoints: [\"127.0.0.1:2\"]}]\nroute: {cluster: a}\nfilters: [{name: f, module: m, fail: sideways}]")
                .contains("unknown variant `sideways`")
        );
        assert!(
            err("clusters: []\nlisteners: [{listen: 127.0.0.1:1, protocol: tcp, cluster: nope}]")
                .contains("proxies to cluster \"nope\", which is not defined")
        );
        assert!(
            err("clusters: []\nlisteners: [{listen: 127.0.0.1:1, protocol: tcp}]")
                .contains("a TCP listener needs `cluster`")
        );
        assert!(
            err("listen: 127.0.0.1:1\nclusters: [{name: a, endpoints: [\"127.0.0.1:2\"]}]\nroute: {cluster: a}\nlistener: {tls: {certificates: [{cert: a, key: b}], require_client_certificate: true}}")
                .contains("needs tls.client_ca")
        );
        assert!(
            err("listen: 127.0.0.1:1\nclusters: [{name: a, endpoints: [\"nohost\"]}]\nroute: {cluster: a}")
                .contains("needs a port")
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("1PB").is_err());
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10").is_err());
    }
}
