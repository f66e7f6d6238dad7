//! What /proc says about processes and the machine: CPU time, resident memory, who listens on a
//! port, and the environment an SMP result records (read through the `procfs` crate).

use std::collections::HashSet;

use procfs::Current;
use procfs::process::{FDTarget, Process};
use serde::{Deserialize, Serialize};

/// CPU time of a process in µs: its CPU-time clock (ns precision, every thread it ever ran,
/// exited ones included, so it never goes backwards), else user + system time in clock ticks
/// (10 ms steps, too coarse for a one-second run at a few hundred requests per second).
/// Summing live threads' schedstat instead would lose the time of threads that have exited.
pub fn cpu_us(pid: u32) -> Option<u64> {
    process_clock_us(pid).or_else(|| stat_cpu_us(pid))
}

fn process_clock_us(pid: u32) -> Option<u64> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t through the valid pointer.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return None;
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through the valid pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(u64::try_from(ts.tv_sec).ok()? * 1_000_000 + u64::try_from(ts.tv_nsec).ok()? / 1000)
}

/// User + system CPU time of a process (all its threads, dead ones included), in µs.
fn stat_cpu_us(pid: u32) -> Option<u64> {
    let stat = Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()?;
    Some((stat.utime + stat.stime) * 1_000_000 / procfs::ticks_per_second().max(1))
}

/// The sum over several processes (None if any has gone).
pub fn cpu_us_all(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| cpu_us(*p)).sum()
}

/// (resident, peak resident) in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = Process::new(i32::try_from(pid).ok()?).ok()?.status().ok()?;
    Some((status.vmrss?, status.vmhwm.unwrap_or(0)))
}

/// Processes holding a listening TCP socket on `port` (any address): found through the
/// socket's inode in /proc/net/tcp{,6} and the processes' descriptor tables.
pub fn pids_listening_on(port: u16) -> Vec<u32> {
    let tables = [procfs::net::tcp(), procfs::net::tcp6()];
    let inodes: HashSet<u64> = tables
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.state == procfs::net::TcpState::Listen && e.local_address.port() == port)
        .map(|e| e.inode)
        .collect();
    if inodes.is_empty() {
        return vec![];
    }
    let mut pids: Vec<u32> = procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter(|p| {
            p.fd().is_ok_and(|fds| {
                fds.flatten().any(|fd| matches!(fd.target, FDTarget::Socket(i) if inodes.contains(&i)))
            })
        })
        .filter_map(|p| u32::try_from(p.pid()).ok())
        .collect();
    pids.sort();
    pids
}

/// The machine, as SMP's EnvironmentConfig (plus what a reader needs to compare runs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Environment {
    pub id: String,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_mb: u64,
    /// SMP's `node` list: this one machine.
    pub node: Vec<Node>,
    pub kubernetes_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Node {
    #[serde(rename = "type")]
    pub kind: String,
    pub cores: usize,
    pub mem_mb: u64,
}

pub fn environment() -> Environment {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let hostname = read("/proc/sys/kernel/hostname").trim().to_owned();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "linux".into());
    let cpu_model =
        procfs::CpuInfo::current().ok().and_then(|c| c.model_name(0).map(str::to_owned)).unwrap_or_default();
    let memory_mb = procfs::Meminfo::current().map_or(0, |m| m.mem_total / (1 << 20));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Environment {
        id: format!("{hostname}-{cores}c-{memory_mb}mb-{kernel}"),
        hostname,
        os,
        kernel,
        cpu_model,
        cores,
        memory_mb,
        node: vec![Node { kind: "host".into(), cores, mem_mb: memory_mb }],
        kubernetes_version: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process() {
        let me = std::process::id();
        let t0 = cpu_us(me).unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let t1 = cpu_us(me).unwrap();
        assert!(t1 > t0);
        // A thread that burns CPU and exits: its time still counts.
        std::thread::spawn(|| {
            let mut x = 0u64;
            for i in 0..20_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
        })
        .join()
        .unwrap();
        assert!(cpu_us(me).unwrap() > t1, "an exited thread's CPU time is kept");
        let (rss, peak) = rss_kib(me).unwrap();
        assert!(rss > 0 && peak >= rss);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pids_listening_on(port), vec![me]);
        let env = environment();
        assert!(env.cores >= 1 && env.memory_mb > 0 && !env.kernel.is_empty());
    }
}
