//! Chaos engineering: faults injected into a bounded share of the traffic,
//! and experiments that watch a hypothesis while they do.
//!
//! `fault` holds the synchronous cores: what a fault does (`Fault`), which
//! requests it hits (`Selector`), and the set of active faults with their
//! time to live (`FaultSet`). `live` is that set in a running Levee (lock,
//! events, metrics, reloads); `inject` is what the request path calls;
//! `metrics` the counters; `shape` cuts or paces a response body, and
//! `slowest` keeps the slowest requests with the faults that hit them. `experiment` is the experiment's core (the
//! hypothesis checked on samples, the phases, the verdict), `sli` reads the
//! samples from Levee's `/metrics`, and `run` is the async shell behind
//! `levee chaos run`, with the experiment file (`plan`), the open-loop load
//! (`load`) and the report (`report`, and `html`: the same as one page
//! with plots).

pub mod build;
pub mod experiment;
pub mod fault;
pub mod html;
pub mod inject;
pub mod live;
pub mod load;
pub mod plan;
pub mod report;
pub mod run;
pub mod shape;
pub mod sli;
pub mod slowest;
