//! A finished request as OTLP spans (`observe::otlp`): the request's own
//! span (SERVER, child of the caller's span when the request came with a
//! `traceparent`) and one CLIENT span per try, whose span id is the parent
//! id the endpoint got. Built only for a sampled request when export is on.

use std::time::{Duration, SystemTime};

use crate::observe::otlp::{SpanRecord, Value};

use super::record::{Arrival, Outcome};

/// One try, as its span needs it.
pub struct TrySpan {
    /// The span id sent to the endpoint in `traceparent`.
    pub span_id: u64,
    pub endpoint: std::net::SocketAddr,
    pub start: SystemTime,
    pub took: Duration,
    /// The endpoint's status, or why the try failed.
    pub result: Result<u16, String>,
}

/// The request's span and its tries' spans, `total` after its arrival.
pub fn build(
    arrival: &Arrival,
    outcome: &Outcome,
    upstream_error: Option<&str>,
    total: Duration,
    client: std::net::IpAddr,
) -> Vec<SpanRecord> {
    let trace = &arrival.trace;
    let end = SystemTime::now();
    let request_span = trace.new_span();
    let route = outcome.routed.as_ref().map(|r| r.route.name.clone());
    let cluster = outcome
        .routed
        .as_ref()
        .and_then(|r| Some(r.cluster()?.name.to_string()));
    let method = arrival.method.as_str();
    let status = outcome.status;
    let mut attributes = vec![
        ("http.request.method", Value::Str(method.to_owned())),
        ("url.path", Value::Str(arrival.uri.path().to_owned())),
        ("http.response.status_code", Value::Int(i64::from(status))),
        (
            "client.address",
            Value::Str(client.to_canonical().to_string()),
        ),
        (
            "levee.request_id",
            Value::Str(arrival.request_id.to_str().unwrap_or("").to_owned()),
        ),
        ("levee.attempts", Value::Int(i64::from(outcome.tries.count))),
    ];
    if let Some(r) = &route {
        attributes.push(("http.route", Value::Str(r.to_string())));
    }
    if let Some(e) = outcome.error {
        attributes.push(("error.type", Value::Str(e.code().to_owned())));
    }
    // A server span is an error on 5xx only: a 4xx is the client's.
    let error = (status >= 500).then(|| match (outcome.error, upstream_error) {
        (Some(e), Some(why)) => format!("{status} {}: {why}", e.code()),
        (Some(e), None) => format!("{status} {}", e.code()),
        (None, _) => format!("{status} from the endpoint"),
    });
    let mut spans = Vec::with_capacity(1 + outcome.tries.spans.len());
    spans.push(SpanRecord {
        trace_id: trace.trace_id,
        span_id: request_span,
        parent: trace.parent,
        name: match &route {
            Some(r) => format!("{method} {r}"),
            None => method.to_owned(),
        },
        server: true,
        start: end.checked_sub(total).unwrap_or(end),
        end,
        error,
        attributes,
    });
    for (n, t) in outcome.tries.spans.iter().enumerate() {
        let mut attributes = vec![
            ("server.address", Value::Str(t.endpoint.ip().to_string())),
            ("server.port", Value::Int(i64::from(t.endpoint.port()))),
            ("levee.try", Value::Int(n as i64 + 1)),
        ];
        if let Some(c) = &cluster {
            attributes.push(("levee.cluster", Value::Str(c.clone())));
        }
        let error = match &t.result {
            Ok(s) => {
                attributes.push(("http.response.status_code", Value::Int(i64::from(*s))));
                (*s >= 500).then(|| format!("{s} from {}", t.endpoint))
            }
            Err(e) => {
                attributes.push(("error.type", Value::Str(e.clone())));
                Some(e.clone())
            }
        };
        spans.push(SpanRecord {
            trace_id: trace.trace_id,
            span_id: t.span_id,
            parent: Some(request_span),
            name: match &cluster {
                Some(c) => format!("{method} {c}"),
                None => method.to_owned(),
            },
            server: false,
            start: t.start,
            end: t.start + t.took,
            error,
            attributes,
        });
    }
    spans
}
