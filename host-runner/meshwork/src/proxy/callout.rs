//! HTTP callouts a filter makes with `proxy_http_call`, sent to one of the worker's clusters.

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use meshwork_wasm_host::{HeaderMap, HttpCallRequest, HttpCallResponse};

use super::body::{self, ProxyBody};
use super::request::StreamFailure;
use super::upstream::Cluster;

/// Most bytes of a callout response the host buffers (Envoy's async client buffers too).
const CALLOUT_MAX_BYTES: usize = 16 << 20;

/// Sends a callout. As in Envoy, a timeout or a connect failure arrives as a successful local
/// response (504 / 503); only a reset mid-response is a failure (`None`).
pub async fn callout(cluster: &Cluster, call: HttpCallRequest) -> Option<HttpCallResponse> {
    let HttpCallRequest { headers, body, trailers, timeout, .. } = call;
    let mut builder =
        Request::builder().method(headers.get(b":method").unwrap_or(b"GET")).uri(headers.get(b":path").unwrap_or(b"/"));
    if let Some(h) = builder.headers_mut() {
        *h = headers.regular().clone();
        if let Some(a) = headers.get(b":authority").and_then(|a| http::HeaderValue::from_bytes(a).ok()) {
            h.insert(http::header::HOST, a);
        }
        if !body.is_empty() {
            h.insert(http::header::CONTENT_LENGTH, body.len().into());
        }
    }
    let request_body: ProxyBody = if trailers.is_empty() {
        body::full(body)
    } else {
        ProxyBody::new(WithTrailers { data: Some(body), trailers: Some(trailers.into_regular()) })
    };
    let request = match builder.body(request_body) {
        Ok(r) => r,
        Err(e) => {
            return Some(local_response(400, &format!("invalid callout request: {e}")));
        }
    };
    let exchange = async {
        let (response, _) = match cluster.send(request).await {
            Ok(r) => r,
            Err(e) => return Some(local_response(503, &StreamFailure::from_upstream(&e).answer().2)),
        };
        let (parts, body) = response.into_parts();
        let collected = http_body_util::Limited::new(body, CALLOUT_MAX_BYTES).collect().await.ok()?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let mut headers = HeaderMap::from_parts(
            vec![(Bytes::from_static(b":status"), Bytes::copy_from_slice(parts.status.as_str().as_bytes()))],
            parts.headers,
        );
        headers.regular_mut().remove(http::header::TRANSFER_ENCODING);
        Some(HttpCallResponse {
            headers,
            body: collected.to_bytes(),
            trailers: HeaderMap::from_parts(Vec::new(), trailers),
        })
    };
    // The host always gives a timeout (a filter's 0 is its VM's longest).
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Some(local_response(504, "upstream request timeout")))
}

fn local_response(status: u16, body: &str) -> HttpCallResponse {
    let mut headers = HeaderMap::new();
    let _ = headers.add(b":status", status.to_string().as_bytes());
    let _ = headers.add(b"content-length", body.len().to_string().as_bytes());
    let _ = headers.add(b"content-type", b"text/plain");
    HttpCallResponse { headers, body: Bytes::copy_from_slice(body.as_bytes()), trailers: HeaderMap::new() }
}

/// A callout body with trailers: its data, then its trailers.
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, body::BoxError>>> {
        let frame = match self.data.take() {
            Some(data) => Some(http_body::Frame::data(data)),
            None => self.trailers.take().map(http_body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}
