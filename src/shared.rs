//! What every worker shares for the life of the process: the current
//! snapshot, the live endpoint state that outlives snapshots, metrics and the
//! access log.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cluster::LiveRegistry;
use crate::config::Config;
use crate::observe::{AccessLog, Metrics};
use crate::snapshot::Snapshot;

pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub live: LiveRegistry,
    pub metrics: Metrics,
    pub access_log: Option<AccessLog>,
    /// Makes generated request ids differ between process runs.
    pub id_seed: u64,
    /// The file `reload` reads; `None` for an embedded config (demo).
    pub config_path: Option<PathBuf>,
    /// FULL, DEGRADED, MINIMAL or MAINTENANCE.
    pub service_level: crate::service_level::ServiceLevel,
    /// Rate-limit tables and Redis stores that outlive snapshots.
    pub rate_limits: crate::ratelimit::rules::Registry,
    /// When the process started serving (wall clock for `/status`, monotonic
    /// for the uptime).
    pub started: (std::time::SystemTime, std::time::Instant),
    /// The last reload, for `/status`.
    pub last_reload: std::sync::Mutex<Option<LastReload>>,
    /// Injected faults in force (`chaos`), from the config and the admin API.
    pub faults: crate::chaos::live::Faults,
    /// TLS listeners' configurations, replaced on reload and when their
    /// files change.
    pub tls: crate::tls::Terminators,
    /// Span export to an OpenTelemetry collector, when `[tracing]` asks.
    pub otlp: Option<crate::observe::otlp::Exporter>,
}

/// What `/status` says about the last reload.
#[derive(Clone, Debug)]
pub struct LastReload {
    pub at: std::time::SystemTime,
    /// `SIGHUP` or `admin`.
    pub trigger: &'static str,
    /// The summary when applied, the reason when refused.
    pub result: Result<String, String>,
}

impl Shared {
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
        workers: usize,
    ) -> std::io::Result<Shared> {
        let metrics = Metrics::new();
        let live = LiveRegistry::new(workers);
        let access_log = if config.access_log.enabled {
            Some(AccessLog::start(&config.access_log.path)?)
        } else {
            None
        };
        let service_level = crate::service_level::ServiceLevel::new(&config.degradation);
        let rate_limits = crate::ratelimit::rules::Registry::default();
        let otlp = crate::observe::otlp::Exporter::from_config(&config.tracing, &metrics.otlp);
        let faults = crate::chaos::live::Faults::default();
        faults.configure(&config, std::time::Instant::now(), &metrics.chaos);
        let snapshot = Snapshot::build(config, &live, &rate_limits, &metrics, true);
        let id_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        Ok(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            live,
            metrics,
            access_log,
            id_seed,
            config_path,
            service_level,
            rate_limits,
            started: (std::time::SystemTime::now(), std::time::Instant::now()),
            last_reload: std::sync::Mutex::new(None),
            faults,
            tls: crate::tls::Terminators::default(),
            otlp,
        })
    }

    /// Swaps in a snapshot built from the current configuration again, with
    /// what endpoint names resolve to now (not a reload: the file is not
    /// read). `first`: still starting (endpoints begin HEALTHY).
    pub fn rebuild(&self, first: bool) -> Arc<Snapshot> {
        let config = self.snapshot.load().config.clone();
        let snapshot = Arc::new(Snapshot::build(
            config,
            &self.live,
            &self.rate_limits,
            &self.metrics,
            first,
        ));
        self.snapshot.store(snapshot.clone());
        snapshot
    }

    /// Swaps in a snapshot built from an already validated config.
    pub fn install(&self, config: Config) -> Arc<Snapshot> {
        self.faults
            .configure(&config, std::time::Instant::now(), &self.metrics.chaos);
        let snapshot = Arc::new(Snapshot::build(
            config,
            &self.live,
            &self.rate_limits,
            &self.metrics,
            false,
        ));
        self.snapshot.store(snapshot.clone());
        self.metrics.reloads_applied();
        snapshot
    }
}
