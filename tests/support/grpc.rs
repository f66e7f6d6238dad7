//! A real gRPC upstream for the tests: tonic serving `meshwork.test.v1.Echo` on 127.0.0.1 in
//! a thread of the test process. Each request says how to answer (status, delay, count,
//! trailers); the server counts what it served and what was cancelled.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meshwork_grpc_api::test_echo::echo_server::{Echo, EchoServer};
use meshwork_grpc_api::test_echo::{EchoReply, EchoRequest};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// What the server saw.
#[derive(Default)]
pub struct Counters {
    pub unary: AtomicU64,
    pub streams: AtomicU64,
    pub messages_in: AtomicU64,
    /// Calls whose client went away before the answer.
    pub cancelled: AtomicU64,
}

#[derive(Clone)]
struct Service(Arc<Counters>);

/// Counts a call as cancelled if it is dropped before it completes.
struct CancelGuard(Arc<Counters>, bool);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn metadata_of<T>(request: &Request<T>) -> std::collections::HashMap<String, String> {
    request
        .metadata()
        .clone()
        .into_headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

fn status_of(r: &EchoRequest) -> Option<Status> {
    (r.status != 0).then(|| {
        let mut s = Status::new(tonic::Code::from_i32(r.status as i32), r.message.clone());
        for (k, v) in &r.trailers {
            if let (Ok(k), Ok(v)) = (k.parse::<tonic::metadata::MetadataKey<_>>(), v.parse()) {
                s.metadata_mut().insert(k, v);
            }
        }
        s
    })
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Service {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let mut guard = CancelGuard(self.0.clone(), false);
        self.0.unary.fetch_add(1, Ordering::SeqCst);
        let metadata = metadata_of(&request);
        let r = request.into_inner();
        tokio::time::sleep(Duration::from_millis(u64::from(r.delay_ms))).await;
        guard.1 = true;
        if let Some(status) = status_of(&r) {
            return Err(status);
        }
        let mut response = Response::new(EchoReply { text: r.text.clone(), metadata, sequence: 0 });
        for (k, v) in &r.trailers {
            if let (Ok(k), Ok(v)) = (k.parse::<tonic::metadata::MetadataKey<_>>(), v.parse()) {
                response.metadata_mut().insert(k, v);
            }
        }
        Ok(response)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(&self, request: Request<EchoRequest>) -> Result<Response<ReplyStream>, Status> {
        self.0.streams.fetch_add(1, Ordering::SeqCst);
        let r = request.into_inner();
        let stream = async_stream(r);
        Ok(Response::new(Box::pin(stream)))
    }

    type BidiStream = ReplyStream;

    async fn bidi(&self, request: Request<Streaming<EchoRequest>>) -> Result<Response<ReplyStream>, Status> {
        self.0.streams.fetch_add(1, Ordering::SeqCst);
        let counters = self.0.clone();
        let metadata = metadata_of(&request);
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut sequence = 0;
            loop {
                match incoming.message().await {
                    Ok(Some(r)) => {
                        counters.messages_in.fetch_add(1, Ordering::SeqCst);
                        if let Some(status) = status_of(&r) {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        sequence += 1;
                        let reply = EchoReply { text: r.text.to_uppercase(), metadata: metadata.clone(), sequence };
                        if tx.send(Ok(reply)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(_) => {
                        counters.cancelled.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

fn async_stream(r: EchoRequest) -> impl Stream<Item = Result<EchoReply, Status>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        for sequence in 1..=r.count {
            tokio::time::sleep(Duration::from_millis(u64::from(r.delay_ms))).await;
            let reply = EchoReply { text: format!("{} #{sequence}", r.text), metadata: Default::default(), sequence };
            if tx.send(Ok(reply)).await.is_err() {
                return;
            }
        }
        if let Some(status) = status_of(&r) {
            let _ = tx.send(Err(status)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A running echo server; stopped when dropped.
pub struct EchoService {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoService {
    /// Serves on a free port on 127.0.0.1 (plain HTTP/2).
    pub fn start() -> EchoService {
        EchoService::start_on("127.0.0.1:0".parse().unwrap())
    }

    pub fn start_on(addr: SocketAddr) -> EchoService {
        let counters = Arc::new(Counters::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let service = Service(counters.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let _ = tonic::transport::Server::builder()
                    .add_service(EchoServer::new(service))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = shutdown_rx.await;
                    })
                    .await;
            });
        });
        let addr = ready_rx.recv_timeout(Duration::from_secs(10)).expect("echo server starts");
        EchoService { addr, counters, shutdown: Some(shutdown_tx), thread: Some(thread) }
    }

    /// Stops serving (connections close; the port is free again).
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EchoService {
    fn drop(&mut self) {
        self.stop();
    }
}
