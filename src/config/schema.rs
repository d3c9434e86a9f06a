//! The configuration file, as types. Every table denies unknown keys so a typo
//! is an error, not a silently ignored setting. Defaults live next to the
//! field they belong to; `docs/configuration.md` documents each of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::resilience::{
    AdaptiveConcurrencyConfig, BreakerConfig, BulkheadConfig, DegradationTable, FallbackConfig,
    MinLevel, RetryConfig,
};
use super::value::{ByteSize, Duration};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    #[serde(default)]
    pub degradation: DegradationTable,
    /// Rate-limit store and rules; routes opt in with `rate_limits`.
    #[serde(default)]
    pub rate_limit: super::ratelimit::RateLimitConfig,
    /// How endpoint names are resolved.
    #[serde(default)]
    pub dns: super::dns::DnsConfig,
    /// Fault injection: off unless `chaos.enabled` (docs/chaos.md).
    #[serde(default)]
    pub chaos: super::chaos::ChaosConfig,
    /// Faults started with the configuration (each with a `ttl`).
    #[serde(default)]
    pub faults: Vec<super::chaos::FaultConfig>,
    /// Where SLO counts are saved across restarts (`docs/slo.md`).
    #[serde(default)]
    pub slo: super::slo::SloStateConfig,
    /// Span export to an OpenTelemetry collector (`docs/slo.md`).
    #[serde(default)]
    pub tracing: super::otlp::TracingConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Worker threads, each with its own event loop and its own accept
    /// socket per listener. 0 means one per core.
    pub workers: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Which HTTP/1.1 server serves client connections.
    pub http1: Http1Engine,
    /// A configuration without listeners (only the admin API serves) is
    /// refused unless this says so: an empty or truncated file must never
    /// stop every listener.
    pub allow_no_listeners: bool,
    /// Where to write the process id at start (nginx's `pid`, HAProxy's
    /// `pidfile`); removed on a clean exit. Unset: no pid file.
    pub pid_file: Option<Spanned<String>>,
}

/// The HTTP/1.1 server implementation (`server.http1`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Http1Engine {
    /// hyper's server.
    Hyper,
    /// Levee's own (`server::h1`): no buffer held by an idle connection.
    #[default]
    Levee,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: 0,
            drain_timeout: Duration::from_secs(30),
            http1: Http1Engine::default(),
            allow_no_listeners: false,
            pid_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Spanned so that errors can point at it (an empty span when the
    /// default is used).
    pub address: Spanned<SocketAddr>,
    /// When set, every admin request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            address: Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 9900))),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// `-` for standard output, otherwise a file path (appended to).
    pub path: String,
    /// `json` (one object per line) or `text` (common log format and
    /// `key=value` fields).
    pub format: AccessLogFormat,
    /// Share of successful requests (status below 400, no error) logged;
    /// every other request is always logged.
    pub success_sample: Spanned<f64>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            path: "-".into(),
            format: AccessLogFormat::Json,
            success_sample: Spanned::new(0..0, 1.0),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    /// Raw TCP: every connection is relayed, bytes both ways, to an
    /// endpoint of the listener's `cluster` (`src/tcp/`).
    Tcp,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: Spanned<String>,
    pub address: Spanned<SocketAddr>,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Open client connections at once; connections beyond it are closed at
    /// accept and counted.
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<usize>,
    /// Time a client has to send a complete request head, from its first byte
    /// (slowloris defence). Answered with 408.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// Time a keep-alive connection may sit idle between requests.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Largest request head accepted; larger ones get 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Largest request body accepted; larger ones get 413. Unset: no limit.
    #[serde(default)]
    pub max_body_bytes: Option<ByteSize>,
    /// Open connections one client IP may hold on this listener; beyond,
    /// a new connection is answered 429 and closed. 0: no per-IP limit.
    #[serde(default)]
    pub max_connections_per_ip: usize,
    /// HTTP/2 from clients and its limits (`config::http2`).
    #[serde(default)]
    pub http2: super::http2::Http2Config,
    /// `protocol = "tcp"`: the cluster every connection is relayed to.
    #[serde(default)]
    pub cluster: Option<Spanned<String>>,
    /// `protocol = "tcp"`: connects tried per client connection; a failed
    /// connect is tried again on another endpoint while any is left.
    #[serde(default = "default_connect_attempts")]
    pub connect_attempts: Spanned<u32>,
    /// TLS termination (`[listeners.tls]`); unset: plain HTTP (or, on a
    /// tcp listener, bytes relayed as they come).
    #[serde(default)]
    pub tls: Option<super::tls::ListenerTlsConfig>,
    /// A PROXY protocol header required from a load balancer in front
    /// (`config::front`); unset: none is read.
    #[serde(default)]
    pub proxy_protocol: Option<super::front::ProxyProtocolAccept>,
    /// `protocol = "tcp"`: TLS passthrough, the cluster chosen by the SNI
    /// of the ClientHello (`config::front`); `cluster` is then the default.
    #[serde(default)]
    pub sni: Vec<super::front::SniRoute>,
    /// Answer every request with a 308 to the same URL over https (a plain
    /// listener only).
    #[serde(default)]
    pub redirect_https: bool,
    /// The port `redirect_https` sends clients to; unset: 443.
    #[serde(default)]
    pub https_port: Option<Spanned<u16>>,
    /// WebSocket tunnels (`[listeners.websocket]`, `config::websocket`).
    #[serde(default)]
    pub websocket: super::websocket::WebSocketConfig,
    /// `protocol = "tcp"`: how a connection's bytes are copied; unset:
    /// `TcpCopy::default()`.
    #[serde(default)]
    pub copy: Option<Spanned<TcpCopy>>,
    /// `protocol = "tcp"`: `true` (unset) passes one side's end of file on
    /// as a half-close and relays the other way until that side ends too
    /// (HAProxy's way); `false` ends the connection at the first end of
    /// file, once what that side sent has been written (nginx's
    /// `proxy_half_close off`).
    #[serde(default)]
    pub half_close: Option<Spanned<bool>>,
}

fn default_connect_attempts() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}

fn default_protocol() -> Protocol {
    Protocol::Http
}
fn default_max_connections() -> Spanned<usize> {
    Spanned::new(0..0, 10_000)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_header_bytes() -> ByteSize {
    ByteSize(32 * 1024)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Spanned<String>,
    /// Listeners this route serves; unset means every listener.
    #[serde(default)]
    pub listeners: Option<Vec<Spanned<String>>>,
    /// Host to match, without port; `*.example.com` matches any subdomain.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    #[serde(default)]
    pub path_prefix: Option<Spanned<String>>,
    /// Exact path (query string excluded).
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// Methods to match; empty matches any.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Header name → exact value; all must match.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// "http" or "https": the scheme the request came with (whether its
    /// listener terminates TLS). Unset: either.
    #[serde(default)]
    pub scheme: Option<Scheme>,
    /// The cluster that serves the route; or `split`, `redirect` or
    /// `respond`.
    #[serde(default)]
    pub cluster: Option<Spanned<String>>,
    /// Weighted split between clusters (e.g. 90/10 for a canary).
    #[serde(default)]
    pub split: Vec<SplitTarget>,
    /// Keeps a client on one side of the split: hash of this key
    /// (`client_ip`, `path`, `header:NAME`, `cookie:NAME`). Unset: each
    /// request is split independently.
    #[serde(default)]
    pub split_key: Option<HashKey>,
    /// Replaces the cluster's retry policy for this route.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// What the route answers when it will not forward (open breaker,
    /// service level below `min_level`). Unset: a JSON 503 with
    /// `Retry-After`.
    #[serde(default)]
    pub fallback: Option<FallbackConfig>,
    /// The most severe service level at which the route still serves
    /// (`full`, `degraded`, `minimal`, `maintenance`); beyond it, it answers
    /// its fallback.
    #[serde(default)]
    pub min_level: MinLevel,
    /// Names of `[[rate_limit.rules]]` checked for every request of the
    /// route, in this order.
    #[serde(default)]
    pub rate_limits: Vec<Spanned<String>>,
    /// Header rules for the request as it goes upstream.
    #[serde(default)]
    pub request_headers: Option<super::rewrite::HeaderRulesConfig>,
    /// Header rules for the response the client gets.
    #[serde(default)]
    pub response_headers: Option<super::rewrite::HeaderRulesConfig>,
    /// Path and host rewrite of the request as it goes upstream.
    #[serde(default)]
    pub rewrite: Option<super::rewrite::RewriteConfig>,
    /// Answer with a redirect instead of forwarding (no `cluster`).
    #[serde(default)]
    pub redirect: Option<super::rewrite::RedirectConfig>,
    /// Answer with a fixed response instead of forwarding (no `cluster`).
    #[serde(default)]
    pub respond: Option<super::rewrite::RespondConfig>,
    /// The route's service level objective (`docs/slo.md`).
    #[serde(default)]
    pub slo: Option<super::slo::SloConfig>,
    /// What Levee does while a fast-burn alert of the route's SLO fires
    /// (`docs/slo.md`, "Acting on the budget").
    #[serde(default)]
    pub on_fast_burn: Option<super::burn_actions::OnFastBurn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    pub cluster: Spanned<String>,
    pub weight: Spanned<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    WeightedRoundRobin,
    LeastConn,
    WeightedLeastConn,
    IpHash,
    ConsistentHash,
    Maglev,
    Random,
    P2c,
    LeastResponseTime,
    PeakEwma,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::WeightedRoundRobin => "weighted_round_robin",
            Balance::LeastConn => "least_conn",
            Balance::WeightedLeastConn => "weighted_least_conn",
            Balance::IpHash => "ip_hash",
            Balance::ConsistentHash => "consistent_hash",
            Balance::Maglev => "maglev",
            Balance::Random => "random",
            Balance::P2c => "p2c",
            Balance::LeastResponseTime => "least_response_time",
            Balance::PeakEwma => "peak_ewma",
        }
    }

    /// Whether the algorithm reads the endpoints' latency estimates.
    pub fn uses_latency(self) -> bool {
        matches!(self, Balance::LeastResponseTime | Balance::PeakEwma)
    }

    /// Whether the algorithm places requests by a hash of `hash_key`.
    pub fn uses_key(self) -> bool {
        matches!(
            self,
            Balance::IpHash | Balance::ConsistentHash | Balance::Maglev
        )
    }
}

/// What a hash-based balancer hashes: `client_ip`, `path`,
/// `header:NAME` or `cookie:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(http::HeaderName),
    Cookie(String),
}

impl std::str::FromStr for HashKey {
    type Err = String;
    fn from_str(s: &str) -> Result<HashKey, String> {
        let bad = || {
            format!(
                "{s:?} is not a hash key; valid keys are \"client_ip\", \"path\", \"header:NAME\" and \"cookie:NAME\""
            )
        };
        match s.split_once(':') {
            None if s == "client_ip" => Ok(HashKey::ClientIp),
            None if s == "path" => Ok(HashKey::Path),
            Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(HashKey::Header)
                .map_err(|_| bad()),
            Some(("cookie", name)) if !name.trim().is_empty() => {
                Ok(HashKey::Cookie(name.trim().to_owned()))
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Path => f.write_str("path"),
            HashKey::Header(h) => write!(f, "header:{h}"),
            HashKey::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HashKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: Spanned<String>,
    /// What Levee speaks to the endpoints (`config::http2`).
    #[serde(default)]
    pub protocol: super::http2::UpstreamProtocol,
    #[serde(default = "default_balance")]
    pub balance: Balance,
    /// What `ip_hash`, `consistent_hash` and `maglev` hash (spanned: set on
    /// another algorithm, it is refused, not ignored).
    #[serde(default = "default_hash_key")]
    pub hash_key: Spanned<HashKey>,
    /// Points per endpoint (times its weight) on the `consistent_hash` ring.
    #[serde(default = "default_virtual_nodes")]
    pub virtual_nodes: Spanned<usize>,
    /// `consistent_hash` with bounded loads: no endpoint takes more than this
    /// factor times the mean in-flight load (e.g. 1.25). Unset: plain.
    #[serde(default)]
    pub hash_balance_factor: Option<Spanned<f64>>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Local addresses the connections to the endpoints leave from, in
    /// turn (`upstream::source`); each is another range of ephemeral ports
    /// towards each endpoint. Empty: the kernel's choice.
    #[serde(default)]
    pub source_addresses: Vec<Spanned<std::net::IpAddr>>,
    /// Time from sending the request to receiving the response head.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: Duration,
    /// Idle upstream connections kept per endpoint and per worker.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// An idle upstream connection older than this is closed, not reused.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: Duration,
    /// Active health checks; unset: none (endpoints are judged by passive
    /// outlier detection only).
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub outlier_detection: OutlierDetectionConfig,
    /// After an endpoint starts taking traffic again (from WARMING or
    /// UNHEALTHY), its share ramps from 10 % to 100 % over this long.
    /// "0s": no ramp.
    #[serde(default = "default_slow_start")]
    pub slow_start: Duration,
    /// Session affinity: the name of a cookie Levee sets to pin a client to
    /// an endpoint (an opaque token, not the address). Unset: none.
    #[serde(default)]
    pub affinity_cookie: Option<Spanned<String>>,
    /// When fewer than this percent of the primaries are usable, requests
    /// are spread over all of them (healthy or not) rather than overload the
    /// few. 0: only when none is usable.
    #[serde(default)]
    pub panic_threshold: u32,
    #[serde(default)]
    pub retry: RetryConfig,
    /// A breaker for the whole cluster: while open, its routes answer their
    /// fallback at once. Unset: none.
    #[serde(default)]
    pub circuit_breaker: Option<BreakerConfig>,
    /// A breaker per endpoint: while open, the endpoint is not picked.
    /// Unset: none (outlier detection still ejects failing endpoints).
    #[serde(default)]
    pub endpoint_circuit_breaker: Option<BreakerConfig>,
    /// At most so many requests in flight to the cluster, with a bounded
    /// queue. Unset: no limit.
    #[serde(default)]
    pub bulkhead: Option<BulkheadConfig>,
    /// A latency-driven limit on the requests in flight. Unset: none.
    #[serde(default)]
    pub adaptive_concurrency: Option<AdaptiveConcurrencyConfig>,
    /// A request header that tells the endpoint how many milliseconds are
    /// left before Levee gives up (e.g. "x-request-timeout-ms"); a client's
    /// smaller value shortens the deadline. Unset: not sent.
    #[serde(default)]
    pub deadline_header: Option<Spanned<String>>,
    /// TLS to the endpoints (`[clusters.tls]`). Unset: plain TCP.
    #[serde(default)]
    pub tls: Option<Spanned<super::upstream_tls::UpstreamTlsConfig>>,
    /// The HTTP/2 pool's limits and PING keep-alive (`config::upstream_http2`);
    /// unset: the defaults. Only for `protocol = "h2c"` or `"h2"`.
    #[serde(default)]
    pub http2: Option<Spanned<super::upstream_http2::UpstreamHttp2Config>>,
    /// TCP listeners: what happens to the open connections of an
    /// endpoint that leaves service.
    #[serde(default)]
    pub on_endpoint_down: OnEndpointDown,
    /// TCP listeners: a PROXY protocol header (`"v1"` text, `"v2"`
    /// binary) sent to the endpoint before the client's bytes, carrying
    /// the client's address. Unset: none.
    #[serde(default)]
    pub send_proxy_protocol: Option<ProxyVersion>,
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Http,
    Tcp,
    /// PostgreSQL: connects and asks `SELECT pg_is_in_recovery()`.
    Postgres,
    /// Redis: asks `ROLE`.
    Redis,
    /// gRPC: calls `grpc.health.v1.Health/Check` (over HTTP/2, h2c or the
    /// cluster's TLS); `NOT_SERVING` is unhealthy.
    Grpc,
}

/// The role a `postgres` or `redis` check requires of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Takes writes (PostgreSQL not in recovery, Redis `master`).
    Primary,
    /// A read-only copy (PostgreSQL in recovery, Redis `slave`).
    Replica,
    /// Either: the check only proves the server answers.
    Any,
}

/// How a tcp listener copies bytes (`tcp::splice` says why the default
/// is what it is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpCopy {
    /// Userspace until a direction carried `tcp::splice::AUTO_AFTER`
    /// bytes, then splice(2) (plain TCP; TLS clients: userspace).
    #[default]
    Auto,
    /// Through a buffer in Levee's memory.
    Userspace,
    /// splice(2) through a pipe, inside the kernel (plain TCP only).
    Splice,
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    V1,
    V2,
}

/// What happens to a TCP listener's open connections to an endpoint that
/// leaves service (marked unhealthy, ejected, drained or removed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnEndpointDown {
    /// They stay open until either side closes them.
    #[default]
    Keep,
    /// They are closed (HAProxy's `on-marked-down shutdown-sessions`), so
    /// that clients reconnect to an endpoint in service.
    ShutdownSessions,
}

/// `[clusters.health_check]`: probe every endpoint on an interval.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// `http` (a request, judged by status and a deep JSON body) or `tcp`
    /// (a connect).
    #[serde(rename = "type")]
    pub kind: CheckKind,
    pub path: String,
    pub method: Spanned<String>,
    /// Host header of the check; unset: the address checked.
    pub host: Option<String>,
    /// The port checks connect to, at each endpoint's IP address (HAProxy's
    /// `port`): a service whose health is told elsewhere, e.g. PostgreSQL
    /// on 5432 checked by Patroni's REST API on 8008. Unset: the
    /// endpoint's own port.
    pub port: Option<Spanned<u16>>,
    /// `tcp`: bytes written once connected (HAProxy's `tcp-check send`).
    pub send: Option<Spanned<String>>,
    /// `tcp`: the check passes when the endpoint sends these bytes (after
    /// `send`, or unprompted: a server-first protocol's greeting) within
    /// its first 4 KiB (HAProxy's `tcp-check expect string`).
    pub expect: Option<Spanned<String>>,
    /// Statuses that pass; empty: any 2xx. 503 never passes.
    pub expect_status: Vec<u16>,
    pub interval: Duration,
    /// Interval while an endpoint is unhealthy (to notice recovery sooner);
    /// unset: `interval`.
    pub unhealthy_interval: Option<Duration>,
    pub timeout: Duration,
    /// Up to this much is added at random to each interval, so checks of
    /// many endpoints (and many Levees) do not arrive in step.
    pub jitter: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// `postgres` and `redis`: the role that passes.
    pub role: Role,
    /// `grpc`: the service whose health is asked; unset: the server's.
    pub service: Option<String>,
    /// `postgres`: the user, password and database the check logs in
    /// with; `redis`: the password (and ACL user) of `AUTH`.
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
    /// `postgres` with `role = "replica"`: a replica whose last replayed
    /// transaction is older than this fails. Unset: any lag passes.
    pub max_replication_lag: Option<Duration>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: CheckKind::Http,
            path: "/health".into(),
            method: Spanned::new(0..0, "GET".into()),
            host: None,
            port: None,
            send: None,
            expect: None,
            expect_status: Vec::new(),
            interval: Duration::from_secs(5),
            unhealthy_interval: None,
            timeout: Duration::from_secs(1),
            jitter: Duration::from_millis(500),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            role: Role::Any,
            service: None,
            user: None,
            password: None,
            database: None,
            max_replication_lag: None,
        }
    }
}

/// `[clusters.outlier_detection]`: eject endpoints that fail real traffic.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetectionConfig {
    pub enabled: bool,
    /// Consecutive failures (5xx, connect failures, timeouts) that eject.
    pub consecutive_failures: u32,
    /// Failure ratio over `window` that ejects, once `min_requests` were seen.
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    /// First ejection; each further one lasts one more `base_ejection`.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// At most this share of a cluster's endpoints ejected at once (never
    /// the last one).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetectionConfig {
    fn default() -> Self {
        OutlierDetectionConfig {
            enabled: true,
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

fn default_balance() -> Balance {
    Balance::RoundRobin
}
fn default_slow_start() -> Duration {
    Duration::from_secs(0)
}
/// Virtual nodes per unit of weight when the configuration says nothing:
/// ketama's and Envoy's order of magnitude, good to about ±10 % balance.
pub const DEFAULT_VNODES: usize = 150;

fn default_hash_key() -> Spanned<HashKey> {
    Spanned::new(0..0, HashKey::ClientIp)
}
fn default_virtual_nodes() -> Spanned<usize> {
    Spanned::new(0..0, DEFAULT_VNODES)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_max_idle() -> usize {
    128
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `IP:PORT`, `HOST:PORT` or `srv:NAME` (see `dns.rs`).
    pub address: Spanned<super::dns::EndpointAddress>,
    #[serde(default = "default_weight")]
    pub weight: Spanned<u32>,
    /// Used only when no primary endpoint is available.
    #[serde(default)]
    pub backup: bool,
}

fn default_weight() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}
