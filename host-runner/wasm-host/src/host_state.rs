//! The data each VM's store carries: its contexts, the effective context, and the effects its
//! callbacks produced for the proxy to carry out (HTTP callouts, timer changes).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::abi::{AbiVersion, Status};
use crate::grpc::{GrpcCallState, GrpcEffect, GrpcReceived};
use crate::headers::HeaderMap;
use crate::metrics::Metric;
use crate::plugin::{PluginConfig, Services};
use crate::sandbox::{Budget, BudgetLog, Limiter};
use crate::shared::{QueueOwner, VmUsage};
use crate::stream_data::SharedStream;

/// Hashes u32 ids (contexts, metrics) by one multiplication: they are looked up on every
/// hostcall, where SipHash showed in profiles, and ids are not attacker-chosen.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type IdMap<V> = HashMap<u32, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A context of this VM.
#[derive(Clone)]
pub enum Ctx {
    /// The plugin (root) context.
    Root,
    /// A stream context: stage `stage` of the stream's filter chain.
    Stream { stream: SharedStream, stage: usize },
}

/// An HTTP callout a filter dispatched; the proxy sends it and reports back with the token.
#[derive(Debug)]
pub struct HttpCallRequest {
    pub token: u32,
    pub cluster: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: HeaderMap,
    /// Always set: a filter's 0 means the VM's `max_callout_timeout`.
    pub timeout: Duration,
}

/// The answer to a callout, lent to the VM during `proxy_on_http_call_response`.
#[derive(Debug, Default)]
pub struct HttpCallResponse {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: HeaderMap,
}

/// What callbacks asked the proxy to do; drained after every VM call.
#[derive(Debug, Default)]
pub struct Effects {
    pub http_calls: Vec<HttpCallRequest>,
    pub grpc: Vec<GrpcEffect>,
    /// A new tick period (zero stops the timer).
    pub tick_period: Option<Duration>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.http_calls.is_empty() && self.grpc.is_empty() && self.tick_period.is_none()
    }
}

pub struct HostState {
    pub plugin: Arc<PluginConfig>,
    pub services: Arc<Services>,
    pub abi: AbiVersion,
    /// The guest's memory and allocator (`malloc` or `proxy_on_memory_allocate`).
    pub memory: Option<wasmtime::Memory>,
    pub alloc: Option<wasmtime::TypedFunc<u32, u32>>,
    pub limiter: Limiter,
    /// The clusters `proxy_http_call` may name.
    pub clusters: Arc<HashSet<String>>,
    /// What this VM's vm_id holds in shared data and queues, for the budgets.
    pub shared_usage: Arc<VmUsage>,
    pub budgets: BudgetLog,
    pub contexts: IdMap<Ctx>,
    pub root_context_id: u32,
    next_context_id: u32,
    /// The context the host entered the VM with.
    pub current_context: u32,
    /// Set by `proxy_set_effective_context`; 0 means "the current context".
    pub effective_context: u32,
    /// The plugin configuration is readable only during start-up callbacks (as in Envoy).
    pub plugin_config_readable: bool,
    pub effects: Effects,
    /// Lent during `proxy_on_http_call_response`.
    pub callout_response: Option<HttpCallResponse>,
    /// gRPC calls and streams in flight, by token (owned by the root context, as in Envoy).
    pub grpc_calls: IdMap<GrpcCallState>,
    next_grpc_call_seq: u32,
    next_grpc_stream_seq: u32,
    /// Lent during the `proxy_on_grpc_*` callbacks.
    pub grpc_received: Option<GrpcReceived>,
    /// The root context's status for `proxy_get_status` (code, message).
    pub root_status: (u32, Bytes),
    /// Metric ids carry their type in the low two bits, as in Envoy (4, 8… counters).
    pub metrics: IdMap<Arc<Metric>>,
    /// Ids already given out, by (type, name): defining a metric again returns its id.
    metric_ids: HashMap<(u32, String), u32>,
    next_metric_seq: u32,
    next_callout_seq: u32,
    /// Callouts in flight: token → the context that made it, and the count per context.
    callout_owner: IdMap<u32>,
    callouts_in_flight: IdMap<u32>,
    /// The root context returned false from `proxy_on_done` and waits for `proxy_done`.
    pub root_done_pending: bool,
    pub call_data: Bytes,
    pub queue_owner: Arc<dyn QueueOwner>,
    /// Hostcalls that Envoy answers in a surprising way we reproduce (e.g. malformed pairs
    /// clearing a map); counted so a filter author can see them.
    pub abi_warnings: u64,
}

impl HostState {
    pub fn new(
        plugin: Arc<PluginConfig>,
        services: Arc<Services>,
        clusters: Arc<HashSet<String>>,
        abi: AbiVersion,
        limiter: Limiter,
        queue_owner: Arc<dyn QueueOwner>,
    ) -> HostState {
        let shared_usage = services.shared_data.usage(&plugin.vm_id);
        let budgets = BudgetLog::new(&plugin.name, &services.metrics);
        HostState {
            plugin,
            services,
            abi,
            memory: None,
            alloc: None,
            limiter,
            clusters,
            shared_usage,
            budgets,
            contexts: IdMap::default(),
            root_context_id: 0,
            next_context_id: 1,
            current_context: 0,
            effective_context: 0,
            plugin_config_readable: false,
            effects: Effects::default(),
            callout_response: None,
            grpc_calls: IdMap::default(),
            next_grpc_call_seq: 1,
            next_grpc_stream_seq: 1,
            grpc_received: None,
            root_status: (0, Bytes::new()),
            metrics: IdMap::default(),
            metric_ids: HashMap::new(),
            next_metric_seq: 1,
            next_callout_seq: 1,
            callout_owner: IdMap::default(),
            callouts_in_flight: IdMap::default(),
            root_done_pending: false,
            call_data: Bytes::new(),
            queue_owner,
            abi_warnings: 0,
        }
    }

    pub fn new_context_id(&mut self) -> u32 {
        let id = self.next_context_id;
        self.next_context_id = self.next_context_id.wrapping_add(1).max(1);
        id
    }

    /// The context hostcalls act on.
    pub fn context_id(&self) -> u32 {
        if self.effective_context != 0 && self.contexts.contains_key(&self.effective_context) {
            self.effective_context
        } else {
            self.current_context
        }
    }

    pub fn context(&self) -> Option<&Ctx> {
        self.contexts.get(&self.context_id())
    }

    /// The stream and stage of the effective context, or `NotFound`-style absence.
    pub fn stream(&self) -> Option<(SharedStream, usize)> {
        match self.context()? {
            Ctx::Stream { stream, stage } => Some((stream.clone(), *stage)),
            Ctx::Root => None,
        }
    }

    /// The id of metric `name`, defined on first use. A VM defining more distinct metrics
    /// than its budget gets `None` (the registry is process-wide and lives forever).
    pub fn define_metric(&mut self, kind: crate::abi::MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.metric_ids.get(&(kind as u32, name.to_owned())) {
            return Some(*id);
        }
        if self.metric_ids.len() >= self.plugin.limits.max_metrics {
            self.budgets.exceeded(Budget::Metrics, self.plugin.limits.max_metrics as u64);
            return None;
        }
        let metric = self.services.metrics.define(kind, name);
        let id = (self.next_metric_seq << 2) | kind as u32;
        self.next_metric_seq += 1;
        self.metrics.insert(id, metric);
        self.metric_ids.insert((kind as u32, name.to_owned()), id);
        Some(id)
    }

    pub fn metric(&self, id: u32) -> Result<&Arc<Metric>, Status> {
        if id & 3 == 3 {
            return Err(Status::BadArgument);
        }
        self.metrics.get(&id).ok_or(Status::NotFound)
    }

    /// Starts a callout from the current context: its token (4, 8, 12… per VM, as in Envoy),
    /// or `None` when the context already has its budget of callouts in flight.
    pub fn start_callout(&mut self) -> Option<u32> {
        let context = self.context_id();
        let in_flight = self.callouts_in_flight.get(&context).copied().unwrap_or(0);
        if in_flight as usize >= self.plugin.limits.max_callouts_in_flight {
            self.budgets.exceeded(Budget::CalloutsInFlight, self.plugin.limits.max_callouts_in_flight as u64);
            return None;
        }
        let token = self.next_callout_seq << 2;
        self.next_callout_seq = self.next_callout_seq.wrapping_add(1).max(1);
        self.callouts_in_flight.insert(context, in_flight + 1);
        self.callout_owner.insert(token, context);
        Some(token)
    }

    /// Starts a gRPC call (`stream` false) or stream from the current context: its token
    /// (Envoy's: calls 5, 9, 13…, streams 6, 10, 14…), or `None` over the context's budget of
    /// callouts in flight (gRPC and HTTP share it).
    pub fn start_grpc(&mut self, stream: bool) -> Option<u32> {
        let context = self.context_id();
        let in_flight = self.callouts_in_flight.get(&context).copied().unwrap_or(0);
        if in_flight as usize >= self.plugin.limits.max_callouts_in_flight {
            self.budgets.exceeded(Budget::CalloutsInFlight, self.plugin.limits.max_callouts_in_flight as u64);
            return None;
        }
        let seq = if stream { &mut self.next_grpc_stream_seq } else { &mut self.next_grpc_call_seq };
        let token = (*seq << 2) | if stream { 2 } else { 1 };
        *seq = seq.wrapping_add(1).max(1);
        self.callouts_in_flight.insert(context, in_flight + 1);
        self.callout_owner.insert(token, context);
        self.grpc_calls.insert(token, GrpcCallState { stream, context, local_closed: false });
        Some(token)
    }

    /// A gRPC call or stream is over (answered, failed, cancelled): forget it.
    pub fn end_grpc(&mut self, token: u32) {
        self.grpc_calls.remove(&token);
        self.end_callout(token);
    }

    /// A callout's answer arrived (or it was given up): its context has one fewer in flight.
    pub fn end_callout(&mut self, token: u32) {
        let Some(context) = self.callout_owner.remove(&token) else { return };
        if let Some(n) = self.callouts_in_flight.get_mut(&context) {
            *n -= 1;
            if *n == 0 {
                self.callouts_in_flight.remove(&context);
            }
        }
    }
}
