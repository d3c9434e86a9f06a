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
