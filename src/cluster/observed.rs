//! What an endpoint's tries did: successes and failures since Levee
//! started and over a sliding window, counted per try (a retry is a second
//! try, so an endpoint's figure is what it answered, not what the client
//! finally got).
//!
//! A try fails as the proxy judges it for outlier detection: a 5xx, a reset,
//! a refused connection or a timeout. The window is a ring of `BUCKETS`
//! buckets of `BUCKET` each; the core (`Window`) takes the clock as a
//! parameter, `Tries` adds atomics for the totals and a short lock for the
//! ring (a few instructions per try, like the breakers).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One bucket of the window.
pub const BUCKET: Duration = Duration::from_secs(10);
/// Buckets in the window: 30 × 10 s, five minutes.
pub const BUCKETS: usize = 30;

/// Successes and failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
}

impl Counts {
    pub fn total(self) -> u64 {
        self.ok + self.failed
    }

    /// The share of tries that succeeded; `None` when there were none.
    pub fn ratio(self) -> Option<f64> {
        (self.total() > 0).then(|| self.ok as f64 / self.total() as f64)
    }
}

impl std::ops::Add for Counts {
    type Output = Counts;
    fn add(self, other: Counts) -> Counts {
        Counts {
            ok: self.ok + other.ok,
            failed: self.failed + other.failed,
        }
    }
}

/// The sliding window, synchronous, with `now` passed in.
#[derive(Debug)]
pub struct Window {
    origin: Instant,
    /// Per bucket: which bucket number (time since `origin` / `BUCKET`) it
    /// holds, and its counts. A bucket whose number is too old is stale.
    ring: [(u64, Counts); BUCKETS],
}

impl Window {
    pub fn new(origin: Instant) -> Window {
        Window {
            origin,
            ring: [(u64::MAX, Counts::default()); BUCKETS],
        }
    }

    fn number(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / BUCKET.as_nanos()) as u64
    }

    pub fn record(&mut self, ok: bool, now: Instant) {
        let n = self.number(now);
        let slot = &mut self.ring[(n % BUCKETS as u64) as usize];
        if slot.0 != n {
            *slot = (n, Counts::default());
        }
        if ok {
            slot.1.ok += 1;
        } else {
            slot.1.failed += 1;
        }
    }

    /// The counts of the last `BUCKETS` buckets, the current one included.
    pub fn counts(&self, now: Instant) -> Counts {
        let n = self.number(now);
        self.ring
            .iter()
            .filter(|(number, _)| *number <= n && n - *number < BUCKETS as u64)
            .fold(Counts::default(), |sum, (_, c)| sum + *c)
    }
}

/// Thread-safe tries of one endpoint, kept across reloads with its live
/// state.
#[derive(Debug)]
pub struct Tries {
    ok: AtomicU64,
    failed: AtomicU64,
    window: Mutex<Window>,
}

impl Tries {
    pub fn new(now: Instant) -> Tries {
        Tries {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            window: Mutex::new(Window::new(now)),
        }
    }

    pub fn record(&self, ok: bool, now: Instant) {
        let total = if ok { &self.ok } else { &self.failed };
        total.fetch_add(1, Ordering::Relaxed);
        // The window holds plain counts written in one go: a panic elsewhere
        // cannot leave it half-updated, so a poisoned lock is still usable.
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(ok, now);
    }

    /// Since Levee started (or the endpoint was added).
    pub fn total(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Over the last five minutes.
    pub fn window(&self, now: Instant) -> Counts {
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counts(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ratio() {
        let t0 = Instant::now();
        let tries = Tries::new(t0);
        assert_eq!(tries.total().ratio(), None);
        for i in 0..10 {
            tries.record(i % 5 != 0, t0);
        }
        assert_eq!(tries.total(), Counts { ok: 8, failed: 2 });
        assert_eq!(tries.total().ratio(), Some(0.8));
        assert_eq!(tries.window(t0), Counts { ok: 8, failed: 2 });
    }

    #[test]
    fn the_window_forgets_what_is_older_than_five_minutes() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        w.record(false, t0);
        w.record(true, t0 + Duration::from_secs(60));
        w.record(true, t0 + Duration::from_secs(295));
        assert_eq!(
            w.counts(t0 + Duration::from_secs(299)),
            Counts { ok: 2, failed: 1 }
        );
        // At 300 s the first bucket (0–10 s) has left the window.
        assert_eq!(
            w.counts(t0 + Duration::from_secs(300)),
            Counts { ok: 2, failed: 0 }
        );
        // Long after, a bucket reused for a new number starts from zero.
        let later = t0 + Duration::from_secs(3600);
        w.record(false, later);
        assert_eq!(w.counts(later), Counts { ok: 0, failed: 1 });
        assert_eq!(
            w.counts(later + Duration::from_secs(600)),
            Counts::default()
        );
    }

    #[test]
    fn a_clock_from_before_the_origin_counts_as_the_first_bucket() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut w = Window::new(t0);
        w.record(true, t0 - Duration::from_secs(1));
        assert_eq!(w.counts(t0), Counts { ok: 1, failed: 0 });
    }
}
