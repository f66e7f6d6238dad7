//! What a filter instance is configured with, and the process-wide services every VM uses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::abi::LogLevel;
use crate::metrics::MetricsRegistry;
use crate::shared::{SharedData, SharedQueues};

/// One configured filter (Envoy: one `envoy.filters.http.wasm` entry).
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// `plugin_name`: names the filter in logs and metrics.
    pub name: String,
    pub root_id: String,
    /// Scope of shared data and shared queues.
    pub vm_id: String,
    /// Passed to `proxy_on_configure` as `PLUGIN_CONFIGURATION`.
    pub configuration: Bytes,
    /// Passed to `proxy_on_vm_start` as `VM_CONFIGURATION`.
    pub vm_configuration: Bytes,
    /// WASI environment variables (Envoy: vm_config.environment_variables).
    pub env: Vec<(String, String)>,
    /// On failure: skip the filter (true) or answer 503 (false).
    pub fail_open: bool,
    pub limits: VmLimits,
    /// Messages below this level are dropped; `proxy_get_log_level` reports it.
    pub log_level: LogLevel,
    /// A request or response header callback that returns Pause stops only the headers: the
    /// filter still gets the body and trailers callbacks, and Continue from one of them lets
    /// everything it held go on (Envoy's StopIteration, its Wasm PluginConfig option of the
    /// same name). Off, Pause on headers holds everything, as proxy-wasm-cpp-host does by
    /// default (StopAllIterationAndWatermark).
    pub allow_on_headers_stop_iteration: bool,
}

impl PluginConfig {
    pub fn new(name: impl Into<String>) -> PluginConfig {
        let name = name.into();
        PluginConfig {
            root_id: String::new(),
            vm_id: String::new(),
            configuration: Bytes::new(),
            vm_configuration: Bytes::new(),
            env: Vec::new(),
            fail_open: false,
            limits: VmLimits::default(),
            log_level: LogLevel::Info,
            allow_on_headers_stop_iteration: false,
            name,
        }
    }
}

/// Sandbox limits of one VM: what it may take from the host (see [`crate::sandbox`]).
#[derive(Clone, Copy, Debug)]
pub struct VmLimits {
    /// Largest linear memory; growing past it traps the VM.
    pub max_memory_bytes: usize,
    /// Most elements any table may hold; growing past it traps the VM.
    pub max_table_elements: usize,
    /// Most tables a module may declare.
    pub max_tables: usize,
    /// Longest a stream or timer callback may run before it is interrupted.
    pub callback_timeout: Duration,
    /// Longest start-up (`_initialize`, `on_vm_start`, `on_configure`) may run.
    pub startup_timeout: Duration,
    /// Most VM rebuilds per minute after failures; past it the filter stays failed (fail policy
    /// applies) until the window passes, so a crash loop cannot eat the proxy.
    pub max_restarts_per_minute: u32,
    /// Most shared-data keys under the filter's vm_id (shared data has no delete in the ABI).
    pub max_shared_data_keys: usize,
    /// Most shared-data bytes (keys and values) under the filter's vm_id.
    pub max_shared_data_bytes: usize,
    /// Most shared queues registered under the filter's vm_id.
    pub max_queues: usize,
    /// Most items waiting in one shared queue the filter enqueues to.
    pub max_queue_depth: usize,
    /// Most HTTP callouts one context has in flight.
    pub max_callouts_in_flight: usize,
    /// Longest a callout may wait; a callout's timeout of 0 means this, not "forever".
    pub max_callout_timeout: Duration,
    /// Most distinct metrics the VM defines.
    pub max_metrics: usize,
    /// Most bytes one `proxy_log` or WASI `fd_write` call writes (the rest is cut).
    pub max_log_bytes_per_call: usize,
    /// Largest module file accepted (checked before the file is read).
    pub max_module_bytes: u64,
}

impl Default for VmLimits {
    fn default() -> Self {
        VmLimits {
            max_memory_bytes: 128 << 20,
            max_table_elements: 100_000,
            max_tables: 8,
            callback_timeout: Duration::from_millis(100),
            startup_timeout: Duration::from_secs(5),
            max_restarts_per_minute: 30,
            max_shared_data_keys: 100_000,
            max_shared_data_bytes: 64 << 20,
            max_queues: 1_000,
            max_queue_depth: 10_000,
            max_callouts_in_flight: 64,
            max_callout_timeout: Duration::from_secs(60),
            max_metrics: 1_000,
            max_log_bytes_per_call: 64 << 10,
            max_module_bytes: 100 << 20,
        }
    }
}

/// The proxy's own identity, for `xds.node.*` properties.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub metadata: BTreeMap<String, String>,
    /// Metadata whose values are string maps, as Istio's `LABELS`: served as maps (Envoy
    /// serialises a Struct of strings that way), so `node.metadata.LABELS.app` reads one label.
    pub metadata_maps: BTreeMap<String, BTreeMap<String, String>>,
}

/// Process-wide state shared by every VM of every worker.
#[derive(Debug, Default)]
pub struct Services {
    pub shared_data: SharedData,
    pub queues: SharedQueues,
    pub metrics: MetricsRegistry,
    pub node: NodeInfo,
}

impl Services {
    pub fn new(node: NodeInfo) -> Arc<Services> {
        Arc::new(Services { node, ..Services::default() })
    }
}
