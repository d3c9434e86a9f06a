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
/// Restores saved counts first, and saves them every `slo.save_interval`.
pub async fn slos(shared: Arc<Shared>) {
    restore_slos(&shared, crate::slo::unix_now());
    let mut saved = Instant::now();
    loop {
        tokio::time::sleep(SLO_INTERVAL).await;
        evaluate_slos(&shared, crate::slo::unix_now());
        if let Some((_, every)) = slo_state(&shared)
            && saved.elapsed() >= every
        {
            save_slos(&shared, crate::slo::unix_now());
            saved = Instant::now();
        }
    }
}

/// One evaluation at `now` (Unix seconds).
pub fn evaluate_slos(shared: &Shared, now: u64) {
    let snapshot = shared.snapshot.load_full();
    crate::admin::stats::publish(shared, &snapshot, now);
    let routes = crate::admin::slo::routes(&snapshot);
    for route in &routes {
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
        // After the alert events, so that the reason follows them.
        super::burn_actions::apply(shared, route, &report, now);
    }
    let deciding: Vec<&str> = routes
        .iter()
        .filter(|r| r.on_burn.is_some())
        .map(|r| &*r.name)
        .collect();
    super::burn_actions::sweep(shared, &deciding);
}

/// The SLO state file and how often to write it, from the current config.
fn slo_state(shared: &Shared) -> Option<(std::path::PathBuf, Duration)> {
    let snapshot = shared.snapshot.load();
    let c = &snapshot.config.slo;
    let path = c.state_file.as_ref()?.get_ref().into();
    Some((path, c.save_interval.get_ref().get()))
}

/// Adds the counts saved in the state file to the routes' trackers (at
/// start). A missing or unusable file is logged; the counts start fresh.
pub fn restore_slos(shared: &Shared, now: u64) {
    use crate::slo::state;
    let Some((path, _)) = slo_state(shared) else {
        return;
    };
    let file = match state::load(&path) {
        Ok(Some(f)) => f,
        Ok(None) => {
            tracing::info!(path = %path.display(), "no SLO state file yet; SLO counts start fresh");
            return;
        }
        Err(e) => {
            tracing::warn!("SLO state ignored, counts start fresh: {e}");
            return;
        }
    };
    let snapshot = shared.snapshot.load_full();
    let mut restored = 0;
    for route in crate::admin::slo::routes(&snapshot) {
        let (Some(slo), Some(saved)) = (&route.slo, file.routes.get(&*route.name)) else {
            continue;
        };
        slo.tracker.restore(
            now,
            &state::decode(&saved.minutes),
            &state::decode(&saved.hours),
        );
        restored += 1;
    }
    tracing::info!(path = %path.display(), routes = restored, "SLO counts restored");
}

/// Writes every route's counts to the state file (crash-safely).
pub fn save_slos(shared: &Shared, now: u64) {
    use crate::slo::state;
    let Some((path, _)) = slo_state(shared) else {
        return;
    };
    let snapshot = shared.snapshot.load_full();
    let mut file = state::new_file(now);
    for route in crate::admin::slo::routes(&snapshot) {
        let Some(slo) = &route.slo else { continue };
        let (minutes, hours) = slo.tracker.dump();
        file.routes.insert(
            route.name.to_string(),
            state::RouteState {
                minutes: state::encode(&minutes),
                hours: state::encode(&hours),
            },
        );
    }
    if let Err(e) = state::save(&path, &file) {
        tracing::warn!(path = %path.display(), "cannot save the SLO state: {e}");
    }
}

/// Every second: re-reads the TLS files that changed (new handshakes get the
/// new certificates, open connections keep theirs) and sets the
/// certificate-expiry gauges. Stat calls only, unless a file changed.
pub async fn watch_tls_files(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        shared
            .tls
            .refresh(&shared.metrics.tls, std::time::SystemTime::now());
    }
}

/// How often the sweep removes the faults whose ttl passed. An expired
/// fault already acts on nothing (`chaos::live::FaultSet::active`); the
/// sweep makes it leave `GET /faults` and counts its event, within this long.
const FAULT_SWEEP_EVERY: Duration = Duration::from_millis(200);

/// The injected faults' expiry sweep, for the life of the process.
pub async fn fault_sweep(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(FAULT_SWEEP_EVERY).await;
        shared.faults.expire(Instant::now(), &shared.metrics.chaos);
    }
}
