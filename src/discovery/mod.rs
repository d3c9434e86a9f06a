//! Endpoints by name: what the names in endpoint addresses resolve to, and
//! how a resolved set becomes endpoints.
//!
//! - `plan.rs`: the pure core. Given what a name resolved to before and what
//!   the latest lookup said (or that it failed), what the name resolves to
//!   now, what was added and removed, and when to ask again (the records' TTL
//!   within `[dns] min_ttl..max_ttl`, failures backing off). The clock is a
//!   parameter.
//! - `resolver.rs`: the lookups, with hickory-resolver (A/AAAA, SRV).
//! - `task.rs`: one task per name on the control thread; on a change it
//!   updates the `Resolved` table and wakes the control loop, which builds a
//!   new snapshot from the current configuration plus the table.
//!
//! A snapshot reads the table when it is built (`Cluster::build` →
//! `expand`); the request path never sees a name. Endpoints stay keyed by
//! (cluster, address) in the `LiveRegistry`, so an address present before
//! and after a change keeps its in-flight count, pool, breaker, latency
//! estimate and health; a new one starts WARMING when its cluster has active
//! checks; a vanished one is drained (the snapshots still holding it finish
//! their requests on it, nothing new is sent to it).

pub mod plan;
pub mod resolver;
pub mod task;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use crate::config::{Config, EndpointAddress, EndpointConfig};

/// One lookup: the names in endpoint addresses, deduplicated (two endpoints
/// naming `app` on different ports share one lookup).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Query {
    /// A and AAAA records of a host name.
    Host(String),
    /// SRV records of a name, and the A/AAAA records of their targets.
    Srv(String),
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Query::Host(h) => write!(f, "{h}"),
            Query::Srv(s) => write!(f, "srv:{s}"),
        }
    }
}

impl Query {
    pub fn of(address: &EndpointAddress) -> Option<Query> {
        match address {
            EndpointAddress::Ip(_) => None,
            EndpointAddress::Name { host, .. } => Some(Query::Host(host.clone())),
            EndpointAddress::Srv(name) => Some(Query::Srv(name.clone())),
        }
    }

    /// Every name a configuration needs resolved, sorted.
    pub fn all(config: &Config) -> Vec<Query> {
        let mut queries: Vec<Query> = config
            .clusters
            .iter()
            .flat_map(|c| c.endpoints.iter())
            .filter_map(|e| Query::of(e.address.get_ref()))
            .collect();
        queries.sort();
        queries.dedup();
        queries
    }
}

/// One address a name resolved to. For A/AAAA answers `port`, `weight` and
/// `priority` are 0 (the endpoint's configured port and weight apply); an
/// SRV answer carries its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub ip: IpAddr,
    pub port: u16,
    pub weight: u16,
    pub priority: u16,
}

/// What each name resolves to now: the last successful answer (sorted,
/// deduplicated). A name absent has never resolved.
#[derive(Default)]
pub struct Resolved {
    answers: Mutex<HashMap<Query, Vec<Target>>>,
}

impl Resolved {
    pub fn get(&self, query: &Query) -> Option<Vec<Target>> {
        self.lock().get(query).cloned()
    }

    pub fn set(&self, query: Query, targets: Vec<Target>) {
        self.lock().insert(query, targets);
    }

    /// Forgets names no longer in the configuration.
    pub fn retain(&self, keep: &[Query]) {
        self.lock().retain(|q, _| keep.contains(q));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Query, Vec<Target>>> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One endpoint as a snapshot uses it: a concrete address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Concrete {
    pub address: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    /// The host name it was found by (`HOST:PORT`): TLS verifies the
    /// endpoint against it and sends it as SNI. `None` for IP and SRV
    /// endpoints.
    pub host: Option<String>,
}

/// The concrete endpoints of a cluster's configured ones, in order, each
/// address once (the first mention wins). An IP endpoint is itself; a
/// `HOST:PORT` endpoint is each address of the host on that port, with the
/// endpoint's weight; an `srv:` endpoint is each SRV target with its port
/// and weight (0 counts as 1: Levee's weights start at 1), and the targets
/// of all but the lowest (most preferred) priority are backups. A name that
/// has not resolved yet contributes nothing.
pub fn expand(endpoints: &[EndpointConfig], resolved: &Resolved) -> Vec<Concrete> {
    let mut out: Vec<Concrete> = Vec::with_capacity(endpoints.len());
    let mut push = |c: Concrete| {
        if !out.iter().any(|o| o.address == c.address) {
            out.push(c);
        }
    };
    for e in endpoints {
        let weight = *e.weight.get_ref();
        match e.address.get_ref() {
            EndpointAddress::Ip(address) => push(Concrete {
                address: *address,
                weight,
                backup: e.backup,
                host: None,
            }),
            EndpointAddress::Name { host, port } => {
                for t in resolved.get(&Query::Host(host.clone())).unwrap_or_default() {
                    push(Concrete {
                        address: SocketAddr::new(t.ip, *port),
                        weight,
                        backup: e.backup,
                        host: Some(host.clone()),
                    });
                }
            }
            EndpointAddress::Srv(name) => {
                let targets = resolved.get(&Query::Srv(name.clone())).unwrap_or_default();
                let best = targets.iter().map(|t| t.priority).min().unwrap_or(0);
                for t in targets {
                    push(Concrete {
                        address: SocketAddr::new(t.ip, t.port),
                        weight: u32::from(t.weight.max(1)),
                        backup: e.backup || t.priority > best,
                        host: None,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(toml: &str) -> Vec<EndpointConfig> {
        let text = format!("[[clusters]]\nname = \"c\"\n{toml}");
        let config = crate::config::parse_part(&text).unwrap();
        config.clusters[0].endpoints.clone()
    }

    fn host(ip: &str) -> Target {
        Target {
            ip: ip.parse().unwrap(),
            port: 0,
            weight: 0,
            priority: 0,
        }
    }

    #[test]
    fn names_expand_to_their_addresses_and_ips_stay() {
        let eps = endpoints(
            "[[clusters.endpoints]]\naddress = \"app:8080\"\nweight = 3\n\
             [[clusters.endpoints]]\naddress = \"10.0.0.9:81\"\nbackup = true\n",
        );
        let resolved = Resolved::default();
        // Not resolved yet: only the IP endpoint.
        assert_eq!(
            expand(&eps, &resolved),
            vec![Concrete {
                address: "10.0.0.9:81".parse().unwrap(),
                weight: 1,
                backup: true,
                host: None,
            }]
        );
        resolved.set(
            Query::Host("app".into()),
            vec![host("10.0.0.1"), host("::1"), host("10.0.0.9")],
        );
        let got: Vec<String> = expand(&eps, &resolved)
            .iter()
            .map(|c| {
                let host = c.host.as_deref().unwrap_or("-");
                format!("{} w{} b{} {host}", c.address, c.weight, c.backup)
            })
            .collect();
        assert_eq!(
            got,
            [
                "10.0.0.1:8080 w3 bfalse app",
                "[::1]:8080 w3 bfalse app",
                "10.0.0.9:8080 w3 bfalse app",
                "10.0.0.9:81 w1 btrue -"
            ]
        );
    }

    #[test]
    fn srv_gives_ports_weights_and_backups_by_priority() {
        let eps = endpoints("[[clusters.endpoints]]\naddress = \"srv:_http._tcp.app\"\n");
        let resolved = Resolved::default();
        let t = |ip: &str, port, weight, priority| Target {
            ip: ip.parse().unwrap(),
            port,
            weight,
            priority,
        };
        resolved.set(
            Query::Srv("_http._tcp.app".into()),
            vec![
                t("10.0.0.1", 8001, 5, 10),
                t("10.0.0.2", 8002, 0, 10),
                t("10.0.0.3", 8003, 1, 20),
            ],
        );
        let got: Vec<String> = expand(&eps, &resolved)
            .iter()
            .map(|c| format!("{} w{} b{}", c.address, c.weight, c.backup))
            .collect();
        assert_eq!(
            got,
            [
                "10.0.0.1:8001 w5 bfalse",
                "10.0.0.2:8002 w1 bfalse",
                "10.0.0.3:8003 w1 btrue"
            ]
        );
    }

    #[test]
    fn queries_are_deduplicated() {
        let text = "[[clusters]]\nname = \"a\"\n[[clusters.endpoints]]\naddress = \"app:80\"\n\
                    [[clusters.endpoints]]\naddress = \"app:81\"\n\
                    [[clusters]]\nname = \"b\"\n[[clusters.endpoints]]\naddress = \"srv:x.y\"\n\
                    [[clusters.endpoints]]\naddress = \"127.0.0.1:80\"\n";
        let config = crate::config::parse_part(text).unwrap();
        assert_eq!(
            Query::all(&config),
            vec![Query::Host("app".into()), Query::Srv("x.y".into())]
        );
    }
}
