//! TCP listeners (`protocol = "tcp"`): each client connection is relayed,
//! bytes both ways, to one endpoint of the listener's cluster, beside the
//! HTTP pipeline rather than inside it. The cluster is the same as an HTTP
//! route's: its balancer picks per connection (a hash on the client
//! address for stickiness), its breakers and outlier detection judge
//! connects (`Cluster::pick_for_try` / `record`), its bulkhead caps the
//! connections open at once, and an open connection counts as in flight on
//! its endpoint (least_conn sees it) until it closes.
//!
//! `connect` makes the upstream connection (connect timeout, a failed
//! connect retried on another endpoint); `relay` copies until one side
//! closes, the idle timeout passes or the endpoint leaves service;
//! `log` writes the connection's one access-log line.

pub mod connect;
pub mod log;
pub mod proxy_header;
pub mod relay;
pub mod splice;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;

use crate::observe::tcp as metrics;
use crate::shared::Shared;
pub use crate::snapshot::TcpRelay as Relay;
use crate::wire::sni;
use connect::Refused;
use relay::End;

/// How a tcp listener's connection starts, before it is relayed.
pub struct Front {
    pub listener: Arc<str>,
    /// The listener's cluster and SNI routes.
    pub routes: Arc<sni::SniRoutes<Relay>>,
    /// `[listeners.tls]`: TLS terminated here, the plain bytes relayed.
    pub tls: Option<Arc<crate::tls::Terminator>>,
    /// Time the ClientHello of a passthrough connection has to arrive.
    pub hello_timeout: Duration,
}

/// Serves one client connection of a TCP listener: picks its relay (by
/// SNI for a passthrough listener), terminates TLS if the listener does,
/// then relays. `client`: the client's address (the one a PROXY header
/// carried, when the listener accepts them).
pub async fn accept(stream: TcpStream, client: SocketAddr, front: Front, shared: Arc<Shared>) {
    let relay = if front.routes.is_empty() {
        front.routes.default.clone()
    } else {
        let peeked = tokio::time::timeout(
            front.hello_timeout,
            crate::wire::peek::peek_until(&stream, sni::MAX_HELLO, sni::client_hello),
        )
        .await;
        let refused = match peeked {
            Ok(Ok(sni::Hello::Tls(name))) => match front.routes.pick(name.as_deref()) {
                Some(r) => Err(r.clone()),
                None => Ok("no_match"),
            },
            Ok(Ok(sni::Hello::NotTls)) | Ok(Err(crate::wire::peek::Undecided::TooLarge)) => {
                Ok("not_tls")
            }
            Ok(Err(crate::wire::peek::Undecided::Closed)) => Ok("closed"),
            Err(_) => Ok("timeout"),
        };
        match refused {
            Err(relay) => Some(relay),
            Ok(reason) => {
                shared
                    .metrics
                    .tcp
                    .sni_refused
                    .get_or_create(&metrics::ReasonLabels {
                        listener: front.listener.to_string(),
                        reason,
                    })
                    .inc();
                if reason == "no_match" {
                    // A TLS client reports a handshake failure rather
                    // than an unexplained end of file.
                    crate::wire::linger_close(stream, &crate::wire::sniff::TLS_ALERT).await;
                }
                return;
            }
        }
    };
    // Validation gives a listener without SNI routes a cluster.
    let Some(relay) = relay else { return };
    // Only a PROXY header sent to the endpoint needs the address the
    // client reached (a getsockname(2) per connection otherwise).
    let local = match relay.send_proxy {
        Some(_) => match stream.local_addr() {
            Ok(a) => Some(a),
            Err(_) => return,
        },
        None => None,
    };
    // TCP_NODELAY: inherited from the listening socket (`server::listener::bind`).
    match front.tls {
        None => serve(stream, client, local, relay, shared).await,
        // Boxed: the handshake and a TLS stream are most of this future's
        // size, which every plain connection's task would otherwise carry.
        Some(t) => {
            Box::pin(async move {
                // Failures are counted by reason in the TLS metrics.
                let shaken =
                    crate::wire::handshake::handshake(stream, &t, &shared.metrics.tls).await;
                drop(t);
                if let Ok((tls, _)) = shaken {
                    serve(tls, client, local, relay, shared).await;
                }
            })
            .await
        }
    }
}

/// Relays one client connection of a TCP listener start to finish.
/// `local`: the address it reached Levee at (known when the relay sends
/// PROXY headers).
pub async fn serve<S: relay::Client>(
    client_stream: S,
    client: SocketAddr,
    local: Option<SocketAddr>,
    relay: Arc<Relay>,
    shared: Arc<Shared>,
) {
    let start = Instant::now();
    let started_at = SystemTime::now();
    let mut line = log::Line {
        time: started_at,
        listener: relay.listener.clone(),
        cluster: relay.cluster.name.clone(),
        client,
        endpoint: None,
        attempts: 0,
        connect: None,
        duration: Duration::ZERO,
        bytes_in: 0,
        bytes_out: 0,
        end: End::ClientClosed,
    };
    // The bulkhead caps open connections: a slot is held for the whole
    // connection. Refusals are counted by the guard.
    let permit = match relay.cluster.guard.enter().await {
        Ok(p) => p,
        Err(_) => {
            line.end = End::BulkheadFull;
            finish(&shared, &relay, line, start);
            return;
        }
    };
    let connected = connect::connect(&relay, client, &shared.metrics).await;
    line.attempts = connected.attempts;
    let upstream = match connected.result {
        Ok(up) => up,
        Err(refused) => {
            line.end = match refused {
                Refused::BreakerOpen => End::BreakerOpen,
                Refused::NoEndpoint => End::NoEndpoint,
                Refused::ConnectFailed => End::ConnectFailed,
                Refused::Shortage(_) => End::LocalShortage,
            };
            line.endpoint = connected.last_endpoint;
            finish(&shared, &relay, line, start);
            return;
        }
    };
    line.endpoint = Some(upstream.endpoint);
    line.connect = Some(upstream.took);
    let _ = upstream.stream.set_nodelay(true);
    let mut upstream = upstream;
    if let Some(version) = relay.send_proxy {
        // Before any client byte: the endpoint reads it first.
        let sent = async {
            let local = local.ok_or_else(|| std::io::Error::other("no local address"))?;
            let header = proxy_header::header(version, client, local)?;
            tokio::io::AsyncWriteExt::write_all(&mut upstream.stream, &header).await
        };
        if let Err(e) = sent.await {
            tracing::warn!(listener = %relay.listener, endpoint = %upstream.endpoint, "cannot send the PROXY header: {e}");
            line.end = End::Error;
            drop(upstream.in_flight);
            drop(permit);
            finish(&shared, &relay, line, start);
            return;
        }
    }
    let counts = relay::Counts::new(relay.metrics.bytes(&shared.metrics.tcp, &relay.listener));
    let watch = relay::EndpointWatch {
        shared: &shared,
        cluster: &relay.cluster,
        endpoint: upstream.endpoint,
        live: upstream.in_flight.live().clone(),
        on: relay.on_endpoint_down,
    };
    let end = relay::run(
        client_stream,
        upstream.stream,
        relay::Copying {
            copy: relay.copy,
            idle_timeout: relay.idle_timeout,
            half_close: relay.half_close,
        },
        &counts,
        &watch,
        &shared.metrics.tcp.pipes,
    )
    .await;
    drop(upstream.in_flight);
    drop(permit);
    line.end = end;
    line.bytes_in = counts.bytes_in();
    line.bytes_out = counts.bytes_out();
    finish(&shared, &relay, line, start);
}

/// Counts the connection's end and writes its access-log line.
fn finish(shared: &Shared, relay: &Relay, mut line: log::Line, start: Instant) {
    line.duration = start.elapsed();
    let m = &shared.metrics.tcp;
    let (listener, cluster) = (&relay.listener, &relay.cluster.name);
    let end = line.end;
    relay
        .metrics
        .end(m, listener, cluster, end as usize, end.as_str())
        .inc();
    relay
        .metrics
        .duration(m, listener)
        .observe(line.duration.as_secs_f64());
    if let Some(log) = &shared.access_log {
        log.log_line(line.to_json());
    }
}
