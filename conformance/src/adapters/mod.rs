//! Target adapters: each turns an [`Intent`] into one implementation's configuration and the
//! command that serves it, or says plainly what that implementation cannot express.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::intent::Intent;
use crate::outcome::{Artifact, Implementation};

mod config_text;
pub mod envoy;
pub mod haproxy;
pub mod meshwork;
pub mod nginx;

/// Where a test runs: the address the implementation must listen on, its backends' addresses,
/// a directory of its own for files, and where meshwork's binary and filters are.
#[derive(Clone, Debug)]
pub struct Env {
    pub listen: SocketAddr,
    /// Backend name → the echo server serving it.
    pub backends: BTreeMap<String, SocketAddr>,
    /// Private to this test; removed after it.
    pub dir: PathBuf,
    /// The `meshwork` binary (for the meshwork and envoy-config targets).
    pub meshwork: PathBuf,
    /// Where `<filter>.wasm` modules are (target/filters).
    pub filters: PathBuf,
    /// An admin/metrics listener address the implementation may use.
    pub admin: SocketAddr,
}

/// An implementation configured for one test.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The configuration text, as written to `config_file` (recorded in results).
    pub configuration: String,
    pub config_file: PathBuf,
    /// Program and arguments that serve it in the foreground until killed.
    pub command: Vec<String>,
    /// Prometheus text metrics, when the implementation exports per-backend request counts.
    pub metrics_url: Option<String>,
}

/// What an implementation cannot express, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

pub trait Adapter: Send + Sync {
    /// The target's name on the command line (`meshwork`, `nginx`…).
    fn name(&self) -> &'static str;
    /// Why this target cannot run on this machine, if it cannot (a missing binary).
    fn unavailable(&self) -> Option<String>;
    fn implementation(&self) -> Implementation;
    /// The binaries (and modules) whose behaviour the results describe.
    fn artifacts(&self, env: &Env) -> Vec<Artifact>;
    /// Writes the configuration for `intent` into `env.dir` and says how to serve it.
    fn render(&self, intent: &Intent, env: &Env) -> Result<Rendered, Unsupported>;
}

/// A file by its sha256; None when it cannot be read.
pub fn file_artifact(name: &str, path: &std::path::Path) -> Option<Artifact> {
    Some(Artifact { name: name.into(), path: path.to_path_buf(), sha256: crate::attest::sha256_file(path)? })
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
