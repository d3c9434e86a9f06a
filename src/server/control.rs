//! The control plane's periodic loops, run on the control thread: feeding
//! the service level its signals, and sweeping idle rate-limit keys. They
//! live here, above the state they drive, so that `service_level` and
//! `ratelimit` stay plain state with no loop reaching back up to `Shared`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::resilience::degradation::{ClusterHealth, Signals};
use crate::shared::Shared;

/// Feeds the service level's triggers every `degradation.interval` while
/// `auto` is on, and hands it each reloaded `[degradation]` table.
pub async fn service_level(shared: Arc<Shared>) {
    let level = &shared.service_level;
    loop {
        let snapshot = shared.snapshot.load_full();
        let table = &snapshot.config.degradation;
        level.reconfigure(table);
        let interval = table.interval.get().max(Duration::from_millis(10));
        tokio::time::sleep(interval).await;
        let (requests, shed) = level.take_counts();
        if !table.auto {
            continue;
        }
        let now = Instant::now();
        let clusters = snapshot
            .clusters
            .iter()
            .map(|c| ClusterHealth {
                name: c.name.to_string(),
                healthy: c.endpoints.iter().filter(|e| e.live.usable(now)).count() as u32,
                total: c.endpoints.len() as u32,
            })
            .collect();
        level.observe(&Signals {
            clusters,
            requests,
            shed,
        });
    }
}

/// Sweeps the current snapshot's rate-limit tables every `sweep_interval`,
/// for the life of the process.
pub async fn sweep_rate_limits(shared: Arc<Shared>) {
    loop {
        let interval = shared.snapshot.load().rate_limits.sweep_interval;
        tokio::time::sleep(interval).await;
        let snapshot = shared.snapshot.load_full();
        let (removed, left) = snapshot.rate_limits.sweep(Instant::now());
        if removed > 0 {
            tracing::debug!(removed, left, "rate-limit keys swept");
        }
    }
}

/// How often SLOs are evaluated: their gauges set, alerts started or ended.
const SLO_INTERVAL: Duration = Duration::from_secs(5);

/// Evaluates every route's SLO each `SLO_INTERVAL`: sets the SLO gauges and
/// emits an event when a burn-rate alert starts or ends.
pub async fn slos(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(SLO_INTERVAL).await;
        evaluate_slos(&shared, crate::slo::unix_now());
    }
}

/// One evaluation at `now` (Unix seconds).
pub fn evaluate_slos(shared: &Shared, now: u64) {
    let snapshot = shared.snapshot.load_full();
    for route in crate::admin::slo::routes(&snapshot) {
        let Some(slo) = &route.slo else { continue };
        let report = slo.tracker.evaluate(&slo.objective, now);
        shared.metrics.slos.publish(&route.name, &report);
        for a in &report.alerts {
            let Some(started) = a.change else { continue };
            crate::events::emit(
                crate::events::Kind::SloAlert,
                format!("route {}", route.name),
                format!(
                    "{} ({}) {}",
                    a.name,
                    a.severity,
                    if started { "started" } else { "ended" }
                ),
                format!(
                    "burn rate {:.1}× over the long window, {:.1}× over the short one (alert at {}×); \
                     {:.1} % of the error budget left (target {} %)",
                    a.long_burn_rate,
                    a.short_burn_rate,
                    a.factor,
                    report.budget_remaining * 100.0,
                    report.target_percent
                ),
            );
        }
    }
}
