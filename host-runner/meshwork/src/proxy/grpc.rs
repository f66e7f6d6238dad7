//! gRPC calls and streams filters start (`proxy_grpc_call`, `proxy_grpc_stream`), sent with
//! tonic's client over an HTTP/2 connection to one of the cluster's endpoints (h2c, or h2 over
//! TLS when the cluster has TLS). Outcomes reach the VM as Envoy reports them:
//!
//! - a unary call ends with exactly one of `on_grpc_receive` (an OK answer) or
//!   `on_grpc_close(status)`; an OK status without a message is 13 (INTERNAL); a timeout, a
//!   connect failure or no endpoint is 14 (UNAVAILABLE), as Envoy's async client reports
//!   them;
//! - a stream gets its initial metadata, each message, its trailers, then `on_grpc_close`;
//!   `proxy_grpc_close` half-closes it (answers keep coming), `proxy_grpc_cancel` resets it
//!   and nothing follows.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes};
use hyper::client::conn::http2;
use meshwork_wasm_host::{GrpcCallRequest, GrpcEffect, HeaderMap, PluginVm};
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::upstream::Upstreams;

/// Most bytes of one message a callout accepts (Envoy has no limit by default; the host
/// buffers the message for the filter).
const MAX_MESSAGE: usize = 16 << 20;
const UPSTREAM_TIMEOUT: &str = "upstream request timeout";
const UNAVAILABLE: u32 = 14;

/// Messages pass as the bytes the filter gave and gets: the filter does its own protobuf.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// tonic's client over one hyper HTTP/2 connection.
#[derive(Clone)]
struct H2(http2::SendRequest<tonic::body::Body>);

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// The messages a stream's filter sends, as the stream tonic encodes.
struct Outgoing(mpsc::UnboundedReceiver<Bytes>);

impl tokio_stream::Stream for Outgoing {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.0.poll_recv(cx)
    }
}

/// A call or stream in flight: how to reset it, and (streams) how to feed it.
struct InFlight {
    abort: tokio::task::AbortHandle,
    send: Option<mpsc::UnboundedSender<Bytes>>,
}

/// The gRPC calls of one worker's VMs, by (VM, token).
#[derive(Default)]
pub struct GrpcCalls {
    calls: Rc<RefCell<HashMap<(usize, u32), InFlight>>>,
}

fn vm_key(vm: &Rc<PluginVm>) -> usize {
    Rc::as_ptr(vm) as usize
}

impl GrpcCalls {
    pub fn handle(&self, upstreams: &Rc<Upstreams>, vm: &Rc<PluginVm>, effect: GrpcEffect) {
        let vm_id = vm_key(vm);
        match effect {
            GrpcEffect::Start(call) => {
                let key = (vm_id, call.token);
                let (send, outgoing) = if call.message.is_none() {
                    let (tx, rx) = mpsc::unbounded_channel();
                    (Some(tx), Some(Outgoing(rx)))
                } else {
                    (None, None)
                };
                let calls = Rc::downgrade(&self.calls);
                let task =
                    tokio::task::spawn_local(run(upstreams.clone(), Rc::downgrade(vm), call, outgoing, calls, key));
                self.calls.borrow_mut().insert(key, InFlight { abort: task.abort_handle(), send });
            }
            GrpcEffect::Send { token, message, end_stream } => {
                let mut calls = self.calls.borrow_mut();
                if let Some(call) = calls.get_mut(&(vm_id, token)) {
                    if let Some(tx) = &call.send {
                        let _ = tx.send(message);
                    }
                    if end_stream {
                        call.send = None;
                    }
                }
            }
            GrpcEffect::Close { token } => {
                // Dropping the sender ends the request stream: a half-close.
                if let Some(call) = self.calls.borrow_mut().get_mut(&(vm_id, token)) {
                    call.send = None;
                }
            }
            GrpcEffect::Cancel { token } => {
                if let Some(call) = self.calls.borrow_mut().remove(&(vm_id, token)) {
                    call.abort.abort();
                }
            }
        }
    }
}

impl Drop for GrpcCalls {
    fn drop(&mut self) {
        for (_, call) in self.calls.borrow_mut().drain() {
            call.abort.abort();
        }
    }
}

/// Request metadata: the GrpcService's, then the filter's; `-bin` values base64-encoded as
/// gRPC carries them.
fn metadata(call: &GrpcCallRequest) -> tonic::metadata::MetadataMap {
    let mut headers = http::HeaderMap::new();
    for (k, v) in call.target.metadata.iter().chain(&call.metadata) {
        let Ok(name) = http::HeaderName::from_bytes(k.as_bytes()) else { continue };
        let value = if name.as_str().ends_with("-bin") {
            http::HeaderValue::from_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(v))
        } else {
            http::HeaderValue::from_bytes(v)
        };
        if let Ok(value) = value {
            headers.append(name, value);
        }
    }
    tonic::metadata::MetadataMap::from_headers(headers)
}

fn header_map(metadata: &tonic::metadata::MetadataMap) -> HeaderMap {
    HeaderMap::from_parts(Vec::new(), metadata.clone().into_headers())
}

/// What a call's outcome does to the VM (looked up again each time: it may have failed).
struct Reply {
    vm: Weak<PluginVm>,
    token: u32,
}

impl Reply {
    fn initial(&self, metadata: HeaderMap) {
        if let Some(vm) = self.vm.upgrade() {
            let _ = vm.on_grpc_initial_metadata(self.token, metadata);
        }
    }

    fn message(&self, message: Bytes) {
        if let Some(vm) = self.vm.upgrade() {
            let _ = vm.on_grpc_message(self.token, message);
        }
    }

    fn trailers(&self, metadata: HeaderMap) {
        if let Some(vm) = self.vm.upgrade() {
            let _ = vm.on_grpc_trailing_metadata(self.token, metadata);
        }
    }

    fn close(&self, code: u32, message: &str) {
        if let Some(vm) = self.vm.upgrade() {
            let _ = vm.on_grpc_close(self.token, code, Bytes::copy_from_slice(message.as_bytes()));
        }
    }
}

async fn run(
    upstreams: Rc<Upstreams>,
    vm: Weak<PluginVm>,
    call: GrpcCallRequest,
    outgoing: Option<Outgoing>,
    calls: Weak<RefCell<HashMap<(usize, u32), InFlight>>>,
    key: (usize, u32),
) {
    let reply = Reply { vm, token: call.token };
    let deadline = call.timeout;
    let work = exchange(&upstreams, &reply, call, outgoing);
    match deadline {
        Some(d) => {
            if tokio::time::timeout(d, work).await.is_err() {
                reply.close(UNAVAILABLE, UPSTREAM_TIMEOUT);
            }
        }
        None => work.await,
    }
    if let Some(calls) = calls.upgrade() {
        calls.borrow_mut().remove(&key);
    }
}

async fn exchange(upstreams: &Upstreams, reply: &Reply, call: GrpcCallRequest, outgoing: Option<Outgoing>) {
    let unary = call.message.is_some();
    let fail = |code: u32, message: &str| {
        if !unary {
            reply.initial(HeaderMap::new());
            reply.trailers(HeaderMap::new());
        }
        reply.close(code, message);
    };
    let Some(cluster) = upstreams.get(&call.target.cluster) else {
        return fail(UNAVAILABLE, "Cluster not available");
    };
    let (sender, _) = match cluster.grpc_sender().await {
        Ok(s) => s,
        Err(e) => {
            let why = super::request::StreamFailure::from_upstream(&e).answer().2;
            return fail(UNAVAILABLE, &why);
        }
    };
    let authority = if call.target.authority.is_empty() { &call.target.cluster } else { &call.target.authority };
    let Ok(origin) = http::Uri::try_from(format!("http://{authority}")) else {
        return fail(13, "invalid authority");
    };
    let Ok(path) = http::uri::PathAndQuery::try_from(format!("/{}/{}", call.service, call.method)) else {
        return fail(13, "invalid service or method name");
    };
    let mut grpc = tonic::client::Grpc::with_origin(H2(sender), origin).max_decoding_message_size(MAX_MESSAGE);
    if grpc.ready().await.is_err() {
        return fail(
            UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
        );
    }
    let metadata = metadata(&call);
    match (call.message, outgoing) {
        (Some(message), _) => {
            let mut request = tonic::Request::new(message);
            *request.metadata_mut() = metadata;
            if let Some(t) = call.timeout {
                request.set_timeout(t);
            }
            match grpc.unary(request, path, RawCodec).await {
                Ok(response) => reply.message(response.into_inner()),
                Err(status) => reply.close(status.code() as u32, status.message()),
            }
        }
        (None, Some(outgoing)) => {
            let mut request = tonic::Request::new(outgoing);
            *request.metadata_mut() = metadata;
            let response = match grpc.streaming(request, path, RawCodec).await {
                Ok(r) => r,
                Err(status) => {
                    // A trailers-only answer (or an HTTP error): no headers, then the trailers.
                    reply.initial(HeaderMap::new());
                    reply.trailers(header_map(status.metadata()));
                    return reply.close(status.code() as u32, status.message());
                }
            };
            reply.initial(header_map(response.metadata()));
            let mut messages = response.into_inner();
            loop {
                match messages.message().await {
                    Ok(Some(message)) => reply.message(message),
                    Ok(None) => break,
                    Err(status) => {
                        reply.trailers(header_map(status.metadata()));
                        return reply.close(status.code() as u32, status.message());
                    }
                }
            }
            let trailers = messages.trailers().await.ok().flatten().unwrap_or_default();
            reply.trailers(header_map(&trailers));
            reply.close(0, "");
        }
        (None, None) => fail(13, "a stream without its sender"),
    }
}
