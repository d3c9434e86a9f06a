//! Where a client connection is in its request cycle, for the two timeouts
//! hyper cannot tell apart: the header timeout (a request has started
//! arriving and its head is not complete: slowloris) and the idle timeout
//! (nothing to do between keep-alive requests).
//!
//! The request path only flips atomics, with no clock read: the IO wrapper
//! marks the first byte of a new request, the pipeline marks a request as
//! served and its response as finished. The connection driver wakes on a
//! coarse tick and keeps a `Watch`: when it sees the same phase (and the same
//! request count) long enough, that phase has expired. A tick of a quarter of
//! the shorter timeout makes a timeout fire between 1× and 1.5× its value.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for the first byte of a request.
    Idle,
    /// A request head is arriving.
    Head,
    /// A request is being served.
    Active,
}

pub struct Phase {
    state: AtomicU8,
    /// Requests served so far; tells one idle spell from the next.
    served: AtomicU64,
    /// The head that just arrived carried both Content-Length and
    /// Transfer-Encoding (see `HeadScan`).
    ambiguous: AtomicBool,
    /// Bytes read after the end of the current request's head, and the
    /// length of its body (`UNKNOWN` for chunked or untracked requests).
    /// More bytes than the body means the next request's head has started
    /// arriving behind it (pipelining), so the header timeout applies.
    after_head: AtomicU64,
    body_len: AtomicU64,
    /// Whether `after_head` counts from this request's head end; false for
    /// a pipelined request, whose head boundary was never seen.
    tracked: AtomicBool,
}

const UNKNOWN: u64 = u64::MAX;

impl Default for Phase {
    fn default() -> Self {
        Phase {
            state: AtomicU8::new(State::Idle as u8),
            served: AtomicU64::new(0),
            ambiguous: AtomicBool::new(false),
            after_head: AtomicU64::new(0),
            body_len: AtomicU64::new(UNKNOWN),
            tracked: AtomicBool::new(false),
        }
    }
}

impl Phase {
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            0 => State::Idle,
            1 => State::Head,
            _ => State::Active,
        }
    }

    /// Bytes arrived from the client; returns true if they start a new request.
    pub fn on_read(&self) -> bool {
        if self.state() == State::Idle {
            self.state.store(State::Head as u8, Ordering::Relaxed);
            self.ambiguous.store(false, Ordering::Relaxed);
            self.after_head.store(0, Ordering::Relaxed);
            self.tracked.store(true, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Counts bytes read after the current head ended.
    pub fn read_after_head(&self, n: usize) {
        self.after_head.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn mark_ambiguous(&self) {
        self.ambiguous.store(true, Ordering::Relaxed);
    }

    /// A complete request head was parsed and is being served; `body_len`
    /// is its body's length when known up front (0 for no body). Returns
    /// whether its framing was ambiguous.
    pub fn active(&self, body_len: Option<u64>) -> bool {
        let tracked = self.tracked.load(Ordering::Relaxed);
        let len = body_len.filter(|_| tracked).unwrap_or(UNKNOWN);
        self.body_len.store(len, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.state.store(State::Active as u8, Ordering::Relaxed);
        self.ambiguous.swap(false, Ordering::Relaxed)
    }

    /// The response was finished; the connection waits for the next request.
    pub fn idle(&self) {
        let len = self.body_len.load(Ordering::Relaxed);
        let next = if len != UNKNOWN && self.after_head.load(Ordering::Relaxed) > len {
            // The next head is already (partly) here.
            self.tracked.store(false, Ordering::Relaxed);
            State::Head
        } else {
            State::Idle
        };
        self.state.store(next as u8, Ordering::Relaxed);
    }

    fn seen(&self) -> (State, u64) {
        (self.state(), self.served.load(Ordering::Relaxed))
    }
}

/// What the driver must do after a tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A request head has been arriving for longer than the header timeout.
    HeadTimeout,
    /// The connection has been idle for longer than the idle timeout.
    IdleTimeout,
    Wait,
}

impl crate::proxy::RequestCycle for Phase {
    fn started(&self, body_len: Option<u64>) -> bool {
        self.active(body_len)
    }

    fn finished(&self) {
        self.idle();
    }
}

/// The driver's side: remembers since when it has seen the current phase.
pub struct Watch {
    header_timeout: Duration,
    idle_timeout: Duration,
    seen: (State, u64),
    since: Instant,
}

impl Watch {
    pub fn new(header_timeout: Duration, idle_timeout: Duration, now: Instant) -> Watch {
        Watch {
            header_timeout,
            idle_timeout,
            seen: (State::Idle, 0),
            since: now,
        }
    }

    /// How often the driver should call `tick`.
    pub fn period(&self) -> Duration {
        (self.header_timeout.min(self.idle_timeout) / 4).max(Duration::from_millis(10))
    }

    pub fn tick(&mut self, phase: &Phase, now: Instant) -> Verdict {
        let seen = phase.seen();
        if seen != self.seen {
            self.seen = seen;
            self.since = now;
            return Verdict::Wait;
        }
        let elapsed = now.saturating_duration_since(self.since);
        match seen.0 {
            State::Head if elapsed >= self.header_timeout => Verdict::HeadTimeout,
            State::Idle if elapsed >= self.idle_timeout => Verdict::IdleTimeout,
            _ => Verdict::Wait,
        }
    }
}

/// Looks at the header names of a request head as it arrives, to catch the
/// one ambiguity hyper resolves silently: a request with both
/// `Content-Length` and `Transfer-Encoding` (hyper drops the length, reads
/// the body chunked and closes afterwards; we refuse it with 400, as two
/// parsers on the path could disagree on where the body ends).
///
/// It only sees heads that start on an idle connection; a head pipelined
/// behind a request still being served gets hyper's handling.
#[derive(Default)]
pub struct HeadScan {
    name: [u8; 17],
    len: usize,
    in_name: bool,
    lines: u32,
    content_length: bool,
    transfer_encoding: bool,
    done: bool,
}

impl HeadScan {
    pub fn done(&self) -> bool {
        self.done
    }

    pub fn start(&mut self) {
        *self = HeadScan {
            in_name: true,
            ..HeadScan::default()
        };
    }

    /// Feeds bytes read while the head arrives. Once the blank line that
    /// ends the head is seen: `Some((ambiguous, bytes of this slice after
    /// the head))`.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<(bool, usize)> {
        if self.done {
            return None;
        }
        for (i, &b) in bytes.iter().enumerate() {
            if self.in_name {
                match b {
                    b'\n' if self.len == 0 && self.lines > 0 => {
                        self.done = true;
                        let ambiguous = self.content_length && self.transfer_encoding;
                        return Some((ambiguous, bytes.len() - i - 1));
                    }
                    b'\r' if self.len == 0 => {}
                    b'\n' => {
                        self.len = 0;
                        self.lines += 1;
                    }
                    b':' => {
                        let name = &self.name[..self.len.min(self.name.len())];
                        self.content_length |= name == b"content-length";
                        self.transfer_encoding |= name == b"transfer-encoding";
                        self.in_name = false;
                    }
                    _ => {
                        if self.len < self.name.len() {
                            self.name[self.len] = b.to_ascii_lowercase();
                        }
                        self.len += 1;
                    }
                }
            } else if b == b'\n' {
                self.in_name = true;
                self.len = 0;
                self.lines += 1;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_timeout_counts_from_the_first_byte() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let phase = Phase::default();
        let mut w = Watch::new(s(10), s(60), t0);
        assert_eq!(w.period(), Duration::from_millis(2500));
        // Idle for 30 s: nothing expires.
        assert_eq!(w.tick(&phase, t0 + s(30)), Verdict::Wait);
        // A head starts at 31 s; first seen at the 32 s tick.
        assert!(phase.on_read());
        assert!(!phase.on_read(), "more bytes of the same head");
        assert_eq!(w.tick(&phase, t0 + s(32)), Verdict::Wait);
        assert_eq!(w.tick(&phase, t0 + s(41)), Verdict::Wait);
        assert_eq!(w.tick(&phase, t0 + s(42)), Verdict::HeadTimeout);
    }

    #[test]
    fn a_new_request_restarts_the_idle_clock() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let phase = Phase::default();
        let mut w = Watch::new(s(10), s(60), t0);
        assert_eq!(w.tick(&phase, t0 + s(59)), Verdict::Wait);
        // A whole request served between two ticks: same state, new count.
        phase.on_read();
        assert!(!phase.active(Some(0)));
        phase.idle();
        assert_eq!(w.tick(&phase, t0 + s(61)), Verdict::Wait);
        assert_eq!(w.tick(&phase, t0 + s(120)), Verdict::Wait);
        assert_eq!(w.tick(&phase, t0 + s(121)), Verdict::IdleTimeout);
        // A long request is never cut by these timeouts.
        phase.on_read();
        phase.active(None);
        assert_eq!(w.tick(&phase, t0 + s(122)), Verdict::Wait);
        assert_eq!(w.tick(&phase, t0 + s(1000)), Verdict::Wait);
    }

    #[test]
    fn a_pipelined_head_starts_the_header_clock() {
        let phase = Phase::default();
        let mut s = HeadScan::default();
        let bytes = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HT";
        assert!(phase.on_read());
        s.start();
        let (ambiguous, rest) = s.feed(bytes).unwrap();
        assert!(!ambiguous);
        assert_eq!(rest, 11, "3 body bytes and 8 of the next head");
        phase.read_after_head(rest);
        phase.active(Some(3));
        phase.idle();
        assert_eq!(phase.state(), State::Head);
        // That pipelined request's own boundary is unknown: after it, idle.
        phase.active(Some(0));
        phase.idle();
        assert_eq!(phase.state(), State::Idle);
        // Exactly the body and nothing more: idle.
        assert!(phase.on_read());
        s.start();
        let (_, rest) = s
            .feed(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap();
        phase.read_after_head(rest);
        phase.active(Some(3));
        phase.idle();
        assert_eq!(phase.state(), State::Idle);
    }

    fn scan(chunks: &[&[u8]]) -> Option<bool> {
        let mut s = HeadScan::default();
        s.start();
        chunks
            .iter()
            .find_map(|c| s.feed(c))
            .map(|(ambiguous, _)| ambiguous)
    }

    #[test]
    fn scan_finds_length_with_chunked() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[head]), Some(true));
        // Split anywhere, any case, bare LF.
        let (a, b) = head.split_at(33);
        assert_eq!(scan(&[a, b]), Some(true));
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\ntransfer-ENCODING: chunked\nCONTENT-length: 5\n\n"]),
            Some(true)
        );
    }

    #[test]
    fn scan_passes_ordinary_heads() {
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]), Some(false));
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"]),
            Some(false)
        );
        // A value mentioning the other header does not count.
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nX-Note: transfer-encoding: chunked\r\nContent-Length: 5\r\n\r\n"]),
            Some(false)
        );
        // Not finished yet.
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]), None);
    }
}
