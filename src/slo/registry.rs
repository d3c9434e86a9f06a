//! The routes' SLO trackers by route name, outliving snapshots so that a
//! reload keeps each route's budget, and the SLO gauges.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{Objective, Report, Tracker};
use crate::config::slo::SloConfig;

/// What a route carries: its objective and its tracker.
pub struct RouteSlo {
    pub objective: Objective,
    pub tracker: Arc<Tracker>,
    /// Latency percentile objectives: (`p99`, under), judged over 5 minutes
    /// from the route's histogram (`observe::route_stats`).
    pub latency_targets: Vec<(&'static str, Duration)>,
    /// The SLI as counters, for Prometheus rules (`levee slo rules`).
    requests: Counter,
    bad: Counter,
}

impl RouteSlo {
    /// One finished request: `took` from arrival to the end of the response,
    /// `now` in Unix seconds.
    pub fn record(&self, status: u16, took: Duration, now: u64) {
        let good = self.objective.is_good(status, took);
        self.tracker.record(now, good);
        self.requests.inc();
        if !good {
            self.bad.inc();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WindowLabels {
    route: String,
    window: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    route: String,
    alert: &'static str,
    severity: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Registry {
    trackers: Mutex<HashMap<String, Weak<Tracker>>>,
    /// The routes' fast-burn actions, on or off, by route name.
    pub acts: super::act::Registry,
    target: Family<RouteLabels, FloatGauge>,
    availability: Family<RouteLabels, FloatGauge>,
    budget_remaining: Family<RouteLabels, FloatGauge>,
    burn_rate: Family<WindowLabels, FloatGauge>,
    alert: Family<AlertLabels, Gauge>,
    requests: Family<RouteLabels, Counter>,
    bad: Family<RouteLabels, Counter>,
}

impl Registry {
    pub fn new(metrics: &mut prometheus_client::registry::Registry) -> Registry {
        let r = Registry {
            trackers: Mutex::default(),
            acts: super::act::Registry::default(),
            target: Family::default(),
            availability: Family::default(),
            budget_remaining: Family::default(),
            burn_rate: Family::default(),
            alert: Family::default(),
            requests: Family::default(),
            bad: Family::default(),
        };
        metrics.register(
            "slo_requests",
            "Requests of routes with an SLO, as their SLO counts them (the SLI's denominator)",
            r.requests.clone(),
        );
        metrics.register(
            "slo_bad_requests",
            "Requests that were bad by the route's SLO: a status class not in good_statuses, or slower than its latency",
            r.bad.clone(),
        );
        metrics.register(
            "slo_target_ratio",
            "The route's availability objective (0.999 for 99.9 %)",
            r.target.clone(),
        );
        metrics.register(
            "slo_availability_ratio",
            "Good share of the route's requests over its SLO window",
            r.availability.clone(),
        );
        metrics.register(
            "slo_error_budget_remaining_ratio",
            "Share of the route's error budget left over its SLO window (1 untouched, below 0 overspent)",
            r.budget_remaining.clone(),
        );
        metrics.register(
            "slo_burn_rate",
            "How many times faster than its SLO allows the route spends its error budget, by window (5m, 30m, 1h, 6h, 3d, slo)",
            r.burn_rate.clone(),
        );
        metrics.register(
            "slo_alert_firing",
            "1 while a multi-window burn-rate alert fires (fast_burn_1h, fast_burn_6h, slow_burn_3d)",
            r.alert.clone(),
        );
        r
    }

    /// The route's SLO for a snapshot being built: its tracker as the last
    /// snapshot left it (so a reload keeps the budget), or a new one.
    pub fn route(&self, name: &str, config: Option<&SloConfig>) -> Option<Arc<RouteSlo>> {
        let config = config?;
        let objective = Objective::from_config(config);
        let latency_targets = crate::config::slo::PERCENTILES
            .iter()
            .filter_map(|q| Some((*q, config.latency_targets.get(*q)?.get_ref().get())))
            .collect();
        let mut trackers = self.trackers.lock().unwrap_or_else(|p| p.into_inner());
        trackers.retain(|_, t| t.strong_count() > 0);
        let old = trackers.get(name).and_then(Weak::upgrade);
        let tracker = match old {
            Some(t) if t.window() == objective.window => t,
            // A new window needs an hour ring of another size: carry the
            // counts over.
            Some(t) => {
                let new = Arc::new(Tracker::new(objective.window));
                let (fine, coarse) = t.dump();
                new.restore(super::unix_now(), &fine, &coarse);
                new
            }
            None => Arc::new(Tracker::new(objective.window)),
        };
        trackers.insert(name.to_owned(), Arc::downgrade(&tracker));
        let labels = RouteLabels {
            route: name.to_owned(),
        };
        Some(Arc::new(RouteSlo {
            objective,
            tracker,
            latency_targets,
            requests: self.requests.get_or_create_owned(&labels),
            bad: self.bad.get_or_create_owned(&labels),
        }))
    }

    /// Sets the route's gauges from a report.
    pub fn publish(&self, route: &str, report: &Report) {
        let labels = RouteLabels {
            route: route.to_owned(),
        };
        self.target
            .get_or_create(&labels)
            .set(report.target_percent / 100.0);
        self.availability
            .get_or_create(&labels)
            .set(report.availability);
        self.budget_remaining
            .get_or_create(&labels)
            .set(report.budget_remaining);
        for b in &report.burn_rates {
            self.burn_rate
                .get_or_create(&WindowLabels {
                    route: route.to_owned(),
                    window: b.window,
                })
                .set(b.burn_rate);
        }
        for a in &report.alerts {
            self.alert
                .get_or_create(&AlertLabels {
                    route: route.to_owned(),
                    alert: a.name,
                    severity: a.severity,
                })
                .set(i64::from(a.firing));
        }
    }
}
