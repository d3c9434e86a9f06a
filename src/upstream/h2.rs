//! HTTP/2 to endpoints, multiplexed: with prior knowledge (a cluster's
//! `protocol = "h2c"`) or over its TLS with ALPN `h2` (`"h2"`). Each worker
//! keeps a few connections per endpoint, and a request goes on the one with
//! the fewest streams in flight; another connection is opened only when
//! every one is saturated: it carries as many streams as the endpoint
//! allows (its `SETTINGS_MAX_CONCURRENT_STREAMS`, read by `h2_settings`),
//! or the cluster's `streams_per_connection` if that is fewer, up to its
//! `max_connections` (`H2Limits`, from `config::upstream_http2`). So requests
//! spread instead of piling onto one connection while a single one suffices
//! for light traffic.
//!
//! The protocol is hyper's HTTP/2 client; each connection's driver runs as
//! a task on the worker that opened it. The request body is handed over to
//! hyper, which streams it as it arrives, while the response (head, then
//! body) comes back: a bidirectional gRPC stream flows both ways at once.
//! The caller lends the body (`&mut B`) and gets it back untouched when the
//! connection failed before it was taken.
//!
//! A request the endpoint provably did not process (`REFUSED_STREAM`, a
//! graceful `GOAWAY` that excludes its stream, a connection that closed
//! before the request was handed to it) fails with `Error::Unprocessed`, so
//! that the caller may send it again whatever its method; the connection is
//! then retired from the pool.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::codec::ResponseHead;
use super::h2_settings::{UNLIMITED, Watched};
use super::tls::Handshake;
use super::{BoxError, Error, Exchange, Target};

/// How a cluster's HTTP/2 pool uses each endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    /// Streams one connection carries at most before another is opened
    /// beside it, however many the endpoint allows.
    pub streams_per_connection: usize,
    /// Connections per endpoint and worker at most; beyond, the least
    /// loaded one takes the stream (hyper queues it until the endpoint
    /// allows it).
    pub max_connections: usize,
    /// PING every connection this often, idle or not (`None`: never);
    /// unanswered for `ping_timeout`, it is closed and the next request
    /// opens another instead of waiting on a dead endpoint.
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Duration,
}

impl Default for H2Limits {
    fn default() -> Self {
        H2Limits {
            streams_per_connection: 100,
            max_connections: 4,
            ping_interval: Some(Duration::from_secs(30)),
            ping_timeout: Duration::from_secs(10),
        }
    }
}

/// The request body as hyper's connection reads it.
type OutBody = UnsyncBoxBody<Bytes, BoxError>;

/// One multiplexed connection: how many streams it carries now, how many
/// the endpoint allows, and whether it still takes new ones.
#[derive(Clone)]
struct Shared {
    send: SendRequest<OutBody>,
    in_flight: Arc<AtomicUsize>,
    limit: Arc<AtomicUsize>,
    /// Set when the endpoint said it takes no more streams on it (GOAWAY).
    retired: Arc<AtomicBool>,
    /// Streams it carried, for `streams_per_connection`.
    carried: Arc<AtomicUsize>,
    /// The cluster's streams per connection when it was opened.
    cap: usize,
}

impl Shared {
    fn usable(&self) -> bool {
        !self.send.is_closed() && !self.retired.load(Ordering::Relaxed)
    }

    fn saturated(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed).min(self.cap);
        self.in_flight.load(Ordering::Relaxed) >= limit.max(1)
    }
}

/// An endpoint's HTTP/2 connections, one slot per worker (see `pool`).
pub struct H2Pool {
    slots: Box<[Mutex<Vec<Shared>>]>,
    /// Held by the request that opens a connection for its worker: the
    /// requests arriving meanwhile wait for that connection instead of
    /// each opening their own.
    opening: Box<[tokio::sync::Mutex<()>]>,
}

impl H2Pool {
    pub fn new(workers: usize) -> H2Pool {
        H2Pool {
            slots: (0..workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            opening: (0..workers.max(1))
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// The usable connection with the fewest streams, unless all are
    /// saturated and another may be opened.
    fn pick(&self, worker: usize, max_conns: usize) -> Option<Shared> {
        let slot = self.slots.get(worker)?;
        let mut conns = slot.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(Shared::usable);
        let best = conns
            .iter()
            .min_by_key(|c| c.in_flight.load(Ordering::Relaxed))?;
        if best.saturated() && conns.len() < max_conns {
            return None;
        }
        Some(best.clone())
    }

    fn add(&self, worker: usize, conn: Shared) {
        if let Some(slot) = self.slots.get(worker) {
            let mut conns = slot.lock().unwrap_or_else(|p| p.into_inner());
            conns.push(conn);
        }
    }

    /// Open connections across workers.
    pub fn open_count(&self) -> usize {
        self.slots
            .iter()
            .map(|s| {
                s.lock()
                    .map(|v| v.iter().filter(|c| c.usable()).count())
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// Sends the request on a multiplexed connection to `target` and reads the
/// response head. The body is taken from `body` (leaving it empty) once a
/// connection is ready for it.
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
    let pool = target.pool;
    let max_conns = target.h2.max_connections;
    let mut picked = pool.h2.pick(target.worker, max_conns);
    let opening = match (&picked, pool.h2.opening.get(target.worker)) {
        (None, Some(lock)) => {
            let held = lock.lock().await;
            picked = pool.h2.pick(target.worker, max_conns);
            Some(held)
        }
        _ => None,
    };
    let (mut conn, connect) = match picked {
        Some(conn) => {
            pool.counters.reused.inc();
            (conn, None)
        }
        None => {
            let started = Instant::now();
            let conn = match open(target).await {
                Ok(s) => s,
                Err(e) => {
                    pool.counters.connect_errors.inc();
                    return Err(e);
                }
            };
            pool.counters.opened.inc();
            pool.h2.add(target.worker, conn.clone());
            (conn, Some(started.elapsed()))
        }
    };
    drop(opening);
    let guard = InFlight::enter(conn.in_flight.clone());
    conn.carried.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = conn.send.ready().await {
        // Closed before anything was handed to it.
        conn.retired.store(true, Ordering::Relaxed);
        return Err(Error::Unprocessed(e.to_string()));
    }

    let lent = Arc::new(Mutex::new(Lending {
        body: Some(std::mem::take(body)),
        touched: false,
    }));
    let out: OutBody = UnsyncBoxBody::new(
        Lent(lent.clone())
            .map_frame(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
            .map_err(Into::into),
    );
    let response = conn
        .send
        .send_request(request(parts, target, out))
        .await
        .map_err(|e| {
            if unprocessed(&e) {
                conn.retired.store(true, Ordering::Relaxed);
                // Not a byte of it was read: the caller gets it back.
                let mut lending = lent.lock().unwrap_or_else(|p| p.into_inner());
                if !lending.touched
                    && let Some(b) = lending.body.take()
                {
                    *body = b;
                }
                Error::Unprocessed(e.to_string())
            } else if e.is_canceled() || e.is_closed() {
                Error::Closed
            } else {
                Error::Receive(std::io::Error::other(e))
            }
        })?;
    let (head, incoming) = response.into_parts();
    Ok(Exchange {
        head: ResponseHead {
            status: head.status,
            version: head.version,
            headers: head.headers,
            len: 0,
        },
        body: super::Body::h2(H2Body {
            incoming,
            peeked: None,
            _in_flight: guard,
        }),
        reused: connect.is_none(),
        connect,
    })
}

/// Whether hyper's error proves the endpoint never processed the request:
/// it was not handed to the connection (cancelled), the endpoint refused
/// its stream, or a graceful GOAWAY excluded it (h2 reports those streams
/// with the GOAWAY's own error, from the endpoint, code NO_ERROR).
fn unprocessed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        source = err.source();
    }
    false
}

/// A new connection to `target`, its HTTP/2 handshake done and its driver
/// running on this worker.
async fn open(target: &Target<'_>) -> Result<Shared, Error> {
    let timeout = target.connect_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(target.address)).await {
        Err(_) => return Err(Error::ConnectTimeout(timeout)),
        Ok(Err(e)) => return Err(Error::Connect(e)),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let limit = Arc::new(AtomicUsize::new(UNLIMITED));
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(target.h2.ping_interval)
        .keep_alive_timeout(target.h2.ping_timeout)
        .keep_alive_while_idle(true);
    let carried = Arc::new(AtomicUsize::new(0));
    let histogram = target.pool.counters.streams_per_connection.clone();
    let counted = carried.clone();
    let send = match target.tls {
        None => {
            let io = TokioIo::new(Watched::new(tcp, limit.clone()));
            handshake(&builder, io, deadline, timeout, counted, histogram).await?
        }
        Some(tls) => {
            let stream = match tokio::time::timeout_at(deadline, tls.handshake_h2(tcp)).await {
                Err(_) => {
                    tls.handshakes.record(Handshake::Timeout);
                    return Err(Error::ConnectTimeout(timeout));
                }
                Ok(Err(e)) => {
                    tls.handshakes.record(Handshake::of_error(&e));
                    return Err(Error::Connect(e));
                }
                Ok(Ok(s)) => {
                    tls.handshakes.record(Handshake::Ok);
                    s
                }
            };
            let io = TokioIo::new(Watched::new(stream, limit.clone()));
            handshake(&builder, io, deadline, timeout, counted, histogram).await?
        }
    };
    Ok(Shared {
        send,
        in_flight: Arc::new(AtomicUsize::new(0)),
        limit,
        retired: Arc::new(AtomicBool::new(false)),
        carried,
        cap: target.h2.streams_per_connection.max(1),
    })
}

/// HTTP/2's handshake over `io`, its driver spawned; when the connection
/// ends, the streams it carried are observed.
async fn handshake<T>(
    builder: &hyper::client::conn::http2::Builder<TokioExecutor>,
    io: T,
    deadline: tokio::time::Instant,
    timeout: Duration,
    carried: Arc<AtomicUsize>,
    histogram: Option<prometheus_client::metrics::histogram::Histogram>,
) -> Result<SendRequest<OutBody>, Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, driver) = tokio::time::timeout_at(deadline, builder.handshake(io))
        .await
        .map_err(|_| Error::ConnectTimeout(timeout))?
        .map_err(|e| Error::Connect(std::io::Error::other(e)))?;
    tokio::spawn(async move {
        // Ends when the endpoint or the pool (every handle dropped) closes it.
        if let Err(e) = driver.await {
            tracing::debug!(error = %e, "HTTP/2 connection to an endpoint ended");
        }
        if let Some(h) = histogram {
            h.observe(carried.load(Ordering::Relaxed) as f64);
        }
    });
    Ok(send)
}

/// The request as HTTP/2 sends it: an absolute URI (its authority from the
/// `Host` header, else the endpoint's address) and no `Host` line.
fn request(parts: &http::request::Parts, target: &Target<'_>, body: OutBody) -> Request<OutBody> {
    let mut headers = parts.headers.clone();
    unindexed(&mut headers);
    // gRPC servers want `te: trailers` (hop-by-hop, so stripped on the way
    // in): it says the client understands the trailers carrying the status.
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    // The URI from parts: the authority parsed from the Host value's bytes,
    // the path shared with the client's request, no text built in between.
    let authority = headers
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| Authority::try_from(target.address.to_string()).ok());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if target.tls.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    uri.authority = authority;
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = headers;
    req
}

/// Headers whose value is new on every request (the request id, the try's
/// trace span, the time left) are sent as never indexed: HPACK would
/// otherwise insert each into the connection's dynamic table, evicting the
/// entries that do repeat, and search an ever longer chain of same-named
/// entries on every request.
/// Named here rather than imported from `proxy` and `observe`, which sit
/// above this module.
fn unindexed(headers: &mut http::HeaderMap) {
    static PER_REQUEST: [http::HeaderName; 3] = [
        http::HeaderName::from_static("x-request-id"),
        http::HeaderName::from_static("traceparent"),
        http::HeaderName::from_static("grpc-timeout"),
    ];
    for name in &PER_REQUEST {
        if let Some(v) = headers.get_mut(name) {
            v.set_sensitive(true);
        }
    }
}

/// The caller's body while hyper's connection reads it; given back when
/// the request turns out unprocessed before a frame of it was read.
struct Lending<B> {
    body: Option<B>,
    touched: bool,
}

struct Lent<B>(Arc<Mutex<Lending<B>>>);

impl<B> HttpBody for Lent<B>
where
    B: HttpBody + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut lending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(body) = lending.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(body).poll_frame(cx);
        if let Poll::Ready(Some(_)) = polled {
            lending.touched = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let lending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lending.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let lending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lending
            .body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

/// A stream counted on its connection until its response body is dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The response body of one stream; trailers pass through as a frame.
pub struct H2Body {
    incoming: Incoming,
    /// A frame read ahead by `peek_trailers`, handed out first.
    peeked: Option<Frame<Bytes>>,
    _in_flight: InFlight,
}

impl H2Body {
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(frame) = self.peeked.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        std::pin::Pin::new(&mut self.incoming).poll_frame(cx)
    }

    pub fn is_end_stream(&self) -> bool {
        self.peeked.is_none() && self.incoming.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }

    /// Reads the first frame, kept to be read first; when it is the
    /// trailers (no message before them), a copy is returned.
    pub async fn peek_trailers(&mut self) -> Option<http::HeaderMap> {
        if self.peeked.is_none() {
            self.peeked = Some(self.incoming.frame().await?.ok()?);
        }
        self.peeked.as_ref()?.trailers_ref().cloned()
    }
}
