//! Checks made before touching the kernel, so a missing privilege, interface, cgroup2 mount or
//! program type is reported as one line that names it, not as an errno from deep inside a load.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use aya::programs::ProgramType;

use crate::program::{Hook, TargetKind};
use crate::{EbpfError, Program};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub const BPFFS: &str = "/sys/fs/bpf";

/// Loading and attaching need CAP_BPF (or the older CAP_SYS_ADMIN) and CAP_NET_ADMIN (XDP and
/// cgroup attachments). Root has both.
pub fn check_capabilities(action: &'static str) -> Result<(), EbpfError> {
    let effective = effective_capabilities().map_err(EbpfError::io("reading /proc/self/status"))?;
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(EbpfError::NotPermitted { action, needed: "CAP_BPF and CAP_NET_ADMIN", missing: missing.join(" and ") })
}

fn effective_capabilities() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim).unwrap_or("0");
    Ok(u64::from_str_radix(hex, 16).unwrap_or(0))
}

pub fn interface_index(name: &str) -> Result<u32, EbpfError> {
    let c = CString::new(name).map_err(|_| EbpfError::NoInterface(name.to_owned()))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(EbpfError::NoInterface(name.to_owned())),
        index => Ok(index),
    }
}

fn fs_magic(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Where cgroup2 is mounted, from /proc/self/mountinfo.
pub fn cgroup2_mounts() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .collect()
}

/// The cgroup a program attaches to must be a directory of a cgroup2 hierarchy.
pub fn check_cgroup2(path: &Path) -> Result<(), EbpfError> {
    let hint = || match cgroup2_mounts().first() {
        Some(m) => format!("cgroup2 is mounted at {}", m.display()),
        None => "cgroup2 is not mounted anywhere; mount it first: mount -t cgroup2 none /sys/fs/cgroup".to_owned(),
    };
    match fs_magic(path) {
        Ok(CGROUP2_SUPER_MAGIC) => Ok(()),
        Ok(_) => Err(EbpfError::NoCgroup2 {
            path: path.to_owned(),
            problem: format!("not a cgroup2 directory (sock_ops and connect hooks need cgroup v2; {})", hint()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(EbpfError::NoCgroup2 { path: path.to_owned(), problem: format!("does not exist ({})", hint()) })
        }
        Err(e) => Err(EbpfError::NoCgroup2 { path: path.to_owned(), problem: e.to_string() }),
    }
}

/// Mounts bpffs at /sys/fs/bpf when it is not there (most distributions mount it at boot; minimal
/// machines and containers may not).
pub fn ensure_bpffs() -> Result<(), EbpfError> {
    let root = Path::new(BPFFS);
    if fs_magic(root).ok() == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(EbpfError::io(format!("creating {BPFFS}")))?;
    let (src, target, fstype) = (c"bpffs", CString::new(BPFFS).expect("no NUL"), c"bpf");
    // SAFETY: valid strings; no data argument.
    if unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(EbpfError::Io {
            context: format!("bpffs is not mounted at {BPFFS} and mounting it failed"),
            source: e,
        });
    }
    Ok(())
}

/// Names the program type a kernel lacks, before the load fails with a bare EINVAL.
pub fn check_program_types(program: Program) -> Result<(), EbpfError> {
    for (_, hook) in program.hooks() {
        let kind = match hook {
            Hook::Xdp => ProgramType::Xdp,
            Hook::SockOps => ProgramType::SockOps,
            Hook::Connect4 | Hook::Connect6 => ProgramType::CgroupSockAddr,
        };
        // A probe that itself fails says nothing: let the real load report.
        if let Ok(false) = aya::sys::is_program_supported(kind) {
            return Err(EbpfError::KernelLacks { program: program.name(), program_type: hook.program_type() });
        }
    }
    Ok(())
}

/// What a program is attached to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Interface(String),
    Cgroup(PathBuf),
}

impl Target {
    pub fn from_args(program: Program, iface: Option<String>, cgroup: Option<PathBuf>) -> Result<Target, EbpfError> {
        match (program.target_kind(), iface, cgroup) {
            (TargetKind::Interface, Some(i), None) => Ok(Target::Interface(i)),
            (TargetKind::Cgroup, None, Some(c)) => Ok(Target::Cgroup(c)),
            (TargetKind::Cgroup, None, None) => match cgroup2_mounts().into_iter().next() {
                Some(root) => Ok(Target::Cgroup(root)),
                None => Err(EbpfError::NoCgroup2 {
                    path: PathBuf::from("(no --cgroup)"),
                    problem: "cgroup2 is not mounted anywhere; mount it first: mount -t cgroup2 none /sys/fs/cgroup"
                        .into(),
                }),
            },
            (TargetKind::Interface, _, _) => {
                Err(EbpfError::BadInput(format!("{program} attaches to a network interface: give --iface IF")))
            }
            (TargetKind::Cgroup, _, _) => Err(EbpfError::BadInput(format!(
                "{program} attaches to a cgroup: give --cgroup PATH (a cgroup2 directory)"
            ))),
        }
    }

    pub fn check(&self) -> Result<(), EbpfError> {
        match self {
            Target::Interface(i) => interface_index(i).map(|_| ()),
            Target::Cgroup(c) => check_cgroup2(c),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Interface(i) => write!(f, "interface {i}"),
            Target::Cgroup(c) => write!(f, "cgroup {}", c.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface_is_named() {
        let e = interface_index("mw-no-such-if").unwrap_err().to_string();
        assert_eq!(e, "no network interface named \"mw-no-such-if\" in this network namespace");
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        let e = check_cgroup2(Path::new("/tmp")).unwrap_err().to_string();
        assert!(e.starts_with("/tmp: not a cgroup2 directory"), "{e}");
        let e = check_cgroup2(Path::new("/no/such/cgroup")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn targets_match_programs() {
        assert!(Target::from_args(Program::XdpRatelimit, None, Some("/x".into())).is_err());
        assert!(Target::from_args(Program::SockopsRtt, Some("eth0".into()), None).is_err());
        assert_eq!(
            Target::from_args(Program::XdpRatelimit, Some("eth0".into()), None).unwrap(),
            Target::Interface("eth0".into())
        );
    }
}
