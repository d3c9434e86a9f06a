//! The service level (FULL, DEGRADED, MINIMAL, MAINTENANCE) as the running
//! process holds it: the `resilience::degradation` state machine behind a
//! lock, its verdict published in an atomic that every request reads, the
//! request and shed counts its triggers look at. The task that feeds it the
//! signals every `degradation.interval` is the server's
//! (`server::control`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use crate::config::resilience::{DegradationTable, MinLevel};
use crate::resilience::degradation::{Change, Degradation, DegradationConfig, Level, Signals};

pub struct ServiceLevel {
    state: Mutex<State>,
    current: AtomicU8,
    /// Requests routed, and those shed by a bulkhead or an adaptive limit,
    /// since the last observation.
    requests: AtomicU64,
    shed: AtomicU64,
}

struct State {
    machine: Degradation,
    last: Option<(SystemTime, String)>,
    /// Routes acting on a fast SLO burn, and the level each asks for.
    raised: std::collections::BTreeMap<String, Level>,
}

/// A route's `min_level` as a level.
pub fn min_level(m: MinLevel) -> Level {
    match m {
        MinLevel::Full => Level::Full,
        MinLevel::Degraded => Level::Degraded,
        MinLevel::Minimal => Level::Minimal,
        MinLevel::Maintenance => Level::Maintenance,
    }
}

fn machine_config(t: &DegradationTable) -> DegradationConfig {
    DegradationConfig {
        healthy_below: *t.healthy_below.get_ref(),
        minimal_below: *t.minimal_below.get_ref(),
        shed_above: *t.shed_above.get_ref(),
        shed_minimal_above: *t.shed_minimal_above.get_ref(),
        min_requests: t.min_requests,
        enter_after: t.enter_after.get(),
        exit_after: t.exit_after.get(),
    }
}

impl ServiceLevel {
    pub fn new(table: &DegradationTable) -> ServiceLevel {
        ServiceLevel {
            state: Mutex::new(State {
                machine: Degradation::new(machine_config(table), Instant::now()),
                last: None,
                raised: std::collections::BTreeMap::new(),
            }),
            current: AtomicU8::new(Level::Full as u8),
            requests: AtomicU64::new(0),
            shed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The level now; one atomic load.
    pub fn current(&self) -> Level {
        Level::ALL
            .get(usize::from(self.current.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or_default()
    }

    /// Counts a routed request for the overload trigger; `shed`: refused by
    /// a bulkhead or the adaptive limit.
    pub fn count(&self, shed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if shed {
            self.shed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sets (or with `None` clears) the level by hand.
    pub fn set_manual(&self, level: Option<Level>) -> Level {
        let mut state = self.lock();
        let change = state.machine.set_manual(level, Instant::now());
        self.publish(&mut state, change, "admin API");
        state.machine.level()
    }

    /// Route `route` raises the level to at least `level` while its SLO
    /// burns fast (`None`: it no longer does); `why` says why, with the
    /// numbers. The most severe raise counts.
    pub fn raise(&self, route: &str, level: Option<Level>, why: &str) {
        let mut state = self.lock();
        match level {
            Some(l) => state.raised.insert(route.to_owned(), l),
            None => state.raised.remove(route),
        };
        let floor = state.raised.values().copied().max().unwrap_or_default();
        let reason = match level {
            Some(l) => format!("route {route} raised it to {l}: {why}"),
            None => format!("route {route} no longer raises it: {why}"),
        };
        let change = state.machine.set_floor(floor, reason, Instant::now());
        self.publish(&mut state, change, "SLO fast burn");
    }

    /// The routes raising the level now.
    pub fn raised_by(&self) -> Vec<String> {
        self.lock().raised.keys().cloned().collect()
    }

    /// One observation of the triggers (only when `auto` is on).
    pub fn observe(&self, signals: &Signals) {
        let mut state = self.lock();
        let change = state.machine.observe(signals, Instant::now());
        self.publish(&mut state, change, "trigger");
    }

    fn publish(&self, state: &mut State, change: Option<Change>, by: &str) {
        self.current
            .store(state.machine.level() as u8, Ordering::Relaxed);
        if let Some(c) = change {
            tracing::warn!(
                by,
                "service level {} → {}: {}",
                c.from.as_str(),
                c.to.as_str(),
                c.reason
            );
            crate::events::emit(
                crate::events::Kind::ServiceLevel,
                "server",
                format!("{} → {}", c.from.as_str(), c.to.as_str()),
                format!("{} (by {by})", c.reason),
            );
            state.last = Some((SystemTime::now(), c.reason));
        }
    }

    /// The level for `/status` and `GET /degradation`.
    pub fn status(&self) -> serde_json::Value {
        let state = self.lock();
        serde_json::json!({
            "level": state.machine.level().as_str(),
            "manual": state.machine.manual().map(Level::as_str),
            "auto": state.machine.auto_level().as_str(),
            "raised_by_slo": state.raised.iter().map(|(r, l)| (r.clone(), l.as_str())).collect::<std::collections::BTreeMap<_, _>>(),
            "last_change": state.last.as_ref().map(|(at, reason)| serde_json::json!({
                "time": crate::observe::access_log::rfc3339_millis(*at),
                "unix_ms": at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                "reason": reason,
            })),
        })
    }

    /// The requests and sheds counted since the last call.
    pub fn take_counts(&self) -> (u64, u64) {
        (
            self.requests.swap(0, Ordering::Relaxed),
            self.shed.swap(0, Ordering::Relaxed),
        )
    }

    /// Takes a reloaded `[degradation]` table: a changed one starts a new
    /// machine.
    pub fn reconfigure(&self, table: &DegradationTable) {
        let mut state = self.lock();
        let cfg = machine_config(table);
        if *state.machine.config() != cfg {
            // A new machine starts at FULL; a level set by hand stays.
            let manual = state.machine.manual();
            let floor = state.machine.floor();
            state.machine = Degradation::new(cfg, Instant::now());
            // Routes acting on an SLO burn keep their raise too.
            state
                .machine
                .set_floor(floor, String::new(), Instant::now());
            let change = state.machine.set_manual(manual, Instant::now());
            self.publish(&mut state, change.filter(|_| manual.is_some()), "reload");
        }
    }
}
