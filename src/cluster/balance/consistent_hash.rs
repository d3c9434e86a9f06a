//! Consistent hashing on a ring of virtual nodes (Karger et al.), as ketama
//! and Envoy's `RING_HASH` do it.
//!
//! Every member puts `vnodes × weight` points on a 64-bit ring, at
//! `stable_hash("{id}#{k}")`; a request goes to the member owning the first
//! point at or after its key, wrapping at the end. Adding or removing one of
//! N members moves only about 1/N of the keys, and only to or from that
//! member, so caches behind the proxy stay warm across scaling and reloads.
//! Points come from the member's id alone, never from its index or a
//! per-process seed, so every Levee instance builds the same ring.
//!
//! An unusable owner does not change the ring: its keys walk on to the next
//! distinct usable member (the "replicas" of the key), which is exactly
//! where they would go if the owner were removed, and they come back when it
//! is usable again. Keys of other members never move.

use super::{Balancer, Member, Pick, stable_hash};

/// Virtual nodes per unit of weight when the configuration says nothing (a
/// default of the configuration, so it lives there).
pub use crate::config::DEFAULT_VNODES;

/// Cap on the number of ring points (16 bytes each). Weights go up to
/// 10,000, and `vnodes × weight` points for such a member would take tens of
/// megabytes; above the cap every member's count is scaled down in
/// proportion. Ordinary rings (150 × a few hundred units of weight) are far
/// below it and are exactly `vnodes × weight`.
const MAX_POINTS: usize = 1 << 18;

/// The ring itself; shared with bounded-load hashing, which walks it with
/// another rule.
pub(super) struct Ring {
    /// (point, member index), sorted by point.
    points: Vec<(u64, u32)>,
    members: usize,
}

impl Ring {
    pub(super) fn new(members: &[Member], vnodes: usize) -> Ring {
        let vnodes = vnodes.max(1);
        let wanted: usize = members
            .iter()
            .map(|m| vnodes.saturating_mul(m.weight as usize))
            .fold(0, usize::saturating_add);
        let limit = MAX_POINTS.max(vnodes.saturating_mul(members.len()));
        let count = |m: &Member| {
            let n = vnodes.saturating_mul(m.weight as usize);
            if wanted <= limit || m.weight == 0 {
                n
            } else {
                // Scaled down, but a member with weight keeps at least one point.
                ((n as f64 * limit as f64 / wanted as f64) as usize).max(1)
            }
        };
        let mut points = Vec::with_capacity(wanted.min(limit + members.len()));
        for (i, m) in members.iter().enumerate() {
            for k in 0..count(m) {
                points.push((stable_hash(format!("{}#{k}", m.id).as_bytes()), i as u32));
            }
        }
        // Ties (two equal 64-bit points) are broken by id, not index, so
        // instances listing the endpoints in another order still agree.
        points.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| members[a.1 as usize].id.cmp(&members[b.1 as usize].id))
        });
        Ring {
            points,
            members: members.len(),
        }
    }

    pub(super) fn members(&self) -> usize {
        self.members
    }

    /// Member indices in ring order, starting at the first point ≥ `key`
    /// and going once round the ring.
    pub(super) fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|p| p.0 < key);
        let (after, before) = self.points.split_at(start);
        before.iter().chain(after).map(|p| p.1 as usize)
    }

    /// The first usable member at or after `key`.
    pub(super) fn owner(&self, key: u64, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut walk = self.walk(key);
        let first = walk.next()?;
        if usable(first) {
            return Some(first);
        }
        // The owner is out. Make sure the walk will end early before taking
        // it: with nothing usable it would visit every point of the ring.
        if !(0..self.members).any(usable) {
            return None;
        }
        walk.find(|&i| usable(i))
    }
}

pub struct ConsistentHash {
    ring: Ring,
}

impl ConsistentHash {
    /// A ring of `vnodes × weight` points per member ([`DEFAULT_VNODES`]
    /// unless configured).
    pub fn new(members: &[Member], vnodes: usize) -> ConsistentHash {
        ConsistentHash {
            ring: Ring::new(members, vnodes),
        }
    }
}

impl Balancer for ConsistentHash {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        self.ring.owner(ctx.key, ctx.usable)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: format!("10.0.0.{}:8080", i + 1),
                weight: 1,
            })
            .collect()
    }

    pub(crate) fn keys() -> Vec<u64> {
        (0..10_000)
            .map(|i| stable_hash(format!("key-{i}").as_bytes()))
            .collect()
    }

    /// The id each key lands on.
    pub(crate) fn owners(
        b: &dyn Balancer,
        members: &[Member],
        keys: &[u64],
        usable: &dyn Fn(usize) -> bool,
    ) -> Vec<String> {
        keys.iter()
            .map(|&key| {
                let ctx = Pick {
                    key,
                    ..Pick::simple(usable)
                };
                members[b.pick(&ctx).unwrap()].id.clone()
            })
            .collect()
    }

    pub(crate) fn moved(a: &[String], b: &[String]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    /// Coefficient of variation (standard deviation / mean) of per-member counts.
    pub(crate) fn cv(counts: &[usize]) -> f64 {
        let n = counts.len() as f64;
        let mean = counts.iter().sum::<usize>() as f64 / n;
        let var = counts
            .iter()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        var.sqrt() / mean
    }

    fn counts(owners: &[String], members: &[Member]) -> Vec<usize> {
        members
            .iter()
            .map(|m| owners.iter().filter(|o| **o == m.id).count())
            .collect()
    }

    const ALL: &dyn Fn(usize) -> bool = &|_| true;

    #[test]
    fn adding_a_sixth_moves_a_sixth_and_only_to_it() {
        let (five, six, keys) = (members(5), members(6), keys());
        let before = owners(&ConsistentHash::new(&five, 150), &five, &keys, ALL);
        let after = owners(&ConsistentHash::new(&six, 150), &six, &keys, ALL);
        let moved = moved(&before, &after);
        eprintln!(
            "consistent hash: adding a 6th of 6 moves {:.2} % of keys",
            moved * 100.0
        );
        assert!((moved - 1.0 / 6.0).abs() < 0.03, "moved {moved}");
        for (b, a) in before.iter().zip(&after) {
            assert!(a == b || *a == six[5].id, "a key moved from {b} to {a}");
        }
    }

    #[test]
    fn removing_one_moves_only_its_keys() {
        let (five, keys) = (members(5), keys());
        let four: Vec<Member> = five
            .iter()
            .filter(|m| m.id != five[2].id)
            .cloned()
            .collect();
        let before = owners(&ConsistentHash::new(&five, 150), &five, &keys, ALL);
        let after = owners(&ConsistentHash::new(&four, 150), &four, &keys, ALL);
        for (b, a) in before.iter().zip(&after) {
            if *b != five[2].id {
                assert_eq!(a, b, "a key not on the removed endpoint moved");
            }
        }
        let moved = moved(&before, &after);
        eprintln!(
            "consistent hash: removing 1 of 5 moves {:.2} % of keys",
            moved * 100.0
        );
        assert!((moved - 0.2).abs() < 0.03, "moved {moved}");
    }

    #[test]
    fn unusable_owner_hands_keys_to_next_member_and_gets_them_back() {
        let (five, keys) = (members(5), keys());
        let ch = ConsistentHash::new(&five, 150);
        let before = owners(&ch, &five, &keys, ALL);
        let not_two = |i: usize| i != 2;
        let during = owners(&ch, &five, &keys, &not_two);
        // Same as removing it from the ring: its keys go to the next distinct
        // member, everybody else's stay.
        let four: Vec<Member> = five
            .iter()
            .filter(|m| m.id != five[2].id)
            .cloned()
            .collect();
        let removed = owners(&ConsistentHash::new(&four, 150), &four, &keys, ALL);
        assert_eq!(during, removed);
        for (b, d) in before.iter().zip(&during) {
            assert!(*d != five[2].id);
            if *b != five[2].id {
                assert_eq!(b, d);
            }
        }
        // Its keys are spread over the others, not dumped on one neighbour.
        let spread = counts(
            &during
                .iter()
                .zip(&before)
                .filter(|(_, b)| **b == five[2].id)
                .map(|(d, _)| d.clone())
                .collect::<Vec<_>>(),
            &five,
        );
        assert!(spread.iter().filter(|&&c| c > 0).count() == 4, "{spread:?}");
        assert_eq!(owners(&ch, &five, &keys, ALL), before);
    }

    #[test]
    fn none_usable_or_empty() {
        let ch = ConsistentHash::new(&members(5), 150);
        let none = |_: usize| false;
        assert_eq!(ch.pick(&Pick::simple(&none)), None);
        assert_eq!(ConsistentHash::new(&[], 150).pick(&Pick::simple(ALL)), None);
        let only_four = |i: usize| i == 4;
        for key in keys().into_iter().take(100) {
            let ctx = Pick {
                key,
                ..Pick::simple(&only_four)
            };
            assert_eq!(ch.pick(&ctx), Some(4));
        }
    }

    #[test]
    fn order_of_members_does_not_matter() {
        let five = members(5);
        let mut shuffled = five.clone();
        shuffled.reverse();
        let keys = keys();
        assert_eq!(
            owners(&ConsistentHash::new(&five, 150), &five, &keys, ALL),
            owners(&ConsistentHash::new(&shuffled, 150), &shuffled, &keys, ALL)
        );
    }

    #[test]
    fn weights_are_honoured() {
        let mut three = members(3);
        three[0].weight = 2;
        let keys = keys();
        let c = counts(
            &owners(&ConsistentHash::new(&three, 150), &three, &keys, ALL),
            &three,
        );
        eprintln!("consistent hash: weights 2:1:1 give {c:?}");
        let share = c[0] as f64 / keys.len() as f64;
        assert!((share - 0.5).abs() < 0.05, "{c:?}");
    }

    #[test]
    fn more_vnodes_spread_keys_more_evenly() {
        let keys = keys();
        // One ring is one random draw, so besides the five endpoints used
        // everywhere else, average over 20 clusters of five with other ids.
        let cluster = |c: usize| -> Vec<Member> {
            (0..5)
                .map(|i| Member {
                    id: format!("10.{c}.0.{}:8080", i + 1),
                    weight: 1,
                })
                .collect()
        };
        let cv_of = |five: &[Member], v: usize| {
            cv(&counts(
                &owners(&ConsistentHash::new(five, v), five, &keys, ALL),
                five,
            ))
        };
        let mut cvs = Vec::new();
        for v in [50, 150, 500] {
            let one = cv_of(&members(5), v);
            let mean = (0..20).map(|c| cv_of(&cluster(c), v)).sum::<f64>() / 20.0;
            eprintln!(
                "consistent hash: {v} vnodes x 5 endpoints: CV {one:.3}, mean of 20 clusters {mean:.3}"
            );
            cvs.push((one, mean));
        }
        // Measured (deterministic: rings and keys are fixed hashes): CV
        // 0.066 / 0.114 / 0.021 for the usual five endpoints at 50 / 150 /
        // 500 vnodes, and 0.113 / 0.074 / 0.037 on average over 20 clusters.
        // Theory says about 1/sqrt(vnodes) (0.14, 0.08, 0.045) from the ring,
        // plus ~0.02 of sampling noise from 10,000 keys; a single ring
        // scatters widely around that (150 happened to draw worse than 50),
        // hence the trend is asserted on the average. Bounds sit just above
        // the measurements.
        assert!(cvs[2].0 < cvs[0].0);
        assert!(cvs[0].1 > cvs[1].1 && cvs[1].1 > cvs[2].1, "{cvs:?}");
        assert!(cvs[1].0 < 0.13, "CV(150) {}", cvs[1].0);
        assert!(
            cvs[0].1 < 0.13 && cvs[1].1 < 0.085 && cvs[2].1 < 0.045,
            "{cvs:?}"
        );
    }
}
