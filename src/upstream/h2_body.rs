//! One HTTP/2 stream to an endpoint once its response head came (`h2`):
//! the response body as the endpoint sends it, and what is left of the
//! request body, sent from the same polls.
//!
//! No task of its own sends the request body: `Upload` sends what the body
//! has as the stream's window allows, first from the request's future while
//! the head is awaited, then from `H2Body::poll_frame` each time the
//! response body is read. A unary call's body is all sent before its
//! answer; a bidirectional stream's goes on while its answer comes, as
//! long as the answer is read. Read data is given back to the endpoint's
//! window at once, as hyper did: the reader's pace is the back-pressure.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::BoxError;
use super::h2::InFlight;

/// The request body still to send on its stream.
pub(super) struct Upload<B> {
    tx: SendStream<Bytes>,
    body: B,
    /// A chunk read from the body, waiting for the stream's window.
    held: Option<(Bytes, bool)>,
    /// A frame of the body was read: it can no longer be sent elsewhere.
    touched: bool,
    /// All sent, or the stream takes no more.
    done: bool,
}

impl<B> Upload<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    pub fn new(tx: SendStream<Bytes>, body: B) -> Upload<B> {
        Upload {
            tx,
            body,
            held: None,
            touched: false,
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The body, when not a frame of it was read.
    pub fn untouched(self) -> Option<B> {
        (!self.touched).then_some(self.body)
    }

    /// Sends what the body has; ready when all of it is sent or the stream
    /// takes no more (reset, or closed by the response: the response says
    /// why), an error when the body failed (the stream is then reset).
    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let polled = self.poll_body(cx);
        if polled.is_ready() {
            self.done = true;
        }
        polled
    }

    /// hyper's `PipeToSendStream`: a frame is read before any of the
    /// window is claimed (claiming it for a body that has nothing yet can
    /// starve the connection's other streams), then a data chunk waits for
    /// some of the stream's window and goes whole (h2 sends it as the
    /// window opens).
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            if self.held.is_some() {
                while self.tx.capacity() == 0 {
                    match ready!(self.tx.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return Poll::Ready(Ok(())),
                    }
                }
                if let Some((data, end)) = self.held.take()
                    && (self.tx.send_data(data, end).is_err() || end)
                {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let Some(frame) = ready!(Pin::new(&mut self.body).poll_frame(cx)) else {
                // No trailers: an empty DATA frame ends the stream.
                self.tx.reserve_capacity(0);
                let _ = self.tx.send_data(Bytes::new(), true);
                return Poll::Ready(Ok(()));
            };
            self.touched = true;
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    let e: BoxError = e.into();
                    self.tx.send_reset(reason(&*e));
                    return Poll::Ready(Err(e));
                }
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let end = self.body.is_end_stream();
                    let data = data.copy_to_bytes(data.remaining());
                    if data.is_empty() {
                        // Needs no window.
                        if self.tx.send_data(data, end).is_err() || end {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    self.tx.reserve_capacity(1);
                    self.held = Some((data, end));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.tx.reserve_capacity(0);
                        let _ = self.tx.send_trailers(trailers);
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

/// The reset a failed request body sends: the reason of an HTTP/2 error
/// behind it (the client reset its own stream: CANCEL goes on), else
/// INTERNAL_ERROR, as hyper did.
fn reason(e: &(dyn StdError + 'static)) -> h2::Reason {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(reason) = err.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        source = err.source();
    }
    h2::Reason::INTERNAL_ERROR
}

/// An `Upload` whatever its body's type, kept by the response body.
trait Sending: Send {
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;
}

impl<B> Sending for Upload<B>
where
    B: HttpBody + Unpin + Send,
    B::Error: Into<BoxError>,
{
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Upload::poll_send(self, cx)
    }
}

/// The response body of one stream; trailers pass through as a frame.
pub struct H2Body {
    recv: RecvStream,
    /// A frame read ahead by `peek_trailers`, handed out first.
    peeked: Option<Frame<Bytes>>,
    /// The request body still being sent (a stream both ways).
    upload: Option<Box<dyn Sending>>,
    /// What `content-length` says is left, as hyper's size hint.
    left: Option<u64>,
    /// Every DATA frame was read: the trailers are next.
    data_done: bool,
    _in_flight: InFlight,
}

impl H2Body {
    pub(super) fn new<B>(
        headers: &http::HeaderMap,
        recv: RecvStream,
        upload: Option<Upload<B>>,
        in_flight: InFlight,
    ) -> H2Body
    where
        B: HttpBody + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let left = if recv.is_end_stream() {
            Some(0)
        } else {
            content_length(headers)
        };
        H2Body {
            recv,
            peeked: None,
            upload: upload.map(|u| Box::new(u) as Box<dyn Sending>),
            left,
            data_done: false,
            _in_flight: in_flight,
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if let Some(frame) = self.peeked.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(up) = self.upload.as_mut()
            && up.poll_send(cx).is_ready()
        {
            // Sent, or the stream was reset (a failed body resets it):
            // reading the response tells the reader.
            self.upload = None;
        }
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = self.left.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.peeked.is_none() && self.recv.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.left
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }

    /// Reads the first frame, kept to be read first; when it is the
    /// trailers (no message before them), a copy is returned.
    pub async fn peek_trailers(&mut self) -> Option<http::HeaderMap> {
        if self.peeked.is_none() {
            let frame = std::future::poll_fn(|cx| self.poll_frame(cx)).await?;
            self.peeked = Some(frame.ok()?);
        }
        self.peeked.as_ref()?.trailers_ref().cloned()
    }
}

/// The body's length by `content-length`: every value (and every item of a
/// list) must say the same number.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for item in value.to_str().ok()?.split(',') {
            let n: u64 = item.trim().parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_one_number_or_none() {
        let mut h = http::HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.append("content-length", "5".parse().unwrap());
        assert_eq!(content_length(&h), Some(5));
        h.append("content-length", "5, 5".parse().unwrap());
        assert_eq!(content_length(&h), Some(5));
        h.append("content-length", "6".parse().unwrap());
        assert_eq!(content_length(&h), None);
        let mut h = http::HeaderMap::new();
        h.append("content-length", "x".parse().unwrap());
        assert_eq!(content_length(&h), None);
    }

    #[test]
    fn a_body_failed_by_a_reset_stream_passes_its_reason_on() {
        let cancel: BoxError = Box::new(h2::Error::from(h2::Reason::CANCEL));
        assert_eq!(reason(&*cancel), h2::Reason::CANCEL);
        let other: BoxError = "the client went away".into();
        assert_eq!(reason(&*other), h2::Reason::INTERNAL_ERROR);
    }
}
