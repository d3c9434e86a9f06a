//! A stream handed to a protocol engine that owns it for the connection's
//! life (hyper's HTTP/2 server), which cannot be told when the connection
//! idles: `ReleaseIdle` gives back the stream's idle buffers
//! (`ReadReady::release_idle`, a TLS stream's buffer of received records)
//! whenever a read finds nothing to read. Levee's own HTTP/1 server calls
//! `release_idle` itself, between requests.
//!
//! On a busy connection that is once per burst of frames, not per request:
//! rustls allocates its 4 KiB buffer again at the next read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::sniff::ReadReady;

pub struct ReleaseIdle<S> {
    inner: S,
}

impl<S> ReleaseIdle<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: AsyncRead + ReadReady + Unpin> AsyncRead for ReleaseIdle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_pending() {
            self.inner.release_idle();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReleaseIdle<S> {
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
