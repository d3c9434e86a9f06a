//! The resilience tables of the configuration: retries (`[clusters.retry]`,
//! overridable per route), circuit breakers for a cluster and for each of
//! its endpoints, bulkheads, and route fallbacks. Defaults are the values
//! `docs/configuration.md` documents; retries with a budget are on by
//! default, breakers and bulkheads only when their table is present.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::value::{ByteSize, Duration};

/// What makes a try worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The connection could not be made (refused, timed out): nothing was
    /// sent, so even a non-idempotent request may go elsewhere.
    ConnectFailure,
    /// The connection broke before a complete response head came back.
    Reset,
    /// No response head within `per_try_timeout`.
    Timeout,
    /// 502, 503 or 504 from the endpoint.
    GatewayError,
    /// A gRPC call answered with this `grpc-status` (trailers-only, or
    /// trailers with no message before them): the gRPC retry policy's
    /// codes (gRFC A6), retried whatever the method when the request's
    /// message was kept whole.
    #[serde(rename = "grpc:cancelled")]
    GrpcCancelled,
    #[serde(rename = "grpc:deadline_exceeded")]
    GrpcDeadlineExceeded,
    #[serde(rename = "grpc:internal")]
    GrpcInternal,
    #[serde(rename = "grpc:resource_exhausted")]
    GrpcResourceExhausted,
    #[serde(rename = "grpc:unavailable")]
    GrpcUnavailable,
}

impl RetryOn {
    /// The gRPC status code this retries, if it is a gRPC one.
    pub fn grpc_code(self) -> Option<u8> {
        match self {
            RetryOn::GrpcCancelled => Some(1),
            RetryOn::GrpcDeadlineExceeded => Some(4),
            RetryOn::GrpcResourceExhausted => Some(8),
            RetryOn::GrpcInternal => Some(13),
            RetryOn::GrpcUnavailable => Some(14),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JitterConfig {
    #[default]
    Full,
    Equal,
    None,
}

/// `[clusters.retry]` and `[routes.retry]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries in all, the first included; 1 disables retries.
    pub max_attempts: Spanned<u32>,
    pub retry_on: Vec<RetryOn>,
    /// More statuses that are retried: 5xx, or 429 (whose `Retry-After` is
    /// honoured up to `retry_after_max`). Other 4xx never are.
    pub retry_statuses: Vec<Spanned<u16>>,
    /// Time each try has to produce a response head; unset: only the
    /// cluster's `response_timeout` (the deadline over all tries) applies.
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub jitter: JitterConfig,
    /// A 429/503 asking to wait longer than this is not retried.
    pub retry_after_max: Duration,
    /// Request bodies up to this size are kept so the request can be sent
    /// again; a larger body is streamed and its request is not retried
    /// once sent.
    pub buffer_body_max: ByteSize,
    /// Response header carrying the number of tries; "" disables it.
    pub attempts_header: String,
    pub budget: BudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: Spanned::new(0..0, 2),
            // As nginx's `proxy_next_upstream error` does: a request of an
            // idempotent method whose connection broke before its answer
            // (a backend killed mid-request, a keep-alive race) is sent to
            // another endpoint rather than answered 502.
            retry_on: vec![
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                // UNAVAILABLE says the call was not acted on (the gRPC
                // retry policy's own default).
                RetryOn::GrpcUnavailable,
            ],
            retry_statuses: Vec::new(),
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
            jitter: JitterConfig::Full,
            retry_after_max: Duration::from_secs(2),
            buffer_body_max: ByteSize(64 * 1024),
            attempts_header: "x-levee-attempts".into(),
            budget: BudgetConfig::default(),
        }
    }
}

/// `[clusters.retry.budget]`: retries may add at most `ratio` of the
/// requests, plus `min_per_sec`, over `window`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    pub enabled: bool,
    pub ratio: Spanned<f64>,
    pub min_per_sec: Spanned<f64>,
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            enabled: true,
            ratio: Spanned::new(0..0, 0.2),
            min_per_sec: Spanned::new(0..0, 10.0),
            window: Duration::from_secs(10),
        }
    }
}

/// What a breaker counts as a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureOn {
    ConnectFailure,
    Reset,
    Timeout,
    /// Any 5xx status, and the gRPC statuses that mean the server failed:
    /// UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    #[serde(rename = "5xx")]
    ServerError,
    /// gRPC RESOURCE_EXHAUSTED (quota or overload), not counted by default.
    #[serde(rename = "grpc:resource_exhausted")]
    GrpcResourceExhausted,
}

/// The largest `window_calls` a breaker honours: a typo in the
/// configuration should not cost a gigabyte per endpoint.
pub const MAX_WINDOW_CALLS: u32 = 10_000;

/// `[clusters.circuit_breaker]` (the whole cluster) and
/// `[clusters.endpoint_circuit_breaker]` (each endpoint on its own).
// PartialEq compares values (`Spanned` ignores its span): guards are kept
// across reloads while their settings compare equal.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failures in a row that open it; 0 disables this trigger.
    pub consecutive_failures: u32,
    /// Failure ratio over the window that opens it, once the window holds
    /// `min_calls` calls; 0 disables this trigger.
    pub failure_rate: Spanned<f64>,
    pub min_calls: u32,
    /// The window: the last `window_calls` calls, or, when `window` is set,
    /// the calls of the last `window`.
    pub window_calls: Spanned<u32>,
    pub window: Option<Duration>,
    /// Calls slower than this count as slow; a slow ratio of at least
    /// `slow_call_rate` opens the breaker. Unset: no slow-call trigger.
    pub slow_call_threshold: Option<Duration>,
    pub slow_call_rate: Spanned<f64>,
    pub open_duration: Duration,
    pub half_open_max_calls: u32,
    pub success_threshold: u32,
    pub failure_on: Vec<FailureOn>,
    /// More statuses that count as failures (5xx or 429; other 4xx never do).
    pub failure_statuses: Vec<Spanned<u16>>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: Spanned::new(0..0, 0.5),
            min_calls: 10,
            window_calls: Spanned::new(0..0, 10),
            window: None,
            slow_call_threshold: None,
            slow_call_rate: Spanned::new(0..0, 1.0),
            open_duration: Duration::from_secs(30),
            half_open_max_calls: 3,
            success_threshold: 3,
            failure_on: vec![
                FailureOn::ConnectFailure,
                FailureOn::Reset,
                FailureOn::Timeout,
                FailureOn::ServerError,
            ],
            failure_statuses: Vec::new(),
        }
    }
}

/// `[clusters.bulkhead]`: the cluster's share of Levee, so that one slow
/// backend cannot hold every connection.
// PartialEq by value: see `BreakerConfig`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkheadConfig {
    pub max_concurrent: Spanned<u32>,
    /// Requests waiting for a slot beyond `max_concurrent`; more are
    /// answered 503 at once.
    pub max_queue: u32,
    /// Longest wait for a slot, then 503.
    pub queue_timeout: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        BulkheadConfig {
            max_concurrent: Spanned::new(0..0, 100),
            max_queue: 0,
            queue_timeout: Duration::from_millis(500),
        }
    }
}

/// `[routes.fallback]`: what a route answers when it will not forward (its
/// cluster's breaker is open, or the service level is below the route's).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    pub status: Spanned<u16>,
    pub headers: BTreeMap<String, Spanned<String>>,
    pub body: String,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            status: Spanned::new(0..0, 503),
            headers: BTreeMap::new(),
            body: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaptiveAlgorithm {
    #[default]
    Gradient,
    Aimd,
}

/// `[clusters.adaptive_concurrency]`: a limit on the requests in flight to
/// the cluster, learned from its latency; the excess is answered 503 at
/// once. Off unless the table is present.
// PartialEq by value: see `BreakerConfig`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConcurrencyConfig {
    pub algorithm: AdaptiveAlgorithm,
    /// The floor: admission never goes below it.
    pub min_limit: Spanned<u32>,
    pub max_limit: Spanned<u32>,
    pub initial_limit: u32,
    /// How many times the no-load latency a window's latency may reach
    /// before the limit shrinks.
    pub tolerance: Spanned<f64>,
    /// Latency above `tolerance` × the no-load latency that still does not
    /// shrink the limit: Levee's own queueing when it is busy is not the
    /// backend's overload.
    pub slack: Duration,
    /// The shortest measurement window.
    pub window: Duration,
    /// How often the no-load latency is re-measured (from windows whose
    /// requests started with at most `probe_limit` in flight; the limit is
    /// never lowered to measure).
    pub probe_interval: Duration,
    pub probe_limit: u32,
}

impl Default for AdaptiveConcurrencyConfig {
    fn default() -> Self {
        AdaptiveConcurrencyConfig {
            algorithm: AdaptiveAlgorithm::Gradient,
            min_limit: Spanned::new(0..0, 4),
            max_limit: Spanned::new(0..0, 1000),
            initial_limit: 20,
            tolerance: Spanned::new(0..0, 1.25),
            slack: Duration::from_millis(2),
            window: Duration::from_millis(100),
            probe_interval: Duration::from_secs(30),
            probe_limit: 8,
        }
    }
}

/// `[degradation]`: when the service level moves by itself. The level can
/// always be set by hand (`PUT /degradation`); with `auto = false` (the
/// default) only by hand.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DegradationTable {
    pub auto: bool,
    /// How often the triggers are evaluated.
    pub interval: Duration,
    /// DEGRADED when the worst cluster has fewer than this share of its
    /// endpoints usable; MINIMAL below `minimal_below`.
    pub healthy_below: Spanned<f64>,
    pub minimal_below: Spanned<f64>,
    /// DEGRADED when more than this share of the requests of an interval
    /// were shed (bulkhead, adaptive limit); MINIMAL above
    /// `shed_minimal_above`.
    pub shed_above: Spanned<f64>,
    pub shed_minimal_above: Spanned<f64>,
    /// An interval with fewer requests says nothing about overload.
    pub min_requests: u64,
    /// A trigger must hold this long before its level is entered...
    pub enter_after: Duration,
    /// ...and be clear this long before it is left, one level at a time.
    pub exit_after: Duration,
}

impl Default for DegradationTable {
    fn default() -> Self {
        DegradationTable {
            auto: false,
            interval: Duration::from_secs(1),
            healthy_below: Spanned::new(0..0, 0.5),
            minimal_below: Spanned::new(0..0, 0.25),
            shed_above: Spanned::new(0..0, 0.1),
            shed_minimal_above: Spanned::new(0..0, 0.5),
            min_requests: 20,
            enter_after: Duration::from_secs(5),
            exit_after: Duration::from_secs(30),
        }
    }
}

/// A route's `min_level`: the most severe service level at which it still
/// serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MinLevel {
    Full,
    Degraded,
    #[default]
    Minimal,
    Maintenance,
}
