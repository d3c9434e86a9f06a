//! Talking HTTP/1.1 to endpoints.
//!
//! A request takes an idle connection from the endpoint's pool (or opens
//! one), writes its head and streams its body, reads the response head, and
//! hands back a `Body` that reads the rest straight off the socket. All of it
//! runs in the task serving the client: no per-connection task and no
//! channels between the two sides, which is most of what a proxy request
//! costs beyond its system calls.
//!
//! A connection is plain TCP or TLS (`tls.rs`, when the cluster has
//! `[clusters.tls]`); everything above `conn.rs` is the same for both.

pub mod body;
pub mod codec;
pub mod conn;
pub mod error;
pub mod h2;
mod h2_body;
pub mod h2_settings;
pub mod pool;
pub mod source;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::{Method, header};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use tokio::io::AsyncWriteExt;

pub use body::Body;
use body::Checkin;
use codec::{RequestBody, ResponseHead};
pub use conn::Conn;
pub use error::{BoxError, Error};
pub use pool::{Counters, Limits, Pool};

/// Largest response head accepted from an endpoint.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Where a request goes, and the pool its connection comes from and goes
/// back to.
pub struct Target<'a> {
    pub address: SocketAddr,
    pub pool: &'a Arc<Pool>,
    /// The worker whose slot of the pool this request uses.
    pub worker: usize,
    /// Covers the TLS handshake too.
    pub connect_timeout: Duration,
    /// The local addresses a new connection leaves from (`source`).
    pub sources: Option<&'a source::Sources>,
    pub limits: Limits,
    /// `Some`: the endpoint is spoken to over TLS.
    pub tls: Option<&'a tls::EndpointTls>,
    /// HTTP/2 (`upstream::h2`) instead of HTTP/1.1: with prior knowledge,
    /// or over `tls` with ALPN `h2`.
    pub http2: bool,
    /// How the HTTP/2 pool uses the endpoint (`http2` only).
    pub h2: h2::H2Limits,
}

/// A response head and the body still to be read.
pub struct Exchange {
    pub head: ResponseHead,
    pub body: Body,
    pub reused: bool,
    /// How long opening a new connection took (`None`: a pooled one).
    pub connect: Option<Duration>,
}

/// Sends a request to `target` and reads its response head. The body is
/// any `http_body::Body`: the client's, streamed, or one kept for a retry.
///
/// A pooled connection that the endpoint closed just as we used it (nothing
/// came back, not a byte) is replaced by a new one and the request sent
/// again, but only when it has no body: then nothing of the client's was
/// consumed, and the endpoint cannot have acted on a request it never read
/// whole.
///
/// Over HTTP/2 (`h2`), the body is taken (`B::default()` left behind) once
/// a connection takes the request, and streamed while the response comes.
pub async fn send<B>(
    target: &Target<'_>,
    parts: &http::request::Parts,
    body: &mut B,
) -> Result<Exchange, Error>
where
    B: HttpBody + Default + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    if target.http2 {
        // Boxed, as a new connection below: the HTTP/1.1 exchange's future
        // is part of every request's, and is copied with it at each step.
        return Box::pin(h2::send(target, parts, body)).await;
    }
    let pool = target.pool;
    let framing = request_body(&parts.headers, body);
    let mut head = BytesMut::new();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    codec::encode_proxied_request_head(
        &mut head,
        &parts.method,
        path,
        &parts.headers,
        framing,
        target.address,
    );

    // A request that still carries `Upgrade` asks for a tunnel (the
    // pipeline strips the header from any other): a 101 is its answer.
    let upgrade = parts.headers.contains_key(header::UPGRADE);
    let transport = target.tls.map_or(0, |t| t.key);
    if let Some(conn) = pool.take(
        target.worker,
        target.limits.idle_timeout,
        transport,
        Instant::now(),
    ) {
        match exchange(conn, &head, body, framing, &parts.method, upgrade, target).await {
            Ok(ex) => {
                pool.counters.reused.inc();
                return Ok(Exchange { reused: true, ..ex });
            }
            Err(Failure::Stale { sent, .. })
                if !sent || (is_idempotent(&parts.method) && framing == RequestBody::None) => {}
            Err(f) => return Err(f.into()),
        }
    }
    let started = Instant::now();
    let opening = Box::pin(Conn::connect(
        target.address,
        target.sources,
        target.connect_timeout,
        target.tls,
    ));
    let conn = match opening.await {
        Ok(c) => c,
        Err(e) => {
            // A failed TLS handshake is a failed connect: nothing was sent,
            // and another endpoint may take the request.
            let e = match e {
                conn::ConnectError::TimedOut => Error::ConnectTimeout(target.connect_timeout),
                conn::ConnectError::Refused(e) => Error::connect(e),
                conn::ConnectError::Handshake(e) => Error::Connect(e),
            };
            // Levee's own shortage is not the endpoint's connect error.
            if !matches!(e, Error::Shortage(..)) {
                pool.counters.connect_errors.inc();
            }
            return Err(e);
        }
    };
    let connect = started.elapsed();
    pool.counters.opened.inc();
    let ex = exchange(conn, &head, body, framing, &parts.method, upgrade, target).await?;
    Ok(Exchange {
        connect: Some(connect),
        ..ex
    })
}

fn request_body<B: HttpBody>(headers: &http::HeaderMap, body: &B) -> RequestBody {
    if let Some(n) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
    {
        return RequestBody::Length(n);
    }
    if body.is_end_stream() {
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
    /// `sent`: whether the request head had been written. `cause`: the io
    /// error, if it was one (not a clean close).
    Stale {
        sent: bool,
        cause: Option<std::io::Error>,
    },
    Error(Error),
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f {
            Failure::Stale {
                sent: false,
                cause: Some(e),
            } => Error::Send(e),
            Failure::Stale { cause: Some(e), .. } => Error::Receive(e),
            Failure::Stale { cause: None, .. } => Error::Closed,
            Failure::Error(e) => e,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Error(e)
    }
}

async fn exchange<B>(
    mut conn: Conn,
    head: &[u8],
    body: &mut B,
    framing: RequestBody,
    method: &Method,
    upgrade: bool,
    target: &Target<'_>,
) -> Result<Exchange, Failure>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    if let Err(e) = conn.stream.write_all(head).await {
        return Err(Failure::Stale {
            sent: false,
            cause: Some(e),
        });
    }
    write_body(&mut conn, body, framing).await?;
    // TLS buffers what it could not write at once: send it all before
    // waiting for the answer (a no-op on plain TCP).
    if let Err(e) = conn.stream.flush().await {
        // Without a body nothing of the client's is gone: a stale pooled
        // connection may be replaced, as when the head's write fails.
        return Err(if framing == RequestBody::None {
            Failure::Stale {
                sent: false,
                cause: Some(e),
            }
        } else {
            Failure::Error(Error::Send(e))
        });
    }
    let head = match read_head(&mut conn, upgrade).await {
        // The client's body is gone: this request cannot be sent again.
        Err(stale @ Failure::Stale { .. }) if framing != RequestBody::None => {
            return Err(Failure::Error(stale.into()));
        }
        other => other?,
    };
    let (framing, keep_alive) =
        codec::response_body_and_keep_alive(method, &head).map_err(Error::from)?;
    // After a 101 the connection is the tunnel's, never the pool's.
    let keep_alive = keep_alive && head.status != http::StatusCode::SWITCHING_PROTOCOLS;
    let checkin = Checkin {
        pool: target.pool.clone(),
        worker: target.worker,
        limits: target.limits,
    };
    Ok(Exchange {
        body: Body::new(conn, framing, keep_alive, checkin),
        head,
        reused: false,
        connect: None,
    })
}

/// Streams the client's body to the endpoint, chunk-encoding it when its
/// length is unknown; a chunked body's trailers follow its last chunk.
async fn write_body<B>(conn: &mut Conn, body: &mut B, framing: RequestBody) -> Result<(), Failure>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    if framing == RequestBody::None {
        return Ok(());
    }
    let broken = |e| Failure::Error(Error::Send(e));
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::RequestBody(e.into()))?;
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Only chunked coding can carry trailers (RFC 9112 §7.1.2).
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        let len = bytes::Buf::remaining(&data);
        if len == 0 {
            continue;
        }
        if framing == RequestBody::Chunked {
            let size = codec::ChunkSize::new(len);
            conn.stream
                .write_all(size.as_bytes())
                .await
                .map_err(broken)?;
            conn.stream.write_all_buf(&mut data).await.map_err(broken)?;
            conn.stream.write_all(b"\r\n").await.map_err(broken)?;
        } else {
            conn.stream.write_all_buf(&mut data).await.map_err(broken)?;
        }
    }
    if framing == RequestBody::Chunked {
        let mut end = BytesMut::new();
        codec::encode_chunked_end(&mut end, trailers.as_ref());
        conn.stream.write_all(&end).await.map_err(broken)?;
    }
    Ok(())
}

/// Reads until a final (non-1xx) response head is complete.
async fn read_head(conn: &mut Conn, upgrade: bool) -> Result<ResponseHead, Failure> {
    let mut received_any = false;
    loop {
        let parsed = if conn.read.is_empty() {
            None
        } else {
            codec::take_response_head(&mut conn.read, MAX_RESPONSE_HEAD).map_err(Error::from)?
        };
        if let Some(head) = parsed {
            if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                if upgrade {
                    return Ok(head);
                }
                return Err(Error::UnexpectedUpgrade.into());
            }
            // 100 Continue and other interim answers: the final one follows.
            if head.status.is_informational() {
                continue;
            }
            return Ok(head);
        }
        if conn.read.capacity() - conn.read.len() < conn::READ_CHUNK / 4 {
            conn.read.reserve(conn::READ_CHUNK);
        }
        match tokio::io::AsyncReadExt::read_buf(&mut conn.stream, &mut conn.read).await {
            Ok(0) if !received_any => {
                return Err(Failure::Stale {
                    sent: true,
                    cause: None,
                });
            }
            Err(e) if !received_any => {
                return Err(Failure::Stale {
                    sent: true,
                    cause: Some(e),
                });
            }
            Ok(0) => return Err(Error::Closed.into()),
            Err(e) => return Err(Error::Receive(e).into()),
            Ok(_) => received_any = true,
        }
    }
}
