//! The copy of a tunnel's bytes both ways with bounded buffers that are
//! held only while bytes move.
//!
//! Each direction waits for its source to be readable holding no buffer
//! (`ReadReady`, as an idle HTTP/1 connection does), reads at most `CHUNK`
//! bytes onto the stack and writes them on at once; only what the
//! destination does not take is kept in a buffer, given back once written
//! and flushed. A destination that does not take the bytes keeps its
//! direction from reading more (back-pressure: at most one `CHUNK` per
//! direction is ever held). An idle tunnel therefore costs its two sockets
//! and this small state, not 2 × 16 KiB of buffers as tokio's
//! `copy_bidirectional` would. The end of file of one side is passed on as
//! a shutdown of the other's write side (half-close).
//!
//! When both sides are plain TCP, the owner may let bytes whose content it
//! does not need move by splice(2) instead (`Seen::splice_room`: a
//! WebSocket tunnel lets the rest of a large frame's payload go, since it
//! only needs to see frame headers). They go socket → pipe → socket, at
//! most `wire::pipe::CHUNK` at a time and all written before the next
//! read, like a buffer; the pipe is made at the first such bytes and kept
//! until the direction ends.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use prometheus_client::metrics::gauge::Gauge;
use rustix::pipe::splice;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::wire::pipe::{self, Pipe};
use crate::wire::sniff::ReadReady;

/// Most bytes read at once in one direction.
pub const CHUNK: usize = 16 * 1024;

/// Something a tunnel can copy from and to.
pub trait Side: AsyncRead + AsyncWrite + ReadReady + Unpin {}
impl<T: AsyncRead + AsyncWrite + ReadReady + Unpin> Side for T {}

/// What a direction's copy tells its owner, and asks it.
pub trait Seen {
    /// Bytes read (empty: the end of file), before they are written.
    fn bytes(&mut self, bytes: &[u8]);
    /// `n` bytes were moved by splice(2), unseen.
    fn spliced(&mut self, _n: usize) {}
    /// How many of the next bytes may move unseen by splice(2), and the
    /// gauge of pipes in use; `None`: every byte is read.
    fn splice_room(&self) -> Option<(u64, &Gauge)> {
        None
    }
}

impl<F: FnMut(&[u8])> Seen for F {
    fn bytes(&mut self, bytes: &[u8]) {
        self(bytes)
    }
}

/// Fewest bytes worth a splice: less is read in userspace, where one read
/// of `CHUNK` moves it with two syscalls, as two splices would.
pub const SPLICE_AT_LEAST: u64 = pipe::CHUNK as u64;

/// One direction of the copy.
#[derive(Default)]
pub struct Half {
    /// Read and not yet written; no capacity while the direction idles.
    buf: BytesMut,
    /// The pipe of spliced bytes, once there were some, and how many of
    /// them it holds (not yet written).
    pipe: Option<Pipe>,
    piped: usize,
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
        self.buf.is_empty() && self.piped == 0 && !self.unflushed
    }

    /// Copies from `src` to `dst` until `src` ends (`Ready(Ok)`), an error,
    /// or neither side can move (`Pending`). `seen` is told each read's
    /// bytes (empty at end of file) before they are written, and says
    /// which bytes may be spliced.
    pub fn poll_copy<R: Side, W: Side>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        seen: &mut dyn Seen,
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
            if let Some((room, gauge)) = seen.splice_room()
                && room >= SPLICE_AT_LEAST
                && let (Some(from), Some(_)) = (src.plain_tcp(), dst.plain_tcp())
            {
                ready!(from.poll_read_ready(cx))?;
                let p = match &self.pipe {
                    Some(p) => p,
                    None => self.pipe.insert(Pipe::new(gauge)?),
                };
                let most = room.min(pipe::CHUNK as u64) as usize;
                // The pipe is empty (all written above): a would-block is
                // the socket's, and clears its readiness.
                match from.try_io(Interest::READABLE, || {
                    Ok(splice(from, None, &p.into, None, most, pipe::flags())?)
                }) {
                    Ok(0) => {
                        self.eof = true;
                        seen.bytes(&[]);
                    }
                    Ok(n) => {
                        self.piped = n;
                        seen.spliced(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            // Idle: wait for bytes without a buffer.
            ready!(src.poll_read_ready(cx))?;
            // Read onto the stack and write on at once: most reads (a
            // WebSocket message, a TLS client's record) are taken whole by
            // the destination, and a 16 KiB heap buffer per read was
            // mimalloc's slow path each time. Only what the destination
            // does not take now goes to `buf`, written before the next read.
            let mut scratch = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut read = ReadBuf::uninit(&mut scratch);
            // Pending: readiness without data (a partial TLS record, a
            // spurious wake-up), and nothing held.
            ready!(Pin::new(&mut *src).poll_read(cx, &mut read))?;
            let got = read.filled();
            if got.is_empty() {
                self.eof = true;
                seen.bytes(&[]);
                continue;
            }
            seen.bytes(got);
            let mut written = 0;
            while written < got.len() {
                match Pin::new(&mut *dst).poll_write(cx, &got[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        written += n;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if written < got.len() {
                self.buf = BytesMut::from(&got[written..]);
            }
        }
    }

    /// Writes and flushes what is buffered (or piped), then gives the
    /// buffer back.
    pub fn poll_write_out<W: Side>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut W,
    ) -> Poll<io::Result<()>> {
        while self.piped > 0 {
            let (Some(p), Some(to)) = (&self.pipe, dst.plain_tcp()) else {
                return Poll::Ready(Err(io::Error::other("spliced bytes without a pipe")));
            };
            ready!(to.poll_write_ready(cx))?;
            let held = self.piped;
            // The pipe holds bytes: a would-block is the socket's.
            match to.try_io(Interest::WRITABLE, || {
                Ok(splice(&p.out, None, to, None, held, pipe::flags())?)
            }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.piped -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
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
        seen_forth: &mut dyn Seen,
        seen_back: &mut dyn Seen,
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

    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
        match self {
            crate::upstream::conn::Stream::Plain(tcp) => Some(tcp),
            crate::upstream::conn::Stream::Tls(_) => None,
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
                both.poll_copy(
                    cx,
                    &mut a,
                    &mut b,
                    &mut |s: &[u8]| up += s.len(),
                    &mut |s: &[u8]| down += s.len(),
                )
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

    #[tokio::test]
    async fn what_a_slow_destination_does_not_take_is_kept_in_order() {
        // The client reads nothing until 4 MB are on their way: its
        // socket's buffers fill, writes are partial, and the rest of each
        // read waits in `buf`; every byte must still arrive, in order.
        let (mut client, mut a) = pair().await;
        let (mut b, mut endpoint) = pair().await;
        let mut both = Both::default();
        const LEN: usize = 4 << 20;
        let byte = |i: usize| (i % 251) as u8;
        let copy = async {
            poll_fn(|cx| both.poll_copy(cx, &mut a, &mut b, &mut |_: &[u8]| {}, &mut |_: &[u8]| {}))
                .await
        };
        let send = async {
            let data: Vec<u8> = (0..LEN).map(byte).collect();
            endpoint.write_all(&data).await.expect("write");
            endpoint.shutdown().await.expect("shutdown");
            endpoint
        };
        let receive = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut got = Vec::with_capacity(LEN);
            client.read_to_end(&mut got).await.expect("read");
            client.shutdown().await.expect("shutdown");
            got
        };
        let (copied, mut endpoint, got) = tokio::join!(copy, send, receive);
        copied.expect("copy");
        assert_eq!(got.len(), LEN);
        assert!(got.iter().enumerate().all(|(i, b)| *b == byte(i)));
        let mut tail = Vec::new();
        endpoint.read_to_end(&mut tail).await.expect("eof");
        assert!(tail.is_empty());
        assert_eq!(both.back.buf.capacity(), 0);
    }
}
