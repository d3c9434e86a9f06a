//! Every route's live numbers for the dashboard and `GET /stats`: requests
//! and 5xx answers in 5-second buckets over 15 minutes (request and error
//! rate), and latency percentiles over 1, 5 and 15 minutes
//! ([`super::latency`]). Kept by route name in a [`Registry`] that outlives
//! snapshots, so a reload keeps the history.
//!
//! Per request: three atomic adds and two loads, no lock. Memory per route:
//! 181 count buckets × 16 bytes (2 896 bytes) and the latency ring's 57 472
//! bytes: 60 368 bytes.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use super::latency::{Latency, Percentiles, QUANTILES};
use crate::slo::window::Buckets;

/// Width of a count bucket, in seconds: the sparklines' resolution.
pub const STEP: u64 = 5;
/// The span of the counts kept, in seconds.
pub const SPAN: u64 = 15 * 60;
/// The latency windows reported, in minutes, and their names.
pub const WINDOWS: [(u64, &str); 3] = [(1, "1m"), (5, "5m"), (15, "15m")];

/// One route's counts and latencies.
pub struct RouteStats {
    counts: Buckets,
    latency: Latency,
}

/// A route's numbers at one moment (`GET /stats`).
#[derive(Debug, Serialize)]
pub struct Report {
    /// Requests per second over the last minute.
    pub requests_per_second: f64,
    /// Share of the last minute's requests answered 5xx.
    pub error_ratio: f64,
    /// Percentiles by window name (`1m`, `5m`, `15m`).
    pub latency: std::collections::BTreeMap<&'static str, Percentiles>,
    /// Requests and 5xx answers per [`STEP`] seconds, oldest first.
    pub series: Series,
    /// Latency percentiles per minute, oldest first.
    pub latency_series: Vec<LatencyPoint>,
}

#[derive(Debug, Serialize)]
pub struct Series {
    pub step_seconds: u64,
    /// Unix seconds of the first bucket.
    pub start: u64,
    pub requests: Vec<u64>,
    pub errors: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct LatencyPoint {
    /// Unix seconds of the minute's start.
    pub minute: u64,
    #[serde(flatten)]
    pub percentiles: Percentiles,
}

impl Default for RouteStats {
    fn default() -> Self {
        RouteStats::new()
    }
}

impl RouteStats {
    pub fn new() -> RouteStats {
        RouteStats {
            counts: Buckets::new(STEP, SPAN),
            latency: Latency::new(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.counts.bytes() + self.latency.bytes()
    }

    /// One finished request at `now` (Unix seconds).
    pub fn record(&self, now: u64, status: u16, took: Duration) {
        self.counts.record(now, status >= 500);
        self.latency.record(now, took);
    }

    /// Percentiles over the last `minutes` minutes.
    pub fn latency(&self, now: u64, minutes: u64) -> Percentiles {
        self.latency.window(now, minutes)
    }

    /// The numbers at `now`; `points`: how many [`STEP`]-second buckets of
    /// series (at most the span).
    pub fn report(&self, now: u64, points: u64) -> Report {
        let minute = self.counts.sum(now, 60);
        // The last minute: 11 whole buckets and the current, partial one.
        let elapsed = 55 + now % STEP + 1;
        let points = points.clamp(1, SPAN / STEP);
        let last = now - now % STEP;
        let start = last - (points - 1) * STEP;
        let (requests, errors) = (0..points)
            .map(|i| {
                let c = self.counts.sum(start + i * STEP, 1);
                (c.total, c.bad)
            })
            .unzip();
        Report {
            requests_per_second: minute.total as f64 / elapsed as f64,
            error_ratio: minute.bad_ratio(),
            latency: WINDOWS
                .iter()
                .map(|&(m, name)| (name, self.latency.window(now, m)))
                .collect(),
            series: Series {
                step_seconds: STEP,
                start,
                requests,
                errors,
            },
            latency_series: self
                .latency
                .series(now, 15)
                .into_iter()
                .map(|(minute, percentiles)| LatencyPoint {
                    minute,
                    percentiles,
                })
                .collect(),
        }
    }
}

/// The window latency targets are judged over, in minutes.
pub const TARGET_MINUTES: u64 = 5;

/// One latency percentile objective against the last [`TARGET_MINUTES`].
#[derive(Debug, Serialize, PartialEq)]
pub struct TargetCheck {
    pub percentile: &'static str,
    pub under_ms: f64,
    pub value_ms: f64,
    /// Met, or no request in the window.
    pub met: bool,
}

/// The route's percentiles over [`TARGET_MINUTES`] judged against `targets`.
pub fn check(
    stats: &RouteStats,
    targets: &[(&'static str, Duration)],
    now: u64,
) -> (Percentiles, Vec<TargetCheck>) {
    let p = stats.latency(now, TARGET_MINUTES);
    let checks = targets
        .iter()
        .map(|&(percentile, under)| {
            let value_ms = p.get(percentile).unwrap_or(0.0);
            let under_ms = under.as_secs_f64() * 1000.0;
            TargetCheck {
                percentile,
                under_ms,
                value_ms,
                met: p.count == 0 || value_ms <= under_ms,
            }
        })
        .collect();
    (p, checks)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    route: String,
    quantile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuantileLabels {
    route: String,
    window: &'static str,
    quantile: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The routes' stats by name, and the latency gauges.
pub struct Registry {
    routes: Mutex<HashMap<String, Weak<RouteStats>>>,
    latency: Family<QuantileLabels, FloatGauge>,
    target: Family<TargetLabels, FloatGauge>,
    target_met: Family<TargetLabels, Gauge>,
}

impl Registry {
    pub fn new(metrics: &mut prometheus_client::registry::Registry) -> Registry {
        let r = Registry {
            routes: Mutex::default(),
            latency: Family::default(),
            target: Family::default(),
            target_met: Family::default(),
        };
        metrics.register(
            "slo_latency_target_seconds",
            "A route's latency percentile objective (slo.latency_targets)",
            r.target.clone(),
        );
        metrics.register(
            "slo_latency_target_met",
            "1 while the route's percentile over the last 5 minutes is within its latency target (or it had no request), 0 while not",
            r.target_met.clone(),
        );
        metrics.register(
            "route_latency_seconds",
            "Route latency percentiles (arrival to the end of the response) over sliding windows (1m, 5m, 15m), from an HDR-style histogram (at most 3.1 % high); set every 5 s",
            r.latency.clone(),
        );
        r
    }

    /// The route's stats for a snapshot being built: those the last snapshot
    /// had (so a reload keeps the history), or new ones.
    pub fn route(&self, name: &str) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.retain(|_, s| s.strong_count() > 0);
        if let Some(s) = routes.get(name).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(RouteStats::new());
        routes.insert(name.to_owned(), Arc::downgrade(&s));
        s
    }

    /// Sets a route's latency target gauges from a check.
    pub fn publish_targets(&self, route: &str, checks: &[TargetCheck]) {
        for c in checks {
            let labels = TargetLabels {
                route: route.to_owned(),
                quantile: c.percentile,
            };
            self.target.get_or_create(&labels).set(c.under_ms / 1000.0);
            self.target_met.get_or_create(&labels).set(i64::from(c.met));
        }
    }

    /// Sets a route's latency gauges at `now`.
    pub fn publish(&self, route: &str, stats: &RouteStats, now: u64) {
        for (minutes, window) in WINDOWS {
            let p = stats.latency(now, minutes);
            for (_, quantile) in QUANTILES {
                self.latency
                    .get_or_create(&QuantileLabels {
                        route: route.to_owned(),
                        window,
                        quantile,
                    })
                    .set(p.get(quantile).unwrap_or(0.0) / 1000.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_series_and_memory() {
        let s = RouteStats::new();
        let t0 = 1_800_000_020 - 1_800_000_020 % 60;
        // 10 requests each 5 s for a minute, one in ten a 503.
        for b in 0..12 {
            for i in 0..10 {
                let status = if i == 0 { 503 } else { 200 };
                s.record(t0 + b * STEP, status, Duration::from_millis(20));
            }
        }
        let now = t0 + 59;
        let r = s.report(now, 24);
        assert_eq!(r.series.requests.len(), 24);
        assert_eq!(r.series.requests[12..], [10; 12]);
        assert_eq!(r.series.requests[..12], [0; 12]);
        assert_eq!(r.series.errors[12..], [1; 12]);
        assert!((r.requests_per_second - 2.0).abs() < 1e-9, "{r:?}");
        assert!((r.error_ratio - 0.1).abs() < 1e-9);
        assert_eq!(r.latency["1m"].count, 120);
        assert!(r.latency["1m"].p99_ms >= 20.0 && r.latency["1m"].p99_ms < 20.7);
        assert_eq!(s.bytes(), 181 * 16 + 16 * 3592);
        let targets = [
            ("p50", Duration::from_millis(25)),
            ("p99", Duration::from_millis(10)),
        ];
        let (p, checks) = check(&s, &targets, now);
        assert_eq!(p.count, 120);
        assert!(checks[0].met && !checks[1].met, "{checks:?}");
        assert_eq!((checks[1].percentile, checks[1].under_ms), ("p99", 10.0));
        // No request in the window: nothing was slow.
        let (_, checks) = check(&s, &targets, now + 3600);
        assert!(checks.iter().all(|c| c.met));
    }

    /// The request path's cost: printed so it can be read with
    /// `cargo test --lib observe::route_stats::tests::record_cost -- --nocapture`;
    /// bounded generously so only a pathological regression fails it.
    #[test]
    fn record_cost() {
        let s = Arc::new(RouteStats::new());
        let n = 1_000_000u64;
        let started = std::time::Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|k| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..n {
                        let status = if (i + k) % 100 == 0 { 503 } else { 200 };
                        s.record(
                            1_800_000_000 + i / 10_000,
                            status,
                            Duration::from_micros(100 + i % 5000),
                        );
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let per = started.elapsed() / (2 * n as u32);
        println!("route stats record: {per:?} per request (2 threads, one route)");
        assert!(per < Duration::from_micros(5), "{per:?}");
        // 100 s of requests: all within the 15-minute window, but for the
        // odd one lost to a minute's turnover.
        let p = s.latency(1_800_000_000 + n / 10_000, 15);
        assert!(p.count + 10 >= 2 * n, "{}", p.count);
    }
}
