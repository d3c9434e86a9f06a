//! Acting on the error budget: while one of a route's fast-burn alerts
//! (`fast_burn_1h`, `fast_burn_6h`, the workbook's two pages) fires, Levee
//! takes the route's `on_fast_burn` actions, and undoes them when none
//! fires any more:
//!
//! - **service level**: raised to at least the action's level (DEGRADED or
//!   MINIMAL), so nice-to-have routes answer their fallback and what
//!   capacity is left goes to the route that burns. Several routes may
//!   raise it; the most severe raise counts (`service_level.rs`).
//! - **retry budget**: the route's retries must also fit a tighter budget
//!   (`ratio`, `min_per_sec` over the cluster budget's window): retries
//!   add load to a backend that is already failing.
//! - **hold split**: the split weights in force when the burn started stay
//!   in force; a reload that shifts them (a canary promoted in the middle
//!   of an incident) takes effect once the burn is over.
//!
//! The alert windows are the hysteresis: an alert ends only once its short
//! window (5 or 30 minutes) is clean, so actions do not flap with single
//! requests.
//!
//! [`decide`] is the synchronous core: the alert states of one evaluation
//! and whether the actions are on in, a start or an end with its reason out.
//! [`Acting`] is a route's live state, kept by route name across reloads
//! ([`Registry`]); the control loop (`server::burn_actions`) applies the
//! decisions; the request path reads [`Acting::tight_budget`] (one atomic
//! load) only when it is about to retry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::AlertState;
use crate::config::burn_actions::OnFastBurn;
use crate::config::resilience::MinLevel;

/// The alerts that start the actions: the two that page.
pub const FAST: [&str; 2] = ["fast_burn_1h", "fast_burn_6h"];

/// A tighter retry budget: `ratio` of the requests plus `min_per_sec`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tight {
    pub ratio: f64,
    pub min_per_sec: f64,
}

/// What a route does while it burns fast (its `on_fast_burn`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Actions {
    /// The level to raise the service level to (degraded or minimal; the
    /// config's type, so that `slo` needs nothing of `resilience`).
    pub level: Option<MinLevel>,
    pub retry: Option<Tight>,
    pub hold_split: bool,
}

impl Actions {
    pub fn from_config(c: &OnFastBurn) -> Actions {
        Actions {
            level: c.service_level.as_ref().and_then(|l| {
                match l.get_ref().to_ascii_lowercase().as_str() {
                    "degraded" => Some(MinLevel::Degraded),
                    "minimal" => Some(MinLevel::Minimal),
                    _ => None,
                }
            }),
            retry: c.retry_budget.as_ref().map(|b| Tight {
                ratio: *b.ratio.get_ref(),
                min_per_sec: *b.min_per_sec.get_ref(),
            }),
            hold_split: c.hold_split.as_ref().is_some_and(|h| *h.get_ref()),
        }
    }

    /// The actions in words, for events: "service level ≥ degraded, retry
    /// budget 5 % + 0/s, split weights held".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = self.level {
            let name = match l {
                MinLevel::Full => "full",
                MinLevel::Degraded => "degraded",
                MinLevel::Minimal => "minimal",
                MinLevel::Maintenance => "maintenance",
            };
            parts.push(format!("service level raised to {name}"));
        }
        if let Some(t) = self.retry {
            parts.push(format!(
                "retry budget tightened to {} % of requests + {}/s",
                t.ratio * 100.0,
                t.min_per_sec
            ));
        }
        if self.hold_split {
            parts.push("split weights held".to_string());
        }
        parts.join(", ")
    }
}

/// A start or an end of a route's actions.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Take the actions: which alert, and why with the numbers.
    Start { alert: &'static str, reason: String },
    /// Undo them.
    End { reason: String },
}

/// The decision at `now` (Unix seconds) from one evaluation's alerts:
/// `since` is when the actions started (`None`: they are off).
pub fn decide(alerts: &[AlertState], since: Option<u64>, now: u64) -> Option<Decision> {
    let fast = || alerts.iter().filter(|a| FAST.contains(&a.name));
    let firing = fast().find(|a| a.firing);
    match (firing, since) {
        (Some(a), None) => Some(Decision::Start {
            alert: a.name,
            reason: format!(
                "{} fires: burn rate {:.1}× over its long window and {:.1}× over its short one \
                 (≥ {}×)",
                a.name, a.long_burn_rate, a.short_burn_rate, a.factor
            ),
        }),
        (None, Some(started)) => {
            let rates: Vec<String> = fast()
                .map(|a| {
                    format!(
                        "{} {:.1}×/{:.1}× (< {}× on one window)",
                        a.name, a.long_burn_rate, a.short_burn_rate, a.factor
                    )
                })
                .collect();
            Some(Decision::End {
                reason: format!(
                    "no fast burn alert fires any more: {}; acted for {}s",
                    rates.join(", "),
                    now.saturating_sub(started)
                ),
            })
        }
        _ => None,
    }
}

/// A route's live state: whether its actions are on, and what they hold.
/// Kept by route name across reloads.
#[derive(Default)]
pub struct Acting {
    /// The request path's view: a tightened budget is in force.
    tightened: AtomicBool,
    tight_ratio: AtomicU64,
    tight_floor: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the actions started (Unix seconds), and which ones.
    on: Option<(u64, Actions)>,
    /// The split weights held (cluster, weight), while a hold is on.
    held: Option<Vec<(String, u32)>>,
    /// The configured weights a hold last refused, so that it is told once.
    refused: Option<Vec<(String, u32)>>,
}

impl Acting {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the actions started, if they are on.
    pub fn since(&self) -> Option<u64> {
        self.lock().on.as_ref().map(|(t, _)| *t)
    }

    /// The actions in force, if on.
    pub fn applied(&self) -> Option<Actions> {
        self.lock().on.as_ref().map(|(_, a)| a.clone())
    }

    /// Turns the actions on at `now`; `weights`: the split in force, held
    /// when the actions hold it.
    pub fn start(&self, now: u64, actions: &Actions, weights: Vec<(String, u32)>) {
        let mut state = self.lock();
        if let Some(t) = actions.retry {
            self.tight_ratio.store(t.ratio.to_bits(), Ordering::Relaxed);
            self.tight_floor
                .store(t.min_per_sec.to_bits(), Ordering::Relaxed);
            self.tightened.store(true, Ordering::Release);
        }
        state.held = actions.hold_split.then_some(weights);
        state.refused = None;
        state.on = Some((now, actions.clone()));
    }

    /// Turns them off; returns the weights that were held, if any.
    pub fn end(&self) -> Option<Vec<(String, u32)>> {
        let mut state = self.lock();
        self.tightened.store(false, Ordering::Release);
        state.on = None;
        state.refused = None;
        state.held.take()
    }

    /// The tighter retry budget in force, if any: one atomic load when off.
    pub fn tight_budget(&self) -> Option<Tight> {
        if !self.tightened.load(Ordering::Acquire) {
            return None;
        }
        Some(Tight {
            ratio: f64::from_bits(self.tight_ratio.load(Ordering::Relaxed)),
            min_per_sec: f64::from_bits(self.tight_floor.load(Ordering::Relaxed)),
        })
    }

    /// The weights a snapshot being built gives the route's split targets
    /// (`configured`: the config's): the held ones while a hold is on.
    /// Returns them and, the first time a given configuration is held
    /// back, the shift refused (for its event).
    pub fn weights(&self, configured: &[(String, u32)]) -> (Vec<u32>, Option<String>) {
        let mut state = self.lock();
        let Some(held) = &state.held else {
            return (configured.iter().map(|(_, w)| *w).collect(), None);
        };
        let (weights, refused) = hold(held, configured);
        if !refused {
            return (weights, None);
        }
        let told = state.refused.as_deref() == Some(configured);
        let note = (!told).then(|| {
            format!(
                "configured {} held at {} while the fast burn lasts",
                show(configured),
                show(held)
            )
        });
        state.refused = Some(configured.to_vec());
        (weights, note)
    }
}

/// The held weights applied to the configured targets: a cluster held
/// keeps its weight, one added since gets 0. When the held clusters are all
/// gone, holding means nothing: the configured weights apply. Also whether
/// the result differs from the configuration (a shift refused).
pub fn hold(held: &[(String, u32)], configured: &[(String, u32)]) -> (Vec<u32>, bool) {
    let weights: Vec<u32> = configured
        .iter()
        .map(|(c, _)| held.iter().find(|(h, _)| h == c).map_or(0, |(_, w)| *w))
        .collect();
    if weights.iter().all(|w| *w == 0) {
        return (configured.iter().map(|(_, w)| *w).collect(), false);
    }
    let differs = configured.iter().zip(&weights).any(|((_, c), h)| c != h);
    (weights, differs)
}

/// Weights as "stable 90 / canary 10".
pub fn show(weights: &[(String, u32)]) -> String {
    let parts: Vec<String> = weights.iter().map(|(c, w)| format!("{c} {w}")).collect();
    parts.join(" / ")
}

/// What a route carries: its configured actions and its live state.
pub struct RouteActions {
    pub actions: Actions,
    pub acting: Arc<Acting>,
}

/// The routes' live action state by route name, outliving snapshots.
#[derive(Default)]
pub struct Registry {
    by_route: Mutex<HashMap<String, Weak<Acting>>>,
}

impl Registry {
    /// The route's actions for a snapshot being built, with the live state
    /// the last snapshot left (so a reload keeps actions that are on).
    pub fn route(&self, name: &str, config: Option<&OnFastBurn>) -> Option<Arc<RouteActions>> {
        let actions = Actions::from_config(config?);
        Some(Arc::new(RouteActions {
            actions,
            acting: self.acting(name),
        }))
    }

    /// The live state of `name`, made when it has none.
    pub fn acting(&self, name: &str) -> Arc<Acting> {
        let mut by_route = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        by_route.retain(|_, a| a.strong_count() > 0);
        if let Some(a) = by_route.get(name).and_then(Weak::upgrade) {
            return a;
        }
        let a = Arc::new(Acting::default());
        by_route.insert(name.to_owned(), Arc::downgrade(&a));
        a
    }

    /// Every route's live state that is on (for a route whose actions a
    /// reload removed, so that they are still undone).
    pub fn on(&self) -> Vec<(String, Arc<Acting>)> {
        let by_route = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        by_route
            .iter()
            .filter_map(|(n, a)| Some((n.clone(), a.upgrade()?)))
            .filter(|(_, a)| a.since().is_some())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &'static str, factor: f64, long: f64, short: f64) -> AlertState {
        AlertState {
            name,
            severity: "page",
            factor,
            firing: long >= factor && short >= factor,
            change: None,
            long_burn_rate: long,
            short_burn_rate: short,
        }
    }

    fn alerts(one_hour: (f64, f64), six_hours: (f64, f64), slow: bool) -> Vec<AlertState> {
        vec![
            alert("fast_burn_1h", 14.4, one_hour.0, one_hour.1),
            alert("fast_burn_6h", 6.0, six_hours.0, six_hours.1),
            AlertState {
                severity: "ticket",
                ..alert("slow_burn_3d", 1.0, if slow { 2.0 } else { 0.0 }, 2.0)
            },
        ]
    }

    #[test]
    fn a_fast_burn_starts_the_actions_with_its_numbers() {
        let now = 1_800_000_000;
        let d = decide(&alerts((20.0, 25.0), (3.0, 3.0), false), None, now);
        let Some(Decision::Start { alert, reason }) = d else {
            panic!("{d:?}");
        };
        assert_eq!(alert, "fast_burn_1h");
        assert!(reason.contains("burn rate 20.0×"), "{reason}");
        assert!(
            reason.contains("25.0×") && reason.contains("≥ 14.4×"),
            "{reason}"
        );
        // The 6-hour page starts them too.
        let d = decide(&alerts((7.0, 7.0), (7.0, 7.0), false), None, now);
        assert!(
            matches!(
                d,
                Some(Decision::Start {
                    alert: "fast_burn_6h",
                    ..
                })
            ),
            "{d:?}"
        );
    }

    #[test]
    fn a_slow_burn_does_not_act() {
        assert_eq!(decide(&alerts((0.0, 0.0), (0.0, 0.0), true), None, 0), None);
    }

    #[test]
    fn they_last_while_a_fast_alert_fires_and_end_with_how_long() {
        let t0 = 1_800_000_000;
        // On, still firing (either alert): nothing to do.
        assert_eq!(
            decide(&alerts((20.0, 20.0), (9.0, 9.0), true), Some(t0), t0 + 60),
            None
        );
        assert_eq!(
            decide(&alerts((9.0, 2.0), (9.0, 9.0), true), Some(t0), t0 + 60),
            None
        );
        // The short windows are clean: end, though the slow burn remains.
        let d = decide(&alerts((16.0, 3.0), (9.0, 4.0), true), Some(t0), t0 + 750);
        let Some(Decision::End { reason }) = d else {
            panic!("{d:?}");
        };
        assert!(reason.contains("fast_burn_1h 16.0×/3.0×"), "{reason}");
        assert!(reason.contains("acted for 750s"), "{reason}");
        // Off and quiet: nothing.
        assert_eq!(
            decide(&alerts((1.0, 1.0), (1.0, 1.0), false), None, t0),
            None
        );
    }

    fn w(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
        pairs.iter().map(|(c, w)| (c.to_string(), *w)).collect()
    }

    #[test]
    fn a_hold_keeps_the_weights_in_force_and_tells_a_refused_shift_once() {
        let a = Acting::default();
        let before = w(&[("stable", 90), ("canary", 10)]);
        let shifted = w(&[("stable", 50), ("canary", 50)]);
        // Not holding: the configuration's weights.
        assert_eq!(a.weights(&shifted), (vec![50, 50], None));
        let actions = Actions {
            hold_split: true,
            ..Actions::default()
        };
        a.start(100, &actions, before.clone());
        let (weights, note) = a.weights(&shifted);
        assert_eq!(weights, vec![90, 10]);
        let note = note.expect("a refused shift is told");
        assert!(
            note.contains("stable 50 / canary 50 held at stable 90 / canary 10"),
            "{note}"
        );
        // The same configuration again (another rebuild): not told again.
        assert_eq!(a.weights(&shifted), (vec![90, 10], None));
        // The weights in force are no shift.
        assert_eq!(a.weights(&before), (vec![90, 10], None));
        assert_eq!(a.end(), Some(before));
        assert_eq!(a.weights(&shifted), (vec![50, 50], None));
    }

    #[test]
    fn a_cluster_added_during_a_hold_gets_nothing() {
        let held = w(&[("stable", 90), ("canary", 10)]);
        let (weights, refused) = hold(&held, &w(&[("stable", 80), ("canary2", 20)]));
        assert_eq!(weights, vec![90, 0]);
        assert!(refused);
        // Nothing held is left: the configuration applies.
        assert_eq!(hold(&held, &w(&[("a", 1), ("b", 1)])), (vec![1, 1], false));
    }

    #[test]
    fn the_tight_budget_is_read_only_while_on() {
        let a = Acting::default();
        assert_eq!(a.tight_budget(), None);
        let tight = Tight {
            ratio: 0.05,
            min_per_sec: 1.0,
        };
        let actions = Actions {
            retry: Some(tight),
            ..Actions::default()
        };
        a.start(5, &actions, Vec::new());
        assert_eq!(a.tight_budget(), Some(tight));
        assert_eq!(a.since(), Some(5));
        assert_eq!(a.end(), None);
        assert_eq!(a.tight_budget(), None);
        assert_eq!(a.since(), None);
    }

    #[test]
    fn actions_from_config_and_in_words() {
        let c: crate::config::burn_actions::OnFastBurn = toml::from_str(
            "service_level = \"Degraded\"\nretry_budget = { ratio = 0.05 }\nhold_split = true",
        )
        .expect("parses");
        let a = Actions::from_config(&c);
        assert_eq!(a.level, Some(MinLevel::Degraded));
        assert_eq!(
            a.retry,
            Some(Tight {
                ratio: 0.05,
                min_per_sec: 0.0
            })
        );
        assert!(a.hold_split);
        assert_eq!(
            a.describe(),
            "service level raised to degraded, retry budget tightened to 5 % of requests + 0/s, \
             split weights held"
        );
    }
}
