//! When an open tunnel is closed by Levee, decided with the clock passed
//! in: its idle timeout (from the last byte either way), and the deadlines
//! that events set: a reload or a graceful shutdown lets it run on for the
//! drain timeout, its endpoint leaving service for the grace (and an
//! endpoint back in service before that keeps it open).

use std::time::{Duration, Instant};

/// Why Levee closes a tunnel (the others end by a side closing or failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    IdleTimeout,
    /// A reload happened `tunnel_drain_timeout` ago.
    Reload,
    /// A graceful shutdown is under way.
    Shutdown,
    /// Its endpoint left service `endpoint_down_grace` ago.
    EndpointDown,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle: Duration,
    pub drain: Duration,
    pub grace: Duration,
}

#[derive(Debug, Clone)]
pub struct Life {
    timeouts: Timeouts,
    last_activity: Instant,
    /// The earliest close an event asked for (reload, shutdown).
    drain: Option<(Instant, Close)>,
    /// Set while the endpoint is out of service.
    down_since: Option<Instant>,
}

impl Life {
    pub fn new(timeouts: Timeouts, now: Instant) -> Life {
        Life {
            timeouts,
            last_activity: now,
            drain: None,
            down_since: None,
        }
    }

    /// Bytes passed, either way.
    pub fn active(&mut self, now: Instant) {
        self.last_activity = self.last_activity.max(now);
    }

    /// A reload was applied: the tunnel runs on its old configuration for
    /// the drain timeout.
    pub fn reloaded(&mut self, now: Instant) {
        self.close_by(now + self.timeouts.drain, Close::Reload);
    }

    /// A graceful shutdown started; `cap`: how long the server still waits
    /// for open connections, past which the tunnel would be cut, not closed.
    pub fn shutting_down(&mut self, now: Instant, cap: Duration) {
        self.close_by(now + self.timeouts.drain.min(cap), Close::Shutdown);
    }

    fn close_by(&mut self, at: Instant, why: Close) {
        if self.drain.is_none_or(|(t, _)| at < t) {
            self.drain = Some((at, why));
        }
    }

    /// Whether the endpoint is in service, as last looked at.
    pub fn endpoint(&mut self, in_service: bool, now: Instant) {
        match (in_service, self.down_since) {
            (true, _) => self.down_since = None,
            (false, None) => self.down_since = Some(now),
            (false, Some(_)) => {}
        }
    }

    /// The close that is due at `now`, if any.
    pub fn due(&self, now: Instant) -> Option<Close> {
        let mut due = None;
        let mut earliest = None::<Instant>;
        for (at, why) in self.deadlines() {
            if at <= now && earliest.is_none_or(|e| at < e) {
                earliest = Some(at);
                due = Some(why);
            }
        }
        due
    }

    /// When something next falls due (the caller also wakes to look at the
    /// endpoint and for reloads).
    pub fn next(&self) -> Instant {
        self.deadlines()
            .map(|(at, _)| at)
            .min()
            .unwrap_or(self.last_activity + self.timeouts.idle)
    }

    fn deadlines(&self) -> impl Iterator<Item = (Instant, Close)> {
        [
            Some((self.last_activity + self.timeouts.idle, Close::IdleTimeout)),
            self.drain,
            self.down_since
                .map(|t| (t + self.timeouts.grace, Close::EndpointDown)),
        ]
        .into_iter()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn life(t0: Instant) -> Life {
        Life::new(
            Timeouts {
                idle: s(60),
                drain: s(30),
                grace: s(5),
            },
            t0,
        )
    }

    #[test]
    fn idle_counts_from_the_last_byte() {
        let t0 = Instant::now();
        let mut l = life(t0);
        l.active(t0 + s(50));
        assert_eq!(l.due(t0 + s(100)), None);
        assert_eq!(l.due(t0 + s(110)), Some(Close::IdleTimeout));
        assert_eq!(l.next(), t0 + s(110));
    }

    #[test]
    fn a_reload_closes_after_the_drain_timeout_and_a_second_does_not_extend_it() {
        let t0 = Instant::now();
        let mut l = life(t0);
        l.reloaded(t0 + s(1));
        l.active(t0 + s(20));
        l.reloaded(t0 + s(10));
        assert_eq!(l.due(t0 + s(30)), None);
        assert_eq!(l.due(t0 + s(31)), Some(Close::Reload));
    }

    #[test]
    fn shutdown_is_capped_by_the_servers_own_wait() {
        let t0 = Instant::now();
        let mut l = life(t0);
        l.shutting_down(t0, s(2));
        assert_eq!(l.next(), t0 + s(2));
        assert_eq!(l.due(t0 + s(2)), Some(Close::Shutdown));
    }

    #[test]
    fn endpoint_down_for_the_grace_closes_and_back_in_service_does_not() {
        let t0 = Instant::now();
        let mut l = life(t0);
        l.endpoint(false, t0);
        l.endpoint(false, t0 + s(3));
        assert_eq!(l.due(t0 + s(4)), None);
        l.endpoint(true, t0 + s(4));
        assert_eq!(l.due(t0 + s(6)), None);
        l.endpoint(false, t0 + s(7));
        assert_eq!(l.due(t0 + s(12)), Some(Close::EndpointDown));
    }
}
