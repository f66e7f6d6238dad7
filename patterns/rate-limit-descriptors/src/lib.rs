//! Global rate limiting, as Envoy's rate-limit filter and envoyproxy/ratelimit do it, with no
//! I/O and an injected clock:
//!
//! - [`actions`]: descriptors from request attributes (Envoy's route `rate_limits` actions);
//! - [`limits`]: the limit tree of a rate-limit service's configuration and its lookup;
//! - [`window`]: fixed windows, their reset times and the counter each window is kept under;
//! - [`counters`]: the in-memory store of those counters;
//! - [`check`]: one `ShouldRateLimit` call, from request to answer, around any store;
//! - [`wire`]: the answer's proto3 JSON form and what a client makes of it;
//! - [`proto`] (feature `proto`): the request and the answer in protobuf, the API's gRPC form.
//!
//! The filter (`filters/global-rate-limit`) uses `actions` and `wire`; the service (`meshwork
//! ratelimit-service`) uses the rest.
#![no_std]

extern crate alloc;

pub mod actions;
pub mod check;
pub mod counters;
pub mod descriptor;
pub mod limits;
#[cfg(feature = "proto")]
pub mod proto;
pub mod window;
pub mod wire;

pub use descriptor::{Descriptor, Entry};
