//! What is counted and logged of each request: the facts of its arrival
//! (`Arrival`), what the pipeline's steps returned (`Outcome`: the route, the
//! places held in the cluster, the tries, the answer's status), and, once the
//! response body is over, the metrics and the access log line
//! (`Completion::finish`).
//!
//! Timings, so that each means one thing:
//! - `total`: from the request's arrival to the end of its response;
//! - `wait`: from the arrival to the first try's start: the route's gates
//!   (a leaky-bucket delay), the cluster's bulkhead queue, reading a body
//!   kept for retries;
//! - per try (the one the client's answer came from): `connect` (a new
//!   connection, `None` on a pooled one), `head` (try start → response
//!   head) and `upstream` (try start → end of the exchange: the response
//!   body read whole, or the failure).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::header::HeaderValue;
use http::{Method, Uri};

use super::ConnCtx;
use super::error::ProxyError;
use crate::cluster::guard::AdaptivePass;
use crate::cluster::{Cluster, InFlight};
use crate::observe::LogRecord;
use crate::resilience::bulkhead::Permit;
use crate::resilience::policy::{RetryPolicy, TryResult};
use crate::route::Route;
use crate::snapshot::Snapshot;

/// The request as it arrived, fixed before the pipeline runs.
pub struct Arrival {
    pub start: Instant,
    pub method: Method,
    pub uri: Uri,
    pub request_id: HeaderValue,
    /// Request body bytes read from the client so far.
    pub bytes_in: Arc<AtomicU64>,
    /// Its W3C trace context (`observe::trace`).
    pub trace: crate::observe::trace::TraceContext,
}

/// The route a request matched and which of its targets (clusters) took it.
#[derive(Clone)]
pub struct Routed {
    pub route: Arc<Route>,
    pub target: usize,
}

impl Routed {
    /// `None` on a route that answers itself (`redirect`, `respond`).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.route.targets.get(self.target).map(|t| &t.cluster)
    }

    /// The route's retry policy, or its cluster's.
    pub fn policy(&self) -> Option<&RetryPolicy> {
        self.route
            .retry
            .as_ref()
            .or_else(|| self.cluster().map(|c| &c.retry))
    }
}

/// The places a request holds in its cluster until its response is over:
/// a bulkhead slot and a place under the adaptive limit.
#[derive(Default)]
pub struct Places {
    pub bulkhead: Option<Permit>,
    pub adaptive: Option<AdaptivePass>,
}

/// One try, as the log reports it.
pub struct Try {
    pub endpoint: SocketAddr,
    pub start: Instant,
    /// Opening a new connection (`None`: a pooled one was used).
    pub connect: Option<Duration>,
    /// Try start → response head; `None` when the try failed.
    pub head: Option<Duration>,
    /// Try start → the try's result (its head, or its failure).
    pub took: Duration,
    /// Counts the request as in flight to its endpoint until the response
    /// is over.
    pub in_flight: InFlight,
}

/// The tries made upstream.
#[derive(Default)]
pub struct Tries {
    pub count: u32,
    /// Of those, tries the endpoint provably did not process that did not
    /// use up an attempt (gRFC A6's transparent retry; at most
    /// `tries::TRANSPARENT_RETRIES`).
    pub transparent: u32,
    /// When the first one started.
    pub first: Option<Instant>,
    /// The one whose result the client gets.
    pub last: Option<Try>,
    /// Why the last one failed, with its cause.
    pub error: Option<String>,
    /// The injected faults (chaos) that hit the request: its route's, then
    /// each try's.
    pub faults: Vec<String>,
    /// How a fault shapes the response body (the route's, else the last
    /// try's).
    pub shape: Option<crate::chaos::shape::Shape>,
    /// Each try, when the request's spans are exported (else empty).
    pub spans: Vec<super::spans::TrySpan>,
}

/// A gRPC call's status: known from the answer's head (trailers-only, or
/// Levee's own answer), or awaited in the trailers, and then judged for
/// the breakers and outlier detection of the endpoint that answered
/// (`pending`), which the head alone could not judge.
#[derive(Default)]
pub struct GrpcCall {
    pub status: Option<u8>,
    pub pending: Option<PendingTry>,
}

/// The try whose result the trailers will tell.
pub struct PendingTry {
    pub cluster: Arc<Cluster>,
    pub pending: crate::cluster::Pending,
    pub start: Instant,
}

impl GrpcCall {
    /// The trailers (or the end of the body without them) came: the
    /// status they carry judges the try. `broken`: the body broke off.
    pub fn judge(
        &mut self,
        trailers: Option<&http::HeaderMap>,
        broken: bool,
        metrics: &crate::observe::Metrics,
    ) {
        if let Some(t) = trailers {
            self.status = super::grpc::status(t).or(self.status);
        }
        let Some(p) = self.pending.take() else {
            return;
        };
        let result = match (self.status, broken) {
            (Some(0), _) => TryResult::Status(200),
            (Some(code), _) => TryResult::Grpc(code),
            (None, true) => TryResult::Reset,
            // The client went away before the end: nothing to judge by
            // (the passes go back to the breakers unrecorded).
            (None, false) => return,
        };
        let now = Instant::now();
        let took = now.saturating_duration_since(p.start);
        p.cluster
            .record_pending(p.pending, result, took, now, metrics);
    }
}

/// How the pipeline ended for a request.
pub struct Outcome {
    /// The status the client gets.
    pub status: u16,
    /// Levee's own answer, when it made one.
    pub error: Option<ProxyError>,
    pub routed: Option<Routed>,
    pub places: Places,
    pub tries: Tries,
    /// A gRPC call: its status, as known or awaited.
    pub grpc: Option<GrpcCall>,
}

/// What completes a request when its response body is over: created with the
/// answer, carried by the response body, finished when that is dropped.
pub struct Completion {
    pub cx: Arc<ConnCtx>,
    pub snapshot: Arc<Snapshot>,
    pub arrival: Arrival,
    pub outcome: Outcome,
    /// The endpoint broke off the response body.
    pub body_error: Option<String>,
    /// A WebSocket tunnel: how it ended (`tunnel::End::as_str`).
    pub tunnel: Option<&'static str>,
}

/// Which successful requests the access log keeps (`success_sample`).
static SUCCESSES: crate::observe::access_log::Sampler = crate::observe::access_log::Sampler::new();

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Completion {
    /// The endpoint broke off the response body: the client got a truncated
    /// response, and the access log says why.
    pub fn body_failed(&mut self, e: &crate::upstream::body::BodyError) {
        self.body_error = Some(e.to_string());
    }

    /// A trailers frame went to the client: a gRPC call's status.
    pub fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(grpc) = self.outcome.grpc.as_mut() {
            grpc.judge(Some(trailers), false, &self.cx.shared.metrics);
        }
    }

    /// `bytes_out`: the response body bytes handed to the client.
    pub fn finish(self: Box<Self>, bytes_out: u64) {
        let Completion {
            cx,
            snapshot,
            arrival,
            mut outcome,
            body_error,
            tunnel,
        } = *self;
        if let Some(grpc) = outcome.grpc.as_mut() {
            grpc.judge(None, body_error.is_some(), &cx.shared.metrics);
        }
        let grpc_status = outcome.grpc.as_ref().and_then(|g| g.status);
        // A call no route took (Levee's own UNIMPLEMENTED, or a refusal
        // before routing) is counted too, under route "" as in
        // `levee_requests_total`.
        if let Some(code) = grpc_status {
            let labels = crate::observe::grpc::GrpcLabels {
                route: outcome
                    .routed
                    .as_ref()
                    .map_or_else(|| Arc::from(""), |r| r.route.name.clone()),
                code: super::grpc::code_name(code),
            };
            cx.shared.metrics.grpc.calls.get_or_create(&labels).inc();
        }
        let upstream_error = body_error.or(outcome.tries.error.take());
        let now = Instant::now();
        let total = now.saturating_duration_since(arrival.start);
        let metrics = outcome
            .routed
            .as_ref()
            .and_then(|r| r.route.metrics(r.target))
            .unwrap_or(&snapshot.unrouted);
        // A tunnel's request is measured to its 101: its life says nothing
        // of the route's latency (and would spend the SLO's budget).
        let answered = tunnel
            .and(outcome.tries.last.as_ref())
            .and_then(|t| Some((t.start + t.head?).saturating_duration_since(arrival.start)))
            .unwrap_or(total);
        metrics.record(outcome.status, answered.as_secs_f64());
        if let Some(route) = outcome.routed.as_ref().map(|r| &r.route) {
            let unix = crate::slo::unix_now();
            if let Some(slo) = &route.slo {
                slo.record(outcome.status, answered, unix);
            }
            if let Some(stats) = &route.stats {
                stats.record(unix, outcome.status, answered);
            }
        }
        let shared = &cx.shared;
        if let Some(otlp) = &shared.otlp
            && otlp.samples(arrival.trace.trace_id)
        {
            otlp.offer(super::spans::build(
                &arrival,
                &outcome,
                upstream_error.as_deref(),
                total,
                cx.client.ip(),
            ));
        }
        if let Some(e) = outcome.error {
            shared.metrics.error(e.code());
        }
        // The slowest requests and the faults that hit them, for a chaos
        // experiment's report: kept only while fault injection is enabled.
        if snapshot.config.chaos.enabled
            && let Some(routed) = &outcome.routed
        {
            shared
                .faults
                .slowest
                .offer(&routed.route.name, total, SystemTime::now(), || {
                    slow_request(&outcome, &arrival, &upstream_error, total)
                });
        }
        if let Some(log) = &shared.access_log {
            let tries = &outcome.tries;
            let last = tries.last.as_ref();
            log.log_as(
                &LogRecord {
                    time: SystemTime::now() - total,
                    client: cx.client.ip().to_canonical(),
                    method: arrival.method,
                    path: arrival
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_owned(),
                    status: outcome.status,
                    route: outcome.routed.as_ref().map(|r| r.route.name.clone()),
                    cluster: outcome
                        .routed
                        .as_ref()
                        .and_then(|r| Some(r.cluster()?.name.clone())),
                    endpoint: last.map(|t| t.endpoint),
                    wait_ms: tries
                        .first
                        .map(|first| ms(first.saturating_duration_since(arrival.start))),
                    connect_ms: last.and_then(|t| t.connect).map(ms),
                    head_ms: last.and_then(|t| t.head).map(ms),
                    // A try that answered lasts until its body is read whole.
                    upstream_ms: last.map(|t| match t.head {
                        Some(_) => ms(now.saturating_duration_since(t.start)),
                        None => ms(t.took),
                    }),
                    total_ms: ms(total),
                    bytes_in: arrival.bytes_in.load(Ordering::Relaxed),
                    bytes_out,
                    request_id: arrival.request_id.to_str().unwrap_or("").to_owned(),
                    error: outcome.error.map(ProxyError::code),
                    upstream_error,
                    attempts: tries.count,
                    grpc_status,
                    tunnel,
                    trace_id: arrival.trace.trace_id_hex(),
                    tls: cx.tls.as_ref().map(|t| crate::observe::access_log::TlsLog {
                        version: t.version,
                        sni: t.sni.as_deref().map(str::to_owned),
                        client_subject: t
                            .client_subject
                            .as_ref()
                            .and_then(|s| s.to_str().ok())
                            .map(str::to_owned),
                    }),
                },
                &snapshot.config.access_log,
                &SUCCESSES,
            );
        }
        drop(outcome);
        cx.cycle.finished();
    }
}

/// A finished request as the slowest requests' list shows it.
fn slow_request(
    outcome: &Outcome,
    arrival: &Arrival,
    upstream_error: &Option<String>,
    total: Duration,
) -> crate::chaos::slowest::SlowRequest {
    crate::chaos::slowest::SlowRequest {
        at: crate::observe::access_log::rfc3339_millis(SystemTime::now() - total),
        total_ms: (ms(total) * 10.0).round() / 10.0,
        status: outcome.status,
        method: arrival.method.to_string(),
        path: arrival.uri.path().to_owned(),
        route: outcome.routed.as_ref().map(|r| r.route.name.to_string()),
        endpoint: outcome.tries.last.as_ref().map(|t| t.endpoint),
        tries: outcome.tries.count,
        faults: outcome.tries.faults.clone(),
        error: outcome
            .error
            .map(|e| e.code().to_owned())
            .or_else(|| upstream_error.clone()),
    }
}
