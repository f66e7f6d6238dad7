//! Sending the request a filter holds as an HTTP callout (`proxy_http_call`) and answering the
//! client with the callout's response: how the retry and timeout filters take over the upstream
//! exchange in any proxy-wasm host, without relying on the host's router.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Bytes, MapType, Status};
use serde::Deserialize;

/// How a filter that can take over the upstream exchange works.
#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The filter holds the request and sends it itself with `proxy_http_call`: any host.
    #[default]
    Callout,
    /// The filter sets Envoy's router headers and the router does the work.
    Envoy,
}

/// Callout mode: what happens to requests with a body.
#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Bodies {
    /// Sent on as they stream, in envoy mode.
    #[default]
    Pass,
    /// Held until complete, then sent as callouts (the host must allow StopIteration on headers).
    Hold,
}

/// A request captured from the stream, to be sent (perhaps several times) as a callout.
#[derive(Clone, Debug, Default)]
pub struct HeldRequest {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// How much body the host has buffered so far (read once the request is complete).
    buffered: usize,
}

/// Headers that describe one hop or one encoding of the body; the callout client sets its own.
fn per_hop(name: &str) -> bool {
    matches!(
        name,
        "content-length" | "transfer-encoding" | "connection" | "keep-alive" | "upgrade" | "te" | "proxy-connection"
    )
}

fn lossy(map: Vec<(String, Bytes)>) -> Vec<(String, String)> {
    map.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect()
}

impl HeldRequest {
    /// The current stream's request headers (pseudo-headers included; per-hop ones dropped).
    pub fn capture_headers() -> HeldRequest {
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        HeldRequest {
            headers: lossy(headers).into_iter().filter(|(k, _)| !per_hop(k)).collect(),
            ..HeldRequest::default()
        }
    }

    /// In `on_http_request_body`: true once the request is complete and its body captured;
    /// until then the filter returns Pause, so the host keeps buffering.
    pub fn body_arrived(&mut self, body_size: usize, end_of_stream: bool) -> bool {
        self.buffered = body_size;
        if end_of_stream {
            self.capture_body();
        }
        end_of_stream
    }

    /// In `on_http_request_trailers`: the request is complete; captures its body and trailers.
    pub fn trailers_arrived(&mut self) {
        self.capture_body();
        self.trailers = lossy(hostcalls::get_map_bytes(MapType::HttpRequestTrailers).unwrap_or_default());
    }

    fn capture_body(&mut self) {
        if let Ok(Some(bytes)) = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, self.buffered) {
            self.body = bytes;
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Replaces or adds a header.
    pub fn set_header(&mut self, name: &str, value: String) {
        match self.headers.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => self.headers.push((name.to_owned(), value)),
        }
    }

    /// Sends it to `cluster`; the response arrives at the calling context's (the active one's)
    /// `on_http_call_response` with the returned token.
    pub fn dispatch(&self, cluster: &str, timeout: Duration) -> Result<u32, Status> {
        let headers = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let trailers = self.trailers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = (!self.body.is_empty()).then_some(self.body.as_slice());
        // A zero timeout means "none" to hosts; never ask for that by rounding down.
        hostcalls::dispatch_http_call(cluster, headers, body, trailers, timeout.max(Duration::from_millis(1)))
    }
}

/// A callout's response, read in `on_http_call_response`.
#[derive(Clone, Debug, Default)]
pub struct CalloutResponse {
    /// 0 when the callout failed without a response (Envoy reports resets and timeouts so).
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CalloutResponse {
    pub fn read(num_headers: usize, body_size: usize) -> CalloutResponse {
        if num_headers == 0 {
            return CalloutResponse::default();
        }
        let headers = lossy(hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default());
        let status = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let body = match body_size {
            0 => Vec::new(),
            n => hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, n).ok().flatten().unwrap_or_default(),
        };
        CalloutResponse { status, headers, body }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Answers the effective stream with this response plus `extra` headers.
    pub fn relay(&self, extra: &[(&str, &str)]) {
        let mut headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(':') && !per_hop(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.extend_from_slice(extra);
        let _ = hostcalls::send_http_response(self.status as u32, headers, Some(&self.body));
    }
}
