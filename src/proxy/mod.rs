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
mod request;
mod respond;
mod rewriting;
pub mod spans;
mod tries;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};

use crate::chaos::fault::Outcome as FaultOutcome;
use crate::cluster::{Cluster, PickInput};
use crate::observe::trace::TraceContext;
use crate::ratelimit::rules::{Report, Ruling};
use crate::resilience::bulkhead::Rejected;
use crate::resilience::policy::is_repeatable;
use crate::route::{self, Route};
use crate::shared::Shared;
use crate::snapshot::{Listener, Snapshot};
use crate::upstream::{self, BoxError};
use body::{ResponseBody, UpstreamBody};
use error::ProxyError;
use record::{Arrival, GrpcCall, Places, Routed, Tries};
use request::{
    affinity_key, body_len, cookie, head_too_large, request_deadline, rewrite_request,
    upgrade_headers,
};
use respond::respond;
use tries::{Outbound, send_with_retries};

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
        forward(&cx, &snapshot, &arrival, req, grpc).await
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
    grpc: bool,
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

pub(crate) use crate::cluster::balance::next_random;
