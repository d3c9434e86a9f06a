//! WebSocket tunnels: what an HTTP/1.1 connection becomes after the
//! endpoint answered its `Upgrade: websocket` request with a 101.
//!
//! The request went through the whole pipeline (routing, limits, the
//! cluster's bulkhead, balancing, breakers); its `record::Completion` is
//! held for the life of the tunnel, so the tunnel keeps its bulkhead place
//! and counts as in flight on its endpoint (least_conn and p2c see it)
//! until it closes, and the access log gets one line when it ends.
//!
//! `copy` moves the bytes both ways with buffers held only while bytes
//! move (and, between two plain TCP sockets, the rest of each frame of
//! 64 KiB or more by splice(2), which keeps every frame header in view);
//! `life` decides, with the clock passed in, when Levee closes a
//! tunnel (idle timeout, reload, shutdown, endpoint out of service);
//! `frame` knows where WebSocket frames begin, so that such a close sends
//! each side a close frame with status 1001 (going away) between two frames
//! instead of a reset.

pub mod copy;
pub mod frame;
pub mod life;

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::cluster::{Cluster, EndpointLive};
use crate::config::websocket::WebSocketConfig;
use crate::observe::websocket::{BytesLabels, EndLabels, ListenerLabels};
use crate::shared::Shared;
use crate::upstream::conn::Stream;
use copy::{Both, Half, Seen, Side};
use frame::Frames;
use life::{Close, Life, Timeouts};

/// How often an open tunnel looks whether a reload happened or its
/// endpoint left service.
const WATCH_PERIOD: Duration = Duration::from_millis(250);

/// How long a close may take: flushing what is buffered, the close frames,
/// and reading what the sides still send until they close.
const CLOSE_TIME: Duration = Duration::from_secs(1);

/// Put in a request's extensions by a client connection that can become a
/// tunnel (Levee's HTTP/1.1 server); without it an upgrade is not asked of
/// the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct CanTunnel;

/// Whether a request asks for a WebSocket tunnel (RFC 6455 §4.1): a GET
/// without a body whose `Connection` lists `upgrade` and whose `Upgrade`
/// lists `websocket`. Any other upgrade (`h2c`, ...) is not tunnelled: the
/// header is dropped like any hop-by-hop header.
pub fn is_websocket(method: &http::Method, headers: &http::HeaderMap) -> bool {
    use http::header::{CONNECTION, UPGRADE};
    let lists = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    method == http::Method::GET && lists(CONNECTION, "upgrade") && lists(UPGRADE, "websocket")
}

/// The endpoint's side of a tunnel, and what the tunnel needs to know of
/// where it came from.
pub struct Upgraded {
    pub stream: Stream,
    /// What the endpoint sent after its 101 head, in the same read.
    pub early: Bytes,
    pub listener: Arc<str>,
    pub cluster: Arc<Cluster>,
    pub endpoint: SocketAddr,
    pub live: Arc<EndpointLive>,
    pub settings: WebSocketConfig,
    pub shared: Arc<Shared>,
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed first.
    ClientClosed,
    /// The endpoint closed first.
    EndpointClosed,
    /// Closed by Levee, with 1001 to both sides.
    Closed(Close),
    /// A read or write failed (a reset).
    Error,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::EndpointClosed => "endpoint_closed",
            End::Closed(Close::IdleTimeout) => "idle_timeout",
            End::Closed(Close::Reload) => "reload",
            End::Closed(Close::Shutdown) => "shutdown",
            End::Closed(Close::EndpointDown) => "endpoint_down",
            End::Error => "error",
        }
    }
}

/// What a tunnel did, for its access-log line.
pub struct Ended {
    pub end: End,
    /// Client → endpoint, after the 101.
    pub bytes_in: u64,
    /// Endpoint → client, after the 101.
    pub bytes_out: u64,
}

/// One direction's bookkeeping: frames followed, bytes counted.
struct Flow {
    frames: Frames,
    bytes: u64,
    total: Counter,
}

impl Flow {
    fn new(total: Counter) -> Flow {
        Flow {
            frames: Frames::default(),
            bytes: 0,
            total,
        }
    }

    fn seen(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.frames.feed(bytes);
        self.bytes += bytes.len() as u64;
        self.total.inc_by(bytes.len() as u64);
    }
}

/// One direction's `Seen`: its flow, and the side it reads from (1: the
/// client, 2: the endpoint) for the first end of file.
struct Seeing<'a> {
    flow: &'a mut Flow,
    side: u8,
    first_eof: &'a AtomicU8,
    /// Set when the rest of a large frame may be spliced.
    pipes: Option<&'a Gauge>,
}

impl Seen for Seeing<'_> {
    fn bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            let _ = self
                .first_eof
                .compare_exchange(0, self.side, Relaxed, Relaxed);
        }
        self.flow.seen(bytes);
    }

    fn spliced(&mut self, n: usize) {
        self.flow.frames.skip(n as u64);
        self.flow.bytes += n as u64;
        self.flow.total.inc_by(n as u64);
    }

    /// Only a frame's payload may pass unseen: every header is read, so
    /// the tunnel always knows where a close frame may go.
    fn splice_room(&self) -> Option<(u64, &Gauge)> {
        self.pipes.map(|g| (self.flow.frames.payload_left(), g))
    }
}

/// Holds the listener's open-tunnel gauge up while the tunnel is open.
struct OpenGauge(prometheus_client::metrics::gauge::Gauge);

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs a tunnel between the client (`client`, and the bytes it sent after
/// its request head, `client_early`) and the endpoint, until one side
/// closes or Levee closes it. `shutdown`: the server's graceful shutdown.
pub async fn run<C: Side>(
    client: &mut C,
    client_early: &[u8],
    up: Upgraded,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let start = Instant::now();
    let Upgraded {
        stream: mut upstream,
        early,
        listener,
        cluster,
        endpoint,
        live,
        settings,
        shared,
    } = up;
    let metrics = &shared.metrics.websocket;
    let labels = ListenerLabels {
        listener: listener.to_string(),
    };
    let gauge = metrics.open.get_or_create_owned(&labels);
    gauge.inc();
    let _open = OpenGauge(gauge);
    let bytes = |direction| {
        metrics.bytes.get_or_create_owned(&BytesLabels {
            listener: listener.to_string(),
            direction,
        })
    };
    let mut forth = Flow::new(bytes("in"));
    let mut back = Flow::new(bytes("out"));
    forth.seen(client_early);
    back.seen(&early);
    let mut both = Both {
        forth: Half::with_early(client_early),
        back: Half::with_early(&early),
    };
    drop(early);

    let reloads = shared
        .metrics
        .reloads
        .get_or_create_owned(&crate::observe::metrics::ResultLabels { result: "applied" });
    let mut reloads_seen = reloads.get();
    let timeouts = Timeouts {
        idle: settings.idle_timeout.get(),
        drain: settings.tunnel_drain_timeout.get(),
        grace: settings.endpoint_down_grace.get(),
    };
    let mut life = Life::new(timeouts, start);
    let in_service = |now| {
        live.usable(now)
            && shared
                .snapshot
                .load()
                .clusters
                .iter()
                .find(|c| c.name == cluster.name)
                .is_some_and(|c| c.endpoints.iter().any(|e| e.address == endpoint))
    };
    // An endpoint picked while out of service (the balancer's panic mode)
    // is not closed for being so.
    let watch_endpoint = in_service(start);
    let shutdown_cap = || {
        // Leave the server a moment to see the tunnel gone before its own
        // drain timeout cuts what is left.
        let server = shared.snapshot.load().config.server.drain_timeout.get();
        server.saturating_sub(Duration::from_millis(500))
    };
    let mut shutting = *shutdown.borrow();
    if shutting {
        life.shutting_down(start, shutdown_cap());
    }

    // Which side sent its end of file first.
    // (An atomic only because the closures below share it and the task
    // must be `Send`; 0: nobody yet, 1: the client, 2: the endpoint.)
    let first_eof = AtomicU8::new(0);
    // Splicing the rest of large frames (`copy`), unless turned off.
    let pipes = settings.splice.then_some(&shared.metrics.tcp.pipes);
    let end = loop {
        let wake = life.next().min(Instant::now() + WATCH_PERIOD);
        let (in_before, out_before) = (forth.bytes, back.bytes);
        let copied = tokio::select! {
            r = poll_fn(|cx| both.poll_copy(
                cx,
                client,
                &mut upstream,
                &mut Seeing { flow: &mut forth, side: 1, first_eof: &first_eof, pipes },
                &mut Seeing { flow: &mut back, side: 2, first_eof: &first_eof, pipes },
            )) => Some(r),
            _ = tokio::time::sleep_until(wake.into()) => None,
            _ = shutdown.changed(), if !shutting => {
                shutting = true;
                life.shutting_down(Instant::now(), shutdown_cap());
                None
            }
        };
        let now = Instant::now();
        match copied {
            Some(Ok(())) if first_eof.load(Relaxed) == 2 => break End::EndpointClosed,
            Some(Ok(())) => break End::ClientClosed,
            Some(Err(_)) => break End::Error,
            None => {}
        }
        if forth.bytes != in_before || back.bytes != out_before {
            life.active(now);
        }
        let r = reloads.get();
        if r != reloads_seen {
            reloads_seen = r;
            life.reloaded(now);
        }
        if watch_endpoint {
            life.endpoint(in_service(now), now);
        }
        if let Some(why) = life.due(now) {
            // Boxed: its buffers and timers would otherwise be room in every
            // connection's task (the task is as large as its largest
            // state), open or idle, tunnel or not.
            Box::pin(close(client, &mut upstream, &mut both, &forth, &back)).await;
            break End::Closed(why);
        }
    };
    let duration = start.elapsed();
    metrics
        .tunnels
        .get_or_create(&EndLabels {
            listener: listener.to_string(),
            cluster: cluster.name.to_string(),
            end: end.as_str(),
        })
        .inc();
    metrics
        .duration
        .get_or_create(&labels)
        .observe(duration.as_secs_f64());
    Ended {
        end,
        bytes_in: forth.bytes,
        bytes_out: back.bytes,
    }
}

/// Closes a tunnel politely: what is buffered is written, each side that
/// is between two frames gets a close frame with 1001 (going away), the
/// write sides are shut, and what the sides still send is read (and
/// dropped) until they close, so that the close is not turned into a reset
/// by unread bytes. All within `CLOSE_TIME`.
async fn close<C: Side>(
    client: &mut C,
    upstream: &mut Stream,
    both: &mut Both,
    forth: &Flow,
    back: &Flow,
) {
    let polite = async {
        let _ = poll_fn(|cx| both.forth.poll_write_out(cx, upstream)).await;
        let _ = poll_fn(|cx| both.back.poll_write_out(cx, client)).await;
        if !both.back.is_done() && back.frames.at_boundary() {
            let _ = client
                .write_all(&frame::close_to_client(frame::GOING_AWAY))
                .await;
        }
        if !both.forth.is_done() && forth.frames.at_boundary() {
            let key = crate::cluster::balance::next_random().to_le_bytes();
            let key = [key[0], key[1], key[2], key[3]];
            let _ = upstream
                .write_all(&frame::close_to_endpoint(frame::GOING_AWAY, key))
                .await;
        }
        let _ = tokio::join!(client.shutdown(), upstream.shutdown());
        let mut scratch = [0u8; 512];
        let mut scratch2 = [0u8; 512];
        let drain_client =
            async { while !matches!(client.read(&mut scratch).await, Ok(0) | Err(_)) {} };
        let drain_upstream =
            async { while !matches!(upstream.read(&mut scratch2).await, Ok(0) | Err(_)) {} };
        tokio::join!(drain_client, drain_upstream);
    };
    let _ = tokio::time::timeout(CLOSE_TIME, polite).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_a_websocket_get_is_a_tunnel() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(is_websocket(&Method::GET, &ws));
        assert!(!is_websocket(&Method::POST, &ws));
        for other in ["h2c", "TLS/1.2", "websocketx"] {
            let h = headers(&[("connection", "upgrade"), ("upgrade", other)]);
            assert!(!is_websocket(&Method::GET, &h), "{other}");
        }
        // `Upgrade` without `Connection: upgrade` asks for nothing.
        assert!(!is_websocket(
            &Method::GET,
            &headers(&[("upgrade", "websocket")])
        ));
    }
}
