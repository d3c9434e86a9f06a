//! A tiny blocking HTTP/1.1 client (one request per connection) and the
//! response parser that `raw.rs` shares. Meant for admin calls and for plain
//! `#[test]`s that have no runtime; use reqwest for anything fancier.
//!
//! ```ignore
//! let r = http_get(admin, "/healthz")?;          // Result<HttpResponse, String>
//! assert_eq!(r.status, 200);
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use super::raw::RawConn;

/// A parsed HTTP/1.x response (interim 1xx responses skipped).
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// In received order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The decoded body (chunked framing removed).
    pub body: Vec<u8>,
    /// A chunked body's trailer fields, in received order, names as sent.
    pub trailers: Vec<(String, String)>,
}

impl HttpResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// First value of trailer field `name` (case-insensitive).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// `GET path` with a 5 s timeout.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse, String> {
    http_request(addr, "GET", path, &[], b"", Duration::from_secs(5))
}

/// Sends one request with `Connection: close` (plus `Host` and, when there
/// is a body, `Content-Length`) and reads one response, within `timeout`.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);

    let mut conn =
        RawConn::connect_timeout(addr, timeout).map_err(|e| format!("connect to {addr}: {e}"))?;
    conn.write_all(&bytes)
        .map_err(|e| format!("write to {addr}: {e}"))?;
    if method == "HEAD" {
        conn.read_head_response(timeout)
    } else {
        conn.read_response(timeout)
    }
}

/// Parses one response from the start of `buf`. `Ok(None)` means more bytes
/// are needed; `eof` says none will come (then a body without length ends
/// here, and anything incomplete is an error). On success also returns how
/// many bytes the response used.
pub(super) fn parse_response(
    buf: &[u8],
    eof: bool,
    head_request: bool,
) -> Result<Option<(HttpResponse, usize)>, String> {
    let incomplete = |what: &str| {
        if eof {
            Err(format!("connection closed before {what}"))
        } else {
            Ok(None)
        }
    };
    let mut start = 0;
    loop {
        let Some(head_len) = find(&buf[start..], b"\r\n\r\n") else {
            return incomplete("a complete response head");
        };
        let head = String::from_utf8_lossy(&buf[start..start + head_len]).into_owned();
        let body_start = start + head_len + 4;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut words = status_line.splitn(3, ' ');
        let version = words.next().unwrap_or_default().to_owned();
        let status = words.next().and_then(|s| s.parse::<u16>().ok());
        let (true, Some(status)) = (version.starts_with("HTTP/"), status) else {
            return Err(format!("not an HTTP status line: {status_line:?}"));
        };
        if (100..200).contains(&status) && status != 101 {
            start = body_start; // interim response: the real one follows
            continue;
        }
        let mut resp = HttpResponse {
            version,
            status,
            reason: words.next().unwrap_or_default().to_owned(),
            headers: lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .collect(),
            body: Vec::new(),
            trailers: Vec::new(),
        };
        let rest = &buf[body_start..];
        if head_request || matches!(status, 101 | 204 | 304) {
            return Ok(Some((resp, body_start)));
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            return match decode_chunked(rest)? {
                Some((body, trailers, used)) => {
                    resp.body = body;
                    resp.trailers = trailers;
                    Ok(Some((resp, body_start + used)))
                }
                None => incomplete("the end of the chunked body"),
            };
        }
        if let Some(cl) = resp.header("content-length") {
            let n: usize = cl
                .parse()
                .map_err(|_| format!("bad content-length {cl:?}"))?;
            if rest.len() < n {
                return incomplete(&format!("{n} body bytes (got {})", rest.len()));
            }
            resp.body = rest[..n].to_vec();
            return Ok(Some((resp, body_start + n)));
        }
        // No length: the body runs to the end of the connection.
        if !eof {
            return Ok(None);
        }
        resp.body = rest.to_vec();
        return Ok(Some((resp, buf.len())));
    }
}

/// A decoded chunked body, its trailer fields and the bytes it took.
pub(super) type Chunked = (Vec<u8>, Vec<(String, String)>, usize);

/// Decodes a chunked body at the start of `buf`: `Ok(None)` if incomplete.
pub(super) fn decode_chunked(buf: &[u8]) -> Result<Option<Chunked>, String> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_len) = find(&buf[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[pos..pos + line_len]).into_owned();
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        pos += line_len + 2;
        if size == 0 {
            // Trailers, then an empty line.
            let mut trailers = Vec::new();
            loop {
                let Some(len) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                let line = String::from_utf8_lossy(&buf[pos..pos + len]).into_owned();
                pos += len + 2;
                if len == 0 {
                    return Ok(Some((body, trailers, pos)));
                }
                let (n, v) = line
                    .split_once(':')
                    .ok_or_else(|| format!("bad trailer line {line:?}"))?;
                trailers.push((n.trim().to_owned(), v.trim().to_owned()));
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        pos += size + 2;
    }
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
