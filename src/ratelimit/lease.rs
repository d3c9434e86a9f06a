//! Leases: a Redis rule's requests spent locally from small batches taken
//! from the shared count, so that the request path rarely waits for Redis.
//!
//! An instance asks Redis for `n` requests' worth at once (the rule's own
//! script with cost `n`: the shared count is charged before any of them
//! is admitted) and admits up to `n` requests locally, without a round
//! trip. So every admitted request was counted in Redis first, by the same
//! algorithm as in exact mode; what changes is *when*: a request may be
//! admitted up to the lease's lifetime (`ttl`) after Redis counted it.
//! Hence the bound, for every algorithm:
//!
//! > the requests all instances admit in any interval of length L are at
//! > most what exact mode admits in an interval of length L + `ttl`.
//!
//! `ttl` is a twentieth of the period, between 1 ms and 1 s, so over a
//! period the over-admission is at most 5 % of the rate (a token bucket of
//! 100 per second: at most 5 more in any window, nothing more over a long
//! run). A fixed-window lease also ends with its window, so fixed windows
//! stay exact. The other way round, a lease that expires unspent wastes its
//! rest (under-admission), at most `n − 1` per lease, and `n` is kept small.
//!
//! Lease size: at most a tenth of the rule's capacity (the bucket size, or
//! the limit per window), at least 1. `auto` (the default) sizes each lease
//! from the key's recent rate on this instance: about a quarter of what it
//! spends in a `ttl`, so a busy key renews a few times per `ttl` (and a
//! lease outlives a drop of the key's rate to a quarter before it would
//! expire unspent) and a quiet one takes 1 at a time (exact mode's cost,
//! and no waste). A
//! configured fraction takes that share of the capacity every time.
//!
//! Renewal ahead of need: each key holds the current lease and room for
//! the next; when the current one is down to half and no renewal is in
//! flight, the request that notices asks for the next in the background
//! and is answered at once. Only a key whose leases are both empty waits
//! for Redis (its first request, or one that outruns the renewal).
//!
//! Refusals are leased too: when Redis refuses, the key is refused locally
//! until Redis's `retry_after` has passed, without asking again (nothing
//! could pass before then).
//!
//! The core is synchronous and takes the clock (`now`); `rules` does the
//! Redis calls around it.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::redis::capacity;
use super::{Algorithm, Decision, Limit};
pub use crate::config::ratelimit::{LeaseSize, MAX_FRACTION};

const SHARDS: usize = 16;
const TTL_MIN: Duration = Duration::from_millis(1);
const TTL_MAX: Duration = Duration::from_secs(1);
/// After a failed renewal, the key renews in the background no sooner
/// than this (its requests go on spending the lease in hand meanwhile).
const RENEW_BACKOFF: Duration = Duration::from_millis(100);

/// How long a lease taken for `limit` may be spent.
pub fn ttl(limit: &Limit) -> Duration {
    (limit.period / 20).clamp(TTL_MIN, TTL_MAX)
}

/// Whether `limit` can be leased: a shaping leaky bucket gives each
/// request its own delay, which only Redis can compute.
pub fn leasable(limit: &Limit) -> bool {
    !(limit.algorithm == Algorithm::LeakyBucket && limit.delay)
}

/// What the request path does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Decided locally. With `renew`, ask Redis for a lease of that size in
    /// the background ([`Leases::granted`] with `take = false`).
    Local {
        decision: Decision,
        renew: Option<u64>,
    },
    /// No lease: ask Redis for one of this size and wait
    /// ([`Leases::granted`] with `take = true`).
    Acquire(u64),
    /// A renewal is in flight and nothing is left, or the table is full:
    /// check this one request in Redis (exact mode).
    Exact,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    current: u64,
    current_until: Instant,
    next: u64,
    next_until: Instant,
    renewing: bool,
    /// No background renewal before then (after a failed one).
    renew_after: Instant,
    /// Refused by Redis until then.
    denied_until: Option<Instant>,
    /// Spent since `since`, for the rate of `auto`.
    spent: u64,
    since: Instant,
    /// The size of the last lease asked for.
    size: u64,
    /// From Redis's last answer, for the headers.
    remaining: u64,
    reset: Duration,
    retry_after: Duration,
}

impl Lease {
    fn new(now: Instant) -> Lease {
        Lease {
            current: 0,
            current_until: now,
            next: 0,
            next_until: now,
            renewing: false,
            renew_after: now,
            denied_until: None,
            spent: 0,
            since: now,
            size: 1,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
        }
    }

    /// Drops what has expired; moves the next lease up when the current
    /// one is spent.
    fn settle(&mut self, now: Instant) {
        if self.current_until <= now {
            self.current = 0;
        }
        if self.next_until <= now {
            self.next = 0;
        }
        if self.current == 0 && self.next > 0 {
            self.current = std::mem::take(&mut self.next);
            self.current_until = self.next_until;
        }
        if self.denied_until.is_some_and(|d| d <= now) {
            self.denied_until = None;
        }
    }

    fn idle(&self, now: Instant) -> bool {
        !self.renewing
            && self.current_until <= now
            && self.next_until <= now
            && self.denied_until.is_none_or(|d| d <= now)
    }

    fn allowed(&self, limit: &Limit) -> Decision {
        Decision {
            allowed: true,
            limit: limit.limit,
            remaining: self.remaining + self.current + self.next,
            reset: self.reset,
            retry_after: Duration::ZERO,
            delay: Duration::ZERO,
        }
    }
}

/// The leases of one rule's tier, per key, in bounded memory.
pub struct Leases {
    shards: Box<[Mutex<HashMap<u64, Lease>>]>,
    per_shard: usize,
    size: LeaseSize,
    seed: u64,
}

impl Leases {
    /// Leases for at most `max_keys` keys at once (beyond, a new key's
    /// requests go to Redis one by one).
    pub fn new(size: LeaseSize, max_keys: usize) -> Leases {
        Leases {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            size,
            seed: RandomState::new().hash_one("levee ratelimit leases"),
        }
    }

    fn shard(&self, key: &[u8]) -> (u64, std::sync::MutexGuard<'_, HashMap<u64, Lease>>) {
        let h = xxh3_64_with_seed(key, self.seed);
        let shard = &self.shards[(h >> 32) as usize % SHARDS];
        (h, shard.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The largest lease for `limit`.
    fn cap(limit: &Limit) -> u64 {
        let capacity = match limit.algorithm {
            Algorithm::TokenBucket | Algorithm::LeakyBucket => capacity(limit),
            _ => limit.limit,
        };
        ((capacity as f64 * MAX_FRACTION) as u64).max(1)
    }

    /// The size of the next lease of a key that spent `spent` since
    /// `since`.
    fn next_size(&self, limit: &Limit, lease: &Lease, now: Instant) -> u64 {
        let cap = Leases::cap(limit);
        match self.size {
            LeaseSize::Fraction(f) => {
                let capacity = cap as f64 / MAX_FRACTION;
                ((capacity * f.min(MAX_FRACTION)) as u64).clamp(1, cap)
            }
            LeaseSize::Auto => {
                if lease.spent == 0 {
                    return lease.size.clamp(1, cap);
                }
                // At least 100 µs, so that a burst at one instant does not
                // read as an infinite rate.
                let elapsed = now.saturating_duration_since(lease.since).as_secs_f64();
                let rate = lease.spent as f64 / elapsed.max(1e-4);
                let want = rate * ttl(limit).as_secs_f64() / 4.0;
                (want.ceil() as u64).clamp(1, cap)
            }
        }
    }

    /// A request for `key`: decided from the lease, or what to ask Redis.
    pub fn take(&self, key: &[u8], limit: &Limit, now: Instant) -> Take {
        let (h, mut shard) = self.shard(key);
        if !shard.contains_key(&h) {
            if shard.len() >= self.per_shard {
                shard.retain(|_, l| !l.idle(now));
                if shard.len() >= self.per_shard {
                    return Take::Exact;
                }
            }
            shard.insert(h, Lease::new(now));
        }
        let Some(lease) = shard.get_mut(&h) else {
            return Take::Exact;
        };
        lease.settle(now);
        // Tokens already leased are spent first, even when Redis has since
        // refused a renewal: they were counted there.
        if lease.current > 0 {
            lease.current -= 1;
            lease.spent += 1;
            let decision = lease.allowed(limit);
            let mut renew = None;
            if !lease.renewing
                && lease.next == 0
                && lease.denied_until.is_none()
                && now >= lease.renew_after
                && lease.current * 2 <= lease.size
            {
                let size = self.next_size(limit, lease, now);
                lease.renewing = true;
                lease.size = size;
                lease.spent = 0;
                lease.since = now;
                renew = Some(size);
            }
            return Take::Local { decision, renew };
        }
        if let Some(until) = lease.denied_until {
            return Take::Local {
                decision: Decision {
                    allowed: false,
                    limit: limit.limit,
                    remaining: 0,
                    reset: lease.reset,
                    retry_after: until - now,
                    delay: Duration::ZERO,
                },
                renew: None,
            };
        }
        if lease.renewing {
            return Take::Exact;
        }
        let size = self.next_size(limit, lease, now);
        lease.renewing = true;
        lease.size = size;
        lease.spent = 0;
        lease.since = now;
        Take::Acquire(size)
    }

    /// Redis answered a lease request of `asked` with `decision` (`got`
    /// requests' worth granted when allowed). With `take`, the request that
    /// waited for it takes one, and this returns its decision.
    pub fn granted(
        &self,
        key: &[u8],
        limit: &Limit,
        got: u64,
        decision: &Decision,
        take: bool,
        now: Instant,
    ) -> Decision {
        let (h, mut shard) = self.shard(key);
        let lease = shard.entry(h).or_insert_with(|| Lease::new(now));
        lease.renewing = false;
        lease.remaining = decision.remaining;
        lease.reset = decision.reset;
        lease.retry_after = decision.retry_after;
        lease.settle(now);
        if !decision.allowed {
            lease.denied_until = Some(now + decision.retry_after.max(Duration::from_micros(1)));
            return Decision {
                allowed: false,
                limit: limit.limit,
                remaining: 0,
                reset: decision.reset,
                retry_after: decision.retry_after,
                delay: Duration::ZERO,
            };
        }
        lease.denied_until = None;
        let mut until = now + ttl(limit);
        if limit.algorithm == Algorithm::FixedWindow && !decision.reset.is_zero() {
            // Not beyond the window the requests were counted in.
            until = until.min(now + decision.reset);
        }
        if lease.current == 0 {
            lease.current = got;
            lease.current_until = until;
        } else {
            lease.next = got;
            lease.next_until = until;
        }
        if take {
            lease.settle(now);
            if lease.current > 0 {
                lease.current -= 1;
                lease.spent += 1;
            }
        }
        lease.allowed(limit)
    }

    /// A lease request failed: the key may ask again, in the background
    /// only after [`RENEW_BACKOFF`].
    pub fn failed(&self, key: &[u8], now: Instant) {
        let (h, mut shard) = self.shard(key);
        if let Some(lease) = shard.get_mut(&h) {
            lease.renewing = false;
            lease.renew_after = now + RENEW_BACKOFF;
        }
    }

    /// Drops the keys with nothing leased; returns how many are left.
    pub fn sweep(&self, now: Instant) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.retain(|_, l| !l.idle(now));
                s.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn limit(algorithm: Algorithm, n: u64) -> Limit {
        Limit {
            algorithm,
            limit: n,
            period: SEC,
            burst: n,
            delay: false,
        }
    }

    fn ok(remaining: u64) -> Decision {
        Decision {
            allowed: true,
            limit: 0,
            remaining,
            reset: Duration::from_millis(500),
            retry_after: Duration::ZERO,
            delay: Duration::ZERO,
        }
    }

    #[test]
    fn a_lease_is_spent_locally_and_renewed_ahead() {
        let leases = Leases::new(LeaseSize::Fraction(0.1), 100);
        let l = limit(Algorithm::TokenBucket, 1000);
        let t0 = Instant::now();
        assert_eq!(leases.take(b"k", &l, t0), Take::Acquire(100));
        // While the first lease is in flight, others go to Redis one by one.
        assert_eq!(leases.take(b"k", &l, t0), Take::Exact);
        let d = leases.granted(b"k", &l, 100, &ok(900), true, t0);
        assert!(d.allowed);
        assert_eq!(d.remaining, 999);
        // 49 more locally; the 50th leaves half and asks for the next.
        for _ in 0..48 {
            assert!(matches!(
                leases.take(b"k", &l, t0),
                Take::Local { renew: None, .. }
            ));
        }
        let Take::Local { decision, renew } = leases.take(b"k", &l, t0) else {
            panic!()
        };
        assert!(decision.allowed);
        assert_eq!(renew, Some(100));
        leases.granted(b"k", &l, 100, &ok(800), false, t0);
        // 50 + 100 left: 150 local decisions, then a wait for Redis.
        for i in 0..150 {
            match leases.take(b"k", &l, t0) {
                Take::Local { decision, .. } => assert!(decision.allowed, "{i}"),
                other => panic!("{i}: {other:?}"),
            }
        }
        assert!(matches!(
            leases.take(b"k", &l, t0),
            Take::Acquire(_) | Take::Exact
        ));
    }

    #[test]
    fn a_failed_renewal_is_not_retried_at_once() {
        let leases = Leases::new(LeaseSize::Fraction(0.1), 100);
        // A 10 s period: the lease lives 500 ms, longer than the backoff.
        let l = Limit {
            period: 10 * SEC,
            ..limit(Algorithm::TokenBucket, 1000)
        };
        let t0 = Instant::now();
        leases.take(b"k", &l, t0);
        leases.granted(b"k", &l, 100, &ok(900), true, t0);
        let renews = |at: Instant, n: usize| {
            (0..n)
                .filter(|_| {
                    matches!(
                        leases.take(b"k", &l, at),
                        Take::Local { renew: Some(_), .. }
                    )
                })
                .count()
        };
        assert_eq!(renews(t0, 60), 1);
        leases.failed(b"k", t0);
        // The lease in hand is still spent, without a renewal per request.
        assert_eq!(renews(t0 + Duration::from_millis(10), 10), 0);
        assert_eq!(renews(t0 + RENEW_BACKOFF, 10), 1);
    }

    #[test]
    fn leases_expire_after_their_ttl() {
        let leases = Leases::new(LeaseSize::Fraction(0.1), 100);
        let l = limit(Algorithm::TokenBucket, 1000);
        assert_eq!(ttl(&l), Duration::from_millis(50));
        let t0 = Instant::now();
        assert_eq!(leases.take(b"k", &l, t0), Take::Acquire(100));
        leases.granted(b"k", &l, 100, &ok(900), true, t0);
        let late = t0 + Duration::from_millis(50);
        // Expired: the 99 left are not spent.
        assert!(matches!(leases.take(b"k", &l, late), Take::Acquire(_)));
        assert_eq!(leases.sweep(late), 1, "renewing keys stay");
        leases.failed(b"k", late);
        assert_eq!(leases.sweep(late), 0);
    }

    #[test]
    fn a_fixed_window_lease_ends_with_its_window() {
        let leases = Leases::new(LeaseSize::Fraction(0.1), 100);
        let l = limit(Algorithm::FixedWindow, 1000);
        let t0 = Instant::now();
        leases.take(b"k", &l, t0);
        let mut d = ok(900);
        d.reset = Duration::from_millis(10);
        leases.granted(b"k", &l, 100, &d, true, t0);
        assert!(matches!(
            leases.take(b"k", &l, t0 + Duration::from_millis(9)),
            Take::Local { .. }
        ));
        assert!(matches!(
            leases.take(b"k", &l, t0 + Duration::from_millis(10)),
            Take::Acquire(_)
        ));
    }

    #[test]
    fn a_refusal_is_kept_until_retry_after() {
        let leases = Leases::new(LeaseSize::Auto, 100);
        let l = limit(Algorithm::TokenBucket, 10);
        let t0 = Instant::now();
        assert_eq!(leases.take(b"k", &l, t0), Take::Acquire(1));
        let refused = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset: SEC,
            retry_after: Duration::from_millis(100),
            delay: Duration::ZERO,
        };
        assert!(!leases.granted(b"k", &l, 0, &refused, true, t0).allowed);
        let Take::Local { decision, renew } = leases.take(b"k", &l, t0 + Duration::from_millis(40))
        else {
            panic!()
        };
        assert!(!decision.allowed && renew.is_none());
        assert_eq!(decision.retry_after, Duration::from_millis(60));
        assert!(matches!(
            leases.take(b"k", &l, t0 + Duration::from_millis(100)),
            Take::Acquire(1)
        ));
    }

    #[test]
    fn auto_sizes_from_the_rate_within_a_tenth() {
        let leases = Leases::new(LeaseSize::Auto, 100);
        let l = limit(Algorithm::TokenBucket, 5_000);
        let t0 = Instant::now();
        assert_eq!(leases.take(b"k", &l, t0), Take::Acquire(1));
        leases.granted(b"k", &l, 1, &ok(4_999), true, t0);
        // 1 spent in 1 ms: 1000/s, a quarter of a ttl (50 ms) of it is 13.
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(leases.take(b"k", &l, t1), Take::Acquire(13));
        leases.granted(b"k", &l, 13, &ok(4_987), true, t1);
        // Six more at once (70,000/s) would want 875: capped at a tenth of
        // the bucket.
        let mut renew = None;
        for _ in 0..12 {
            if let Take::Local { renew: Some(n), .. } = leases.take(b"k", &l, t1) {
                renew = Some(n);
            }
        }
        assert_eq!(renew, Some(500));
        // A quiet key takes one at a time.
        let quiet = limit(Algorithm::TokenBucket, 100);
        assert_eq!(leases.take(b"q", &quiet, t0), Take::Acquire(1));
        assert!(!leasable(&Limit {
            delay: true,
            ..limit(Algorithm::LeakyBucket, 10)
        }));
    }

    #[test]
    fn memory_is_bounded() {
        let leases = Leases::new(LeaseSize::Auto, 16);
        let l = limit(Algorithm::TokenBucket, 100);
        let t0 = Instant::now();
        let mut exact = 0;
        for i in 0..100u32 {
            if leases.take(&i.to_be_bytes(), &l, t0) == Take::Exact {
                exact += 1;
            }
        }
        assert!(exact > 0);
        assert!(leases.sweep(t0) <= 16 + SHARDS);
    }
}
