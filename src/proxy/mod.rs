//! The request pipeline, top to bottom:
//!
//! 1. take the current snapshot and the request's id (`handle`);
//! 2. refuse what cannot be proxied safely: ambiguous framing, oversized head
//!    or body (`forward`);
//! 3. match a route; its gates: the service level against its `min_level`,
//!    its rate limits (`admit`); a split route draws its cluster;
//! 4. rewrite the head for the backend (hop-by-hop out, forwarding in), keep
//!    the body if a retry may need to send it again;
//! 5. the cluster's limits: adaptive concurrency, bulkhead (`enter_cluster`);
//! 6. tries (`send_with_retries`): an endpoint the breakers admit (`choose`),
//!    the request over a pooled or new connection within the per-try timeout
//!    and the deadline (`try_once`), the result recorded, and the retry policy
//!    asked whether to answer or try again elsewhere;
//! 7. stream the response back; when the body is done, `Finish` records the
//!    request (metrics, access log) and returns the connection to the pool.
//!
//! Levee's own answers (errors, fallbacks, 429) are made in `handle` from the
//! `ProxyError` the steps return.

pub mod body;
pub mod error;
pub mod headers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::cluster::balance::stable_hash;
use crate::cluster::guard::{AdaptivePass, Pass};
use crate::cluster::{Cluster, Endpoint, InFlight, PickInput};
use crate::config::HashKey;
use crate::observe::LogRecord;
use crate::observe::metrics::{ClusterKindLabels, EndpointLabels};
use crate::ratelimit::rules::{Report, Ruling};
use crate::resilience::bulkhead::{Permit, Rejected};
use crate::resilience::policy::{self, RetryPolicy, TryResult, Verdict, is_repeatable};
use crate::route::{self, Route};
use crate::server::phase::Phase;
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::upstream;
use body::{ResponseBody, UpstreamBody};
use error::ProxyError;

/// What the pipeline knows about the client connection a request came on.
pub struct ConnCtx {
    pub shared: Arc<Shared>,
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub phase: Arc<Phase>,
    pub worker: usize,
}

/// Most headers a request may carry, whatever their size.
const MAX_HEADERS: usize = 100;

pub async fn handle(cx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<ResponseBody> {
    let ambiguous_framing = cx.phase.active(body_len(req.headers()));
    let snapshot = cx.shared.snapshot.load_full();
    let request_id = headers::request_id(req.headers(), cx.shared.id_seed);
    let mut finish = Box::new(Finish {
        start: Instant::now(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        request_id: request_id.clone(),
        status: 0,
        error: None,
        route: None,
        target: 0,
        set_cookie: None,
        upstream: None,
        attempts: 0,
        attempts_header: None,
        retry_after: None,
        bulkhead: None,
        adaptive: None,
        rate_limit: None,
        bytes_in: Arc::default(),
        snapshot: snapshot.clone(),
        cx: cx.clone(),
    });
    let forwarded = if ambiguous_framing {
        Err(ProxyError::BadFraming)
    } else {
        forward(&cx, &snapshot, req, &mut finish).await
    };
    let attempts = finish
        .attempts_header
        .clone()
        .map(|name| (name, HeaderValue::from(finish.attempts)));
    let rate_limit = finish.rate_limit.take();
    let mut response = match forwarded {
        Ok(upstream::Exchange { head, body, .. }) => {
            let mut headers = head.headers;
            headers::strip_hop_by_hop(&mut headers);
            if !headers.contains_key(&headers::X_REQUEST_ID) {
                headers.insert(headers::X_REQUEST_ID.clone(), request_id);
            }
            if let Some(cookie) = finish.set_cookie.take() {
                headers.append(header::SET_COOKIE, cookie);
            }
            finish.status = head.status.as_u16();
            let mut response = Response::new(ResponseBody::upstream(body, finish));
            *response.status_mut() = head.status;
            *response.headers_mut() = headers;
            response
        }
        Err(e) => {
            let fallback = match e {
                ProxyError::BreakerOpen | ProxyError::Degraded => finish
                    .route
                    .as_ref()
                    .filter(|r| r.fallback.is_some())
                    .cloned(),
                _ => None,
            };
            finish.error = Some(e);
            let retry_after = finish.retry_after;
            match fallback.as_ref().and_then(|r| r.fallback.as_ref()) {
                Some(fallback) => {
                    finish.status = fallback.status.as_u16();
                    let body = ResponseBody::full(fallback.body.clone(), Some(finish));
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
                    let status = match (e, &rate_limit) {
                        (ProxyError::RateLimited, Some(r)) => r.status,
                        _ => e.status(),
                    };
                    finish.status = status.as_u16();
                    error::response_with_status(e, status, &request_id, retry_after, |b| {
                        ResponseBody::full(b, Some(finish))
                    })
                }
            }
        }
    };
    if let Some((name, value)) = attempts {
        response.headers_mut().insert(name, value);
    }
    if let Some(r) = rate_limit {
        r.apply(response.headers_mut());
    }
    response
}

/// Steps 2–5 of the pipeline: everything between the request head and the
/// response head that goes back to the client.
async fn forward(
    cx: &ConnCtx,
    snapshot: &Snapshot,
    req: Request<Incoming>,
    finish: &mut Finish,
) -> Result<upstream::Exchange, ProxyError> {
    headers::check_framing(req.headers()).map_err(|_| ProxyError::BadFraming)?;
    let listener = snapshot.listener(cx.local).ok_or(ProxyError::NoRoute)?;
    if head_too_large(&req, listener.max_header_bytes) {
        return Err(ProxyError::HeadersTooLarge);
    }

    let host = route::request_host(req.uri(), req.headers()).unwrap_or("");
    let host: std::borrow::Cow<str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    };
    let route = listener
        .routes
        .iter()
        .find(|r| {
            r.matcher
                .matches(&host, req.uri().path(), req.method(), req.headers())
        })
        .ok_or(ProxyError::NoRoute)?;
    finish.route = Some(route.clone());
    admit(cx, route, req.headers(), finish).await?;

    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let (Some(limit), Some(len)) = (listener.max_body_bytes, declared)
        && len > limit
    {
        return Err(ProxyError::BodyTooLarge);
    }

    // A split route sends this request to one of its clusters: by the split
    // key's hash (sticky) or at random.
    if route.targets.len() > 1 {
        let draw = match &route.split_key {
            Some(k) => affinity_key(k, &req, cx.client),
            None => next_random(),
        };
        finish.target = route.target(draw);
    }
    let cluster = &route.targets[finish.target].cluster;
    let policy = route.retry.as_ref().unwrap_or(&cluster.retry);
    finish.attempts_header = policy.attempts_header.clone();
    let pick = PickInput {
        now: finish.start,
        key: cluster
            .hash_key
            .as_ref()
            .map_or(0, |k| affinity_key(k, &req, cx.client)),
        random: next_random(),
        avoid: Vec::new(),
    };
    // Session affinity: the endpoint the client's cookie names, while it may
    // take requests; otherwise a fresh pick and a new cookie.
    let token = cluster
        .affinity_cookie
        .as_deref()
        .and_then(|name| cookie(req.headers(), name))
        .map(str::to_owned);

    let deadline = request_deadline(cluster, req.headers(), finish.start);
    let (mut parts, body) = req.into_parts();
    rewrite_request(&mut parts, cx.client, &finish.request_id);
    let mut body = UpstreamBody::new(body, listener.max_body_bytes, finish.bytes_in.clone());

    // Whether the request may be sent a second time once it was sent: an
    // idempotent method (or an Idempotency-Key) and a body we kept. A
    // connect failure is retried regardless: nothing was sent.
    let mut repeatable = is_repeatable(&parts.method, &parts.headers);
    let mut kept = None;
    if !hyper::body::Body::is_end_stream(&body) {
        if repeatable && policy.retries_after_send() {
            kept = body.keep(policy.buffer_body_max).await.map_err(|e| {
                if e.is::<body::TooLarge>() {
                    ProxyError::BodyTooLarge
                } else {
                    ProxyError::ClientBody
                }
            })?;
        }
        repeatable &= kept.is_some();
    }

    enter_cluster(cx, cluster, finish).await?;
    let outbound = Outbound {
        parts,
        body,
        kept,
        repeatable,
        deadline,
    };
    send_with_retries(cx, cluster, policy, outbound, pick, token, finish).await
}

/// The route's own gates, before anything is read of the body: the service
/// level against its `min_level`, then its rate limits (which may hold a
/// request for its turn, or refuse it).
async fn admit(
    cx: &ConnCtx,
    route: &Route,
    headers: &http::HeaderMap,
    finish: &mut Finish,
) -> Result<(), ProxyError> {
    if !cx.shared.service_level.current().serves(route.min_level) {
        return Err(ProxyError::Degraded);
    }
    let Some(limits) = &route.rate_limits else {
        return Ok(());
    };
    match limits.check(headers, cx.client.ip(), finish.start).await {
        Ruling::Pass { report, delay } => {
            finish.rate_limit = report;
            // A shaping leaky bucket: the request waits for its turn.
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(())
        }
        Ruling::Refuse(report) => {
            finish.rate_limit = Some(report);
            Err(ProxyError::RateLimited)
        }
    }
}

/// The cluster's own limits: over the adaptive limit, shed at once; over
/// the bulkhead, wait in its queue or be refused. A refused client may come
/// back in a second. The places taken are held by `finish` until the
/// response is over.
async fn enter_cluster(
    cx: &ConnCtx,
    cluster: &Cluster,
    finish: &mut Finish,
) -> Result<(), ProxyError> {
    let guard = &cluster.guard;
    let service_level = &cx.shared.service_level;
    if let Some(adaptive) = &guard.adaptive {
        finish.adaptive = Some(adaptive.admit().ok_or_else(|| {
            finish.retry_after = Some(Duration::from_secs(1));
            service_level.count(true);
            ProxyError::Shed
        })?);
    }
    finish.bulkhead = guard.enter().await.map_err(|e| {
        finish.retry_after = Some(Duration::from_secs(1));
        service_level.count(true);
        match e {
            Rejected::QueueFull => ProxyError::BulkheadFull,
            Rejected::Timeout => ProxyError::QueueTimeout,
        }
    })?;
    service_level.count(false);
    guard.deposit(finish.start);
    Ok(())
}

/// The request as it goes upstream, and what decides whether it may go
/// twice.
struct Outbound {
    parts: http::request::Parts,
    /// The client's body, streamed on the first try...
    body: UpstreamBody,
    /// ...or kept whole, and sent again on each try.
    kept: Option<bytes::Bytes>,
    /// May be sent again once sent (idempotent, body kept or none).
    repeatable: bool,
    deadline: Instant,
}

/// Step 6: tries until one is worth answering with. Each try goes to an
/// endpoint the breakers admit; its result is recorded (latency, outlier
/// detection, breakers, adaptive limit), and the retry policy says whether
/// to answer or to try again, elsewhere, after a backoff, within the
/// deadline and the budget.
async fn send_with_retries(
    cx: &ConnCtx,
    cluster: &Arc<Cluster>,
    policy: &RetryPolicy,
    mut out: Outbound,
    mut pick: PickInput,
    token: Option<String>,
    finish: &mut Finish,
) -> Result<upstream::Exchange, ProxyError> {
    let pinned = token
        .as_deref()
        .and_then(|t| cluster.pinned(t, finish.start));
    let mut tried = Vec::new();
    let mut next = choose(cluster, &mut pick, pinned, &tried, finish.start);
    loop {
        let (endpoint, cluster_pass, endpoint_pass) = match next {
            Ok(chosen) => chosen,
            Err((e, wait)) => {
                finish.retry_after = wait;
                return Err(e);
            }
        };
        finish.attempts += 1;
        let try_start = Instant::now();
        let result = try_once(cx, cluster, endpoint, policy, &mut out, try_start, finish).await;
        let now = Instant::now();
        let took = now - try_start;
        // The client's side failed (body too large, went away): nothing to
        // judge the endpoint by, nothing to retry.
        let Some(outcome) = try_result(&result) else {
            return result;
        };
        record_try(cx, cluster, endpoint, outcome, took, now);
        if let Some(adaptive) = &finish.adaptive {
            // Overload shows as timeouts, refused connections, 503 and 429:
            // their latency measures nothing.
            let dropped = matches!(
                outcome,
                TryResult::Timeout | TryResult::ConnectFailure | TryResult::Status(503 | 429)
            );
            adaptive.record(took, dropped, now);
        }
        for pass in [cluster_pass, endpoint_pass].into_iter().flatten() {
            pass.record(outcome, took, now);
        }

        let retry_after = match &result {
            Ok(ex) => ex
                .head
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Err(_) => None,
        };
        let verdict = policy.verdict(
            finish.attempts,
            outcome,
            out.repeatable,
            retry_after,
            SystemTime::now(),
        );
        if verdict == Verdict::Answer {
            return answer(cluster, endpoint, token.as_deref(), finish, result);
        }
        tried.push(endpoint.address);
        pick.random = next_random();
        pick.now = now;
        next = choose(cluster, &mut pick, None, &tried, now);
        let elsewhere = next
            .as_ref()
            .is_ok_and(|(e, ..)| e.address != endpoint.address);
        let wait = match verdict {
            // Nothing was sent: another endpoint may take it at once.
            Verdict::Retry if outcome == TryResult::ConnectFailure && elsewhere => Duration::ZERO,
            Verdict::RetryAfter(wait) => wait,
            _ => policy.backoff.delay(finish.attempts, next_random()),
        };
        // A retry with nowhere to go, one that could not finish before the
        // deadline, or one the budget refuses, is not made: the client gets
        // this answer.
        if next.is_err() || now + wait >= out.deadline || !cluster.guard.withdraw(now) {
            return answer(cluster, endpoint, token.as_deref(), finish, result);
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

/// One try: the request to `endpoint`, within the per-try timeout and the
/// deadline, telling the endpoint how long is left when the cluster says so.
async fn try_once(
    cx: &ConnCtx,
    cluster: &Arc<Cluster>,
    endpoint: &Endpoint,
    policy: &RetryPolicy,
    out: &mut Outbound,
    start: Instant,
    finish: &mut Finish,
) -> Result<upstream::Exchange, ProxyError> {
    if let Some(name) = &cluster.deadline_header {
        let left = out.deadline.saturating_duration_since(start).as_millis();
        out.parts
            .headers
            .insert(name, HeaderValue::from(left as u64));
    }
    let until = policy
        .per_try_timeout
        .map_or(out.deadline, |t| out.deadline.min(start + t));
    let mut replay;
    let body = match &out.kept {
        Some(bytes) => {
            replay = UpstreamBody::kept(bytes.clone());
            &mut replay
        }
        None => &mut out.body,
    };
    let in_flight = endpoint.live.begin();
    let exchange = upstream::send(cluster, endpoint, cx.worker, &out.parts, body);
    let result =
        match tokio::time::timeout_at(tokio::time::Instant::from_std(until), exchange).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::UpstreamTimeout),
        };
    finish.upstream = Some(Upstream {
        cluster: cluster.clone(),
        endpoint: endpoint.address,
        upstream_time: finish.start.elapsed(),
        in_flight,
    });
    result
}

/// What a try's result means for the breakers and the retry policy; `None`
/// when the client, not the endpoint, failed.
fn try_result(result: &Result<upstream::Exchange, ProxyError>) -> Option<TryResult> {
    match result {
        Ok(ex) => Some(TryResult::Status(ex.head.status.as_u16())),
        Err(ProxyError::UpstreamConnect | ProxyError::UpstreamConnectTimeout) => {
            Some(TryResult::ConnectFailure)
        }
        Err(ProxyError::UpstreamTimeout) => Some(TryResult::Timeout),
        Err(ProxyError::UpstreamFailed) => Some(TryResult::Reset),
        Err(_) => None,
    }
}

/// An endpoint and the passes of the cluster's breaker and its own.
type Chosen<'c> = (&'c Endpoint, Option<Pass>, Option<Pass>);

/// An endpoint for the next try, admitted by the cluster's breaker and its
/// own: the pinned one if given, otherwise a pick that avoids the endpoints
/// already tried when another is available.
fn choose<'c>(
    cluster: &'c Cluster,
    pick: &mut PickInput,
    mut pinned: Option<&'c Endpoint>,
    tried: &[SocketAddr],
    now: Instant,
) -> Result<Chosen<'c>, (ProxyError, Option<Duration>)> {
    let cluster_pass = match &cluster.guard.breaker {
        Some(b) => Some(
            b.allow(now)
                .map_err(|wait| (ProxyError::BreakerOpen, Some(wait)))?,
        ),
        None => None,
    };
    // Endpoints whose own breaker refused this request.
    let mut refused: Vec<SocketAddr> = Vec::new();
    for _ in 0..=cluster.endpoints.len() {
        let endpoint = match pinned.take() {
            Some(e) => e,
            None => {
                pick.avoid.clear();
                pick.avoid.extend_from_slice(tried);
                pick.avoid.extend_from_slice(&refused);
                let fresh = cluster.pick(pick);
                match fresh {
                    Some(e) => e,
                    None if !tried.is_empty() => {
                        pick.avoid.clone_from(&refused);
                        cluster.pick(pick).ok_or((ProxyError::NoEndpoint, None))?
                    }
                    None => return Err((ProxyError::NoEndpoint, None)),
                }
            }
        };
        match &endpoint.breaker {
            None => return Ok((endpoint, cluster_pass, None)),
            Some(b) => match b.allow(now) {
                Ok(pass) => return Ok((endpoint, cluster_pass, Some(pass))),
                Err(_) => refused.push(endpoint.address),
            },
        }
    }
    Err((ProxyError::NoEndpoint, None))
}

/// Feeds one try's result to the endpoint's latency estimate and outlier
/// detector.
fn record_try(
    cx: &ConnCtx,
    cluster: &Cluster,
    endpoint: &Endpoint,
    outcome: TryResult,
    took: Duration,
    now: Instant,
) {
    let ok = match outcome {
        TryResult::Status(s) => s < 500,
        _ => false,
    };
    endpoint.live.tries.record(ok, now);
    if cluster.balance.uses_latency() {
        endpoint.live.latency.record(took, ok, now);
    }
    if let Some(cfg) = &cluster.outlier {
        let max = cluster.max_ejection_percent;
        if let Some((reason, duration)) = endpoint.live.record_response(ok, cfg, max, cluster, now)
        {
            tracing::warn!(
                cluster = %cluster.name,
                endpoint = %endpoint.address,
                "endpoint ejected for {duration:?}: {reason}"
            );
            let labels = EndpointLabels {
                cluster: cluster.name.to_string(),
                endpoint: endpoint.address.to_string(),
            };
            cx.shared.metrics.ejections.get_or_create(&labels).inc();
        }
    }
}

/// The try's result goes to the client; a success re-issues the affinity
/// cookie when the request landed elsewhere than its cookie said.
fn answer(
    cluster: &Cluster,
    endpoint: &Endpoint,
    token: Option<&str>,
    finish: &mut Finish,
    result: Result<upstream::Exchange, ProxyError>,
) -> Result<upstream::Exchange, ProxyError> {
    if let (Some(name), Ok(_)) = (&cluster.affinity_cookie, &result) {
        let current = cluster.affinity_token(endpoint.address);
        if current.is_some() && current != token {
            let value = format!("{name}={}; Path=/; HttpOnly", current.unwrap_or(""));
            finish.set_cookie = HeaderValue::from_str(&value).ok();
        }
    }
    result
}

/// When Levee gives up on the request: the cluster's `response_timeout`
/// from its arrival, or sooner if the client's deadline header (the
/// cluster's `deadline_header`, in milliseconds) says so.
fn request_deadline(cluster: &Cluster, headers: &http::HeaderMap, start: Instant) -> Instant {
    let own = start + cluster.response_timeout;
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
fn affinity_key(key: &HashKey, req: &Request<Incoming>, client: SocketAddr) -> u64 {
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

thread_local! {
    static RANDOM: std::cell::Cell<u64> = std::cell::Cell::new({
        // Distinct per thread and per process run; quality needs are modest
        // (spreading picks), so a seeded xorshift is enough.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        (t ^ (u64::from(std::process::id()) << 32)) | 1
    });
}

/// A random number for balancers that draw (random, p2c, peak_ewma).
fn next_random() -> u64 {
    RANDOM.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// The head as the backend should see it: origin-form URI, HTTP/1.1, no
/// hop-by-hop headers, forwarding headers and the request id added, `Host`
/// kept as the client sent it (or the target's, for an absolute-form URI).
fn rewrite_request(parts: &mut http::request::Parts, client: SocketAddr, request_id: &HeaderValue) {
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
    headers::strip_hop_by_hop(&mut parts.headers);
    // We stream the body as soon as the backend connection is up; the
    // client's `Expect` was answered by us.
    parts.headers.remove(header::EXPECT);
    headers::add_forwarding(
        &mut parts.headers,
        client.ip().to_canonical(),
        "http",
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

fn head_too_large(req: &Request<Incoming>, max: usize) -> bool {
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

struct Upstream {
    cluster: Arc<Cluster>,
    endpoint: SocketAddr,
    upstream_time: Duration,
    in_flight: InFlight,
}

/// Completes a request when its response body is dropped.
pub struct Finish {
    cx: Arc<ConnCtx>,
    snapshot: Arc<Snapshot>,
    start: Instant,
    method: Method,
    uri: Uri,
    request_id: HeaderValue,
    status: u16,
    error: Option<ProxyError>,
    route: Option<Arc<Route>>,
    /// Which of the route's targets (clusters) took the request.
    target: usize,
    /// A session affinity cookie to set on the response.
    set_cookie: Option<HeaderValue>,
    upstream: Option<Upstream>,
    /// Tries made upstream, and the header that reports them.
    attempts: u32,
    attempts_header: Option<http::HeaderName>,
    /// When a refused client may come back (open breaker, full bulkhead).
    retry_after: Option<Duration>,
    /// The cluster's bulkhead slot and adaptive-limit place, held until the
    /// response is over.
    bulkhead: Option<Permit>,
    adaptive: Option<AdaptivePass>,
    /// The rate-limit headers for the answer (and its status if refused).
    rate_limit: Option<Report>,
    bytes_in: Arc<AtomicU64>,
}

impl Finish {
    /// `complete`: the response body was sent to the end. `conn`: the
    /// upstream connection, if its response was read whole and it may be
    /// reused.
    pub fn finish(self: Box<Self>, bytes_out: u64, complete: bool, conn: Option<upstream::Conn>) {
        let shared = &self.cx.shared;
        if let (Some(up), true, Some(conn)) = (&self.upstream, complete, conn) {
            up.in_flight.live().pool.put(
                self.cx.worker,
                conn,
                up.cluster.pool_max_idle,
                up.cluster.pool_idle_timeout,
            );
        }
        let total = self.start.elapsed();
        let metrics = self
            .route
            .as_ref()
            .map_or(&self.snapshot.unrouted, |r| &r.targets[self.target].metrics);
        metrics.record(self.status, total.as_secs_f64());
        if let Some(e) = self.error {
            shared.metrics.error(e.code());
        }
        if let Some(log) = &shared.access_log {
            log.log(&LogRecord {
                time: SystemTime::now() - total,
                client: self.cx.client.ip().to_canonical(),
                method: self.method.clone(),
                path: self
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned(),
                status: self.status,
                route: self.route.as_ref().map(|r| r.name.clone()),
                cluster: self
                    .route
                    .as_ref()
                    .map(|r| r.targets[self.target].cluster.name.clone()),
                endpoint: self.upstream.as_ref().map(|u| u.endpoint),
                upstream_ms: self
                    .upstream
                    .as_ref()
                    .map(|u| u.upstream_time.as_secs_f64() * 1000.0),
                total_ms: total.as_secs_f64() * 1000.0,
                bytes_in: self.bytes_in.load(Ordering::Relaxed),
                bytes_out,
                request_id: self.request_id.to_str().unwrap_or("").to_owned(),
                error: self.error.map(ProxyError::code),
                attempts: self.attempts,
            });
        }
        self.cx.phase.idle();
    }
}
