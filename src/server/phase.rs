//! Where a client connection is in its request cycle, for the two timeouts
//! hyper cannot tell apart: the header timeout (a request has started
//! arriving and its head is not complete: slowloris) and the idle timeout
//! (nothing to do between keep-alive requests).
//!
//! The IO wrapper marks the first byte of a new request, the pipeline marks
//! a request as being served and the end of its response; the connection
//! driver reads the deadline. Transitions are plain atomic stores, and the
//! driver's timer is re-armed only when it fires, not per request.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const ACTIVE: u8 = 2;

pub struct Phase {
    origin: Instant,
    state: AtomicU8,
    /// Microseconds from `origin` to the start of the current state.
    since: AtomicU64,
}

/// What the driver must do when its timer fires.
#[derive(Debug, PartialEq, Eq)]
pub enum Expiry {
    /// A request head has been arriving for longer than the header timeout.
    Head,
    /// The connection has been idle for longer than the idle timeout.
    Idle,
    /// Nothing expired; check again at this instant.
    Later(Instant),
}

impl Phase {
    pub fn new(now: Instant) -> Phase {
        Phase {
            origin: now,
            state: AtomicU8::new(IDLE),
            since: AtomicU64::new(0),
        }
    }

    fn stamp(&self, now: Instant) {
        let us = now.saturating_duration_since(self.origin).as_micros();
        self.since.store(us as u64, Ordering::Relaxed);
    }

    /// Bytes arrived from the client.
    pub fn on_read(&self, now: impl FnOnce() -> Instant) {
        if self.state.load(Ordering::Relaxed) == IDLE {
            self.stamp(now());
            self.state.store(HEAD, Ordering::Relaxed);
        }
    }

    /// A complete request head was parsed and is being served.
    pub fn active(&self) {
        self.state.store(ACTIVE, Ordering::Relaxed);
    }

    /// The response was finished; the connection waits for the next request.
    pub fn idle(&self) {
        self.stamp(Instant::now());
        self.state.store(IDLE, Ordering::Relaxed);
    }

    pub fn check(&self, now: Instant, header_timeout: Duration, idle_timeout: Duration) -> Expiry {
        let since = self.origin + Duration::from_micros(self.since.load(Ordering::Relaxed));
        match self.state.load(Ordering::Relaxed) {
            HEAD if now >= since + header_timeout => Expiry::Head,
            HEAD => Expiry::Later(since + header_timeout),
            IDLE if now >= since + idle_timeout => Expiry::Idle,
            IDLE => Expiry::Later(since + idle_timeout),
            // Serving: other timeouts bound it; look again later in case it
            // becomes idle.
            _ => Expiry::Later(now + header_timeout.min(idle_timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_then_active_then_idle() {
        let t0 = Instant::now();
        let hdr = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let p = Phase::new(t0);
        assert_eq!(p.check(t0, hdr, idle), Expiry::Later(t0 + idle));
        assert_eq!(p.check(t0 + idle, hdr, idle), Expiry::Idle);
        let t1 = t0 + Duration::from_secs(5);
        p.on_read(|| t1);
        // More bytes of the same head do not restart the clock.
        p.on_read(|| t1 + Duration::from_secs(9));
        assert_eq!(
            p.check(t1 + Duration::from_secs(9), hdr, idle),
            Expiry::Later(t1 + hdr)
        );
        assert_eq!(p.check(t1 + hdr, hdr, idle), Expiry::Head);
        p.active();
        let t2 = t1 + Duration::from_secs(100);
        assert_eq!(p.check(t2, hdr, idle), Expiry::Later(t2 + hdr));
    }
}
