//! Bodies in both directions, streamed frame by frame so memory stays bounded
//! whatever the body's size.
//!
//! `UpstreamBody` carries the client's request body to the backend, counting
//! bytes and enforcing the listener's size limit. `ResponseBody` carries the
//! answer to the client; when it is dropped (fully sent, or the client went
//! away) it completes the request: metrics, access log, in-flight count, and
//! the upstream connection goes back to the pool if its response was read to
//! the end.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::server::client_body::ClientBody;

use super::Finish;

/// The request body refused because it is larger than allowed.
#[derive(Debug)]
pub struct TooLarge;

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body larger than max_body_bytes")
    }
}

impl StdError for TooLarge {}

pub struct UpstreamBody {
    /// Read before `inner`: a body kept for retries, or the part of one read
    /// before it turned out too large to keep.
    kept: Option<Bytes>,
    inner: Option<ClientBody>,
    limit: u64,
    seen: u64,
    counter: Arc<AtomicU64>,
}

impl UpstreamBody {
    pub fn new(inner: ClientBody, limit: Option<u64>, counter: Arc<AtomicU64>) -> Self {
        UpstreamBody {
            kept: None,
            inner: Some(inner),
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
            counter,
        }
    }

    /// A kept body, sent again for a retry.
    pub fn kept(bytes: Bytes) -> Self {
        UpstreamBody {
            kept: (!bytes.is_empty()).then_some(bytes),
            inner: None,
            limit: u64::MAX,
            seen: 0,
            counter: Arc::default(),
        }
    }

    /// Reads the body whole if it is at most `max` bytes: then it can be
    /// sent again, and is returned. A larger one stays streamable (what was
    /// read goes first) but is not returned.
    pub async fn keep(
        &mut self,
        max: u64,
    ) -> Result<Option<Bytes>, Box<dyn StdError + Send + Sync>> {
        use http_body_util::BodyExt;
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = self.frame().await {
            if let Ok(data) = frame?.into_data() {
                buf.extend_from_slice(&data);
            }
            if buf.len() as u64 > max {
                self.kept = Some(buf.freeze());
                return Ok(None);
            }
        }
        let bytes = buf.freeze();
        self.kept = (!bytes.is_empty()).then(|| bytes.clone());
        Ok(Some(bytes))
    }

    pub fn empty() -> Self {
        UpstreamBody {
            kept: None,
            inner: None,
            limit: u64::MAX,
            seen: 0,
            counter: Arc::default(),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(kept) = this.kept.take() {
            return Poll::Ready(Some(Ok(Frame::data(kept))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    this.counter.store(this.seen, Ordering::Relaxed);
                    if this.seen > this.limit {
                        this.inner = None;
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.kept.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let kept = self.kept.as_ref().map_or(0, |k| k.len() as u64);
        match &self.inner {
            None => SizeHint::with_exact(kept),
            Some(inner) => {
                let h = inner.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(h.lower() + kept);
                if let Some(upper) = h.upper() {
                    sum.set_upper(upper + kept);
                }
                sum
            }
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(Option<crate::upstream::Body>),
}

pub struct ResponseBody {
    kind: Kind,
    sent: u64,
    ended: bool,
    finish: Option<Box<Finish>>,
}

impl ResponseBody {
    pub fn full(bytes: Bytes, finish: Option<Box<Finish>>) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes)),
            sent: 0,
            ended: false,
            finish,
        }
    }

    pub fn upstream(body: crate::upstream::Body, finish: Box<Finish>) -> Self {
        ResponseBody {
            kind: Kind::Upstream(Some(body)),
            sent: 0,
            ended: false,
            finish: Some(finish),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = crate::upstream::body::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(Some(body)) => body.poll_frame(cx),
            Kind::Upstream(None) => Poll::Ready(None),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(b) => b.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(b) => b
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint()),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let complete = self.ended || self.is_end_stream();
        let conn = match &mut self.kind {
            Kind::Upstream(body) => body.take().and_then(crate::upstream::Body::into_reusable),
            Kind::Full(_) => None,
        };
        if let Some(finish) = self.finish.take() {
            finish.finish(self.sent, complete, conn);
        }
    }
}
