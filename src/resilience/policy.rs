//! How the pipeline judges one try: is it a failure for the breakers, is it
//! worth another try, and may this request be sent twice at all. Built once
//! per snapshot from the configuration; pure functions of the try's result,
//! so the rules are tested here without sockets.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Method};

use super::backoff::{self, Backoff, Jitter};
use crate::config::resilience::{
    BreakerConfig as BreakerTable, FailureOn, JitterConfig, RetryConfig, RetryOn,
};

/// The result of one try, as far as the policies care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryResult {
    /// The connection could not be made; nothing was sent.
    ConnectFailure,
    /// The connection broke before a complete response head.
    Reset,
    /// No response head in time.
    Timeout,
    /// A response head with this status.
    Status(u16),
    /// A gRPC call that ended with this non-zero `grpc-status` (an OK call
    /// is `Status(200)`).
    Grpc(u8),
    /// An HTTP/2 endpoint provably did not process the request (refused
    /// stream, graceful GOAWAY): like a connect failure, nothing was done.
    Unprocessed,
}

/// The gRPC statuses that say the server failed (the ones that map to
/// HTTP 5xx other than UNIMPLEMENTED): UNKNOWN, DEADLINE_EXCEEDED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS. The others are the caller's (bad
/// argument, not found, permission...) or its own choice (cancelled).
pub fn grpc_server_failure(code: u8) -> bool {
    matches!(code, 2 | 4 | 13 | 14 | 15)
}

/// RESOURCE_EXHAUSTED.
const GRPC_RESOURCE_EXHAUSTED: u8 = 8;

impl TryResult {
    /// What outlier detection and the latency estimate count as a success:
    /// a status below 500, or a gRPC status that is not a server failure.
    pub fn is_ok(self) -> bool {
        match self {
            TryResult::Status(s) => s < 500,
            TryResult::Grpc(code) => !grpc_server_failure(code),
            _ => false,
        }
    }
}

/// Why a try is repeated: the label of `levee_upstream_retries_total`.
pub fn reason(result: TryResult) -> &'static str {
    match result {
        TryResult::ConnectFailure => "connect_failure",
        TryResult::Reset => "reset",
        TryResult::Timeout => "timeout",
        TryResult::Status(429) => "rate_limited",
        TryResult::Status(502..=504) => "gateway_error",
        TryResult::Status(_) => "status",
        TryResult::Grpc(_) => "grpc",
        TryResult::Unprocessed => "unprocessed",
    }
}

/// Which results a breaker counts as failures. A 4xx never is one (it is
/// the client's), unless it is a listed 429.
#[derive(Clone, Debug, PartialEq)]
pub struct FailurePolicy {
    connect: bool,
    reset: bool,
    timeout: bool,
    server_error: bool,
    statuses: Vec<u16>,
    grpc_resource_exhausted: bool,
}

impl FailurePolicy {
    pub fn from_config(c: &BreakerTable) -> FailurePolicy {
        let on = |f| c.failure_on.contains(&f);
        FailurePolicy {
            connect: on(FailureOn::ConnectFailure),
            reset: on(FailureOn::Reset),
            timeout: on(FailureOn::Timeout),
            server_error: on(FailureOn::ServerError),
            statuses: c.failure_statuses.iter().map(|s| *s.get_ref()).collect(),
            grpc_resource_exhausted: on(FailureOn::GrpcResourceExhausted),
        }
    }

    pub fn is_failure(&self, result: TryResult) -> bool {
        match result {
            TryResult::ConnectFailure | TryResult::Unprocessed => self.connect,
            TryResult::Reset => self.reset,
            TryResult::Grpc(GRPC_RESOURCE_EXHAUSTED) => self.grpc_resource_exhausted,
            TryResult::Grpc(code) => self.server_error && grpc_server_failure(code),
            TryResult::Timeout => self.timeout,
            TryResult::Status(s) => {
                (self.server_error && (500..=599).contains(&s)) || self.statuses.contains(&s)
            }
        }
    }
}

/// A cluster's (or a route's) retry policy.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    on_connect: bool,
    on_reset: bool,
    on_timeout: bool,
    on_gateway: bool,
    statuses: Vec<u16>,
    /// gRPC statuses retried (`grpc:...` in `retry_on`).
    grpc_codes: Vec<u8>,
    pub per_try_timeout: Option<Duration>,
    pub backoff: Backoff,
    pub retry_after_max: Duration,
    pub buffer_body_max: u64,
    pub attempts_header: Option<HeaderName>,
    pub budget: Option<BudgetSettings>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetSettings {
    pub ratio: f64,
    pub min_per_sec: f64,
    pub window: Duration,
}

/// What to do after a try that did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hand this result to the client.
    Answer,
    /// Try again after the backoff for the next attempt.
    Retry,
    /// Try again after exactly this long (the endpoint's `Retry-After`).
    RetryAfter(Duration),
}

impl RetryPolicy {
    pub fn from_config(c: &RetryConfig) -> RetryPolicy {
        let on = |r| c.retry_on.contains(&r);
        let b = &c.budget;
        RetryPolicy {
            max_attempts: (*c.max_attempts.get_ref()).max(1),
            on_connect: on(RetryOn::ConnectFailure),
            on_reset: on(RetryOn::Reset),
            on_timeout: on(RetryOn::Timeout),
            on_gateway: on(RetryOn::GatewayError),
            statuses: c.retry_statuses.iter().map(|s| *s.get_ref()).collect(),
            grpc_codes: c.retry_on.iter().filter_map(|r| r.grpc_code()).collect(),
            per_try_timeout: c.per_try_timeout.map(|d| d.get()),
            backoff: Backoff {
                base: c.backoff_base.get(),
                max: c.backoff_max.get(),
                jitter: match c.jitter {
                    JitterConfig::Full => Jitter::Full,
                    JitterConfig::Equal => Jitter::Equal,
                    JitterConfig::None => Jitter::None,
                },
            },
            retry_after_max: c.retry_after_max.get(),
            buffer_body_max: c.buffer_body_max.0,
            attempts_header: (!c.attempts_header.is_empty())
                .then(|| HeaderName::from_bytes(c.attempts_header.as_bytes()).ok())
                .flatten(),
            budget: b.enabled.then(|| BudgetSettings {
                ratio: *b.ratio.get_ref(),
                min_per_sec: *b.min_per_sec.get_ref(),
                window: b.window.get(),
            }),
        }
    }

    /// Whether anything but a connect failure is ever retried: only then is
    /// a request body worth keeping for a second send.
    pub fn retries_after_send(&self) -> bool {
        self.max_attempts > 1
            && (self.on_reset
                || self.on_timeout
                || self.on_gateway
                || !self.statuses.is_empty()
                || !self.grpc_codes.is_empty())
    }

    /// What to do after try number `attempt` (1-based) ended in `result`.
    /// `repeatable`: the request may be sent again (idempotent method or an
    /// `Idempotency-Key`, and its body kept or absent). `retry_after`: the
    /// response's `Retry-After` header, if any.
    ///
    /// A connect failure is retried whatever the method, since nothing was
    /// sent. A 429 or 503 asking to wait longer than `retry_after_max` is
    /// answered: holding the client that long is worse than telling it.
    pub fn verdict(
        &self,
        attempt: u32,
        result: TryResult,
        repeatable: bool,
        retry_after: Option<&str>,
        now: SystemTime,
    ) -> Verdict {
        if attempt >= self.max_attempts {
            return Verdict::Answer;
        }
        let wanted = match result {
            TryResult::ConnectFailure => return self.decide(self.on_connect),
            // Nothing was processed: like a connect failure, when the
            // request can be sent again (`repeatable`: its body is whole).
            TryResult::Unprocessed => return self.decide(self.on_connect && repeatable),
            TryResult::Grpc(code) => self.grpc_codes.contains(&code),
            TryResult::Reset => self.on_reset,
            TryResult::Timeout => self.on_timeout,
            TryResult::Status(s) => {
                (self.on_gateway && (502..=504).contains(&s)) || self.statuses.contains(&s)
            }
        };
        if !wanted || !repeatable {
            return Verdict::Answer;
        }
        if let (TryResult::Status(429 | 503), Some(value)) = (result, retry_after) {
            // `retry_after` caps at `retry_after_max`; one above it is read
            // with a larger cap to tell "too long" from "unreadable".
            let limit = self.retry_after_max;
            return match backoff::retry_after(value, now, limit + Duration::from_secs(1)) {
                Some(wait) if wait <= limit => Verdict::RetryAfter(wait),
                Some(_) => Verdict::Answer,
                None => Verdict::Retry,
            };
        }
        Verdict::Retry
    }

    fn decide(&self, wanted: bool) -> Verdict {
        if wanted {
            Verdict::Retry
        } else {
            Verdict::Answer
        }
    }
}

/// Whether sending the request twice is safe: an idempotent method
/// (RFC 9110 §9.2.2), or a client-supplied `Idempotency-Key` saying the
/// server deduplicates.
pub fn is_repeatable(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || headers.contains_key("idempotency-key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> RetryPolicy {
        let c: RetryConfig = toml::from_str(text).expect("retry config");
        RetryPolicy::from_config(&c)
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    #[test]
    fn defaults_retry_connect_failures_for_any_method_and_resets_when_repeatable() {
        let p = policy("");
        assert_eq!(p.max_attempts, 2);
        assert!(p.retries_after_send());
        let v = |a, r, repeatable| p.verdict(a, r, repeatable, None, NOW);
        assert_eq!(v(1, TryResult::ConnectFailure, false), Verdict::Retry);
        assert_eq!(v(2, TryResult::ConnectFailure, false), Verdict::Answer);
        assert_eq!(v(1, TryResult::Status(503), true), Verdict::Answer);
        assert_eq!(v(1, TryResult::Reset, false), Verdict::Answer);
        assert_eq!(v(1, TryResult::Reset, true), Verdict::Retry);
        assert_eq!(v(2, TryResult::Reset, true), Verdict::Answer);
    }

    #[test]
    fn gateway_errors_and_listed_statuses_only_when_repeatable() {
        let p = policy(
            "max_attempts = 3\nretry_on = [\"gateway_error\", \"timeout\", \"reset\"]\nretry_statuses = [500, 429]",
        );
        assert!(p.retries_after_send());
        for s in [502, 503, 504, 500, 429] {
            assert_eq!(
                p.verdict(1, TryResult::Status(s), true, None, NOW),
                Verdict::Retry,
                "{s}"
            );
            assert_eq!(
                p.verdict(1, TryResult::Status(s), false, None, NOW),
                Verdict::Answer,
                "{s} not repeatable"
            );
        }
        for s in [200, 404, 400, 501, 505] {
            assert_eq!(
                p.verdict(1, TryResult::Status(s), true, None, NOW),
                Verdict::Answer,
                "{s}"
            );
        }
        assert_eq!(
            p.verdict(2, TryResult::Timeout, true, None, NOW),
            Verdict::Retry
        );
        assert_eq!(
            p.verdict(3, TryResult::Timeout, true, None, NOW),
            Verdict::Answer
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = policy("max_attempts = 3\nretry_statuses = [429]\nretry_after_max = \"2s\"");
        let v = |h| p.verdict(1, TryResult::Status(429), true, h, NOW);
        assert_eq!(v(Some("1")), Verdict::RetryAfter(Duration::from_secs(1)));
        assert_eq!(v(Some("2")), Verdict::RetryAfter(Duration::from_secs(2)));
        assert_eq!(v(Some("3")), Verdict::Answer);
        assert_eq!(v(Some("3600")), Verdict::Answer);
        assert_eq!(v(Some("soon")), Verdict::Retry);
        assert_eq!(v(None), Verdict::Retry);
    }

    #[test]
    fn failure_policy_never_counts_4xx_but_a_listed_429() {
        let c: BreakerTable = toml::from_str("").expect("breaker config");
        let f = FailurePolicy::from_config(&c);
        assert!(f.is_failure(TryResult::ConnectFailure));
        assert!(f.is_failure(TryResult::Timeout));
        assert!(f.is_failure(TryResult::Reset));
        assert!(f.is_failure(TryResult::Status(500)));
        assert!(f.is_failure(TryResult::Status(503)));
        assert!(!f.is_failure(TryResult::Status(404)));
        assert!(!f.is_failure(TryResult::Status(429)));
        assert!(!f.is_failure(TryResult::Status(200)));
        let c: BreakerTable =
            toml::from_str("failure_on = [\"timeout\"]\nfailure_statuses = [429]").expect("config");
        let f = FailurePolicy::from_config(&c);
        assert!(!f.is_failure(TryResult::Status(500)));
        assert!(f.is_failure(TryResult::Status(429)));
        assert!(f.is_failure(TryResult::Timeout));
        assert!(!f.is_failure(TryResult::ConnectFailure));
    }

    #[test]
    fn repeatable_methods_and_idempotency_key() {
        let mut h = HeaderMap::new();
        assert!(is_repeatable(&Method::GET, &h));
        assert!(is_repeatable(&Method::PUT, &h));
        assert!(!is_repeatable(&Method::POST, &h));
        assert!(!is_repeatable(&Method::PATCH, &h));
        h.insert("idempotency-key", http::HeaderValue::from_static("abc"));
        assert!(is_repeatable(&Method::POST, &h));
    }

    #[test]
    fn grpc_statuses_judge_breakers_and_retries() {
        let c: BreakerTable = toml::from_str("").expect("breaker config");
        let f = FailurePolicy::from_config(&c);
        for code in [2, 4, 13, 14, 15] {
            assert!(f.is_failure(TryResult::Grpc(code)), "{code}");
            assert!(!TryResult::Grpc(code).is_ok(), "{code}");
        }
        for code in [1, 3, 5, 7, 8, 12, 16] {
            assert!(!f.is_failure(TryResult::Grpc(code)), "{code}");
            assert!(TryResult::Grpc(code).is_ok(), "{code}");
        }
        let c: BreakerTable =
            toml::from_str("failure_on = [\"5xx\", \"grpc:resource_exhausted\"]").expect("config");
        assert!(FailurePolicy::from_config(&c).is_failure(TryResult::Grpc(8)));

        let p = policy("");
        let v = |r, resendable| p.verdict(1, r, resendable, None, NOW);
        assert_eq!(v(TryResult::Grpc(14), true), Verdict::Retry);
        assert_eq!(v(TryResult::Grpc(14), false), Verdict::Answer, "body gone");
        assert_eq!(v(TryResult::Grpc(13), true), Verdict::Answer, "not listed");
        assert_eq!(v(TryResult::Unprocessed, true), Verdict::Retry);
        assert_eq!(v(TryResult::Unprocessed, false), Verdict::Answer);
        let p = policy("retry_on = [\"grpc:internal\", \"grpc:deadline_exceeded\"]");
        assert!(p.retries_after_send());
        let v = |r| p.verdict(1, r, true, None, NOW);
        assert_eq!(v(TryResult::Grpc(13)), Verdict::Retry);
        assert_eq!(v(TryResult::Grpc(4)), Verdict::Retry);
        assert_eq!(v(TryResult::Grpc(14)), Verdict::Answer);
        assert_eq!(
            v(TryResult::Unprocessed),
            Verdict::Answer,
            "no connect_failure"
        );
    }
}
