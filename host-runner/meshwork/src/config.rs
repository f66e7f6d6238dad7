//! `meshwork run --config FILE`: the native YAML configuration, and the model both it and the
//! Envoy bootstrap translation produce.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use ipnet::IpNet;
use meshwork_wasm_host::abi::LogLevel;
use meshwork_wasm_host::{NodeInfo, PluginConfig, VmLimits};
use serde::Deserialize;

/// Everything `meshwork run` needs, whichever file it came from.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// The admin listener may bind a non-loopback address (it can stop and reload the proxy).
    pub admin_allow_non_loopback: bool,
    pub workers: usize,
    pub listener: ListenerConfig,
    /// Most client connections the whole process holds (every listener, every worker); by
    /// default what the descriptor limit allows (see [`default_max_connections`]).
    pub max_connections: Option<usize>,
    pub clusters: Vec<ClusterConfig>,
    pub routes: Vec<RouteConfig>,
    pub filters: Vec<FilterConfig>,
    /// Body bytes a stream through the filters may hold per direction (defaults to the
    /// listener's buffer limit).
    pub filter_buffer_limit: Option<usize>,
    pub node: NodeInfo,
    pub cache_dir: Option<PathBuf>,
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

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    /// Most retries in flight to the cluster at once, from every source (Envoy's
    /// `circuit_breakers.thresholds.max_retries`, default 3).
    pub max_retries: u32,
    /// When set, retries in flight are capped by this share of active requests instead
    /// (Envoy's `retry_budget`).
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Retries in flight may be this percentage of the requests in flight…
    pub percent: f64,
    /// …but at least this many.
    pub min_concurrency: u32,
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub name: String,
    /// Requests whose path starts with this go to this route ("/" matches all).
    pub prefix: String,
    pub target: RouteTarget,
    /// The whole-request timeout (Envoy's route timeout); None disables it.
    pub timeout: Option<Duration>,
}

/// Where a route sends its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    Cluster(String),
    /// The cluster named by this request header, as set by a filter (Envoy's `cluster_header`,
    /// how the traffic-split filter picks a version).
    ClusterHeader(String),
}

#[derive(Clone, Debug)]
pub struct FilterConfig {
    pub module: PathBuf,
    pub plugin: PluginConfig,
}

// ----- the native file -----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: String,
    admin: Option<String>,
    #[serde(default)]
    admin_allow_non_loopback: bool,
    #[serde(default = "one")]
    workers: usize,
    #[serde(default)]
    listener: FileListener,
    #[serde(default)]
    limits: FileProcessLimits,
    clusters: Vec<FileCluster>,
    route: Option<FileRoute>,
    #[serde(default)]
    routes: Vec<FileRoute>,
    #[serde(default)]
    filters: Vec<FileFilter>,
    #[serde(default)]
    filter_chain: FileFilterChain,
    #[serde(default)]
    node: FileNode,
    cache_dir: Option<PathBuf>,
}

fn one() -> usize {
    1
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
    cluster: Option<String>,
    cluster_header: Option<String>,
    name: Option<String>,
    prefix: Option<String>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFilter {
    name: String,
    module: PathBuf,
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
        let clusters = file
            .clusters
            .into_iter()
            .map(|c| {
                let what = format!("cluster {}", c.name);
                let endpoints = c
                    .endpoints
                    .iter()
                    .map(|e| parse_addr(e, &format!("{what} endpoint")))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let connect_timeout = c
                    .connect_timeout
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .with_context(|| format!("{what} connect_timeout"))?
                    .unwrap_or(Duration::from_secs(5));
                let retry_budget = c.retry_budget.map(|b| RetryBudget {
                    percent: b.percent.unwrap_or(20.0),
                    min_concurrency: b.min_concurrency.unwrap_or(3),
                });
                Ok(ClusterConfig {
                    name: c.name,
                    endpoints,
                    connect_timeout,
                    max_retries: c.max_retries.unwrap_or(3),
                    retry_budget,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let listener = listener_config(file.listener)?;
        let mut routes = Vec::new();
        for r in file.route.into_iter().chain(file.routes) {
            let name = r.name.unwrap_or_else(|| "default".into());
            let target = match (r.cluster, r.cluster_header) {
                (Some(c), None) => RouteTarget::Cluster(c),
                (None, Some(h)) => RouteTarget::ClusterHeader(h.to_ascii_lowercase()),
                _ => bail!("route {name:?} needs exactly one of cluster or cluster_header"),
            };
            let timeout = match r.timeout.as_deref() {
                None => Some(Duration::from_secs(15)),
                Some(t) => parse_timeout(t).with_context(|| format!("route {name:?} timeout"))?,
            };
            routes.push(RouteConfig { name, prefix: r.prefix.unwrap_or_else(|| "/".into()), target, timeout });
        }
        let mut filters = Vec::new();
        for f in file.filters {
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
            filters.push(FilterConfig { module: base.join(&f.module), plugin });
        }
        let filter_buffer_limit = file
            .filter_chain
            .buffer_limit
            .as_deref()
            .map(parse_size)
            .transpose()
            .context("filter_chain.buffer_limit")?;
        let config = ProxyConfig {
            listen: parse_addr(&file.listen, "listen")?,
            admin: file.admin.as_deref().map(|a| parse_addr(a, "admin")).transpose()?,
            admin_allow_non_loopback: file.admin_allow_non_loopback,
            workers: file.workers,
            listener,
            max_connections: file.limits.max_connections,
            clusters,
            routes,
            filters,
            filter_buffer_limit,
            node: NodeInfo {
                id: file.node.id.unwrap_or_else(|| "meshwork".into()),
                cluster: file.node.cluster.unwrap_or_default(),
                metadata: file.node.metadata,
            },
            cache_dir: file.cache_dir.map(|d| base.join(d)),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: references between sections, counts, duplicates.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.workers == 0 || self.workers > 256 {
            bail!("workers must be between 1 and 256 (got {})", self.workers);
        }
        if self.routes.is_empty() {
            bail!("no route: add `route: {{cluster: NAME}}`");
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.clusters {
            if !names.insert(c.name.as_str()) {
                bail!("cluster {:?} is defined twice", c.name);
            }
            if c.endpoints.is_empty() {
                bail!("cluster {:?} has no endpoints", c.name);
            }
        }
        for r in &self.routes {
            match &r.target {
                RouteTarget::Cluster(c) if !names.contains(c.as_str()) => {
                    bail!("route {:?} points at cluster {:?}, which is not defined", r.name, c)
                }
                RouteTarget::ClusterHeader(h) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                    bail!("route {:?} cluster_header {:?} is not a valid header name", r.name, h)
                }
                _ => {}
            }
            if !r.prefix.starts_with('/') {
                bail!("route {:?} prefix {:?} must start with /", r.name, r.prefix);
            }
        }
        if self.listener.buffer_limit < 1024 {
            bail!("listener.buffer_limit must be at least 1KiB (got {} bytes)", self.listener.buffer_limit);
        }
        if self.filter_buffer_limit.is_some_and(|b| b < 1024) {
            bail!("filter_chain.buffer_limit must be at least 1KiB");
        }
        if self.max_connections == Some(0) || self.listener.max_connections == Some(0) {
            bail!("max_connections must be at least 1 (leave it out for the default)");
        }
        if self.listener.max_requests_per_connection == Some(0) {
            bail!("listener.max_requests_per_connection must be at least 1 (leave it out for no limit)");
        }
        for c in &self.clusters {
            if let Some(b) = c.retry_budget
                && !(b.percent > 0.0 && b.percent <= 100.0)
            {
                bail!("cluster {:?} retry_budget.percent must be in (0, 100] (got {})", c.name, b.percent);
            }
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
        for f in &self.filters {
            if !filter_names.insert(f.plugin.name.as_str()) {
                bail!("filter {:?} is defined twice; give each filter its own name", f.plugin.name);
            }
        }
        Ok(())
    }
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
        assert_eq!(c.routes[0].timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.filters[0].module, PathBuf::from("/cfg/rl.wasm"));
        assert_eq!(&c.filters[0].plugin.configuration[..], br#"{"rate":5}"#);
        assert!(c.filters[0].plugin.fail_open);
        assert_eq!(c.filters[0].plugin.limits.max_memory_bytes, 16 << 20);
        assert_eq!(c.filters[1].module, PathBuf::from("/abs/raw.wasm"));
        assert_eq!(&c.filters[1].plugin.configuration[..], b"plain text");
        assert!(!c.filters[1].plugin.fail_open);
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
