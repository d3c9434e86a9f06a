//! An adaptive concurrency limit: how many requests a cluster may have in
//! flight, learned from the latency it answers with instead of configured.
//! Past its capacity an upstream answers no more requests per second, only
//! slower ones (Little's law: the extra concurrency waits in its queue), so
//! rising latency is the signal to admit fewer. Requests over the limit are
//! rejected at once (the pipeline answers 503) rather than joining a queue
//! in the upstream where they slow down everyone. Netflix's
//! concurrency-limits and Envoy's adaptive_concurrency filter, as a
//! synchronous state machine.
//!
//! The pipeline asks `try_acquire` before forwarding, which returns the
//! in-flight count including the request (`None`: over the limit), calls
//! `release` exactly once per admitted request, and `record`s the results
//! worth measuring with that count. It shares one limiter per cluster
//! between the workers behind a `Mutex`: `try_acquire` and `release` are
//! O(1), `record` O(1) apart from the close of a window (a selection over at
//! most 256 samples, once per `window`).
//!
//! **Windows.** Results are gathered in windows of at least `window`, at
//! least `min_samples` results and at least twice the no-load RTT (so a
//! window sees the effect of the previous update), and the limit moves once
//! per window, from the window's `percentile` RTT (the median by default:
//! one slow call, or a mix of cheap and costly routes, does not move it).
//! A window keeps a uniform subsample of at most 256 RTTs, so memory is
//! fixed whatever the rate.
//!
//! **Gradient** (default; Netflix's Gradient, Envoy's gradient controller):
//! `gradient = clamp((tolerance × no_load + slack) / rtt, 0.5, 1)`, then
//! `limit ← (1 − smoothing) × limit + smoothing × (limit × gradient +
//! √limit)`. While the RTT is within `tolerance` of the no-load RTT the limit
//! grows by the √limit headroom, so it finds a larger capacity quickly;
//! beyond, it shrinks in proportion to the excess (by at most 10 % a window
//! with the default smoothing: the gradient is never below 0.5). For an
//! upstream of capacity C whose RTT grows as `no_load × in_flight / C` past
//! C, it settles where `limit − tolerance × C = √limit` (C = 50: 71 with the
//! default 1.25, 58 with 1.0, 84 with 1.5): the upstream stays busy, with a
//! short queue whose wait is bounded by `tolerance`. The default is Envoy's
//! (its 25 % `min_rtt_buffer` over a window median, as here); Netflix's
//! Gradient uses 2.0 against a running minimum, a more optimistic reference
//! than the lowest window median. A noisier upstream wants more.
//!
//! **AIMD**: +1 per limit's worth of successes while the window's RTT is
//! within `tolerance × no_load`; `× backoff` when it is not.
//!
//! For both: a window with a dropped result (a timeout, the upstream's 503
//! or refused connection: the caller says which results mean overload) cuts
//! the limit by `backoff`, once per window; a timeout's RTT is the timeout,
//! not a measurement, so dropped results give no RTT. The limit does not
//! grow while the window's peak in-flight count stayed under half of it
//! (the limit is not what held the traffic back, so its success proves
//! nothing), and it stays within `[min_limit, max_limit]` always.
//!
//! **The no-load RTT and the probe.** Envoy re-measures the no-load RTT by
//! periodically dropping the limit to a few requests for as long as the
//! measurement takes: every request above those few is rejected meanwhile,
//! a dip in the service each time. Levee never lowers the limit to measure.
//! The no-load estimate is:
//!
//! - lowered at once by any window whose RTT is below it (a lower median is
//!   proof the upstream can be that fast); and
//! - re-measured at the end of every `probe_interval`, the only way it
//!   rises: it becomes the lowest RTT of the windows of that interval that
//!   were *unloaded*, whose requests all started with at most `probe_limit`
//!   in flight. Lulls in the traffic make such windows; loaded ones never
//!   count, because the RTT under load includes queueing, and letting it
//!   raise the reference would let the limit creep up under sustained
//!   overload (each rise admitting more, which raises the RTT further).
//!   With no unloaded window in the interval the estimate is kept as is.
//!
//! The other side of that choice: an estimate lowered by a *loaded* window
//! (the upstream got faster while saturated) includes some queueing, and
//! the limit settles higher than it should (in the tests, 99 instead of 71
//! for capacity 50) until a lull measures the true no-load RTT.
//!
//! `probe_limit` is a threshold on the samples, not a limit on admission:
//! it is kept apart from the floor (`min_limit`), which is the only thing
//! that bounds admission from below. A probe can only raise the estimate
//! (every window since the last probe already lowered it to its own RTT),
//! and a higher estimate can only raise the limit: a probe never makes the
//! limit dip. When the upstream itself got slower for good (a deploy, a
//! busier database), the old estimate is too low and the limit falls to the
//! floor; with `probe_limit ≥ min_limit` the windows there are unloaded,
//! and after five such windows in a row the interval ends early (as Envoy
//! re-measures after five windows at its minimum), so that costs a few
//! windows rather than up to a whole `probe_interval`.
//!
//! The estimate starts as the first window's RTT, at `initial_limit` in
//! flight: keep that at or under the upstream's expected capacity, or the
//! first reference includes queueing until the limit next goes below it.

use std::time::{Duration, Instant};

/// RTTs kept per window. Beyond it every other one is dropped and the
/// stride doubles, so a window holds a uniform subsample at any rate.
const MAX_SAMPLES: usize = 256;
/// Windows in a row at the floor, with an unloaded measurement, that end a
/// probe interval early.
const FLOOR_WINDOWS: u32 = 5;
/// The gradient never cuts by more than half in one window: one slow
/// window (a pause upstream) should not empty the limit.
const MIN_GRADIENT: f64 = 0.5;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Shrink in proportion to the latency's rise, grow by √limit.
    #[default]
    Gradient,
    /// Additive increase, multiplicative decrease.
    Aimd,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gradient => "gradient",
            Algorithm::Aimd => "aimd",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveConfig {
    pub algorithm: Algorithm,
    /// The floor: admission never goes below it, whatever the latency (4).
    /// At least 1.
    pub min_limit: u32,
    /// The ceiling (1000); at least `min_limit`.
    pub max_limit: u32,
    /// Where the limit starts (20), clamped to the two.
    pub initial_limit: u32,
    /// How many times the no-load RTT a window's RTT may reach before the
    /// limit shrinks (1.25). Below 1 (or NaN) counts as 1.
    pub tolerance: f64,
    /// Latency above `tolerance × no_load` that still does not shrink the
    /// limit (2 ms). A proxy whose own event loop is busy adds a little
    /// queueing of its own to every measurement; without this slack, a fast
    /// backend's sub-millisecond no-load latency makes that look like
    /// overload, and the limit sheds requests the backend could serve.
    pub slack: Duration,
    /// The weight of each gradient update (0.2); outside `(0, 1]` it is 1.
    pub smoothing: f64,
    /// The cut on a window with drops, and AIMD's decrease (0.9); outside
    /// `(0, 1]` it is 1: no cut.
    pub backoff: f64,
    /// The shortest window (100 ms).
    pub window: Duration,
    /// The fewest results in a window (10); at least 1.
    pub min_samples: u32,
    /// Which RTT of a window stands for it (0.5, the median), in `[0, 1]`.
    pub percentile: f64,
    /// How often the no-load RTT is re-measured from unloaded windows (30 s).
    pub probe_interval: Duration,
    /// Windows whose requests all started with at most this many in flight
    /// are unloaded: their RTT is a no-load measurement (8). Not a limit.
    pub probe_limit: u32,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            algorithm: Algorithm::Gradient,
            min_limit: 4,
            max_limit: 1000,
            initial_limit: 20,
            tolerance: 1.25,
            slack: Duration::from_millis(2),
            smoothing: 0.2,
            backoff: 0.9,
            window: Duration::from_millis(100),
            min_samples: 10,
            percentile: 0.5,
            probe_interval: Duration::from_secs(30),
            probe_limit: 8,
        }
    }
}

impl AdaptiveConfig {
    /// The same settings with the out-of-range ones replaced as documented,
    /// so that no setting can make the arithmetic panic or stall.
    fn cleaned(mut self) -> AdaptiveConfig {
        self.min_limit = self.min_limit.max(1);
        self.max_limit = self.max_limit.max(self.min_limit);
        self.initial_limit = self.initial_limit.clamp(self.min_limit, self.max_limit);
        if self.tolerance.is_nan() || self.tolerance < 1.0 {
            self.tolerance = 1.0;
        }
        let unit = |x: f64| if x > 0.0 && x <= 1.0 { x } else { 1.0 };
        self.smoothing = unit(self.smoothing);
        self.backoff = unit(self.backoff);
        self.min_samples = self.min_samples.max(1);
        self.percentile = if self.percentile.is_nan() {
            0.5
        } else {
            self.percentile.clamp(0.0, 1.0)
        };
        self
    }
}

/// Exact totals since the limiter was made, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// `try_acquire` calls admitted, and refused at the limit.
    pub admitted: u64,
    pub rejected: u64,
    /// Results recorded as dropped.
    pub dropped: u64,
    /// Windows closed, each one update of the limit.
    pub updates: u64,
    /// Probes that re-measured the no-load RTT.
    pub probes: u64,
}

#[derive(Clone, Debug, Default)]
struct Window {
    /// Set by the first result after the previous window closed.
    start: Option<Instant>,
    results: u32,
    successes: u32,
    dropped: u32,
    /// The most requests in flight when one of the window's started.
    peak: u32,
    /// Nanoseconds; every `stride`-th success, `skip` counting up to it.
    rtts: Vec<u64>,
    stride: u32,
    skip: u32,
}

impl Window {
    fn push(&mut self, rtt: Duration) {
        self.skip += 1;
        if self.skip < self.stride {
            return;
        }
        self.skip = 0;
        if self.rtts.len() >= MAX_SAMPLES {
            let mut i = 0;
            self.rtts.retain(|_| {
                i += 1;
                i % 2 == 0
            });
            self.stride = self.stride.saturating_mul(2);
        }
        self.rtts
            .push(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The `p` quantile of the kept RTTs (reorders them).
    fn percentile(&mut self, p: f64) -> Option<Duration> {
        let last = self.rtts.len().checked_sub(1)?;
        // `p` is in [0, 1]: the product is in [0, last].
        let k = ((last as f64 * p).round() as usize).min(last);
        Some(Duration::from_nanos(*self.rtts.select_nth_unstable(k).1))
    }

    /// Empties the window, keeping the allocation.
    fn reset(&mut self) {
        let mut rtts = std::mem::take(&mut self.rtts);
        rtts.clear();
        *self = Window {
            rtts,
            stride: 1,
            ..Window::default()
        };
    }
}

#[derive(Clone, Debug)]
pub struct AdaptiveLimit {
    cfg: AdaptiveConfig,
    /// Fractional, so that small steps add up; admission uses its floor.
    limit: f64,
    in_flight: u32,
    no_load: Option<Duration>,
    last_rtt: Option<Duration>,
    window: Window,
    /// The current probe interval's start, and the lowest RTT of its
    /// unloaded windows.
    probe_since: Instant,
    probe_best: Option<Duration>,
    at_floor: u32,
    counts: Counts,
}

impl AdaptiveLimit {
    pub fn new(cfg: AdaptiveConfig, now: Instant) -> AdaptiveLimit {
        let cfg = cfg.cleaned();
        let mut window = Window::default();
        window.reset();
        AdaptiveLimit {
            limit: f64::from(cfg.initial_limit),
            cfg,
            in_flight: 0,
            no_load: None,
            last_rtt: None,
            window,
            probe_since: now,
            probe_best: None,
            at_floor: 0,
            counts: Counts::default(),
        }
    }

    /// Admits a request if fewer than `limit()` are in flight: returns the
    /// in-flight count including it, to pass to `record`. Every `Some` must
    /// be followed by exactly one `release`.
    pub fn try_acquire(&mut self) -> Option<u32> {
        if self.in_flight >= self.limit() {
            self.counts.rejected += 1;
            return None;
        }
        self.in_flight += 1;
        self.counts.admitted += 1;
        Some(self.in_flight)
    }

    /// An admitted request is over (answered, failed or cancelled).
    pub fn release(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Records a finished request: its `rtt`, the count `try_acquire`
    /// returned for it, and whether it was dropped (timed out, or the
    /// upstream signalled overload; its `rtt` is then ignored). Requests
    /// that measure nothing (cancelled by the client, a 4xx answered before
    /// any work) are just released. Returns the new limit when this result
    /// closed a window.
    pub fn record(
        &mut self,
        rtt: Duration,
        in_flight: u32,
        dropped: bool,
        now: Instant,
    ) -> Option<u32> {
        let w = &mut self.window;
        let start = *w.start.get_or_insert(now);
        w.results = w.results.saturating_add(1);
        w.peak = w.peak.max(in_flight);
        if dropped {
            w.dropped = w.dropped.saturating_add(1);
            self.counts.dropped += 1;
        } else {
            w.successes = w.successes.saturating_add(1);
            w.push(rtt);
        }
        let settle = self.no_load.map_or(Duration::ZERO, |d| d.saturating_mul(2));
        if w.results < self.cfg.min_samples
            || now.saturating_duration_since(start) < self.cfg.window.max(settle)
        {
            return None;
        }
        self.update(now);
        Some(self.limit())
    }

    /// Closes the window: moves the no-load estimate, then the limit, then
    /// ends the probe interval if it is due.
    fn update(&mut self, now: Instant) {
        let cfg = &self.cfg;
        let w = &mut self.window;
        let rtt = w.percentile(cfg.percentile);
        let unloaded = w.peak <= cfg.probe_limit;
        if let Some(rtt) = rtt {
            self.last_rtt = Some(rtt);
            self.no_load = Some(self.no_load.map_or(rtt, |m| m.min(rtt)));
            if unloaded {
                self.probe_best = Some(self.probe_best.map_or(rtt, |b| b.min(rtt)));
            }
        }

        let old = self.limit;
        let mut new = match (rtt, self.no_load) {
            _ if w.dropped > 0 => old * cfg.backoff,
            (Some(rtt), Some(base)) => {
                // The latency allowed before the limit shrinks; no faster
                // than the reference counts as exactly it.
                let allowed = cfg.tolerance * base.as_secs_f64() + cfg.slack.as_secs_f64();
                let ratio = allowed / rtt.max(base).as_secs_f64().max(1e-9);
                match cfg.algorithm {
                    Algorithm::Gradient => {
                        let gradient = ratio.clamp(MIN_GRADIENT, 1.0);
                        let target = old * gradient + old.sqrt();
                        old * (1.0 - cfg.smoothing) + target * cfg.smoothing
                    }
                    Algorithm::Aimd if ratio < 1.0 => old * cfg.backoff,
                    Algorithm::Aimd => old + f64::from(w.successes) / old,
                }
            }
            _ => old,
        };
        if f64::from(w.peak) * 2.0 < old {
            new = new.min(old);
        }
        self.limit = new.clamp(f64::from(cfg.min_limit), f64::from(cfg.max_limit));
        self.counts.updates += 1;
        w.reset();

        self.at_floor = match self.limit() <= cfg.min_limit {
            true => self.at_floor.saturating_add(1),
            false => 0,
        };
        let due = now.saturating_duration_since(self.probe_since) >= cfg.probe_interval;
        let stuck = self.at_floor >= FLOOR_WINDOWS && self.probe_best.is_some();
        if due || stuck {
            if let Some(best) = self.probe_best.take() {
                self.no_load = Some(best);
                self.counts.probes += 1;
            }
            self.probe_since = now;
            self.at_floor = 0;
        }
    }

    /// Takes new settings (a reload) without forgetting what was learned:
    /// the limit (clamped to the new bounds), the in-flight count, the
    /// no-load estimate and the open window are kept.
    pub fn reconfigure(&mut self, cfg: AdaptiveConfig) {
        self.cfg = cfg.cleaned();
        let (min, max) = (self.cfg.min_limit, self.cfg.max_limit);
        self.limit = self.limit.clamp(f64::from(min), f64::from(max));
    }

    /// The current limit on requests in flight.
    pub fn limit(&self) -> u32 {
        // In [min_limit, max_limit], so the cast is exact after the floor.
        self.limit as u32
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The no-load RTT estimate; `None` before the first window.
    pub fn no_load_rtt(&self) -> Option<Duration> {
        self.no_load
    }

    /// The RTT of the last window (its `percentile`).
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn config(&self) -> &AdaptiveConfig {
        &self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    /// A discrete-event simulation: clients that always have another
    /// request (or keep `demand` in flight), each request's RTT fixed at its
    /// start by `latency(in_flight, elapsed)`, completions in time order.
    struct Sim {
        t0: Instant,
        now: Duration,
        lim: AdaptiveLimit,
        /// (completion time, sequence, in-flight at start, RTT).
        pending: BinaryHeap<Reverse<(Duration, u64, u32, Duration)>>,
        seq: u64,
        /// (time, limit) after every update.
        trace: Vec<(Duration, u32)>,
        /// At most this many in flight; `None`: as many as admitted.
        demand: Option<u32>,
    }

    impl Sim {
        fn new(cfg: AdaptiveConfig) -> Sim {
            let t0 = Instant::now();
            Sim {
                t0,
                now: Duration::ZERO,
                lim: AdaptiveLimit::new(cfg, t0),
                pending: BinaryHeap::new(),
                seq: 0,
                trace: Vec::new(),
                demand: None,
            }
        }

        /// Runs to `until`; an RTT of a second or more is a timeout (drop).
        fn run(&mut self, until: Duration, latency: impl Fn(u32, Duration) -> Duration) {
            loop {
                while self.demand.is_none_or(|d| self.lim.in_flight() < d) {
                    let Some(n) = self.lim.try_acquire() else {
                        break;
                    };
                    let rtt = latency(n, self.now);
                    self.seq += 1;
                    let done = self.now + rtt;
                    self.pending.push(Reverse((done, self.seq, n, rtt)));
                }
                let Some(Reverse((done, seq, n, rtt))) = self.pending.pop() else {
                    return;
                };
                if done > until {
                    self.pending.push(Reverse((done, seq, n, rtt)));
                    self.now = until;
                    return;
                }
                self.now = done;
                self.lim.release();
                if let Some(l) = self.lim.record(rtt, n, rtt >= SEC, self.t0 + done) {
                    self.trace.push((done, l));
                }
            }
        }

        /// (min, mean, max) of the limit over the updates in `from..to`.
        fn stats(&self, from: Duration, to: Duration) -> (u32, f64, u32) {
            let seen: Vec<u32> = self
                .trace
                .iter()
                .filter(|(t, _)| (from..to).contains(t))
                .map(|&(_, l)| l)
                .collect();
            assert!(!seen.is_empty(), "no update in {from:?}..{to:?}");
            let mean = seen.iter().map(|&l| f64::from(l)).sum::<f64>() / seen.len() as f64;
            let min = seen.iter().copied().min().unwrap_or(0);
            let max = seen.iter().copied().max().unwrap_or(0);
            (min, mean, max)
        }

        /// When, after `from`, the limit first satisfied `pred`.
        fn first(&self, from: Duration, pred: impl Fn(u32) -> bool) -> Option<Duration> {
            let mut after = self.trace.iter().filter(|(t, _)| *t >= from);
            after.find(|&&(_, l)| pred(l)).map(|&(t, _)| t)
        }
    }

    /// An upstream with `capacity` workers: `base` each up to that many in
    /// flight, then queueing in proportion.
    fn queueing(base: Duration, capacity: u32, n: u32) -> Duration {
        base.mul_f64((f64::from(n) / f64::from(capacity)).max(1.0))
    }

    fn both() -> [AdaptiveConfig; 2] {
        let aimd = AdaptiveConfig {
            algorithm: Algorithm::Aimd,
            ..AdaptiveConfig::default()
        };
        [AdaptiveConfig::default(), aimd]
    }

    #[test]
    fn constant_latency_grows_to_max() {
        for cfg in both() {
            let name = cfg.algorithm.as_str();
            let mut sim = Sim::new(cfg);
            let mut t = Duration::ZERO;
            while sim.lim.limit() < 1000 && t < 120 * SEC {
                t += SEC;
                sim.run(t, |_, _| 10 * MS);
            }
            let reached = sim.first(Duration::ZERO, |l| l >= 1000);
            println!("{name}: constant 10 ms: limit 1000 reached at {reached:?}");
            assert!(reached.is_some_and(|t| t < 60 * SEC), "{name}");
            assert_eq!(sim.lim.no_load_rtt(), Some(10 * MS));
        }
    }

    #[test]
    fn converges_near_capacity() {
        for cfg in both() {
            let name = cfg.algorithm.as_str();
            let mut sim = Sim::new(cfg);
            sim.run(120 * SEC, |n, _| queueing(10 * MS, 50, n));
            let (min, mean, max) = sim.stats(20 * SEC, 120 * SEC);
            println!(
                "{name}: capacity 50: limit {min}..{max}, mean {mean:.1} over 20..120 s; \
                 no-load {:?}, last window {:?}",
                sim.lim.no_load_rtt(),
                sim.lim.last_rtt()
            );
            assert!(min >= 35 && max <= 90, "{name}: {min}..{max}");
            assert_eq!(sim.lim.no_load_rtt(), Some(10 * MS), "kept under load");
        }
    }

    #[test]
    fn jitter_does_not_unsettle_it() {
        // Every call ±30 % at random (xorshift, fixed seed).
        for cfg in both() {
            let name = cfg.algorithm.as_str();
            let seed = std::cell::Cell::new(0x9e37_79b9_7f4a_7c15_u64);
            let jitter = || {
                let mut x = seed.get();
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                seed.set(x);
                0.7 + 0.6 * (x >> 11) as f64 / (1u64 << 53) as f64
            };
            let mut sim = Sim::new(cfg);
            sim.run(120 * SEC, |n, _| queueing(10 * MS, 50, n).mul_f64(jitter()));
            let (min, mean, max) = sim.stats(20 * SEC, 120 * SEC);
            println!(
                "{name}: capacity 50, ±30 % jitter: limit {min}..{max}, mean {mean:.1} over \
                 20..120 s; no-load {:?}",
                sim.lim.no_load_rtt()
            );
            assert!(min >= 35 && max <= 90, "{name}: {min}..{max}");
        }
    }

    #[test]
    fn recovers_after_an_overload() {
        // Capacity 50, then 10 for 30 s (the upstream lost most of its
        // workers), then 50 again.
        let server = |n, t: Duration| {
            let capacity = if (30 * SEC..60 * SEC).contains(&t) {
                10
            } else {
                50
            };
            queueing(10 * MS, capacity, n)
        };
        for cfg in both() {
            let name = cfg.algorithm.as_str();
            let mut sim = Sim::new(cfg);
            sim.run(120 * SEC, server);
            let before = sim.stats(20 * SEC, 30 * SEC);
            let during = sim.stats(40 * SEC, 60 * SEC);
            let after = sim.stats(80 * SEC, 120 * SEC);
            let back = sim.first(60 * SEC, |l| l >= 35).map(|t| t - 60 * SEC);
            println!(
                "{name}: capacity 50 → 10 → 50: limit {before:.1?} → {during:.1?} → \
                 {after:.1?} (min, mean, max); back to 35 in {back:?}"
            );
            assert!(during.2 <= 25, "{name}: shrank with the capacity");
            assert!(after.0 >= 35 && after.2 <= 90, "{name}: recovered");
            assert!(back.is_some_and(|t| t < 10 * SEC), "{name}");
        }
    }

    #[test]
    fn remeasures_when_the_upstream_gets_slower() {
        // The upstream's own latency goes from 10 to 40 ms at 30 s (same
        // capacity) and back at 90 s; a lull at 150 s.
        let server = |n, t: Duration| {
            let base = if (30 * SEC..90 * SEC).contains(&t) {
                40 * MS
            } else {
                10 * MS
            };
            queueing(base, 50, n)
        };
        let mut sim = Sim::new(AdaptiveConfig::default());
        sim.run(90 * SEC, server);
        // The stale 10 ms estimate takes the limit to the floor, never
        // below; unloaded windows there re-measure it (40 ms) at once, and
        // the limit finds the capacity again.
        let floor = sim.first(30 * SEC, |l| l <= 4);
        let floor = floor.unwrap_or(Duration::MAX);
        let back = sim.first(floor, |l| l >= 35).map(|t| t - floor);
        let low = sim.stats(30 * SEC, 90 * SEC);
        let slow = sim.stats(70 * SEC, 90 * SEC);
        println!(
            "gradient: no-load 10 → 40 ms at 30 s: floor at {floor:?}, back to 35 in \
             {back:?}; limit {slow:.1?} in 70..90 s (min, mean, max), estimate {:?}",
            sim.lim.no_load_rtt()
        );
        assert_eq!(low.0, 4);
        assert!(back.is_some_and(|t| t < 10 * SEC), "{back:?}");
        assert!(
            slow.0 >= 35 && slow.2 <= 90,
            "capacity found again: {slow:?}"
        );
        assert_eq!(sim.lim.no_load_rtt(), Some(40 * MS));
        assert!(sim.lim.counts().probes >= 1);

        // Back to 10 ms: the first window lowers the estimate, but to a
        // loaded RTT, so the limit recovers generously...
        sim.run(150 * SEC, server);
        let after = sim.stats(100 * SEC, 150 * SEC);
        let estimate = sim.lim.no_load_rtt().unwrap_or_default();
        println!(
            "gradient: back to 10 ms at 90 s: limit {after:.1?} in 100..150 s, \
             estimate {estimate:?}"
        );
        assert!(after.0 >= 35, "recovered: {after:?}");
        assert!(estimate > 10 * MS && estimate < 40 * MS);
        // ...until a lull measures 10 ms again.
        sim.demand = Some(4);
        sim.run(151 * SEC, server);
        sim.demand = None;
        sim.run(210 * SEC, server);
        let settled = sim.stats(170 * SEC, 210 * SEC);
        println!("gradient: after a 1 s lull: limit {settled:.1?} in 170..210 s");
        assert_eq!(sim.lim.no_load_rtt(), Some(10 * MS));
        assert!(settled.0 >= 35 && settled.2 <= 90, "{settled:?}");
    }

    #[test]
    fn probes_do_not_dip() {
        // The same loaded run, re-measuring every second or never: the
        // limit's path is identical, as loaded windows never count.
        let mut runs = Vec::new();
        for probe_interval in [SEC, Duration::MAX] {
            let mut sim = Sim::new(AdaptiveConfig {
                probe_interval,
                ..AdaptiveConfig::default()
            });
            sim.run(60 * SEC, |n, _| queueing(10 * MS, 50, n));
            runs.push(sim.trace);
        }
        assert_eq!(runs[0], runs[1]);

        // Every window unloaded; the RTT doubles at 10 s. The estimate only
        // rises at a probe, and the limit is never lower after one.
        let t0 = Instant::now();
        let cfg = AdaptiveConfig {
            probe_interval: 10 * SEC,
            probe_limit: 1000,
            ..AdaptiveConfig::default()
        };
        let mut l = AdaptiveLimit::new(cfg, t0);
        let mut t = t0;
        let mut updates = Vec::new();
        for i in 0..4000u32 {
            t += 10 * MS;
            let rtt = if i < 1000 { 10 * MS } else { 20 * MS };
            let before = (l.no_load_rtt(), l.limit);
            if l.record(rtt, l.limit(), false, t).is_some() {
                updates.push((l.counts().probes, before, (l.no_load_rtt(), l.limit)));
            }
        }
        let probes: Vec<_> = updates.windows(2).filter(|w| w[1].0 > w[0].0).collect();
        assert_eq!(probes.len(), 3, "at 10, 20 and 30 s");
        for w in &probes {
            let (before, after) = (w[1].1, w[1].2);
            assert!(after.0 >= before.0, "the estimate only rises");
        }
        assert_eq!(l.no_load_rtt(), Some(20 * MS));
        // The window after the 20 s probe grows the limit again.
        let i = updates.iter().position(|u| u.0 == 2).unwrap_or(0);
        let (at, next) = (updates[i].2.1, updates[i + 1].2.1);
        println!("probe at 20 s: limit {at:.1} → {next:.1}");
        assert!(next > at);

        // Loaded windows at 30 ms do not raise it, probe or not.
        let mut l = AdaptiveLimit::new(AdaptiveConfig::default(), t0);
        let mut t = t0;
        for _ in 0..11 {
            t += 10 * MS;
            l.record(10 * MS, 20, false, t);
        }
        assert_eq!(l.no_load_rtt(), Some(10 * MS));
        for _ in 0..4000 {
            t += 10 * MS;
            l.record(30 * MS, 20, false, t);
        }
        assert_eq!(l.no_load_rtt(), Some(10 * MS));
        assert_eq!(l.counts().probes, 0, "nothing unloaded to re-measure");
    }

    #[test]
    fn shared_between_workers() {
        fn shared<T: Send + Sync>() {}
        shared::<AdaptiveLimit>();
    }

    #[test]
    fn never_below_the_floor() {
        let t0 = Instant::now();
        let mut l = AdaptiveLimit::new(AdaptiveConfig::default(), t0);
        let mut t = t0;
        for _ in 0..1000 {
            t += 10 * MS;
            l.record(10 * MS, l.limit(), true, t);
            assert!(l.limit() >= 4);
        }
        assert_eq!(l.limit(), 4);
        // Admission at the floor admits the floor.
        for n in 1..=4 {
            assert_eq!(l.try_acquire(), Some(n));
        }
        assert_eq!(l.try_acquire(), None);
        l.release();
        assert_eq!(l.try_acquire(), Some(4));
        let c = l.counts();
        assert_eq!((c.admitted, c.rejected, c.dropped), (5, 1, 1000));
        // Absurd latencies, loaded and not, with drops mixed in.
        for i in 0..5000u32 {
            t += 10 * MS;
            let rtt = if i % 7 == 0 { 10 * MS } else { 3600 * SEC };
            let n = if i % 3 == 0 { 1 } else { 500 };
            l.record(rtt, n, i % 5 == 0, t);
            assert!(l.limit() >= 4);
        }
    }

    #[test]
    fn windows_drops_and_percentile() {
        let t0 = Instant::now();
        let mut l = AdaptiveLimit::new(AdaptiveConfig::default(), t0);
        // Ten results in 90 ms do not close a window, the eleventh at 100 ms
        // does: the first window sets the estimate and grows the limit by
        // 0.2 × √20.
        for i in 0..10 {
            assert_eq!(l.record(10 * MS, 20, false, t0 + i * 10 * MS), None);
        }
        assert_eq!(l.record(10 * MS, 20, false, t0 + 100 * MS), Some(20));
        assert_eq!(l.no_load_rtt(), Some(10 * MS));
        let grown = 20.0 + 0.2 * 20f64.sqrt();
        assert!((l.limit - grown).abs() < 1e-9);
        // Two drops in the next window: × 0.9, once.
        let t = t0 + 100 * MS;
        for i in 1..=11 {
            l.record(10 * MS, 20, i == 3 || i == 7, t + i * 10 * MS);
        }
        assert!((l.limit - grown * 0.9).abs() < 1e-9);
        assert_eq!(l.counts().updates, 2);
        // The median, not the mean: three 5 s calls in eleven move nothing.
        let (before, t) = (l.limit, t + 110 * MS);
        for i in 1..=11 {
            let rtt = if i % 3 == 0 { 5 * SEC } else { 10 * MS };
            l.record(rtt, 20, false, t + i * 10 * MS);
        }
        assert_eq!(l.counts().updates, 3);
        assert_eq!(l.last_rtt(), Some(10 * MS));
        assert!(l.limit > before);
    }

    #[test]
    fn app_limited_does_not_grow() {
        // 10 in flight (1000 requests a second at 10 ms) under a limit of
        // 20: the limit may not run away from the traffic.
        let mut sim = Sim::new(AdaptiveConfig::default());
        sim.demand = Some(10);
        sim.run(60 * SEC, |_, _| 10 * MS);
        assert_eq!(sim.lim.limit(), 20);
        // 15 in flight: it grows until 15 is under half of it.
        sim.demand = Some(15);
        sim.run(120 * SEC, |_, _| 10 * MS);
        let l = sim.lim.limit();
        println!("app-limited: 10 in flight keep the limit at 20; 15 take it to {l}");
        assert!((20..=31).contains(&l), "{l}");
    }

    #[test]
    fn samples_are_decimated() {
        let t0 = Instant::now();
        let mut l = AdaptiveLimit::new(AdaptiveConfig::default(), t0);
        // 10 000 results in one window, 1 to 10 ms: the median survives.
        for i in 0..10_000u32 {
            let rtt = MS * (i % 10 + 1);
            l.record(rtt, 20, false, t0 + Duration::from_micros(u64::from(i) * 9));
            assert!(l.window.rtts.len() <= MAX_SAMPLES);
        }
        l.record(5 * MS, 20, false, t0 + SEC);
        let median = l.last_rtt().unwrap_or_default();
        assert!((5 * MS..=6 * MS).contains(&median), "{median:?}");
    }

    #[test]
    fn odd_settings_and_reload() {
        let t0 = Instant::now();
        let cfg = AdaptiveConfig {
            min_limit: 0,
            max_limit: 0,
            initial_limit: 50,
            tolerance: f64::NAN,
            smoothing: -1.0,
            backoff: f64::INFINITY,
            window: Duration::ZERO,
            min_samples: 0,
            percentile: f64::NAN,
            probe_interval: Duration::ZERO,
            ..AdaptiveConfig::default()
        };
        let mut l = AdaptiveLimit::new(cfg, t0);
        assert_eq!(l.limit(), 1);
        assert_eq!(l.try_acquire(), Some(1));
        assert_eq!(l.try_acquire(), None);
        l.release();
        l.release();
        assert_eq!(l.in_flight(), 0);
        for i in 0..100 {
            l.record(Duration::from_nanos(i), 1, i % 2 == 0, t0);
            l.record(Duration::MAX, u32::MAX, false, t0 + SEC);
        }
        assert_eq!(l.limit(), 1);
        // A reload keeps what was learned and clamps to the new bounds.
        let mut l = AdaptiveLimit::new(AdaptiveConfig::default(), t0);
        l.try_acquire();
        l.reconfigure(AdaptiveConfig {
            min_limit: 30,
            max_limit: 40,
            ..AdaptiveConfig::default()
        });
        assert_eq!((l.limit(), l.in_flight()), (30, 1));
        assert_eq!(Algorithm::Aimd.as_str(), "aimd");
    }
}
