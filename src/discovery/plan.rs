//! What one name resolves to over time, as a synchronous state machine with
//! the clock passed in.
//!
//! - A successful lookup replaces the answer. The name is asked again when
//!   the records' TTL runs out, held within `[min_ttl, max_ttl]`: a TTL of 0
//!   would mean a lookup per request and a day-long TTL would hide a move
//!   for a day.
//! - A failed lookup (timeout, refused, SERVFAIL, NXDOMAIN or no records)
//!   keeps the last answer: a DNS outage must not empty a cluster that is
//!   serving. The name is asked again after `min_ttl`, doubling with each
//!   further failure up to `max_ttl`, so a dead server is not hammered.
//!   The first failure of an outage and the recovery are worth a log line;
//!   the ones in between are only counted.

use std::time::{Duration, Instant};

use super::Target;

/// `[dns] min_ttl` and `max_ttl`.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl Bounds {
    fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_ttl, self.max_ttl.max(self.min_ttl))
    }
}

/// What a lookup said.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// Records, and how long they may be kept (the smallest TTL among them).
    Found {
        targets: Vec<Target>,
        ttl: Duration,
    },
    Failed(String),
}

/// Worth a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The first failure after a success (or the first lookup failing).
    Failing(String),
    /// A success after `failures` failed lookups.
    Recovered { failures: u32 },
}

/// The outcome of applying one lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The new answer, when it differs from the old one.
    pub changed: Option<Vec<Target>>,
    pub added: Vec<Target>,
    pub removed: Vec<Target>,
    /// When to look the name up again.
    pub next: Instant,
    pub failed: bool,
    pub event: Option<Event>,
}

/// One name's resolution state.
#[derive(Clone, Debug, Default)]
pub struct Name {
    /// The last successful answer, sorted and deduplicated.
    current: Option<Vec<Target>>,
    /// Failed lookups since the last success.
    failures: u32,
}

impl Name {
    /// Starts from an answer already known (the one resolved at start, or
    /// kept over a reload).
    pub fn new(current: Option<Vec<Target>>) -> Name {
        Name {
            current,
            failures: 0,
        }
    }

    /// A name whose lookup at start failed (and was logged then): the next
    /// failure continues that outage instead of starting a new one.
    pub fn failed_at_start() -> Name {
        Name {
            current: None,
            failures: 1,
        }
    }

    pub fn current(&self) -> Option<&[Target]> {
        self.current.as_deref()
    }

    pub fn apply(&mut self, lookup: Lookup, bounds: &Bounds, now: Instant) -> Step {
        let (mut targets, ttl) = match lookup {
            Lookup::Found { targets, ttl } if !targets.is_empty() => (targets, ttl),
            Lookup::Found { .. } => return self.fail("no records".into(), bounds, now),
            Lookup::Failed(why) => return self.fail(why, bounds, now),
        };
        targets.sort();
        targets.dedup();
        let old = self.current.take().unwrap_or_default();
        let added: Vec<Target> = targets
            .iter()
            .filter(|t| !old.contains(t))
            .copied()
            .collect();
        let removed: Vec<Target> = old
            .iter()
            .filter(|t| !targets.contains(t))
            .copied()
            .collect();
        let changed = (old != targets || old.is_empty()).then(|| targets.clone());
        let event = (self.failures > 0).then_some(Event::Recovered {
            failures: self.failures,
        });
        self.current = Some(targets);
        self.failures = 0;
        Step {
            changed,
            added,
            removed,
            next: now + bounds.clamp(ttl),
            failed: false,
            event,
        }
    }

    fn fail(&mut self, why: String, bounds: &Bounds, now: Instant) -> Step {
        let event = (self.failures == 0).then_some(Event::Failing(why));
        // min_ttl, 2×, 4×, … up to max_ttl.
        let backoff = bounds
            .min_ttl
            .saturating_mul(1u32 << self.failures.min(16))
            .min(bounds.max_ttl.max(bounds.min_ttl));
        self.failures = self.failures.saturating_add(1);
        Step {
            changed: None,
            added: Vec::new(),
            removed: Vec::new(),
            next: now + backoff,
            failed: true,
            event,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(30),
    };

    fn t(last: u8) -> Target {
        Target {
            ip: [10, 0, 0, last].into(),
            port: 0,
            weight: 0,
            priority: 0,
        }
    }

    fn found(targets: &[Target], ttl_secs: u64) -> Lookup {
        Lookup::Found {
            targets: targets.to_vec(),
            ttl: Duration::from_secs(ttl_secs),
        }
    }

    #[test]
    fn first_answer_is_a_change_and_the_ttl_sets_the_next_lookup() {
        let now = Instant::now();
        let mut name = Name::default();
        let s = name.apply(found(&[t(3), t(2), t(2)], 10), &BOUNDS, now);
        assert_eq!(s.changed, Some(vec![t(2), t(3)]));
        assert_eq!(s.added, vec![t(2), t(3)]);
        assert!(s.removed.is_empty());
        assert_eq!(s.next, now + Duration::from_secs(10));
        assert_eq!(s.event, None);
        assert_eq!(name.current(), Some(&[t(2), t(3)][..]));
    }

    #[test]
    fn the_same_answer_in_another_order_changes_nothing() {
        let now = Instant::now();
        let mut name = Name::new(Some(vec![t(2), t(3)]));
        let s = name.apply(found(&[t(3), t(2)], 5), &BOUNDS, now);
        assert_eq!(s.changed, None);
        assert!(s.added.is_empty() && s.removed.is_empty());
    }

    #[test]
    fn a_change_says_what_came_and_what_went() {
        let now = Instant::now();
        let mut name = Name::new(Some(vec![t(2), t(3)]));
        let s = name.apply(found(&[t(3), t(4)], 5), &BOUNDS, now);
        assert_eq!(s.changed, Some(vec![t(3), t(4)]));
        assert_eq!(s.added, vec![t(4)]);
        assert_eq!(s.removed, vec![t(2)]);
    }

    #[test]
    fn ttls_are_held_within_the_bounds() {
        let now = Instant::now();
        let mut name = Name::default();
        assert_eq!(
            name.apply(found(&[t(1)], 0), &BOUNDS, now).next,
            now + Duration::from_secs(1)
        );
        assert_eq!(
            name.apply(found(&[t(1)], 86_400), &BOUNDS, now).next,
            now + Duration::from_secs(30)
        );
    }

    #[test]
    fn failures_keep_the_answer_back_off_and_log_once() {
        let mut now = Instant::now();
        let mut name = Name::new(Some(vec![t(2)]));
        let mut waits = Vec::new();
        for i in 0..7 {
            let s = name.apply(Lookup::Failed("timed out".into()), &BOUNDS, now);
            assert!(s.failed && s.changed.is_none());
            assert_eq!(
                s.event,
                (i == 0).then(|| Event::Failing("timed out".into())),
                "only the first failure of an outage is an event"
            );
            waits.push((s.next - now).as_secs());
            now = s.next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(name.current(), Some(&[t(2)][..]), "last known answer kept");
        let s = name.apply(found(&[t(2)], 5), &BOUNDS, now);
        assert_eq!(s.event, Some(Event::Recovered { failures: 7 }));
        assert_eq!(s.changed, None, "recovered to the same answer: no rebuild");
        let s = name.apply(Lookup::Failed("refused".into()), &BOUNDS, now);
        assert_eq!(s.event, Some(Event::Failing("refused".into())));
        assert_eq!(s.next - now, Duration::from_secs(1), "backoff starts over");
    }

    #[test]
    fn a_name_that_failed_at_start_continues_that_outage() {
        let now = Instant::now();
        let mut name = Name::failed_at_start();
        let s = name.apply(Lookup::Failed("refused".into()), &BOUNDS, now);
        assert_eq!(s.event, None, "already logged at start");
        assert_eq!(s.next - now, Duration::from_secs(2));
        let s = name.apply(found(&[t(1)], 5), &BOUNDS, now);
        assert_eq!(s.event, Some(Event::Recovered { failures: 2 }));
        assert_eq!(s.changed, Some(vec![t(1)]));
    }

    #[test]
    fn no_records_is_a_failure_not_an_empty_cluster() {
        let now = Instant::now();
        let mut name = Name::new(Some(vec![t(2)]));
        let s = name.apply(found(&[], 5), &BOUNDS, now);
        assert!(s.failed);
        assert_eq!(s.event, Some(Event::Failing("no records".into())));
        assert_eq!(name.current(), Some(&[t(2)][..]));
    }
}
