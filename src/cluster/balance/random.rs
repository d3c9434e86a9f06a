//! Random: each request to a usable endpoint drawn at random, in proportion
//! to its weight.
//!
//! No shared state at all, so nothing to contend on between workers and
//! nothing that several Levee instances could fall into step on (round
//! robins started together send their first requests to the same endpoint).
//! The price is variance: over short spans some endpoint gets a run of
//! requests, which is what power-of-two-choices (p2c.rs) corrects.

use super::{Balancer, Member, Pick};

pub struct Random {
    weights: Vec<u64>,
}

impl Random {
    pub fn new(members: &[Member]) -> Random {
        Random {
            weights: members.iter().map(|m| u64::from(m.weight)).collect(),
        }
    }
}

/// `random` scaled to `0..n`: the high bits of the product, which unlike
/// `random % n` favour no value noticeably.
pub(super) fn below(random: u64, n: u64) -> u64 {
    ((u128::from(random) * u128::from(n)) >> 64) as u64
}

impl Balancer for Random {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        let usable = || (0..self.weights.len()).filter(|&i| (ctx.usable)(i));
        let total: u64 = usable().map(|i| self.weights[i]).sum();
        if total == 0 {
            // Nothing usable, or only weight-0 endpoints: those share evenly
            // rather than failing the request.
            let n = usable().count();
            if n == 0 {
                return None;
            }
            return usable().nth(below(ctx.random, n as u64) as usize);
        }
        let mut r = below(ctx.random, total);
        for i in usable() {
            if r < self.weights[i] {
                return Some(i);
            }
            r -= self.weights[i];
        }
        // Only if `usable` changed its mind between the two scans.
        usable().last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::balance::testing::weighted as members;

    /// Picks for `n` random numbers spread evenly over the whole u64 range.
    fn counts(b: &Random, n: u64, usable: &dyn Fn(usize) -> bool) -> Vec<u64> {
        let mut counts = vec![0; b.weights.len()];
        let step = u64::MAX / n;
        for k in 0..n {
            let ctx = Pick {
                random: k * step + step / 2,
                ..Pick::simple(usable)
            };
            counts[b.pick(&ctx).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn shares_follow_weights() {
        let b = Random::new(&members(&[1, 1, 1, 1]));
        let all = |_: usize| true;
        assert_eq!(counts(&b, 4000, &all), [1000; 4]);
        let b = Random::new(&members(&[5, 3, 2]));
        assert_eq!(counts(&b, 1000, &all), [500, 300, 200]);
    }

    #[test]
    fn never_unusable() {
        let b = Random::new(&members(&[5, 3, 2]));
        let not_first = |i: usize| i != 0;
        assert_eq!(counts(&b, 1000, &not_first), [0, 600, 400]);
        let none = |_: usize| false;
        assert_eq!(b.pick(&Pick::simple(&none)), None);
        let all = |_: usize| true;
        assert_eq!(Random::new(&[]).pick(&Pick::simple(&all)), None);
        // Extremes of the random number stay in range.
        for random in [0, u64::MAX] {
            let ctx = Pick {
                random,
                ..Pick::simple(&not_first)
            };
            assert!(matches!(b.pick(&ctx), Some(1 | 2)));
        }
    }

    #[test]
    fn weight_zero_only_as_a_last_resort() {
        let b = Random::new(&members(&[0, 1, 0]));
        let all = |_: usize| true;
        assert_eq!(counts(&b, 100, &all), [0, 100, 0]);
        let not_one = |i: usize| i != 1;
        assert_eq!(counts(&b, 100, &not_one), [50, 0, 50]);
    }
}
