//! Raw upstreams for what the programmable backend cannot do: a canned one
//! answers fixed bytes (malformed or unusual responses); a mirror answers
//! each request with its own bytes exactly as they came off the wire.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use super::http::{decode_chunked, find};

/// A raw endpoint on 127.0.0.1 that answers every request head it reads with
/// `response`, byte for byte, and then, if `close`, closes the connection.
/// For what the programmable [`Backend`](crate::support::Backend) cannot say:
/// malformed answers, odd framing, interim responses.
pub fn canned_upstream(response: &'static [u8], close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if stream.write_all(response).is_err() || close {
                            return;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// A raw endpoint on 127.0.0.1 that answers each request with `200` and, as
/// the body, the request's bytes as received: head, and body with its
/// framing (chunk sizes, trailer section). Keeps the connection open.
pub fn mirror_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(len) = request_len(&buf) {
                        let request: Vec<u8> = buf.drain(..len).collect();
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                            request.len()
                        );
                        if stream.write_all(head.as_bytes()).is_err()
                            || stream.write_all(&request).is_err()
                        {
                            return;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// The length of the complete request at the start of `buf`, if there is one.
fn request_len(buf: &[u8]) -> Option<usize> {
    let head = find(buf, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    let header = |name: &str| {
        text.split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        let (_, _, used) = decode_chunked(&buf[head..]).ok()??;
        return Some(head + used);
    }
    let length: usize = header("content-length").map_or(Some(0), |v| v.parse().ok())?;
    (buf.len() >= head + length).then_some(head + length)
}
