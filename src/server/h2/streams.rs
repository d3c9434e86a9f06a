//! Where an HTTP/2 connection is in its life, for its idle timeout: streams
//! open, and whether any started or finished since the last look. The
//! pipeline flips atomics (`RequestCycle`); the connection driver looks on
//! a coarse tick with `Idle`, a small synchronous core that takes the clock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The streams of one connection that are in the pipeline.
#[derive(Default)]
pub struct Streams {
    open: AtomicUsize,
    /// Starts and ends so far; tells one idle spell from the next.
    events: AtomicU64,
}

impl Streams {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

impl crate::proxy::RequestCycle for Streams {
    /// HTTP/2 frames its bodies by DATA frames and END_STREAM: there is no
    /// ambiguous framing to report.
    fn started(&self, _body_len: Option<u64>) -> bool {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn finished(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// The driver's side: since when the connection has had no stream.
pub struct Idle {
    timeout: Duration,
    events: u64,
    since: Instant,
}

impl Idle {
    pub fn new(timeout: Duration, now: Instant) -> Idle {
        Idle {
            timeout,
            events: 0,
            since: now,
        }
    }

    /// Whether the connection has had no open stream, and none started or
    /// ended, for the whole timeout.
    pub fn expired(&mut self, streams: &Streams, now: Instant) -> bool {
        let events = streams.events();
        if streams.open() > 0 || events != self.events {
            self.events = events;
            self.since = now;
            return false;
        }
        now.saturating_duration_since(self.since) >= self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::RequestCycle;

    #[test]
    fn idle_counts_from_the_last_stream_and_never_while_one_is_open() {
        let t0 = Instant::now();
        let s = Streams::default();
        let mut idle = Idle::new(Duration::from_secs(10), t0);
        assert!(!idle.expired(&s, t0 + Duration::from_secs(9)));
        assert!(idle.expired(&s, t0 + Duration::from_secs(10)));

        s.started(None);
        assert!(!idle.expired(&s, t0 + Duration::from_secs(11)));
        // Open for long: never idle.
        assert!(!idle.expired(&s, t0 + Duration::from_secs(100)));
        s.finished();
        assert!(!idle.expired(&s, t0 + Duration::from_secs(101)));
        assert!(!idle.expired(&s, t0 + Duration::from_secs(110)));
        assert!(idle.expired(&s, t0 + Duration::from_secs(111)));
    }

    #[test]
    fn a_stream_that_came_and_went_between_looks_restarts_the_count() {
        let t0 = Instant::now();
        let s = Streams::default();
        let mut idle = Idle::new(Duration::from_secs(10), t0);
        assert!(!idle.expired(&s, t0 + Duration::from_secs(8)));
        s.started(None);
        s.finished();
        assert!(!idle.expired(&s, t0 + Duration::from_secs(12)));
        assert!(idle.expired(&s, t0 + Duration::from_secs(22)));
    }
}
