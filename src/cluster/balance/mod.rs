//! Choosing an endpoint: one small trait, one file per algorithm.
//!
//! A balancer is built from a cluster's endpoints when a snapshot is built and
//! is asked for one index per request. It never sees health machinery
//! directly: the caller passes `usable`, and the balancer only picks among
//! endpoints for which it returns true. Balancer state (counters, current
//! weights, hash rings) belongs to the snapshot; what must outlive a reload
//! (in-flight counts, latency estimates) lives in the endpoints' live state
//! and reaches the balancer through `Pick::stats`.

mod bounded_load;
mod consistent_hash;
mod ip_hash;
mod least_conn;
mod least_response_time;
mod maglev;
mod p2c;
mod peak_ewma;
pub(crate) mod random;
mod round_robin;
mod weighted_least_conn;
mod weighted_round_robin;

pub use bounded_load::BoundedLoad;
pub use consistent_hash::{ConsistentHash, DEFAULT_VNODES};
pub use ip_hash::IpHash;
pub use least_conn::LeastConn;
pub use least_response_time::LeastResponseTime;
pub use maglev::Maglev;
pub use p2c::PowerOfTwo;
pub use peak_ewma::PeakEwma;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted_least_conn::WeightedLeastConn;
pub use weighted_round_robin::WeightedRoundRobin;

use std::time::Instant;

use crate::config::{Balance, ClusterConfig};

/// An endpoint as a balancer sees it when the balancer is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Stable identity across instances and reloads (the address, as text):
    /// hash rings are built from it, so every Levee instance agrees.
    pub id: String,
    pub weight: u32,
}

/// Live numbers of one endpoint at pick time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Requests in flight to it now.
    pub in_flight: u64,
    /// Latency estimate in seconds (EWMA of response-head times); 0 while
    /// nothing has been measured.
    pub latency: f64,
    /// Peak-EWMA cost: latency estimate that rises at once on a slow or
    /// failed response and decays slowly, times (in_flight + 1).
    pub cost: f64,
}

/// What a balancer may look at when it picks.
pub struct Pick<'a> {
    /// Whether endpoint `i` may take this request (healthy, not draining, not
    /// already tried).
    pub usable: &'a dyn Fn(usize) -> bool,
    /// Live numbers of endpoint `i`.
    pub stats: &'a dyn Fn(usize) -> Stats,
    /// xxh3 hash of the request's affinity key (client IP, a header, a
    /// cookie or the path, per the cluster's `hash_key`); 0 without one.
    pub key: u64,
    /// A random number drawn for this pick (random, p2c).
    pub random: u64,
    pub now: Instant,
}

impl Pick<'_> {
    /// A context with every endpoint usable and idle; for tests.
    pub fn simple<'a>(usable: &'a dyn Fn(usize) -> bool) -> Pick<'a> {
        Pick {
            usable,
            stats: &|_| Stats::default(),
            key: 0,
            random: 0,
            now: Instant::now(),
        }
    }
}

pub trait Balancer: Send + Sync {
    /// The index of the endpoint that should take the request, or `None`
    /// when no endpoint is usable.
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize>;
}

/// Builds the cluster's balancer over these endpoints.
pub fn build(config: &ClusterConfig, members: &[Member]) -> Box<dyn Balancer> {
    let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
    let vnodes = *config.virtual_nodes.get_ref();
    match config.balance {
        Balance::RoundRobin => Box::new(RoundRobin::new(&weights)),
        Balance::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(&weights)),
        // Least connections honours weights as nginx's and HAProxy's do:
        // with unequal weights it compares in-flight requests per unit of
        // weight (equal weights give the same order as plain counts).
        Balance::LeastConn if weights.windows(2).any(|w| w[0] != w[1]) => {
            Box::new(WeightedLeastConn::new(members))
        }
        Balance::LeastConn => Box::new(LeastConn::new(members)),
        Balance::WeightedLeastConn => Box::new(WeightedLeastConn::new(members)),
        Balance::IpHash => Box::new(IpHash::new(members)),
        Balance::ConsistentHash => match &config.hash_balance_factor {
            Some(factor) => Box::new(BoundedLoad::new(members, vnodes, *factor.get_ref())),
            None => Box::new(ConsistentHash::new(members, vnodes)),
        },
        Balance::Maglev => Box::new(Maglev::new(members)),
        Balance::Random => Box::new(Random::new(members)),
        Balance::P2c => Box::new(PowerOfTwo::new(members)),
        Balance::LeastResponseTime => Box::new(LeastResponseTime::new(members)),
        Balance::PeakEwma => Box::new(PeakEwma::new(members)),
    }
}

/// Stable 64-bit hash for anything that must agree between Levee instances
/// (hash rings, Maglev tables, affinity keys): xxh3 with a fixed seed, never
/// a per-process random seed.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Helpers shared by the balancers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::{Duration, Instant};

    use super::{Balancer, Member, Pick, Stats};
    use crate::cluster::ewma::Latency;

    /// Members with these weights, addressed `10.0.0.i:80`.
    pub fn weighted(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                id: format!("10.0.0.{i}:80"),
                weight,
            })
            .collect()
    }

    /// `n` members of weight 1.
    pub fn members(n: usize) -> Vec<Member> {
        weighted(&vec![1; n])
    }

    /// splitmix64 with a fixed seed: reproducible draws.
    pub fn rng(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Sends one request every `gap` to three endpoints that answer after
    /// `rtt[i]` with success `ok[i]`, feeding each response to the endpoint's
    /// estimator on a simulated clock. Returns the picks per endpoint.
    pub fn simulate(
        b: &dyn Balancer,
        rtt: [Duration; 3],
        ok: [bool; 3],
        picks: usize,
        gap: Duration,
    ) -> [usize; 3] {
        let est: Vec<Latency> = (0..3)
            .map(|_| Latency::new(Duration::from_secs(10)))
            .collect();
        let mut in_flight = [0u64; 3];
        let mut pending: Vec<(Instant, usize)> = Vec::new();
        let mut counts = [0; 3];
        let mut state = 42;
        let mut now = Instant::now();
        let all = |_: usize| true;
        for _ in 0..picks {
            now += gap;
            pending.sort_by_key(|&(t, _)| t);
            while pending.first().is_some_and(|&(t, _)| t <= now) {
                let (t, i) = pending.remove(0);
                in_flight[i] -= 1;
                est[i].record(rtt[i], ok[i], t);
            }
            let stats = |i: usize| Stats {
                in_flight: in_flight[i],
                latency: est[i].latency(now),
                cost: est[i].cost(in_flight[i], now),
            };
            let ctx = Pick {
                stats: &stats,
                random: rng(&mut state),
                now,
                ..Pick::simple(&all)
            };
            let Some(i) = b.pick(&ctx) else { break };
            counts[i] += 1;
            in_flight[i] += 1;
            pending.push((now + rtt[i], i));
        }
        counts
    }
}

#[cfg(test)]
mod weight_tests {
    use super::testing::{rng, weighted};
    use super::*;

    /// Every algorithm that accepts a weight honours it: with weights 3:1,
    /// requests that never finish (so in-flight counts build up) and random
    /// keys, the heavy endpoint takes about three quarters of the picks.
    /// (p2c, least_response_time and peak_ewma refuse weights in the
    /// configuration instead; see config::ignored.)
    #[test]
    fn every_weighted_algorithm_honours_weights() {
        let members = weighted(&[3, 1]);
        for (balance, extra) in [
            ("round_robin", ""),
            ("weighted_round_robin", ""),
            ("least_conn", ""),
            ("weighted_least_conn", ""),
            ("ip_hash", ""),
            ("consistent_hash", ""),
            ("consistent_hash", "hash_balance_factor = 1.25"),
            ("maglev", ""),
            ("random", ""),
        ] {
            let config: ClusterConfig =
                toml::from_str(&format!("name = \"c\"\nbalance = \"{balance}\"\n{extra}\n"))
                    .expect("cluster config");
            let b = build(&config, &members);
            let mut in_flight = [0u64; 2];
            let mut state = 7;
            let all = |_: usize| true;
            for _ in 0..4000 {
                let snapshot = in_flight;
                let stats = |i: usize| Stats {
                    in_flight: snapshot[i],
                    ..Stats::default()
                };
                let ctx = Pick {
                    stats: &stats,
                    key: rng(&mut state),
                    random: rng(&mut state),
                    ..Pick::simple(&all)
                };
                let i = b.pick(&ctx).expect("a pick");
                in_flight[i] += 1;
            }
            let share = in_flight[0] as f64 / 4000.0;
            assert!(
                (0.70..=0.80).contains(&share),
                "{balance} {extra}: weight 3 of 4 took {share:.3} of the picks"
            );
        }
    }
}

thread_local! {
    static RANDOM: std::cell::Cell<u64> = std::cell::Cell::new({
        // Distinct per thread and per process run; quality needs are modest
        // (spreading picks), so a seeded xorshift is enough.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        (t ^ (u64::from(std::process::id()) << 32)) | 1
    });
}

/// A random number for balancers that draw (random, p2c, peak_ewma).
pub fn next_random() -> u64 {
    RANDOM.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}
