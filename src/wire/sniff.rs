//! What a client speaks, recognised from its first bytes before any
//! protocol is served: a TLS ClientHello starts with the handshake record
//! type (0x16, never the first byte of an HTTP method, which is a token
//! character); HTTP/2 with prior knowledge starts with the fixed connection
//! preface (RFC 9113 §3.4); anything else is handed to HTTP/1, whose parser
//! judges it.
//!
//! Deciding takes one byte for nearly every HTTP/1 request (only a method
//! starting with `P` needs more) and at most the preface's 24 bytes. The
//! bytes read are kept in a small inline buffer and replayed to the
//! protocol by [`Prefixed`], so no heap buffer is taken to decide.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    Http1,
    /// The HTTP/2 connection preface (prior knowledge, no upgrade).
    Http2,
    /// A TLS record: a ClientHello on a plain listener.
    Tls,
}

/// What `bytes` (the first bytes of a connection) say, or `None` while
/// they are a strict prefix of the HTTP/2 preface and more are needed.
pub fn classify(bytes: &[u8]) -> Option<Speaks> {
    let first = *bytes.first()?;
    if first == 0x16 {
        return Some(Speaks::Tls);
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] != H2_PREFACE[..n] {
        return Some(Speaks::Http1);
    }
    (n == H2_PREFACE.len()).then_some(Speaks::Http2)
}

/// The first bytes of a connection, read while sniffing.
#[derive(Default)]
pub struct Prefix {
    bytes: [u8; 24],
    len: u8,
}

impl Prefix {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Reads from `io` until `classify` decides. `Ok(None)`: the client
    /// closed before sending enough to decide.
    pub async fn read<S: AsyncRead + Unpin>(&mut self, io: &mut S) -> io::Result<Option<Speaks>> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(s) = classify(self.as_slice()) {
                return Ok(Some(s));
            }
            let at = usize::from(self.len);
            match io.read(&mut self.bytes[at..]).await? {
                0 => return Ok(None),
                n => self.len += n as u8,
            }
        }
    }
}

/// A stream whose first bytes were already read: they are read again
/// first. Writes go straight through.
pub struct Prefixed<S> {
    prefix: Prefix,
    at: u8,
    pub inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Prefix, inner: S) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let rest = &this.prefix.as_slice()[usize::from(this.at)..];
        if !rest.is_empty() {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n as u8;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Waiting for a stream to become readable without reading: an idle
/// keep-alive connection waits this way, holding no buffer, and takes one
/// only when bytes are there (nginx's model). A TLS stream will be ready
/// when it holds decrypted bytes or its socket is readable.
pub trait ReadReady {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The TCP socket beneath when nothing sits between it and the reader
    /// (no TLS, no bytes read ahead): what splice(2) may copy from and to.
    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
        None
    }

    /// Whether `release_idle` may have something to give back (a TLS
    /// stream), so that a caller need not arrange a release for a socket.
    fn keeps_buffers(&self) -> bool {
        false
    }

    /// Gives back what the stream buffers while it holds no bytes, for a
    /// wait that may be long (a keep-alive connection between requests):
    /// a TLS stream's buffer of received records. Nothing for a socket.
    fn release_idle(&mut self) {}
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }

    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(self)
    }
}

/// A stream kept on the heap (a TLS connection's: `server::conn::serve_tls`)
/// is read the same way.
impl<S: ReadReady + ?Sized> ReadReady for Box<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }

    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
        (**self).plain_tcp()
    }

    fn keeps_buffers(&self) -> bool {
        (**self).keeps_buffers()
    }

    fn release_idle(&mut self) {
        (**self).release_idle();
    }
}

impl<S: ReadReady> ReadReady for Prefixed<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_read_ready(cx)
    }

    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
        if self.at < self.prefix.len {
            return None;
        }
        self.inner.plain_tcp()
    }

    fn keeps_buffers(&self) -> bool {
        self.inner.keeps_buffers()
    }

    fn release_idle(&mut self) {
        self.inner.release_idle();
    }
}

/// The answer to an HTTP/2 client on a listener that serves HTTP/1 only:
/// the server preface (an empty SETTINGS frame) and a GOAWAY with
/// HTTP_1_1_REQUIRED (RFC 9113 §7), so the client says why it failed.
pub fn h2_goaway() -> Vec<u8> {
    const DEBUG: &[u8] = b"this listener serves HTTP/1.1 only";
    let mut out = Vec::with_capacity(9 + 9 + 8 + DEBUG.len());
    // SETTINGS: length 0, type 0x4, flags 0, stream 0.
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let len = (8 + DEBUG.len()) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    // GOAWAY: type 0x7, flags 0, stream 0.
    out.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes()); // last stream id
    out.extend_from_slice(&0xdu32.to_be_bytes()); // HTTP_1_1_REQUIRED
    out.extend_from_slice(DEBUG);
    out
}

/// The answer to a TLS ClientHello on a plain listener: a fatal
/// `handshake_failure` alert, which a TLS client reports as such, instead
/// of HTTP bytes it would call a "wrong version number".
pub const TLS_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_from_the_first_bytes() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"G"), Some(Speaks::Http1));
        assert_eq!(classify(b"POST / HTTP/1.1"), Some(Speaks::Http1));
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(H2_PREFACE), Some(Speaks::Http2));
        assert_eq!(classify(b"PRI / HTTP/1.1\r\n"), Some(Speaks::Http1));
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Speaks::Tls));
    }

    #[tokio::test]
    async fn prefixed_replays_the_sniffed_bytes_then_the_rest() {
        use tokio::io::AsyncReadExt;
        let data: &[u8] = b"PRI / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut io = data;
        let mut prefix = Prefix::default();
        assert_eq!(
            prefix.read(&mut io).await.ok().flatten(),
            Some(Speaks::Http1)
        );
        let mut p = Prefixed::new(prefix, io);
        let mut all = Vec::new();
        p.read_to_end(&mut all).await.expect("in-memory read");
        assert_eq!(all, data);
    }

    #[test]
    fn goaway_frames_are_well_formed() {
        let b = h2_goaway();
        assert_eq!(&b[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let len = u32::from_be_bytes([0, b[9], b[10], b[11]]) as usize;
        assert_eq!(b[12], 7);
        assert_eq!(b.len(), 18 + len);
        assert_eq!(&b[22..26], &[0, 0, 0, 0xd]);
    }
}
