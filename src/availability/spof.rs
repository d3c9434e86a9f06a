//! The single-point-of-failure report: what one failure takes down, found
//! in the configuration and, when Levee runs, in its live state.
//!
//! - `single_endpoint`: a cluster with one endpoint (backups included).
//! - `single_usable_endpoint` / `no_usable_endpoint`: a cluster of several
//!   endpoints of which one, or none, is usable now (live state only).
//! - `no_backup`: a route whose cluster has no backup endpoint: a failure
//!   of that whole cluster (a bad deploy, its zone) has nowhere to go.
//! - `redis_without_fallback`: a rate-limit rule on Redis whose
//!   `on_store_error` is not `local`: when Redis fails, `deny` refuses
//!   every request of its routes and `allow` lifts the limit.
//! - `single_instance`: always listed. One Levee process cannot see its
//!   peers; if it is the only one, it is itself the single point of failure.

use serde::Serialize;

use crate::config::Config;
use crate::config::ratelimit::{OnStoreError, StoreKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    /// `high`: one failure is an outage; `medium`: one failure degrades or
    /// removes a protection.
    pub severity: &'static str,
    /// What it is about: `cluster NAME`, `route NAME`, `rate limit NAME`,
    /// `levee`.
    pub subject: String,
    pub message: String,
}

/// The findings for `config`. `usable` gives a cluster's usable endpoints
/// now, when there is live state (`None` from the configuration alone).
pub fn findings(config: &Config, usable: &dyn Fn(&str) -> Option<usize>) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in &config.clusters {
        let name = c.name.get_ref();
        let total = c.endpoints.len();
        if total == 1 {
            out.push(Finding {
                kind: "single_endpoint",
                severity: "high",
                subject: format!("cluster {name}"),
                message: format!(
                    "cluster {name} has one endpoint ({}): when it fails, every route on {name} fails; add endpoints (in another zone if you can)",
                    c.endpoints[0].address.get_ref()
                ),
            });
        } else if let Some(n) = usable(name) {
            if n == 0 {
                out.push(Finding {
                    kind: "no_usable_endpoint",
                    severity: "high",
                    subject: format!("cluster {name}"),
                    message: format!(
                        "cluster {name}: none of its {total} endpoints is usable now (unhealthy, ejected or draining)"
                    ),
                });
            } else if n == 1 {
                out.push(Finding {
                    kind: "single_usable_endpoint",
                    severity: "high",
                    subject: format!("cluster {name}"),
                    message: format!(
                        "cluster {name}: only 1 of its {total} endpoints is usable now; the next failure is an outage"
                    ),
                });
            }
        }
    }
    for r in &config.routes {
        let route = r.name.get_ref();
        let clusters: Vec<&String> = match &r.cluster {
            Some(c) => vec![c.get_ref()],
            None => r.split.iter().map(|t| t.cluster.get_ref()).collect(),
        };
        for cluster in clusters {
            let has_backup = config
                .clusters
                .iter()
                .find(|c| c.name.get_ref() == cluster)
                .is_some_and(|c| c.endpoints.iter().any(|e| e.backup));
            if !has_backup {
                out.push(Finding {
                    kind: "no_backup",
                    severity: "medium",
                    subject: format!("route {route}"),
                    message: format!(
                        "route {route} depends on cluster {cluster}, which has no backup endpoint: a failure of the whole cluster (a bad deploy, its zone) has nowhere to go; add endpoints with backup = true elsewhere"
                    ),
                });
            }
        }
    }
    let limits = &config.rate_limit;
    for rule in &limits.rules {
        let store = rule.store.unwrap_or(limits.store);
        let on_error = rule.on_store_error.unwrap_or(limits.on_store_error);
        if store != StoreKind::Redis || on_error == OnStoreError::Local {
            continue;
        }
        let name = rule.name.get_ref();
        let routes: Vec<&str> = config
            .routes
            .iter()
            .filter(|r| r.rate_limits.iter().any(|n| n.get_ref() == name))
            .map(|r| r.name.get_ref().as_str())
            .collect();
        let used_by = if routes.is_empty() {
            "no route uses it yet".to_owned()
        } else {
            format!("routes: {}", routes.join(", "))
        };
        let (severity, effect) = match on_error {
            OnStoreError::Deny => (
                "high",
                "refuses every request it covers while Redis is down (on_store_error = \"deny\")",
            ),
            _ => (
                "medium",
                "stops limiting while Redis is down (on_store_error = \"allow\")",
            ),
        };
        out.push(Finding {
            kind: "redis_without_fallback",
            severity,
            subject: format!("rate limit {name}"),
            message: format!(
                "rate limit {name} keeps its counts in Redis and {effect}; on_store_error = \"local\" keeps a per-instance limit instead ({used_by})"
            ),
        });
    }
    out.push(Finding {
        kind: "single_instance",
        severity: "high",
        subject: "levee".into(),
        message: "this Levee cannot see its peers: if it is the only instance, it is itself a single point of failure; run two or more (keepalived/VRRP with a floating address, or several instances behind DNS or an L4 balancer)".into(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(std::path::Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    const TWO_CLUSTERS: &str = r#"
[[listeners]]
name = "web"
address = "127.0.0.1:8080"

[[clusters]]
name = "solo"
[[clusters.endpoints]]
address = "127.0.0.1:9001"

[[clusters]]
name = "pair"
[[clusters.endpoints]]
address = "127.0.0.1:9002"
[[clusters.endpoints]]
address = "127.0.0.1:9003"
[[clusters.endpoints]]
address = "127.0.0.1:9004"
backup = true

[[routes]]
name = "a"
cluster = "solo"

[[routes]]
name = "b"
cluster = "pair"
"#;

    fn kinds(f: &[Finding]) -> Vec<(&str, &str)> {
        f.iter().map(|f| (f.kind, f.subject.as_str())).collect()
    }

    #[test]
    fn from_the_config_alone() {
        let f = findings(&config(TWO_CLUSTERS), &|_| None);
        assert_eq!(
            kinds(&f),
            [
                ("single_endpoint", "cluster solo"),
                ("no_backup", "route a"),
                ("single_instance", "levee"),
            ]
        );
        assert!(f[0].message.contains("127.0.0.1:9001"), "{}", f[0].message);
    }

    #[test]
    fn live_state_adds_clusters_down_to_one_or_none() {
        let cfg = config(TWO_CLUSTERS);
        let f = findings(&cfg, &|c| (c == "pair").then_some(1));
        assert!(kinds(&f).contains(&("single_usable_endpoint", "cluster pair")));
        let f = findings(&cfg, &|c| (c == "pair").then_some(0));
        assert!(kinds(&f).contains(&("no_usable_endpoint", "cluster pair")));
        let f = findings(&cfg, &|_| Some(2));
        assert!(!kinds(&f).iter().any(|(k, _)| k.contains("usable")));
    }

    #[test]
    fn redis_limits_without_a_local_fallback() {
        let text = format!(
            r#"{TWO_CLUSTERS}
[rate_limit]
store = "redis"
redis_url = "redis://127.0.0.1:6379"
on_store_error = "deny"

[[rate_limit.rules]]
name = "strict"
limit = 10

[[rate_limit.rules]]
name = "open"
limit = 10
on_store_error = "allow"

[[rate_limit.rules]]
name = "safe"
limit = 10
on_store_error = "local"

[[rate_limit.rules]]
name = "here"
limit = 10
store = "local"
"#
        );
        let text = text.replace(
            "name = \"b\"\ncluster = \"pair\"",
            "name = \"b\"\ncluster = \"pair\"\nrate_limits = [\"strict\"]",
        );
        let f = findings(&config(&text), &|_| None);
        let redis: Vec<&Finding> = f
            .iter()
            .filter(|f| f.kind == "redis_without_fallback")
            .collect();
        assert_eq!(redis.len(), 2, "{f:#?}");
        assert_eq!(redis[0].subject, "rate limit strict");
        assert_eq!(redis[0].severity, "high");
        assert!(
            redis[0].message.contains("routes: b"),
            "{}",
            redis[0].message
        );
        assert_eq!(redis[1].subject, "rate limit open");
        assert_eq!(redis[1].severity, "medium");
    }
}
