//! Peak EWMA: power of two choices over latency cost, as linkerd balances.
//!
//! Two distinct usable endpoints are drawn at random (p2c.rs) and the one
//! with the lower `Stats::cost` wins. The cost is each endpoint's peak-EWMA
//! latency times its requests in flight plus one (cluster/ewma.rs): it rises
//! at once when an endpoint turns slow or fails, decays back slowly, and
//! grows with queueing, so slow, failing and overloaded endpoints all shed
//! traffic, while the random draw keeps workers and instances from piling
//! onto the same momentarily cheapest endpoint. Failures are priced as slow
//! answers by the estimator, so a fast-failing endpoint is not rewarded.

use super::p2c::two_usable;
use super::{Balancer, Member, Pick};

pub struct PeakEwma {
    len: usize,
}

impl PeakEwma {
    pub fn new(members: &[Member]) -> PeakEwma {
        PeakEwma { len: members.len() }
    }
}

impl Balancer for PeakEwma {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        match two_usable(self.len, ctx)? {
            (a, Some(b)) if (ctx.stats)(b).cost < (ctx.stats)(a).cost => Some(b),
            (a, _) => Some(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::Stats;
    use super::*;
    use crate::cluster::balance::testing::{members, rng, simulate};

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn slow_endpoint_sheds_traffic() {
        let counts = simulate(
            &PeakEwma::new(&members(3)),
            [10 * MS, 10 * MS, 60 * MS],
            [true; 3],
            1000,
            2 * MS,
        );
        println!("peak_ewma, +50 ms endpoint: {counts:?} of 1000 picks");
        assert!(counts[2] < 100, "{counts:?}");
    }

    #[test]
    fn fast_failing_endpoint_is_not_rewarded() {
        let counts = simulate(
            &PeakEwma::new(&members(3)),
            [10 * MS, 10 * MS, MS],
            [true, true, false],
            1000,
            2 * MS,
        );
        println!("peak_ewma, endpoint failing in 1 ms: {counts:?} of 1000 picks");
        assert!(counts[2] < 100, "{counts:?}");
    }

    #[test]
    fn lower_cost_wins_and_unusable_never() {
        let b = PeakEwma::new(&members(3));
        let stats = |i: usize| Stats {
            cost: [0.5, 0.01, 0.02][i],
            ..Stats::default()
        };
        let mut state = 5;
        let all = |_: usize| true;
        let not_one = |i: usize| i != 1;
        let mut counts = [0; 3];
        for _ in 0..300 {
            for usable in [&all as &dyn Fn(usize) -> bool, &not_one] {
                let ctx = Pick {
                    stats: &stats,
                    random: rng(&mut state),
                    ..Pick::simple(usable)
                };
                counts[b.pick(&ctx).unwrap()] += 1;
            }
        }
        // Endpoint 0 loses every draw; with 1 unusable, 2 wins them all.
        assert_eq!(counts[0], 0);
        assert!(counts[2] >= 300, "{counts:?}");
        let none = |_: usize| false;
        assert_eq!(b.pick(&Pick::simple(&none)), None);
    }
}
