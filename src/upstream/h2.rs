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
//! The protocol is the `h2` crate's client, used directly: each
//! connection's driver (h2's `Connection`, with the PING keep-alive) runs as
//! a task on the worker that opened it, and everything else happens in the
//! future of the request itself. It opens the stream, sends the body as the
//! stream's window allows while it waits for the response head, and hands
//! what is left of the body to the response body (`h2_body`), which sends
//! it as it is read: a bidirectional gRPC stream flows both ways at once.
//! hyper's HTTP/2 client, used before, passed each request through a
//! channel to the connection's task and spawned a task per request to
//! await its response (and another to pipe its body when it was not sent
//! at once); moving those futures into their tasks alone cost ~18,000 of
//! the ~135,000 instructions of a gRPC unary call (bench/README.md).
//! The caller lends the body (`&mut B`) and gets it back untouched when the
//! connection failed before a frame of it was read.
//!
//! A request the endpoint provably did not process (`REFUSED_STREAM`, a
//! graceful `GOAWAY` that excludes its stream, a connection that closed
//! before the request was handed to it) fails with `Error::Unprocessed`, so
//! that the caller may send it again whatever its method; the connection is
//! then retired from the pool.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri, header};
use hyper::body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::ResponseHead;
use super::h2_body::{H2Body, Upload};
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
    /// loaded one takes the stream (h2 queues it until the endpoint
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

/// What the connection's driver and the pool both see of a connection.
struct Life {
    /// Set when the connection ended, or the endpoint said it takes no
    /// more streams on it (GOAWAY, refused streams).
    retired: AtomicBool,
    /// Streams it carried, for `streams_per_connection`.
    carried: AtomicUsize,
}

/// One multiplexed connection: how many streams it carries now, how many
/// the endpoint allows, and whether it still takes new ones. The driver
/// holds no `Shared` (only its `Life`): h2 closes the connection when the
/// last handle to it is dropped.
struct Shared {
    send: SendRequest<Bytes>,
    in_flight: AtomicUsize,
    limit: Arc<AtomicUsize>,
    life: Arc<Life>,
    /// The cluster's streams per connection when it was opened.
    cap: usize,
}

impl Shared {
    fn usable(&self) -> bool {
        !self.life.retired.load(Ordering::Relaxed)
    }

    fn saturated(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed).min(self.cap);
        self.in_flight.load(Ordering::Relaxed) >= limit.max(1)
    }

    fn retire(&self) {
        self.life.retired.store(true, Ordering::Relaxed);
    }
}

/// An endpoint's HTTP/2 connections, one slot per worker (see `pool`).
pub struct H2Pool {
    slots: Box<[Mutex<Vec<Arc<Shared>>>]>,
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
    fn pick(&self, worker: usize, max_conns: usize) -> Option<Arc<Shared>> {
        let slot = self.slots.get(worker)?;
        let mut conns = slot.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| c.usable());
        let best = conns
            .iter()
            .min_by_key(|c| c.in_flight.load(Ordering::Relaxed))?;
        if best.saturated() && conns.len() < max_conns {
            return None;
        }
        Some(best.clone())
    }

    fn add(&self, worker: usize, conn: Arc<Shared>) {
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
/// response head. The body is taken from `body` (leaving it empty); it is
/// given back when the connection failed before a frame of it was read.
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
    let (conn, connect) = match picked {
        Some(conn) => {
            pool.counters.reused.inc();
            (conn, None)
        }
        None => {
            let started = Instant::now();
            // Boxed: its TCP and TLS handshakes would otherwise size the
            // future of every request, and be copied with it.
            let conn = match Box::pin(open(target)).await {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    // Levee's own shortage is not the endpoint's error.
                    if !matches!(e, Error::Shortage(..)) {
                        pool.counters.connect_errors.inc();
                    }
                    return Err(e);
                }
            };
            pool.counters.opened.inc();
            pool.h2.add(target.worker, conn.clone());
            (conn, Some(started.elapsed()))
        }
    };
    drop(opening);
    conn.in_flight.fetch_add(1, Ordering::Relaxed);
    let in_flight = InFlight(conn);
    let conn = &in_flight.0;
    conn.life.carried.fetch_add(1, Ordering::Relaxed);
    let mut streams = match conn.send.clone().ready().await {
        Ok(s) => s,
        Err(e) => {
            // Closed before anything was handed to it.
            conn.retire();
            return Err(Error::Unprocessed(e.to_string()));
        }
    };

    let lent = std::mem::take(body);
    let end = lent.is_end_stream();
    let head = request(parts, target, &lent);
    let (mut response, tx) = match streams.send_request(head, end) {
        Ok(sent) => sent,
        Err(e) => {
            *body = lent;
            if e.is_io() || e.is_go_away() || e.reason().is_some() {
                // The connection failed: nothing went on it.
                conn.retire();
                return Err(Error::Unprocessed(e.to_string()));
            }
            // h2 refused the head itself (a request it cannot send).
            return Err(Error::Send(std::io::Error::other(e)));
        }
    };
    drop(streams);
    let mut upload = (!end).then(|| Upload::new(tx, lent));
    // The body goes out as the window allows while the head is awaited.
    let answered = poll_fn(|cx| {
        if let Some(up) = upload.as_mut()
            && let Poll::Ready(Err(e)) = up.poll_send(cx)
        {
            return Poll::Ready(Err(Failed::Body(e)));
        }
        Pin::new(&mut response).poll(cx).map_err(Failed::Stream)
    })
    .await;
    let answer = match answered {
        Ok(answer) => answer,
        Err(Failed::Body(e)) => return Err(Error::RequestBody(e)),
        Err(Failed::Stream(e)) if unprocessed(&e) => {
            conn.retire();
            // Not a frame of it was read: the caller gets it back.
            if let Some(lent) = upload.and_then(Upload::untouched) {
                *body = lent;
            }
            return Err(Error::Unprocessed(e.to_string()));
        }
        Err(Failed::Stream(e)) => return Err(Error::Receive(std::io::Error::other(e))),
    };
    let upload = upload.filter(|up| !up.is_done());
    let (head, recv) = answer.into_parts();
    let body = H2Body::new(&head.headers, recv, upload, in_flight);
    Ok(Exchange {
        head: ResponseHead {
            status: head.status,
            version: head.version,
            headers: head.headers,
            len: 0,
        },
        body: super::Body::h2(body),
        reused: connect.is_none(),
        connect,
    })
}

/// Why a stream failed before its response head.
enum Failed {
    Stream(h2::Error),
    /// The request body's own error (the stream was reset).
    Body(BoxError),
}

/// Whether h2's error proves the endpoint never processed the request: the
/// endpoint refused its stream, or a graceful GOAWAY excluded it (h2
/// reports those streams with the GOAWAY's own error, from the endpoint,
/// code NO_ERROR).
fn unprocessed(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM)
        || (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR))
}

/// A new connection to `target`, its HTTP/2 handshake done and its driver
/// running on this worker.
async fn open(target: &Target<'_>) -> Result<Shared, Error> {
    let timeout = target.connect_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let connecting = super::source::connect(target.sources, target.address);
    let tcp = match tokio::time::timeout_at(deadline, connecting).await {
        Err(_) => return Err(Error::ConnectTimeout(timeout)),
        Ok(Err(e)) => return Err(Error::connect(e)),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let limit = Arc::new(AtomicUsize::new(UNLIMITED));
    let life = Arc::new(Life {
        retired: AtomicBool::new(false),
        carried: AtomicUsize::new(0),
    });
    let opening = Opening {
        deadline,
        timeout,
        limits: target.h2,
        life: life.clone(),
        histogram: target.pool.counters.streams_per_connection.clone(),
    };
    let send = match target.tls {
        None => opening.handshake(Watched::new(tcp, limit.clone())).await?,
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
            opening
                .handshake(Watched::new(stream, limit.clone()))
                .await?
        }
    };
    Ok(Shared {
        send,
        in_flight: AtomicUsize::new(0),
        limit,
        life,
        cap: target.h2.streams_per_connection.max(1),
    })
}

/// What the HTTP/2 handshake of a new connection needs.
struct Opening {
    deadline: tokio::time::Instant,
    timeout: Duration,
    limits: H2Limits,
    life: Arc<Life>,
    histogram: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl Opening {
    /// HTTP/2's handshake over `io`, its driver spawned; when the
    /// connection ends, it is retired and the streams it carried observed.
    async fn handshake<T>(self, io: T) -> Result<SendRequest<Bytes>, Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut conn) = tokio::time::timeout_at(self.deadline, builder().handshake(io))
            .await
            .map_err(|_| Error::ConnectTimeout(self.timeout))?
            .map_err(|e| Error::Connect(std::io::Error::other(e)))?;
        let mut keep_alive = match (self.limits.ping_interval, conn.ping_pong()) {
            (Some(interval), Some(pings)) => {
                Some(KeepAlive::new(pings, interval, self.limits.ping_timeout))
            }
            _ => None,
        };
        let Opening {
            life, histogram, ..
        } = self;
        tokio::spawn(async move {
            // Ends when the endpoint or the pool (every handle dropped)
            // closes it, or a PING goes unanswered.
            let ended = poll_fn(|cx| {
                if let Some(k) = keep_alive.as_mut()
                    && k.poll_expired(cx).is_ready()
                {
                    return Poll::Ready(Err(None));
                }
                Pin::new(&mut conn).poll(cx).map_err(Some)
            })
            .await;
            life.retired.store(true, Ordering::Relaxed);
            match ended {
                Ok(()) => {}
                Err(None) => tracing::debug!("HTTP/2 endpoint did not answer a PING: closed"),
                Err(Some(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 connection to an endpoint ended");
                }
            }
            if let Some(h) = histogram {
                h.observe(life.carried.load(Ordering::Relaxed) as f64);
            }
        });
        Ok(send)
    }
}

/// The connection's settings: those hyper's HTTP/2 client used before
/// (windows of 2 MiB per stream and 5 MiB per connection, 16 KiB frames
/// and header lists, a 1 MiB send buffer per stream, 100 streams before
/// the endpoint's SETTINGS say otherwise), so that nothing changes on the
/// wire.
fn builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_max_send_streams(100)
        .initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false);
    b
}

/// PINGs a connection every `interval` and says when one went unanswered
/// for `timeout`.
struct KeepAlive {
    pings: h2::PingPong,
    interval: Duration,
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// A PING is out, waiting for its PONG.
    waiting: bool,
}

impl KeepAlive {
    fn new(pings: h2::PingPong, interval: Duration, timeout: Duration) -> KeepAlive {
        KeepAlive {
            pings,
            interval,
            timeout,
            timer: Box::pin(tokio::time::sleep(interval)),
            waiting: false,
        }
    }

    /// Ready when a PING went unanswered for the timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.waiting {
                match self.pings.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        let next = tokio::time::Instant::now() + self.interval;
                        self.timer.as_mut().reset(next);
                        continue;
                    }
                    // The connection is ending: its driver says why.
                    Poll::Ready(Err(_)) => return Poll::Pending,
                    Poll::Pending => {}
                }
                return self.timer.as_mut().poll(cx);
            }
            ready!(self.timer.as_mut().poll(cx));
            if self.pings.send_ping(h2::Ping::opaque()).is_err() {
                return Poll::Pending;
            }
            self.waiting = true;
            let until = tokio::time::Instant::now() + self.timeout;
            self.timer.as_mut().reset(until);
        }
    }
}

/// The request's head as HTTP/2 sends it: an absolute URI (its authority
/// from the `Host` header, else the endpoint's address), no `Host` line,
/// none of HTTP/1.1's connection headers, and the body's length when it is
/// known and not said (as hyper's client did).
fn request<B: HttpBody>(
    parts: &http::request::Parts,
    target: &Target<'_>,
    body: &B,
) -> Request<()> {
    let mut headers = parts.headers.clone();
    unindexed(&mut headers);
    strip_connection_headers(&mut headers);
    // gRPC servers want `te: trailers` (hop-by-hop, so stripped on the way
    // in): it says the client understands the trailers carrying the status.
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    if let Some(len) = body.size_hint().exact() {
        let payload = !matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
        );
        if (len != 0 || payload) && !headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
        }
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
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = headers;
    req
}

/// HTTP/1.1's connection-specific headers, which h2 refuses to send
/// (RFC 9113 §8.2.2): the pipeline strips them on the way in, but a request
/// that asked for an upgrade still carries `Upgrade`, and a `te` other than
/// `trailers` is not HTTP/2's. Looked for in one pass over the names, which
/// usually finds none.
fn strip_connection_headers(headers: &mut http::HeaderMap) {
    let present = headers.iter().any(|(name, value)| {
        matches!(
            *name,
            header::CONNECTION | header::TRANSFER_ENCODING | header::UPGRADE
        ) || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
            || (*name == header::TE && value != "trailers")
    });
    if !present {
        return;
    }
    if let Some(listed) = headers.remove(header::CONNECTION)
        && let Ok(listed) = listed.to_str()
    {
        for name in listed.split(',') {
            headers.remove(name.trim());
        }
    }
    for name in [header::TRANSFER_ENCODING, header::UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
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

/// A stream counted on its connection until its response body is dropped.
pub(super) struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(h: &http::HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn connection_headers_are_stripped_and_the_rest_kept() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", "x-hop, keep-alive".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("te", "gzip".parse().unwrap());
        h.insert("x-kept", "2".parse().unwrap());
        strip_connection_headers(&mut h);
        assert_eq!(names(&h), vec!["x-kept"]);

        let mut h = http::HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        h.insert("content-type", "application/grpc".parse().unwrap());
        strip_connection_headers(&mut h);
        assert_eq!(names(&h), vec!["content-type", "te"]);
    }
}
