//! What can go wrong, and whose fault it is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The user's input: fix the command line or the file; retrying will not help.
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{0}")]
    BadInput(String),
    #[error("bad profile {path}: {reason}")]
    BadProfile { path: PathBuf, reason: String },
    /// The target: nothing answered before the run; retry once it is up.
    #[error("cannot reach {addr}: {reason} (is the server running?)")]
    Unreachable { addr: String, reason: String },
    /// A worker process or a result file: a bug or a broken environment.
    #[error("worker: {0}")]
    Worker(String),
    #[error("histogram: {0}")]
    Histogram(String),
    /// The cause follows in the error chain (`{:#}` prints it).
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl LoadError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> LoadError {
        LoadError::Io { context: context.into(), source }
    }
}
