//! The errors Levee answers itself, each with its status, a stable code (used
//! as the metric label and in the JSON body) and whether the client
//! connection must be closed afterwards.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::{ResponseBody, TooLarge};
use crate::upstream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    NoRoute,
    NoEndpoint,
    UpstreamConnect,
    UpstreamConnectTimeout,
    UpstreamTimeout,
    UpstreamFailed,
    BodyTooLarge,
    HeadersTooLarge,
    BadFraming,
    ClientBody,
    /// The cluster's circuit breaker is open.
    BreakerOpen,
    /// The cluster's bulkhead is full and its queue too.
    BulkheadFull,
    /// Waited `queue_timeout` for a bulkhead slot.
    QueueTimeout,
    /// Over the cluster's adaptive concurrency limit.
    Shed,
    /// The service level is below the route's `min_level`.
    Degraded,
    /// A rate-limit rule of the route refused the request.
    RateLimited,
    /// Two `Host` lines, or none on an HTTP/1.1 request.
    BadHost,
    /// `CONNECT`: Levee is not a forward proxy.
    ConnectRefused,
    /// A WebSocket upgrade Levee cannot tunnel: the hyper HTTP/1 engine,
    /// a cluster spoken to over h2c, or a request with a body.
    UpgradeUnsupported,
    /// The route's rewriting made no valid request (a path or header value
    /// built from what the client sent).
    RewriteFailed,
    /// An injected fault (`chaos`) aborted the request with this status.
    FaultAbort(u16),
    /// An injected fault (`chaos`) answered this gRPC status: a gRPC call
    /// gets it trailers-only; anything else the HTTP status it maps to.
    FaultGrpcAbort(u8),
    /// An injected fault (`chaos`) on the route: the client's connection
    /// is closed without an answer (the status is only logged).
    FaultReset,
    /// Levee was out of file descriptors, local ports or memory to
    /// connect (`crate::shortage`); no endpoint is to blame.
    LocalShortage,
}

impl ProxyError {
    /// Whether the request never reached an endpoint: safe to send elsewhere.
    pub fn is_connect_failure(self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect | ProxyError::UpstreamConnectTimeout
        )
    }

    /// Whether the endpoint failed (as opposed to the client or routing).
    pub fn is_upstream_failure(self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect
                | ProxyError::UpstreamConnectTimeout
                | ProxyError::UpstreamTimeout
                | ProxyError::UpstreamFailed
        )
    }

    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect | ProxyError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnectTimeout | ProxyError::UpstreamTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadFraming | ProxyError::ClientBody | ProxyError::BadHost => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::ConnectRefused => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UpgradeUnsupported => StatusCode::NOT_IMPLEMENTED,
            ProxyError::RewriteFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::BreakerOpen
            | ProxyError::BulkheadFull
            | ProxyError::QueueTimeout
            | ProxyError::Shed
            | ProxyError::Degraded
            | ProxyError::LocalShortage => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::FaultAbort(s) => {
                StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ProxyError::FaultReset => StatusCode::BAD_GATEWAY,
            ProxyError::FaultGrpcAbort(code) => super::grpc::http_status(code),
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoEndpoint => "no_endpoint",
            ProxyError::UpstreamConnect => "upstream_connect",
            ProxyError::UpstreamConnectTimeout => "upstream_connect_timeout",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamFailed => "upstream_failed",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::HeadersTooLarge => "headers_too_large",
            ProxyError::BadFraming => "bad_framing",
            ProxyError::ClientBody => "client_body",
            ProxyError::BreakerOpen => "breaker_open",
            ProxyError::BulkheadFull => "bulkhead_full",
            ProxyError::QueueTimeout => "queue_timeout",
            ProxyError::Shed => "shed",
            ProxyError::Degraded => "degraded",
            ProxyError::RateLimited => "rate_limited",
            ProxyError::BadHost => "bad_host",
            ProxyError::ConnectRefused => "connect_refused",
            ProxyError::UpgradeUnsupported => "upgrade_unsupported",
            ProxyError::RewriteFailed => "rewrite_failed",
            ProxyError::FaultAbort(_) | ProxyError::FaultGrpcAbort(_) => "fault_injected",
            ProxyError::FaultReset => "fault_reset",
            ProxyError::LocalShortage => "local_shortage",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route matches this request",
            ProxyError::NoEndpoint => "no endpoint is available for this route",
            ProxyError::UpstreamConnect => "could not connect to the upstream endpoint",
            ProxyError::UpstreamConnectTimeout => "timed out connecting to the upstream endpoint",
            ProxyError::UpstreamTimeout => "the upstream endpoint did not answer in time",
            ProxyError::UpstreamFailed => "the upstream endpoint failed before answering",
            ProxyError::BodyTooLarge => "request body is larger than this listener accepts",
            ProxyError::HeadersTooLarge => "request headers are larger than this listener accepts",
            ProxyError::BadFraming => {
                "ambiguous request framing (Content-Length with Transfer-Encoding, or conflicting Content-Length)"
            }
            ProxyError::ClientBody => "the request body could not be read from the client",
            ProxyError::BreakerOpen => {
                "the upstream cluster is failing; its circuit breaker is open"
            }
            ProxyError::BulkheadFull => "the upstream cluster is at its concurrency limit",
            ProxyError::QueueTimeout => "timed out waiting for the upstream cluster",
            ProxyError::Shed => "the upstream cluster is overloaded; request shed",
            ProxyError::Degraded => "this route is switched off at the current service level",
            ProxyError::RateLimited => "too many requests; see Retry-After",
            ProxyError::BadHost => "an HTTP/1.1 request needs exactly one Host header",
            ProxyError::ConnectRefused => "CONNECT is not served here: this is a reverse proxy",
            ProxyError::UpgradeUnsupported => {
                "this WebSocket upgrade cannot be tunnelled here (server.http1 = \"hyper\", an h2c cluster, or a request body)"
            }
            ProxyError::RewriteFailed => {
                "the route's rewrite rules made no valid request from this one"
            }
            ProxyError::FaultAbort(_) | ProxyError::FaultGrpcAbort(_) => {
                "a fault injected by the operator (chaos) answered this"
            }
            ProxyError::FaultReset => {
                "a fault injected by the operator (chaos) closed the connection"
            }
            ProxyError::LocalShortage => {
                "the proxy is short of file descriptors, ports or memory to connect upstream"
            }
        }
    }

    /// Whether the client connection cannot safely carry another request: the
    /// message boundary is unknown, or an unread body is still on the wire.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ProxyError::BadFraming
                | ProxyError::BadHost
                | ProxyError::ConnectRefused
                | ProxyError::BodyTooLarge
                | ProxyError::HeadersTooLarge
                | ProxyError::ClientBody
        )
    }
}

impl From<&upstream::Error> for ProxyError {
    /// Levee's answer to a failed try: 502 when the endpoint could not be
    /// reached or broke the exchange, 504 when it was too slow, and the
    /// client's own fault (413, 400) when its body failed.
    fn from(e: &upstream::Error) -> ProxyError {
        match e {
            upstream::Error::ConnectTimeout(_) => ProxyError::UpstreamConnectTimeout,
            upstream::Error::Connect(_) => ProxyError::UpstreamConnect,
            upstream::Error::Shortage(..) => ProxyError::LocalShortage,
            upstream::Error::TimedOut(_) => ProxyError::UpstreamTimeout,
            upstream::Error::RequestBody(b) => client_body(b),
            upstream::Error::Injected(s) => ProxyError::FaultAbort(*s),
            upstream::Error::InjectedGrpc(c) => ProxyError::FaultGrpcAbort(*c),
            upstream::Error::Send(_)
            | upstream::Error::Receive(_)
            | upstream::Error::Closed
            | upstream::Error::Unprocessed(_)
            | upstream::Error::Response(_)
            | upstream::Error::UnexpectedUpgrade => ProxyError::UpstreamFailed,
        }
    }
}

/// A failure reading the client's body: too large (413) or broken (400).
pub fn client_body(e: &upstream::BoxError) -> ProxyError {
    if e.is::<TooLarge>() {
        ProxyError::BodyTooLarge
    } else {
        ProxyError::ClientBody
    }
}

/// The small JSON body every Levee-made error carries.
pub fn json_body(status: StatusCode, code: &str, message: &str, request_id: &str) -> Bytes {
    let v = serde_json::json!({
        "status": status.as_u16(),
        "error": code,
        "message": message,
        "request_id": request_id,
    });
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Levee's answer for `err`. `retry_after`: when the client may try again
/// (refusals that pass: open breaker, full bulkhead, shedding).
pub fn response(
    err: ProxyError,
    request_id: &HeaderValue,
    retry_after: Option<std::time::Duration>,
    body: impl FnOnce(Bytes) -> ResponseBody,
) -> Response<ResponseBody> {
    response_with_status(err, err.status(), request_id, retry_after, body)
}

/// `response` with another status than the error's own (a rate-limit
/// refusal answers `rate_limit.status`).
pub fn response_with_status(
    err: ProxyError,
    status: StatusCode,
    request_id: &HeaderValue,
    retry_after: Option<std::time::Duration>,
    body: impl FnOnce(Bytes) -> ResponseBody,
) -> Response<ResponseBody> {
    let id = request_id.to_str().unwrap_or("");
    let bytes = json_body(status, err.code(), err.message(), id);
    let mut resp = Response::new(body(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(super::headers::X_REQUEST_ID.clone(), request_id.clone());
    if err == ProxyError::ConnectRefused {
        // A 405 names the methods that are served (RFC 9110 §15.5.6).
        h.insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE"),
        );
    }
    if err.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(wait) = retry_after {
        h.insert(header::RETRY_AFTER, retry_after_value(wait));
    }
    resp
}

/// Whole seconds, rounded up, at least 1: "0" would invite an immediate
/// retry into the same refusal.
pub fn retry_after_value(wait: std::time::Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::time::Duration;

    #[test]
    fn upstream_failures_map_to_levee_answers() {
        let io = |k| io::Error::from(k);
        let cases = [
            (
                upstream::Error::Connect(io(io::ErrorKind::ConnectionRefused)),
                ProxyError::UpstreamConnect,
                502,
            ),
            (
                upstream::Error::ConnectTimeout(Duration::from_secs(1)),
                ProxyError::UpstreamConnectTimeout,
                504,
            ),
            (
                upstream::Error::TimedOut(Duration::from_secs(1)),
                ProxyError::UpstreamTimeout,
                504,
            ),
            (
                upstream::Error::Receive(io(io::ErrorKind::ConnectionReset)),
                ProxyError::UpstreamFailed,
                502,
            ),
            (upstream::Error::Closed, ProxyError::UpstreamFailed, 502),
            (
                upstream::Error::connect(io::Error::from_raw_os_error(24)),
                ProxyError::LocalShortage,
                503,
            ),
            (
                upstream::Error::RequestBody(Box::new(TooLarge)),
                ProxyError::BodyTooLarge,
                413,
            ),
            (
                upstream::Error::RequestBody(Box::new(io(io::ErrorKind::UnexpectedEof))),
                ProxyError::ClientBody,
                400,
            ),
        ];
        for (e, answer, status) in cases {
            let mapped = ProxyError::from(&e);
            assert_eq!(mapped, answer, "{e}");
            assert_eq!(mapped.status().as_u16(), status, "{e}");
        }
    }
}
