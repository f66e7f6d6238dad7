//! The WASI preview1 subset Envoy's host provides, with Envoy's answers: stdout/stderr go to the
//! log, clocks and randomness work, configured environment variables are visible, files and
//! sockets do not exist, and `proc_exit` returns instead of ending anything.

use std::sync::OnceLock;
use std::time::Instant;

use wasmtime::{Caller, Linker};

use crate::abi::{LogLevel, errno};
use crate::host_state::HostState;
use crate::hostcalls::lifecycle::{emit_log, now_ns};
use crate::memory::{Fail, Hc, read, write, write_u32, write_u64};
use crate::sandbox::Budget;

pub const MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

pub const FUNCTIONS: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_seek",
    "fd_close",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "path_open",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "sched_yield",
    "poll_oneoff",
    "proc_exit",
];

/// A WASI result: errno, with bad pointers as EFAULT.
fn errno_of(result: Hc) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(errno::SUCCESS),
        Err(Fail::Status(_)) => Ok(errno::FAULT),
        Err(Fail::Trap(e)) => Err(e),
    }
}

fn monotonic_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn fd_write(c: &mut Caller<'_, HostState>, fd: u32, iovs: u32, count: u32, nwritten: u32) -> wasmtime::Result<i32> {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return Ok(errno::BADF),
    };
    errno_of((|| {
        // The guest says how much it writes (iovec lengths can add up past its whole memory):
        // the host gathers at most the per-call budget, and reports the full length as written
        // so the guest does not retry what was cut.
        let max = c.data().plugin.limits.max_log_bytes_per_call;
        let mut text = Vec::new();
        let mut total: u64 = 0;
        for i in 0..count {
            let entry = read(c, iovs.wrapping_add(i.wrapping_mul(8)), 8)?;
            let ptr = u32::from_le_bytes(entry[..4].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(entry[4..].try_into().unwrap_or_default());
            let room = max.saturating_sub(text.len());
            let take = (len as usize).min(room) as u32;
            if take > 0 {
                text.extend_from_slice(&read(c, ptr, take)?);
            }
            total += u64::from(len);
        }
        if total > max as u64 {
            c.data_mut().budgets.exceeded(Budget::LogBytes, max as u64);
        }
        let line = text.strip_suffix(b"\n").unwrap_or(&text);
        if !line.is_empty() {
            emit_log(c.data(), level, &String::from_utf8_lossy(line));
        }
        write_u32(c, nwritten, u32::try_from(total).unwrap_or(u32::MAX))
    })())
}

fn environ(state: &HostState) -> Vec<Vec<u8>> {
    state.plugin.env.iter().map(|(k, v)| format!("{k}={v}\0").into_bytes()).collect()
}

pub fn add(linker: &mut Linker<HostState>, m: &'static str) -> wasmtime::Result<()> {
    linker.func_wrap(m, "fd_write", |mut c: Caller<'_, HostState>, fd: u32, iovs: u32, n: u32, out: u32| {
        fd_write(&mut c, fd, iovs, n, out)
    })?;
    linker.func_wrap(m, "fd_read", |_: Caller<'_, HostState>, _: u32, _: u32, _: u32, _: u32| errno::NOSYS)?;
    linker.func_wrap(m, "fd_seek", |_: Caller<'_, HostState>, _: u32, _: i64, _: u32, _: u32| errno::SUCCESS)?;
    linker.func_wrap(m, "fd_close", |_: Caller<'_, HostState>, _: u32| errno::SUCCESS)?;
    linker.func_wrap(m, "fd_fdstat_get", |mut c: Caller<'_, HostState>, fd: u32, p: u32| {
        if fd != 1 && fd != 2 {
            return errno::BADF;
        }
        // filetype 0, flags 0, rights_base FD_WRITE (64), inheriting 0. Envoy ignores a failed write.
        let mut stat = [0u8; 24];
        stat[8..16].copy_from_slice(&64u64.to_le_bytes());
        let _ = write(&mut c, p, &stat);
        errno::SUCCESS
    })?;
    linker.func_wrap(m, "fd_fdstat_set_flags", |_: Caller<'_, HostState>, _: u32, _: u32| errno::NOSYS)?;
    linker.func_wrap(m, "fd_prestat_get", |_: Caller<'_, HostState>, _: u32, _: u32| errno::BADF)?;
    linker.func_wrap(m, "fd_prestat_dir_name", |_: Caller<'_, HostState>, _: u32, _: u32, _: u32| errno::NOSYS)?;
    linker.func_wrap(
        m,
        "path_open",
        |_: Caller<'_, HostState>, _: u32, _: u32, _: u32, _: u32, _: u32, _: i64, _: i64, _: u32, _: u32| 44, // ENOENT
    )?;
    linker.func_wrap(m, "environ_sizes_get", |mut c: Caller<'_, HostState>, np: u32, sp: u32| {
        let env = environ(c.data());
        let size: usize = env.iter().map(Vec::len).sum();
        errno_of((|| {
            write_u32(&mut c, np, env.len() as u32)?;
            write_u32(&mut c, sp, size as u32)
        })())
    })?;
    linker.func_wrap(m, "environ_get", |mut c: Caller<'_, HostState>, array: u32, buf: u32| {
        let env = environ(c.data());
        errno_of((|| {
            let mut at = buf;
            for (i, entry) in env.iter().enumerate() {
                write_u32(&mut c, array.wrapping_add(4 * i as u32), at)?;
                write(&mut c, at, entry)?;
                at = at.wrapping_add(entry.len() as u32);
            }
            Ok(())
        })())
    })?;
    linker.func_wrap(m, "args_sizes_get", |mut c: Caller<'_, HostState>, ap: u32, sp: u32| {
        errno_of((|| {
            write_u32(&mut c, ap, 0)?;
            write_u32(&mut c, sp, 0)
        })())
    })?;
    linker.func_wrap(m, "args_get", |_: Caller<'_, HostState>, _: u32, _: u32| errno::SUCCESS)?;
    linker.func_wrap(m, "clock_time_get", |mut c: Caller<'_, HostState>, id: u32, _precision: i64, p: u32| {
        let now = match id {
            0 => now_ns(),
            1 => monotonic_ns(),
            _ => return Ok(errno::NOTSUP),
        };
        errno_of(write_u64(&mut c, p, now))
    })?;
    linker.func_wrap(m, "clock_res_get", |mut c: Caller<'_, HostState>, id: u32, p: u32| {
        if id > 1 {
            return Ok(errno::NOTSUP);
        }
        errno_of(write_u64(&mut c, p, 1))
    })?;
    linker.func_wrap(m, "random_get", |mut c: Caller<'_, HostState>, p: u32, len: u32| {
        if len > 65536 {
            return Ok(errno::INVAL);
        }
        let mut bytes = vec![0u8; len as usize];
        if getrandom::fill(&mut bytes).is_err() {
            return Ok(errno::NOSYS);
        }
        errno_of(write(&mut c, p, &bytes))
    })?;
    linker.func_wrap(m, "sched_yield", |_: Caller<'_, HostState>| errno::SUCCESS)?;
    linker.func_wrap(m, "poll_oneoff", |mut c: Caller<'_, HostState>, _in: u32, _out: u32, _n: u32, np: u32| {
        errno_of(write_u32(&mut c, np, 0))
    })?;
    linker.func_wrap(m, "proc_exit", |c: Caller<'_, HostState>, code: u32| {
        tracing::debug!(filter = %c.data().plugin.name, code, "guest called proc_exit; ignored as in Envoy");
    })?;
    Ok(())
}
