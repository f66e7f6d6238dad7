//! A filter on one worker ([`FilterSlot`]: its current VM, rebuilt after failures within a
//! budget) and what carries out its VMs' effects there ([`WorkerDispatcher`]: callouts and
//! timers).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshwork_wasm_host::metrics::Metric;
use meshwork_wasm_host::{Dispatcher, GrpcEffect, HttpCallRequest, PluginTemplate, PluginVm, QueueOwner, StartError};

use super::callout::callout;
use super::grpc::GrpcCalls;
use super::upstream::Upstreams;
use super::worker::Worker;

pub struct FilterSlot {
    pub template: PluginTemplate,
    vm: RefCell<Option<Rc<PluginVm>>>,
    restarts: RefCell<VecDeque<Instant>>,
    dispatcher: Rc<WorkerDispatcher>,
    queue_owner: Arc<dyn QueueOwner>,
    restarts_metric: Arc<Metric>,
}

impl FilterSlot {
    /// Starts the filter's first VM on this worker; its shared queues report to this slot.
    pub fn start(
        template: PluginTemplate,
        dispatcher: Rc<WorkerDispatcher>,
        worker: &Rc<Worker>,
    ) -> Result<Rc<FilterSlot>, StartError> {
        let (slot_id, queue_owner) = worker.queue_owner();
        let vm = template.instantiate(dispatcher.clone(), queue_owner.clone())?;
        let restarts_metric = template
            .services
            .metrics
            .counter(&format!("meshwork_filter_vm_restarts_total;.;filter=.={}", template.plugin.name));
        let slot = Rc::new(FilterSlot {
            template,
            vm: RefCell::new(Some(vm)),
            restarts: RefCell::default(),
            dispatcher,
            queue_owner: queue_owner.clone(),
            restarts_metric,
        });
        worker.register_slot(slot_id, &slot);
        Ok(slot)
    }

    /// The VM that currently serves this filter, if it is alive.
    pub fn current(&self) -> Option<Rc<PluginVm>> {
        self.vm.borrow().clone().filter(|vm| !vm.is_failed())
    }

    /// The VM for a new stream. A failed VM is replaced by a fresh one, at most
    /// `max_restarts_per_minute` times a minute; past that the filter stays down (and its
    /// fail policy applies) until the window has room again.
    pub fn vm(&self) -> Option<Rc<PluginVm>> {
        if let Some(vm) = self.current() {
            return Some(vm);
        }
        let plugin = &self.template.plugin;
        let now = Instant::now();
        {
            let mut restarts = self.restarts.borrow_mut();
            while restarts.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
                restarts.pop_front();
            }
            if restarts.len() >= plugin.limits.max_restarts_per_minute as usize {
                return None;
            }
            restarts.push_back(now);
        }
        self.restarts_metric.increment(1).ok();
        match self.template.instantiate(self.dispatcher.clone(), self.queue_owner.clone()) {
            Ok(vm) => {
                tracing::info!(filter = %plugin.name, "rebuilt the filter's VM after a failure");
                *self.vm.borrow_mut() = Some(vm.clone());
                Some(vm)
            }
            Err(e) => {
                tracing::error!(filter = %plugin.name, "cannot rebuild the filter's VM: {e}");
                None
            }
        }
    }
}

/// Carries out VM effects on this worker: HTTP and gRPC callouts to its clusters, and tick
/// timers. VMs that outlive a configuration change (only imported services changed) keep
/// their dispatcher, which is bound to the clusters of the configuration in force.
pub struct WorkerDispatcher {
    upstreams: RefCell<Rc<Upstreams>>,
    ticks: RefCell<HashMap<usize, tokio::task::AbortHandle>>,
    grpc: GrpcCalls,
}

impl WorkerDispatcher {
    pub fn new(upstreams: Rc<Upstreams>) -> Rc<WorkerDispatcher> {
        Rc::new(WorkerDispatcher {
            upstreams: RefCell::new(upstreams),
            ticks: RefCell::default(),
            grpc: GrpcCalls::default(),
        })
    }

    /// Callouts from now on go to these clusters.
    pub fn rebind(&self, upstreams: Rc<Upstreams>) {
        *self.upstreams.borrow_mut() = upstreams;
    }
}

impl Drop for WorkerDispatcher {
    fn drop(&mut self) {
        for tick in self.ticks.get_mut().values() {
            tick.abort();
        }
    }
}

impl Dispatcher for WorkerDispatcher {
    fn http_call(&self, vm: &Rc<PluginVm>, call: HttpCallRequest) {
        let cluster = self.upstreams.borrow().get(&call.cluster);
        let vm = Rc::downgrade(vm);
        tokio::task::spawn_local(async move {
            let token = call.token;
            let outcome = match cluster {
                Some(cluster) => callout(&cluster, call).await,
                None => None,
            };
            if let Some(vm) = vm.upgrade() {
                let _ = vm.on_http_call_response(token, outcome);
            }
        });
    }

    fn grpc(&self, vm: &Rc<PluginVm>, effect: GrpcEffect) {
        let upstreams = self.upstreams.borrow().clone();
        self.grpc.handle(&upstreams, vm, effect);
    }

    fn set_tick_period(&self, vm: &Rc<PluginVm>, period: Duration) {
        let key = Rc::as_ptr(vm) as usize;
        if let Some(old) = self.ticks.borrow_mut().remove(&key) {
            old.abort();
        }
        if period.is_zero() {
            return;
        }
        let vm: Weak<PluginVm> = Rc::downgrade(vm);
        let task = tokio::task::spawn_local(async move {
            // Like Envoy, the first tick comes one period after it was set, and each next one a
            // period after the previous callback returned.
            loop {
                tokio::time::sleep(period).await;
                let Some(vm) = vm.upgrade() else { break };
                if vm.is_failed() || vm.on_tick().is_err() {
                    break;
                }
            }
        });
        self.ticks.borrow_mut().insert(key, task.abort_handle());
    }
}
