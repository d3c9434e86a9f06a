//! The lookups, with hickory-resolver on the control thread's runtime: the
//! system's name servers (`/etc/resolv.conf`) unless `[dns] nameservers`
//! names some.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

use super::plan::Lookup;
use super::{Query, Target};
use crate::config::DnsConfig;

/// A resolver set up from `[dns]`. Cheap to clone (shared state inside).
#[derive(Clone)]
pub struct Dns {
    inner: TokioResolver,
}

impl Dns {
    /// Builds the resolver. Fails only when the system configuration cannot
    /// be read and no name servers are configured. Must run on the runtime
    /// that will do the lookups.
    pub fn new(config: &DnsConfig) -> Result<Dns, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|a| {
                    let a = *a.get_ref();
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let options = builder.options_mut();
        options.timeout = config.timeout.get();
        options.attempts = 1;
        // Both families: a dual-stack service is both of its addresses.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Levee schedules its own lookups by TTL; a cache in between could
        // only answer with something older than the server's view.
        options.cache_size = 0;
        let inner = builder
            .build()
            .map_err(|e| format!("cannot set up the DNS resolver: {e}"))?;
        Ok(Dns { inner })
    }

    /// Looks a name up. For SRV, each target's addresses are looked up too;
    /// if any of those fails the whole lookup fails (a partial answer would
    /// drop endpoints that are merely unresolved).
    pub async fn lookup(&self, query: &Query) -> Lookup {
        let result = match query {
            Query::Host(host) => self.hosts(host).await,
            Query::Srv(name) => self.srv(name).await,
        };
        match result {
            Ok((targets, until)) => Lookup::Found {
                targets,
                ttl: until.saturating_duration_since(Instant::now()),
            },
            Err(why) => Lookup::Failed(why),
        }
    }

    async fn hosts(&self, host: &str) -> Result<(Vec<Target>, Instant), String> {
        let ips = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let targets = ips
            .iter()
            .map(|ip| Target {
                ip,
                port: 0,
                weight: 0,
                priority: 0,
            })
            .collect();
        Ok((targets, ips.valid_until()))
    }

    async fn srv(&self, name: &str) -> Result<(Vec<Target>, Instant), String> {
        let srv = self
            .inner
            .srv_lookup(name)
            .await
            .map_err(|e| e.to_string())?;
        let mut until = srv.valid_until();
        let mut targets = Vec::new();
        for record in srv.answers() {
            let RData::SRV(s) = &record.data else {
                continue;
            };
            // "." as the target: the service is decidedly not available
            // there (RFC 2782).
            if s.target.is_root() {
                continue;
            }
            let ips = self
                .inner
                .lookup_ip(s.target.clone())
                .await
                .map_err(|e| format!("SRV target {}: {e}", s.target))?;
            until = until.min(ips.valid_until());
            targets.extend(ips.iter().map(|ip: IpAddr| Target {
                ip,
                port: s.port,
                weight: s.weight,
                priority: s.priority,
            }));
        }
        Ok((targets, until))
    }
}

/// Resolves every name once, all at the same time, each bounded by
/// `limit`; for the start, before the first snapshot serves.
pub async fn resolve_all(dns: &Dns, queries: &[Query], limit: Duration) -> Vec<(Query, Lookup)> {
    let mut set = tokio::task::JoinSet::new();
    for q in queries {
        let (dns, q) = (dns.clone(), q.clone());
        set.spawn(async move {
            let lookup = match tokio::time::timeout(limit, dns.lookup(&q)).await {
                Ok(l) => l,
                Err(_) => Lookup::Failed(format!("no answer within {limit:?}")),
            };
            (q, lookup)
        });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok(pair) = done {
            out.push(pair);
        }
    }
    out
}
