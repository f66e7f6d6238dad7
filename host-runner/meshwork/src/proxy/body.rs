//! Body types the proxy moves between client and upstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any body, boxed. Not `Send`: a worker's streams never leave its thread, and their bodies
/// hold the worker's `Rc`s.
pub struct ProxyBody(Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>);

impl ProxyBody {
    pub fn new(body: impl Body<Data = Bytes, Error = BoxError> + 'static) -> ProxyBody {
        ProxyBody(Box::pin(body))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

pub fn empty() -> ProxyBody {
    ProxyBody::new(Empty::new().map_err(|never| match never {}))
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    ProxyBody::new(Full::new(bytes.into()).map_err(|never| match never {}))
}

pub type FrameSender = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

/// A body fed frame by frame from elsewhere (the filter chain's request output).
pub struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>,
}

pub fn channel() -> (FrameSender, ChannelBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ChannelBody { rx })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }
}
