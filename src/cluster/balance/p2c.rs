//! Power of two choices: draw two distinct usable endpoints at random and
//! send the request to the one with fewer requests in flight.
//!
//! Random picks alone let some endpoint collect a run of requests; scanning
//! every endpoint for the least loaded (least_conn.rs) sends every worker,
//! and every Levee instance, to the same momentarily idle endpoint at once.
//! Two random candidates avoid both: the maximum load drops from about
//! log n / log log n to log log n (Mitzenmacher), and different pickers
//! rarely agree. This is the classic form, as in linkerd's `p2c`: weights
//! are not used, and the in-flight count is the only load signal
//! (peak_ewma.rs compares latency cost instead).

use super::random::below;
use super::{Balancer, Member, Pick};

pub struct PowerOfTwo {
    len: usize,
}

impl PowerOfTwo {
    pub fn new(members: &[Member]) -> PowerOfTwo {
        PowerOfTwo { len: members.len() }
    }
}

impl Balancer for PowerOfTwo {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        match two_usable(self.len, ctx)? {
            (a, Some(b)) if (ctx.stats)(b).in_flight < (ctx.stats)(a).in_flight => Some(b),
            (a, _) => Some(a),
        }
    }
}

/// Two distinct usable endpoints drawn from `ctx.random` (high half for the
/// first, low half for the second), or the only usable one. A tie between
/// them may go to the first: it is as random as the second.
pub(super) fn two_usable(len: usize, ctx: &Pick<'_>) -> Option<(usize, Option<usize>)> {
    let n = (0..len).filter(|&i| (ctx.usable)(i)).count() as u64;
    if n == 0 {
        return None;
    }
    // `below` wants bits at the top: shift each half up.
    let a = below(ctx.random & 0xffff_ffff_0000_0000, n);
    // Drawn among the other n - 1, then stepped over `a`: distinct and
    // uniform without a retry loop.
    let mut b = below(ctx.random << 32, n.saturating_sub(1));
    if b >= a {
        b += 1;
    }
    let mut first = None;
    let mut second = None;
    for (k, i) in (0..len).filter(|&i| (ctx.usable)(i)).enumerate() {
        let k = k as u64;
        if k == a {
            first = Some(i);
        } else if k == b && n > 1 {
            second = Some(i);
        }
    }
    match (first, second) {
        (Some(a), b) => Some((a, b)),
        // Only if `usable` changed its mind between the two scans.
        (None, b) => b.map(|b| (b, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Stats;
    use super::super::random::Random;
    use super::*;
    use crate::cluster::balance::testing::{members, rng};

    /// One pick per step; each request holds its endpoint for 1 to 50 steps.
    /// Returns the highest in-flight count any endpoint reached.
    fn max_load(b: &dyn Balancer, endpoints: usize, picks: usize, seed: u64) -> u64 {
        const HOLD: usize = 50;
        let mut state = seed;
        let mut load = vec![0u64; endpoints];
        let mut done: Vec<Vec<usize>> = vec![Vec::new(); HOLD + 1];
        let mut max = 0;
        let all = |_: usize| true;
        for step in 0..picks {
            for i in std::mem::take(&mut done[step % (HOLD + 1)]) {
                load[i] -= 1;
            }
            let snapshot = load.clone();
            let stats = |i: usize| Stats {
                in_flight: snapshot[i],
                ..Stats::default()
            };
            let random = rng(&mut state);
            let ctx = Pick {
                stats: &stats,
                random,
                ..Pick::simple(&all)
            };
            let i = b.pick(&ctx).unwrap();
            load[i] += 1;
            max = max.max(load[i]);
            let hold = 1 + (rng(&mut state) % HOLD as u64) as usize;
            done[(step + hold) % (HOLD + 1)].push(i);
        }
        max
    }

    #[test]
    fn max_load_well_below_random() {
        let m = members(10);
        let p2c = max_load(&PowerOfTwo::new(&m), 10, 100_000, 7);
        let random = max_load(&Random::new(&m), 10, 100_000, 7);
        println!("max in flight over 100000 picks, 10 endpoints: p2c {p2c}, random {random}");
        assert!(p2c < random, "p2c {p2c}, random {random}");
        assert!(p2c * 3 <= random * 2, "p2c {p2c}, random {random}");
    }

    #[test]
    fn busy_endpoint_gets_no_new_requests() {
        let b = PowerOfTwo::new(&members(3));
        let stats = |i: usize| Stats {
            in_flight: [100, 3, 5][i],
            ..Stats::default()
        };
        let all = |_: usize| true;
        let mut state = 1;
        let mut counts = [0; 3];
        for _ in 0..1000 {
            let ctx = Pick {
                stats: &stats,
                random: rng(&mut state),
                ..Pick::simple(&all)
            };
            counts[b.pick(&ctx).unwrap()] += 1;
        }
        // The busiest endpoint loses every draw; the least busy wins both of
        // its pairs, the middle one only the pair with the busiest.
        assert_eq!(counts[0], 0);
        assert!(counts[1] > 600 && counts[2] > 250, "{counts:?}");
    }

    #[test]
    fn two_distinct_usable_candidates() {
        let mut state = 3;
        let not_odd = |i: usize| i.is_multiple_of(2);
        for _ in 0..10_000 {
            let ctx = Pick {
                random: rng(&mut state),
                ..Pick::simple(&not_odd)
            };
            let (a, b) = two_usable(7, &ctx).unwrap();
            let b = b.unwrap();
            assert!(a != b && a.is_multiple_of(2) && b.is_multiple_of(2) && a < 7 && b < 7);
        }
        for random in [0, u64::MAX] {
            let all = |_: usize| true;
            let ctx = Pick {
                random,
                ..Pick::simple(&all)
            };
            let (a, b) = two_usable(2, &ctx).unwrap();
            assert_eq!(a + b.unwrap(), 1);
        }
        let only_three = |i: usize| i == 3;
        let ctx = Pick::simple(&only_three);
        assert_eq!(two_usable(5, &ctx), Some((3, None)));
        assert_eq!(PowerOfTwo::new(&members(5)).pick(&ctx), Some(3));
        let none = |_: usize| false;
        assert_eq!(
            PowerOfTwo::new(&members(5)).pick(&Pick::simple(&none)),
            None
        );
    }
}
