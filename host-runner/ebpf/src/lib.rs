//! `meshwork ebpf`: loads meshwork's eBPF programs (built by `make ebpf` into `target/ebpf/`),
//! attaches them to an interface or a cgroup, pins what must outlive the command under
//! `/sys/fs/bpf/meshwork/<instance>/`, reads their maps into stats (percentiles, Prometheus,
//! JSON), detaches them, and writes the DaemonSet that runs them on every node.
//!
//! The object files are read at run time rather than embedded: the BPF build needs a pinned
//! nightly and bpf-linker, which a plain `cargo build` of the workspace must not require. Where
//! they are looked for is in [`objects`].

pub mod cli;
pub mod config;
pub mod error;
pub mod instance;
pub mod loader;
pub mod manifest;
pub mod objects;
pub mod preflight;
pub mod program;
pub mod stats;

pub use error::EbpfError;
pub use program::Program;
