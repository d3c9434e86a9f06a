//! gRPC through Levee, end to end, with real tonic servers and clients
//! (`support/grpc.rs`): per-call balancing over one client connection,
//! `grpc-status` (trailers-only, or in trailers after the head) judged by
//! retries, breakers and outlier detection, `grpc-timeout` as the deadline,
//! the gRPC health check, streaming in every direction, HTTP/2 over TLS to
//! the endpoints, and GOAWAY from endpoints under load.

#[path = "support/grpc.rs"]
mod grpc_kit;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use grpc_kit::{EchoClient, EchoRequest, GrpcBackend, GrpcOptions};
use support::*;
use tonic::{Code, Request};

const H2C_LISTENER: &str = "http2 = { enabled = true }";

/// One listener serving h2c, one cluster `app` of `backends` over
/// `protocol` (with `extra` cluster lines), one route; one worker, so that
/// connection counts are exact.
fn start(backends: &[&GrpcBackend], protocol: &str, extra: &[&str]) -> (Levee, SocketAddr) {
    let (cfg, listen) = config(backends, protocol, extra);
    (Levee::start(&cfg.build()), listen)
}

fn config(
    backends: &[&GrpcBackend],
    protocol: &str,
    extra: &[&str],
) -> (ConfigBuilder, SocketAddr) {
    let listen = free_addr();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let mut lines = vec![
        "balance = \"round_robin\"".to_owned(),
        format!("protocol = {protocol:?}"),
    ];
    lines.extend(extra.iter().map(|l| l.to_string()));
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[H2C_LISTENER])
        .cluster_with("app", &addrs, &lines)
        .route("all", "app")
        .set("server", "workers = 1");
    (cfg, listen)
}

fn request(message: &str) -> Request<EchoRequest> {
    Request::new(EchoRequest::new(message))
}

#[tokio::test]
async fn unary_calls_of_one_connection_are_balanced_per_call() {
    let backends = [
        GrpcBackend::start("g1"),
        GrpcBackend::start("g2"),
        GrpcBackend::start("g3"),
    ];
    let (levee, listen) = start(&backends.iter().collect::<Vec<_>>(), "h2c", &[]);
    let mut client = EchoClient::connect(listen).await;
    let mut by_server = std::collections::HashMap::<String, usize>::new();
    for i in 0..300 {
        let reply = client
            .unary(request(&format!("m{i}")))
            .await
            .expect("unary call")
            .into_inner();
        assert_eq!(reply.message, format!("m{i}"));
        *by_server.entry(reply.server).or_default() += 1;
    }
    for b in &backends {
        let n = by_server.get(b.name()).copied().unwrap_or(0);
        assert!((90..=110).contains(&n), "{} answered {n} of 300", b.name());
        assert_eq!(b.calls(), n);
        // One worker: one connection per endpoint carries every call.
        assert_eq!(b.connections(), 1, "{}", b.name());
    }
    let ok = levee
        .metric(
            "levee_grpc_calls_total",
            &[("route", "all"), ("code", "ok")],
        )
        .unwrap_or(0.0);
    assert_eq!(ok, 300.0);
    let reused = levee
        .metric("levee_upstream_requests_total", &[("connection", "reused")])
        .unwrap_or(0.0);
    assert!(reused >= 297.0, "reused {reused}");
}

#[tokio::test]
async fn unavailable_trailers_only_is_retried_elsewhere_and_ejects_the_endpoint() {
    let bad = GrpcBackend::start("bad");
    let good = GrpcBackend::start("good");
    bad.fail_with(Some(Code::Unavailable));
    let (levee, listen) = start(
        &[&bad, &good],
        "h2c",
        &[
            "outlier_detection = { consecutive_failures = 3, base_ejection = \"30s\", max_ejection_percent = 50 }",
            "endpoint_circuit_breaker = { consecutive_failures = 2, open_duration = \"30s\" }",
        ],
    );
    let mut client = EchoClient::connect(listen).await;
    for i in 0..20 {
        // POST, not idempotent: retried because UNAVAILABLE is in the
        // default retry_on and the message was kept whole.
        let reply = client
            .unary(request(&format!("m{i}")))
            .await
            .expect("every call succeeds elsewhere")
            .into_inner();
        assert_eq!(reply.server, "good");
    }
    let bad_calls = bad.calls();
    assert!(
        (1..=3).contains(&bad_calls),
        "the breaker and the ejection keep calls off the failing endpoint: {bad_calls}"
    );
    let retried = levee
        .metric("levee_upstream_retries_total", &[("kind", "grpc")])
        .unwrap_or(0.0);
    assert_eq!(retried, bad_calls as f64);
    let ep = bad.addr().to_string();
    let open = levee
        .metric(
            "levee_breaker_state",
            &[("cluster", "app"), ("endpoint", &ep), ("state", "open")],
        )
        .unwrap_or(0.0);
    let ejected = levee
        .metric(
            "levee_outlier_ejections_total",
            &[("cluster", "app"), ("endpoint", &ep)],
        )
        .unwrap_or(0.0);
    assert!(
        open == 1.0 || ejected >= 1.0,
        "breaker open {open}, ejections {ejected}"
    );
}

#[tokio::test]
async fn a_status_in_trailers_after_the_head_is_retried_or_judged_when_it_comes() {
    let bad = GrpcBackend::start("bad");
    let good = GrpcBackend::start("good");
    bad.fail_with(Some(Code::Unavailable));
    // Retries on: a status with no message before it is retried elsewhere.
    let (levee, listen) = start(&[&bad, &good], "h2c", &[]);
    let mut client = EchoClient::connect(listen).await;
    for i in 0..6 {
        let mut req = EchoRequest::new(&format!("s{i}"));
        req.count = 2;
        let mut stream = client
            .server_stream(Request::new(req))
            .await
            .expect("stream")
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = stream.message().await.expect("no error status") {
            got.push(m);
        }
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|m| m.server == "good"));
    }
    assert!(bad.calls() >= 1);
    let retried = levee
        .metric("levee_upstream_retries_total", &[("kind", "grpc")])
        .unwrap_or(0.0);
    assert_eq!(retried, bad.calls() as f64);
    drop(levee);

    // Without retries the client gets the status, and outlier detection
    // counts it when the trailers pass (what envoyproxy/envoy#8228 asks).
    let (levee, listen) = start(
        &[&bad, &good],
        "h2c",
        &[
            "retry = { max_attempts = 1 }",
            "outlier_detection = { consecutive_failures = 2, base_ejection = \"30s\", max_ejection_percent = 50 }",
        ],
    );
    let mut client = EchoClient::connect(listen).await;
    let before = bad.calls();
    let mut unavailable = 0;
    for i in 0..10 {
        let mut req = EchoRequest::new(&format!("t{i}"));
        req.count = 1;
        let mut stream = client
            .server_stream(Request::new(req))
            .await
            .expect("head")
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable);
                    unavailable += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(unavailable, 2, "two failures eject the endpoint");
    assert_eq!(bad.calls() - before, 2);
    let ep = bad.addr().to_string();
    let ejected = levee
        .metric(
            "levee_outlier_ejections_total",
            &[("cluster", "app"), ("endpoint", &ep)],
        )
        .unwrap_or(0.0);
    assert_eq!(ejected, 1.0);
    let counted = levee
        .metric(
            "levee_grpc_calls_total",
            &[("route", "all"), ("code", "unavailable")],
        )
        .unwrap_or(0.0);
    assert_eq!(counted, 2.0);
}

#[tokio::test]
async fn grpc_timeout_is_the_deadline_within_the_clusters_and_ends_deadline_exceeded() {
    let slow = GrpcBackend::start("slow");
    let dir = tempfile::tempdir().expect("dir");
    let log_path = dir.path().join("access.log");
    let (cfg, listen) = config(
        &[&slow],
        "h2c",
        &[
            "response_timeout = \"1500ms\"",
            "retry = { max_attempts = 1 }",
        ],
    );
    let cfg = cfg.set("access_log", "enabled = true").set(
        "access_log",
        &format!("path = {:?}", log_path.display().to_string()),
    );
    let levee = Levee::start(&cfg.build());
    // hyper's bare client: a tonic Channel would end the call itself.
    let mut client = EchoClient::connect_raw(listen).await;
    let slow_request = |timeout: Duration| {
        let mut req = Request::new(EchoRequest {
            message: "slow".into(),
            delay_ms: 8000,
            count: 0,
        });
        req.set_timeout(timeout);
        req
    };
    // The client's 300ms.
    let started = Instant::now();
    let status = client
        .unary(slow_request(Duration::from_millis(300)))
        .await
        .expect_err("deadline");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.metadata().get("x-request-id").is_some(),
        "Levee's own answer: {status:?}"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1400),
        "{took:?}"
    );
    // The endpoint was told the time left, in milliseconds.
    let told = slow.last_timeout().expect("grpc-timeout sent upstream");
    let ms: u64 = told
        .strip_suffix('m')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{told:?}"));
    assert!((1..=300).contains(&ms), "{told}");
    // A longer grpc-timeout is capped by the cluster's response_timeout.
    let started = Instant::now();
    let status = client
        .unary(slow_request(Duration::from_secs(30)))
        .await
        .expect_err("deadline");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let counted = levee
        .metric(
            "levee_grpc_calls_total",
            &[("route", "all"), ("code", "deadline_exceeded")],
        )
        .unwrap_or(0.0);
    assert_eq!(counted, 2.0);
    let logged = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || logged()
            .matches("\"grpc_status\":4")
            .count()
            == 2),
        "{}",
        logged()
    );
}

fn state_gauge(levee: &Levee, addr: SocketAddr, state: &str) -> f64 {
    let ep = addr.to_string();
    levee
        .metric(
            "levee_endpoint_state",
            &[("cluster", "app"), ("endpoint", &ep), ("state", state)],
        )
        .unwrap_or(-1.0)
}

#[tokio::test]
async fn a_grpc_health_check_marks_a_not_serving_endpoint_down_and_back() {
    let g1 = GrpcBackend::start("g1");
    let g2 = GrpcBackend::start("g2");
    let (levee, listen) = start(
        &[&g1, &g2],
        "h2c",
        &[
            "health_check = { type = \"grpc\", interval = \"200ms\", timeout = \"200ms\", jitter = \"0s\", healthy_threshold = 1, unhealthy_threshold = 1 }",
        ],
    );
    g1.set_serving(false);
    assert!(
        wait_until(Duration::from_secs(10), || state_gauge(
            &levee,
            g1.addr(),
            "unhealthy"
        ) == 1.0),
        "g1 NOT_SERVING is unhealthy"
    );
    assert_eq!(state_gauge(&levee, g2.addr(), "healthy"), 1.0);
    let mut client = EchoClient::connect(listen).await;
    for i in 0..10 {
        let reply = client
            .unary(request(&format!("h{i}")))
            .await
            .expect("call")
            .into_inner();
        assert_eq!(reply.server, "g2");
    }
    g1.set_serving(true);
    assert!(
        wait_until(Duration::from_secs(10), || state_gauge(
            &levee,
            g1.addr(),
            "healthy"
        ) == 1.0),
        "g1 SERVING again"
    );
}

#[tokio::test]
async fn streams_flow_both_ways_at_once() {
    let g = GrpcBackend::start("g");
    let (_levee, listen) = start(&[&g], "h2c", &[]);
    let mut client = EchoClient::connect(listen).await;

    // Bidirectional: each reply comes before the next message is sent, so
    // the request body cannot be sent whole first.
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    let messages = tokio_stream::wrappers::ReceiverStream::new(rx);
    tx.send(EchoRequest::new("one")).await.expect("send");
    let mut replies = client.bidi(messages).await.expect("bidi").into_inner();
    for word in ["one", "two", "three"] {
        if word != "one" {
            tx.send(EchoRequest::new(word)).await.expect("send");
        }
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("a reply before the client half-closes")
            .expect("reply")
            .expect("a message");
        assert_eq!(reply.message, word);
    }
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(5), replies.message())
        .await
        .expect("the end");
    assert!(matches!(end, Ok(None)), "{end:?}");

    // Server streaming: every reply, in order.
    let mut req = EchoRequest::new("s");
    req.count = 50;
    let mut stream = client
        .server_stream(Request::new(req))
        .await
        .expect("server stream")
        .into_inner();
    let mut n = 0;
    while let Some(m) = stream.message().await.expect("message") {
        assert_eq!(m.message, format!("s {n}"));
        n += 1;
    }
    assert_eq!(n, 50);

    // Client streaming: every message arrives.
    let words: Vec<EchoRequest> = (0..20)
        .map(|i| EchoRequest::new(&format!("w{i}")))
        .collect();
    let joined = client
        .client_stream(tokio_stream::iter(words))
        .await
        .expect("client stream")
        .into_inner();
    let expected: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
    assert_eq!(joined.message, expected.join(","));
}

#[tokio::test]
async fn h2_over_tls_reaches_a_tonic_tls_server_and_its_health_service() {
    let ca = tls_upstream::TestCa::new("grpc test CA");
    let leaf = ca.leaf(&["127.0.0.1"]);
    let g = GrpcBackend::start_with(
        "tls",
        GrpcOptions {
            tls: Some((leaf.cert_pem.clone(), leaf.key_pem.clone())),
            ..GrpcOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = tls_upstream::write_pem(dir.path(), "ca.pem", &ca.cert_pem);
    let tls = format!("tls = {{ ca_file = {ca_file:?} }}");
    let (levee, listen) = start(
        &[&g],
        "h2",
        &[
            &tls,
            "health_check = { type = \"grpc\", interval = \"200ms\", timeout = \"200ms\", jitter = \"0s\" }",
        ],
    );
    let mut client = EchoClient::connect(listen).await;
    for i in 0..20 {
        let reply = client
            .unary(request(&format!("t{i}")))
            .await
            .expect("call over TLS")
            .into_inner();
        assert_eq!(reply.message, format!("t{i}"));
    }
    assert_eq!(g.calls(), 20);
    let ep = g.addr().to_string();
    let handshakes = levee
        .metric(
            "levee_upstream_tls_handshakes_total",
            &[("endpoint", &ep), ("result", "ok")],
        )
        .unwrap_or(0.0);
    assert!(handshakes >= 1.0, "{handshakes}");
    g.set_serving(false);
    assert!(
        wait_until(Duration::from_secs(10), || state_gauge(
            &levee,
            g.addr(),
            "unhealthy"
        ) == 1.0),
        "the health check speaks h2 over TLS too"
    );
}

#[tokio::test]
async fn goaway_from_endpoints_under_load_loses_no_call() {
    let g1 = GrpcBackend::start("g1");
    let g2 = GrpcBackend::start("g2");
    // Each connection is closed gracefully after 25 calls: hundreds of
    // GOAWAYs arrive while calls are in flight on those connections.
    g1.goaway_after(Some(25));
    g2.goaway_after(Some(25));
    let (levee, listen) = start(&[&g1, &g2], "h2c", &[]);
    let client = EchoClient::connect(listen).await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let mut client = client.clone();
        tasks.spawn(async move {
            for i in 0..50 {
                let msg = format!("{t}-{i}");
                let reply = client
                    .unary(request(&msg))
                    .await
                    .unwrap_or_else(|s| panic!("call {msg} lost: {s:?}"))
                    .into_inner();
                assert_eq!(reply.message, msg);
            }
        });
    }
    tasks.join_all().await;
    assert_eq!(g1.calls() + g2.calls(), 400);
    assert!(
        g1.connections() + g2.connections() >= 400 / 25,
        "connections {} + {}",
        g1.connections(),
        g2.connections()
    );
    let closed = levee
        .metric(
            "levee_upstream_h2_streams_per_connection_count",
            &[("cluster", "app")],
        )
        .unwrap_or(0.0);
    assert!(closed >= 10.0, "connections closed and counted: {closed}");
    let unprocessed = levee
        .metric("levee_upstream_retries_total", &[("kind", "unprocessed")])
        .unwrap_or(0.0);
    println!("unprocessed calls sent again: {unprocessed}");
}

#[tokio::test]
async fn a_saturated_connection_gets_a_sibling_at_the_endpoints_stream_limit() {
    let g = GrpcBackend::start_with(
        "g",
        GrpcOptions {
            max_concurrent_streams: Some(2),
            ..GrpcOptions::default()
        },
    );
    let (_levee, listen) = start(&[&g], "h2c", &[]);
    let client = EchoClient::connect(listen).await;
    // One call first, so the endpoint's SETTINGS are known.
    client.clone().unary(request("first")).await.expect("call");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..6 {
        let mut client = client.clone();
        tasks.spawn(async move {
            let req = Request::new(EchoRequest {
                message: format!("c{i}"),
                delay_ms: 500,
                count: 0,
            });
            client.unary(req).await.expect("call").into_inner()
        });
    }
    let replies = tasks.join_all().await;
    assert_eq!(replies.len(), 6);
    // 6 concurrent calls, 2 streams per connection: 3 connections (the
    // pool's cap is 4).
    assert_eq!(g.connections(), 3);
}
