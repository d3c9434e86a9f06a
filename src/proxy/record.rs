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
use crate::resilience::policy::RetryPolicy;
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
    /// When the first one started.
    pub first: Option<Instant>,
    /// The one whose result the client gets.
    pub last: Option<Try>,
    /// Why the last one failed, with its cause.
    pub error: Option<String>,
    /// Each try, when the request's spans are exported (else empty).
    pub spans: Vec<super::spans::TrySpan>,
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

    /// `bytes_out`: the response body bytes handed to the client.
    pub fn finish(self: Box<Self>, bytes_out: u64) {
        let Completion {
            cx,
            snapshot,
            arrival,
            mut outcome,
            body_error,
        } = *self;
        let upstream_error = body_error.or(outcome.tries.error.take());
        let now = Instant::now();
        let total = now.saturating_duration_since(arrival.start);
        let metrics = outcome
            .routed
            .as_ref()
            .and_then(|r| r.route.metrics(r.target))
            .unwrap_or(&snapshot.unrouted);
        metrics.record(outcome.status, total.as_secs_f64());
        if let Some(slo) = outcome.routed.as_ref().and_then(|r| r.route.slo.as_ref()) {
            slo.record(outcome.status, total, crate::slo::unix_now());
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
