//! Choosing an endpoint: one small trait, one file per algorithm.
//!
//! A balancer is built from a cluster's endpoints when a snapshot is built and
//! is asked for one index per request. It never sees health machinery
//! directly: the caller passes `usable`, and the balancer only picks among
//! endpoints for which it returns true. Balancer state (counters, current
//! weights) belongs to the snapshot; what must outlive a reload (in-flight
//! counts, latency estimates) lives in the endpoints' live state.

mod round_robin;
mod weighted_round_robin;

pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;

use crate::config::Balance;

/// What a balancer may look at when it picks.
pub struct Pick<'a> {
    /// Whether endpoint `i` may take this request (healthy, not draining, not
    /// already tried).
    pub usable: &'a dyn Fn(usize) -> bool,
}

pub trait Balancer: Send + Sync {
    /// The index of the endpoint that should take the request, or `None`
    /// when no endpoint is usable.
    fn pick(&self, ctx: &Pick<'_>) -> Option<usize>;
}

/// Builds the balancer for `kind` over endpoints with these weights.
pub fn build(kind: Balance, weights: &[u32]) -> Box<dyn Balancer> {
    match kind {
        Balance::RoundRobin => Box::new(RoundRobin::new(weights.len())),
        Balance::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(weights)),
    }
}
