//! The endpoint's `SETTINGS_MAX_CONCURRENT_STREAMS`, read off the bytes of
//! an HTTP/2 connection as they are read, into an atomic the pool reads
//! when it picks a connection: it needs the limit to know when a connection
//! is saturated and another one should be opened. (h2's own copy,
//! `SendRequest::current_max_send_streams`, sits behind the lock of the
//! connection's stream state.)
//!
//! `Frames` is a small synchronous parser of the frame layer (RFC 9113 §4.1,
//! §6.5) fed with whatever each read returned; `Watched` wraps the stream
//! and feeds it. Only SETTINGS frames are looked into; every other frame is
//! skipped by its length.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The limit before the endpoint said any: RFC 9113 leaves it unlimited.
pub const UNLIMITED: usize = usize::MAX;

const HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Where the frame parser is.
#[derive(Debug)]
pub struct Frames {
    header: [u8; HEADER],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// The current frame is a SETTINGS frame (not an ACK): its payload is
    /// collected, six bytes per setting.
    setting: Option<([u8; 6], usize)>,
}

impl Default for Frames {
    fn default() -> Self {
        Frames::new()
    }
}

impl Frames {
    pub fn new() -> Frames {
        Frames {
            header: [0; HEADER],
            have: 0,
            left: 0,
            setting: None,
        }
    }

    /// Feeds the bytes the connection read; returns the last
    /// `MAX_CONCURRENT_STREAMS` they announced, if any.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<u32> {
        let mut found = None;
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                if let Some((entry, filled)) = self.setting.as_mut() {
                    for &b in &bytes[..n] {
                        entry[*filled] = b;
                        *filled += 1;
                        if *filled == 6 {
                            *filled = 0;
                            let id = u16::from_be_bytes([entry[0], entry[1]]);
                            if id == MAX_CONCURRENT_STREAMS {
                                found = Some(u32::from_be_bytes([
                                    entry[2], entry[3], entry[4], entry[5],
                                ]));
                            }
                        }
                    }
                }
                self.left -= n;
                bytes = &bytes[n..];
                if self.left == 0 {
                    self.setting = None;
                }
                continue;
            }
            let n = (HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < HEADER {
                break;
            }
            self.have = 0;
            let h = self.header;
            self.left = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let settings = h[3] == SETTINGS && h[4] & ACK == 0;
            self.setting = (settings && self.left > 0).then_some(([0; 6], 0));
        }
        found
    }
}

/// A stream whose reads are watched for the peer's stream limit; skips the
/// client preface's echo (the server sends frames only).
pub struct Watched<S> {
    inner: S,
    frames: Frames,
    limit: Arc<AtomicUsize>,
}

impl<S> Watched<S> {
    /// `limit` is set to what the endpoint announces, as it announces it.
    pub fn new(inner: S, limit: Arc<AtomicUsize>) -> Watched<S> {
        Watched {
            inner,
            frames: Frames::new(),
            limit,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && let Some(max) = this.frames.feed(&buf.filled()[before..])
        {
            let max = usize::try_from(max).unwrap_or(UNLIMITED);
            this.limit.store(max, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, v) in pairs {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(SETTINGS, 0, &p)
    }

    #[test]
    fn the_limit_is_found_whatever_the_read_boundaries() {
        let mut bytes = frame(0x8, 0, &[0, 0, 1, 0]); // WINDOW_UPDATE
        bytes.extend(settings(&[(0x4, 65_535), (0x3, 7), (0x5, 16_384)]));
        bytes.extend(frame(
            0x0,
            0,
            b"data with 00 03 inside: \x00\x03\x00\x00\x00\x01",
        ));
        for chunk in [1, 2, 5, 9, 13, bytes.len()] {
            let mut f = Frames::new();
            let found: Vec<u32> = bytes.chunks(chunk).filter_map(|c| f.feed(c)).collect();
            assert_eq!(found, vec![7], "chunks of {chunk}");
        }
    }

    #[test]
    fn acks_are_not_read_and_a_later_settings_frame_wins() {
        let mut f = Frames::new();
        assert_eq!(f.feed(&frame(SETTINGS, ACK, &[])), None);
        assert_eq!(f.feed(&settings(&[(0x3, 100)])), Some(100));
        assert_eq!(f.feed(&settings(&[(0x3, 2)])), Some(2));
        assert_eq!(f.feed(&settings(&[(0x4, 1)])), None);
    }
}
