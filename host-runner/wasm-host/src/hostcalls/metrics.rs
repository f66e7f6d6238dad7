//! Metrics defined by filters: counters, gauges, histograms (process-wide by name).

use wasmtime::{Caller, Linker};

use crate::abi::{MetricType, Status};
use crate::host_state::HostState;
use crate::memory::{finish, read_string, write_u32, write_u64};
use crate::metrics::MetricError;

fn status(e: MetricError) -> Status {
    match e {
        MetricError::BadArgument => Status::BadArgument,
    }
}

pub fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, HostState>, t: u32, np: u32, ns: u32, rp: u32| {
            finish((|| {
                let name = read_string(&c, np, ns)?;
                let kind = MetricType::from_raw(t).ok_or(Status::BadArgument)?;
                // Over its budget of metrics the VM learns it from the status (the host keeps
                // every metric for the life of the process).
                let id = c.data_mut().define_metric(kind, &name).ok_or(Status::InternalFailure)?;
                write_u32(&mut c, rp, id)
            })())
        },
    )?;
    linker.func_wrap("env", "proxy_increment_metric", |c: Caller<'_, HostState>, id: u32, delta: i64| {
        finish((|| Ok(c.data().metric(id)?.increment(delta).map_err(status)?))())
    })?;
    linker.func_wrap("env", "proxy_record_metric", |c: Caller<'_, HostState>, id: u32, value: u64| {
        finish((|| {
            // Envoy reports NotFound (not BadArgument) for any bad id here.
            let metric = c.data().metric(id).map_err(|_| Status::NotFound)?;
            metric.record(value);
            Ok(())
        })())
    })?;
    linker.func_wrap("env", "proxy_get_metric", |mut c: Caller<'_, HostState>, id: u32, rp: u32| {
        finish((|| {
            let value = c.data().metric(id)?.get().map_err(status)?;
            write_u64(&mut c, rp, value)
        })())
    })?;
    Ok(())
}
