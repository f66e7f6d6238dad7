//! meshwork's proxy-wasm host: runs proxy-wasm ABI v0.2.x filters (from any SDK) on wasmtime
//! with the semantics and status codes of Envoy's host.
//!
//! - [`module`]: the engine, compilation with a disk cache, inspection of a module.
//! - [`vm`]: one filter's VM on one worker, guarded calls, start-up.
//! - [`engine`]: one HTTP stream through a chain of filters.
//! - [`hostcalls`]: what guests can call.
//! - [`shared`], [`metrics`]: process-wide state all workers share.
//!
//! The crate does no I/O of its own: the proxy feeds streams in, sends callouts and runs
//! timers through a [`vm::Dispatcher`].

pub mod abi;
pub mod engine;
pub mod error;
pub mod foreign;
pub mod grpc;
pub mod headers;
pub mod host_state;
pub mod hostcalls;
pub mod memory;
pub mod metrics;
pub mod module;
pub mod network;
pub mod plugin;
pub mod properties;
pub mod sandbox;
pub mod shared;
pub mod stream_data;
pub mod vm;

pub use engine::{FilterStream, Output};
pub use error::{Failure, LoadError, StartError};
pub use grpc::{GrpcCallRequest, GrpcEffect, GrpcTarget};
pub use headers::HeaderMap;
pub use host_state::{HttpCallRequest, HttpCallResponse};
pub use module::{LoadedModule, ModuleInfo, WasmEngine};
pub use network::{ConnectionStream, Peer};
pub use plugin::{NodeInfo, PluginConfig, Services, VmLimits};
pub use shared::QueueOwner;
pub use stream_data::{CertInfo, Dir, LocalReply, PerDir, StreamInfo, TlsInfo, TrafficDirection};
pub use vm::{Dispatcher, PluginTemplate, PluginVm};
