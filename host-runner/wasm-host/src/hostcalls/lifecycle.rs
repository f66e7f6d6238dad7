//! Contexts, logging, time, timers, status.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use crate::abi::{AbiVersion, LogLevel, Status};
use crate::host_state::HostState;
use crate::memory::{copy_out, finish, with_bytes, write_u32, write_u64};
use crate::sandbox::Budget;

/// Emits a guest log line through `tracing`, if it passes the filter's level.
pub fn emit_log(state: &HostState, level: LogLevel, message: &str) {
    if level < state.plugin.log_level {
        return;
    }
    let filter = state.plugin.name.as_str();
    let context = state.context_id();
    match level {
        LogLevel::Trace => {
            tracing::trace!(target: "meshwork::filter", filter, context, "{message}")
        }
        LogLevel::Debug => {
            tracing::debug!(target: "meshwork::filter", filter, context, "{message}")
        }
        LogLevel::Info => tracing::info!(target: "meshwork::filter", filter, context, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "meshwork::filter", filter, context, "{message}"),
        LogLevel::Error | LogLevel::Critical => {
            tracing::error!(target: "meshwork::filter", filter, context, "{message}")
        }
    }
}

/// The part of a log message within the VM's per-call budget (the rest is cut and counted).
pub fn cap_log<'a>(state: &mut HostState, message: &'a [u8]) -> &'a [u8] {
    let max = state.plugin.limits.max_log_bytes_per_call;
    if message.len() <= max {
        return message;
    }
    state.budgets.exceeded(Budget::LogBytes, max as u64);
    &message[..max]
}

pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

pub fn add(linker: &mut Linker<HostState>, abi: AbiVersion) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_log", |mut c: Caller<'_, HostState>, level: u32, p: u32, s: u32| {
        finish((|| {
            let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
            with_bytes(&mut c, p, s, |message, state| {
                if level >= state.plugin.log_level {
                    let message = cap_log(state, message);
                    emit_log(state, level, &String::from_utf8_lossy(message));
                }
            })
        })())
    })?;
    if abi == AbiVersion::V0_2_1 {
        linker.func_wrap("env", "proxy_get_log_level", |mut c: Caller<'_, HostState>, rp: u32| {
            let level = c.data().plugin.log_level as u32;
            finish(write_u32(&mut c, rp, level))
        })?;
    }
    linker.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Caller<'_, HostState>, rp: u32| {
        finish(write_u64(&mut c, rp, now_ns()))
    })?;
    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: Caller<'_, HostState>, ms: u32| {
        // Timers belong to the root context whatever the effective context is.
        c.data_mut().effects.tick_period = Some(Duration::from_millis(ms as u64));
        Status::Ok as i32
    })?;
    linker.func_wrap("env", "proxy_get_status", |mut c: Caller<'_, HostState>, cp: u32, mpp: u32, msp: u32| {
        finish((|| {
            let (code, message) = c.data().root_status.clone();
            write_u32(&mut c, cp, code)?;
            copy_out(&mut c, &message, mpp, msp)
        })())
    })?;
    linker.func_wrap("env", "proxy_done", |mut c: Caller<'_, HostState>| {
        let state = c.data_mut();
        if state.root_done_pending {
            state.root_done_pending = false;
            Status::Ok as i32
        } else {
            Status::NotFound as i32
        }
    })?;
    linker.func_wrap("env", "proxy_set_effective_context", |mut c: Caller<'_, HostState>, id: u32| {
        let state = c.data_mut();
        if id == 0 || state.contexts.contains_key(&id) {
            state.effective_context = id;
            Status::Ok as i32
        } else {
            Status::BadArgument as i32
        }
    })?;
    linker.func_wrap("env", "pthread_equal", |_: Caller<'_, HostState>, a: u32, b: u32| (a == b) as i32)?;
    linker.func_wrap("env", "emscripten_notify_memory_growth", |_: Caller<'_, HostState>, _: u32| {})?;
    Ok(())
}
