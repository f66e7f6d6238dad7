//! The path of a request when no filter is configured: straight to the upstream, streaming
//! both bodies, with the route timeout covering the wait for response headers.

use std::time::Instant;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::plain;
use super::upstream::strip_hop_by_hop;
use super::worker::{Route, Worker};

pub async fn forward(request: Request<Incoming>, worker: &Worker, route: &Route) -> Response<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
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
    let request = Request::from_parts(parts, ProxyBody::new(body.map_err(Into::into)));
    let start = Instant::now();
    let sent = route.cluster.send(request);
    let result = match route.timeout {
        Some(t) => tokio::time::timeout(t, sent).await.ok(),
        None => Some(sent.await),
    };
    let cluster = &route.cluster.name;
    let response = match result {
        None => {
            worker.stats.upstream_timeout(cluster);
            plain(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
        }
        Some(Err(e)) => {
            tracing::debug!(%cluster, "upstream failed: {e}");
            worker.stats.upstream_failure(cluster);
            plain(StatusCode::SERVICE_UNAVAILABLE, e.body())
        }
        Some(Ok((response, _))) => {
            worker.stats.upstream_time(cluster, start.elapsed());
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, ProxyBody::new(body))
        }
    };
    worker.stats.downstream_response(Some(response.status().as_u16() as u32));
    response
}
