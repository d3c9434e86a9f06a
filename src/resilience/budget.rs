//! The retry budget: retries may add at most a fraction of the live request
//! rate, so a failing backend never turns into a retry storm. Linkerd's and
//! Finagle's budget, on by default in Levee.
//!
//! Every original request `deposit`s; every retry asks `try_withdraw` first.
//! A retry is allowed when, counting it, the retries made over the last
//! `window` stay within
//!
//! ```text
//! ratio × requests over the window + min_per_sec × window
//! ```
//!
//! The ratio (default 0.2) bounds the extra load to 20 % of the traffic; the
//! floor (default 10 retries/s) keeps retries possible on a quiet cluster,
//! where one request in a minute is no reason to refuse its retry. The floor
//! is a window's worth, so after a quiet spell up to `min_per_sec × window`
//! retries may come at once, as with Finagle's reserve.
//!
//! The window is ten buckets of `window / 10`, rotated by the clock, so the
//! memory is fixed whatever the request rate; it covers between nine and ten
//! tenths of `window`, old counts leaving one bucket at a time. Refused
//! retries take nothing from the budget. `allowed` and `refused` count every
//! decision since creation, exactly, for metrics ("budget exhausted").

use std::time::{Duration, Instant};

const BUCKETS: usize = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    requests: u64,
    retries: u64,
}

#[derive(Clone, Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// `min_per_sec × window`, in retries.
    floor: f64,
    width: Duration,
    /// Slot `n` covers `origin + n·width ..` and lives in
    /// `buckets[n % BUCKETS]`; set by the first call.
    origin: Option<Instant>,
    /// The newest slot seen.
    head: u64,
    buckets: [Bucket; BUCKETS],
    allowed: u64,
    refused: u64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(0.2, 10.0, Duration::from_secs(10))
    }
}

impl RetryBudget {
    /// `ratio` of the requests (0.2), plus `min_per_sec` (10.0) retries per
    /// second, over `window` (10 s). Negative or NaN numbers count as 0; a
    /// window shorter than ten nanoseconds acts as ten.
    pub fn new(ratio: f64, min_per_sec: f64, window: Duration) -> RetryBudget {
        let clean = |x: f64| if x > 0.0 { x } else { 0.0 };
        RetryBudget {
            ratio: clean(ratio),
            floor: clean(min_per_sec) * window.as_secs_f64(),
            width: (window / BUCKETS as u32).max(Duration::from_nanos(1)),
            origin: None,
            head: 0,
            buckets: [Bucket::default(); BUCKETS],
            allowed: 0,
            refused: 0,
        }
    }

    /// Counts one original request (not a retry).
    pub fn deposit(&mut self, now: Instant) {
        let b = self.bucket(now);
        b.requests = b.requests.saturating_add(1);
    }

    /// Asks for one retry: true, and counted against the budget, when it
    /// fits; false when the budget is exhausted.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        self.try_withdraw_within(now, None)
    }

    /// As `try_withdraw`, and with `tighter` (`ratio`, `min_per_sec`) the
    /// retry must also fit that budget over the same window and counts (a
    /// route acting on its SLO's fast burn, `slo::act`).
    pub fn try_withdraw_within(&mut self, now: Instant, tighter: Option<(f64, f64)>) -> bool {
        self.bucket(now);
        let (requests, retries) = self.totals();
        let next = (retries.saturating_add(1)) as f64;
        let mut ok = next <= self.ratio * requests as f64 + self.floor;
        if let Some((ratio, min_per_sec)) = tighter {
            let window = self.width.as_secs_f64() * BUCKETS as f64;
            ok &= next <= ratio * requests as f64 + min_per_sec * window;
        }
        if ok {
            let b = &mut self.buckets[self.slot(self.head)];
            b.retries = b.retries.saturating_add(1);
            self.allowed = self.allowed.saturating_add(1);
        } else {
            self.refused = self.refused.saturating_add(1);
        }
        ok
    }

    /// Retries the budget would still allow now, rounded down.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.bucket(now);
        let (requests, retries) = self.totals();
        let limit = (self.ratio * requests as f64 + self.floor).floor();
        // A float-to-int cast saturates; no retry is ever negative.
        (limit as u64).saturating_sub(retries)
    }

    /// Retries allowed since creation.
    pub fn allowed(&self) -> u64 {
        self.allowed
    }

    /// Retries refused since creation (budget exhausted).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn slot(&self, n: u64) -> usize {
        (n % BUCKETS as u64) as usize
    }

    /// The bucket for `now`, after clearing the slots the clock has passed.
    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let origin = *self.origin.get_or_insert(now);
        let elapsed = now.saturating_duration_since(origin).as_nanos();
        let slot = u64::try_from(elapsed / self.width.as_nanos()).unwrap_or(u64::MAX);
        if slot > self.head {
            // Clear the slots skipped over; all of them after a long silence.
            let stale = (slot - self.head).min(BUCKETS as u64);
            for n in slot + 1 - stale..=slot {
                let i = self.slot(n);
                self.buckets[i] = Bucket::default();
            }
            self.head = slot;
        }
        // A `now` earlier than the newest (another worker's clock read)
        // counts in the newest slot rather than rewriting the past.
        let i = self.slot(self.head);
        &mut self.buckets[i]
    }

    fn totals(&self) -> (u64, u64) {
        self.buckets.iter().fold((0, 0), |(q, r), b| {
            (q.saturating_add(b.requests), r.saturating_add(b.retries))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn steady_load_gets_ratio_plus_floor() {
        // 100 requests/s for 10 s, every one of them wanting a retry.
        let t0 = Instant::now();
        let mut b = RetryBudget::default();
        for i in 0..1000 {
            let t = t0 + i * 10 * MS;
            b.deposit(t);
            b.try_withdraw(t);
        }
        // 0.2 × 1000 + 10 × 10.
        let allowed = b.allowed() as f64;
        assert!((allowed / 300.0 - 1.0).abs() <= 0.05, "allowed {allowed}");
        assert_eq!(b.allowed() + b.refused(), 1000);
        // The floor is spent first, then retries follow 20 % of requests.
        let t0 = Instant::now();
        let mut b = RetryBudget::default();
        let mut at_5s = 0;
        for i in 0..1000 {
            let t = t0 + i * 10 * MS;
            b.deposit(t);
            b.try_withdraw(t);
            if i == 499 {
                at_5s = b.allowed();
            }
        }
        assert_eq!(at_5s, 200);
        assert_eq!(b.allowed(), 300);
        // Keep going: once the window is full, 20 % of the requests in it
        // plus the floor, about 20 + 10 a second.
        for i in 1000..6000 {
            let t = t0 + i * 10 * MS;
            b.deposit(t);
            b.try_withdraw(t);
        }
        let rate = (b.allowed() - 300) as f64 / 50.0;
        assert!((rate / 30.0 - 1.0).abs() <= 0.05, "{rate} retries/s");
    }

    #[test]
    fn floor_without_traffic() {
        let t0 = Instant::now();
        let mut b = RetryBudget::default();
        // A retry every 10 ms for 60 s and no requests at all: a window's
        // worth of floor (100) at a time, 10 per second on average.
        for i in 0..6000 {
            b.try_withdraw(t0 + i * 10 * MS);
        }
        assert_eq!(b.allowed(), 600);
        assert_eq!(b.refused(), 5400);
        // No floor, no traffic: nothing.
        let mut b = RetryBudget::new(0.2, 0.0, 10 * SEC);
        assert!(!b.try_withdraw(t0));
        assert_eq!(b.available(t0), 0);
    }

    #[test]
    fn old_deposits_and_retries_slide_out() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, 1.0, 10 * SEC);
        for _ in 0..1000 {
            b.deposit(t0);
        }
        // 200 from requests, 10 from the floor.
        assert_eq!(b.available(t0), 210);
        assert_eq!(b.available(t0 + 9 * SEC + 999 * MS), 210);
        // At 10 s the 0 s bucket leaves: only the floor remains.
        assert_eq!(b.available(t0 + 10 * SEC), 10);
        for _ in 0..10 {
            assert!(b.try_withdraw(t0 + 10 * SEC));
        }
        assert!(!b.try_withdraw(t0 + 10 * SEC));
        // Spent retries leave too, a window later.
        assert!(!b.try_withdraw(t0 + 19 * SEC + 999 * MS));
        assert!(b.try_withdraw(t0 + 20 * SEC));
        // A clock read from the past counts as now.
        b.deposit(t0);
        assert_eq!(b.available(t0 + 20 * SEC), 9);
        // A long silence clears everything.
        assert_eq!(b.available(t0 + 3600 * SEC), 10);
    }

    #[test]
    fn counters_are_exact() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.5, 0.0, 10 * SEC);
        let mut expect = (0, 0);
        for i in 0..100u32 {
            let t = t0 + i * 50 * MS;
            b.deposit(t);
            // Two retries wanted per request, one allowed per two requests.
            for _ in 0..2 {
                if b.try_withdraw(t) {
                    expect.0 += 1;
                } else {
                    expect.1 += 1;
                }
            }
        }
        assert_eq!((b.allowed(), b.refused()), expect);
        assert_eq!(b.allowed(), 50);
        assert_eq!(b.refused(), 150);
    }

    #[test]
    fn a_tighter_budget_refuses_sooner_and_counts_as_refused() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, 0.0, 10 * SEC);
        for _ in 0..100 {
            b.deposit(t0);
        }
        // 5 % of 100 requests: 5 retries, where the budget alone gives 20.
        let tight = Some((0.05, 0.0));
        let allowed = (0..20).filter(|_| b.try_withdraw_within(t0, tight)).count();
        assert_eq!(allowed, 5);
        assert_eq!((b.allowed(), b.refused()), (5, 15));
        // Without it, the rest of the budget is there.
        let allowed = (0..20).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(allowed, 15);
        // A floor of 1/s over the 10 s window adds 10.
        let mut b = RetryBudget::new(0.2, 0.0, 10 * SEC);
        for _ in 0..100 {
            b.deposit(t0);
        }
        let allowed = (0..40)
            .filter(|_| b.try_withdraw_within(t0, Some((0.05, 1.0))))
            .count();
        assert_eq!(allowed, 15);
    }

    #[test]
    fn odd_settings_do_not_panic() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(f64::NAN, -1.0, Duration::ZERO);
        b.deposit(t0);
        assert!(!b.try_withdraw(t0 + SEC));
        let mut b = RetryBudget::new(f64::INFINITY, 0.0, Duration::MAX);
        assert!(!b.try_withdraw(t0), "no requests: inf × 0 is NaN, refused");
        b.deposit(t0);
        assert!(b.try_withdraw(t0));
        assert_eq!(b.available(t0), u64::MAX - 1);
    }
}
