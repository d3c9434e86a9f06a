//! The async shell: one task per name on the control thread, and the one
//! resolution at start. A task owns its name's `plan::Name`, sleeps until
//! the next lookup is due, and on a change writes the `Resolved` table and
//! wakes the control loop (`changed`), which builds and swaps a snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::plan::{Bounds, Event, Name};
use super::resolver::{Dns, resolve_all};
use super::{Query, Resolved, Target};
use crate::config::DnsConfig;
use crate::observe::Metrics;
use crate::observe::metrics::DnsLabels;

/// The per-name metric handles; creating them makes the series exist (at
/// 0) before the first failure.
struct Counters {
    ok: Counter,
    failed: Counter,
    addresses: Gauge,
}

impl Counters {
    fn new(metrics: &Metrics, query: &Query) -> Counters {
        let name = query.to_string();
        let lookups = |result| {
            metrics.dns_lookups.get_or_create_owned(&DnsLabels {
                name: name.clone(),
                result,
            })
        };
        Counters {
            ok: lookups("ok"),
            failed: lookups("failed"),
            addresses: metrics.dns_addresses.get_or_create_owned(
                &crate::observe::metrics::DnsNameLabels { name: name.clone() },
            ),
        }
    }
}

fn list(targets: &[Target]) -> String {
    let items: Vec<String> = targets
        .iter()
        .map(|t| {
            if t.port == 0 {
                t.ip.to_string()
            } else {
                std::net::SocketAddr::new(t.ip, t.port).to_string()
            }
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Resolves every name of the configuration once, before Levee serves, on a
/// runtime of its own (the control loop's does not exist yet). A name that
/// does not resolve is logged and counted; its endpoints are absent until a
/// later lookup succeeds (the cluster answers 503 `no_endpoint` if it has
/// nothing else). Returns the names that did not resolve.
pub fn resolve_at_start(
    config: &DnsConfig,
    queries: &[Query],
    table: &Resolved,
    metrics: &Metrics,
) -> Vec<Query> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot resolve endpoint names at start: {e}");
            return queries.to_vec();
        }
    };
    runtime.block_on(async {
        let dns = match Dns::new(config) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("cannot resolve endpoint names: {e}");
                return queries.to_vec();
            }
        };
        // One query's timeout, plus room for the SRV targets' lookups.
        let limit = config.timeout.get() * 2 + Duration::from_millis(500);
        let mut failed = Vec::new();
        for (query, lookup) in resolve_all(&dns, queries, limit).await {
            let counters = Counters::new(metrics, &query);
            let mut name = Name::default();
            let bounds = bounds(config);
            let step = name.apply(lookup, &bounds, Instant::now());
            if let Some(Event::Failing(why)) = &step.event {
                counters.failed.inc();
                tracing::warn!(
                    name = %query,
                    "cannot resolve at start: {why}; its endpoints are left out until it resolves"
                );
                failed.push(query.clone());
            }
            if let Some(targets) = step.changed {
                counters.ok.inc();
                counters.addresses.set(targets.len() as i64);
                tracing::info!(name = %query, "resolved to {}", list(&targets));
                table.set(query, targets);
            }
        }
        failed
    })
}

fn bounds(config: &DnsConfig) -> Bounds {
    Bounds {
        min_ttl: config.min_ttl.get_ref().get(),
        max_ttl: config.max_ttl.get_ref().get(),
    }
}

/// Starts one task per name. Names the table already has an answer for, and
/// those in `failed_at_start`, are next looked up after `min_ttl`; the others
/// (new names) at once. Must run on the control loop's runtime.
pub fn spawn(
    config: &DnsConfig,
    queries: &[Query],
    failed_at_start: &[Query],
    table: &Arc<Resolved>,
    changed: &Arc<Notify>,
    metrics: &Metrics,
) -> Vec<JoinHandle<()>> {
    table.retain(queries);
    if queries.is_empty() {
        return Vec::new();
    }
    let dns = match Dns::new(config) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("endpoint names will not be re-resolved: {e}");
            return Vec::new();
        }
    };
    let bounds = bounds(config);
    queries
        .iter()
        .map(|q| {
            let known = table.get(q);
            let tried = failed_at_start.contains(q);
            let first = if known.is_some() || tried {
                Instant::now() + bounds.min_ttl
            } else {
                Instant::now()
            };
            let name = if known.is_none() && tried {
                Name::failed_at_start()
            } else {
                Name::new(known)
            };
            let task = Task {
                query: q.clone(),
                name,
                dns: dns.clone(),
                bounds,
                table: table.clone(),
                changed: changed.clone(),
                counters: Counters::new(metrics, q),
            };
            tokio::spawn(task.run(first))
        })
        .collect()
}

struct Task {
    query: Query,
    name: Name,
    dns: Dns,
    bounds: Bounds,
    table: Arc<Resolved>,
    changed: Arc<Notify>,
    counters: Counters,
}

impl Task {
    async fn run(mut self, first: Instant) {
        let mut next = first;
        loop {
            tokio::time::sleep_until(next.into()).await;
            let lookup = self.dns.lookup(&self.query).await;
            let step = self.name.apply(lookup, &self.bounds, Instant::now());
            next = step.next;
            if step.failed {
                self.counters.failed.inc();
            } else {
                self.counters.ok.inc();
            }
            match &step.event {
                Some(Event::Failing(why)) => match self.name.current() {
                    Some(known) => tracing::warn!(
                        name = %self.query,
                        "cannot resolve: {why}; keeping the last known addresses {}",
                        list(known)
                    ),
                    None => tracing::warn!(
                        name = %self.query,
                        "cannot resolve: {why}; no addresses for it yet"
                    ),
                },
                Some(Event::Recovered { failures }) => tracing::info!(
                    name = %self.query,
                    "resolves again after {failures} failed lookups"
                ),
                None => {}
            }
            if let Some(targets) = step.changed {
                tracing::info!(
                    name = %self.query,
                    "now resolves to {} (added {}, removed {})",
                    list(&targets),
                    list(&step.added),
                    list(&step.removed)
                );
                self.counters.addresses.set(targets.len() as i64);
                self.table.set(self.query.clone(), targets);
                self.changed.notify_one();
            }
        }
    }
}
