//! A loaded program is an instance with a name (the program's name unless `--name` says
//! otherwise). Its maps (and with `--pin` its links) are pinned under
//! `/sys/fs/bpf/meshwork/<name>/`; what it is and who holds it is recorded in
//! `/run/meshwork/ebpf/<name>.json`, since bpffs holds only BPF objects.
//!
//! A foreground loader that dies without cleaning up (SIGKILL, a crash, a restart) leaves nothing
//! attached — its links die with it — but its map pins and record stay. Such an instance is
//! *stale*: its record names a process that is gone (pid and start time, so a reused pid does not
//! count). Stale instances are listed as such, removed by `unload` (by name, `--stale` or
//! `--all`) and swept by every `load`. A pin directory without a record and without pinned links
//! is stale too; one with pinned links is left alone (it is attached) and listed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::preflight::{BPFFS, Target};
use crate::{EbpfError, Program};

pub const RUN_DIR: &str = "/run/meshwork/ebpf";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Instance {
    pub name: String,
    pub program: Program,
    pub target: Target,
    /// "native" or "skb" for XDP; "cgroup" otherwise.
    pub mode: String,
    /// The loader holding the attachments (foreground load), or none when the links are pinned.
    pub pid: Option<u32>,
    /// The loader's start time (clock ticks since boot, /proc/PID/stat): with `pid`, identifies
    /// the process even after the pid is reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    pub pinned: bool,
    /// Kernel program ids, for bpftool.
    pub program_ids: Vec<u32>,
    pub config: serde_json::Value,
    pub loaded_at_unix: u64,
}

pub fn check_name(name: &str) -> Result<(), EbpfError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(EbpfError::BadInput(format!("instance name {name:?}: use 1-64 letters, digits, '-' or '_'")))
    }
}

pub fn pin_dir(name: &str) -> PathBuf {
    Path::new(BPFFS).join("meshwork").join(name)
}

pub fn maps_dir(name: &str) -> PathBuf {
    pin_dir(name).join("maps")
}

pub fn links_dir(name: &str) -> PathBuf {
    pin_dir(name).join("links")
}

fn meta_path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{name}.json"))
}

impl Instance {
    pub fn save(&self) -> Result<(), EbpfError> {
        std::fs::create_dir_all(RUN_DIR).map_err(EbpfError::io(format!("creating {RUN_DIR}")))?;
        let path = meta_path(&self.name);
        let json = serde_json::to_vec_pretty(self).expect("serialisable");
        // Write then rename: a reader never sees half a record.
        let tmp = path.with_extension(format!("json.{}", std::process::id()));
        std::fs::write(&tmp, json).map_err(EbpfError::io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(EbpfError::io(format!("writing {}", path.display())))
    }

    /// Saves a new record; `false` when one with this name already exists (another loader
    /// claimed the name first).
    pub fn create(&self) -> Result<bool, EbpfError> {
        std::fs::create_dir_all(RUN_DIR).map_err(EbpfError::io(format!("creating {RUN_DIR}")))?;
        let path = meta_path(&self.name);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => {
                serde_json::to_writer_pretty(file, self)
                    .map_err(|e| EbpfError::io(format!("writing {}", path.display()))(e.into()))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(EbpfError::Io { context: format!("creating {}", path.display()), source: e }),
        }
    }

    pub fn read(name: &str) -> Result<Option<Instance>, EbpfError> {
        let path = meta_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| EbpfError::BadInput(format!("{}: not an instance record: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EbpfError::Io { context: format!("reading {}", path.display()), source: e }),
        }
    }

    /// Every recorded instance, by name.
    pub fn all() -> Result<Vec<Instance>, EbpfError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(RUN_DIR) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(EbpfError::Io { context: format!("reading {RUN_DIR}"), source: e }),
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else { continue };
            if let Some(instance) = Instance::read(name)? {
                out.push(instance);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn remove_record(name: &str) {
        let _ = std::fs::remove_file(meta_path(name));
    }

    /// Attached: its loader is alive (the same process: pid and start time), or its links are
    /// pinned.
    pub fn is_live(&self) -> bool {
        match self.pid {
            Some(pid) => self.pid_start.is_some() && process_start(pid) == self.pid_start,
            None => self.pinned && links_dir(&self.name).exists(),
        }
    }

    pub fn state(&self) -> String {
        match (self.is_live(), self.pid) {
            (true, Some(pid)) => format!("attached, held by pid {pid}"),
            (true, None) => "attached, pinned".to_owned(),
            (false, Some(pid)) => {
                format!("stale: its loader (pid {pid}) is gone, nothing attached; `meshwork ebpf unload` cleans up")
            }
            (false, None) => "stale: its pinned links are gone; `meshwork ebpf unload` cleans up".to_owned(),
        }
    }
}

/// The start time of a live, non-zombie process (field 22 of /proc/PID/stat, clock ticks since
/// boot); `None` when there is no such process.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 is fields[19].
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Names of the instance directories under /sys/fs/bpf/meshwork/.
pub fn pinned_names() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(Path::new(BPFFS).join("meshwork")) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// A pin directory nobody has a record of.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Orphan {
    pub name: String,
    /// Links are pinned: the programs are attached, and stay so until `unload`.
    pub links_pinned: bool,
}

impl Orphan {
    pub fn state(&self) -> &'static str {
        if self.links_pinned {
            "attached, pinned, but no record (loaded elsewhere or the record was lost); `meshwork ebpf unload` detaches"
        } else {
            "stale: map pins without a record, nothing attached; `meshwork ebpf unload` cleans up"
        }
    }
}

/// Pin directories without a record.
pub fn orphans() -> Vec<Orphan> {
    pinned_names()
        .into_iter()
        .filter(|name| meta_path(name).symlink_metadata().is_err())
        .map(|name| Orphan { links_pinned: links_dir(&name).exists(), name })
        .collect()
}

/// Removes what stale instances left behind: the pins and records of instances whose loader is
/// gone, and pin directories that have neither a record nor pinned links. Attached instances are
/// never touched. Returns the names cleaned.
pub fn sweep_stale() -> Vec<String> {
    let mut cleaned = Vec::new();
    for instance in Instance::all().unwrap_or_default() {
        if !instance.is_live() && remove_pins(&instance.name).is_ok() {
            Instance::remove_record(&instance.name);
            cleaned.push(instance.name);
        }
    }
    for orphan in orphans() {
        // Re-checked just before: a loader writes its record before it pins anything.
        if !orphan.links_pinned
            && meta_path(&orphan.name).symlink_metadata().is_err()
            && remove_pins(&orphan.name).is_ok()
        {
            cleaned.push(orphan.name);
        }
    }
    cleaned
}

/// Removes a pin directory tree. Unpinning a link whose last reference that was detaches it.
/// What is already gone (another `unload` or sweep got there first) is not an error.
pub fn remove_pins(name: &str) -> Result<(), EbpfError> {
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    // Links first, so nothing runs against maps that are going away.
    for sub in [links_dir(name), maps_dir(name)] {
        if let Ok(entries) = std::fs::read_dir(&sub) {
            for entry in entries.flatten() {
                gone(std::fs::remove_file(entry.path()))
                    .map_err(EbpfError::io(format!("unpinning {}", entry.path().display())))?;
            }
        }
        gone(std::fs::remove_dir(&sub)).map_err(EbpfError::io(format!("removing {}", sub.display())))?;
    }
    let dir = pin_dir(name);
    gone(std::fs::remove_dir(&dir)).map_err(EbpfError::io(format!("removing {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time_and_a_dead_pid_has_none() {
        let me = process_start(std::process::id());
        assert!(me.is_some());
        assert_eq!(process_start(std::process::id()), me, "stable");
        // pid_max is at most 2^22: this pid never exists.
        assert_eq!(process_start(u32::MAX - 1), None);
    }

    fn record(pid: Option<u32>, pid_start: Option<u64>) -> Instance {
        Instance {
            name: "unit-test".into(),
            program: Program::XdpPass,
            target: Target::Interface("lo".into()),
            mode: "native".into(),
            pid,
            pid_start,
            pinned: false,
            program_ids: vec![],
            config: serde_json::Value::Null,
            loaded_at_unix: 0,
        }
    }

    #[test]
    fn a_loader_is_live_only_with_its_own_start_time() {
        let me = std::process::id();
        let start = process_start(me);
        assert!(record(Some(me), start).is_live());
        // The same pid with another start time: the pid was reused, the loader is gone.
        assert!(!record(Some(me), start.map(|s| s + 1)).is_live());
        // Records without a start time cannot be told from a reused pid: stale.
        assert!(!record(Some(me), None).is_live());
        assert!(record(Some(me), None).state().starts_with("stale"));
    }

    #[test]
    fn records_without_a_start_time_still_parse() {
        let mut v = serde_json::to_value(record(Some(1), Some(5))).unwrap();
        v.as_object_mut().unwrap().remove("pid_start");
        let back: Instance = serde_json::from_value(v).unwrap();
        assert_eq!(back.pid_start, None);
    }
}
