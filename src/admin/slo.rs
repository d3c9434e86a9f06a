//! `GET /slo` and the routes the SLO loop evaluates: the current
//! snapshot's routes that have an SLO.

use std::sync::Arc;

use crate::route::Route;
use crate::snapshot::Snapshot;

/// The routes with an SLO in a snapshot, each once (a route serving several
/// listeners is one route).
pub fn routes(snapshot: &Snapshot) -> Vec<Arc<Route>> {
    let mut seen = std::collections::HashSet::new();
    snapshot
        .listeners
        .iter()
        .flat_map(|l| l.routes.iter())
        .filter(|r| r.slo.is_some() && seen.insert(r.name.clone()))
        .cloned()
        .collect()
}

/// Every route's report as `GET /slo` shows it.
pub fn reports(snapshot: &Snapshot, now: u64) -> serde_json::Value {
    let routes: serde_json::Map<String, serde_json::Value> = routes(snapshot)
        .iter()
        .filter_map(|r| {
            let slo = r.slo.as_ref()?;
            let report = slo.tracker.peek(&slo.objective, now);
            let mut v = serde_json::to_value(report).ok()?;
            if let (Some(o), Some(stats)) = (v.as_object_mut(), &r.stats) {
                o.insert("latency".into(), latency(stats, &slo.latency_targets, now));
            }
            if let (Some(on), Some(o)) = (&r.on_burn, v.as_object_mut()) {
                o.insert("on_fast_burn".into(), on_fast_burn(on));
            }
            Some((r.name.to_string(), v))
        })
        .collect();
    serde_json::json!({ "routes": routes })
}

/// A route's percentiles over the last 5 minutes and its latency targets
/// judged against them.
pub fn latency(
    stats: &crate::observe::route_stats::RouteStats,
    targets: &[(&'static str, std::time::Duration)],
    now: u64,
) -> serde_json::Value {
    use crate::observe::route_stats::{TARGET_MINUTES, check};
    let (p, checks) = check(stats, targets, now);
    serde_json::json!({
        "window": format!("{TARGET_MINUTES}m"),
        "percentiles": p,
        "targets": checks,
    })
}

/// A route's fast-burn actions: configured, and whether they are on.
fn on_fast_burn(on: &crate::slo::act::RouteActions) -> serde_json::Value {
    let since = on.acting.since();
    serde_json::json!({
        "actions": on.actions.describe(),
        "active": since.is_some(),
        "since_unix": since,
        "applied": on.acting.applied().map(|a| a.describe()),
    })
}
