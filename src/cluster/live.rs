//! Per-endpoint state that outlives snapshots: in-flight count, connection
//! pool, latency estimate, health lifecycle and outlier detector, metric
//! handles. `LiveRegistry` keeps it by (cluster name, address) so a reload
//! finds the same state for the same endpoint. Verdicts are published into
//! atomics, so picking an endpoint reads them without a lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::Cluster;
use super::ewma;
use super::health::outlier::{Outlier, OutlierConfig, may_eject};
use super::health::state::{Check, Lifecycle, State, Thresholds, Transition};
use super::pool::Pool;
use crate::observe::metrics::{EndpointLabels, Metrics, StateLabels, UpstreamLabels};

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
    /// Successful and failed tries, for the observed availability.
    pub tries: crate::availability::observed::Tries,
}

/// The instant ejection deadlines are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(super) fn micros(now: Instant) -> u64 {
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
        // Reading the clock against the epoch costs more than the rest of
        // the check: only when there is an ejection to compare with.
        self.in_service.load(Ordering::Relaxed) && {
            let until = self.ejected_until.load(Ordering::Relaxed);
            until == 0 || micros(now) >= until
        }
    }

    /// The slow-start share of an endpoint that came back at most
    /// `slow_start` ago: 0.1 rising to 1.0.
    pub(super) fn ramp(&self, slow_start: Duration, now: Instant) -> f64 {
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

    /// Takes a drained endpoint back into service: WARMING when its cluster
    /// has active checks (it must pass them first), HEALTHY otherwise.
    pub fn undrain(&self, checked: bool, now: Instant) -> Option<Transition> {
        let mut lifecycle = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        if lifecycle.state() != State::Draining {
            return None;
        }
        let to = if checked {
            State::Warming
        } else {
            State::Healthy
        };
        *lifecycle = Lifecycle::new(to, now);
        self.publish(to);
        Some(Transition {
            from: State::Draining,
            to,
            reason: "undrained (admin API)".into(),
        })
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
    pub(super) fn reset(&self, state: State, now: Instant) {
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
    /// Breakers, retry budgets and bulkheads.
    pub guards: super::guard::GuardRegistry,
    endpoints: Mutex<HashMap<(String, SocketAddr), Arc<EndpointLive>>>,
}

impl LiveRegistry {
    pub fn new(workers: usize) -> Self {
        LiveRegistry {
            workers,
            guards: Default::default(),
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub(super) fn get(
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
                    tries: crate::availability::observed::Tries::new(Instant::now()),
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
