//! Client connections: accepting them under the connection caps, the timers each lives by,
//! and draining.
//!
//! A connection's timers run in one watchdog per connection that wakes at the next deadline
//! (and at least every request-headers timeout), never per request:
//! - request headers: from the first byte of a request to the end of its headers (HTTP/1;
//!   a slowloris client is closed);
//! - idle: no request in flight for this long → drained;
//! - max duration: drained when the connection is this old;
//! - max requests: the response to the last one carries `Connection: close` (HTTP/1) or the
//!   connection is sent GOAWAY (HTTP/2).
//!
//! Draining is hyper's graceful shutdown; a connection still open `drain_timeout` after it
//! started draining is closed.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use meshwork_wasm_host::TlsInfo;

use super::body::{BoxError, ProxyBody};
use super::worker::Worker;
use crate::config::ListenerConfig;

/// Envoy's default limits on what a client may send in headers.
pub const MAX_HEADERS: usize = 100;
const MAX_HEADER_BUFFER: usize = 64 * 1024;

/// Why the proxy ended (or began to end) a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    RequestHeadersTimeout,
    IdleTimeout,
    MaxDuration,
    MaxRequests,
    DrainTimeout,
}

impl CloseReason {
    pub const ALL: [CloseReason; 5] = [
        CloseReason::RequestHeadersTimeout,
        CloseReason::IdleTimeout,
        CloseReason::MaxDuration,
        CloseReason::MaxRequests,
        CloseReason::DrainTimeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::RequestHeadersTimeout => "request_headers_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::MaxDuration => "max_connection_duration",
            CloseReason::MaxRequests => "max_requests_per_connection",
            CloseReason::DrainTimeout => "drain_timeout",
        }
    }
}

/// The timers of one connection, fixed when it is accepted.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub request_headers_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_requests: Option<u64>,
    pub max_duration: Option<Duration>,
    pub drain_timeout: Duration,
}

impl ConnLimits {
    pub fn of(l: &ListenerConfig) -> ConnLimits {
        ConnLimits {
            request_headers_timeout: l.request_headers_timeout,
            idle_timeout: l.idle_timeout,
            max_requests: l.max_requests_per_connection,
            max_duration: l.max_connection_duration,
            drain_timeout: l.drain_timeout,
        }
    }
}

/// One client connection as its streams and its watchdog see it.
#[derive(Debug)]
pub struct ConnState {
    pub id: u64,
    /// The client, as the PROXY protocol header says when the listener reads one.
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Which listener of the configuration accepted it.
    pub listener: usize,
    /// `https` on a TLS listener (for `:scheme` and `x-forwarded-proto`), else `http`.
    pub scheme: &'static str,
    pub tls: Option<Rc<TlsInfo>>,
    started: Instant,
    active: Cell<u32>,
    requests: Cell<u64>,
    idle_since: Cell<Instant>,
    /// The first byte of a request head arrived at this moment (HTTP/1, no stream active).
    head_started: Cell<Option<Instant>>,
    h2: Cell<bool>,
    drain: Cell<Option<CloseReason>>,
    /// The last stream ended: the watchdog must look again (its sleep may run to a deadline
    /// computed while the connection was busy).
    became_idle: Cell<bool>,
    watchdog: RefCell<Option<Waker>>,
}

impl ConnState {
    fn new(id: u64, accepted: Accepted, tls: Option<Rc<TlsInfo>>) -> Rc<ConnState> {
        let now = Instant::now();
        Rc::new(ConnState {
            id,
            peer: accepted.peer,
            local: accepted.local,
            listener: accepted.listener,
            scheme: if tls.is_some() { "https" } else { "http" },
            tls,
            started: now,
            active: Cell::new(0),
            requests: Cell::new(0),
            idle_since: Cell::new(now),
            head_started: Cell::new(None),
            h2: Cell::new(false),
            drain: Cell::new(None),
            became_idle: Cell::new(false),
            watchdog: RefCell::new(None),
        })
    }

    /// A request's headers are complete: it is active until its response body is dropped.
    pub fn stream_started(self: &Rc<Self>, version: http::Version) -> ActiveStream {
        self.head_started.set(None);
        self.active.set(self.active.get() + 1);
        self.requests.set(self.requests.get() + 1);
        if version == http::Version::HTTP_2 {
            self.h2.set(true);
        }
        ActiveStream(self.clone())
    }

    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    pub fn is_h2(&self) -> bool {
        self.h2.get()
    }

    pub fn draining(&self) -> bool {
        self.drain.get().is_some()
    }

    /// Asks the connection to drain (its watchdog carries it out).
    pub fn request_drain(&self, reason: CloseReason) {
        if self.drain.get().is_none() {
            self.drain.set(Some(reason));
        }
        if let Some(w) = self.watchdog.borrow().as_ref() {
            w.wake_by_ref();
        }
    }
}

/// A stream in flight on a connection; dropped with its response body.
#[derive(Debug)]
pub struct ActiveStream(Rc<ConnState>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        let c = &self.0;
        c.active.set(c.active.get() - 1);
        if c.active.get() == 0 {
            c.idle_since.set(Instant::now());
            c.became_idle.set(true);
            if let Some(w) = c.watchdog.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }
}

/// The body of every response the proxy sends a client: the stream stays active until hyper
/// drops it.
pub struct ClientResponseBody {
    body: ProxyBody,
    _stream: ActiveStream,
}

impl ClientResponseBody {
    pub fn new(body: ProxyBody, stream: ActiveStream) -> ClientResponseBody {
        ClientResponseBody { body, _stream: stream }
    }
}

impl Body for ClientResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client socket, noting when a request head begins on an idle connection.
struct WatchedIo<IO> {
    io: IO,
    state: Rc<ConnState>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for WatchedIo<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        let s = &self.state;
        if buf.filled().len() > before && s.active.get() == 0 && s.head_started.get().is_none() {
            s.head_started.set(Some(Instant::now()));
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WatchedIo<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What the watchdog decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Drain(CloseReason),
    Close(CloseReason),
}

/// Sleeps to the connection's next deadline and says what to do there.
struct Watchdog {
    state: Rc<ConnState>,
    limits: ConnLimits,
    sleep: Pin<Box<Sleep>>,
    /// Set once draining: the moment the connection is closed regardless.
    hard_deadline: Option<Instant>,
}

impl Watchdog {
    fn new(state: Rc<ConnState>, limits: ConnLimits) -> Watchdog {
        let sleep = Box::pin(tokio::time::sleep(Duration::ZERO));
        Watchdog { state, limits, sleep, hard_deadline: None }
    }

    /// The verdict due at `now`, or the next moment to look again.
    fn check(&self, now: Instant) -> Result<Verdict, Instant> {
        let s = &self.state;
        let l = &self.limits;
        if let Some(hard) = self.hard_deadline {
            return if now >= hard { Ok(Verdict::Close(CloseReason::DrainTimeout)) } else { Err(hard) };
        }
        if let Some(reason) = s.drain.get() {
            return Ok(Verdict::Drain(reason));
        }
        // Looking again at least every request-headers timeout catches a head that starts
        // while the watchdog sleeps, before its own deadline.
        let mut next = l.request_headers_timeout.map_or(now + Duration::from_secs(3600), |t| now + t);
        if let Some(max) = l.max_duration {
            let at = s.started + max;
            if now >= at {
                return Ok(Verdict::Drain(CloseReason::MaxDuration));
            }
            next = next.min(at);
        }
        if s.active.get() == 0 {
            match (s.head_started.get(), l.request_headers_timeout) {
                (Some(head), Some(t)) if !s.h2.get() => {
                    if now >= head + t {
                        return Ok(Verdict::Close(CloseReason::RequestHeadersTimeout));
                    }
                    next = next.min(head + t);
                }
                (Some(_), _) => {}
                (None, _) => {
                    if let Some(idle) = l.idle_timeout {
                        let at = s.idle_since.get() + idle;
                        if now >= at {
                            return Ok(Verdict::Drain(CloseReason::IdleTimeout));
                        }
                        next = next.min(at);
                    }
                }
            }
        }
        Err(next)
    }

    fn poll_verdict(&mut self, cx: &mut Context<'_>) -> Poll<Verdict> {
        {
            let mut waker = self.state.watchdog.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        let drain_requested = self.hard_deadline.is_none() && self.state.drain.get().is_some();
        let became_idle = self.state.became_idle.replace(false);
        if self.sleep.as_mut().poll(cx).is_pending() && !drain_requested && !became_idle {
            return Poll::Pending;
        }
        loop {
            match self.check(Instant::now()) {
                Ok(verdict) => return Poll::Ready(verdict),
                Err(at) => {
                    self.sleep.as_mut().reset(at.into());
                    if self.sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn start_draining(&mut self) {
        self.hard_deadline = Some(Instant::now() + self.limits.drain_timeout);
        self.sleep.as_mut().reset(tokio::time::Instant::now());
    }
}

/// Runs hyper's futures on the worker's own thread.
#[derive(Clone, Copy)]
pub struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// A connection as accepted: who and where, once the PROXY protocol header (if the listener
/// reads one) has been read.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub listener: usize,
}

/// Serves one client connection until it ends, is drained, or times out: the PROXY protocol
/// header and the TLS handshake first when the listener has them, then HTTP or the TCP proxy.
pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    index: usize,
    worker: Rc<Worker>,
    slot: ConnectionSlot,
) {
    let _slot = slot;
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let generation = worker.current();
    let Some(listener) = generation.listener(index) else {
        return;
    };
    let spec = &generation.config.listeners[index];
    // Nothing before the first request may take longer than a request's headers could.
    let setup = listener.settings.request_headers_timeout.unwrap_or(Duration::from_secs(60));
    let mut accepted = Accepted { peer, local, listener: index };
    let mut stream = stream;
    if spec.proxy_protocol {
        match tokio::time::timeout(setup, super::proxy_protocol::read_header(&mut stream)).await {
            Ok(Ok(Some((source, destination)))) => {
                accepted.peer = source;
                accepted.local = destination;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                worker.stats.proxy_protocol_errors.increment(1).ok();
                tracing::debug!(%peer, "closing: bad PROXY protocol header: {e}");
                return;
            }
            Err(_) => {
                worker.stats.proxy_protocol_errors.increment(1).ok();
                tracing::debug!(%peer, "closing: no PROXY protocol header in time");
                return;
            }
        }
    }
    worker.stats.connections.increment(1).ok();
    let Some(tls) = listener.tls.clone() else {
        drop(generation);
        return serve_io(stream, accepted, None, worker).await;
    };
    drop(generation);
    let loaded = tls.current();
    let handshake = tokio_rustls::TlsAcceptor::from(loaded.config.clone()).accept(stream);
    let stream = match tokio::time::timeout(setup, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            worker.stats.tls_handshake_errors.increment(1).ok();
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            worker.stats.tls_handshake_errors.increment(1).ok();
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let (_, conn) = stream.get_ref();
    let sni = conn.server_name().map(str::to_owned);
    let info = crate::tls::info::connection(conn, sni.as_deref(), loaded.local_certificate(sni.as_deref()));
    serve_io(stream, accepted, Some(Rc::new(info)), worker).await
}

/// Serves an established (plain or TLS) connection: the TCP proxy on a TCP listener, HTTP
/// otherwise.
async fn serve_io<IO>(io: IO, accepted: Accepted, tls: Option<Rc<TlsInfo>>, worker: Rc<Worker>)
where
    IO: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let generation = worker.current();
    let Some(listener) = generation.listener(accepted.listener) else {
        return;
    };
    let settings = listener.settings.clone();
    let is_tcp = listener.tcp_cluster.is_some();
    drop(generation);
    let state = ConnState::new(worker.connection_id(), accepted, tls);
    if is_tcp {
        return super::tcp::serve(io, state, worker).await;
    }
    let limits = ConnLimits::of(&settings);
    let peer = accepted.peer;
    let service = {
        let (worker, state) = (worker.clone(), state.clone());
        hyper::service::service_fn(move |request| {
            let (worker, state) = (worker.clone(), state.clone());
            async move { super::request::serve(request, &worker, &state, limits).await }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    builder.http1().max_headers(MAX_HEADERS).max_buf_size(MAX_HEADER_BUFFER);
    // The flow-control windows are the buffer limit: a client cannot send more than the proxy
    // is willing to hold for it.
    let window = u32::try_from(settings.buffer_limit).unwrap_or(u32::MAX).max(65_535);
    builder
        .http2()
        .adaptive_window(false)
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .max_send_buf_size(settings.buffer_limit.max(16 << 10))
        .max_header_list_size(MAX_HEADER_BUFFER as u32);
    let io = TokioIo::new(WatchedIo { io, state: state.clone() });
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut watchdog = Watchdog::new(state.clone(), limits);
    let mut draining = false;
    loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Err(result));
            }
            watchdog.poll_verdict(cx).map(Ok)
        })
        .await;
        match event {
            Err(result) => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            Ok(Verdict::Drain(reason)) if !draining => {
                draining = true;
                worker.stats.connection_closed(reason);
                tracing::debug!(%peer, reason = reason.label(), "draining the connection");
                conn.as_mut().graceful_shutdown();
                watchdog.start_draining();
            }
            Ok(Verdict::Drain(_)) => {}
            Ok(Verdict::Close(reason)) => {
                worker.stats.connection_closed(reason);
                tracing::debug!(%peer, reason = reason.label(), "closing the connection");
                return;
            }
        }
    }
}

/// How many connections may be open: the process-wide cap and this listener's.
#[derive(Debug)]
pub struct ConnectionCaps {
    global: Arc<AtomicUsize>,
    global_max: usize,
    listener: Arc<AtomicUsize>,
    listener_max: usize,
}

/// One connection's place under the caps, given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    global: Arc<AtomicUsize>,
    listener: Arc<AtomicUsize>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.global.fetch_sub(1, Ordering::Relaxed);
        self.listener.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionCaps {
    pub fn new(global: Arc<AtomicUsize>, global_max: usize, listener: Arc<AtomicUsize>, listener_max: usize) -> Self {
        ConnectionCaps { global, global_max, listener, listener_max }
    }

    /// A slot if both caps have room.
    fn try_acquire(&self) -> Option<ConnectionSlot> {
        if self.global.fetch_add(1, Ordering::Relaxed) >= self.global_max {
            self.global.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        if self.listener.fetch_add(1, Ordering::Relaxed) >= self.listener_max {
            self.listener.fetch_sub(1, Ordering::Relaxed);
            self.global.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnectionSlot { global: self.global.clone(), listener: self.listener.clone() })
    }

    pub fn open(&self) -> usize {
        self.global.load(Ordering::Relaxed)
    }
}

/// Logs at most once per interval.
struct Throttled {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new(interval: Duration) -> Throttled {
        Throttled { interval, last: None, suppressed: 0 }
    }

    /// Whether to log now, and how many were suppressed since the last line.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.interval) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Accepts connections for this worker until the process ends. At a connection cap it stops
/// accepting (clients wait in the kernel's backlog) and looks again shortly; when the process
/// runs out of descriptors it backs off, doubling up to a second. Both are counted and logged
/// at most every ten seconds.
pub async fn accept_loop(listener: tokio::net::TcpListener, index: usize, worker: Rc<Worker>, caps: ConnectionCaps) {
    let mut cap_log = Throttled::new(Duration::from_secs(10));
    let mut error_log = Throttled::new(Duration::from_secs(10));
    let mut backoff = Duration::from_millis(10);
    loop {
        let Some(slot) = caps.try_acquire() else {
            worker.stats.accept_paused.increment(1).ok();
            if let Some(suppressed) = cap_log.allow() {
                tracing::warn!(
                    open = caps.open(),
                    "connection cap reached; not accepting new connections until some close ({suppressed} more pauses since the last message)"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                tokio::task::spawn_local(serve_connection(stream, peer, index, worker.clone(), slot));
            }
            Err(e) => {
                drop(slot);
                // Out of descriptors or memory: accepting again at once would spin.
                let resource =
                    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
                worker.stats.accept_error(resource);
                if let Some(suppressed) = error_log.allow() {
                    tracing::warn!("accept failed: {e} ({suppressed} more since the last message)");
                }
                if resource {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_connection(idle: Duration) -> (Rc<ConnState>, Watchdog) {
        let accepted = Accepted { peer: ([127, 0, 0, 1], 1).into(), local: ([127, 0, 0, 1], 2).into(), listener: 0 };
        let state = ConnState::new(1, accepted, None);
        let limits = ConnLimits {
            request_headers_timeout: None,
            idle_timeout: Some(idle),
            max_requests: None,
            max_duration: None,
            drain_timeout: Duration::from_secs(1),
        };
        (state.clone(), Watchdog::new(state, limits))
    }

    /// A request that arrived before the watchdog first looked made it sleep to a far deadline;
    /// the end of that request must still start the idle timer.
    #[tokio::test]
    async fn the_idle_timer_starts_when_the_last_stream_ends() {
        let (state, mut watchdog) = idle_connection(Duration::from_millis(50));
        let stream = state.stream_started(http::Version::HTTP_11);
        // Past the watchdog's first (immediate) deadline, so that its first poll looks.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let first = std::future::poll_fn(|cx| Poll::Ready(watchdog.poll_verdict(cx))).await;
        assert!(first.is_pending(), "busy connections are not idle");
        drop(stream);
        let verdict =
            tokio::time::timeout(Duration::from_secs(5), std::future::poll_fn(|cx| watchdog.poll_verdict(cx)))
                .await
                .expect("the idle timeout fired");
        assert_eq!(verdict, Verdict::Drain(CloseReason::IdleTimeout));
    }
}
