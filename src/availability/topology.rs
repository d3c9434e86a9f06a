//! Availability from the live topology, for `GET /availability`.
//!
//! - An endpoint's observed availability is the share of its tries that
//!   succeeded (`cluster::observed::Tries`), since Levee started and over the last
//!   five minutes. An endpoint without tries takes its cluster's pooled
//!   share (the tries of all its endpoints together); a cluster without any
//!   try has no figure (`null`).
//! - A cluster is up when at least N of its M primary endpoints are, or,
//!   failing that, one of its backups: `parallel(N of M primaries, 1 of
//!   the backups)`. N comes from the cluster's `panic_threshold` (below it,
//!   Levee considers the cluster overwhelmed and spreads over unhealthy
//!   endpoints): `N = max(1, ceil(M × panic_threshold / 100))`; with the
//!   default threshold of 0, one endpoint is enough.
//! - A route over one cluster has that cluster's availability; a route over
//!   a split has the weighted mean of its clusters' (a request lands on one
//!   cluster, with the split's odds).
//! - Beside the composed figure, each route shows what its clients actually
//!   got: the share of its answers that were not 5xx.
//!
//! The composed figures assume independent failures and a failover that
//! works (retries, outlier detection, health checks): they say what the
//! redundancy can give, the observed one what it gave.

use std::time::Instant;

use serde::Serialize;

use super::compose;
use super::spof;
use crate::cluster::observed::{BUCKET, BUCKETS, Counts};
use crate::shared::Shared;

/// One endpoint's counts, as gathered from its live state.
#[derive(Debug, Clone)]
pub struct EndpointInput {
    pub address: String,
    pub backup: bool,
    pub state: &'static str,
    pub usable: bool,
    pub since_start: Counts,
    pub window: Counts,
}

#[derive(Debug, Clone)]
pub struct ClusterInput {
    pub name: String,
    pub panic_threshold: u32,
    pub endpoints: Vec<EndpointInput>,
}

#[derive(Debug, Clone)]
pub struct RouteInput {
    pub name: String,
    /// (cluster, weight); one entry with weight 1 for a plain route.
    pub targets: Vec<(String, u32)>,
    /// Answers that were not 5xx (ok) and 5xx (failed), since start.
    pub answered: Counts,
}

/// A figure since start and over the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pair {
    pub since_start: Option<f64>,
    pub window: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CountsJson {
    pub ok: u64,
    pub failed: u64,
    pub availability: Option<f64>,
}

impl From<Counts> for CountsJson {
    fn from(c: Counts) -> Self {
        CountsJson {
            ok: c.ok,
            failed: c.failed,
            availability: c.ratio(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    pub address: String,
    pub backup: bool,
    pub state: &'static str,
    pub usable: bool,
    pub since_start: CountsJson,
    pub window: CountsJson,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub name: String,
    /// Primaries needed (N of M) and how N was found.
    pub needed: usize,
    pub primaries: usize,
    pub backups: usize,
    pub needed_from: String,
    pub availability: Pair,
    pub nines: Pair,
    pub endpoints: Vec<EndpointReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteTarget {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    pub name: String,
    pub clusters: Vec<RouteTarget>,
    /// Composed from the clusters.
    pub availability: Pair,
    pub nines: Pair,
    /// What the route's clients got since start: answers that were not 5xx.
    pub observed: CountsJson,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub window_seconds: u64,
    pub clusters: Vec<ClusterReport>,
    pub routes: Vec<RouteReport>,
    pub single_points_of_failure: Vec<spof::Finding>,
}

/// Primaries needed for the cluster to count as up.
pub fn needed(primaries: usize, panic_threshold: u32) -> usize {
    (primaries * panic_threshold as usize)
        .div_ceil(100)
        .clamp(1, primaries.max(1))
}

/// The cluster's availability from its endpoints' counts (`pick` chooses
/// since-start or window counts).
fn cluster_availability(c: &ClusterInput, pick: fn(&EndpointInput) -> Counts) -> Option<f64> {
    let pooled = c
        .endpoints
        .iter()
        .fold(Counts::default(), |sum, e| sum + pick(e))
        .ratio()?;
    let of = |backup: bool| -> Vec<f64> {
        c.endpoints
            .iter()
            .filter(|e| e.backup == backup)
            .map(|e| pick(e).ratio().unwrap_or(pooled))
            .collect()
    };
    let primaries = of(false);
    let backups = of(true);
    let n = needed(primaries.len(), c.panic_threshold);
    let main = compose::at_least(n, &primaries);
    Some(compose::parallel(&[main, compose::parallel(&backups)]))
}

fn nines(p: Pair) -> Pair {
    // Infinite nines (a perfect record) are shown as null, not as a number
    // JSON cannot carry.
    let n = |a: Option<f64>| a.map(compose::nines).filter(|n| n.is_finite());
    Pair {
        since_start: n(p.since_start),
        window: n(p.window),
    }
}

/// The report from gathered inputs: pure, so it is tested without sockets.
pub fn report(
    clusters: &[ClusterInput],
    routes: &[RouteInput],
    findings: Vec<spof::Finding>,
) -> Report {
    let cluster_reports: Vec<ClusterReport> = clusters
        .iter()
        .map(|c| {
            let primaries = c.endpoints.iter().filter(|e| !e.backup).count();
            let n = needed(primaries, c.panic_threshold);
            let availability = Pair {
                since_start: cluster_availability(c, |e| e.since_start),
                window: cluster_availability(c, |e| e.window),
            };
            ClusterReport {
                name: c.name.clone(),
                needed: n,
                primaries,
                backups: c.endpoints.len() - primaries,
                needed_from: format!("panic_threshold {} %", c.panic_threshold),
                availability,
                nines: nines(availability),
                endpoints: c
                    .endpoints
                    .iter()
                    .map(|e| EndpointReport {
                        address: e.address.clone(),
                        backup: e.backup,
                        state: e.state,
                        usable: e.usable,
                        since_start: e.since_start.into(),
                        window: e.window.into(),
                    })
                    .collect(),
            }
        })
        .collect();
    let of_cluster = |name: &str| cluster_reports.iter().find(|c| c.name == name);
    let weighted = |targets: &[(String, u32)], pick: fn(&Pair) -> Option<f64>| {
        let total: u32 = targets.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        targets.iter().try_fold(0.0, |sum, (cluster, weight)| {
            let a = pick(&of_cluster(cluster)?.availability)?;
            Some(sum + a * f64::from(*weight) / f64::from(total))
        })
    };
    let routes = routes
        .iter()
        .map(|r| {
            let availability = Pair {
                since_start: weighted(&r.targets, |p| p.since_start),
                window: weighted(&r.targets, |p| p.window),
            };
            RouteReport {
                name: r.name.clone(),
                clusters: r
                    .targets
                    .iter()
                    .map(|(cluster, weight)| RouteTarget {
                        cluster: cluster.clone(),
                        weight: *weight,
                    })
                    .collect(),
                availability,
                nines: nines(availability),
                observed: r.answered.into(),
            }
        })
        .collect();
    Report {
        window_seconds: BUCKET.as_secs() * BUCKETS as u64,
        clusters: cluster_reports,
        routes,
        single_points_of_failure: findings,
    }
}

/// Gathers the inputs from the running snapshot and its live state.
pub fn live(shared: &Shared, now: Instant) -> Report {
    let snap = shared.snapshot.load();
    let clusters: Vec<ClusterInput> = snap
        .clusters
        .iter()
        .map(|c| ClusterInput {
            name: c.name.to_string(),
            panic_threshold: c.panic_threshold,
            endpoints: c
                .endpoints
                .iter()
                .map(|e| EndpointInput {
                    address: e.address.to_string(),
                    backup: e.backup,
                    state: e.live.state().as_str(),
                    usable: e.live.usable(now),
                    since_start: e.live.tries.total(),
                    window: e.live.tries.window(now),
                })
                .collect(),
        })
        .collect();
    let routes: Vec<RouteInput> = snap
        .config
        .routes
        .iter()
        .map(|r| {
            let targets: Vec<(String, u32)> = match &r.cluster {
                Some(c) => vec![(c.get_ref().clone(), 1)],
                None => r
                    .split
                    .iter()
                    .map(|t| (t.cluster.get_ref().clone(), *t.weight.get_ref()))
                    .collect(),
            };
            let answered = targets.iter().fold(Counts::default(), |sum, (cluster, _)| {
                let count = |class| {
                    shared
                        .metrics
                        .requests
                        .get_or_create(&crate::observe::metrics::RequestLabels {
                            route: r.name.get_ref().clone(),
                            cluster: cluster.clone(),
                            class,
                        })
                        .get()
                };
                let ok = ["1xx", "2xx", "3xx", "4xx"].map(count).iter().sum();
                sum + Counts {
                    ok,
                    failed: count("5xx"),
                }
            });
            RouteInput {
                name: r.name.get_ref().clone(),
                targets,
                answered,
            }
        })
        .collect();
    let usable = |name: &str| {
        snap.clusters
            .iter()
            .find(|c| &*c.name == name)
            .map(|c| c.endpoints.iter().filter(|e| e.live.usable(now)).count())
    };
    let findings = spof::findings(&snap.config, &usable);
    report(&clusters, &routes, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, backup: bool, ok: u64, failed: u64) -> EndpointInput {
        let c = Counts { ok, failed };
        EndpointInput {
            address: address.into(),
            backup,
            state: "healthy",
            usable: true,
            since_start: c,
            window: c,
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn n_from_the_panic_threshold() {
        assert_eq!(needed(3, 0), 1);
        assert_eq!(needed(3, 50), 2);
        assert_eq!(needed(4, 50), 2);
        assert_eq!(needed(3, 100), 3);
        assert_eq!(needed(0, 50), 1);
    }

    #[test]
    fn a_cluster_is_its_endpoints_in_parallel() {
        let c = ClusterInput {
            name: "c".into(),
            panic_threshold: 0,
            endpoints: vec![
                endpoint("a", false, 90, 10),
                endpoint("b", false, 100, 0),
                endpoint("c", false, 99, 1),
            ],
        };
        let r = report(&[c], &[], vec![]);
        // One perfect endpoint: nothing missing.
        assert!(close(r.clusters[0].availability.since_start, 1.0));
        assert_eq!(r.clusters[0].nines.since_start, None);
        assert_eq!(
            r.clusters[0].endpoints[0].since_start.availability,
            Some(0.9)
        );
    }

    #[test]
    fn n_of_m_and_backups() {
        let c = ClusterInput {
            name: "c".into(),
            panic_threshold: 50,
            endpoints: vec![
                endpoint("a", false, 9, 1),
                endpoint("b", false, 9, 1),
                endpoint("c", false, 9, 1),
                endpoint("z", true, 8, 2),
            ],
        };
        let r = report(&[c], &[], vec![]);
        assert_eq!(r.clusters[0].needed, 2);
        let main = compose::at_least(2, &[0.9; 3]);
        let want = 1.0 - (1.0 - main) * 0.2;
        assert!(close(r.clusters[0].availability.since_start, want));
    }

    #[test]
    fn endpoints_without_tries_take_the_pooled_share() {
        let c = ClusterInput {
            name: "c".into(),
            panic_threshold: 100,
            endpoints: vec![endpoint("a", false, 8, 2), endpoint("b", false, 0, 0)],
        };
        let r = report(std::slice::from_ref(&c), &[], vec![]);
        assert!(close(r.clusters[0].availability.since_start, 0.8 * 0.8));
        assert_eq!(r.clusters[0].endpoints[1].since_start.availability, None);
        let idle = ClusterInput {
            endpoints: vec![endpoint("a", false, 0, 0)],
            ..c
        };
        let r = report(&[idle], &[], vec![]);
        assert_eq!(r.clusters[0].availability.since_start, None);
    }

    #[test]
    fn routes_weigh_their_split() {
        let one = |name: &str, ok, failed| ClusterInput {
            name: name.into(),
            panic_threshold: 0,
            endpoints: vec![endpoint("a", false, ok, failed)],
        };
        let routes = [
            RouteInput {
                name: "plain".into(),
                targets: vec![("x".into(), 1)],
                answered: Counts { ok: 9, failed: 1 },
            },
            RouteInput {
                name: "canary".into(),
                targets: vec![("x".into(), 90), ("y".into(), 10)],
                answered: Counts::default(),
            },
            RouteInput {
                name: "idle".into(),
                targets: vec![("x".into(), 1), ("z".into(), 1)],
                answered: Counts::default(),
            },
        ];
        let r = report(
            &[one("x", 99, 1), one("y", 50, 50), one("z", 0, 0)],
            &routes,
            vec![],
        );
        assert!(close(r.routes[0].availability.since_start, 0.99));
        assert_eq!(r.routes[0].observed.availability, Some(0.9));
        assert!(close(
            r.routes[1].availability.since_start,
            0.9 * 0.99 + 0.1 * 0.5
        ));
        assert_eq!(r.routes[2].availability.since_start, None);
        assert_eq!(r.window_seconds, 300);
    }
}
