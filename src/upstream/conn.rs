//! One connection to an endpoint: the stream (plain TCP or TLS) and what has
//! been read from it but not yet consumed. While a request uses it, it is
//! polled by that request's own task (no separate connection task, no
//! channels); between requests it sits in the pool, polled by nobody.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::source::{self, Sources};
use super::tls::{EndpointTls, Handshake, TlsStream};

/// Read buffer size: room for a typical response head and a body chunk.
pub const READ_CHUNK: usize = 16 * 1024;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct Conn {
    pub stream: Stream,
    pub read: BytesMut,
    /// 0: plain TCP; otherwise the `EndpointTls::key` it was made with. A
    /// pool hands a connection only to requests of the same transport.
    pub transport: u64,
}

#[derive(Debug)]
pub enum ConnectError {
    Refused(io::Error),
    TimedOut,
    /// The TLS handshake failed (`TimedOut` when it ran out of time).
    Handshake(io::Error),
}

impl Conn {
    /// Opens a connection, from one of `sources` if any, over TLS when
    /// `tls` says so. `timeout` covers the TCP connect and the TLS
    /// handshake together.
    pub async fn connect(
        address: SocketAddr,
        sources: Option<&Sources>,
        timeout: Duration,
        tls: Option<&EndpointTls>,
    ) -> Result<Conn, ConnectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let connecting = source::connect(sources, address);
        let stream = match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) => return Err(ConnectError::TimedOut),
            Ok(Err(e)) => return Err(ConnectError::Refused(e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (stream, transport) = match tls {
            None => (Stream::Plain(stream), 0),
            Some(tls) => {
                let (result, outcome) =
                    match tokio::time::timeout_at(deadline, tls.handshake(stream)).await {
                        Err(_) => (Err(ConnectError::TimedOut), Handshake::Timeout),
                        Ok(Err(e)) => {
                            let why = Handshake::of_error(&e);
                            (Err(ConnectError::Handshake(e)), why)
                        }
                        Ok(Ok(s)) => (Ok(s), Handshake::Ok),
                    };
                tls.handshakes.record(outcome);
                (Stream::Tls(Box::new(result?)), tls.key)
            }
        };
        Ok(Conn {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            transport,
        })
    }

    /// Whether an idle pooled connection can take a request: nothing has
    /// arrived on it since its last response, not even the end of stream.
    ///
    /// Plain TCP: one non-blocking read of the socket, which costs no system
    /// call unless the event loop saw the socket readable.
    ///
    /// TLS: a readable socket does not mean data or a close. A TLS 1.3
    /// server may send session tickets or a key update at any time after
    /// the handshake; these are TLS records, not response bytes, and must
    /// go through the TLS layer (reading the raw socket would also tear
    /// records out of the stream). So the TLS stream is polled once, with a
    /// waker that does nothing (nobody waits on an idle connection): rustls
    /// takes in whatever records arrived and handles the post-handshake
    /// messages itself; what is left is `Pending` (open and idle), end of
    /// stream (closed, `close_notify` or not), an error, or stray bytes of
    /// application data (not idle: the connection is not reused).
    pub fn is_idle_and_open(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        match &mut self.stream {
            Stream::Plain(tcp) => {
                let mut probe = [0u8; 1];
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(tls) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(tls.as_mut())
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }
}

impl Stream {
    /// Reads what the stream has into `buf` (which has room); `Ok(0)` at
    /// end of stream. On plain TCP it reads the socket straight into the
    /// buffer, no intermediate copy.
    pub fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                match tcp.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return Poll::Ready(other),
                }
            },
            Stream::Tls(tls) => tokio_util::io::poll_read_buf(Pin::new(tls.as_mut()), cx, buf),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
