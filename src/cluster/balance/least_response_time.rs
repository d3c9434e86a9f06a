//! Least response time: the usable endpoint with the lowest
//! `latency × (in_flight + 1)`, the time a new request can expect to wait
//! there if requests were served one after the other.
//!
//! Latency alone would send every request to the fastest endpoint until it
//! slows down; multiplying by the queue makes a fast endpoint take more, not
//! all. The latency is the endpoint's smooth EWMA (cluster/ewma.rs), which
//! prices failures as slow answers, so a fast-failing endpoint is not the
//! "fastest" one.
//!
//! An endpoint with no measurement yet (latency 0) is tried first, so it gets
//! one; but only one request at a time: while that probe is out, it ranks
//! after every measured endpoint, so a new endpoint whose first answer is
//! slow is not handed every request in the meantime.

use std::cmp::Ordering as Cmp;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::least_conn::least_by;
use super::{Balancer, Member, Pick, Stats};

pub struct LeastResponseTime {
    len: usize,
    // Whose turn it is among tied endpoints (see `least_by`).
    turn: AtomicUsize,
}

impl LeastResponseTime {
    pub fn new(members: &[Member]) -> LeastResponseTime {
        LeastResponseTime {
            len: members.len(),
            turn: AtomicUsize::new(0),
        }
    }
}

/// Rank of an endpoint: first by class, then by expected wait (seconds, or
/// in-flight count among busy unmeasured endpoints). Lower is better.
fn rank(s: Stats) -> (u8, f64) {
    let queue = s.in_flight as f64 + 1.0;
    match (s.latency > 0.0, s.in_flight) {
        (false, 0) => (0, 0.0),
        (true, _) => (1, s.latency * queue),
        (false, _) => (2, queue),
    }
}

fn by_rank(a: &(u8, f64), b: &(u8, f64)) -> Cmp {
    a.0.cmp(&b.0).then(a.1.total_cmp(&b.1))
}

impl Balancer for LeastResponseTime {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        least_by(self.len, ctx, turn, |i| rank((ctx.stats)(i)), by_rank)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::balance::testing::{members, simulate};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn slow_endpoint_sheds_traffic() {
        let counts = simulate(
            &LeastResponseTime::new(&members(3)),
            [10 * MS, 10 * MS, 60 * MS],
            [true; 3],
            1000,
            2 * MS,
        );
        println!("least_response_time, +50 ms endpoint: {counts:?} of 1000 picks");
        assert!(counts[2] < 100, "{counts:?}");
        // The two equal endpoints share evenly.
        assert!(counts[0].abs_diff(counts[1]) < 50, "{counts:?}");
    }

    #[test]
    fn fast_failing_endpoint_is_not_rewarded() {
        let counts = simulate(
            &LeastResponseTime::new(&members(3)),
            [10 * MS, 10 * MS, MS],
            [true, true, false],
            1000,
            2 * MS,
        );
        println!("least_response_time, endpoint failing in 1 ms: {counts:?} of 1000 picks");
        assert!(counts[2] < 100, "{counts:?}");
    }

    #[test]
    fn unmeasured_endpoints_probed_one_at_a_time() {
        let b = LeastResponseTime::new(&members(3));
        let all = |_: usize| true;
        let pick = |stats: [Stats; 3]| {
            let stats = move |i: usize| stats[i];
            b.pick(&Pick {
                stats: &stats,
                ..Pick::simple(&all)
            })
        };
        let measured = |latency: f64, in_flight: u64| Stats {
            latency,
            in_flight,
            cost: 0.0,
        };
        let fresh = Stats::default();
        let probing = Stats {
            in_flight: 1,
            ..Stats::default()
        };
        // Idle and unmeasured: first, even against an idle fast endpoint.
        assert_eq!(
            pick([measured(0.001, 0), fresh, measured(0.001, 0)]),
            Some(1)
        );
        // Probe out: behind every measured endpoint, however busy.
        assert_eq!(
            pick([measured(0.5, 40), probing, measured(0.9, 9)]),
            Some(2)
        );
        // Expected wait decides among measured ones.
        assert_eq!(
            pick([measured(0.010, 9), probing, measured(0.030, 2)]),
            Some(2)
        );
        // Nothing measured anywhere: fewest in flight.
        let busy = Stats {
            in_flight: 4,
            ..Stats::default()
        };
        assert_eq!(pick([busy, probing, busy]), Some(1));
        let none = |_: usize| false;
        assert_eq!(b.pick(&Pick::simple(&none)), None);
    }
}
