//! Round robin: each endpoint in turn, skipping unusable ones, weighted.
//!
//! nginx's and HAProxy's round robin honour weights, and so does this one:
//! when the weights differ it is smooth weighted round robin (the
//! `weighted_round_robin` algorithm), so weights 3:1:1 give 3/1/1 of every 5
//! picks, interleaved. When they are all equal (the common case) a lock-free
//! counter does the same job.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::weighted_round_robin::WeightedRoundRobin;
use super::{Balancer, Pick};

pub enum RoundRobin {
    Equal(EqualTurns),
    Weighted(WeightedRoundRobin),
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        if weights.windows(2).all(|w| w[0] == w[1]) {
            RoundRobin::Equal(EqualTurns {
                len: weights.len(),
                next: AtomicUsize::new(0),
            })
        } else {
            RoundRobin::Weighted(WeightedRoundRobin::new(weights))
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        match self {
            RoundRobin::Equal(e) => e.pick(ctx),
            RoundRobin::Weighted(w) => w.pick(ctx),
        }
    }
}

/// Plain turns, for endpoints of equal weight.
pub struct EqualTurns {
    len: usize,
    next: AtomicUsize,
}

impl EqualTurns {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        // Turns go round the usable endpoints only: an unusable one (a
        // backup, an unhealthy one) must not hand its turn to the endpoint
        // after it, which would then get twice its share.
        let usable = (0..self.len).filter(|&i| (ctx.usable)(i)).count();
        if usable == 0 {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % usable;
        (0..self.len).filter(|&i| (ctx.usable)(i)).nth(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_and_skips_unusable() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        let all = |_: usize| true;
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick(&Pick::simple(&all)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let not_one = |i: usize| i != 1;
        let picks: Vec<_> = (0..4)
            .map(|_| rr.pick(&Pick::simple(&not_one)).unwrap())
            .collect();
        assert!(!picks.contains(&1));
        // The skipped endpoint's turns are shared evenly, not handed to its neighbour.
        let not_two = |i: usize| i != 2;
        let rr = RoundRobin::new(&[1, 1, 1]);
        let picks: Vec<_> = (0..30)
            .map(|_| rr.pick(&Pick::simple(&not_two)).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 15);
        let none = |_: usize| false;
        assert_eq!(rr.pick(&Pick::simple(&none)), None);
        assert_eq!(RoundRobin::new(&[]).pick(&Pick::simple(&all)), None);
    }

    #[test]
    fn honours_weights_smoothly() {
        let rr = RoundRobin::new(&[3, 1, 1]);
        let all = |_: usize| true;
        let picks: Vec<_> = (0..500)
            .map(|_| rr.pick(&Pick::simple(&all)).unwrap())
            .collect();
        for window in picks.chunks(5) {
            let mut counts = [0; 3];
            for &i in window {
                counts[i] += 1;
            }
            assert_eq!(counts, [3, 1, 1], "every 5 picks: {window:?}");
        }
        // Interleaved, not bunched: the heavy endpoint never three in a row.
        assert_eq!(&picks[..5], &[0, 1, 0, 2, 0]);
        // Equal weights (any value) are plain turns.
        let rr = RoundRobin::new(&[4, 4]);
        let picks: Vec<_> = (0..4)
            .map(|_| rr.pick(&Pick::simple(&all)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 0, 1]);
    }
}
