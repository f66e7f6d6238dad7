//! The consuming mesh's side: one stream per owner, kept open. Each resource is checked
//! ([`super::model::import`]) and put in the registry before it is ACKed; a bad one is NACKed
//! with the reason and the registry keeps what it had. When the stream breaks the registry
//! keeps serving what it holds (the specification recommends such a cache; for ever, or for
//! `keep_while_unreachable`) and the stream is opened again with jittered exponential back-off
//! from 1 s; on reconnection the full catalog comes again and whatever the owner no longer
//! exports is dropped. An owner that refuses this mesh (Unauthenticated, or its certificate or
//! ours refused) is not retried: the reason is reported, that owner's stream stops and its
//! services are no longer routed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use meshwork_grpc_api::hamlet::FEDERATED_SERVICE_URL;
use meshwork_grpc_api::hamlet::discovery::discovery_service_client::DiscoveryServiceClient;
use meshwork_grpc_api::hamlet::discovery::stream_response::Operation;
use meshwork_grpc_api::hamlet::discovery::{BidirectionalStream, StreamRequest, StreamResponse};
use meshwork_grpc_api::hamlet::rpc;
use meshwork_grpc_api::hamlet::types::FederatedService;
use prost::Message;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::imports::Imports;
use super::owner::SNAPSHOT_HEADER;
use super::tls::{FailureSlot, MtlsFiles, Noting};
use super::{Event, Observer};

/// The `federation:` section of `meshwork run`'s configuration, and the file
/// `meshwork federation subscribe --config` reads.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// This mesh's name, sent to owners as the stream's context.
    pub mesh: String,
    pub tls: MtlsFiles,
    pub owners: Vec<OwnerSpec>,
    /// How long an unreachable owner's services keep being routed (the specification leaves
    /// it to configuration and recommends a cache); for ever when not given.
    pub keep_while_unreachable: Option<String>,
    /// Most services imported from one owner (100 000 by default): past it new ones are
    /// NACKed, so an owner cannot exhaust this mesh's memory.
    pub max_services_per_owner: Option<usize>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OwnerSpec {
    /// How this mesh names the owner (logs, cluster names).
    pub name: String,
    /// The owner's discovery API, `host:port`.
    pub address: String,
    /// The name its certificate must carry; the host of `address` by default.
    pub server_name: Option<String>,
}

impl OwnerSpec {
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or_else(|| self.address.rsplit_once(':').map_or(&self.address, |(h, _)| h))
    }
}

impl ConsumerSpec {
    /// `keep_while_unreachable`, checked by [`ConsumerSpec::resolve`].
    pub fn keep_while_unreachable(&self) -> Option<Duration> {
        self.keep_while_unreachable.as_deref().and_then(|t| crate::config::parse_duration(t).ok())
    }

    pub fn resolve(&mut self, base: &Path) -> anyhow::Result<()> {
        self.tls.resolve(base);
        if let Some(t) = &self.keep_while_unreachable {
            crate::config::parse_duration(t).map_err(|e| anyhow::anyhow!("federation: keep_while_unreachable: {e}"))?;
        }
        if self.owners.is_empty() {
            anyhow::bail!("federation: owners is empty (name at least one owner to subscribe to)");
        }
        let mut names = HashSet::new();
        for o in &self.owners {
            if !names.insert(&o.name) {
                anyhow::bail!("federation: owner {:?} is listed twice", o.name);
            }
            if o.address.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
                anyhow::bail!(
                    "federation: owner {:?} address {:?} needs a port, like 10.0.0.1:9443",
                    o.name,
                    o.address
                );
            }
        }
        Ok(())
    }
}

const DEFAULT_MAX_SERVICES: usize = 100_000;

/// Back-off after a broken stream: the specification's minimum of 1 s, doubling to 30 s, each
/// wait drawn uniformly from its upper half so that consumers do not return in step.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    fn wait(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        let mut byte = [0u8; 2];
        let _ = getrandom::fill(&mut byte);
        let fraction = f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX);
        (ceiling / 2 + ceiling.mul_f64(fraction / 2.0)).max(Backoff::FIRST)
    }
}

enum End {
    /// Worth opening the stream again; whether the stream had worked (delivered the whole
    /// catalog, or anything from an owner that does not say how big its catalog is).
    Retry(String, bool),
    /// Not worth it.
    Stop(String),
}

fn ended_by(status: &tonic::Status, synced: bool) -> End {
    let message = status.message();
    match status.code() {
        Code::Unauthenticated => End::Stop(format!("the owner refused this mesh (Unauthenticated): {message}")),
        Code::PermissionDenied => End::Stop(format!("the owner refused this mesh (PermissionDenied): {message}")),
        Code::InvalidArgument => End::Stop(format!("the owner found the request invalid: {message}")),
        code => End::Retry(format!("{code:?}: {message}"), synced),
    }
}

/// Follows `owner` until it refuses this mesh; returns why.
pub async fn follow(owner: OwnerSpec, spec: Arc<ConsumerSpec>, imports: Arc<Imports>, observer: Observer) -> String {
    let mut backoff = Backoff { next: Backoff::FIRST };
    let keep = spec.keep_while_unreachable();
    // Since when the owner has been unreachable, while its services are still routed.
    let mut lost_at: Option<tokio::time::Instant> = None;
    loop {
        let slot = FailureSlot::default();
        let end = session(&owner, &spec, &imports, &observer, &slot).await;
        // A certificate problem explains whatever gRPC made of it.
        let refused = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (refused, end) {
            (Some(reason), _) | (None, End::Stop(reason)) => {
                tracing::error!(owner = %owner.name, "federation stopped: {reason}");
                observer(&Event::Stopped { owner: owner.name.clone(), reason: reason.clone() });
                // Not federated any more: what it exported is not routed either.
                let why = format!("is unavailable: its owner {} refused this mesh", owner.name);
                let expired = imports.expire(&owner.name, &why);
                if expired > 0 {
                    observer(&Event::Expired { owner: owner.name.clone(), services: expired });
                }
                return reason;
            }
            (None, End::Retry(reason, worked)) => {
                if worked {
                    backoff = Backoff { next: Backoff::FIRST };
                    lost_at = None;
                }
                let wait = backoff.wait();
                tracing::warn!(owner = %owner.name, "federation stream ended: {reason}; again in {wait:?}");
                observer(&Event::Disconnected {
                    owner: owner.name.clone(),
                    reason,
                    retry_in_ms: wait.as_millis() as u64,
                });
                let again = tokio::time::Instant::now() + wait;
                if let Some(keep) = keep {
                    let expiry = *lost_at.get_or_insert_with(tokio::time::Instant::now) + keep;
                    if expiry < again && imports.count(&owner.name) > 0 {
                        tokio::time::sleep_until(expiry).await;
                        let why = format!(
                            "is unavailable: its owner {} has been unreachable for more than {keep:?}",
                            owner.name
                        );
                        let expired = imports.expire(&owner.name, &why);
                        observer(&Event::Expired { owner: owner.name.clone(), services: expired });
                    }
                }
                tokio::time::sleep_until(again).await;
            }
        }
    }
}

async fn connect(
    owner: &OwnerSpec,
    spec: &ConsumerSpec,
    slot: &FailureSlot,
) -> anyhow::Result<tonic::transport::Channel> {
    let tls = spec.tls.client(owner.server_name(), Vec::new(), "h2")?;
    let server_name = rustls_pki_types::ServerName::try_from(owner.server_name().to_owned())?;
    let (address, peer, slot) = (owner.address.clone(), format!("owner {}", owner.name), slot.clone());
    let connector = tower::service_fn(move |_: http::Uri| {
        let (tls, server_name, address, peer, slot) =
            (tls.clone(), server_name.clone(), address.clone(), peer.clone(), slot.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            let _ = tcp.set_nodelay(true);
            let connector = tokio_rustls::TlsConnector::from(tls.current().config.clone());
            match connector.connect(server_name, tcp).await {
                Ok(stream) => Ok(TokioIo::new(Noting { inner: stream, peer, slot })),
                Err(e) => {
                    if let Some(reason) = super::tls::explain(&e, &peer) {
                        slot.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(reason);
                    }
                    Err(e)
                }
            }
        }
    });
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", owner.address))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(endpoint.connect_with_connector(connector).await?)
}

async fn session(
    owner: &OwnerSpec,
    spec: &ConsumerSpec,
    imports: &Imports,
    observer: &Observer,
    slot: &FailureSlot,
) -> End {
    let channel = match connect(owner, spec, slot).await {
        Ok(c) => c,
        Err(e) => return End::Retry(format!("cannot connect to {}: {e:#}", owner.address), false),
    };
    let mut client = DiscoveryServiceClient::new(channel).max_decoding_message_size(4 << 20);
    let (tx, rx) = mpsc::channel(4);
    let first =
        StreamRequest { resource_url: FEDERATED_SERVICE_URL.into(), context: spec.mesh.clone(), ..Default::default() };
    let _ = tx.send(BidirectionalStream { request: Some(first), response: None }).await;
    let response = match client.establish_stream(ReceiverStream::new(rx)).await {
        Ok(r) => r,
        Err(status) => return ended_by(&status, false),
    };
    let snapshot: Option<usize> =
        response.metadata().get(SNAPSHOT_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    observer(&Event::Connected { owner: owner.name.clone() });
    let mut inbound = response.into_inner();
    let mut seen = HashSet::new();
    let mut received = 0usize;
    let mut synced = false;
    let sync = |seen: &HashSet<String>, synced: &mut bool| {
        // Whatever this owner no longer exports goes.
        for name in imports.names(&owner.name).into_iter().filter(|n| !seen.contains(n)) {
            if let Some(gone) = imports.delete(&owner.name, &name) {
                observer(&Event::Deleted { owner: owner.name.clone(), name, fqdn: gone.fqdn });
            }
        }
        *synced = true;
        observer(&Event::Synced { owner: owner.name.clone(), services: imports.count(&owner.name) });
    };
    if snapshot == Some(0) {
        sync(&seen, &mut synced);
    }
    loop {
        let worked = synced || (snapshot.is_none() && received > 0);
        let message = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return End::Retry("the owner closed the stream".into(), worked),
            Err(status) => return ended_by(&status, worked),
        };
        let Some(response) = message.response else { continue };
        let nonce = response.nonce.clone();
        let limit = spec.max_services_per_owner.unwrap_or(DEFAULT_MAX_SERVICES);
        let (name, outcome) = apply(&owner.name, limit, response, imports, observer);
        let status = match outcome {
            Ok(()) => rpc::Status { code: Code::Ok as i32, ..Default::default() },
            Err(reason) => {
                tracing::warn!(owner = %owner.name, "NACK {name:?}: {reason}");
                observer(&Event::Nacked { consumer: owner.name.clone(), name: name.clone(), reason: reason.clone() });
                rpc::Status { code: Code::InvalidArgument as i32, message: reason, details: Vec::new() }
            }
        };
        seen.insert(name);
        let answer = StreamRequest {
            resource_url: FEDERATED_SERVICE_URL.into(),
            response_nonce: nonce,
            status: Some(status),
            context: spec.mesh.clone(),
        };
        if tx.send(BidirectionalStream { request: Some(answer), response: None }).await.is_err() {
            return End::Retry("the stream closed".into(), synced || snapshot.is_none());
        }
        received += 1;
        if !synced && snapshot == Some(received) {
            sync(&seen, &mut synced);
        }
    }
}

/// Checks one response and applies it; the resource's id, and the reason to NACK it.
fn apply(
    owner: &str,
    limit: usize,
    response: StreamResponse,
    imports: &Imports,
    observer: &Observer,
) -> (String, Result<(), String>) {
    let decoded = response.resource.as_ref().map(|any| {
        if any.type_url != FEDERATED_SERVICE_URL {
            return Err(format!("the resource is a {:?}, not a FederatedService", any.type_url));
        }
        FederatedService::decode(any.value.as_slice()).map_err(|e| format!("the resource does not decode: {e}"))
    });
    let id = match (&response.resource_id, &decoded) {
        (id, _) if !id.is_empty() => id.clone(),
        (_, Some(Ok(s))) => s.name.clone(),
        _ => String::new(),
    };
    if response.resource_url != FEDERATED_SERVICE_URL {
        return (id, Err(format!("resource_url {:?} is not {FEDERATED_SERVICE_URL}", response.resource_url)));
    }
    let outcome = match Operation::try_from(response.operation) {
        Ok(Operation::Upsert) => match decoded {
            None => Err("an UPSERT without a resource".into()),
            Some(Err(e)) => Err(e),
            Some(Ok(service)) if !response.resource_id.is_empty() && response.resource_id != service.name => Err(
                format!("resource_id {:?} differs from the service's name {:?}", response.resource_id, service.name),
            ),
            Some(Ok(service)) => super::model::import(&service).and_then(|import| {
                let (name, fqdn, endpoints) = (import.name.clone(), import.fqdn.clone(), import.endpoints.clone());
                if imports.count(owner) >= limit && !imports.holds(owner, &name) {
                    return Err(format!(
                        "{name}: this mesh imports at most {limit} services from one owner (max_services_per_owner)"
                    ));
                }
                if imports.upsert(owner, import)? {
                    let endpoints = endpoints.iter().map(|(a, p)| format!("{a}:{p}")).collect();
                    observer(&Event::Upserted { owner: owner.to_owned(), name, fqdn, endpoints });
                }
                Ok(())
            }),
        },
        Ok(Operation::Delete) if id.is_empty() => Err("a DELETE without a resource_id".into()),
        // Deleting what is not here is done already (the API is idempotent).
        Ok(Operation::Delete) => {
            if let Some(gone) = imports.delete(owner, &id) {
                observer(&Event::Deleted { owner: owner.to_owned(), name: id.clone(), fqdn: gone.fqdn });
            }
            Ok(())
        }
        _ => Err(format!("operation {} is neither UPSERT nor DELETE", response.operation)),
    };
    (id, outcome)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::model::{EndpointSpec, ServiceSpec};
    use super::super::owner::{Exports, Policy};
    use super::*;

    fn service(name: &str, protocol: &str, port: u32) -> FederatedService {
        ServiceSpec {
            name: name.into(),
            description: String::new(),
            tags: vec![],
            labels: Default::default(),
            fqdn: format!("{name}.owner.example"),
            endpoints: vec![EndpointSpec {
                address: "10.0.0.1".into(),
                port,
                labels: vec![],
                description: String::new(),
            }],
            sans: vec!["owner".into()],
            instances: serde_json::from_value(serde_json::json!([{"id": "i", "protocol": protocol}])).unwrap(),
        }
        .to_proto()
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// The protocol end to end over mTLS on loopback: the catalog, a delta, a delete, a NACK
    /// that keeps the previous state and is retried, and a reconnection that drops what the
    /// owner no longer exports.
    #[tokio::test]
    async fn owner_and_consumer_agree_on_every_change() {
        let dir = std::env::temp_dir().join(format!("meshwork-federation-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let request = super::super::certs::Request {
            out: dir.clone(),
            meshes: vec!["owner".into(), "consumer".into()],
            days: 2,
            expired: vec![],
            sans: vec![],
        };
        super::super::certs::create(&request).unwrap();
        let files = |mesh: &str| MtlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{mesh}.pem")),
            key: dir.join(format!("{mesh}-key.pem")),
        };
        let exports = Exports::new();
        exports.replace_all(vec![service("a", "HTTP", 1), service("b", "GRPC", 2)]);
        // The owner runs on a runtime of its own, so that it can be stopped as a whole.
        let owner = |address: &str, observer: Observer| {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let listener = std::net::TcpListener::bind(address).unwrap();
            listener.set_nonblocking(true).unwrap();
            let bound = listener.local_addr().unwrap();
            let policy = Policy { nack_retry: Duration::from_millis(200), ..Policy::default() };
            let (tls, exports) = (files("owner").server().unwrap(), exports.clone());
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                super::super::owner::serve(listener, tls, exports, policy, observer).await
            });
            (runtime, bound)
        };
        let owner_events = Arc::new(Mutex::new(Vec::<Event>::new()));
        let recorded = owner_events.clone();
        let (server, address) =
            owner("127.0.0.1:0", Arc::new(move |e: &Event| recorded.lock().unwrap().push(e.clone())));
        let spec = Arc::new(ConsumerSpec {
            mesh: "consumer".into(),
            tls: files("consumer"),
            owners: vec![OwnerSpec {
                name: "o".into(),
                address: address.to_string(),
                server_name: Some("owner".into()),
            }],
            keep_while_unreachable: Some("1500ms".into()),
            max_services_per_owner: Some(3),
        });
        let imports = Imports::new();
        let quiet: Observer = Arc::new(|_| {});
        let follower = tokio::spawn(follow(spec.owners[0].clone(), spec.clone(), imports.clone(), quiet.clone()));
        until("the catalog", || imports.len() == 2).await;
        let b = imports.snapshot().services.into_iter().find(|(_, i)| i.name == "b").unwrap().1;
        assert!(b.protocol.http2());

        exports.upsert(service("a", "HTTP", 9));
        until("the new endpoint", || imports.snapshot().services.iter().any(|(_, i)| i.endpoints[0].1 == 9)).await;
        assert!(exports.remove("b"));
        until("the delete", || imports.len() == 1).await;
        assert_eq!(imports.snapshot().withdrawn.len(), 1);

        // A TCP-only service cannot be routed: NACKed, the old version keeps serving, and the
        // owner tries again after nack_retry.
        exports.upsert(service("a", "TCP", 10));
        let nacks = || owner_events.lock().unwrap().iter().filter(|e| matches!(e, Event::Nacked { .. })).count();
        until("two NACKs", || nacks() >= 2).await;
        assert!(imports.snapshot().services.iter().any(|(_, i)| i.name == "a" && i.endpoints[0].1 == 9));
        let reason = owner_events.lock().unwrap().iter().find_map(|e| match e {
            Event::Nacked { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        assert!(reason.unwrap().contains("no instance meshwork can route"));

        // No more than max_services_per_owner (3) from one owner.
        for name in ["x1", "x2", "x3"] {
            exports.upsert(service(name, "HTTP", 4));
        }
        let capped = || {
            owner_events.lock().unwrap().iter().any(|e| matches!(e, Event::Nacked { name, reason, .. } if name == "x3" && reason.contains("at most 3 services")))
        };
        until("the fourth service NACKed", capped).await;
        assert_eq!(imports.names("o"), ["a", "x1", "x2"]);
        for name in ["x1", "x2", "x3"] {
            exports.remove(name);
        }
        until("the extra services gone", || imports.names("o") == ["a"]).await;

        // The owner goes away; while it is gone, "a" is withdrawn. The consumer keeps "a" until
        // the owner is back, then learns from the catalog that it is gone.
        server.shutdown_background();
        exports.remove("a");
        exports.upsert(service("c", "HTTP", 3));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(imports.names("o"), ["a"], "the cache keeps serving while the owner is away");
        let (server, _) = owner(&address.to_string(), quiet);
        until("the catalog after reconnecting", || imports.names("o") == ["c"]).await;

        // Gone for longer than keep_while_unreachable: its services are no longer routed.
        server.shutdown_background();
        until("the imports to expire", || imports.count("o") == 0).await;
        let withdrawn = imports.snapshot().withdrawn;
        let c = withdrawn.iter().find(|(_, w)| w.name == "c").unwrap();
        assert!(c.1.why.contains("has been unreachable for more than"), "{:?}", c.1);
        follower.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
