//! The response body as it comes from the endpoint, read straight off the
//! upstream socket by the task that serves the client, frame by frame, so a
//! body of any size passes with bounded memory and back-pressure on both
//! sides; a chunked body's trailers come last, as a trailers frame. When the
//! body has been read to its end and the endpoint allows it, the connection
//! goes back to the pool it came from when the body is dropped.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use hyper::body::{Frame, SizeHint};

use super::codec;
use super::conn::{Conn, READ_CHUNK};
use super::pool::{Limits, Pool};
use crate::http1::chunked::{Decoder, Step};

/// Where the connection goes back to.
pub(super) struct Checkin {
    pub pool: std::sync::Arc<Pool>,
    pub worker: usize,
    pub limits: Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the endpoint closed the connection before the end of the body")]
    Truncated,
    #[error(transparent)]
    Chunked(#[from] crate::http1::chunked::ChunkError),
    #[error("reading the response body: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading the HTTP/2 response body: {0}")]
    Http2(#[from] h2::Error),
}

enum Framing {
    Length(u64),
    Chunked(Decoder),
    UntilClose,
    Done,
}

pub struct Body {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    /// `None` for an HTTP/2 stream: its connection is shared, not lent.
    checkin: Option<Checkin>,
    /// The response of an HTTP/2 stream (`upstream::h2`), read instead.
    h2: Option<Box<super::h2_body::H2Body>>,
}

impl Body {
    pub(super) fn new(
        conn: Conn,
        framing: codec::ResponseBody,
        keep_alive: bool,
        checkin: Checkin,
    ) -> Body {
        let framing = match framing {
            codec::ResponseBody::None | codec::ResponseBody::Length(0) => Framing::Done,
            codec::ResponseBody::Length(n) => Framing::Length(n),
            codec::ResponseBody::Chunked => Framing::Chunked(Decoder::response()),
            codec::ResponseBody::UntilClose => Framing::UntilClose,
        };
        let keep_alive = keep_alive && !matches!(framing, Framing::UntilClose);
        Body {
            conn: Some(conn),
            framing,
            keep_alive,
            checkin: Some(checkin),
            h2: None,
        }
    }

    /// The body of an HTTP/2 stream.
    pub(super) fn h2(body: super::h2_body::H2Body) -> Body {
        Body {
            conn: None,
            framing: Framing::Done,
            keep_alive: false,
            checkin: None,
            h2: Some(Box::new(body)),
        }
    }

    /// HTTP/2: waits for the first frame of the body (it is still read
    /// first); when it is the trailers (a status with no message before
    /// it), they are returned. `None` at once over HTTP/1.1.
    pub async fn peek_trailers(&mut self) -> Option<http::HeaderMap> {
        self.h2.as_mut()?.peek_trailers().await
    }

    /// The connection of a `101 Switching Protocols` answer, now a tunnel:
    /// its stream and the bytes the endpoint sent after the head.
    pub fn into_upgraded(mut self) -> Option<(super::conn::Stream, Bytes)> {
        let conn = self.conn.take()?;
        let Conn { stream, read, .. } = conn;
        // Copied out so that the connection's read buffer is freed now,
        // not held for the life of the tunnel.
        Some((stream, Bytes::copy_from_slice(&read)))
    }

    pub fn is_end_stream(&self) -> bool {
        if let Some(h2) = &self.h2 {
            return h2.is_end_stream();
        }
        matches!(self.framing, Framing::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        if let Some(h2) = &self.h2 {
            return h2.size_hint();
        }
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(h2) = self.h2.as_mut() {
            return h2.poll_frame(cx).map_err(BodyError::from);
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // Serve what is already buffered.
            match &mut self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !conn.read.is_empty() {
                        let n = (*left).min(conn.read.len() as u64) as usize;
                        let data = conn.read.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            self.framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(decoder) => match decoder.step(&conn.read)? {
                    Step::Skip(n) => {
                        conn.read.advance(n);
                        continue;
                    }
                    Step::Data(n) => {
                        let data = conn.read.split_to(n).freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Step::Done(n) => {
                        conn.read.advance(n);
                        let trailers = decoder.take_trailers()?;
                        self.framing = Framing::Done;
                        // The trailers are the body's last frame.
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Step::NeedMore => {}
                },
                Framing::UntilClose => {
                    if !conn.read.is_empty() {
                        let data = conn.read.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            // Need more bytes from the endpoint.
            if conn.read.capacity() - conn.read.len() < READ_CHUNK / 4 {
                conn.read.reserve(READ_CHUNK);
            }
            match ready!(conn.stream.poll_read_buf(cx, &mut conn.read)) {
                Ok(0) => {
                    if matches!(self.framing, Framing::UntilClose) {
                        self.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    self.keep_alive = false;
                    return Poll::Ready(Some(Err(BodyError::Truncated)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.keep_alive = false;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

impl Drop for Body {
    /// A connection whose response was read to its end, that the endpoint
    /// keeps open and that holds no stray bytes goes back to the pool; any
    /// other is closed.
    fn drop(&mut self) {
        let (Some(conn), Some(checkin)) = (self.conn.take(), self.checkin.as_ref()) else {
            return;
        };
        if self.keep_alive && self.is_end_stream() && conn.read.is_empty() {
            let Checkin {
                pool,
                worker,
                limits,
            } = checkin;
            pool.put(*worker, conn, *limits);
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Body::poll_frame(self.get_mut(), cx)
    }

    fn is_end_stream(&self) -> bool {
        Body::is_end_stream(self)
    }

    fn size_hint(&self) -> SizeHint {
        Body::size_hint(self)
    }
}
