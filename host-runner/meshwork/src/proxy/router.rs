//! What Envoy's router does after the filters, as far as meshwork implements it: the cluster a
//! route names or a request header picks, retries asked for with `x-envoy-retry-on` and
//! friends, and per-request timeouts from `x-envoy-upstream-rq-timeout-ms`. Filters written for
//! Envoy's router (the retry and timeout filters' "envoy-native" mode) therefore work here too.
//!
//! These headers reach the router only from filters or from clients inside the listener's
//! trust boundary ([`super::request`] removes them from everyone else), and every retry must
//! still be admitted by the cluster's circuit (`max_retries` or its retry budget), so no
//! request can make an unbounded number of attempts.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};

use super::body::{self, ProxyBody};
use super::generation::{Generation, Route};
use super::upstream::{Cluster, ConnInfo, PooledBody, UpstreamError};
use crate::route_spec::Redirect;

pub const RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
pub const MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
pub const RETRIABLE_STATUS_CODES: HeaderName = HeaderName::from_static("x-envoy-retriable-status-codes");
pub const PER_TRY_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
pub const REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
pub const ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");

/// Envoy's retry back-off: fully jittered exponential, base 25 ms, capped at ten times that.
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Which outcomes a request may be retried on (`x-envoy-retry-on`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Any 5xx, connect failures, resets and per-try timeouts.
    pub on_5xx: bool,
    /// 502, 503, 504, connect failures, resets and per-try timeouts.
    pub on_gateway_error: bool,
    pub on_reset: bool,
    pub on_connect_failure: bool,
    /// 409.
    pub on_retriable_4xx: bool,
    /// The statuses in `x-envoy-retriable-status-codes`.
    pub status_codes: Vec<u16>,
    pub max_retries: u32,
    pub per_try_timeout: Option<Duration>,
}

fn header_u64(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl RetryPolicy {
    /// The policy a request's headers ask for; `None` when they ask for no retries.
    pub fn from_headers(headers: &HeaderMap) -> Option<RetryPolicy> {
        let retry_on = headers.get(RETRY_ON)?.to_str().ok()?;
        let mut p = RetryPolicy::default();
        for condition in retry_on.split(',').map(str::trim) {
            match condition {
                "5xx" => p.on_5xx = true,
                "gateway-error" => p.on_gateway_error = true,
                "reset" => p.on_reset = true,
                "connect-failure" => p.on_connect_failure = true,
                "retriable-4xx" => p.on_retriable_4xx = true,
                "retriable-status-codes" => {
                    p.status_codes = headers
                        .get(RETRIABLE_STATUS_CODES)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
                        .unwrap_or_default();
                }
                // Conditions meshwork has no cause for (refused-stream is HTTP/2 upstream only,
                // header-based conditions need a route configuration): ignored, as Envoy ignores
                // unknown ones.
                _ => {}
            }
        }
        // Envoy's default when retry-on is given without a count is one retry.
        p.max_retries = header_u64(headers, &MAX_RETRIES).map_or(1, |n| n.min(u32::MAX as u64) as u32);
        p.per_try_timeout = header_u64(headers, &PER_TRY_TIMEOUT).filter(|ms| *ms > 0).map(Duration::from_millis);
        Some(p)
    }

    fn retries_status(&self, status: u16) -> bool {
        (self.on_5xx && (500..600).contains(&status))
            || (self.on_gateway_error && matches!(status, 502..=504))
            || (self.on_retriable_4xx && status == 409)
            || self.status_codes.contains(&status)
    }

    fn retries_failure(&self, failure: &Failure) -> bool {
        match failure {
            Failure::Connect => self.on_connect_failure || self.on_5xx || self.on_gateway_error,
            Failure::Reset => self.on_reset || self.on_5xx || self.on_gateway_error,
            Failure::PerTryTimeout => self.on_5xx || self.on_gateway_error || self.on_reset,
        }
    }
}

/// The route timeout for this request: `x-envoy-upstream-rq-timeout-ms` when given (0 turns
/// the route timeout off; the stream idle timeout still applies), else the route's.
pub fn request_timeout(headers: &HeaderMap, route_timeout: Option<Duration>) -> Option<Duration> {
    match header_u64(headers, &REQUEST_TIMEOUT) {
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
        None => route_timeout,
    }
}

/// Removes the router's control headers, which are for meshwork (or Envoy), not the upstream.
pub fn strip_control_headers(headers: &mut HeaderMap) {
    for name in [RETRY_ON, MAX_RETRIES, RETRIABLE_STATUS_CODES, PER_TRY_TIMEOUT, REQUEST_TIMEOUT] {
        headers.remove(name);
    }
}

enum Failure {
    Connect,
    Reset,
    PerTryTimeout,
}

/// How an exchange with retries ended.
pub struct Exchange {
    pub result: Result<(Response<PooledBody>, Rc<ConnInfo>), ExchangeError>,
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("per-try timeout")]
    PerTryTimeout,
}

impl ExchangeError {
    /// The local reply this outcome becomes.
    pub fn failure(&self) -> super::request::StreamFailure {
        match self {
            ExchangeError::Upstream(e) => super::request::StreamFailure::from_upstream(e),
            ExchangeError::PerTryTimeout => super::request::StreamFailure::PerTryTimeout,
        }
    }
}

/// A request whose body is fully known, so it can be sent more than once.
pub struct Replayable {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Replayable {
    fn build(&self, attempt: u32) -> Request<ProxyBody> {
        let mut request = Request::new(body::full(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request.headers_mut().insert(ATTEMPT_COUNT, HeaderValue::from(attempt));
        request
    }
}

/// Sends `request` to `cluster`, retrying as `policy` allows with Envoy's back-off, each retry
/// only once the cluster's circuit admits it. The last response (or failure) is the answer;
/// retried responses are discarded.
pub async fn exchange(
    cluster: Rc<Cluster>,
    request: Replayable,
    policy: RetryPolicy,
    jitter: impl Fn() -> f64,
) -> Exchange {
    let mut attempts = 0;
    // The permit of the retry in progress (none for the first attempt).
    let mut permit = None;
    loop {
        attempts += 1;
        let sent = cluster.send(request.build(attempts));
        let outcome = match policy.per_try_timeout {
            Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ()),
            None => Ok(sent.await),
        };
        drop(permit.take());
        let wants_retry = attempts <= policy.max_retries
            && match &outcome {
                Ok(Ok((response, _))) => policy.retries_status(response.status().as_u16()),
                Ok(Err(e)) => policy.retries_failure(&match e {
                    UpstreamError::Reset(..) => Failure::Reset,
                    _ => Failure::Connect,
                }),
                Err(()) => policy.retries_failure(&Failure::PerTryTimeout),
            };
        if wants_retry {
            match cluster.circuit.try_retry() {
                Some(p) => {
                    // The connection is not reused: a retried response's body was not read.
                    drop(outcome);
                    permit = Some(p);
                    backoff(attempts, &jitter).await;
                    continue;
                }
                None => {
                    cluster.metrics.retry_overflow.increment(1).ok();
                    tracing::debug!(cluster = %cluster.name, "retry not admitted: the cluster's retry limit is reached");
                }
            }
        }
        let result = match outcome {
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err(e)) => Err(e.into()),
            Err(()) => Err(ExchangeError::PerTryTimeout),
        };
        return Exchange { result, attempts };
    }
}

/// The cluster `route` sends this request to: the route's own, one of its weighted clusters
/// (`unit` is uniform in [0, 1)), or the one a header names (Envoy's `cluster_header`);
/// `None` when the header names no cluster.
pub fn cluster_for(route: &Route, headers: &HeaderMap, generation: &Generation, unit: f64) -> Option<Rc<Cluster>> {
    match &route.target {
        Target::Cluster(c) => Some(c.clone()),
        Target::Weighted(clusters) => {
            let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
            let mut point = (unit.clamp(0.0, 1.0) * total as f64) as u64;
            clusters
                .iter()
                .find(|(_, w)| {
                    let inside = point < u64::from(*w);
                    point = point.saturating_sub(u64::from(*w));
                    inside
                })
                .or_else(|| clusters.iter().rev().find(|(_, w)| *w > 0))
                .map(|(c, _)| c.clone())
        }
        Target::Header(name) => headers.get(name).and_then(|c| c.to_str().ok()).and_then(|c| generation.cluster(c)),
        Target::Direct { .. } | Target::Redirect(_) => None,
    }
}

/// What the route changes in a request on its way upstream: the path, then headers.
pub fn rewrite_request(route: &Route, uri: &mut Uri, headers: &mut HeaderMap) {
    if let Some(rewrite) = &route.rewrite
        && let Ok(new) = rewrite.apply(&route.matcher.path, uri).parse()
    {
        *uri = new;
    }
    route.request_headers.apply(headers);
}

/// The redirect a route answers with, built from the request's scheme, `Host` and target.
pub fn redirect_response(
    route: &Route,
    redirect: &Redirect,
    headers: &HeaderMap,
    uri: &Uri,
    listener_port: Option<u16>,
) -> Response<ProxyBody> {
    let scheme = headers.get(super::request::X_FORWARDED_PROTO).and_then(|v| v.to_str().ok()).unwrap_or("http");
    let host = headers.get(http::header::HOST).and_then(|v| v.to_str().ok());
    let location = redirect.location(&route.matcher.path, scheme, host, uri, listener_port);
    let mut response = Response::new(body::empty());
    *response.status_mut() = http::StatusCode::from_u16(redirect.status).unwrap_or(http::StatusCode::MOVED_PERMANENTLY);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(http::header::LOCATION, location);
    }
    response.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(0));
    route.response_headers.apply(response.headers_mut());
    response
}

/// Fully jittered exponential back-off before retry `n` (1-based): uniform in
/// [0, min(base * (2^n - 1), max)].
async fn backoff(n: u32, jitter: &impl Fn() -> f64) {
    let ceiling = BACKOFF_BASE.saturating_mul((1u32 << n.min(16)) - 1).min(BACKOFF_MAX);
    tokio::time::sleep(ceiling.mul_f64(jitter().clamp(0.0, 1.0))).await;
}

/// Where a route sends requests.
#[derive(Clone)]
pub enum Target {
    Cluster(Rc<Cluster>),
    /// The cluster named by this request header (Envoy's `cluster_header`).
    Header(HeaderName),
    /// Clusters by weight (Envoy's `weighted_clusters`).
    Weighted(Vec<(Rc<Cluster>, u32)>),
    /// The proxy answers itself (Envoy's `direct_response`).
    Direct {
        status: u16,
        body: Bytes,
    },
    /// The proxy answers with a redirect.
    Redirect(Redirect),
}

/// A direct response as Envoy sends it: a `text/plain` body with its length.
pub fn direct_response(status: u16, body: &Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(if body.is_empty() { body::empty() } else { body::full(body.clone()) });
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    if !body.is_empty() {
        response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn parses_envoys_retry_headers() {
        assert_eq!(RetryPolicy::from_headers(&headers(&[])), None);
        let p = RetryPolicy::from_headers(&headers(&[
            ("x-envoy-retry-on", "5xx, retriable-status-codes"),
            ("x-envoy-retriable-status-codes", "418,429"),
            ("x-envoy-max-retries", "3"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "250"),
        ]))
        .unwrap();
        assert!(p.on_5xx && !p.on_gateway_error);
        assert_eq!(p.status_codes, vec![418, 429]);
        assert_eq!(p.max_retries, 3);
        assert_eq!(p.per_try_timeout, Some(Duration::from_millis(250)));
        assert!(p.retries_status(503) && p.retries_status(429) && !p.retries_status(404));
        let g = RetryPolicy::from_headers(&headers(&[("x-envoy-retry-on", "gateway-error")])).unwrap();
        assert_eq!(g.max_retries, 1, "Envoy's default");
        assert!(g.retries_status(502) && !g.retries_status(500));
        assert!(g.retries_failure(&Failure::Connect) && g.retries_failure(&Failure::PerTryTimeout));
        let c = RetryPolicy::from_headers(&headers(&[("x-envoy-retry-on", "connect-failure")])).unwrap();
        assert!(c.retries_failure(&Failure::Connect) && !c.retries_failure(&Failure::Reset) && !c.retries_status(503));
    }

    #[test]
    fn request_timeout_header_overrides_the_route() {
        let route = Some(Duration::from_secs(15));
        assert_eq!(request_timeout(&headers(&[]), route), route);
        assert_eq!(
            request_timeout(&headers(&[("x-envoy-upstream-rq-timeout-ms", "40")]), route),
            Some(Duration::from_millis(40))
        );
        assert_eq!(request_timeout(&headers(&[("x-envoy-upstream-rq-timeout-ms", "0")]), route), None);
    }
}
