//! Body types the proxy moves between client and upstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any body. Not `Send`: a worker's streams never leave its thread, and their bodies hold the
/// worker's `Rc`s. Empty and fixed bodies are not boxed (they are the common case).
pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    Boxed(Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>),
}

impl ProxyBody {
    pub fn new(body: impl Body<Data = Bytes, Error = BoxError> + 'static) -> ProxyBody {
        ProxyBody::Boxed(Box::pin(body))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Boxed(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ProxyBody::Empty => http_body::SizeHint::with_exact(0),
            ProxyBody::Full(data) => http_body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ProxyBody::Boxed(body) => body.size_hint(),
        }
    }
}

pub fn empty() -> ProxyBody {
    ProxyBody::Empty
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    let bytes = bytes.into();
    if bytes.is_empty() { ProxyBody::Empty } else { ProxyBody::Full(Some(bytes)) }
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
