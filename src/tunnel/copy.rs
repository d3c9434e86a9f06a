//! The copy of a tunnel's bytes both ways with bounded buffers that are
//! held only while bytes move.
//!
//! Each direction waits for its source to be readable holding no buffer
//! (`ReadReady`, as an idle HTTP/1 connection does); a buffer of `CHUNK`
//! bytes is taken for a read and given back once what it holds has been
//! written and flushed. A destination that does not take the bytes keeps
//! its direction from reading more (back-pressure: at most one `CHUNK` per
//! direction is ever held). An idle tunnel therefore costs its two sockets
//! and this small state, not 2 × 16 KiB of buffers as tokio's
//! `copy_bidirectional` would. The end of file of one side is passed on as
//! a shutdown of the other's write side (half-close).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::wire::sniff::ReadReady;

/// Most bytes read at once in one direction.
pub const CHUNK: usize = 16 * 1024;

/// Something a tunnel can copy from and to.
pub trait Side: AsyncRead + AsyncWrite + ReadReady + Unpin {}
impl<T: AsyncRead + AsyncWrite + ReadReady + Unpin> Side for T {}

/// One direction of the copy.
#[derive(Default)]
pub struct Half {
    /// Read and not yet written; no capacity while the direction idles.
    buf: BytesMut,
    unflushed: bool,
    /// The source reached its end of file.
    eof: bool,
    /// The end of file was passed on (the destination's write side shut).
    done: bool,
}

impl Half {
    /// A direction whose first bytes were already read (what followed a
    /// request or response head in the same read).
    pub fn with_early(early: &[u8]) -> Half {
        Half {
            buf: BytesMut::from(early),
            ..Half::default()
        }
    }

    /// Whether the source's end of file has been passed on.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether nothing read is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && !self.unflushed
    }

    /// Copies from `src` to `dst` until `src` ends (`Ready(Ok)`), an error,
    /// or neither side can move (`Pending`). `seen` is told each read's
    /// bytes (empty at end of file) before they are written.
    pub fn poll_copy<R: Side, W: Side>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        seen: &mut dyn FnMut(&[u8]),
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_write_out(cx, dst))?;
            if self.eof {
                if !self.done {
                    ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                    self.done = true;
                }
                return Poll::Ready(Ok(()));
            }
            // Idle: wait for bytes without a buffer.
            ready!(src.poll_read_ready(cx))?;
            self.buf.reserve(CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *src), cx, &mut self.buf) {
                Poll::Pending => {
                    // Readiness without data (a partial TLS record, a
                    // spurious wake-up): the buffer goes back.
                    self.buf = BytesMut::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    self.buf = BytesMut::new();
                    self.eof = true;
                    seen(&[]);
                }
                Poll::Ready(Ok(_)) => seen(&self.buf),
            }
        }
    }

    /// Writes and flushes what is buffered, then gives the buffer back.
    pub fn poll_write_out<W: Side>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut W,
    ) -> Poll<io::Result<()>> {
        while !self.buf.is_empty() {
            let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buf.advance(n);
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(Pin::new(&mut *dst).poll_flush(cx))?;
            self.unflushed = false;
        }
        if self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

/// Both directions of a tunnel between `a` and `b`.
#[derive(Default)]
pub struct Both {
    /// `a` → `b`.
    pub forth: Half,
    /// `b` → `a`.
    pub back: Half,
}

/// Which side of the tunnel ended first or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    A,
    B,
}

impl Both {
    /// Copies both ways until both sides have ended (`Ready(Ok)`) or one
    /// fails (`Ready(Err)`, with the side whose read or write failed when
    /// it can be told). `seen_forth` / `seen_back` see each direction's
    /// bytes as they are read.
    pub fn poll_copy<A: Side, B: Side>(
        &mut self,
        cx: &mut Context<'_>,
        a: &mut A,
        b: &mut B,
        seen_forth: &mut dyn FnMut(&[u8]),
        seen_back: &mut dyn FnMut(&[u8]),
    ) -> Poll<Result<(), io::Error>> {
        let forth = self.forth.poll_copy(cx, a, b, seen_forth)?;
        let back = self.back.poll_copy(cx, b, a, seen_back)?;
        if forth.is_ready() && back.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// An upstream connection is ready to read when its TLS layer holds
/// decrypted bytes (or the peer's close), else when its socket is readable.
impl ReadReady for crate::upstream::conn::Stream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            crate::upstream::conn::Stream::Plain(tcp) => tcp.poll_read_ready(cx),
            crate::upstream::conn::Stream::Tls(tls) => {
                let (io, conn) = tls.get_ref();
                if !conn.wants_read() {
                    return Poll::Ready(Ok(()));
                }
                io.poll_read_ready(cx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    #[tokio::test]
    async fn copies_both_ways_passes_half_close_and_holds_no_buffer_when_idle() {
        let (mut client, mut a) = pair().await;
        let (mut b, mut endpoint) = pair().await;
        let mut both = Both {
            forth: Half::with_early(b"early "),
            back: Half::default(),
        };
        let (mut up, mut down) = (0usize, 0usize);
        let copy = async {
            poll_fn(|cx| {
                both.poll_copy(cx, &mut a, &mut b, &mut |s| up += s.len(), &mut |s| {
                    down += s.len()
                })
            })
            .await
        };
        let talk = async {
            client.write_all(b"hello").await.expect("write");
            let mut got = [0u8; 11];
            endpoint.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"early hello");
            let big = vec![7u8; 200_000];
            endpoint.write_all(&big).await.expect("write");
            endpoint.shutdown().await.expect("shutdown");
            let mut back = vec![0u8; 200_000];
            client.read_exact(&mut back).await.expect("read");
            assert!(back.iter().all(|b| *b == 7));
            client.shutdown().await.expect("shutdown");
            let mut tail = Vec::new();
            endpoint.read_to_end(&mut tail).await.expect("eof");
            assert!(tail.is_empty());
            back.len()
        };
        let (copied, n) = tokio::join!(copy, talk);
        copied.expect("copy");
        assert_eq!(n, 200_000);
        assert_eq!(up, 5);
        assert_eq!(down, 200_000);
        assert_eq!(both.forth.buf.capacity(), 0);
        assert_eq!(both.back.buf.capacity(), 0);
    }
}
