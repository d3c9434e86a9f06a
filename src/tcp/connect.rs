//! The upstream side of a TCP connection: an endpoint picked by the
//! cluster's balancer, admitted by its breakers, connected within the
//! cluster's `connect_timeout`; a failed connect is recorded (outlier
//! detection and breakers see it) and tried again on another endpoint,
//! up to the listener's `connect_attempts`. A connect that Levee's own
//! shortage of file descriptors, ports or memory stopped is not recorded
//! (`crate::shortage`); one out of local ports, which are counted per
//! destination, is tried on another endpoint, the others are not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::Relay;
use crate::cluster::{Cluster, InFlight, PickInput, Unavailable};
use crate::config::{CheckKind, Role};
use crate::observe::Metrics;
use crate::observe::metrics::EndpointLabels;
use crate::resilience::policy::TryResult;
use crate::shortage::Shortage;
use crate::upstream::source;

/// A connect that succeeded counts for the cluster as a 2xx answer does.
const CONNECTED: TryResult = TryResult::Status(200);

/// Why no upstream connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    BreakerOpen,
    NoEndpoint,
    ConnectFailed,
    /// Levee ran out of its own resources: no endpoint is to blame.
    Shortage(Shortage),
}

pub struct Upstream {
    pub stream: TcpStream,
    pub endpoint: SocketAddr,
    /// The successful connect's time.
    pub took: Duration,
    /// The connection's place in its endpoint's in-flight count, held
    /// until it closes.
    pub in_flight: InFlight,
}

pub struct Connected {
    pub result: Result<Upstream, Refused>,
    /// Connects tried.
    pub attempts: u32,
    /// The endpoint of the last failed connect, for the log.
    pub last_endpoint: Option<SocketAddr>,
}

/// The hash a hash-based balancer places a connection by: its client's
/// IP, so that a client keeps reaching the same endpoint.
pub fn client_key(client: SocketAddr) -> u64 {
    match client.ip().to_canonical() {
        std::net::IpAddr::V4(a) => crate::cluster::balance::stable_hash(&a.octets()),
        std::net::IpAddr::V6(a) => crate::cluster::balance::stable_hash(&a.octets()),
    }
}

/// Whether the cluster's check requires a role of its endpoints. An
/// endpoint without it is never connected to, not even in panic mode: a
/// write sent to a replica is worse than a refused connection.
fn strict(cluster: &Cluster) -> bool {
    cluster.health_check.as_ref().is_some_and(|h| {
        matches!(h.kind, CheckKind::Postgres | CheckKind::Redis) && h.role != Role::Any
    })
}

pub async fn connect(relay: &Relay, client: SocketAddr, metrics: &Metrics) -> Connected {
    let cluster = &relay.cluster;
    let mut pick = PickInput {
        now: Instant::now(),
        key: cluster.hash_key.as_ref().map_or(0, |_| client_key(client)),
        random: crate::cluster::balance::next_random(),
        avoid: Vec::new(),
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut out = Connected {
        result: Err(Refused::NoEndpoint),
        attempts: 0,
        last_endpoint: None,
    };
    while out.attempts < relay.connect_attempts {
        let now = Instant::now();
        pick.now = now;
        let chosen = match cluster.pick_for_try(&mut pick, None, &tried, now) {
            Ok(c) => c,
            Err(Unavailable::BreakerOpen(_)) => {
                out.result = Err(Refused::BreakerOpen);
                return out;
            }
            // After failed connects: say so rather than "no endpoint".
            Err(Unavailable::NoEndpoint) => return out,
        };
        let endpoint = chosen.endpoint;
        if strict(cluster) && !endpoint.live.usable(now) {
            return out;
        }
        // After a shortage of local ports, only another endpoint may help.
        if matches!(out.result, Err(Refused::Shortage(_))) && tried.contains(&endpoint.address) {
            return out;
        }
        out.attempts += 1;
        let in_flight = endpoint.live.begin();
        // Without source addresses, tokio's connect as it is: every relayed
        // connection makes one, and a future around it (or the sources'
        // state inside the relay's future) cost 100-300 instructions per
        // connection (`MODE=tcp bench/callgrind.sh`).
        let timeout = cluster.connect_timeout;
        let connected = match cluster.sources.as_deref() {
            None => tokio::time::timeout(timeout, TcpStream::connect(endpoint.address)).await,
            Some(sources) => {
                let connecting = source::connect_from_any(sources, endpoint.address);
                tokio::time::timeout(timeout, Box::pin(connecting)).await
            }
        };
        let end = Instant::now();
        let took = end - now;
        let error = match connected {
            Ok(Ok(stream)) => {
                cluster.record(chosen, CONNECTED, took, end, metrics);
                out.result = Ok(Upstream {
                    stream,
                    endpoint: endpoint.address,
                    took,
                    in_flight,
                });
                return out;
            }
            Ok(Err(e)) => {
                if let Some(shortage) = Shortage::of(&e) {
                    metrics.local_shortage(shortage, "connect");
                    tracing::warn!(
                        listener = %relay.listener,
                        cluster = %cluster.name,
                        endpoint = %endpoint.address,
                        "tcp connect not made, Levee is short of {}: {e}",
                        shortage.as_str()
                    );
                    // Nothing recorded against the endpoint: `in_flight`
                    // is dropped, as after any try.
                    out.result = Err(Refused::Shortage(shortage));
                    if shortage != Shortage::LocalPorts {
                        return out;
                    }
                    // Local ports are per destination: another endpoint
                    // may have some left.
                    tried.push(endpoint.address);
                    pick.random = crate::cluster::balance::next_random();
                    continue;
                }
                e.to_string()
            }
            Err(_) => format!("no connection within {:?}", cluster.connect_timeout),
        };
        let address = endpoint.address;
        cluster.record(chosen, TryResult::ConnectFailure, took, end, metrics);
        metrics
            .upstream_connect_errors
            .get_or_create(&EndpointLabels {
                cluster: cluster.name.to_string(),
                endpoint: address.to_string(),
            })
            .inc();
        tracing::warn!(
            listener = %relay.listener,
            cluster = %cluster.name,
            endpoint = %address,
            "tcp connect {} failed: {error}",
            out.attempts
        );
        out.result = Err(Refused::ConnectFailed);
        out.last_endpoint = Some(address);
        tried.push(address);
        pick.random = crate::cluster::balance::next_random();
    }
    out
}
