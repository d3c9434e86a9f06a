//! OTLP export of spans: one span per request (kind SERVER) and one per try
//! upstream (kind CLIENT, its child), with the W3C trace ids Levee already
//! parsed or started (`observe::trace`): a try's span id is the parent id
//! the endpoint got in its `traceparent`, so the endpoint's own spans hang
//! under it.
//!
//! Never in a request's way: finished spans are offered to a bounded queue
//! with `try_send` (a full queue drops them, counted in
//! `levee_otlp_spans_dropped_total{reason="queue_full"}`); one task on the
//! control thread takes them in batches (`batch_size`, or what came within
//! `interval`), encodes an `ExportTraceServiceRequest` (protobuf, the
//! `opentelemetry-proto` types and prost) and POSTs it to the collector over
//! HTTP/1.1, reusing the connection. A dead or slow collector costs the
//! batch (dropped after `timeout`, counted), never a request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::mpsc;

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// A finished span, in Levee's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent: Option<u64>,
    pub name: String,
    /// SERVER (the request) or CLIENT (a try).
    pub server: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    /// `Some(why)`: the span failed (status ERROR with this message).
    pub error: Option<String>,
    pub attributes: Vec<(&'static str, Value)>,
}

/// The share of traces kept: by trace id, as OpenTelemetry's
/// `TraceIdRatioBased` sampler does (the low 64 bits against the ratio), so
/// every instance on a trace's path keeps the same ones.
pub fn sampled(trace_id: u128, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    ((trace_id as u64) >> 1) < bound
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(match value {
                Value::Str(s) => any_value::Value::StringValue(s),
                Value::Int(i) => any_value::Value::IntValue(i),
            }),
        }),
        ..KeyValue::default()
    }
}

/// The export request for a batch, protobuf-encoded.
pub fn encode(spans: Vec<SpanRecord>, service_name: &str) -> Vec<u8> {
    let spans = spans
        .into_iter()
        .map(|s| Span {
            trace_id: s.trace_id.to_be_bytes().to_vec(),
            span_id: s.span_id.to_be_bytes().to_vec(),
            parent_span_id: s.parent.map_or_else(Vec::new, |p| p.to_be_bytes().to_vec()),
            name: s.name,
            kind: if s.server {
                span::SpanKind::Server as i32
            } else {
                span::SpanKind::Client as i32
            },
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(s.end),
            attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
            status: Some(match s.error {
                Some(message) => Status {
                    message,
                    code: status::StatusCode::Error as i32,
                },
                None => Status::default(),
            }),
            ..Span::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::Str(service_name.to_owned()))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "levee".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `queue_full` or `export_failed`.
    pub reason: &'static str,
}

/// The exporter's counters. Registered by `observe::Metrics`.
#[derive(Clone, Default)]
pub struct OtlpMetrics {
    pub exported: Counter,
    pub dropped: Family<DropLabels, Counter>,
    pub requests_failed: Counter,
}

impl OtlpMetrics {
    pub fn register(registry: &mut Registry) -> OtlpMetrics {
        let m = OtlpMetrics::default();
        registry.register(
            "otlp_spans_exported",
            "Spans the OTLP collector accepted",
            m.exported.clone(),
        );
        registry.register(
            "otlp_spans_dropped",
            "Spans not exported: the queue was full (reason queue_full) or their export request failed (export_failed)",
            m.dropped.clone(),
        );
        registry.register(
            "otlp_export_failures",
            "OTLP export requests that failed (collector unreachable, slow past the timeout, or not 2xx)",
            m.requests_failed.clone(),
        );
        for reason in ["queue_full", "export_failed"] {
            let _ = m.dropped.get_or_create(&DropLabels { reason });
        }
        m
    }
}

/// The request side: offers finished spans to the queue, never waiting.
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    metrics: OtlpMetrics,
    ratio: f64,
    /// The export task's end of the queue and its settings, until the
    /// server takes them to start it (`task`).
    pending: std::sync::Mutex<Option<(mpsc::Receiver<SpanRecord>, Settings)>>,
}

/// The export task's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `host:port` and path of the collector's traces URL.
    pub authority: String,
    pub path: String,
    pub batch_size: usize,
    pub interval: Duration,
    pub timeout: Duration,
    pub service_name: String,
}

impl Exporter {
    /// The exporter `[tracing]` asks for; `None` without `otlp_endpoint`.
    pub fn from_config(
        c: &crate::config::otlp::TracingConfig,
        metrics: &OtlpMetrics,
    ) -> Option<Exporter> {
        let (authority, path) =
            crate::config::otlp::split_endpoint(c.otlp_endpoint.as_ref()?.get_ref())?;
        let settings = Settings {
            authority,
            path,
            batch_size: *c.batch_size.get_ref(),
            interval: c.interval.get(),
            timeout: c.timeout.get(),
            service_name: c.service_name.clone(),
        };
        let (tx, rx) = mpsc::channel((*c.queue_size.get_ref()).max(1));
        Some(Exporter {
            tx,
            metrics: metrics.clone(),
            ratio: *c.sample_ratio.get_ref(),
            pending: std::sync::Mutex::new(Some((rx, settings))),
        })
    }

    /// Whether the trace's spans are exported (`sample_ratio`).
    pub fn samples(&self, trace_id: u128) -> bool {
        sampled(trace_id, self.ratio)
    }

    /// The export loop to spawn, once.
    pub fn task(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let (rx, settings) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        Some(run(rx, settings, self.metrics.clone()))
    }

    /// Queues finished spans; what does not fit is dropped and counted.
    pub fn offer(&self, spans: impl IntoIterator<Item = SpanRecord>) {
        for s in spans {
            if self.tx.try_send(s).is_err() {
                self.metrics
                    .dropped
                    .get_or_create(&DropLabels {
                        reason: "queue_full",
                    })
                    .inc();
            }
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The export loop, for the life of the process.
pub async fn run(mut rx: mpsc::Receiver<SpanRecord>, settings: Settings, metrics: OtlpMetrics) {
    let mut conn: Option<Sender> = None;
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + settings.interval;
        while batch.len() < settings.batch_size {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = encode(batch, &settings.service_name);
        let sent = tokio::time::timeout(settings.timeout, post(&mut conn, &settings, body)).await;
        match sent {
            Ok(Ok(())) => {
                metrics.exported.inc_by(n);
            }
            Ok(Err(e)) => failed(&metrics, &mut conn, n, &e),
            Err(_) => failed(
                &metrics,
                &mut conn,
                n,
                &format!("no answer within {:?}", settings.timeout),
            ),
        }
    }
}

fn failed(metrics: &OtlpMetrics, conn: &mut Option<Sender>, n: u64, why: &str) {
    *conn = None;
    metrics.requests_failed.inc();
    metrics
        .dropped
        .get_or_create(&DropLabels {
            reason: "export_failed",
        })
        .inc_by(n);
    tracing::debug!(spans = n, "OTLP export failed: {why}");
}

/// One export request on the kept connection, or a new one.
async fn post(conn: &mut Option<Sender>, s: &Settings, body: Vec<u8>) -> Result<(), String> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = tokio::net::TcpStream::connect(&s.authority)
            .await
            .map_err(|e| format!("connect {}: {e}", s.authority))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Some(sender);
    }
    let Some(sender) = conn.as_mut() else {
        return Err("no connection".into());
    };
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::post(&s.path)
        .header(http::header::HOST, &s.authority)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // Read the answer whole so the connection can take the next batch.
    let _ = resp.into_body().collect().await;
    if !status.is_success() {
        return Err(format!("collector answered {status}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_by_trace_id_keeps_about_the_ratio() {
        assert!(sampled(7, 1.0));
        assert!(!sampled(u128::MAX, 0.0));
        let kept = (0..10_000u64)
            .filter(|i| {
                let id = u128::from(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                sampled(id, 0.25)
            })
            .count();
        assert!((2_200..2_800).contains(&kept), "{kept}");
    }

    #[test]
    fn encodes_what_a_collector_decodes() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let spans = vec![SpanRecord {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x1122,
            parent: Some(0x00f067aa0ba902b7),
            name: "GET api".into(),
            server: true,
            start: t,
            end: t + Duration::from_millis(3),
            error: Some("502".into()),
            attributes: vec![("http.response.status_code", Value::Int(502))],
        }];
        let bytes = encode(spans, "edge");
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        let rs = &req.resource_spans[0];
        let service = &rs.resource.as_ref().expect("resource").attributes[0];
        assert_eq!(service.key, "service.name");
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&s.parent_span_id), "00f067aa0ba902b7");
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 3_000_000);
        let st = s.status.as_ref().expect("status");
        assert_eq!(
            (st.code, st.message.as_str()),
            (status::StatusCode::Error as i32, "502")
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let metrics = OtlpMetrics::default();
        let config: crate::config::otlp::TracingConfig = toml::from_str(
            "otlp_endpoint = \"http://127.0.0.1:9/v1/traces\"\nqueue_size = 2\nbatch_size = 1",
        )
        .expect("parses");
        let exporter = Exporter::from_config(&config, &metrics).expect("configured");
        let s = SpanRecord {
            trace_id: 1,
            span_id: 1,
            parent: None,
            name: "x".into(),
            server: true,
            start: UNIX_EPOCH,
            end: UNIX_EPOCH,
            error: None,
            attributes: Vec::new(),
        };
        exporter.offer(vec![s.clone(), s.clone(), s.clone(), s]);
        let dropped = metrics
            .dropped
            .get_or_create(&DropLabels {
                reason: "queue_full",
            })
            .get();
        assert_eq!(dropped, 2);
    }
}
