//! One client connection, whatever its transport: the first bytes tell what
//! the client speaks (`sniff`); HTTP/1.1 is served by hyper, wrapped with the
//! header and idle timeouts, graceful shutdown, and the 408 answer for a
//! client that never finishes its request head. Everything here is generic
//! over the stream, so a TLS stream gets the same treatment as a TCP one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::phase::{HeadScan, Phase, Verdict, Watch};
use crate::proxy::{self, ConnCtx, error::json_body, headers};
use crate::wire::linger_close;
use crate::wire::sniff::{self, Prefix, Prefixed, ReadReady, Speaks};

/// Connection settings taken from the listener when the connection is accepted.
pub struct Settings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub engine: crate::config::Http1Engine,
    /// HTTP/2 from clients: whether h2c with prior knowledge is served, and
    /// the limits of an HTTP/2 connection.
    pub http2: Arc<crate::config::http2::Http2Config>,
    /// What must live as long as the connection (its place in the
    /// listener's counts), carried along when an HTTP/2 connection moves
    /// to a task of its own.
    pub hold: Option<Box<dyn Send>>,
}

/// The client socket, telling `Phase` when a new request starts arriving and
/// scanning its head for ambiguous framing.
struct TimedIo<S> {
    inner: Prefixed<S>,
    phase: Arc<Phase>,
    scan: HeadScan,
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let this = &mut *self;
            if this.phase.on_read() {
                this.scan.start();
            }
            let fresh = &buf.filled()[before..];
            if this.scan.done() {
                this.phase.read_after_head(fresh.len());
            } else if let Some((ambiguous, rest)) = this.scan.feed(fresh) {
                if ambiguous {
                    this.phase.mark_ambiguous();
                }
                this.phase.read_after_head(rest);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one connection until the client leaves, a timeout closes it, or a
/// shutdown has let its current request finish.
pub async fn serve<S>(
    mut stream: S,
    cx: Arc<ConnCtx>,
    phase: Arc<Phase>,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    // What the client speaks. Until its first bytes arrive the connection
    // is idle: the idle timeout and a shutdown close it.
    let mut prefix = Prefix::default();
    let speaks = tokio::select! {
        r = prefix.read(&mut stream) => r,
        _ = tokio::time::sleep(settings.idle_timeout) => return,
        _ = shutdown.changed() => return,
    };
    match speaks {
        Ok(Some(Speaks::Http1)) => {}
        Ok(Some(Speaks::Http2)) if settings.http2.enabled => {
            // hyper owns the stream from here: `ReleaseIdle` gives a TLS
            // stream's record buffer back whenever it waits.
            let stream = crate::wire::release::ReleaseIdle::new(Prefixed::new(prefix, stream));
            // A task of its own, sized to HTTP/2's state alone: this task's
            // future is sized by every protocol's (a TLS handshake, the
            // HTTP/1 engine, the TCP relay) and an idle HTTP/2 connection
            // would hold it for its whole life (`tests/h2_idle_memory.rs`).
            // It ends here; `settings.hold` goes along.
            tokio::spawn(super::h2::serve(stream, cx, settings, shutdown));
            return;
        }
        Ok(Some(other)) => {
            let (protocol, answer) = match other {
                Speaks::Http2 => ("http2", sniff::h2_goaway()),
                _ => ("tls", sniff::TLS_ALERT.to_vec()),
            };
            cx.shared
                .metrics
                .wrong_protocol
                .get_or_create(&crate::observe::metrics::ProtocolLabels { protocol })
                .inc();
            // Boxed: a rare end whose room every connection's task would
            // otherwise carry.
            Box::pin(linger_close(stream, &answer)).await;
            return;
        }
        Ok(None) | Err(_) => return,
    }
    let stream = Prefixed::new(prefix, stream);
    if settings.engine == crate::config::Http1Engine::Levee {
        return super::h1::conn::serve(stream, cx, phase, settings, shutdown).await;
    }
    // Boxed: hyper's connection state is large, and this future is what
    // every connection's task holds.
    Box::pin(serve_hyper(stream, cx, phase, settings, shutdown)).await;
}

/// A connection on a TLS listener: the handshake (bounded by the listener's
/// `handshake_timeout`, cut short by a shutdown), then `serve` over the
/// decrypted stream. Plain HTTP on the TLS port is answered 400 (nginx's
/// behaviour) and counted as a wrong protocol.
pub async fn serve_tls(
    stream: TcpStream,
    terminator: Arc<crate::tls::Terminator>,
    mut cx: ConnCtx,
    phase: Arc<Phase>,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::wire::handshake::{Refused, handshake};
    let metrics = &cx.shared.metrics;
    let shaken = tokio::select! {
        r = handshake(stream, &terminator, &metrics.tls) => r,
        _ = shutdown.changed() => return,
    };
    let (stream, info) = match shaken {
        Ok(pair) => pair,
        Err(Refused::PlainHttp(stream)) => {
            metrics
                .wrong_protocol
                .get_or_create(&crate::observe::metrics::ProtocolLabels { protocol: "http" })
                .inc();
            let answer = error_answer(
                http::StatusCode::BAD_REQUEST,
                "plain_http_to_tls_port",
                "the plain HTTP request was sent to a TLS port; use https://",
                &cx,
            );
            linger_close(stream, &answer).await;
            return;
        }
        Err(Refused::Failed) => return,
    };
    drop(terminator);
    cx.tls = Some(Box::new(info));
    // The rest of the connection in a task of its own, with the TLS state
    // on the heap once: awaited here, this task's future kept the
    // handshake's room and a copy of the stream (rustls' connection is
    // ~1.2 KB) in each future it passed through, 7.7 KB for as long as the
    // connection lived (`tests/tls_idle_memory.rs`). `settings.hold` goes
    // along, as for HTTP/2.
    tokio::spawn(serve(
        Box::new(stream),
        Arc::new(cx),
        phase,
        settings,
        shutdown,
    ));
}

/// HTTP/1.1 served by hyper (`server.http1 = "hyper"`).
async fn serve_hyper<S>(
    stream: Prefixed<S>,
    cx: Arc<ConnCtx>,
    phase: Arc<Phase>,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(TimedIo {
        inner: stream,
        phase: phase.clone(),
        scan: HeadScan::default(),
    });
    let service_cx = cx.clone();
    let service = service_fn(move |req| {
        let cx = service_cx.clone();
        let req = req.map(crate::server::client_body::ClientBody::Hyper);
        async move { crate::chaos::inject::unless_reset(proxy::handle(cx, req).await) }
    });
    let mut conn = http1::Builder::new()
        // Our own check answers 431 with a JSON body up to max_header_bytes;
        // hyper's buffer limit is the hard stop beyond that.
        .max_buf_size((settings.max_header_bytes * 2).max(16 * 1024))
        .max_headers(200)
        .serve_connection(io, service);

    let mut draining = *shutdown.borrow();
    if draining {
        Pin::new(&mut conn).graceful_shutdown();
    }
    let mut watch = Watch::new(
        settings.header_timeout,
        settings.idle_timeout,
        Instant::now(),
    );
    let period = watch.period();
    let mut wake = Instant::now() + period;
    loop {
        tokio::select! {
            biased;
            done = &mut conn => {
                if let Err(e) = done {
                    let kind = if e.is_parse_too_large() {
                        Some("headers_too_large")
                    } else if e.is_parse() {
                        Some("bad_request")
                    } else {
                        None
                    };
                    if let Some(kind) = kind {
                        cx.shared.metrics.error(kind);
                    }
                }
                return;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                wake = now + period;
                match watch.tick(&phase, now) {
                    Verdict::Wait => {}
                    Verdict::IdleTimeout => return,
                    Verdict::HeadTimeout => {
                        cx.shared.metrics.error("header_timeout");
                        let stream = conn.into_parts().io.into_inner().inner;
                        request_timeout(stream, &cx).await;
                        return;
                    }
                }
            }
            changed = shutdown.changed(), if !draining => {
                draining = true;
                if changed.is_ok() {
                    Pin::new(&mut conn).graceful_shutdown();
                }
            }
        }
    }
}

/// Answers 408 to a client whose request head did not arrive in time, then
/// closes. The write is bounded: a client that does not read gets nothing.
async fn request_timeout<S: AsyncRead + AsyncWrite + Unpin>(stream: S, cx: &ConnCtx) {
    let answer = error_answer(
        http::StatusCode::REQUEST_TIMEOUT,
        "header_timeout",
        "the request head did not arrive in time",
        cx,
    );
    linger_close(stream, &answer).await;
}

/// A whole response carrying Levee's JSON error body, for errors answered
/// outside the pipeline (no request to route), with `connection: close`.
pub fn error_answer(status: http::StatusCode, code: &str, message: &str, cx: &ConnCtx) -> Vec<u8> {
    let id = headers::request_id(&http::HeaderMap::new(), cx.shared.id_seed);
    let id = id.to_str().unwrap_or("");
    let body = json_body(status, code, message, id);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Answers 429 to a connection beyond its IP's `max_connections_per_ip`,
/// then closes (see `answer_and_close`).
pub async fn too_many_connections(stream: TcpStream, id_seed: u64) {
    let id = headers::request_id(&http::HeaderMap::new(), id_seed);
    let id = id.to_str().unwrap_or("");
    let body = json_body(
        http::StatusCode::TOO_MANY_REQUESTS,
        "too_many_connections",
        "too many open connections from this address",
        id,
    );
    let head = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut answer = head.into_bytes();
    answer.extend_from_slice(&body);
    linger_close(stream, &answer).await;
}
