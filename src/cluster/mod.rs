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
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::ClusterConfig;
use crate::observe::metrics::{EndpointLabels, Metrics, StateLabels, UpstreamLabels};
use balance::{Balancer, Pick};
use health::outlier::{Outlier, OutlierConfig, may_eject};
use health::state::{Check, Lifecycle, State, Thresholds, Transition};
use pool::Pool;

/// Per-endpoint state that outlives snapshots.
pub struct EndpointLive {
    pub address: SocketAddr,
    in_flight: AtomicI64,
    /// Active-check state (WARMING, HEALTHY, DEGRADED, UNHEALTHY, DRAINING).
    lifecycle: Mutex<Lifecycle>,
    /// Passive outlier detection from real traffic.
    outlier: Mutex<Outlier>,
    /// What the lifecycle allows, published as an atomic so that picking an
    /// endpoint never takes a lock.
    in_service: AtomicBool,
    /// Draining endpoints are never picked, not even in panic mode.
    draining: AtomicBool,
    /// Degraded endpoints take requests only when no healthy one can.
    degraded: AtomicBool,
    /// When the endpoint last started taking traffic again after being out
    /// (microseconds after `epoch()`), for the slow-start ramp; `u64::MAX`:
    /// no ramp.
    ramp_from: AtomicU64,
    /// Ejected by outlier detection until this many microseconds after
    /// `epoch()`; 0 when not ejected.
    ejected_until: AtomicU64,
    state_gauges: [Gauge; 5],
    /// Response-time estimate for the latency-aware balancers.
    pub latency: ewma::Latency,
    pub pool: Pool,
    pub reused: Counter,
    pub opened: Counter,
    pub connect_errors: Counter,
    in_flight_gauge: Gauge,
}

/// The instant ejection deadlines are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_micros() as u64
}

const STATES: [State; 5] = [
    State::Warming,
    State::Healthy,
    State::Degraded,
    State::Unhealthy,
    State::Draining,
];

impl EndpointLive {
    /// Whether the endpoint may take new requests: in service by its
    /// lifecycle and not ejected.
    pub fn usable(&self, now: Instant) -> bool {
        self.in_service.load(Ordering::Relaxed)
            && micros(now) >= self.ejected_until.load(Ordering::Relaxed)
    }

    /// The slow-start share of an endpoint that came back at most
    /// `slow_start` ago: 0.1 rising to 1.0.
    fn ramp(&self, slow_start: Duration, now: Instant) -> f64 {
        let from = self.ramp_from.load(Ordering::Relaxed);
        if slow_start.is_zero() || from == u64::MAX {
            return 1.0;
        }
        let elapsed = micros(now).saturating_sub(from) as f64 / 1e6;
        let total = slow_start.as_secs_f64();
        if elapsed >= total {
            1.0
        } else {
            0.1 + 0.9 * elapsed / total
        }
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        micros(now) < self.ejected_until.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> State {
        self.lifecycle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state()
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Stops new requests to this endpoint; those in flight finish. Returns
    /// the transition, or `None` if it was already draining.
    pub fn drain(&self, now: Instant) -> Option<Transition> {
        let mut lifecycle = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        let transition = lifecycle.drain(now);
        self.publish(lifecycle.state());
        transition
    }

    fn publish(&self, state: State) {
        self.draining
            .store(state == State::Draining, Ordering::Relaxed);
        self.degraded
            .store(state == State::Degraded, Ordering::Relaxed);
        self.in_service.store(
            matches!(state, State::Healthy | State::Degraded),
            Ordering::Relaxed,
        );
        for (gauge, s) in self.state_gauges.iter().zip(STATES) {
            gauge.set(i64::from(s == state));
        }
    }

    /// Feeds one active check's result to the lifecycle.
    pub fn record_check(
        &self,
        check: Check,
        thresholds: &Thresholds,
        now: Instant,
    ) -> Option<Transition> {
        let mut lifecycle = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        let transition = lifecycle.record(check, thresholds, now);
        if let Some(t) = &transition {
            let back =
                matches!(t.from, State::Warming | State::Unhealthy) && lifecycle.takes_traffic();
            let ramp = if back { micros(now) } else { u64::MAX };
            if back || !lifecycle.takes_traffic() {
                self.ramp_from.store(ramp, Ordering::Relaxed);
            }
        }
        self.publish(lifecycle.state());
        transition
    }

    /// Sets the lifecycle outright (a cluster without active checks is
    /// healthy by definition).
    fn reset(&self, state: State, now: Instant) {
        let mut lifecycle = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        if lifecycle.state() != state && lifecycle.state() != State::Draining {
            *lifecycle = Lifecycle::new(state, now);
        }
        self.publish(lifecycle.state());
    }

    /// Feeds one response to outlier detection. Returns why and for how
    /// long the endpoint was ejected, if this response ejected it.
    /// `others_ejected`: how many of the cluster's endpoints already are.
    pub fn record_response(
        &self,
        ok: bool,
        cfg: &OutlierConfig,
        max_percent: u32,
        cluster: &Cluster,
        now: Instant,
    ) -> Option<(String, Duration)> {
        let mut outlier = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        let reason = outlier.record(ok, cfg, now)?;
        let ejected = cluster
            .endpoints
            .iter()
            .filter(|e| e.live.is_ejected(now))
            .count();
        if !may_eject(ejected, cluster.endpoints.len(), max_percent) {
            return None;
        }
        let duration = outlier.eject(cfg, now);
        self.ejected_until
            .store(micros(now + duration), Ordering::Relaxed);
        Some((reason, duration))
    }

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

    fn get(
        &self,
        metrics: &Metrics,
        cluster: &str,
        address: SocketAddr,
        initial: State,
    ) -> Arc<EndpointLive> {
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
                let gauge = |state: State| {
                    metrics.endpoint_state.get_or_create_owned(&StateLabels {
                        cluster: cluster.to_owned(),
                        endpoint: address.to_string(),
                        state: state.as_str(),
                    })
                };
                let live = Arc::new(EndpointLive {
                    address,
                    in_flight: AtomicI64::new(0),
                    lifecycle: Mutex::new(Lifecycle::new(initial, Instant::now())),
                    outlier: Mutex::new(Outlier::new()),
                    in_service: AtomicBool::new(false),
                    draining: AtomicBool::new(false),
                    degraded: AtomicBool::new(false),
                    ramp_from: AtomicU64::new(u64::MAX),
                    ejected_until: AtomicU64::new(0),
                    state_gauges: STATES.map(gauge),
                    latency: ewma::Latency::new(LATENCY_DECAY),
                    pool: Pool::new(self.workers),
                    reused: upstream("reused"),
                    opened: upstream("new"),
                    connect_errors: metrics.upstream_connect_errors.get_or_create_owned(&labels),
                    in_flight_gauge: metrics.upstream_in_flight.get_or_create_owned(&labels),
                });
                live.publish(initial);
                live
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
    pub health_check: Option<crate::config::HealthCheckConfig>,
    /// Passive outlier detection, when enabled.
    pub outlier: Option<OutlierConfig>,
    pub max_ejection_percent: u32,
    /// Percent of usable primaries below which picking ignores health.
    pub panic_threshold: u32,
    pub slow_start: Duration,
    /// Session affinity cookie name, and each endpoint's opaque token.
    pub affinity_cookie: Option<String>,
    affinity_tokens: Vec<String>,
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
    /// `first`: the configuration Levee starts with. Endpoints are healthy
    /// then (traffic flows at once); an endpoint added later to a cluster
    /// with active checks starts WARMING and takes traffic only after
    /// `healthy_threshold` passing checks.
    pub fn build(
        config: &ClusterConfig,
        live: &LiveRegistry,
        metrics: &Metrics,
        first: bool,
    ) -> Cluster {
        let initial = if config.health_check.is_some() && !first {
            State::Warming
        } else {
            State::Healthy
        };
        let name = config.name.get_ref().as_str();
        let endpoints: Vec<Endpoint> = config
            .endpoints
            .iter()
            .map(|e| Endpoint {
                address: *e.address.get_ref(),
                weight: *e.weight.get_ref(),
                backup: e.backup,
                live: live.get(metrics, name, *e.address.get_ref(), initial),
            })
            .collect();
        if config.health_check.is_none() {
            // Nothing would ever move these endpoints again: take any
            // verdict of an earlier configuration's checks back.
            let now = Instant::now();
            for e in &endpoints {
                e.live.reset(State::Healthy, now);
            }
        }
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
            health_check: config.health_check.clone(),
            outlier: config.outlier_detection.enabled.then(|| {
                let o = &config.outlier_detection;
                OutlierConfig {
                    consecutive_failures: o.consecutive_failures,
                    failure_rate: o.failure_rate,
                    min_requests: o.min_requests,
                    window: o.window.get(),
                    base_ejection: o.base_ejection.get(),
                    max_ejection: o.max_ejection.get(),
                }
            }),
            max_ejection_percent: config.outlier_detection.max_ejection_percent,
            panic_threshold: config.panic_threshold,
            slow_start: config.slow_start.get(),
            affinity_cookie: config.affinity_cookie.as_ref().map(|c| c.get_ref().clone()),
            affinity_tokens: endpoints
                .iter()
                .map(|e| {
                    // Opaque, stable across instances and restarts, and not
                    // the address: clients learn nothing of the topology.
                    let h = balance::stable_hash(format!("{name}/{}", e.address).as_bytes());
                    format!("{h:016x}")
                })
                .collect(),
            balancer: balance::build(config, &members),
            endpoints,
        }
    }

    /// The endpoint for the next request: a primary if any is usable,
    /// otherwise a backup. `None` when the cluster has nothing to offer.
    /// Session affinity: the endpoint a client's affinity token names, if it
    /// may take the request. `None` means: pick afresh (and re-issue the
    /// cookie), so a session moves when its endpoint goes away instead of
    /// failing.
    pub fn pinned(
        &self,
        token: &str,
        now: Instant,
        avoid: Option<SocketAddr>,
    ) -> Option<&Endpoint> {
        let i = self.affinity_tokens.iter().position(|t| t == token)?;
        let e = &self.endpoints[i];
        (e.live.usable(now) && Some(e.address) != avoid).then_some(e)
    }

    /// The affinity token of an endpoint of this cluster.
    pub fn affinity_token(&self, address: SocketAddr) -> Option<&str> {
        let i = self.endpoints.iter().position(|e| e.address == address)?;
        self.affinity_tokens.get(i).map(String::as_str)
    }

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
        let up = |i: usize| self.endpoints[i].live.usable(now) && !avoid(i);
        let primary = |i: usize| !self.endpoints[i].backup && up(i);
        // Slow start: an endpoint back in service for less than `slow_start`
        // takes only its ramp's share of its turns (a coin per pick, so it
        // works with every balancer).
        // Degraded endpoints take requests only when no healthy one can.
        let healthy = |i: usize| primary(i) && !self.endpoints[i].live.is_degraded();
        let ramped = |i: usize| {
            if !healthy(i) {
                return false;
            }
            let share = self.endpoints[i].live.ramp(self.slow_start, now);
            let coin = input.random ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            share >= 1.0 || ((coin >> 11) as f64 / (1u64 << 53) as f64) < share
        };
        let backup = |i: usize| self.endpoints[i].backup && up(i);
        // Panic mode: when no endpoint is usable, spread over every primary
        // rather than refuse everything; health verdicts can be wrong, and a
        // request sent may still succeed.
        let panic = |i: usize| {
            let e = &self.endpoints[i];
            !e.backup && !avoid(i) && !e.live.is_draining()
        };
        let ctx = |usable| Pick {
            usable,
            stats: &stats,
            key: input.key,
            random: input.random,
            now,
        };
        // Below the panic threshold, the few usable primaries would take
        // everything: spread over all of them instead.
        if self.panic_threshold > 0 {
            let primaries = self.endpoints.iter().filter(|e| !e.backup).count();
            let usable = (0..self.endpoints.len()).filter(|&i| primary(i)).count();
            if primaries > 0 && usable * 100 < primaries * self.panic_threshold as usize {
                let i = self.balancer.pick(&ctx(&panic))?;
                return self.endpoints.get(i);
            }
        }
        let i = self
            .balancer
            .pick(&ctx(&ramped))
            .or_else(|| self.balancer.pick(&ctx(&healthy)))
            .or_else(|| self.balancer.pick(&ctx(&primary)))
            .or_else(|| self.balancer.pick(&ctx(&backup)))
            .or_else(|| self.balancer.pick(&ctx(&panic)))?;
        self.endpoints.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster of four primaries and one backup, with `extra` cluster keys.
    fn cluster(extra: &str) -> Cluster {
        let mut text = format!("[[clusters]]\nname = \"c\"\n{extra}\n");
        for port in 1..=4 {
            text.push_str(&format!(
                "[[clusters.endpoints]]\naddress = \"127.0.0.1:{port}\"\n"
            ));
        }
        text.push_str("[[clusters.endpoints]]\naddress = \"127.0.0.1:9\"\nbackup = true\n");
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        Cluster::build(
            &config.clusters[0],
            &LiveRegistry::new(1),
            &Metrics::new(),
            true,
        )
    }

    fn down(c: &Cluster, i: usize, now: Instant) {
        let one = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        c.endpoints[i].live.record_check(Check::Fail, &one, now);
        assert!(!c.endpoints[i].live.usable(now));
    }

    /// Ports picked by 100 requests.
    fn picks(c: &Cluster, now: Instant) -> Vec<u16> {
        let input = PickInput {
            now,
            key: 0,
            random: 0,
            avoid: None,
        };
        let mut ports: Vec<u16> = (0..100)
            .map(|_| c.pick(&input).map_or(0, |e| e.address.port()))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    #[test]
    fn unusable_primaries_then_backup_then_panic() {
        let now = Instant::now();
        let c = cluster("");
        for i in 0..3 {
            down(&c, i, now);
        }
        assert_eq!(picks(&c, now), [4], "the usable primary takes it all");
        down(&c, 3, now);
        assert_eq!(picks(&c, now), [9], "no primary: the backup");
        down(&c, 4, now);
        assert_eq!(
            picks(&c, now),
            [1, 2, 3, 4],
            "nothing usable: panic over the primaries"
        );
        c.endpoints[0].live.drain(now);
        assert_eq!(picks(&c, now), [2, 3, 4], "draining is never picked");
    }

    #[test]
    fn slow_start_ramps_a_returning_endpoint() {
        let now = Instant::now();
        let c = cluster("slow_start = \"10s\"");
        let one = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        c.endpoints[0].live.record_check(Check::Fail, &one, now);
        c.endpoints[0].live.record_check(Check::Pass, &one, now);
        let share = |at: Instant| {
            let mut state = 7;
            let hits = (0..4000)
                .filter(|_| {
                    let input = PickInput {
                        now: at,
                        key: 0,
                        random: balance::testing::rng(&mut state),
                        avoid: None,
                    };
                    c.pick(&input).map(|e| e.address.port()) == Some(1)
                })
                .count();
            hits as f64 / 4000.0
        };
        let (start, half, done) = (
            share(now),
            share(now + Duration::from_secs(5)),
            share(now + Duration::from_secs(10)),
        );
        // Four primaries: a full share is 25 %.
        assert!(start < 0.06, "at the start: {start}");
        assert!(start < half && half < done, "{start} {half} {done}");
        assert!((0.2..0.3).contains(&done), "after slow start: {done}");
    }

    #[test]
    fn below_the_panic_threshold_spread_over_all_primaries() {
        let now = Instant::now();
        let c = cluster("panic_threshold = 50");
        down(&c, 0, now);
        down(&c, 1, now);
        // 2 of 4 usable: not below 50 %.
        assert_eq!(picks(&c, now), [3, 4]);
        down(&c, 2, now);
        // 1 of 4 usable: 25 % < 50 %.
        assert_eq!(picks(&c, now), [1, 2, 3, 4]);
    }
}
