//! The gRPC APIs meshwork serves and calls, generated from the `.proto` files in `proto/`:
//!
//! - [`ratelimit`]: Envoy's rate limit service (`envoy.service.ratelimit.v3`), which
//!   `meshwork ratelimit-service` serves next to its JSON form;
//! - [`hamlet`]: the Service Mesh Working Group's Hamlet federation API, v1alpha2
//!   (`meshwork federation`);
//! - [`test_echo`]: the echo service the tests and benchmarks run as a gRPC upstream.

#![allow(clippy::all, clippy::pedantic, missing_docs, reason = "generated code")]

pub mod ratelimit {
    tonic::include_proto!("envoy.service.ratelimit.v3");
}

pub mod test_echo {
    tonic::include_proto!("meshwork.test.v1");
}

/// Hamlet v1alpha2: the FederatedService resource and the discovery stream. The modules
/// mirror the proto packages, which refer to each other by relative paths.
pub mod hamlet {
    pub mod federation {
        pub mod types {
            pub mod v1alpha2 {
                tonic::include_proto!("federation.types.v1alpha2");
            }
        }
        pub mod resourcediscovery {
            pub mod v1alpha2 {
                tonic::include_proto!("federation.resourcediscovery.v1alpha2");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    pub use federation::resourcediscovery::v1alpha2 as discovery;
    pub use federation::types::v1alpha2 as types;
    pub use google::rpc;

    /// The type URL of a FederatedService, in `resource_url` and in the `Any` that carries it.
    pub const FEDERATED_SERVICE_URL: &str = "type.googleapis.com/federation.types.v1alpha2.FederatedService";
}
