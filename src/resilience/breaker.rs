//! A circuit breaker: stop sending calls to an upstream that is failing, so
//! that it gets room to recover and callers get an immediate answer instead
//! of a timeout. resilience4j's semantics, as a synchronous state machine.
//!
//! - `Closed`: calls pass. It opens on either trigger, checked after every
//!   result: `consecutive_failures` failures in a row (0 disables), or a
//!   failure rate of at least `failure_rate` over the window once it holds
//!   `min_calls` calls, so two failures out of three on a quiet upstream do
//!   not open it. With `slow_call = Some((threshold, rate))`, successes
//!   slower than `threshold` count towards a slow-call rate that opens it
//!   the same way: an upstream that answers in ten seconds is as broken as
//!   one that does not answer. A rate outside `(0, 1]` disables its trigger.
//! - `Open`: every call is rejected, with no upstream work, for
//!   `open_duration`. The first `allow` after that moves to `HalfOpen`.
//! - `HalfOpen`: at most `half_open_max_calls` trial calls in flight (a
//!   `record` frees a slot), the rest rejected. `success_threshold`
//!   successes close it with an empty window; any failure, or a slow call,
//!   re-opens it for another `open_duration`.
//!
//! The window is the last N calls (`Window::Count`, a ring of N outcomes,
//! capped at `MAX_COUNT`) or the last T (`Window::Time`, ten buckets of
//! T / 10 rotated by the clock, as in `cluster::health::outlier`), so memory
//! is fixed whatever the request rate. `Count(0)` or a `Time` too short to
//! split disables the rate triggers. The counts start afresh at every
//! transition.
//!
//! What counts as a failure is the caller's decision (a 4xx never does).
//! Results that arrive while open are calls admitted before it opened: they
//! are counted but change nothing. In half-open, a result with no trial in
//! flight is such a straggler too and is ignored; one that arrives while a
//! trial is in flight cannot be told apart and counts as the trial's.

use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub min_calls: u32,
    pub window: Window,
    /// `(threshold, rate)`: calls slower than `threshold` are slow; a slow
    /// rate of at least `rate` opens the breaker.
    pub slow_call: Option<(Duration, f64)>,
    pub open_duration: Duration,
    pub half_open_max_calls: u32,
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_calls: 10,
            window: Window::Count(10),
            slow_call: None,
            open_duration: Duration::from_secs(30),
            half_open_max_calls: 3,
            success_threshold: 3,
        }
    }
}

/// The calls the rate triggers look at: the last N, or those of the last T.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Count(u32),
    Time(Duration),
}

/// The result of one call, as the caller judged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success { latency: Duration },
    Failure,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    Rejected,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    /// Why, with the numbers: for the log line and `/status`.
    pub reason: String,
}

/// Exact totals since the breaker was made, for metrics: results recorded
/// (in any state), failed and slow ones among them, and rejected calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub failures: u64,
    pub slow_calls: u64,
    pub rejections: u64,
}

/// The largest `Window::Count` honoured: a typo in the configuration should
/// not cost a gigabyte per endpoint (the configuration refuses more).
pub const MAX_COUNT: u32 = crate::config::resilience::MAX_WINDOW_CALLS;
const BUCKETS: usize = 10;
const FAILED: u8 = 1;
const SLOW: u8 = 2;

#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    calls: u32,
    failed: u32,
    slow: u32,
}

impl Tally {
    fn of(bits: u8) -> Tally {
        Tally {
            calls: 1,
            failed: u32::from(bits & FAILED != 0),
            slow: u32::from(bits & SLOW != 0),
        }
    }

    fn plus(self, o: Tally) -> Tally {
        Tally {
            calls: self.calls.saturating_add(o.calls),
            failed: self.failed.saturating_add(o.failed),
            slow: self.slow.saturating_add(o.slow),
        }
    }
}

#[derive(Clone, Debug)]
enum Recent {
    Off,
    /// The last `cap` calls as `FAILED | SLOW` bits, `next` the oldest once
    /// full, `sum` kept up to date so a result costs O(1).
    Ring {
        bits: Vec<u8>,
        next: usize,
        cap: usize,
        sum: Tally,
    },
    /// Slot `n` covers `origin + n·width ..` and lives in `buckets[n % 10]`.
    Buckets {
        width: Duration,
        origin: Instant,
        head: u64,
        buckets: [Tally; BUCKETS],
    },
}

impl Recent {
    fn new(window: Window, now: Instant) -> Recent {
        match window {
            Window::Count(0) => Recent::Off,
            Window::Count(n) => Recent::Ring {
                bits: Vec::new(),
                next: 0,
                cap: n.min(MAX_COUNT) as usize,
                sum: Tally::default(),
            },
            Window::Time(t) if (t / BUCKETS as u32).is_zero() => Recent::Off,
            Window::Time(t) => Recent::Buckets {
                width: t / BUCKETS as u32,
                origin: now,
                head: 0,
                buckets: [Tally::default(); BUCKETS],
            },
        }
    }

    /// Adds one call; returns the totals over the window, `None` if off.
    fn add(&mut self, call: u8, now: Instant) -> Option<Tally> {
        match self {
            Recent::Off => None,
            Recent::Ring {
                bits,
                next,
                cap,
                sum,
            } => {
                if bits.len() < *cap {
                    bits.push(call);
                } else {
                    // The oldest leaves; exact, so no underflow.
                    let old = Tally::of(std::mem::replace(&mut bits[*next], call));
                    (sum.calls, sum.failed, sum.slow) =
                        (sum.calls - 1, sum.failed - old.failed, sum.slow - old.slow);
                    *next = (*next + 1) % *cap;
                }
                *sum = sum.plus(Tally::of(call));
                Some(*sum)
            }
            Recent::Buckets {
                width,
                origin,
                head,
                buckets,
            } => {
                let elapsed = now.saturating_duration_since(*origin).as_nanos();
                let slot = u64::try_from(elapsed / width.as_nanos()).unwrap_or(u64::MAX);
                if slot > *head {
                    // Clear the slots skipped over; all of them after a
                    // long silence.
                    let stale = (slot - *head).min(BUCKETS as u64);
                    for n in slot + 1 - stale..=slot {
                        buckets[(n % BUCKETS as u64) as usize] = Tally::default();
                    }
                    *head = slot;
                }
                // An earlier `now` (another worker's clock read) counts in
                // the newest slot rather than rewriting the past.
                let b = &mut buckets[(*head % BUCKETS as u64) as usize];
                *b = b.plus(Tally::of(call));
                Some(buckets.iter().fold(Tally::default(), |a, b| a.plus(*b)))
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    since: Instant,
    /// Closed: failures in a row, and the window.
    consecutive: u32,
    recent: Recent,
    /// Half-open: trials admitted and not yet recorded, and successes.
    trials: u32,
    successes: u32,
    counts: Counts,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig, now: Instant) -> Breaker {
        Breaker {
            recent: Recent::new(cfg.window, now),
            cfg,
            state: State::Closed,
            since: now,
            consecutive: 0,
            trials: 0,
            successes: 0,
            counts: Counts::default(),
        }
    }

    /// Whether a call may go ahead now. Returns the Open → HalfOpen move
    /// when `open_duration` has passed (the call is then the first trial).
    /// Every `Allowed` must be followed by one `record`.
    pub fn allow(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let mut moved = None;
        if self.state == State::Open
            && now.saturating_duration_since(self.since) >= self.cfg.open_duration
        {
            let reason = format!("half-open after {:?} open", self.cfg.open_duration);
            moved = Some(self.go(State::HalfOpen, reason, now));
        }
        let allowed = match self.state {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => self.trials < self.cfg.half_open_max_calls.max(1),
        };
        if !allowed {
            self.counts.rejections += 1;
            return (Admission::Rejected, moved);
        }
        if self.state == State::HalfOpen {
            self.trials += 1;
        }
        (Admission::Allowed, moved)
    }

    /// Records the result of an allowed call; returns the move it caused.
    pub fn record(&mut self, outcome: Outcome, now: Instant) -> Option<Transition> {
        let slow_threshold = self.cfg.slow_call.map(|(threshold, _)| threshold);
        let bits = match outcome {
            Outcome::Failure => FAILED,
            Outcome::Success { latency } if slow_threshold.is_some_and(|s| latency > s) => SLOW,
            Outcome::Success { .. } => 0,
        };
        self.counts.calls += 1;
        self.counts.failures += u64::from(bits & FAILED != 0);
        self.counts.slow_calls += u64::from(bits & SLOW != 0);
        match self.state {
            State::Open => None,
            State::HalfOpen if self.trials == 0 => None,
            State::HalfOpen => {
                self.trials -= 1;
                let reopen = match outcome {
                    Outcome::Failure => Some("re-opened: a failure in half-open".to_string()),
                    Outcome::Success { latency } => {
                        slow_threshold.filter(|&s| latency > s).map(|s| {
                            format!(
                                "re-opened: a call slower than {s:?} in half-open ({latency:?})"
                            )
                        })
                    }
                };
                if let Some(reason) = reopen {
                    return Some(self.go(State::Open, reason, now));
                }
                self.successes += 1;
                let n = self.successes;
                let reason = format!("closed: {n} successes in half-open");
                (n >= self.cfg.success_threshold.max(1))
                    .then(|| self.go(State::Closed, reason, now))
            }
            State::Closed => {
                self.consecutive = match bits & FAILED {
                    0 => 0,
                    _ => self.consecutive.saturating_add(1),
                };
                let totals = self.recent.add(bits, now);
                let n = self.cfg.consecutive_failures;
                let reason = if n > 0 && self.consecutive >= n {
                    Some(format!("opened: {} consecutive failures", self.consecutive))
                } else {
                    totals.and_then(|t| {
                        self.rate_reason(t.failed, t.calls, self.cfg.failure_rate, "failed".into())
                            .or_else(|| {
                                let (s, rate) = self.cfg.slow_call?;
                                let what = format!("were slower than {s:?}");
                                self.rate_reason(t.slow, t.calls, rate, what)
                            })
                    })
                };
                reason.map(|r| self.go(State::Open, r, now))
            }
        }
    }

    /// "6 of last 10 calls failed (60 % ≥ 50 %)" if `n` of `total` calls in
    /// the window reach `rate` and the window holds at least `min_calls`.
    fn rate_reason(&self, n: u32, total: u32, rate: f64, what: String) -> Option<String> {
        if !(rate > 0.0 && rate <= 1.0) || total < self.cfg.min_calls.max(1) {
            return None;
        }
        let observed = f64::from(n) / f64::from(total);
        if observed < rate {
            return None;
        }
        let calls = match self.cfg.window {
            Window::Time(t) => format!("{n} of {total} calls in the last {t:?}"),
            Window::Count(_) => format!("{n} of last {total} calls"),
        };
        let (observed, rate) = (observed * 100.0, rate * 100.0);
        Some(format!(
            "opened: {calls} {what} ({observed:.0} % ≥ {rate:.0} %)"
        ))
    }

    /// Gives back an admission that will never be recorded (the request
    /// was abandoned before its result was known), so a half-open breaker
    /// does not wait forever for a trial that is gone.
    pub fn cancel(&mut self) {
        if self.state == State::HalfOpen {
            self.trials = self.trials.saturating_sub(1);
        }
    }

    /// While open: when it will let a trial through.
    pub fn open_until(&self) -> Option<Instant> {
        (self.state == State::Open).then(|| self.since + self.cfg.open_duration)
    }

    /// Whether `allow` would admit a call now, without counting anything:
    /// closed, half-open with a trial slot free, or open and due to turn
    /// half-open.
    pub fn would_admit(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::HalfOpen => self.trials < self.cfg.half_open_max_calls.max(1),
            State::Open => now.saturating_duration_since(self.since) >= self.cfg.open_duration,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    fn go(&mut self, to: State, reason: String, now: Instant) -> Transition {
        let from = self.state;
        self.state = to;
        self.since = now;
        self.consecutive = 0;
        self.recent = Recent::new(self.cfg.window, now);
        self.trials = 0;
        self.successes = 0;
        Transition { from, to, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Admission::{Allowed, Rejected};
    use State::{Closed, HalfOpen, Open};

    const SEC: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);
    const OK: Outcome = Outcome::Success { latency: MS };
    const FAIL: Outcome = Outcome::Failure;
    const SLOW_CALL: Outcome = Outcome::Success { latency: SEC };

    /// Admits and records `outcomes` 10 ms apart from `*t`; returns the
    /// moves as (from, to, reason).
    fn feed(b: &mut Breaker, t: &mut Instant, outcomes: &[Outcome]) -> Vec<(State, State, String)> {
        let mut out = Vec::new();
        for &o in outcomes {
            *t += 10 * MS;
            let (admission, moved) = b.allow(*t);
            assert_eq!(admission, Allowed);
            out.extend(moved.into_iter().chain(b.record(o, *t)));
        }
        out.into_iter().map(|m| (m.from, m.to, m.reason)).collect()
    }

    #[test]
    fn a_cancelled_trial_frees_its_half_open_slot() {
        let t0 = Instant::now();
        let cfg = BreakerConfig {
            consecutive_failures: 1,
            half_open_max_calls: 1,
            open_duration: SEC,
            ..BreakerConfig::default()
        };
        let mut b = Breaker::new(cfg, t0);
        let mut t = t0;
        feed(&mut b, &mut t, &[FAIL]);
        assert_eq!(b.open_until(), Some(t + SEC));
        assert!(!b.would_admit(t));
        t += SEC;
        assert!(b.would_admit(t));
        assert_eq!(b.allow(t).0, Allowed);
        assert_eq!(b.state(), HalfOpen);
        assert!(!b.would_admit(t));
        assert_eq!(b.allow(t).0, Rejected);
        b.cancel();
        assert!(b.would_admit(t));
        assert_eq!(b.allow(t).0, Allowed);
        assert_eq!(b.counts().rejections, 1);
    }

    fn moved(from: State, to: State, reason: &str) -> Vec<(State, State, String)> {
        vec![(from, to, reason.to_string())]
    }

    /// Opens a default breaker with five failures; returns when it opened.
    fn opened(b: &mut Breaker, t: &mut Instant) -> Instant {
        let why = "opened: 5 consecutive failures";
        assert_eq!(feed(b, t, &[FAIL; 5]), moved(Closed, Open, why));
        *t
    }

    #[test]
    fn textbook_sequence() {
        let mut t = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default(), t);
        assert!(feed(&mut b, &mut t, &[OK; 10]).is_empty());
        assert_eq!(b.state(), Closed);
        // The window then holds 5 of 10 failed too; the run is reported.
        let at = opened(&mut b, &mut t);
        // Open: rejected at once, up to the last instant.
        for d in [Duration::ZERO, SEC, 30 * SEC - MS] {
            assert_eq!(b.allow(at + d), (Rejected, None));
        }
        assert_eq!(b.state(), Open);
        // After the timeout the first call is a trial, and two more fit.
        let t = at + 30 * SEC;
        let (admission, m) = b.allow(t);
        assert_eq!(admission, Allowed);
        let m = m.unwrap();
        assert_eq!((m.from, m.to), (Open, HalfOpen));
        assert_eq!(m.reason, "half-open after 30s open");
        assert_eq!(b.state(), HalfOpen);
        assert_eq!(b.allow(t), (Allowed, None));
        assert_eq!(b.allow(t), (Allowed, None));
        assert_eq!(b.allow(t), (Rejected, None), "beyond half_open_max_calls");
        // A result frees a slot.
        assert_eq!(b.record(OK, t), None);
        assert_eq!(b.allow(t), (Allowed, None));
        assert_eq!(b.record(OK, t), None);
        let m = b.record(OK, t).unwrap();
        assert_eq!((m.from, m.to), (HalfOpen, Closed));
        assert_eq!(m.reason, "closed: 3 successes in half-open");
        // The fourth trial comes back after closing; the window starts empty.
        assert_eq!(b.record(OK, t), None);
        assert_eq!(
            b.counts(),
            Counts {
                calls: 19,
                failures: 5,
                slow_calls: 0,
                rejections: 4
            }
        );
        // Closed again: four failures and a success do not open it.
        let mut t = t;
        assert!(feed(&mut b, &mut t, &[FAIL, FAIL, FAIL, FAIL, OK]).is_empty());
    }

    #[test]
    fn a_failure_in_half_open_reopens() {
        let mut t = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default(), t);
        let at = opened(&mut b, &mut t);
        let t = at + 30 * SEC;
        assert_eq!(b.allow(t).0, Allowed);
        assert_eq!(b.allow(t).0, Allowed);
        assert_eq!(b.record(OK, t), None);
        let m = b.record(FAIL, t).unwrap();
        assert_eq!((m.from, m.to), (HalfOpen, Open));
        assert_eq!(m.reason, "re-opened: a failure in half-open");
        // Open for the full duration again, counted from the failure.
        assert_eq!(b.allow(t + 30 * SEC - MS), (Rejected, None));
        assert_eq!(b.allow(t + 30 * SEC).0, Allowed);
        assert_eq!(b.state(), HalfOpen);
    }

    #[test]
    fn stragglers_do_not_move_it() {
        let mut t = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default(), t);
        let at = opened(&mut b, &mut t);
        // Calls admitted before it opened come back failed: no effect.
        assert_eq!(b.record(FAIL, at), None);
        assert_eq!(b.allow(at + 30 * SEC).0, Allowed);
        assert_eq!(b.record(OK, at + 30 * SEC), None);
        assert_eq!(b.record(FAIL, at + 30 * SEC), None, "no trial in flight");
        assert_eq!(b.state(), HalfOpen);
        assert_eq!(b.counts().failures, 7);
    }

    #[test]
    fn failure_rate_opens_with_enough_calls() {
        let mut t = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default(), t);
        // Never more than two failures in a row; 5 of 9 is below min_calls.
        let mixed = [OK, FAIL, OK, FAIL, FAIL, OK, FAIL, FAIL, OK];
        assert!(feed(&mut b, &mut t, &mixed).is_empty());
        let why = "opened: 6 of last 10 calls failed (60 % ≥ 50 %)";
        assert_eq!(feed(&mut b, &mut t, &[FAIL]), moved(Closed, Open, why));
        // Below min_calls even 100 % needs the consecutive trigger.
        let cfg = BreakerConfig {
            consecutive_failures: 0,
            ..BreakerConfig::default()
        };
        let mut b = Breaker::new(cfg, t);
        assert!(feed(&mut b, &mut t, &[FAIL; 9]).is_empty());
        let why = "opened: 10 of last 10 calls failed (100 % ≥ 50 %)";
        assert_eq!(feed(&mut b, &mut t, &[FAIL]), moved(Closed, Open, why));
    }

    #[test]
    fn count_window_slides() {
        let mut t = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default(), t);
        // 4 of 10 failed.
        let calls = [FAIL, FAIL, FAIL, FAIL, OK, OK, OK, OK, OK, OK];
        assert!(feed(&mut b, &mut t, &calls).is_empty());
        // Four more failures push the first four out: 4 of the last 10,
        // where 8 of 14 would have opened it.
        assert!(feed(&mut b, &mut t, &[FAIL; 4]).is_empty());
        let why = "opened: 5 consecutive failures";
        assert_eq!(feed(&mut b, &mut t, &[FAIL]), moved(Closed, Open, why));
    }

    #[test]
    fn time_window_slides() {
        let cfg = BreakerConfig {
            consecutive_failures: 0,
            window: Window::Time(10 * SEC),
            ..BreakerConfig::default()
        };
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg, t0);
        // 4 failures at 0 s, 5 successes at 5 s: 4 of 9.
        for o in [FAIL, FAIL, FAIL, FAIL, OK, OK, OK, OK, OK] {
            let at = if o == FAIL { t0 } else { t0 + 5 * SEC };
            assert_eq!(b.record(o, at), None);
        }
        // At 10.5 s the 0 s bucket has left: four failures make 4 of 9, not
        // 8 of 13.
        let t = t0 + 10 * SEC + 500 * MS;
        for _ in 0..4 {
            assert_eq!(b.record(FAIL, t), None);
        }
        let m = b.record(FAIL, t).unwrap();
        let why = "opened: 5 of 10 calls in the last 10s failed (50 % ≥ 50 %)";
        assert_eq!((m.from, m.to, m.reason.as_str()), (Closed, Open, why));
        // A long silence clears it all: 5 of 9 twice is not 10 of 18.
        let mut b = Breaker::new(b.cfg.clone(), t0);
        let half = [FAIL, OK, FAIL, OK, FAIL, OK, FAIL, OK, FAIL];
        for o in half {
            assert_eq!(b.record(o, t0), None);
        }
        for o in half {
            assert_eq!(b.record(o, t0 + 3600 * SEC), None);
        }
    }

    #[test]
    fn slow_call_rate_opens() {
        let cfg = BreakerConfig {
            slow_call: Some((500 * MS, 0.5)),
            ..BreakerConfig::default()
        };
        let mut t = Instant::now();
        let mut b = Breaker::new(cfg, t);
        let mixed = [
            OK, SLOW_CALL, OK, SLOW_CALL, OK, SLOW_CALL, OK, SLOW_CALL, OK,
        ];
        assert!(feed(&mut b, &mut t, &mixed).is_empty());
        let why = "opened: 5 of last 10 calls were slower than 500ms (50 % ≥ 50 %)";
        assert_eq!(feed(&mut b, &mut t, &[SLOW_CALL]), moved(Closed, Open, why));
        assert_eq!(b.counts().slow_calls, 5);
        assert_eq!(b.counts().failures, 0);
        // A slow trial re-opens it.
        t += 30 * SEC;
        assert_eq!(b.allow(t).0, Allowed);
        let m = b.record(SLOW_CALL, t).unwrap();
        assert_eq!(
            m.reason,
            "re-opened: a call slower than 500ms in half-open (1s)"
        );
        // Without slow_call, slow successes are just successes.
        let mut b = Breaker::new(BreakerConfig::default(), t);
        assert!(feed(&mut b, &mut t, &[SLOW_CALL; 20]).is_empty());
        assert_eq!(b.counts().slow_calls, 0);
    }

    #[test]
    fn zero_settings_are_safe() {
        let cfg = BreakerConfig {
            consecutive_failures: 0,
            failure_rate: 0.0,
            window: Window::Count(0),
            half_open_max_calls: 0,
            success_threshold: 0,
            open_duration: Duration::ZERO,
            ..BreakerConfig::default()
        };
        let mut t = Instant::now();
        let mut b = Breaker::new(cfg.clone(), t);
        assert!(feed(&mut b, &mut t, &[FAIL; 50]).is_empty(), "all disabled");
        // Thresholds of 0 count as 1; a zero open_duration half-opens at once.
        let cfg = BreakerConfig {
            consecutive_failures: 1,
            ..cfg
        };
        let mut b = Breaker::new(cfg, t);
        assert_eq!(feed(&mut b, &mut t, &[FAIL]).len(), 1);
        assert_eq!(b.allow(t).0, Allowed);
        assert_eq!(b.allow(t), (Rejected, None));
        assert_eq!(b.record(OK, t).unwrap().to, Closed);
        assert_eq!(HalfOpen.as_str(), "half-open");
    }
}
