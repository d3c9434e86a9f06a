//! Talking HTTP/1.1 to endpoints.
//!
//! A request takes an idle connection from the endpoint's pool (or opens
//! one), writes its head and streams its body, reads the response head, and
//! hands back a `Body` that reads the rest straight off the socket. All of it
//! runs in the task serving the client: no per-connection task and no
//! channels between the two sides, which is most of what a proxy request
//! costs beyond its system calls.

pub mod body;
pub mod chunked;
pub mod codec;
pub mod conn;

use std::time::Instant;

use bytes::BytesMut;
use http::{Method, header};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::cluster::{Cluster, Endpoint};
use crate::proxy::body::{TooLarge, UpstreamBody};
use crate::proxy::error::ProxyError;
pub use body::Body;
use codec::{RequestBody, ResponseHead};
pub use conn::Conn;

/// Largest response head accepted from an endpoint.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A response head and the body still to be read.
pub struct Exchange {
    pub head: ResponseHead,
    pub body: Body,
    pub reused: bool,
}

/// Sends a request to `endpoint` and reads its response head.
///
/// A pooled connection that the endpoint closed just as we used it (nothing
/// came back, not a byte) is replaced by a new one and the request sent
/// again, but only when it has no body: then nothing of the client's was
/// consumed, and the endpoint cannot have acted on a request it never read
/// whole.
pub async fn send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    worker: usize,
    parts: &http::request::Parts,
    body: &mut UpstreamBody,
) -> Result<Exchange, ProxyError> {
    let live = &endpoint.live;
    let framing = request_body(&parts.headers, body);
    let mut head = BytesMut::new();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    codec::encode_request_head(&mut head, &parts.method, path, &parts.headers, framing);

    if let Some(conn) = live
        .pool
        .take(worker, cluster.pool_idle_timeout, Instant::now())
    {
        match exchange(conn, &head, body, framing, &parts.method).await {
            Ok(ex) => {
                live.reused.inc();
                return Ok(Exchange { reused: true, ..ex });
            }
            Err(Failure::Stale { sent })
                if !sent || (is_idempotent(&parts.method) && framing == RequestBody::None) => {}
            Err(f) => return Err(f.into()),
        }
    }
    let conn = match Conn::connect(endpoint.address, cluster.connect_timeout).await {
        Ok(c) => c,
        Err(e) => {
            live.connect_errors.inc();
            return Err(match e {
                conn::ConnectError::TimedOut => ProxyError::UpstreamConnectTimeout,
                conn::ConnectError::Refused(_) => ProxyError::UpstreamConnect,
            });
        }
    };
    live.opened.inc();
    exchange(conn, &head, body, framing, &parts.method)
        .await
        .map_err(ProxyError::from)
}

fn request_body(headers: &http::HeaderMap, body: &UpstreamBody) -> RequestBody {
    if let Some(n) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
    {
        return RequestBody::Length(n);
    }
    if hyper::body::Body::is_end_stream(body) {
        RequestBody::None
    } else {
        RequestBody::Chunked
    }
}

/// Methods whose repetition has the same effect as one request (RFC 9110 §9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

enum Failure {
    /// The connection died before a single byte of response came back;
    /// `sent`: whether the request head had been written.
    Stale {
        sent: bool,
    },
    Proxy(ProxyError),
}

impl From<Failure> for ProxyError {
    fn from(f: Failure) -> ProxyError {
        match f {
            Failure::Stale { .. } => ProxyError::UpstreamFailed,
            Failure::Proxy(e) => e,
        }
    }
}

async fn exchange(
    mut conn: Conn,
    head: &[u8],
    body: &mut UpstreamBody,
    framing: RequestBody,
    method: &Method,
) -> Result<Exchange, Failure> {
    if conn.stream.write_all(head).await.is_err() {
        return Err(Failure::Stale { sent: false });
    }
    write_body(&mut conn, body, framing).await?;
    let head = match read_head(&mut conn).await {
        Err(Failure::Stale { .. }) if framing != RequestBody::None => {
            // The client's body is gone: this request cannot be sent again.
            return Err(Failure::Proxy(ProxyError::UpstreamFailed));
        }
        other => other?,
    };
    let framing = codec::response_body(method, &head)
        .map_err(|_| Failure::Proxy(ProxyError::UpstreamFailed))?;
    let keep_alive = codec::keep_alive(&head);
    Ok(Exchange {
        body: Body::new(conn, framing, keep_alive),
        head,
        reused: false,
    })
}

/// Streams the client's body to the endpoint, chunk-encoding it when its
/// length is unknown.
async fn write_body(
    conn: &mut Conn,
    body: &mut UpstreamBody,
    framing: RequestBody,
) -> Result<(), Failure> {
    if framing == RequestBody::None {
        return Ok(());
    }
    let broken = |_| Failure::Proxy(ProxyError::UpstreamFailed);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Failure::Proxy(if e.is::<TooLarge>() {
                ProxyError::BodyTooLarge
            } else {
                ProxyError::ClientBody
            })
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        if framing == RequestBody::Chunked {
            let size = format!("{:x}\r\n", data.len());
            conn.stream
                .write_all(size.as_bytes())
                .await
                .map_err(broken)?;
            conn.stream.write_all(&data).await.map_err(broken)?;
            conn.stream.write_all(b"\r\n").await.map_err(broken)?;
        } else {
            conn.stream.write_all(&data).await.map_err(broken)?;
        }
    }
    if framing == RequestBody::Chunked {
        conn.stream.write_all(b"0\r\n\r\n").await.map_err(broken)?;
    }
    Ok(())
}

/// Reads until a final (non-1xx) response head is complete.
async fn read_head(conn: &mut Conn) -> Result<ResponseHead, Failure> {
    use bytes::Buf;
    let mut received_any = false;
    loop {
        if !conn.read.is_empty() {
            match codec::parse_response_head(&conn.read, MAX_RESPONSE_HEAD) {
                Ok(Some(head)) => {
                    conn.read.advance(head.len);
                    // Upgrades are not proxied (Levee strips `Upgrade`), so a
                    // 101 is a confused endpoint, not a tunnel to open.
                    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                        return Err(Failure::Proxy(ProxyError::UpstreamFailed));
                    }
                    // 100 Continue and other interim answers: the final one follows.
                    if head.status.is_informational() {
                        continue;
                    }
                    return Ok(head);
                }
                Ok(None) => {}
                Err(_) => return Err(Failure::Proxy(ProxyError::UpstreamFailed)),
            }
        }
        if conn.read.capacity() - conn.read.len() < conn::READ_CHUNK / 4 {
            conn.read.reserve(conn::READ_CHUNK);
        }
        match tokio::io::AsyncReadExt::read_buf(&mut conn.stream, &mut conn.read).await {
            Ok(0) | Err(_) if !received_any => return Err(Failure::Stale { sent: true }),
            Ok(0) | Err(_) => return Err(Failure::Proxy(ProxyError::UpstreamFailed)),
            Ok(_) => received_any = true,
        }
    }
}
