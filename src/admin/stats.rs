//! `GET /stats`: every route's request rate, error rate, latency
//! percentiles and recent series (`observe::route_stats`), with its SLO
//! budget where it has one: what the dashboard polls.

use std::sync::Arc;

use crate::route::Route;
use crate::shared::Shared;
use crate::snapshot::Snapshot;

/// Each route of a snapshot once (a route serving several listeners is one
/// route), in configuration order.
pub fn routes(snapshot: &Snapshot) -> Vec<Arc<Route>> {
    let mut seen = std::collections::HashSet::new();
    snapshot
        .listeners
        .iter()
        .flat_map(|l| l.routes.iter())
        .filter(|r| seen.insert(r.name.clone()))
        .cloned()
        .collect()
}

/// `GET /stats?points=N`: `points` 5-second buckets of series per route
/// (default 60: the last 5 minutes; at most 180).
pub fn report(snapshot: &Snapshot, query: Option<&str>, now: u64) -> serde_json::Value {
    let points = query
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("points=")?.parse().ok())
        .unwrap_or(60);
    let routes: serde_json::Map<String, serde_json::Value> = routes(snapshot)
        .iter()
        .filter_map(|r| {
            let stats = r.stats.as_ref()?;
            let mut v = serde_json::to_value(stats.report(now, points)).ok()?;
            if let Some(o) = v.as_object_mut() {
                let slo = r.slo.as_ref().map(|slo| {
                    let report = slo.tracker.peek(&slo.objective, now);
                    serde_json::json!({
                        "target_percent": report.target_percent,
                        "availability": report.availability,
                        "budget_remaining": report.budget_remaining,
                        "alerts_firing": report.alerts.iter().filter(|a| a.firing).map(|a| a.name).collect::<Vec<_>>(),
                        "latency": super::slo::latency(stats, &slo.latency_targets, now),
                    })
                });
                o.insert("slo".into(), slo.unwrap_or_default());
            }
            Some((r.name.to_string(), v))
        })
        .collect();
    serde_json::json!({ "time": now, "routes": routes })
}

/// Sets every route's latency gauges, and its latency target gauges.
pub fn publish(shared: &Shared, snapshot: &Snapshot, now: u64) {
    let registry = &shared.metrics.route_stats;
    for r in routes(snapshot) {
        let Some(stats) = &r.stats else { continue };
        registry.publish(&r.name, stats, now);
        if let Some(slo) = &r.slo
            && !slo.latency_targets.is_empty()
        {
            let (_, checks) = crate::observe::route_stats::check(stats, &slo.latency_targets, now);
            registry.publish_targets(&r.name, &checks);
        }
    }
}
