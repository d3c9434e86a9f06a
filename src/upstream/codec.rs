//! HTTP/1.1 on the upstream side, as plain synchronous functions: encode a
//! request head, parse a response head, decide how the response body is
//! framed. The async shell (`mod.rs`, `body.rs`) only moves bytes.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Most headers a response may carry.
const MAX_HEADERS: usize = 128;

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    None,
    Length(u64),
    /// Length unknown up front: sent with chunked transfer coding.
    Chunked,
}

/// Writes `METHOD path HTTP/1.1`, the headers and the blank line. Adds the
/// framing header for a chunked body; `Content-Length` is the caller's.
pub fn encode_request_head(
    dst: &mut BytesMut,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: RequestBody,
) {
    encode_head(dst, method, path, headers, body, None);
}

/// `encode_request_head` for a request proxied to `endpoint`: one without a
/// `Host` (HTTP/1.0 allows that, HTTP/1.1 does not, RFC 9112 §3.2) gets the
/// endpoint's address, port omitted when 80, as nginx's default
/// `proxy_set_header Host $proxy_host` gives it.
pub fn encode_proxied_request_head(
    dst: &mut BytesMut,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: RequestBody,
    endpoint: SocketAddr,
) {
    encode_head(dst, method, path, headers, body, Some(endpoint));
}

fn encode_head(
    dst: &mut BytesMut,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: RequestBody,
    endpoint: Option<SocketAddr>,
) {
    let size = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>();
    dst.reserve(method.as_str().len() + path.len() + size + 64);
    dst.put_slice(method.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(path.as_bytes());
    dst.put_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    for (name, value) in headers {
        // A standard name compares by its tag, without hashing.
        has_host |= name == header::HOST;
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    if let (false, Some(endpoint)) = (has_host, endpoint) {
        use std::fmt::Write;
        // A `SocketAddr` displays as a valid Host value (IPv6 in brackets).
        let _ = match endpoint.port() {
            80 => match endpoint.ip() {
                std::net::IpAddr::V4(ip) => write!(dst, "host: {ip}\r\n"),
                std::net::IpAddr::V6(ip) => write!(dst, "host: [{ip}]\r\n"),
            },
            _ => write!(dst, "host: {endpoint}\r\n"),
        };
    }
    if body == RequestBody::Chunked {
        dst.put_slice(b"transfer-encoding: chunked\r\n");
    }
    dst.put_slice(b"\r\n");
}

/// The size line of a chunk (`<hex>\r\n`), without an allocation.
pub struct ChunkSize {
    buf: [u8; 18],
    start: usize,
}

impl ChunkSize {
    pub fn new(len: usize) -> ChunkSize {
        let mut c = ChunkSize {
            buf: [0; 18],
            start: 16,
        };
        c.buf[16] = b'\r';
        c.buf[17] = b'\n';
        let mut n = len;
        loop {
            c.start -= 1;
            c.buf[c.start] = b"0123456789abcdef"[n & 15];
            n >>= 4;
            if n == 0 {
                return c;
            }
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
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

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// Bytes of the buffer the head took.
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    #[error("response head larger than {0} bytes")]
    TooLarge(usize),
}

/// Parses a response head from the start of `buf`; `Ok(None)` when more
/// bytes are needed. Copies `buf`: a connection uses `take_response_head`.
pub fn parse_response_head(buf: &[u8], max_len: usize) -> Result<Option<ResponseHead>, ParseError> {
    take_response_head(&mut BytesMut::from(buf), max_len)
}

/// `parse_response_head` that takes the head off the front of `buf` when it
/// is complete. The header values are slices of the head's bytes, not
/// copies: one shared buffer instead of an allocation per value.
pub fn take_response_head(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<ResponseHead>, ParseError> {
    // Uninitialised: 4 KiB of slots are not written before each parse.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_len => {
            return Err(ParseError::TooLarge(max_len));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooLarge(max_len)),
        Err(_) => return Err(ParseError::Malformed("not an HTTP/1.x response")),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ParseError::Malformed("bad status code"))?;
    let version = match res.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = buf.as_ptr() as usize;
    let count = res.headers.len();
    // Sized to the head: a fixed array of MAX_HEADERS would be zeroed
    // (4 KiB) on every parse, which costs more than this one allocation.
    let spans: Vec<(Span, Span)> = res
        .headers
        .iter()
        .map(|h| (Span::of(base, h.name.as_bytes()), Span::of(base, h.value)))
        .collect();
    let head = buf.split_to(len).freeze();
    // Room for what the pipeline adds (request id, cookie, rewriting).
    let mut headers = HeaderMap::with_capacity(count + 4);
    for (name, value) in &spans[..count] {
        let name = name
            .get(&head)
            .and_then(|n| HeaderName::from_bytes(n).ok())
            .ok_or(ParseError::Malformed("bad header name"))?;
        let value = value
            .slice(&head)
            .and_then(|v| HeaderValue::from_maybe_shared(v).ok())
            .ok_or(ParseError::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        len,
    }))
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body: HEAD, 1xx, 204, 304.
    None,
    Length(u64),
    Chunked,
    /// Until the endpoint closes; the connection cannot be reused.
    UntilClose,
}

/// The headers framing and persistence depend on, found in one pass over
/// the head (a response has few headers; each hashed lookup costs more
/// than comparing them all by their standard-name tags).
struct Framing<'a> {
    /// The first `Transfer-Encoding` line.
    te: Option<&'a HeaderValue>,
    /// The first `Content-Length` line...
    length: Option<&'a HeaderValue>,
    /// ...and whether a later one differs.
    length_conflict: bool,
    connection_close: bool,
    connection_keep_alive: bool,
}

fn framing_headers(headers: &HeaderMap) -> Framing<'_> {
    let mut f = Framing {
        te: None,
        length: None,
        length_conflict: false,
        connection_close: false,
        connection_keep_alive: false,
    };
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING {
            f.te = f.te.or(Some(value));
        } else if name == header::CONTENT_LENGTH {
            match f.length {
                None => f.length = Some(value),
                Some(first) => f.length_conflict |= first != value,
            }
        } else if name == header::CONNECTION {
            for token in value.to_str().unwrap_or("").split(',').map(str::trim) {
                f.connection_close |= token.eq_ignore_ascii_case("close");
                f.connection_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    f
}

pub fn response_body(method: &Method, head: &ResponseHead) -> Result<ResponseBody, ParseError> {
    body_framing(method, head, &framing_headers(&head.headers))
}

/// `response_body` and `keep_alive` from one pass over the headers.
pub fn response_body_and_keep_alive(
    method: &Method,
    head: &ResponseHead,
) -> Result<(ResponseBody, bool), ParseError> {
    let found = framing_headers(&head.headers);
    Ok((body_framing(method, head, &found)?, persists(head, &found)))
}

fn body_framing(
    method: &Method,
    head: &ResponseHead,
    found: &Framing<'_>,
) -> Result<ResponseBody, ParseError> {
    let s = head.status.as_u16();
    if method == Method::HEAD || (100..200).contains(&s) || s == 204 || s == 304 {
        return Ok(ResponseBody::None);
    }
    if let Some(te) = found.te {
        // Chunked must be the final coding; anything else is read to close.
        let last = te
            .to_str()
            .ok()
            .and_then(|t| t.rsplit(',').next())
            .map(str::trim);
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case("chunked") => ResponseBody::Chunked,
            _ => ResponseBody::UntilClose,
        });
    }
    match found.length {
        None => Ok(ResponseBody::UntilClose),
        Some(first) => {
            let n: u64 = first
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(ParseError::Malformed("bad content-length"))?;
            if found.length_conflict {
                return Err(ParseError::Malformed("conflicting content-length"));
            }
            Ok(ResponseBody::Length(n))
        }
    }
}

/// Whether the connection may carry another request after this response.
pub fn keep_alive(head: &ResponseHead) -> bool {
    persists(head, &framing_headers(&head.headers))
}

fn persists(head: &ResponseHead, found: &Framing<'_>) -> bool {
    // Length and chunked together: the body was read as chunked, but the
    // endpoint's framing is suspect; do not trust the connection further.
    if found.te.is_some() && found.length.is_some() {
        return false;
    }
    if found.connection_close {
        return false;
    }
    found.connection_keep_alive || head.version != Version::HTTP_10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_request_head() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.com"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let mut dst = BytesMut::new();
        encode_request_head(&mut dst, &Method::POST, "/p?q=1", &h, RequestBody::Chunked);
        assert_eq!(
            &dst[..],
            b"POST /p?q=1 HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\nx-a: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn a_request_without_host_gets_the_endpoints() {
        let mut dst = BytesMut::new();
        let h = HeaderMap::new();
        let to = |a: &str| a.parse().expect("an address");
        encode_proxied_request_head(
            &mut dst,
            &Method::GET,
            "/",
            &h,
            RequestBody::None,
            to("10.0.0.1:8080"),
        );
        assert_eq!(&dst[..], b"GET / HTTP/1.1\r\nhost: 10.0.0.1:8080\r\n\r\n");
        dst.clear();
        encode_proxied_request_head(
            &mut dst,
            &Method::GET,
            "/",
            &h,
            RequestBody::None,
            to("[::1]:80"),
        );
        assert_eq!(&dst[..], b"GET / HTTP/1.1\r\nhost: [::1]\r\n\r\n");
        dst.clear();
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("kept.test"));
        encode_proxied_request_head(
            &mut dst,
            &Method::GET,
            "/",
            &h,
            RequestBody::None,
            to("10.0.0.1:80"),
        );
        assert_eq!(&dst[..], b"GET / HTTP/1.1\r\nhost: kept.test\r\n\r\n");
    }

    #[test]
    fn parses_heads_and_framing() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-B: b1\r\n\r\nhello";
        assert!(parse_response_head(&raw[..20], 1024).unwrap().is_none());
        let head = parse_response_head(raw, 1024).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.len, raw.len() - 5);
        assert_eq!(head.headers["x-b"], "b1");
        assert_eq!(
            response_body(&Method::GET, &head),
            Ok(ResponseBody::Length(5))
        );
        assert_eq!(response_body(&Method::HEAD, &head), Ok(ResponseBody::None));
        assert!(keep_alive(&head));

        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n";
        let head = parse_response_head(chunked, 1024).unwrap().unwrap();
        assert_eq!(
            response_body(&Method::GET, &head),
            Ok(ResponseBody::Chunked)
        );
        assert!(!keep_alive(&head));

        let old = b"HTTP/1.0 200 OK\r\n\r\n";
        let head = parse_response_head(old, 1024).unwrap().unwrap();
        assert_eq!(
            response_body(&Method::GET, &head),
            Ok(ResponseBody::UntilClose)
        );
        assert!(!keep_alive(&head));

        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        let head = parse_response_head(no_content, 1024).unwrap().unwrap();
        assert_eq!(response_body(&Method::GET, &head), Ok(ResponseBody::None));
    }

    #[test]
    fn refuses_bad_heads() {
        assert!(parse_response_head(b"HTTP/1.1 abc OK\r\n\r\n", 1024).is_err());
        assert!(parse_response_head(b"garbage\r\n\r\n", 1024).is_err());
        assert_eq!(
            parse_response_head(&[b'a'; 100][..], 50).unwrap_err(),
            ParseError::Malformed("not an HTTP/1.x response")
        );
        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(100));
        assert_eq!(
            parse_response_head(big.as_bytes(), 50).unwrap_err(),
            ParseError::TooLarge(50)
        );
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        let head = parse_response_head(two, 1024).unwrap().unwrap();
        assert!(response_body(&Method::GET, &head).is_err());
    }
}

/// Where a slice `httparse` returned lies in the buffer it parsed, kept
/// across taking the head off that buffer.
#[derive(Clone, Copy)]
pub(crate) struct Span {
    start: usize,
    len: usize,
}

impl Span {
    pub(crate) const EMPTY: Span = Span { start: 0, len: 0 };

    /// `part`, a slice of the buffer that starts at address `base`.
    pub(crate) fn of(base: usize, part: &[u8]) -> Span {
        if part.is_empty() {
            return Span::EMPTY;
        }
        Span {
            start: (part.as_ptr() as usize).wrapping_sub(base),
            len: part.len(),
        }
    }

    /// The same bytes in `head`; `None` if they are not within it (never,
    /// for a slice of the parsed buffer).
    pub(crate) fn get(self, head: &[u8]) -> Option<&[u8]> {
        head.get(self.start..self.start.checked_add(self.len)?)
    }

    /// `get`, shared with `head`, not copied.
    pub(crate) fn slice(self, head: &bytes::Bytes) -> Option<bytes::Bytes> {
        let end = self.start.checked_add(self.len)?;
        (end <= head.len()).then(|| head.slice(self.start..end))
    }
}
