//! `[rate_limit]`: the store, the trusted proxies, the answer to a limited
//! request, and the named rules that routes list in `rate_limits`. Nothing
//! is limited unless a route names a rule. `docs/rate-limiting.md` documents
//! every key.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::schema::Config;
use super::validate::{Invalid, check_name, invalid, list};
use super::value::Duration;

/// Where the counts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In this process, shared by its workers: no dependency, not shared
    /// with other instances.
    #[default]
    Local,
    /// In `redis_url`, shared by every instance that uses it.
    Redis,
}

/// How a Redis rule spends the shared count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// Each instance takes small leases of the count and spends them
    /// locally (`ratelimit::lease`): rarely a round trip on the request
    /// path; a bounded, documented over-admission.
    #[default]
    Lease,
    /// One round trip to Redis per request: exact.
    Exact,
}

/// The largest lease, as a share of the capacity.
pub const MAX_FRACTION: f64 = 0.1;

/// How big a lease is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LeaseSize {
    /// From the key's rate on this instance, up to [`MAX_FRACTION`].
    Auto,
    /// This share of the capacity each time (at most [`MAX_FRACTION`]).
    Fraction(f64),
}

/// `redis_lease`: `"auto"` or a share of the capacity, `0 < f ≤ 0.1`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum LeaseSpec {
    Name(String),
    Fraction(f64),
}

impl LeaseSpec {
    pub fn size(&self) -> Result<LeaseSize, String> {
        match self {
            LeaseSpec::Name(n) if n == "auto" => Ok(LeaseSize::Auto),
            LeaseSpec::Fraction(f) if *f > 0.0 && *f <= MAX_FRACTION => Ok(LeaseSize::Fraction(*f)),
            LeaseSpec::Name(n) => Err(format!(
                "{n:?} is not a lease size; use \"auto\" or a share of the limit from 0.001 to {MAX_FRACTION}"
            )),
            LeaseSpec::Fraction(f) => Err(format!(
                "{f} is out of range; a lease is a share of the limit above 0 and at most {MAX_FRACTION}, or \"auto\""
            )),
        }
    }
}

/// What a request gets when the Redis store fails (down, slow, error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Let it through (fail open).
    Allow,
    /// Refuse it (fail closed).
    Deny,
    /// Decide with this instance's local table instead (each instance then
    /// enforces the whole limit on its own).
    #[default]
    Local,
}

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    Both,
    /// None (a limited answer still carries `Retry-After`).
    None,
}

/// The algorithm of a rule, as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmName {
    #[default]
    TokenBucket,
    LeakyBucket,
    FixedWindow,
    SlidingLog,
    SlidingCounter,
}

/// What a request missing a `header:` or `cookie:` key part gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingKey {
    /// The missing part is replaced by the client IP (marked as such, so it
    /// never shares a count with a header whose value looks like an IP).
    #[default]
    ClientIp,
    /// The rule does not apply to the request (NGINX's empty key, Envoy's
    /// missing descriptor).
    Skip,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// The default store of the rules.
    pub store: StoreKind,
    /// `redis://[[user]:password@]host[:port][/db]`; needed when a rule
    /// uses the Redis store.
    pub redis_url: Option<Spanned<String>>,
    /// The seed nodes of a Redis Cluster (instead of `redis_url`).
    pub redis_cluster: Option<Spanned<Vec<Spanned<String>>>>,
    /// PEM file of the CA(s) that sign the Redis servers' certificates
    /// (`rediss://`); unset: the system's roots.
    pub redis_tls_ca_file: Option<Spanned<String>>,
    /// The longest a request waits for Redis; beyond, `on_store_error`.
    pub redis_timeout: Duration,
    /// `lease` (default) or `exact`; a rule may set its own.
    pub redis_mode: RedisMode,
    /// The size of a lease: `"auto"` or a share of the limit.
    pub redis_lease: Option<Spanned<LeaseSpec>>,
    pub on_store_error: OnStoreError,
    /// Peers (CIDRs or single addresses) whose `X-Forwarded-For` is
    /// believed when finding the client IP.
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Keys each rule (each tier) keeps in the local store at most.
    pub max_keys: Spanned<usize>,
    /// The status of a limited answer.
    pub status: Spanned<u16>,
    pub headers: HeaderStyle,
    /// How often idle keys are dropped from the local tables.
    pub sweep_interval: Duration,
    pub rules: Vec<RuleConfig>,
}

impl RateLimitConfig {
    /// The lease size (validated).
    pub fn lease_size(&self) -> LeaseSize {
        self.redis_lease
            .as_ref()
            .and_then(|l| l.get_ref().size().ok())
            .unwrap_or(LeaseSize::Auto)
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            store: StoreKind::Local,
            redis_url: None,
            redis_cluster: None,
            redis_tls_ca_file: None,
            redis_timeout: Duration::from_millis(50),
            redis_mode: RedisMode::Lease,
            redis_lease: None,
            on_store_error: OnStoreError::Local,
            trusted_proxies: Vec::new(),
            max_keys: Spanned::new(0..0, 1_000_000),
            status: Spanned::new(0..0, 429),
            headers: HeaderStyle::Ietf,
            sweep_interval: Duration::from_secs(10),
            rules: Vec::new(),
        }
    }
}

/// `[[rate_limit.rules]]`: a named limit that routes list.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: Spanned<String>,
    /// What is counted separately: `client_ip`, `header:NAME`,
    /// `cookie:NAME`, `route`, `global`; several parts make a composite key.
    #[serde(default = "default_key")]
    pub key: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub algorithm: AlgorithmName,
    /// Requests per `period`. Optional only when `tiers.default` names the
    /// tier that applies otherwise.
    #[serde(default)]
    pub limit: Option<Spanned<u64>>,
    #[serde(default = "default_period")]
    pub period: Duration,
    /// Token bucket: bucket size (default `limit`). Leaky bucket: requests
    /// that may wait beyond the one leaking (default 0).
    #[serde(default)]
    pub burst: Option<Spanned<u64>>,
    /// Leaky bucket: hold requests until their turn instead of passing them
    /// at once.
    #[serde(default)]
    pub delay: bool,
    /// Count and log, never refuse.
    #[serde(default)]
    pub dry_run: bool,
    /// Overrides `rate_limit.store` for this rule.
    #[serde(default)]
    pub store: Option<StoreKind>,
    /// Overrides `rate_limit.on_store_error` for this rule.
    #[serde(default)]
    pub on_store_error: Option<OnStoreError>,
    /// Overrides `rate_limit.redis_mode` for this rule.
    #[serde(default)]
    pub redis_mode: Option<RedisMode>,
    #[serde(default)]
    pub on_missing_key: OnMissingKey,
    #[serde(default)]
    pub tiers: Option<TiersConfig>,
}

fn default_key() -> Spanned<Vec<Spanned<String>>> {
    Spanned::new(0..0, vec![Spanned::new(0..0, "client_ip".into())])
}
fn default_period() -> Duration {
    Duration::from_secs(1)
}

/// `tiers = { header = "x-plan", default = "free", limits = { ... } }`: the
/// header's value picks the limit.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TiersConfig {
    pub header: Spanned<String>,
    /// The tier of a request without the header or with an unknown value;
    /// unset: the rule's own `limit`.
    #[serde(default)]
    pub default: Option<Spanned<String>>,
    pub limits: BTreeMap<String, TierLimitConfig>,
}

/// One tier's limit; `period` and `burst` default to the rule's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimitConfig {
    pub limit: Spanned<u64>,
    #[serde(default)]
    pub period: Option<Duration>,
    #[serde(default)]
    pub burst: Option<Spanned<u64>>,
}

/// One part of a rule's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
    Route,
    Global,
}

impl std::str::FromStr for KeyPart {
    type Err = String;
    fn from_str(s: &str) -> Result<KeyPart, String> {
        let bad = || {
            format!(
                "{s:?} is not a key part; valid parts are \"client_ip\", \"header:NAME\", \
                 \"cookie:NAME\", \"route\" and \"global\""
            )
        };
        match s.split_once(':') {
            None if s == "client_ip" => Ok(KeyPart::ClientIp),
            None if s == "route" => Ok(KeyPart::Route),
            None if s == "global" => Ok(KeyPart::Global),
            Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(KeyPart::Header)
                .map_err(|_| bad()),
            Some(("cookie", name)) if !name.trim().is_empty() => {
                Ok(KeyPart::Cookie(name.trim().to_owned()))
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for KeyPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyPart::ClientIp => f.write_str("client_ip"),
            KeyPart::Header(h) => write!(f, "header:{h}"),
            KeyPart::Cookie(c) => write!(f, "cookie:{c}"),
            KeyPart::Route => f.write_str("route"),
            KeyPart::Global => f.write_str("global"),
        }
    }
}

/// An IPv4 or IPv6 network: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || {
            format!(
                "{s:?} is not a network; write an address or ADDRESS/PREFIX, e.g. \"10.0.0.0/8\" or \"::1\""
            )
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(bad()),
            },
        };
        Ok(Cidr { network, prefix })
    }
}

/// Checks `[rate_limit]` and the routes' `rate_limits` against it.
pub(super) fn check(config: &Config) -> Result<(), Invalid> {
    let rl = &config.rate_limit;
    for (i, p) in rl.trusted_proxies.iter().enumerate() {
        p.get_ref()
            .parse::<Cidr>()
            .map_err(|m| invalid(p.span(), format!("rate_limit.trusted_proxies[{i}]"), m))?;
    }
    if *rl.max_keys.get_ref() == 0 {
        return Err(invalid(
            rl.max_keys.span(),
            "rate_limit.max_keys".into(),
            "must be at least 1",
        ));
    }
    let status = *rl.status.get_ref();
    if !(400..=599).contains(&status) {
        return Err(invalid(
            rl.status.span(),
            "rate_limit.status".into(),
            format!("{status} is not an error status; use 400 to 599, usually 429 or 503"),
        ));
    }
    if rl.redis_timeout.get().is_zero() {
        return Err(invalid(
            0..0,
            "rate_limit.redis_timeout".into(),
            "must be above 0, e.g. \"50ms\"",
        ));
    }
    if rl.sweep_interval.get().is_zero() {
        return Err(invalid(
            0..0,
            "rate_limit.sweep_interval".into(),
            "must be above 0, e.g. \"10s\"",
        ));
    }
    if let Some(url) = &rl.redis_url {
        super::redis_url::RedisUrl::parse(url.get_ref())
            .map_err(|e| invalid(url.span(), "rate_limit.redis_url".into(), e.to_string()))?;
    }
    if let Some(nodes) = &rl.redis_cluster {
        if let Some(url) = &rl.redis_url {
            return Err(invalid(
                url.span(),
                "rate_limit.redis_url".into(),
                "set either redis_url (one server) or redis_cluster (the seed nodes of a cluster), not both",
            ));
        }
        if nodes.get_ref().is_empty() {
            return Err(invalid(
                nodes.span(),
                "rate_limit.redis_cluster".into(),
                "needs at least one seed node, e.g. [\"redis://10.0.0.1:7000\"]",
            ));
        }
        let mut first: Option<super::redis_url::RedisUrl> = None;
        for (i, n) in nodes.get_ref().iter().enumerate() {
            let url = super::redis_url::RedisUrl::parse(n.get_ref()).map_err(|e| {
                invalid(
                    n.span(),
                    format!("rate_limit.redis_cluster[{i}]"),
                    e.to_string(),
                )
            })?;
            let fail = |m: &str| invalid(n.span(), format!("rate_limit.redis_cluster[{i}]"), m);
            if matches!(url.addr, super::redis_url::Addr::Unix(_)) {
                return Err(fail(
                    "cluster nodes are reached over TCP (redis:// or rediss://), not unix sockets",
                ));
            }
            if url.db != 0 {
                return Err(fail("a Redis Cluster has only database 0"));
            }
            if let Some(first) = &first {
                if (&url.username, &url.password) != (&first.username, &first.password) {
                    return Err(fail(
                        "every node needs the same user and password (one client logs in to all)",
                    ));
                }
                if url.tls() != first.tls() {
                    return Err(fail("mixes redis:// and rediss:// nodes; use one for all"));
                }
            } else {
                first = Some(url);
            }
        }
    }
    if let Some(ca) = &rl.redis_tls_ca_file
        && let Err(e) = std::fs::metadata(ca.get_ref())
    {
        return Err(invalid(
            ca.span(),
            "rate_limit.redis_tls_ca_file".into(),
            format!("cannot read {:?}: {e}", ca.get_ref()),
        ));
    }
    if let Some(lease) = &rl.redis_lease {
        lease
            .get_ref()
            .size()
            .map_err(|m| invalid(lease.span(), "rate_limit.redis_lease".into(), m))?;
    }

    let mut names = HashSet::new();
    for (i, r) in rl.rules.iter().enumerate() {
        let key = format!("rate_limit.rules[{i}]");
        check_name(r.name.get_ref(), r.name.span(), format!("{key}.name"))?;
        if !names.insert(r.name.get_ref().as_str()) {
            return Err(invalid(
                r.name.span(),
                format!("{key}.name"),
                format!(
                    "duplicate rule name {:?}; names must be unique",
                    r.name.get_ref()
                ),
            ));
        }
        if r.key.get_ref().is_empty() {
            return Err(invalid(
                r.key.span(),
                format!("{key}.key"),
                "needs at least one part, e.g. [\"client_ip\"]",
            ));
        }
        for (j, part) in r.key.get_ref().iter().enumerate() {
            part.get_ref()
                .parse::<KeyPart>()
                .map_err(|m| invalid(part.span(), format!("{key}.key[{j}]"), m))?;
        }
        let store = r.store.unwrap_or(rl.store);
        if store == StoreKind::Redis && rl.redis_url.is_none() && rl.redis_cluster.is_none() {
            return Err(invalid(
                r.name.span(),
                format!("{key}.store"),
                "the rule uses the redis store but neither rate_limit.redis_url nor rate_limit.redis_cluster is set",
            ));
        }
        if r.delay && r.algorithm != AlgorithmName::LeakyBucket {
            return Err(invalid(
                r.name.span(),
                format!("{key}.delay"),
                "only applies to algorithm = \"leaky_bucket\"",
            ));
        }
        if r.period.get().is_zero() {
            return Err(invalid(
                r.name.span(),
                format!("{key}.period"),
                "must be above 0, e.g. \"1s\"",
            ));
        }
        check_limit(r.limit.as_ref(), r.burst.as_ref(), r.algorithm, &key)?;
        let has_default = match &r.tiers {
            None => false,
            Some(t) => {
                let tkey = format!("{key}.tiers");
                if http::HeaderName::from_bytes(t.header.get_ref().as_bytes()).is_err() {
                    return Err(invalid(
                        t.header.span(),
                        format!("{tkey}.header"),
                        format!("{:?} is not a valid header name", t.header.get_ref()),
                    ));
                }
                if t.limits.is_empty() {
                    return Err(invalid(
                        t.header.span(),
                        format!("{tkey}.limits"),
                        "needs at least one tier, e.g. { free = { limit = 10 } }",
                    ));
                }
                for (name, tier) in &t.limits {
                    let lkey = format!("{tkey}.limits.{name}");
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(invalid(
                            tier.limit.span(),
                            lkey,
                            "a tier name must be visible ASCII (it is matched against the header's value)",
                        ));
                    }
                    check_limit(Some(&tier.limit), tier.burst.as_ref(), r.algorithm, &lkey)?;
                    if tier.period.is_some_and(|p| p.get().is_zero()) {
                        return Err(invalid(
                            tier.limit.span(),
                            format!("{lkey}.period"),
                            "must be above 0, e.g. \"1s\"",
                        ));
                    }
                }
                if let Some(d) = &t.default
                    && !t.limits.contains_key(d.get_ref())
                {
                    return Err(invalid(
                        d.span(),
                        format!("{tkey}.default"),
                        format!(
                            "no tier named {:?}; defined tiers: {}",
                            d.get_ref(),
                            list(t.limits.keys().map(String::as_str))
                        ),
                    ));
                }
                t.default.is_some()
            }
        };
        if r.limit.is_none() && !has_default {
            return Err(invalid(
                r.name.span(),
                format!("{key}.limit"),
                "missing: a rule needs a limit, unless its tiers name a default tier",
            ));
        }
    }

    for (i, route) in config.routes.iter().enumerate() {
        let mut seen = HashSet::new();
        for (j, name) in route.rate_limits.iter().enumerate() {
            let key = format!("routes[{i}].rate_limits[{j}]");
            if !names.contains(name.get_ref().as_str()) {
                let defined = if rl.rules.is_empty() {
                    "none (add [[rate_limit.rules]])".to_owned()
                } else {
                    list(rl.rules.iter().map(|r| r.name.get_ref().as_str()))
                };
                return Err(invalid(
                    name.span(),
                    key,
                    format!(
                        "no rate-limit rule named {:?}; defined rules: {defined}",
                        name.get_ref()
                    ),
                ));
            }
            if !seen.insert(name.get_ref().as_str()) {
                return Err(invalid(
                    name.span(),
                    key,
                    format!("rule {:?} is listed twice", name.get_ref()),
                ));
            }
        }
    }
    Ok(())
}

fn check_limit(
    limit: Option<&Spanned<u64>>,
    burst: Option<&Spanned<u64>>,
    algorithm: AlgorithmName,
    key: &str,
) -> Result<(), Invalid> {
    if let Some(l) = limit
        && *l.get_ref() == 0
    {
        return Err(invalid(
            l.span(),
            format!("{key}.limit"),
            "must be at least 1 (to refuse everything, do not route it)",
        ));
    }
    if let Some(b) = burst {
        match algorithm {
            AlgorithmName::TokenBucket if *b.get_ref() == 0 => {
                return Err(invalid(
                    b.span(),
                    format!("{key}.burst"),
                    "a token bucket holds at least 1 token",
                ));
            }
            AlgorithmName::FixedWindow
            | AlgorithmName::SlidingLog
            | AlgorithmName::SlidingCounter => {
                return Err(invalid(
                    b.span(),
                    format!("{key}.burst"),
                    "only applies to token_bucket and leaky_bucket",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
