//! One request through the filter chain: hyper on both sides, the wasm host's engine between.
//!
//! A single [`Driver`] per stream does all the work when polled, from either side: the client
//! side (the service future until response headers, then the response body) and the upstream
//! side (the request body hyper's client pulls). Whichever side polls moves everything that can
//! move — the client's body into the engine, the upstream's response into the engine, actions
//! filters requested from callouts or timers, the stream's timers — and wakes the other side.
//!
//! Memory stays bounded: the client's body is read only while the engine accepts more
//! (filters hold less than the buffer limit and the last output has been taken), and the
//! upstream's only while the client has taken what came before. Errors travel: a malformed or
//! cut-short client body resets the upstream request and answers 400; a client that leaves
//! drops the driver, which fails the upstream request body at once; an upstream that fails
//! midway resets the client's stream.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use meshwork_wasm_host::headers::HeaderMap;
use meshwork_wasm_host::{Dir, FilterStream, LocalReply, Output, PluginVm, StreamInfo};

use super::body::{self, BodyError, BoxError, Expired, ProxyBody, StreamShared, StreamTimer};
use super::generation::{Generation, ListenerGeneration, Route};
use super::listener::ConnState;
use super::request::{Prepared, StreamFailure};
use super::router::{self, Exchange, Replayable, RetryPolicy};
use super::upstream::{Cluster, PooledBody, strip_hop_by_hop};
use super::worker::Worker;

/// The most request body meshwork buffers to be able to retry (Envoy's default
/// `per_request_buffer_limit_bytes`); larger requests that ask for retries get 413.
pub const MAX_REPLAY_BODY: usize = 1 << 20;

type UpstreamFuture = Pin<Box<dyn Future<Output = Exchange>>>;

enum Upstream {
    NotStarted,
    /// Retries need the whole request: its body is gathered before the first attempt.
    Collecting {
        request: Box<Replayable>,
        cluster: Rc<Cluster>,
        policy: RetryPolicy,
    },
    Waiting(UpstreamFuture),
    Streaming(PooledBody),
    Done,
}

struct Driver {
    engine: FilterStream,
    worker: Rc<Worker>,
    generation: Rc<Generation>,
    listener: usize,
    route: Rc<Route>,
    /// The client's body, while some of it is still to read.
    downstream: Option<Incoming>,
    /// Bytes the client promised (Content-Length) and bytes read, to catch a short body.
    downstream_expected: Option<u64>,
    downstream_received: u64,
    upstream: Upstream,
    cluster: Option<Rc<Cluster>>,
    timer: StreamTimer,
    upstream_started: Option<Instant>,
    /// The request asked for retries: the response says how many attempts it took.
    report_attempts: bool,
    response_finished: bool,
}

/// Converts a prepared request into the map filters see: pseudo-headers first, `Host` folded
/// into `:authority` as Envoy does.
fn request_map(parts: &mut http::request::Parts, scheme: &'static str) -> HeaderMap {
    let mut regular = std::mem::take(&mut parts.headers);
    let authority = remove_in_order(&mut regular, &http::header::HOST)
        .map(|h| Bytes::copy_from_slice(h.as_bytes()))
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let pseudo = vec![
        (Bytes::from_static(b":authority"), authority),
        (Bytes::from_static(b":path"), Bytes::copy_from_slice(path.as_bytes())),
        (Bytes::from_static(b":method"), method_bytes(&parts.method)),
        (Bytes::from_static(b":scheme"), Bytes::from_static(scheme.as_bytes())),
    ];
    HeaderMap::from_parts(pseudo, regular)
}

/// Removes `name` keeping the other headers in their order (`HeaderMap::remove` moves the last
/// header into the gap, and filters see, and log, headers in the order the client sent them).
fn remove_in_order(map: &mut http::HeaderMap, name: &http::HeaderName) -> Option<HeaderValue> {
    let value = map.get(name)?.clone();
    let old = std::mem::replace(map, http::HeaderMap::with_capacity(map.len()));
    let mut current: Option<http::HeaderName> = None;
    for (key, v) in old {
        if let Some(k) = key {
            current = Some(k);
        }
        if let Some(k) = current.as_ref().filter(|k| *k != name) {
            map.append(k.clone(), v);
        }
    }
    Some(value)
}

fn response_map(parts: &mut http::response::Parts) -> HeaderMap {
    let mut regular = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut regular);
    let status = status_bytes(parts.status);
    HeaderMap::from_parts(vec![(Bytes::from_static(b":status"), status)], regular)
}

/// Standard methods need no copy.
fn method_bytes(method: &http::Method) -> Bytes {
    use http::Method as M;
    let name: &'static str = match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::PATCH => "PATCH",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => return Bytes::copy_from_slice(method.as_str().as_bytes()),
    };
    Bytes::from_static(name.as_bytes())
}

/// Common statuses need no copy.
fn status_bytes(status: StatusCode) -> Bytes {
    let text: &'static str = match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => return Bytes::copy_from_slice(status.as_str().as_bytes()),
    };
    Bytes::from_static(text.as_bytes())
}

fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Handles a prepared request through `chain`.
pub async fn handle(
    prepared: Prepared,
    body: Incoming,
    worker: &Rc<Worker>,
    generation: &Rc<Generation>,
    listener: &ListenerGeneration,
    chain: Vec<Rc<PluginVm>>,
    conn: &ConnState,
) -> Result<Response<ProxyBody>, BoxError> {
    let Prepared { mut parts, route, protocol: version, .. } = prepared;
    let headers = request_map(&mut parts, conn.scheme);
    let cluster_name = match &route.target {
        router::Target::Cluster(c) => c.name.clone(),
        _ => Rc::from(""),
    };
    let mut info = StreamInfo::new(route.name.clone(), cluster_name);
    info.protocol = protocol(version);
    info.source = Some(conn.peer);
    info.destination = Some(conn.local);
    info.connection_id = conn.id;
    info.tls = conn.tls.clone();
    info.direction = listener.settings.direction;
    let end_stream = body.is_end_stream();
    let engine = FilterStream::new(chain, headers, info).with_buffer_limit(listener.filter_buffer_limit);
    let shared = StreamShared::new(Instant::now());
    let driver = Rc::new(RefCell::new(Driver {
        engine,
        worker: worker.clone(),
        generation: generation.clone(),
        listener: listener.index,
        route,
        downstream_expected: body.size_hint().exact(),
        downstream: (!end_stream).then_some(body),
        downstream_received: 0,
        upstream: Upstream::NotStarted,
        cluster: None,
        timer: StreamTimer::new(shared, listener.settings.stream_idle_timeout),
        upstream_started: None,
        report_attempts: false,
        response_finished: false,
    }));
    driver.borrow_mut().engine.request_headers(end_stream);
    let end_stream = {
        let weak = Rc::downgrade(&driver);
        std::future::poll_fn(|cx| driver.borrow_mut().poll_response_headers(&weak, cx)).await?
    };
    let response = driver.borrow().downstream_head()?;
    let body = if end_stream {
        driver.borrow_mut().response_finished = true;
        body::empty()
    } else {
        ProxyBody::new(FilteredBody { driver })
    };
    Ok(response.map(|()| body))
}

impl Driver {
    fn shared(&self) -> &Rc<StreamShared> {
        self.timer.shared()
    }

    fn poll_response_headers(
        &mut self,
        me: &Weak<RefCell<Driver>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<bool, BoxError>> {
        self.make_progress(me, Dir::Response, cx);
        match self.engine.next_output(Dir::Response) {
            Some(Output::Headers { end_stream }) => Poll::Ready(Ok(end_stream)),
            Some(other) => Poll::Ready(Err(format!("response {other:?} before headers").into())),
            None if self.engine.is_reset() => {
                Poll::Ready(Err(BodyError::Reset("by a filter before the response").into()))
            }
            None => Poll::Pending,
        }
    }

    fn downstream_head(&self) -> Result<Response<()>, BoxError> {
        let data = self.engine.data().borrow();
        let h = &data.headers[Dir::Response];
        let status = h
            .get_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or("filters left the response without a valid :status")?;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = h.regular().clone();
        Ok(response)
    }

    /// Runs everything that can run now on behalf of `side`, registering its waker for the
    /// rest; wakes the other side when anything moved. The upstream side (the request body)
    /// only feeds the request; the client side drives everything.
    fn make_progress(&mut self, me: &Weak<RefCell<Driver>>, side: Dir, cx: &mut Context<'_>) {
        self.engine.data().borrow_mut().set_waker(side, cx.waker());
        let mut any = false;
        loop {
            self.engine.process_actions();
            let mut progressed = self.start_upstream_when_ready(me);
            progressed |= self.read_downstream(cx);
            // Only the client side waits on the upstream and the timers: the upstream request
            // body is not polled again once it has ended, so a wake-up registered from it
            // could be lost.
            if side == Dir::Response {
                progressed |= self.read_upstream(cx);
                progressed |= self.check_timer(cx);
            }
            if !progressed {
                break;
            }
            any = true;
        }
        if any {
            self.engine.data().borrow().wake(side.other());
        }
    }

    /// Takes what left the request side of the chain that the driver itself handles: the
    /// headers (which start the upstream request) and, for a request gathered for retries, its
    /// body. Streamed body data stays for the upstream request body to pull.
    fn start_upstream_when_ready(&mut self, me: &Weak<RefCell<Driver>>) -> bool {
        let mut progressed = false;
        loop {
            let collecting = matches!(self.upstream, Upstream::Collecting { .. });
            match self.engine.peek_output(Dir::Request) {
                Some(Output::Headers { .. }) => {
                    let Some(Output::Headers { end_stream }) = self.engine.next_output(Dir::Request) else { break };
                    self.start_upstream(me, end_stream);
                }
                Some(_) if collecting => {
                    let output = self.engine.next_output(Dir::Request);
                    self.collect(output);
                }
                _ => break,
            }
            progressed = true;
        }
        if self.engine.request_aborted() && matches!(self.upstream, Upstream::Collecting { .. } | Upstream::NotStarted)
        {
            // A local reply answers the client: nothing goes upstream.
            self.upstream = Upstream::Done;
            self.downstream = None;
        }
        progressed
    }

    /// The request left the filter chain: pick the cluster, then send it (its body streamed),
    /// or gather its body first when it asks for retries.
    fn start_upstream(&mut self, me: &Weak<RefCell<Driver>>, end_stream: bool) {
        let (method, uri, mut headers) = {
            let data = self.engine.data().borrow();
            let h = &data.headers[Dir::Request];
            let method = Method::from_bytes(h.get(b":method").unwrap_or(b"GET"));
            let uri = Uri::try_from(h.get(b":path").unwrap_or(b"/"));
            let (Ok(method), Ok(uri)) = (method, uri) else {
                drop(data);
                self.engine.local_reply(LocalReply {
                    status: 500,
                    details: "filter_made_invalid_request".into(),
                    body: Bytes::from_static(b"invalid request after filters\n"),
                    headers: Vec::new(),
                    grpc_status: None,
                });
                return;
            };
            let mut headers = h.regular().clone();
            if let Some(authority) = h.get(b":authority").and_then(|a| HeaderValue::from_bytes(a).ok()) {
                headers.insert(http::header::HOST, authority);
            }
            (method, uri, headers)
        };
        // A filter that changed the request may ask for the route to be chosen again.
        if std::mem::take(&mut self.engine.data().borrow_mut().route_cache_cleared) {
            let route = self.generation.listener(self.listener).and_then(|l| l.route(&method, &uri, &headers));
            match route {
                Some(route) => self.route = route,
                None => {
                    self.engine.local_reply(StreamFailure::NoRoute.local_reply());
                    return;
                }
            }
        }
        match &self.route.target {
            router::Target::Direct { status, body } => {
                self.direct_response(*status, body.clone(), end_stream);
                return;
            }
            router::Target::Redirect(redirect) => {
                let listener_port = self.engine.data().borrow().info.destination.map(|d| d.port());
                let response = router::redirect_response(&self.route, redirect, &headers, &uri, listener_port);
                self.answer(response.map(|_| Bytes::new()), end_stream);
                return;
            }
            _ => {}
        }
        let Some(cluster) = router::cluster_for(&self.route, &headers, &self.generation, self.worker.random_unit())
        else {
            self.engine.local_reply(StreamFailure::NoCluster.local_reply());
            return;
        };
        let mut uri = uri;
        router::rewrite_request(&self.route, &mut uri, &mut headers);
        self.engine.data().borrow_mut().info.cluster_name = cluster.name.clone();
        let policy = RetryPolicy::from_headers(&headers);
        self.shared().set_route_timeout(router::request_timeout(&headers, self.route.timeout));
        router::strip_control_headers(&mut headers);
        self.upstream_started = Some(Instant::now());
        self.cluster = Some(cluster.clone());
        if end_stream {
            self.shared().request_complete();
        }
        if let Some(policy) = policy {
            self.report_attempts = true;
            let request = Box::new(Replayable { method, uri, headers, body: Bytes::new() });
            self.upstream = Upstream::Collecting { request, cluster, policy };
            if end_stream {
                self.launch();
            }
            return;
        }
        let body = if end_stream {
            body::empty()
        } else {
            ProxyBody::new(UpstreamRequestBody { driver: me.clone(), ended: false })
        };
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        self.upstream = Upstream::Waiting(Box::pin(async move {
            Exchange { result: cluster.send(request).await.map_err(Into::into), attempts: 1 }
        }));
    }

    /// Envoy's `direct_response`: the route answers, and the answer passes the filters'
    /// response callbacks as an upstream's would. The request body is read and dropped.
    fn direct_response(&mut self, status: u16, body: Bytes, end_stream: bool) {
        let response = router::direct_response(status, &body);
        self.answer(response.map(|_| body), end_stream);
    }

    /// A route's own answer (direct response, redirect), with the route's response header
    /// changes, through the filters' response callbacks.
    fn answer(&mut self, response: Response<Bytes>, end_stream: bool) {
        self.upstream = Upstream::Done;
        if end_stream {
            self.shared().request_complete();
        }
        let (mut parts, body) = response.into_parts();
        self.route.response_headers.apply(&mut parts.headers);
        let empty = body.is_empty();
        self.engine.response_headers(response_map(&mut parts), empty);
        if !empty {
            self.engine.response_data(body, true);
        }
    }

    /// Adds request output to a request gathered for retries.
    fn collect(&mut self, output: Option<Output>) {
        let Upstream::Collecting { request, .. } = &mut self.upstream else { return };
        match output {
            Some(Output::Data { bytes, end_stream }) => {
                if request.body.len() + bytes.len() > MAX_REPLAY_BODY {
                    self.upstream = Upstream::Done;
                    self.engine.local_reply(StreamFailure::RetryBufferOverflow.local_reply());
                    return;
                }
                let mut body = std::mem::take(&mut request.body).try_into_mut().unwrap_or_else(|b| b.as_ref().into());
                body.extend_from_slice(&bytes);
                request.body = body.freeze();
                if end_stream {
                    self.launch();
                }
            }
            // Retried requests go without trailers (HTTP/1.1 upstreams rarely take them).
            Some(Output::Trailers) => self.launch(),
            _ => {}
        }
    }

    /// Starts the retrying exchange once the whole request is known.
    fn launch(&mut self) {
        let Upstream::Collecting { request, cluster, policy } = std::mem::replace(&mut self.upstream, Upstream::Done)
        else {
            return;
        };
        self.shared().request_complete();
        let worker = self.worker.clone();
        self.upstream =
            Upstream::Waiting(Box::pin(router::exchange(cluster, *request, policy, move || worker.random_unit())));
    }

    /// The whole request has gone upstream: the route timer starts, and the client side (which
    /// runs the timers) must look at it.
    fn request_sent(&self) {
        self.shared().request_complete();
        self.engine.data().borrow().wake(Dir::Response);
    }

    /// The client's body failed or ended short: answer 400 and make sure the upstream request,
    /// if one is under way, is reset rather than completed.
    fn bad_request_body(&mut self, why: &str) {
        tracing::debug!("client request body failed: {why}");
        self.downstream = None;
        self.shared().mark_bad_request_body();
        self.worker.stats.bad_request_bodies.increment(1).ok();
        if matches!(self.upstream, Upstream::Waiting(_) | Upstream::Collecting { .. }) {
            self.upstream = Upstream::Done;
        }
        self.engine.local_reply(StreamFailure::BadRequestBody.local_reply());
    }

    fn read_downstream(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.engine.accepts(Dir::Request) {
            return false;
        }
        let Some(body) = &mut self.downstream else {
            return false;
        };
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => false,
            Poll::Ready(None) => {
                if self.downstream_expected.is_some_and(|n| n != self.downstream_received) {
                    self.bad_request_body("body shorter than its Content-Length");
                    return true;
                }
                self.downstream = None;
                self.engine.request_data(Bytes::new(), true);
                true
            }
            Poll::Ready(Some(Err(e))) => {
                self.bad_request_body(&e.to_string());
                true
            }
            Poll::Ready(Some(Ok(frame))) => {
                self.timer.shared().touch();
                let end = body.is_end_stream();
                match frame.into_data() {
                    Ok(data) => {
                        self.downstream_received += data.len() as u64;
                        if end {
                            self.downstream = None;
                        }
                        self.engine.request_data(data, end);
                    }
                    Err(frame) => {
                        self.downstream = None;
                        if let Ok(trailers) = frame.into_trailers() {
                            self.engine.request_trailers(HeaderMap::from_parts(Vec::new(), trailers));
                        }
                    }
                }
                true
            }
        }
    }

    fn read_upstream(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.upstream {
            Upstream::NotStarted | Upstream::Done | Upstream::Collecting { .. } => false,
            Upstream::Waiting(future) => {
                let Exchange { result, attempts } = match future.as_mut().poll(cx) {
                    Poll::Pending => return false,
                    Poll::Ready(r) => r,
                };
                let Some(cluster) = self.cluster.clone() else { return false };
                cluster.metrics.retried(attempts - 1);
                match result {
                    Ok((response, conn)) => {
                        if let Some(start) = self.upstream_started {
                            cluster.metrics.time(start.elapsed());
                        }
                        let (mut parts, body) = response.into_parts();
                        let end = body.is_end_stream();
                        if self.report_attempts {
                            parts.headers.insert(router::ATTEMPT_COUNT, HeaderValue::from(attempts));
                        }
                        {
                            let mut data = self.engine.data().borrow_mut();
                            data.info.upstream = Some(conn.addr);
                            data.info.upstream_local = conn.local;
                            data.info.upstream_tls = conn.tls.clone();
                            data.info.upstream_attempts = attempts;
                        }
                        self.upstream = if end { Upstream::Done } else { Upstream::Streaming(body) };
                        self.route.response_headers.apply(&mut parts.headers);
                        self.engine.response_headers(response_map(&mut parts), end);
                    }
                    Err(e) => {
                        tracing::debug!(cluster = %cluster.name, attempts, "upstream failed: {e}");
                        if let router::ExchangeError::Upstream(u) = &e {
                            self.engine.data().borrow_mut().info.upstream_failure = u.transport_failure();
                        }
                        self.upstream = Upstream::Done;
                        if self.shared().bad_request_body() {
                            return true;
                        }
                        cluster.metrics.failures.increment(1).ok();
                        let mut reply = e.failure().local_reply();
                        if self.report_attempts {
                            reply.headers.push((
                                router::ATTEMPT_COUNT.as_str().as_bytes().to_vec(),
                                attempts.to_string().into_bytes(),
                            ));
                        }
                        self.engine.local_reply(reply);
                    }
                }
                true
            }
            Upstream::Streaming(body) => {
                if !self.engine.accepts(Dir::Response) {
                    return false;
                }
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => false,
                    Poll::Ready(None) => {
                        self.upstream = Upstream::Done;
                        self.engine.response_data(Bytes::new(), true);
                        true
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!("upstream response body failed: {e}");
                        self.upstream = Upstream::Done;
                        // The client has response headers already: the engine resets instead.
                        self.engine.local_reply(StreamFailure::UpstreamReset.local_reply());
                        true
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        self.timer.shared().touch();
                        let end = body.is_end_stream();
                        if end {
                            self.upstream = Upstream::Done;
                        }
                        match frame.into_data() {
                            Ok(data) => self.engine.response_data(data, end),
                            Err(frame) => {
                                self.upstream = Upstream::Done;
                                if let Ok(trailers) = frame.into_trailers() {
                                    self.engine.response_trailers(HeaderMap::from_parts(Vec::new(), trailers));
                                }
                            }
                        }
                        true
                    }
                }
            }
        }
    }

    fn check_timer(&mut self, cx: &mut Context<'_>) -> bool {
        if self.response_finished || self.engine.is_reset() {
            return false;
        }
        let expired = match self.timer.poll_expired(cx) {
            Poll::Pending => return false,
            Poll::Ready(e) => e,
        };
        self.upstream = Upstream::Done;
        self.downstream = None;
        let failure = match expired {
            Expired::Route => {
                if let Some(c) = &self.cluster {
                    c.metrics.timeouts.increment(1).ok();
                }
                StreamFailure::RouteTimeout
            }
            Expired::Idle => {
                self.worker.stats.stream_idle_timeouts.increment(1).ok();
                StreamFailure::StreamIdle
            }
        };
        // After response headers left, the engine resets the stream instead.
        self.engine.local_reply(failure.local_reply());
        true
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let code = self.engine.data().borrow().info.response_code;
        self.worker.stats.downstream_response(code);
    }
}

/// The client-facing response body of a filtered stream; it owns the driver.
struct FilteredBody {
    driver: Rc<RefCell<Driver>>,
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let weak = Rc::downgrade(&self.driver);
        let mut d = self.driver.borrow_mut();
        if d.response_finished {
            return Poll::Ready(None);
        }
        d.make_progress(&weak, Dir::Response, cx);
        match d.engine.next_output(Dir::Response) {
            Some(Output::Data { bytes, end_stream }) => {
                d.response_finished = end_stream;
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Some(Output::Trailers) => {
                d.response_finished = true;
                let trailers = d.engine.data().borrow().trailers[Dir::Response].clone().unwrap_or_default();
                Poll::Ready(Some(Ok(Frame::trailers(trailers.into_regular()))))
            }
            Some(Output::Headers { .. }) => Poll::Ready(Some(Err("a second response after headers were sent".into()))),
            None if d.engine.is_reset() => Poll::Ready(Some(Err(BodyError::Reset("after the response began").into()))),
            None => Poll::Pending,
        }
    }
}

/// The request body sent upstream, pulled from the chain. It holds the driver weakly: once the
/// client side is gone, the upstream request fails instead of ending as if complete.
struct UpstreamRequestBody {
    driver: Weak<RefCell<Driver>>,
    ended: bool,
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let Some(driver) = self.driver.upgrade() else {
            return Poll::Ready(Some(Err(BodyError::ClientGone.into())));
        };
        let mut d = driver.borrow_mut();
        d.make_progress(&self.driver, Dir::Request, cx);
        match d.engine.next_output(Dir::Request) {
            Some(Output::Data { bytes, end_stream }) => {
                if end_stream {
                    self.ended = true;
                    d.request_sent();
                }
                d.shared().touch();
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Some(Output::Trailers) => {
                self.ended = true;
                d.request_sent();
                let trailers = d.engine.data().borrow().trailers[Dir::Request].clone().unwrap_or_default();
                Poll::Ready(Some(Ok(Frame::trailers(trailers.into_regular()))))
            }
            Some(Output::Headers { .. }) => Poll::Ready(Some(Err("request headers twice".into()))),
            None if d.shared().bad_request_body() => {
                Poll::Ready(Some(Err(BodyError::BadRequestBody("the client's body failed".into()).into())))
            }
            None if d.engine.request_aborted() => {
                Poll::Ready(Some(Err(BodyError::Reset("the request was answered locally").into())))
            }
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
