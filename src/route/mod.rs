//! Matching a request to a route: host, path (exact or prefix), method and
//! headers, tried in the order the routes are declared; the first match wins.

pub mod rewrite;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::cluster::Cluster;
use crate::config::resilience::FallbackConfig;
use crate::config::{HashKey, RouteConfig};
use crate::observe::metrics::RouteMetrics;
use crate::resilience::degradation::Level;
use crate::resilience::policy::RetryPolicy;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
}

/// What a route requires of a request.
#[derive(Debug, Clone)]
pub struct Matcher {
    host: Option<HostMatch>,
    path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `Some(true)`: https only; `Some(false)`: plain http only.
    https: Option<bool>,
}

impl Matcher {
    /// Builds from a validated route config.
    pub fn from_config(r: &RouteConfig) -> Matcher {
        let host = r.host.as_ref().map(|h| {
            let h = h.get_ref().to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
                None => HostMatch::Exact(h),
            }
        });
        let path = match (&r.path, &r.path_prefix) {
            (Some(p), _) => PathMatch::Exact(p.get_ref().clone()),
            (None, Some(p)) if p.get_ref() != "/" => PathMatch::Prefix(p.get_ref().clone()),
            _ => PathMatch::Any,
        };
        Matcher {
            https: r.scheme.map(|s| s == crate::config::Scheme::Https),
            host,
            path,
            methods: r
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.get_ref().as_bytes()).ok())
                .collect(),
            headers: r
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v.get_ref()).ok()?,
                    ))
                })
                .collect(),
        }
    }

    /// Whether the route takes requests of this scheme (`https`: the
    /// connection came over TLS).
    pub fn scheme_matches(&self, https: bool) -> bool {
        self.https.is_none_or(|h| h == https)
    }

    /// `host` is the request's host without port, already lower-cased.
    pub fn matches(&self, host: &str, path: &str, method: &Method, headers: &HeaderMap) -> bool {
        match &self.host {
            None => {}
            Some(HostMatch::Exact(h)) if h == host => {}
            Some(HostMatch::Suffix(s)) if host.len() > s.len() && host.ends_with(s.as_str()) => {}
            Some(_) => return false,
        }
        match &self.path {
            PathMatch::Any => {}
            PathMatch::Exact(p) if p == path => {}
            PathMatch::Prefix(p) if prefix_matches(p, path) => {}
            _ => return false,
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x` but not `/apix`: a prefix is
/// matched on path-segment boundaries, as users expect. A prefix ending in
/// `/` matches anything under it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// One cluster a route sends to, with its share and metric handles.
pub struct Target {
    pub cluster: Arc<Cluster>,
    pub weight: u32,
    pub metrics: RouteMetrics,
}

pub struct Route {
    pub name: Arc<str>,
    pub matcher: Matcher,
    /// One target, or a weighted split (a canary).
    pub targets: Vec<Target>,
    /// What keeps a client on one side of a split; `None`: per request.
    pub split_key: Option<HashKey>,
    total_weight: u64,
    /// Replaces the cluster's retry policy.
    pub retry: Option<RetryPolicy>,
    /// The answer when the route will not forward; `None`: a JSON 503.
    pub fallback: Option<Fallback>,
    /// The most severe service level at which the route still serves.
    pub min_level: Level,
    /// The rate-limit rules the route lists; `None`: no check at all.
    pub rate_limits: Option<Arc<crate::ratelimit::rules::RouteLimits>>,
    /// Header, path and host rewriting, or a redirect or fixed response
    /// instead of forwarding; `None`: none, at no cost.
    pub rewrite: Option<Box<crate::rewrite::Rewrite>>,
    /// The counts of a route that answers itself (`redirect`, `respond`):
    /// it has no target to count them.
    pub own_metrics: Option<RouteMetrics>,
    /// The route's SLO: its objective and the counts it is judged by.
    pub slo: Option<Arc<crate::slo::registry::RouteSlo>>,
    /// Rates and latency percentiles for the dashboard and `GET /stats`.
    pub stats: Option<Arc<crate::observe::route_stats::RouteStats>>,
    /// What the route does while its SLO burns fast (`on_fast_burn`).
    pub on_burn: Option<Arc<crate::slo::act::RouteActions>>,
}

/// A route's configured answer for when it will not forward.
pub struct Fallback {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Fallback {
    pub fn from_config(c: &FallbackConfig) -> Fallback {
        let mut headers = http::HeaderMap::new();
        for (name, value) in &c.headers {
            // Validated when the config was loaded.
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value.get_ref()),
            ) {
                headers.append(n, v);
            }
        }
        Fallback {
            status: http::StatusCode::from_u16(*c.status.get_ref())
                .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
            headers,
            body: bytes::Bytes::from(c.body.clone()),
        }
    }
}

impl Route {
    pub fn new(
        name: Arc<str>,
        matcher: Matcher,
        targets: Vec<Target>,
        split_key: Option<HashKey>,
    ) -> Route {
        let total_weight = targets.iter().map(|t| u64::from(t.weight)).sum();
        Route {
            name,
            matcher,
            targets,
            split_key,
            total_weight,
            retry: None,
            fallback: None,
            min_level: Level::Minimal,
            rate_limits: None,
            rewrite: None,
            own_metrics: None,
            slo: None,
            stats: None,
            on_burn: None,
        }
    }

    pub fn with_stats(mut self, stats: Arc<crate::observe::route_stats::RouteStats>) -> Route {
        self.stats = Some(stats);
        self
    }

    pub fn with_slo(mut self, slo: Option<Arc<crate::slo::registry::RouteSlo>>) -> Route {
        self.slo = slo;
        self
    }

    pub fn with_burn_actions(mut self, on: Option<Arc<crate::slo::act::RouteActions>>) -> Route {
        self.on_burn = on;
        self
    }

    /// The split as (cluster, weight), in declared order.
    pub fn weights(&self) -> Vec<(String, u32)> {
        self.targets
            .iter()
            .map(|t| (t.cluster.name.to_string(), t.weight))
            .collect()
    }

    pub fn with_rate_limits(
        mut self,
        limits: Option<Arc<crate::ratelimit::rules::RouteLimits>>,
    ) -> Route {
        self.rate_limits = limits;
        self
    }

    /// The route's own retry policy and fallback, from its config.
    pub fn with_policies(mut self, config: &RouteConfig) -> Route {
        self.retry = config.retry.as_ref().map(RetryPolicy::from_config);
        self.fallback = config.fallback.as_ref().map(Fallback::from_config);
        self.min_level = crate::service_level::min_level(config.min_level);
        self.rewrite = rewrite::build(config);
        self
    }

    /// The counts of a route that answers itself.
    pub fn with_own_metrics(mut self, metrics: Option<RouteMetrics>) -> Route {
        self.own_metrics = metrics;
        self
    }

    /// The redirect or fixed response the route answers with instead of
    /// forwarding.
    pub fn action(&self) -> Option<&crate::rewrite::Action> {
        self.rewrite.as_ref()?.action.as_ref()
    }

    /// The counts for a request that took `target` (or, on a route that
    /// answers itself, the route's own).
    pub fn metrics(&self, target: usize) -> Option<&RouteMetrics> {
        self.targets
            .get(target)
            .map(|t| &t.metrics)
            .or(self.own_metrics.as_ref())
    }

    /// Index of the target for a request: `draw` is the hash of the split
    /// key (sticky) or a random number. A target of weight 0 gets nothing.
    pub fn target(&self, draw: u64) -> usize {
        if self.targets.len() <= 1 || self.total_weight == 0 {
            return 0;
        }
        let mut point = draw % self.total_weight;
        for (i, t) in self.targets.iter().enumerate() {
            let w = u64::from(t.weight);
            if point < w {
                return i;
            }
            point -= w;
        }
        0
    }
}

/// The host a request is for: the URI authority (absolute-form) or the Host
/// header, without port, lower-cased.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    if let Some(h) = uri.host() {
        return Some(h);
    }
    let raw = headers.get(http::header::HOST)?.to_str().ok()?;
    // Strip the port; keep IPv6 literals intact.
    Some(match raw.rfind(':') {
        Some(i) if !raw.ends_with(']') => &raw[..i],
        _ => raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(toml_text: &str) -> Matcher {
        let full = format!(
            "[server]\nallow_no_listeners = true\n[[clusters]]\nname = \"c\"\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n{toml_text}"
        );
        let config = crate::config::parse(std::path::Path::new("t.toml"), &full).unwrap();
        Matcher::from_config(&config.routes[0])
    }

    #[test]
    fn path_prefix_on_segment_boundaries() {
        let m = route("path_prefix = \"/api\"");
        let h = HeaderMap::new();
        for p in ["/api", "/api/", "/api/v1/x"] {
            assert!(m.matches("x", p, &Method::GET, &h), "{p}");
        }
        for p in ["/apix", "/", "/ap"] {
            assert!(!m.matches("x", p, &Method::GET, &h), "{p}");
        }
    }

    #[test]
    fn exact_host_wildcard_method_header() {
        let m = route(
            "host = \"*.example.com\"\npath = \"/login\"\nmethods = [\"POST\"]\nheaders = { \"x-canary\" = \"true\" }",
        );
        let mut h = HeaderMap::new();
        h.insert("x-canary", HeaderValue::from_static("true"));
        assert!(m.matches("a.example.com", "/login", &Method::POST, &h));
        assert!(!m.matches("example.com", "/login", &Method::POST, &h));
        assert!(!m.matches("a.example.com", "/login/x", &Method::POST, &h));
        assert!(!m.matches("a.example.com", "/login", &Method::GET, &h));
        assert!(!m.matches("a.example.com", "/login", &Method::POST, &HeaderMap::new()));
    }

    #[test]
    fn host_from_header_without_port() {
        let uri: http::Uri = "/x".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("api.example.com:8080"));
        assert_eq!(request_host(&uri, &h), Some("api.example.com"));
        h.insert("host", HeaderValue::from_static("[::1]"));
        assert_eq!(request_host(&uri, &h), Some("[::1]"));
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use crate::cluster::LiveRegistry;
    use crate::observe::Metrics;

    fn split_route(weights: &[u32]) -> Route {
        let mut text = String::from("[server]\nallow_no_listeners = true\n");
        for i in 0..weights.len() {
            text.push_str(&format!("[[clusters]]\nname = \"c{i}\"\n"));
        }
        text.push_str("[[routes]]\nname = \"r\"\nsplit = [");
        for (i, w) in weights.iter().enumerate() {
            text.push_str(&format!("{{ cluster = \"c{i}\", weight = {w} }},"));
        }
        text.push_str("]\n");
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let (live, metrics) = (LiveRegistry::new(1), Metrics::new());
        let targets = config
            .clusters
            .iter()
            .zip(weights)
            .map(|(c, &weight)| Target {
                cluster: Arc::new(Cluster::build(c, &live, &metrics, true)),
                weight,
                metrics: RouteMetrics::new(&metrics, "r", c.name.get_ref()),
            })
            .collect();
        Route::new(
            "r".into(),
            Matcher::from_config(&config.routes[0]),
            targets,
            None,
        )
    }

    #[test]
    fn ninety_ten_is_exact_over_the_weight_cycle() {
        let route = split_route(&[90, 10]);
        let mut counts = [0; 2];
        for draw in 0..1000u64 {
            counts[route.target(draw)] += 1;
        }
        assert_eq!(counts, [900, 100]);
    }

    #[test]
    fn zero_weight_gets_nothing() {
        let route = split_route(&[0, 5, 0]);
        assert!((0..100u64).all(|d| route.target(d.wrapping_mul(0x9E37_79B9_7F4A_7C15)) == 1));
    }
}
