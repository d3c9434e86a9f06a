//! Checks that need the whole config: names unique, references resolved,
//! matchers well formed. Each failure points at the offending value.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use http::{HeaderName, HeaderValue, Method};
use serde_spanned::Spanned;

use super::resilience::{BreakerConfig, FallbackConfig, RetryConfig};
use super::schema::{CheckKind, Config};

pub(crate) struct Invalid {
    pub span: Range<usize>,
    pub key: String,
    pub message: String,
}

pub(crate) fn invalid(span: Range<usize>, key: String, message: impl Into<String>) -> Invalid {
    Invalid {
        span,
        key,
        message: message.into(),
    }
}

pub(super) fn check(config: &Config) -> Result<(), Invalid> {
    super::dns::check(config)?;
    super::http2::check(config)?;
    super::chaos::check_config(config)?;
    super::tcp::check(config)?;
    super::front::check(config)?;
    super::tls::check(config)?;
    let mut listeners = HashSet::new();
    let mut addresses = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        check_name(l.name.get_ref(), l.name.span(), format!("{key}.name"))?;
        if !listeners.insert(l.name.get_ref().as_str()) {
            return Err(invalid(
                l.name.span(),
                format!("{key}.name"),
                format!(
                    "duplicate listener name {:?}; names must be unique",
                    l.name.get_ref()
                ),
            ));
        }
        if addresses.insert(*l.address.get_ref(), i).is_some() {
            return Err(invalid(
                l.address.span(),
                format!("{key}.address"),
                format!(
                    "address {} is already used by another listener",
                    l.address.get_ref()
                ),
            ));
        }
        if *l.max_connections.get_ref() == 0 {
            return Err(invalid(
                l.max_connections.span(),
                format!("{key}.max_connections"),
                "must be at least 1",
            ));
        }
    }
    let admin = &config.admin.address;
    if let (true, Some(&i)) = (config.admin.enabled, addresses.get(admin.get_ref())) {
        // Point at the admin address if the file sets it; if it is the
        // default, the listener's address is the one to change.
        return Err(if admin.span().is_empty() {
            invalid(
                config.listeners[i].address.span(),
                format!("listeners[{i}].address"),
                format!(
                    "address {} is also the admin address (the default admin.address); \
                     choose another address or set admin.address",
                    admin.get_ref()
                ),
            )
        } else {
            invalid(
                admin.span(),
                "admin.address".into(),
                format!("address {} is also a listener's address", admin.get_ref()),
            )
        });
    }

    let mut clusters = HashSet::new();
    for (i, c) in config.clusters.iter().enumerate() {
        let key = format!("clusters[{i}]");
        check_name(c.name.get_ref(), c.name.span(), format!("{key}.name"))?;
        if !clusters.insert(c.name.get_ref().as_str()) {
            return Err(invalid(
                c.name.span(),
                format!("{key}.name"),
                format!(
                    "duplicate cluster name {:?}; names must be unique",
                    c.name.get_ref()
                ),
            ));
        }
        if let Some(h) = &c.health_check {
            let m = &h.method;
            if Method::from_bytes(m.get_ref().as_bytes()).is_err()
                || !m.get_ref().bytes().all(|b| b.is_ascii_uppercase())
            {
                return Err(invalid(
                    m.span(),
                    format!("{key}.health_check.method"),
                    format!(
                        "{:?} is not an HTTP method; write it in upper case, e.g. \"GET\" or \"HEAD\"",
                        m.get_ref()
                    ),
                ));
            }
            if !h.path.starts_with('/') || h.path.contains(char::is_whitespace) {
                return Err(invalid(
                    c.name.span(),
                    format!("{key}.health_check.path"),
                    format!("{:?} must start with '/' and contain no spaces", h.path),
                ));
            }
            if h.timeout.get() > h.interval.get() || h.interval.get().is_zero() {
                return Err(invalid(
                    c.name.span(),
                    format!("{key}.health_check.timeout"),
                    format!(
                        "timeout {} must be at most the interval {} (and the interval above 0)",
                        h.timeout, h.interval
                    ),
                ));
            }
            for (name, value) in [("send", &h.send), ("expect", &h.expect)] {
                let Some(value) = value else { continue };
                if h.kind != CheckKind::Tcp {
                    return Err(invalid(
                        value.span(),
                        format!("{key}.health_check.{name}"),
                        "send and expect script a check of type = \"tcp\" only",
                    ));
                }
                if value.get_ref().is_empty() || value.get_ref().len() > 1024 {
                    return Err(invalid(
                        value.span(),
                        format!("{key}.health_check.{name}"),
                        "must be 1 to 1024 bytes",
                    ));
                }
            }
            if let Some(port) = &h.port
                && *port.get_ref() == 0
            {
                return Err(invalid(
                    port.span(),
                    format!("{key}.health_check.port"),
                    "0 is not a port: set 1-65535, or leave it unset to check the endpoint's own port",
                ));
            }
            if h.unhealthy_threshold == 0 || h.healthy_threshold == 0 {
                return Err(invalid(
                    c.name.span(),
                    format!("{key}.health_check"),
                    "unhealthy_threshold and healthy_threshold must be at least 1",
                ));
            }
        }
        if let Some(name) = &c.affinity_cookie {
            let ok = !name.get_ref().is_empty()
                && name
                    .get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(invalid(
                    name.span(),
                    format!("{key}.affinity_cookie"),
                    format!(
                        "{:?} is not a cookie name; use letters, digits, '_' or '-'",
                        name.get_ref()
                    ),
                ));
            }
        }
        if c.panic_threshold > 100 {
            return Err(invalid(
                c.name.span(),
                format!("{key}.panic_threshold"),
                format!("{} is not a percentage; use 0 to 100", c.panic_threshold),
            ));
        }
        let o = &c.outlier_detection;
        if !(o.failure_rate > 0.0 && o.failure_rate <= 1.0) || o.max_ejection_percent > 100 {
            return Err(invalid(
                c.name.span(),
                format!("{key}.outlier_detection"),
                "failure_rate must be in (0, 1] and max_ejection_percent at most 100",
            ));
        }
        let vnodes = *c.virtual_nodes.get_ref();
        if !(1..=1000).contains(&vnodes) {
            return Err(invalid(
                c.virtual_nodes.span(),
                format!("{key}.virtual_nodes"),
                format!("{vnodes} is out of range; valid values are 1 to 1000"),
            ));
        }
        if let Some(f) = &c.hash_balance_factor {
            if c.balance != crate::config::Balance::ConsistentHash {
                return Err(invalid(
                    f.span(),
                    format!("{key}.hash_balance_factor"),
                    "only applies to balance = \"consistent_hash\"",
                ));
            }
            if !(f.get_ref().is_finite() && *f.get_ref() >= 1.0) {
                return Err(invalid(
                    f.span(),
                    format!("{key}.hash_balance_factor"),
                    format!(
                        "{} is not a valid factor; use a number of at least 1.0, e.g. 1.25",
                        f.get_ref()
                    ),
                ));
            }
        }
        check_retry(&c.retry, &c.name, &format!("{key}.retry"))?;
        for (field, b) in [
            ("circuit_breaker", &c.circuit_breaker),
            ("endpoint_circuit_breaker", &c.endpoint_circuit_breaker),
        ] {
            if let Some(b) = b {
                check_breaker(b, &c.name, &format!("{key}.{field}"))?;
            }
        }
        if let Some(b) = &c.bulkhead
            && *b.max_concurrent.get_ref() == 0
        {
            return Err(invalid(
                b.max_concurrent.span(),
                format!("{key}.bulkhead.max_concurrent"),
                "must be at least 1",
            ));
        }
        if let Some(a) = &c.adaptive_concurrency {
            let (min, max) = (*a.min_limit.get_ref(), *a.max_limit.get_ref());
            if min == 0 || max < min {
                return Err(invalid(
                    a.max_limit.span(),
                    format!("{key}.adaptive_concurrency.max_limit"),
                    format!(
                        "min_limit {min} must be at least 1 and max_limit {max} at least min_limit"
                    ),
                ));
            }
            if !(a.tolerance.get_ref().is_finite() && *a.tolerance.get_ref() >= 1.0) {
                return Err(invalid(
                    a.tolerance.span(),
                    format!("{key}.adaptive_concurrency.tolerance"),
                    format!(
                        "{} must be a number of at least 1.0, e.g. 1.25",
                        a.tolerance.get_ref()
                    ),
                ));
            }
        }
        let mut sources = HashSet::new();
        for (j, a) in c.source_addresses.iter().enumerate() {
            let at = format!("{key}.source_addresses[{j}]");
            if !sources.insert(*a.get_ref()) {
                return Err(invalid(
                    a.span(),
                    at,
                    format!("source address {} appears twice", a.get_ref()),
                ));
            }
            // Every connection from an address this machine does not have
            // would fail: refused here, so a reload keeps the old one.
            if let Err(e) = crate::upstream::source::usable(*a.get_ref()) {
                return Err(invalid(
                    a.span(),
                    at,
                    format!(
                        "{} cannot be a source address here (not an address of this machine?): {e}",
                        a.get_ref()
                    ),
                ));
            }
        }
        if let Some(h) = &c.deadline_header
            && HeaderName::from_bytes(h.get_ref().as_bytes()).is_err()
        {
            return Err(invalid(
                h.span(),
                format!("{key}.deadline_header"),
                format!("{:?} is not a valid header name", h.get_ref()),
            ));
        }
        let mut seen = HashSet::new();
        for (j, e) in c.endpoints.iter().enumerate() {
            let ekey = format!("{key}.endpoints[{j}]");
            if !seen.insert(e.address.get_ref().clone()) {
                return Err(invalid(
                    e.address.span(),
                    format!("{ekey}.address"),
                    format!(
                        "endpoint {} appears twice in cluster {:?}",
                        e.address.get_ref(),
                        c.name.get_ref()
                    ),
                ));
            }
            let w = *e.weight.get_ref();
            if !(1..=10_000).contains(&w) {
                return Err(invalid(
                    e.weight.span(),
                    format!("{ekey}.weight"),
                    format!("weight {w} is out of range; valid weights are 1 to 10000"),
                ));
            }
        }
    }

    let mut routes = HashSet::new();
    for (i, r) in config.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        check_name(r.name.get_ref(), r.name.span(), format!("{key}.name"))?;
        if !routes.insert(r.name.get_ref().as_str()) {
            return Err(invalid(
                r.name.span(),
                format!("{key}.name"),
                format!(
                    "duplicate route name {:?}; names must be unique",
                    r.name.get_ref()
                ),
            ));
        }
        super::rewrite::check_route(r, &key)?;
        let defined = || list(config.clusters.iter().map(|c| c.name.get_ref().as_str()));
        let mut targets: Vec<(String, &serde_spanned::Spanned<String>)> = Vec::new();
        match (&r.cluster, r.split.is_empty()) {
            (Some(c), true) => targets.push((format!("{key}.cluster"), c)),
            (None, false) => {
                for (j, t) in r.split.iter().enumerate() {
                    targets.push((format!("{key}.split[{j}].cluster"), &t.cluster));
                    if *t.weight.get_ref() > 10_000 {
                        return Err(invalid(
                            t.weight.span(),
                            format!("{key}.split[{j}].weight"),
                            format!(
                                "weight {} is out of range; valid weights are 0 to 10000",
                                t.weight.get_ref()
                            ),
                        ));
                    }
                }
                if r.split.iter().all(|t| *t.weight.get_ref() == 0) {
                    return Err(invalid(
                        r.name.span(),
                        format!("{key}.split"),
                        "every weight is 0: at least one cluster must take traffic",
                    ));
                }
            }
            (Some(c), false) => {
                return Err(invalid(
                    c.span(),
                    format!("{key}.cluster"),
                    "a route has either `cluster` or `split`, not both",
                ));
            }
            // A redirect or respond route answers itself.
            (None, true) if super::rewrite::is_action(r) => {}
            (None, true) => {
                return Err(invalid(
                    r.name.span(),
                    format!("{key}.cluster"),
                    format!(
                        "route {:?} names no cluster; set `cluster` or `split` (or `redirect` or `respond`); defined clusters: {}",
                        r.name.get_ref(),
                        defined()
                    ),
                ));
            }
        }
        for (tkey, c) in targets {
            if !clusters.contains(c.get_ref().as_str()) {
                return Err(invalid(
                    c.span(),
                    tkey,
                    format!(
                        "no cluster named {:?}; defined clusters: {}",
                        c.get_ref(),
                        defined()
                    ),
                ));
            }
        }
        for (j, l) in r.listeners.iter().flatten().enumerate() {
            if !listeners.contains(l.get_ref().as_str()) {
                return Err(invalid(
                    l.span(),
                    format!("{key}.listeners[{j}]"),
                    format!(
                        "no listener named {:?}; defined listeners: {}",
                        l.get_ref(),
                        list(config.listeners.iter().map(|l| l.name.get_ref().as_str()))
                    ),
                ));
            }
        }
        if let (Some(_), Some(p)) = (&r.path, &r.path_prefix) {
            return Err(invalid(
                p.span(),
                format!("{key}.path_prefix"),
                "a route matches either `path` (exact) or `path_prefix`, not both",
            ));
        }
        for (field, p) in [("path", &r.path), ("path_prefix", &r.path_prefix)] {
            if let Some(p) = p
                && !p.get_ref().starts_with('/')
            {
                return Err(invalid(
                    p.span(),
                    format!("{key}.{field}"),
                    format!("{:?} must start with '/'", p.get_ref()),
                ));
            }
        }
        if let Some(h) = &r.host {
            let host = h.get_ref();
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty() || bare.contains(['/', ':', ' ', '*']) {
                return Err(invalid(
                    h.span(),
                    format!("{key}.host"),
                    format!(
                        "{host:?} is not a host name; write e.g. \"api.example.com\" or \"*.example.com\" (no port)"
                    ),
                ));
            }
        }
        for (j, m) in r.methods.iter().enumerate() {
            let ok = Method::from_bytes(m.get_ref().as_bytes()).is_ok()
                && m.get_ref().bytes().all(|b| b.is_ascii_uppercase());
            if !ok {
                return Err(invalid(
                    m.span(),
                    format!("{key}.methods[{j}]"),
                    format!(
                        "{:?} is not an HTTP method; write it in upper case, e.g. \"GET\", \"POST\"",
                        m.get_ref()
                    ),
                ));
            }
        }
        if let Some(retry) = &r.retry {
            check_retry(retry, &r.name, &format!("{key}.retry"))?;
            // One budget per cluster: it bounds the load on the cluster's
            // endpoints, whichever route the retries come from.
            let (b, d) = (&retry.budget, super::resilience::BudgetConfig::default());
            if b.enabled != d.enabled
                || b.ratio.get_ref() != d.ratio.get_ref()
                || b.min_per_sec.get_ref() != d.min_per_sec.get_ref()
                || b.window != d.window
            {
                return Err(invalid(
                    r.name.span(),
                    format!("{key}.retry.budget"),
                    "the retry budget is per cluster; set it in the cluster's [clusters.retry.budget]",
                ));
            }
        }
        if let Some(f) = &r.fallback {
            check_fallback(f, &format!("{key}.fallback"))?;
        }
        for (name, value) in &r.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    value.span(),
                    format!("{key}.headers.{name}"),
                    format!("{name:?} is not a valid header name"),
                ));
            }
            if HeaderValue::from_str(value.get_ref()).is_err() {
                return Err(invalid(
                    value.span(),
                    format!("{key}.headers.{name}"),
                    "not a valid header value (visible ASCII only)",
                ));
            }
        }
    }
    super::ignored::check(config)?;
    super::ratelimit::check(config)?;
    super::slo::check(config)?;
    super::burn_actions::check(config)?;
    super::otlp::check(config)?;
    // Last: a partial config written to show one mistake is judged on that
    // mistake first.
    check_serves_something(config)
}

/// A configuration that listens nowhere, or a listener that can only answer
/// 404, is a mistake (an empty or truncated file parses as an empty config):
/// refused, so that a reload can never stop every listener by accident.
fn check_serves_something(config: &Config) -> Result<(), Invalid> {
    if config.listeners.is_empty() && !config.server.allow_no_listeners {
        return Err(invalid(
            0..0,
            "listeners".into(),
            "no listener: Levee would serve nothing (is the file empty or cut short?); \
             add a [[listeners]] table with a name and an address, or set \
             server.allow_no_listeners = true to run with the admin API only",
        ));
    }
    if config.listeners.is_empty() && !config.admin.enabled {
        return Err(invalid(
            0..0,
            "listeners".into(),
            "no listener and the admin API disabled: Levee would serve nothing at all; \
             add a [[listeners]] table or enable the admin API",
        ));
    }
    for (i, r) in config.routes.iter().enumerate() {
        if r.listeners.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(
                r.name.span(),
                format!("routes[{i}].listeners"),
                "an empty list serves no listener; name at least one, or remove the key \
                 to serve every listener",
            ));
        }
    }
    for (i, l) in config.listeners.iter().enumerate() {
        if l.protocol == super::schema::Protocol::Tcp {
            // Relays to its cluster; routes do not apply.
            continue;
        }
        let name = l.name.get_ref();
        let served = config.routes.iter().any(|r| {
            r.listeners
                .as_ref()
                .is_none_or(|ls| ls.iter().any(|n| n.get_ref() == name))
        });
        // A `redirect_https` listener answers every request itself.
        if !served && !l.redirect_https {
            return Err(invalid(
                l.name.span(),
                format!("listeners[{i}]"),
                format!(
                    "listener {name:?} has no route, so it could only answer 404; add a \
                     [[routes]] entry that serves it (a route without `listeners` serves \
                     every listener)"
                ),
            ));
        }
    }
    Ok(())
}

/// A status that may be retried or counted as a failure: a 5xx, or 429.
/// Any other 4xx is the client's mistake, and repeating it changes nothing.
fn check_statuses(statuses: &[Spanned<u16>], key: &str) -> Result<(), Invalid> {
    for (j, s) in statuses.iter().enumerate() {
        let code = *s.get_ref();
        if !(code == 429 || (500..=599).contains(&code)) {
            return Err(invalid(
                s.span(),
                format!("{key}[{j}]"),
                format!(
                    "{code} cannot be listed; only 5xx statuses and 429 can (other 4xx are the client's error)"
                ),
            ));
        }
    }
    Ok(())
}

fn check_retry(r: &RetryConfig, owner: &Spanned<String>, key: &str) -> Result<(), Invalid> {
    let attempts = *r.max_attempts.get_ref();
    if !(1..=10).contains(&attempts) {
        return Err(invalid(
            r.max_attempts.span(),
            format!("{key}.max_attempts"),
            format!("{attempts} is out of range; valid values are 1 (no retry) to 10"),
        ));
    }
    check_statuses(&r.retry_statuses, &format!("{key}.retry_statuses"))?;
    if r.backoff_base.get() > r.backoff_max.get() {
        return Err(invalid(
            owner.span(),
            format!("{key}.backoff_base"),
            format!(
                "backoff_base {} is above backoff_max {}",
                r.backoff_base, r.backoff_max
            ),
        ));
    }
    if !r.attempts_header.is_empty()
        && HeaderName::from_bytes(r.attempts_header.as_bytes()).is_err()
    {
        return Err(invalid(
            owner.span(),
            format!("{key}.attempts_header"),
            format!("{:?} is not a valid header name", r.attempts_header),
        ));
    }
    let b = &r.budget;
    for (field, v) in [("ratio", &b.ratio), ("min_per_sec", &b.min_per_sec)] {
        if !(v.get_ref().is_finite() && *v.get_ref() >= 0.0) {
            return Err(invalid(
                v.span(),
                format!("{key}.budget.{field}"),
                format!("{} must be a number of at least 0", v.get_ref()),
            ));
        }
    }
    Ok(())
}

fn check_breaker(b: &BreakerConfig, owner: &Spanned<String>, key: &str) -> Result<(), Invalid> {
    for (field, v) in [
        ("failure_rate", &b.failure_rate),
        ("slow_call_rate", &b.slow_call_rate),
    ] {
        if !(*v.get_ref() >= 0.0 && *v.get_ref() <= 1.0) {
            return Err(invalid(
                v.span(),
                format!("{key}.{field}"),
                format!("{} is not a ratio; use 0 (off) to 1, e.g. 0.5", v.get_ref()),
            ));
        }
    }
    let calls = *b.window_calls.get_ref();
    if calls > super::resilience::MAX_WINDOW_CALLS {
        return Err(invalid(
            b.window_calls.span(),
            format!("{key}.window_calls"),
            format!(
                "{calls} is out of range; at most {}",
                super::resilience::MAX_WINDOW_CALLS
            ),
        ));
    }
    if b.open_duration.get().is_zero() || b.half_open_max_calls == 0 || b.success_threshold == 0 {
        return Err(invalid(
            owner.span(),
            key.to_string(),
            "open_duration must be above 0 and half_open_max_calls and success_threshold at least 1",
        ));
    }
    check_statuses(&b.failure_statuses, &format!("{key}.failure_statuses"))
}

fn check_fallback(f: &FallbackConfig, key: &str) -> Result<(), Invalid> {
    let status = *f.status.get_ref();
    if !(200..=599).contains(&status) {
        return Err(invalid(
            f.status.span(),
            format!("{key}.status"),
            format!("{status} is not a final HTTP status; use 200 to 599"),
        ));
    }
    for (name, value) in &f.headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err()
            || HeaderValue::from_str(value.get_ref()).is_err()
        {
            return Err(invalid(
                value.span(),
                format!("{key}.headers.{name}"),
                "not a valid header (name: token characters; value: visible ASCII)",
            ));
        }
    }
    Ok(())
}

pub(super) fn check_name(name: &str, span: Range<usize>, key: String) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            span,
            key,
            format!("{name:?} is not a valid name; use 1-64 letters, digits, '-', '_' or '.'"),
        ))
    }
}

pub(super) fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
