//! Where the BPF objects are found at run time, first match wins:
//! 1. `$MESHWORK_EBPF_DIR`;
//! 2. `../ebpf/` next to the running binary: `target/release/meshwork` finds `target/ebpf/`,
//!    where `make ebpf` puts them;
//! 3. `target/ebpf/` under the current directory (a checkout);
//! 4. `/usr/lib/meshwork/ebpf/` (a container image or package).

use std::path::PathBuf;

use crate::{EbpfError, Program};

pub const ENV_DIR: &str = "MESHWORK_EBPF_DIR";

pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(ENV_DIR) {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(bin_dir) = exe.parent()
        && let Some(target) = bin_dir.parent()
    {
        dirs.push(target.join("ebpf"));
    }
    dirs.push(PathBuf::from("target/ebpf"));
    dirs.push(PathBuf::from("/usr/lib/meshwork/ebpf"));
    dirs
}

pub fn find(program: Program) -> Result<PathBuf, EbpfError> {
    let file = program.object_file();
    let dirs = search_dirs();
    dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file()).ok_or_else(|| EbpfError::ObjectMissing {
        file,
        looked: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}
