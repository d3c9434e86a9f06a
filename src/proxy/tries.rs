//! Step 6 of the pipeline: the tries. Each goes to an endpoint the
//! breakers admit, within the per-try timeout and the deadline; its result
//! is recorded, and the retry policy says whether to answer or try again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderValue};

use super::body::{self, UpstreamBody};
use super::error::ProxyError;
use super::record::{GrpcCall, PendingTry, Tries, Try};
use super::{Answer, ConnCtx, Refusal, Reply, RequestBody, grpc, headers, next_random, spans};
use crate::cluster::guard::AdaptivePass;
use crate::cluster::{Cluster, PickInput, Unavailable};
use crate::observe::metrics::ClusterKindLabels;
use crate::observe::trace::{self, TraceContext};
use crate::resilience::policy::{self, RetryPolicy, TryResult, Verdict};
use crate::shortage::Shortage;
use crate::upstream;

/// The request as it goes upstream, and what decides whether it may go
/// twice.
pub(super) struct Outbound<B> {
    pub(super) parts: http::request::Parts,
    /// The client's body, streamed on the first try...
    pub(super) body: UpstreamBody<B>,
    /// ...or kept whole, and sent again on each try.
    pub(super) kept: Option<body::Kept>,
    /// What of the streamed body went upstream (`UpstreamBody::record`):
    /// once whole, it becomes `kept`.
    pub(super) tape: Option<body::SharedTape>,
    /// The request has no body: it can always be sent again.
    pub(super) empty: bool,
    /// A gRPC call (`content-type: application/grpc*`).
    pub(super) grpc: bool,
    /// May be sent again once sent (idempotent, body kept or none).
    pub(super) repeatable: bool,
    pub(super) deadline: Instant,
    /// What picking an endpoint needs of the request (its arrival as
    /// `now`), and the endpoint its affinity cookie names.
    pub(super) pick: PickInput,
    pub(super) token: Option<String>,
    /// Each try is a child span of this (`observe::trace`).
    pub(super) trace: TraceContext,
    /// The span id the current try sent in `traceparent`.
    pub(super) span: u64,
    /// The request's spans are exported (`observe::otlp`): keep each try's.
    pub(super) spans: bool,
}

/// Step 6: tries until one is worth answering with. Each try goes to an
/// endpoint the breakers admit; its result is recorded (latency, outlier
/// detection, breakers, adaptive limit), and the retry policy says whether
/// to answer or to try again, elsewhere, after a backoff, within the
/// deadline and the budget.
pub(super) async fn send_with_retries<B: RequestBody>(
    cx: &ConnCtx,
    cluster: &Arc<Cluster>,
    policy: &RetryPolicy,
    mut out: Outbound<B>,
    adaptive: Option<&AdaptivePass>,
    on_burn: Option<&crate::slo::act::Acting>,
) -> (Tries, Answer) {
    let mut tries = Tries::default();
    let token = out.token.take();
    let start = out.pick.now;
    let pinned = token.as_deref().and_then(|t| cluster.pinned(t, start));
    let mut tried = Vec::new();
    let mut next = cluster.pick_for_try(&mut out.pick, pinned, &tried, start);
    loop {
        let chosen = match next {
            Ok(chosen) => chosen,
            Err(Unavailable::BreakerOpen(wait)) => {
                let refusal = Refusal {
                    error: ProxyError::BreakerOpen,
                    retry_after: Some(wait),
                };
                return (tries, Err(refusal));
            }
            Err(Unavailable::NoEndpoint) => return (tries, Err(ProxyError::NoEndpoint.into())),
        };
        let endpoint = chosen.endpoint;
        tries.count += 1;
        let try_start = Instant::now();
        if tries.first.is_none() {
            tries.first = Some(try_start);
            let wait = try_start.saturating_duration_since(start);
            cluster.wait_time.observe(wait.as_secs_f64());
        }
        let in_flight = endpoint.live.begin();
        let (mut result, fault) =
            try_once(cx, cluster, endpoint, policy, &mut out, try_start).await;
        // A streamed body that went whole upstream can now be sent again.
        if out.kept.is_none()
            && let Some(tape) = &out.tape
        {
            out.kept = tape.lock().unwrap_or_else(|p| p.into_inner()).kept();
        }
        let resendable = out.empty || out.kept.is_some();
        // A gRPC answer with no status in its head, to a call whose
        // request is over: its first frame tells whether it is a bare
        // status (trailers, no message), which retries may act on.
        // The status in the answer's head (trailers-only), read once.
        let head_status = match &result {
            Ok(ex) if out.grpc && ex.head.status == http::StatusCode::OK => {
                grpc::status(&ex.head.headers)
            }
            _ => None,
        };
        let mut trailers_first = None;
        if let Ok(ex) = &mut result
            && out.grpc
            && resendable
            && tries.count - tries.transparent < policy.max_attempts
            && ex.head.status == http::StatusCode::OK
            && head_status.is_none()
        {
            // A bare status follows its head at once; a stream that is
            // slow to send its first message is not held up for long.
            let until = out.deadline.min(Instant::now() + PEEK_WAIT);
            let until = tokio::time::Instant::from_std(until);
            trailers_first = tokio::time::timeout_at(until, ex.body.peek_trailers())
                .await
                .ok()
                .flatten();
        }
        // Only the answering try's shaping reaches the client.
        tries.shape = fault.as_ref().and_then(|f| f.shape());
        tries.faults.extend(fault.map(|f| f.fault));
        let now = Instant::now();
        let took = now - try_start;
        if result.is_ok() {
            cluster.head_time.observe(took.as_secs_f64());
        }
        if out.spans {
            tries.spans.push(spans::TrySpan {
                span_id: out.span,
                endpoint: endpoint.address,
                start: SystemTime::now().checked_sub(took).unwrap_or(UNIX_EPOCH),
                took,
                result: match &result {
                    Ok(ex) => Ok(ex.head.status.as_u16()),
                    Err(e) => Err(e.to_string()),
                },
            });
        }
        tries.last = Some(Try {
            endpoint: endpoint.address,
            start: try_start,
            connect: result.as_ref().ok().and_then(|ex| ex.connect),
            head: result.is_ok().then_some(took),
            took,
            in_flight,
        });
        if let Err(e) = &result {
            let request_id = out.parts.headers.get(&headers::X_REQUEST_ID);
            tracing::warn!(
                cluster = %cluster.name,
                endpoint = %endpoint.address,
                request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or(""),
                "try {} failed after {took:?}: {e}",
                tries.count
            );
        }
        // The client's side failed (body too large, went away), or Levee's
        // own resources (`crate::shortage`): nothing to judge the endpoint
        // by, nothing another endpoint would do better.
        let Some(outcome) = try_result(&result, out.grpc, head_status, trailers_first.as_ref())
        else {
            if let Err(upstream::Error::Shortage(cause, _)) = &result {
                cx.shared.metrics.local_shortage(*cause, "connect");
                // Local ports are per destination: another endpoint may
                // have some left. Nothing was sent and no endpoint saw the
                // try, so the retry budget is not asked; the attempts and
                // the deadline still bound it.
                if *cause == Shortage::LocalPorts
                    && tries.count < policy.max_attempts
                    && now < out.deadline
                {
                    tried.push(endpoint.address);
                    out.pick.random = next_random();
                    out.pick.now = now;
                    let elsewhere = cluster.pick_for_try(&mut out.pick, None, &tried, now);
                    if elsewhere
                        .as_ref()
                        .is_ok_and(|c| !tried.contains(&c.endpoint.address))
                    {
                        next = elsewhere;
                        continue;
                    }
                }
            }
            return settle(tries, result.map(|exchange| (exchange, None)), None);
        };
        // A gRPC answer whose status is still to come in its trailers is
        // judged when they pass (`record::GrpcCall`); it is the answer.
        let mut call = out.grpc.then(GrpcCall::default);
        let awaited = matches!(&result, Ok(ex) if out.grpc
            && ex.head.status == http::StatusCode::OK
            && head_status.is_none()
            && trailers_first.is_none());
        if let Some(call) = call.as_mut() {
            call.status = match &trailers_first {
                Some(t) => grpc::status(t),
                None => head_status,
            };
        }
        if let (true, Some(call)) = (awaited, call.as_mut()) {
            call.pending = Some(PendingTry {
                cluster: cluster.clone(),
                pending: chosen.pending(),
                start: try_start,
            });
        } else {
            cluster.record(chosen, outcome, took, now, &cx.shared.metrics);
        }
        if let Some(adaptive) = adaptive {
            // Overload shows as timeouts, refused connections, 503 and 429:
            // their latency measures nothing.
            let dropped = matches!(
                outcome,
                TryResult::Timeout | TryResult::ConnectFailure | TryResult::Status(503 | 429)
            );
            adaptive.record(took, dropped, now);
        }

        // Only a 429 or 503 is waited on by its Retry-After.
        let retry_after = match &result {
            Ok(ex) if matches!(outcome, TryResult::Status(429 | 503)) => ex
                .head
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            _ => None,
        };
        // A gRPC status or an unprocessed request may go again whatever the
        // method (the gRPC retry policy's rule; nothing was done), as long
        // as its body can be sent again.
        let repeatable = match outcome {
            // An injected gRPC status took the place of the exchange: the
            // body was never read, and goes whole to the next try.
            TryResult::Grpc(_) if matches!(result, Err(upstream::Error::InjectedGrpc(_))) => true,
            TryResult::Grpc(_) => resendable,
            // HTTP/2 gives a body it did not read back untouched.
            TryResult::Unprocessed => resendable || !hyper::body::Body::is_end_stream(&out.body),
            _ => out.repeatable,
        };
        // A try the endpoint provably did not process (REFUSED_STREAM, a
        // GOAWAY before the stream) does not use up an attempt, a few times
        // per request: a burst of GOAWAYs from endpoints closing their
        // connections must not exhaust the retries (gRFC A6's transparent
        // retry). Only where retries are on at all.
        if outcome == TryResult::Unprocessed
            && policy.max_attempts > 1
            && tries.transparent < TRANSPARENT_RETRIES
        {
            tries.transparent += 1;
        }
        let verdict = policy.verdict(
            tries.count - tries.transparent,
            outcome,
            repeatable,
            retry_after,
            SystemTime::now(),
        );
        if verdict == Verdict::Answer {
            let cookie = affinity_cookie(cluster, endpoint.address, token.as_deref());
            return settle(tries, result.map(|exchange| (exchange, cookie)), call);
        }
        tried.push(endpoint.address);
        out.pick.random = next_random();
        out.pick.now = now;
        next = cluster.pick_for_try(&mut out.pick, None, &tried, now);
        let elsewhere = next
            .as_ref()
            .is_ok_and(|c| c.endpoint.address != endpoint.address);
        let wait = match verdict {
            // Nothing was sent, or nothing was done: another endpoint (or
            // connection) may take it at once.
            Verdict::Retry if outcome == TryResult::ConnectFailure && elsewhere => Duration::ZERO,
            Verdict::Retry if outcome == TryResult::Unprocessed => Duration::ZERO,
            Verdict::RetryAfter(wait) => wait,
            _ => policy.backoff.delay(tries.count, next_random()),
        };
        // A retry with nowhere to go, one that could not finish before the
        // deadline, or one the budget refuses, is not made: the client gets
        // this answer.
        // A route burning its SLO fast may have tightened the budget.
        let tighter = on_burn
            .and_then(crate::slo::act::Acting::tight_budget)
            .map(|t| (t.ratio, t.min_per_sec));
        if next.is_err()
            || now + wait >= out.deadline
            || !cluster.guard.withdraw_within(now, tighter)
        {
            let cookie = affinity_cookie(cluster, endpoint.address, token.as_deref());
            return settle(tries, result.map(|exchange| (exchange, cookie)), call);
        }
        let labels = ClusterKindLabels {
            cluster: cluster.name.to_string(),
            kind: policy::reason(outcome),
        };
        cx.shared.metrics.retries.get_or_create(&labels).inc();
        drop(result);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The last try's result as the client will get it: a failure becomes
/// Levee's answer, its cause kept for the access log.
fn settle(
    mut tries: Tries,
    result: Result<(upstream::Exchange, Option<HeaderValue>), upstream::Error>,
    grpc: Option<GrpcCall>,
) -> (Tries, Answer) {
    let answer = match result {
        Ok((exchange, set_cookie)) => Ok(Reply::Upstream {
            exchange,
            set_cookie,
            grpc,
        }),
        Err(e) => {
            let error = ProxyError::from(&e);
            tries.error = Some(e.to_string());
            Err(error.into())
        }
    };
    (tries, answer)
}

/// One try: the request to `endpoint`, within the per-try timeout and the
/// deadline, telling the endpoint how long is left when the cluster says so.
async fn try_once<B: RequestBody>(
    cx: &ConnCtx,
    cluster: &Cluster,
    endpoint: &crate::cluster::Endpoint,
    policy: &RetryPolicy,
    out: &mut Outbound<B>,
    start: Instant,
) -> (
    Result<upstream::Exchange, upstream::Error>,
    Option<crate::chaos::live::Hit>,
) {
    out.span = out.trace.new_span();
    out.parts
        .headers
        .insert(&trace::TRACEPARENT, out.trace.header(out.span));
    if let Some(name) = &cluster.deadline_header {
        let left = out.deadline.saturating_duration_since(start).as_millis();
        out.parts
            .headers
            .insert(name, HeaderValue::from(left as u64));
    }
    let until = policy
        .per_try_timeout
        .map_or(out.deadline, |t| out.deadline.min(start + t));
    if out.grpc {
        // The endpoint learns how long this try has left, as gRPC says it.
        let left = until.saturating_duration_since(start);
        out.parts
            .headers
            .insert(&grpc::GRPC_TIMEOUT, grpc::timeout_value(left));
    }
    let target = endpoint.target(cluster, cx.worker);
    let mut replay;
    let body = match &out.kept {
        Some(bytes) => {
            replay = UpstreamBody::<B>::kept(bytes.clone());
            &mut replay
        }
        None => &mut out.body,
    };
    // An injected fault on this try (chaos) acts inside its timeout.
    let (address, headers) = (endpoint.address, &out.parts.headers);
    let fault = crate::chaos::inject::for_try(
        crate::chaos::inject::Armed {
            faults: &cx.shared.faults,
            metrics: &cx.shared.metrics.chaos,
        },
        &cluster.name,
        address,
        cx.client,
        headers,
        next_random(),
        start,
    );
    let until_tokio = tokio::time::Instant::from_std(until);
    let timed = match fault.as_ref() {
        // The common case awaits the exchange directly: wrapped, its large
        // future would be moved once more, on every request.
        None => {
            tokio::time::timeout_at(until_tokio, upstream::send(&target, &out.parts, body)).await
        }
        Some(hit) => {
            let exchange = crate::chaos::inject::around_try(
                Some(hit),
                upstream::send(&target, &out.parts, body),
            );
            tokio::time::timeout_at(until_tokio, Box::pin(exchange)).await
        }
    };
    let result = match timed {
        Ok(result) => result,
        Err(_) => Err(upstream::Error::TimedOut(
            until.saturating_duration_since(start),
        )),
    };
    // A body handed to an HTTP/2 connection fails there; the client's
    // fault is told from the endpoint's by the tape.
    let failure = match (&result, &out.tape) {
        (Err(_), Some(tape)) => tape.lock().unwrap_or_else(|p| p.into_inner()).failure(),
        _ => None,
    };
    let result = match failure {
        Some(e) => Err(upstream::Error::RequestBody(e)),
        None => result,
    };
    (result, fault)
}

/// Unprocessed tries per request that do not use up an attempt.
const TRANSPARENT_RETRIES: u32 = 3;

/// How long a gRPC answer's first frame is waited for, to tell a bare
/// status in trailers (retried like a trailers-only answer) from a message.
const PEEK_WAIT: Duration = Duration::from_secs(1);

/// What a try's result means for the breakers and the retry policy; `None`
/// when the client or Levee itself, not the endpoint, failed.
fn try_result(
    result: &Result<upstream::Exchange, upstream::Error>,
    grpc: bool,
    head_status: Option<u8>,
    trailers_first: Option<&http::HeaderMap>,
) -> Option<TryResult> {
    match result {
        // A gRPC call's status is in its head (trailers-only) or in the
        // trailers that came first; one still to come counts as OK here
        // and is judged when it comes.
        Ok(ex) if grpc && ex.head.status == http::StatusCode::OK => {
            let code = match trailers_first {
                Some(t) => grpc::status(t),
                None => head_status,
            };
            Some(match code {
                Some(0) | None => TryResult::Status(200),
                Some(code) => TryResult::Grpc(code),
            })
        }
        Ok(ex) => Some(TryResult::Status(ex.head.status.as_u16())),
        Err(upstream::Error::Unprocessed(_)) => Some(TryResult::Unprocessed),
        Err(upstream::Error::Shortage(..)) => None,
        Err(e) if e.is_connect() => Some(TryResult::ConnectFailure),
        Err(upstream::Error::TimedOut(_)) => Some(TryResult::Timeout),
        Err(upstream::Error::RequestBody(_)) => None,
        Err(upstream::Error::Injected(status)) => Some(TryResult::Status(*status)),
        // An injected gRPC status is judged as an endpoint's would be.
        Err(upstream::Error::InjectedGrpc(code)) => Some(TryResult::Grpc(*code)),
        Err(_) => Some(TryResult::Reset),
    }
}

/// The affinity cookie to set when the request landed elsewhere than its
/// cookie said (or had none).
fn affinity_cookie(
    cluster: &Cluster,
    endpoint: SocketAddr,
    token: Option<&str>,
) -> Option<HeaderValue> {
    let name = cluster.affinity_cookie.as_ref()?;
    let current = cluster.affinity_token(endpoint)?;
    if Some(current) == token {
        return None;
    }
    HeaderValue::from_str(&format!("{name}={current}; Path=/; HttpOnly")).ok()
}
