//! What stands between the requests and a cluster: its circuit breaker,
//! retry budget and bulkhead, plus the per-endpoint breakers. Like
//! `EndpointLive`, this outlives snapshots: a reload that leaves a cluster's
//! resilience settings alone keeps the breaker's state and the budget's
//! history; one that changes them starts afresh.
//!
//! The cores (`resilience::*`) are synchronous and take the clock; this is
//! where they meet locks, metrics and logs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::live::micros;
use crate::config::ClusterConfig;
use crate::config::resilience::BreakerConfig as BreakerTable;
use crate::config::resilience::{AdaptiveAlgorithm, AdaptiveConcurrencyConfig};
use crate::observe::metrics::{
    ClusterKindLabels, ClusterLabels, EndpointLabels, Metrics, StateLabels, TransitionLabels,
};
use crate::resilience::breaker::{self, Admission, Breaker, Outcome, State, Window};
use crate::resilience::budget::RetryBudget;
use crate::resilience::bulkhead::{self, Bulkhead};
use crate::resilience::concurrency::{self, AdaptiveConfig, AdaptiveLimit};
use crate::resilience::policy::{FailurePolicy, RetryPolicy, TryResult};

/// The cluster-wide guards.
pub struct ClusterGuard {
    /// Open: the cluster's routes answer their fallback without upstream work.
    pub breaker: Option<Arc<SharedBreaker>>,
    pub bulkhead: Option<Arc<Bulkhead>>,
    pub adaptive: Option<Arc<Adaptive>>,
    budget: Option<Mutex<RetryBudget>>,
    budget_exhausted: Counter,
    bulkhead_full: Counter,
    bulkhead_timeout: Counter,
}

impl ClusterGuard {
    /// Counts an original request towards the retry budget.
    pub fn deposit(&self, now: Instant) {
        if let Some(b) = &self.budget {
            b.lock().unwrap_or_else(|p| p.into_inner()).deposit(now);
        }
    }

    /// Asks the budget for one retry; counts a refusal.
    pub fn withdraw(&self, now: Instant) -> bool {
        let Some(b) = &self.budget else {
            return true;
        };
        let ok = b
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_withdraw(now);
        if !ok {
            self.budget_exhausted.inc();
        }
        ok
    }

    /// A bulkhead slot, when the cluster has a bulkhead; refusals counted.
    pub async fn enter(&self) -> Result<Option<bulkhead::Permit>, bulkhead::Rejected> {
        let Some(b) = &self.bulkhead else {
            return Ok(None);
        };
        match b.acquire().await {
            Ok(permit) => Ok(Some(permit)),
            Err(e) => {
                match e {
                    bulkhead::Rejected::QueueFull => self.bulkhead_full.inc(),
                    bulkhead::Rejected::Timeout => self.bulkhead_timeout.inc(),
                };
                Err(e)
            }
        }
    }

    /// (allowed, refused) retries since the budget was made.
    pub fn budget_counts(&self) -> Option<(u64, u64)> {
        let b = self.budget.as_ref()?;
        let b = b.lock().unwrap_or_else(|p| p.into_inner());
        Some((b.allowed(), b.refused()))
    }
}

/// The cluster's adaptive concurrency limit, shared by every worker.
pub struct Adaptive {
    limit: Mutex<AdaptiveLimit>,
    shed: Counter,
}

/// An admitted request; releases its place when dropped (when the response
/// is over), after `record` gave the limiter its latency.
pub struct AdaptivePass {
    adaptive: Arc<Adaptive>,
    in_flight: u32,
}

impl Adaptive {
    /// Admits a request under the current limit; `None` (counted) over it.
    pub fn admit(self: &Arc<Self>) -> Option<AdaptivePass> {
        let mut limit = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        match limit.try_acquire() {
            Some(in_flight) => Some(AdaptivePass {
                adaptive: self.clone(),
                in_flight,
            }),
            None => {
                self.shed.inc();
                None
            }
        }
    }

    pub fn limit(&self) -> (u32, u32, concurrency::Counts) {
        let l = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        (l.limit(), l.in_flight(), l.counts())
    }
}

impl AdaptivePass {
    /// The request's upstream latency; `dropped`: it timed out or the
    /// upstream signalled overload (its latency is no measurement then).
    pub fn record(&self, rtt: Duration, dropped: bool, now: Instant) {
        let mut limit = self
            .adaptive
            .limit
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(new) = limit.record(rtt, self.in_flight, dropped, now) {
            tracing::debug!(limit = new, "adaptive concurrency limit updated");
        }
    }
}

impl Drop for AdaptivePass {
    fn drop(&mut self) {
        let mut limit = self
            .adaptive
            .limit
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        limit.release();
    }
}

fn adaptive_config(c: &AdaptiveConcurrencyConfig) -> AdaptiveConfig {
    AdaptiveConfig {
        algorithm: match c.algorithm {
            AdaptiveAlgorithm::Gradient => concurrency::Algorithm::Gradient,
            AdaptiveAlgorithm::Aimd => concurrency::Algorithm::Aimd,
        },
        min_limit: *c.min_limit.get_ref(),
        max_limit: *c.max_limit.get_ref(),
        initial_limit: c.initial_limit,
        tolerance: *c.tolerance.get_ref(),
        slack: c.slack.get(),
        window: c.window.get(),
        probe_interval: c.probe_interval.get(),
        probe_limit: c.probe_limit,
        ..AdaptiveConfig::default()
    }
}

/// A breaker shared by every worker, with its failure rules, its published
/// verdict (so that picking reads an atomic, not the lock) and its metrics.
pub struct SharedBreaker {
    cluster: String,
    /// Empty for the cluster's own breaker.
    endpoint: String,
    failures: FailurePolicy,
    inner: Mutex<Inner>,
    /// Admits nothing before this many microseconds after the epoch;
    /// `u64::MAX` while half-open with every trial slot taken.
    blocked_until: AtomicU64,
    gauges: [Gauge; 3],
    transitions: Family<TransitionLabels, Counter>,
    rejections: Counter,
}

struct Inner {
    core: Breaker,
    last: Option<(SystemTime, String)>,
}

const STATES: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

/// One admitted call. Record its result; dropped unrecorded (the request was
/// abandoned), it gives its half-open trial slot back.
pub struct Pass {
    breaker: Arc<SharedBreaker>,
    recorded: bool,
}

impl Pass {
    pub fn record(mut self, result: TryResult, latency: Duration, now: Instant) {
        self.recorded = true;
        self.breaker.record(result, latency, now);
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if !self.recorded {
            let mut inner = self.breaker.lock();
            inner.core.cancel();
            self.breaker.publish(&inner.core, Instant::now());
        }
    }
}

/// A breaker's state for `/status`.
pub struct BreakerStatus {
    pub state: State,
    pub counts: breaker::Counts,
    pub last_transition: Option<(SystemTime, String)>,
}

impl SharedBreaker {
    fn new(
        table: &BreakerTable,
        cluster: &str,
        endpoint: &str,
        metrics: &Metrics,
    ) -> SharedBreaker {
        let cfg = breaker::BreakerConfig {
            consecutive_failures: table.consecutive_failures,
            failure_rate: *table.failure_rate.get_ref(),
            min_calls: table.min_calls,
            window: match table.window {
                Some(t) => Window::Time(t.get()),
                None => Window::Count(*table.window_calls.get_ref()),
            },
            slow_call: table
                .slow_call_threshold
                .map(|t| (t.get(), *table.slow_call_rate.get_ref())),
            open_duration: table.open_duration.get(),
            half_open_max_calls: table.half_open_max_calls,
            success_threshold: table.success_threshold,
        };
        let gauge = |state: State| {
            metrics.breaker_state.get_or_create_owned(&StateLabels {
                cluster: cluster.to_owned(),
                endpoint: endpoint.to_owned(),
                state: state.as_str(),
            })
        };
        let b = SharedBreaker {
            cluster: cluster.to_owned(),
            endpoint: endpoint.to_owned(),
            failures: FailurePolicy::from_config(table),
            inner: Mutex::new(Inner {
                core: Breaker::new(cfg, Instant::now()),
                last: None,
            }),
            blocked_until: AtomicU64::new(0),
            gauges: STATES.map(gauge),
            transitions: metrics.breaker_transitions.clone(),
            rejections: metrics
                .breaker_rejections
                .get_or_create_owned(&EndpointLabels {
                    cluster: cluster.to_owned(),
                    endpoint: endpoint.to_owned(),
                }),
        };
        b.show(State::Closed);
        b
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call would be refused now; lock-free, for picking.
    pub fn blocks(&self, now: Instant) -> bool {
        let until = self.blocked_until.load(Ordering::Relaxed);
        until != 0 && micros(now) < until
    }

    /// Admits a call, or says how long until the breaker may admit one.
    pub fn allow(self: &Arc<Self>, now: Instant) -> Result<Pass, Duration> {
        let mut inner = self.lock();
        let (admission, moved) = inner.core.allow(now);
        if let Some(t) = moved {
            self.transition(&mut inner, t);
        }
        let wait = inner
            .core
            .open_until()
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        self.publish(&inner.core, now);
        drop(inner);
        match admission {
            Admission::Allowed => Ok(Pass {
                breaker: self.clone(),
                recorded: false,
            }),
            Admission::Rejected => {
                self.rejections.inc();
                Err(wait)
            }
        }
    }

    fn record(&self, result: TryResult, latency: Duration, now: Instant) {
        let outcome = if self.failures.is_failure(result) {
            Outcome::Failure
        } else {
            Outcome::Success { latency }
        };
        let mut inner = self.lock();
        if let Some(t) = inner.core.record(outcome, now) {
            self.transition(&mut inner, t);
        }
        self.publish(&inner.core, now);
    }

    fn publish(&self, core: &Breaker, now: Instant) {
        let until = match core.open_until() {
            Some(t) => micros(t),
            None if !core.would_admit(now) => u64::MAX,
            None => 0,
        };
        self.blocked_until.store(until, Ordering::Relaxed);
    }

    fn transition(&self, inner: &mut Inner, t: breaker::Transition) {
        let who = if self.endpoint.is_empty() {
            format!("cluster {}", self.cluster)
        } else {
            format!("endpoint {} of cluster {}", self.endpoint, self.cluster)
        };
        if t.to == State::Open {
            tracing::warn!(cluster = %self.cluster, endpoint = %self.endpoint,
                "circuit breaker of {who} {} → {}: {}", t.from.as_str(), t.to.as_str(), t.reason);
        } else {
            tracing::info!(cluster = %self.cluster, endpoint = %self.endpoint,
                "circuit breaker of {who} {} → {}: {}", t.from.as_str(), t.to.as_str(), t.reason);
        }
        self.transitions
            .get_or_create(&TransitionLabels {
                cluster: self.cluster.clone(),
                endpoint: self.endpoint.clone(),
                from: t.from.as_str(),
                to: t.to.as_str(),
            })
            .inc();
        self.show(t.to);
        inner.last = Some((SystemTime::now(), t.reason));
    }

    fn show(&self, state: State) {
        for (g, s) in self.gauges.iter().zip(STATES) {
            g.set(i64::from(s == state));
        }
    }

    pub fn status(&self) -> BreakerStatus {
        let inner = self.lock();
        BreakerStatus {
            state: inner.core.state(),
            counts: inner.core.counts(),
            last_transition: inner.last.clone(),
        }
    }
}

/// Keeps guards across reloads, by cluster (or endpoint) and settings. The
/// registry holds them weakly: the snapshots that use them keep them alive.
#[derive(Default)]
pub struct GuardRegistry {
    clusters: Mutex<HashMap<(String, String), Weak<ClusterGuard>>>,
    endpoints: Mutex<HashMap<(String, SocketAddr, String), Weak<SharedBreaker>>>,
}

impl GuardRegistry {
    pub fn cluster(
        &self,
        config: &ClusterConfig,
        retry: &RetryPolicy,
        metrics: &Metrics,
    ) -> Arc<ClusterGuard> {
        let name = config.name.get_ref();
        // The settings that shape the guards' state; any change starts afresh.
        let fingerprint = format!(
            "{:?}|{:?}|{:?}|{:?}",
            config.circuit_breaker, retry.budget, config.bulkhead, config.adaptive_concurrency
        );
        let mut map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        let key = (name.clone(), fingerprint);
        if let Some(g) = map.get(&key).and_then(Weak::upgrade) {
            return g;
        }
        let guard = Arc::new(ClusterGuard {
            breaker: config
                .circuit_breaker
                .as_ref()
                .map(|t| Arc::new(SharedBreaker::new(t, name, "", metrics))),
            bulkhead: config.bulkhead.as_ref().map(|b| {
                Arc::new(Bulkhead::new(
                    *b.max_concurrent.get_ref(),
                    b.max_queue,
                    b.queue_timeout.get(),
                ))
            }),
            adaptive: config.adaptive_concurrency.as_ref().map(|a| {
                Arc::new(Adaptive {
                    limit: Mutex::new(AdaptiveLimit::new(adaptive_config(a), Instant::now())),
                    shed: metrics.shed.get_or_create_owned(&ClusterLabels {
                        cluster: name.clone(),
                    }),
                })
            }),
            bulkhead_full: metrics
                .bulkhead_rejections
                .get_or_create_owned(&ClusterKindLabels {
                    cluster: name.clone(),
                    kind: "queue_full",
                }),
            bulkhead_timeout: metrics
                .bulkhead_rejections
                .get_or_create_owned(&ClusterKindLabels {
                    cluster: name.clone(),
                    kind: "queue_timeout",
                }),
            budget: retry
                .budget
                .map(|b| Mutex::new(RetryBudget::new(b.ratio, b.min_per_sec, b.window))),
            budget_exhausted: metrics
                .retry_budget_exhausted
                .get_or_create_owned(&ClusterLabels {
                    cluster: name.clone(),
                }),
        });
        map.insert(key, Arc::downgrade(&guard));
        guard
    }

    pub fn endpoint(
        &self,
        cluster: &str,
        address: SocketAddr,
        table: &BreakerTable,
        metrics: &Metrics,
    ) -> Arc<SharedBreaker> {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        let key = (cluster.to_owned(), address, format!("{table:?}"));
        if let Some(b) = map.get(&key).and_then(Weak::upgrade) {
            return b;
        }
        let b = Arc::new(SharedBreaker::new(
            table,
            cluster,
            &address.to_string(),
            metrics,
        ));
        map.insert(key, Arc::downgrade(&b));
        b
    }
}
