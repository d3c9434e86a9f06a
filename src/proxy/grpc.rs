//! Levee's own answers to gRPC requests: a gRPC client reads the status from
//! `grpc-status` and `grpc-message`, not from the HTTP status or a JSON body
//! (which it would report as a protocol error), so a request whose
//! `content-type` is `application/grpc*` is answered HTTP 200, trailers-only
//! (the status in the response head, no body), with the code that says what
//! happened: no endpoint, open breaker, full bulkhead → UNAVAILABLE, rate
//! limited → RESOURCE_EXHAUSTED, timed out → DEADLINE_EXCEEDED, no route →
//! UNIMPLEMENTED; others as gRPC maps HTTP statuses
//! (doc/http-grpc-status-mapping.md in grpc/grpc).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};

use super::body::ResponseBody;
use super::error::ProxyError;

/// gRPC status codes Levee answers with.
pub const UNKNOWN: u8 = 2;
pub const DEADLINE_EXCEEDED: u8 = 4;
pub const PERMISSION_DENIED: u8 = 7;
pub const RESOURCE_EXHAUSTED: u8 = 8;
pub const UNIMPLEMENTED: u8 = 12;
pub const INTERNAL: u8 = 13;
pub const UNAVAILABLE: u8 = 14;
pub const UNAUTHENTICATED: u8 = 16;

/// The headers gRPC's status and deadline travel in. Looked up by these
/// names, not by text: a `&str` name is parsed and checked on every lookup.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether the request is a gRPC call (`application/grpc`, `+proto`, `+json`...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim_start();
            v.len() >= 16
                && v[..16].eq_ignore_ascii_case("application/grpc")
                && matches!(v.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

/// The gRPC status for Levee's error, answered with HTTP `status` to
/// anything else.
pub fn code(err: ProxyError, status: StatusCode) -> u8 {
    match err {
        ProxyError::FaultGrpcAbort(code) => code,
        ProxyError::NoRoute => UNIMPLEMENTED,
        ProxyError::RateLimited => RESOURCE_EXHAUSTED,
        ProxyError::UpstreamTimeout | ProxyError::QueueTimeout => DEADLINE_EXCEEDED,
        ProxyError::NoEndpoint
        | ProxyError::BreakerOpen
        | ProxyError::BulkheadFull
        | ProxyError::Shed
        | ProxyError::Degraded
        | ProxyError::UpstreamConnect
        | ProxyError::UpstreamConnectTimeout
        | ProxyError::UpstreamFailed
        | ProxyError::LocalShortage => UNAVAILABLE,
        _ => match status.as_u16() {
            400 => INTERNAL,
            401 => UNAUTHENTICATED,
            403 => PERMISSION_DENIED,
            404 => UNIMPLEMENTED,
            429 | 502..=504 => UNAVAILABLE,
            413 | 431 => RESOURCE_EXHAUSTED,
            _ => UNKNOWN,
        },
    }
}

/// The HTTP status a gRPC status stands for, answered to a client that is
/// not speaking gRPC (as `google.rpc.Code` maps them).
pub fn http_status(code: u8) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        16 => StatusCode::UNAUTHORIZED,
        7 => StatusCode::FORBIDDEN,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        4 => StatusCode::GATEWAY_TIMEOUT,
        // CANCELLED is 499 (client closed request) in that mapping.
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The `grpc-status` in `headers` (a trailers-only answer's head, or the
/// trailers); `None` when absent or not a code.
pub fn status(headers: &HeaderMap) -> Option<u8> {
    let v = headers.get(&GRPC_STATUS)?.to_str().ok()?.trim();
    v.parse::<u8>().ok()
}

/// The status code's name, as metrics and the access log spell it.
pub fn code_name(code: u8) -> &'static str {
    crate::config::chaos::GRPC_CODES
        .get(usize::from(code))
        .copied()
        .unwrap_or("other")
}

/// The client's deadline from `grpc-timeout` (gRPC over HTTP/2: at most 8
/// digits and a unit, H M S m u n); `None` when absent or malformed.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `left` as a `grpc-timeout` value: milliseconds while they fit the
/// eight digits (and are not zero), else the coarsest unit that does.
pub fn timeout_value(left: Duration) -> HeaderValue {
    let ms = left.as_millis();
    let (n, unit) = if ms == 0 {
        (left.as_micros().max(1), b'u')
    } else if ms < 100_000_000 {
        (ms, b'm')
    } else {
        (u128::from(left.as_secs().min(99_999_999)), b'S')
    };
    // At most eight digits and the unit, written without the formatting
    // machinery (this is on every gRPC call's every try).
    let mut buf = [0u8; 9];
    let mut at = 8;
    let mut n = n.min(99_999_999);
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf[8] = unit;
    HeaderValue::from_bytes(&buf[at..]).unwrap_or(HeaderValue::from_static("1m"))
}

/// A trailers-only gRPC answer: HTTP 200, `grpc-status`, `grpc-message`
/// (Levee's message, plain ASCII without `%`, so it needs no
/// percent-encoding), the request id, and `retry-after` when the client
/// may come back later.
pub fn response(
    err: ProxyError,
    status: StatusCode,
    request_id: &HeaderValue,
    retry_after: Option<std::time::Duration>,
    body: impl FnOnce(Bytes) -> ResponseBody,
) -> Response<ResponseBody> {
    let mut resp = Response::new(body(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from(u16::from(code(err, status))),
    );
    h.insert(
        GRPC_MESSAGE.clone(),
        HeaderValue::from_static(err.message()),
    );
    h.insert(super::headers::X_REQUEST_ID.clone(), request_id.clone());
    if let Some(wait) = retry_after {
        h.insert(header::RETRY_AFTER, super::error::retry_after_value(wait));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(v).expect("valid"),
        );
        h
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_refused_when_malformed() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).expect("value"));
            timeout(&h)
        };
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1m", "1.5S", "10"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
        assert_eq!(timeout_value(Duration::from_millis(1500)), "1500m");
        assert_eq!(timeout_value(Duration::from_micros(20)), "20u");
        assert_eq!(timeout_value(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn statuses_are_read_and_named() {
        let mut h = HeaderMap::new();
        assert_eq!(status(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(status(&h), Some(14));
        assert_eq!(code_name(14), "unavailable");
        assert_eq!(code_name(0), "ok");
        assert_eq!(code_name(40), "other");
        h.insert("grpc-status", HeaderValue::from_static("x"));
        assert_eq!(status(&h), None);
    }

    #[test]
    fn grpc_content_types_are_recognised() {
        assert!(is_grpc(&with_type("application/grpc")));
        assert!(is_grpc(&with_type("application/grpc+proto")));
        assert!(is_grpc(&with_type("Application/GRPC+json")));
        assert!(!is_grpc(&with_type("application/grpc-web")));
        assert!(!is_grpc(&with_type("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn levees_errors_map_to_the_codes_grpc_clients_act_on() {
        let c = |e: ProxyError| code(e, e.status());
        assert_eq!(c(ProxyError::NoEndpoint), UNAVAILABLE);
        assert_eq!(c(ProxyError::BreakerOpen), UNAVAILABLE);
        assert_eq!(c(ProxyError::UpstreamConnect), UNAVAILABLE);
        assert_eq!(c(ProxyError::LocalShortage), UNAVAILABLE);
        assert_eq!(c(ProxyError::RateLimited), RESOURCE_EXHAUSTED);
        assert_eq!(c(ProxyError::UpstreamTimeout), DEADLINE_EXCEEDED);
        assert_eq!(c(ProxyError::NoRoute), UNIMPLEMENTED);
        assert_eq!(c(ProxyError::BodyTooLarge), RESOURCE_EXHAUSTED);
        assert_eq!(c(ProxyError::BadHost), INTERNAL);
    }

    #[test]
    fn every_message_is_a_valid_grpc_message_as_is() {
        use ProxyError::*;
        for e in [
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
            BreakerOpen,
            BulkheadFull,
            QueueTimeout,
            Shed,
            Degraded,
            RateLimited,
            BadHost,
            ConnectRefused,
        ] {
            let m = e.message();
            assert!(
                m.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'%'),
                "{m}"
            );
        }
    }
}
