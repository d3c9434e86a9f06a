//! Label sets known in advance, created at 0.
//!
//! A Prometheus counter that appears only at its first event breaks the
//! usual alert `increase(x[5m]) > 0` (nothing to compare the first event
//! with) and "absent means 0" dashboards. So every label set that can be
//! named before it happens exists from the start: the error kinds and
//! reload results when the process starts, and, whenever a snapshot is
//! built, each cluster's retry reasons and each endpoint's health and
//! breaker transitions. Counters are only created here, never reset: a
//! reload keeps their counts.

use super::metrics::{
    CauseLabels, ClusterKindLabels, ClusterLabels, EndpointLabels, KindLabels, Metrics,
    ResultLabels, TransitionLabels,
};
use crate::config::Config;

/// Every `kind` of `levee_errors_total`: the proxy's own answers
/// (`proxy::error::ProxyError::code`, checked by a test there) and the
/// connection-level ones (`server::conn`).
pub const ERROR_KINDS: &[&str] = &[
    "no_route",
    "no_endpoint",
    "upstream_connect",
    "upstream_connect_timeout",
    "upstream_timeout",
    "upstream_failed",
    "body_too_large",
    "headers_too_large",
    "bad_framing",
    "client_body",
    "breaker_open",
    "bulkhead_full",
    "queue_timeout",
    "shed",
    "degraded",
    "rate_limited",
    "bad_request",
    "header_timeout",
    "bad_host",
    "connect_refused",
    "upgrade_unsupported",
    "rewrite_failed",
    // HTTP/2 connections closed for an error (`server::h2`).
    "http2_protocol_error",
    "http2_flow_control_error",
    "http2_settings_timeout",
    "http2_frame_size_error",
    "http2_compression_error",
    "http2_enhance_your_calm",
    "http2_other_error",
    "http2_keepalive_timeout",
    "fault_injected",
    "fault_reset",
    "local_shortage",
];

/// Every `kind` of `levee_upstream_retries_total`
/// (`resilience::policy::reason`).
pub const RETRY_KINDS: &[&str] = &[
    "connect_failure",
    "unprocessed",
    "grpc",
    "reset",
    "timeout",
    "gateway_error",
    "rate_limited",
    "status",
];

/// The moves a circuit breaker makes.
const BREAKER_MOVES: &[(&str, &str)] = &[
    ("closed", "open"),
    ("open", "half-open"),
    ("half-open", "closed"),
    ("half-open", "open"),
];

/// The health moves of an endpoint with active checks: checks move it
/// between warming, healthy, degraded and unhealthy (warming only forward);
/// the admin API drains any of them and undrains to warming.
const CHECKED_MOVES: &[(&str, &str)] = &[
    ("warming", "healthy"),
    ("warming", "degraded"),
    ("healthy", "degraded"),
    ("healthy", "unhealthy"),
    ("degraded", "healthy"),
    ("degraded", "unhealthy"),
    ("unhealthy", "healthy"),
    ("unhealthy", "degraded"),
    ("warming", "draining"),
    ("healthy", "draining"),
    ("degraded", "draining"),
    ("unhealthy", "draining"),
    ("draining", "warming"),
];

/// Without active checks an endpoint is healthy, unless drained.
const UNCHECKED_MOVES: &[(&str, &str)] = &[("healthy", "draining"), ("draining", "healthy")];

/// At process start: the label sets that do not depend on the config.
pub fn process(metrics: &Metrics) {
    for &kind in ERROR_KINDS {
        let _ = metrics.errors.get_or_create_owned(&KindLabels { kind });
    }
    for result in ["applied", "refused"] {
        let _ = metrics
            .reloads
            .get_or_create_owned(&ResultLabels { result });
    }
    for cause in crate::shortage::Shortage::ALL {
        for at in crate::shortage::PLACES {
            let _ = metrics.local_shortage.get_or_create_owned(&CauseLabels {
                cause: cause.as_str(),
                at,
            });
        }
    }
}

/// With every snapshot: the label sets its clusters and endpoints can use.
pub fn config(metrics: &Metrics, config: &Config) {
    for c in &config.clusters {
        let cluster = c.name.get_ref();
        for &kind in RETRY_KINDS {
            let _ = metrics.retries.get_or_create_owned(&ClusterKindLabels {
                cluster: cluster.clone(),
                kind,
            });
        }
        let _ = metrics
            .retry_budget_exhausted
            .get_or_create_owned(&ClusterLabels {
                cluster: cluster.clone(),
            });
        let breaker = |endpoint: &str| {
            for &(from, to) in BREAKER_MOVES {
                let _ = metrics
                    .breaker_transitions
                    .get_or_create_owned(&TransitionLabels {
                        cluster: cluster.clone(),
                        endpoint: endpoint.to_owned(),
                        from,
                        to,
                    });
            }
        };
        if c.circuit_breaker.is_some() {
            breaker("");
        }
        let moves = match c.health_check {
            Some(_) => CHECKED_MOVES,
            None => UNCHECKED_MOVES,
        };
        for e in &c.endpoints {
            let endpoint = e.address.get_ref().to_string();
            if c.endpoint_circuit_breaker.is_some() {
                breaker(&endpoint);
            }
            for &(from, to) in moves {
                let _ = metrics.transitions.get_or_create_owned(&TransitionLabels {
                    cluster: cluster.clone(),
                    endpoint: endpoint.clone(),
                    from,
                    to,
                });
            }
            let _ = metrics.ejections.get_or_create_owned(&EndpointLabels {
                cluster: cluster.clone(),
                endpoint,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::error::ProxyError as E;
    use crate::resilience::policy::{TryResult, reason};

    #[test]
    fn every_proxy_error_and_retry_reason_is_known() {
        // No wildcard: a new variant does not compile here until it is
        // listed, and then this test asks for its kind in ERROR_KINDS.
        let listed = |e: E| match e {
            E::NoRoute
            | E::NoEndpoint
            | E::UpstreamConnect
            | E::UpstreamConnectTimeout
            | E::UpstreamTimeout
            | E::UpstreamFailed
            | E::BodyTooLarge
            | E::HeadersTooLarge
            | E::BadFraming
            | E::ClientBody
            | E::BreakerOpen
            | E::BulkheadFull
            | E::QueueTimeout
            | E::Shed
            | E::Degraded
            | E::RateLimited
            | E::BadHost
            | E::ConnectRefused
            | E::UpgradeUnsupported
            | E::RewriteFailed
            | E::FaultAbort(_)
            | E::FaultGrpcAbort(_)
            | E::FaultReset
            | E::LocalShortage => e.code(),
        };
        for e in [
            E::NoRoute,
            E::NoEndpoint,
            E::UpstreamConnect,
            E::UpstreamConnectTimeout,
            E::UpstreamTimeout,
            E::UpstreamFailed,
            E::BodyTooLarge,
            E::HeadersTooLarge,
            E::BadFraming,
            E::ClientBody,
            E::BreakerOpen,
            E::BulkheadFull,
            E::QueueTimeout,
            E::Shed,
            E::Degraded,
            E::RateLimited,
            E::BadHost,
            E::RewriteFailed,
            E::ConnectRefused,
            E::UpgradeUnsupported,
            E::FaultAbort(503),
            E::FaultGrpcAbort(14),
            E::FaultReset,
            E::LocalShortage,
        ] {
            assert!(ERROR_KINDS.contains(&listed(e)), "{e:?}");
        }
        for r in [
            TryResult::ConnectFailure,
            TryResult::Reset,
            TryResult::Timeout,
            TryResult::Status(429),
            TryResult::Status(503),
            TryResult::Status(500),
            TryResult::Grpc(14),
            TryResult::Unprocessed,
        ] {
            assert!(RETRY_KINDS.contains(&reason(r)), "{r:?}");
        }
    }

    #[test]
    fn known_series_exist_at_zero() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(
            text.contains("levee_errors_total{kind=\"no_endpoint\"} 0"),
            "{text}"
        );
        assert!(text.contains("levee_config_reloads_total{result=\"refused\"} 0"));
    }
}
