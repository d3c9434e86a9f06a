//! Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam,
//! "Consistent Hashing with Bounded Loads", SODA 2018), as HAProxy's
//! `hash-balance-factor` and Envoy's `hash_balance_factor` do it.
//!
//! Plain consistent hashing sends every request for a key to the same
//! endpoint, so one hot key (a popular path, a big client) overloads its
//! owner while the others idle. Here each endpoint has a capacity,
//! `ceil(factor × (in flight + 1) × weight / usable weight)` — with equal
//! weights `ceil(factor × (in flight + 1) / usable endpoints)` — and a
//! request walks the ring from its key's point to the first usable endpoint
//! below capacity. No endpoint then ever holds more than `factor` times its
//! share of the requests in flight (plus one for rounding), while keys still
//! stick to their owner whenever it has room, so affinity is kept for all but
//! the overflow. Overflow walks the same ring, so it goes to the same next
//! endpoints on every instance and stays cache-friendly.
//!
//! `factor` is at least 1: with 1.25 an endpoint may carry 25 % above the
//! mean. Lower factors balance better and keep less affinity. The in-flight
//! total counts usable endpoints only: requests held by a down or draining
//! endpoint do not raise everybody else's capacity.

use super::consistent_hash::Ring;
use super::{Balancer, Member, Pick};

// Not yet built by `build()`; the lead wires it in.
pub struct BoundedLoad {
    ring: Ring,
    weights: Vec<u64>,
    factor: f64,
}

impl BoundedLoad {
    /// A ring of `vnodes × weight` points per member (150 is the usual
    /// number) whose members may carry up to `factor` (≥ 1; lower values
    /// are raised to 1) times their share of the requests in flight.
    pub fn new(members: &[Member], vnodes: usize, factor: f64) -> BoundedLoad {
        BoundedLoad {
            ring: Ring::new(members, vnodes),
            weights: members.iter().map(|m| u64::from(m.weight)).collect(),
            // Below 1 the capacities could not hold what is in flight (and
            // `max` also turns a NaN into 1).
            factor: factor.max(1.0),
        }
    }
}

impl Balancer for BoundedLoad {
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize> {
        let (mut in_flight, mut weight) = (0u64, 0u64);
        for i in (0..self.ring.members()).filter(|&i| (ctx.usable)(i)) {
            in_flight += (ctx.stats)(i).in_flight;
            weight += self.weights[i];
        }
        if weight == 0 {
            return None;
        }
        // Per unit of weight. The capacities add up to at least
        // factor × (in_flight + 1) > in_flight, so some usable member is
        // below its own and the walk always finds one.
        let unit = self.factor * (in_flight + 1) as f64 / weight as f64;
        let has_room = |i: usize| {
            (ctx.usable)(i)
                && ((ctx.stats)(i).in_flight as f64) < (unit * self.weights[i] as f64).ceil()
        };
        self.ring
            .walk(ctx.key)
            .find(|&i| has_room(i))
            // Floating-point edge: fall back to plain consistent hashing.
            .or_else(|| self.ring.owner(ctx.key, ctx.usable))
    }
}

#[cfg(test)]
mod tests {
    use super::super::consistent_hash::ConsistentHash;
    use super::super::consistent_hash::tests::{keys, members, owners};
    use super::super::{Stats, stable_hash};
    use super::*;
    use std::collections::VecDeque;

    const ALL: &dyn Fn(usize) -> bool = &|_| true;

    #[test]
    fn idle_cluster_behaves_like_consistent_hashing() {
        let (five, keys) = (members(5), keys());
        assert_eq!(
            owners(&BoundedLoad::new(&five, 150, 1.25), &five, &keys, ALL),
            owners(&ConsistentHash::new(&five, 150), &five, &keys, ALL)
        );
    }

    #[test]
    fn full_owner_overflows_to_next_member_on_the_ring() {
        let five = members(5);
        let b = BoundedLoad::new(&five, 150, 1.25);
        let key = stable_hash(b"hot");
        let owner = b.ring.walk(key).next().unwrap();
        let next = b.ring.walk(key).find(|&i| i != owner).unwrap();
        // 10 in flight, all on the owner: capacity ceil(1.25 × 11 / 5) = 3.
        let stats = |i: usize| Stats {
            in_flight: if i == owner { 10 } else { 0 },
            ..Stats::default()
        };
        let ctx = Pick {
            key,
            stats: &stats,
            ..Pick::simple(ALL)
        };
        assert_eq!(b.pick(&ctx), Some(next));
        let not_next = |i: usize| i != next;
        let ctx = Pick {
            usable: &not_next,
            ..ctx
        };
        let third = b.pick(&ctx).unwrap();
        assert!(third != owner && third != next);
        let none = |_: usize| false;
        assert_eq!(b.pick(&Pick::simple(&none)), None);
    }

    /// splitmix64: small, deterministic, good enough for a simulation.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Runs `steps` requests through `b`, one arriving per step, each held
    /// for `hold` steps; keys are Zipf(1.1) over 1,000 keys. Returns, per
    /// step, (the largest in-flight count, the mean in-flight count) after
    /// the arrival.
    fn simulate(b: &dyn Balancer, n: usize, steps: usize, hold: usize) -> Vec<(u64, f64)> {
        let keys: Vec<u64> = (0..1000)
            .map(|i| stable_hash(format!("key-{i}").as_bytes()))
            .collect();
        let mut cdf: Vec<f64> = (1..=keys.len())
            .scan(0.0, |sum, k| {
                *sum += 1.0 / (k as f64).powf(1.1);
                Some(*sum)
            })
            .collect();
        let total = *cdf.last().unwrap();
        cdf.iter_mut().for_each(|c| *c /= total);
        let mut rng = Rng(42);
        let mut in_flight = vec![0u64; n];
        let mut held = VecDeque::new();
        let mut out = Vec::new();
        for _ in 0..steps {
            if held.len() == hold {
                let done: usize = held.pop_front().unwrap();
                in_flight[done] -= 1;
            }
            let u = rng.unit();
            let key = keys[cdf.partition_point(|&c| c < u).min(keys.len() - 1)];
            let i = {
                let stats = |i: usize| Stats {
                    in_flight: in_flight[i],
                    ..Stats::default()
                };
                let ctx = Pick {
                    key,
                    stats: &stats,
                    ..Pick::simple(ALL)
                };
                b.pick(&ctx).unwrap()
            };
            in_flight[i] += 1;
            held.push_back(i);
            let mean = in_flight.iter().sum::<u64>() as f64 / n as f64;
            out.push((*in_flight.iter().max().unwrap(), mean));
        }
        out
    }

    #[test]
    fn zipf_keys_never_push_an_endpoint_past_the_bound() {
        let (n, factor, steps, hold) = (5, 1.25, 20_000, 100);
        let five = members(n);
        let bounded = simulate(&BoundedLoad::new(&five, 150, factor), n, steps, hold);
        let plain = simulate(&ConsistentHash::new(&five, 150), n, steps, hold);
        // In flight is a constant 100 (mean 20) once the first 100 requests
        // are in, so the bound is 1.25 × 20 + 1 = 26.
        let over = |run: &[(u64, f64)]| {
            run.iter()
                .filter(|&&(max, mean)| max as f64 > factor * mean + 1.0)
                .count()
        };
        let peak = |run: &[(u64, f64)]| run.iter().map(|r| r.0).max().unwrap();
        eprintln!(
            "bounded load: Zipf(1.1) over 1,000 keys, {n} endpoints, {hold} in flight (mean {}): \
             max in flight {} with factor {factor} (bound {}), {} with plain consistent hashing \
             ({} of {steps} steps over the bound)",
            hold / n,
            peak(&bounded),
            factor * (hold / n) as f64 + 1.0,
            peak(&plain),
            over(&plain)
        );
        assert_eq!(over(&bounded), 0);
        assert!(
            over(&plain) > steps / 2,
            "plain consistent hashing was expected to overload"
        );
    }
}
