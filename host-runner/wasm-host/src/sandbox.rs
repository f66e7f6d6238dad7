//! What a VM may take from the host, and what happens when it asks for more.
//!
//! Linear memory and tables are capped by a [`Limiter`] that wasmtime consults on every growth;
//! going past a cap traps the VM with a [`SandboxBreach`], which the VM recognises by its type
//! (not by message text) and reports as [`Failure::MemoryLimit`](crate::Failure) or
//! [`Failure::TableLimit`](crate::Failure). Everything else a filter can accumulate through
//! hostcalls — shared data, queue items, callouts, metrics, log bytes — has a [`Budget`]: a
//! hostcall over budget returns a status to the filter (the SDKs decide whether that is fatal),
//! is counted in `meshwork_filter_budget_exceeded_total{filter,budget}` and logged once per VM.

use std::sync::Arc;

use crate::metrics::{Metric, MetricsRegistry};

/// A growth past a sandbox cap; the limiter's error, found again by type when a call fails.
#[derive(Debug, thiserror::Error)]
pub enum SandboxBreach {
    #[error("linear memory would grow to {desired} bytes, past its cap of {cap}")]
    Memory { desired: usize, cap: usize },
    #[error("a table would grow to {desired} elements, past its cap of {cap}")]
    TableElements { desired: usize, cap: usize },
}

/// wasmtime's resource limiter for one VM's store.
#[derive(Debug)]
pub struct Limiter {
    pub max_memory_bytes: usize,
    pub max_table_elements: usize,
    pub max_tables: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            return Err(SandboxBreach::Memory { desired, cap: self.max_memory_bytes }.into());
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements {
            return Err(SandboxBreach::TableElements { desired, cap: self.max_table_elements }.into());
        }
        Ok(true)
    }

    /// One module per store: a VM is one instance.
    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        self.max_tables
    }

    fn memories(&self) -> usize {
        1
    }
}

/// A per-VM or per-context allowance enforced in hostcalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Keys in shared data under this filter's vm_id.
    SharedDataKeys,
    /// Bytes (keys and values) in shared data under this filter's vm_id.
    SharedDataBytes,
    /// Queues registered under this filter's vm_id.
    Queues,
    /// Items waiting in one shared queue.
    QueueDepth,
    /// HTTP callouts in flight from one context.
    CalloutsInFlight,
    /// Distinct metrics one VM defines.
    Metrics,
    /// Bytes one `proxy_log` or WASI `fd_write` call may write.
    LogBytes,
}

impl Budget {
    const ALL: [Budget; 7] = [
        Budget::SharedDataKeys,
        Budget::SharedDataBytes,
        Budget::Queues,
        Budget::QueueDepth,
        Budget::CalloutsInFlight,
        Budget::Metrics,
        Budget::LogBytes,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Budget::SharedDataKeys => "shared_data_keys",
            Budget::SharedDataBytes => "shared_data_bytes",
            Budget::Queues => "queues",
            Budget::QueueDepth => "queue_depth",
            Budget::CalloutsInFlight => "callouts_in_flight",
            Budget::Metrics => "metrics",
            Budget::LogBytes => "log_bytes",
        }
    }

    /// The configuration field (under a filter's `limits:`) that sets it.
    pub fn setting(self) -> &'static str {
        match self {
            Budget::SharedDataKeys => "shared_data_keys",
            Budget::SharedDataBytes => "shared_data_bytes",
            Budget::Queues => "queues",
            Budget::QueueDepth => "queue_depth",
            Budget::CalloutsInFlight => "callouts_in_flight",
            Budget::Metrics => "metrics",
            Budget::LogBytes => "log_bytes_per_call",
        }
    }
}

/// Counts refusals per budget for one VM, logging the first of each kind.
#[derive(Debug)]
pub struct BudgetLog {
    filter: String,
    counters: [Arc<Metric>; 7],
    logged: u8,
}

impl BudgetLog {
    pub fn new(filter: &str, metrics: &MetricsRegistry) -> BudgetLog {
        BudgetLog {
            filter: filter.to_owned(),
            counters: Budget::ALL.map(|b| {
                metrics.counter(&format!(
                    "meshwork_filter_budget_exceeded_total;.;filter=.={filter};.;budget=.={}",
                    b.label()
                ))
            }),
            logged: 0,
        }
    }

    /// Records that a hostcall was refused for `budget` (whose limit is `limit`).
    pub fn exceeded(&mut self, budget: Budget, limit: u64) {
        let i = Budget::ALL.iter().position(|b| *b == budget).unwrap_or(0);
        self.counters[i].increment(1).ok();
        if self.logged & (1 << i) == 0 {
            self.logged |= 1 << i;
            tracing::warn!(
                filter = %self.filter,
                budget = budget.label(),
                limit,
                "filter reached its {} budget of {limit}; further calls over it are refused (limits.{} raises it; counted in meshwork_filter_budget_exceeded_total)",
                budget.label(),
                budget.setting(),
            );
        }
    }
}
