//! Counts of requests and of bad ones in time buckets, over a sliding span:
//! a ring of slots, each stamped with the bucket (epoch) it counts. Workers
//! record with atomics only (no lock on the request path); a reader sums the
//! slots whose stamp falls in the span it asks about.
//!
//! A slot is reused when its epoch comes round again: the first recorder of
//! the new epoch moves the stamp (compare-exchange) and zeroes the counts. A
//! recorder that read the old stamp just before may add its one request to
//! the old count or lose it to the reset: one request per slot turnover, an
//! error far below what an SLO can see.

use std::sync::atomic::{AtomicU64, Ordering};

/// Requests in the high half, bad ones in the low half of one word, so one
/// `fetch_add` records a request.
const ONE: u64 = 1 << 32;

#[derive(Default)]
struct Slot {
    epoch: AtomicU64,
    counts: AtomicU64,
}

/// Buckets of `width` seconds covering at least `span` seconds.
pub struct Buckets {
    width: u64,
    slots: Box<[Slot]>,
}

/// Requests and bad ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub bad: u64,
}

impl Counts {
    /// The bad share; 0 without requests.
    pub fn bad_ratio(self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.bad as f64 / self.total as f64
        }
    }
}

impl Buckets {
    pub fn new(width: u64, span: u64) -> Buckets {
        let width = width.max(1);
        // One more than the span needs: the current bucket is partial.
        let n = span.div_ceil(width) as usize + 1;
        Buckets {
            width,
            slots: (0..n).map(|_| Slot::default()).collect(),
        }
    }

    /// Bytes this ring takes.
    pub fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }

    /// One request at `now` (seconds since the Unix epoch).
    pub fn record(&self, now: u64, bad: bool) {
        self.add(
            now,
            Counts {
                total: 1,
                bad: u64::from(bad),
            },
        );
    }

    /// Counts at `now` (also used to restore saved state).
    pub fn add(&self, now: u64, c: Counts) {
        let epoch = now / self.width + 1;
        let slot = &self.slots[(epoch % self.slots.len() as u64) as usize];
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen < epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.counts.store(0, Ordering::Release);
        } else if seen > epoch {
            // A clock that stepped back: count it in the newer bucket.
        }
        let add = c.total.min(u32::MAX as u64) * ONE + c.bad.min(u32::MAX as u64);
        slot.counts.fetch_add(add, Ordering::Relaxed);
    }

    /// Adds saved buckets back at `now`, skipping those the ring no longer
    /// spans (and any from the future): an old bucket's slot belongs to a
    /// newer one by now.
    pub fn restore(&self, now: u64, saved: &[(u64, Counts)]) {
        let last = now / self.width + 1;
        let first = last.saturating_sub(self.slots.len() as u64 - 1);
        for &(at, c) in saved {
            let epoch = at / self.width + 1;
            if (first..=last).contains(&epoch) {
                self.add(at, c);
            }
        }
    }

    /// The counts of the last `span` seconds up to `now` (whole buckets:
    /// the current one and as many before it as the span covers).
    pub fn sum(&self, now: u64, span: u64) -> Counts {
        let last = now / self.width + 1;
        let n = span
            .div_ceil(self.width)
            .clamp(1, self.slots.len() as u64 - 1);
        let first = last.saturating_sub(n - 1);
        let mut c = Counts::default();
        for slot in self.slots.iter() {
            let epoch = slot.epoch.load(Ordering::Acquire);
            if (first..=last).contains(&epoch) {
                let v = slot.counts.load(Ordering::Relaxed);
                c.total += v >> 32;
                c.bad += v & (ONE - 1);
            }
        }
        c
    }

    /// Each bucket with counts: (start second, counts), for saving.
    pub fn dump(&self) -> Vec<(u64, Counts)> {
        self.slots
            .iter()
            .filter_map(|s| {
                let epoch = s.epoch.load(Ordering::Acquire);
                let v = s.counts.load(Ordering::Relaxed);
                (epoch > 0 && v > 0).then(|| {
                    (
                        (epoch - 1) * self.width,
                        Counts {
                            total: v >> 32,
                            bad: v & (ONE - 1),
                        },
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_span_and_forgets_what_slid_out() {
        let b = Buckets::new(60, 3600);
        let t0 = 1_700_000_000;
        for i in 0..120 {
            // One request a minute for two hours, every fourth bad.
            b.record(t0 + i * 60, i % 4 == 0);
        }
        let now = t0 + 119 * 60;
        assert_eq!(b.sum(now, 3600), Counts { total: 60, bad: 15 });
        assert_eq!(b.sum(now, 300), Counts { total: 5, bad: 1 });
        // Two hours on, nothing is left in the last hour.
        assert_eq!(b.sum(now + 7200, 3600), Counts::default());
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let b = Buckets::new(1, 3);
        b.record(10, true);
        b.record(10, false);
        assert_eq!(b.sum(10, 1), Counts { total: 2, bad: 1 });
        // Slot of second 10 is reused by second 14 (4 slots).
        b.record(14, false);
        assert_eq!(b.sum(14, 1), Counts { total: 1, bad: 0 });
        assert_eq!(b.sum(14, 3), Counts { total: 1, bad: 0 });
    }

    #[test]
    fn dump_and_add_restore_the_counts() {
        let a = Buckets::new(60, 600);
        for i in 0..10 {
            a.record(1000 + i * 60, i < 3);
        }
        let b = Buckets::new(60, 600);
        b.restore(1540, &a.dump());
        assert_eq!(b.sum(1000 + 540, 600), a.sum(1000 + 540, 600));
        assert_eq!(b.sum(1540, 600), Counts { total: 10, bad: 3 });
        // An hour later nothing saved is within the ring's span: none of it
        // lands in a newer bucket.
        let c = Buckets::new(60, 600);
        c.record(1000 + 3600, false);
        c.restore(1000 + 3600, &a.dump());
        assert_eq!(c.sum(1000 + 3600, 600), Counts { total: 1, bad: 0 });
    }
}
