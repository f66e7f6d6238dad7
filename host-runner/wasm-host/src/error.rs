//! Errors of the wasm host. Each says who is at fault: the module file, the filter's code, or
//! the host, and whether trying again could help.

use std::fmt;
use std::path::PathBuf;

/// Loading a module failed: the file or its contents are at fault; retrying will not help.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot set up the wasm engine: {0}")]
    Engine(String),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is {size} bytes, more than the {max} a module may be (limits.module_size raises it)", path.display())]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{} is not a valid proxy-wasm module: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{} failed to compile: {reason}", path.display())]
    Compile { path: PathBuf, reason: String },
    #[error("{} imports {module}.{name} ({kind}), which this host does not provide", path.display())]
    MissingImport { path: PathBuf, module: String, name: String, kind: String },
    #[error("{} cannot be linked: {reason}", path.display())]
    Link { path: PathBuf, reason: String },
}

/// Starting a VM (instantiation, `_initialize`/`_start`, on_vm_start, on_configure) failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("filter {filter}: {} does not export a memory named \"memory\"", path.display())]
    NoMemory { filter: String, path: PathBuf },
    #[error("filter {filter}: instantiating {} failed: {reason}", path.display())]
    Instantiate { filter: String, path: PathBuf, reason: String },
    #[error("filter {filter}: {callback} failed: {failure}")]
    Callback { filter: String, callback: &'static str, failure: Failure },
    #[error("filter {filter}: proxy_on_vm_start returned false (the module rejected its VM configuration)")]
    VmStartRejected { filter: String },
    #[error(
        "filter {filter}: proxy_on_configure returned false (the module rejected its configuration; see its log lines above)"
    )]
    ConfigureRejected { filter: String },
}

/// Why a call into a filter did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The guest trapped (unreachable, out-of-bounds access, panic=abort...).
    Trap(String),
    /// The callback ran past its deadline and was interrupted.
    Timeout,
    /// The guest grew its memory past the cap.
    MemoryLimit,
    /// The guest grew a table past the cap.
    TableLimit,
    /// A callback returned a value the ABI does not define.
    BadReturn { callback: &'static str, value: u32 },
    /// The VM failed earlier and has not been rebuilt yet.
    VmFailed,
    /// A call was attempted while the VM was already running one (a host bug guard).
    Busy,
}

impl Failure {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Trap(_) => "trap",
            Failure::Timeout => "timeout",
            Failure::MemoryLimit => "memory",
            Failure::TableLimit => "table",
            Failure::BadReturn { .. } => "bad_return",
            Failure::VmFailed => "vm_failed",
            Failure::Busy => "busy",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Trap(msg) => write!(f, "trapped: {msg}"),
            Failure::Timeout => f.write_str("ran past its callback deadline and was interrupted"),
            Failure::MemoryLimit => f.write_str("grew its memory past the cap"),
            Failure::TableLimit => f.write_str("grew a table past the cap"),
            Failure::BadReturn { callback, value } => {
                write!(f, "{callback} returned {value}, which the ABI does not define")
            }
            Failure::VmFailed => f.write_str("its VM failed earlier"),
            Failure::Busy => f.write_str("was re-entered"),
        }
    }
}
