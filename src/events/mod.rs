//! Every decision that changes where traffic goes, as one structured record:
//! health transitions, ejections and their end, breaker transitions,
//! shedding, retry budgets running dry, rate-limit refusals, service level
//! changes, reloads, SLO alerts. Each says when, about what (the subject),
//! what changed and why, with the numbers.
//!
//! Events are kept in a bounded ring (`GET /events?since=`) and handed to
//! subscribers (`GET /events/stream`). Two bounds keep an event storm cheap:
//! decisions taken per request pass a [`Gate`] first (one event per subject
//! per interval, the rest counted into the next one), and the hub takes at
//! most [`MAX_PER_SEC`] events a second, counting what it drops.
//!
//! The hub is one per process, like the log: the decisions are made deep in
//! guards and endpoint state that outlive snapshots, and threading a handle
//! through all of them would couple each to the admin API.

pub mod gate;
pub mod sse;

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::broadcast;

pub use gate::Gate;

/// Events kept for `GET /events`.
pub const RING: usize = 1024;
/// Events taken in any one second; more are counted as dropped.
pub const MAX_PER_SEC: u32 = 200;

/// What kind of decision an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Health,
    Ejection,
    EjectionEnd,
    Breaker,
    Shed,
    RetryBudget,
    RateLimit,
    ServiceLevel,
    Reload,
    SloAlert,
    SloAction,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Health,
        Kind::Ejection,
        Kind::EjectionEnd,
        Kind::Breaker,
        Kind::Shed,
        Kind::RetryBudget,
        Kind::RateLimit,
        Kind::ServiceLevel,
        Kind::Reload,
        Kind::SloAlert,
        Kind::SloAction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Health => "health",
            Kind::Ejection => "ejection",
            Kind::EjectionEnd => "ejection_end",
            Kind::Breaker => "breaker",
            Kind::Shed => "shed",
            Kind::RetryBudget => "retry_budget",
            Kind::RateLimit => "rate_limit",
            Kind::ServiceLevel => "service_level",
            Kind::Reload => "reload",
            Kind::SloAlert => "slo_alert",
            Kind::SloAction => "slo_action",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Kinds whose deciding code already writes a log line of its own; the
    /// others are logged by the hub so every event reaches the log once.
    fn logged_elsewhere(self) -> bool {
        matches!(
            self,
            Kind::Health
                | Kind::Ejection
                | Kind::EjectionEnd
                | Kind::Breaker
                | Kind::ServiceLevel
                | Kind::Reload
        )
    }
}

/// One decision.
#[derive(Clone, Debug)]
pub struct Event {
    /// Increasing from 1 for the life of the process: `?since=` resumes.
    pub seq: u64,
    pub time: SystemTime,
    pub kind: Kind,
    /// What it is about: `route api`, `cluster web`, `endpoint 10.0.0.1:80 of
    /// cluster web`, `server`.
    pub subject: String,
    /// What changed: `closed → open`, `ejected for 30s`, `started`.
    pub what: String,
    /// Why, with the numbers.
    pub why: String,
}

impl Event {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "seq": self.seq,
            "time": crate::observe::access_log::rfc3339_millis(self.time),
            "unix_ms": self.time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            "kind": self.kind.as_str(),
            "subject": self.subject,
            "what": self.what,
            "why": self.why,
        })
    }
}

/// Which events a reader wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only events after this sequence number.
    pub since: u64,
    /// Only these kinds; empty: all.
    pub kinds: Vec<Kind>,
    /// Only subjects containing this text.
    pub subject: Option<String>,
}

impl Filter {
    /// From a query string: `since=N`, `kind=a,b`, `subject=TEXT`.
    pub fn from_query(query: Option<&str>) -> Result<Filter, String> {
        let mut f = Filter::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "since" => {
                    f.since = v
                        .parse()
                        .map_err(|_| format!("since={v:?} is not a sequence number"))?;
                }
                "kind" => {
                    for k in v.split(',').filter(|k| !k.is_empty()) {
                        f.kinds.push(Kind::parse(k).ok_or_else(|| {
                            format!(
                                "unknown kind {k:?}; kinds are {}",
                                Kind::ALL.map(Kind::as_str).join(", ")
                            )
                        })?);
                    }
                }
                "subject" => f.subject = Some(v),
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; use since, kind, subject"
                    ));
                }
            }
        }
        Ok(f)
    }

    pub fn accepts(&self, e: &Event) -> bool {
        e.seq > self.since
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self
                .subject
                .as_deref()
                .is_none_or(|s| e.subject.contains(s))
    }
}

/// `%XX` and `+` as a query string writes them.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    next_seq: u64,
    /// The second being counted against `MAX_PER_SEC`, and its count.
    second: Option<Instant>,
    in_second: u32,
    dropped: u64,
}

/// The process's events: the ring and the subscribers.
pub struct Hub {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Hub {
    fn new() -> Hub {
        Hub {
            ring: Mutex::new(Ring {
                events: VecDeque::with_capacity(RING),
                next_seq: 1,
                second: None,
                in_second: 0,
                dropped: 0,
            }),
            tx: broadcast::channel(256).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event (unless over this second's share) and hands it to
    /// subscribers. `now` bounds the rate.
    pub fn emit(&self, kind: Kind, subject: String, what: String, why: String, now: Instant) {
        let event = {
            let mut ring = self.lock();
            match ring.second {
                Some(s) if now.saturating_duration_since(s).as_secs() < 1 => {
                    if ring.in_second >= MAX_PER_SEC {
                        ring.dropped += 1;
                        return;
                    }
                    ring.in_second += 1;
                }
                _ => {
                    ring.second = Some(now);
                    ring.in_second = 1;
                }
            }
            let event = Arc::new(Event {
                seq: ring.next_seq,
                time: SystemTime::now(),
                kind,
                subject,
                what,
                why,
            });
            ring.next_seq += 1;
            if ring.events.len() == RING {
                ring.events.pop_front();
            }
            ring.events.push_back(event.clone());
            event
        };
        if !kind.logged_elsewhere() {
            tracing::warn!(target: "levee::event", kind = kind.as_str(), subject = %event.subject,
                "{}: {} ({})", event.subject, event.what, event.why);
        }
        // No subscriber is fine.
        let _ = self.tx.send(event);
    }

    /// The kept events the filter accepts, oldest first, and how many the
    /// rate bound dropped since the start.
    pub fn list(&self, filter: &Filter, limit: usize) -> (Vec<Arc<Event>>, u64, u64) {
        let ring = self.lock();
        let mut out: Vec<Arc<Event>> = ring
            .events
            .iter()
            .filter(|e| filter.accepts(e))
            .cloned()
            .collect();
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        (out, ring.next_seq - 1, ring.dropped)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

static HUB: LazyLock<Hub> = LazyLock::new(Hub::new);

/// The process's hub.
pub fn hub() -> &'static Hub {
    &HUB
}

/// Records an event now.
pub fn emit(
    kind: Kind,
    subject: impl Into<String>,
    what: impl Into<String>,
    why: impl Into<String>,
) {
    hub().emit(
        kind,
        subject.into(),
        what.into(),
        why.into(),
        Instant::now(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ring_keeps_the_newest_and_since_resumes() {
        let hub = Hub::new();
        let t = Instant::now();
        for i in 0..(RING + 10) {
            // Spread over seconds so the rate bound takes every one.
            let now = t + Duration::from_secs(i as u64);
            hub.emit(
                Kind::Breaker,
                "cluster a".into(),
                format!("#{i}"),
                String::new(),
                now,
            );
        }
        let (all, last, dropped) = hub.list(&Filter::default(), usize::MAX);
        assert_eq!(all.len(), RING);
        assert_eq!(last, (RING + 10) as u64);
        assert_eq!(dropped, 0);
        assert_eq!(all[0].seq, 11);
        let f = Filter {
            since: last - 3,
            ..Filter::default()
        };
        assert_eq!(hub.list(&f, usize::MAX).0.len(), 3);
    }

    #[test]
    fn a_storm_is_bounded_per_second() {
        let hub = Hub::new();
        let t = Instant::now();
        for _ in 0..(MAX_PER_SEC + 50) {
            hub.emit(Kind::Health, "e".into(), String::new(), String::new(), t);
        }
        let (all, _, dropped) = hub.list(&Filter::default(), usize::MAX);
        assert_eq!(all.len(), MAX_PER_SEC as usize);
        assert_eq!(dropped, 50);
        // The next second takes events again.
        hub.emit(
            Kind::Health,
            "e".into(),
            String::new(),
            String::new(),
            t + Duration::from_secs(1),
        );
        assert_eq!(
            hub.list(&Filter::default(), usize::MAX).0.len(),
            MAX_PER_SEC as usize + 1
        );
    }

    #[test]
    fn filters_by_kind_and_subject() {
        let f = Filter::from_query(Some("kind=breaker,ejection&subject=cluster%20web&since=0"))
            .unwrap();
        let e = |kind, subject: &str| Event {
            seq: 1,
            time: SystemTime::now(),
            kind,
            subject: subject.into(),
            what: String::new(),
            why: String::new(),
        };
        assert!(f.accepts(&e(Kind::Breaker, "endpoint 1.2.3.4:80 of cluster web")));
        assert!(!f.accepts(&e(Kind::Health, "cluster web")));
        assert!(!f.accepts(&e(Kind::Breaker, "cluster api")));
        assert!(Filter::from_query(Some("kind=nope")).is_err());
        assert!(Filter::from_query(Some("since=x")).is_err());
        assert!(Filter::from_query(Some("colour=red")).is_err());
    }
}
