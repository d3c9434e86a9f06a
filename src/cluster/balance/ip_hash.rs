//! Client-IP affinity, as nginx's `ip_hash` does it.
//!
//! The endpoint is the request's key (the caller hashes the client address
//! into `ctx.key`) modulo the total weight, walked down the members' weights:
//! with equal weights that is plain `key mod n`. It is cheap and needs no
//! table, but unlike a hash ring, adding or removing an endpoint remaps
//! almost every client; use consistent hashing or Maglev when that matters.
//!
//! The modulus is taken over all members, usable or not, so one endpoint
//! going down does not reshuffle everybody. Its clients are rehashed (a
//! fixed mixing of the key and the attempt number) until they land on a
//! usable endpoint, which scatters them over the others instead of piling
//! them onto the next neighbour; after 20 misses, as in nginx, the first
//! usable endpoint after the last candidate takes the request. All of it is
//! a pure function of the key, so every instance agrees.

use super::{Balancer, Member, Pick};

/// Rehash attempts before the linear fallback (nginx's number).
const REHASHES: u32 = 20;

// Not yet built by `build()`; the lead wires it in.
pub struct IpHash {
    /// Running sum of weights: member `i` owns `[ends[i-1], ends[i])`.
    ends: Vec<u64>,
}

impl IpHash {
    pub fn new(members: &[Member]) -> IpHash {
        let ends = members
            .iter()
            .scan(0u64, |sum, m| {
                *sum += u64::from(m.weight);
                Some(*sum)
            })
            .collect();
        IpHash { ends }
    }

    fn slot(&self, hash: u64) -> usize {
        let total = *self.ends.last().unwrap_or(&0);
        if total == 0 {
            // Weights are validated to be ≥ 1; be total anyway.
            return (hash % self.ends.len() as u64) as usize;
        }
        let w = hash % total;
        self.ends.partition_point(|&end| end <= w)
    }
}

/// splitmix64's finalizer: a fixed bijection that scrambles every bit, so
/// successive rehashes of one key are independent of each other.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Balancer for IpHash {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        let n = self.ends.len();
        if n == 0 {
            return None;
        }
        let mut hash = ctx.key;
        let mut i = self.slot(hash);
        for attempt in 0..REHASHES {
            if (ctx.usable)(i) {
                return Some(i);
            }
            hash = mix(hash ^ u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            i = self.slot(hash);
        }
        (0..n).map(|k| (i + k) % n).find(|&j| (ctx.usable)(j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::balance::stable_hash;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                id: format!("10.0.0.{}:8080", i + 1),
                weight,
            })
            .collect()
    }

    fn pick(b: &IpHash, key: u64, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        b.pick(&Pick {
            key,
            ..Pick::simple(usable)
        })
    }

    fn keys() -> Vec<u64> {
        (0..10_000)
            .map(|i| stable_hash(format!("192.0.2.{}", i).as_bytes()))
            .collect()
    }

    #[test]
    fn key_mod_n_and_deterministic() {
        let b = IpHash::new(&members(&[1; 5]));
        let all = |_: usize| true;
        for key in keys() {
            assert_eq!(pick(&b, key, &all), Some((key % 5) as usize));
        }
        let mut counts = [0; 5];
        for key in keys() {
            counts[pick(&b, key, &all).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&c| (1800..2200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn weights_are_honoured() {
        let b = IpHash::new(&members(&[3, 1]));
        let all = |_: usize| true;
        let first = keys()
            .into_iter()
            .filter(|&k| pick(&b, k, &all) == Some(0))
            .count();
        assert!((7300..7700).contains(&first), "{first}");
    }

    #[test]
    fn unusable_endpoint_scatters_its_clients_and_no_one_else_moves() {
        let b = IpHash::new(&members(&[1; 5]));
        let all = |_: usize| true;
        let not_two = |i: usize| i != 2;
        let mut scattered = [0; 5];
        for key in keys() {
            let before = pick(&b, key, &all).unwrap();
            let during = pick(&b, key, &not_two).unwrap();
            assert_ne!(during, 2);
            if before == 2 {
                scattered[during] += 1;
                // Deterministic: the same client goes to the same substitute.
                assert_eq!(pick(&b, key, &not_two), Some(during));
            } else {
                assert_eq!(before, during);
            }
            assert_eq!(pick(&b, key, &all), Some(before));
        }
        // Spread over all four others, not handed to endpoint 3 alone.
        assert!(
            scattered
                .iter()
                .enumerate()
                .all(|(i, &c)| i == 2 || c > 300),
            "{scattered:?}"
        );
    }

    #[test]
    fn falls_back_to_any_usable_and_none_when_none() {
        let b = IpHash::new(&members(&[1; 50]));
        let only_seven = |i: usize| i == 7;
        for key in keys().into_iter().take(500) {
            assert_eq!(pick(&b, key, &only_seven), Some(7));
        }
        let none = |_: usize| false;
        assert_eq!(pick(&b, 1, &none), None);
        assert_eq!(pick(&IpHash::new(&[]), 1, &|_| true), None);
    }
}
