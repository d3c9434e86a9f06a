//! Latency percentiles over sliding windows: an HDR-style histogram
//! (log-linear buckets, bounded relative error) per minute, in a ring of
//! minutes, recorded with atomics only.
//!
//! Why not the `hdrhistogram` crate: its `Histogram::record` takes `&mut
//! self`, so every worker recording into one route's histogram would take a
//! lock per request (or each worker would keep its own copy per route and a
//! reader would have to gather them). Here a bucket is an `AtomicU32`: a
//! request costs one load of the minute's stamp and one `fetch_add`, and
//! workers never wait for each other. The bucket layout is HDR's: values
//! below 64 µs exactly, then 32 linear sub-buckets per power of two, so a
//! percentile is at most 1/32 (3.1 %) above the true value (it reports the
//! bucket's upper edge, as HDR's "highest equivalent value" does), from 1 µs
//! to 71 minutes (longer answers count as 71 minutes).
//!
//! Memory: 896 buckets × 4 bytes + an 8-byte stamp = 3 592 bytes a minute;
//! [`MINUTES`] = 16 of them (15 whole minutes and the current one): 57 472
//! bytes per route.
//!
//! A minute's slot is reused when its minute comes round again: the first
//! recorder of the new minute moves the stamp (compare-exchange) and zeroes
//! the buckets; a request racing that turnover may be lost (one or two per
//! minute at most, as in `slo::window`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Linear sub-buckets per power of two.
const SUB: u64 = 32;
/// Buckets: 64 exact ones below 64 µs, then 32 per power of two up to 2^32 µs.
const BUCKETS: usize = 896;
/// The largest value counted as itself, in µs (about 71 minutes).
const MAX_US: u64 = (1 << 32) - 1;
/// The minutes kept: 15 whole ones and the current, partial one.
pub const MINUTES: usize = 16;

/// The bucket of a value in µs.
fn index(us: u64) -> usize {
    let v = us.min(MAX_US);
    if v < 2 * SUB {
        return v as usize;
    }
    let k = 63 - u64::from(v.leading_zeros()); // v in [2^k, 2^(k+1)), k ≥ 6
    let shift = k - 5;
    ((k - 5) * SUB + (v >> shift)) as usize
}

/// The highest value (µs) that falls in bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let k = i / SUB + 4;
    let m = i % SUB + SUB;
    let shift = k - 5;
    ((m + 1) << shift) - 1
}

struct Minute {
    /// Minute since the epoch + 1 (0: never used).
    stamp: AtomicU64,
    buckets: Box<[AtomicU32]>,
}

/// One route's latencies over the last [`MINUTES`] minutes.
pub struct Latency {
    minutes: Box<[Minute]>,
}

/// Percentiles of one window, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
}

/// The quantiles reported, and their names.
pub const QUANTILES: [(f64, &str); 4] =
    [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")];

impl Percentiles {
    /// The value of a quantile by name (`p50`, `p90`, `p99`, `p99.9`).
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "p50" => Some(self.p50_ms),
            "p90" => Some(self.p90_ms),
            "p99" => Some(self.p99_ms),
            "p99.9" => Some(self.p99_9_ms),
            _ => None,
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            minutes: (0..MINUTES)
                .map(|_| Minute {
                    stamp: AtomicU64::new(0),
                    buckets: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
                })
                .collect(),
        }
    }

    /// Bytes this ring holds.
    pub fn bytes(&self) -> usize {
        self.minutes.len() * (8 + BUCKETS * 4)
    }

    /// One request that took `took`, finished at `now` (Unix seconds).
    pub fn record(&self, now: u64, took: Duration) {
        let stamp = now / 60 + 1;
        let m = &self.minutes[(stamp % MINUTES as u64) as usize];
        let seen = m.stamp.load(Ordering::Acquire);
        if seen < stamp
            && m.stamp
                .compare_exchange(seen, stamp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for b in m.buckets.iter() {
                b.store(0, Ordering::Relaxed);
            }
        }
        // A stamp ahead of ours (the clock stepped back) takes the request
        // into the newer minute.
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        m.buckets[index(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Sums the minutes from `first` to `last` (stamps) into `into`.
    fn gather(&self, first: u64, last: u64, into: &mut [u64]) {
        for m in self.minutes.iter() {
            if (first..=last).contains(&m.stamp.load(Ordering::Acquire)) {
                for (sum, b) in into.iter_mut().zip(m.buckets.iter()) {
                    *sum += u64::from(b.load(Ordering::Relaxed));
                }
            }
        }
    }

    /// Percentiles over the last `minutes` minutes up to `now`: the current,
    /// partial minute and `minutes` whole ones before it, so that a window
    /// never shrinks to the few seconds a new minute has had.
    pub fn window(&self, now: u64, minutes: u64) -> Percentiles {
        let last = now / 60 + 1;
        let n = minutes.clamp(1, MINUTES as u64 - 1);
        let mut sums = vec![0u64; BUCKETS];
        self.gather(last.saturating_sub(n), last, &mut sums);
        percentiles(&sums)
    }

    /// One point per minute, oldest first: the last `minutes` minutes
    /// (minutes without a request have `count` 0).
    pub fn series(&self, now: u64, minutes: u64) -> Vec<(u64, Percentiles)> {
        let last = now / 60 + 1;
        let n = minutes.clamp(1, MINUTES as u64 - 1);
        let mut sums = vec![0u64; BUCKETS];
        (last.saturating_sub(n - 1)..=last)
            .map(|stamp| {
                sums.iter_mut().for_each(|s| *s = 0);
                self.gather(stamp, stamp, &mut sums);
                ((stamp - 1) * 60, percentiles(&sums))
            })
            .collect()
    }
}

fn percentiles(sums: &[u64]) -> Percentiles {
    let count: u64 = sums.iter().sum();
    if count == 0 {
        return Percentiles::default();
    }
    let mut out = [0.0; 4];
    for (slot, (q, _)) in out.iter_mut().zip(QUANTILES) {
        // The smallest value with at least q of the requests at or below it.
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (i, n) in sums.iter().enumerate() {
            seen += n;
            if seen >= rank {
                *slot = upper(i) as f64 / 1000.0;
                break;
            }
        }
    }
    Percentiles {
        count,
        p50_ms: out[0],
        p90_ms: out[1],
        p99_ms: out[2],
        p99_9_ms: out[3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_within_3_percent() {
        assert_eq!(index(0), 0);
        assert_eq!(index(63), 63);
        assert_eq!(index(64), 64);
        assert_eq!(index(MAX_US), BUCKETS - 1);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        for v in (0..5_000_000u64).step_by(7).chain([MAX_US]) {
            let i = index(v);
            assert!(upper(i) >= v, "{v} above its bucket's top {}", upper(i));
            assert!(
                (upper(i) - v) as f64 <= v as f64 / 32.0 + 1.0,
                "{v}: {}",
                upper(i)
            );
        }
        // Each bucket's top is the one below the next bucket's first value.
        for i in 0..BUCKETS - 1 {
            assert_eq!(index(upper(i)), i);
            assert_eq!(index(upper(i) + 1), i + 1);
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let l = Latency::new();
        let now = 1_800_000_000;
        // 1..=1000 ms, one request each.
        for ms in 1..=1000 {
            l.record(now, Duration::from_millis(ms));
        }
        let p = l.window(now, 1);
        assert_eq!(p.count, 1000);
        for (got, want) in [
            (p.p50_ms, 500.0),
            (p.p90_ms, 900.0),
            (p.p99_ms, 990.0),
            (p.p99_9_ms, 999.0),
        ] {
            assert!(
                got >= want && got <= want * 1.032,
                "{got} not within 3.2 % above {want}"
            );
        }
    }

    #[test]
    fn windows_slide_and_old_minutes_are_forgotten() {
        let l = Latency::new();
        let t0 = 1_800_000_020 - 1_800_000_020 % 60;
        // Minute 0: slow (1 s); minutes 1..=4: fast (10 ms).
        l.record(t0, Duration::from_secs(1));
        for m in 1..=4 {
            l.record(t0 + m * 60, Duration::from_millis(10));
        }
        let now = t0 + 4 * 60 + 30;
        // The current minute and the whole one before it.
        assert_eq!(l.window(now, 1).count, 2);
        assert!(l.window(now, 3).p99_ms < 11.0);
        let four = l.window(now, 4);
        assert_eq!(four.count, 5);
        assert!(four.p99_ms >= 1000.0, "{four:?}");
        let s = l.series(now, 5);
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].0, t0);
        assert!(s[0].1.p50_ms >= 1000.0);
        // Twenty minutes on, every slot is older than the window.
        assert_eq!(l.window(now + 20 * 60, 15).count, 0);
        // A reused slot starts from zero.
        l.record(t0 + 16 * 60, Duration::from_millis(1));
        assert_eq!(l.window(t0 + 16 * 60, 1).count, 1);
    }

    #[test]
    fn the_config_names_these_percentiles() {
        assert_eq!(QUANTILES.map(|(_, n)| n), crate::config::slo::PERCENTILES);
    }

    #[test]
    fn memory_is_bounded() {
        assert_eq!(Latency::new().bytes(), 16 * 3592);
    }
}
