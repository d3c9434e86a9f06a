//! Fault injection cores: what a fault does, which requests it hits, and
//! how long it lives. Pure and synchronous: randomness comes in as a `u64`
//! draw and time as `now`, so a test can walk a fault through its life in
//! microseconds.
//!
//! A fault has a **target** (a route, a cluster, or one endpoint of a
//! cluster, to play one sick instance), **effects** and a **selector**:
//!
//! - effects: a delay before the request goes on (fixed, fixed plus uniform
//!   jitter, or drawn from a distribution given as percentiles); then at
//!   most one of an abort with a status (HTTP, or a gRPC status), a connection reset, or a response
//!   truncated after so many body bytes; a bandwidth limit on the response
//!   body; slow headers (the response head held back for a duration after
//!   it arrived, as from an endpoint slow to send it: the time to first
//!   byte grows, and on a try it counts against the per-try timeout).
//! - selector: a request is hit when it is in the client subset (if any;
//!   a stable hash of the client key, so the same clients are hit on every
//!   Levee) **and** its random draw falls within `percent`; or, regardless,
//!   when it carries the trigger header and comes from a trusted source
//!   (like Envoy's `x-envoy-fault-*` headers, never from anyone else).
//! - a time to live after which the fault removes itself (`FaultSet`).
//!
//! Faults on a cluster or an endpoint act per try (on the upstream side),
//! so breakers, retries, outlier detection and the latency estimate see
//! them as they would see a real failure; faults on a route act once per
//! request, before any try.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::config::ratelimit::Cidr;

/// Where a fault applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Once per request of this route, before any try.
    Route(String),
    /// Every try to this cluster.
    Cluster(String),
    /// Every try to this endpoint of this cluster.
    Endpoint {
        cluster: String,
        address: SocketAddr,
    },
}

impl Target {
    /// Whether a try to `address` of `cluster` is hit (upstream side).
    pub fn covers_try(&self, cluster: &str, address: SocketAddr) -> bool {
        match self {
            Target::Route(_) => false,
            Target::Cluster(c) => c == cluster,
            Target::Endpoint {
                cluster: c,
                address: a,
            } => c == cluster && *a == address,
        }
    }

    /// Whether a request of `route` is hit (before any try).
    pub fn covers_route(&self, route: &str) -> bool {
        matches!(self, Target::Route(r) if r == route)
    }
}

/// How long to hold a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Delay {
    Fixed(Duration),
    /// `base` plus up to `jitter`, uniformly.
    Jitter {
        base: Duration,
        jitter: Duration,
    },
    /// Percentile points `(p, delay)` with `p` in (0, 100], ascending in
    /// both; the delay is interpolated linearly between them, from 0 at
    /// p0, and is the last point's beyond it.
    Distribution(Vec<(f64, Duration)>),
}

/// A draw as a fraction in [0, 1): the top 53 bits of `draw`.
fn fraction(draw: u64) -> f64 {
    (draw >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether `draw` falls within `percent` of all draws. Compared on the
/// integers, so that 10 % of evenly spread draws is exactly 10 %, with no
/// rounding at the edge.
fn within(draw: u64, percent: f64) -> bool {
    let threshold = (percent.clamp(0.0, 100.0) / 100.0 * (1u64 << 53) as f64) as u64;
    (draw >> 11) < threshold
}

impl Delay {
    /// The delay for a request with random `draw`.
    pub fn sample(&self, draw: u64) -> Duration {
        match self {
            Delay::Fixed(d) => *d,
            Delay::Jitter { base, jitter } => *base + jitter.mul_f64(fraction(draw)),
            Delay::Distribution(points) => {
                let p = fraction(draw) * 100.0;
                let mut below = (0.0, Duration::ZERO);
                for &(q, d) in points {
                    if p < q {
                        let share = (p - below.0) / (q - below.0);
                        let from = below.1.as_secs_f64();
                        return Duration::from_secs_f64(from + (d.as_secs_f64() - from) * share);
                    }
                    below = (q, d);
                }
                below.1
            }
        }
    }
}

/// What happens to a request once any delay has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It goes on (possibly delayed, slowed or with slow headers).
    Forward,
    /// Levee answers this status instead of forwarding.
    Abort(u16),
    /// Levee answers this gRPC status (HTTP 200, trailers-only) instead of
    /// forwarding; on a try, it is judged as an endpoint's gRPC status.
    GrpcAbort(u8),
    /// The connection is reset (a try fails as `Reset`).
    Reset,
    /// The response body stops after this many bytes and the connection
    /// closes.
    Truncate(u64),
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    pub delay: Option<Delay>,
    pub outcome: Outcome,
    /// Response body bytes per second.
    pub bandwidth: Option<u64>,
    /// The response head is held back this long.
    pub slow_headers: Option<Duration>,
}

/// The client subset: clients whose stable hash falls below `percent`.
#[derive(Debug, Clone, PartialEq)]
pub struct Subset {
    pub percent: f64,
    /// Mixed into the hash so that two faults hit different subsets.
    /// Derived from the fault's name, never random: every Levee instance
    /// must pick the same clients, or a client would be hit on one instance
    /// and spared on the next.
    pub seed: u64,
}

impl Subset {
    pub fn contains(&self, client_key: &[u8]) -> bool {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(client_key, self.seed);
        within(h, self.percent)
    }
}

/// The trigger header and who may send it.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// Lower case.
    pub header: String,
    pub trusted: Vec<Cidr>,
}

/// Which requests a fault hits.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// The blast radius: the share of requests (of the subset, if any) hit.
    pub percent: f64,
    pub subset: Option<Subset>,
    pub trigger: Option<Trigger>,
}

/// What the selector needs to know of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The TCP peer (not a forwarded address: the trigger must come from a
    /// trusted machine, not claim to).
    pub peer: IpAddr,
    /// The request's headers, for the trigger header.
    pub headers: &'a http::HeaderMap,
    /// The client key for the subset (client IP bytes, or a header's value).
    pub client_key: &'a [u8],
}

impl Selector {
    /// Whether the request is hit, given its random `draw`.
    pub fn selects(&self, req: &RequestFacts, draw: u64) -> bool {
        if let Some(t) = &self.trigger
            && req.headers.contains_key(t.header.as_str())
            && t.trusted.iter().any(|c| c.contains(req.peer))
        {
            return true;
        }
        let in_subset = self
            .subset
            .as_ref()
            .is_none_or(|s| s.contains(req.client_key));
        in_subset && within(draw, self.percent)
    }
}

/// One fault as configured or posted.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub name: String,
    pub target: Target,
    pub effects: Effects,
    pub selector: Selector,
    /// It removes itself this long after it started; `None`: until removed.
    pub ttl: Option<Duration>,
}

/// Why a fault started or stopped: the event an operator sees and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started {
        name: String,
    },
    /// Replaced by a fault of the same name.
    Replaced {
        name: String,
    },
    Expired {
        name: String,
    },
    Removed {
        name: String,
    },
}

impl Event {
    pub fn name(&self) -> &str {
        match self {
            Event::Started { name }
            | Event::Replaced { name }
            | Event::Expired { name }
            | Event::Removed { name } => name,
        }
    }

    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Started { .. } => "started",
            Event::Replaced { .. } => "replaced",
            Event::Expired { .. } => "expired",
            Event::Removed { .. } => "removed",
        }
    }
}

struct Active {
    fault: Fault,
    until: Option<Instant>,
}

/// The active faults. Adding one of an existing name replaces it (and
/// restarts its time to live).
#[derive(Default)]
pub struct FaultSet {
    active: Vec<Active>,
}

impl FaultSet {
    pub fn add(&mut self, fault: Fault, now: Instant) -> Event {
        let name = fault.name.clone();
        let until = fault.ttl.map(|t| now + t);
        let entry = Active { fault, until };
        match self.active.iter_mut().find(|a| a.fault.name == name) {
            Some(a) => {
                *a = entry;
                Event::Replaced { name }
            }
            None => {
                self.active.push(entry);
                Event::Started { name }
            }
        }
    }

    /// Removes a fault by name; `None` if there is none of that name.
    pub fn remove(&mut self, name: &str) -> Option<Event> {
        let i = self.active.iter().position(|a| a.fault.name == name)?;
        self.active.remove(i);
        Some(Event::Removed { name: name.into() })
    }

    /// Drops the faults whose time to live has passed, with their events.
    pub fn expire(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        self.active.retain(|a| {
            let live = a.until.is_none_or(|u| now < u);
            if !live {
                events.push(Event::Expired {
                    name: a.fault.name.clone(),
                });
            }
            live
        });
        events
    }

    /// The faults in force at `now` (an expired one no longer acts even
    /// before `expire` runs).
    pub fn active(&self, now: Instant) -> impl Iterator<Item = &Fault> {
        self.active
            .iter()
            .filter(move |a| a.until.is_none_or(|u| now < u))
            .map(|a| &a.fault)
    }

    /// The names of every fault in the set, expired or not.
    pub fn active_names(&self) -> impl Iterator<Item = &str> {
        self.active.iter().map(|a| a.fault.name.as_str())
    }

    /// The fault of this name, expired or not.
    pub fn get(&self, name: &str) -> Option<&Fault> {
        self.active
            .iter()
            .find(|a| a.fault.name == name)
            .map(|a| &a.fault)
    }

    /// Time left of a fault, `None` when it has no TTL or does not exist.
    pub fn remaining(&self, name: &str, now: Instant) -> Option<Duration> {
        self.active
            .iter()
            .find(|a| a.fault.name == name)?
            .until
            .map(|u| u.saturating_duration_since(now))
    }

    /// The first active fault on a try to `address` of `cluster` that
    /// selects this request.
    pub fn for_try(
        &self,
        cluster: &str,
        address: SocketAddr,
        req: &RequestFacts,
        draw: u64,
        now: Instant,
    ) -> Option<&Fault> {
        self.active(now)
            .find(|f| f.target.covers_try(cluster, address) && f.selector.selects(req, draw))
    }

    /// The first active fault on `route` that selects this request.
    pub fn for_route(
        &self,
        route: &str,
        req: &RequestFacts,
        draw: u64,
        now: Instant,
    ) -> Option<&Fault> {
        self.active(now)
            .find(|f| f.target.covers_route(route) && f.selector.selects(req, draw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A draw whose fraction is `f`.
    fn draw(f: f64) -> u64 {
        ((f * (1u64 << 53) as f64) as u64) << 11
    }

    fn facts(peer: &str, has_trigger: bool, key: &'static [u8]) -> RequestFacts<'static> {
        let mut headers = http::HeaderMap::new();
        if has_trigger {
            headers.insert("x-levee-fault", http::HeaderValue::from_static("1"));
        }
        RequestFacts {
            peer: peer.parse().unwrap(),
            headers: Box::leak(Box::new(headers)),
            client_key: key,
        }
    }

    fn fault(name: &str, target: Target, percent: f64, ttl: Option<Duration>) -> Fault {
        Fault {
            name: name.into(),
            target,
            effects: Effects {
                delay: Some(Delay::Fixed(500 * MS)),
                outcome: Outcome::Forward,
                bandwidth: None,
                slow_headers: None,
            },
            selector: Selector {
                percent,
                subset: None,
                trigger: None,
            },
            ttl,
        }
    }

    #[test]
    fn delays() {
        assert_eq!(Delay::Fixed(5 * MS).sample(draw(0.7)), 5 * MS);
        let j = Delay::Jitter {
            base: 100 * MS,
            jitter: 50 * MS,
        };
        assert_eq!(j.sample(0), 100 * MS);
        assert_eq!(j.sample(draw(0.5)), 125 * MS);
        assert!(j.sample(u64::MAX) <= 150 * MS);
    }

    #[test]
    fn a_distribution_by_percentiles() {
        let d = Delay::Distribution(vec![(50.0, 20 * MS), (90.0, 100 * MS), (99.0, 500 * MS)]);
        assert_eq!(d.sample(0), Duration::ZERO);
        assert_eq!(d.sample(draw(0.25)), 10 * MS);
        assert_eq!(d.sample(draw(0.5)), 20 * MS);
        assert_eq!(d.sample(draw(0.7)), 60 * MS);
        assert_eq!(d.sample(draw(0.995)), 500 * MS);
        // Over many evenly spread draws, the percentiles come out as given.
        let mut v: Vec<Duration> = (0..10_000u64)
            .map(|i| d.sample(draw(i as f64 / 10_000.0)))
            .collect();
        v.sort();
        let near = |got: Duration, want: Duration| got.abs_diff(want) <= MS;
        assert!(near(v[5_000], 20 * MS), "{:?}", v[5_000]);
        assert!(near(v[9_000], 100 * MS), "{:?}", v[9_000]);
        assert!(near(v[9_900], 500 * MS), "{:?}", v[9_900]);
    }

    #[test]
    fn the_blast_radius_is_the_share_of_draws() {
        let s = Selector {
            percent: 10.0,
            subset: None,
            trigger: None,
        };
        let req = facts("10.0.0.1", false, b"10.0.0.1");
        assert!(s.selects(&req, draw(0.05)));
        assert!(!s.selects(&req, draw(0.10)));
        let hit = (0..1000u64)
            .filter(|i| s.selects(&req, draw(*i as f64 / 1000.0)))
            .count();
        assert_eq!(hit, 100);
        let none = Selector {
            percent: 0.0,
            ..s.clone()
        };
        assert!(!none.selects(&req, 0));
        let all = Selector {
            percent: 100.0,
            ..s
        };
        assert!(all.selects(&req, u64::MAX));
    }

    #[test]
    fn the_trigger_header_counts_only_from_trusted_sources() {
        let s = Selector {
            percent: 0.0,
            subset: None,
            trigger: Some(Trigger {
                header: "x-levee-fault".into(),
                trusted: vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
            }),
        };
        assert!(s.selects(&facts("10.1.2.3", true, b""), u64::MAX));
        assert!(s.selects(&facts("::1", true, b""), u64::MAX));
        assert!(!s.selects(&facts("192.168.1.1", true, b""), u64::MAX));
        assert!(!s.selects(&facts("10.1.2.3", false, b""), 0));
    }

    #[test]
    fn the_client_subset_is_stable_and_of_the_right_size() {
        let s = Selector {
            percent: 100.0,
            subset: Some(Subset {
                percent: 20.0,
                seed: 42,
            }),
            trigger: None,
        };
        let keys: Vec<String> = (0..5000)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        let hit: Vec<bool> = keys
            .iter()
            .map(|k| {
                s.selects(
                    &RequestFacts {
                        peer: "10.0.0.1".parse().unwrap(),
                        headers: &http::HeaderMap::new(),
                        client_key: k.as_bytes(),
                    },
                    0,
                )
            })
            .collect();
        let share = hit.iter().filter(|h| **h).count() as f64 / keys.len() as f64;
        assert!((0.17..0.23).contains(&share), "{share}");
        // The same client is always in or always out, whatever the draw.
        for (k, h) in keys.iter().zip(&hit).take(200) {
            let again = s.selects(
                &RequestFacts {
                    peer: "10.0.0.1".parse().unwrap(),
                    headers: &http::HeaderMap::new(),
                    client_key: k.as_bytes(),
                },
                draw(0.99),
            );
            assert_eq!(again, *h, "{k}");
        }
        // Another seed picks other clients.
        let other = Subset {
            percent: 20.0,
            seed: 43,
        };
        let same = keys
            .iter()
            .zip(&hit)
            .filter(|(k, h)| other.contains(k.as_bytes()) == **h)
            .count();
        assert!(same < keys.len() - 100, "{same}");
    }

    #[test]
    fn targets() {
        let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        let one = Target::Endpoint {
            cluster: "app".into(),
            address: a,
        };
        assert!(one.covers_try("app", a));
        assert!(!one.covers_try("app", b));
        assert!(!one.covers_try("other", a));
        assert!(Target::Cluster("app".into()).covers_try("app", b));
        assert!(!Target::Route("api".into()).covers_try("app", a));
        assert!(Target::Route("api".into()).covers_route("api"));
        assert!(!Target::Cluster("api".into()).covers_route("api"));
    }

    #[test]
    fn a_fault_removes_itself_after_its_ttl() {
        let t0 = Instant::now();
        let mut set = FaultSet::default();
        let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let f = fault(
            "slow",
            Target::Cluster("app".into()),
            100.0,
            Some(Duration::from_secs(60)),
        );
        assert_eq!(
            set.add(f, t0),
            Event::Started {
                name: "slow".into()
            }
        );
        let req = facts("10.0.0.1", false, b"");
        assert!(set.for_try("app", a, &req, 0, t0).is_some());
        assert_eq!(
            set.remaining("slow", t0 + Duration::from_secs(45)),
            Some(Duration::from_secs(15))
        );
        assert!(set.expire(t0 + Duration::from_secs(59)).is_empty());
        // At 60 s it no longer acts, even before the sweep.
        let end = t0 + Duration::from_secs(60);
        assert!(set.for_try("app", a, &req, 0, end).is_none());
        assert_eq!(
            set.expire(end),
            [Event::Expired {
                name: "slow".into()
            }]
        );
        assert_eq!(set.active(end).count(), 0);
    }

    #[test]
    fn replacing_and_removing() {
        let t0 = Instant::now();
        let mut set = FaultSet::default();
        let ttl = Some(Duration::from_secs(10));
        set.add(fault("f", Target::Route("api".into()), 100.0, ttl), t0);
        // Re-adding restarts the TTL.
        let later = t0 + Duration::from_secs(8);
        assert_eq!(
            set.add(fault("f", Target::Route("api".into()), 100.0, ttl), later),
            Event::Replaced { name: "f".into() }
        );
        assert!(set.expire(t0 + Duration::from_secs(12)).is_empty());
        let req = facts("10.0.0.1", false, b"");
        assert!(set.for_route("api", &req, 0, later).is_some());
        assert!(set.for_route("web", &req, 0, later).is_none());
        assert_eq!(set.remove("f"), Some(Event::Removed { name: "f".into() }));
        assert_eq!(set.remove("f"), None);
        let forever = fault("g", Target::Route("api".into()), 100.0, None);
        set.add(forever, t0);
        assert_eq!(set.remaining("g", t0), None);
        assert!(
            set.expire(t0 + Duration::from_secs(86_400 * 365))
                .is_empty()
        );
    }
}
