//! Bodies the proxy moves between client and upstream, and the per-stream state both request
//! paths share: activity, the stream's timers, and how the client side ended.
//!
//! Nothing here buffers: every body is pulled by whoever writes it (hyper's client for the
//! upstream request, hyper's server for the client response), so a slow reader slows the
//! writer instead of growing memory. A body whose other side went away or failed ends with an
//! error, never cleanly, so hyper aborts the message rather than completing a truncated one.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any body. Not `Send`: a worker's streams never leave its thread, and their bodies hold the
/// worker's `Rc`s. Empty and fixed bodies are not boxed (they are the common case).
pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    Boxed(Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>),
}

impl ProxyBody {
    pub fn new(body: impl Body<Data = Bytes, Error = BoxError> + 'static) -> ProxyBody {
        ProxyBody::Boxed(Box::pin(body))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Boxed(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ProxyBody::Boxed(body) => body.size_hint(),
        }
    }
}

pub fn empty() -> ProxyBody {
    ProxyBody::Empty
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    let bytes = bytes.into();
    if bytes.is_empty() { ProxyBody::Empty } else { ProxyBody::Full(Some(bytes)) }
}

/// Why a body ended with an error: each makes hyper abort the message it is writing.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the client went away before its request was complete")]
    ClientGone,
    #[error("the client's request body is malformed or incomplete: {0}")]
    BadRequestBody(String),
    #[error("the route timeout expired during the response")]
    RouteTimeout,
    #[error("no data moved for the stream idle timeout")]
    StreamIdle,
    #[error("the upstream response failed midway: {0}")]
    UpstreamFailed(String),
    #[error("the stream was reset: {0}")]
    Reset(&'static str),
}

/// What both sides of one stream know about it. The client-facing side owns it (`Rc`); the
/// upstream request body holds a `Weak`, so when the client side is dropped — the client left,
/// or its connection was closed — the upstream request fails at once instead of ending as if
/// complete.
#[derive(Debug)]
pub struct StreamShared {
    last_activity: Cell<Instant>,
    /// Set when the route's timer starts (the request has been fully received, as in Envoy).
    route_deadline: Cell<Option<Instant>>,
    /// The route timeout to start once the request is complete.
    route_timeout: Cell<Option<Duration>>,
    /// The timer must be re-armed earlier than it sleeps.
    rearm: Cell<bool>,
    /// The client's request body failed (malformed, truncated): the answer is 400, not 503.
    bad_request_body: Cell<bool>,
}

impl StreamShared {
    pub fn new(now: Instant) -> Rc<StreamShared> {
        Rc::new(StreamShared {
            last_activity: Cell::new(now),
            route_deadline: Cell::new(None),
            route_timeout: Cell::new(None),
            rearm: Cell::new(false),
            bad_request_body: Cell::new(false),
        })
    }

    /// Bytes moved: the stream is not idle.
    pub fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    /// The route timeout that starts when the request is complete (None: no route timeout).
    pub fn set_route_timeout(&self, timeout: Option<Duration>) {
        self.route_timeout.set(timeout);
    }

    /// The whole request has been received: the route's timer starts now.
    pub fn request_complete(&self) {
        if self.route_deadline.get().is_none()
            && let Some(t) = self.route_timeout.get()
        {
            self.route_deadline.set(Some(Instant::now() + t));
            self.rearm.set(true);
        }
    }

    pub fn mark_bad_request_body(&self) {
        self.bad_request_body.set(true);
    }

    pub fn bad_request_body(&self) -> bool {
        self.bad_request_body.get()
    }
}

/// Which of the stream's timers expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    Route,
    Idle,
}

/// A stream's timers on one tokio timer: the route timeout (armed when the request is
/// complete, running to the end of the response) and the stream idle timeout (pushed back by
/// every frame in either direction). The timer is re-armed only when it fires early or the
/// route deadline is set, never per frame.
pub struct StreamTimer {
    shared: Rc<StreamShared>,
    idle: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// It expired once: the stream is over, and it never fires again.
    fired: bool,
}

impl StreamTimer {
    pub fn new(shared: Rc<StreamShared>, idle: Option<Duration>) -> StreamTimer {
        StreamTimer { shared, idle, sleep: None, fired: false }
    }

    pub fn shared(&self) -> &Rc<StreamShared> {
        &self.shared
    }

    /// The earliest moment something could expire, and what.
    fn next(shared: &StreamShared, idle: Option<Duration>) -> Option<(Instant, Expired)> {
        let idle = idle.map(|i| (shared.last_activity.get() + i, Expired::Idle));
        let route = shared.route_deadline.get().map(|d| (d, Expired::Route));
        match (route, idle) {
            (Some(r), Some(i)) => Some(if r.0 <= i.0 { r } else { i }),
            (r, i) => r.or(i),
        }
    }

    /// Ready (once) with what expired; pending (with the waker registered) otherwise.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        if self.fired {
            return Poll::Pending;
        }
        loop {
            let rearm = self.shared.rearm.replace(false);
            match &mut self.sleep {
                Some(sleep) if !rearm => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Fired: expired for real, unless activity moved the deadline meanwhile.
                    let Some((at, what)) = StreamTimer::next(&self.shared, self.idle) else {
                        self.sleep = None;
                        return Poll::Pending;
                    };
                    if at <= Instant::now() {
                        self.fired = true;
                        self.sleep = None;
                        return Poll::Ready(what);
                    }
                    sleep.as_mut().reset(at.into());
                }
                _ => match StreamTimer::next(&self.shared, self.idle) {
                    None => {
                        self.sleep = None;
                        return Poll::Pending;
                    }
                    Some((at, _)) => match &mut self.sleep {
                        Some(sleep) => sleep.as_mut().reset(at.into()),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at.into()))),
                    },
                },
            }
        }
    }
}

/// The client's request body on its way upstream, unchanged: every frame counts as activity,
/// the end starts the route timer, a failure is remembered (so the answer is 400) and passed
/// on as an error, and a client side that is gone fails the body at once.
pub struct ClientBody {
    body: Incoming,
    shared: Weak<StreamShared>,
    /// Bytes the client promised (Content-Length), to catch a body that ends short.
    expected: Option<u64>,
    received: u64,
}

impl ClientBody {
    pub fn new(body: Incoming, shared: &Rc<StreamShared>) -> ClientBody {
        let expected = body.size_hint().exact();
        ClientBody { body, shared: Rc::downgrade(shared), expected, received: 0 }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(shared) = this.shared.upgrade() else {
            return Poll::Ready(Some(Err(BodyError::ClientGone.into())));
        };
        match std::task::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
            Some(Ok(frame)) => {
                shared.touch();
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                if this.body.is_end_stream() {
                    shared.request_complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                shared.mark_bad_request_body();
                Poll::Ready(Some(Err(BodyError::BadRequestBody(e.to_string()).into())))
            }
            None => {
                // hyper ends a body whose connection was dropped as if it were complete: a
                // promised length not reached means the client did not finish.
                if this.expected.is_some_and(|n| n != this.received) {
                    shared.mark_bad_request_body();
                    return Poll::Ready(Some(Err(BodyError::BadRequestBody(
                        "body shorter than its Content-Length".into(),
                    )
                    .into())));
                }
                shared.request_complete();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The upstream's response on its way to the client, unchanged, under the stream's timers:
/// an expiry mid-body fails it (the client sees a reset, never a clean short body).
pub struct TimedBody<B> {
    body: B,
    timer: StreamTimer,
}

impl<B> TimedBody<B> {
    pub fn new(body: B, timer: StreamTimer) -> TimedBody<B> {
        TimedBody { body, timer }
    }
}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> Body for TimedBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.shared().touch();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::UpstreamFailed(e.to_string()).into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.poll_expired(cx) {
                Poll::Ready(Expired::Route) => Poll::Ready(Some(Err(BodyError::RouteTimeout.into()))),
                Poll::Ready(Expired::Idle) => Poll::Ready(Some(Err(BodyError::StreamIdle.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
