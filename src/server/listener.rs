//! Listening sockets and the accept loop.
//!
//! Every worker has its own socket per listener (`SO_REUSEPORT`), so the
//! kernel spreads new connections across workers and no accept lock is
//! shared. The connection limit is per listener across all workers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::conn::{self, Settings};
use super::phase::Phase;
use crate::observe::metrics::ListenerLabels;
use crate::proxy::ConnCtx;
use crate::shared::Shared;

/// Binds one accept socket for `address`.
pub fn bind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Open connections on one listener, across workers.
#[derive(Default)]
pub struct ConnCount(AtomicUsize);

impl ConnCount {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

struct Counted(Arc<ConnCount>, prometheus_client::metrics::gauge::Gauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
    }
}

pub struct AcceptLoop {
    pub worker: usize,
    pub address: SocketAddr,
    pub socket: std::net::TcpListener,
    pub count: Arc<ConnCount>,
    pub shared: Arc<Shared>,
    /// Set when this listener is removed by a reload.
    pub stop: watch::Receiver<bool>,
    /// Set when the whole server shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl AcceptLoop {
    pub async fn run(mut self) {
        let listener = match TcpListener::from_std(self.socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(address = %self.address, error = %e, "cannot register listening socket");
                return;
            }
        };
        let name = self
            .shared
            .snapshot
            .load()
            .listener(self.address)
            .map(|l| l.name.to_string())
            .unwrap_or_default();
        let labels = ListenerLabels { listener: name };
        let metrics = &self.shared.metrics;
        let accepted = metrics.connections_total.get_or_create_owned(&labels);
        let refused = metrics.connections_refused.get_or_create_owned(&labels);
        let active = metrics.connections_active.get_or_create_owned(&labels);
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors or similar: back off
                        // instead of spinning, keep serving what is open.
                        tracing::warn!(address = %self.address, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = self.stop.changed() => break,
                _ = self.shutdown.changed() => break,
            };
            let snapshot = self.shared.snapshot.load();
            let Some(l) = snapshot.listener(self.address) else {
                continue;
            };
            // One atomic step, so that workers accepting at once cannot
            // both slip past the limit.
            let admitted = self
                .count
                .0
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < l.max_connections).then_some(n + 1)
                });
            if admitted.is_err() {
                refused.inc();
                drop(stream);
                continue;
            }
            accepted.inc();
            active.inc();
            let guard = Counted(self.count.clone(), active.clone());
            let settings = Settings {
                header_timeout: l.header_timeout,
                idle_timeout: l.idle_timeout,
                max_header_bytes: l.max_header_bytes,
            };
            let cx = Arc::new(ConnCtx {
                shared: self.shared.clone(),
                client: peer,
                local: self.address,
                phase: Arc::new(Phase::default()),
                worker: self.worker,
            });
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                conn::serve(stream, cx, settings, shutdown).await;
                drop(guard);
            });
        }
    }
}
