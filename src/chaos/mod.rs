//! Chaos engineering: faults injected into a bounded share of the traffic.
//!
//! `fault` holds the synchronous cores: what a fault does (`Fault`), which
//! requests it hits (`Selector`), and the set of active faults with their
//! time to live (`FaultSet`). They are not wired into the request path yet;
//! `config::chaos` reads and validates `[[faults]]`.

pub mod fault;
