//! The copy of a TCP connection's bytes both ways, with bounded buffers
//! (a side that does not read stops the other side's reads: back-pressure,
//! not buffering), a half-close passed on (a client that shuts down its
//! write side still gets the rest of the answer; with `half_close =
//! false`, the first end of file ends the connection instead, as nginx's
//! `stream` does: no shutdown(2), and no wait for the other side's end of
//! file, whose bytes still in flight are dropped), and three ways to end
//! early: the idle timeout, the endpoint leaving service (with
//! `on_endpoint_down = "shutdown_sessions"`), and an error.
//!
//! For a plain TCP client, `copy = "auto"` (the default) and `"splice"`
//! use `super::splice` (userspace first then splice(2), or splice(2) from
//! the start); `"userspace"`, and every TLS client, `tunnel::copy`'s copy
//! as for WebSocket tunnels (16 KiB read at most per direction into a
//! buffer taken only while bytes move, so an idle connection holds none,
//! and never zeroed). The ends above are the same for all.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;

use crate::cluster::{Cluster, EndpointLive};
use crate::config::{OnEndpointDown, TcpCopy};
use crate::shared::Shared;
use crate::tunnel::copy::{Both, Side};

/// How often an open connection looks whether its endpoint is still in
/// service, with `shutdown_sessions` (a connection without it never looks).
const WATCH_PERIOD: Duration = Duration::from_millis(250);

/// How a TCP connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed first (its end of file, then the endpoint's).
    ClientClosed,
    /// The endpoint closed first.
    EndpointClosed,
    IdleTimeout,
    /// Closed by `on_endpoint_down = "shutdown_sessions"`.
    EndpointDown,
    /// Every connect failed.
    ConnectFailed,
    /// Levee was short of file descriptors, ports or memory to connect.
    LocalShortage,
    /// No endpoint may take a connection.
    NoEndpoint,
    BreakerOpen,
    BulkheadFull,
    /// A read or write failed (a reset).
    Error,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::EndpointClosed => "endpoint_closed",
            End::IdleTimeout => "idle_timeout",
            End::EndpointDown => "endpoint_down",
            End::ConnectFailed => "connect_failed",
            End::LocalShortage => "local_shortage",
            End::NoEndpoint => "no_endpoint",
            End::BreakerOpen => "breaker_open",
            End::BulkheadFull => "bulkhead_full",
            End::Error => "error",
        }
    }
}

const NOBODY: u8 = 0;
const CLIENT: u8 = 1;
const ENDPOINT: u8 = 2;

/// One connection's byte counts and last activity, shared by the two
/// directions of the copy and the loop that watches it.
pub struct Counts {
    base: Instant,
    /// Milliseconds from `base` to the last byte read either way.
    last: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Which side sent its end of file first.
    first_eof: AtomicU8,
    total_in: Counter,
    total_out: Counter,
}

impl Counts {
    /// `totals`: the listener's byte counters (in, out).
    pub fn new(totals: &(Counter, Counter)) -> Counts {
        Counts {
            base: Instant::now(),
            last: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            first_eof: AtomicU8::new(NOBODY),
            total_in: totals.0.clone(),
            total_out: totals.1.clone(),
        }
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Relaxed)
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Relaxed)
    }

    fn last_activity(&self) -> Instant {
        self.base + Duration::from_millis(self.last.load(Relaxed))
    }

    fn read(&self, side: u8, n: usize) {
        if n == 0 {
            let _ = self
                .first_eof
                .compare_exchange(NOBODY, side, Relaxed, Relaxed);
            return;
        }
        let (count, total) = if side == CLIENT {
            (&self.bytes_in, &self.total_in)
        } else {
            (&self.bytes_out, &self.total_out)
        };
        count.fetch_add(n as u64, Relaxed);
        total.inc_by(n as u64);
        let ms = self.base.elapsed().as_millis();
        self.last
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Relaxed);
    }
}

/// Whether a connection idle since `last` has passed its idle timeout.
pub fn idle_expired(last: Instant, idle_timeout: Duration, now: Instant) -> bool {
    now.saturating_duration_since(last) >= idle_timeout
}

/// What tells a connection that its endpoint left service.
pub struct EndpointWatch<'a> {
    pub shared: &'a Shared,
    pub cluster: &'a Cluster,
    pub endpoint: SocketAddr,
    pub live: Arc<EndpointLive>,
    pub on: OnEndpointDown,
}

impl EndpointWatch<'_> {
    /// Out of service: unhealthy, ejected, drained, or no longer in its
    /// cluster in the running configuration.
    fn down(&self, now: Instant) -> bool {
        if !self.live.usable(now) {
            return true;
        }
        let snapshot = self.shared.snapshot.load();
        !snapshot
            .clusters
            .iter()
            .find(|c| c.name == self.cluster.name)
            .is_some_and(|c| c.endpoints.iter().any(|e| e.address == self.endpoint))
    }
}

/// A client connection as the relay sees it: plain TCP (which splice(2)
/// can copy) or not.
pub trait Client: Side {
    fn plain_tcp_mut(&mut self) -> Option<&mut TcpStream>;
}

impl Client for TcpStream {
    fn plain_tcp_mut(&mut self) -> Option<&mut TcpStream> {
        Some(self)
    }
}

impl Client for crate::wire::handshake::ServerStream {
    fn plain_tcp_mut(&mut self) -> Option<&mut TcpStream> {
        None
    }
}

/// How a listener's connections are copied: its `copy`, `idle_timeout`
/// and `half_close`.
#[derive(Debug, Clone, Copy)]
pub struct Copying {
    pub copy: TcpCopy,
    pub idle_timeout: Duration,
    /// `false`: the connection ends at the first end of file.
    pub half_close: bool,
}

/// Copies (with `copy`'s way when the client is plain TCP) until the
/// connection ends, and says how it ended. `pipes`: the gauge of pipes
/// in use by splice(2).
pub async fn run<C: Client>(
    mut client: C,
    mut endpoint: TcpStream,
    how: Copying,
    counts: &Counts,
    watch: &EndpointWatch<'_>,
    pipes: &Gauge,
) -> End {
    let Copying {
        copy,
        idle_timeout,
        half_close,
    } = how;
    let userspace_first = match copy {
        TcpCopy::Splice => Some(0),
        TcpCopy::Auto => Some(super::splice::AUTO_AFTER),
        TcpCopy::Userspace => None,
    };
    if let Some(first) = userspace_first
        && let Some(plain) = client.plain_tcp_mut()
    {
        let seen =
            |from_client: bool, n| counts.read(if from_client { CLIENT } else { ENDPOINT }, n);
        let spliced =
            super::splice::copy_both(plain, &mut endpoint, first, half_close, &seen, pipes);
        return watched(spliced, idle_timeout, counts, watch).await;
    }
    // Buffers taken only while bytes move (an idle connection holds
    // none), never zeroed: `tunnel::copy`, as for WebSocket tunnels.
    let (mut client, mut endpoint) = (client, endpoint);
    let mut both = Both::default();
    let copied = poll_fn(move |cx| {
        let copied = both.poll_copy(
            cx,
            &mut client,
            &mut endpoint,
            &mut |b: &[u8]| counts.read(CLIENT, b.len()),
            &mut |b: &[u8]| counts.read(ENDPOINT, b.len()),
        );
        // Without half-close, the first end of file passed on (its
        // side's bytes all written: a TLS client gets its close_notify)
        // ends the connection.
        if !half_close && (both.forth.is_done() || both.back.is_done()) {
            return Poll::Ready(Ok(()));
        }
        copied
    });
    watched(copied, idle_timeout, counts, watch).await
}

/// Runs `copy` until it ends, the idle timeout passes or the endpoint
/// leaves service (`shutdown_sessions`).
async fn watched(
    copy: impl Future<Output = io::Result<()>>,
    idle_timeout: Duration,
    counts: &Counts,
    watch: &EndpointWatch<'_>,
) -> End {
    // An endpoint picked while out of service (the balancer's panic mode)
    // is not closed for being so.
    let watching = watch.on == OnEndpointDown::ShutdownSessions && !watch.down(Instant::now());
    tokio::pin!(copy);
    loop {
        let now = Instant::now();
        let mut wake = counts.last_activity() + idle_timeout;
        if watching {
            wake = wake.min(now + WATCH_PERIOD);
        }
        tokio::select! {
            done = &mut copy => {
                return match done {
                    Ok(_) if counts.first_eof.load(Relaxed) == ENDPOINT => End::EndpointClosed,
                    Ok(_) => End::ClientClosed,
                    Err(_) => End::Error,
                };
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if idle_expired(counts.last_activity(), idle_timeout, now) {
                    return End::IdleTimeout;
                }
                if watching && watch.down(now) {
                    return End::EndpointDown;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_end_has_a_metric_handle() {
        let ends = [
            End::ClientClosed,
            End::EndpointClosed,
            End::IdleTimeout,
            End::EndpointDown,
            End::ConnectFailed,
            End::NoEndpoint,
            End::BreakerOpen,
            End::BulkheadFull,
            End::Error,
        ];
        for e in ends {
            assert!((e as usize) < crate::observe::tcp::ENDS, "{e:?}");
        }
    }

    #[test]
    fn idle_counts_from_the_last_byte() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(10);
        assert!(!idle_expired(t0, idle, t0 + Duration::from_secs(9)));
        assert!(idle_expired(t0, idle, t0 + Duration::from_secs(10)));
        // A clock read before the last byte is not "idle".
        assert!(!idle_expired(t0 + Duration::from_secs(1), idle, t0));
    }
}
