//! Bodies in both directions, streamed frame by frame so memory stays bounded
//! whatever the body's size.
//!
//! `UpstreamBody` carries the client's request body to the backend, counting
//! bytes and enforcing the listener's size limit.
//!
//! Trailers pass in both directions as trailers frames, without the fields
//! that must never be read from a trailer section (`headers::strip_trailers`). `ResponseBody` carries the
//! answer to the client; when it is dropped (fully sent, or the client went
//! away) it completes the request: metrics, access log, in-flight count; the
//! upstream body it wraps puts its connection back in the pool if its
//! response was read to the end.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use crate::upstream::BoxError;

use super::headers;
use super::record::Completion;

/// The request body refused because it is larger than allowed.
#[derive(Debug)]
pub struct TooLarge;

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body larger than max_body_bytes")
    }
}

impl StdError for TooLarge {}

/// A request body read whole so it can be sent again: its data and its
/// trailers.
#[derive(Clone)]
pub struct Kept {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

/// A trailers frame without the fields no trailer section may carry.
fn forwardable(frame: Frame<Bytes>) -> Frame<Bytes> {
    if !frame.is_trailers() {
        return frame;
    }
    match frame.into_trailers() {
        Ok(mut trailers) => {
            headers::strip_trailers(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

/// The client's request body on its way upstream. Generic over what the
/// client connection hands over (Levee's or hyper's server body).
pub struct UpstreamBody<B> {
    /// Read before `inner`: a body kept for retries, or the part of one read
    /// before it turned out too large to keep.
    kept: Option<Bytes>,
    inner: Option<B>,
    /// Sent after `inner`: the trailers of a body kept for retries.
    trailers: Option<HeaderMap>,
    limit: u64,
    seen: u64,
    counter: Arc<AtomicU64>,
}

impl<B> UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub fn new(inner: B, limit: Option<u64>, counter: Arc<AtomicU64>) -> Self {
        UpstreamBody {
            kept: None,
            inner: Some(inner),
            trailers: None,
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
            counter,
        }
    }

    /// A kept body, sent again for a retry.
    pub fn kept(kept: Kept) -> Self {
        UpstreamBody {
            kept: (!kept.data.is_empty()).then_some(kept.data),
            inner: None,
            trailers: kept.trailers,
            limit: u64::MAX,
            seen: 0,
            counter: Arc::default(),
        }
    }

    /// Reads the body whole if it is at most `max` bytes: then it can be
    /// sent again, and is returned. A larger one stays streamable (what was
    /// read goes first) but is not returned.
    pub async fn keep(&mut self, max: u64) -> Result<Option<Kept>, BoxError> {
        use http_body_util::BodyExt;
        let mut buf = bytes::BytesMut::new();
        // Trailers come last: held here until the end, then sent after the
        // kept data (not in `self.trailers` meanwhile: this loop would read
        // them back).
        let mut trailers = None;
        while let Some(frame) = self.frame().await {
            match frame?.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
            if buf.len() as u64 > max {
                self.kept = Some(buf.freeze());
                return Ok(None);
            }
        }
        let data = buf.freeze();
        self.kept = (!data.is_empty()).then(|| data.clone());
        self.trailers = trailers.clone();
        Ok(Some(Kept { data, trailers }))
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(kept) = this.kept.take() {
            return Poll::Ready(Some(Ok(Frame::data(kept))));
        }
        if let Some(inner) = this.inner.as_mut() {
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
                    return Poll::Ready(Some(Ok(forwardable(frame))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => this.inner = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(
            this.trailers
                .take()
                .map(|t| Ok(forwardable(Frame::trailers(t)))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.kept.is_none()
            && self.trailers.is_none()
            && self.inner.as_ref().is_none_or(Body::is_end_stream)
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
    finish: Option<Box<Completion>>,
    /// An injected fault cutting or pacing an endpoint's body (chaos).
    shaper: Option<Box<crate::chaos::shape::Shaper>>,
}

impl ResponseBody {
    pub fn full(bytes: Bytes, finish: Option<Box<Completion>>) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes)),
            sent: 0,
            finish,
            shaper: None,
        }
    }

    pub fn upstream(body: crate::upstream::Body, finish: Box<Completion>) -> Self {
        ResponseBody {
            kind: Kind::Upstream(Some(body)),
            sent: 0,
            finish: Some(finish),
            shaper: None,
        }
    }

    /// The body cut or paced as an injected fault says.
    pub fn shaped(mut self, shape: Option<crate::chaos::shape::Shape>) -> Self {
        self.shaper = shape.map(|s| Box::new(crate::chaos::shape::Shaper::new(s)));
        self
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
            Kind::Upstream(Some(body)) => match this.shaper.as_mut() {
                Some(shaper) => shaper.poll_frame(cx, |cx| body.poll_frame(cx)),
                None => body.poll_frame(cx),
            },
            Kind::Upstream(None) => Poll::Ready(None),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
                Poll::Ready(Some(Ok(forwardable(frame))))
            }
            // The endpoint broke off mid-body: the client sees a truncated
            // response, the access log says why.
            Poll::Ready(Some(Err(e))) => {
                if let Some(finish) = this.finish.as_mut() {
                    finish.body_failed(&e);
                }
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(b) => {
                b.as_ref().is_none_or(|b| b.is_end_stream())
                    && !self.shaper.as_ref().is_some_and(|s| s.holds())
            }
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
        // The upstream body first: it puts its connection back in the pool
        // (if its response was read whole) before the request is logged.
        if let Kind::Upstream(body) = &mut self.kind {
            drop(body.take());
        }
        if let Some(finish) = self.finish.take() {
            finish.finish(self.sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// A body that yields the frames it was given.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn chunked_with_trailers() -> Frames {
        let mut t = HeaderMap::new();
        t.insert("x-sum", http::HeaderValue::from_static("1"));
        t.insert("content-length", http::HeaderValue::from_static("9"));
        Frames(VecDeque::from([
            Frame::data(Bytes::from_static(b"ab")),
            Frame::data(Bytes::from_static(b"c")),
            Frame::trailers(t),
        ]))
    }

    /// Data and trailers, as collected from `body`.
    async fn collect<B: Body<Data = Bytes> + Unpin>(body: &mut B) -> (Vec<u8>, Option<HeaderMap>)
    where
        B::Error: std::fmt::Debug,
    {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            match frame.expect("a frame").into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers)
    }

    #[tokio::test]
    async fn trailers_pass_streamed_and_kept() {
        let mut streamed = UpstreamBody::new(chunked_with_trailers(), None, Arc::default());
        let (data, trailers) = collect(&mut streamed).await;
        let trailers = trailers.expect("trailers");
        assert_eq!((data.as_slice(), trailers.len()), (&b"abc"[..], 1));
        assert_eq!(trailers["x-sum"], "1");

        // Kept for retries: every replay carries the trailers again.
        let mut first = UpstreamBody::new(chunked_with_trailers(), None, Arc::default());
        let kept = first.keep(1024).await.expect("read").expect("small enough");
        for mut body in [
            first,
            UpstreamBody::kept(kept.clone()),
            UpstreamBody::kept(kept),
        ] {
            assert!(!body.is_end_stream());
            let (data, trailers) = collect(&mut body).await;
            assert_eq!(data, b"abc");
            assert_eq!(trailers.expect("trailers")["x-sum"], "1");
            assert!(body.is_end_stream());
        }
    }
}
