//! Everything that can go wrong, each with a message that says what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The caller lacks privileges; retrying as root (or with the capabilities) helps.
    #[error("{action} needs root, or the capabilities {needed}; this process lacks {missing}")]
    NotPermitted { action: &'static str, needed: &'static str, missing: String },
    #[error("no network interface named {0:?} in this network namespace")]
    NoInterface(String),
    #[error("{path}: {problem}")]
    NoCgroup2 { path: PathBuf, problem: String },
    #[error("this kernel cannot load {program_type} programs, which {program} needs")]
    KernelLacks { program: &'static str, program_type: &'static str },
    #[error("{program} config: {message}")]
    BadConfig { program: &'static str, message: String },
    #[error(
        "BPF object {file} not found (looked in {looked}); build it with `make ebpf`, or point MESHWORK_EBPF_DIR at it"
    )]
    ObjectMissing { file: String, looked: String },
    #[error("the kernel verifier rejected {program}: {error}; last verifier lines: {log}")]
    Verifier { program: String, error: std::io::Error, log: String },
    #[error(
        "instance {name:?} is already loaded ({how}); unload it first (`meshwork ebpf unload {name}`) or pick another --name"
    )]
    AlreadyLoaded { name: String, how: String },
    #[error("no loaded instance named {0:?} (see `meshwork ebpf list`)")]
    NoInstance(String),
    #[error("{0}")]
    BadInput(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{context}: {source}")]
    Aya { context: String, source: Box<dyn std::error::Error + Send + Sync> },
}

impl EbpfError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EbpfError {
        let context = context.into();
        move |source| EbpfError::Io { context, source }
    }

    pub fn aya<E: std::error::Error + Send + Sync + 'static>(
        context: impl Into<String>,
    ) -> impl FnOnce(E) -> EbpfError {
        let context = context.into();
        move |source| EbpfError::Aya { context, source: Box::new(source) }
    }
}
