//! Service level objectives per route: availability over the SLO window, the
//! error budget left, burn rates over the SRE workbook's windows, and its
//! multi-window burn-rate alerts, which start and end as events.
//!
//! The shape: [`Objective`] says what is good (from the route's `slo`
//! table); a [`Tracker`] counts requests and bad ones in two bucket rings
//! (minutes over 3 days for the burn windows, hours over the SLO window for
//! the budget), with atomics only; [`Tracker::evaluate`] is the synchronous
//! core that turns counts into a [`Report`] at a given `now` (Unix seconds,
//! so saved counts mean the same after a restart). The control loop
//! (`server::control::slos`) evaluates every few seconds, sets the gauges
//! and emits alert events. Trackers are kept by route name in the
//! [`Registry`], so a reload keeps the budget.
//!
//! Memory per route with an SLO: 16 bytes per bucket, 4 321 minute buckets
//! and 24 × `window_days` + 1 hour buckets: about 81 KB for a 30-day window.

pub mod act;
pub mod burn;
pub mod registry;
pub mod rules;
pub mod state;
pub mod window;

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

pub use registry::Registry;
use window::{Buckets, Counts};

use crate::config::slo::{CLASSES, SloConfig};

/// Seconds since the Unix epoch: SLO buckets are wall-clock time so that
/// saved counts mean the same after a restart.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;

/// Saved buckets: (bucket start in Unix seconds, counts).
pub type Saved = Vec<(u64, Counts)>;

/// What a route promises.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    /// Good share promised, as a fraction: 0.999.
    pub target: f64,
    /// The SLO window, in seconds.
    pub window: u64,
    /// Good status classes, indexed by class − 1.
    pub good: [bool; 5],
    /// Good answers must also be this fast.
    pub latency: Option<Duration>,
}

impl Objective {
    pub fn from_config(c: &SloConfig) -> Objective {
        let mut good = [false; 5];
        for s in &c.good_statuses {
            if let Some(i) = CLASSES.iter().position(|k| *k == s.get_ref().as_str()) {
                good[i] = true;
            }
        }
        Objective {
            target: *c.target.get_ref() / 100.0,
            window: u64::from(*c.window_days.get_ref()) * 24 * HOUR,
            good,
            latency: c.latency.as_ref().map(|l| l.get_ref().get()),
        }
    }

    /// The error budget: the bad share allowed.
    pub fn budget(&self) -> f64 {
        1.0 - self.target
    }

    pub fn is_good(&self, status: u16, took: Duration) -> bool {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.good[class] && self.latency.is_none_or(|l| took <= l)
    }

    /// What the good statuses and latency say, for reports and rules.
    pub fn describe_good(&self) -> String {
        let classes: Vec<&str> = CLASSES
            .iter()
            .zip(self.good)
            .filter(|(_, g)| *g)
            .map(|(c, _)| *c)
            .collect();
        match self.latency {
            Some(l) => format!("status {} within {l:?}", classes.join("/")),
            None => format!("status {}", classes.join("/")),
        }
    }
}

/// A route's counts and alert state.
pub struct Tracker {
    /// The SLO window (seconds) the hour ring spans.
    window: u64,
    /// Minutes, covering the longest burn window (3 days).
    fine: Buckets,
    /// Hours, covering the SLO window.
    coarse: Buckets,
    /// Which of `burn::ALERTS` fire, as last evaluated.
    firing: Mutex<[bool; 3]>,
}

/// One window's burn.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Burn {
    pub window: &'static str,
    pub requests: u64,
    pub bad: u64,
    pub burn_rate: f64,
}

/// An alert's state, and whether it just started or ended.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AlertState {
    pub name: &'static str,
    pub severity: &'static str,
    pub factor: f64,
    pub firing: bool,
    /// `Some(true)`: started at this evaluation; `Some(false)`: ended.
    #[serde(skip)]
    pub change: Option<bool>,
    pub long_burn_rate: f64,
    pub short_burn_rate: f64,
}

/// A route's SLO at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target_percent: f64,
    pub window_days: u64,
    pub good: String,
    /// Good share over the SLO window (1 without requests).
    pub availability: f64,
    pub requests: u64,
    pub bad: u64,
    /// The share of the error budget left: 1 untouched, below 0 overspent.
    pub budget_remaining: f64,
    pub burn_rates: Vec<Burn>,
    pub alerts: Vec<AlertState>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new(30 * 24 * HOUR)
    }
}

impl Tracker {
    /// `window`: the SLO window in seconds (the coarse ring's span).
    pub fn new(window: u64) -> Tracker {
        Tracker {
            window,
            fine: Buckets::new(MINUTE, 72 * HOUR),
            coarse: Buckets::new(HOUR, window),
            firing: Mutex::new([false; 3]),
        }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// Bytes of counts this tracker holds.
    pub fn bytes(&self) -> usize {
        self.fine.bytes() + self.coarse.bytes()
    }

    /// One request's outcome at `now` (Unix seconds): the request path's
    /// whole cost is here, two atomic adds and two loads.
    pub fn record(&self, now: u64, good: bool) {
        self.fine.record(now, !good);
        self.coarse.record(now, !good);
    }

    fn counts(&self, now: u64, span: u64) -> Counts {
        // Windows up to 3 days come from the minute ring; the SLO window from
        // the hour ring.
        if span <= 72 * HOUR {
            self.fine.sum(now, span)
        } else {
            self.coarse.sum(now, span)
        }
    }

    /// The SLO at `now` for a reader: alert states as last evaluated by the
    /// control loop are left as they are.
    pub fn peek(&self, objective: &Objective, now: u64) -> Report {
        self.report(objective, now, false)
    }

    /// The SLO at `now`; alert changes since the last evaluation are marked
    /// (`AlertState::change`) and remembered.
    pub fn evaluate(&self, objective: &Objective, now: u64) -> Report {
        self.report(objective, now, true)
    }

    fn report(&self, objective: &Objective, now: u64, remember: bool) -> Report {
        let budget = objective.budget();
        let slo = self.counts(now, objective.window);
        let slo_rate = burn::burn_rate(slo.bad_ratio(), budget);
        let burn_rates = burn::WINDOWS
            .iter()
            .map(|&(secs, name)| {
                let c = if secs == 0 {
                    slo
                } else {
                    self.counts(now, secs)
                };
                Burn {
                    window: name,
                    requests: c.total,
                    bad: c.bad,
                    burn_rate: burn::burn_rate(c.bad_ratio(), budget),
                }
            })
            .collect();
        let mut firing = self.firing.lock().unwrap_or_else(|p| p.into_inner());
        let alerts = burn::ALERTS
            .iter()
            .zip(firing.iter_mut())
            .map(|(a, was)| {
                let long = burn::burn_rate(self.counts(now, a.long).bad_ratio(), budget);
                let short = burn::burn_rate(self.counts(now, a.short).bad_ratio(), budget);
                let now_firing = burn::fires(a, long, short);
                let change = (now_firing != *was).then_some(now_firing);
                if remember {
                    *was = now_firing;
                }
                AlertState {
                    name: a.name,
                    severity: a.severity,
                    factor: a.factor,
                    firing: now_firing,
                    change,
                    long_burn_rate: long,
                    short_burn_rate: short,
                }
            })
            .collect();
        Report {
            target_percent: objective.target * 100.0,
            window_days: objective.window / (24 * HOUR),
            good: objective.describe_good(),
            availability: 1.0 - slo.bad_ratio(),
            requests: slo.total,
            bad: slo.bad,
            budget_remaining: burn::budget_remaining(slo_rate),
            burn_rates,
            alerts,
        }
    }

    /// The counts to save: (bucket start, counts) of both rings.
    pub fn dump(&self) -> (Saved, Saved) {
        (self.fine.dump(), self.coarse.dump())
    }

    /// Adds saved counts back at `now` (those still within each ring).
    pub fn restore(&self, now: u64, fine: &[(u64, Counts)], coarse: &[(u64, Counts)]) {
        self.fine.restore(now, fine);
        self.coarse.restore(now, coarse);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objective() -> Objective {
        Objective {
            target: 0.999,
            window: 30 * 24 * HOUR,
            good: [true, true, true, true, false],
            latency: None,
        }
    }

    /// `rate` requests a minute for `minutes`, a `bad` share of them bad.
    fn drive(t: &Tracker, from: u64, minutes: u64, rate: u64, bad: f64) -> u64 {
        let mut now = from;
        for _ in 0..minutes {
            let bad_n = (rate as f64 * bad).round() as u64;
            for i in 0..rate {
                t.record(now, i >= bad_n);
            }
            now += MINUTE;
        }
        now - MINUTE
    }

    #[test]
    fn good_is_status_class_and_latency() {
        let mut o = objective();
        assert!(o.is_good(200, Duration::from_secs(9)));
        assert!(o.is_good(404, Duration::ZERO));
        assert!(!o.is_good(503, Duration::ZERO));
        o.latency = Some(Duration::from_millis(200));
        assert!(o.is_good(200, Duration::from_millis(200)));
        assert!(!o.is_good(200, Duration::from_millis(201)));
    }

    #[test]
    fn a_fast_burn_pages_and_ends_when_the_burn_stops() {
        let o = objective();
        let t = Tracker::new(o.window);
        let t0 = 1_800_000_000 - 1_800_000_000 % HOUR;
        // A quiet day: 100 requests a minute, all good.
        let now = drive(&t, t0, 24 * 60, 100, 0.0);
        let r = t.evaluate(&o, now);
        assert!(r.alerts.iter().all(|a| !a.firing));
        assert!((r.budget_remaining - 1.0).abs() < 1e-12);
        // Then an hour at 2 % bad: 20× the budget's pace.
        let now = drive(&t, now + MINUTE, 60, 100, 0.02);
        let r = t.evaluate(&o, now);
        let fast = &r.alerts[0];
        assert!(fast.firing, "{r:?}");
        assert_eq!(fast.change, Some(true));
        assert!((fast.short_burn_rate - 20.0).abs() < 0.01, "{fast:?}");
        let one_hour = r.burn_rates.iter().find(|b| b.window == "1h").unwrap();
        assert_eq!((one_hour.requests, one_hour.bad), (6000, 120));
        // 120 bad of 150 000: 0.08 % of 0.1 % spent.
        assert_eq!((r.requests, r.bad), (150_000, 120));
        assert!(
            (r.budget_remaining - 0.2).abs() < 1e-9,
            "{}",
            r.budget_remaining
        );
        // Evaluated again, it is still firing but did not just start.
        assert_eq!(t.evaluate(&o, now).alerts[0].change, None);
        // Ten clean minutes: the 5-minute window is clean, the page ends
        // though the hour still burns.
        let now = drive(&t, now + MINUTE, 10, 100, 0.0);
        let r = t.evaluate(&o, now);
        assert!(!r.alerts[0].firing);
        assert_eq!(r.alerts[0].change, Some(false));
        assert!(r.alerts[0].long_burn_rate >= 14.4, "{r:?}");
    }

    #[test]
    fn the_budget_forgets_what_left_the_window() {
        let o = Objective {
            window: 24 * HOUR,
            ..objective()
        };
        let t = Tracker::new(o.window);
        let t0 = 1_800_000_000 - 1_800_000_000 % HOUR;
        let now = drive(&t, t0, 60, 10, 0.5);
        let r = t.evaluate(&o, now);
        assert!(r.budget_remaining < 0.0, "overspent: {r:?}");
        // Two days on, the bad hour is outside the 1-day window.
        let r = t.evaluate(&o, now + 48 * HOUR);
        assert_eq!(r.requests, 0);
        assert!((r.budget_remaining - 1.0).abs() < 1e-12);
    }

    #[test]
    fn memory_per_route_is_bounded() {
        let t = Tracker::new(30 * 24 * HOUR);
        // 4321 minute slots + 721 hour slots, 16 bytes each.
        assert_eq!(t.bytes(), (4321 + 721) * 16);
    }

    /// The request path's cost: printed so it can be read with
    /// `cargo test --lib slo::tests::record_cost -- --nocapture`; bounded
    /// generously so only a pathological regression fails it.
    #[test]
    fn record_cost() {
        let t = std::sync::Arc::new(Tracker::new(30 * 24 * HOUR));
        let n = 1_000_000u64;
        let started = std::time::Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|k| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..n {
                        t.record(1_800_000_000 + i / 10_000, (i + k) % 100 != 0);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let per = started.elapsed() / (2 * n as u32);
        println!("slo record: {per:?} per request (2 threads, one route)");
        assert!(per < Duration::from_micros(5), "{per:?}");
        let r = t.evaluate(&objective(), 1_800_000_000 + n / 10_000);
        // A slot's turnover may lose the odd racing request (window.rs).
        assert!(r.requests + 10 >= 2 * n, "{}", r.requests);
    }
}
