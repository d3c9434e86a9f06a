//! Live latency estimate of one endpoint, fed once per response.
//!
//! Two numbers are kept, both exponentially weighted by *time* rather than by
//! sample count (the weight of the old estimate after `elapsed` is
//! `exp(-elapsed / decay)`), so the estimate forgets at the same pace whatever
//! the request rate:
//!
//! - the smooth EWMA (`latency`), read by least-response-time;
//! - the peak EWMA (`cost`), read by the peak-EWMA balancer: a sample above
//!   the estimate replaces it at once, one below it decays in. A balancer
//!   reacting to a slow spell at once and forgetting it slowly is what
//!   Finagle and linkerd found works.
//!
//! Between responses both decay towards zero, as if silence were fast
//! answers. That is deliberate: an endpoint that looked slow gets no traffic,
//! so no sample would ever correct its estimate; letting it look ever faster
//! means it is tried again after a few `decay`s instead of being exiled.
//!
//! A failed response counts as a slow one. A latency-only balancer otherwise
//! rewards an endpoint that answers 500 in a millisecond with all the traffic
//! (linkerd2 #11669); here an error weighs at least `FAILURE_PENALTY_MIN`,
//! and ten times the current estimate for endpoints that are slow anyway.
//!
//! The state is one small `Mutex`: it is taken once per response and once per
//! pick, for a handful of float operations, and it lives in the endpoint's
//! live state so the estimate survives reloads and is shared by all workers.
//! The clock is a parameter, so tests drive it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least a failed response counts for, in seconds.
const FAILURE_PENALTY_MIN: f64 = 1.0;
/// A failure counts as this many times the current estimate, so that on an
/// endpoint whose answers normally take seconds an error still weighs.
const FAILURE_PENALTY_FACTOR: f64 = 10.0;
/// Repeated failures raise the estimate and so the next penalty; this bounds
/// how high, hence how long a failing endpoint stays priced out.
const FAILURE_PENALTY_MAX: f64 = 30.0;
/// The estimate `cost` uses at least, in seconds. Without it an endpoint
/// nothing has been measured on (or one idle long enough to decay to zero)
/// would cost 0 whatever its in-flight count and take every request until
/// its first response came back; with it, in-flight requests still count.
const COST_FLOOR: f64 = 0.001;

pub struct Latency {
    /// The time constant, in seconds.
    decay: f64,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// Smooth EWMA, in seconds, as of `at`.
    smooth: f64,
    /// Peak EWMA, in seconds, as of `at`.
    peak: f64,
    /// When the last response was recorded; `None` before the first.
    at: Option<Instant>,
    /// Samples recorded so far, counted up to `WARMUP`.
    samples: u32,
}

/// The first samples are averaged by count as well as by time: one slow
/// first answer (a fresh connection) must not set the estimate for the next
/// `decay` seconds, which would keep an equally fast endpoint out of favour.
const WARMUP: u32 = 8;

impl Latency {
    pub fn new(decay: Duration) -> Latency {
        Latency {
            decay: decay.as_secs_f64(),
            state: Mutex::new(State::default()),
        }
    }

    /// Records one response that took `rtt` (to the response head); `ok` is
    /// false for a failure (5xx, reset, timeout).
    pub fn record(&self, rtt: Duration, ok: bool, now: Instant) {
        let mut s = self.lock();
        let mut sample = rtt.as_secs_f64();
        if !ok {
            let penalty =
                (FAILURE_PENALTY_FACTOR * s.smooth).clamp(FAILURE_PENALTY_MIN, FAILURE_PENALTY_MAX);
            sample = sample.max(penalty);
        }
        let Some(at) = s.at else {
            *s = State {
                smooth: sample,
                peak: sample,
                at: Some(now),
                samples: 1,
            };
            return;
        };
        // Responses recorded by other workers may carry a slightly earlier
        // `now`; they then count as simultaneous rather than moving time back.
        let mut w = self.weight(now.saturating_duration_since(at));
        if s.samples < WARMUP {
            w = w.min(f64::from(s.samples) / f64::from(s.samples + 1));
            s.samples += 1;
        }
        s.smooth = s.smooth * w + sample * (1.0 - w);
        let peak = s.peak * w;
        s.peak = if sample > peak {
            sample
        } else {
            peak + sample * (1.0 - w)
        };
        s.at = Some(at.max(now));
    }

    /// The smooth EWMA of response times, in seconds, decayed to `now`; 0
    /// while nothing has been measured.
    pub fn latency(&self, now: Instant) -> f64 {
        let s = self.lock();
        match s.at {
            Some(at) => s.smooth * self.weight(now.saturating_duration_since(at)),
            None => 0.0,
        }
    }

    /// The peak-EWMA cost of sending one more request: the peak estimate,
    /// decayed to `now`, times the requests that would then be in flight.
    pub fn cost(&self, in_flight: u64, now: Instant) -> f64 {
        let s = self.lock();
        let peak = match s.at {
            Some(at) => s.peak * self.weight(now.saturating_duration_since(at)),
            None => 0.0,
        };
        peak.max(COST_FLOOR) * (in_flight as f64 + 1.0)
    }

    /// The weight the old estimate keeps after `elapsed`.
    fn weight(&self, elapsed: Duration) -> f64 {
        if self.decay <= 0.0 {
            return 0.0; // No memory at all; avoids 0/0.
        }
        (-elapsed.as_secs_f64() / self.decay).exp()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few floats written in one go; a panic elsewhere
        // cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-3 * b.abs().max(1e-6)
    }

    #[test]
    fn shared_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<Latency>();
    }

    #[test]
    fn nothing_measured() {
        let l = Latency::new(Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(l.latency(t), 0.0);
        assert!(close(l.cost(0, t), COST_FLOOR));
        // Unmeasured is not free: in-flight requests still count.
        assert!(close(l.cost(4, t), 5.0 * COST_FLOOR));
    }

    #[test]
    fn converges_to_a_steady_rtt() {
        let l = Latency::new(Duration::from_secs(1));
        let mut t = Instant::now();
        l.record(200 * MS, true, t);
        for _ in 0..100 {
            t += 100 * MS;
            l.record(20 * MS, true, t);
        }
        // Ten time constants later the 200 ms start is forgotten.
        assert!(close(l.latency(t), 0.020), "{}", l.latency(t));
        assert!(close(l.cost(0, t), 0.020), "{}", l.cost(0, t));
        assert!(close(l.cost(3, t), 0.080));
    }

    #[test]
    fn weighs_by_time_not_by_count() {
        let l = Latency::new(Duration::from_secs(1));
        let t = Instant::now();
        l.record(100 * MS, true, t);
        // A sample one time constant later keeps 1/e of the old estimate.
        l.record(10 * MS, true, t + 1000 * MS);
        let want = 0.100 * (-1.0f64).exp() + 0.010 * (1.0 - (-1.0f64).exp());
        assert!(close(l.latency(t + 1000 * MS), want));
        // After the warm-up, many samples at the same instant barely move it.
        let l = Latency::new(Duration::from_secs(1));
        for _ in 0..WARMUP {
            l.record(100 * MS, true, t);
        }
        for _ in 0..1000 {
            l.record(10 * MS, true, t);
        }
        assert!(close(l.latency(t), 0.100));
    }

    #[test]
    fn a_slow_first_sample_does_not_stick() {
        // A fresh connection's 3 ms, then pooled 0.3 ms answers, 1 ms apart:
        // the estimate follows the average, not the first sample.
        let l = Latency::new(Duration::from_secs(10));
        let t = Instant::now();
        l.record(3 * MS, true, t);
        for k in 1..WARMUP {
            l.record(MS * 3 / 10, true, t + MS * k);
        }
        let est = l.latency(t + MS * WARMUP);
        let mean = (3.0 + 0.3 * f64::from(WARMUP - 1)) / f64::from(WARMUP) / 1000.0;
        assert!((est - mean).abs() < 0.0001, "{est} vs {mean}");
    }

    #[test]
    fn decays_over_time() {
        let l = Latency::new(Duration::from_secs(2));
        let t = Instant::now();
        l.record(500 * MS, true, t);
        assert!(close(l.cost(0, t), 0.5));
        assert!(close(l.cost(0, t + 2000 * MS), 0.5 * (-1.0f64).exp()));
        assert!(close(l.latency(t + 4000 * MS), 0.5 * (-2.0f64).exp()));
        // Long idle: the floor, so the endpoint is tried again.
        assert!(close(l.cost(0, t + Duration::from_secs(60)), COST_FLOOR));
        // Reading does not change the estimate, and a clock that reads
        // earlier than the last sample does not inflate it.
        assert!(close(l.cost(0, t + 2000 * MS), 0.5 * (-1.0f64).exp()));
        assert!(close(l.cost(0, t - 1000 * MS), 0.5));
    }

    #[test]
    fn peak_reacts_to_a_slow_sample_at_once() {
        let l = Latency::new(Duration::from_secs(1));
        let mut t = Instant::now();
        for _ in 0..50 {
            t += 100 * MS;
            l.record(10 * MS, true, t);
        }
        t += 100 * MS;
        l.record(300 * MS, true, t);
        // Peak: replaced at once. Smooth: moved by 1 - e^-0.1 of the gap.
        assert!(close(l.cost(0, t), 0.300));
        let smooth = 0.010 + 0.290 * (1.0 - (-0.1f64).exp());
        assert!(close(l.latency(t), smooth));
        // Back to fast answers, the peak decays in over a few seconds.
        for _ in 0..10 {
            t += 100 * MS;
            l.record(10 * MS, true, t);
        }
        let after_1s = l.cost(0, t);
        assert!(after_1s > 0.1 && after_1s < 0.3, "{after_1s}");
        for _ in 0..50 {
            t += 100 * MS;
            l.record(10 * MS, true, t);
        }
        assert!(l.cost(0, t) < 0.012, "{}", l.cost(0, t));
    }

    #[test]
    fn fast_failures_cost_more_than_healthy_answers() {
        let healthy = Latency::new(Duration::from_secs(10));
        let failing = Latency::new(Duration::from_secs(10));
        let mut t = Instant::now();
        for _ in 0..100 {
            t += 10 * MS;
            healthy.record(50 * MS, true, t);
            failing.record(MS, false, t);
        }
        assert!(failing.cost(0, t) >= 1.0);
        assert!(failing.cost(0, t) > 10.0 * healthy.cost(5, t));
        assert!(failing.latency(t) > 10.0 * healthy.latency(t));
        // A slow endpoint's errors weigh more than its answers.
        let slow = Latency::new(Duration::from_secs(10));
        slow.record(Duration::from_secs(5), true, t);
        slow.record(MS, false, t + MS);
        assert!(slow.cost(0, t + MS) >= 30.0 - 1e-9);
        // Bounded: a long failing spell does not price it out for ever.
        for _ in 0..1000 {
            t += Duration::from_secs(1);
            failing.record(MS, false, t);
        }
        assert!(failing.cost(0, t) <= FAILURE_PENALTY_MAX);
    }
}
