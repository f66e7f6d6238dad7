//! What /proc says about processes and the machine: CPU time, resident memory, who listens on a
//! port, and the environment an SMP result records.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes an integer and returns one.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based, man 5 proc).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / clock_ticks())
}

/// The sum over several processes (None if any has gone).
pub fn cpu_us_all(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| cpu_us(*p)).sum()
}

/// (resident, peak resident) in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:").unwrap_or(0)))
}

/// Processes holding a listening TCP socket on `port` (any address): found through the
/// socket's inode in /proc/net/tcp{,6} and the processes' descriptor tables.
pub fn pids_listening_on(port: u16) -> Vec<u32> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.insert(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return vec![];
    }
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return pids };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| inodes.contains(l.to_string_lossy().as_ref())))
        {
            pids.push(pid);
        }
    }
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
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let memory_mb = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024);
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
