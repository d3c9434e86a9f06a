//! Resilience patterns, each a small synchronous state machine fed by
//! `record(outcome, now)` and asked `allow(now)`, with the clock passed in so
//! every transition is testable without sleeping. The request pipeline
//! (`proxy::forward`) is the async shell that drives them.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod concurrency;
pub mod degradation;
pub mod policy;
