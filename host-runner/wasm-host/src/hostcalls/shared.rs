//! Shared data and shared queues (process-wide, scoped by vm_id).

use bytes::Bytes;
use wasmtime::{Caller, Linker};

use crate::host_state::HostState;
use crate::memory::{copy_out, finish, read, read_string, write_u32};

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
        |c: Caller<'_, HostState>, kp: u32, ks: u32, vp: u32, vs: u32, cas: u32| {
            finish((|| {
                let key = read(&c, kp, ks)?;
                let value = read(&c, vp, vs)?;
                let state = c.data();
                Ok(state.services.shared_data.set(&state.plugin.vm_id, &key, Bytes::from(value), cas)?)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Caller<'_, HostState>, np: u32, ns: u32, rp: u32| {
            finish((|| {
                let name = read_string(&c, np, ns)?;
                let state = c.data();
                let id = state.services.queues.register(&state.plugin.vm_id, &name, state.queue_owner.clone());
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
    linker.func_wrap("env", "proxy_enqueue_shared_queue", |c: Caller<'_, HostState>, id: u32, p: u32, s: u32| {
        finish((|| {
            let value = read(&c, p, s)?;
            Ok(c.data().services.queues.enqueue(id, Bytes::from(value))?)
        })())
    })?;
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
