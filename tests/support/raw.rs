//! Raw TCP clients for what a well-behaved HTTP client would never send:
//! malformed heads, pipelining, half requests, slowloris.
//!
//! - [`send_raw`]: write bytes, read until the server closes or a timeout;
//!   returns everything received, the first status, whether EOF was seen, and
//!   the elapsed time.
//! - [`RawConn`]: a connection you drive step by step (write, read one
//!   response, write again on the same connection, wait for close).
//! - [`send_slowly`]: one byte per interval (bounded), reporting what the
//!   server answered and when it closed.
//!
//! ```ignore
//! let r = send_raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", Duration::from_secs(2));
//! assert_eq!(r.status, Some(400));
//! assert!(r.closed);
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::http::{HttpResponse, parse_response};

/// What [`send_raw`] saw.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// Every byte received.
    pub bytes: Vec<u8>,
    /// `bytes` as (lossy) text.
    pub text: String,
    /// Status code of the first status line, if any arrived.
    pub status: Option<u16>,
    /// Whether the server closed the connection (EOF or reset) in time.
    pub closed: bool,
    /// From connect to EOF, or to the timeout.
    pub elapsed: Duration,
    /// Connect, write or read error (a reset counts as `closed` too).
    pub error: Option<String>,
}

impl RawResponse {
    fn new(bytes: Vec<u8>, closed: bool, elapsed: Duration, error: Option<String>) -> RawResponse {
        RawResponse {
            status: statuses(&bytes).first().copied(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            closed,
            elapsed,
            error,
        }
    }

    /// Status codes of every status line received, in order (pipelining).
    pub fn statuses(&self) -> Vec<u16> {
        statuses(&self.bytes)
    }

    /// The first complete response, parsed.
    pub fn parse(&self) -> Result<HttpResponse, String> {
        match parse_response(&self.bytes, true, false)? {
            Some((r, _)) => Ok(r),
            None => Err("no complete response".into()),
        }
    }
}

/// Status codes of the responses in `bytes`, parsed one after the other;
/// an incomplete last response still counts if its status line arrived.
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match parse_response(rest, true, false) {
            Ok(Some((resp, used))) if used > 0 => {
                out.push(resp.status);
                rest = &rest[used..];
            }
            _ => {
                out.extend(first_status(rest));
                break;
            }
        }
    }
    out
}

/// The status in `HTTP/1.x NNN ...` at the very start of `bytes`.
fn first_status(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|&b| b == b'\r' || b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    words.next()?.parse().ok()
}

/// Connects, writes `bytes` and reads until the server closes or `timeout`
/// (from connect) passes. Never panics on network errors: they end up in
/// `error`. A write the server cut short is reported and reading goes on, so
/// an early error response is still seen.
pub fn send_raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> RawResponse {
    let start = Instant::now();
    let mut conn = match RawConn::connect_timeout(addr, timeout) {
        Ok(c) => c,
        Err(e) => {
            return RawResponse::new(
                Vec::new(),
                false,
                start.elapsed(),
                Some(format!("connect: {e}")),
            );
        }
    };
    let write_error = conn.write_all(bytes).err().map(|e| format!("write: {e}"));
    let closed = conn.read_until_close(timeout.saturating_sub(start.elapsed()));
    let error = write_error.or(conn.error.take());
    RawResponse::new(
        std::mem::take(&mut conn.buf),
        closed,
        start.elapsed(),
        error,
    )
}

/// What [`send_slowly`] saw.
#[derive(Clone, Debug)]
pub struct SlowResult {
    /// Bytes written before the server answered, closed, or time ran out.
    pub bytes_sent: usize,
    /// Everything the server sent.
    pub received: RawResponse,
    /// When the first response byte arrived, from connect.
    pub answered_after: Option<Duration>,
    /// When the server closed the connection, from connect.
    pub closed_after: Option<Duration>,
}

/// Writes `bytes` one byte every `interval`, for at most `max` in total.
/// Stops writing as soon as the server sends anything or closes. Then reads
/// until the server closes, or until a complete response that does not say
/// `Connection: close`, or until `max`.
pub fn send_slowly(
    addr: SocketAddr,
    bytes: &[u8],
    interval: Duration,
    max: Duration,
) -> SlowResult {
    let start = Instant::now();
    let deadline = start + max;
    let mut result = SlowResult {
        bytes_sent: 0,
        received: RawResponse::new(Vec::new(), false, Duration::ZERO, None),
        answered_after: None,
        closed_after: None,
    };
    let mut conn = match RawConn::connect_timeout(addr, max) {
        Ok(c) => c,
        Err(e) => {
            result.received.error = Some(format!("connect: {e}"));
            return result;
        }
    };
    let mut write_error = None;
    for (i, byte) in bytes.iter().enumerate() {
        let send_at = start + interval * i as u32;
        // Pace by waiting for the server in between: we see an answer or a
        // close as soon as it happens.
        while Instant::now() < send_at.min(deadline) && conn.buf.is_empty() && !conn.eof {
            conn.read_some(send_at.min(deadline));
        }
        if Instant::now() >= deadline || !conn.buf.is_empty() || conn.eof {
            break;
        }
        if let Err(e) = conn.stream.write_all(std::slice::from_ref(byte)) {
            write_error = Some(format!("write after {} bytes: {e}", result.bytes_sent));
            break;
        }
        result.bytes_sent += 1;
    }
    let mut answered = (!conn.buf.is_empty()).then(|| start.elapsed());
    while !conn.eof && Instant::now() < deadline {
        if let Ok(Some((resp, _))) = parse_response(&conn.buf, false, false) {
            let closing = resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            if !closing {
                break;
            }
        }
        conn.read_some(deadline);
        if answered.is_none() && !conn.buf.is_empty() {
            answered = Some(start.elapsed());
        }
    }
    result.answered_after = answered;
    result.closed_after = conn
        .eof
        .then(|| conn.eof_at.unwrap_or(start).duration_since(start));
    let error = write_error.or(conn.error.take());
    result.received = RawResponse::new(
        std::mem::take(&mut conn.buf),
        conn.eof,
        start.elapsed(),
        error,
    );
    result
}

/// A client connection driven by hand. Received bytes accumulate in a buffer;
/// `read_response` takes one response off its front.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    eof_at: Option<Instant>,
    error: Option<String>,
}

impl RawConn {
    /// Connects with a 5 s timeout.
    pub fn connect(addr: SocketAddr) -> io::Result<RawConn> {
        RawConn::connect_timeout(addr, Duration::from_secs(5))
    }

    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<RawConn> {
        let stream = TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(1)))?;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            stream,
            buf: Vec::new(),
            eof: false,
            eof_at: None,
            error: None,
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Closes our sending side (the server sees EOF on its read).
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }

    /// Reads one response (interim 1xx skipped), waiting at most `timeout`.
    /// Bytes after it stay buffered for the next call.
    pub fn read_response(&mut self, timeout: Duration) -> Result<HttpResponse, String> {
        self.read_parsed(timeout, false)
    }

    /// Like `read_response`, for the answer to a `HEAD` request (no body).
    pub fn read_head_response(&mut self, timeout: Duration) -> Result<HttpResponse, String> {
        self.read_parsed(timeout, true)
    }

    fn read_parsed(&mut self, timeout: Duration, head: bool) -> Result<HttpResponse, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((resp, used)) = parse_response(&self.buf, self.eof, head)? {
                self.buf.drain(..used);
                return Ok(resp);
            }
            if Instant::now() >= deadline {
                let got = String::from_utf8_lossy(&self.buf);
                return Err(format!(
                    "no complete response within {timeout:?}; got {got:?}"
                ));
            }
            self.read_some(deadline);
        }
    }

    /// Reads until the server closes (returns true) or `timeout` passes
    /// (false). What arrived is in `received()`.
    pub fn read_until_close(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.eof && Instant::now() < deadline {
            self.read_some(deadline);
        }
        self.eof
    }

    /// Bytes received and not yet taken by `read_response`.
    pub fn received(&self) -> &[u8] {
        &self.buf
    }

    /// Whether the server has closed (EOF or reset) as far as we have read.
    pub fn peer_closed(&self) -> bool {
        self.eof
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// One read, waiting until `deadline` at most. EOF and resets set `eof`.
    fn read_some(&mut self, deadline: Instant) {
        if self.eof {
            return;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() || self.stream.set_read_timeout(Some(wait)).is_err() {
            return;
        }
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => self.mark_eof(None),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => self.mark_eof(Some(format!("read: {e}"))),
        }
    }

    fn mark_eof(&mut self, error: Option<String>) {
        self.eof = true;
        self.eof_at = Some(Instant::now());
        if error.is_some() {
            self.error = error;
        }
    }
}
