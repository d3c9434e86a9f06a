//! Coalescing for decisions taken per request (a shed, a refused retry, a
//! rate-limit refusal): a flood of them is one event per interval, saying
//! how many it stands for. Lock-free, so a refusal storm costs each request
//! two atomic loads and, at most once per interval, one compare-exchange.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Times are milliseconds since this process-wide origin.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

fn millis(now: Instant) -> u64 {
    now.saturating_duration_since(*ORIGIN).as_millis() as u64 + 1
}

/// How often a subject's per-request decisions make an event at most.
pub const EVERY: Duration = Duration::from_secs(5);

/// One subject's coalescing state.
#[derive(Default, Debug)]
pub struct Gate {
    /// When the next event may go (ms since `ORIGIN`; 0: at once).
    next: AtomicU64,
    /// Decisions since the last event that went.
    held: AtomicU64,
}

impl Gate {
    /// One decision at `now`: `Some(n)` when an event should go now,
    /// standing for `n` decisions (this one and those held back since the
    /// last); `None` when it is held back, to be counted in the next.
    pub fn pass(&self, now: Instant, every: Duration) -> Option<u64> {
        let now = millis(now);
        let next = self.next.load(Ordering::Relaxed);
        if now < next
            || self
                .next
                .compare_exchange(
                    next,
                    now + every.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held.swap(0, Ordering::Relaxed) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_event_per_interval_counting_the_rest() {
        let g = Gate::default();
        // Times before the origin all read as the origin.
        let t = *ORIGIN + Duration::from_secs(10);
        let every = Duration::from_secs(1);
        assert_eq!(g.pass(t, every), Some(1));
        for i in 0..999 {
            assert_eq!(g.pass(t + Duration::from_micros(i * 900), every), None);
        }
        assert_eq!(g.pass(t + Duration::from_secs(1), every), Some(1000));
        assert_eq!(g.pass(t + Duration::from_millis(1500), every), None);
        assert_eq!(g.pass(t + Duration::from_secs(5), every), Some(2));
    }
}
