//! `meshwork run --istio FILE...`: Istio `WasmPlugin` documents (`extensions.istio.io/v1alpha1`)
//! run as an Istio sidecar runs them on its inbound listener, so a mesh configuration can be
//! tried without a cluster.
//!
//! What the sidecar would do, and meshwork does:
//! - selection: a plugin applies when it is in the workload's namespace or in the root
//!   namespace (`istio-system`), its `selector.matchLabels` are among the workload's labels,
//!   and a `match` entry (if any) selects server-side traffic to the workload's port;
//! - order: by phase (AUTHN, AUTHZ, STATS, then UNSPECIFIED_PHASE just before the router), in a
//!   phase by `priority`, highest first (an unset priority after every set one, as pilot sorts),
//!   equal priorities in pilot's order: the workload's namespace before the root namespace, then
//!   by creation time, name and namespace;
//! - the filter: named and with vm_id `<namespace>.<name>` (so plugins never share shared data
//!   or queues), `pluginName` as root_id, `pluginConfig` as JSON, `vmConfig.env`;
//! - the listener: `virtualInbound`, one route `/` to the cluster `inbound|<port>||` at
//!   `--upstream`, route timeouts off, `listener_direction` INBOUND;
//! - the node: the id, cluster and metadata (WORKLOAD_NAME, NAMESPACE, LABELS, ...) that
//!   istio-agent gives a sidecar's Envoy.
//!
//! The documents are read again on every reload (SIGHUP, admin `POST /reload`).

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use meshwork_oci::fetch::PullPolicy;
use meshwork_wasm_host::{NodeInfo, PluginConfig, TrafficDirection};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{
    ClusterConfig, EndpointConfig, FilterConfig, HttpListener, ListenerConfig, ListenerKind, ListenerSpec,
    ModuleSource, PathMatch, ProxyConfig, RouteConfig, RouteTarget, TcpListener,
};

/// Istio's default root namespace: its WasmPlugins apply to workloads in every namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// What `ISTIO_VERSION` says in the node metadata; filters that gate features on the proxy's
/// version see a current Istio.
pub const ISTIO_VERSION: &str = "1.27.0";
/// Sidecars run two worker threads unless told otherwise (Istio's `concurrency: 2`).
const SIDECAR_WORKERS: usize = 2;

/// The workload whose sidecar meshwork stands in for, from the command line.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The application; the inbound cluster is named after its port.
    pub upstream: EndpointConfig,
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    pub name: String,
    /// Clusters the filters call out to, by the names their configurations use (what the
    /// mesh's outbound clusters or a ServiceEntry give a real sidecar): `--cluster NAME=ADDR`.
    pub outbound: Vec<(String, EndpointConfig)>,
}

impl Workload {
    /// From the flags; the name defaults to the `app` label, as a Deployment is usually named.
    pub fn from_flags(
        upstream: &str,
        listen: SocketAddr,
        admin: Option<SocketAddr>,
        labels: Vec<(String, String)>,
        namespace: String,
        name: Option<String>,
    ) -> anyhow::Result<Workload> {
        let upstream = EndpointConfig::parse(upstream, "--upstream")?;
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        let name = name.or_else(|| labels.get("app").cloned()).unwrap_or_else(|| "meshwork".into());
        if namespace.is_empty() {
            bail!("--namespace must not be empty");
        }
        Ok(Workload { upstream, listen, admin, labels, namespace, name, outbound: Vec::new() })
    }

    pub fn upstream_port(&self) -> u16 {
        match &self.upstream {
            EndpointConfig::Ip(a) => a.port(),
            EndpointConfig::Name { port, .. } => *port,
        }
    }

    /// The pod's address as the node id and INSTANCE_IPS give it: the listening one, or
    /// loopback when that is a wildcard.
    fn ip(&self) -> IpAddr {
        let ip = self.listen.ip();
        if ip.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { ip }
    }

    /// Whether every label of `selector` is the workload's (Kubernetes' matchLabels).
    pub fn has_labels(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// `K=V` for `--workload-labels` (comma-separated or repeated).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("{text:?} names no label"));
    }
    Ok((k.to_owned(), v.trim().to_owned()))
}

// ----- documents -------------------------------------------------------------------------------

/// One document of a YAML (multi-document) or JSON file, with where it came from.
#[derive(Clone, Debug)]
pub struct Document {
    /// `FILE document N`, or `FILE document N items[I]` for an item of a List.
    pub origin: String,
    /// Relative `file://` paths are resolved against this (the file's directory).
    pub base: PathBuf,
    pub value: Value,
    /// The document's own text and the line it starts on in the file, so that errors give
    /// positions in the file; absent for the items of a List.
    source: Option<(String, u64)>,
}

impl Document {
    pub fn str(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(Value::as_str)
    }

    /// `metadata.name`, for messages before the document is known to be valid.
    pub fn name(&self) -> &str {
        self.value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("(unnamed)")
    }

    /// The document as `T`; an error names the field and, when known, the line in the file.
    pub fn parse<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        let result = match &self.source {
            Some((text, first_line)) => meshwork_yaml::from_str::<T>(text).map_err(|mut e| {
                e.position = e.position.map(|(line, column)| (line + first_line - 1, column));
                e
            }),
            None => meshwork_yaml::from_str::<T>(&self.value.to_string()).map_err(|mut e| {
                e.position = None;
                e
            }),
        };
        result.map_err(anyhow::Error::new)
    }
}

/// Every document of `path`.
pub fn read_documents(path: &Path) -> anyhow::Result<Vec<Document>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    documents(&text, &path.display().to_string(), &base)
}

/// The documents of a file's text: YAML documents separated by `---`, each an object, a
/// Kubernetes `List` (`kubectl get -o yaml`) or an array of objects. Empty documents are skipped.
pub fn documents(text: &str, file: &str, base: &Path) -> anyhow::Result<Vec<Document>> {
    let mut out = Vec::new();
    for (n, (first_line, chunk)) in split_documents(text).into_iter().enumerate() {
        let origin = format!("{file} document {}", n + 1);
        let blank = chunk.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        });
        if blank {
            continue;
        }
        let value: Value = meshwork_yaml::from_str(&chunk).map_err(|mut e| {
            e.position = e.position.map(|(line, column)| (line + first_line - 1, column));
            anyhow::Error::new(e).context(format!("{origin} is not valid YAML/JSON"))
        })?;
        let items = match &value {
            Value::Null => continue,
            Value::Array(items) => Some(items.clone()),
            Value::Object(o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                Some(o.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
            }
            Value::Object(_) => None,
            _ => bail!("{origin} is not a mapping (an object with apiVersion, kind, metadata and spec)"),
        };
        match items {
            None => out.push(Document { origin, base: base.to_path_buf(), value, source: Some((chunk, first_line)) }),
            Some(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let origin = format!("{origin} items[{i}]");
                    if !item.is_object() {
                        bail!("{origin} is not a mapping");
                    }
                    out.push(Document { origin, base: base.to_path_buf(), value: item, source: None });
                }
            }
        }
    }
    Ok(out)
}

/// Splits YAML text at its document markers (`---` at the start of a line, and `...`),
/// keeping each document's first line number (1-based). Markers are blanked, not removed, so
/// columns stay right; text after `--- ` belongs to the document it starts.
fn split_documents(text: &str) -> Vec<(u64, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1u64;
    for (i, line) in text.lines().enumerate() {
        let number = i as u64 + 1;
        let is_marker = |m: &str| line.starts_with(m) && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_marker("---") {
            docs.push((start, std::mem::take(&mut current)));
            start = number;
            current.push_str("   ");
            current.push_str(&line[3..]);
            current.push('\n');
        } else if is_marker("...") {
            docs.push((start, std::mem::take(&mut current)));
            start = number + 1;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push((start, current));
    docs
}

// ----- the inbound listener both meshes build -----------------------------------------------------

/// The shape of a sidecar's inbound listener for one workload port.
pub(crate) struct Inbound {
    pub listener: String,
    pub cluster: String,
    pub route_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub max_retries: u32,
}

/// One inbound listener at `--listen`, one route `/` to one cluster at `--upstream`; with
/// `tcp`, a TCP listener whose `filters` are network filters.
pub(crate) fn inbound_config(
    w: &Workload,
    inbound: Inbound,
    filters: Vec<FilterConfig>,
    tcp: bool,
    node: NodeInfo,
) -> anyhow::Result<ProxyConfig> {
    let settings = ListenerConfig { direction: TrafficDirection::Inbound, ..ListenerConfig::default() };
    let kind = if tcp {
        ListenerKind::Tcp(TcpListener { cluster: inbound.cluster.clone(), filters })
    } else {
        let mut route =
            RouteConfig::new("default", PathMatch::Prefix("/".into()), RouteTarget::Cluster(inbound.cluster.clone()));
        route.timeout = inbound.route_timeout;
        ListenerKind::Http(HttpListener { routes: vec![route], first_match: true, filters, filter_buffer_limit: None })
    };
    let config = ProxyConfig {
        listeners: vec![ListenerSpec {
            name: inbound.listener,
            address: w.listen,
            settings,
            tls: None,
            proxy_protocol: false,
            kind,
        }],
        admin: w.admin,
        admin_allow_non_loopback: false,
        workers: SIDECAR_WORKERS,
        max_connections: None,
        clusters: std::iter::once((inbound.cluster, w.upstream.clone()))
            .chain(w.outbound.iter().cloned())
            .map(|(name, endpoint)| ClusterConfig {
                name,
                endpoints: vec![endpoint],
                connect_timeout: inbound.connect_timeout,
                max_retries: inbound.max_retries,
                retry_budget: None,
                http2: false,
                tls: None,
                dns_refresh: Duration::from_secs(5),
            })
            .collect(),
        services: Vec::new(),
        resolve: BTreeMap::new(),
        node,
        cache_dir: None,
        federation: None,
    };
    config.validate()?;
    Ok(config)
}

// ----- WasmPlugin ----------------------------------------------------------------------------------

const API_VERSION: &str = "extensions.istio.io/v1alpha1";

/// A Kubernetes object whose `spec` is `S` (WasmPlugin here, MeshProxyPatch in [`crate::kuma`]).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct KubeObject<S> {
    #[allow(dead_code, reason = "checked before the document is parsed")]
    api_version: String,
    #[allow(dead_code, reason = "checked before the document is parsed")]
    kind: String,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: S,
    #[allow(dead_code, reason = "what a cluster reports; ignored")]
    status: Option<Value>,
}

/// Kubernetes object metadata; fields besides these (labels, uid, ...) are allowed and unused.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metadata {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    selector: Option<Selector>,
    target_ref: Option<Value>,
    #[serde(default)]
    target_refs: Vec<Value>,
    url: String,
    #[serde(default)]
    sha256: String,
    image_pull_policy: Option<ImagePullPolicy>,
    image_pull_secret: Option<String>,
    verification_key: Option<String>,
    plugin_config: Option<Value>,
    plugin_name: Option<String>,
    #[serde(default)]
    phase: Phase,
    priority: Option<i32>,
    #[serde(default)]
    fail_strategy: FailStrategy,
    vm_config: Option<VmConfig>,
    #[serde(rename = "match", default)]
    matches: Vec<TrafficSelector>,
    #[serde(rename = "type", default)]
    plugin_type: PluginType,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Selector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

/// Declared in filter-chain order, so sorting by phase puts them where Istio inserts them.
#[derive(Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    #[serde(rename = "AUTHN")]
    Authn,
    #[serde(rename = "AUTHZ")]
    Authz,
    #[serde(rename = "STATS")]
    Stats,
    #[default]
    #[serde(rename = "UNSPECIFIED_PHASE")]
    Unspecified,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Authn => "AUTHN",
            Phase::Authz => "AUTHZ",
            Phase::Stats => "STATS",
            Phase::Unspecified => "UNSPECIFIED_PHASE",
        }
    }
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum ImagePullPolicy {
    #[serde(rename = "UNSPECIFIED_POLICY")]
    Unspecified,
    IfNotPresent,
    Always,
}

#[derive(Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
enum FailStrategy {
    #[default]
    #[serde(rename = "FAIL_CLOSE")]
    Close,
    #[serde(rename = "FAIL_OPEN")]
    Open,
    #[serde(rename = "FAIL_RELOAD")]
    Reload,
}

#[derive(Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
enum PluginType {
    #[default]
    #[serde(rename = "UNSPECIFIED_PLUGIN_TYPE")]
    Unspecified,
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "NETWORK")]
    Network,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmConfig {
    #[serde(default)]
    env: Vec<EnvVar>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnvVar {
    name: String,
    value: Option<String>,
    #[serde(default)]
    value_from: EnvValueSource,
}

#[derive(Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
enum EnvValueSource {
    #[default]
    #[serde(rename = "INLINE")]
    Inline,
    #[serde(rename = "HOST")]
    Host,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrafficSelector {
    #[serde(default)]
    mode: WorkloadMode,
    #[serde(default)]
    ports: Vec<PortSelector>,
}

#[derive(Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
enum WorkloadMode {
    #[default]
    #[serde(rename = "UNDEFINED")]
    Undefined,
    #[serde(rename = "CLIENT")]
    Client,
    #[serde(rename = "SERVER")]
    Server,
    #[serde(rename = "CLIENT_AND_SERVER")]
    ClientAndServer,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSelector {
    number: u32,
}

/// What the documents became, and what a user should know about how.
#[derive(Debug)]
pub struct Translation {
    pub config: ProxyConfig,
    /// How each document was applied or why it was not.
    pub notes: Vec<String>,
    /// Fields meshwork cannot honour and runs without.
    pub warnings: Vec<String>,
}

/// A plugin that applies to the workload, before ordering.
struct Selected {
    name: String,
    namespace: String,
    created: String,
    phase: Phase,
    priority: Option<i32>,
    network: bool,
    filter: FilterConfig,
}

/// Reads `files` and builds the proxy; logs the notes and warnings.
pub fn load(files: &[PathBuf], workload: &Workload) -> anyhow::Result<ProxyConfig> {
    let mut docs = Vec::new();
    for f in files {
        docs.extend(read_documents(f)?);
    }
    let t = translate(&docs, workload, &|key| std::env::var(key).ok())?;
    for n in &t.notes {
        tracing::info!("{n}");
    }
    for w in &t.warnings {
        tracing::warn!("{w}");
    }
    Ok(t.config)
}

/// The proxy an Istio sidecar of `workload` would be with these WasmPlugins. `host_env` reads
/// the proxy's environment (`valueFrom: HOST`).
pub fn translate(
    docs: &[Document],
    workload: &Workload,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Translation> {
    let mut notes = Vec::new();
    let mut warnings = Vec::new();
    let mut selected = Vec::new();
    for doc in docs {
        if let Some(s) = plugin(doc, workload, host_env, &mut notes, &mut warnings)? {
            selected.push(s);
        }
    }
    // Pilot's order: configs by creation time, name, namespace; looked up in the workload's
    // namespace, then the root namespace; each phase then sorted (stably) by priority.
    selected.sort_by(|a, b| (&a.created, &a.name, &a.namespace).cmp(&(&b.created, &b.name, &b.namespace)));
    selected.sort_by_key(|s| s.namespace != workload.namespace);
    selected.sort_by_key(|s| (s.phase, Reverse(s.priority.unwrap_or(i32::MIN))));

    let network: Vec<&str> = selected.iter().filter(|s| s.network).map(|s| s.filter.plugin.name.as_str()).collect();
    let tcp = !network.is_empty();
    if tcp && network.len() != selected.len() {
        bail!(
            "WasmPlugins of type NETWORK ({}) and HTTP apply to the same workload: meshwork runs a listener with \
             either network filters (TCP) or HTTP filters, not both",
            network.join(", ")
        );
    }
    if selected.is_empty() {
        warnings.push(format!(
            "no WasmPlugin applies to workload {}/{} (labels {:?}); the listener only forwards",
            workload.namespace, workload.name, workload.labels
        ));
    } else {
        let order: Vec<&str> = selected.iter().map(|s| s.filter.plugin.name.as_str()).collect();
        notes.push(format!(
            "{} filter order: {}{}",
            if tcp { "network" } else { "HTTP" },
            order.join(", "),
            if tcp { ", then the TCP proxy" } else { ", then the router" }
        ));
    }
    let port = workload.upstream_port();
    let inbound = Inbound {
        listener: "virtualInbound".into(),
        cluster: format!("inbound|{port}||"),
        // Istio turns route timeouts off.
        route_timeout: None,
        // Istio's default connectTimeout; it raises the circuit-breaker thresholds to the
        // maximum, so retries are never capped by them.
        connect_timeout: Duration::from_secs(10),
        max_retries: u32::MAX,
    };
    let filters = selected.into_iter().map(|s| s.filter).collect();
    let config = inbound_config(workload, inbound, filters, tcp, node(workload))?;
    Ok(Translation { config, notes, warnings })
}

/// The node istio-agent describes to Envoy for a sidecar.
fn node(w: &Workload) -> NodeInfo {
    let ip = w.ip().to_string();
    let (name, ns) = (&w.name, &w.namespace);
    let metadata = [
        ("NAME", name.clone()),
        ("NAMESPACE", ns.clone()),
        ("WORKLOAD_NAME", name.clone()),
        ("MESH_ID", "cluster.local".into()),
        ("CLUSTER_ID", "Kubernetes".into()),
        ("ISTIO_VERSION", ISTIO_VERSION.into()),
        ("INSTANCE_IPS", ip.clone()),
    ];
    NodeInfo {
        id: format!("sidecar~{ip}~{name}.{ns}~{ns}.svc.cluster.local"),
        cluster: format!("{name}.{ns}"),
        metadata: metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        metadata_maps: [("LABELS".to_owned(), w.labels.clone())].into_iter().collect(),
    }
}

/// One document: the filter it makes when it applies to the workload, else `None` (with a note
/// saying why).
fn plugin(
    doc: &Document,
    workload: &Workload,
    host_env: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Option<Selected>> {
    let origin = &doc.origin;
    let kind = doc.str("kind").unwrap_or_default();
    let api = doc.str("apiVersion").unwrap_or_default();
    if kind != "WasmPlugin" {
        let what = if kind.is_empty() { "a document without `kind`".to_owned() } else { format!("a {kind} ({api})") };
        bail!("{origin} is {what}: --istio runs WasmPlugin ({API_VERSION}) documents only");
    }
    if api != API_VERSION {
        bail!("{origin}: WasmPlugin apiVersion {api:?} is not {API_VERSION}");
    }
    let parsed: KubeObject<Spec> = doc.parse().with_context(|| format!("{origin} (WasmPlugin {})", doc.name()))?;
    let name = parsed.metadata.name.clone().with_context(|| format!("{origin}: metadata.name is missing"))?;
    // Without a namespace, the document is one `kubectl apply` would put in the workload's.
    let namespace = parsed.metadata.namespace.clone().unwrap_or_else(|| workload.namespace.clone());
    let what = format!("{origin} (WasmPlugin {namespace}/{name})");
    let spec = parsed.spec;

    // Checked before selection, so a bad document fails whichever workload is tried.
    let has_target_refs = spec.target_ref.is_some() || !spec.target_refs.is_empty();
    if spec.selector.is_some() && has_target_refs {
        bail!("{what}: give spec.selector or spec.targetRefs, not both");
    }
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !spec.sha256.is_empty() && !hex(&spec.sha256) {
        bail!("{what}: spec.sha256 {:?} is not 64 hex digits", spec.sha256);
    }
    let config = match &spec.plugin_config {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::Object(o)) if o.is_empty() => Bytes::new(),
        Some(v @ Value::Object(_)) => Bytes::from(serde_json::to_vec(v).context("pluginConfig")?),
        Some(_) => bail!("{what}: spec.pluginConfig must be a mapping (a protobuf Struct)"),
    };
    let (module, source) = module_source(&spec, &doc.base, &what, warnings)?;
    let mut env = Vec::new();
    for (i, e) in spec.vm_config.iter().flat_map(|v| &v.env).enumerate() {
        let field = format!("spec.vmConfig.env[{i}]");
        if e.name.is_empty() {
            bail!("{what}: {field}.name is empty");
        }
        match e.value_from {
            EnvValueSource::Inline => env.push((e.name.clone(), e.value.clone().unwrap_or_default())),
            EnvValueSource::Host if e.value.is_some() => {
                bail!("{what}: {field} ({}): value may only be set when valueFrom is INLINE", e.name)
            }
            // Istio: "if a key does not exist, it will be ignored".
            EnvValueSource::Host => match host_env(&e.name) {
                Some(v) => env.push((e.name.clone(), v)),
                None => notes.push(format!("{what}: {field} {} is not in meshwork's environment; left out", e.name)),
            },
        }
    }

    if namespace != workload.namespace && namespace != ROOT_NAMESPACE {
        notes.push(format!(
            "{what}: not applied: it is in namespace {namespace}, the workload in {} (only its own and {ROOT_NAMESPACE} apply)",
            workload.namespace
        ));
        return Ok(None);
    }
    if has_target_refs {
        notes.push(format!(
            "{what}: spec.targetRefs select Gateways and Services, which meshwork does not model; applied to this workload"
        ));
    } else if let Some(selector) = &spec.selector
        && !workload.has_labels(&selector.match_labels)
    {
        notes.push(format!(
            "{what}: not applied: spec.selector.matchLabels {:?} are not all among the workload's labels {:?}",
            selector.match_labels, workload.labels
        ));
        return Ok(None);
    }
    let port = workload.upstream_port();
    let inbound = |m: &TrafficSelector| {
        m.mode != WorkloadMode::Client && (m.ports.is_empty() || m.ports.iter().any(|p| p.number == u32::from(port)))
    };
    if !spec.matches.is_empty() && !spec.matches.iter().any(inbound) {
        notes.push(format!(
            "{what}: not applied: spec.match selects no server-side (inbound) traffic to the workload's port {port}"
        ));
        return Ok(None);
    }

    let full_name = format!("{namespace}.{name}");
    let mut plugin = PluginConfig::new(&full_name);
    plugin.vm_id = full_name.clone();
    plugin.root_id = spec.plugin_name.clone().unwrap_or_default();
    plugin.configuration = config;
    plugin.env = env;
    plugin.fail_open = spec.fail_strategy == FailStrategy::Open;
    if spec.fail_strategy == FailStrategy::Reload {
        notes.push(format!(
            "{what}: spec.failStrategy FAIL_RELOAD runs fail-closed: meshwork rebuilds a failed VM in any case, so \
             later requests get a fresh plugin as with FAIL_RELOAD"
        ));
    }
    if spec.image_pull_secret.is_some() {
        warnings.push(format!(
            "{what}: spec.imagePullSecret ignored: it names a Kubernetes Secret; meshwork pulls with \
             MESHWORK_REGISTRY_USERNAME/PASSWORD (or _TOKEN) or the docker config"
        ));
    }
    if spec.verification_key.is_some() {
        warnings.push(format!(
            "{what}: spec.verificationKey ignored (Istio does not implement it either; see --require-signature)"
        ));
    }
    let network = spec.plugin_type == PluginType::Network;
    notes.push(format!(
        "{what}: applied as filter {full_name} ({}phase {}, priority {})",
        if network { "NETWORK, " } else { "" },
        spec.phase.name(),
        spec.priority.map_or_else(|| "unset".to_owned(), |p| p.to_string())
    ));
    Ok(Some(Selected {
        name,
        namespace,
        created: parsed.metadata.creation_timestamp.unwrap_or_default(),
        phase: spec.phase,
        priority: spec.priority,
        network,
        filter: FilterConfig { module, source, plugin },
    }))
}

/// `url` (oci:// when it has no scheme, file://, http(s)://), `sha256` and `imagePullPolicy`.
fn module_source(
    spec: &Spec,
    base: &Path,
    what: &str,
    warnings: &mut Vec<String>,
) -> anyhow::Result<(PathBuf, ModuleSource)> {
    let url = spec.url.trim();
    if url.is_empty() {
        bail!("{what}: spec.url is empty");
    }
    let sha256 = (!spec.sha256.is_empty()).then(|| spec.sha256.to_ascii_lowercase());
    let pull_policy = match spec.image_pull_policy {
        None | Some(ImagePullPolicy::Unspecified) => None,
        Some(ImagePullPolicy::IfNotPresent) => Some(PullPolicy::IfNotPresent),
        Some(ImagePullPolicy::Always) => Some(PullPolicy::Always),
    };
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("oci".to_owned(), url),
    };
    match scheme.as_str() {
        "oci" => {
            if let (Some(pinned), Some(want)) = (rest.split_once("@sha256:").map(|(_, d)| d), &sha256)
                && !pinned.eq_ignore_ascii_case(want)
            {
                bail!("{what}: spec.url pins sha256:{pinned}, spec.sha256 says {want}; they must match");
            }
            Ok((PathBuf::new(), ModuleSource::Oci { reference: format!("oci://{rest}"), sha256, pull_policy }))
        }
        "file" => {
            if rest.is_empty() {
                bail!("{what}: spec.url {url:?} names no file");
            }
            Ok((base.join(rest), ModuleSource::File { sha256 }))
        }
        "http" | "https" => {
            if pull_policy.is_some() && sha256.is_none() {
                warnings.push(format!(
                    "{what}: spec.imagePullPolicy: an http(s) module without sha256 is fetched on every load"
                ));
            }
            Ok((PathBuf::new(), ModuleSource::Http { url: url.to_owned(), sha256 }))
        }
        other => bail!("{what}: spec.url {url:?}: scheme {other:?} is not one of oci, file, http, https"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(labels: &[(&str, &str)], namespace: &str) -> Workload {
        Workload::from_flags(
            "127.0.0.1:8080",
            "127.0.0.1:15006".parse().unwrap(),
            None,
            labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            namespace.to_owned(),
            None,
        )
        .unwrap()
    }

    fn docs(yaml: &str) -> Vec<Document> {
        documents(yaml, "wp.yaml", Path::new("/cfg")).unwrap()
    }

    fn translate_env(yaml: &str, w: &Workload, env: &[(&str, &str)]) -> anyhow::Result<Translation> {
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        translate(&docs(yaml), w, &|k| env.get(k).cloned())
    }

    fn run(yaml: &str, w: &Workload) -> Translation {
        translate_env(yaml, w, &[]).unwrap()
    }

    fn error(yaml: &str) -> String {
        format!("{:#}", translate_env(yaml, &workload(&[("app", "reviews")], "default"), &[]).unwrap_err())
    }

    fn filters(t: &Translation) -> Vec<&str> {
        t.config.listeners[0].filters().iter().map(|f| f.plugin.name.as_str()).collect()
    }

    /// A WasmPlugin in namespace `default` with `spec` lines added.
    fn wp(name: &str, spec: &str) -> String {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  url: file:///f/{name}.wasm\n{spec}---\n"
        )
    }

    #[test]
    fn phases_then_priority_then_name() {
        let yaml = [
            wp("unspecified", ""),
            wp("stats", "  phase: STATS\n"),
            wp("authz-low", "  phase: AUTHZ\n  priority: 1\n"),
            wp("authz-high", "  phase: AUTHZ\n  priority: 100\n"),
            wp("authz-unset", "  phase: AUTHZ\n"),
            wp("authz-negative", "  phase: AUTHZ\n  priority: -5\n"),
            wp("authn-b", "  phase: AUTHN\n  priority: 10\n"),
            wp("authn-a", "  phase: AUTHN\n  priority: 10\n"),
        ]
        .concat();
        let t = run(&yaml, &workload(&[], "default"));
        assert_eq!(
            filters(&t),
            [
                "default.authn-a",
                "default.authn-b",
                "default.authz-high",
                "default.authz-low",
                "default.authz-negative",
                "default.authz-unset",
                "default.stats",
                "default.unspecified"
            ]
        );
        assert!(t.notes.iter().any(|n| n.contains("then the router")), "{:?}", t.notes);
    }

    #[test]
    fn own_namespace_before_the_root_namespace_at_equal_priority() {
        let yaml = format!(
            "{}{}",
            wp("b-local", "  priority: 5\n"),
            wp("a-mesh", "  priority: 5\n").replace("namespace: default", "namespace: istio-system"),
        );
        assert_eq!(filters(&run(&yaml, &workload(&[], "default"))), ["default.b-local", "istio-system.a-mesh"]);
        // Creation time comes before the name.
        let yaml = format!(
            "{}{}",
            wp("a", "")
                .replace("namespace: default", "namespace: default, creationTimestamp: \"2025-02-01T00:00:00Z\""),
            wp("b", "")
                .replace("namespace: default", "namespace: default, creationTimestamp: \"2025-01-01T00:00:00Z\""),
        );
        assert_eq!(filters(&run(&yaml, &workload(&[], "default"))), ["default.b", "default.a"]);
    }

    #[test]
    fn selector_namespace_and_match_choose_the_plugins() {
        let yaml = [
            wp("all", ""),
            wp("reviews", "  selector: {matchLabels: {app: reviews}}\n"),
            wp("ratings", "  selector: {matchLabels: {app: ratings}}\n"),
            wp("reviews-v2", "  selector: {matchLabels: {app: reviews, version: v2}}\n"),
            wp("other-ns", "").replace("namespace: default", "namespace: shop"),
            wp("mesh-wide", "").replace("namespace: default", "namespace: istio-system"),
            wp("targeted", "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\n"),
            wp("port-8080", "  match: [{mode: SERVER, ports: [{number: 8080}]}]\n"),
            wp("port-9090", "  match: [{ports: [{number: 9090}]}]\n"),
            wp("client-only", "  match: [{mode: CLIENT}]\n"),
            wp("either", "  match: [{mode: CLIENT}, {mode: CLIENT_AND_SERVER}]\n"),
        ]
        .concat();
        let t = run(&yaml, &workload(&[("app", "reviews"), ("version", "v1")], "default"));
        assert_eq!(
            filters(&t),
            [
                "default.all",
                "default.either",
                "default.port-8080",
                "default.reviews",
                "default.targeted",
                "istio-system.mesh-wide"
            ]
        );
        let said = t.notes.join("\n");
        for why in ["\"ratings\"", "namespace shop", "port 8080", "targetRefs select Gateways"] {
            assert!(said.contains(why), "{why}: {said}");
        }
        // Without a namespace, a document is the workload's.
        let t = run(&wp("here", "").replace(", namespace: default", ""), &workload(&[], "shop"));
        assert_eq!(filters(&t), ["shop.here"]);
        // No plugin: a listener that forwards, and a warning.
        let t = run(&wp("ratings", "  selector: {matchLabels: {app: ratings}}\n"), &workload(&[], "default"));
        assert!(filters(&t).is_empty() && t.warnings[0].contains("no WasmPlugin applies"));
    }

    #[test]
    fn filter_fields_config_env_and_fail_strategy() {
        let yaml = [
            wp(
                "rl",
                "  pluginName: limiter\n  pluginConfig: {rate: 3, period: 60s, nested: {b: [1, 2]}}\n  failStrategy: FAIL_OPEN\n  vmConfig:\n    env:\n    - {name: TRUST_DOMAIN, value: cluster.local}\n    - {name: EMPTY}\n    - {name: POD_NAME, valueFrom: HOST}\n    - {name: MISSING, valueFrom: HOST}\n",
            ),
            wp("closed", "  pluginConfig: {}\n"),
            wp("reload", "  failStrategy: FAIL_RELOAD\n"),
        ]
        .concat();
        let t = translate_env(&yaml, &workload(&[], "default"), &[("POD_NAME", "reviews-7d9")]).unwrap();
        let f = t.config.listeners[0].filters();
        let rl = &f.iter().find(|f| f.plugin.name == "default.rl").unwrap().plugin;
        assert_eq!((rl.root_id.as_str(), rl.vm_id.as_str()), ("limiter", "default.rl"));
        assert_eq!(&rl.configuration[..], br#"{"nested":{"b":[1,2]},"period":"60s","rate":3}"#);
        assert!(rl.fail_open);
        assert_eq!(
            rl.env,
            [
                ("TRUST_DOMAIN".to_owned(), "cluster.local".to_owned()),
                ("EMPTY".to_owned(), String::new()),
                ("POD_NAME".to_owned(), "reviews-7d9".to_owned())
            ]
        );
        let closed = &f.iter().find(|f| f.plugin.name == "default.closed").unwrap().plugin;
        assert!(!closed.fail_open && closed.configuration.is_empty() && closed.root_id.is_empty());
        let reload = &f.iter().find(|f| f.plugin.name == "default.reload").unwrap().plugin;
        assert!(!reload.fail_open);
        let said = t.notes.join("\n");
        assert!(said.contains("MISSING is not in meshwork's environment") && said.contains("FAIL_RELOAD"), "{said}");
    }

    #[test]
    fn url_forms_sha256_and_pull_policy() {
        let sha = "ab".repeat(32);
        let source = |spec: &str| {
            let t = run(&wp("m", spec).replace("  url: file:///f/m.wasm\n", ""), &workload(&[], "default"));
            let f = &t.config.listeners[0].filters()[0];
            (f.module.clone(), f.source.clone())
        };
        assert_eq!(
            source(&format!("  url: ghcr.io/acme/rl:1.0\n  sha256: {sha}\n  imagePullPolicy: Always\n")),
            (
                PathBuf::new(),
                ModuleSource::Oci {
                    reference: "oci://ghcr.io/acme/rl:1.0".into(),
                    sha256: Some(sha.clone()),
                    pull_policy: Some(PullPolicy::Always)
                }
            )
        );
        assert_eq!(
            source("  url: oci://localhost:5000/rl:latest\n  imagePullPolicy: IfNotPresent\n").1,
            ModuleSource::Oci {
                reference: "oci://localhost:5000/rl:latest".into(),
                sha256: None,
                pull_policy: Some(PullPolicy::IfNotPresent)
            }
        );
        assert_eq!(
            source("  url: file://filters/rl.wasm\n"),
            (PathBuf::from("/cfg/filters/rl.wasm"), ModuleSource::File { sha256: None })
        );
        assert_eq!(
            source(&format!("  url: file:///opt/rl.wasm\n  sha256: {sha}\n")),
            (PathBuf::from("/opt/rl.wasm"), ModuleSource::File { sha256: Some(sha.clone()) })
        );
        assert_eq!(
            source("  url: https://example.com/rl.wasm\n").1,
            ModuleSource::Http { url: "https://example.com/rl.wasm".into(), sha256: None }
        );
    }

    #[test]
    fn node_and_listener_are_a_sidecars() {
        let t = run(&wp("x", ""), &workload(&[("app", "reviews"), ("version", "v1")], "shop"));
        let c = &t.config;
        assert_eq!(c.node.id, "sidecar~127.0.0.1~reviews.shop~shop.svc.cluster.local");
        assert_eq!(c.node.cluster, "reviews.shop");
        for (k, v) in [
            ("WORKLOAD_NAME", "reviews"),
            ("NAMESPACE", "shop"),
            ("MESH_ID", "cluster.local"),
            ("CLUSTER_ID", "Kubernetes"),
            ("ISTIO_VERSION", ISTIO_VERSION),
        ] {
            assert_eq!(c.node.metadata.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert_eq!(c.node.metadata_maps["LABELS"].get("version").map(String::as_str), Some("v1"));
        let l = &c.listeners[0];
        assert_eq!((l.name.as_str(), l.settings.direction), ("virtualInbound", TrafficDirection::Inbound));
        let route = &l.http().unwrap().routes[0];
        assert_eq!(route.target, RouteTarget::Cluster("inbound|8080||".into()));
        assert_eq!(route.timeout, None);
        assert_eq!(c.clusters[0].name, "inbound|8080||");
        assert_eq!(c.clusters[0].endpoints, [EndpointConfig::Ip("127.0.0.1:8080".parse().unwrap())]);
        // An all-NETWORK set is a TCP listener.
        let t = run(&wp("net", "  type: NETWORK\n"), &workload(&[], "default"));
        assert!(matches!(&t.config.listeners[0].kind, ListenerKind::Tcp(tcp) if tcp.cluster == "inbound|8080||"));
    }

    #[test]
    fn documents_json_lists_and_positions() {
        let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "j", "namespace": "default"},
             "spec": {"url": "file:///j.wasm"}}]}"#;
        let t = run(json, &workload(&[], "default"));
        assert_eq!(filters(&t), ["default.j"]);
        let d = docs("# comment only\n---\na: 1\n--- {b: 2}\n...\n");
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].value["b"], 2);
        assert_eq!(d[1].origin, "wp.yaml document 3");
        // Errors give the line in the file, not in the document.
        let e = error(&format!("{}{}", wp("ok", ""), wp("bad", "  phase: LATE\n")));
        assert!(e.contains("wp.yaml document 2 (WasmPlugin bad): line 12 column 10"), "{e}");
        assert!(e.contains("spec.phase: unknown variant `LATE`"), "{e}");
    }

    #[test]
    fn refusals_name_file_document_and_field() {
        let other = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\nspec: {}\n";
        assert!(error(other).contains("wp.yaml document 1 is a VirtualService (networking.istio.io/v1)"));
        assert!(
            error(&wp("v", "").replace("v1alpha1", "v1beta1")).contains("apiVersion \"extensions.istio.io/v1beta1\"")
        );
        let cases = [
            ("  bogus: 1\n", "unknown field `bogus`"),
            ("  sha256: abc\n", "spec.sha256 \"abc\" is not 64 hex digits"),
            ("  failStrategy: FAIL_SOMETIMES\n", "spec.failStrategy: unknown variant `FAIL_SOMETIMES`"),
            ("  pluginConfig: [1]\n", "spec.pluginConfig must be a mapping"),
            ("  vmConfig: {env: [{name: A, value: x, valueFrom: HOST}]}\n", "spec.vmConfig.env[0] (A): value may only"),
            ("  selector: {matchLabels: {a: b}}\n  targetRefs: [{kind: Gateway, name: g}]\n", "not both"),
        ];
        for (spec, want) in cases {
            let e = error(&wp("p", spec));
            assert!(e.contains("wp.yaml document 1") && e.contains(want), "{want}: {e}");
        }
        let e = error(&wp("p", "").replace("file:///f/p.wasm", "ftp://x/p.wasm"));
        assert!(e.contains("spec.url \"ftp://x/p.wasm\": scheme \"ftp\" is not one of"), "{e}");
        let pinned = wp("p", &format!("  sha256: {}\n", "a".repeat(64)));
        let e = error(&pinned.replace("file:///f/p.wasm", &format!("oci://r.io/p@sha256:{}", "b".repeat(64))));
        assert!(e.contains("they must match"), "{e}");
        let mixed = format!("{}{}", wp("net", "  type: NETWORK\n"), wp("http", ""));
        assert!(error(&mixed).contains("NETWORK (default.net) and HTTP"), "{}", error(&mixed));
        assert!(
            error("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nspec: {url: x}\n")
                .contains("metadata.name is missing")
        );
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("app=reviews"), Ok(("app".into(), "reviews".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_label("novalue").is_err() && parse_label("=x").is_err());
        let w = workload(&[("app", "reviews")], "default");
        assert_eq!(w.name, "reviews");
    }
}
