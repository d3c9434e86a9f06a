//! Active health checks: one probe against one endpoint, with its verdict
//! and the reason for it. Scheduling, thresholds and state changes live
//! elsewhere (`state`); this is only "ask once, say what happened".
//!
//! HTTP checks reuse the upstream HTTP/1.1 pieces (`Conn`, `codec`,
//! `chunked`) instead of a client library, so a check speaks to the
//! endpoint exactly as proxied traffic does. Each check opens its own
//! connection and asks the endpoint to close it: a check must not borrow
//! from, or leave anything in, the request pool it judges.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::NotPassed;
use crate::http1::chunked::{Decoder, Step};
use crate::shortage::Shortage;
use crate::upstream::Conn;
use crate::upstream::codec::{self, RequestBody, ResponseBody, ResponseHead};
use crate::upstream::conn::{self, ConnectError};
use crate::upstream::source::{self, Sources};
use crate::upstream::tls::EndpointTls;

/// Largest response head accepted from a check.
const MAX_HEAD: usize = 16 * 1024;
/// Most of a body read for the deep check; past it the body is not judged.
const MAX_BODY: usize = 64 * 1024;
/// How much of what an endpoint sends a scripted TCP check searches.
const MAX_EXPECT: usize = 4 * 1024;
const USER_AGENT: &str = "levee-health-check";

/// What an active check does.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// A TCP connect succeeds.
    Tcp,
    /// A TCP connect, `send` written, and `expect` among the first
    /// `MAX_EXPECT` bytes the endpoint sends (either may be empty).
    TcpScript { send: Vec<u8>, expect: Vec<u8> },
    /// An HTTP/1.1 request; `expect`: the statuses that pass (empty = 200..=299).
    Http {
        method: Method,
        path: String,
        host: Option<String>,
        expect: Vec<u16>,
    },
    /// A PostgreSQL or Redis server in the wanted role (`role.rs`).
    Role(super::role::RoleProbe),
    /// `grpc.health.v1.Health/Check` for `service` ("": the server) answers
    /// SERVING (`grpc.rs`).
    Grpc { service: String },
}

/// One check's result, and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    Degraded(String),
    Fail(String),
    /// Not checked: Levee was short of file descriptors, ports or memory to
    /// connect (`crate::shortage`). Says nothing about the endpoint.
    Shortage(Shortage, String),
}

/// Runs `probe` against `address`, over TLS when `tls` says so (then a TCP
/// check passes only when the handshake does too). Everything (connect,
/// handshake, request, response head and body) shares the one `timeout`:
/// an endpoint that accepts and then stalls is as unhealthy as one that
/// never accepts.
pub async fn check(
    address: SocketAddr,
    sources: Option<&Sources>,
    probe: &Probe,
    timeout: Duration,
    tls: Option<&EndpointTls>,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + timeout;
    let run = async {
        if let Probe::Role(role) = probe {
            // Its client speaks over a connection of its own.
            let tcp = source::connect(sources, address)
                .await
                .map_err(|e| NotPassed::connecting("connect failed", &e))?;
            let seen = super::role::ask(tcp, role, timeout).await?;
            return super::role::judge(role, seen)
                .map(|()| Outcome::Pass)
                .map_err(NotPassed::Failed);
        }
        if let Probe::Grpc { service } = probe {
            // HTTP/2 on a connection of its own.
            let tcp = source::connect(sources, address)
                .await
                .map_err(|e| NotPassed::connecting("connect failed", &e))?;
            return super::grpc::check(tcp, address, service, tls)
                .await
                .map(|()| Outcome::Pass)
                .map_err(NotPassed::Failed);
        }
        let mut conn = match Conn::connect(address, sources, timeout, tls).await {
            Ok(conn) => conn,
            Err(ConnectError::Refused(e)) if let Some(s) = Shortage::of(&e) => {
                return Err(NotPassed::Shortage(s, format!("connect failed: {e}")));
            }
            Err(e) => return Err(connect_error(e, timeout).into()),
        };
        match probe {
            Probe::Tcp | Probe::Role(_) | Probe::Grpc { .. } => Ok(Outcome::Pass),
            Probe::TcpScript { send, expect } => tcp_script(&mut conn, send, expect, deadline)
                .await
                .map(|()| Outcome::Pass)
                .map_err(NotPassed::Failed),
            Probe::Http {
                method,
                path,
                host,
                expect,
            } => http_check(&mut conn, address, method, path, host.as_deref(), expect)
                .await
                .map_err(NotPassed::Failed),
        }
    };
    match tokio::time::timeout_at(deadline, run).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(NotPassed::Failed(why))) => Outcome::Fail(why),
        Ok(Err(NotPassed::Shortage(s, why))) => Outcome::Shortage(s, why),
        Err(_) => Outcome::Fail(timed_out(timeout)),
    }
}

fn connect_error(e: ConnectError, timeout: Duration) -> String {
    match e {
        ConnectError::TimedOut => timed_out(timeout),
        ConnectError::Refused(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connect refused".to_string()
        }
        ConnectError::Refused(e) => format!("connect failed: {e}"),
        ConnectError::Handshake(e) => format!("TLS handshake failed: {e}"),
    }
}

/// "timed out after 1s", "timed out after 200ms".
fn timed_out(timeout: Duration) -> String {
    if timeout.subsec_millis() == 0 && timeout.as_secs() > 0 {
        format!("timed out after {}s", timeout.as_secs())
    } else {
        format!("timed out after {}ms", timeout.as_millis())
    }
}

/// A scripted TCP check: `send` written, then read until `expect` is seen,
/// the endpoint closes, `MAX_EXPECT` bytes came without it, or the
/// check's `deadline` (then what came is told; the check's own timeout,
/// at the same instant, lets this answer first).
async fn tcp_script(
    conn: &mut Conn,
    send: &[u8],
    expect: &[u8],
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    if !send.is_empty() {
        send_all(conn, send).await?;
    }
    if expect.is_empty() {
        return Ok(());
    }
    let mut seen = BytesMut::with_capacity(512);
    loop {
        if seen.windows(expect.len()).any(|w| w == expect) {
            return Ok(());
        }
        if seen.len() >= MAX_EXPECT {
            return Err(format!(
                "expected {:?} in the first {MAX_EXPECT} bytes, got \"{}\"...",
                String::from_utf8_lossy(expect),
                start_of(&seen)
            ));
        }
        let read = tokio::time::timeout_at(deadline, conn.stream.read_buf(&mut seen)).await;
        let Ok(read) = read else {
            return Err(format!(
                "expected {:?}, got \"{}\" before the timeout",
                String::from_utf8_lossy(expect),
                start_of(&seen)
            ));
        };
        let n = read.map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err(format!(
                "expected {:?}, got \"{}\" and the end of the connection",
                String::from_utf8_lossy(expect),
                start_of(&seen)
            ));
        }
    }
}

/// Writes `bytes` whole, flushed: TLS may hold back what it could not
/// write at once.
async fn send_all(conn: &mut Conn, bytes: &[u8]) -> Result<(), String> {
    let write = async {
        conn.stream.write_all(bytes).await?;
        conn.stream.flush().await
    };
    write.await.map_err(|e| format!("write failed: {e}"))
}

/// The first bytes of what an endpoint sent, printable in a log line.
fn start_of(seen: &[u8]) -> String {
    String::from_utf8_lossy(&seen[..seen.len().min(64)])
        .escape_debug()
        .to_string()
}

async fn http_check(
    conn: &mut Conn,
    address: SocketAddr,
    method: &Method,
    path: &str,
    host: Option<&str>,
    expect: &[u16],
) -> Result<Outcome, String> {
    let request = request_head(address, method, path, host)?;
    send_all(conn, &request).await?;
    let head = read_head(conn).await?;
    let status = head.status.as_u16();
    if !status_passes(status, expect) {
        return Err(format!("status {status}"));
    }
    let framing = codec::response_body(method, &head).map_err(|e| format!("bad response: {e}"))?;
    Ok(match read_body(conn, framing).await? {
        Some(body) if says_degraded(&body) => Outcome::Degraded("body says degraded".to_string()),
        _ => Outcome::Pass,
    })
}

/// The request head. A path or host from config that would break the
/// request line or a header is refused here rather than sent.
fn request_head(
    address: SocketAddr,
    method: &Method,
    path: &str,
    host: Option<&str>,
) -> Result<BytesMut, String> {
    let path = if path.is_empty() { "/" } else { path };
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("bad check path {path:?}"));
    }
    // `SocketAddr` displays as a valid Host value, brackets for IPv6 included.
    let host = host.map_or_else(|| address.to_string(), str::to_string);
    let host = HeaderValue::from_str(&host).map_err(|_| format!("bad check host {host:?}"))?;
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(header::HOST, host);
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let mut dst = BytesMut::new();
    codec::encode_request_head(&mut dst, method, path, &headers, RequestBody::None);
    Ok(dst)
}

/// 503 is the endpoint saying it should get no traffic, whatever `expect` says.
fn status_passes(status: u16, expect: &[u16]) -> bool {
    let expected = expect.contains(&status) || expect.is_empty() && (200..=299).contains(&status);
    expected && status != StatusCode::SERVICE_UNAVAILABLE.as_u16()
}

/// Reads more bytes into the connection's buffer; `Ok(0)` at end of stream.
async fn fill(conn: &mut Conn) -> Result<usize, String> {
    if conn.read.capacity() - conn.read.len() < conn::READ_CHUNK / 4 {
        conn.read.reserve(conn::READ_CHUNK);
    }
    conn.stream
        .read_buf(&mut conn.read)
        .await
        .map_err(|e| format!("read failed: {e}"))
}

/// Reads until a final response head; interim (1xx) heads are skipped.
async fn read_head(conn: &mut Conn) -> Result<ResponseHead, String> {
    loop {
        let parsed = codec::parse_response_head(&conn.read, MAX_HEAD)
            .map_err(|e| format!("bad response: {e}"))?;
        match parsed {
            Some(head) => {
                conn.read.advance(head.len);
                // 101 is final (and fails: nothing asked to switch protocols).
                if !head.status.is_informational() || head.status.as_u16() == 101 {
                    return Ok(head);
                }
            }
            None if fill(conn).await? == 0 => {
                return Err("connection closed before a response".to_string());
            }
            None => {}
        }
    }
}

/// Reads the body for the deep check; `None` when it is larger than
/// `MAX_BODY` (not worth judging: the status already passed).
async fn read_body(conn: &mut Conn, framing: ResponseBody) -> Result<Option<Vec<u8>>, String> {
    match framing {
        ResponseBody::None => Ok(Some(Vec::new())),
        ResponseBody::Length(n) if n > MAX_BODY as u64 => Ok(None),
        ResponseBody::Length(n) => {
            let n = n as usize;
            while conn.read.len() < n {
                if fill(conn).await? == 0 {
                    return Err("truncated body".to_string());
                }
            }
            Ok(Some(conn.read[..n].to_vec()))
        }
        ResponseBody::UntilClose => {
            while conn.read.len() <= MAX_BODY {
                if fill(conn).await? == 0 {
                    return Ok(Some(conn.read.to_vec()));
                }
            }
            Ok(None)
        }
        ResponseBody::Chunked => read_chunked(conn).await,
    }
}

async fn read_chunked(conn: &mut Conn) -> Result<Option<Vec<u8>>, String> {
    let mut decoder = Decoder::response();
    let mut body = Vec::new();
    loop {
        let step = decoder
            .step(&conn.read)
            .map_err(|e| format!("bad response: {e}"))?;
        match step {
            Step::Skip(n) => conn.read.advance(n),
            Step::Data(n) => {
                if body.len() + n > MAX_BODY {
                    return Ok(None);
                }
                body.extend_from_slice(&conn.read[..n]);
                conn.read.advance(n);
            }
            Step::Done(_) => return Ok(Some(body)),
            Step::NeedMore => {
                if fill(conn).await? == 0 {
                    return Err("truncated body".to_string());
                }
            }
        }
    }
}

/// Whether the body is a JSON object whose `status` is "degraded" (any
/// case). Anything else, JSON or not, is no claim of degradation.
fn says_degraded(body: &[u8]) -> bool {
    let Ok(serde_json::Value::Object(report)) = serde_json::from_slice(body) else {
        return false;
    };
    matches!(report.get("status"), Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("degraded"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// Answers one connection with `response` once the request head is in,
    /// then closes; yields the request bytes it received.
    async fn serve(response: Vec<u8>) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                if s.read_buf(&mut req).await.unwrap() == 0 {
                    break;
                }
            }
            let _ = s.write_all(&response).await;
            req
        });
        (addr, task)
    }

    /// A server that writes `greeting`, then answers each line it reads
    /// with `answer` and closes after the first.
    async fn line_server(greeting: &'static [u8], answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(greeting).await;
                    let mut line = Vec::new();
                    while !line.contains(&b'\n') {
                        if s.read_buf(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    let _ = s.write_all(answer).await;
                });
            }
        });
        addr
    }

    fn script(send: &str, expect: &str) -> Probe {
        Probe::TcpScript {
            send: send.as_bytes().to_vec(),
            expect: expect.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn a_scripted_tcp_check_sends_and_expects() {
        let redis = line_server(b"", b"+PONG\r\n").await;
        let on_redis = |probe| async move { check(redis, None, &probe, TIMEOUT, None).await };
        assert_eq!(on_redis(script("PING\r\n", "+PONG")).await, Outcome::Pass);
        assert_eq!(
            on_redis(script("PING\r\n", "-LOADING")).await,
            fail("expected \"-LOADING\", got \"+PONG\\r\\n\" and the end of the connection")
        );
        // A server that speaks first: its greeting, unprompted.
        let smtp = line_server(b"220 mx ready\r\n", b"").await;
        assert_eq!(
            check(smtp, None, &script("", "220 "), TIMEOUT, None).await,
            Outcome::Pass
        );
        // One that says nothing is given the check's timeout.
        let silent = line_server(b"", b"").await;
        let outcome = check_silent(silent).await;
        assert_eq!(
            outcome,
            fail("expected \"220\", got \"\" before the timeout")
        );
    }

    async fn check_silent(addr: SocketAddr) -> Outcome {
        check(
            addr,
            None,
            &script("", "220"),
            Duration::from_millis(200),
            None,
        )
        .await
    }

    fn with_body(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn http(expect: &[u16]) -> Probe {
        Probe::Http {
            method: Method::GET,
            path: "/healthz".to_string(),
            host: None,
            expect: expect.to_vec(),
        }
    }

    /// The outcome of a GET /healthz check against an endpoint answering `response`.
    async fn get(response: &[u8], expect: &[u16]) -> Outcome {
        let (addr, _server) = serve(response.to_vec()).await;
        check(addr, None, &http(expect), TIMEOUT, None).await
    }

    fn fail(why: &str) -> Outcome {
        Outcome::Fail(why.to_string())
    }

    #[tokio::test]
    async fn tcp_passes_and_refused_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(
            check(addr, None, &Probe::Tcp, TIMEOUT, None).await,
            Outcome::Pass
        );

        // Bound but not listening: the kernel refuses connections to it.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        socket.bind(&any.into()).unwrap();
        let closed = socket.local_addr().unwrap().as_socket().unwrap();
        let refused = fail("connect refused");
        assert_eq!(
            check(closed, None, &Probe::Tcp, TIMEOUT, None).await,
            refused
        );
        assert_eq!(
            check(closed, None, &http(&[]), TIMEOUT, None).await,
            refused
        );
    }

    #[tokio::test]
    async fn judges_the_status() {
        let ok = with_body("200 OK", "fine");
        let down = with_body("503 Service Unavailable", "");
        let missing = with_body("404 Not Found", "");
        for (response, expect, outcome) in [
            (&ok, &[][..], Outcome::Pass),
            (&down, &[], fail("status 503")),
            (&down, &[503], fail("status 503")),
            (&missing, &[], fail("status 404")),
            (&missing, &[200], fail("status 404")),
            (&missing, &[404], Outcome::Pass),
        ] {
            assert_eq!(get(response, expect).await, outcome, "{expect:?}");
        }
    }

    #[tokio::test]
    async fn judges_the_response() {
        let degraded = Outcome::Degraded("body says degraded".into());
        let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            b\r\n{\"status\": \r\nb\r\n\"DEGRADED\"}\r\n0\r\n\r\n";
        let garbage = "bad response: malformed response head: not an HTTP/1.x response";
        let deep = with_body("200 OK", r#"{"status": "Degraded", "n": 1}"#);
        let until_close = "HTTP/1.1 200 OK\r\n\r\n{\"status\":\"ok\"}";
        // Interim responses are skipped; a 204 has no body to judge.
        let interim = "HTTP/1.1 103 Hints\r\n\r\nHTTP/1.1 204 OK\r\n\r\n";
        // A degraded body on a failing status is still a failure.
        let error = with_body("500 Oops", r#"{"status":"degraded"}"#);
        let short = "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{";
        let cases = [
            (deep, degraded.clone()),
            (chunked.into(), degraded),
            (with_body("200 OK", r#"{"status":"ok"}"#), Outcome::Pass),
            (until_close.into(), Outcome::Pass),
            (interim.into(), Outcome::Pass),
            (error, fail("status 500")),
            (short.into(), fail("truncated body")),
            ("SSH-2.0-OpenSSH_9.6\r\n\r\n".into(), fail(garbage)),
            (Vec::new(), fail("connection closed before a response")),
        ];
        for (i, (response, outcome)) in cases.into_iter().enumerate() {
            assert_eq!(get(&response, &[]).await, outcome, "case {i}");
        }
    }

    #[test]
    fn only_a_degraded_status_string_degrades() {
        assert!(says_degraded(br#"{"status":"degraded"}"#));
        for other in [
            r#"{"status":"ok"}"#,
            r#"{"status":3}"#,
            r#"["degraded"]"#,
            "degraded",
            "",
        ] {
            assert!(!says_degraded(other.as_bytes()));
        }
    }

    #[tokio::test]
    async fn silent_endpoint_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        let outcome = check(addr, None, &http(&[]), timeout, None).await;
        let took = start.elapsed();
        assert_eq!(outcome, fail("timed out after 200ms"));
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(300),
            "{took:?}"
        );
        assert_eq!(timed_out(Duration::from_secs(1)), "timed out after 1s");
    }

    #[tokio::test]
    async fn sends_the_specified_request() {
        let (addr, server) = serve(with_body("200 OK", "")).await;
        let probe = Probe::Http {
            method: Method::HEAD,
            path: "/ready?deep=1".into(),
            host: Some("api.internal".into()),
            expect: vec![],
        };
        assert_eq!(
            check(addr, None, &probe, TIMEOUT, None).await,
            Outcome::Pass
        );
        let req = String::from_utf8(server.await.unwrap()).unwrap();
        assert_eq!(
            req,
            "HEAD /ready?deep=1 HTTP/1.1\r\nhost: api.internal\r\n\
             user-agent: levee-health-check\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn bad_config_is_refused_not_sent() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        assert!(request_head(addr, &Method::GET, "/a b", None).is_err());
        assert!(request_head(addr, &Method::GET, "/", Some("a\nb")).is_err());
        let head = request_head(addr, &Method::GET, "", None).unwrap();
        assert!(head.starts_with(b"GET / HTTP/1.1\r\nhost: 127.0.0.1:0\r\n"));
    }
}
