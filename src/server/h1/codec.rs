//! HTTP/1.1 on the client side, as plain synchronous functions: parse a
//! request head and decide how its body is framed, encode a response head.
//! The connection driver (`conn.rs`) only moves bytes. The upstream side's
//! twin is `upstream::codec`.
//!
//! What is refused here, so that Levee and a backend can never read one
//! message two ways (request smuggling):
//! - anything `httparse` refuses: a malformed request line, a header line
//!   without a colon, obs-fold (a continuation line), control characters;
//! - `Content-Length` that is not a plain decimal number, or several that
//!   disagree (`5, 5` and two equal lines are one length, as RFC 9112 §6.3
//!   allows);
//! - `Transfer-Encoding` on HTTP/1.0, or whose last coding is not `chunked`;
//! - both `Content-Length` and `Transfer-Encoding`: not an error of the head
//!   but `Framing::Ambiguous`, which the pipeline answers with its JSON 400
//!   `bad_framing` and a close.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
// `Span` lives in `upstream::codec`, which parses the endpoint's heads the
// same way and imports nothing of Levee.
use crate::upstream::codec::Span;

/// Header slots for one parse. A request with more is refused with 431;
/// the pipeline refuses more than 100 with its JSON 431 already.
pub const MAX_HEADERS: usize = 128;

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Both `Content-Length` and `Transfer-Encoding`: refused by the
    /// pipeline; no body is read and the connection closes.
    Ambiguous,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the client lets the connection carry another request.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: answer `100 Continue` before reading the body.
    pub expect_continue: bool,
    /// It carries an `Upgrade` header (it may ask for a WebSocket tunnel).
    pub upgrade: bool,
    /// Bytes of the buffer the head took.
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("request head too large")]
    TooLarge,
}

/// Parses a request head from the start of `buf`; `Ok(None)` when more
/// bytes are needed. A head not complete within `max_len` bytes is
/// `TooLarge`. Copies `buf`: the connection uses `take_request_head`.
pub fn parse_request_head(buf: &[u8], max_len: usize) -> Result<Option<RequestHead>, HeadError> {
    take_request_head(&mut BytesMut::from(buf), max_len)
}

/// `parse_request_head` that takes the head off the front of `buf` when it
/// is complete. The URI and the header values are slices of the head's
/// bytes, not copies: one shared buffer instead of an allocation per value.
pub fn take_request_head(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<RequestHead>, HeadError> {
    // Uninitialised: 4 KiB of slots are not written before each parse.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len <= max_len => len,
        Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() >= max_len => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("not an HTTP/1.x request")),
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("bad method"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Malformed("unsupported HTTP version")),
    };
    let path = req.path.ok_or(HeadError::Malformed("bad request target"))?;
    let base = buf.as_ptr() as usize;
    let path = Span::of(base, path.as_bytes());
    let count = req.headers.len();
    // Sized to the head: a fixed array of MAX_HEADERS would be zeroed
    // (4 KiB) on every parse, which costs more than this one allocation.
    let spans: Vec<(Span, Span)> = req
        .headers
        .iter()
        .map(|h| (Span::of(base, h.name.as_bytes()), Span::of(base, h.value)))
        .collect();
    let head = buf.split_to(len).freeze();
    let uri = path
        .slice(&head)
        .and_then(|p| Uri::from_maybe_shared(p).ok())
        .ok_or(HeadError::Malformed("bad request target"))?;
    // Room for what the pipeline adds (forwarding headers, request id,
    // traceparent) without growing the map.
    let mut headers = HeaderMap::with_capacity(count + 8);
    // Which of the headers read below are present, noted while the names
    // are at hand: most requests carry none, and their lookups are spared.
    let (mut framed, mut connection, mut expect, mut upgrade) = (false, false, false, false);
    for (name, value) in &spans[..count] {
        let name = name
            .get(&head)
            .and_then(|n| HeaderName::from_bytes(n).ok())
            .ok_or(HeadError::Malformed("bad header name"))?;
        framed |= name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING;
        connection |= name == header::CONNECTION;
        expect |= name == header::EXPECT;
        upgrade |= name == header::UPGRADE;
        let value = value
            .slice(&head)
            .and_then(|v| HeaderValue::from_maybe_shared(v).ok())
            .ok_or(HeadError::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    let framing = if framed {
        framing(version, &headers)?
    } else {
        Framing::Empty
    };
    let keep_alive = if connection {
        keep_alive(version, &headers)
    } else {
        version == Version::HTTP_11
    };
    let expect_continue = expect
        && version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
        len,
    }))
}

fn framing(version: Version, headers: &HeaderMap) -> Result<Framing, HeadError> {
    let te = headers.get_all(header::TRANSFER_ENCODING);
    let length = content_length(headers)?;
    if te.iter().next().is_none() {
        return Ok(match length {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        });
    }
    if version == Version::HTTP_10 {
        return Err(HeadError::Malformed("Transfer-Encoding on HTTP/1.0"));
    }
    if length.is_some() {
        return Ok(Framing::Ambiguous);
    }
    // The codings are a list over every line; chunked must come last
    // (RFC 9112 §6.3: otherwise the length cannot be determined).
    let last = te
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|c| c.trim_ascii())
        .rfind(|c| !c.is_empty());
    match last {
        Some(c) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
        _ => Err(HeadError::Malformed(
            "Transfer-Encoding does not end in chunked",
        )),
    }
}

/// The one length all `Content-Length` values agree on.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, HeadError> {
    let mut found = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Malformed("bad Content-Length"));
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match found {
                Some(m) if m != n => {
                    return Err(HeadError::Malformed("conflicting Content-Length"));
                }
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &[u8]| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
    };
    match version {
        Version::HTTP_11 => !has(b"close"),
        _ => has(b"keep-alive"),
    }
}

/// How the response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD, 1xx, 204, 304), headers as they are.
    None,
    /// `Content-Length` (added when missing).
    Length(u64),
    /// Length unknown, HTTP/1.1 client: chunked transfer coding.
    Chunked,
    /// Length unknown, HTTP/1.0 client: until the connection closes.
    UntilClose,
}

/// What a response's own headers say about its framing, its date and the
/// connection, read in one pass: each `HeaderMap` lookup hashes the name,
/// and a response head has few headers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFacts {
    /// The first `Content-Length`, if it is a number.
    pub length: Option<u64>,
    /// It carries `Date`.
    pub date: bool,
    /// A `Connection` line that is `close`.
    pub close: bool,
}

pub fn response_facts(headers: &HeaderMap) -> ResponseFacts {
    let mut facts = ResponseFacts::default();
    let mut seen_length = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            if !seen_length {
                seen_length = true;
                facts.length = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|v| v.parse().ok());
            }
        } else if name == header::DATE {
            facts.date = true;
        } else if name == header::CONNECTION {
            facts.close |= value.as_bytes().eq_ignore_ascii_case(b"close");
        }
    }
    facts
}

/// How the response to a `method` request on `version`, with `facts` from
/// its headers and a body of `exact` length if known, is framed.
pub fn response_framing(
    method: &Method,
    version: Version,
    status: StatusCode,
    facts: &ResponseFacts,
    exact: Option<u64>,
) -> ResponseFraming {
    let s = status.as_u16();
    if method == Method::HEAD || (100..200).contains(&s) || s == 204 || s == 304 {
        return ResponseFraming::None;
    }
    match (facts.length.or(exact), version) {
        (Some(n), _) => ResponseFraming::Length(n),
        (None, Version::HTTP_11) => ResponseFraming::Chunked,
        (None, _) => ResponseFraming::UntilClose,
    }
}

/// What the `Connection` header of a response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Nothing: HTTP/1.1 stays open by default.
    Default,
    /// `keep-alive`: an HTTP/1.0 client must be told.
    KeepAlive,
    /// `close`: the connection ends after this response.
    Close,
}

/// Writes the status line, the headers, `date` (if given: the headers
/// carry none), the framing header and the `Connection` header.
/// A `101 Switching Protocols` head: every header as given, `Connection`
/// (`upgrade`) and `Upgrade` included, and no body framing; the connection
/// is a tunnel after it.
pub fn encode_upgrade_head(dst: &mut BytesMut, headers: &HeaderMap, date: Option<&[u8]>) {
    dst.put_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in headers {
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    if let Some(date) = date {
        dst.put_slice(b"date: ");
        dst.put_slice(date);
        dst.put_slice(b"\r\n");
    }
    dst.put_slice(b"\r\n");
}

pub fn encode_response_head(
    dst: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    persist: Persist,
    date: Option<&[u8]>,
) {
    let size = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>();
    dst.reserve(size + 96);
    dst.put_slice(b"HTTP/1.1 ");
    dst.put_slice(status.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    dst.put_slice(b"\r\n");
    let mut has_length = false;
    for (name, value) in headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
            continue;
        }
        has_length |= name == header::CONTENT_LENGTH;
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    if let Some(date) = date {
        dst.put_slice(b"date: ");
        dst.put_slice(date);
        dst.put_slice(b"\r\n");
    }
    match framing {
        ResponseFraming::Length(n) if !has_length => {
            let mut digits = itoa_buf(n);
            dst.put_slice(b"content-length: ");
            dst.put_slice(digits.as_bytes_mut());
            dst.put_slice(b"\r\n");
        }
        ResponseFraming::Chunked => dst.put_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    match persist {
        Persist::Default => {}
        Persist::KeepAlive => dst.put_slice(b"connection: keep-alive\r\n"),
        Persist::Close => dst.put_slice(b"connection: close\r\n"),
    }
    dst.put_slice(b"\r\n");
}

/// Decimal digits of `n` without an allocation.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut n: u64) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

/// Writes a chunk header for `len` bytes of data.
pub fn encode_chunk_size(dst: &mut BytesMut, len: usize) {
    let mut tmp = [0u8; 18];
    let mut i = tmp.len() - 2;
    tmp[16] = b'\r';
    tmp[17] = b'\n';
    let mut n = len;
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&tmp[i..]);
}

/// Writes the last chunk, `trailers` (if any) and the final blank line.
pub fn encode_chunked_end(dst: &mut BytesMut, trailers: Option<&HeaderMap>) {
    dst.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    dst.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request_head(s.as_bytes(), 8192)
    }

    fn head(s: &str) -> RequestHead {
        match parse(s) {
            Ok(Some(h)) => h,
            other => panic!("{s:?} should parse: {other:?}"),
        }
    }

    #[test]
    fn parses_a_simple_request() {
        let h = head("GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nrest");
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri.path(), "/a");
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive && !h.expect_continue);
        assert_eq!(h.len, "GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n".len());
    }

    #[test]
    fn partial_then_too_large() {
        assert!(matches!(parse("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None)));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(parse(&big).err(), Some(HeadError::TooLarge));
    }

    #[test]
    fn framing_rules() {
        let f = |s: &str| parse(s).map(|h| h.map(|h| h.framing));
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Ok(Some(Framing::Length(5)))
        );
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(Some(Framing::Length(5)))
        );
        assert!(f("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").is_err());
        assert!(f("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n").is_err());
        assert!(f("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n").is_err());
        assert!(f("POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n").is_err());
        assert_eq!(
            f("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Ok(Some(Framing::Chunked))
        );
        assert!(f("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").is_err());
        assert!(f("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert_eq!(
            f("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Some(Framing::Ambiguous))
        );
    }

    #[test]
    fn refuses_obs_fold_and_bad_lines() {
        assert!(parse("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n").is_err());
        assert!(parse("GET / HTTP/1.1\r\nBad Header\r\n\r\n").is_err());
        assert!(parse("GET /a b HTTP/1.1\r\n\r\n").is_err());
        assert!(parse("PRI * HTTP/2.0\r\n\r\n").is_err());
    }

    #[test]
    fn keep_alive_and_expect() {
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(head("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
    }

    #[test]
    fn encodes_response_heads() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        let mut out = BytesMut::new();
        encode_response_head(
            &mut out,
            StatusCode::OK,
            &h,
            ResponseFraming::Length(12),
            Persist::Default,
            None,
        );
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 12\r\n\r\n"
        );
        out.clear();
        encode_response_head(
            &mut out,
            StatusCode::OK,
            &h,
            ResponseFraming::Chunked,
            Persist::Close,
            Some(b"D"),
        );
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: D\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        out.clear();
        encode_chunk_size(&mut out, 255);
        encode_chunked_end(&mut out, Some(&h));
        assert_eq!(&out[..], b"ff\r\n0\r\nx-a: 1\r\n\r\n");
    }
}
