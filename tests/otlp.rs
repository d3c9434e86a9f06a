//! OTLP span export end to end: Levee sends one span per request and one
//! per try to a test collector (`tests/support/otlp.rs`) that decodes the
//! real OTLP/HTTP protobuf requests; the ids match the `traceparent` the
//! backend saw; errors carry status ERROR; and a collector that hangs or
//! refuses never slows or fails a request (its spans are dropped, counted).
//! Run with `cargo test --test otlp`.

mod support;

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use support::otlp::{Collector, hanging_collector};
use support::*;

const T: Duration = Duration::from_secs(10);
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let v = s
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match v {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

fn config(
    listen: std::net::SocketAddr,
    app: &Backend,
    dead: std::net::SocketAddr,
    tracing: &[&str],
) -> String {
    let mut b = ConfigBuilder::new()
        .listener("main", listen)
        .cluster_with(
            "app",
            &[app.addr()],
            &[
                "retry = { max_attempts = 2, retry_statuses = [503], backoff_base = \"1ms\", backoff_max = \"2ms\" }",
                "outlier_detection = { enabled = false }",
            ],
        )
        .cluster_with(
            "dead",
            &[dead],
            &["retry = { max_attempts = 1 }", "outlier_detection = { enabled = false }"],
        )
        .route_with("api", "app", &["path_prefix = \"/api\""])
        .route_with("broken", "dead", &["path_prefix = \"/broken\""]);
    for line in tracing {
        b = b.set("tracing", line);
    }
    b.build()
}

#[test]
fn a_request_and_its_tries_are_spans_with_the_ids_the_backend_saw() {
    let collector = Collector::start();
    let app = Backend::start("app");
    let (_dead_socket, dead) = refusing_addr();
    let listen = free_addr();
    let url = format!("otlp_endpoint = {:?}", collector.url());
    let levee = Levee::start(&config(
        listen,
        &app,
        dead,
        &[
            &url,
            "batch_size = 4",
            "interval = \"100ms\"",
            "service_name = \"edge-test\"",
        ],
    ));

    // The first try answers 503 and is retried; the second answers 200.
    app.fail_next(1, 503);
    let r =
        http_request(listen, "GET", "/api/x", &[("traceparent", PARENT)], b"", T).expect("request");
    assert_eq!(r.status, 200);
    let seen: Vec<String> = app
        .recorded()
        .iter()
        .filter_map(|q| q.header("traceparent").map(str::to_owned))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let of_trace = || -> Vec<Span> {
        collector
            .spans()
            .into_iter()
            .filter(|s| hex(&s.trace_id) == trace)
            .collect()
    };
    assert!(
        wait_until(T, || of_trace().len() >= 3),
        "{:?}",
        collector.spans()
    );
    let spans = of_trace();
    assert_eq!(spans.len(), 3, "{spans:?}");
    let request = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    assert_eq!(request.name, "GET api");
    assert_eq!(
        hex(&request.parent_span_id),
        "00f067aa0ba902b7",
        "the caller's span"
    );
    assert_eq!(
        request.status.as_ref().map(|s| s.code),
        Some(StatusCode::Unset as i32)
    );
    assert_eq!(
        attr(request, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(request, "http.route").as_deref(), Some("api"));
    assert_eq!(attr(request, "levee.attempts").as_deref(), Some("2"));
    assert!(request.end_time_unix_nano >= request.start_time_unix_nano);
    let mut tries: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    tries.sort_by_key(|s| attr(s, "levee.try"));
    assert_eq!(tries.len(), 2);
    for (t, parent) in tries.iter().zip(&seen) {
        assert_eq!(t.name, "GET app");
        // The try's span is the parent the backend got.
        assert_eq!(parent, &format!("00-{trace}-{}-01", hex(&t.span_id)));
        assert_eq!(
            t.parent_span_id, request.span_id,
            "a child of the request span"
        );
        assert!(t.start_time_unix_nano >= request.start_time_unix_nano);
    }
    let first = tries[0].status.as_ref().expect("status");
    assert_eq!(first.code, StatusCode::Error as i32);
    assert!(first.message.contains("503"), "{first:?}");
    assert_eq!(
        attr(tries[0], "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(
        tries[1].status.as_ref().map(|s| s.code),
        Some(StatusCode::Unset as i32)
    );

    // Levee's own error answer: a 502 without a traceparent starts a trace;
    // the request span is an error, and so is its try.
    let r = http_get(listen, "/broken").expect("request");
    assert_eq!(r.status, 502);
    let broken = || -> Vec<Span> {
        let all = collector.spans();
        let Some(req) = all
            .iter()
            .find(|s| attr(s, "url.path").as_deref() == Some("/broken"))
            .cloned()
        else {
            return Vec::new();
        };
        all.into_iter()
            .filter(|s| s.trace_id == req.trace_id)
            .collect()
    };
    assert!(
        wait_until(T, || broken().len() >= 2),
        "{:?}",
        collector.spans()
    );
    let spans = broken();
    let request = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("server span");
    assert_eq!(request.name, "GET broken");
    assert!(request.parent_span_id.is_empty(), "Levee started the trace");
    assert_eq!(request.trace_id.len(), 16);
    let st = request.status.as_ref().expect("status");
    assert_eq!(st.code, StatusCode::Error as i32);
    assert!(st.message.starts_with("502"), "{st:?}");
    let t = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("try span");
    assert_eq!(
        t.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert!(attr(t, "error.type").is_some(), "{t:?}");

    assert_eq!(collector.undecodable(), 0);
    assert!(
        collector.services().iter().all(|s| s == "edge-test"),
        "{:?}",
        collector.services()
    );
    // Counted once the collector has answered the export: the spans can
    // be at the collector a moment before.
    let exported = || levee.metric("levee_otlp_spans_exported_total", &[]);
    assert!(
        wait_until(T, || exported().is_some_and(|n| n >= 5.0)),
        "{:?}",
        exported()
    );
}

/// Sends `n` requests one after another; returns how long they took, all
/// having answered 200.
fn requests(listen: std::net::SocketAddr, n: usize) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        let r = http_get(listen, "/api/y").expect("request");
        assert_eq!(r.status, 200);
    }
    started.elapsed()
}

#[test]
fn a_dead_or_hanging_collector_never_slows_or_fails_a_request() {
    let app = Backend::start("app");
    let (_dead_socket, dead) = refusing_addr();

    // A collector that accepts and never answers, with a long timeout: an
    // exporter in the request's way would take 30 s per batch.
    let (_hanging, hang) = hanging_collector();
    let listen = free_addr();
    let url = format!("otlp_endpoint = \"http://{hang}/v1/traces\"");
    let levee = Levee::start(&config(
        listen,
        &app,
        dead,
        &[
            &url,
            "batch_size = 4",
            "queue_size = 8",
            "interval = \"50ms\"",
            "timeout = \"30s\"",
        ],
    ));
    let took = requests(listen, 200);
    assert!(took < Duration::from_secs(20), "200 requests took {took:?}");
    let full = || {
        levee
            .metric(
                "levee_otlp_spans_dropped_total",
                &[("reason", "queue_full")],
            )
            .unwrap_or(0.0)
    };
    assert!(
        full() > 0.0,
        "spans beyond the queue are dropped and counted"
    );
    drop(levee);

    // A collector that refuses connections: each batch fails and is counted.
    let (_refusing, refused) = refusing_addr();
    let listen = free_addr();
    let url = format!("otlp_endpoint = \"http://{refused}/v1/traces\"");
    let levee = Levee::start(&config(
        listen,
        &app,
        dead,
        &[&url, "batch_size = 4", "interval = \"50ms\""],
    ));
    let took = requests(listen, 50);
    assert!(took < Duration::from_secs(20), "50 requests took {took:?}");
    assert!(
        wait_until(T, || levee
            .metric(
                "levee_otlp_spans_dropped_total",
                &[("reason", "export_failed")]
            )
            .is_some_and(|n| n > 0.0)),
        "{}",
        levee.metrics_text()
    );
    assert!(
        levee
            .metric("levee_otlp_export_failures_total", &[])
            .is_some_and(|n| n > 0.0)
    );
}

#[test]
fn a_wrong_tracing_table_is_refused_with_its_place() {
    for (line, want) in [
        (
            "otlp_endpoint = \"https://c:4318/v1/traces\"",
            "tracing.otlp_endpoint",
        ),
        (
            "sample_ratio = 1.5",
            "tracing.sample_ratio: sample_ratio 1.5 is not a share",
        ),
        ("batch_size = 0", "tracing.batch_size"),
    ] {
        let text = ConfigBuilder::new()
            .listener("main", free_addr())
            .cluster("a", &[free_addr()])
            .route("r", "a")
            .set("tracing", line)
            .build();
        let (code, _, err) = Levee::check(&text);
        assert_ne!(code, 0, "{text}");
        assert!(err.contains(want), "{want:?} in {err}");
        let n = text
            .lines()
            .position(|l| l == line)
            .map(|i| i + 1)
            .unwrap_or(0);
        assert!(err.contains(&format!(":{n}:")), "line {n} in {err}");
    }
}
