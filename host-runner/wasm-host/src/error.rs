//! Errors of the wasm host. Each says who is at fault: the module file, the filter's code, or
//! the host, and whether trying again could help.

use std::path::PathBuf;

/// Loading a module failed: the file or its contents are at fault; retrying will not help.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot set up the wasm engine: {0}")]
    Engine(String),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
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
    Callback { filter: String, callback: &'static str, failure: crate::vm::Failure },
    #[error("filter {filter}: proxy_on_vm_start returned false (the module rejected its VM configuration)")]
    VmStartRejected { filter: String },
    #[error(
        "filter {filter}: proxy_on_configure returned false (the module rejected its configuration; see its log lines above)"
    )]
    ConfigureRejected { filter: String },
}
