//! The lifecycle of one endpoint, driven by active check results, with
//! hysteresis so that one lost probe does not pull an endpoint out of the
//! pool and one lucky probe does not put a broken one back.
//!
//! Checks and states are ordered, best first: a `Pass` matches `Healthy`, a
//! `Degraded` result (a deep check answered `{"status":"degraded"}`) matches
//! `Degraded`, a `Fail` matches `Unhealthy`. A result that matches the
//! current state confirms it and clears any run in progress. Results worse
//! than the current state build a run downwards; results better than it
//! build a run upwards; a result on the other side starts the run over. When
//! a run reaches its threshold the endpoint moves:
//!
//! - down after `unhealthy` consecutive worse results, to the *best* state
//!   the run showed: Healthy → Unhealthy after that many fails, Healthy →
//!   Degraded after that many degraded-or-failed results (some degraded),
//!   Degraded → Unhealthy after that many fails;
//! - up after `healthy` consecutive better results, to the *worst* state the
//!   run showed: Unhealthy → Healthy after that many passes, Unhealthy →
//!   Degraded after that many passed-or-degraded results (some degraded),
//!   Degraded → Healthy after that many passes.
//!
//! Moving to the best (down) or worst (up) state of the run keeps it honest:
//! a mix of degraded and failed probes proves the endpoint is not healthy,
//! not that it is down. So fail, pass, fail, pass… never moves an endpoint,
//! and neither does pass, degraded, pass… (each run is one long).
//!
//! `Warming` is a new endpoint that must prove itself before it takes
//! traffic: it counts upwards as `Unhealthy` does (to Healthy after `healthy`
//! passes, to Degraded if some were degraded) and a fail simply starts the
//! count over. `Draining` is entered by hand (`drain`) when the endpoint
//! leaves the configuration: it takes no new requests, ignores checks, and
//! ends when the endpoint is removed. Thresholds of 0 count as 1.
//!
//! Only Healthy and Degraded take traffic. When an endpoint starts taking
//! traffic again (from Warming or Unhealthy), `weight_factor` ramps its
//! weight from 0.1 to 1.0 over the slow-start period, so a cold cache or JIT
//! is not hit with a full share at once; a Healthy ⇄ Degraded move does not
//! restart the ramp.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Warming,
    Healthy,
    Degraded,
    Unhealthy,
    Draining,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Warming => "warming",
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Unhealthy => "unhealthy",
            State::Draining => "draining",
        }
    }
}

/// The result of one active check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Pass,
    Degraded,
    Fail,
}

impl Check {
    /// Higher is better; `record` puts the states on the same scale.
    fn level(self) -> u8 {
        match self {
            Check::Pass => 2,
            Check::Degraded => 1,
            Check::Fail => 0,
        }
    }

    fn bit(self) -> u8 {
        1 << self.level()
    }

    fn word(self) -> &'static str {
        match self {
            Check::Pass => "passed",
            Check::Degraded => "degraded",
            Check::Fail => "failed",
        }
    }
}

/// How many consecutive results it takes to move: `healthy` to move up,
/// `unhealthy` to move down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub healthy: u32,
    pub unhealthy: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            healthy: 2,
            unhealthy: 3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    /// Why, with the numbers: for the log line and the admin API.
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct Lifecycle {
    state: State,
    since: Instant,
    /// When the endpoint last started taking traffic after Warming or
    /// Unhealthy; `None` if it never did (or is out of traffic now).
    ramp_from: Option<Instant>,
    /// The run in progress: its length, whether it goes down, and which
    /// kinds of result it holds (bits from `Check::bit`).
    run: u32,
    down: bool,
    seen: u8,
}

impl Lifecycle {
    /// `Warming` for an endpoint that must pass checks before it takes
    /// traffic, `Healthy` otherwise. Starting Healthy does not ramp: at
    /// startup every endpoint is new, and ramping them all together changes
    /// nobody's share.
    pub fn new(initial: State, now: Instant) -> Lifecycle {
        Lifecycle {
            state: initial,
            since: now,
            ramp_from: None,
            run: 0,
            down: false,
            seen: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// When the current state began.
    pub fn since(&self) -> Instant {
        self.since
    }

    pub fn takes_traffic(&self) -> bool {
        matches!(self.state, State::Healthy | State::Degraded)
    }

    /// Records one check result; returns the move it caused, if any.
    pub fn record(&mut self, check: Check, t: &Thresholds, now: Instant) -> Option<Transition> {
        let current = match self.state {
            State::Draining => return None,
            State::Healthy => 2,
            State::Degraded => 1,
            // Warming counts up like Unhealthy; a fail just starts over.
            State::Warming | State::Unhealthy => 0,
        };
        let level = check.level();
        if level == current {
            self.run = 0;
            return None;
        }
        let down = level < current;
        if self.run == 0 || self.down != down {
            self.run = 0;
            self.down = down;
            self.seen = 0;
        }
        self.run += 1;
        self.seen |= check.bit();
        let threshold = if down { t.unhealthy } else { t.healthy }.max(1);
        if self.run < threshold {
            return None;
        }
        // Down, the best the run showed; up, the worst: either way, any
        // degraded result in it means Degraded.
        let to = match (self.seen & Check::Degraded.bit() != 0, down) {
            (true, _) => State::Degraded,
            (false, true) => State::Unhealthy,
            (false, false) => State::Healthy,
        };
        let words: Vec<&str> = [Check::Pass, Check::Degraded, Check::Fail]
            .into_iter()
            .filter(|c| self.seen & c.bit() != 0)
            .map(Check::word)
            .collect();
        let (name, value) = match down {
            true => ("unhealthy_threshold", t.unhealthy),
            false => ("healthy_threshold", t.healthy),
        };
        let (run, words) = (self.run, words.join(" or "));
        let reason = format!("{run} consecutive {words} checks ({name} {value})");
        Some(self.go(to, reason, now))
    }

    /// Stops new requests: terminal until the endpoint is removed.
    pub fn drain(&mut self, now: Instant) -> Option<Transition> {
        if self.state == State::Draining {
            return None;
        }
        Some(self.go(State::Draining, "draining: no new requests".into(), now))
    }

    /// The share of its configured weight the endpoint should get: 1.0,
    /// except during `slow_start` after it started taking traffic again,
    /// when it grows linearly from 0.1 to 1.0. `Duration::ZERO` disables the
    /// ramp. Only meaningful while `takes_traffic`.
    pub fn weight_factor(&self, slow_start: Duration, now: Instant) -> f64 {
        const FLOOR: f64 = 0.1;
        let Some(from) = self.ramp_from else {
            return 1.0;
        };
        let elapsed = now.saturating_duration_since(from);
        if slow_start.is_zero() || elapsed >= slow_start {
            return 1.0;
        }
        FLOOR + (1.0 - FLOOR) * elapsed.as_secs_f64() / slow_start.as_secs_f64()
    }

    fn go(&mut self, to: State, reason: String, now: Instant) -> Transition {
        let from = self.state;
        let was_out = matches!(from, State::Warming | State::Unhealthy);
        self.state = to;
        self.since = now;
        self.run = 0;
        if !self.takes_traffic() {
            self.ramp_from = None;
        } else if was_out {
            self.ramp_from = Some(now);
        }
        Transition { from, to, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Check::{Degraded as D, Fail as F, Pass as P};
    use State::{Degraded, Draining, Healthy, Unhealthy, Warming};

    const SEC: Duration = Duration::from_secs(1);

    /// Feeds checks one second apart; returns the moves they caused.
    fn feed(l: &mut Lifecycle, t: &mut Instant, checks: &[Check]) -> Vec<(State, State, String)> {
        let mut out = Vec::new();
        for &c in checks {
            *t += SEC;
            let moved = l.record(c, &Thresholds::default(), *t);
            out.extend(moved.map(|m| (m.from, m.to, m.reason)));
        }
        out
    }

    fn moved(from: State, to: State, reason: &str) -> Vec<(State, State, String)> {
        vec![(from, to, reason.to_string())]
    }

    #[test]
    fn exactly_unhealthy_fails_take_it_down() {
        let mut t = Instant::now();
        let mut l = Lifecycle::new(Healthy, t);
        assert!(feed(&mut l, &mut t, &[F, F]).is_empty());
        assert!(l.takes_traffic());
        let why = "3 consecutive failed checks (unhealthy_threshold 3)";
        assert_eq!(feed(&mut l, &mut t, &[F]), moved(Healthy, Unhealthy, why));
        assert_eq!(l.since(), t);
        assert!(!l.takes_traffic());
    }

    #[test]
    fn exactly_healthy_passes_bring_it_back() {
        let mut t = Instant::now();
        let mut l = Lifecycle::new(Unhealthy, t);
        assert!(feed(&mut l, &mut t, &[P]).is_empty(), "one pass is a blip");
        let why = "2 consecutive passed checks (healthy_threshold 2)";
        assert_eq!(feed(&mut l, &mut t, &[P]), moved(Unhealthy, Healthy, why));
    }

    #[test]
    fn alternating_results_never_flap() {
        let mut t = Instant::now();
        let mut l = Lifecycle::new(Healthy, t);
        let blips = [F, P, F, F, P, F, P, D, P, D, D, P];
        assert!(feed(&mut l, &mut t, &blips).is_empty());
        assert_eq!(l.state(), Healthy);
        let mut l = Lifecycle::new(Unhealthy, t);
        assert!(feed(&mut l, &mut t, &[P, F, P, F, D, F, P, F]).is_empty());
        assert_eq!(l.state(), Unhealthy);
    }

    #[test]
    fn warming_needs_passes_and_fails_start_over() {
        let mut t = Instant::now();
        let mut l = Lifecycle::new(Warming, t);
        assert!(!l.takes_traffic());
        assert!(feed(&mut l, &mut t, &[P, F, P, F, F, F, F, P]).is_empty());
        assert_eq!(l.state(), Warming, "fails neither count nor take it down");
        let why = "2 consecutive passed checks (healthy_threshold 2)";
        assert_eq!(feed(&mut l, &mut t, &[P]), moved(Warming, Healthy, why));
        assert!(l.takes_traffic());
    }

    #[test]
    fn degraded_moves_both_ways() {
        let mut t = Instant::now();
        let mut l = Lifecycle::new(Healthy, t);
        // Degraded or worse, not all fails: degraded, not down.
        let why = "3 consecutive degraded or failed checks (unhealthy_threshold 3)";
        assert_eq!(
            feed(&mut l, &mut t, &[D, F, D]),
            moved(Healthy, Degraded, why)
        );
        assert!(l.takes_traffic());
        // More degraded results confirm it; passes bring it back.
        assert!(feed(&mut l, &mut t, &[D, P, D, P]).is_empty());
        let why = "2 consecutive passed checks (healthy_threshold 2)";
        assert_eq!(feed(&mut l, &mut t, &[P]), moved(Degraded, Healthy, why));
        // Down from Degraded takes fails only.
        feed(&mut l, &mut t, &[D, D, D]);
        assert!(feed(&mut l, &mut t, &[F, F, D, F, F]).is_empty());
        let why = "3 consecutive failed checks (unhealthy_threshold 3)";
        assert_eq!(feed(&mut l, &mut t, &[F]), moved(Degraded, Unhealthy, why));
        // Up from Unhealthy: degraded results reach Degraded only.
        let why = "2 consecutive passed or degraded checks (healthy_threshold 2)";
        assert_eq!(
            feed(&mut l, &mut t, &[P, D]),
            moved(Unhealthy, Degraded, why)
        );
    }

    #[test]
    fn draining_ignores_checks() {
        let mut t = Instant::now();
        let mut l = Lifecycle::new(Healthy, t);
        let m = l.drain(t).unwrap();
        assert_eq!((m.from, m.to), (Healthy, Draining));
        assert_eq!(m.reason, "draining: no new requests");
        assert!(!l.takes_traffic());
        assert!(feed(&mut l, &mut t, &[F, F, F, F, P, P, P, D, D, D]).is_empty());
        assert_eq!(l.state(), Draining);
        assert!(l.drain(t).is_none());
        assert_eq!(Draining.as_str(), "draining");
    }

    #[test]
    fn thresholds_of_zero_count_as_one() {
        let t0 = Instant::now();
        let t = Thresholds {
            healthy: 0,
            unhealthy: 0,
        };
        let mut l = Lifecycle::new(Healthy, t0);
        assert_eq!(l.record(F, &t, t0).unwrap().to, Unhealthy);
        assert_eq!(l.record(P, &t, t0).unwrap().to, Healthy);
    }

    #[test]
    fn slow_start_ramps_after_coming_back() {
        let ramp = Duration::from_secs(60);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let mut t = Instant::now();
        let mut l = Lifecycle::new(Healthy, t);
        assert_eq!(l.weight_factor(ramp, t), 1.0, "no ramp at startup");
        feed(&mut l, &mut t, &[F, F, F, P, P]);
        let back = t;
        assert!(close(l.weight_factor(ramp, back), 0.1));
        assert!(close(l.weight_factor(ramp, back + ramp / 2), 0.55));
        assert_eq!(l.weight_factor(ramp, back + ramp), 1.0);
        assert_eq!(l.weight_factor(Duration::ZERO, back), 1.0);
        // Healthy → Degraded → Healthy mid-ramp keeps the original ramp.
        let mut t = back + ramp / 4;
        feed(&mut l, &mut t, &[D, D, D, P, P]);
        assert_eq!(l.state(), Healthy);
        assert!(close(l.weight_factor(ramp, back + ramp / 2), 0.55));
        // From Warming too.
        let mut l = Lifecycle::new(Warming, t);
        feed(&mut l, &mut t, &[P, P]);
        assert!(close(l.weight_factor(ramp, t), 0.1));
    }
}
