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
//!
//! How an ejection ends (`End`), and what the endpoint gets then:
//!
//! - with active checks, `healthy_threshold` passing checks in a row since
//!   it began end it at once (`record_check`; Envoy does the same): a
//!   backend that was killed and restarted is back as soon as its checks
//!   say so, not when the ejection's time runs out. Otherwise its time runs
//!   out (`Expired`) and the endpoint takes its full share again, the
//!   checks vouching for it;
//! - without active checks nothing vouches for it, so when the time runs
//!   out the endpoint gets one probe request (a half-open trial, `claim`),
//!   not its full share at once. The probe's success ends the ejection
//!   (`Probe`); its failure ejects it again, for the grown length. A probe
//!   whose result never comes (the client went away) is given up after the
//!   `hold` it was claimed for, and another may be sent.
//!
//! Either way the strike count stays: the next ejection is longer.

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

/// Where an endpoint stands with outlier detection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ejection {
    /// In rotation.
    #[default]
    None,
    /// Out until `until`; then back in rotation, or, with `probe`, given
    /// one probe request first.
    Ejected { until: Instant, probe: bool },
    /// The time is over; one probe request decides. `claimed`: a probe is
    /// in flight, and no other may be sent before this.
    Probing { claimed: Option<Instant> },
}

/// Why an ejection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `healthy_threshold` passing active checks in a row.
    ActiveCheck,
    /// Its time ran out (with active checks vouching for the endpoint).
    Expired,
    /// Its probe request succeeded.
    Probe,
}

impl End {
    pub const ALL: [End; 3] = [End::ActiveCheck, End::Expired, End::Probe];

    pub fn as_str(self) -> &'static str {
        match self {
            End::ActiveCheck => "active_check",
            End::Expired => "expired",
            End::Probe => "probe",
        }
    }
}

/// What one response meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A trigger fired, for this reason: the caller ejects (`eject`) if the
    /// cluster can afford it (`may_eject`).
    Trip(String),
    /// It was the probe, and it succeeded: back in rotation.
    Ended(End),
    /// It was the probe, and it failed: ejected again, for this long.
    Reejected(Duration),
}

#[derive(Clone, Debug, Default)]
pub struct Outlier {
    consecutive: u32,
    /// `None` until the first result, after an ejection, or while the rate
    /// trigger is disabled.
    window: Option<Window>,
    ejection: Ejection,
    /// Passing active checks in a row since the current ejection began.
    passes: u32,
    /// When the last ejection ended: time back in service forgives strikes.
    last_end: Option<Instant>,
    /// Past ejections not yet forgiven; sets the next ejection's length.
    strikes: u32,
    ejections: u32,
}

impl Outlier {
    pub fn new() -> Outlier {
        Outlier::default()
    }

    pub fn ejection(&self) -> Ejection {
        self.ejection
    }

    /// Moves an ejection whose time is over on: to the probe, or back into
    /// rotation (`Expired`, returned).
    pub fn expire(&mut self, now: Instant) -> Option<End> {
        match self.ejection {
            Ejection::Ejected { until, probe } if now >= until => {
                if probe {
                    self.ejection = Ejection::Probing { claimed: None };
                    None
                } else {
                    self.end(until);
                    Some(End::Expired)
                }
            }
            _ => None,
        }
    }

    fn end(&mut self, now: Instant) {
        self.ejection = Ejection::None;
        self.last_end = Some(now);
        self.passes = 0;
    }

    /// Records one response (`ok` = not a 5xx, connect failure or timeout).
    /// While ejected, results (of requests that were in flight) are ignored,
    /// except the probe's.
    pub fn record(&mut self, ok: bool, cfg: &OutlierConfig, now: Instant) -> Option<Event> {
        // An expiry without probe is the caller's to report (`expire`
        // first); here it only matters that the endpoint is back.
        self.expire(now);
        match self.ejection {
            Ejection::None => {}
            Ejection::Ejected { .. } | Ejection::Probing { claimed: None } => return None,
            Ejection::Probing { claimed: Some(_) } if ok => {
                self.end(now);
                return Some(Event::Ended(End::Probe));
            }
            Ejection::Probing { claimed: Some(_) } => {
                return Some(Event::Reejected(self.eject(cfg, true, now)));
            }
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
            return Some(Event::Trip(format!(
                "{} consecutive failures (consecutive_failures {n})",
                self.consecutive
            )));
        }
        let (total, failed) = rate?;
        let observed = f64::from(failed) / f64::from(total);
        if total >= cfg.min_requests.max(1) && observed >= cfg.failure_rate {
            return Some(Event::Trip(format!(
                "{failed} of {total} requests failed in the last {:?} ({:.0}%; failure_rate {:.0}% over at least {} requests)",
                cfg.window,
                observed * 100.0,
                cfg.failure_rate * 100.0,
                cfg.min_requests
            )));
        }
        None
    }

    /// Records one active check (`pass`: passed or degraded, the endpoint
    /// answers). `healthy` passes in a row since the ejection began end it.
    /// Returns how an ejection ended, if one did.
    pub fn record_check(&mut self, pass: bool, healthy: u32, now: Instant) -> Option<End> {
        if let Some(end) = self.expire(now) {
            return Some(end);
        }
        if self.ejection == Ejection::None {
            return None;
        }
        self.passes = if pass { self.passes + 1 } else { 0 };
        if self.passes >= healthy.max(1) {
            self.end(now);
            return Some(End::ActiveCheck);
        }
        None
    }

    /// Claims the probe request of an endpoint whose ejection time is over,
    /// for at most `hold` (its result is awaited that long). True when the
    /// endpoint may take a request: it is in rotation or the probe is now
    /// this request's; false while ejected or another probe is in flight.
    pub fn claim(&mut self, now: Instant, hold: Duration) -> bool {
        self.expire(now);
        match self.ejection {
            Ejection::None => true,
            Ejection::Ejected { .. } => false,
            Ejection::Probing { claimed: Some(t) } if now < t => false,
            Ejection::Probing { .. } => {
                self.ejection = Ejection::Probing {
                    claimed: Some(now + hold),
                };
                true
            }
        }
    }

    /// Ends any ejection without counting it (outlier detection was turned
    /// off). True if there was one.
    pub fn clear(&mut self, now: Instant) -> bool {
        let was = self.ejection != Ejection::None;
        if was {
            self.end(now);
        }
        was
    }

    /// Ejects now, for `base_ejection` × (recent ejections + 1), capped at
    /// `max_ejection`; returns that duration. Resets the counts. `probe`:
    /// its end gives one probe request first (no active checks).
    pub fn eject(&mut self, cfg: &OutlierConfig, probe: bool, now: Instant) -> Duration {
        self.expire(now);
        if let Some(end) = self.last_end {
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
        self.ejection = Ejection::Ejected {
            until: now + length,
            probe,
        };
        // Time ejected is not time in service.
        self.last_end = None;
        self.passes = 0;
        self.consecutive = 0;
        self.window = None;
        length
    }

    /// Out of rotation: ejected, or waiting on its probe.
    pub fn is_ejected(&self, now: Instant) -> bool {
        match self.ejection {
            Ejection::None => false,
            Ejection::Ejected { until, probe } => probe || now < until,
            Ejection::Probing { .. } => true,
        }
    }

    /// Whether a request may be sent now: in rotation, or a probe may be
    /// claimed (`claim` then decides which request is the probe).
    pub fn admits(&self, now: Instant) -> bool {
        match self.ejection {
            Ejection::None => true,
            Ejection::Ejected { until, .. } => now >= until,
            Ejection::Probing { claimed } => claimed.is_none_or(|t| now >= t),
        }
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

    fn trip(event: Option<Event>) -> Option<String> {
        match event {
            Some(Event::Trip(reason)) => Some(reason),
            other => {
                assert_eq!(other, None);
                None
            }
        }
    }

    /// Records `results` 10 ms apart from `*t`; returns the last reason.
    fn feed(o: &mut Outlier, t: &mut Instant, results: &[bool]) -> Option<String> {
        let cfg = OutlierConfig::default();
        let mut last = None;
        for &ok in results {
            *t += 10 * MS;
            last = trip(o.record(ok, &cfg, *t));
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
            assert_eq!(trip(o.record(false, &cfg, t)), None);
        }
        assert!(trip(o.record(false, &cfg, t)).is_some());
    }

    #[test]
    fn old_failures_slide_out() {
        let t0 = Instant::now();
        let mut o = Outlier::new();
        let cfg = OutlierConfig::default();
        // 4 failures then a success at 0 s.
        for ok in [false, false, false, false, true] {
            assert_eq!(trip(o.record(ok, &cfg, t0)), None);
        }
        // 5 successes at 5 s: 4 of 10 failed.
        for _ in 0..5 {
            assert_eq!(trip(o.record(true, &cfg, t0 + 5 * SEC)), None);
        }
        // At 10.5 s the 0 s bucket has left: 4 failures now make 4 of 9.
        let t = t0 + 10 * SEC + 500 * MS;
        for _ in 0..4 {
            assert_eq!(trip(o.record(false, &cfg, t)), None);
        }
        // Had it stayed, 8 of 14 would have ejected. Now the fifth failure
        // in a row does, whatever the rate.
        assert!(
            trip(o.record(false, &cfg, t))
                .unwrap()
                .starts_with("5 consecutive")
        );
        // A long silence clears everything: 5 of 9 twice is not 10 of 18.
        let mut o = Outlier::new();
        let half = [false, true, false, true, false, true, false, true, false];
        for ok in half {
            assert_eq!(trip(o.record(ok, &cfg, t0)), None);
        }
        for ok in half {
            assert_eq!(trip(o.record(ok, &cfg, t0 + 3600 * SEC)), None);
        }
    }

    #[test]
    fn ejections_grow_and_cap() {
        let cfg = OutlierConfig::default();
        let mut t = Instant::now();
        let mut o = Outlier::new();
        let mut lengths = Vec::new();
        for _ in 0..12 {
            let d = o.eject(&cfg, false, t);
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
        assert_eq!(o.eject(&cfg, false, t + 600 * SEC), 300 * SEC);
        // A long quiet spell forgives them all.
        let t = t + 600 * SEC + 300 * SEC + 365 * 24 * 3600 * SEC;
        assert_eq!(o.eject(&cfg, false, t), 30 * SEC);
        assert_eq!(o.ejections(), 14);
    }

    #[test]
    fn ejected_ignores_results_and_starts_afresh() {
        let cfg = OutlierConfig::default();
        let mut t = Instant::now();
        let mut o = Outlier::new();
        assert!(feed(&mut o, &mut t, &[false; 5]).is_some());
        let d = o.eject(&cfg, false, t);
        assert_eq!(feed(&mut o, &mut t, &[false; 20]), None);
        t += d;
        assert!(!o.is_ejected(t));
        assert_eq!(feed(&mut o, &mut t, &[false; 4]), None, "counts reset");
        assert!(feed(&mut o, &mut t, &[false]).is_some());
    }

    #[test]
    fn passing_checks_end_an_ejection_and_the_strikes_stay() {
        let cfg = OutlierConfig::default();
        let t0 = Instant::now();
        let mut o = Outlier::new();
        assert_eq!(o.record_check(true, 2, t0), None, "nothing to end");
        assert_eq!(o.eject(&cfg, false, t0), 30 * SEC);
        // A pass, a fail, then two passes: the run starts over at the fail.
        assert_eq!(o.record_check(true, 2, t0 + 500 * MS), None);
        assert_eq!(o.record_check(false, 2, t0 + SEC), None);
        assert_eq!(o.record_check(true, 2, t0 + 1500 * MS), None);
        assert!(o.is_ejected(t0 + 1500 * MS) && !o.admits(t0 + 1500 * MS));
        let back = t0 + 2 * SEC;
        assert_eq!(o.record_check(true, 2, back), Some(End::ActiveCheck));
        assert_eq!(o.ejection(), Ejection::None);
        assert!(!o.is_ejected(back) && o.admits(back));
        // The next ejection is the second: twice as long.
        assert_eq!(o.eject(&cfg, false, back + SEC), 60 * SEC);
        assert_eq!(o.ejections(), 2);
        // Passes from before an ejection do not count towards ending it.
        let mut o = Outlier::new();
        o.record_check(true, 2, t0);
        o.eject(&cfg, false, t0);
        assert_eq!(o.record_check(true, 2, t0 + SEC), None);
    }

    #[test]
    fn with_checks_an_ejection_that_runs_out_is_reported_once() {
        let cfg = OutlierConfig::default();
        let t0 = Instant::now();
        let mut o = Outlier::new();
        o.eject(&cfg, false, t0);
        let later = t0 + 30 * SEC;
        assert!(!o.is_ejected(later) && o.admits(later), "back at its end");
        // Failing checks (the lifecycle keeps it out) do not stop the report.
        assert_eq!(o.record_check(false, 2, later), Some(End::Expired));
        assert_eq!(o.record_check(false, 2, later), None);
        assert_eq!(o.expire(later), None);
    }

    #[test]
    fn without_checks_one_probe_decides() {
        let cfg = OutlierConfig::default();
        let hold = 5 * SEC;
        let t0 = Instant::now();
        let mut o = Outlier::new();
        assert!(o.claim(t0, hold), "in rotation: every request may go");
        o.eject(&cfg, true, t0);
        assert!(!o.claim(t0 + SEC, hold), "ejected");
        let end = t0 + 30 * SEC;
        // Its time is over: one request may go, and it is still out.
        assert!(o.admits(end) && o.is_ejected(end));
        assert!(o.claim(end, hold));
        assert!(!o.admits(end) && !o.claim(end + SEC, hold), "one probe");
        // Once a probe is claimed, the first result decides: success ends
        // the ejection.
        assert_eq!(
            o.record(true, &cfg, end + SEC),
            Some(Event::Ended(End::Probe))
        );
        assert!(o.admits(end + SEC) && !o.is_ejected(end + SEC));

        // A failed probe ejects again, for the grown length.
        let t1 = end + 2 * SEC;
        o.eject(&cfg, true, t1);
        let end = t1 + 60 * SEC;
        assert!(o.claim(end, hold));
        assert_eq!(
            o.record(false, &cfg, end + SEC),
            Some(Event::Reejected(90 * SEC))
        );
        assert!(!o.admits(end + 2 * SEC) && o.is_ejected(end + 2 * SEC));
        assert_eq!(o.ejections(), 3);
    }

    #[test]
    fn results_without_a_claimed_probe_are_ignored_and_a_lost_probe_is_retried() {
        let cfg = OutlierConfig::default();
        let hold = 5 * SEC;
        let t0 = Instant::now();
        let mut o = Outlier::new();
        o.eject(&cfg, true, t0);
        let end = t0 + 30 * SEC;
        // Requests that were in flight when it was ejected answer now.
        for ok in [false, false, true] {
            assert_eq!(o.record(ok, &cfg, end), None);
        }
        assert_eq!(o.ejection(), Ejection::Probing { claimed: None });
        // A probe whose result never comes: another after `hold`.
        assert!(o.claim(end, hold));
        assert!(!o.claim(end + hold - MS, hold));
        assert!(o.admits(end + hold) && o.claim(end + hold, hold));
        // Passing checks (a reload added them) end a probing ejection too.
        assert_eq!(o.record_check(true, 1, end + hold), Some(End::ActiveCheck));
        // Turning detection off ends an ejection without a reason to count.
        o.eject(&cfg, true, end + hold);
        assert!(o.clear(end + hold) && !o.clear(end + hold));
        assert!(o.admits(end + hold));
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
