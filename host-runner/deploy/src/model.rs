//! What is deployed, independent of the mesh: the filters in chain order, where their modules
//! come from, and the options every mesh needs (namespace, workload selection, failure policy).

use std::collections::BTreeMap;

use serde::Serialize;

/// The meshes (and file shapes) `meshwork deploy` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mesh {
    /// Envoy `http_filters` entries (a fragment for an existing bootstrap).
    Envoy,
    /// A whole Envoy bootstrap: listener, the filters, the router, clusters.
    EnvoyBootstrap,
    /// Istio `WasmPlugin` (`extensions.istio.io/v1alpha1`), one per filter.
    Istio,
    /// Envoy Gateway `EnvoyExtensionPolicy` (`gateway.envoyproxy.io/v1alpha1`).
    EnvoyGateway,
    /// Consul `service-defaults` with `EnvoyExtensions` `builtin/wasm`: HCL and the CRD.
    Consul,
    /// Kuma `MeshProxyPatch` adding `envoy.filters.http.wasm` before the router.
    Kuma,
    /// meshwork's own YAML.
    Meshwork,
}

impl Mesh {
    /// Whether its documents are Kubernetes objects (what `--apply` can send).
    pub fn is_kubernetes(self) -> bool {
        matches!(self, Mesh::Istio | Mesh::EnvoyGateway | Mesh::Consul | Mesh::Kuma)
    }
}

/// Where a filter's module comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Module {
    /// An OCI image `registry/repository[:tag][@sha256:…]`; `digest` is the manifest's sha256
    /// (lower-case hex, no prefix), as Istio's `sha256` and Envoy Gateway's `image.sha256` want.
    Image { reference: String, digest: Option<String> },
    /// A file on the proxy's disk; `sha256` is the module's own digest.
    File { path: String, sha256: Option<String> },
    /// An HTTP(S) URL; `sha256` (the module's own digest, hex) is required by Envoy and Consul.
    Http { url: String, sha256: Option<String> },
}

/// What the proxy does when the filter cannot run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fail {
    /// Requests pass without the filter.
    Open,
    /// Requests are refused (503).
    #[default]
    Closed,
    /// The VM is restarted (Envoy's FAIL_RELOAD, Istio's FAIL_RELOAD); meshes without it get
    /// closed, with a note.
    Reload,
}

/// One proxy-wasm filter to deploy.
#[derive(Clone, Debug, Serialize)]
pub struct FilterSpec {
    /// The plugin's name (and the document's name).
    pub name: String,
    pub module: Module,
    /// proxy-wasm root id; empty for the default root context.
    pub root_id: String,
    /// Filters with the same vm_id share a VM (and its shared data).
    pub vm_id: String,
    /// The filter's JSON configuration.
    pub configuration: serde_json::Value,
    pub fail: Fail,
    /// Envoy's option: a Pause on headers still delivers the body.
    pub allow_on_headers_stop_iteration: bool,
    /// Environment variables for the VM (`key_values`).
    pub env: BTreeMap<String, String>,
}

/// A Gateway API style reference to what a policy attaches to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// A cluster an Envoy bootstrap needs besides the upstream (a callout's, the rate-limit
/// service's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExtraCluster {
    pub name: String,
    /// `host:port`.
    pub address: String,
}

/// Options every mesh takes; each mesh uses what applies to it.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub namespace: String,
    /// Workload labels (Istio `selector.matchLabels`).
    pub selector: BTreeMap<String, String>,
    /// What the policy attaches to (Istio `targetRefs`, Envoy Gateway `targetRefs`, Kuma
    /// `targetRef`: kind `Mesh` or `Dataplane`).
    pub target_refs: Vec<TargetRef>,
    /// The Consul service the `service-defaults` are for.
    pub service: String,
    /// Istio's phase for every plugin (`AUTHN`, `AUTHZ`, `STATS`; None: unspecified, just
    /// before the router); chain order becomes descending priority.
    pub istio_phase: Option<String>,
    /// A full Envoy bootstrap's (and meshwork's) listener `host:port`.
    pub listen: String,
    /// A full bootstrap's upstream `host:port` (the cluster `app`).
    pub upstream: String,
    /// Clusters the filters call out to.
    pub extra_clusters: Vec<ExtraCluster>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            namespace: "default".into(),
            selector: BTreeMap::new(),
            target_refs: Vec::new(),
            service: "app".into(),
            istio_phase: None,
            listen: "0.0.0.0:10000".into(),
            upstream: "127.0.0.1:8080".into(),
            extra_clusters: Vec::new(),
        }
    }
}

/// One generated document.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Document {
    /// `WasmPlugin`, `EnvoyExtensionPolicy`, `ServiceDefaults`, `MeshProxyPatch`, `Bootstrap`,
    /// `HttpFilters`, `MeshworkConfig`.
    pub kind: String,
    pub name: String,
    pub value: serde_json::Value,
    /// Another rendering users need (Consul's HCL), when there is one.
    pub text: Option<String>,
    /// What the user must know (Consul patches inbound listeners only, a failure policy the
    /// mesh lacks…).
    pub notes: Vec<String>,
}
