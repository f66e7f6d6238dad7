//! `meshwork deploy`'s library: documents for each mesh ([`render`]) from the filters to deploy
//! ([`model`]), and their structural validation ([`validate`]).

pub mod model;
pub mod render;
pub mod validate;

pub use model::{Document, ExtraCluster, Fail, FilterSpec, Mesh, Module, Options, TargetRef};
