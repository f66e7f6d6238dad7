//! The owning mesh's side (`meshwork federation serve`): the DiscoveryService. Each consumer
//! gets one stream. On it the owner sends every exported service, then each change, one message
//! in flight (the specification's rule), and waits for the ACK of each nonce. It keeps per
//! consumer what the consumer has ACKed, so a change sends only what that consumer lacks, and a
//! NACKed resource is logged with the consumer's reason and sent again when it changes or
//! after `nack_retry`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use meshwork_grpc_api::hamlet::FEDERATED_SERVICE_URL;
use meshwork_grpc_api::hamlet::discovery::discovery_service_server::{DiscoveryService, DiscoveryServiceServer};
use meshwork_grpc_api::hamlet::discovery::stream_response::Operation;
use meshwork_grpc_api::hamlet::discovery::{BidirectionalStream, StreamResponse};
use meshwork_grpc_api::hamlet::types::FederatedService;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::tls::{Accepted, Peer};
use super::{Event, Observer};
use crate::tls::ServerTls;

/// The response header that tells a consumer how many responses make up the full catalog sent
/// on connect, so it can drop what it imported earlier and the owner no longer has. Other
/// Hamlet consumers ignore it; the specification leaves reconciliation open.
pub const SNAPSHOT_HEADER: &str = "meshwork-federation-snapshot";

struct Entry {
    version: u64,
    service: Arc<FederatedService>,
}

/// The services this mesh exports, versioned; every change is broadcast by name to the
/// consumers' streams.
pub struct Exports {
    entries: RwLock<BTreeMap<String, Entry>>,
    next_version: std::sync::atomic::AtomicU64,
    changes: broadcast::Sender<Arc<Vec<String>>>,
}

impl Exports {
    pub fn new() -> Arc<Exports> {
        Arc::new(Exports { entries: RwLock::default(), next_version: 1.into(), changes: broadcast::Sender::new(1024) })
    }

    fn version(&self) -> u64 {
        self.next_version.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn publish(&self, names: Vec<String>) {
        if !names.is_empty() {
            let _ = self.changes.send(Arc::new(names));
        }
    }

    /// Makes the exported set exactly `services`; what changed. Each must have passed
    /// [`super::model::check`].
    pub fn replace_all(&self, services: Vec<FederatedService>) -> usize {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let wanted: HashSet<String> = services.iter().map(|s| s.name.clone()).collect();
        let mut changed: Vec<String> = entries.keys().filter(|n| !wanted.contains(*n)).cloned().collect();
        for name in &changed {
            entries.remove(name);
        }
        for service in services {
            if entries.get(&service.name).is_some_and(|e| *e.service == service) {
                continue;
            }
            changed.push(service.name.clone());
            entries.insert(service.name.clone(), Entry { version: self.version(), service: Arc::new(service) });
        }
        drop(entries);
        let n = changed.len();
        self.publish(changed);
        n
    }

    pub fn upsert(&self, service: FederatedService) {
        let name = service.name.clone();
        let entry = Entry { version: self.version(), service: Arc::new(service) };
        self.entries.write().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), entry);
        self.publish(vec![name]);
    }

    #[cfg(test)]
    pub fn remove(&self, name: &str) -> bool {
        let removed = self.entries.write().unwrap_or_else(|p| p.into_inner()).remove(name).is_some();
        if removed {
            self.publish(vec![name.to_owned()]);
        }
        removed
    }

    fn get(&self, name: &str) -> Option<(u64, Arc<FederatedService>)> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).get(name).map(|e| (e.version, e.service.clone()))
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// How the owner treats consumers.
#[derive(Clone, Debug)]
pub struct Policy {
    /// URI or DNS SANs allowed to subscribe; empty allows any certificate from the CA.
    pub consumers: Vec<String>,
    /// When a NACKed resource that has not changed is sent again.
    pub nack_retry: Duration,
    /// A consumer that does not answer a nonce within this is disconnected.
    pub ack_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { consumers: Vec::new(), nack_retry: Duration::from_secs(30), ack_timeout: Duration::from_secs(30) }
    }
}

struct Discovery {
    exports: Arc<Exports>,
    policy: Arc<Policy>,
    observer: Observer,
}

#[tonic::async_trait]
impl DiscoveryService for Discovery {
    type EstablishStreamStream = ReceiverStream<Result<BidirectionalStream, Status>>;

    async fn establish_stream(
        &self,
        request: Request<Streaming<BidirectionalStream>>,
    ) -> Result<Response<Self::EstablishStreamStream>, Status> {
        let peer = request
            .extensions()
            .get::<Peer>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        if !self.policy.consumers.is_empty() && !peer.sans.iter().any(|s| self.policy.consumers.contains(s)) {
            let reason = format!(
                "certificate SANs [{}] are not among the consumers this owner federates with",
                peer.sans.join(", ")
            );
            tracing::warn!("refused consumer {}: {reason}", peer.describe());
            (self.observer)(&Event::Refused { peer: peer.addr.to_string(), reason: reason.clone() });
            return Err(Status::unauthenticated(reason));
        }
        // Subscribe before the snapshot, so no change falls between them.
        let changes = self.exports.changes.subscribe();
        let snapshot = self.exports.names();
        let (tx, rx) = mpsc::channel(4);
        let mut response = Response::new(ReceiverStream::new(rx));
        response.metadata_mut().insert(SNAPSHOT_HEADER, snapshot.len().into());
        let session = Session {
            exports: self.exports.clone(),
            policy: self.policy.clone(),
            observer: self.observer.clone(),
            consumer: peer.describe(),
            tx,
            held: HashMap::new(),
            rejected: HashMap::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            nonce: 0,
        };
        tokio::spawn(session.run(request.into_inner(), snapshot, changes));
        Ok(response)
    }
}

/// One consumer's stream.
struct Session {
    exports: Arc<Exports>,
    policy: Arc<Policy>,
    observer: Observer,
    consumer: String,
    tx: mpsc::Sender<Result<BidirectionalStream, Status>>,
    /// Name → the version the consumer ACKed.
    held: HashMap<String, u64>,
    /// Name → the version it NACKed, and when to send it again.
    rejected: HashMap<String, (u64, Instant)>,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    nonce: u64,
}

enum Next {
    Send(StreamResponse, Option<u64>),
    Skip,
}

impl Session {
    fn enqueue(&mut self, name: String) {
        if self.queued.insert(name.clone()) {
            self.queue.push_back(name);
        }
    }

    fn take_changes(&mut self, change: Result<Arc<Vec<String>>, broadcast::error::RecvError>) {
        match change {
            Ok(names) => names.iter().for_each(|n| self.enqueue(n.clone())),
            // Too far behind to know what changed: look at everything.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let all: Vec<String> = self.exports.names().into_iter().chain(self.held.keys().cloned()).collect();
                all.into_iter().for_each(|n| self.enqueue(n));
            }
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }

    /// What `name` needs: its current state unless the consumer has it (or NACKed it and it is
    /// not yet time to try again). `always` sends it regardless (the catalog sent on connect).
    fn next(&mut self, name: &str, always: bool, context: &str) -> Next {
        let current = self.exports.get(name);
        let held = self.held.get(name).copied();
        if !always {
            match (&current, held) {
                (Some((v, _)), Some(h)) if *v == h => return Next::Skip,
                (None, None) => return Next::Skip,
                _ => {}
            }
            if let (Some((v, _)), Some((rv, due))) = (&current, self.rejected.get(name))
                && v == rv
                && Instant::now() < *due
            {
                return Next::Skip;
            }
        }
        self.nonce += 1;
        let (operation, resource, version) = match current {
            Some((v, s)) => (Operation::Upsert, (*s).clone(), Some(v)),
            // A delete carries the id and the name alone: the consumer needs nothing else.
            None => (Operation::Delete, FederatedService { name: name.to_owned(), ..Default::default() }, None),
        };
        let response = StreamResponse {
            nonce: self.nonce.to_string(),
            resource_url: FEDERATED_SERVICE_URL.into(),
            resource_id: name.to_owned(),
            resource: Some(prost_types::Any {
                type_url: FEDERATED_SERVICE_URL.into(),
                value: resource.encode_to_vec(),
            }),
            operation: operation as i32,
            context: context.to_owned(),
        };
        Next::Send(response, version)
    }

    async fn fail(&self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }

    async fn run(
        mut self,
        mut inbound: Streaming<BidirectionalStream>,
        snapshot: Vec<String>,
        mut changes: broadcast::Receiver<Arc<Vec<String>>>,
    ) {
        let first = match inbound.message().await {
            Ok(Some(BidirectionalStream { request: Some(r), .. })) => r,
            Ok(Some(_)) => {
                return self.fail(Status::invalid_argument("the first message must carry a StreamRequest")).await;
            }
            Ok(None) | Err(_) => return,
        };
        if first.resource_url != FEDERATED_SERVICE_URL {
            let reason = format!(
                "resource_url {:?} is not served; this owner serves {FEDERATED_SERVICE_URL}",
                first.resource_url
            );
            return self.fail(Status::invalid_argument(reason)).await;
        }
        let context = first.context;
        (self.observer)(&Event::ConsumerConnected { consumer: self.consumer.clone(), services: snapshot.len() });
        let mut initial = snapshot.len();
        let mut synced = false;
        snapshot.into_iter().for_each(|n| self.enqueue(n));
        let reason = loop {
            let mut next = None;
            while let Some(name) = self.queue.pop_front() {
                self.queued.remove(&name);
                let always = initial > 0;
                initial = initial.saturating_sub(1);
                if let Next::Send(response, version) = self.next(&name, always, &context) {
                    next = Some((name, response, version));
                    break;
                }
            }
            let retry_due = self.rejected.values().map(|(_, due)| *due).min();
            let Some((name, response, version)) = next else {
                if !synced {
                    synced = true;
                    (self.observer)(&Event::ConsumerSynced {
                        consumer: self.consumer.clone(),
                        services: self.held.len(),
                    });
                }
                tokio::select! {
                    change = changes.recv() => self.take_changes(change),
                    message = inbound.message() => match message {
                        Ok(Some(_)) => {} // an answer to nothing in flight: ignored
                        Ok(None) => break "closed the stream".to_string(),
                        Err(e) => break e.message().to_string(),
                    },
                    () = sleep_until(retry_due) => {
                        let now = Instant::now();
                        let due: Vec<String> = self.rejected.iter().filter(|(_, (_, t))| *t <= now).map(|(n, _)| n.clone()).collect();
                        for n in due {
                            self.rejected.remove(&n);
                            self.enqueue(n);
                        }
                    }
                }
                continue;
            };
            let nonce = response.nonce.clone();
            if self.tx.send(Ok(BidirectionalStream { request: None, response: Some(response) })).await.is_err() {
                break "went away".into();
            }
            // One message in flight: wait for its answer, taking note of changes meanwhile.
            let deadline = Instant::now() + self.policy.ack_timeout;
            let answer = loop {
                tokio::select! {
                    change = changes.recv() => self.take_changes(change),
                    message = inbound.message() => match message {
                        Ok(Some(BidirectionalStream { request: Some(r), .. })) if r.response_nonce == nonce => break Ok(r.status),
                        Ok(Some(_)) => {}
                        Ok(None) => break Err("closed the stream".to_string()),
                        Err(e) => break Err(e.message().to_string()),
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        let reason = format!("no answer to nonce {nonce} within {:?}", self.policy.ack_timeout);
                        self.fail(Status::deadline_exceeded(reason.clone())).await;
                        break Err(reason);
                    }
                }
            };
            match answer {
                Err(reason) => break reason,
                Ok(status) if status.as_ref().is_none_or(|s| s.code == 0) => {
                    self.rejected.remove(&name);
                    match version {
                        Some(v) => self.held.insert(name, v),
                        None => self.held.remove(&name),
                    };
                }
                Ok(status) => {
                    let reason = status.map(|s| s.message).unwrap_or_default();
                    tracing::warn!(consumer = %self.consumer, service = %name, "NACK: {reason}");
                    (self.observer)(&Event::Nacked { consumer: self.consumer.clone(), name: name.clone(), reason });
                    // The consumer keeps what it had (so a later DELETE still has to be sent).
                    let v = version.unwrap_or(0);
                    self.rejected.insert(name, (v, Instant::now() + self.policy.nack_retry));
                }
            }
        };
        (self.observer)(&Event::ConsumerLeft { consumer: self.consumer.clone(), reason });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Serves the discovery API on `listener` until the process ends: TLS handshakes (each with a
/// deadline, off the accept loop) and then gRPC over HTTP/2.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<ServerTls>,
    exports: Arc<Exports>,
    policy: Policy,
    observer: Observer,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Result<Accepted, std::io::Error>>(64);
    let refused = observer.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    let (tls, tx, refused) = (tls.clone(), tx.clone(), refused.clone());
                    tokio::spawn(async move {
                        match Accepted::handshake(&tls, tcp, addr).await {
                            Ok(conn) => {
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Err(reason) => {
                                tracing::warn!("refused a connection: {reason}");
                                refused(&Event::Refused { peer: addr.to_string(), reason });
                            }
                        }
                    });
                }
                // Out of descriptors, say: keep the listener.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let discovery = Discovery { exports, policy: Arc::new(policy), observer };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(DiscoveryServiceServer::new(discovery).max_decoding_message_size(4 << 20))
        .serve_with_incoming(ReceiverStream::new(rx))
        .await?;
    Ok(())
}
