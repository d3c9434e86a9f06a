//! Smooth weighted round robin, as nginx does it.
//!
//! Each pick adds every usable endpoint's weight to its running score, takes
//! the highest score, and subtracts the total from the winner. Weights 5:3:1:1
//! yield exactly 5/3/1/1 of every 10 picks, interleaved (a b a c a b d a b a)
//! rather than bunched (a a a a a b b b c d), so no endpoint gets a burst.

use std::sync::Mutex;

use super::{Balancer, Pick};

pub struct WeightedRoundRobin {
    weights: Vec<i64>,
    // One short critical section per request; contention is bounded by the
    // number of workers.
    current: Mutex<Vec<i64>>,
}

impl WeightedRoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        WeightedRoundRobin {
            weights: weights.iter().map(|&w| i64::from(w)).collect(),
            current: Mutex::new(vec![0; weights.len()]),
        }
    }
}

impl Balancer for WeightedRoundRobin {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, &w) in self.weights.iter().enumerate() {
            if !(ctx.usable)(i) {
                continue;
            }
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(b: &WeightedRoundRobin, n: usize, usable: &dyn Fn(usize) -> bool) -> Vec<usize> {
        (0..n)
            .map(|_| b.pick(&Pick::simple(usable)).unwrap())
            .collect()
    }

    #[test]
    fn five_three_one_one_exact_and_interleaved() {
        let b = WeightedRoundRobin::new(&[5, 3, 1, 1]);
        let all = |_: usize| true;
        let seq = picks(&b, 10_000, &all);
        for window in seq.chunks(10) {
            let mut counts = [0; 4];
            for &i in window {
                counts[i] += 1;
            }
            assert_eq!(counts, [5, 3, 1, 1], "every 10 picks: {window:?}");
        }
        // Interleaved: no endpoint is picked more than twice in a row (the
        // sequence for 5:3:1:1 is a b a c a b d a b a, repeated).
        let longest = seq
            .chunk_by(|a, b| a == b)
            .map(|run| run.len())
            .max()
            .unwrap_or(0);
        assert!(longest <= 2, "longest run {longest}");
        assert_eq!(&seq[..10], &[0, 1, 0, 2, 0, 1, 3, 0, 1, 0]);
    }

    #[test]
    fn skips_unusable_and_keeps_ratio_among_the_rest() {
        let b = WeightedRoundRobin::new(&[5, 3, 1, 1]);
        let no_first = |i: usize| i != 0;
        let seq = picks(&b, 500, &no_first);
        let count = |k| seq.iter().filter(|&&i| i == k).count();
        assert_eq!((count(0), count(1), count(2), count(3)), (0, 300, 100, 100));
        let none = |_: usize| false;
        assert_eq!(b.pick(&Pick::simple(&none)), None);
    }
}
