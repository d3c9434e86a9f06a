//! Per-endpoint state that outlives snapshots: in-flight count, connection
//! pool, latency estimate, health lifecycle and outlier detector, metric
//! handles. `LiveRegistry` keeps it by (cluster name, address) so a reload
//! finds the same state for the same endpoint. Verdicts are published into
//! atomics, so picking an endpoint reads them without a lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::Cluster;
use super::ewma;
use super::health::outlier::{Ejection, End, Event, Outlier, OutlierConfig, may_eject};
use super::health::state::{Check, Lifecycle, State, Thresholds, Transition};
use super::micros::micros;
use crate::observe::metrics::{
    EndpointLabels, EndpointReasonLabels, Metrics, StateLabels, UpstreamLabels,
};
use crate::upstream::{Counters, Pool};

/// Per-endpoint state that outlives snapshots.
pub struct EndpointLive {
    pub address: SocketAddr,
    /// The cluster's name, for log lines.
    cluster: Arc<str>,
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
    /// (microseconds after the epoch of [`super::micros`]), for the slow-start ramp; `u64::MAX`:
    /// no ramp.
    ramp_from: AtomicU64,
    /// Outlier detection's verdict (`publish_ejection`): ejected until this
    /// many microseconds after the epoch of [`super::micros`]; 0 when not ejected.
    ejected_until: AtomicU64,
    /// After `ejected_until`: `NO_PROBE`, the endpoint is back; `PROBE_OPEN`,
    /// one probe request may be claimed (`take_probe`); later values, a
    /// probe is in flight and the next may be claimed at that time.
    probe: AtomicU64,
    /// Ejections ended, by `End` (in `End::ALL` order).
    ejections_ended: [Counter; 3],
    state_gauges: [Gauge; 5],
    /// Response-time estimate for the latency-aware balancers.
    pub latency: ewma::Latency,
    /// Idle connections, and how requests got theirs.
    pub pool: Arc<Pool>,
    in_flight_gauge: Gauge,
    /// Successful and failed tries, for the observed availability.
    pub tries: super::observed::Tries,
}

const NO_PROBE: u64 = 0;
const PROBE_OPEN: u64 = 1;

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
            until == 0 || {
                let (m, probe) = (micros(now), self.probe.load(Ordering::Relaxed));
                m >= until && (probe <= PROBE_OPEN || m >= probe)
            }
        }
    }

    /// Called for the endpoint a pick chose: true if it may take the
    /// request. An endpoint whose ejection time is over takes one probe
    /// request, claimed here for at most `hold`; a second pick that raced
    /// for the same probe gets false and picks again.
    pub fn take_probe(&self, now: Instant, hold: Duration) -> bool {
        if self.ejected_until.load(Ordering::Relaxed) == 0
            || self.probe.load(Ordering::Relaxed) == NO_PROBE
        {
            return true;
        }
        let mut outlier = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        let before = outlier.ejection();
        let taken = outlier.claim(now, hold);
        self.publish_ejection(before, outlier.ejection());
        taken
    }

    /// Ends an ejection without counting it: the cluster no longer has
    /// outlier detection, so nothing would ever judge a probe.
    pub(super) fn clear_ejection(&self, now: Instant) {
        if self.ejected_until.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut outlier = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        let before = outlier.ejection();
        if outlier.clear(now) {
            tracing::info!(cluster = %self.cluster, endpoint = %self.address,
                "outlier ejection ended: the cluster no longer has outlier detection");
            crate::events::emit(
                crate::events::Kind::EjectionEnd,
                format!("endpoint {} of cluster {}", self.address, self.cluster),
                "ejection ended",
                "the cluster no longer has outlier detection",
            );
        }
        self.publish_ejection(before, outlier.ejection());
    }

    /// Publishes outlier detection's verdict for `usable` to read, when it
    /// changed (most responses change nothing, and a store would take the
    /// cache line from every other worker reading it).
    fn publish_ejection(&self, before: Ejection, ejection: Ejection) {
        if before == ejection {
            return;
        }
        let (until, probe) = match ejection {
            Ejection::None => (0, NO_PROBE),
            Ejection::Ejected { until, probe } => (
                micros(until).max(1),
                if probe { PROBE_OPEN } else { NO_PROBE },
            ),
            // Over; only the probe decides now.
            Ejection::Probing { claimed: None } => (1, PROBE_OPEN),
            Ejection::Probing { claimed: Some(t) } => (1, micros(t).max(PROBE_OPEN + 1)),
        };
        self.ejected_until.store(until, Ordering::Relaxed);
        self.probe.store(probe, Ordering::Relaxed);
    }

    /// Logs and counts the end of an ejection.
    fn ended(&self, end: End, detail: &str) {
        tracing::info!(cluster = %self.cluster, endpoint = %self.address,
            reason = end.as_str(), "outlier ejection ended: {detail}");
        crate::events::emit(
            crate::events::Kind::EjectionEnd,
            format!("endpoint {} of cluster {}", self.address, self.cluster),
            format!("ejection ended ({})", end.as_str()),
            detail,
        );
        let i = End::ALL.iter().position(|e| *e == end).unwrap_or(0);
        self.ejections_ended[i].inc();
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

    /// Out of rotation by outlier detection: ejected, or its time over and
    /// waiting on a probe.
    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && (self.probe.load(Ordering::Relaxed) != NO_PROBE || micros(now) < until)
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
        self.check_ends_ejection(check, thresholds.healthy, now);
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

    /// An active check's part in outlier detection: `healthy` passing
    /// checks in a row end an ejection (a degraded answer counts: the
    /// endpoint answers, and the lifecycle decides how much it takes).
    fn check_ends_ejection(&self, check: Check, healthy: u32, now: Instant) {
        let mut outlier = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        let before = outlier.ejection();
        let pass = matches!(check, Check::Pass | Check::Degraded);
        match outlier.record_check(pass, healthy, now) {
            Some(End::ActiveCheck) => self.ended(
                End::ActiveCheck,
                &format!(
                    "{} passing active checks in a row (healthy_threshold {})",
                    healthy.max(1),
                    healthy
                ),
            ),
            Some(end) => self.ended(end, "its time ran out"),
            None => {}
        }
        self.publish_ejection(before, outlier.ejection());
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
    /// long the endpoint was ejected, if this response ejected it (a trigger
    /// fired, or it was the probe and failed). The end of an ejection is
    /// logged and counted here.
    pub fn record_response(
        &self,
        ok: bool,
        cfg: &OutlierConfig,
        max_percent: u32,
        cluster: &Cluster,
        now: Instant,
    ) -> Option<(String, Duration)> {
        let mut outlier = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        let before = outlier.ejection();
        if let Some(end) = outlier.expire(now) {
            self.ended(end, "its time ran out");
        }
        let ejected = match outlier.record(ok, cfg, now) {
            None => None,
            Some(Event::Ended(end)) => {
                self.ended(end, "its probe request succeeded");
                None
            }
            Some(Event::Reejected(duration)) => Some((
                "its probe request after the ejection failed".to_owned(),
                duration,
            )),
            Some(Event::Trip(reason)) => {
                let ejected = cluster
                    .endpoints
                    .iter()
                    .filter(|e| e.live.is_ejected(now))
                    .count();
                // Without active checks, nothing but a probe request can
                // say that the endpoint is back.
                let probe = cluster.health_check.is_none();
                may_eject(ejected, cluster.endpoints.len(), max_percent)
                    .then(|| (reason, outlier.eject(cfg, probe, now)))
            }
        };
        self.publish_ejection(before, outlier.ejection());
        ejected
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
    /// What the names in endpoint addresses resolve to now; snapshots
    /// expand named endpoints from it.
    pub resolved: Arc<crate::discovery::Resolved>,
    endpoints: Mutex<HashMap<(String, SocketAddr), Arc<EndpointLive>>>,
}

impl LiveRegistry {
    pub fn new(workers: usize) -> Self {
        LiveRegistry {
            workers,
            guards: Default::default(),
            resolved: Default::default(),
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
                let ended = End::ALL.map(|end| {
                    metrics
                        .ejections_ended
                        .get_or_create_owned(&EndpointReasonLabels {
                            cluster: cluster.to_owned(),
                            endpoint: address.to_string(),
                            reason: end.as_str(),
                        })
                });
                // Present from the start, at 0: "absent" must not mean "none".
                let _ = metrics.ejections.get_or_create_owned(&labels);
                let live = Arc::new(EndpointLive {
                    address,
                    cluster: cluster.into(),
                    in_flight: AtomicI64::new(0),
                    lifecycle: Mutex::new(Lifecycle::new(initial, Instant::now())),
                    outlier: Mutex::new(Outlier::new()),
                    in_service: AtomicBool::new(false),
                    draining: AtomicBool::new(false),
                    degraded: AtomicBool::new(false),
                    ramp_from: AtomicU64::new(u64::MAX),
                    ejected_until: AtomicU64::new(0),
                    probe: AtomicU64::new(NO_PROBE),
                    ejections_ended: ended,
                    state_gauges: STATES.map(gauge),
                    latency: ewma::Latency::new(LATENCY_DECAY),
                    pool: Arc::new(Pool::new(
                        self.workers,
                        Counters {
                            reused: upstream("reused"),
                            opened: upstream("new"),
                            connect_errors: metrics
                                .upstream_connect_errors
                                .get_or_create_owned(&labels),
                            streams_per_connection: Some(
                                metrics
                                    .grpc
                                    .streams_per_connection
                                    .get_or_create_owned(&labels),
                            ),
                        },
                    )),
                    in_flight_gauge: metrics.upstream_in_flight.get_or_create_owned(&labels),
                    tries: super::observed::Tries::new(Instant::now()),
                });
                live.publish(initial);
                live
            })
            .clone()
    }

    /// Forgets endpoints that the newest snapshot no longer has. Snapshots
    /// still in use keep their own references, so in-flight requests finish.
    /// Their state gauges say DRAINING (no new request reaches them: new
    /// snapshots do not have them), but their lifecycle is left alone: a
    /// request that loaded the previous snapshot just before the swap may
    /// still pick one, and must not fail for want of an endpoint.
    pub fn retain(&self, keep: &[(String, SocketAddr)]) {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, live| {
            let stays = keep.contains(k);
            if !stays {
                for (gauge, s) in live.state_gauges.iter().zip(STATES) {
                    gauge.set(i64::from(s == State::Draining));
                }
            }
            stays
        });
    }
}
