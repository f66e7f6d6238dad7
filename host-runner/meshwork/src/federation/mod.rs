//! Hamlet federation (the Service Mesh Working Group's multi-vendor federation API, v1alpha2):
//! meshes discover each other's exported services over mutually authenticated gRPC, and
//! meshwork routes to them.
//!
//! - [`model`]: the FederatedService resource, the owner's YAML for it, and the checks a
//!   consumer makes before routing to one;
//! - [`owner`]: `meshwork federation serve`, the DiscoveryService;
//! - [`consumer`]: one stream per owner, filling the [`imports`] registry;
//! - [`proxy`]: the registry as clusters and host routes of `meshwork run`, live;
//! - [`tls`]: mTLS from certificate files, and refusals explained;
//! - [`certs`]: a test CA and per-mesh certificates;
//! - [`bench`]: one owner, many consumers, thousands of services.

pub mod bench;
pub mod certs;
pub mod cli;
pub mod consumer;
pub mod imports;
pub mod model;
pub mod owner;
pub mod proxy;
pub mod tls;

use std::sync::Arc;

use serde::Serialize;

/// Something worth telling the operator (or a test) about a federation stream.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    // Consumer side.
    Connected {
        owner: String,
    },
    Synced {
        owner: String,
        services: usize,
    },
    Upserted {
        owner: String,
        name: String,
        fqdn: String,
        endpoints: Vec<String>,
    },
    Deleted {
        owner: String,
        name: String,
        fqdn: String,
    },
    Disconnected {
        owner: String,
        reason: String,
        retry_in_ms: u64,
    },
    /// The owner stayed unreachable longer than `keep_while_unreachable`.
    Expired {
        owner: String,
        services: usize,
    },
    Stopped {
        owner: String,
        reason: String,
    },
    // Both sides: `consumer` is the peer a NACK concerns (on the consumer side, the owner).
    Nacked {
        consumer: String,
        name: String,
        reason: String,
    },
    // Owner side.
    ConsumerConnected {
        consumer: String,
        services: usize,
    },
    ConsumerSynced {
        consumer: String,
        services: usize,
    },
    ConsumerLeft {
        consumer: String,
        reason: String,
    },
    Refused {
        peer: String,
        reason: String,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Connected { owner } => write!(f, "connected to owner {owner}"),
            Event::Synced { owner, services } => write!(f, "in sync with owner {owner}: {services} service(s)"),
            Event::Upserted { owner, name, fqdn, endpoints } => {
                write!(f, "imported {name} ({fqdn}) from {owner}: {}", endpoints.join(", "))
            }
            Event::Deleted { owner, name, fqdn } => write!(f, "owner {owner} withdrew {name} ({fqdn})"),
            Event::Disconnected { owner, reason, retry_in_ms } => {
                write!(f, "lost owner {owner}: {reason}; retrying in {retry_in_ms} ms")
            }
            Event::Expired { owner, services } => {
                write!(f, "owner {owner} unreachable for too long: its {services} service(s) are no longer routed")
            }
            Event::Stopped { owner, reason } => write!(f, "stopped following owner {owner}: {reason}"),
            Event::Nacked { consumer, name, reason } => write!(f, "NACK of {name} ({consumer}): {reason}"),
            Event::ConsumerConnected { consumer, services } => {
                write!(f, "consumer {consumer} subscribed; sending {services} service(s)")
            }
            Event::ConsumerSynced { consumer, services } => {
                write!(f, "consumer {consumer} holds {services} service(s)")
            }
            Event::ConsumerLeft { consumer, reason } => write!(f, "consumer {consumer} left: {reason}"),
            Event::Refused { peer, reason } => write!(f, "refused {peer}: {reason}"),
        }
    }
}

/// Where events go: printed by the CLI, logged by the proxy, counted by the bench.
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;
