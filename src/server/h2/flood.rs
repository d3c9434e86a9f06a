//! A bound on the control frames an HTTP/2 client may send (the PING and
//! SETTINGS floods, CVE-2019-9512 and CVE-2019-9515).
//!
//! `h2` answers every PING and SETTINGS frame and keeps at most one answer
//! pending, so a flood costs no memory; but a client that reads the
//! answers can keep the worker busy with them forever, and one that does
//! not holds the connection until the idle timeout. `Guard` sits between
//! the socket and `h2`, follows the frame headers of the bytes `h2` reads
//! (and of those it writes, to know where a frame ends), and takes a token
//! from a `Budget` for each PING or SETTINGS that is not an acknowledgement.
//! When the budget is spent it writes GOAWAY `ENHANCE_YOUR_CALM` at a frame
//! boundary and fails the read, which ends the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Control frames a connection may send at once (a burst)...
pub const BURST: u32 = 1000;
/// ...and the rate at which the allowance comes back: far above what a
/// client sends for keep-alive or window estimation (a few per round trip).
pub const PER_SECOND: u32 = 100;

/// A token bucket; the small synchronous core of the guard.
#[derive(Debug)]
pub struct Budget {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: Instant,
}

impl Budget {
    pub fn new(burst: u32, per_second: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            rate: f64::from(per_second),
            last: now,
        }
    }

    /// Takes one token; `false` when none is left.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where a byte stream is among HTTP/2 frames.
#[derive(Debug, Default)]
struct Cursor {
    /// Bytes still to skip before the first frame (the client preface).
    skip: usize,
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload: usize,
}

/// A frame header as far as the guard cares.
struct Head {
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Cursor {
    /// Feeds bytes; `seen` gets each complete frame header.
    fn feed(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Head)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else if self.payload > 0 {
                let n = self.payload.min(bytes.len());
                self.payload -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 9 {
                    let h = self.head;
                    self.have = 0;
                    self.payload =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    seen(Head {
                        kind: h[3],
                        flags: h[4],
                        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                    });
                }
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.have == 0 && self.payload == 0
    }
}

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The stream wrapper; `flooded` is set when it ended a connection.
pub struct Guard<S> {
    inner: S,
    inbound: Cursor,
    outbound: Cursor,
    budget: Budget,
    last_stream: u32,
    flooded: Arc<AtomicBool>,
}

impl<S> Guard<S> {
    /// `stream` starts with the client preface (the connection layer
    /// replays the bytes it sniffed).
    pub fn new(stream: S, flooded: Arc<AtomicBool>, now: Instant) -> Self {
        Self {
            inner: stream,
            inbound: Cursor {
                skip: 24,
                ..Cursor::default()
            },
            outbound: Cursor::default(),
            budget: Budget::new(BURST, PER_SECOND, now),
            last_stream: 0,
            flooded,
        }
    }
}

fn goaway(last_stream: u32) -> [u8; 17] {
    let mut f = [0u8; 17];
    f[2] = 8; // payload length
    f[3] = 0x7; // GOAWAY
    f[9..13].copy_from_slice(&last_stream.to_be_bytes());
    f[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    f
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flooded.load(Ordering::Relaxed) {
            return Poll::Ready(Err(flood()));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let now = Instant::now();
        let (mut spent, mut last) = (false, this.last_stream);
        let budget = &mut this.budget;
        this.inbound
            .feed(&buf.filled()[before..], |h| match h.kind {
                PING | SETTINGS if h.flags & ACK == 0 => spent |= !budget.take(now),
                HEADERS => last = last.max(h.stream),
                _ => {}
            });
        this.last_stream = last;
        if !spent {
            return Poll::Ready(Ok(()));
        }
        this.flooded.store(true, Ordering::Relaxed);
        // Best effort: GOAWAY only between two of h2's frames, and only if
        // the socket takes all of it now.
        if this.outbound.at_boundary() {
            let frame = goaway(this.last_stream);
            if let Poll::Ready(Ok(_)) = Pin::new(&mut this.inner).poll_write(cx, &frame) {
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
            }
        }
        Poll::Ready(Err(flood()))
    }
}

fn flood() -> io::Error {
    io::Error::other("HTTP/2 control frame flood")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.outbound.feed(&buf[..n], |_| {});
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_budget_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(3, 10, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        // 100 ms at 10/s gives one back, and never more than the burst.
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }

    #[test]
    fn the_cursor_finds_frame_heads_across_split_reads() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let frame = |kind: u8, flags: u8, stream: u32, len: usize| {
            let mut f = vec![0, 0, len as u8, kind, flags];
            f.extend(stream.to_be_bytes());
            f.extend(vec![0xAA; len]);
            f
        };
        bytes.extend(frame(SETTINGS, 0, 0, 6));
        bytes.extend(frame(HEADERS, 0x5, 7, 20));
        bytes.extend(frame(PING, ACK, 0, 8));
        let mut c = Cursor {
            skip: 24,
            ..Cursor::default()
        };
        let mut seen = Vec::new();
        for chunk in bytes.chunks(5) {
            c.feed(chunk, |h| seen.push((h.kind, h.flags, h.stream)));
        }
        assert_eq!(seen, [(SETTINGS, 0, 0), (HEADERS, 0x5, 7), (PING, ACK, 0)]);
        assert!(c.at_boundary());
        c.feed(&[0, 0], |_| {});
        assert!(!c.at_boundary());
    }
}
