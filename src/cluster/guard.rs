//! What stands between the requests and a cluster: its circuit breaker,
//! retry budget, bulkhead and adaptive limit, plus the per-endpoint
//! breakers. Like `EndpointLive`, these outlive snapshots: each is kept by
//! its owner (cluster, or cluster and endpoint) and its settings, compared
//! by value, so a reload that leaves a guard's settings alone keeps its
//! state (an open breaker stays open, a budget keeps its history) whatever
//! else changed in the file, and one that changes them starts that guard
//! afresh, and only that one.
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

use super::micros::micros;
use crate::config::ClusterConfig;
use crate::config::resilience::BreakerConfig as BreakerTable;
use crate::config::resilience::{AdaptiveAlgorithm, AdaptiveConcurrencyConfig, BulkheadConfig};
use crate::observe::metrics::{
    ClusterKindLabels, ClusterLabels, EndpointLabels, Metrics, StateLabels, TransitionLabels,
};
use crate::resilience::breaker::{self, Admission, Breaker, Outcome, State, Window};
use crate::resilience::budget::RetryBudget;
use crate::resilience::bulkhead::{self, Bulkhead};
use crate::resilience::concurrency::{self, AdaptiveConfig, AdaptiveLimit};
use crate::resilience::policy::{BudgetSettings, FailurePolicy, RetryPolicy, TryResult};

/// The cluster-wide guards.
pub struct ClusterGuard {
    /// Open: the cluster's routes answer their fallback without upstream work.
    pub breaker: Option<Arc<SharedBreaker>>,
    pub bulkhead: Option<Arc<Bulkhead>>,
    pub adaptive: Option<Arc<Adaptive>>,
    budget: Option<Arc<Mutex<RetryBudget>>>,
    budget_exhausted: Counter,
    bulkhead_full: Counter,
    bulkhead_timeout: Counter,
    /// `cluster NAME`, the subject of this guard's events.
    subject: String,
    /// Coalesce the per-request refusals into events.
    budget_gate: crate::events::Gate,
    bulkhead_gate: crate::events::Gate,
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
        self.withdraw_within(now, None)
    }

    /// As `withdraw`, the retry also fitting `tighter` (`ratio`,
    /// `min_per_sec`): a route's tightened budget during a fast burn.
    pub fn withdraw_within(&self, now: Instant, tighter: Option<(f64, f64)>) -> bool {
        let Some(b) = &self.budget else {
            return true;
        };
        let ok = b
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_withdraw_within(now, tighter);
        if !ok {
            self.budget_exhausted.inc();
            if let Some(n) = self.budget_gate.pass(now, crate::events::gate::EVERY) {
                let why = match tighter {
                    Some((ratio, floor)) => format!(
                        "retry budget exhausted (tightened to {} % of requests + {floor}/s by a \
                         route's fast SLO burn): {n} retries refused since the last event",
                        ratio * 100.0
                    ),
                    None => {
                        format!("retry budget exhausted: {n} retries refused since the last event")
                    }
                };
                crate::events::emit(
                    crate::events::Kind::RetryBudget,
                    self.subject.clone(),
                    "retries refused",
                    why,
                );
            }
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
                let why = match e {
                    bulkhead::Rejected::QueueFull => {
                        self.bulkhead_full.inc();
                        "bulkhead full and its queue full"
                    }
                    bulkhead::Rejected::Timeout => {
                        self.bulkhead_timeout.inc();
                        "waited the bulkhead queue's timeout"
                    }
                };
                if let Some(n) = self
                    .bulkhead_gate
                    .pass(Instant::now(), crate::events::gate::EVERY)
                {
                    crate::events::emit(
                        crate::events::Kind::Shed,
                        self.subject.clone(),
                        "requests refused by the bulkhead",
                        format!("{why}; {n} refused since the last event"),
                    );
                }
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
    subject: String,
    gate: crate::events::Gate,
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
                if let Some(n) = self.gate.pass(Instant::now(), crate::events::gate::EVERY) {
                    crate::events::emit(
                        crate::events::Kind::Shed,
                        self.subject.clone(),
                        "requests shed",
                        format!(
                            "{} in flight at the adaptive concurrency limit {}; {n} shed since the last event",
                            limit.in_flight(),
                            limit.limit()
                        ),
                    );
                }
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
        crate::events::emit(
            crate::events::Kind::Breaker,
            who,
            format!("{} → {}", t.from.as_str(), t.to.as_str()),
            t.reason.clone(),
        );
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

/// Things of one kind kept across reloads: for each owner, the ones made
/// for each settings value still in use. Held weakly: the snapshots that use
/// them keep them alive. Settings are compared with `==`, by value; never
/// by their `Debug` text, which for config values includes where in the
/// file they were written.
struct Kept<K, S, T> {
    map: Mutex<HashMap<K, Versions<S, T>>>,
}

/// The ones of one owner, each with the settings it was made for.
type Versions<S, T> = Vec<(S, Weak<T>)>;

impl<K, S, T> Default for Kept<K, S, T> {
    fn default() -> Self {
        Kept {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + std::hash::Hash, S: PartialEq + Clone, T> Kept<K, S, T> {
    /// The one kept for `owner` with `settings`, or a new one from `make`.
    fn get(&self, owner: K, settings: &S, make: impl FnOnce() -> T) -> Arc<T> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, v| {
            v.retain(|(_, w)| w.strong_count() > 0);
            !v.is_empty()
        });
        let kept = map.entry(owner).or_default();
        if let Some(t) = kept
            .iter()
            .find(|(s, _)| s == settings)
            .and_then(|(_, w)| w.upgrade())
        {
            return t;
        }
        let t = Arc::new(make());
        kept.push((settings.clone(), Arc::downgrade(&t)));
        t
    }
}

/// Keeps guards across reloads, each by its owner and its own settings.
#[derive(Default)]
pub struct GuardRegistry {
    breakers: Kept<String, BreakerTable, SharedBreaker>,
    budgets: Kept<String, BudgetSettings, Mutex<RetryBudget>>,
    bulkheads: Kept<String, BulkheadConfig, Bulkhead>,
    adaptive: Kept<String, AdaptiveConcurrencyConfig, Adaptive>,
    endpoints: Kept<(String, SocketAddr), BreakerTable, SharedBreaker>,
}

impl GuardRegistry {
    pub fn cluster(
        &self,
        config: &ClusterConfig,
        retry: &RetryPolicy,
        metrics: &Metrics,
    ) -> Arc<ClusterGuard> {
        let name = config.name.get_ref();
        let guard = ClusterGuard {
            breaker: config.circuit_breaker.as_ref().map(|t| {
                self.breakers
                    .get(name.clone(), t, || SharedBreaker::new(t, name, "", metrics))
            }),
            bulkhead: config.bulkhead.as_ref().map(|b| {
                self.bulkheads.get(name.clone(), b, || {
                    Bulkhead::new(
                        *b.max_concurrent.get_ref(),
                        b.max_queue,
                        b.queue_timeout.get(),
                    )
                })
            }),
            adaptive: config.adaptive_concurrency.as_ref().map(|a| {
                self.adaptive.get(name.clone(), a, || Adaptive {
                    limit: Mutex::new(AdaptiveLimit::new(adaptive_config(a), Instant::now())),
                    shed: metrics.shed.get_or_create_owned(&ClusterLabels {
                        cluster: name.clone(),
                    }),
                    subject: format!("cluster {name}"),
                    gate: crate::events::Gate::default(),
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
            budget: retry.budget.map(|b| {
                self.budgets.get(name.clone(), &b, || {
                    Mutex::new(RetryBudget::new(b.ratio, b.min_per_sec, b.window))
                })
            }),
            budget_exhausted: metrics
                .retry_budget_exhausted
                .get_or_create_owned(&ClusterLabels {
                    cluster: name.clone(),
                }),
            subject: format!("cluster {name}"),
            budget_gate: crate::events::Gate::default(),
            bulkhead_gate: crate::events::Gate::default(),
        };
        Arc::new(guard)
    }

    pub fn endpoint(
        &self,
        cluster: &str,
        address: SocketAddr,
        table: &BreakerTable,
        metrics: &Metrics,
    ) -> Arc<SharedBreaker> {
        self.endpoints
            .get((cluster.to_owned(), address), table, || {
                SharedBreaker::new(table, cluster, &address.to_string(), metrics)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
[[clusters]]
name = "app"
circuit_breaker = { failure_rate = 0.3, window_calls = 20, failure_statuses = [429] }
endpoint_circuit_breaker = { failure_rate = 0.4 }
bulkhead = { max_concurrent = 8 }
adaptive_concurrency = { tolerance = 1.5, max_limit = 200 }
retry = { budget = { ratio = 0.1 } }
[[clusters.endpoints]]
address = "127.0.0.1:1"
"#;

    /// The guards a registry gives the first cluster of `text`.
    fn guards(
        registry: &GuardRegistry,
        metrics: &Metrics,
        text: &str,
    ) -> (Arc<ClusterGuard>, Arc<SharedBreaker>) {
        let text = format!("[server]\nallow_no_listeners = true\n{text}");
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let c = &config.clusters[0];
        let retry = RetryPolicy::from_config(&c.retry);
        let endpoint = registry.endpoint(
            "app",
            c.endpoints[0]
                .address
                .get_ref()
                .ip()
                .expect("an IP address"),
            c.endpoint_circuit_breaker.as_ref().unwrap(),
            metrics,
        );
        (registry.cluster(c, &retry, metrics), endpoint)
    }

    fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    #[test]
    fn guards_survive_text_moving_and_restart_only_when_their_settings_change() {
        let (registry, metrics) = (GuardRegistry::default(), Metrics::new());
        let (a, ea) = guards(&registry, &metrics, CLUSTER);
        // Every setting moved in the file (spans differ), none changed.
        let moved = |text: &str| format!("# a comment\n\n{}", text.replace(" = ", "   =   "));
        let (b, eb) = guards(&registry, &metrics, &moved(CLUSTER));
        assert!(same(&a.breaker, &b.breaker), "cluster breaker kept");
        assert!(same(&a.bulkhead, &b.bulkhead), "bulkhead kept");
        assert!(same(&a.adaptive, &b.adaptive), "adaptive limit kept");
        assert!(same(&a.budget, &b.budget), "retry budget kept");
        assert!(Arc::ptr_eq(&ea, &eb), "endpoint breaker kept");

        // A new bulkhead size replaces the bulkhead only.
        let (c, ec) = guards(&registry, &metrics, &moved(&CLUSTER.replace("= 8", "= 9")));
        assert!(!same(&b.bulkhead, &c.bulkhead));
        assert!(same(&b.breaker, &c.breaker));
        assert!(same(&b.adaptive, &c.adaptive));
        assert!(same(&b.budget, &c.budget));
        assert!(Arc::ptr_eq(&eb, &ec));

        // Each of the others, likewise.
        let (d, ed) = guards(&registry, &metrics, &CLUSTER.replace("[429]", "[429, 503]"));
        assert!(!same(&a.breaker, &d.breaker) && same(&a.bulkhead, &d.bulkhead));
        assert!(
            Arc::ptr_eq(&ea, &ed),
            "the endpoint breaker has its own table"
        );
        let (e, ee) = guards(
            &registry,
            &metrics,
            &CLUSTER.replace("rate = 0.4", "rate = 0.45"),
        );
        assert!(!Arc::ptr_eq(&ea, &ee) && same(&a.breaker, &e.breaker));
        let (f, _) = guards(
            &registry,
            &metrics,
            &CLUSTER.replace("tolerance = 1.5", "tolerance = 1.6"),
        );
        assert!(!same(&a.adaptive, &f.adaptive) && same(&a.breaker, &f.breaker));
        let (g, _) = guards(
            &registry,
            &metrics,
            &CLUSTER.replace("ratio = 0.1", "ratio = 0.2"),
        );
        assert!(!same(&a.budget, &g.budget) && same(&a.adaptive, &g.adaptive));
    }

    #[test]
    fn a_guard_nobody_uses_is_forgotten() {
        let (registry, metrics) = (GuardRegistry::default(), Metrics::new());
        let (a, _) = guards(&registry, &metrics, CLUSTER);
        let weak = Arc::downgrade(a.breaker.as_ref().unwrap());
        drop(a);
        assert!(weak.upgrade().is_none(), "the registry holds guards weakly");
        let (b, _) = guards(&registry, &metrics, CLUSTER);
        assert!(b.breaker.is_some());
        let map = registry.breakers.map.lock().unwrap();
        assert_eq!(map["app"].len(), 1, "dead entries are dropped");
    }
}
