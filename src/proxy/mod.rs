//! The request pipeline, top to bottom:
//!
//! 1. take the current snapshot and the request's id (`handle`);
//! 2. refuse what cannot be proxied safely: ambiguous framing, oversized head
//!    or body (`forward`);
//! 3. match a route; its gates: the service level against its `min_level`,
//!    its rate limits (`rate_limit`); a split route draws its cluster; a
//!    route with a redirect or a fixed response answers now (`rewriting`);
//! 4. rewrite the head for the backend (hop-by-hop out, forwarding in), then
//!    the route's own rewriting, if any (`rewriting`); keep the body if a
//!    retry may need to send it again;
//! 5. the cluster's limits: adaptive concurrency, bulkhead (`enter_cluster`);
//! 6. tries (`send_with_retries`): an endpoint the breakers admit
//!    (`Cluster::pick_for_try`), the request over a pooled or new connection
//!    within the per-try timeout and the deadline (`try_once`), the result
//!    recorded (`Cluster::record`), and the retry policy asked whether to
//!    answer or try again elsewhere;
//! 7. the answer (`respond`): the endpoint's response streamed back, the
//!    route's redirect or fixed response, or Levee's own (an error, a
//!    fallback, a 429), with the route's response header rules; when its
//!    body is over, `record::Completion` counts and logs the request.
//!
//! Each step returns what it produced; `forward` collects it into a
//! `Forwarded`, and `respond` turns that into the response and the
//! request's `record::Outcome`.

pub mod body;
pub mod edge;
pub mod error;
pub mod front_door;
pub mod grpc;
pub mod headers;
pub mod record;
mod rewriting;
pub mod spans;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};

use crate::chaos::fault::Outcome as FaultOutcome;
use crate::cluster::balance::stable_hash;
use crate::cluster::guard::AdaptivePass;
use crate::cluster::{Cluster, PickInput, Unavailable};
use crate::config::HashKey;
use crate::observe::metrics::ClusterKindLabels;
use crate::observe::trace::{self, TraceContext};
use crate::ratelimit::rules::{Report, Ruling};
use crate::resilience::bulkhead::Rejected;
use crate::resilience::policy::{self, RetryPolicy, TryResult, Verdict, is_repeatable};
use crate::route::{self, Route};
use crate::shared::Shared;
use crate::snapshot::{Listener, Snapshot};
use crate::upstream::{self, BoxError};
use body::{ResponseBody, UpstreamBody};
use error::ProxyError;
use record::{Arrival, Completion, GrpcCall, Outcome, PendingTry, Places, Routed, Tries, Try};

/// What the pipeline knows about the client connection a request came on.
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub client: SocketAddr,
    pub local: SocketAddr,
    /// Told when a request starts and when its response is over.
    pub cycle: Arc<dyn RequestCycle>,
    pub worker: usize,
    /// What the TLS handshake negotiated; `None` on a plain listener.
    pub tls: Option<Box<crate::tls::TlsInfo>>,
}

impl ConnCtx {
    /// The scheme the client used.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// What the pipeline tells the client connection about its requests, which
/// its server needs for its timeouts (header timeout while a head arrives,
/// idle timeout between requests). The server implements it.
pub trait RequestCycle: Send + Sync {
    /// A request's head was taken; `body_len`: its body's length when known
    /// from the head (0: none, `None`: chunked). Returns whether the
    /// connection saw ambiguous framing for it.
    fn started(&self, body_len: Option<u64>) -> bool;
    /// The response is over; the connection waits for the next request.
    fn finished(&self);
}

/// Most headers a request may carry, whatever their size.
const MAX_HEADERS: usize = 100;

/// What the steps of the pipeline produced for a request.
struct Forwarded {
    routed: Option<Routed>,
    /// The rate-limit headers for the answer (and its status if refused).
    rate_limit: Option<Report>,
    places: Places,
    tries: Tries,
    answer: Answer,
    /// The request headers the route's response rules read.
    kept: Option<crate::rewrite::Kept>,
}

/// The endpoint's response, or why Levee answers itself.
type Answer = Result<Reply, Refusal>;

/// An answer that is not a refusal.
// Boxing the large variant would cost an allocation on every proxied
// request to spare a few bytes on the rare redirect or fixed response.
#[allow(clippy::large_enum_variant)]
enum Reply {
    /// An endpoint's response, and the affinity cookie to set on it.
    Upstream {
        exchange: upstream::Exchange,
        set_cookie: Option<HeaderValue>,
        /// A gRPC call's status, known or awaited in the trailers.
        grpc: Option<GrpcCall>,
    },
    /// The route's own answer: a redirect or a fixed response.
    Action(crate::rewrite::Canned),
}

/// Levee's own answer, and when a refused client may come back (open
/// breaker, full bulkhead, shedding).
struct Refusal {
    error: ProxyError,
    retry_after: Option<Duration>,
}

impl From<ProxyError> for Refusal {
    fn from(error: ProxyError) -> Refusal {
        Refusal {
            error,
            retry_after: None,
        }
    }
}

impl Forwarded {
    /// Nothing produced yet; refused if nothing else is said.
    fn refused(error: ProxyError) -> Forwarded {
        Forwarded {
            routed: None,
            rate_limit: None,
            places: Places::default(),
            tries: Tries::default(),
            answer: Err(error.into()),
            kept: None,
        }
    }
}

/// The request body as the client connection hands it over.
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static
{
}

pub async fn handle<B: RequestBody>(
    cx: Arc<ConnCtx>,
    mut req: Request<B>,
) -> Response<ResponseBody> {
    let ambiguous_framing = cx.cycle.started(body_len(req.headers()));
    let grpc = grpc::is_grpc(req.headers());
    // Before routing, so that routes can match on it.
    edge::client_subject(req.headers_mut(), cx.tls.as_deref());
    let snapshot = cx.shared.snapshot.load_full();
    let arrival = Arrival {
        start: Instant::now(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        request_id: headers::request_id(req.headers(), cx.shared.id_seed),
        bytes_in: Arc::default(),
        trace: TraceContext::from_headers(req.headers(), cx.shared.id_seed),
    };
    let forwarded = if ambiguous_framing {
        Forwarded::refused(ProxyError::BadFraming)
    } else if let Some(location) = edge::https_location(&cx, &snapshot, &req) {
        return edge::redirect(cx, snapshot, arrival, location);
    } else {
        forward(&cx, &snapshot, &arrival, req).await
    };
    respond(cx, snapshot, arrival, forwarded, grpc)
}

/// Steps 2–6 of the pipeline: everything between the request head and the
/// response head that goes back to the client.
async fn forward<B: RequestBody>(
    cx: &ConnCtx,
    snapshot: &Snapshot,
    arrival: &Arrival,
    req: Request<B>,
) -> Forwarded {
    let mut out = Forwarded::refused(ProxyError::NoRoute);
    let start = arrival.start;
    let answer = async {
        headers::check_framing(req.headers()).map_err(|_| ProxyError::BadFraming)?;
        front_door::check(&req)?;
        let listener = snapshot.listener(cx.local).ok_or(ProxyError::NoRoute)?;
        if head_too_large(&req, listener.max_header_bytes) {
            return Err(ProxyError::HeadersTooLarge.into());
        }

        let route = match_route(listener, &req, cx.tls.is_some()).ok_or(ProxyError::NoRoute)?;
        // A split route sends this request to one of its clusters: by the
        // split key's hash (sticky) or at random.
        let target = match (&route.split_key, route.targets.len()) {
            (_, 0 | 1) => 0,
            (Some(k), _) => route.target(affinity_key(k, &req, cx.client)),
            (None, _) => route.target(next_random()),
        };
        out.routed = Some(Routed {
            route: route.clone(),
            target,
        });
        // What the route's response rules read of the request, whatever
        // the answer turns out to be.
        out.kept = route.rewrite.as_ref().and_then(|rw| rw.keep(req.headers()));
        if !cx.shared.service_level.current().serves(route.min_level) {
            return Err(ProxyError::Degraded.into());
        }
        // Boxed when there are limits: a rule's check (Redis included) is a
        // large future that would otherwise be part of every request's,
        // copied with it at each step.
        let ruling = match &route.rate_limits {
            None => Ok(None),
            Some(_) => Box::pin(rate_limit(cx, route, req.headers(), start)).await,
        };
        match ruling {
            Ok(report) => out.rate_limit = report,
            Err(report) => {
                out.rate_limit = Some(report);
                return Err(ProxyError::RateLimited.into());
            }
        }
        // An injected fault on the route (chaos): its delay, then its abort
        // or reset; its slow headers and body shaping act on the answer.
        let (client, now) = (cx.client, Instant::now());
        let route_fault = crate::chaos::inject::on_route(
            crate::chaos::inject::Armed {
                faults: &cx.shared.faults,
                metrics: &cx.shared.metrics.chaos,
            },
            &route.name,
            client,
            req.headers(),
            next_random(),
            now,
        )
        .await;
        if let Some(hit) = &route_fault {
            out.tries.faults.push(hit.fault.clone());
            out.tries.shape = hit.shape();
            match hit.outcome {
                FaultOutcome::Abort(status) => return Err(ProxyError::FaultAbort(status).into()),
                FaultOutcome::GrpcAbort(code) => {
                    return Err(ProxyError::FaultGrpcAbort(code).into());
                }
                FaultOutcome::Reset => return Err(ProxyError::FaultReset.into()),
                _ => {}
            }
        }
        if let Some(action) = route.action() {
            let canned = rewriting::act(cx, route, action, arrival, req.headers())?;
            return Ok(Reply::Action(canned));
        }

        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let (Some(limit), Some(len)) = (listener.max_body_bytes, declared)
            && len > limit
        {
            return Err(ProxyError::BodyTooLarge.into());
        }

        let cluster = &route.targets[target].cluster;
        let policy = route.retry.as_ref().unwrap_or(&cluster.retry);
        let pick = PickInput {
            now: start,
            key: cluster
                .hash_key
                .as_ref()
                .map_or(0, |k| affinity_key(k, &req, cx.client)),
            random: next_random(),
            avoid: Vec::new(),
        };
        // Session affinity: the endpoint the client's cookie names, while it
        // may take requests; otherwise a fresh pick and a new cookie.
        let token = cluster
            .affinity_cookie
            .as_deref()
            .and_then(|name| cookie(req.headers(), name))
            .map(str::to_owned);

        let grpc = grpc::is_grpc(req.headers());
        let deadline = request_deadline(cluster, req.headers(), start, grpc);
        // A WebSocket upgrade is asked of the endpoint only when the client
        // connection can become a tunnel (`crate::tunnel`), and refused
        // otherwise; any other upgrade loses its headers as hop-by-hop.
        let websocket = listener.websocket.enabled
            && req.version() == Version::HTTP_11
            && crate::tunnel::is_websocket(req.method(), req.headers());
        if websocket
            && (cluster.http2
                || req.extensions().get::<crate::tunnel::CanTunnel>().is_none()
                || !hyper::body::Body::is_end_stream(req.body()))
        {
            return Err(ProxyError::UpgradeUnsupported.into());
        }
        let (mut parts, body) = req.into_parts();
        rewrite_request(&mut parts, cx, &arrival.request_id);
        if let Some(rw) = &route.rewrite {
            rewriting::request(cx, rw, route, &cluster.name, arrival, &mut parts)?;
        }
        if websocket {
            upgrade_headers(&mut parts.headers);
        }
        arrival.trace.prepare(&mut parts.headers);
        let mut body = UpstreamBody::new(body, listener.max_body_bytes, arrival.bytes_in.clone());

        // Whether the request may be sent a second time once it was sent: an
        // idempotent method (or an Idempotency-Key) and a body we kept. A
        // connect failure is retried regardless: nothing was sent.
        let mut repeatable = is_repeatable(&parts.method, &parts.headers);
        let mut kept = None;
        let mut tape = None;
        let empty = hyper::body::Body::is_end_stream(&body);
        if !empty {
            if repeatable && policy.retries_after_send() {
                kept = body
                    .keep(policy.buffer_body_max)
                    .await
                    .map_err(|e| error::client_body(&e))?;
            }
            repeatable &= kept.is_some();
            // A body not kept before the first try (a gRPC call, a POST
            // to HTTP/2 endpoints) is recorded as it streams: should the
            // endpoint not process it, or answer a gRPC status listed in
            // `retry_on`, it can be sent again if it was small enough.
            if kept.is_none() && policy.max_attempts > 1 && (grpc || cluster.http2) {
                tape = Some(body.record(policy.buffer_body_max));
            }
        }

        out.places = enter_cluster(cx, cluster, start).await?;
        let outbound = Outbound {
            parts,
            body,
            kept,
            tape,
            empty,
            repeatable,
            grpc,
            deadline,
            pick,
            token,
            trace: arrival.trace,
            span: 0,
            spans: cx
                .shared
                .otlp
                .as_ref()
                .is_some_and(|o| o.samples(arrival.trace.trace_id)),
        };
        let adaptive = out.places.adaptive.as_ref();
        let on_burn = route.on_burn.as_deref().map(|a| &*a.acting);
        let (mut tries, answer) =
            send_with_retries(cx, cluster, policy, outbound, adaptive, on_burn).await;
        if let Some(hit) = route_fault {
            tries.faults.insert(0, hit.fault.clone());
            tries.shape = hit.shape().or(tries.shape.take());
            if let (Some(d), Ok(_)) = (hit.slow_headers, &answer) {
                tokio::time::sleep(d).await;
            }
        }
        out.tries = tries;
        answer
    }
    .await;
    out.answer = answer;
    out
}

/// The first of the listener's routes, in declared order, that matches.
fn match_route<'l, B>(
    listener: &'l Listener,
    req: &Request<B>,
    https: bool,
) -> Option<&'l Arc<Route>> {
    let host = route::request_host(req.uri(), req.headers()).unwrap_or("");
    let host: std::borrow::Cow<str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    };
    listener.routes.iter().find(|r| {
        r.matcher.scheme_matches(https)
            && r.matcher
                .matches(&host, req.uri().path(), req.method(), req.headers())
    })
}

/// The route's rate limits, before anything is read of the body: a pass
/// (with the headers to report, after waiting for its turn in a shaping
/// leaky bucket) or a refusal.
async fn rate_limit(
    cx: &ConnCtx,
    route: &Route,
    headers: &http::HeaderMap,
    now: Instant,
) -> Result<Option<Report>, Report> {
    let Some(limits) = &route.rate_limits else {
        return Ok(None);
    };
    match limits.check(headers, cx.client.ip(), now).await {
        Ruling::Pass { report, delay } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(report)
        }
        Ruling::Refuse(report) => Err(report),
    }
}

/// The cluster's own limits: over the adaptive limit, shed at once; over
/// the bulkhead, wait in its queue or be refused. A refused client may come
/// back in a second. The places taken are held until the response is over.
async fn enter_cluster(cx: &ConnCtx, cluster: &Cluster, now: Instant) -> Result<Places, Refusal> {
    let guard = &cluster.guard;
    let service_level = &cx.shared.service_level;
    let refuse = |error| {
        service_level.count(true);
        Refusal {
            error,
            retry_after: Some(Duration::from_secs(1)),
        }
    };
    let adaptive = match &guard.adaptive {
        Some(limit) => Some(limit.admit().ok_or_else(|| refuse(ProxyError::Shed))?),
        None => None,
    };
    let bulkhead = guard.enter().await.map_err(|e| {
        refuse(match e {
            Rejected::QueueFull => ProxyError::BulkheadFull,
            Rejected::Timeout => ProxyError::QueueTimeout,
        })
    })?;
    service_level.count(false);
    guard.deposit(now);
    Ok(Places { bulkhead, adaptive })
}

/// The request as it goes upstream, and what decides whether it may go
/// twice.
struct Outbound<B> {
    parts: http::request::Parts,
    /// The client's body, streamed on the first try...
    body: UpstreamBody<B>,
    /// ...or kept whole, and sent again on each try.
    kept: Option<body::Kept>,
    /// What of the streamed body went upstream (`UpstreamBody::record`):
    /// once whole, it becomes `kept`.
    tape: Option<body::SharedTape>,
    /// The request has no body: it can always be sent again.
    empty: bool,
    /// A gRPC call (`content-type: application/grpc*`).
    grpc: bool,
    /// May be sent again once sent (idempotent, body kept or none).
    repeatable: bool,
    deadline: Instant,
    /// What picking an endpoint needs of the request (its arrival as
    /// `now`), and the endpoint its affinity cookie names.
    pick: PickInput,
    token: Option<String>,
    /// Each try is a child span of this (`observe::trace`).
    trace: TraceContext,
    /// The span id the current try sent in `traceparent`.
    span: u64,
    /// The request's spans are exported (`observe::otlp`): keep each try's.
    spans: bool,
}

/// Step 6: tries until one is worth answering with. Each try goes to an
/// endpoint the breakers admit; its result is recorded (latency, outlier
/// detection, breakers, adaptive limit), and the retry policy says whether
/// to answer or to try again, elsewhere, after a backoff, within the
/// deadline and the budget.
async fn send_with_retries<B: RequestBody>(
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
        let mut trailers_first = None;
        if let Ok(ex) = &mut result
            && out.grpc
            && resendable
            && tries.count < policy.max_attempts
            && ex.head.status == http::StatusCode::OK
            && grpc::status(&ex.head.headers).is_none()
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
        // The client's side failed (body too large, went away): nothing to
        // judge the endpoint by, nothing to retry.
        let Some(outcome) = try_result(&result, out.grpc, trailers_first.as_ref()) else {
            return settle(tries, result.map(|exchange| (exchange, None)), None);
        };
        // A gRPC answer whose status is still to come in its trailers is
        // judged when they pass (`record::GrpcCall`); it is the answer.
        let mut call = out.grpc.then(GrpcCall::default);
        let awaited = matches!(&result, Ok(ex) if out.grpc
            && ex.head.status == http::StatusCode::OK
            && grpc::status(&ex.head.headers).is_none()
            && trailers_first.is_none());
        if let Some(call) = call.as_mut() {
            call.status = match (&result, &trailers_first) {
                (_, Some(t)) => grpc::status(t),
                (Ok(ex), None) => grpc::status(&ex.head.headers),
                (Err(_), None) => None,
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
        let verdict = policy.verdict(
            tries.count,
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
            .insert(GRPC_TIMEOUT, grpc::timeout_value(left));
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

/// How long a gRPC answer's first frame is waited for, to tell a bare
/// status in trailers (retried like a trailers-only answer) from a message.
const PEEK_WAIT: Duration = Duration::from_secs(1);

/// The header carrying a gRPC call's deadline.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// What a try's result means for the breakers and the retry policy; `None`
/// when the client, not the endpoint, failed.
fn try_result(
    result: &Result<upstream::Exchange, upstream::Error>,
    grpc: bool,
    trailers_first: Option<&http::HeaderMap>,
) -> Option<TryResult> {
    match result {
        // A gRPC call's status is in its head (trailers-only) or in the
        // trailers that came first; one still to come counts as OK here
        // and is judged when it comes.
        Ok(ex) if grpc && ex.head.status == http::StatusCode::OK => {
            let code = match trailers_first {
                Some(t) => grpc::status(t),
                None => grpc::status(&ex.head.headers),
            };
            Some(match code {
                Some(0) | None => TryResult::Status(200),
                Some(code) => TryResult::Grpc(code),
            })
        }
        Ok(ex) => Some(TryResult::Status(ex.head.status.as_u16())),
        Err(upstream::Error::Unprocessed(_)) => Some(TryResult::Unprocessed),
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

/// Step 7: the response the client gets, and the request's outcome, which
/// the response body carries until it is over. Levee's own error answer to
/// a gRPC request is a gRPC status (`grpc`).
fn respond(
    cx: Arc<ConnCtx>,
    snapshot: Arc<Snapshot>,
    arrival: Arrival,
    forwarded: Forwarded,
    grpc: bool,
) -> Response<ResponseBody> {
    let Forwarded {
        routed,
        rate_limit,
        places,
        mut tries,
        answer,
        kept,
    } = forwarded;
    let shape = tries.shape.take();
    let reset = matches!(
        answer,
        Err(Refusal {
            error: ProxyError::FaultReset,
            ..
        })
    );
    let attempts = routed
        .as_ref()
        .and_then(|r| r.policy()?.attempts_header.clone())
        .map(|name| (name, HeaderValue::from(tries.count)));
    let endpoint = tries.last.as_ref().map(|t| t.endpoint);
    let edits = rewriting::response(
        &cx,
        &arrival,
        routed.as_ref(),
        endpoint,
        kept.as_ref(),
        answer.is_err(),
    );
    let request_id = arrival.request_id.clone();
    let hsts = cx.tls.as_ref().and_then(|t| t.hsts.clone());
    let mut outcome = Outcome {
        status: 0,
        error: None,
        routed,
        places,
        tries,
        grpc: None,
    };
    let completion = |outcome| {
        Box::new(Completion {
            cx,
            snapshot,
            arrival,
            outcome,
            body_error: None,
            tunnel: None,
        })
    };
    let mut response = match answer {
        Ok(Reply::Upstream {
            exchange,
            set_cookie,
            grpc: call,
        }) => {
            outcome.grpc = call;
            let upstream::Exchange { head, body, .. } = exchange;
            let mut headers = head.headers;
            headers::strip_hop_by_hop(&mut headers);
            // Only a WebSocket upgrade Levee asked for is answered 101
            // (`upstream` refuses any other): the client is told the same.
            if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                upgrade_headers(&mut headers);
            }
            headers.entry(&headers::X_REQUEST_ID).or_insert(request_id);
            if let Some(cookie) = set_cookie {
                headers.append(header::SET_COOKIE, cookie);
            }
            outcome.status = head.status.as_u16();
            let body = ResponseBody::upstream(body, completion(outcome)).shaped(shape);
            let mut response = Response::new(body);
            *response.status_mut() = head.status;
            *response.headers_mut() = headers;
            response
        }
        Ok(Reply::Action(canned)) => {
            outcome.status = canned.status.as_u16();
            let body = ResponseBody::full(canned.body, Some(completion(outcome)));
            let mut response = Response::new(body);
            *response.status_mut() = canned.status;
            *response.headers_mut() = canned.headers;
            let h = response.headers_mut();
            h.insert(headers::X_REQUEST_ID.clone(), request_id);
            response
        }
        Err(Refusal { error, retry_after }) => {
            outcome.error = Some(error);
            // An open breaker or a switched-off route answers with the
            // route's fallback, when it has one.
            let route = match error {
                ProxyError::BreakerOpen | ProxyError::Degraded => {
                    outcome.routed.as_ref().map(|r| r.route.clone())
                }
                _ => None,
            };
            match route.as_ref().and_then(|r| r.fallback.as_ref()) {
                Some(fallback) => {
                    outcome.status = fallback.status.as_u16();
                    let body = ResponseBody::full(fallback.body.clone(), Some(completion(outcome)));
                    let mut response = Response::new(body);
                    *response.status_mut() = fallback.status;
                    *response.headers_mut() = fallback.headers.clone();
                    let h = response.headers_mut();
                    h.insert(headers::X_REQUEST_ID.clone(), request_id);
                    if let (Some(wait), false) = (retry_after, h.contains_key(header::RETRY_AFTER))
                    {
                        h.insert(header::RETRY_AFTER, error::retry_after_value(wait));
                    }
                    response
                }
                None => {
                    let status = match (error, &rate_limit) {
                        (ProxyError::RateLimited, Some(r)) => r.status,
                        _ => error.status(),
                    };
                    outcome.status = status.as_u16();
                    if grpc {
                        outcome.grpc = Some(GrpcCall {
                            status: Some(grpc::code(error, status)),
                            pending: None,
                        });
                    }
                    let body = |b| ResponseBody::full(b, Some(completion(outcome)));
                    if grpc {
                        grpc::response(error, status, &request_id, retry_after, body)
                    } else {
                        error::response_with_status(error, status, &request_id, retry_after, body)
                    }
                }
            }
        }
    };
    if let Some(edits) = edits {
        edits.apply(response.headers_mut());
    }
    if let Some((name, value)) = attempts {
        response.headers_mut().insert(name, value);
    }
    if let Some(r) = rate_limit {
        r.apply(response.headers_mut());
    }
    edge::hsts(response.headers_mut(), hsts);
    if reset {
        response
            .extensions_mut()
            .insert(crate::chaos::inject::ResetConnection);
    }
    response
}

/// When Levee gives up on the request: the cluster's `response_timeout`
/// from its arrival, or sooner if the client's deadline header (the
/// cluster's `deadline_header`, in milliseconds) says so.
fn request_deadline(
    cluster: &Cluster,
    headers: &http::HeaderMap,
    start: Instant,
    grpc: bool,
) -> Instant {
    let own = start + cluster.response_timeout;
    // A gRPC client's `grpc-timeout`, within the cluster's own.
    let own = match grpc.then(|| grpc::timeout(headers)).flatten() {
        Some(t) => own.min(start + t),
        None => own,
    };
    let theirs = cluster
        .deadline_header
        .as_ref()
        .and_then(|name| headers.get(name))
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(|ms| start + Duration::from_millis(ms));
    theirs.map_or(own, |t| t.min(own))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The xxh3 hash of what the cluster's `hash_key` names. A request without
/// the header or cookie falls back to its client IP, so it still lands
/// consistently.
fn affinity_key<B>(key: &HashKey, req: &Request<B>, client: SocketAddr) -> u64 {
    let by_ip = || match client.ip().to_canonical() {
        std::net::IpAddr::V4(a) => stable_hash(&a.octets()),
        std::net::IpAddr::V6(a) => stable_hash(&a.octets()),
    };
    match key {
        HashKey::ClientIp => by_ip(),
        HashKey::Path => stable_hash(req.uri().path().as_bytes()),
        HashKey::Header(name) => req
            .headers()
            .get(name)
            .map_or_else(by_ip, |v| stable_hash(v.as_bytes())),
        HashKey::Cookie(name) => {
            cookie(req.headers(), name).map_or_else(by_ip, |v| stable_hash(v.as_bytes()))
        }
    }
}

pub(crate) use crate::cluster::balance::next_random;

/// The head as the backend should see it: origin-form URI, HTTP/1.1, no
/// hop-by-hop headers, forwarding headers and the request id added, `Host`
/// kept as the client sent it (or the target's, for an absolute-form URI).
fn rewrite_request(parts: &mut http::request::Parts, cx: &ConnCtx, request_id: &HeaderValue) {
    // Absolute-form (`GET http://host/path`): the target's host is the one
    // the request was routed by, and it replaces any Host header
    // (RFC 9112 §3.2.2). Built from host and port only, so that userinfo
    // never ends up in Host.
    if let Some(host) = parts.uri.host() {
        let target = match parts.uri.port_u16() {
            Some(port) => HeaderValue::from_str(&format!("{host}:{port}")),
            None => HeaderValue::from_str(host),
        };
        if let Ok(h) = target {
            parts.headers.insert(header::HOST, h);
        }
    }
    let original_host = parts.headers.get(header::HOST).cloned();
    headers::strip_hop_by_hop_request(&mut parts.headers);
    // We stream the body as soon as the backend connection is up; the
    // client's `Expect` was answered by us.
    parts.headers.remove(header::EXPECT);
    headers::add_forwarding(
        &mut parts.headers,
        cx.client.ip().to_canonical(),
        cx.scheme(),
        original_host.as_ref(),
    );
    parts
        .headers
        .insert(headers::X_REQUEST_ID.clone(), request_id.clone());
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    parts.version = Version::HTTP_11;
}

/// `Connection: upgrade` and `Upgrade: websocket`, on the request to the
/// endpoint and on its 101 to the client.
fn upgrade_headers(headers: &mut http::HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// The body length known from the head: 0 without a body, `None` when it is
/// chunked.
fn body_len(headers: &http::HeaderMap) -> Option<u64> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    match headers.get(header::CONTENT_LENGTH) {
        None => Some(0),
        Some(v) => v.to_str().ok()?.trim().parse().ok(),
    }
}

fn head_too_large<B>(req: &Request<B>, max: usize) -> bool {
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return true;
    }
    let uri = req.uri();
    let mut size = req.method().as_str().len()
        + uri.authority().map_or(0, |a| a.as_str().len() + 8)
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
        if size > max {
            return true;
        }
    }
    false
}
