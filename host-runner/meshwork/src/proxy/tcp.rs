//! TCP listeners: each connection passes the listener's network filters (the wasm host's
//! [`ConnectionStream`]) in front of a TCP proxy to the listener's cluster, as Envoy's
//! `envoy.filters.network.wasm` in front of `tcp_proxy`.
//!
//! The upstream is connected once every filter has let the connection through
//! (`proxy_on_new_connection`); a filter may choose another cluster first by setting the
//! filter state `envoy.tcp_proxy.cluster` (Envoy's key). Bytes move only while the engine
//! takes them (the listener's buffer limit), so a slow side slows the other instead of
//! growing memory. Either side's end of stream is passed on as a half-close; a reset, a
//! filter closing the connection, a failed upstream or the idle timeout ends both.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use meshwork_wasm_host::{ConnectionStream, Dir, Peer, PerDir, StreamInfo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::generation::Chain;
use super::listener::ConnState;
use super::upstream::{Cluster, ConnInfo, UpstreamError, UpstreamIo};
use super::worker::Worker;

const READ_CHUNK: usize = 16 << 10;
/// Filter state key naming the cluster (Envoy's tcp_proxy reads the same key).
const CLUSTER_KEY: &[u8] = b"envoy.tcp_proxy.cluster";

type Connecting = Pin<Box<dyn Future<Output = Result<(Box<dyn UpstreamIo>, Rc<ConnInfo>), UpstreamError>>>>;

/// How the connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Both directions finished; meshwork closes the client connection.
    Done,
    /// The client reset or failed.
    ClientGone,
    /// A filter, a failure or a timeout closed it.
    Closed,
}

struct Pump<IO> {
    client: IO,
    upstream: Option<Box<dyn UpstreamIo>>,
    connecting: Option<Connecting>,
    engine: ConnectionStream,
    /// A side has sent its end of stream.
    eof: PerDir<bool>,
    /// Bytes being written towards each side (Request: to the upstream).
    writing: PerDir<Option<Bytes>>,
    shut: PerDir<bool>,
    /// Read buffers, per side read from.
    bufs: PerDir<BytesMut>,
    idle: Option<(std::time::Duration, Pin<Box<tokio::time::Sleep>>)>,
}

pub async fn serve<IO>(io: IO, conn: Rc<ConnState>, worker: Rc<Worker>)
where
    IO: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let generation = worker.current();
    let Some(listener) = generation.listener(conn.listener) else { return };
    let Some(default_cluster) = listener.tcp_cluster.clone() else { return };
    let vms = match listener.chain() {
        Chain::Empty => Vec::new(),
        Chain::Ready(vms) => vms,
        Chain::Unavailable(filter) => {
            worker.stats.unavailable.increment(1).ok();
            tracing::debug!(%filter, "closing a TCP connection: a fail-closed filter is unavailable");
            return;
        }
    };
    let name = Rc::from(generation.config.listeners[conn.listener].name.as_str());
    let mut info = StreamInfo::new(name, default_cluster.name.clone());
    info.protocol = "TCP";
    info.source = Some(conn.peer);
    info.destination = Some(conn.local);
    info.connection_id = conn.id;
    info.tls = conn.tls.clone();
    info.direction = listener.settings.direction;
    let mut engine = ConnectionStream::new(vms, info, listener.settings.buffer_limit);
    let idle = listener.settings.idle_timeout;
    worker.stats.tcp_connections.increment(1).ok();
    engine.open();
    let mut pump = Pump {
        client: io,
        upstream: None,
        connecting: None,
        engine,
        eof: PerDir::default(),
        writing: PerDir::default(),
        shut: PerDir::default(),
        bufs: PerDir::default(),
        idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
    };
    let end = std::future::poll_fn(|cx| pump.poll(cx, &generation, &default_cluster, &worker)).await;
    drop(generation);
    pump.engine.downstream_closed(if end == End::ClientGone { Peer::Remote } else { Peer::Local });
    pump.engine.finish();
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut pump.client).await;
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Pump<IO> {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        generation: &super::generation::Generation,
        default_cluster: &Rc<Cluster>,
        worker: &Worker,
    ) -> Poll<End> {
        // Filters acting later (a callout answered, a timer) wake this task.
        self.engine.data().borrow_mut().set_waker(Dir::Response, cx.waker());
        loop {
            self.engine.process_actions();
            if self.engine.is_closed() {
                // Envoy closes with FlushWrite: what the client is owed goes first.
                return match self.write(Dir::Response, cx) {
                    Ok(true) | Err(_) => Poll::Ready(End::Closed),
                    Ok(false) if self.engine.buffered(Dir::Response) == 0 && self.writing[Dir::Response].is_none() => {
                        Poll::Ready(End::Closed)
                    }
                    Ok(false) => Poll::Pending,
                };
            }
            let mut moved = false;
            if self.upstream.is_none() && self.connecting.is_none() && self.engine.may_connect() {
                let chosen = self
                    .engine
                    .data()
                    .borrow()
                    .filter_state
                    .get(CLUSTER_KEY)
                    .and_then(|name| generation.cluster(&String::from_utf8_lossy(name)));
                let cluster = chosen.unwrap_or_else(|| default_cluster.clone());
                self.engine.data().borrow_mut().info.cluster_name = cluster.name.clone();
                self.connecting = Some(Box::pin(async move { cluster.connect_stream().await }));
            }
            if let Some(connecting) = &mut self.connecting
                && let Poll::Ready(result) = connecting.as_mut().poll(cx)
            {
                self.connecting = None;
                match result {
                    Ok((io, conn)) => {
                        let mut data = self.engine.data().borrow_mut();
                        data.info.upstream = Some(conn.addr);
                        data.info.upstream_local = conn.local;
                        data.info.upstream_tls = conn.tls.clone();
                        self.upstream = Some(io);
                        moved = true;
                    }
                    Err(e) => {
                        worker.stats.tcp_upstream_failures.increment(1).ok();
                        tracing::debug!("TCP proxy: upstream failed: {e}");
                        self.engine.data().borrow_mut().info.upstream_failure = e.transport_failure();
                        return Poll::Ready(End::Closed);
                    }
                }
            }
            // Client bytes flow to the filters while they decide, then only with an upstream.
            let client_may_send = self.upstream.is_some() || !self.engine.may_connect();
            if client_may_send && !self.eof[Dir::Request] && self.engine.accepts(Dir::Request) {
                match poll_read(&mut self.client, &mut self.bufs[Dir::Request], cx) {
                    Poll::Ready(Ok(Some(bytes))) => {
                        self.engine.data_in(Dir::Request, bytes, false);
                        moved = true;
                    }
                    Poll::Ready(Ok(None)) => {
                        self.eof[Dir::Request] = true;
                        self.engine.data_in(Dir::Request, Bytes::new(), true);
                        moved = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(End::ClientGone),
                    Poll::Pending => {}
                }
            }
            if let Some(up) = &mut self.upstream
                && !self.eof[Dir::Response]
                && self.engine.accepts(Dir::Response)
            {
                match poll_read(up, &mut self.bufs[Dir::Response], cx) {
                    Poll::Ready(Ok(Some(bytes))) => {
                        self.engine.data_in(Dir::Response, bytes, false);
                        moved = true;
                    }
                    Poll::Ready(Ok(None)) => {
                        self.eof[Dir::Response] = true;
                        self.engine.data_in(Dir::Response, Bytes::new(), true);
                        self.engine.upstream_closed();
                        moved = true;
                    }
                    // An upstream reset ends the connection (no upstream close event, as Envoy).
                    Poll::Ready(Err(_)) => return Poll::Ready(End::Closed),
                    Poll::Pending => {}
                }
            }
            for d in Dir::BOTH {
                match self.write(d, cx) {
                    Ok(progress) => moved |= progress,
                    Err(End::ClientGone) => return Poll::Ready(End::ClientGone),
                    Err(end) => return Poll::Ready(end),
                }
            }
            if self.shut[Dir::Request] && self.shut[Dir::Response] {
                return Poll::Ready(End::Done);
            }
            if moved {
                if let Some((d, sleep)) = &mut self.idle {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *d);
                }
                continue;
            }
            if let Some((_, sleep)) = &mut self.idle
                && sleep.as_mut().poll(cx).is_ready()
            {
                tracing::debug!("TCP proxy: idle timeout");
                return Poll::Ready(End::Closed);
            }
            return Poll::Pending;
        }
    }

    /// Moves the engine's output towards side `d` (Request: the upstream); shuts the side's
    /// write half at the end of stream. True when anything moved.
    fn write(&mut self, d: Dir, cx: &mut Context<'_>) -> Result<bool, End> {
        let mut moved = false;
        loop {
            if self.writing[d].is_none() {
                self.writing[d] = self.engine.next_output(d);
            }
            let io: &mut (dyn AsyncWrite + Unpin) = match d {
                Dir::Response => &mut self.client,
                Dir::Request => match &mut self.upstream {
                    Some(up) => up,
                    None => return Ok(moved),
                },
            };
            let failed = if d == Dir::Response { End::ClientGone } else { End::Closed };
            let Some(bytes) = &mut self.writing[d] else {
                if self.engine.output_ended(d) && !self.shut[d] {
                    match Pin::new(io).poll_shutdown(cx) {
                        Poll::Ready(_) => {
                            self.shut[d] = true;
                            moved = true;
                        }
                        Poll::Pending => {}
                    }
                }
                return Ok(moved);
            };
            match Pin::new(io).poll_write(cx, bytes) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(failed),
                Poll::Ready(Ok(n)) => {
                    moved = true;
                    let _ = bytes.split_to(n);
                    if bytes.is_empty() {
                        self.writing[d] = None;
                    }
                }
                Poll::Pending => return Ok(moved),
            }
        }
    }
}

/// One read into `buf` (kept between reads, so a pending read allocates nothing): `Some(bytes)`,
/// or `None` at the end of stream.
fn poll_read(
    io: &mut (dyn AsyncRead + Unpin),
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<Option<Bytes>>> {
    if buf.len() < READ_CHUNK {
        buf.resize(READ_CHUNK, 0);
    }
    let mut read = ReadBuf::new(&mut buf[..]);
    match Pin::new(io).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            let n = read.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(None));
            }
            Poll::Ready(Ok(Some(buf.split_to(n).freeze())))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}
