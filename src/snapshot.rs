//! The immutable picture of the configuration that requests read.
//!
//! A reload builds a whole new `Snapshot` from a validated config and swaps it
//! in atomically; requests already running keep the one they started with.
//! State that must survive the swap lives in `LiveRegistry`, not here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Cluster, LiveRegistry};
use crate::config::Config;
use crate::observe::Metrics;
use crate::observe::metrics::RouteMetrics;
use crate::ratelimit::rules::{RateLimits, Registry};
use crate::route::{Matcher, Route, Target};

/// Per-listener settings and the routes it serves, in declared order.
pub struct Listener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub max_connections: usize,
    /// 0: no per-IP limit.
    pub max_connections_per_ip: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: Option<u64>,
    /// HTTP/2 from clients and its limits.
    pub http2: Arc<crate::config::http2::Http2Config>,
    /// `redirect_https`: the https port requests are redirected to.
    pub redirect_https: Option<u16>,
    pub routes: Vec<Arc<Route>>,
    /// `protocol = "tcp"`: where its connections are relayed (its routes
    /// are then unused): the listener's cluster, or one chosen by SNI.
    pub tcp: Option<Arc<crate::wire::sni::SniRoutes<TcpRelay>>>,
    /// `[listeners.proxy_protocol]`: the PROXY header required first.
    pub proxy_protocol: Option<Arc<crate::wire::proxy_protocol::Accept>>,
    /// WebSocket tunnels: whether upgrades are tunnelled, and their timeouts.
    pub websocket: crate::config::websocket::WebSocketConfig,
}

/// What a TCP listener relays to (served by `crate::tcp`). A connection
/// keeps the relay it started with across reloads.
pub struct TcpRelay {
    pub listener: Arc<str>,
    pub cluster: Arc<Cluster>,
    pub connect_attempts: u32,
    pub idle_timeout: Duration,
    pub on_endpoint_down: crate::config::OnEndpointDown,
    /// The PROXY protocol header sent to endpoints, if any.
    pub send_proxy: Option<crate::config::ProxyVersion>,
    /// The listener's `copy`.
    pub copy: crate::config::TcpCopy,
    /// The listener's `half_close` (unset: true).
    pub half_close: bool,
    /// Its metric series, looked up once.
    pub metrics: crate::observe::tcp::RelayHandles,
}

impl TcpRelay {
    pub fn new(
        listener: &crate::config::ListenerConfig,
        cluster: Arc<Cluster>,
        on_endpoint_down: crate::config::OnEndpointDown,
        send_proxy: Option<crate::config::ProxyVersion>,
    ) -> TcpRelay {
        TcpRelay {
            listener: listener.name.get_ref().as_str().into(),
            cluster,
            connect_attempts: *listener.connect_attempts.get_ref(),
            idle_timeout: listener.idle_timeout.get(),
            on_endpoint_down,
            send_proxy,
            copy: listener
                .copy
                .as_ref()
                .map(|c| *c.get_ref())
                .unwrap_or_default(),
            half_close: listener.half_close.as_ref().is_none_or(|h| *h.get_ref()),
            metrics: Default::default(),
        }
    }
}

pub struct Snapshot {
    pub config: Config,
    pub listeners: Vec<Arc<Listener>>,
    pub clusters: Vec<Arc<Cluster>>,
    /// Metric handles for requests that matched no route.
    pub unrouted: RouteMetrics,
    /// The rate-limit rules; routes hold the ones they list.
    pub rate_limits: RateLimits,
}

impl Snapshot {
    /// `first`: the configuration Levee starts with (see `Cluster::build`).
    pub fn build(
        config: Config,
        live: &LiveRegistry,
        limits: &Registry,
        metrics: &Metrics,
        first: bool,
    ) -> Snapshot {
        crate::observe::known::config(metrics, &config);
        let rate_limits = RateLimits::build(&config.rate_limit, limits, metrics);
        let clusters: Vec<Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| Arc::new(Cluster::build(c, live, metrics, first)))
            .collect();
        let by_name: HashMap<&str, &Arc<Cluster>> =
            clusters.iter().map(|c| (&*c.name, c)).collect();
        let routes: Vec<(Option<Vec<String>>, Arc<Route>)> = config
            .routes
            .iter()
            .map(|r| {
                let name: Arc<str> = r.name.get_ref().as_str().into();
                let mut wanted: Vec<(&str, u32)> = match &r.cluster {
                    Some(c) => vec![(c.get_ref().as_str(), 1)],
                    None => r
                        .split
                        .iter()
                        .map(|t| (t.cluster.get_ref().as_str(), *t.weight.get_ref()))
                        .collect(),
                };
                let on_burn = metrics.slos.acts.route(&name, r.on_fast_burn.as_ref());
                if let Some(on) = &on_burn {
                    hold_split(&name, on, &mut wanted);
                }
                // Validation guarantees every named cluster exists.
                let targets = wanted
                    .into_iter()
                    .filter_map(|(cluster, weight)| {
                        let cluster = (*by_name.get(cluster)?).clone();
                        Some(Target {
                            metrics: RouteMetrics::new(metrics, &name, &cluster.name),
                            cluster,
                            weight,
                        })
                    })
                    .collect();
                let only = r
                    .listeners
                    .as_ref()
                    .map(|ls| ls.iter().map(|l| l.get_ref().clone()).collect());
                (
                    only,
                    Arc::new(
                        Route::new(
                            name.clone(),
                            Matcher::from_config(r),
                            targets,
                            r.split_key.clone(),
                        )
                        .with_policies(r)
                        .with_own_metrics(
                            crate::config::rewrite::is_action(r)
                                .then(|| RouteMetrics::new(metrics, &name, "")),
                        )
                        .with_rate_limits(
                            rate_limits.for_route(
                                &name,
                                &r.rate_limits
                                    .iter()
                                    .map(|n| n.get_ref().clone())
                                    .collect::<Vec<_>>(),
                            ),
                        )
                        .with_slo(metrics.slos.route(&name, r.slo.as_ref()))
                        .with_stats(metrics.route_stats.route(&name))
                        .with_burn_actions(on_burn),
                    ),
                )
            })
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let name = l.name.get_ref();
                Arc::new(Listener {
                    name: name.as_str().into(),
                    address: *l.address.get_ref(),
                    max_connections: *l.max_connections.get_ref(),
                    max_connections_per_ip: l.max_connections_per_ip,
                    header_timeout: l.header_timeout.get(),
                    idle_timeout: l.idle_timeout.get(),
                    max_header_bytes: usize::try_from(l.max_header_bytes.0).unwrap_or(usize::MAX),
                    max_body_bytes: l.max_body_bytes.map(|b| b.0),
                    http2: Arc::new(l.http2.clone()),
                    redirect_https: l
                        .redirect_https
                        .then(|| l.https_port.as_ref().map_or(443, |p| *p.get_ref())),
                    routes: routes
                        .iter()
                        .filter(|(only, _)| only.as_ref().is_none_or(|o| o.contains(name)))
                        .map(|(_, r)| r.clone())
                        .collect(),
                    tcp: tcp_routes(l, &by_name, &config),
                    proxy_protocol: l
                        .proxy_protocol
                        .as_ref()
                        .map(|p| Arc::new(crate::wire::proxy_protocol::Accept::from_config(p))),
                    websocket: l.websocket.clone(),
                })
            })
            .collect();
        let keep: Vec<(String, SocketAddr)> = clusters
            .iter()
            .flat_map(|c| c.endpoints.iter().map(|e| (c.name.to_string(), e.address)))
            .collect();
        live.retain(&keep);
        Snapshot {
            listeners,
            clusters,
            unrouted: RouteMetrics::new(metrics, "", ""),
            rate_limits,
            config,
        }
    }

    pub fn listener(&self, address: SocketAddr) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| l.address == address)
    }
}

/// While a route's fast-burn actions hold its split, the weights in force
/// when the burn started stay (`slo::act`); a shift the configuration asks
/// for is told once, as an event, and applies when the burn ends.
fn hold_split(route: &str, on: &crate::slo::act::RouteActions, wanted: &mut [(&str, u32)]) {
    let configured: Vec<(String, u32)> = wanted.iter().map(|(c, w)| (c.to_string(), *w)).collect();
    let (weights, refused) = on.acting.weights(&configured);
    for (t, w) in wanted.iter_mut().zip(weights) {
        t.1 = w;
    }
    if let Some(why) = refused {
        crate::events::emit(
            crate::events::Kind::SloAction,
            format!("route {route}"),
            "split weight shift held",
            why,
        );
    }
}

/// A TCP listener's relays: its cluster's, and its SNI routes'.
/// Validation guarantees every cluster named exists.
fn tcp_routes(
    l: &crate::config::ListenerConfig,
    clusters: &HashMap<&str, &Arc<Cluster>>,
    config: &Config,
) -> Option<Arc<crate::wire::sni::SniRoutes<TcpRelay>>> {
    if l.protocol != crate::config::Protocol::Tcp {
        return None;
    }
    let relay = |name: &str| -> Option<Arc<TcpRelay>> {
        let cluster = (*clusters.get(name)?).clone();
        let c = config.clusters.iter().find(|c| c.name.get_ref() == name)?;
        Some(Arc::new(TcpRelay::new(
            l,
            cluster,
            c.on_endpoint_down,
            c.send_proxy_protocol,
        )))
    };
    let default = l.cluster.as_ref().and_then(|c| relay(c.get_ref()));
    let names: Vec<(Vec<String>, Arc<TcpRelay>)> = l
        .sni
        .iter()
        .filter_map(|s| {
            let names = s.names.get_ref().iter().map(|n| n.get_ref().clone());
            Some((names.collect(), relay(s.cluster.get_ref())?))
        })
        .collect();
    Some(Arc::new(crate::wire::sni::SniRoutes::new(
        names.iter().map(|(n, r)| (n.as_slice(), r.clone())),
        default,
    )))
}
