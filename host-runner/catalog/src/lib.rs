//! meshwork's catalog of patterns, Wasm filters, eBPF programs and policies (`catalog/`).
//!
//! - [`item`] and [`load`]: the metadata and its validation;
//! - [`query`]: list and search;
//! - [`build`]: artifacts, their sha256 and their OCI forms;
//! - [`publish`]: push to, pull from and verify against a registry;
//! - [`export`]: Meshery's catalog page and an Artifact Hub repository;
//! - [`policy`]: the Rego policies, run with regorus;
//! - [`site`]: the static web page with its playground.

pub mod build;
pub mod export;
pub mod item;
pub mod load;
pub mod policy;
pub mod publish;
pub mod query;
pub mod site;

pub use item::{Item, Kind};
pub use load::{Catalog, Entry, Problem, Problems};

/// Where the project's sources are on the web (README links point there).
pub const REPOSITORY: &str = "https://github.com/meshwork/meshwork";

pub(crate) fn hex(bytes: &[u8]) -> String {
    meshwork_oci::hex(bytes)
}
