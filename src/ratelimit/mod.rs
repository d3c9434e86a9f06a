//! Rate limiting: how many requests a key (client, user, route, everyone)
//! may make per period. The algorithms are small synchronous cores with the
//! clock passed in (`algorithm`); `table` keeps one state per key in bounded
//! memory; `redis` runs the same algorithms atomically in a shared Redis (or
//! Redis Cluster) so that several Levee instances enforce one limit, and
//! `lease` lets an instance spend small batches of that shared count locally.

pub mod algorithm;
pub mod key;
pub mod lease;
pub mod redis;
pub mod rules;
pub mod table;

use std::time::Duration;

use crate::config::ratelimit::AlgorithmName;

/// The algorithm a rule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Tokens refill at `limit / period`, up to `burst` (≥ 1) held at once.
    TokenBucket,
    /// A meter: a bucket of capacity `burst` leaking at `limit / period`;
    /// a request that would overflow it is rejected. With `delay`, a request
    /// that fits is held until its turn to leave (a shaper, like NGINX's
    /// `burst` without `nodelay`); without, it passes at once (`nodelay`).
    LeakyBucket,
    /// `limit` requests per aligned window of `period`.
    FixedWindow,
    /// `limit` requests in any `period`, exact (one timestamp per request).
    SlidingLog,
    /// `limit` requests per `period`, estimated from the current window's
    /// count plus the previous window's weighted by how much of it still
    /// overlaps the sliding period.
    SlidingCounter,
}

impl From<AlgorithmName> for Algorithm {
    fn from(name: AlgorithmName) -> Algorithm {
        match name {
            AlgorithmName::TokenBucket => Algorithm::TokenBucket,
            AlgorithmName::LeakyBucket => Algorithm::LeakyBucket,
            AlgorithmName::FixedWindow => Algorithm::FixedWindow,
            AlgorithmName::SlidingLog => Algorithm::SlidingLog,
            AlgorithmName::SlidingCounter => Algorithm::SlidingCounter,
        }
    }
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::LeakyBucket => "leaky_bucket",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingCounter => "sliding_counter",
        }
    }
}

/// One limit: `limit` requests per `period`, shaped by the algorithm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub period: Duration,
    /// Token bucket: bucket size (defaults to `limit`). Leaky bucket: queue
    /// capacity beyond the one request leaking. Ignored by the window kinds.
    pub burst: u64,
    /// Leaky bucket only: delay requests to the leak rate instead of passing
    /// them at once.
    pub delay: bool,
}

/// What a limiter decided for one request, with what the `RateLimit-*`
/// headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The quota reported as `RateLimit-Limit`.
    pub limit: u64,
    /// Requests still allowed now (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Time until the quota is whole again (`RateLimit-Reset`, rounded up
    /// to seconds by the caller).
    pub reset: Duration,
    /// When rejected: time until a request would be allowed (`Retry-After`).
    pub retry_after: Duration,
    /// When allowed by a shaping leaky bucket: how long to hold the request
    /// before forwarding it. Zero otherwise.
    pub delay: Duration,
}
