//! Clusters and their endpoints.
//!
//! A `Cluster` is part of an immutable snapshot: its settings, endpoints and
//! balancer are rebuilt on every reload. Each endpoint points at an
//! `EndpointLive`, the state that must survive reloads (in-flight count,
//! connection pool, metric handles), kept in the `LiveRegistry` by
//! (cluster name, address).

pub mod balance;
pub mod ewma;
pub mod health;
pub mod pool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::ClusterConfig;
use crate::observe::metrics::{EndpointLabels, Metrics, UpstreamLabels};
use balance::{Balancer, Pick};
use pool::Pool;

/// Per-endpoint state that outlives snapshots.
pub struct EndpointLive {
    pub address: SocketAddr,
    in_flight: AtomicI64,
    /// Response-time estimate for the latency-aware balancers.
    pub latency: ewma::Latency,
    pub pool: Pool,
    pub reused: Counter,
    pub opened: Counter,
    pub connect_errors: Counter,
    in_flight_gauge: Gauge,
}

impl EndpointLive {
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight_gauge.inc();
        InFlight(self.clone())
    }
}

pub struct InFlight(Arc<EndpointLive>);

impl InFlight {
    pub fn live(&self) -> &Arc<EndpointLive> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.in_flight_gauge.dec();
    }
}

/// How fast old response times stop counting in the latency estimate
/// (linkerd's default).
const LATENCY_DECAY: Duration = Duration::from_secs(10);

/// Keeps each endpoint's live state across reloads.
pub struct LiveRegistry {
    workers: usize,
    endpoints: Mutex<HashMap<(String, SocketAddr), Arc<EndpointLive>>>,
}

impl LiveRegistry {
    pub fn new(workers: usize) -> Self {
        LiveRegistry {
            workers,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    fn get(&self, metrics: &Metrics, cluster: &str, address: SocketAddr) -> Arc<EndpointLive> {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((cluster.to_owned(), address))
            .or_insert_with(|| {
                let labels = EndpointLabels {
                    cluster: cluster.to_owned(),
                    endpoint: address.to_string(),
                };
                let upstream = |connection| {
                    metrics
                        .upstream_requests
                        .get_or_create_owned(&UpstreamLabels {
                            cluster: cluster.to_owned(),
                            endpoint: address.to_string(),
                            connection,
                        })
                };
                Arc::new(EndpointLive {
                    address,
                    in_flight: AtomicI64::new(0),
                    latency: ewma::Latency::new(LATENCY_DECAY),
                    pool: Pool::new(self.workers),
                    reused: upstream("reused"),
                    opened: upstream("new"),
                    connect_errors: metrics.upstream_connect_errors.get_or_create_owned(&labels),
                    in_flight_gauge: metrics.upstream_in_flight.get_or_create_owned(&labels),
                })
            })
            .clone()
    }

    /// Forgets endpoints that the newest config no longer has. Snapshots still
    /// in use keep their own references, so in-flight requests are unaffected.
    pub fn retain(&self, keep: &[(String, SocketAddr)]) {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| keep.contains(k));
    }
}

pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    pub live: Arc<EndpointLive>,
}

pub struct Cluster {
    pub name: Arc<str>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    pub balance: crate::config::Balance,
    /// What to hash, for hash-based balancers only.
    pub hash_key: Option<crate::config::HashKey>,
    pub endpoints: Vec<Endpoint>,
    balancer: Box<dyn Balancer>,
}

/// The per-request inputs of a pick.
pub struct PickInput {
    pub now: std::time::Instant,
    /// Hash of the request's affinity key (0 when the cluster has none).
    pub key: u64,
    pub random: u64,
    /// An endpoint not to pick (the one a connect just failed to).
    pub avoid: Option<SocketAddr>,
}

impl Cluster {
    pub fn build(config: &ClusterConfig, live: &LiveRegistry, metrics: &Metrics) -> Cluster {
        let name = config.name.get_ref().as_str();
        let endpoints: Vec<Endpoint> = config
            .endpoints
            .iter()
            .map(|e| Endpoint {
                address: *e.address.get_ref(),
                weight: *e.weight.get_ref(),
                backup: e.backup,
                live: live.get(metrics, name, *e.address.get_ref()),
            })
            .collect();
        let members: Vec<balance::Member> = endpoints
            .iter()
            .map(|e| balance::Member {
                id: e.address.to_string(),
                weight: e.weight,
            })
            .collect();
        Cluster {
            name: name.into(),
            connect_timeout: config.connect_timeout.get(),
            response_timeout: config.response_timeout.get(),
            pool_max_idle: config.pool_max_idle,
            pool_idle_timeout: config.pool_idle_timeout.get(),
            balance: config.balance,
            hash_key: config.balance.uses_key().then(|| config.hash_key.clone()),
            balancer: balance::build(config, &members),
            endpoints,
        }
    }

    /// The endpoint for the next request: a primary if any is usable,
    /// otherwise a backup. `None` when the cluster has nothing to offer.
    pub fn pick(&self, input: &PickInput) -> Option<&Endpoint> {
        let now = input.now;
        let stats = |i: usize| {
            let live = &self.endpoints[i].live;
            let in_flight = live.in_flight().max(0) as u64;
            balance::Stats {
                in_flight,
                latency: live.latency.latency(now),
                cost: live.latency.cost(in_flight, now),
            }
        };
        let avoid = |i: usize| Some(self.endpoints[i].address) == input.avoid;
        let primary = |i: usize| !self.endpoints[i].backup && !avoid(i);
        let backup = |i: usize| self.endpoints[i].backup && !avoid(i);
        let ctx = |usable| Pick {
            usable,
            stats: &stats,
            key: input.key,
            random: input.random,
            now,
        };
        let i = self
            .balancer
            .pick(&ctx(&primary))
            .or_else(|| self.balancer.pick(&ctx(&backup)))?;
        self.endpoints.get(i)
    }
}
