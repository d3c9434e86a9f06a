//! The five rate-limiting algorithms as pure state machines: one small
//! `State` per key, advanced by `check` with the clock passed in, so every
//! decision is deterministic and testable to the nanosecond.
//!
//! # Time
//!
//! States store times as offsets from a `base` instant that the caller owns
//! (the `table` keeps one per table) and passes to every call, so that a
//! state needs no 16-byte `Instant`. Offsets are `u64` nanoseconds (584
//! years of range), except the sliding log's timestamps (see below). A `now`
//! before `base` counts as `base`. A `now` earlier than one already seen
//! (another worker's clock read) is handled as stated per algorithm below;
//! it never panics or rewinds a window.
//!
//! # Semantics, shared with the Lua versions in `redis`
//!
//! - `limit` requests per `period`; the interval between two requests at
//!   the full rate is `T = period / limit`, computed exactly (see token
//!   bucket). Only allowed requests consume quota: a rejected request
//!   changes nothing. `cost` is how many requests one call counts as
//!   (normally 1); `cost = 0` is always allowed, changes nothing, and so
//!   reports the quota (a peek).
//! - `Decision.limit` is `limit`. `remaining` is how many cost-1 requests
//!   would be allowed right now, after this one. `reset` is the time until
//!   the quota is whole again (0 when it is whole now). `retry_after`, when
//!   rejected, is the exact earliest time a request of the same cost would
//!   be allowed (assuming nothing else is allowed meanwhile): a request at
//!   `now + retry_after` passes, one a nanosecond earlier does not. It is
//!   always > 0 when rejected.
//! - A request that can never pass (`limit = 0`, or a cost above the
//!   capacity: `burst` for a token bucket, `burst + 1` for a leaky bucket,
//!   `limit` for the others) is rejected with `retry_after = period`, a
//!   nominal back-off: there is no right answer.
//! - A `period` of zero counts as one nanosecond.
//!
//! ## Token bucket (`TokenBucket`)
//!
//! Capacity `burst` (0 counts as 1), starts full, refills at `limit` tokens
//! per `period`. Implemented as GCRA: the state is the theoretical arrival
//! time `tat` at which the bucket is full again; a request of cost `c` at
//! `now` is allowed iff `max(tat, now) + c·T − now ≤ burst·T`, and then
//! `tat = max(tat, now) + c·T`. To be exact when `T` is not a whole number
//! of nanoseconds (3 per second), all of this runs in units of
//! `1 / limit` ns, in which `T` is exactly `period` in ns; `tat` is stored
//! as whole nanoseconds plus a remainder in those units. So 10 per second
//! is exactly one per 100 ms, and 3 per second exactly 3000 per 1000 s,
//! with no drift.
//!
//! ## Leaky bucket (`LeakyBucket`), NGINX `limit_req` semantics
//!
//! The same GCRA meter with room for `burst` requests beyond the one being
//! served (capacity `burst + 1`): `burst` requests arriving at once all
//! fit, plus the current one. Without `delay` (NGINX `nodelay`) allowed
//! requests pass at once: this is then exactly a token bucket of capacity
//! `burst + 1`. With `delay` (a shaper), an allowed request gets
//! `Decision.delay` = the time until its slot, `max(tat, now) + (c − 1)·T −
//! now`; a request whose delay would exceed `burst·T` is rejected. At
//! 10/s with burst 5, six requests at once get delays 0, 100, …, 500 ms and
//! the seventh is rejected. Note NGINX counts the burst in requests, as
//! here.
//!
//! ## Fixed window (`FixedWindow`)
//!
//! Windows are `[base + k·period, base + (k+1)·period)`: aligned to the
//! `base` instant (the table's creation), not to the wall clock. The Lua
//! side aligns to the Unix epoch instead; both are aligned windows, and
//! the two never share state. At most `limit` per window, so up to
//! `2·limit` can pass in a short span across a boundary (tested). A `now`
//! in a window older than the state's counts in the state's window.
//!
//! ## Sliding log (`SlidingLog`)
//!
//! Exact: at most `limit` allowed requests in any half-open interval of
//! length `period`. One timestamp per allowed unit of cost, oldest first,
//! at most `limit` of them: `u32` milliseconds after a per-log origin,
//! rounded *up* to the millisecond. So an allowed request counts from its
//! arrival until at most 1 ms after `period` has passed: the guarantee
//! holds, and a request may be rejected up to 1 ms longer than an exact-ns
//! log would. Memory is 4 bytes × `limit` per busy key: use a counter for
//! large limits. A `now` earlier than the newest timestamp is recorded as
//! the newest. Periods longer than 30 days count as 30 days.
//!
//! ## Sliding window counter (`SlidingCounter`), Cloudflare's estimate
//!
//! Aligned windows as for the fixed window, with a count for the current
//! window and the previous one. With `e` the time elapsed in the current
//! window, `estimate = prev·(1 − e/period) + cur`, and a request is allowed
//! iff `estimate + cost ≤ limit`; computed exactly in integers as
//! `prev·(period − e) + (cur + cost)·period ≤ limit·period`. No 2× burst
//! at a boundary: right after it the previous window still weighs (almost)
//! fully. Counts are `u32`: limits above 2³² − 1 count as 2³² − 1.
//!
//! Under sustained overload it passes `limit − 1` per period, not `limit`:
//! a full previous window weighs a little until the very end of the
//! current one, so the current never quite reaches `limit`. That is 10 %
//! short at 10 per period, 1 % at 100, and at a limit of 1 one request
//! every other period (tested). It is the formula as Cloudflare gives it;
//! rounding the weighted previous count down would fix it at the cost of
//! letting up to one request a period through beyond the limit.
//!
//! # Idle states
//!
//! `State::is_idle` is true when forgetting the state would give the same
//! decisions as keeping it (bucket full again, windows passed, log
//! expired): the table drops such states to bound its memory.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Algorithm, Decision, Limit};

const NS_PER_MS: u64 = 1_000_000;

/// The longest period a sliding log honours, so that its timestamps fit in
/// `u32` milliseconds (49.7 days) after rebasing.
const MAX_LOG_PERIOD_NS: u64 = 30 * 24 * 3600 * 1_000_000_000;

/// One key's state, for one `Limit`. 24 bytes, plus the timestamps of a
/// sliding log on the heap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State(Kind);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// Token and leaky bucket: the theoretical arrival time is
    /// `tat + frac / limit` ns after base, `frac < limit`.
    Gcra { tat: u64, frac: u64 },
    /// Fixed window: `count` allowed in window number `window`.
    Fixed { window: u64, count: u64 },
    /// Sliding counter: `cur` allowed in window number `window`, `prev` in
    /// the one before.
    Counter { window: u64, prev: u32, cur: u32 },
    /// Sliding log, boxed so that the other kinds stay small.
    Log(Box<Log>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Log {
    /// Milliseconds after base that the offsets count from.
    origin: u64,
    /// One entry per allowed unit of cost, oldest first: milliseconds after
    /// `origin`, rounded up.
    times: VecDeque<u32>,
}

impl Log {
    fn at(&self, offset: u32) -> u64 {
        self.origin
            .saturating_add(u64::from(offset))
            .saturating_mul(NS_PER_MS)
    }

    /// When the newest entry stops counting, in ns after base.
    fn expiry(&self, period: u64) -> Option<u64> {
        let newest = *self.times.back()?;
        Some(self.at(newest).saturating_add(period))
    }

    /// Appends `n` entries at `ms` after base (not before the newest).
    fn push(&mut self, ms: u64, n: u64) {
        let newest = self.times.back().map(|&o| self.origin + u64::from(o));
        let ms = newest.map_or(ms, |newest| ms.max(newest));
        if self.times.is_empty() {
            self.origin = ms;
        } else if ms - self.origin > u64::from(u32::MAX) {
            // Rebase on the oldest entry; the live entries span less than
            // a period, which fits.
            let shift = self.times.front().copied().unwrap_or(0);
            for o in self.times.iter_mut() {
                *o -= shift;
            }
            self.origin += u64::from(shift);
        }
        let offset = u32::try_from(ms - self.origin).unwrap_or(u32::MAX);
        self.times.extend(std::iter::repeat_n(offset, n as usize));
    }
}

impl State {
    /// A fresh state for `limit`: a full bucket, empty windows, empty log.
    pub fn new(limit: &Limit) -> State {
        State(match limit.algorithm {
            Algorithm::TokenBucket | Algorithm::LeakyBucket => Kind::Gcra { tat: 0, frac: 0 },
            Algorithm::FixedWindow => Kind::Fixed {
                window: 0,
                count: 0,
            },
            Algorithm::SlidingCounter => Kind::Counter {
                window: 0,
                prev: 0,
                cur: 0,
            },
            Algorithm::SlidingLog => Kind::Log(Box::new(Log {
                origin: 0,
                times: VecDeque::new(),
            })),
        })
    }

    /// Whether this state was made for `algorithm`.
    fn fits(&self, algorithm: Algorithm) -> bool {
        matches!(
            (&self.0, algorithm),
            (
                Kind::Gcra { .. },
                Algorithm::TokenBucket | Algorithm::LeakyBucket
            ) | (Kind::Fixed { .. }, Algorithm::FixedWindow)
                | (Kind::Counter { .. }, Algorithm::SlidingCounter)
                | (Kind::Log(_), Algorithm::SlidingLog)
        )
    }

    /// True when forgetting this state would give the same decisions from
    /// `now` on as keeping it: the table may then drop it.
    pub fn is_idle(&self, limit: &Limit, base: Instant, now: Instant) -> bool {
        self.is_idle_at(limit, nanos(base, now))
    }

    fn is_idle_at(&self, limit: &Limit, now: u64) -> bool {
        if !self.fits(limit.algorithm) {
            return true;
        }
        match &self.0 {
            // tat + frac/limit ≤ now.
            Kind::Gcra { tat, frac } => *tat < now || (*tat == now && *frac == 0),
            Kind::Fixed { window, count } => *count == 0 || now / period(limit) > *window,
            Kind::Counter { window, prev, cur } => {
                let w = now / period(limit);
                (*prev == 0 && *cur == 0)
                    || w >= window.saturating_add(2)
                    || (w > *window && *cur == 0)
            }
            Kind::Log(log) => log
                .expiry(log_period(limit))
                .is_none_or(|expiry| expiry <= now),
        }
    }

    /// Nanoseconds after base from which the state is idle (0 if it is
    /// idle from the start). The table evicts the smallest first: they
    /// carry the least information.
    pub(crate) fn idle_from(&self, limit: &Limit) -> u64 {
        match &self.0 {
            Kind::Gcra { tat, frac } => tat.saturating_add(u64::from(*frac > 0)),
            Kind::Fixed { window, count } => match count {
                0 => 0,
                _ => window.saturating_add(1).saturating_mul(period(limit)),
            },
            Kind::Counter { window, prev, cur } => {
                let windows = match (prev, cur) {
                    (0, 0) => return 0,
                    (_, 0) => 1,
                    _ => 2,
                };
                window.saturating_add(windows).saturating_mul(period(limit))
            }
            Kind::Log(log) => log.expiry(log_period(limit)).unwrap_or(0),
        }
    }

    /// Heap bytes this state owns (the sliding log's), for memory reports.
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Kind::Log(log) => {
                std::mem::size_of::<Log>() + log.times.capacity() * std::mem::size_of::<u32>()
            }
            _ => 0,
        }
    }
}

/// Decides one request of `cost` (normally 1) at `now` and, if it is
/// allowed, counts it in `state`. `base` is the instant the state's times
/// count from: the same on every call for this state. A state made for
/// another algorithm is replaced by a fresh one.
pub fn check(limit: &Limit, state: &mut State, base: Instant, now: Instant, cost: u64) -> Decision {
    check_at(limit, state, nanos(base, now), cost)
}

fn check_at(limit: &Limit, state: &mut State, now: u64, cost: u64) -> Decision {
    if !state.fits(limit.algorithm) {
        *state = State::new(limit);
    }
    if limit.limit == 0 {
        let out = match cost {
            0 => Outcome::allowed(0, 0),
            _ => Outcome::never(limit, 0, 0),
        };
        return out.decision(0);
    }
    let out = match &mut state.0 {
        Kind::Gcra { tat, frac } => gcra(limit, tat, frac, now, cost),
        Kind::Fixed { window, count } => fixed(limit, window, count, now, cost),
        Kind::Counter { window, prev, cur } => counter(limit, window, prev, cur, now, cost),
        Kind::Log(log) => sliding_log(limit, log, now, cost),
    };
    out.decision(match limit.algorithm {
        Algorithm::SlidingCounter => counter_limit(limit),
        _ => limit.limit,
    })
}

/// A decision in nanoseconds.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    allowed: bool,
    remaining: u64,
    reset: u64,
    retry_after: u64,
    delay: u64,
}

impl Outcome {
    fn allowed(remaining: u64, reset: u64) -> Outcome {
        Outcome {
            allowed: true,
            remaining,
            reset,
            retry_after: 0,
            delay: 0,
        }
    }

    fn rejected(remaining: u64, reset: u64, retry_after: u64) -> Outcome {
        Outcome {
            allowed: false,
            remaining,
            reset,
            retry_after: retry_after.max(1),
            delay: 0,
        }
    }

    /// A request that can never pass: a nominal `retry_after` of a period.
    fn never(limit: &Limit, remaining: u64, reset: u64) -> Outcome {
        Outcome::rejected(remaining, reset, period(limit))
    }

    fn decision(self, limit: u64) -> Decision {
        Decision {
            allowed: self.allowed,
            limit,
            remaining: self.remaining,
            reset: Duration::from_nanos(self.reset),
            retry_after: Duration::from_nanos(self.retry_after),
            delay: Duration::from_nanos(self.delay),
        }
    }
}

/// Nanoseconds from `base` to `now`, 0 if `now` is earlier.
fn nanos(base: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

/// The period in ns, at least 1.
fn period(limit: &Limit) -> u64 {
    u64::try_from(limit.period.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn log_period(limit: &Limit) -> u64 {
    period(limit).min(MAX_LOG_PERIOD_NS)
}

fn counter_limit(limit: &Limit) -> u64 {
    limit.limit.min(u64::from(u32::MAX))
}

fn to_u64(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

fn div_ceil(a: u128, b: u128) -> u128 {
    a.div_ceil(b)
}

/// Token and leaky bucket, in units of `1 / limit` ns, where the interval
/// `T` between requests is exactly `period` ns.
fn gcra(limit: &Limit, tat: &mut u64, frac: &mut u64, now: u64, cost: u64) -> Outcome {
    let scale = u128::from(limit.limit);
    let t = u128::from(period(limit));
    let (capacity, shaper) = match limit.algorithm {
        Algorithm::LeakyBucket => (limit.burst.saturating_add(1), limit.delay),
        _ => (limit.burst.max(1), false),
    };
    let now_s = u128::from(now) * scale;
    let tat_s = u128::from(*tat) * scale + u128::from((*frac).min(limit.limit - 1));
    let tau = u128::from(capacity).saturating_mul(t);
    let inc = u128::from(cost).saturating_mul(t);
    let start = tat_s.max(now_s);
    let new_tat = start.saturating_add(inc);
    let allowed = new_tat - now_s <= tau;
    // Time (scaled) the bucket needs to be full again after this request.
    let occupied = if allowed { new_tat } else { start } - now_s;
    let remaining = to_u64(tau.saturating_sub(occupied) / t);
    let reset = to_u64(div_ceil(occupied, scale));
    if !allowed {
        if inc > tau {
            return Outcome::never(limit, remaining, reset);
        }
        // Rejected with inc ≤ tau means tat > now: the earliest t with
        // tat + inc − t ≤ tau.
        let wait = (tat_s - now_s) - (tau - inc);
        return Outcome::rejected(remaining, reset, to_u64(div_ceil(wait, scale)));
    }
    if cost == 0 {
        return Outcome::allowed(remaining, reset);
    }
    *tat = to_u64(new_tat / scale);
    *frac = to_u64(new_tat % scale);
    let delay = match shaper {
        // The last unit's slot starts one interval before the new tat.
        true => to_u64(div_ceil(new_tat.saturating_sub(t + now_s), scale)),
        false => 0,
    };
    Outcome {
        delay,
        ..Outcome::allowed(remaining, reset)
    }
}

fn fixed(limit: &Limit, window: &mut u64, count: &mut u64, now: u64, cost: u64) -> Outcome {
    let p = period(limit);
    let w = now / p;
    if w > *window {
        (*window, *count) = (w, 0);
    }
    // Time to the end of the state's window (more than a period for a
    // clock read older than the window).
    let left = window
        .saturating_add(1)
        .saturating_mul(p)
        .saturating_sub(now);
    let allowed = count.saturating_add(cost) <= limit.limit;
    if allowed {
        *count += cost;
    }
    let remaining = limit.limit.saturating_sub(*count);
    let reset = if *count == 0 { 0 } else { left };
    match allowed {
        true => Outcome::allowed(remaining, reset),
        false if cost > limit.limit => Outcome::never(limit, remaining, reset),
        false => Outcome::rejected(remaining, reset, left),
    }
}

fn counter(
    limit: &Limit,
    window: &mut u64,
    prev: &mut u32,
    cur: &mut u32,
    now: u64,
    cost: u64,
) -> Outcome {
    let l = u128::from(counter_limit(limit));
    let p = period(limit);
    let w = now / p;
    if w > *window {
        *prev = if w == window.saturating_add(1) {
            *cur
        } else {
            0
        };
        (*window, *cur) = (w, 0);
    }
    let start = window.saturating_mul(p);
    // Elapsed in the state's window; 0 for an older clock read.
    let e = now.saturating_sub(start).min(p - 1);
    let (pw, cw) = (u128::from(*prev), u128::from(*cur));
    let (pp, cost_w) = (u128::from(p), u128::from(cost));
    // The estimate times p, counting `c` more in the current window.
    let weighted =
        |c: u128| (pw * (pp - u128::from(e))).saturating_add((cw + c).saturating_mul(pp));
    let allowed = weighted(cost_w) <= l * pp;
    if allowed {
        *cur = u32::try_from(cw + cost_w).unwrap_or(u32::MAX);
    }
    let after = weighted(if allowed { cost_w } else { 0 });
    let remaining = to_u64((l * pp).saturating_sub(after) / pp);
    let reset = match (*prev, *cur) {
        (_, 1..) => start.saturating_add(p.saturating_mul(2)),
        (1.., 0) => start.saturating_add(p),
        (0, 0) => now,
    }
    .saturating_sub(now);
    if allowed {
        return Outcome::allowed(remaining, reset);
    }
    if cost_w > l {
        return Outcome::never(limit, remaining, reset);
    }
    // The earliest elapsed time `x` in a window where the weight `n` of the
    // previous window leaves room for `room` (times p): n·(p − x) ≤ room.
    let earliest = |n: u128, room: u128| -> Option<u64> {
        let x = match n {
            0 => 0,
            _ => pp.saturating_sub(room / n),
        };
        (x < pp).then(|| to_u64(x))
    };
    // In this window (the previous still weighs), in the next (this one
    // becomes the previous, nothing current), or the one after (empty).
    let at = l
        .checked_sub(cw + cost_w)
        .and_then(|room| earliest(pw, room * pp))
        .map(|x| start.saturating_add(x))
        .or_else(|| {
            earliest(cw, (l - cost_w) * pp).map(|x| start.saturating_add(p).saturating_add(x))
        })
        .unwrap_or(start.saturating_add(p.saturating_mul(2)));
    Outcome::rejected(remaining, reset, at.saturating_sub(now))
}

fn sliding_log(limit: &Limit, log: &mut Log, now: u64, cost: u64) -> Outcome {
    let p = log_period(limit);
    while let Some(&oldest) = log.times.front() {
        if log.at(oldest).saturating_add(p) > now {
            break;
        }
        log.times.pop_front();
    }
    let live = log.times.len() as u64;
    let allowed = live.saturating_add(cost) <= limit.limit;
    if allowed && cost > 0 {
        log.push(now.div_ceil(NS_PER_MS), cost);
    }
    let remaining = limit.limit.saturating_sub(log.times.len() as u64);
    let reset = log.expiry(p).map_or(0, |e| e.saturating_sub(now));
    if allowed {
        return Outcome::allowed(remaining, reset);
    }
    if cost > limit.limit {
        return Outcome::never(limit, remaining, reset);
    }
    // Room for `cost` once the (live + cost − limit) oldest have expired.
    let last_to_expire = (live - (limit.limit - cost) - 1) as usize;
    let at = log
        .times
        .get(last_to_expire)
        .map_or(now, |&o| log.at(o).saturating_add(p));
    Outcome::rejected(remaining, reset, at.saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);
    const NS: Duration = Duration::from_nanos(1);

    fn lim(algorithm: Algorithm, limit: u64, period: Duration, burst: u64) -> Limit {
        Limit {
            algorithm,
            limit,
            period,
            burst,
            delay: false,
        }
    }

    const ALL: [Algorithm; 5] = [
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
    ];

    /// A limiter with its own state and base, that checks on every
    /// rejection that `retry_after` is exact: a clone of the state allows
    /// the same request at `now + retry_after` and not a nanosecond before.
    struct Lim {
        limit: Limit,
        state: State,
        base: Instant,
    }

    impl Lim {
        fn new(limit: Limit, base: Instant) -> Lim {
            Lim {
                state: State::new(&limit),
                limit,
                base,
            }
        }

        fn check_n(&mut self, now: Instant, cost: u64) -> Decision {
            let d = check(&self.limit, &mut self.state, self.base, now, cost);
            let limit = match self.limit.algorithm {
                Algorithm::SlidingCounter => self.limit.limit.min(u32::MAX.into()),
                _ => self.limit.limit,
            };
            assert_eq!(d.limit, limit);
            if !d.allowed {
                assert!(d.retry_after > Duration::ZERO, "{d:?}");
                let never = cost > self.limit.limit
                    || (self.limit.algorithm == Algorithm::TokenBucket
                        && cost > self.limit.burst.max(1))
                    || (self.limit.algorithm == Algorithm::LeakyBucket
                        && cost > self.limit.burst + 1);
                if !never {
                    let mut s = self.state.clone();
                    let early = now + d.retry_after - NS;
                    let e = check(&self.limit, &mut s, self.base, early, cost);
                    assert!(!e.allowed, "allowed {:?} early at {now:?}", d.retry_after);
                    let mut s = self.state.clone();
                    let on_time = check(&self.limit, &mut s, self.base, now + d.retry_after, cost);
                    assert!(on_time.allowed, "rejected at retry_after {d:?}");
                }
            }
            d
        }

        fn check(&mut self, now: Instant) -> Decision {
            self.check_n(now, 1)
        }

        /// How many of `n` requests at `now` pass.
        fn burst(&mut self, now: Instant, n: u32) -> u32 {
            (0..n).filter(|_| self.check(now).allowed).count() as u32
        }

        fn idle(&self, now: Instant) -> bool {
            self.state.is_idle(&self.limit, self.base, now)
        }
    }

    #[test]
    fn state_is_small() {
        assert!(
            std::mem::size_of::<State>() <= 24,
            "{}",
            std::mem::size_of::<State>()
        );
    }

    #[test]
    fn token_bucket_burst_then_refill() {
        let t0 = Instant::now();
        let mut l = Lim::new(lim(Algorithm::TokenBucket, 10, SEC, 5), t0);
        // Starts full: 5 at once, remaining counting down, reset growing by
        // one interval a token.
        for i in 0..5u64 {
            let d = l.check(t0);
            assert!(d.allowed);
            assert_eq!(d.remaining, 4 - i);
            assert_eq!(d.reset, (i + 1) as u32 * 100 * MS);
        }
        let d = l.check(t0);
        assert!(!d.allowed);
        assert_eq!(
            (d.remaining, d.retry_after, d.reset),
            (0, 100 * MS, 500 * MS)
        );
        // Then exactly one per 100 ms, not a nanosecond before.
        for k in 1..=20u32 {
            let at = t0 + k * 100 * MS;
            assert!(!l.check(at - NS).allowed, "early at {k}");
            let d = l.check(at);
            assert!(d.allowed, "{k}");
            assert_eq!(d.remaining, 0);
            assert_eq!(d.reset, 500 * MS);
            assert!(!l.check(at).allowed);
        }
        // Idle when full again: 500 ms after the last take.
        let last = t0 + 2000 * MS;
        assert!(!l.idle(last + 500 * MS - NS));
        assert!(l.idle(last + 500 * MS));
        let d = l.check_n(last + 500 * MS, 0);
        assert!(d.allowed);
        assert_eq!((d.remaining, d.reset), (5, Duration::ZERO));
        // Half refilled: 2 tokens after 250 ms (2.5 rounded down).
        let mut l = Lim::new(lim(Algorithm::TokenBucket, 10, SEC, 5), t0);
        assert_eq!(l.burst(t0, 9), 5);
        assert_eq!(l.check_n(t0 + 250 * MS, 0).remaining, 2);
        assert_eq!(l.burst(t0 + 250 * MS, 9), 2);
    }

    #[test]
    fn token_bucket_rate_is_exact() {
        // 3 per second: T = 333,333,333.3 ns. Hammer it every millisecond
        // for 1000 s: the burst of 3 plus exactly 3000.
        let t0 = Instant::now();
        let mut l = Lim::new(lim(Algorithm::TokenBucket, 3, SEC, 3), t0);
        let mut allowed = 0;
        for ms in 0..1_000_000u32 {
            let d = check(&l.limit, &mut l.state, t0, t0 + ms * MS, 1);
            allowed += u32::from(d.allowed);
        }
        assert_eq!(allowed, 3 + 2999);
        // The 3001st refill lands at exactly 1000 s.
        assert!(l.check(t0 + 1000 * SEC).allowed);
        // Tokens arrive at k/3 s exactly, rounded up to the nanosecond,
        // whatever the rounding of the one before.
        let ns = Duration::from_nanos;
        let mut l = Lim::new(lim(Algorithm::TokenBucket, 3, SEC, 2), t0);
        assert_eq!(l.burst(t0, 3), 2);
        assert_eq!(l.check(t0).retry_after, ns(333_333_334));
        assert!(!l.check(t0 + ns(333_333_333)).allowed);
        assert!(l.check(t0 + ns(333_333_334)).allowed);
        assert!(!l.check(t0 + ns(666_666_666)).allowed);
        assert!(l.check(t0 + ns(666_666_667)).allowed);
        assert!(!l.check(t0 + SEC - NS).allowed);
        assert!(l.check(t0 + SEC).allowed);
        // With room for one token only, a late request restarts the clock
        // (GCRA: the token it took left at its arrival, not at its slot).
        let mut l = Lim::new(lim(Algorithm::TokenBucket, 3, SEC, 1), t0);
        assert!(l.check(t0 + ns(500_000_000)).allowed);
        assert_eq!(l.check(t0 + ns(500_000_000)).retry_after, ns(333_333_334));
    }

    #[test]
    fn token_bucket_costs() {
        let t0 = Instant::now();
        let mut l = Lim::new(lim(Algorithm::TokenBucket, 10, SEC, 10), t0);
        assert!(l.check_n(t0, 7).allowed);
        let d = l.check_n(t0, 4);
        assert!(!d.allowed);
        // One token short: one interval.
        assert_eq!((d.remaining, d.retry_after), (3, 100 * MS));
        assert!(l.check_n(t0, 3).allowed);
        // More than the bucket holds: never, nominal period.
        let d = l.check_n(t0 + 10 * SEC, 11);
        assert_eq!((d.allowed, d.retry_after, d.remaining), (false, SEC, 10));
        // Burst 0 counts as 1.
        let mut l = Lim::new(lim(Algorithm::TokenBucket, 10, SEC, 0), t0);
        assert_eq!(l.burst(t0, 5), 1);
    }

    #[test]
    fn leaky_bucket_shaper_delays() {
        let t0 = Instant::now();
        let limit = Limit {
            delay: true,
            ..lim(Algorithm::LeakyBucket, 10, SEC, 5)
        };
        let mut l = Lim::new(limit, t0);
        for i in 0..6u32 {
            let d = l.check(t0);
            assert!(d.allowed);
            assert_eq!(d.delay, i * 100 * MS);
            assert_eq!(d.remaining, u64::from(5 - i));
            assert_eq!(d.reset, (i + 1) * 100 * MS);
        }
        let d = l.check(t0);
        assert!(!d.allowed);
        assert_eq!(
            (d.delay, d.retry_after, d.remaining),
            (Duration::ZERO, 100 * MS, 0)
        );
        // One slot frees every 100 ms, at the back of the queue.
        let d = l.check(t0 + 100 * MS);
        assert_eq!((d.allowed, d.delay), (true, 500 * MS));
        assert!(!l.check(t0 + 100 * MS).allowed);
        // Spaced at the rate, no delay at all.
        let mut l = Lim::new(limit, t0);
        for k in 0..10u32 {
            let d = l.check(t0 + k * 100 * MS);
            assert_eq!((d.allowed, d.delay), (true, Duration::ZERO));
        }
        // Half an interval early: held for the other half.
        assert_eq!(l.check(t0 + 950 * MS).delay, 50 * MS);
        // Empty, so idle, when the queue has drained.
        assert!(!l.idle(t0 + 1100 * MS - NS));
        assert!(l.idle(t0 + 1100 * MS));
        // Cost 2 waits for its second slot.
        let mut l = Lim::new(limit, t0);
        assert_eq!(l.check(t0).delay, Duration::ZERO);
        assert_eq!(l.check_n(t0, 2).delay, 200 * MS);
        assert_eq!(l.check_n(t0, 3).delay, 500 * MS);
        assert!(!l.check(t0).allowed);
    }

    #[test]
    fn leaky_bucket_nodelay_meters() {
        let t0 = Instant::now();
        let mut l = Lim::new(lim(Algorithm::LeakyBucket, 10, SEC, 5), t0);
        // burst + 1 at once, none delayed.
        for _ in 0..6 {
            let d = l.check(t0);
            assert_eq!((d.allowed, d.delay), (true, Duration::ZERO));
        }
        assert!(!l.check(t0).allowed);
        for k in 1..=10u32 {
            assert!(!l.check(t0 + k * 100 * MS - NS).allowed);
            assert!(l.check(t0 + k * 100 * MS).allowed);
        }
        // Burst 0: one at a time, exactly at the rate.
        let mut l = Lim::new(lim(Algorithm::LeakyBucket, 10, SEC, 0), t0);
        assert_eq!(l.burst(t0, 3), 1);
        assert_eq!(l.burst(t0 + 100 * MS, 3), 1);
    }

    #[test]
    fn fixed_window_boundary_burst() {
        let t0 = Instant::now();
        let mut l = Lim::new(lim(Algorithm::FixedWindow, 10, SEC, 0), t0);
        // One at the window's start; the window is [t0, t0 + 1 s).
        let d = l.check(t0 + 100 * MS);
        assert_eq!((d.remaining, d.reset), (9, 900 * MS));
        // The rest at its very end.
        assert_eq!(l.burst(t0 + 999 * MS, 20), 9);
        let d = l.check(t0 + 999 * MS);
        assert_eq!((d.remaining, d.retry_after, d.reset), (0, MS, MS));
        assert!(!l.idle(t0 + 999 * MS));
        assert!(l.idle(t0 + SEC));
        // Right after the boundary, the whole limit again: 19 in 1 ms.
        assert_eq!(l.burst(t0 + SEC, 20), 10);
        // A clock read from the previous window counts in the current one.
        let d = l.check(t0 + 999 * MS);
        assert_eq!((d.allowed, d.retry_after), (false, 1001 * MS));
        // Empty windows later on.
        let d = l.check(t0 + 5500 * MS);
        assert_eq!((d.remaining, d.reset), (9, 500 * MS));
        // Costs.
        assert!(l.check_n(t0 + 5500 * MS, 9).allowed);
        let d = l.check_n(t0 + 5600 * MS, 11);
        assert_eq!((d.allowed, d.retry_after), (false, SEC));
    }

    #[test]
    fn sliding_log_has_no_boundary_burst() {
        let t0 = Instant::now();
        let mut l = Lim::new(lim(Algorithm::SlidingLog, 10, SEC, 0), t0);
        assert_eq!(l.check(t0 + 100 * MS).remaining, 9);
        assert_eq!(l.burst(t0 + 999 * MS, 20), 9);
        let d = l.check(t0 + 999 * MS);
        assert_eq!((d.remaining, d.retry_after, d.reset), (0, 101 * MS, SEC));
        // Across the fixed window's boundary: nothing.
        assert_eq!(l.burst(t0 + SEC, 20), 0);
        // The first one expires at 1.1 s, the other nine at 1.999 s.
        assert_eq!(l.burst(t0 + 1100 * MS - NS, 5), 0);
        assert_eq!(l.burst(t0 + 1100 * MS, 5), 1);
        assert_eq!(l.burst(t0 + 1998 * MS, 5), 0);
        let d = l.check(t0 + 1999 * MS);
        assert_eq!((d.allowed, d.remaining, d.reset), (true, 8, SEC));
        assert!(!l.idle(t0 + 2999 * MS - NS));
        assert!(l.idle(t0 + 2999 * MS));
        // Timestamps are rounded up to the ms: one at 0.5 ms counts until
        // 1.001 s.
        let mut l = Lim::new(lim(Algorithm::SlidingLog, 1, SEC, 0), t0);
        assert!(l.check(t0 + Duration::from_micros(500)).allowed);
        let d = l.check(t0 + SEC);
        assert_eq!(d.retry_after, MS);
        // Costs take one entry each; retry waits for enough to expire.
        let mut l = Lim::new(lim(Algorithm::SlidingLog, 10, SEC, 0), t0);
        for k in 0..10u32 {
            assert!(l.check(t0 + k * 10 * MS).allowed);
        }
        let d = l.check_n(t0 + 500 * MS, 3);
        assert_eq!(d.retry_after, 520 * MS);
        let d = l.check_n(t0 + 500 * MS, 11);
        assert_eq!((d.allowed, d.retry_after), (false, SEC));
    }

    #[test]
    fn sliding_log_is_exact_for_any_interval() {
        // Random arrivals; then check every interval [t, t + 1 s) holds at
        // most the limit.
        let t0 = Instant::now();
        let mut l = Lim::new(lim(Algorithm::SlidingLog, 7, SEC, 0), t0);
        let mut rng = Rng(42);
        let mut t = t0;
        let mut allowed = Vec::new();
        for _ in 0..5000 {
            t += Duration::from_micros(rng.below(400_000));
            let cost = 1 + rng.below(3);
            if l.check_n(t, cost).allowed {
                allowed.extend(std::iter::repeat_n(t, cost as usize));
            }
        }
        for (i, &a) in allowed.iter().enumerate() {
            let within = allowed[i..].iter().take_while(|&&b| b < a + SEC).count();
            assert!(within <= 7, "{within} in a second from {a:?}");
        }
        assert!(allowed.len() > 1000);
    }

    #[test]
    fn sliding_log_rebases_timestamps() {
        // 60 days of one request a minute, 3 per 3 minutes: the offsets
        // (u32 ms, 49.7 days) are rebased on the way and stay exact.
        let t0 = Instant::now();
        let mut l = Lim::new(lim(Algorithm::SlidingLog, 3, 3 * 60 * SEC, 0), t0);
        let minutes = 60 * 24 * 60u32;
        for m in 0..minutes {
            let d = l.check(t0 + m * 60 * SEC);
            assert!(d.allowed, "minute {m}");
        }
        let Kind::Log(log) = &l.state.0 else {
            unreachable!()
        };
        assert_eq!(log.times.len(), 3);
        assert!(log.origin > 0, "rebased");
        // Full; the oldest (minute M − 3) leaves at minute M.
        let d = l.check(t0 + (minutes - 1) * 60 * SEC + 30 * SEC);
        assert_eq!((d.allowed, d.retry_after), (false, 30 * SEC));
    }

    #[test]
    fn sliding_counter_weighs_the_previous_window() {
        let t0 = Instant::now();
        let mut l = Lim::new(lim(Algorithm::SlidingCounter, 10, SEC, 0), t0);
        assert_eq!(l.burst(t0 + 900 * MS, 20), 10);
        // At the boundary the previous window weighs fully: nothing, and
        // the next fits when 10·(1 − e) + 1 ≤ 10: e = 100 ms.
        let d = l.check(t0 + SEC);
        assert_eq!(
            (d.allowed, d.retry_after, d.remaining),
            (false, 100 * MS, 0)
        );
        assert_eq!(d.reset, SEC);
        assert_eq!(l.burst(t0 + 1100 * MS - NS, 5), 0);
        assert_eq!(l.burst(t0 + 1100 * MS, 5), 1);
        // At 1.5 s: 10·0.5 + 1 = 6, so 4 more.
        let d = l.check_n(t0 + 1500 * MS, 0);
        assert_eq!((d.remaining, d.reset), (4, 1500 * MS));
        assert_eq!(l.burst(t0 + 1500 * MS, 10), 4);
        // Over [0.9 s, 1.9 s): 10 + 1 + 4 + those at 1.9 s:
        // 10·0.1 + 5 + n ≤ 10: 4, so 19 in 1 s and a bit, never 20 in a
        // short span.
        assert_eq!(l.burst(t0 + 1900 * MS, 10), 4);
        // Window 1 held 9: it weighs until 3 s; window 2 is empty.
        assert!(!l.idle(t0 + 3 * SEC - NS));
        assert!(l.idle(t0 + 3 * SEC));
        let d = l.check_n(t0 + 2500 * MS, 0);
        assert_eq!((d.remaining, d.reset), (5, 500 * MS));
        // Clock read from a past window: counted in the current window at
        // its start.
        let mut l = Lim::new(lim(Algorithm::SlidingCounter, 2, SEC, 0), t0);
        assert_eq!(l.burst(t0 + 1500 * MS, 3), 2);
        let d = l.check(t0 + 500 * MS);
        assert_eq!((d.allowed, d.retry_after), (false, 2 * SEC));
        // A cost only the window after next can take.
        let mut l = Lim::new(lim(Algorithm::SlidingCounter, 10, SEC, 0), t0);
        assert!(l.check(t0).allowed);
        let d = l.check_n(t0, 10);
        assert_eq!(d.retry_after, 2 * SEC);
        let d = l.check_n(t0, 9);
        assert!(d.allowed);
        // 10 in window 0; in window 1, room for 1 when 10·(1 − e) ≤ 9.
        let d = l.check_n(t0 + 500 * MS, 1);
        assert_eq!(d.retry_after, 600 * MS);
    }

    #[test]
    fn no_boundary_burst_except_fixed_window() {
        // All the limit at the end of one window, then as much as possible
        // in the 100 ms after the boundary.
        let t0 = Instant::now();
        for (algorithm, expect) in [
            (Algorithm::FixedWindow, 20),
            (Algorithm::SlidingLog, 10),
            (Algorithm::SlidingCounter, 10),
        ] {
            let mut l = Lim::new(lim(algorithm, 10, SEC, 0), t0);
            let mut n = l.burst(t0 + 950 * MS, 20);
            for ms in 0..100u32 {
                n += l.burst(t0 + SEC + ms * MS, 20);
            }
            assert_eq!(n, expect, "{algorithm:?}");
        }
    }

    #[test]
    fn steady_overload_gets_the_rate() {
        // 50 req/s evenly spaced for 10 s against 10/s: 100 allowed. The
        // buckets add their burst at the start (full), so they run with the
        // smallest: token bucket burst 1, leaky burst 0 (one in flight).
        // The sliding counter is the exception, below.
        let t0 = Instant::now();
        let run = |limit: Limit| {
            let mut l = Lim::new(limit, t0);
            (0..500u32)
                .filter(|i| l.check(t0 + i * 20 * MS).allowed)
                .count() as i64
        };
        for algorithm in ALL {
            let limit = lim(
                algorithm,
                10,
                SEC,
                u64::from(algorithm == Algorithm::TokenBucket),
            );
            let n = run(limit);
            if algorithm == Algorithm::SlidingCounter {
                // 10 in the first second, then 9 a second: a full previous
                // window leaves room for `limit − 1` (see the module doc).
                assert_eq!(n, 10 + 9 * 9);
                continue;
            }
            assert!((n - 100).abs() <= 2, "{algorithm:?}: {n}");
            if algorithm == Algorithm::LeakyBucket {
                let n = run(Limit {
                    delay: true,
                    ..limit
                });
                assert!((n - 100).abs() <= 2, "shaper: {n}");
            }
        }
        // With a burst of 10 the bucket starts with 9 tokens more than with
        // 1 and takes 12 requests in the first 220 ms before falling to the
        // rate; the leaky bucket with burst 9 is the same meter.
        assert_eq!(run(lim(Algorithm::TokenBucket, 10, SEC, 10)), 109);
        assert_eq!(run(lim(Algorithm::LeakyBucket, 10, SEC, 9)), 109);
        // The counter's shortfall is one per period: 1 % at 100/s, where
        // 500 req/s gets 100 in the first second and 99 in each other.
        let mut l = Lim::new(lim(Algorithm::SlidingCounter, 100, SEC, 0), t0);
        let n = (0..5000u32)
            .filter(|i| l.check(t0 + i * 2 * MS).allowed)
            .count();
        assert_eq!(n, 100 + 9 * 99);
    }

    #[test]
    fn retry_after_is_exact_under_random_load() {
        // `Lim` asserts exactness on every rejection.
        let t0 = Instant::now();
        let mut rng = Rng(7);
        for algorithm in ALL {
            for (limit, period, burst, delay) in [
                (3, SEC, 3, false),
                (10, SEC, 5, true),
                (7, 3 * SEC, 2, false),
                (1, Duration::from_micros(1500), 1, true),
            ] {
                let limit = Limit {
                    delay,
                    ..lim(algorithm, limit, period, burst)
                };
                let mut l = Lim::new(limit, t0);
                let mut t = t0;
                for _ in 0..2000 {
                    t += Duration::from_nanos(rng.below(period.as_nanos() as u64 / 2));
                    let cost = [1, 1, 1, 2, 3, 0][rng.below(6) as usize];
                    let d = l.check_n(t, cost);
                    if d.allowed {
                        assert_eq!(d.retry_after, Duration::ZERO);
                    }
                    assert!(d.remaining <= limit.limit.max(limit.burst + 1));
                }
            }
        }
    }

    #[test]
    fn idle_means_forgettable() {
        // At the first instant a state is idle, a fresh one decides the
        // same from then on; a nanosecond earlier it is not idle.
        let t0 = Instant::now();
        let mut rng = Rng(3);
        for algorithm in ALL {
            let limit = Limit {
                delay: true,
                ..lim(algorithm, 5, SEC, 3)
            };
            let mut l = Lim::new(limit, t0);
            assert!(l.idle(t0));
            let mut t = t0 + 3 * SEC + 250 * MS;
            for _ in 0..12 {
                t += Duration::from_millis(rng.below(100));
                l.check(t);
            }
            assert!(!l.idle(t));
            let mut idle_at = t;
            while !l.idle(idle_at) {
                idle_at += MS;
            }
            // Narrow to the nanosecond.
            let mut lo = idle_at - MS;
            while idle_at - lo > NS {
                let mid = lo + (idle_at - lo) / 2;
                if l.idle(mid) {
                    idle_at = mid;
                } else {
                    lo = mid;
                }
            }
            let from = l.state.idle_from(&limit);
            assert_eq!(t0 + Duration::from_nanos(from), idle_at, "{algorithm:?}");
            let mut fresh = Lim::new(limit, t0);
            let mut t = idle_at;
            for _ in 0..30 {
                t += Duration::from_millis(rng.below(60));
                assert_eq!(l.check(t), fresh.check(t), "{algorithm:?}");
            }
        }
    }

    #[test]
    fn odd_settings_are_safe() {
        let t0 = Instant::now();
        for algorithm in ALL {
            // Limit 0 rejects everything, with a nominal retry.
            let mut l = Lim::new(lim(algorithm, 0, SEC, 0), t0);
            let d = l.check(t0);
            assert_eq!((d.allowed, d.remaining, d.retry_after), (false, 0, SEC));
            assert!(l.check_n(t0, 0).allowed);
            // A zero period counts as 1 ns. The counter's previous window
            // weighs fully at its start, so it takes one per 2 ns.
            let mut l = Lim::new(lim(algorithm, 1, Duration::ZERO, 1), t0);
            assert!(l.check(t0 + SEC).allowed);
            if algorithm == Algorithm::SlidingCounter {
                assert!(!l.check(t0 + SEC + NS).allowed);
                assert!(l.check(t0 + SEC + 2 * NS).allowed);
            } else {
                assert!(l.check(t0 + SEC + NS).allowed, "{algorithm:?}");
            }
            // Huge numbers saturate.
            let mut l = Lim::new(lim(algorithm, u64::MAX, Duration::MAX, u64::MAX), t0);
            assert!(l.check(t0).allowed);
            let big = 1 << 40;
            let mut l = Lim::new(lim(algorithm, big, Duration::from_secs(big), big), t0);
            if algorithm != Algorithm::SlidingLog {
                assert!(l.check_n(t0, 1 << 30).allowed);
            }
            // Cost 0 never counts.
            let mut l = Lim::new(lim(algorithm, 1, SEC, 1), t0);
            for _ in 0..5 {
                assert!(l.check_n(t0, 0).allowed);
            }
            assert!(l.idle(t0));
            assert!(l.check(t0).allowed);
            // Clock reads before base count as base (so `retry_after` is
            // from base, not from them: not through `Lim`).
            let limit = lim(algorithm, 1, SEC, 0);
            let mut state = State::new(&limit);
            assert!(check(&limit, &mut state, t0 + SEC, t0, 1).allowed);
            let d = check(&limit, &mut state, t0 + SEC, t0, 1);
            // (A counter at limit 1 takes one every other window.)
            let wait = match algorithm {
                Algorithm::SlidingCounter => 2 * SEC,
                _ => SEC,
            };
            assert_eq!((d.allowed, d.retry_after), (false, wait));
            assert!(!check(&limit, &mut state, t0 + SEC, t0 + SEC + wait - NS, 1).allowed);
            assert!(check(&limit, &mut state, t0 + SEC, t0 + SEC + wait, 1).allowed);
            // A state used with another algorithm starts afresh (the two
            // buckets share theirs: both are GCRA meters).
            let other = match algorithm {
                Algorithm::TokenBucket | Algorithm::LeakyBucket => Algorithm::FixedWindow,
                _ => Algorithm::TokenBucket,
            };
            let other = lim(other, 1, SEC, 1);
            assert!(state.is_idle(&other, t0, t0));
            assert!(check(&other, &mut state, t0, t0, 1).allowed);
        }
    }

    /// xorshift64*: deterministic test traffic.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
        }
    }
}
