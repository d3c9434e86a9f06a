//! Runs the active checks: one task per endpoint of every cluster that has
//! `health_check`, on the control thread (checks are few and must not take
//! time from the workers). A new set starts with each snapshot and the old
//! one is aborted; the verdicts live in the endpoints' live state, so they
//! carry over a reload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::cluster::EndpointLive;
use crate::cluster::health::active::{self, Outcome, Probe};
use crate::cluster::health::state::{Check, State, Thresholds};
use crate::config::{CheckKind, HealthCheckConfig};
use crate::observe::metrics::TransitionLabels;
use crate::shared::Shared;
use crate::upstream::source::Sources;
use crate::upstream::tls::EndpointTls;

/// Starts the checks of the current snapshot.
pub fn spawn(shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    let snapshot = shared.snapshot.load_full();
    let mut tasks = Vec::new();
    for cluster in &snapshot.clusters {
        let Some(hc) = &cluster.health_check else {
            continue;
        };
        let probe = match hc.kind {
            CheckKind::Tcp if hc.send.is_some() || hc.expect.is_some() => {
                let bytes = |v: &Option<serde_spanned::Spanned<String>>| {
                    v.as_ref()
                        .map_or_else(Vec::new, |s| s.get_ref().as_bytes().to_vec())
                };
                Probe::TcpScript {
                    send: bytes(&hc.send),
                    expect: bytes(&hc.expect),
                }
            }
            CheckKind::Tcp => Probe::Tcp,
            CheckKind::Grpc => Probe::Grpc {
                service: hc.service.clone().unwrap_or_default(),
            },
            CheckKind::Http => Probe::Http {
                method: http::Method::from_bytes(hc.method.get_ref().as_bytes())
                    .unwrap_or(http::Method::GET),
                path: hc.path.clone(),
                host: hc.host.clone(),
                expect: hc.expect_status.clone(),
            },
            CheckKind::Postgres | CheckKind::Redis => {
                Probe::Role(crate::cluster::health::role::RoleProbe {
                    server: if hc.kind == CheckKind::Postgres {
                        crate::cluster::health::role::Server::Postgres
                    } else {
                        crate::cluster::health::role::Server::Redis
                    },
                    role: hc.role,
                    user: hc.user.clone(),
                    password: hc.password.clone(),
                    database: hc.database.clone(),
                    max_lag: hc.max_replication_lag.map(|d| d.get()),
                })
            }
        };
        for (i, endpoint) in cluster.endpoints.iter().enumerate() {
            let check = Checker {
                cluster: cluster.name.clone(),
                address: match &hc.port {
                    Some(port) => SocketAddr::new(endpoint.address.ip(), *port.get_ref()),
                    None => endpoint.address,
                },
                live: endpoint.live.clone(),
                tls: endpoint.tls.clone(),
                sources: cluster.sources.clone(),
                probe: probe.clone(),
                config: hc.clone(),
                shared: shared.clone(),
                rng: shared.id_seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            };
            tasks.push(tokio::spawn(check.run()));
        }
    }
    tasks
}

struct Checker {
    cluster: Arc<str>,
    /// Where the checks go: the endpoint's address, or its IP with the
    /// check's own `port`.
    address: SocketAddr,
    live: Arc<EndpointLive>,
    /// A TLS cluster's endpoints are checked over TLS, as requests reach them.
    tls: Option<EndpointTls>,
    /// The cluster's source addresses: checks leave from them as requests do.
    sources: Option<Arc<Sources>>,
    probe: Probe,
    config: HealthCheckConfig,
    shared: Arc<Shared>,
    rng: u64,
}

impl Checker {
    async fn run(mut self) {
        let thresholds = Thresholds {
            healthy: self.config.healthy_threshold,
            unhealthy: self.config.unhealthy_threshold,
        };
        // The first checks of many endpoints are spread over the jitter too.
        let mut wait = self.jitter();
        loop {
            tokio::time::sleep(wait).await;
            let outcome = active::check(
                self.address,
                self.sources.as_deref(),
                &self.probe,
                self.config.timeout.get(),
                self.tls.as_ref(),
            )
            .await;
            let (check, detail) = match &outcome {
                Outcome::Pass => (Check::Pass, "passed"),
                Outcome::Degraded(why) => (Check::Degraded, why.as_str()),
                Outcome::Fail(why) => (Check::Fail, why.as_str()),
                // Levee's own shortage: no verdict on the endpoint, its
                // state and counts stay as they are until the next check.
                Outcome::Shortage(cause, why) => {
                    self.shared.metrics.local_shortage(*cause, "health_check");
                    tracing::warn!(cluster = %self.cluster, endpoint = %self.live.address, "health check not made: {why}");
                    wait = self.next_wait();
                    continue;
                }
            };
            if let Some(t) = self.live.record_check(check, &thresholds, Instant::now()) {
                let message = format!(
                    "endpoint {} -> {}: {} (last check: {detail})",
                    t.from.as_str(),
                    t.to.as_str(),
                    t.reason
                );
                if t.to == State::Unhealthy {
                    tracing::warn!(cluster = %self.cluster, endpoint = %self.live.address, "{message}");
                } else {
                    tracing::info!(cluster = %self.cluster, endpoint = %self.live.address, "{message}");
                }
                let labels = TransitionLabels {
                    cluster: self.cluster.to_string(),
                    endpoint: self.live.address.to_string(),
                    from: t.from.as_str(),
                    to: t.to.as_str(),
                };
                self.shared.metrics.transitions.get_or_create(&labels).inc();
                crate::events::emit(
                    crate::events::Kind::Health,
                    format!("endpoint {} of cluster {}", self.live.address, self.cluster),
                    format!("{} → {}", t.from.as_str(), t.to.as_str()),
                    format!("{} (last check: {detail})", t.reason),
                );
            }
            wait = self.next_wait();
        }
    }

    /// The wait before the next check: an unhealthy endpoint's interval
    /// may differ.
    fn next_wait(&mut self) -> Duration {
        let interval = match self.live.state() {
            State::Unhealthy => self
                .config
                .unhealthy_interval
                .unwrap_or(self.config.interval),
            _ => self.config.interval,
        };
        interval.get() + self.jitter()
    }

    /// A random share of the configured jitter (xorshift; quality needs are
    /// modest: spreading checks out).
    fn jitter(&mut self) -> Duration {
        let max = self.config.jitter.get();
        if max.is_zero() {
            return Duration::ZERO;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        max.mul_f64((self.rng >> 11) as f64 / (1u64 << 53) as f64)
    }
}
