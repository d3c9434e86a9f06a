//! HTTP/2 to endpoints with prior knowledge (a cluster's `protocol = "h2c"`),
//! multiplexed: each worker keeps a few connections per endpoint, and a
//! request goes on the one with the fewest streams in flight; another
//! connection is opened only when every one carries `STREAMS_PER_CONN`
//! (up to `MAX_CONNS`), so requests spread instead of piling onto one
//! connection while a single one suffices for light traffic.
//!
//! The protocol is hyper's HTTP/2 client; each connection's driver runs as
//! a task on the worker that opened it. The request body, which the caller
//! lends (`&mut B`, so that a retry can resend it), is pumped by the
//! request's task into a small channel that the connection reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::mpsc;

use super::codec::ResponseHead;
use super::conn::{Conn, ConnectError};
use super::{BoxError, Error, Exchange, Target};

/// Streams one connection carries before another is opened beside it.
const STREAMS_PER_CONN: usize = 100;
/// Connections per endpoint and worker at most; beyond, the least loaded
/// one takes the stream (the endpoint's own limit queues it).
const MAX_CONNS: usize = 4;
/// PING an idle-looking connection this often; unanswered for
/// `PING_TIMEOUT`, it is closed and the next request opens another.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// One multiplexed connection and how many streams it carries now.
struct Shared {
    send: SendRequest<ChannelBody>,
    in_flight: Arc<AtomicUsize>,
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

    /// The open connection with the fewest streams, unless all carry
    /// `STREAMS_PER_CONN` and another may be opened.
    fn pick(&self, worker: usize) -> Option<(SendRequest<ChannelBody>, Arc<AtomicUsize>)> {
        let slot = self.slots.get(worker)?;
        let mut conns = slot.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| !c.send.is_closed());
        let best = conns
            .iter()
            .min_by_key(|c| c.in_flight.load(Ordering::Relaxed))?;
        let load = best.in_flight.load(Ordering::Relaxed);
        if load >= STREAMS_PER_CONN && conns.len() < MAX_CONNS {
            return None;
        }
        Some((best.send.clone(), best.in_flight.clone()))
    }

    fn add(&self, worker: usize, send: SendRequest<ChannelBody>, in_flight: Arc<AtomicUsize>) {
        if let Some(slot) = self.slots.get(worker) {
            let mut conns = slot.lock().unwrap_or_else(|p| p.into_inner());
            conns.push(Shared { send, in_flight });
        }
    }

    /// Open connections across workers.
    pub fn open_count(&self) -> usize {
        self.slots
            .iter()
            .map(|s| {
                s.lock()
                    .map(|v| v.iter().filter(|c| !c.send.is_closed()).count())
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// Sends the request on a multiplexed connection to `target` and reads the
/// response head.
pub async fn send<B>(
    target: &Target<'_>,
    parts: &http::request::Parts,
    body: &mut B,
) -> Result<Exchange, Error>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    let pool = target.pool;
    let mut picked = pool.h2.pick(target.worker);
    let opening = match (&picked, pool.h2.opening.get(target.worker)) {
        (None, Some(lock)) => {
            let held = lock.lock().await;
            picked = pool.h2.pick(target.worker);
            Some(held)
        }
        _ => None,
    };
    let (mut send, in_flight, connect) = match picked {
        Some((send, in_flight)) => {
            pool.counters.reused.inc();
            (send, in_flight, None)
        }
        None => {
            let started = Instant::now();
            let send = match open(target).await {
                Ok(s) => s,
                Err(e) => {
                    pool.counters.connect_errors.inc();
                    return Err(e);
                }
            };
            pool.counters.opened.inc();
            let in_flight = Arc::new(AtomicUsize::new(0));
            pool.h2.add(target.worker, send.clone(), in_flight.clone());
            (send, in_flight, Some(started.elapsed()))
        }
    };
    drop(opening);
    let guard = InFlight::enter(in_flight);
    send.ready()
        .await
        .map_err(|e| Error::Send(std::io::Error::other(e)))?;

    let (tx, rx) = mpsc::channel(2);
    let empty = body.is_end_stream();
    let request = request(
        parts,
        target,
        ChannelBody {
            rx: Some(rx),
            empty,
        },
    );
    let response = send.send_request(request);
    // The body goes out while the head is awaited; an endpoint that
    // answers (or resets) early stops the pump (the channel closes).
    let (pumped, response) = tokio::join!(pump(body, tx, empty), response);
    pumped?;
    let response = response.map_err(|e| {
        if e.is_canceled() || e.is_closed() {
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
            _in_flight: guard,
        }),
        reused: connect.is_none(),
        connect,
    })
}

/// A new connection to `target`, its HTTP/2 handshake done and its driver
/// running on this worker.
async fn open(target: &Target<'_>) -> Result<SendRequest<ChannelBody>, Error> {
    // Cleartext: config refuses `h2c` together with `[clusters.tls]`.
    let conn = Conn::connect(target.address, target.connect_timeout, None)
        .await
        .map_err(|e| match e {
            ConnectError::TimedOut => Error::ConnectTimeout(target.connect_timeout),
            ConnectError::Refused(e) | ConnectError::Handshake(e) => Error::Connect(e),
        })?;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true);
    let handshake = builder.handshake(TokioIo::new(conn.stream));
    let (send, driver) = tokio::time::timeout(target.connect_timeout, handshake)
        .await
        .map_err(|_| Error::ConnectTimeout(target.connect_timeout))?
        .map_err(|e| Error::Connect(std::io::Error::other(e)))?;
    tokio::spawn(async move {
        // Ends when the endpoint or the pool (every handle dropped) closes it.
        if let Err(e) = driver.await {
            tracing::debug!(error = %e, "HTTP/2 connection to an endpoint ended");
        }
    });
    Ok(send)
}

/// The request as HTTP/2 sends it: an absolute URI (its authority from the
/// `Host` header, else the endpoint's address) and no `Host` line.
fn request(
    parts: &http::request::Parts,
    target: &Target<'_>,
    body: ChannelBody,
) -> Request<ChannelBody> {
    let mut headers = parts.headers.clone();
    // gRPC servers want `te: trailers` (hop-by-hop, so stripped on the way
    // in): it says the client understands the trailers carrying the status.
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    let authority = headers
        .remove(header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_owned))
        .unwrap_or_else(|| target.address.to_string());
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path)
        .build()
        .or_else(|_| {
            Uri::builder()
                .scheme("http")
                .authority(target.address.to_string().as_str())
                .path_and_query(path)
                .build()
        })
        .unwrap_or_else(|_| Uri::from_static("/"));
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = headers;
    req
}

/// Feeds the caller's body into the channel the connection reads.
async fn pump<B>(body: &mut B, tx: mpsc::Sender<Frame<Bytes>>, empty: bool) -> Result<(), Error>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    if empty {
        return Ok(());
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::RequestBody(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        let data: Bytes = data.copy_to_bytes_all();
        if tx.send(Frame::data(data)).await.is_err() {
            // The endpoint is done with the request (answered or reset).
            return Ok(());
        }
    }
    Ok(())
}

trait CopyAll {
    fn copy_to_bytes_all(self) -> Bytes;
}

impl<T: bytes::Buf> CopyAll for T {
    fn copy_to_bytes_all(mut self) -> Bytes {
        let n = self.remaining();
        self.copy_to_bytes(n)
    }
}

/// The request body as the connection reads it: what the request's task
/// pumps in, ended when the pump drops its sender.
pub struct ChannelBody {
    rx: Option<mpsc::Receiver<Frame<Bytes>>>,
    empty: bool,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.empty || self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.empty {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
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
    _in_flight: InFlight,
}

impl H2Body {
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.incoming).poll_frame(cx)
    }

    pub fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
