//! One request through the filter chain: hyper on both sides, the wasm host's engine between.
//!
//! A single [`Driver`] per stream does all the work when polled: it feeds the client's body and
//! the upstream's response into the engine, sends what the engine lets through, runs actions
//! filters requested from callouts or timers, and enforces the route timeout. The service
//! future polls it until response headers are ready; after that the response body polls it.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use meshwork_wasm_host::headers::HeaderMap;
use meshwork_wasm_host::{Dir, FilterStream, LocalReply, Output, PluginVm, StreamInfo};
use tokio::time::Sleep;

use super::body::{self, BoxError, FrameSender, ProxyBody};
use super::router::{self, Exchange, Replayable, RetryPolicy, Target};
use super::upstream::{Cluster, PooledBody, strip_hop_by_hop};
use super::worker::{ConnInfo, Route, Worker};

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
    route: Rc<Route>,
    downstream: Option<Incoming>,
    upstream_tx: Option<FrameSender>,
    upstream: Upstream,
    deadline: Option<Pin<Box<Sleep>>>,
    upstream_started: Option<Instant>,
    /// The request asked for retries: the response says how many attempts it took.
    report_attempts: bool,
    cluster_name: Rc<str>,
    response_finished: bool,
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Converts a client request into the map filters see: pseudo-headers first, `Host` folded
/// into `:authority` as Envoy does, and an `x-request-id` when the client sent none.
fn request_map(parts: &mut http::request::Parts, worker: &Worker) -> HeaderMap {
    let mut regular = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut regular);
    let authority = parts
        .uri
        .authority()
        .map(|a| Bytes::copy_from_slice(a.as_str().as_bytes()))
        .or_else(|| regular.remove(http::header::HOST).map(|h| Bytes::copy_from_slice(h.as_bytes())))
        .unwrap_or_default();
    regular.remove(http::header::HOST);
    if !regular.contains_key(X_REQUEST_ID) {
        regular.insert(X_REQUEST_ID, worker.request_id());
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let pseudo = vec![
        (Bytes::from_static(b":authority"), authority),
        (Bytes::from_static(b":path"), Bytes::copy_from_slice(path.as_bytes())),
        (Bytes::from_static(b":method"), method_bytes(&parts.method)),
        (Bytes::from_static(b":scheme"), Bytes::from_static(b"http")),
    ];
    HeaderMap::from_parts(pseudo, regular)
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

fn local(status: u32, details: &str, body: impl Into<Bytes>) -> LocalReply {
    LocalReply { status, details: details.into(), body: body.into(), headers: Vec::new(), grpc_status: None }
}

/// Handles a request through `chain`.
pub async fn handle(
    request: Request<Incoming>,
    worker: Rc<Worker>,
    route: Rc<Route>,
    chain: Vec<Rc<PluginVm>>,
    conn: &ConnInfo,
) -> Result<Response<ProxyBody>, BoxError> {
    let (mut parts, body) = request.into_parts();
    let headers = request_map(&mut parts, &worker);
    let cluster_name = match &route.target {
        Target::Cluster(c) => c.name.clone(),
        Target::Header(_) => Rc::from(""),
    };
    let mut info = StreamInfo::new(route.name.clone(), cluster_name.clone());
    info.protocol = protocol(parts.version);
    info.source = Some(conn.peer);
    info.destination = Some(conn.local);
    info.connection_id = conn.id;
    let end_stream = body.is_end_stream();
    let mut engine = FilterStream::new(chain, headers, info);
    engine.request_headers(end_stream);
    let driver = Rc::new(RefCell::new(Driver {
        engine,
        worker,
        route,
        downstream: (!end_stream).then_some(body),
        upstream_tx: None,
        upstream: Upstream::NotStarted,
        deadline: None,
        upstream_started: None,
        report_attempts: false,
        cluster_name,
        response_finished: false,
    }));
    let end_stream = std::future::poll_fn(|cx| driver.borrow_mut().poll_response_headers(cx)).await?;
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
    fn poll_response_headers(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, BoxError>> {
        self.make_progress(cx);
        match self.engine.next_output(Dir::Response) {
            Some(Output::Headers { end_stream }) => Poll::Ready(Ok(end_stream)),
            Some(other) => Poll::Ready(Err(format!("response {other:?} before headers").into())),
            None if self.engine.is_reset() => Poll::Ready(Err("stream reset by a filter".into())),
            None => Poll::Pending,
        }
    }

    fn downstream_head(&self) -> Result<Response<()>, BoxError> {
        let data = self.engine.data().borrow();
        let h = &data.response_headers;
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

    /// Runs everything that can run now; registers the waker for the rest.
    fn make_progress(&mut self, cx: &mut Context<'_>) {
        loop {
            self.engine.data().borrow_mut().set_waker(cx.waker());
            self.engine.process_actions();
            let mut progressed = self.send_upstream();
            progressed |= self.read_downstream(cx);
            progressed |= self.read_upstream(cx);
            progressed |= self.check_deadline(cx);
            if !progressed {
                return;
            }
        }
    }

    /// Moves what left the request side of the chain towards the upstream.
    fn send_upstream(&mut self) -> bool {
        let mut progressed = false;
        while let Some(output) = self.engine.next_output(Dir::Request) {
            progressed = true;
            match output {
                Output::Headers { end_stream } => self.start_upstream(end_stream),
                Output::Data { bytes, end_stream } => {
                    if let Upstream::Collecting { request, .. } = &mut self.upstream {
                        if request.body.len() + bytes.len() > MAX_REPLAY_BODY {
                            self.engine.local_reply(local(
                                413,
                                "request_payload_exceeded_retry_buffer_limit",
                                "request body too large to retry\n",
                            ));
                            self.upstream = Upstream::Done;
                            continue;
                        }
                        let mut body =
                            std::mem::take(&mut request.body).try_into_mut().unwrap_or_else(|b| b.as_ref().into());
                        body.extend_from_slice(&bytes);
                        request.body = body.freeze();
                        if end_stream {
                            self.launch();
                        }
                        continue;
                    }
                    if let Some(tx) = &self.upstream_tx {
                        let _ = tx.send(Ok(Frame::data(bytes)));
                    }
                    if end_stream {
                        self.upstream_tx = None;
                    }
                }
                Output::Trailers => {
                    if matches!(self.upstream, Upstream::Collecting { .. }) {
                        // Retried requests go without trailers (HTTP/1.1 upstreams rarely take them).
                        self.launch();
                        continue;
                    }
                    let trailers = self.engine.data().borrow().request_trailers.clone().unwrap_or_default();
                    if let Some(tx) = self.upstream_tx.take() {
                        let _ = tx.send(Ok(Frame::trailers(trailers.into_regular())));
                    }
                }
            }
        }
        if self.engine.request_aborted() {
            // A local reply answers the client: the upstream request is abandoned.
            self.upstream_tx = None;
            self.downstream = None;
            if matches!(self.upstream, Upstream::Waiting(_) | Upstream::Streaming(_) | Upstream::Collecting { .. }) {
                self.upstream = Upstream::Done;
                self.deadline = None;
            }
        }
        progressed
    }

    /// The request left the filter chain: pick the cluster, then send it (streaming), or gather
    /// its body first when it asks for retries.
    fn start_upstream(&mut self, end_stream: bool) {
        let (method, uri, mut headers, cluster) = {
            let data = self.engine.data().borrow();
            let h = &data.request_headers;
            let method = Method::from_bytes(h.get(b":method").unwrap_or(b"GET"));
            let uri = Uri::try_from(h.get(b":path").unwrap_or(b"/"));
            let (Ok(method), Ok(uri)) = (method, uri) else {
                drop(data);
                self.engine.local_reply(local(500, "filter_made_invalid_request", "invalid request after filters\n"));
                return;
            };
            let mut headers = h.regular().clone();
            if let Some(authority) = h.get(b":authority").and_then(|a| HeaderValue::from_bytes(a).ok()) {
                headers.insert(http::header::HOST, authority);
            }
            let cluster = match &self.route.target {
                Target::Cluster(c) => Some(c.clone()),
                Target::Header(name) => h
                    .get(name.as_str().as_bytes())
                    .and_then(|c| std::str::from_utf8(c).ok())
                    .and_then(|c| self.worker.cluster(c)),
            };
            (method, uri, headers, cluster)
        };
        let Some(cluster) = cluster else {
            // Envoy answers a cluster_header naming no cluster with 404.
            self.engine.local_reply(local(404, "cluster_not_found", "no cluster for this request\n"));
            return;
        };
        self.cluster_name = cluster.name.clone();
        self.engine.data().borrow_mut().info.cluster_name = cluster.name.clone();
        let policy = RetryPolicy::from_headers(&headers);
        let timeout = router::request_timeout(&headers, self.route.timeout);
        router::strip_control_headers(&mut headers);
        self.upstream_started = Some(Instant::now());
        if let Some(timeout) = timeout {
            self.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
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
            let (tx, body) = body::channel();
            self.upstream_tx = Some(tx);
            ProxyBody::new(body)
        };
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        self.upstream = Upstream::Waiting(Box::pin(async move {
            Exchange { result: cluster.send(request).await.map_err(Into::into), attempts: 1 }
        }));
    }

    /// Starts the retrying exchange once the whole request is known.
    fn launch(&mut self) {
        let Upstream::Collecting { request, cluster, policy } = std::mem::replace(&mut self.upstream, Upstream::Done)
        else {
            return;
        };
        let worker = self.worker.clone();
        self.upstream =
            Upstream::Waiting(Box::pin(router::exchange(cluster, *request, policy, move || worker.random_unit())));
    }

    fn read_downstream(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(body) = &mut self.downstream else {
            return false;
        };
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => false,
            Poll::Ready(None) => {
                self.downstream = None;
                self.engine.request_data(Bytes::new(), true);
                true
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!("client request body failed: {e}");
                self.downstream = None;
                self.upstream_tx = None;
                true
            }
            Poll::Ready(Some(Ok(frame))) => {
                let end = body.is_end_stream();
                match frame.into_data() {
                    Ok(data) => {
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
            Upstream::NotStarted | Upstream::Done => false,
            Upstream::Collecting { .. } => false,
            Upstream::Waiting(future) => {
                let Exchange { result, attempts } = match future.as_mut().poll(cx) {
                    Poll::Pending => return false,
                    Poll::Ready(r) => r,
                };
                self.worker.stats.upstream_retries(&self.cluster_name, attempts - 1);
                match result {
                    Ok((response, addr)) => {
                        if let Some(start) = self.upstream_started {
                            self.worker.stats.upstream_time(&self.cluster_name, start.elapsed());
                        }
                        let (mut parts, body) = response.into_parts();
                        let end = body.is_end_stream();
                        if self.report_attempts {
                            parts.headers.insert(router::ATTEMPT_COUNT, HeaderValue::from(attempts));
                        }
                        self.engine.data().borrow_mut().info.upstream = Some(addr);
                        self.upstream = if end { Upstream::Done } else { Upstream::Streaming(body) };
                        if end {
                            self.deadline = None;
                        }
                        self.engine.response_headers(response_map(&mut parts), end);
                    }
                    Err(e) => {
                        tracing::debug!(cluster = %self.cluster_name, attempts, "upstream failed: {e}");
                        self.worker.stats.upstream_failure(&self.cluster_name);
                        self.upstream = Upstream::Done;
                        self.deadline = None;
                        let (status, details, body) = e.reply();
                        let mut reply = local(status as u32, details, body);
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
            Upstream::Streaming(body) => match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => false,
                Poll::Ready(None) => {
                    self.upstream = Upstream::Done;
                    self.deadline = None;
                    self.engine.response_data(Bytes::new(), true);
                    true
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!("upstream response body failed: {e}");
                    self.upstream = Upstream::Done;
                    self.deadline = None;
                    // Headers may be out already; then the engine resets instead.
                    self.engine.local_reply(local(503, "upstream_reset_after_response_started", ""));
                    true
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let end = body.is_end_stream();
                    if end {
                        self.upstream = Upstream::Done;
                        self.deadline = None;
                    }
                    match frame.into_data() {
                        Ok(data) => self.engine.response_data(data, end),
                        Err(frame) => {
                            self.upstream = Upstream::Done;
                            self.deadline = None;
                            if let Ok(trailers) = frame.into_trailers() {
                                self.engine.response_trailers(HeaderMap::from_parts(Vec::new(), trailers));
                            }
                        }
                    }
                    true
                }
            },
        }
    }

    fn check_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = &mut self.deadline else {
            return false;
        };
        if deadline.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.deadline = None;
        self.upstream = Upstream::Done;
        self.upstream_tx = None;
        self.worker.stats.upstream_timeout(&self.cluster_name);
        self.engine.local_reply(local(504, "upstream_response_timeout", "upstream request timeout"));
        true
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let code = self.engine.data().borrow().info.response_code;
        self.worker.stats.downstream_response(code);
    }
}

/// The client-facing response body of a filtered stream.
struct FilteredBody {
    driver: Rc<RefCell<Driver>>,
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut d = self.driver.borrow_mut();
        if d.response_finished {
            return Poll::Ready(None);
        }
        d.make_progress(cx);
        match d.engine.next_output(Dir::Response) {
            Some(Output::Data { bytes, end_stream }) => {
                d.response_finished = end_stream;
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Some(Output::Trailers) => {
                d.response_finished = true;
                let trailers = d.engine.data().borrow().response_trailers.clone().unwrap_or_default();
                Poll::Ready(Some(Ok(Frame::trailers(trailers.into_regular()))))
            }
            Some(Output::Headers { .. }) => Poll::Ready(Some(Err("a second response after headers were sent".into()))),
            None if d.engine.is_reset() => Poll::Ready(Some(Err("stream reset".into()))),
            None => Poll::Pending,
        }
    }
}
