//! Listening sockets and the accept loop.
//!
//! Every worker has its own socket per listener (`SO_REUSEPORT`), so the
//! kernel spreads new connections across workers and no accept lock is
//! shared. The connection limit is per listener across all workers.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
    // Inherited by every accepted connection (Linux copies the listening
    // socket's options into each one it accepts): one setsockopt(2) here
    // rather than one per connection.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Open connections on one listener, across workers, in all and per
/// client IP.
#[derive(Default)]
pub struct ConnCount(AtomicUsize, PerIp);

/// Open connections per client IP, kept only while the listener has a
/// `max_connections_per_ip`. One lock, taken at accept and at close only.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    /// Takes a place for `ip` unless it already holds `max`.
    fn enter(&self, ip: IpAddr, max: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Entry::Occupied(mut e) = map.entry(ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl ConnCount {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connection's place in the counts: the listener's, and its IP's when
/// it took one.
struct Counted(
    Arc<ConnCount>,
    prometheus_client::metrics::gauge::Gauge,
    Option<IpAddr>,
);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
        if let Some(ip) = self.2 {
            self.0.1.leave(ip);
        }
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
        let per_ip_refused = metrics
            .connections_per_ip_refused
            .get_or_create_owned(&labels);
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors or similar: back off
                        // instead of spinning, keep serving what is open.
                        tracing::warn!(address = %self.address, error = %e, "accept failed");
                        if let Some(shortage) = crate::shortage::Shortage::of(&e) {
                            metrics.local_shortage(shortage, "accept");
                        }
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
            let guard = Counted(self.count.clone(), active.clone(), None);
            let conn = Accepted {
                listener: l.clone(),
                engine: snapshot.config.server.http1,
                tls: self.shared.tls.get(self.address),
                shared: self.shared.clone(),
                local: self.address,
                worker: self.worker,
                shutdown: self.shutdown.clone(),
                per_ip_refused: per_ip_refused.clone(),
            };
            // Boxed: the connection's future is large (every protocol's
            // state), and the spawn would otherwise copy it several
            // times (about 11 KB each) into its task.
            tokio::spawn(Box::pin(conn.serve(stream, peer, guard)));
        }
    }
}

/// An accepted connection within the listener's cap, before its PROXY
/// header (if the listener takes one) and its client IP's cap.
struct Accepted {
    listener: Arc<crate::snapshot::Listener>,
    engine: crate::config::Http1Engine,
    tls: Option<Arc<crate::tls::Terminator>>,
    shared: Arc<Shared>,
    local: SocketAddr,
    worker: usize,
    shutdown: watch::Receiver<bool>,
    per_ip_refused: prometheus_client::metrics::counter::Counter,
}

impl Accepted {
    async fn serve(self, mut stream: tokio::net::TcpStream, peer: SocketAddr, mut guard: Counted) {
        let l = &self.listener;
        // With a load balancer in front, its header names the client:
        // every check and log below sees that address, not the balancer's.
        let client = match &l.proxy_protocol {
            None => peer,
            Some(accept) => {
                match crate::wire::proxy_protocol::read(&mut stream, peer, accept).await {
                    Ok(client) => client,
                    Err(reason) => {
                        self.shared
                            .metrics
                            .tcp
                            .proxy_protocol_refused
                            .get_or_create(&crate::observe::tcp::ReasonLabels {
                                listener: l.name.to_string(),
                                reason,
                            })
                            .inc();
                        tracing::debug!(listener = %l.name, %peer, reason, "PROXY protocol header refused");
                        return;
                    }
                }
            }
        };
        if l.max_connections_per_ip > 0 {
            let ip = client.ip().to_canonical();
            if !guard.0.1.enter(ip, l.max_connections_per_ip) {
                self.per_ip_refused.inc();
                if l.tcp.is_some() || self.tls.is_some() {
                    // Neither a TCP client nor a TLS one can read a
                    // plain-text 429.
                    return;
                }
                // Answered, not just closed, so that an HTTP client
                // knows why; the answer keeps its place in the
                // listener's count, which bounds how many there are.
                conn::too_many_connections(stream, self.shared.id_seed).await;
                drop(guard);
                return;
            }
            guard.2 = Some(ip);
        }
        if let Some(routes) = &l.tcp {
            let front = crate::tcp::Front {
                listener: l.name.clone(),
                routes: routes.clone(),
                tls: self.tls,
                hello_timeout: l.header_timeout,
            };
            // Boxed, as the TLS branch below: only the plain HTTP branch
            // stays inline, so a plain connection's task is a third of
            // the size (an idle keep-alive connection or WebSocket tunnel
            // holds it for its whole life).
            Box::pin(crate::tcp::accept(stream, client, front, self.shared)).await;
            drop(guard);
            return;
        }
        let settings = Settings {
            header_timeout: l.header_timeout,
            idle_timeout: l.idle_timeout,
            max_header_bytes: l.max_header_bytes,
            engine: self.engine,
            http2: l.http2.clone(),
            // Dropped when the connection ends, by whichever task serves it.
            hold: Some(Box::new(guard)),
        };
        let phase = Arc::new(Phase::default());
        let cx = ConnCtx {
            shared: self.shared.clone(),
            client,
            local: self.local,
            cycle: phase.clone(),
            worker: self.worker,
            tls: None,
        };
        match self.tls {
            None => conn::serve(stream, Arc::new(cx), phase, settings, self.shutdown).await,
            Some(t) => {
                Box::pin(conn::serve_tls(
                    stream,
                    t,
                    cx,
                    phase,
                    settings,
                    self.shutdown,
                ))
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Accepted connections get TCP_NODELAY from the listening socket,
    /// which is why the accept loop does not set it on each.
    #[test]
    fn accepted_connections_inherit_nodelay() {
        let listener = super::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        listener.set_nonblocking(false).expect("blocking");
        let addr = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"));
        assert!(!client.nodelay().expect("getsockopt"));
    }
}
