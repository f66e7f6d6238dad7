//! The path of a request when no filter is configured: the shared router work of
//! [`super::router`] without the engine. Both bodies stream through untouched, pulled by the
//! side that writes them (nothing is buffered); the stream's timers cover the whole exchange,
//! the route timeout to the end of the response. Requests that ask for retries are buffered
//! first (up to the retry buffer), since they may be sent more than once.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{ClientBody, Expired, ProxyBody, StreamShared, StreamTimer, TimedBody};
use super::generation::{Generation, ListenerGeneration};
use super::request::{Prepared, StreamFailure};
use super::router::{self, Exchange, Replayable, RetryPolicy};
use super::stream::MAX_REPLAY_BODY;
use super::upstream::{Cluster, strip_hop_by_hop};
use super::worker::Worker;

pub async fn forward(
    prepared: Prepared,
    body: Incoming,
    worker: &Rc<Worker>,
    generation: &Generation,
    listener: &ListenerGeneration,
) -> Response<ProxyBody> {
    let response = match forward_inner(prepared, body, worker, generation, listener).await {
        Ok(response) => response,
        Err(failure) => failure.response(),
    };
    worker.stats.downstream_response(Some(u32::from(response.status().as_u16())));
    response
}

async fn forward_inner(
    prepared: Prepared,
    body: Incoming,
    worker: &Rc<Worker>,
    generation: &Generation,
    listener: &ListenerGeneration,
) -> Result<Response<ProxyBody>, StreamFailure> {
    let Prepared { mut parts, route, listener_port, .. } = prepared;
    match &route.target {
        router::Target::Direct { status, body: text } => {
            drop(body);
            let mut response = router::direct_response(*status, text);
            route.response_headers.apply(response.headers_mut());
            return Ok(response);
        }
        router::Target::Redirect(redirect) => {
            drop(body);
            return Ok(router::redirect_response(&route, redirect, &parts.headers, &parts.uri, Some(listener_port)));
        }
        _ => {}
    }
    let cluster = router::cluster_for(&route, &parts.headers, generation, worker.random_unit())
        .ok_or(StreamFailure::NoCluster)?;
    router::rewrite_request(&route, &mut parts.uri, &mut parts.headers);
    let policy = RetryPolicy::from_headers(&parts.headers);
    let report_attempts = policy.is_some();
    let shared = StreamShared::new(Instant::now());
    shared.set_route_timeout(router::request_timeout(&parts.headers, route.timeout));
    router::strip_control_headers(&mut parts.headers);
    if body.is_end_stream() {
        shared.request_complete();
    }
    let mut timer = StreamTimer::new(shared.clone(), listener.settings.stream_idle_timeout);
    let start = Instant::now();
    let body = ClientBody::new(body, &shared);
    let exchange: Pin<Box<dyn Future<Output = Result<Exchange, StreamFailure>>>> = match policy {
        None => {
            let request = Request::from_parts(parts, ProxyBody::new(body));
            let cluster = cluster.clone();
            Box::pin(
                async move { Ok(Exchange { result: cluster.send(request).await.map_err(Into::into), attempts: 1 }) },
            )
        }
        Some(policy) => {
            let cluster = cluster.clone();
            let worker = worker.clone();
            Box::pin(async move {
                let collected = match http_body_util::Limited::new(body, MAX_REPLAY_BODY).collect().await {
                    Ok(c) => c,
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return Err(StreamFailure::RetryBufferOverflow);
                    }
                    Err(_) => return Err(StreamFailure::BadRequestBody),
                };
                let request = Replayable {
                    method: parts.method,
                    uri: parts.uri,
                    headers: parts.headers,
                    body: collected.to_bytes(),
                };
                Ok(router::exchange(cluster, request, policy, move || worker.random_unit()).await)
            })
        }
    };
    let outcome = wait(exchange, &mut timer).await;
    let exchange = match outcome {
        Err(expired) => return Err(expiry(expired, &cluster, worker)),
        Ok(Err(failure)) => return Err(failure),
        Ok(Ok(exchange)) => exchange,
    };
    let Exchange { result, attempts } = exchange;
    cluster.metrics.retried(attempts - 1);
    let (response, _) = match result {
        Err(e) => {
            tracing::debug!(cluster = %cluster.name, attempts, "upstream failed: {e}");
            if shared.bad_request_body() {
                worker.stats.bad_request_bodies.increment(1).ok();
                return Err(StreamFailure::BadRequestBody);
            }
            cluster.metrics.failures.increment(1).ok();
            let mut response = e.failure().response();
            if report_attempts {
                response.headers_mut().insert(router::ATTEMPT_COUNT, attempts.into());
            }
            return Ok(response);
        }
        Ok(ok) => ok,
    };
    cluster.metrics.time(start.elapsed());
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    route.response_headers.apply(&mut parts.headers);
    if report_attempts {
        parts.headers.insert(router::ATTEMPT_COUNT, attempts.into());
    }
    let body = if body.is_end_stream() { ProxyBody::Empty } else { ProxyBody::new(TimedBody::new(body, timer)) };
    Ok(Response::from_parts(parts, body))
}

/// Runs `exchange` until it ends or one of the stream's timers expires.
async fn wait<T>(mut exchange: Pin<Box<dyn Future<Output = T>>>, timer: &mut StreamTimer) -> Result<T, Expired> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = exchange.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        timer.poll_expired(cx).map(Err)
    })
    .await
}

/// The answer to a stream whose timer expired before the response began.
fn expiry(expired: Expired, cluster: &Cluster, worker: &Worker) -> StreamFailure {
    match expired {
        Expired::Route => {
            cluster.metrics.timeouts.increment(1).ok();
            StreamFailure::RouteTimeout
        }
        Expired::Idle => {
            worker.stats.stream_idle_timeouts.increment(1).ok();
            StreamFailure::StreamIdle
        }
    }
}
