//! Passive outlier detection: ejecting an endpoint for a while because real
//! traffic says it is failing, without waiting for the next active check.
//! Envoy's outlier detection, simplified.
//!
//! Two triggers, checked on every response (`ok` is false for a 5xx, a
//! connect failure or a timeout):
//!
//! - `consecutive_failures` failed responses in a row (0 disables);
//! - a failure rate of at least `failure_rate` over the last `window`, once
//!   the window holds at least `min_requests` responses, so that two failures
//!   out of three requests on a quiet endpoint do not eject it
//!   (`Duration::ZERO` disables).
//!
//! The window is ten buckets of `window / 10`, rotated by the clock, so the
//! memory is fixed whatever the request rate; it covers between nine and ten
//! tenths of `window`, old results leaving one bucket at a time.
//!
//! `record` only reports that a trigger fired; the caller decides, with
//! `may_eject`, whether the cluster can afford one more ejected endpoint, and
//! then calls `eject`. While the trigger keeps firing and ejection is refused,
//! every further result reports it again.
//!
//! An ejection lasts `base_ejection` times the number of recent ejections
//! (this one included), capped at `max_ejection`: an endpoint that keeps
//! failing stays out longer each time. "Recent" decays: each `max_ejection`
//! spent back in service forgives one past ejection, so a long-lived endpoint
//! that failed a few times last month starts again from `base_ejection`
//! (Envoy decrements its multiplier the same way). `ejections` counts them
//! all, for metrics. Results that arrive while ejected (requests that were
//! in flight) are ignored, and an ejection starts the counts afresh.

use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
        }
    }
}

const BUCKETS: usize = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    total: u32,
    failed: u32,
}

/// Counts over the last `BUCKETS` slots of `width`, slot `n` covering
/// `origin + n·width ..` and living in `buckets[n % BUCKETS]`.
#[derive(Clone, Debug)]
struct Window {
    width: Duration,
    origin: Instant,
    /// The newest slot seen.
    head: u64,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(width: Duration, now: Instant) -> Window {
        Window {
            width,
            origin: now,
            head: 0,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn add(&mut self, ok: bool, now: Instant) {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        let slot = u64::try_from(elapsed / self.width.as_nanos()).unwrap_or(u64::MAX);
        if slot > self.head {
            // Clear the slots skipped over; all of them after a long silence.
            let stale = (slot - self.head).min(BUCKETS as u64);
            for n in slot + 1 - stale..=slot {
                self.buckets[(n % BUCKETS as u64) as usize] = Bucket::default();
            }
            self.head = slot;
        }
        // A `now` earlier than the newest (another worker's clock read)
        // counts in the newest slot rather than rewriting the past.
        let b = &mut self.buckets[(self.head % BUCKETS as u64) as usize];
        b.total = b.total.saturating_add(1);
        b.failed = b.failed.saturating_add(u32::from(!ok));
    }

    fn totals(&self) -> (u32, u32) {
        self.buckets.iter().fold((0, 0), |(t, f), b| {
            (t.saturating_add(b.total), f.saturating_add(b.failed))
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct Outlier {
    consecutive: u32,
    /// `None` until the first result, after an ejection, or while the rate
    /// trigger is disabled.
    window: Option<Window>,
    ejected_until: Option<Instant>,
    /// Past ejections not yet forgiven; sets the next ejection's length.
    strikes: u32,
    ejections: u32,
}

impl Outlier {
    pub fn new() -> Outlier {
        Outlier::default()
    }

    /// Records one response (`ok` = not a 5xx, connect failure or timeout).
    /// Returns why when this result trips ejection; does nothing while
    /// ejected.
    pub fn record(&mut self, ok: bool, cfg: &OutlierConfig, now: Instant) -> Option<String> {
        if self.is_ejected(now) {
            return None;
        }
        self.consecutive = if ok { 0 } else { self.consecutive + 1 };
        let width = cfg.window / BUCKETS as u32;
        let rate = if width.is_zero() {
            self.window = None;
            None
        } else {
            // A reload that changed the window makes old slots meaningless.
            let w = match &mut self.window {
                Some(w) if w.width == width => w,
                slot => slot.insert(Window::new(width, now)),
            };
            w.add(ok, now);
            Some(w.totals())
        };
        let n = cfg.consecutive_failures;
        if n > 0 && self.consecutive >= n {
            return Some(format!(
                "{} consecutive failures (consecutive_failures {n})",
                self.consecutive
            ));
        }
        let (total, failed) = rate?;
        let observed = f64::from(failed) / f64::from(total);
        if total >= cfg.min_requests.max(1) && observed >= cfg.failure_rate {
            return Some(format!(
                "{failed} of {total} requests failed in the last {:?} ({:.0}%; failure_rate {:.0}% over at least {} requests)",
                cfg.window,
                observed * 100.0,
                cfg.failure_rate * 100.0,
                cfg.min_requests
            ));
        }
        None
    }

    /// Ejects now, for `base_ejection` × (recent ejections + 1), capped at
    /// `max_ejection`; returns that duration. Resets the counts.
    pub fn eject(&mut self, cfg: &OutlierConfig, now: Instant) -> Duration {
        if let Some(end) = self.ejected_until {
            let served = now.saturating_duration_since(end).as_nanos();
            let forgiven = served.checked_div(cfg.max_ejection.as_nanos()).unwrap_or(0);
            let forgiven = u32::try_from(forgiven).unwrap_or(u32::MAX);
            self.strikes = self.strikes.saturating_sub(forgiven);
        }
        let length = cfg
            .base_ejection
            .checked_mul(self.strikes.saturating_add(1))
            .unwrap_or(Duration::MAX)
            .min(cfg.max_ejection);
        self.strikes = self.strikes.saturating_add(1);
        self.ejections = self.ejections.saturating_add(1);
        self.ejected_until = Some(now + length);
        self.consecutive = 0;
        self.window = None;
        length
    }

    /// Ejected until the deadline, exclusive.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|end| now < end)
    }

    /// Ejections so far, all of them.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }
}

/// Whether one more of `total` endpoints may be ejected while `ejected` are:
/// at most `max_percent` of them at once (rounded down), but at least one,
/// as Envoy does, so small clusters are protected too; and never the last
/// endpoint in service, because ejecting it turns an endpoint that fails
/// some requests into a cluster that fails them all. `max_percent` 0
/// disables ejection.
pub fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    if max_percent == 0 || total < 2 {
        return false;
    }
    let share = (total as u64 * u64::from(max_percent.min(100)) / 100) as usize;
    ejected < share.clamp(1, total - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    /// Records `results` 10 ms apart from `*t`; returns the last reason.
    fn feed(o: &mut Outlier, t: &mut Instant, results: &[bool]) -> Option<String> {
        let cfg = OutlierConfig::default();
        let mut last = None;
        for &ok in results {
            *t += 10 * MS;
            last = o.record(ok, &cfg, *t);
        }
        last
    }

    #[test]
    fn five_consecutive_failures_eject() {
        let mut t = Instant::now();
        let mut o = Outlier::new();
        assert_eq!(feed(&mut o, &mut t, &[false; 4]), None);
        assert_eq!(
            feed(&mut o, &mut t, &[false]).as_deref(),
            Some("5 consecutive failures (consecutive_failures 5)")
        );
    }

    #[test]
    fn a_success_breaks_the_run() {
        let mut t = Instant::now();
        let mut o = Outlier::new();
        // Plenty of traffic so the rate (4 of 15) stays low.
        assert_eq!(feed(&mut o, &mut t, &[true; 10]), None);
        assert_eq!(
            feed(&mut o, &mut t, &[false, false, false, false, true]),
            None
        );
        assert_eq!(feed(&mut o, &mut t, &[false; 4]), None);
    }

    #[test]
    fn failure_rate_ejects_with_enough_requests() {
        let mut t = Instant::now();
        let mut o = Outlier::new();
        // 4 of 9 failed, never 5 in a row: below min_requests.
        let mixed = [true, false, true, false, true, false, true, false, true];
        assert_eq!(feed(&mut o, &mut t, &mixed), None);
        // The tenth request, a failure: 5 of 10.
        assert_eq!(
            feed(&mut o, &mut t, &[false]).as_deref(),
            Some(
                "5 of 10 requests failed in the last 10s (50%; failure_rate 50% over at least 10 requests)"
            )
        );
        // Below min_requests, even 100 % would need the consecutive trigger.
        let cfg = OutlierConfig {
            consecutive_failures: 0,
            ..OutlierConfig::default()
        };
        let mut o = Outlier::new();
        for _ in 0..9 {
            assert_eq!(o.record(false, &cfg, t), None);
        }
        assert!(o.record(false, &cfg, t).is_some());
    }

    #[test]
    fn old_failures_slide_out() {
        let t0 = Instant::now();
        let mut o = Outlier::new();
        let cfg = OutlierConfig::default();
        // 4 failures then a success at 0 s.
        for ok in [false, false, false, false, true] {
            assert_eq!(o.record(ok, &cfg, t0), None);
        }
        // 5 successes at 5 s: 4 of 10 failed.
        for _ in 0..5 {
            assert_eq!(o.record(true, &cfg, t0 + 5 * SEC), None);
        }
        // At 10.5 s the 0 s bucket has left: 4 failures now make 4 of 9.
        let t = t0 + 10 * SEC + 500 * MS;
        for _ in 0..4 {
            assert_eq!(o.record(false, &cfg, t), None);
        }
        // Had it stayed, 8 of 14 would have ejected. Now the fifth failure
        // in a row does, whatever the rate.
        assert!(
            o.record(false, &cfg, t)
                .unwrap()
                .starts_with("5 consecutive")
        );
        // A long silence clears everything: 5 of 9 twice is not 10 of 18.
        let mut o = Outlier::new();
        let half = [false, true, false, true, false, true, false, true, false];
        for ok in half {
            assert_eq!(o.record(ok, &cfg, t0), None);
        }
        for ok in half {
            assert_eq!(o.record(ok, &cfg, t0 + 3600 * SEC), None);
        }
    }

    #[test]
    fn ejections_grow_and_cap() {
        let cfg = OutlierConfig::default();
        let mut t = Instant::now();
        let mut o = Outlier::new();
        let mut lengths = Vec::new();
        for _ in 0..12 {
            let d = o.eject(&cfg, t);
            assert!(o.is_ejected(t + d - MS));
            assert!(!o.is_ejected(t + d), "ends exactly at the deadline");
            lengths.push(d.as_secs());
            t += d;
        }
        assert_eq!(
            lengths,
            [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
        );
        assert_eq!(o.ejections(), 12);
        // Ten minutes back in service forgive two of the twelve strikes.
        assert_eq!(o.eject(&cfg, t + 600 * SEC), 300 * SEC);
        // A long quiet spell forgives them all.
        let t = t + 600 * SEC + 300 * SEC + 365 * 24 * 3600 * SEC;
        assert_eq!(o.eject(&cfg, t), 30 * SEC);
        assert_eq!(o.ejections(), 14);
    }

    #[test]
    fn ejected_ignores_results_and_starts_afresh() {
        let cfg = OutlierConfig::default();
        let mut t = Instant::now();
        let mut o = Outlier::new();
        assert!(feed(&mut o, &mut t, &[false; 5]).is_some());
        let d = o.eject(&cfg, t);
        assert_eq!(feed(&mut o, &mut t, &[false; 20]), None);
        t += d;
        assert!(!o.is_ejected(t));
        assert_eq!(feed(&mut o, &mut t, &[false; 4]), None, "counts reset");
        assert!(feed(&mut o, &mut t, &[false]).is_some());
    }

    #[test]
    fn may_eject_bounds_the_share() {
        assert!((0..5).all(|n| may_eject(n, 10, 50)));
        assert!(!may_eject(5, 10, 50));
        // At least one, even when the share rounds down to zero...
        assert!(may_eject(0, 3, 10));
        assert!(!may_eject(1, 3, 10));
        // ...but never the last one in service, nor any with 0 %.
        assert!(!may_eject(0, 1, 100));
        assert!(!may_eject(0, 0, 100));
        assert!(may_eject(2, 4, 100));
        assert!(!may_eject(3, 4, 100));
        assert!(!may_eject(0, 10, 0));
    }
}
