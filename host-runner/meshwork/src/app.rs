//! `meshwork upstream`: the instrumented sample workload.
//!
//! Each request chooses its answer with query parameters (or `x-upstream-<name>` headers):
//! `status=503`, `delay=20ms`, `size=1024` (body bytes; without it the body echoes the request
//! as JSON), `header=name:value` (repeatable), `reset=1` (drop the connection, no response).
//! `fail_first=N` with `key=K` applies `status`, `delay` and `reset` only to the first N
//! requests with that key and answers plainly after: a service that recovers, for retries.
//! For load-generator tests: `stall=200ms&period=1s` holds every request that arrives in the
//! first 200 ms of each 1 s period (counted from start-up) until that stall ends, a known
//! latency distribution with periodic stalls; `limit=4` serves at most 4 such requests at once
//! (a capacity of limit/delay).
//! For proxy tests: `read_delay=2s` waits before reading the request body (a slow upstream);
//! `chunks=N&chunk_delay=50ms` sends a `size` body in N chunks with a pause before each (a
//! slow or stalled response); `reset_after=BYTES` announces `size` bytes, sends that many, and
//! drops the connection (an upstream that dies mid-response); `drain=1` reads the body without
//! keeping it (large uploads).
//! `/bytes/N` answers N random bytes, as httpbin does.
//! Every request except `/stats` is counted — in total, by path, by status and by the `key`
//! parameter — and so is how request bodies ended (`bodies.complete`, `bodies.failed`, with
//! their bytes); `GET /stats` reports the counts (`POST /stats/reset` zeroes them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde_json::json;

#[derive(Default, Serialize)]
struct Counts {
    requests_total: u64,
    by_path: BTreeMap<String, u64>,
    by_status: BTreeMap<u16, u64>,
    by_key: BTreeMap<String, u64>,
    bodies: BodyCounts,
}

/// How request bodies ended: read to a clean end, or cut by an error (a reset, a truncated
/// chunked encoding, a connection that closed mid-body).
#[derive(Default, Serialize)]
struct BodyCounts {
    complete: u64,
    complete_bytes: u64,
    failed: u64,
    failed_bytes: u64,
}

struct App {
    name: String,
    counts: Mutex<Counts>,
    /// Stall windows are counted from here.
    epoch: std::time::Instant,
    limits: Mutex<BTreeMap<usize, Arc<tokio::sync::Semaphore>>>,
    /// Per (stall, period): how many stalls have ended, published by one releasing thread.
    stalls: Mutex<BTreeMap<(Duration, Duration), tokio::sync::watch::Receiver<u64>>>,
}

/// What one request asked for.
struct Ask {
    status: StatusCode,
    delay: Duration,
    size: Option<usize>,
    headers: Vec<(HeaderName, HeaderValue)>,
    reset: bool,
    key: Option<String>,
    fail_first: Option<u64>,
    /// (stall, period)
    stall: Option<(Duration, Duration)>,
    limit: Option<usize>,
    read_delay: Duration,
    /// (chunks, delay before each)
    chunks: Option<(usize, Duration)>,
    reset_after: Option<usize>,
    drain: bool,
}

fn param(query: &[(String, String)], headers: &http::HeaderMap, name: &str) -> Vec<String> {
    let mut values: Vec<String> = query.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect();
    let header = format!("x-upstream-{name}");
    values.extend(headers.get_all(header.as_str()).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned));
    values
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

impl Ask {
    fn from(request: &Request<Incoming>) -> Result<Ask, String> {
        let query = parse_query(request.uri().query());
        let headers = request.headers();
        let one = |name: &str| param(&query, headers, name).into_iter().next();
        let status = match one("status") {
            Some(s) => s
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or(format!("status {s:?} is not an HTTP status"))?,
            None => StatusCode::OK,
        };
        let delay = match one("delay") {
            Some(d) => crate::config::parse_duration(&d).map_err(|e| e.to_string())?,
            None => Duration::ZERO,
        };
        let size = one("size")
            .map(|s| s.parse::<usize>().map_err(|_| format!("size {s:?} is not a number of bytes")))
            .transpose()?;
        let mut extra = Vec::new();
        for h in param(&query, headers, "header") {
            let (k, v) = h.split_once(':').ok_or(format!("header {h:?} is not name:value"))?;
            let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| format!("bad header name {k:?}"))?;
            let value = HeaderValue::from_str(v.trim()).map_err(|_| format!("bad header value {v:?}"))?;
            extra.push((name, value));
        }
        let fail_first = one("fail_first")
            .map(|n| n.parse::<u64>().map_err(|_| format!("fail_first {n:?} is not a count")))
            .transpose()?;
        let key = one("key");
        if fail_first.is_some() && key.is_none() {
            return Err("fail_first needs a key to count requests by".into());
        }
        Ok(Ask {
            status,
            delay,
            size,
            headers: extra,
            reset: one("reset").is_some_and(|v| v == "1" || v == "true"),
            key,
            fail_first,
            stall: match one("stall") {
                Some(s) => {
                    let stall = crate::config::parse_duration(&s).map_err(|e| e.to_string())?;
                    let period = match one("period") {
                        Some(p) => crate::config::parse_duration(&p).map_err(|e| e.to_string())?,
                        None => Duration::from_secs(1),
                    };
                    if period.is_zero() || stall > period {
                        return Err(format!("stall {s:?} must fit in a non-zero period"));
                    }
                    Some((stall, period))
                }
                None => None,
            },
            limit: one("limit")
                .map(|s| {
                    s.parse::<usize>().ok().filter(|n| *n > 0).ok_or(format!("limit {s:?} is not a positive number"))
                })
                .transpose()?,
            read_delay: match one("read_delay") {
                Some(d) => crate::config::parse_duration(&d).map_err(|e| e.to_string())?,
                None => Duration::ZERO,
            },
            chunks: match one("chunks") {
                Some(n) => {
                    let n = n
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or(format!("chunks {n:?} is not a positive number"))?;
                    let delay = match one("chunk_delay") {
                        Some(d) => crate::config::parse_duration(&d).map_err(|e| e.to_string())?,
                        None => Duration::ZERO,
                    };
                    Some((n, delay))
                }
                None => None,
            },
            reset_after: one("reset_after")
                .map(|n| n.parse::<usize>().map_err(|_| format!("reset_after {n:?} is not a number of bytes")))
                .transpose()?,
            drain: one("drain").is_some_and(|v| v == "1" || v == "true"),
        })
    }
}

type AppBody = http_body_util::Either<Full<Bytes>, Paced>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<AppBody> {
    let mut r = Response::new(http_body_util::Either::Left(Full::new(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn handle(app: Arc<App>, request: Request<Incoming>) -> Result<Response<AppBody>, String> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/stats") => {
            let counts = app.counts.lock().map_err(|_| "poisoned")?;
            return Ok(respond(StatusCode::OK, "application/json", serde_json::to_vec(&*counts).unwrap_or_default()));
        }
        (&Method::POST, "/stats/reset") => {
            *app.counts.lock().map_err(|_| "poisoned")? = Counts::default();
            return Ok(respond(StatusCode::OK, "text/plain", "reset\n"));
        }
        _ => {}
    }
    // Every request is counted, malformed ones (answered 400) included.
    let mut ask = Ask::from(&request);
    let path = request.uri().path().to_owned();
    {
        let mut c = app.counts.lock().map_err(|_| "poisoned")?;
        c.requests_total += 1;
        *c.by_path.entry(path.clone()).or_default() += 1;
        match &mut ask {
            Ok(ask) => {
                if let Some(k) = &ask.key {
                    let seen = c.by_key.entry(k.clone()).or_default();
                    *seen += 1;
                    if ask.fail_first.is_some_and(|n| *seen > n) {
                        (ask.status, ask.delay, ask.reset) = (StatusCode::OK, Duration::ZERO, false);
                    }
                }
                if !ask.reset {
                    *c.by_status.entry(ask.status.as_u16()).or_default() += 1;
                }
            }
            Err(_) => *c.by_status.entry(400).or_default() += 1,
        }
    }
    let ask = match ask {
        Ok(a) => a,
        Err(e) => return Ok(respond(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"))),
    };
    let method = request.method().to_string();
    let path_and_query = request.uri().path_and_query().map_or("/".into(), |p| p.to_string());
    let mut echo_headers = BTreeMap::<String, String>::new();
    for (k, v) in request.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        echo_headers.entry(k.to_string()).and_modify(|e| *e = format!("{e}, {v}")).or_insert(v);
    }
    if !ask.read_delay.is_zero() {
        tokio::time::sleep(ask.read_delay).await;
    }
    let body = read_body(&app, request.into_body(), ask.drain).await?;
    if let Some((stall, period)) = ask.stall {
        let elapsed = app.epoch.elapsed().as_nanos();
        let window = (elapsed / period.as_nanos()) as u64;
        if elapsed % period.as_nanos() < stall.as_nanos() {
            let mut released = stall_releases(&app, stall, period)?;
            let _ = released.wait_for(|ended| *ended > window).await;
        }
    }
    let semaphore = match ask.limit {
        Some(n) => Some(
            app.limits
                .lock()
                .map_err(|_| "poisoned")?
                .entry(n)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(n)))
                .clone(),
        ),
        None => None,
    };
    let _permit = match semaphore {
        Some(s) => Some(s.acquire_owned().await.map_err(|e| e.to_string())?),
        None => None,
    };
    if !ask.delay.is_zero() {
        tokio::time::sleep(ask.delay).await;
    }
    if ask.reset {
        return Err("reset requested".into());
    }
    let mut response = match ask.size {
        Some(n) if ask.chunks.is_some() || ask.reset_after.is_some() => {
            let (chunks, delay) = ask.chunks.unwrap_or((1, Duration::ZERO));
            let mut r = Response::new(http_body_util::Either::Right(Paced::new(n, chunks, delay, ask.reset_after)));
            *r.status_mut() = ask.status;
            r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            r.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            r
        }
        Some(n) => respond(ask.status, "application/octet-stream", vec![b'x'; n]),
        // httpbin's /bytes/N: N random bytes (what the SDK's http_auth_random example asks).
        None if path.starts_with("/bytes/") => {
            let n: usize = path["/bytes/".len()..].parse().map_err(|_| format!("{path}: not /bytes/<count>"))?;
            let mut bytes = vec![0u8; n.min(100 << 10)];
            getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
            respond(ask.status, "application/octet-stream", bytes)
        }
        None => {
            let echo = json!({
                "upstream": app.name,
                "method": method,
                "path": path_and_query,
                "headers": echo_headers,
                "body_bytes": body.len(),
                "body": String::from_utf8_lossy(&body[..body.len().min(4096)]),
            });
            respond(ask.status, "application/json", serde_json::to_vec(&echo).unwrap_or_default())
        }
    };
    let headers = response.headers_mut();
    headers.insert("x-upstream-name", HeaderValue::from_str(&app.name).unwrap_or(HeaderValue::from_static("upstream")));
    for (k, v) in ask.headers {
        headers.append(k, v);
    }
    Ok(response)
}

/// Reads a request body to its end, counting how it ended; `drain` keeps nothing of it.
async fn read_body(app: &App, mut body: Incoming, drain: bool) -> Result<Bytes, String> {
    let mut kept = bytes::BytesMut::new();
    let mut bytes = 0u64;
    let outcome = loop {
        match body.frame().await {
            None => break Ok(()),
            Some(Err(e)) => break Err(e.to_string()),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                    if !drain {
                        kept.extend_from_slice(data);
                    }
                }
            }
        }
    };
    let mut c = app.counts.lock().map_err(|_| "poisoned")?;
    match outcome {
        Ok(()) => {
            c.bodies.complete += 1;
            c.bodies.complete_bytes += bytes;
            Ok(kept.freeze())
        }
        Err(e) => {
            c.bodies.failed += 1;
            c.bodies.failed_bytes += bytes;
            Err(e)
        }
    }
}

/// A body of `size` bytes of `x` sent in chunks with a pause before each, optionally failing
/// after `reset_after` bytes (hyper then drops the connection).
pub struct Paced {
    left: usize,
    chunk: usize,
    delay: Duration,
    reset_after: Option<usize>,
    sent: usize,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Paced {
    fn new(size: usize, chunks: usize, delay: Duration, reset_after: Option<usize>) -> Paced {
        Paced { left: size, chunk: size.div_ceil(chunks).max(1), delay, reset_after, sent: 0, sleep: None }
    }
}

impl http_body::Body for Paced {
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, String>>> {
        use std::future::Future;
        let this = &mut *self;
        if this.reset_after.is_some_and(|r| this.sent >= r) {
            return std::task::Poll::Ready(Some(Err("reset_after reached".into())));
        }
        if this.left == 0 {
            return std::task::Poll::Ready(None);
        }
        if !this.delay.is_zero() {
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(this.delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            this.sleep = None;
        }
        let mut n = this.chunk.min(this.left);
        if let Some(r) = this.reset_after {
            n = n.min(r - this.sent).max(1);
        }
        this.left -= n;
        this.sent += n;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![b'x'; n])))))
    }
}

/// The stall clock for (stall, period): one thread sleeps to the end of each stall and releases
/// every request held in it at once. A thread's sleep wakes within tens of µs, where tokio's
/// timer rounds to milliseconds — which would blur the distribution the load generator's
/// accuracy is tested against.
fn stall_releases(
    app: &Arc<App>,
    stall: Duration,
    period: Duration,
) -> Result<tokio::sync::watch::Receiver<u64>, String> {
    let mut stalls = app.stalls.lock().map_err(|_| "poisoned")?;
    if let Some(rx) = stalls.get(&(stall, period)) {
        return Ok(rx.clone());
    }
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let epoch = app.epoch;
    std::thread::spawn(move || {
        loop {
            let elapsed = epoch.elapsed().as_nanos();
            let window = elapsed / period.as_nanos();
            let end = window * period.as_nanos() + stall.as_nanos();
            if end > elapsed {
                std::thread::sleep(Duration::from_nanos((end - elapsed) as u64));
            }
            // Stalls 0..=window have ended.
            if tx.send(window as u64 + 1).is_err() {
                return;
            }
            let next = (window + 1) * period.as_nanos();
            let now = epoch.elapsed().as_nanos();
            if next > now {
                std::thread::sleep(Duration::from_nanos((next - now) as u64));
            }
        }
    });
    stalls.insert((stall, period), rx.clone());
    Ok(rx)
}

/// Serves until the process ends. Prints the address it listens on once ready.
pub fn serve(listen: SocketAddr, name: String, threads: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr()?;
        println!("meshwork upstream {name}: listening on http://{local}");
        use std::io::Write;
        std::io::stdout().flush()?;
        let app = Arc::new(App {
            name,
            counts: Mutex::default(),
            epoch: std::time::Instant::now(),
            limits: Mutex::default(),
            stalls: Mutex::default(),
        });
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: keep serving, as a real upstream would.
                    eprintln!("meshwork upstream: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r| handle(app.clone(), r));
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Tests send many headers through filters; accept more than a proxy would.
                builder.http1().max_headers(2000).max_buf_size(1 << 20);
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
