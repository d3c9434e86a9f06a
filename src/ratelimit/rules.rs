//! The rules as requests meet them: `[[rate_limit.rules]]` compiled once
//! per snapshot, listed per route (`RouteLimits`), checked in the route's
//! order by `RouteLimits::check`, with the answer's headers (`Report`).
//!
//! - A rule counts each key (`key`) against its limit, or against its
//!   tier's: `tiers.header`'s value names the tier (ASCII case ignored),
//!   else `tiers.default`, else the rule's own `limit`. Each (rule, tier)
//!   counts apart: a client changing plan starts afresh on the new one.
//! - Rules are checked in order; the first that refuses decides the answer
//!   and the rules after it are not charged (list a global rule last so
//!   that a client refused by its own limit does not eat the global
//!   budget). Dry-run rules are charged, counted and logged but never
//!   refuse.
//! - Local counts live in a `Table` per (rule, tier), shared by the workers
//!   and kept across reloads while the rule's settings stay the same
//!   (`Registry`, like `cluster::guard` keeps breakers).
//! - Redis counts: `RedisStore` (one per URL, also kept across reloads)
//!   under `levee:rl:<algorithm>:{<rule>:<tier>:<key>}`. When a call fails
//!   (down, slower than `redis_timeout`, an error), `on_store_error`
//!   decides, and the failure is counted per rule. In lease mode (the
//!   default) a tier's `Leases` decide most requests locally; the shell
//!   here asks Redis for a lease when one runs low (in the background) or
//!   is empty (waiting), see `lease`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::key::{self, KeyInput, KeySpec};
use super::lease::{self, Leases, Take};
use super::redis::{Options, RedisStore, StoreError, Target};
use super::table::Table;
use super::{Algorithm, Decision, Limit};
use crate::config::ratelimit::{
    Cidr, HeaderStyle, KeyPart, OnStoreError, RateLimitConfig, RedisMode, RuleConfig, StoreKind,
};
use crate::observe::Metrics;
use crate::observe::metrics::{RuleDecisionLabels, RuleLabels, RuleTierLabels};

/// How often a dry-run rule may log that it would have refused.
const DRY_RUN_LOG_EVERY: Duration = Duration::from_secs(10);

/// What outlives snapshots: the local tables and the Redis stores, handed
/// out again to a new snapshot whose rule (or URL) is unchanged. Weak, so
/// that a table nobody uses any more is freed with the last snapshot
/// holding it.
#[derive(Default)]
pub struct Registry {
    /// By (rule, tier): the tables made for each settings value in use.
    tables: Mutex<HashMap<(String, String), Vec<KeptTable>>>,
    stores: Mutex<HashMap<String, Weak<RedisStore>>>,
}

type KeptTable = (TableSettings, Weak<Table>);

/// What a table's counts mean; a table is reused only while they compare
/// equal, by value.
#[derive(Clone, PartialEq)]
struct TableSettings {
    limit: Limit,
    key: KeySpec,
    max_keys: usize,
}

impl Registry {
    /// The table of `rule`'s `tier`, reused while its settings (limit, key
    /// and size) are the ones it was made for.
    fn table(&self, rule: &str, tier: &str, settings: TableSettings) -> Arc<Table> {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        tables.retain(|_, v| {
            v.retain(|(_, t)| t.strong_count() > 0);
            !v.is_empty()
        });
        let kept = tables
            .entry((rule.to_owned(), tier.to_owned()))
            .or_default();
        if let Some(t) = kept
            .iter()
            .find(|(s, _)| *s == settings)
            .and_then(|(_, t)| t.upgrade())
        {
            return t;
        }
        let t = Arc::new(Table::new(settings.max_keys));
        kept.push((settings, Arc::downgrade(&t)));
        t
    }

    /// The store for `target`, reused while `id` (its config) is the
    /// same; `None` (logged) if it cannot start.
    fn store(&self, target: Target, options: Options, id: String) -> Option<Arc<RedisStore>> {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        stores.retain(|_, s| s.strong_count() > 0);
        if let Some(s) = stores.get(&id).and_then(Weak::upgrade) {
            return Some(s);
        }
        match RedisStore::open(target, options) {
            Ok(s) => {
                let s = Arc::new(s);
                stores.insert(id, Arc::downgrade(&s));
                Some(s)
            }
            Err(e) => {
                tracing::error!("rate-limit store: {e}; the rules that use it count locally");
                None
            }
        }
    }
}

/// Every rule of a snapshot, by name.
pub struct RateLimits {
    rules: HashMap<String, Arc<Rule>>,
    trusted: Arc<[Cidr]>,
    status: StatusCode,
    style: HeaderStyle,
    pub sweep_interval: Duration,
}

impl RateLimits {
    pub fn build(config: &RateLimitConfig, registry: &Registry, metrics: &Metrics) -> RateLimits {
        let trusted: Arc<[Cidr]> = config
            .trusted_proxies
            .iter()
            .filter_map(|c| c.get_ref().parse().ok())
            .collect();
        let rules = config
            .rules
            .iter()
            .map(|r| {
                let rule = Rule::build(r, config, registry, metrics);
                (r.name.get_ref().clone(), Arc::new(rule))
            })
            .collect();
        RateLimits {
            rules,
            trusted,
            status: StatusCode::from_u16(*config.status.get_ref())
                .unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            style: config.headers,
            sweep_interval: config.sweep_interval.get(),
        }
    }

    /// The rules a route lists, in its order; `None` when it lists none, so
    /// that such a route pays nothing.
    pub fn for_route(&self, route: &str, names: &[String]) -> Option<Arc<RouteLimits>> {
        // Validation guarantees every listed rule exists.
        let rules: Vec<Arc<Rule>> = names
            .iter()
            .filter_map(|n| self.rules.get(n).cloned())
            .collect();
        if rules.is_empty() {
            return None;
        }
        Some(Arc::new(RouteLimits {
            needs_ip: rules.iter().any(|r| r.key.needs_client_ip()),
            rules,
            route: route.into(),
            trusted: self.trusted.clone(),
            status: self.status,
            style: self.style,
            refusals: crate::events::Gate::default(),
        }))
    }

    /// Drops the idle keys of every local table and publishes their sizes.
    /// Returns (keys removed, keys left).
    pub fn sweep(&self, now: Instant) -> (usize, usize) {
        let (mut removed, mut left) = (0, 0);
        for rule in self.rules.values() {
            for tier in rule.all_tiers() {
                removed += tier.table.sweep(&tier.limit, now);
                if let Some(leases) = &tier.leases {
                    leases.sweep(now);
                }
                let len = tier.table.len();
                tier.keys.set(i64::try_from(len).unwrap_or(i64::MAX));
                left += len;
            }
        }
        (removed, left)
    }

    /// For `/status`: each rule's store, tiers and local key counts.
    pub fn status(&self) -> serde_json::Value {
        let mut names: Vec<&String> = self.rules.keys().collect();
        names.sort();
        let rules: Vec<serde_json::Value> = names
            .into_iter()
            .map(|name| {
                let rule = &self.rules[name];
                let store = match &rule.store {
                    Store::Local => "local".to_owned(),
                    Store::Redis { store, .. } => {
                        let up = if store.is_up() { "up" } else { "down" };
                        format!("redis {} ({up})", store.target())
                    }
                };
                let tiers: Vec<serde_json::Value> = rule
                    .all_tiers()
                    .map(|t| {
                        serde_json::json!({
                            "tier": &*t.name,
                            "limit": t.limit.limit,
                            "period_ms": t.limit.period.as_millis() as u64,
                            "local_keys": t.table.len(),
                            "evicted": t.table.evicted(),
                        })
                    })
                    .collect();
                let mode = match &rule.store {
                    Store::Local => "local",
                    Store::Redis { .. } if rule.all_tiers().any(|t| t.leases.is_some()) => "lease",
                    Store::Redis { .. } => "exact",
                };
                serde_json::json!({
                    "name": name,
                    "algorithm": rule.algorithm.as_str(),
                    "dry_run": rule.dry_run,
                    "store": store,
                    "mode": mode,
                    "tiers": tiers,
                })
            })
            .collect();
        serde_json::Value::Array(rules)
    }
}

/// The rules of one route.
pub struct RouteLimits {
    rules: Vec<Arc<Rule>>,
    route: Arc<str>,
    needs_ip: bool,
    trusted: Arc<[Cidr]>,
    status: StatusCode,
    style: HeaderStyle,
    /// Coalesces refusal events (one per `events::gate::EVERY`).
    refusals: crate::events::Gate,
}

/// What the rules decided for a request.
pub enum Ruling {
    /// Forward it, after `delay` (a shaping leaky bucket), with `report`'s
    /// headers on the answer.
    Pass {
        report: Option<Report>,
        delay: Duration,
    },
    /// Answer `report.status` with `Retry-After`.
    Refuse(Report),
}

impl RouteLimits {
    /// Checks every rule of the route for one request from `peer`.
    pub async fn check(&self, headers: &HeaderMap, peer: IpAddr, now: Instant) -> Ruling {
        let client = if self.needs_ip {
            key::client_ip(peer, headers, &self.trusted)
        } else {
            peer
        };
        let input = KeyInput {
            headers,
            client,
            route: &self.route,
        };
        // The key buffer is reused across requests on this thread (taken
        // out, so that a check waiting for Redis does not hold it).
        let mut key = KEY_BUF.take();
        let ruling = self.check_with(&input, headers, now, &mut key).await;
        key.clear();
        KEY_BUF.set(key);
        ruling
    }

    async fn check_with(
        &self,
        input: &KeyInput<'_>,
        headers: &HeaderMap,
        now: Instant,
        key: &mut Vec<u8>,
    ) -> Ruling {
        let mut tightest: Option<Decision> = None;
        let mut delay = Duration::ZERO;
        for rule in &self.rules {
            key.clear();
            if !rule.key.write(input, key) {
                continue;
            }
            let tier = rule.tier(headers);
            let Some(d) = rule.decide(tier, key, now).await else {
                // The store failed and `on_store_error = "allow"`.
                tier.allowed.inc();
                continue;
            };
            if d.allowed {
                tier.allowed.inc();
                if !rule.dry_run {
                    delay = delay.max(d.delay);
                    if tightest.is_none_or(|t| d.remaining < t.remaining) {
                        tightest = Some(d);
                    }
                }
            } else if rule.dry_run {
                tier.dry_run_limited.inc();
                rule.log_dry_run(tier, key, now);
            } else {
                tier.limited.inc();
                if let Some(n) = self.refusals.pass(now, crate::events::gate::EVERY) {
                    crate::events::emit(
                        crate::events::Kind::RateLimit,
                        format!("route {}", self.route),
                        "requests refused",
                        format!(
                            "rule {}: limit {} reached; {n} refused since the last event",
                            rule.name, d.limit
                        ),
                    );
                }
                return Ruling::Refuse(self.report(d));
            }
        }
        Ruling::Pass {
            report: match self.style {
                HeaderStyle::None => None,
                _ => tightest.map(|d| self.report(d)),
            },
            delay,
        }
    }

    fn report(&self, d: Decision) -> Report {
        Report {
            status: self.status,
            style: self.style,
            limit: d.limit,
            remaining: d.remaining,
            reset: d.reset,
            retry_after: (!d.allowed).then_some(d.retry_after),
        }
    }
}

/// The headers (and, when refused, the status) a decision puts on the
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub status: StatusCode,
    style: HeaderStyle,
    limit: u64,
    remaining: u64,
    reset: Duration,
    /// Set when refused.
    retry_after: Option<Duration>,
}

static IETF: [HeaderName; 3] = [
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
];
static LEGACY: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-remaining"),
    HeaderName::from_static("x-ratelimit-reset"),
];

impl Report {
    /// Adds the rate-limit headers (replacing any the backend sent) and,
    /// when refused, `Retry-After`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let values = [
            number(self.limit),
            number(self.remaining),
            number(ceil_secs(self.reset)),
        ];
        let sets: &[&[HeaderName; 3]] = match self.style {
            HeaderStyle::Ietf => &[&IETF],
            HeaderStyle::Legacy => &[&LEGACY],
            HeaderStyle::Both => &[&IETF, &LEGACY],
            HeaderStyle::None => &[],
        };
        for names in sets {
            for (name, value) in names.iter().zip(&values) {
                headers.insert(name.clone(), value.clone());
            }
        }
        if let Some(wait) = self.retry_after {
            // Whole seconds rounded up, at least 1: "0" would invite an
            // immediate retry into the same refusal.
            headers.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(wait).max(1)));
        }
    }

    pub fn refused(&self) -> bool {
        self.retry_after.is_some()
    }
}

thread_local! {
    static KEY_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Small numbers as header values made once: every allowed response
/// carries three, and a static value costs no allocation to clone.
fn number(n: u64) -> HeaderValue {
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let small = SMALL.get_or_init(|| {
        (0..1024u32)
            .map(|i| HeaderValue::from_static(Box::leak(i.to_string().into_boxed_str())))
            .collect()
    });
    usize::try_from(n)
        .ok()
        .and_then(|i| small.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

enum Store {
    Local,
    Redis {
        store: Arc<RedisStore>,
        on_error: OnStoreError,
    },
}

struct Rule {
    name: Arc<str>,
    algorithm: Algorithm,
    key: KeySpec,
    dry_run: bool,
    /// The rule's own limit; `None` when every request gets a tier.
    base: Option<Tier>,
    tiers: Option<Tiers>,
    store: Store,
    store_errors: Counter,
    /// Dry-run refusals not logged yet, and when the last log was
    /// (milliseconds after `born`).
    unlogged: AtomicU64,
    logged_at: AtomicU64,
    born: Instant,
}

struct Tiers {
    header: HeaderName,
    tiers: Vec<Tier>,
    /// Index in `tiers` of the tier of a request without a known one.
    default: Option<usize>,
}

struct Tier {
    name: Arc<str>,
    limit: Limit,
    /// Local counts (also the fallback of a Redis rule).
    table: Arc<Table>,
    /// A Redis rule in lease mode: the leases taken from the shared count.
    leases: Option<Arc<Leases>>,
    allowed: Counter,
    limited: Counter,
    dry_run_limited: Counter,
    keys: Gauge,
}

impl Rule {
    fn build(
        r: &RuleConfig,
        config: &RateLimitConfig,
        registry: &Registry,
        metrics: &Metrics,
    ) -> Rule {
        let name: Arc<str> = r.name.get_ref().as_str().into();
        let parts: Vec<KeyPart> = r
            .key
            .get_ref()
            .iter()
            .filter_map(|p| p.get_ref().parse().ok())
            .collect();
        let key = KeySpec::new(parts, r.on_missing_key);
        let algorithm = Algorithm::from(r.algorithm);
        let max_keys = *config.max_keys.get_ref();
        let store = match (
            r.store.unwrap_or(config.store),
            super::redis::target_of(config),
        ) {
            (StoreKind::Redis, Some((target, options, id))) => {
                match registry.store(target, options, id) {
                    Some(store) => Store::Redis {
                        store,
                        on_error: r.on_store_error.unwrap_or(config.on_store_error),
                    },
                    None => Store::Local,
                }
            }
            _ => Store::Local,
        };
        let lease_mode = matches!(store, Store::Redis { .. })
            && r.redis_mode.unwrap_or(config.redis_mode) == RedisMode::Lease;
        let lease_size = config.lease_size();
        let tier = |tier: &str, limit: u64, period: Duration, burst: Option<u64>| {
            let burst = burst.unwrap_or(match algorithm {
                Algorithm::TokenBucket => limit,
                _ => 0,
            });
            let limit = Limit {
                algorithm,
                limit,
                period,
                burst,
                delay: r.delay,
            };
            let settings = TableSettings {
                limit,
                key: key.clone(),
                max_keys,
            };
            let decisions = |result| {
                metrics
                    .ratelimit_decisions
                    .get_or_create_owned(&RuleDecisionLabels {
                        rule: name.to_string(),
                        tier: tier.to_owned(),
                        result,
                    })
            };
            Tier {
                name: tier.into(),
                limit,
                table: registry.table(&name, tier, settings),
                leases: (lease_mode && lease::leasable(&limit))
                    .then(|| Arc::new(Leases::new(lease_size, max_keys))),
                allowed: decisions("allowed"),
                limited: decisions("limited"),
                dry_run_limited: decisions("dry_run_limited"),
                keys: metrics.ratelimit_keys.get_or_create_owned(&RuleTierLabels {
                    rule: name.to_string(),
                    tier: tier.to_owned(),
                }),
            }
        };
        let period = r.period.get();
        let burst = r.burst.as_ref().map(|b| *b.get_ref());
        let base = r
            .limit
            .as_ref()
            .map(|l| tier("", *l.get_ref(), period, burst));
        let tiers = r.tiers.as_ref().map(|t| {
            let tiers: Vec<Tier> = t
                .limits
                .iter()
                .map(|(tname, tl)| {
                    tier(
                        tname,
                        *tl.limit.get_ref(),
                        tl.period.map_or(period, |p| p.get()),
                        tl.burst.as_ref().map(|b| *b.get_ref()).or(burst),
                    )
                })
                .collect();
            Tiers {
                header: HeaderName::from_bytes(t.header.get_ref().as_bytes())
                    .unwrap_or_else(|_| HeaderName::from_static("x-plan")),
                default: t
                    .default
                    .as_ref()
                    .and_then(|d| tiers.iter().position(|x| *x.name == **d.get_ref())),
                tiers,
            }
        });
        Rule {
            store_errors: metrics
                .ratelimit_store_errors
                .get_or_create_owned(&RuleLabels {
                    rule: name.to_string(),
                }),
            name,
            algorithm,
            key,
            dry_run: r.dry_run,
            base,
            tiers,
            store,
            unlogged: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    fn all_tiers(&self) -> impl Iterator<Item = &Tier> {
        self.base
            .iter()
            .chain(self.tiers.iter().flat_map(|t| t.tiers.iter()))
    }

    /// The tier of a request. Validation guarantees a rule has its own
    /// limit or a default tier.
    fn tier(&self, headers: &HeaderMap) -> &Tier {
        if let Some(t) = &self.tiers {
            let named = headers.get(&t.header).and_then(|v| {
                let v = v.as_bytes().trim_ascii();
                t.tiers
                    .iter()
                    .find(|tier| tier.name.as_bytes().eq_ignore_ascii_case(v))
            });
            if let Some(tier) = named.or_else(|| t.default.map(|i| &t.tiers[i])) {
                return tier;
            }
        }
        match (&self.base, &self.tiers) {
            (Some(base), _) => base,
            (None, Some(t)) => &t.tiers[0],
            (None, None) => unreachable!("a rule has a limit or tiers"),
        }
    }

    /// One request's decision; `None` when the store failed and the rule
    /// lets such requests through.
    async fn decide(&self, tier: &Tier, key: &[u8], now: Instant) -> Option<Decision> {
        let Store::Redis { store, on_error } = &self.store else {
            return Some(tier.table.check(key, &tier.limit, now, 1));
        };
        let mut shared_key = Vec::with_capacity(self.name.len() + tier.name.len() + key.len() + 2);
        shared_key.extend_from_slice(self.name.as_bytes());
        shared_key.push(b':');
        shared_key.extend_from_slice(tier.name.as_bytes());
        shared_key.push(b':');
        shared_key.extend_from_slice(key);
        let result = match &tier.leases {
            None => store.check(&shared_key, &tier.limit, 1).await,
            Some(leases) => match leases.take(&shared_key, &tier.limit, now) {
                Take::Local { decision, renew } => {
                    if let Some(size) = renew {
                        // Ahead of need: this request does not wait for it.
                        let (store, leases, limit) = (store.clone(), leases.clone(), tier.limit);
                        let errors = self.store_errors.clone();
                        tokio::spawn(async move {
                            match take_lease(&store, &shared_key, &limit, size).await {
                                Ok((got, d)) => {
                                    leases.granted(
                                        &shared_key,
                                        &limit,
                                        got,
                                        &d,
                                        false,
                                        Instant::now(),
                                    );
                                }
                                Err(_) => {
                                    errors.inc();
                                    leases.failed(&shared_key, Instant::now());
                                }
                            }
                        });
                    }
                    Ok(decision)
                }
                Take::Acquire(size) => {
                    match take_lease(store, &shared_key, &tier.limit, size).await {
                        Ok((got, d)) => Ok(leases.granted(
                            &shared_key,
                            &tier.limit,
                            got,
                            &d,
                            true,
                            Instant::now(),
                        )),
                        Err(e) => {
                            leases.failed(&shared_key, Instant::now());
                            Err(e)
                        }
                    }
                }
                Take::Exact => store.check(&shared_key, &tier.limit, 1).await,
            },
        };
        match result {
            Ok(d) => Some(d),
            // The store logs the outage once; here it is counted.
            Err(_) => {
                self.store_errors.inc();
                match on_error {
                    OnStoreError::Allow => None,
                    OnStoreError::Deny => Some(Decision {
                        allowed: false,
                        limit: tier.limit.limit,
                        remaining: 0,
                        reset: Duration::from_secs(1),
                        retry_after: Duration::from_secs(1),
                        delay: Duration::ZERO,
                    }),
                    OnStoreError::Local => {
                        Some(tier.table.check(key, &tier.limit, Instant::now(), 1))
                    }
                }
            }
        }
    }

    /// Logs a dry-run refusal at most every `DRY_RUN_LOG_EVERY`, with how
    /// many there were since the last log.
    fn log_dry_run(&self, tier: &Tier, key: &[u8], now: Instant) {
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let at = now.saturating_duration_since(self.born).as_millis() as u64 + 1;
        let last = self.logged_at.load(Ordering::Relaxed);
        let every = DRY_RUN_LOG_EVERY.as_millis() as u64;
        if last != 0 && at < last + every {
            return;
        }
        if self
            .logged_at
            .compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let count = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            rule = %self.name,
            tier = %tier.name,
            key = %String::from_utf8_lossy(key),
            "dry-run rate limit: {count} request(s) would have been refused since the last report"
        );
    }
}

/// Asks Redis for a lease of `size` requests of `key`: what was granted
/// and Redis's decision. When `size` does not fit but some is left (Redis's
/// `remaining`), takes that. When nothing is left, the refusal stands: its
/// `retry_after` is when the whole lease fits, and the key is refused
/// locally until then (one call per lease, not one per request, while
/// Redis refuses).
async fn take_lease(
    store: &RedisStore,
    key: &[u8],
    limit: &Limit,
    size: u64,
) -> Result<(u64, Decision), StoreError> {
    let d = store.check(key, limit, size).await?;
    if d.allowed || size == 1 || d.remaining == 0 {
        return Ok((size, d));
    }
    let rest = d.remaining.min(size - 1);
    Ok((rest, store.check(key, limit, rest).await?))
}

#[cfg(test)]
mod tests;
