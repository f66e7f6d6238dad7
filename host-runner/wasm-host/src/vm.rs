//! A filter's VM on one worker: a wasmtime instance, its root context, and guarded calls into
//! its callbacks.
//!
//! Every call runs under an epoch deadline and a memory cap. A trap, an interrupt or a memory
//! breach marks the VM failed; the engine applies the filter's fail policy and the proxy builds
//! a fresh VM for later streams. Effects of a call (callouts, timer changes) go to the proxy's
//! [`Dispatcher`] once the call has returned, never from inside it.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{InstancePre, Linker, Store, Trap, TypedFunc, WasmParams, WasmResults};

use crate::abi::AbiVersion;
use crate::error::{Failure, LoadError, StartError};
use crate::grpc::{GrpcEffect, GrpcReceived};
use crate::headers::HeaderMap;
use crate::host_state::{Ctx, HostState, HttpCallRequest, HttpCallResponse};
use crate::module::{EPOCH_TICK, LoadedModule, WasmEngine};
use crate::plugin::{PluginConfig, Services};
use crate::sandbox::{Limiter, SandboxBreach};
use crate::shared::QueueOwner;
use crate::stream_data::{Dir, PerDir, SharedStream};

/// What the proxy provides to carry out a VM's effects.
pub trait Dispatcher {
    fn http_call(&self, vm: &Rc<PluginVm>, request: HttpCallRequest);
    fn set_tick_period(&self, vm: &Rc<PluginVm>, period: Duration);
    /// Starts, feeds, closes or cancels a gRPC call; outcomes come back through the VM's
    /// `on_grpc_*` methods. A host without gRPC (`meshwork run --check`) leaves calls unanswered.
    fn grpc(&self, vm: &Rc<PluginVm>, effect: GrpcEffect) {
        let _ = (vm, effect);
    }
}

/// A filter ready to be instantiated on any worker: compiled, linked, configured.
#[derive(Clone)]
pub struct PluginTemplate {
    pub plugin: Arc<PluginConfig>,
    pub services: Arc<Services>,
    /// The clusters `proxy_http_call` may name.
    pub clusters: Arc<HashSet<String>>,
    pub module: LoadedModule,
    pub abi: AbiVersion,
    pre: InstancePre<HostState>,
    engine: WasmEngine,
}

impl PluginTemplate {
    /// Links `module` for `plugin`; names the first import this host does not provide.
    pub fn new(
        engine: &WasmEngine,
        module: LoadedModule,
        plugin: PluginConfig,
        services: Arc<Services>,
        clusters: Arc<HashSet<String>>,
    ) -> Result<PluginTemplate, LoadError> {
        let path = module.path.clone();
        let abi = match module.info.abi_version() {
            Some(v @ (AbiVersion::V0_2_0 | AbiVersion::V0_2_1)) => v,
            Some(AbiVersion::V0_1_0) => {
                return Err(LoadError::Invalid {
                    path,
                    reason: "declares proxy-wasm ABI 0.1.0, which meshwork does not support (0.2.0 and 0.2.1 are)"
                        .into(),
                });
            }
            None => {
                return Err(LoadError::Invalid {
                    path,
                    reason: "exports no proxy_abi_version_* marker, so it is not a proxy-wasm module".into(),
                });
            }
        };
        for import in &module.info.imports {
            if !crate::hostcalls::provides(abi, &import.module, &import.name) {
                return Err(LoadError::MissingImport {
                    path,
                    module: import.module.clone(),
                    name: import.name.clone(),
                    kind: import.kind.into(),
                });
            }
        }
        let mut linker = Linker::new(engine.engine());
        crate::hostcalls::add_to_linker(&mut linker, abi)
            .map_err(|e| LoadError::Link { path: path.clone(), reason: format!("{e:#}") })?;
        let pre = linker
            .instantiate_pre(&module.module)
            .map_err(|e| LoadError::Link { path: path.clone(), reason: format!("{e:#}") })?;
        Ok(PluginTemplate { plugin: Arc::new(plugin), services, clusters, module, abi, pre, engine: engine.clone() })
    }

    /// Builds and starts a VM: instantiation, `_initialize`/`_start`, the root context,
    /// `proxy_on_vm_start` and `proxy_on_configure`.
    pub fn instantiate(
        &self,
        dispatcher: Rc<dyn Dispatcher>,
        queue_owner: Arc<dyn QueueOwner>,
    ) -> Result<Rc<PluginVm>, StartError> {
        let plugin = &self.plugin;
        let filter = plugin.name.clone();
        let path = self.module.path.clone();
        let limiter = Limiter {
            max_memory_bytes: plugin.limits.max_memory_bytes,
            max_table_elements: plugin.limits.max_table_elements,
            max_tables: plugin.limits.max_tables,
        };
        let state = HostState::new(
            plugin.clone(),
            self.services.clone(),
            self.clusters.clone(),
            self.abi,
            limiter,
            queue_owner,
        );
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(plugin.limits.startup_timeout));
        let instance = self.pre.instantiate(&mut store).map_err(|e| StartError::Instantiate {
            filter: filter.clone(),
            path: path.clone(),
            reason: describe(&e),
        })?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| StartError::NoMemory { filter: filter.clone(), path: path.clone() })?;
        let func = |store: &mut Store<HostState>, name: &'static str| instance.get_func(&mut *store, name);
        macro_rules! typed {
            ($name:literal, $p:ty, $r:ty) => {{
                match func(&mut store, $name) {
                    None => None,
                    Some(f) => match f.typed::<$p, $r>(&store) {
                        Ok(t) => Some(t),
                        Err(_) => {
                            return Err(StartError::Instantiate {
                                filter: filter.clone(),
                                path: path.clone(),
                                reason: format!(
                                    "export {} has the wrong signature (expected {} -> {})",
                                    $name,
                                    stringify!($p),
                                    stringify!($r)
                                ),
                            });
                        }
                    },
                }
            }};
        }
        // Envoy prefers `malloc`, then `proxy_on_memory_allocate`.
        let alloc = match typed!("malloc", u32, u32) {
            Some(f) => Some(f),
            None => typed!("proxy_on_memory_allocate", u32, u32),
        };
        let cb = Callbacks {
            initialize: typed!("_initialize", (), ()),
            start: typed!("_start", (), ()),
            main: typed!("main", (u32, u32), u32),
            main_void: typed!("__main_void", (), u32),
            on_context_create: typed!("proxy_on_context_create", (u32, u32), ()),
            on_vm_start: typed!("proxy_on_vm_start", (u32, u32), u32),
            on_configure: typed!("proxy_on_configure", (u32, u32), u32),
            on_tick: typed!("proxy_on_tick", u32, ()),
            on_queue_ready: typed!("proxy_on_queue_ready", (u32, u32), ()),
            on_headers: PerDir([
                typed!("proxy_on_request_headers", (u32, u32, u32), u32),
                typed!("proxy_on_response_headers", (u32, u32, u32), u32),
            ]),
            on_body: PerDir([
                typed!("proxy_on_request_body", (u32, u32, u32), u32),
                typed!("proxy_on_response_body", (u32, u32, u32), u32),
            ]),
            on_trailers: PerDir([
                typed!("proxy_on_request_trailers", (u32, u32), u32),
                typed!("proxy_on_response_trailers", (u32, u32), u32),
            ]),
            on_http_call_response: typed!("proxy_on_http_call_response", (u32, u32, u32, u32, u32), ()),
            on_grpc_initial_metadata: typed!("proxy_on_grpc_receive_initial_metadata", (u32, u32, u32), ()),
            on_grpc_receive: typed!("proxy_on_grpc_receive", (u32, u32, u32), ()),
            on_grpc_trailing_metadata: typed!("proxy_on_grpc_receive_trailing_metadata", (u32, u32, u32), ()),
            on_grpc_close: typed!("proxy_on_grpc_close", (u32, u32, u32), ()),
            on_new_connection: typed!("proxy_on_new_connection", u32, u32),
            on_data: PerDir([
                typed!("proxy_on_downstream_data", (u32, u32, u32), u32),
                typed!("proxy_on_upstream_data", (u32, u32, u32), u32),
            ]),
            on_connection_close: PerDir([
                typed!("proxy_on_downstream_connection_close", (u32, u32), ()),
                typed!("proxy_on_upstream_connection_close", (u32, u32), ()),
            ]),
            on_done: typed!("proxy_on_done", u32, u32),
            on_log: typed!("proxy_on_log", u32, ()),
            on_delete: typed!("proxy_on_delete", u32, ()),
        };
        if alloc.is_none() {
            return Err(StartError::Instantiate {
                filter: filter.clone(),
                path: path.clone(),
                reason: "exports neither malloc nor proxy_on_memory_allocate, so the host cannot pass it data".into(),
            });
        }
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = alloc;
        let vm = Rc::new(PluginVm {
            store: RefCell::new(store),
            cb,
            plugin: plugin.clone(),
            services: self.services.clone(),
            root_context_id: Cell::new(0),
            failed: Cell::new(false),
            dispatcher,
            timeout_ticks: ticks(plugin.limits.callback_timeout),
            startup_ticks: ticks(plugin.limits.startup_timeout),
        });
        vm.start().map_err(|e| match e {
            StartStep::Failed(callback, failure) => StartError::Callback { filter: filter.clone(), callback, failure },
            StartStep::VmStartRejected => StartError::VmStartRejected { filter: filter.clone() },
            StartStep::ConfigureRejected => StartError::ConfigureRejected { filter: filter.clone() },
        })?;
        Ok(vm)
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64 + 1
}

fn describe(e: &wasmtime::Error) -> String {
    format!("{e:#}")
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CalloutResponseFn = TypedFunc<(u32, u32, u32, u32, u32), ()>;
/// A callback taking (context, count or size, end_of_stream) and answering an action.
type DataFn = TypedFunc<(u32, u32, u32), u32>;
/// A callback taking (context, count) and answering an action.
type CountFn = TypedFunc<(u32, u32), u32>;
/// A callback taking (context, token, count or size or status).
type GrpcFn = TypedFunc<(u32, u32, u32), ()>;

struct Callbacks {
    initialize: Option<TypedFunc<(), ()>>,
    start: Option<TypedFunc<(), ()>>,
    main: Option<TypedFunc<(u32, u32), u32>>,
    main_void: Option<TypedFunc<(), u32>>,
    on_context_create: Option<TypedFunc<(u32, u32), ()>>,
    on_vm_start: Option<TypedFunc<(u32, u32), u32>>,
    on_configure: Option<TypedFunc<(u32, u32), u32>>,
    on_tick: Option<TypedFunc<u32, ()>>,
    on_queue_ready: Option<TypedFunc<(u32, u32), ()>>,
    /// `proxy_on_{request,response}_headers(context, count, end_of_stream)`, by direction.
    on_headers: PerDir<Option<DataFn>>,
    /// `proxy_on_{request,response}_body(context, size, end_of_stream)`.
    on_body: PerDir<Option<DataFn>>,
    /// `proxy_on_{request,response}_trailers(context, count)`.
    on_trailers: PerDir<Option<CountFn>>,
    on_http_call_response: Option<CalloutResponseFn>,
    /// `proxy_on_grpc_*(context, token, count or size or status)`.
    on_grpc_initial_metadata: Option<GrpcFn>,
    on_grpc_receive: Option<GrpcFn>,
    on_grpc_trailing_metadata: Option<GrpcFn>,
    on_grpc_close: Option<GrpcFn>,
    /// Network filters: `proxy_on_new_connection(context)`.
    on_new_connection: Option<TypedFunc<u32, u32>>,
    /// `proxy_on_{downstream,upstream}_data(context, size, end_of_stream)`, by the direction
    /// the data travels ([`Dir::Request`]: from the client).
    on_data: PerDir<Option<DataFn>>,
    /// `proxy_on_{downstream,upstream}_connection_close(context, peer_type)`.
    on_connection_close: PerDir<Option<TypedFunc<(u32, u32), ()>>>,
    on_done: Option<TypedFunc<u32, u32>>,
    on_log: Option<TypedFunc<u32, ()>>,
    on_delete: Option<TypedFunc<u32, ()>>,
}

enum StartStep {
    Failed(&'static str, Failure),
    VmStartRejected,
    ConfigureRejected,
}

/// A started VM of one filter on one worker.
pub struct PluginVm {
    store: RefCell<Store<HostState>>,
    cb: Callbacks,
    pub plugin: Arc<PluginConfig>,
    pub services: Arc<Services>,
    root_context_id: Cell<u32>,
    failed: Cell<bool>,
    dispatcher: Rc<dyn Dispatcher>,
    timeout_ticks: u64,
    startup_ticks: u64,
}

impl fmt::Debug for PluginVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginVm").field("filter", &self.plugin.name).field("failed", &self.failed.get()).finish()
    }
}

/// A stream callback's raw return value, or `Continue` (0) when the module does not export it.
pub type Raw = Result<u32, Failure>;

impl PluginVm {
    pub fn is_failed(&self) -> bool {
        self.failed.get()
    }

    pub fn root_context_id(&self) -> u32 {
        self.root_context_id.get()
    }

    /// Hostcalls Envoy answers oddly that this VM made (see `HostState::abi_warnings`).
    pub fn abi_warnings(&self) -> u64 {
        self.store.try_borrow().map_or(0, |s| s.data().abi_warnings)
    }

    fn start(self: &Rc<Self>) -> Result<(), StartStep> {
        let cb = &self.cb;
        let step = |name: &'static str| move |f: Failure| StartStep::Failed(name, f);
        let deadline = self.startup_ticks;
        // WASI reactor: _initialize then main/__main_void; command: _start.
        if let Some(f) = &cb.initialize {
            self.call_with("_initialize", 0, deadline, f, ()).map_err(step("_initialize"))?;
            if let Some(f) = &cb.main {
                self.call_with("main", 0, deadline, f, (0, 0)).map_err(step("main"))?;
            } else if let Some(f) = &cb.main_void {
                self.call_with("__main_void", 0, deadline, f, ()).map_err(step("__main_void"))?;
            }
        } else if let Some(f) = &cb.start {
            self.call_with("_start", 0, deadline, f, ()).map_err(step("_start"))?;
        }
        let root = {
            let mut store = self.store.borrow_mut();
            let state = store.data_mut();
            let id = state.new_context_id();
            state.contexts.insert(id, Ctx::Root);
            state.root_context_id = id;
            id
        };
        self.root_context_id.set(root);
        let (vm_config_len, config_len) =
            (self.plugin.vm_configuration.len() as u32, self.plugin.configuration.len() as u32);
        self.set_config_readable(true);
        if let Some(f) = &cb.on_context_create {
            self.call_with("proxy_on_context_create", root, deadline, f, (root, 0))
                .map_err(step("proxy_on_context_create"))?;
        }
        self.set_config_readable(false);
        if let Some(f) = &cb.on_vm_start
            && self
                .call_with("proxy_on_vm_start", root, deadline, f, (root, vm_config_len))
                .map_err(step("proxy_on_vm_start"))?
                == 0
        {
            return Err(StartStep::VmStartRejected);
        }
        self.set_config_readable(true);
        let configured = match &cb.on_configure {
            Some(f) => self
                .call_with("proxy_on_configure", root, deadline, f, (root, config_len))
                .map_err(step("proxy_on_configure"))?,
            None => 1,
        };
        self.set_config_readable(false);
        if configured == 0 {
            return Err(StartStep::ConfigureRejected);
        }
        Ok(())
    }

    fn set_config_readable(&self, readable: bool) {
        self.store.borrow_mut().data_mut().plugin_config_readable = readable;
    }

    fn call<P: WasmParams, R: WasmResults>(
        self: &Rc<Self>,
        callback: &'static str,
        context: u32,
        f: &TypedFunc<P, R>,
        params: P,
    ) -> Result<R, Failure> {
        self.call_with(callback, context, self.timeout_ticks, f, params)
    }

    fn call_with<P: WasmParams, R: WasmResults>(
        self: &Rc<Self>,
        callback: &'static str,
        context: u32,
        deadline: u64,
        f: &TypedFunc<P, R>,
        params: P,
    ) -> Result<R, Failure> {
        if self.failed.get() {
            return Err(Failure::VmFailed);
        }
        tracing::trace!(filter = %self.plugin.name, callback, context, "calling into the VM");
        let result = {
            let Ok(mut store) = self.store.try_borrow_mut() else {
                return Err(Failure::Busy);
            };
            store.set_epoch_deadline(deadline);
            let state = store.data_mut();
            let saved = (state.current_context, state.effective_context);
            state.current_context = context;
            state.effective_context = 0;
            let result = f.call(&mut *store, params);
            let state = store.data_mut();
            (state.current_context, state.effective_context) = saved;
            result
        };
        let result = result.map_err(|e| self.fail(callback, e));
        self.flush_effects();
        result
    }

    /// Classifies a call error and marks the VM failed.
    fn fail(&self, callback: &'static str, e: wasmtime::Error) -> Failure {
        let failure = match (e.downcast_ref::<Trap>(), e.downcast_ref::<SandboxBreach>()) {
            (Some(Trap::Interrupt), _) => Failure::Timeout,
            (_, Some(SandboxBreach::Memory { .. })) => Failure::MemoryLimit,
            (_, Some(SandboxBreach::TableElements { .. })) => Failure::TableLimit,
            _ => Failure::Trap(describe(&e)),
        };
        self.failed.set(true);
        tracing::error!(filter = %self.plugin.name, callback, "filter VM failed in {callback}: {failure}");
        failure
    }

    fn flush_effects(self: &Rc<Self>) {
        let effects = match self.store.try_borrow_mut() {
            Ok(mut store) if !store.data().effects.is_empty() => std::mem::take(&mut store.data_mut().effects),
            _ => return,
        };
        if let Some(period) = effects.tick_period {
            self.dispatcher.set_tick_period(self, period);
        }
        for call in effects.http_calls {
            self.dispatcher.http_call(self, call);
        }
        for effect in effects.grpc {
            self.dispatcher.grpc(self, effect);
        }
    }

    /// Creates a stream context for stage `stage` of `stream` and announces it to the module.
    pub fn create_stream_context(self: &Rc<Self>, stream: &SharedStream, stage: usize) -> Result<u32, Failure> {
        if self.failed.get() {
            return Err(Failure::VmFailed);
        }
        let id = {
            let Ok(mut store) = self.store.try_borrow_mut() else {
                return Err(Failure::Busy);
            };
            let state = store.data_mut();
            let id = state.new_context_id();
            state.contexts.insert(id, Ctx::Stream { stream: stream.clone(), stage });
            id
        };
        stream.borrow_mut().stages[stage].context_id = id;
        if let Some(f) = &self.cb.on_context_create {
            self.call("proxy_on_context_create", id, f, (id, self.root_context_id()))?;
        }
        Ok(id)
    }

    /// `proxy_on_request_headers` / `proxy_on_response_headers`.
    pub fn on_headers(self: &Rc<Self>, d: Dir, ctx: u32, headers: u32, eos: bool) -> Raw {
        const NAMES: [&str; 2] = ["proxy_on_request_headers", "proxy_on_response_headers"];
        self.cb.on_headers[d]
            .as_ref()
            .map_or(Ok(0), |f| self.call(NAMES[d.index()], ctx, f, (ctx, headers, eos as u32)))
    }

    /// `proxy_on_request_body` / `proxy_on_response_body`.
    pub fn on_body(self: &Rc<Self>, d: Dir, ctx: u32, size: u32, eos: bool) -> Raw {
        const NAMES: [&str; 2] = ["proxy_on_request_body", "proxy_on_response_body"];
        self.cb.on_body[d].as_ref().map_or(Ok(0), |f| self.call(NAMES[d.index()], ctx, f, (ctx, size, eos as u32)))
    }

    /// `proxy_on_request_trailers` / `proxy_on_response_trailers`.
    pub fn on_trailers(self: &Rc<Self>, d: Dir, ctx: u32, trailers: u32) -> Raw {
        const NAMES: [&str; 2] = ["proxy_on_request_trailers", "proxy_on_response_trailers"];
        self.cb.on_trailers[d].as_ref().map_or(Ok(0), |f| self.call(NAMES[d.index()], ctx, f, (ctx, trailers)))
    }

    /// `proxy_on_log`, `proxy_on_done` and `proxy_on_delete` for a finished stream context, which
    /// is then forgotten. `log` is false when only the teardown should run.
    pub fn finish_stream_context(self: &Rc<Self>, ctx: u32, log: bool) -> Result<(), Failure> {
        let result = (|| {
            if log && let Some(f) = &self.cb.on_log {
                self.call("proxy_on_log", ctx, f, ctx)?;
            }
            if let Some(f) = &self.cb.on_done {
                // The value is ignored for stream contexts.
                self.call("proxy_on_done", ctx, f, ctx)?;
            }
            if let Some(f) = &self.cb.on_delete {
                self.call("proxy_on_delete", ctx, f, ctx)?;
            }
            Ok(())
        })();
        if let Ok(mut store) = self.store.try_borrow_mut() {
            store.data_mut().contexts.remove(&ctx);
        }
        result
    }

    /// Runs `proxy_on_log` only (the engine calls it for every filter before tearing down).
    pub fn on_log(self: &Rc<Self>, ctx: u32) -> Result<(), Failure> {
        self.cb.on_log.as_ref().map_or(Ok(()), |f| self.call("proxy_on_log", ctx, f, ctx))
    }

    /// `proxy_on_done` + `proxy_on_delete` for a stream context, which is then forgotten.
    pub fn delete_stream_context(self: &Rc<Self>, ctx: u32) -> Result<(), Failure> {
        self.finish_stream_context(ctx, false)
    }

    pub fn on_tick(self: &Rc<Self>) -> Result<(), Failure> {
        let root = self.root_context_id();
        self.cb.on_tick.as_ref().map_or(Ok(()), |f| self.call("proxy_on_tick", root, f, root))
    }

    pub fn on_queue_ready(self: &Rc<Self>, queue_id: u32) -> Result<(), Failure> {
        let root = self.root_context_id();
        self.cb.on_queue_ready.as_ref().map_or(Ok(()), |f| self.call("proxy_on_queue_ready", root, f, (root, queue_id)))
    }

    /// Delivers a callout's outcome to the root context (Envoy's behaviour; SDKs route it to the
    /// calling context themselves). `None` is a failed call: no headers, status 11 "reset".
    pub fn on_http_call_response(
        self: &Rc<Self>,
        token: u32,
        response: Option<HttpCallResponse>,
    ) -> Result<(), Failure> {
        if let Ok(mut store) = self.store.try_borrow_mut() {
            store.data_mut().end_callout(token);
        }
        let Some(f) = &self.cb.on_http_call_response else {
            return Ok(());
        };
        let root = self.root_context_id();
        let args = {
            let Ok(mut store) = self.store.try_borrow_mut() else {
                return Err(Failure::Busy);
            };
            let state = store.data_mut();
            let args = match &response {
                Some(r) => (root, token, r.headers.len() as u32, r.body.len() as u32, r.trailers.len() as u32),
                None => {
                    state.root_status = (11, Bytes::from_static(b"reset"));
                    (root, token, 0, 0, 0)
                }
            };
            state.callout_response = response;
            args
        };
        let result = self.call("proxy_on_http_call_response", root, f, args);
        if let Ok(mut store) = self.store.try_borrow_mut() {
            let state = store.data_mut();
            state.callout_response = None;
            if state.root_status.0 == 11 {
                // Envoy clears the message after the callback but keeps the code.
                state.root_status.1 = Bytes::new();
            }
        }
        result
    }

    /// Runs a gRPC callback for `token` with `received` lent to the filter; nothing happens for
    /// a token the filter cancelled (or never had).
    fn grpc_callback(
        self: &Rc<Self>,
        name: &'static str,
        f: Option<&GrpcFn>,
        token: u32,
        arg: u32,
        received: GrpcReceived,
    ) -> Result<(), Failure> {
        let root = self.root_context_id();
        {
            let Ok(mut store) = self.store.try_borrow_mut() else {
                return Err(Failure::Busy);
            };
            let state = store.data_mut();
            if !state.grpc_calls.contains_key(&token) {
                return Ok(());
            }
            state.grpc_received = Some(received);
        }
        let result = f.map_or(Ok(()), |f| self.call(name, root, f, (root, token, arg)));
        if let Ok(mut store) = self.store.try_borrow_mut() {
            store.data_mut().grpc_received = None;
        }
        result
    }

    fn grpc_call_is_unary(&self, token: u32) -> bool {
        self.store.try_borrow().is_ok_and(|s| s.data().grpc_calls.get(&token).is_some_and(|c| !c.stream))
    }

    fn end_grpc(&self, token: u32) {
        if let Ok(mut store) = self.store.try_borrow_mut() {
            store.data_mut().end_grpc(token);
        }
    }

    /// A stream's response headers (`proxy_on_grpc_receive_initial_metadata`).
    pub fn on_grpc_initial_metadata(self: &Rc<Self>, token: u32, metadata: HeaderMap) -> Result<(), Failure> {
        let count = metadata.len() as u32;
        let received = GrpcReceived { initial_metadata: Some(metadata), ..GrpcReceived::default() };
        let f = self.cb.on_grpc_initial_metadata.as_ref();
        self.grpc_callback("proxy_on_grpc_receive_initial_metadata", f, token, count, received)
    }

    /// A response message (`proxy_on_grpc_receive`); a unary call is over after it.
    pub fn on_grpc_message(self: &Rc<Self>, token: u32, message: Bytes) -> Result<(), Failure> {
        let unary = self.grpc_call_is_unary(token);
        let size = message.len() as u32;
        let received = GrpcReceived { message, ..GrpcReceived::default() };
        let result =
            self.grpc_callback("proxy_on_grpc_receive", self.cb.on_grpc_receive.as_ref(), token, size, received);
        if unary {
            self.end_grpc(token);
        }
        result
    }

    /// A stream's trailers (`proxy_on_grpc_receive_trailing_metadata`).
    pub fn on_grpc_trailing_metadata(self: &Rc<Self>, token: u32, metadata: HeaderMap) -> Result<(), Failure> {
        let count = metadata.len() as u32;
        let received = GrpcReceived { trailing_metadata: Some(metadata), ..GrpcReceived::default() };
        let f = self.cb.on_grpc_trailing_metadata.as_ref();
        self.grpc_callback("proxy_on_grpc_receive_trailing_metadata", f, token, count, received)
    }

    /// The end of a call or stream (`proxy_on_grpc_close`): `proxy_get_status` gives the code
    /// and message during the callback; the message is cleared after it, as in Envoy.
    pub fn on_grpc_close(self: &Rc<Self>, token: u32, code: u32, message: Bytes) -> Result<(), Failure> {
        if let Ok(mut store) = self.store.try_borrow_mut() {
            store.data_mut().root_status = (code, message);
        }
        let result = self.grpc_callback(
            "proxy_on_grpc_close",
            self.cb.on_grpc_close.as_ref(),
            token,
            code,
            GrpcReceived::default(),
        );
        self.end_grpc(token);
        if let Ok(mut store) = self.store.try_borrow_mut() {
            store.data_mut().root_status.1 = Bytes::new();
        }
        result
    }

    /// Whether the module is a network (TCP) filter.
    pub fn is_network_filter(&self) -> bool {
        self.cb.on_new_connection.is_some() || self.cb.on_data.0.iter().any(Option::is_some)
    }

    /// Creates a context for stage `stage` of a TCP connection (which the host keeps as a stream
    /// with byte buffers instead of bodies).
    pub fn create_connection_context(self: &Rc<Self>, conn: &SharedStream, stage: usize) -> Result<u32, Failure> {
        self.create_stream_context(conn, stage)
    }

    /// `proxy_on_new_connection`.
    pub fn on_new_connection(self: &Rc<Self>, ctx: u32) -> Raw {
        self.cb.on_new_connection.as_ref().map_or(Ok(0), |f| self.call("proxy_on_new_connection", ctx, f, ctx))
    }

    /// `proxy_on_downstream_data` (`Dir::Request`) / `proxy_on_upstream_data` (`Dir::Response`).
    pub fn on_data(self: &Rc<Self>, d: Dir, ctx: u32, size: u32, eos: bool) -> Raw {
        const NAMES: [&str; 2] = ["proxy_on_downstream_data", "proxy_on_upstream_data"];
        self.cb.on_data[d].as_ref().map_or(Ok(0), |f| self.call(NAMES[d.index()], ctx, f, (ctx, size, eos as u32)))
    }

    /// `proxy_on_downstream_connection_close` / `proxy_on_upstream_connection_close`.
    pub fn on_connection_close(self: &Rc<Self>, d: Dir, ctx: u32, peer: u32) -> Result<(), Failure> {
        const NAMES: [&str; 2] = ["proxy_on_downstream_connection_close", "proxy_on_upstream_connection_close"];
        self.cb.on_connection_close[d].as_ref().map_or(Ok(()), |f| self.call(NAMES[d.index()], ctx, f, (ctx, peer)))
    }

    /// Envoy's teardown of a connection context: `proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete` (in that order for network filters), then the context is forgotten.
    pub fn finish_connection_context(self: &Rc<Self>, ctx: u32) -> Result<(), Failure> {
        let result = (|| {
            if let Some(f) = &self.cb.on_done {
                self.call("proxy_on_done", ctx, f, ctx)?;
            }
            if let Some(f) = &self.cb.on_log {
                self.call("proxy_on_log", ctx, f, ctx)?;
            }
            if let Some(f) = &self.cb.on_delete {
                self.call("proxy_on_delete", ctx, f, ctx)?;
            }
            Ok(())
        })();
        if let Ok(mut store) = self.store.try_borrow_mut() {
            store.data_mut().contexts.remove(&ctx);
        }
        result
    }
}
