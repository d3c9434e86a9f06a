//! Availability arithmetic: composing availabilities in series, in parallel
//! and N of M (`compose`), expressions of them (`expression`), the live topology's figures
//! from what each endpoint's tries did (`cluster::observed`)
//! (`topology`) and its single points of failure (`spof`). See
//! docs/availability.md.

pub mod cli;
pub mod compose;
pub mod expression;
pub mod spof;
pub mod topology;
