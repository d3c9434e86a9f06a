//! Prometheus metrics. Families live for the whole process, so counters keep
//! counting across reloads; the request path never looks a label set up: each
//! snapshot resolves the handles its routes and endpoints need when it is
//! built, and a request only bumps atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub cluster: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: &'static str,
    /// Where it was met: `accept`, `connect`, `health_check`.
    pub at: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub cluster: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub cluster: String,
    pub endpoint: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointReasonLabels {
    pub cluster: String,
    pub endpoint: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub cluster: String,
    pub endpoint: String,
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointResultLabels {
    pub cluster: String,
    pub endpoint: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub cluster: String,
    pub endpoint: String,
    pub connection: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterKindLabels {
    pub cluster: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub name: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsNameLabels {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleTierLabels {
    pub rule: String,
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleDecisionLabels {
    pub rule: String,
    pub tier: String,
    pub result: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    pub tcp: super::tcp::TcpMetrics,
    pub websocket: super::websocket::WebSocketMetrics,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_head_duration: Family<ClusterLabels, Histogram, fn() -> Histogram>,
    pub request_wait: Family<ClusterLabels, Histogram, fn() -> Histogram>,
    pub errors: Family<KindLabels, Counter>,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub upstream_connect_errors: Family<EndpointLabels, Counter>,
    pub local_shortage: Family<CauseLabels, Counter>,
    pub upstream_tls_handshakes: Family<EndpointResultLabels, Counter>,
    pub upstream_in_flight: Family<EndpointLabels, Gauge>,
    pub connections_active: Family<ListenerLabels, Gauge>,
    pub connections_total: Family<ListenerLabels, Counter>,
    pub connections_refused: Family<ListenerLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub retries: Family<ClusterKindLabels, Counter>,
    pub retry_budget_exhausted: Family<ClusterLabels, Counter>,
    pub breaker_state: Family<StateLabels, Gauge>,
    pub breaker_transitions: Family<TransitionLabels, Counter>,
    pub breaker_rejections: Family<EndpointLabels, Counter>,
    pub bulkhead_rejections: Family<ClusterKindLabels, Counter>,
    pub shed: Family<ClusterLabels, Counter>,
    pub endpoint_state: Family<StateLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub ejections: Family<EndpointLabels, Counter>,
    pub ejections_ended: Family<EndpointReasonLabels, Counter>,
    pub ratelimit_decisions: Family<RuleDecisionLabels, Counter>,
    pub ratelimit_store_errors: Family<RuleLabels, Counter>,
    pub ratelimit_keys: Family<RuleTierLabels, Gauge>,
    pub connections_per_ip_refused: Family<ListenerLabels, Counter>,
    pub wrong_protocol: Family<ProtocolLabels, Counter>,
    pub dns_lookups: Family<DnsLabels, Counter>,
    pub dns_addresses: Family<DnsNameLabels, Gauge>,
    pub chaos: crate::observe::chaos::ChaosMetrics,
    /// HTTP/2 to endpoints and gRPC (`observe::grpc`).
    pub grpc: crate::observe::grpc::GrpcMetrics,
    pub otlp: crate::observe::otlp::OtlpMetrics,
    /// Routes' SLO trackers and gauges (`slo::Registry`).
    pub slos: crate::slo::Registry,
    /// Every route's rates and latency percentiles (`observe::route_stats`).
    pub route_stats: crate::observe::route_stats::Registry,
    /// TLS termination (`crate::tls::metrics`).
    pub tls: crate::tls::metrics::TlsMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("levee");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, cluster and status class (1xx..5xx)",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "request_duration_seconds",
            "Time from request head received to response body sent, by route",
            request_duration.clone(),
        );
        let upstream_head_duration =
            Family::<ClusterLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "upstream_response_head_seconds",
            "Time from a try's start to the endpoint's response head, by cluster (tries that got one)",
            upstream_head_duration.clone(),
        );
        let request_wait =
            Family::<ClusterLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "request_wait_seconds",
            "Time from request head received to its first try, by cluster: rate-limit delay, bulkhead queue, body kept for retries",
            request_wait.clone(),
        );
        let errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "errors",
            "Requests Levee answered itself with an error, by kind (no_route, no_endpoint, upstream_connect, upstream_timeout, body_too_large, bad_request, header_timeout, ...)",
            errors.clone(),
        );
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Requests sent upstream, by endpoint and whether the connection was reused from the pool or newly opened",
            upstream_requests.clone(),
        );
        let upstream_connect_errors = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "upstream_connect_errors",
            "Failed or timed-out connection attempts to an endpoint",
            upstream_connect_errors.clone(),
        );
        let local_shortage = Family::<CauseLabels, Counter>::default();
        registry.register(
            "local_shortage",
            "Accepts, connects and health checks refused for want of Levee's own resources, by cause (file_descriptors, local_ports, memory) and where (accept, connect, health_check); not charged to any endpoint",
            local_shortage.clone(),
        );
        let upstream_tls_handshakes = Family::<EndpointResultLabels, Counter>::default();
        registry.register(
            "upstream_tls_handshakes",
            "TLS handshakes with endpoints (requests and active health checks), by result: ok, certificate (the endpoint's certificate was refused), alert (the endpoint refused us), timeout, error",
            upstream_tls_handshakes.clone(),
        );
        let upstream_in_flight = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "upstream_in_flight",
            "Requests currently being served by an endpoint",
            upstream_in_flight.clone(),
        );
        let connections_active = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_active",
            "Open client connections, by listener",
            connections_active.clone(),
        );
        let connections_total = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections",
            "Client connections accepted, by listener",
            connections_total.clone(),
        );
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections closed at accept because the listener was at max_connections",
            connections_refused.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (applied, refused)",
            reloads.clone(),
        );
        let retries = Family::<ClusterKindLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Tries after the first, by cluster and reason (connect_failure, reset, timeout, gateway_error, rate_limited, status)",
            retries.clone(),
        );
        let retry_budget_exhausted = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "retry_budget_exhausted",
            "Retries not made because the cluster's retry budget was spent; the client got the last try's answer",
            retry_budget_exhausted.clone(),
        );
        let breaker_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "1 for a circuit breaker's current state (closed, open, half-open), 0 for the others; endpoint=\"\" is the cluster's own breaker",
            breaker_state.clone(),
        );
        let breaker_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "breaker_transitions",
            "Circuit breaker state changes, by from and to state",
            breaker_transitions.clone(),
        );
        let breaker_rejections = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "breaker_rejections",
            "Requests a circuit breaker refused (cluster breaker: answered with the fallback; endpoint breaker: sent elsewhere)",
            breaker_rejections.clone(),
        );
        let bulkhead_rejections = Family::<ClusterKindLabels, Counter>::default();
        registry.register(
            "bulkhead_rejections",
            "Requests answered 503 by a cluster's bulkhead, by kind (queue_full, queue_timeout)",
            bulkhead_rejections.clone(),
        );
        let shed = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "adaptive_shed",
            "Requests answered 503 because the cluster's adaptive concurrency limit was reached",
            shed.clone(),
        );
        let endpoint_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "endpoint_state",
            "1 for the endpoint's current health state (warming, healthy, degraded, unhealthy, draining), 0 for the others",
            endpoint_state.clone(),
        );
        let transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "endpoint_transitions",
            "Health state changes of an endpoint, by from and to state",
            transitions.clone(),
        );
        let ejections = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "outlier_ejections",
            "Times an endpoint was ejected by passive outlier detection",
            ejections.clone(),
        );
        let ejections_ended = Family::<EndpointReasonLabels, Counter>::default();
        registry.register(
            "outlier_ejections_ended",
            "Outlier ejections that ended, by reason: active_check (healthy_threshold passing active checks in a row), expired (its time ran out; clusters with active checks), probe (its probe request succeeded; clusters without active checks)",
            ejections_ended.clone(),
        );
        let ratelimit_decisions = Family::<RuleDecisionLabels, Counter>::default();
        registry.register(
            "ratelimit_decisions",
            "Requests checked by a rate-limit rule, by rule, tier (\"\" for the rule's own limit) and result (allowed, limited, dry_run_limited)",
            ratelimit_decisions.clone(),
        );
        let ratelimit_store_errors = Family::<RuleLabels, Counter>::default();
        registry.register(
            "ratelimit_store_errors",
            "Rate-limit checks the Redis store failed (down, timed out, error), by rule; on_store_error decided them",
            ratelimit_store_errors.clone(),
        );
        let ratelimit_keys = Family::<RuleTierLabels, Gauge>::default();
        registry.register(
            "ratelimit_keys",
            "Keys held in a rule's local table, by rule and tier, as of the last sweep",
            ratelimit_keys.clone(),
        );
        let connections_per_ip_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_per_ip_refused",
            "Client connections answered 429 and closed because their IP was at the listener's max_connections_per_ip",
            connections_per_ip_refused.clone(),
        );
        let dns_lookups = Family::<DnsLabels, Counter>::default();
        registry.register(
            "dns_lookups",
            "Lookups of the names in endpoint addresses, by name and result (ok, failed); a failed lookup keeps the last known addresses",
            dns_lookups.clone(),
        );
        let dns_addresses = Family::<DnsNameLabels, Gauge>::default();
        registry.register(
            "dns_addresses",
            "Addresses a name in an endpoint address resolves to now (the last successful answer)",
            dns_addresses.clone(),
        );
        let wrong_protocol = Family::<ProtocolLabels, Counter>::default();
        registry.register(
            "connections_wrong_protocol",
            "Client connections that spoke a protocol their listener does not serve (http2: the HTTP/2 preface on an HTTP/1 listener, answered with GOAWAY; tls: a TLS ClientHello on a plain listener, answered with an alert; http: plain HTTP on a TLS listener, answered 400), then closed",
            wrong_protocol.clone(),
        );
        // Present from the start, so that an absent series means 0.
        for protocol in ["http2", "tls", "http"] {
            drop(wrong_protocol.get_or_create(&ProtocolLabels { protocol }));
        }
        // TCP listeners' own metrics (`src/tcp/metrics.rs`).
        let tcp = super::tcp::TcpMetrics::register(&mut registry);
        let websocket = super::websocket::WebSocketMetrics::register(&mut registry);
        let chaos = crate::observe::chaos::ChaosMetrics::register(&mut registry);
        let grpc = crate::observe::grpc::GrpcMetrics::register(&mut registry);
        let otlp = crate::observe::otlp::OtlpMetrics::register(&mut registry);
        let slos = crate::slo::Registry::new(&mut registry);
        let route_stats = crate::observe::route_stats::Registry::new(&mut registry);
        let tls = crate::tls::metrics::TlsMetrics::register(&mut registry);
        let metrics = Metrics {
            tls,
            registry,
            slos,
            route_stats,
            chaos,
            grpc,
            otlp,
            tcp,
            websocket,
            dns_lookups,
            dns_addresses,
            wrong_protocol,
            ratelimit_decisions,
            ratelimit_store_errors,
            ratelimit_keys,
            connections_per_ip_refused,
            retries,
            retry_budget_exhausted,
            breaker_state,
            breaker_transitions,
            breaker_rejections,
            bulkhead_rejections,
            shed,
            endpoint_state,
            transitions,
            ejections,
            ejections_ended,
            requests,
            request_duration,
            upstream_head_duration,
            request_wait,
            errors,
            upstream_requests,
            upstream_connect_errors,
            local_shortage,
            upstream_tls_handshakes,
            upstream_in_flight,
            connections_active,
            connections_total,
            connections_refused,
            reloads,
        };
        super::known::process(&metrics);
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabels { kind }).inc();
    }
}

/// Counters one route bumps per request, resolved when the snapshot is built.
#[derive(Clone)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    pub fn new(metrics: &Metrics, route: &str, cluster: &str) -> Self {
        let class = |class| {
            metrics.requests.get_or_create_owned(&RequestLabels {
                route: route.to_owned(),
                cluster: cluster.to_owned(),
                class,
            })
        };
        RouteMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: metrics.request_duration.get_or_create_owned(&RouteLabels {
                route: route.to_owned(),
            }),
        }
    }

    pub fn record(&self, status: u16, seconds: f64) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[i].inc();
        self.duration.observe(seconds);
    }
}

impl Metrics {
    pub fn reloads_applied(&self) {
        self.reloads
            .get_or_create(&ResultLabels { result: "applied" })
            .inc();
    }
    pub fn reloads_refused(&self) {
        self.reloads
            .get_or_create(&ResultLabels { result: "refused" })
            .inc();
    }

    /// One accept, connect or health check refused for want of Levee's
    /// own resources; `at` is one of `crate::shortage::PLACES`.
    pub fn local_shortage(&self, cause: crate::shortage::Shortage, at: &'static str) {
        self.local_shortage
            .get_or_create(&CauseLabels {
                cause: cause.as_str(),
                at,
            })
            .inc();
    }
}
