//! One rate-limit state per key, for one `Limit`, in bounded memory, shared
//! by all worker threads.
//!
//! Keys (client address, user, route…) are byte strings hashed to 64 bits
//! with xxh3 and a random per-table seed; only the hash is stored. Two keys
//! with the same hash would share a state (a stricter limit for both, never
//! a looser one); with a million live keys the chance that any two collide
//! is about n² / 2⁶⁵ ≈ 3·10⁻⁸, and the random seed keeps it that way
//! against keys chosen to collide.
//!
//! The table is 64 shards, each a `Mutex<HashMap>` picked by bits 32–37 of
//! the hash (bits the maps themselves do not use for their bucket index or
//! tag), so that workers rarely wait for one another; a lock is held for
//! one map lookup and one small state update. The maps hash with the
//! identity: keys are already xxh3 output.
//!
//! Memory is bounded: at most `capacity()` keys, `max_keys` rounded up to a
//! multiple of 64 (`max_keys / 64` rounded up per shard, at least 1). Each
//! key costs a map slot of 33 bytes (8 of hash, 24 of `State`, 1 of
//! control); the maps are powers of two at most 7/8 full, so 38 to 75
//! bytes a key, plus 4 bytes × `limit` for a busy sliding log. A state
//! that is back to fresh (`State::is_idle`) carries no information and is
//! dropped: never stored in the first place when a request leaves it fresh
//! (a peek, a rejection of a new key), and removed by `sweep`, which the
//! caller runs periodically.
//!
//! When a new key finds its shard full, the shard is swept first. If that
//! leaves it more than 7/8 full, the entries that will be idle soonest are
//! evicted until it is 7/8 full: they carry the least information (a key
//! seen once long ago, a bucket nearly refilled), while a key being
//! rejected right now is far from idle and is kept, so a flood of fresh
//! keys cannot reset an abuser's limit. An evicted key starts afresh if it
//! comes back, which is the only way the table lets more through than the
//! limit; `evicted()` counts them for metrics. Evicting an eighth at a time
//! keeps the cost of a full shard to O(1) per new key, amortized.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::algorithm::{self, State};
use super::{Decision, Limit};

/// Number of shards: enough that 16 or so workers rarely meet on a lock.
pub const SHARDS: usize = 64;

type Map = HashMap<u64, State, BuildHasherDefault<KeyHasher>>;

pub struct Table {
    shards: Box<[Mutex<Map>]>,
    per_shard: usize,
    base: Instant,
    seed: u64,
    evicted: AtomicU64,
}

impl Table {
    /// A table for at most `max_keys` keys (rounded up to a multiple of
    /// 64), whose states count time from now.
    pub fn new(max_keys: usize) -> Table {
        Table::with_base(max_keys, Instant::now())
    }

    /// A table whose states count time from `base`: fixed and sliding
    /// windows are aligned to it. Clock reads before `base` count as
    /// `base`.
    pub fn with_base(max_keys: usize, base: Instant) -> Table {
        Table {
            shards: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            base,
            seed: RandomState::new().hash_one("levee ratelimit table"),
            evicted: AtomicU64::new(0),
        }
    }

    /// The hash `check` stores for `key`.
    pub fn hash(&self, key: &[u8]) -> u64 {
        xxh3_64_with_seed(key, self.seed)
    }

    /// Decides one request of `cost` (normally 1) for `key` at `now`, and
    /// counts it if allowed. A table serves one `Limit`: pass the same one
    /// every time (a state made for another algorithm starts afresh).
    pub fn check(&self, key: &[u8], limit: &Limit, now: Instant, cost: u64) -> Decision {
        self.check_hash(self.hash(key), limit, now, cost)
    }

    /// `check` for a key already hashed with `hash`.
    pub fn check_hash(&self, hash: u64, limit: &Limit, now: Instant, cost: u64) -> Decision {
        let mut map = self.shard(hash);
        if let Some(state) = map.get_mut(&hash) {
            return algorithm::check(limit, state, self.base, now, cost);
        }
        let mut state = State::new(limit);
        let decision = algorithm::check(limit, &mut state, self.base, now, cost);
        if state.is_idle(limit, self.base, now) {
            // Nothing to remember.
            return decision;
        }
        if map.len() >= self.per_shard {
            let evicted = make_room(&mut map, self.per_shard, limit, self.base, now);
            self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        }
        map.insert(hash, state);
        decision
    }

    /// Removes the keys whose state is back to fresh; returns how many.
    /// Run it every few seconds: it holds each shard's lock for one pass
    /// over the shard. It also gives memory back after a flood of keys.
    pub fn sweep(&self, limit: &Limit, now: Instant) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            let before = map.len();
            map.retain(|_, state| !state.is_idle(limit, self.base, now));
            removed += before - map.len();
            if map.capacity() >= 64 && map.len() < map.capacity() / 4 {
                let len = map.len();
                map.shrink_to(len * 2);
            }
        }
        removed
    }

    /// Keys stored now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys the table holds: `max_keys` rounded up to a multiple
    /// of `SHARDS`.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// Keys evicted, still live, because their shard was full: each one
    /// lost its count. For a metric; non-zero means `max_keys` is too
    /// small for the traffic (or a flood of keys is under way).
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// The instant states count time from.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// Heap bytes held, computed from the maps' capacities and the layout
    /// of the standard `HashMap` (one control byte per slot, plus a group
    /// of 16), and the sliding logs' buffers. Walks every entry.
    pub fn memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(u64, State)>() + 1;
        let mut bytes = std::mem::size_of::<Table>() + SHARDS * std::mem::size_of::<Mutex<Map>>();
        for shard in self.shards.iter() {
            let map = lock(shard);
            let buckets = match map.capacity() {
                0 => 0,
                c if c < 8 => c + 1,
                c => c / 7 * 8,
            };
            if buckets > 0 {
                bytes += buckets * slot + 16;
            }
            bytes += map.values().map(State::heap_bytes).sum::<usize>();
        }
        bytes
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Map> {
        lock(&self.shards[(hash >> 32) as usize % SHARDS])
    }
}

/// A panic while a lock was held left at worst one key's state half
/// updated, which is still a valid state: carry on.
fn lock(shard: &Mutex<Map>) -> MutexGuard<'_, Map> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Frees room in a full shard: drops idle keys, then if it is still more
/// than 7/8 full, evicts the keys that will be idle soonest down to 7/8.
/// Returns how many were evicted (idle ones not counted).
fn make_room(map: &mut Map, cap: usize, limit: &Limit, base: Instant, now: Instant) -> usize {
    map.retain(|_, state| !state.is_idle(limit, base, now));
    let target = cap - (cap / 8).max(1);
    if map.len() <= target {
        return 0;
    }
    let excess = map.len() - target;
    let mut idle_from: Vec<u64> = map.values().map(|s| s.idle_from(limit)).collect();
    let (_, &mut cut, _) = idle_from.select_nth_unstable(excess - 1);
    let below = idle_from.iter().filter(|&&f| f < cut).count();
    // All those idle before the cut, and enough of those idle at it.
    let mut ties = excess - below;
    map.retain(|_, state| {
        let f = state.idle_from(limit);
        let evict = f < cut || (f == cut && ties > 0);
        if f == cut && evict {
            ties -= 1;
        }
        !evict
    });
    excess
}

/// The maps' hasher: their keys are xxh3 hashes already.
#[derive(Clone, Copy, Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `u64` keys; this is for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Algorithm;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn bucket(limit: u64, burst: u64) -> Limit {
        Limit {
            algorithm: Algorithm::TokenBucket,
            limit,
            period: SEC,
            burst,
            delay: false,
        }
    }

    fn key(i: u64) -> [u8; 15] {
        let mut k = *b"client:\0\0\0\0\0\0\0\0";
        k[7..].copy_from_slice(&i.to_le_bytes());
        k
    }

    #[test]
    fn is_send_and_sync() {
        fn both<T: Send + Sync>() {}
        both::<Table>();
        both::<State>();
    }

    #[test]
    fn keys_are_independent() {
        let t0 = Instant::now();
        let table = Table::with_base(1000, t0);
        let limit = bucket(10, 3);
        for _ in 0..3 {
            assert!(table.check(b"alice", &limit, t0, 1).allowed);
        }
        let d = table.check(b"alice", &limit, t0, 1);
        assert_eq!((d.allowed, d.retry_after), (false, 100 * MS));
        // Bob has his own bucket, full.
        let d = table.check(b"bob", &limit, t0, 1);
        assert_eq!((d.allowed, d.remaining), (true, 2));
        assert_eq!(table.len(), 2);
        // The hashed form reaches the same state.
        let d = table.check_hash(table.hash(b"alice"), &limit, t0, 1);
        assert!(!d.allowed);
        assert!(
            table
                .check_hash(table.hash(b"alice"), &limit, t0 + 100 * MS, 1)
                .allowed
        );
        // Peeks and rejections of new keys store nothing.
        assert!(table.check(b"carol", &limit, t0, 0).allowed);
        assert!(!table.check(b"dave", &limit, t0, 4).allowed);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn idle_keys_are_swept() {
        let t0 = Instant::now();
        let table = Table::with_base(10_000, t0);
        let limit = bucket(10, 5);
        // 100 light keys (one token: full again at 100 ms) and 10 heavy
        // ones (five tokens: 500 ms).
        for i in 0..100 {
            table.check(&key(i), &limit, t0, 1);
        }
        for i in 100..110 {
            table.check(&key(i), &limit, t0, 5);
        }
        assert_eq!(table.len(), 110);
        assert_eq!(table.sweep(&limit, t0 + 99 * MS), 0);
        assert_eq!(table.sweep(&limit, t0 + 100 * MS), 100);
        assert_eq!(table.len(), 10);
        // Heavy keys kept their count.
        assert!(!table.check(&key(100), &limit, t0 + 100 * MS, 2).allowed);
        assert_eq!(table.sweep(&limit, t0 + 500 * MS), 10);
        assert!(table.is_empty());
        // Every algorithm sweeps.
        for algorithm in [
            Algorithm::LeakyBucket,
            Algorithm::FixedWindow,
            Algorithm::SlidingLog,
            Algorithm::SlidingCounter,
        ] {
            let limit = Limit { algorithm, ..limit };
            for i in 0..50 {
                table.check(&key(i), &limit, t0 + 100 * MS, 1);
            }
            assert_eq!(table.len(), 50);
            assert_eq!(table.sweep(&limit, t0 + 100 * MS), 0, "{algorithm:?}");
            assert_eq!(table.sweep(&limit, t0 + 10 * SEC), 50, "{algorithm:?}");
        }
    }

    #[test]
    fn bound_holds_and_evicts_the_least_informative() {
        let t0 = Instant::now();
        let table = Table::with_base(640, t0);
        assert_eq!(table.capacity(), 640);
        let limit = bucket(10, 10);
        // An abuser, rejected: full again only at 1 s.
        for _ in 0..11 {
            table.check(b"abuser", &limit, t0, 1);
        }
        // A flood of 100,000 new keys at once, one request each (full
        // again at 100 ms).
        for i in 0..100_000 {
            table.check(&key(i), &limit, t0, 1);
            if i % 1000 == 0 {
                assert!(table.len() <= 640);
            }
        }
        assert!(table.len() <= 640);
        assert!(table.evicted() > 90_000, "{}", table.evicted());
        // The abuser was kept: still rejected.
        let d = table.check(b"abuser", &limit, t0 + 50 * MS, 1);
        assert_eq!((d.allowed, d.retry_after), (false, 50 * MS));
        // Idle keys make room without evicting anything.
        let before = table.evicted();
        for i in 0..100_000 {
            table.check(
                &key(1_000_000 + i),
                &limit,
                t0 + 200 * MS + i as u32 * 2 * MS,
                1,
            );
        }
        // Each key is idle 100 ms after its request: at most 50 live at a
        // time, far below the bound.
        assert_eq!(table.evicted(), before);
        // Tiny tables still hold a key per shard.
        let table = Table::with_base(0, t0);
        assert_eq!(table.capacity(), SHARDS);
        for i in 0..1000 {
            table.check(&key(i), &limit, t0, 1);
        }
        assert!(table.len() <= SHARDS);
    }

    #[test]
    fn shared_by_threads() {
        // 8 threads, 2,000 requests each on one key limited to 1,000 an
        // hour, and a key of their own each: exactly 1,000 pass on the
        // shared key.
        let t0 = Instant::now();
        let table = Table::with_base(10_000, t0);
        let limit = Limit {
            algorithm: Algorithm::FixedWindow,
            limit: 1000,
            period: 3600 * SEC,
            burst: 0,
            delay: false,
        };
        let allowed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u64)
                .map(|n| {
                    let table = &table;
                    s.spawn(move || {
                        let mut shared = 0;
                        for i in 0..2000u32 {
                            let now = t0 + i * MS;
                            shared += usize::from(table.check(b"everyone", &limit, now, 1).allowed);
                            assert!(table.check(&key(n), &limit, now, 0).allowed);
                            if i < 1000 {
                                assert!(table.check(&key(n), &limit, now, 1).allowed);
                            }
                        }
                        shared
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 1000);
        assert_eq!(table.len(), 9);
    }

    /// Resident memory of the process in bytes, from /proc (Linux).
    fn rss() -> Option<usize> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    fn fill(n: u64, algorithm: Algorithm) -> (usize, Option<usize>) {
        let t0 = Instant::now();
        // Room for all: the shards fill unevenly (±1 % at this size).
        let table = Table::with_base(n as usize * 2, t0);
        let limit = Limit {
            algorithm,
            ..bucket(10, 10)
        };
        let before = rss();
        for i in 0..n {
            assert!(table.check(&key(i), &limit, t0, 1).allowed);
        }
        let after = rss();
        assert_eq!(table.len(), n as usize);
        assert_eq!(table.evicted(), 0);
        let computed = table.memory_bytes();
        let measured = before.zip(after).map(|(b, a)| a.saturating_sub(b));
        let per = |b: usize| b as f64 / n as f64;
        println!(
            "{n} keys ({algorithm:?}): {computed} bytes ({:.1} bytes/key) computed; RSS grew {} \
             bytes ({:.1} bytes/key, other tests running alongside add noise)",
            per(computed),
            measured.unwrap_or(0),
            per(measured.unwrap_or(0)),
        );
        (computed, measured)
    }

    #[test]
    fn memory_for_100k_keys() {
        let (computed, _) = fill(100_000, Algorithm::TokenBucket);
        // 100,000 keys over 64 shards: ~1,563 a shard, in 2,048 slots of 33
        // bytes.
        assert!(computed < 100_000 * 75, "{computed}");
        let (log, _) = fill(100_000, Algorithm::SlidingLog);
        assert!(log > computed);
    }

    #[test]
    fn memory_for_a_million_keys() {
        let (computed, measured) = fill(1_000_000, Algorithm::TokenBucket);
        println!(
            "1,000,000 keys: {computed} bytes ({:.1} bytes/key)",
            computed as f64 / 1e6
        );
        if let Some(m) = measured {
            println!(
                "1,000,000 keys, RSS: {m} bytes ({:.1} bytes/key)",
                m as f64 / 1e6
            );
        }
        assert!(computed < 1_000_000 * 75, "{computed}");
    }
}
