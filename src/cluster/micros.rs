//! Instants kept in atomics (ejection deadlines, slow-start starts, guard
//! windows): microseconds after one process-wide epoch, so that a `u64`
//! can stand for an `Instant` and 0 can mean "none".

use std::sync::OnceLock;
use std::time::Instant;

/// The instant these microseconds are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `now` as microseconds after the epoch (0 for instants before it).
pub(super) fn micros(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_micros() as u64
}
