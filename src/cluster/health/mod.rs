//! Knowing which endpoints are healthy: the lifecycle state machine with
//! hysteresis (`state`), passive outlier detection from real traffic
//! (`outlier`), and active checks (`active`, with the PostgreSQL and Redis
//! role checks in `role` and the gRPC health check in `grpc`). The state machines are
//! synchronous and take the clock as a parameter; the async checker is a
//! thin shell around one check.

pub mod active;
pub mod grpc;
pub mod outlier;
pub mod role;
pub mod state;

use crate::shortage::Shortage;

/// Why a check did not pass: the endpoint failed it, or Levee's own
/// shortage of descriptors, ports or memory kept it from being made (no
/// verdict on the endpoint: `crate::shortage`).
#[derive(Debug)]
pub enum NotPassed {
    Failed(String),
    Shortage(Shortage, String),
}

impl From<String> for NotPassed {
    fn from(why: String) -> NotPassed {
        NotPassed::Failed(why)
    }
}

impl NotPassed {
    /// A failed connect of `what` (a client library's or our own): a
    /// shortage when its chain holds one, a failed check otherwise.
    pub fn connecting(what: &str, e: &(dyn std::error::Error + 'static)) -> NotPassed {
        let why = format!("{what}: {e}");
        match Shortage::in_chain(e) {
            Some(s) => NotPassed::Shortage(s, why),
            None => NotPassed::Failed(why),
        }
    }
}
