//! The request pipeline, top to bottom:
//!
//! 1. take the current snapshot and the request's id;
//! 2. refuse what cannot be proxied safely (ambiguous framing, oversized
//!    head or body);
//! 3. match a route on the listener, pick an endpoint in its cluster;
//! 4. rewrite the head for the backend (hop-by-hop out, forwarding in);
//! 5. send it over a pooled or new connection, bounded by the timeouts;
//! 6. stream the response back; when the body is done, `Finish` records the
//!    request (metrics, access log) and returns the connection to the pool.

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
use crate::cluster::{Cluster, InFlight, PickInput};
use crate::config::HashKey;
use crate::observe::LogRecord;
use crate::observe::metrics::{EndpointLabels, KindLabels};
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
        bytes_in: Arc::default(),
        snapshot: snapshot.clone(),
        cx: cx.clone(),
    });
    let forwarded = if ambiguous_framing {
        Err(ProxyError::BadFraming)
    } else {
        forward(&cx, &snapshot, req, &mut finish).await
    };
    match forwarded {
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
            finish.status = e.status().as_u16();
            finish.error = Some(e);
            error::response(e, &request_id, |b| ResponseBody::full(b, Some(finish)))
        }
    }
}

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
    let mut pick = PickInput {
        now: finish.start,
        key: cluster
            .hash_key
            .as_ref()
            .map_or(0, |k| affinity_key(k, &req, cx.client)),
        random: next_random(),
        avoid: None,
    };
    // Session affinity: the endpoint the client's cookie names, while it may
    // take requests; otherwise a fresh pick and a new cookie.
    let token = cluster
        .affinity_cookie
        .as_deref()
        .and_then(|name| cookie(req.headers(), name))
        .map(str::to_owned);
    let pinned = token
        .as_deref()
        .and_then(|t| cluster.pinned(t, finish.start, None));
    let mut endpoint = match pinned {
        Some(e) => e,
        None => cluster.pick(&pick).ok_or(ProxyError::NoEndpoint)?,
    };

    let (mut parts, body) = req.into_parts();
    rewrite_request(&mut parts, cx.client, &finish.request_id);
    let mut body = UpstreamBody::new(body, listener.max_body_bytes, finish.bytes_in.clone());
    let deadline = tokio::time::Instant::from_std(finish.start + cluster.response_timeout);

    let mut retried = false;
    loop {
        let in_flight = endpoint.live.begin();
        let exchange = upstream::send(cluster, endpoint, cx.worker, &parts, &mut body);
        let result = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::UpstreamTimeout),
        };
        let upstream_time = finish.start.elapsed();
        let ok = match &result {
            Ok(ex) => !ex.head.status.is_server_error(),
            Err(e) => !e.is_upstream_failure(),
        };
        let now = finish.start + upstream_time;
        if cluster.balance.uses_latency() {
            endpoint.live.latency.record(upstream_time, ok, now);
        }
        if let Some(cfg) = &cluster.outlier {
            let max = cluster.max_ejection_percent;
            if let Some((reason, duration)) =
                endpoint.live.record_response(ok, cfg, max, cluster, now)
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
        finish.upstream = Some(Upstream {
            cluster: cluster.clone(),
            endpoint: endpoint.address,
            upstream_time,
            in_flight,
        });
        match result {
            // Nothing was sent, so another endpoint may take the request
            // whatever its method: one more try.
            Err(e) if e.is_connect_failure() && !retried => {
                pick.avoid = Some(endpoint.address);
                match cluster.pick(&pick) {
                    Some(next) => {
                        let reason = KindLabels {
                            kind: "connect_failure",
                        };
                        cx.shared.metrics.retries.get_or_create(&reason).inc();
                        endpoint = next;
                        retried = true;
                    }
                    None => return Err(e),
                }
            }
            other => {
                if let (Some(name), Ok(_)) = (&cluster.affinity_cookie, &other) {
                    let current = cluster.affinity_token(endpoint.address);
                    if current.is_some() && current != token.as_deref() {
                        let value = format!("{name}={}; Path=/; HttpOnly", current.unwrap_or(""));
                        finish.set_cookie = HeaderValue::from_str(&value).ok();
                    }
                }
                return other;
            }
        }
    }
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
            });
        }
        self.cx.phase.idle();
    }
}
