//! Clusters and their endpoints.
//!
//! A `Cluster` is part of an immutable snapshot: its settings, endpoints and
//! balancer are rebuilt on every reload. Each endpoint points at an
//! `EndpointLive` (`live.rs`), the state that must survive reloads, kept in
//! the `LiveRegistry` by (cluster name, address). Picking an endpoint reads
//! that state's published verdicts: health, ejection, slow start.

pub mod balance;
pub mod ewma;
pub mod guard;
pub mod health;
mod live;
mod micros;
pub mod observed;
mod tries;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ClusterConfig;
use crate::observe::Metrics;
use crate::observe::metrics::ClusterLabels;
use crate::resilience::policy::RetryPolicy;
use crate::upstream;
use balance::{Balancer, Pick};
use guard::{ClusterGuard, SharedBreaker};
use health::outlier::OutlierConfig;
use health::state::State;
pub use live::{EndpointLive, InFlight, LiveRegistry};
use prometheus_client::metrics::histogram::Histogram;
pub use tries::{Chosen, Pending, Unavailable};

pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    pub live: Arc<EndpointLive>,
    /// The endpoint's own circuit breaker, when the cluster has one.
    pub breaker: Option<Arc<SharedBreaker>>,
    /// `Some`: requests and health checks reach it over TLS.
    pub tls: Option<upstream::tls::EndpointTls>,
}

impl Endpoint {
    /// Where a try to this endpoint goes, from `worker`'s slot of its pool.
    pub fn target<'a>(&'a self, cluster: &'a Cluster, worker: usize) -> upstream::Target<'a> {
        upstream::Target {
            address: self.address,
            pool: &self.live.pool,
            worker,
            connect_timeout: cluster.connect_timeout,
            sources: cluster.sources.as_deref(),
            limits: upstream::Limits {
                max_idle: cluster.pool_max_idle,
                idle_timeout: cluster.pool_idle_timeout,
            },
            tls: self.tls.as_ref(),
            http2: cluster.http2,
            h2: cluster.h2,
        }
    }

    /// Whether the endpoint's breaker refuses calls now.
    pub fn breaker_blocks(&self, now: Instant) -> bool {
        self.breaker.as_ref().is_some_and(|b| b.blocks(now))
    }
}

pub struct Cluster {
    pub name: Arc<str>,
    pub connect_timeout: Duration,
    /// The local addresses connections to the endpoints leave from
    /// (`source_addresses`); `None`: the kernel's choice.
    pub sources: Option<Arc<upstream::source::Sources>>,
    pub response_timeout: Duration,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    /// HTTP/2 to the endpoints: with prior knowledge (`protocol = "h2c"`)
    /// or over the cluster's TLS (`"h2"`).
    pub http2: bool,
    /// The HTTP/2 pool's limits and PINGs (`[clusters.http2]`).
    pub h2: upstream::h2::H2Limits,
    pub balance: crate::config::Balance,
    /// What to hash, for hash-based balancers only.
    pub hash_key: Option<crate::config::HashKey>,
    pub health_check: Option<crate::config::HealthCheckConfig>,
    /// Passive outlier detection, when enabled.
    pub outlier: Option<OutlierConfig>,
    pub max_ejection_percent: u32,
    /// Percent of usable primaries below which picking ignores health.
    pub panic_threshold: u32,
    pub slow_start: Duration,
    /// Session affinity cookie name, and each endpoint's opaque token.
    pub affinity_cookie: Option<String>,
    affinity_tokens: Vec<String>,
    pub endpoints: Vec<Endpoint>,
    balancer: Box<dyn Balancer>,
    /// Picks for retries: weighted random over the endpoints not yet tried,
    /// so that a retry neither takes a turn from the balancer's rotation
    /// (which would send every next request's first try to the endpoint
    /// after the one that answered, the failing one in a pair) nor follows
    /// a hash back to the endpoint that just failed.
    retry_balancer: balance::random::Random,
    pub retry: RetryPolicy,
    /// Breaker, retry budget and bulkhead, shared with other snapshots.
    pub guard: Arc<ClusterGuard>,
    /// Tells the endpoint how many milliseconds are left.
    pub deadline_header: Option<http::HeaderName>,
    /// Try start → response head, for every try that got one.
    pub head_time: Histogram,
    /// Request arrival → first try: the time spent in Levee's gates and
    /// queues.
    pub wait_time: Histogram,
}

/// The per-request inputs of a pick.
pub struct PickInput {
    pub now: std::time::Instant,
    /// Hash of the request's affinity key (0 when the cluster has none).
    pub key: u64,
    pub random: u64,
    /// Endpoints not to pick (those earlier tries of the request went to).
    pub avoid: Vec<SocketAddr>,
}

impl Cluster {
    /// `first`: the configuration Levee starts with. Endpoints are healthy
    /// then (traffic flows at once); an endpoint added later to a cluster
    /// with active checks starts WARMING and takes traffic only after
    /// `healthy_threshold` passing checks.
    pub fn build(
        config: &ClusterConfig,
        live: &LiveRegistry,
        metrics: &Metrics,
        first: bool,
    ) -> Cluster {
        // A role check's endpoints wait for their first verdicts even at
        // start: before it, a replica is not known from the primary.
        let role_check = config.health_check.as_ref().is_some_and(|h| {
            matches!(
                h.kind,
                crate::config::CheckKind::Postgres | crate::config::CheckKind::Redis
            )
        });
        let initial = if config.health_check.is_some() && (!first || role_check) {
            State::Warming
        } else {
            State::Healthy
        };
        let name = config.name.get_ref().as_str();
        // Built when the configuration was loaded; `None`: plain TCP.
        let connector = config
            .tls
            .as_ref()
            .and_then(|t| t.get_ref().connector.clone());
        // Named endpoints become the addresses their names resolve to now.
        let endpoints: Vec<Endpoint> = crate::discovery::expand(&config.endpoints, &live.resolved)
            .into_iter()
            .map(|e| Endpoint {
                address: e.address,
                weight: e.weight,
                backup: e.backup,
                live: live.get(metrics, name, e.address, initial),
                breaker: config
                    .endpoint_circuit_breaker
                    .as_ref()
                    .map(|t| live.guards.endpoint(name, e.address, t, metrics)),
                tls: connector.as_ref().map(|c| {
                    let handshakes = upstream::tls::Handshakes::new(|result| {
                        metrics.upstream_tls_handshakes.get_or_create_owned(
                            &crate::observe::metrics::EndpointResultLabels {
                                cluster: name.to_owned(),
                                endpoint: e.address.to_string(),
                                result: result.as_str(),
                            },
                        )
                    });
                    upstream::tls::EndpointTls::new(
                        c.clone(),
                        e.host.as_deref(),
                        e.address,
                        Arc::new(handshakes),
                    )
                }),
            })
            .collect();
        let now = Instant::now();
        if config.health_check.is_none() {
            // Nothing would ever move these endpoints again: take any
            // verdict of an earlier configuration's checks back.
            for e in &endpoints {
                e.live.reset(State::Healthy, now);
            }
        }
        if !config.outlier_detection.enabled {
            // Likewise for an earlier configuration's ejections.
            for e in &endpoints {
                e.live.clear_ejection(now);
            }
        }
        let retry = RetryPolicy::from_config(&config.retry);
        let members: Vec<balance::Member> = endpoints
            .iter()
            .map(|e| balance::Member {
                id: e.address.to_string(),
                weight: e.weight,
            })
            .collect();
        Cluster {
            name: name.into(),
            connect_timeout: config.connect_timeout.get(),
            sources: upstream::source::Sources::new(
                &config
                    .source_addresses
                    .iter()
                    .map(|a| *a.get_ref())
                    .collect::<Vec<_>>(),
            )
            .map(Arc::new),
            response_timeout: config.response_timeout.get(),
            pool_max_idle: config.pool_max_idle,
            pool_idle_timeout: config.pool_idle_timeout.get(),
            http2: config.protocol != crate::config::http2::UpstreamProtocol::Http1,
            h2: h2_limits(config),
            balance: config.balance,
            hash_key: config
                .balance
                .uses_key()
                .then(|| config.hash_key.get_ref().clone()),
            health_check: config.health_check.clone(),
            outlier: config.outlier_detection.enabled.then(|| {
                let o = &config.outlier_detection;
                OutlierConfig {
                    consecutive_failures: o.consecutive_failures,
                    failure_rate: o.failure_rate,
                    min_requests: o.min_requests,
                    window: o.window.get(),
                    base_ejection: o.base_ejection.get(),
                    max_ejection: o.max_ejection.get(),
                }
            }),
            max_ejection_percent: config.outlier_detection.max_ejection_percent,
            panic_threshold: config.panic_threshold,
            slow_start: config.slow_start.get(),
            affinity_cookie: config.affinity_cookie.as_ref().map(|c| c.get_ref().clone()),
            affinity_tokens: endpoints
                .iter()
                .map(|e| {
                    // Opaque, stable across instances and restarts, and not
                    // the address: clients learn nothing of the topology.
                    let h = balance::stable_hash(format!("{name}/{}", e.address).as_bytes());
                    format!("{h:016x}")
                })
                .collect(),
            balancer: balance::build(config, &members),
            retry_balancer: balance::random::Random::new(&members),
            endpoints,
            guard: live.guards.cluster(config, &retry, metrics),
            retry,
            deadline_header: config
                .deadline_header
                .as_ref()
                .and_then(|h| http::HeaderName::from_bytes(h.get_ref().as_bytes()).ok()),
            head_time: metrics
                .upstream_head_duration
                .get_or_create_owned(&ClusterLabels {
                    cluster: name.to_owned(),
                }),
            wait_time: metrics.request_wait.get_or_create_owned(&ClusterLabels {
                cluster: name.to_owned(),
            }),
        }
    }

    /// The endpoint for the next request: a primary if any is usable,
    /// otherwise a backup. `None` when the cluster has nothing to offer.
    /// Session affinity: the endpoint a client's affinity token names, if it
    /// may take the request. `None` means: pick afresh (and re-issue the
    /// cookie), so a session moves when its endpoint goes away instead of
    /// failing.
    pub fn pinned(&self, token: &str, now: Instant) -> Option<&Endpoint> {
        let i = self.affinity_tokens.iter().position(|t| t == token)?;
        let e = &self.endpoints[i];
        let ok = e.live.usable(now)
            && !e.breaker_blocks(now)
            && e.live.take_probe(now, self.response_timeout);
        ok.then_some(e)
    }

    /// The affinity token of an endpoint of this cluster.
    pub fn affinity_token(&self, address: SocketAddr) -> Option<&str> {
        let i = self.endpoints.iter().position(|e| e.address == address)?;
        self.affinity_tokens.get(i).map(String::as_str)
    }

    pub fn pick(&self, input: &PickInput) -> Option<&Endpoint> {
        // An endpoint whose outlier ejection is over takes one probe request
        // before its full share. Two workers may pick it for the probe at
        // once: the one that loses the claim picks again, and no longer
        // finds it usable. Each lost claim takes one endpoint out, so this
        // ends.
        for _ in 0..=self.endpoints.len() {
            let (e, panic) = self.pick_once(input)?;
            // Panic mode sends to endpoints whatever their verdict.
            if panic || e.live.take_probe(input.now, self.response_timeout) {
                return Some(e);
            }
        }
        None
    }

    /// One pick; true with it when in panic mode.
    fn pick_once(&self, input: &PickInput) -> Option<(&Endpoint, bool)> {
        let now = input.now;
        let balancer: &dyn Balancer = if input.avoid.is_empty() {
            &*self.balancer
        } else {
            &self.retry_balancer
        };
        let stats = |i: usize| {
            let live = &self.endpoints[i].live;
            let in_flight = live.in_flight().max(0) as u64;
            balance::Stats {
                in_flight,
                latency: live.latency.latency(now),
                cost: live.latency.cost(in_flight, now),
            }
        };
        // An endpoint whose own breaker is open is out, even in panic mode:
        // the breaker would refuse the request anyway.
        let avoid = |i: usize| {
            let e = &self.endpoints[i];
            input.avoid.contains(&e.address) || e.breaker_blocks(now)
        };
        let up = |i: usize| self.endpoints[i].live.usable(now) && !avoid(i);
        let primary = |i: usize| !self.endpoints[i].backup && up(i);
        // Slow start: an endpoint back in service for less than `slow_start`
        // takes only its ramp's share of its turns (a coin per pick, so it
        // works with every balancer).
        // Degraded endpoints take requests only when no healthy one can.
        let healthy = |i: usize| primary(i) && !self.endpoints[i].live.is_degraded();
        let ramped = |i: usize| {
            if !healthy(i) {
                return false;
            }
            let share = self.endpoints[i].live.ramp(self.slow_start, now);
            let coin = input.random ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            share >= 1.0 || ((coin >> 11) as f64 / (1u64 << 53) as f64) < share
        };
        let backup = |i: usize| self.endpoints[i].backup && up(i);
        // Panic mode: when no endpoint is usable, spread over every primary
        // rather than refuse everything; health verdicts can be wrong, and a
        // request sent may still succeed.
        let panic = |i: usize| {
            let e = &self.endpoints[i];
            !e.backup && !avoid(i) && !e.live.is_draining()
        };
        let ctx = |usable| Pick {
            usable,
            stats: &stats,
            key: input.key,
            random: input.random,
            now,
        };
        // Below the panic threshold, the few usable primaries would take
        // everything: spread over all of them instead.
        if self.panic_threshold > 0 {
            let primaries = self.endpoints.iter().filter(|e| !e.backup).count();
            let usable = (0..self.endpoints.len()).filter(|&i| primary(i)).count();
            if primaries > 0 && usable * 100 < primaries * self.panic_threshold as usize {
                let i = balancer.pick(&ctx(&panic))?;
                return Some((self.endpoints.get(i)?, true));
            }
        }
        let chosen = balancer
            .pick(&ctx(&ramped))
            .or_else(|| balancer.pick(&ctx(&healthy)))
            .or_else(|| balancer.pick(&ctx(&primary)))
            .or_else(|| balancer.pick(&ctx(&backup)))
            .map(|i| (i, false))
            .or_else(|| balancer.pick(&ctx(&panic)).map(|i| (i, true)))?;
        Some((self.endpoints.get(chosen.0)?, chosen.1))
    }
}

/// The cluster's `[clusters.http2]` table (or its defaults) as the pool
/// reads it.
fn h2_limits(config: &ClusterConfig) -> upstream::h2::H2Limits {
    let d = crate::config::upstream_http2::UpstreamHttp2Config::default();
    let h = config.http2.as_ref().map_or(&d, |t| t.get_ref());
    let interval = h.keepalive_interval.get_ref().get();
    upstream::h2::H2Limits {
        streams_per_connection: *h.max_streams_per_connection.get_ref(),
        max_connections: *h.max_connections.get_ref(),
        ping_interval: (!interval.is_zero()).then_some(interval),
        ping_timeout: h.keepalive_timeout.get_ref().get(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use health::state::{Check, Thresholds};
    use live::LiveRegistry;

    /// A cluster of four primaries and one backup, with `extra` cluster keys.
    fn cluster(extra: &str) -> Cluster {
        let mut text =
            format!("[server]\nallow_no_listeners = true\n[[clusters]]\nname = \"c\"\n{extra}\n");
        for port in 1..=4 {
            text.push_str(&format!(
                "[[clusters.endpoints]]\naddress = \"127.0.0.1:{port}\"\n"
            ));
        }
        text.push_str("[[clusters.endpoints]]\naddress = \"127.0.0.1:9\"\nbackup = true\n");
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        Cluster::build(
            &config.clusters[0],
            &LiveRegistry::new(1),
            &Metrics::new(),
            true,
        )
    }

    fn down(c: &Cluster, i: usize, now: Instant) {
        let one = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        c.endpoints[i].live.record_check(Check::Fail, &one, now);
        assert!(!c.endpoints[i].live.usable(now));
    }

    /// Ports picked by 100 requests.
    fn picks(c: &Cluster, now: Instant) -> Vec<u16> {
        let input = PickInput {
            now,
            key: 0,
            random: 0,
            avoid: Vec::new(),
        };
        let mut ports: Vec<u16> = (0..100)
            .map(|_| c.pick(&input).map_or(0, |e| e.address.port()))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    #[test]
    fn unusable_primaries_then_backup_then_panic() {
        let now = Instant::now();
        let c = cluster("");
        for i in 0..3 {
            down(&c, i, now);
        }
        assert_eq!(picks(&c, now), [4], "the usable primary takes it all");
        down(&c, 3, now);
        assert_eq!(picks(&c, now), [9], "no primary: the backup");
        down(&c, 4, now);
        assert_eq!(
            picks(&c, now),
            [1, 2, 3, 4],
            "nothing usable: panic over the primaries"
        );
        c.endpoints[0].live.drain(now);
        assert_eq!(picks(&c, now), [2, 3, 4], "draining is never picked");
    }

    #[test]
    fn slow_start_ramps_a_returning_endpoint() {
        let now = Instant::now();
        let c = cluster("slow_start = \"10s\"");
        let one = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        c.endpoints[0].live.record_check(Check::Fail, &one, now);
        c.endpoints[0].live.record_check(Check::Pass, &one, now);
        let share = |at: Instant| {
            let mut state = 7;
            let hits = (0..4000)
                .filter(|_| {
                    let input = PickInput {
                        now: at,
                        key: 0,
                        random: balance::testing::rng(&mut state),
                        avoid: Vec::new(),
                    };
                    c.pick(&input).map(|e| e.address.port()) == Some(1)
                })
                .count();
            hits as f64 / 4000.0
        };
        let (start, half, done) = (
            share(now),
            share(now + Duration::from_secs(5)),
            share(now + Duration::from_secs(10)),
        );
        // Four primaries: a full share is 25 %.
        assert!(start < 0.06, "at the start: {start}");
        assert!(start < half && half < done, "{start} {half} {done}");
        assert!((0.2..0.3).contains(&done), "after slow start: {done}");
    }

    #[test]
    fn below_the_panic_threshold_spread_over_all_primaries() {
        let now = Instant::now();
        let c = cluster("panic_threshold = 50");
        down(&c, 0, now);
        down(&c, 1, now);
        // 2 of 4 usable: not below 50 %.
        assert_eq!(picks(&c, now), [3, 4]);
        down(&c, 2, now);
        // 1 of 4 usable: 25 % < 50 %.
        assert_eq!(picks(&c, now), [1, 2, 3, 4]);
    }

    /// How many of 100 picks at `now` go to port 1 (endpoint 0).
    fn to_first(c: &Cluster, now: Instant) -> usize {
        let input = PickInput {
            now,
            key: 0,
            random: 0,
            avoid: Vec::new(),
        };
        (0..100)
            .filter(|_| c.pick(&input).is_some_and(|e| e.address.port() == 1))
            .count()
    }

    #[test]
    fn without_checks_an_ejected_endpoint_comes_back_through_one_probe() {
        const SEC: Duration = Duration::from_secs(1);
        let now = Instant::now();
        let c = cluster("");
        let cfg = c.outlier.clone().unwrap();
        let first = &c.endpoints[0].live;
        let record = |ok, at| first.record_response(ok, &cfg, c.max_ejection_percent, &c, at);
        let eject = |at| {
            for _ in 0..4 {
                assert_eq!(record(false, at), None);
            }
            record(false, at).unwrap()
        };
        assert_eq!(eject(now).1, 30 * SEC);
        assert_eq!(to_first(&c, now), 0, "ejected");
        assert_eq!(to_first(&c, now + 29 * SEC), 0);
        // Its time over: one request, then nothing until its result...
        let end = now + 30 * SEC;
        assert_eq!(to_first(&c, end), 1, "one probe");
        assert_eq!(to_first(&c, end + SEC), 0, "one probe in flight");
        assert!(first.is_ejected(end + SEC));
        // ...which, a success, gives it its full share.
        assert_eq!(record(true, end + SEC), None);
        assert_eq!(to_first(&c, end + SEC), 25);
        assert!(!first.is_ejected(end + SEC));

        // Ejected again: the second ejection is longer, and a failed probe
        // ejects it for longer still.
        let t = end + 2 * SEC;
        assert_eq!(eject(t).1, 60 * SEC);
        assert_eq!(to_first(&c, t + 60 * SEC), 1);
        let (why, length) = record(false, t + 61 * SEC).unwrap();
        assert_eq!(
            (why.as_str(), length),
            ("its probe request after the ejection failed", 90 * SEC)
        );
        assert_eq!(to_first(&c, t + 62 * SEC), 0);
        // A probe whose result never came is given up after the cluster's
        // response_timeout, and another is sent.
        let end = t + 61 * SEC + 90 * SEC;
        assert_eq!(to_first(&c, end), 1);
        assert_eq!(to_first(&c, end + c.response_timeout - SEC), 0);
        assert_eq!(to_first(&c, end + c.response_timeout), 1);
    }

    #[test]
    fn with_checks_passing_checks_end_an_ejection() {
        let now = Instant::now();
        let c = cluster("health_check = {}");
        let cfg = c.outlier.clone().unwrap();
        let first = &c.endpoints[0].live;
        for _ in 0..5 {
            first.record_response(false, &cfg, c.max_ejection_percent, &c, now);
        }
        assert!(first.is_ejected(now));
        let two = Thresholds {
            healthy: 2,
            unhealthy: 3,
        };
        let ms = Duration::from_millis(500);
        first.record_check(Check::Pass, &two, now + ms);
        assert_eq!(to_first(&c, now + ms), 0, "one pass is not enough");
        first.record_check(Check::Pass, &two, now + 2 * ms);
        assert!(!first.is_ejected(now + 2 * ms));
        assert_eq!(
            to_first(&c, now + 2 * ms),
            25,
            "back, its full share at once"
        );
    }

    #[test]
    fn a_reload_without_outlier_detection_ends_its_ejections() {
        let text = |extra: &str| {
            let mut t = format!("[[clusters]]\nname = \"c\"\n{extra}\n");
            for port in 1..=2 {
                t.push_str(&format!(
                    "[[clusters.endpoints]]\naddress = \"127.0.0.1:{port}\"\n"
                ));
            }
            t
        };
        let (live, metrics) = (LiveRegistry::new(1), Metrics::new());
        let build = |extra: &str| {
            let path = std::path::Path::new("t.toml");
            let text = format!("[server]\nallow_no_listeners = true\n{}", text(extra));
            let config = crate::config::parse(path, &text).unwrap();
            Cluster::build(&config.clusters[0], &live, &metrics, false)
        };
        let now = Instant::now();
        let c = build("");
        let cfg = c.outlier.clone().unwrap();
        for _ in 0..5 {
            let first = &c.endpoints[0].live;
            first.record_response(false, &cfg, c.max_ejection_percent, &c, now);
        }
        assert!(c.endpoints[0].live.is_ejected(now));
        // The same settings keep the ejection; detection off ends it, since
        // nothing would judge its probe.
        let again = build("");
        assert!(again.endpoints[0].live.is_ejected(now));
        let off = build("outlier_detection = { enabled = false }");
        let now = Instant::now();
        assert!(!off.endpoints[0].live.is_ejected(now));
        assert!(off.endpoints[0].live.usable(now));
    }
}
