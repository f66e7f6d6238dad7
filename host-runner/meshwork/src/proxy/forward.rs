//! The path of a request when no filter is configured: straight to the upstream, streaming
//! both bodies, with the route timeout covering the wait for response headers. Requests that
//! ask for retries are buffered first (see [`router`]).

use std::time::Instant;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::plain;
use super::router::{self, Exchange, Replayable, RetryPolicy, Target};
use super::stream::MAX_REPLAY_BODY;
use super::upstream::strip_hop_by_hop;
use super::worker::{Route, Worker};

pub async fn forward(request: Request<Incoming>, worker: &Worker, route: &Route) -> Response<ProxyBody> {
    let response = forward_inner(request, worker, route).await;
    worker.stats.downstream_response(Some(response.status().as_u16() as u32));
    response
}

async fn forward_inner(request: Request<Incoming>, worker: &Worker, route: &Route) -> Response<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let cluster = match &route.target {
        Target::Cluster(c) => Some(c.clone()),
        Target::Header(name) => parts.headers.get(name).and_then(|c| c.to_str().ok()).and_then(|c| worker.cluster(c)),
    };
    let Some(cluster) = cluster else {
        return plain(StatusCode::NOT_FOUND, "no cluster for this request\n");
    };
    if let Some(authority) = parts.uri.authority()
        && !parts.headers.contains_key(http::header::HOST)
        && let Ok(host) = authority.as_str().parse()
    {
        parts.headers.insert(http::header::HOST, host);
    }
    if let Some(origin_form) = parts.uri.path_and_query().and_then(|p| p.as_str().parse().ok()) {
        parts.uri = origin_form;
    }
    parts.version = http::Version::HTTP_11;
    let policy = RetryPolicy::from_headers(&parts.headers);
    let report_attempts = policy.is_some();
    let timeout = router::request_timeout(&parts.headers, route.timeout);
    router::strip_control_headers(&mut parts.headers);
    let start = Instant::now();
    let exchange = async {
        match policy {
            None => {
                let request = Request::from_parts(parts, ProxyBody::new(body.map_err(Into::into)));
                Ok(Exchange { result: cluster.send(request).await.map_err(Into::into), attempts: 1 })
            }
            Some(policy) => {
                let Ok(collected) = http_body_util::Limited::new(body, MAX_REPLAY_BODY).collect().await else {
                    return Err(plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large to retry\n"));
                };
                let request = Replayable {
                    method: parts.method,
                    uri: parts.uri,
                    headers: parts.headers,
                    body: collected.to_bytes(),
                };
                Ok(router::exchange(cluster.clone(), request, policy, || worker.random_unit()).await)
            }
        }
    };
    let outcome = match timeout {
        Some(t) => tokio::time::timeout(t, exchange).await.ok(),
        None => Some(exchange.await),
    };
    let cluster = &cluster.name;
    let Exchange { result, attempts } = match outcome {
        None => {
            worker.stats.upstream_timeout(cluster);
            return plain(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
        }
        Some(Err(response)) => return response,
        Some(Ok(exchange)) => exchange,
    };
    worker.stats.upstream_retries(cluster, attempts - 1);
    let mut response = match result {
        Err(e) => {
            tracing::debug!(%cluster, attempts, "upstream failed: {e}");
            worker.stats.upstream_failure(cluster);
            let (status, _, text) = e.reply();
            plain(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), text)
        }
        Ok((response, _)) => {
            worker.stats.upstream_time(cluster, start.elapsed());
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, ProxyBody::new(body))
        }
    };
    if report_attempts {
        response.headers_mut().insert(router::ATTEMPT_COUNT, attempts.into());
    }
    response
}
