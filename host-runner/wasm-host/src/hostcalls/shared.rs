//! Shared data and shared queues (process-wide, scoped by vm_id).

use bytes::Bytes;
use wasmtime::{Caller, Linker};

use crate::abi::Status;
use crate::host_state::HostState;
use crate::memory::{copy_out, finish, read, read_string, write_u32};
use crate::sandbox::Budget;
use crate::shared::{SetBudget, SetError};

pub fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, HostState>, kp: u32, ks: u32, vpp: u32, vsp: u32, casp: u32| {
            finish((|| {
                let key = read(&c, kp, ks)?;
                let state = c.data();
                let (value, cas) = state.services.shared_data.get(&state.plugin.vm_id, &key)?;
                copy_out(&mut c, &value, vpp, vsp)?;
                write_u32(&mut c, casp, cas)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, HostState>, kp: u32, ks: u32, vp: u32, vs: u32, cas: u32| {
            finish((|| {
                let key = read(&c, kp, ks)?;
                let value = read(&c, vp, vs)?;
                let state = c.data_mut();
                let limits = state.plugin.limits;
                let budget = SetBudget {
                    usage: &state.shared_usage,
                    max_keys: limits.max_shared_data_keys,
                    max_bytes: limits.max_shared_data_bytes,
                };
                let result = state.services.shared_data.set(&state.plugin.vm_id, &key, Bytes::from(value), cas, budget);
                match result {
                    Ok(()) => Ok(()),
                    Err(SetError::CasMismatch) => Err(Status::CasMismatch.into()),
                    // Over budget: the spec has no status for it; INTERNAL_FAILURE is "the host
                    // could not do it".
                    Err(SetError::TooManyKeys) => {
                        state.budgets.exceeded(Budget::SharedDataKeys, limits.max_shared_data_keys as u64);
                        Err(Status::InternalFailure.into())
                    }
                    Err(SetError::TooManyBytes) => {
                        state.budgets.exceeded(Budget::SharedDataBytes, limits.max_shared_data_bytes as u64);
                        Err(Status::InternalFailure.into())
                    }
                }
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Caller<'_, HostState>, np: u32, ns: u32, rp: u32| {
            finish((|| {
                let name = read_string(&c, np, ns)?;
                let state = c.data_mut();
                let max = state.plugin.limits.max_queues;
                let registered = state.services.queues.register(
                    &state.plugin.vm_id,
                    &name,
                    state.queue_owner.clone(),
                    &state.shared_usage,
                    max,
                );
                let Some(id) = registered else {
                    state.budgets.exceeded(Budget::Queues, max as u64);
                    return Err(Status::InternalFailure.into());
                };
                write_u32(&mut c, rp, id)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Caller<'_, HostState>, vp: u32, vs: u32, np: u32, ns: u32, rp: u32| {
            finish((|| {
                let vm_id = read_string(&c, vp, vs)?;
                let name = read_string(&c, np, ns)?;
                let state = c.data();
                let vm_id = if vm_id.is_empty() { state.plugin.vm_id.clone() } else { vm_id };
                let id = state.services.queues.resolve(&vm_id, &name)?;
                write_u32(&mut c, rp, id)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Caller<'_, HostState>, id: u32, p: u32, s: u32| {
            finish((|| {
                let value = read(&c, p, s)?;
                let state = c.data_mut();
                let max = state.plugin.limits.max_queue_depth;
                match state.services.queues.enqueue(id, Bytes::from(value), max) {
                    Ok(()) => Ok(()),
                    Err(Some(status)) => Err(status.into()),
                    Err(None) => {
                        state.budgets.exceeded(Budget::QueueDepth, max as u64);
                        Err(Status::InternalFailure.into())
                    }
                }
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Caller<'_, HostState>, id: u32, pp: u32, sp: u32| {
            finish((|| {
                let value = c.data().services.queues.dequeue(id)?;
                copy_out(&mut c, &value, pp, sp)
            })())
        },
    )?;
    Ok(())
}
