//! Weighted least connections: the usable endpoint with the lowest
//! `(in_flight + 1) / weight`.
//!
//! The `+ 1` counts the request being placed: without it every idle endpoint
//! scores 0 whatever its weight, and a weight-1 endpoint would win an idle
//! tie against a weight-10 one as often as not. Scores are compared by
//! cross-multiplication in integers (`(a + 1) * wb < (b + 1) * wa`), so there
//! is no float rounding and no division by a zero weight: a weight-0 endpoint
//! loses to any other and is only picked when nothing else is usable.

use std::cmp::Ordering as Cmp;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::least_conn::least_by;
use super::{Balancer, Member, Pick};

pub struct WeightedLeastConn {
    weights: Vec<u32>,
    // Whose turn it is among tied endpoints (see `least_by`).
    turn: AtomicUsize,
}

impl WeightedLeastConn {
    pub fn new(members: &[Member]) -> WeightedLeastConn {
        WeightedLeastConn {
            weights: members.iter().map(|m| m.weight).collect(),
            turn: AtomicUsize::new(0),
        }
    }
}

/// Orders `(in_flight + 1) / weight` of two endpoints without dividing.
fn by_share((a_load, a_weight): &(u64, u32), (b_load, b_weight): &(u64, u32)) -> Cmp {
    // u64 × u32 fits in u128: no overflow whatever the counts.
    let a = (u128::from(*a_load) + 1) * u128::from(*b_weight);
    let b = (u128::from(*b_load) + 1) * u128::from(*a_weight);
    a.cmp(&b)
}

impl Balancer for WeightedLeastConn {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let key = |i: usize| ((ctx.stats)(i).in_flight, self.weights[i]);
        least_by(self.weights.len(), ctx, turn, key, by_share)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Stats;
    use super::*;
    use crate::cluster::balance::testing::weighted as members;

    /// Places `n` requests that never finish; returns the final loads.
    fn fill(b: &WeightedLeastConn, mut load: Vec<u64>, n: usize) -> Vec<u64> {
        let all = |_: usize| true;
        for _ in 0..n {
            let snapshot = load.clone();
            let stats = |i: usize| Stats {
                in_flight: snapshot[i],
                ..Stats::default()
            };
            let ctx = Pick {
                stats: &stats,
                ..Pick::simple(&all)
            };
            load[b.pick(&ctx).unwrap()] += 1;
        }
        load
    }

    #[test]
    fn load_follows_weights() {
        let b = WeightedLeastConn::new(&members(&[5, 3, 2]));
        assert_eq!(fill(&b, vec![0; 3], 100), [50, 30, 20]);
        // Idle: the heaviest endpoint takes the first request.
        let all = |_: usize| true;
        assert_eq!(b.pick(&Pick::simple(&all)), Some(0));
    }

    #[test]
    fn busy_endpoint_gets_no_new_requests() {
        let b = WeightedLeastConn::new(&members(&[2, 1, 1]));
        // Endpoint 0 (weight 2) holds 100 long requests: until the others
        // reach half that, everything goes to them.
        assert_eq!(fill(&b, vec![100, 0, 0], 80), [100, 40, 40]);
    }

    #[test]
    fn ties_are_spread_and_unusable_skipped() {
        let b = WeightedLeastConn::new(&members(&[1, 1, 1, 1]));
        let not_two = |i: usize| i != 2;
        let mut counts = [0; 4];
        for _ in 0..300 {
            counts[b.pick(&Pick::simple(&not_two)).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 0, 100]);
        let none = |_: usize| false;
        assert_eq!(b.pick(&Pick::simple(&none)), None);
    }

    #[test]
    fn zero_weight_only_as_a_last_resort() {
        let b = WeightedLeastConn::new(&members(&[0, 1]));
        assert_eq!(fill(&b, vec![0, 0], 10), [0, 10]);
        let only_zero = |i: usize| i == 0;
        assert_eq!(b.pick(&Pick::simple(&only_zero)), Some(0));
        assert_eq!(by_share(&(u64::MAX, 10_000), &(u64::MAX, 1)), Cmp::Less);
    }
}
