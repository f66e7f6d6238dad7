//! The HTTP face of the service: `POST /json` (Envoy's RLS API in proto3 JSON, as
//! envoyproxy/ratelimit serves it) and `GET /healthcheck`; and [`decide`], which the gRPC face
//! shares.
//!
//! Answers: 200 with the response when the overall code is OK, 429 with it when OVER_LIMIT
//! (as envoyproxy/ratelimit does), 400 naming what is wrong with a request, 413 for a body
//! over 1 MiB, 500 when the store cannot count (never an answer made up without counting).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use meshwork_rate_limit_descriptors::check::{self, Check, Code};
use meshwork_rate_limit_descriptors::limits::Limits;
use meshwork_rate_limit_descriptors::wire::WireResponse;

use super::store::Store;

const MAX_BODY: usize = 1 << 20;

pub struct Service {
    pub limits: Limits,
    pub store: Store,
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, "text/plain", format!("{message}\n"))
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allow}"));
    r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

pub async fn handle(service: Arc<Service>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (request.method(), request.uri().path()) {
        (&Method::POST, "/json") => should_rate_limit(&service, request).await,
        (_, "/json") => method_not_allowed("POST"),
        (&Method::GET | &Method::HEAD, "/healthcheck") => match service.store.check().await {
            Ok(()) => text(StatusCode::OK, "OK"),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        (_, "/healthcheck") => method_not_allowed("GET"),
        (_, path) => text(StatusCode::NOT_FOUND, &format!("no {path} here: use POST /json or GET /healthcheck")),
    })
}

/// Why a check produced no answer.
pub enum Refusal {
    /// The request is wrong (HTTP 400, gRPC INVALID_ARGUMENT).
    BadRequest(String),
    /// The store could not count (HTTP 500, gRPC UNAVAILABLE): never an answer made up.
    Store(String),
}

/// `ShouldRateLimit`, whichever face asked.
pub async fn decide(service: &Service, ask: &check::Request) -> Result<check::Response, Refusal> {
    let now = now_ns();
    let check =
        Check::new(&service.limits, ask, now).map_err(|e| Refusal::BadRequest(format!("bad RateLimitRequest: {e}")))?;
    let increments = check.increments();
    let counts = if increments.is_empty() {
        Vec::new()
    } else {
        service.store.add(&increments, now).await.map_err(|e| {
            tracing::warn!("cannot count domain {:?}: {e}", ask.domain);
            Refusal::Store(format!("the rate-limit store failed: {e}"))
        })?
    };
    let response = check.finish(&counts);
    tracing::debug!(domain = %ask.domain, descriptors = ?ask.descriptors, code = ?response.overall_code, "checked");
    Ok(response)
}

async fn should_rate_limit(service: &Service, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return text(StatusCode::PAYLOAD_TOO_LARGE, &format!("the request body is over {MAX_BODY} bytes"));
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("cannot read the request body: {e}")),
    };
    let ask: check::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("not a RateLimitRequest in JSON: {e}")),
    };
    let response = match decide(service, &ask).await {
        Ok(r) => r,
        Err(Refusal::BadRequest(e)) => return text(StatusCode::BAD_REQUEST, &e),
        Err(Refusal::Store(e)) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let status = match response.overall_code {
        Code::Ok => StatusCode::OK,
        Code::OverLimit => StatusCode::TOO_MANY_REQUESTS,
    };
    match serde_json::to_vec(&WireResponse::from(&response)) {
        Ok(json) => reply(status, "application/json", json),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot write the response: {e}")),
    }
}
