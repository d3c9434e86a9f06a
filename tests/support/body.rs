//! The backend's response body: either a whole buffer or a stream fed by a
//! producer task through a small channel (so large downloads are generated on
//! the fly, never held in memory, and a client that stops reading applies
//! back-pressure). An `Err` sent on the channel aborts the response mid-body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::backend::GaugeGuard;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sending half of a streamed body.
pub(super) type BodySender = mpsc::Sender<Result<Bytes, BoxError>>;

enum Kind {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Result<Bytes, BoxError>>),
}

pub(super) struct RespBody {
    kind: Kind,
    /// Keeps the request counted as in flight until hyper drops the body,
    /// i.e. until the response was sent or abandoned.
    in_flight: Option<GaugeGuard>,
}

impl RespBody {
    /// A complete body; hyper sends it with `content-length`.
    pub fn full(data: impl Into<Bytes>) -> RespBody {
        let data: Bytes = data.into();
        RespBody {
            kind: Kind::Full((!data.is_empty()).then_some(data)),
            in_flight: None,
        }
    }

    /// A streamed body. Without a `content-length` header hyper sends it
    /// chunked on HTTP/1.1. The producer stops when `send` fails (the client
    /// went away).
    pub fn channel() -> (BodySender, RespBody) {
        let (tx, rx) = mpsc::channel(1);
        let body = RespBody {
            kind: Kind::Stream(rx),
            in_flight: None,
        };
        (tx, body)
    }

    pub fn hold(&mut self, guard: GaugeGuard) {
        self.in_flight = Some(guard);
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Stream(rx) => rx
                .poll_recv(cx)
                .map(|item| item.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}
