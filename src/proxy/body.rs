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

/// What of a streamed request body went upstream, kept up to a bound so
/// the request can be sent again after the endpoint provably did not
/// process it (HTTP/2 `REFUSED_STREAM`, `GOAWAY`) or asked for a retry with
/// a gRPC status; and whether the body failed on the client's side. Shared
/// with the body, which HTTP/2 hands over to its connection.
#[derive(Default)]
pub struct Tape {
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    size: u64,
    max: u64,
    /// Bigger than `max`: nothing is kept.
    overflow: bool,
    ended: bool,
    /// The client's side failed: too large (`true`) or broken.
    failed: Option<bool>,
}

impl Tape {
    fn data(&mut self, data: &Bytes) {
        if self.overflow {
            return;
        }
        self.size += data.len() as u64;
        if self.size > self.max {
            self.overflow = true;
            self.chunks = Vec::new();
        } else {
            self.chunks.push(data.clone());
        }
    }

    /// The whole body, when it ended and was kept whole.
    pub fn kept(&self) -> Option<Kept> {
        if !self.ended || self.overflow {
            return None;
        }
        let data = match self.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        };
        Some(Kept {
            data,
            trailers: self.trailers.clone(),
        })
    }

    /// The client's body failed while it was being sent: the error to
    /// answer with (413 or 400).
    pub fn failure(&self) -> Option<BoxError> {
        self.failed.map(|too_large| -> BoxError {
            if too_large {
                Box::new(TooLarge)
            } else {
                Box::new(std::io::Error::other("the client's body failed"))
            }
        })
    }
}

/// A `Tape` as the body and the pipeline share it.
pub type SharedTape = Arc<std::sync::Mutex<Tape>>;

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
    /// What went upstream, when it is recorded (`record`).
    tape: Option<SharedTape>,
}

/// An empty body: what is left of one that HTTP/2 took over.
impl<B> Default for UpstreamBody<B> {
    fn default() -> Self {
        UpstreamBody {
            kept: None,
            inner: None,
            trailers: None,
            limit: u64::MAX,
            seen: 0,
            counter: Arc::default(),
            tape: None,
        }
    }
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
            tape: None,
        }
    }

    /// From now on, what is read of the body is recorded (up to `max`
    /// bytes) on the tape returned.
    pub fn record(&mut self, max: u64) -> SharedTape {
        let tape = Arc::new(std::sync::Mutex::new(Tape {
            max,
            // Part of it was read already, more than a kept body may hold.
            overflow: self.kept.is_some(),
            ..Tape::default()
        }));
        self.tape = Some(tape.clone());
        tape
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
            tape: None,
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
            let tape = this
                .tape
                .as_ref()
                .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()));
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.seen += data.len() as u64;
                        this.counter.store(this.seen, Ordering::Relaxed);
                        if this.seen > this.limit {
                            this.inner = None;
                            if let Some(mut t) = tape {
                                t.failed = Some(true);
                            }
                            return Poll::Ready(Some(Err(Box::new(TooLarge))));
                        }
                    }
                    let frame = forwardable(frame);
                    if let Some(mut t) = tape {
                        match (frame.data_ref(), frame.trailers_ref()) {
                            (Some(data), _) => t.data(data),
                            (_, Some(trailers)) => t.trailers = Some(trailers.clone()),
                            _ => {}
                        }
                        // HTTP/2 stops reading a body that says it is over.
                        if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                            t.ended = true;
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Some(mut t) = tape {
                        t.failed = Some(false);
                    }
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.inner = None;
                    if let Some(mut t) = tape {
                        t.ended = true;
                    }
                }
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

impl ResponseBody {
    /// The endpoint's side of the tunnel a 101 answer opened, and where it
    /// came from; `None` for any other answer.
    pub fn upgraded(&mut self) -> Option<crate::tunnel::Upgraded> {
        let finish = self.finish.as_ref()?;
        if finish.outcome.status != 101 {
            return None;
        }
        let listener = finish.snapshot.listener(finish.cx.local)?;
        let cluster = finish.outcome.routed.as_ref()?.cluster()?.clone();
        let last = finish.outcome.tries.last.as_ref()?;
        let Kind::Upstream(body) = &mut self.kind else {
            return None;
        };
        let (stream, early) = body.take()?.into_upgraded()?;
        Some(crate::tunnel::Upgraded {
            stream,
            early,
            listener: listener.name.clone(),
            cluster,
            endpoint: last.endpoint,
            live: last.in_flight.live().clone(),
            settings: listener.websocket.clone(),
            shared: finish.cx.shared.clone(),
        })
    }

    /// What the tunnel did, for the request's access-log line (written when
    /// this body is dropped).
    pub fn tunnel_ended(&mut self, ended: &crate::tunnel::Ended) {
        self.sent += ended.bytes_out;
        if let Some(finish) = self.finish.as_mut() {
            finish
                .arrival
                .bytes_in
                .fetch_add(ended.bytes_in, Ordering::Relaxed);
            finish.tunnel = Some(ended.end.as_str());
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
                let frame = forwardable(frame);
                if let (Some(t), Some(finish)) = (frame.trailers_ref(), this.finish.as_mut()) {
                    finish.trailers(t);
                }
                Poll::Ready(Some(Ok(frame)))
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
