//! The control plane's side of acting on the error budget (`slo::act`): at
//! each SLO evaluation, a route's fast-burn decision is applied to the
//! process (the service level's floor, the route's tightened retry budget,
//! the held split) and told as an `slo_action` event with its reason and
//! numbers. Run on the control thread, after the route's report.

use crate::route::Route;
use crate::shared::Shared;
use crate::slo::Report;
use crate::slo::act::{self, Decision};

/// Applies the route's decision at `now` (Unix seconds) from its report.
pub fn apply(shared: &Shared, route: &Route, report: &Report, now: u64) {
    let Some(on) = &route.on_burn else { return };
    let acting = &on.acting;
    let subject = format!("route {}", route.name);
    let budget = format!(
        "{:.1} % of the error budget left (target {} %)",
        report.budget_remaining * 100.0,
        report.target_percent
    );
    match act::decide(&report.alerts, acting.since(), now) {
        Some(Decision::Start { alert, reason }) => {
            acting.start(now, &on.actions, route.weights());
            if let Some(level) = on.actions.level {
                shared.service_level.raise(
                    &route.name,
                    Some(crate::service_level::min_level(level)),
                    &format!("{alert} fires"),
                );
            }
            let mut why = format!("{reason}; {budget}");
            if on.actions.hold_split {
                why.push_str(&format!("; split held at {}", act::show(&route.weights())));
            }
            tracing::warn!(route = %route.name, "fast SLO burn: {}: {why}", on.actions.describe());
            crate::events::emit(
                crate::events::Kind::SloAction,
                subject,
                format!("actions started: {}", on.actions.describe()),
                why,
            );
        }
        Some(Decision::End { reason }) => end(shared, &route.name, acting, &reason, &budget),
        None => {}
    }
}

/// Undoes a route's actions, telling why.
fn end(shared: &Shared, route: &str, acting: &act::Acting, reason: &str, budget: &str) {
    let applied = acting.applied().unwrap_or_default();
    let held = acting.end();
    if applied.level.is_some() {
        shared
            .service_level
            .raise(route, None, "its fast burn is over");
    }
    let mut why = format!("{reason}; {budget}");
    if held.is_some() {
        // The configuration may have asked for other weights meanwhile:
        // a snapshot built again applies them.
        let snapshot = shared.rebuild(false);
        let now_in_force = crate::admin::slo::routes(&snapshot)
            .iter()
            .find(|r| &*r.name == route)
            .map(|r| act::show(&r.weights()));
        if let Some(w) = now_in_force {
            why.push_str(&format!("; split weights now {w}"));
        }
    }
    tracing::warn!(route, "fast SLO burn over: {}: {why}", applied.describe());
    crate::events::emit(
        crate::events::Kind::SloAction,
        format!("route {route}"),
        format!("actions ended: {}", applied.describe()),
        why,
    );
}

/// Ends the actions of routes that can no longer decide for themselves: a
/// reload removed their `on_fast_burn` (or the route), so no evaluation
/// would ever end them. `deciding`: the routes with actions now.
pub fn sweep(shared: &Shared, deciding: &[&str]) {
    let removed = "on_fast_burn removed by a reload";
    for (name, acting) in shared.metrics.slos.acts.on() {
        if !deciding.contains(&name.as_str()) {
            end(shared, &name, &acting, removed, "no SLO evaluation");
        }
    }
    // A raise whose route (and its live state) is gone altogether.
    for name in shared.service_level.raised_by() {
        if !deciding.contains(&name.as_str()) {
            shared.service_level.raise(&name, None, removed);
        }
    }
}
