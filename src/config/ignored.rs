//! Settings that would be accepted and then do nothing: refused instead.
//!
//! A value the running code never reads is worse than a typo (which
//! `deny_unknown_fields` already catches): the operator sees it in the file
//! and in `/status` and believes it acts. Each check here names the key and
//! says which setting would make it act, or what to use instead.

use serde_spanned::Spanned;

use super::ratelimit::{OnMissingKey, StoreKind};
use super::resilience::{BreakerConfig, BulkheadConfig, RetryConfig};
use super::schema::{Balance, CheckKind, ClusterConfig, Config, HealthCheckConfig};
use super::validate::{Invalid, invalid};

/// Algorithms that pick by load or latency alone and have no use for an
/// endpoint's weight.
fn ignores_weight(balance: Balance) -> bool {
    matches!(
        balance,
        Balance::P2c | Balance::LeastResponseTime | Balance::PeakEwma
    )
}

/// Whether the file wrote this value (a default carries an empty span).
fn written<T>(v: &Spanned<T>) -> bool {
    !v.span().is_empty()
}

pub(super) fn check(config: &Config) -> Result<(), Invalid> {
    for (i, c) in config.clusters.iter().enumerate() {
        check_cluster(c, &format!("clusters[{i}]"))?;
    }
    for (i, r) in config.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        if r.split_key.is_some() && r.split.is_empty() {
            return Err(invalid(
                r.name.span(),
                format!("{key}.split_key"),
                "only applies to a route with `split`; this route sends everything to its `cluster`",
            ));
        }
        if let Some(retry) = &r.retry {
            check_retry(retry, &r.name, &format!("{key}.retry"))?;
        }
    }
    let rl = &config.rate_limit;
    for (i, r) in rl.rules.iter().enumerate() {
        let key = format!("rate_limit.rules[{i}]");
        if r.on_store_error.is_some() && r.store.unwrap_or(rl.store) == StoreKind::Local {
            return Err(invalid(
                r.name.span(),
                format!("{key}.on_store_error"),
                "only applies to a rule whose store is \"redis\"; this rule counts locally",
            ));
        }
        let by_request = r.key.get_ref().iter().any(|p| {
            let p = p.get_ref();
            p.starts_with("header:") || p.starts_with("cookie:")
        });
        if r.on_missing_key != OnMissingKey::default() && !by_request {
            return Err(invalid(
                r.name.span(),
                format!("{key}.on_missing_key"),
                "only applies to a key with a header: or cookie: part, which a request may lack",
            ));
        }
    }
    Ok(())
}

fn check_cluster(c: &ClusterConfig, key: &str) -> Result<(), Invalid> {
    let balance = c.balance.as_str();
    if ignores_weight(c.balance) {
        for (j, e) in c.endpoints.iter().enumerate() {
            if *e.weight.get_ref() != 1 {
                return Err(invalid(
                    e.weight.span(),
                    format!("{key}.endpoints[{j}].weight"),
                    format!(
                        "balance = \"{balance}\" picks by load and latency and cannot use weights; \
                         remove the weight, or choose a weighted algorithm (round_robin, \
                         least_conn, random, ip_hash, consistent_hash, maglev)"
                    ),
                ));
            }
        }
    }
    if written(&c.hash_key) && !c.balance.uses_key() {
        return Err(invalid(
            c.hash_key.span(),
            format!("{key}.hash_key"),
            format!(
                "only applies to balance = \"ip_hash\", \"consistent_hash\" or \"maglev\"; \
                 this cluster uses \"{balance}\""
            ),
        ));
    }
    if written(&c.virtual_nodes) && c.balance != Balance::ConsistentHash {
        return Err(invalid(
            c.virtual_nodes.span(),
            format!("{key}.virtual_nodes"),
            format!(
                "only applies to balance = \"consistent_hash\"; this cluster uses \"{balance}\""
            ),
        ));
    }
    if let Some(h) = &c.health_check {
        check_health(h, &c.name, &format!("{key}.health_check"))?;
    }
    check_retry(&c.retry, &c.name, &format!("{key}.retry"))?;
    if let Some(t) = c.retry.per_try_timeout
        && t >= c.response_timeout
    {
        return Err(invalid(
            c.name.span(),
            format!("{key}.retry.per_try_timeout"),
            format!(
                "{t} is not shorter than response_timeout {} (the deadline over all tries), \
                 so it would never end a try; make it shorter or remove it",
                c.response_timeout
            ),
        ));
    }
    for (field, b) in [
        ("circuit_breaker", &c.circuit_breaker),
        ("endpoint_circuit_breaker", &c.endpoint_circuit_breaker),
    ] {
        if let Some(b) = b {
            check_breaker(b, &format!("{key}.{field}"))?;
        }
    }
    if let Some(b) = &c.bulkhead {
        check_bulkhead(b, &c.name, &format!("{key}.bulkhead"))?;
    }
    Ok(())
}

fn check_health(h: &HealthCheckConfig, owner: &Spanned<String>, key: &str) -> Result<(), Invalid> {
    if h.kind != CheckKind::Http {
        let d = HealthCheckConfig::default();
        let http_only = [
            ("path", h.path != d.path),
            ("method", written(&h.method)),
            ("host", h.host.is_some()),
            ("expect_status", !h.expect_status.is_empty()),
        ];
        if let Some((field, _)) = http_only.iter().find(|(_, set)| *set) {
            let span = if *field == "method" {
                h.method.span()
            } else {
                owner.span()
            };
            return Err(invalid(
                span,
                format!("{key}.{field}"),
                if h.kind == CheckKind::Tcp {
                    "only applies to type = \"http\"; a tcp check only connects"
                } else if h.kind == CheckKind::Grpc {
                    "only applies to type = \"http\"; a grpc check calls grpc.health.v1.Health/Check (name the service with service)"
                } else {
                    "only applies to type = \"http\"; a postgres or redis check asks the server's role"
                },
            ));
        }
    }
    if h.service.is_some() && h.kind != CheckKind::Grpc {
        return Err(invalid(
            owner.span(),
            format!("{key}.service"),
            "only applies to type = \"grpc\" (the service a gRPC health check asks about)",
        ));
    }
    for s in &h.expect_status {
        if *s == 503 || !(100..=599).contains(s) {
            return Err(invalid(
                owner.span(),
                format!("{key}.expect_status"),
                format!(
                    "{s} can never pass (503 means \"out of service\" and never passes); \
                     list statuses from 100 to 599 other than 503"
                ),
            ));
        }
    }
    Ok(())
}

fn check_retry(r: &RetryConfig, owner: &Spanned<String>, key: &str) -> Result<(), Invalid> {
    if *r.max_attempts.get_ref() == 1 {
        if let Some(s) = r.retry_statuses.first() {
            return Err(invalid(
                s.span(),
                format!("{key}.retry_statuses"),
                "max_attempts = 1 makes no retry; raise max_attempts or remove retry_statuses",
            ));
        }
        if r.retry_on != RetryConfig::default().retry_on && !r.retry_on.is_empty() {
            return Err(invalid(
                owner.span(),
                format!("{key}.retry_on"),
                "max_attempts = 1 makes no retry; raise max_attempts or remove retry_on",
            ));
        }
    }
    Ok(())
}

fn check_breaker(b: &BreakerConfig, key: &str) -> Result<(), Invalid> {
    if b.window.is_some() && written(&b.window_calls) {
        return Err(invalid(
            b.window_calls.span(),
            format!("{key}.window_calls"),
            "the window is either the last `window_calls` calls or the calls of the last \
             `window`, not both; remove one",
        ));
    }
    if b.slow_call_threshold.is_none() && written(&b.slow_call_rate) {
        return Err(invalid(
            b.slow_call_rate.span(),
            format!("{key}.slow_call_rate"),
            "needs slow_call_threshold (how slow a slow call is); set it or remove slow_call_rate",
        ));
    }
    Ok(())
}

fn check_bulkhead(b: &BulkheadConfig, owner: &Spanned<String>, key: &str) -> Result<(), Invalid> {
    if b.max_queue == 0 && b.queue_timeout != BulkheadConfig::default().queue_timeout {
        return Err(invalid(
            owner.span(),
            format!("{key}.queue_timeout"),
            "max_queue = 0 queues nothing, so there is no wait to bound; set max_queue or \
             remove queue_timeout",
        ));
    }
    Ok(())
}
