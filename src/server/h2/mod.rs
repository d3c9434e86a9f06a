//! HTTP/2 from clients: one connection, many streams, each stream one
//! request through the same pipeline as an HTTP/1 request (`proxy::handle`),
//! so routing, rate limits, guards, retries and balancing apply per stream
//! and one client connection spreads over the endpoints.
//!
//! The protocol is hyper's HTTP/2 server (the `h2` crate underneath): the
//! request body reaches the pipeline as the same `hyper::body::Incoming`
//! the HTTP/1 path hands over, and `h2` already implements the defences the
//! limits configure (`config::http2`): the pending-accept and local-error
//! reset counts against rapid reset, the header list size that also bounds
//! CONTINUATION frames, flow-control windows, the send buffer, PING
//! keep-alive with a timeout. What `h2` does not bound, the rate of PING
//! and SETTINGS frames, `flood::Guard` does.
//!
//! `serve` is generic over the stream: a plain TCP stream after the preface
//! was sniffed (h2c with prior knowledge), or a TLS stream whose ALPN chose
//! `h2`.

mod flood;
mod streams;

use std::error::Error as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::client_body::ClientBody;
use super::conn::Settings;
use crate::config::http2::Http2Config;
use crate::proxy::{self, ConnCtx};
pub use streams::{Idle, Streams};

/// Serves one HTTP/2 connection until the client leaves, it breaks a limit,
/// it sits without a stream for the listener's idle timeout, or a shutdown
/// (GOAWAY) has let its open streams finish.
///
/// `cx` is the connection's context; its `cycle` is replaced by the
/// connection's stream count, which the idle timeout watches.
pub async fn serve<S>(
    stream: S,
    cx: Arc<ConnCtx>,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let streams = Arc::new(Streams::default());
    let cx = Arc::new(ConnCtx {
        shared: cx.shared.clone(),
        client: cx.client,
        local: cx.local,
        cycle: streams.clone(),
        worker: cx.worker,
        tls: cx.tls.clone(),
    });
    let service_cx = cx.clone();
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let cx = service_cx.clone();
        let req = req.map(ClientBody::Hyper);
        // hyper spawns a task per stream holding this future: boxed, the
        // task is small, and the pipeline's large future is not copied
        // into it (and again in and out of the task's stages).
        boxed_in_place(move || async move {
            let mut response = crate::chaos::inject::unless_reset(proxy::handle(cx, req).await)?;
            unindexed(response.headers_mut());
            Ok::<_, crate::chaos::inject::ResetByFault>(response)
        })
    });
    let now = Instant::now();
    let flooded = Arc::new(AtomicBool::new(false));
    let stream = flood::Guard::new(stream, flooded.clone(), now);
    let mut conn = builder(&settings.http2).serve_connection(TokioIo::new(stream), service);

    let mut idle = Idle::new(settings.idle_timeout, now);
    // After GOAWAY, the connection ends when its last stream does, once the
    // client acknowledged it; a client that does not (it never answers the
    // PING that follows GOAWAY) is dropped once it has had no stream for
    // DRAIN_GRACE, so that it cannot hold a shutdown to the drain timeout.
    let mut drained = Idle::new(DRAIN_GRACE, now);
    let mut draining = *shutdown.borrow();
    if draining {
        Pin::new(&mut conn).graceful_shutdown();
    }
    // A tick of a quarter of the shorter wait: each fires between 1× and 1.25×.
    let period = (settings.idle_timeout / 4).clamp(Duration::from_millis(10), DRAIN_GRACE / 4);
    let mut wake = now + period;
    loop {
        tokio::select! {
            biased;
            done = &mut conn => {
                if flooded.load(Ordering::Relaxed) {
                    cx.shared.metrics.error("http2_enhance_your_calm");
                } else if let Err(e) = done
                    && let Some(kind) = error_kind(&e)
                {
                    cx.shared.metrics.error(kind);
                }
                return;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                wake = now + period;
                if draining {
                    if drained.expired(&streams, now) {
                        return;
                    }
                } else if idle.expired(&streams, now) {
                    // GOAWAY: the client knows not to open more streams
                    // here; the connection closes once it has none.
                    draining = true;
                    drained = Idle::new(DRAIN_GRACE, now);
                    Pin::new(&mut conn).graceful_shutdown();
                }
            }
            changed = shutdown.changed(), if !draining => {
                draining = true;
                drained = Idle::new(DRAIN_GRACE, Instant::now());
                if changed.is_ok() {
                    Pin::new(&mut conn).graceful_shutdown();
                }
            }
        }
    }
}

/// `Box::pin(make())` with the value written straight into its box: the
/// allocation comes first, so the compiler can build the value there
/// instead of on the stack and then copying it over.
fn boxed_in_place<F: std::future::Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Marks the response headers whose value is new on every response (the
/// request id) as never to be indexed: HPACK would otherwise insert each
/// into the connection's dynamic table, evicting the entries that do
/// repeat, and search an ever longer chain of same-named entries.
fn unindexed(headers: &mut http::HeaderMap) {
    if let Some(v) = headers.get_mut(&crate::proxy::headers::X_REQUEST_ID) {
        v.set_sensitive(true);
    }
}

/// How long a connection sent GOAWAY, without open streams, waits for its
/// client to close it.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// hyper's HTTP/2 server with the listener's limits.
fn builder(limits: &Http2Config) -> http2::Builder<TokioExecutor> {
    let to_u32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(*limits.max_concurrent_streams.get_ref())
        .max_pending_accept_reset_streams(*limits.max_pending_accept_reset_streams.get_ref())
        .max_local_error_reset_streams(*limits.max_local_error_reset_streams.get_ref())
        .max_header_list_size(to_u32(limits.max_header_list_size.get_ref().0))
        .max_frame_size(to_u32(limits.max_frame_size.get_ref().0))
        .initial_stream_window_size(to_u32(limits.initial_stream_window.get_ref().0))
        .initial_connection_window_size(to_u32(limits.initial_connection_window.get_ref().0))
        .max_send_buf_size(
            usize::try_from(limits.max_send_buffer.get_ref().0).unwrap_or(usize::MAX),
        );
    let interval = limits.keepalive_interval.get();
    if !interval.is_zero() {
        b.keep_alive_interval(interval)
            .keep_alive_timeout(limits.keepalive_timeout.get());
    }
    b
}

/// The `levee_errors_total` kind a failed HTTP/2 connection is counted
/// under; `None` for a client that simply went away.
fn error_kind(e: &hyper::Error) -> Option<&'static str> {
    if e.is_timeout() {
        return Some("http2_keepalive_timeout");
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<::h2::Error>() {
            return reason_kind(h2);
        }
        source = s.source();
    }
    None
}

fn reason_kind(e: &::h2::Error) -> Option<&'static str> {
    if e.is_io() {
        return None;
    }
    let reason = e.reason()?;
    Some(match reason {
        ::h2::Reason::NO_ERROR | ::h2::Reason::CANCEL => return None,
        ::h2::Reason::PROTOCOL_ERROR => "http2_protocol_error",
        ::h2::Reason::FLOW_CONTROL_ERROR => "http2_flow_control_error",
        ::h2::Reason::SETTINGS_TIMEOUT => "http2_settings_timeout",
        ::h2::Reason::FRAME_SIZE_ERROR => "http2_frame_size_error",
        ::h2::Reason::COMPRESSION_ERROR => "http2_compression_error",
        ::h2::Reason::ENHANCE_YOUR_CALM => "http2_enhance_your_calm",
        _ => "http2_other_error",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counted_reason_exists_from_the_start() {
        let known = crate::observe::known::ERROR_KINDS;
        for code in 0..=0xd_u32 {
            let e = ::h2::Error::from(::h2::Reason::from(code));
            if let Some(kind) = reason_kind(&e) {
                assert!(known.contains(&kind), "{kind} is not in ERROR_KINDS");
            }
        }
        assert!(known.contains(&"http2_keepalive_timeout"));
        assert_eq!(
            reason_kind(&::h2::Error::from(::h2::Reason::ENHANCE_YOUR_CALM)),
            Some("http2_enhance_your_calm")
        );
        assert_eq!(
            reason_kind(&::h2::Error::from(::h2::Reason::NO_ERROR)),
            None
        );
    }
}
