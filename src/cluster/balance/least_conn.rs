//! Least connections: the usable endpoint with the fewest requests in flight.
//!
//! In-flight counts live in the endpoints' live state, so they are shared by
//! every worker and survive reloads; this balancer only reads them. It suits
//! requests of very uneven length (uploads, long polls) where round robin
//! would keep feeding an endpoint still busy with yesterday's slow ones.

use std::cmp::Ordering as Cmp;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, Member, Pick};

pub struct LeastConn {
    len: usize,
    // Whose turn it is among equally loaded endpoints (see `least_by`).
    turn: AtomicUsize,
}

impl LeastConn {
    pub fn new(members: &[Member]) -> LeastConn {
        LeastConn {
            len: members.len(),
            turn: AtomicUsize::new(0),
        }
    }
}

impl Balancer for LeastConn {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        least_by(self.len, ctx, turn, |i| (ctx.stats)(i).in_flight, u64::cmp)
    }
}

/// The usable endpoint with the least `key` (as ordered by `cmp`); ties go to
/// the `turn`-th of the tied endpoints, modulo their number.
///
/// Ties are the common case on a lightly loaded cluster (every endpoint
/// idle), so they must be shared evenly: always taking the first would send
/// all of them to endpoint 0, and merely rotating where the scan starts would
/// give the endpoint after an unusable one twice its share. Hence two passes:
/// find the least key and count the ties, then take the `turn`-th tie. Keys
/// are read twice; if they moved in between (other workers), the first
/// pass's winner stands.
pub(super) fn least_by<K>(
    len: usize,
    ctx: &Pick<'_>,
    turn: usize,
    key: impl Fn(usize) -> K,
    cmp: impl Fn(&K, &K) -> Cmp,
) -> Option<usize> {
    let mut best: Option<(usize, K)> = None;
    let mut ties = 0;
    for i in (0..len).filter(|&i| (ctx.usable)(i)) {
        let k = key(i);
        match best.as_ref().map(|(_, b)| cmp(&k, b)) {
            None | Some(Cmp::Less) => {
                best = Some((i, k));
                ties = 1;
            }
            Some(Cmp::Equal) => ties += 1,
            Some(Cmp::Greater) => {}
        }
    }
    let (first, least) = best?;
    if ties == 1 {
        return Some(first);
    }
    let nth = turn % ties;
    (0..len)
        .filter(|&i| (ctx.usable)(i) && cmp(&key(i), &least) == Cmp::Equal)
        .nth(nth)
        .or(Some(first))
}

#[cfg(test)]
mod tests {
    use super::super::Stats;
    use super::*;
    use crate::cluster::balance::testing::members;

    #[test]
    fn busy_endpoint_gets_no_new_requests() {
        let b = LeastConn::new(&members(3));
        // Endpoint 0 holds 50 long requests; new picks are held too.
        let mut load = [50u64, 0, 0];
        let all = |_: usize| true;
        for _ in 0..60 {
            let snapshot = load;
            let stats = |i: usize| Stats {
                in_flight: snapshot[i],
                ..Stats::default()
            };
            let ctx = Pick {
                stats: &stats,
                ..Pick::simple(&all)
            };
            let i = b.pick(&ctx).unwrap();
            load[i] += 1;
        }
        assert_eq!(load, [50, 30, 30]);
    }

    #[test]
    fn ties_are_spread_evenly() {
        let b = LeastConn::new(&members(4));
        let all = |_: usize| true;
        let mut counts = [0; 4];
        for _ in 0..400 {
            counts[b.pick(&Pick::simple(&all)).unwrap()] += 1;
        }
        assert_eq!(counts, [100; 4]);
        // An unusable endpoint does not hand its share to its neighbour.
        let not_two = |i: usize| i != 2;
        let mut counts = [0; 4];
        for _ in 0..300 {
            counts[b.pick(&Pick::simple(&not_two)).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 0, 100]);
    }

    #[test]
    fn never_unusable() {
        let b = LeastConn::new(&members(3));
        let stats = |i: usize| Stats {
            in_flight: [5, 0, 9][i],
            ..Stats::default()
        };
        let not_one = |i: usize| i != 1;
        let ctx = Pick {
            stats: &stats,
            ..Pick::simple(&not_one)
        };
        for _ in 0..10 {
            assert_eq!(b.pick(&ctx), Some(0));
        }
        let none = |_: usize| false;
        assert_eq!(b.pick(&Pick::simple(&none)), None);
        let all = |_: usize| true;
        assert_eq!(LeastConn::new(&[]).pick(&Pick::simple(&all)), None);
    }
}
