//! `meshwork run --config FILE`: the native YAML configuration, and the model both it and the
//! Envoy bootstrap translation produce.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use meshwork_wasm_host::abi::LogLevel;
use meshwork_wasm_host::{NodeInfo, PluginConfig, VmLimits};
use serde::Deserialize;

/// Everything `meshwork run` needs, whichever file it came from.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub workers: usize,
    pub clusters: Vec<ClusterConfig>,
    pub routes: Vec<RouteConfig>,
    pub filters: Vec<FilterConfig>,
    pub node: NodeInfo,
    pub cache_dir: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    pub connect_timeout: Duration,
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
    #[serde(default = "one")]
    workers: usize,
    clusters: Vec<FileCluster>,
    route: Option<FileRoute>,
    #[serde(default)]
    routes: Vec<FileRoute>,
    #[serde(default)]
    filters: Vec<FileFilter>,
    #[serde(default)]
    node: FileNode,
    cache_dir: Option<PathBuf>,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    name: String,
    endpoints: Vec<String>,
    connect_timeout: Option<String>,
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
    configuration: Option<serde_yaml::Value>,
    vm_configuration: Option<serde_yaml::Value>,
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    memory: Option<String>,
    callback_timeout: Option<String>,
    startup_timeout: Option<String>,
    max_restarts_per_minute: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileNode {
    id: Option<String>,
    cluster: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Parses "250ms", "1.5s", "2m", "1h".
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().with_context(|| format!("{text:?} is not a duration like 250ms, 2s or 1m"))?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => bail!("duration {text:?} needs a unit (ms, s, m or h)"),
        other => bail!("duration {text:?} has an unknown unit {other:?} (use ms, s, m or h)"),
    };
    Duration::try_from_secs_f64(value * scale).with_context(|| format!("duration {text:?} is out of range"))
}

/// Parses "64MiB", "512KiB", "1GiB", "1048576".
pub fn parse_size(text: &str) -> anyhow::Result<usize> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: usize = number.parse().with_context(|| format!("{text:?} is not a size like 64MiB"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => bail!("size {text:?} has an unknown unit {other:?} (use KiB, MiB or GiB)"),
    };
    n.checked_mul(scale).with_context(|| format!("size {text:?} is too large"))
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
pub fn configuration_bytes(value: Option<&serde_yaml::Value>) -> anyhow::Result<Bytes> {
    Ok(match value {
        None | Some(serde_yaml::Value::Null) => Bytes::new(),
        Some(serde_yaml::Value::String(s)) => Bytes::from(s.clone()),
        Some(other) => Bytes::from(serde_json::to_vec(other).context("configuration cannot be written as JSON")?),
    })
}

impl ProxyConfig {
    pub fn load(path: &Path) -> anyhow::Result<ProxyConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let file: File =
            serde_yaml::from_str(&text).with_context(|| format!("config {} is not valid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        ProxyConfig::from_file(file, base).with_context(|| format!("config {} is not valid", path.display()))
    }

    fn from_file(file: File, base: &Path) -> anyhow::Result<ProxyConfig> {
        let clusters = file
            .clusters
            .into_iter()
            .map(|c| {
                let endpoints = c
                    .endpoints
                    .iter()
                    .map(|e| parse_addr(e, &format!("cluster {} endpoint", c.name)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let connect_timeout =
                    c.connect_timeout.as_deref().map(parse_duration).transpose()?.unwrap_or(Duration::from_secs(5));
                Ok(ClusterConfig { name: c.name, endpoints, connect_timeout })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut routes = Vec::new();
        for r in file.route.into_iter().chain(file.routes) {
            let name = r.name.unwrap_or_else(|| "default".into());
            let target = match (r.cluster, r.cluster_header) {
                (Some(c), None) => RouteTarget::Cluster(c),
                (None, Some(h)) => RouteTarget::ClusterHeader(h.to_ascii_lowercase()),
                _ => bail!("route {name:?} needs exactly one of cluster or cluster_header"),
            };
            routes.push(RouteConfig {
                name,
                prefix: r.prefix.unwrap_or_else(|| "/".into()),
                target,
                timeout: match r.timeout.as_deref() {
                    None => Some(Duration::from_secs(15)),
                    Some("0" | "0s" | "none") => None,
                    Some(t) => Some(parse_duration(t)?),
                },
            });
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
            let mut limits = VmLimits::default();
            if let Some(m) = f.limits.memory {
                limits.max_memory_bytes = parse_size(&m).with_context(|| format!("filter {} limits.memory", f.name))?;
            }
            if let Some(t) = f.limits.callback_timeout {
                limits.callback_timeout =
                    parse_duration(&t).with_context(|| format!("filter {} limits.callback_timeout", f.name))?;
            }
            if let Some(t) = f.limits.startup_timeout {
                limits.startup_timeout =
                    parse_duration(&t).with_context(|| format!("filter {} limits.startup_timeout", f.name))?;
            }
            if let Some(n) = f.limits.max_restarts_per_minute {
                limits.max_restarts_per_minute = n;
            }
            plugin.limits = limits;
            filters.push(FilterConfig { module: base.join(&f.module), plugin });
        }
        let config = ProxyConfig {
            listen: parse_addr(&file.listen, "listen")?,
            admin: file.admin.as_deref().map(|a| parse_addr(a, "admin")).transpose()?,
            workers: file.workers,
            clusters,
            routes,
            filters,
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
        let mut filter_names = std::collections::HashSet::new();
        for f in &self.filters {
            if !filter_names.insert(f.plugin.name.as_str()) {
                bail!("filter {:?} is defined twice; give each filter its own name", f.plugin.name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> anyhow::Result<ProxyConfig> {
        let file: File = serde_yaml::from_str(yaml)?;
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
