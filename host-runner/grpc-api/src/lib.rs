//! The gRPC APIs meshwork serves and calls, generated from the `.proto` files in `proto/`:
//!
//! - [`ratelimit`]: Envoy's rate limit service (`envoy.service.ratelimit.v3`), which
//!   `meshwork ratelimit-service` serves next to its JSON form;
//! - [`test_echo`]: the echo service the tests and benchmarks run as a gRPC upstream.

#![allow(clippy::all, clippy::pedantic, missing_docs, reason = "generated code")]

pub mod ratelimit {
    tonic::include_proto!("envoy.service.ratelimit.v3");
}

pub mod test_echo {
    tonic::include_proto!("meshwork.test.v1");
}
