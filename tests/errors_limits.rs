//! End-to-end tests of the errors Levee answers itself and of the limits a
//! listener enforces, over real sockets against the real binary:
//!
//! - routing and upstream failures: 404 `no_route`, 503 `no_endpoint`,
//!   502 `upstream_connect`, 504 `upstream_timeout`, a backend dying mid-body;
//! - body and head limits: 413 (declared and streamed), 431 (Levee's own
//!   check and hyper's hard stop);
//! - request-smuggling defence: ambiguous framing and broken request lines
//!   answered 400 with the connection closed;
//! - connection timeouts: slowloris (408), header timeout counted from the
//!   first byte of a request, idle keep-alive timeout;
//! - the strict front door: two `Host` lines, an HTTP/1.1 request without
//!   `Host`, `CONNECT`, the HTTP/2 preface and a TLS ClientHello on a plain
//!   HTTP/1 listener;
//! - `max_connections`.
//!
//! Every Levee-made error is checked for its status, its JSON body (`status`,
//! `error`, `request_id` equal to the `x-request-id` header) and its count in
//! `/metrics`. Each test starts its own backend and Levee on free ports.
//!
//! Run with `cargo test --test errors_limits`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

/// Bound for anything that should be quick (requests, metric polling).
const T: Duration = Duration::from_secs(5);

/// One listener `main` on `listen` (with `listener_extra` lines), one
/// cluster `app` on `endpoints` (with `cluster_extra` lines), one route
/// sending everything there. Two workers keep parallel tests light.
fn config(
    listen: SocketAddr,
    listener_extra: &[&str],
    endpoints: &[SocketAddr],
    cluster_extra: &[&str],
) -> ConfigBuilder {
    ConfigBuilder::new()
        .set("server", "workers = 2")
        .listener_with("main", listen, listener_extra)
        .cluster_with("app", endpoints, cluster_extra)
        .route("all", "app")
}

fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_request(addr, "GET", path, &[], b"", T)
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// Asserts `r` is a Levee-made error: `status`, a JSON body with `status`,
/// `error` = `code`, a message, and `request_id` equal to the `x-request-id`
/// response header. Returns the body.
#[track_caller]
fn assert_levee_error(r: &HttpResponse, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(
        r.status,
        status,
        "status; headers {:?}, body {:?}",
        r.headers,
        r.text()
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "content-type; body {:?}",
        r.text()
    );
    let v = r.json().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["status"], status, "JSON status in {v}");
    assert_eq!(v["error"], code, "JSON error code in {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "JSON message in {v}"
    );
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id header in {:?}", r.headers));
    assert!(!id.is_empty(), "empty x-request-id");
    assert_eq!(
        v["request_id"], id,
        "JSON request_id vs x-request-id header"
    );
    v
}

/// Waits (bounded) until the metric sum equals `want`: counters are bumped
/// when the response body is dropped, which may be just after the client
/// has read it.
#[track_caller]
fn wait_metric(levee: &Levee, name: &str, labels: &[(&str, &str)], want: f64) {
    let mut last = None;
    let ok = wait_until(T, || {
        last = levee.metric(name, labels);
        last == Some(want)
    });
    assert!(
        ok,
        "{name}{labels:?}: want {want}, last saw {last:?}\n{}",
        levee.metrics_text()
    );
}

/// `levee_errors_total{kind}`.
#[track_caller]
fn wait_errors(levee: &Levee, kind: &str, want: f64) {
    wait_metric(levee, "levee_errors_total", &[("kind", kind)], want);
}

/// Sum of `levee_errors_total` over several kinds (0 when none exists).
fn errors_of(levee: &Levee, kinds: &[&str]) -> f64 {
    let text = levee.metrics_text();
    kinds
        .iter()
        .filter_map(|k| metric_sum(&text, "levee_errors_total", &[("kind", k)]))
        .sum()
}

/// Waits until the sum of `levee_errors_total` over `kinds` is `want`.
#[track_caller]
fn wait_errors_any(levee: &Levee, kinds: &[&str], want: f64) {
    let mut last = 0.0;
    let ok = wait_until(T, || {
        last = errors_of(levee, kinds);
        last == want
    });
    assert!(
        ok,
        "levee_errors_total{{kind in {kinds:?}}}: want {want}, last saw {last}\n{}",
        levee.metrics_text()
    );
}

/// The body of the first response in `bytes` (everything after the head).
fn body_after_head(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    &bytes[end + 4..]
}

/// A fresh connection still gets a normal answer from the backend.
#[track_caller]
fn assert_still_serving(listen: SocketAddr, backend: &str) {
    let r = get(listen, "/");
    assert_eq!(r.status, 200, "fresh request after the error: {}", r.text());
    assert_eq!(r.header("x-backend"), Some(backend));
}

// ---------------------------------------------------------------------------
// 1. Routing and upstream failures
// ---------------------------------------------------------------------------

#[test]
fn no_route_is_404_with_json_error() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .set("server", "workers = 2")
        .listener("main", listen)
        .cluster("app", &[b.addr()])
        .route_with("api", "app", &["path_prefix = \"/api\""]);
    let levee = Levee::start(&cfg.build());

    assert_eq!(get(listen, "/api/x").status, 200, "the route itself works");
    assert_levee_error(&get(listen, "/elsewhere"), 404, "no_route");

    // A request id chosen by the client is the one the error reports.
    let r = http_request(
        listen,
        "GET",
        "/elsewhere",
        &[("X-Request-Id", "client-chosen-42")],
        b"",
        T,
    )
    .expect("GET /elsewhere");
    assert_levee_error(&r, 404, "no_route");
    assert_eq!(r.header("x-request-id"), Some("client-chosen-42"));

    assert_eq!(b.requests(), 1, "unrouted requests never reach the backend");
    wait_errors(&levee, "no_route", 2.0);
}

#[test]
fn an_error_before_a_small_body_is_read_keeps_the_connection() {
    // The 404 is answered without reading the body; the body (plain and
    // chunked) is then read and dropped, so the connection carries the
    // next request as the table in docs/operations.md says ("kept").
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .set("server", "workers = 1")
        .listener("main", listen)
        .cluster("app", &[b.addr()])
        .route_with("api", "app", &["path_prefix = \"/api\""]);
    let _levee = Levee::start(&cfg.build());
    let mut c = RawConn::connect(listen).expect("connect");
    c.write_all(b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .expect("write");
    assert_levee_error(&c.read_response(T).expect("a 404"), 404, "no_route");
    c.write_all(
        b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .expect("write");
    assert_levee_error(&c.read_response(T).expect("a 404"), 404, "no_route");
    c.write_all(b"GET /api/after HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let r = c
        .read_response(T)
        .expect("the next request on the same connection");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.recorded().len(), 1, "only /api/after reached the backend");
}

#[test]
fn cluster_without_endpoints_is_503() {
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[], &[], &[]).build());

    assert_levee_error(&get(listen, "/"), 503, "no_endpoint");
    wait_errors(&levee, "no_endpoint", 1.0);
}

#[test]
fn endpoint_refusing_connections_is_502_and_counted() {
    // A port nobody listens on: connects are refused at once.
    let (_held, dead) = refusing_addr();
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[], &[dead], &["connect_timeout = \"1s\""]).build());

    // Two requests on one keep-alive connection: a 502 does not close it.
    let mut c = RawConn::connect(listen).expect("connect");
    let mut ids = Vec::new();
    for _ in 0..2 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: levee.test\r\n\r\n")
            .expect("write");
        let r = c.read_response(T).expect("a response");
        let v = assert_levee_error(&r, 502, "upstream_connect");
        ids.push(v["request_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_ne!(ids[0], ids[1], "each request gets its own id");

    wait_errors(&levee, "upstream_connect", 2.0);
    // Each request tried twice (the default max_attempts = 2): there is no
    // other endpoint to go to, so the retry went to the same one.
    wait_metric(
        &levee,
        "levee_upstream_connect_errors_total",
        &[("cluster", "app"), ("endpoint", &dead.to_string())],
        4.0,
    );
}

#[test]
fn backend_slower_than_response_timeout_is_504() {
    let b = Backend::start("slow");
    let listen = free_addr();
    let levee =
        Levee::start(&config(listen, &[], &[b.addr()], &["response_timeout = \"300ms\""]).build());

    let start = Instant::now();
    let r = get(listen, "/?delay=5s");
    let took = start.elapsed();
    assert_levee_error(&r, 504, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "504 after {took:?}, want between 300ms and 2s"
    );
    wait_errors(&levee, "upstream_timeout", 1.0);

    // The endpoint is not broken for requests that are fast enough.
    assert_still_serving(listen, "slow");
}

#[test]
fn backend_closing_mid_response_truncates_and_levee_recovers() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let _levee = Levee::start(&config(listen, &[], &[b.addr()], &[]).build());

    let r = send_raw(
        listen,
        b"GET /close-mid?len=1000&sent=500 HTTP/1.1\r\nHost: levee.test\r\n\r\n",
        T,
    );
    assert_eq!(
        r.status,
        Some(200),
        "the head was already on its way: {r:?}"
    );
    assert!(
        r.closed,
        "Levee must close the client connection when the upstream body breaks: {r:?}"
    );
    assert!(
        r.parse().is_err(),
        "the client must see an incomplete response, got a complete one: {:?}",
        r.text
    );
    let body = body_after_head(&r.bytes);
    assert!(
        body.len() < 1000,
        "at most part of the body arrives ({} bytes)",
        body.len()
    );

    assert_still_serving(listen, "b1");
    assert_eq!(b.requests(), 2);
}

// ---------------------------------------------------------------------------
// 2. Body limits
// ---------------------------------------------------------------------------

const BODY_LIMIT: &str = "max_body_bytes = 1024";

/// A chunked request head for `/upload`.
const CHUNKED_UPLOAD: &[u8] =
    b"POST /upload HTTP/1.1\r\nHost: levee.test\r\nTransfer-Encoding: chunked\r\n\r\n";

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[test]
fn declared_body_over_limit_is_413_and_closes() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[BODY_LIMIT], &[b.addr()], &[]).build());

    // Content-Length above the limit, with the start of the body: refused
    // from the head alone, before anything reaches the backend.
    let mut c = RawConn::connect(listen).expect("connect");
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: levee.test\r\nContent-Length: 4096\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'x'; 100]);
    c.write_all(&req).expect("write");
    let r = c.read_response(T).expect("a response");
    assert_levee_error(&r, 413, "body_too_large");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.read_until_close(T),
        "the connection must be closed after a 413 (an unread body is on the wire)"
    );

    // One byte above the limit is refused too.
    let r = http_request(listen, "POST", "/upload", &[], &[b'y'; 1025], T).expect("POST 1025");
    assert_levee_error(&r, 413, "body_too_large");

    assert_eq!(b.requests(), 0, "refused bodies never reach the backend");
    wait_errors(&levee, "body_too_large", 2.0);
}

#[test]
fn streamed_chunked_body_over_limit_is_413() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[BODY_LIMIT], &[b.addr()], &[]).build());

    // No length announced: the limit trips while the body streams through.
    let mut c = RawConn::connect(listen).expect("connect");
    let mut req = CHUNKED_UPLOAD.to_vec();
    req.extend(chunk(&[b'x'; 2048]));
    c.write_all(&req).expect("write");
    let r = c.read_response(T).expect("a response");
    assert_levee_error(&r, 413, "body_too_large");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.read_until_close(T),
        "the connection must be closed after a 413"
    );

    wait_errors(&levee, "body_too_large", 1.0);
    assert_still_serving(listen, "b1");
}

#[test]
fn bodies_within_the_limit_pass() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[BODY_LIMIT], &[b.addr()], &[]).build());

    // Exactly the limit, with Content-Length.
    let r = http_request(listen, "POST", "/upload", &[], &[b'a'; 1024], T).expect("POST");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().expect("JSON")["bytes"], 1024);

    // Chunked, 1000 bytes in three chunks, then a second request on the same
    // connection (the connection stays usable).
    let mut c = RawConn::connect(listen).expect("connect");
    let mut req = CHUNKED_UPLOAD.to_vec();
    req.extend(chunk(&[b'b'; 400]));
    req.extend(chunk(&[b'c'; 500]));
    req.extend(chunk(&[b'd'; 100]));
    req.extend_from_slice(b"0\r\n\r\n");
    c.write_all(&req).expect("write");
    let r = c.read_response(T).expect("a response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().expect("JSON")["bytes"], 1000);
    c.write_all(b"GET / HTTP/1.1\r\nHost: levee.test\r\n\r\n")
        .expect("write");
    assert_eq!(c.read_response(T).expect("second response").status, 200);

    assert_eq!(b.requests(), 3);
    assert_eq!(errors_of(&levee, &["body_too_large", "client_body"]), 0.0);
}

// ---------------------------------------------------------------------------
// 3. Header limits
// ---------------------------------------------------------------------------

#[test]
fn oversized_heads_get_431() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee =
        Levee::start(&config(listen, &["max_header_bytes = \"8KiB\""], &[b.addr()], &[]).build());

    // 12 KiB of header against an 8 KiB limit: Levee's own check, JSON body.
    let big = "a".repeat(12 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: levee.test\r\nX-Big: {big}\r\n\r\n");
    let mut c = RawConn::connect(listen).expect("connect");
    c.write_all(req.as_bytes()).expect("write");
    let r = c.read_response(T).expect("a response");
    assert_levee_error(&r, 431, "headers_too_large");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.read_until_close(T), "closed after 431");
    wait_errors(&levee, "headers_too_large", 1.0);

    // Many small headers add up the same way.
    let mut req = String::from("GET / HTTP/1.1\r\nHost: levee.test\r\n");
    for i in 0..150 {
        req.push_str(&format!("X-Header-{i}: value-{i}\r\n"));
    }
    req.push_str("\r\n");
    let mut c = RawConn::connect(listen).expect("connect");
    c.write_all(req.as_bytes()).expect("write");
    let r = c.read_response(T).expect("a response");
    assert_levee_error(&r, 431, "headers_too_large");
    wait_errors(&levee, "headers_too_large", 2.0);

    // 64 KiB: beyond hyper's buffer, rejected by the parser itself (no JSON
    // body), still 431, closed, and counted.
    let huge = "b".repeat(64 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: levee.test\r\nX-Huge: {huge}\r\n\r\n");
    let r = send_raw(listen, req.as_bytes(), T);
    assert_eq!(r.status, Some(431), "{:?}", r.text);
    assert!(r.closed, "closed after hyper's 431: {r:?}");
    wait_errors(&levee, "headers_too_large", 3.0);

    assert_eq!(b.requests(), 0, "oversized heads never reach the backend");
    assert_still_serving(listen, "b1");
}

// ---------------------------------------------------------------------------
// 4. Request smuggling defence
// ---------------------------------------------------------------------------

/// A valid request pipelined behind a hostile one: it must never be answered.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: levee.test\r\n\r\n";

/// Sends `hostile` followed by [`SMUGGLED`] on one connection and checks the
/// answer: a single 400 and the connection closed. Returns that response.
#[track_caller]
fn assert_rejected_400(listen: SocketAddr, hostile: &str) -> RawResponse {
    let r = send_raw(listen, format!("{hostile}{SMUGGLED}").as_bytes(), T);
    assert_eq!(
        r.statuses(),
        vec![400],
        "want exactly one response, a 400, for {hostile:?}; got {:?}",
        r.text
    );
    assert!(
        r.closed,
        "connection must be closed after {hostile:?}: {r:?}"
    );
    r
}

#[test]
fn content_length_with_chunked_is_400_and_closes() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[], &[b.addr()], &[]).build());

    let cases = [
        "POST /upload HTTP/1.1\r\nHost: levee.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /upload HTTP/1.1\r\nHost: levee.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ];
    for (i, hostile) in cases.iter().enumerate() {
        let r = assert_rejected_400(listen, hostile);
        let resp = r.parse().expect("a complete 400");
        assert_levee_error(&resp, 400, "bad_framing");
        wait_errors(&levee, "bad_framing", (i + 1) as f64);
        assert_still_serving(listen, "b1");
    }
    assert!(
        b.recorded().iter().all(|r| r.uri == "/"),
        "neither the ambiguous request nor the smuggled one may reach the backend: {:?}",
        b.recorded()
    );
}

#[test]
fn conflicting_content_lengths_are_400_and_close() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[], &[b.addr()], &[]).build());

    let cases = [
        "POST /upload HTTP/1.1\r\nHost: levee.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST /upload HTTP/1.1\r\nHost: levee.test\r\nContent-Length: 5, 6\r\n\r\nhello!",
    ];
    for (i, hostile) in cases.iter().enumerate() {
        assert_rejected_400(listen, hostile);
        // hyper's parser refuses these before Levee's pipeline sees them
        // (`bad_request`); Levee's own check would say `bad_framing`.
        wait_errors_any(&levee, &["bad_request", "bad_framing"], (i + 1) as f64);
        assert_still_serving(listen, "b1");
    }
    assert!(
        b.recorded().iter().all(|r| r.uri == "/"),
        "nothing but the fresh requests may reach the backend: {:?}",
        b.recorded()
    );
}

#[test]
fn malformed_request_lines_are_400_and_close() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[], &[b.addr()], &[]).build());

    let cases = [
        // No HTTP version.
        "GET /\r\nHost: levee.test\r\n\r\n",
        // A space inside the target.
        "GET /a b HTTP/1.1\r\nHost: levee.test\r\n\r\n",
        // Not HTTP at all.
        "HELLO THERE GENERAL KENOBI\r\n\r\n",
        // A header line without a colon.
        "GET / HTTP/1.1\r\nHost: levee.test\r\nBad Header\r\n\r\n",
    ];
    for (i, hostile) in cases.iter().enumerate() {
        assert_rejected_400(listen, hostile);
        wait_errors(&levee, "bad_request", (i + 1) as f64);
        assert_still_serving(listen, "b1");
    }
    assert!(
        b.recorded().iter().all(|r| r.uri == "/"),
        "nothing but the fresh requests may reach the backend: {:?}",
        b.recorded()
    );
}

#[test]
fn two_host_lines_are_400_and_close() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[], &[b.addr()], &[]).build());
    let cases = [
        "GET /two HTTP/1.1\r\nHost: levee.test\r\nHost: other.test\r\n\r\n",
        // Equal values too: one Host line is the rule, not one host.
        "GET /two HTTP/1.1\r\nHost: levee.test\r\nHost: levee.test\r\n\r\n",
    ];
    for (i, hostile) in cases.iter().enumerate() {
        let r = assert_rejected_400(listen, hostile);
        assert_levee_error(&r.parse().expect("a complete 400"), 400, "bad_host");
        wait_errors(&levee, "bad_host", (i + 1) as f64);
    }
    assert_still_serving(listen, "b1");
    assert!(
        b.recorded().iter().all(|r| r.uri == "/"),
        "neither request may reach the backend: {:?}",
        b.recorded()
    );
}

#[test]
fn http11_without_host_is_400_http10_without_host_is_served() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[], &[b.addr()], &[]).build());
    let r = assert_rejected_400(listen, "GET /nohost HTTP/1.1\r\n\r\n");
    assert_levee_error(&r.parse().expect("a complete 400"), 400, "bad_host");
    wait_errors(&levee, "bad_host", 1.0);

    let r = send_raw(listen, b"GET /old HTTP/1.0\r\n\r\n", T);
    assert_eq!(r.status, Some(200), "HTTP/1.0 needs no Host: {:?}", r.text);
    assert!(
        b.recorded().iter().all(|r| r.uri != "/nohost"),
        "the Host-less HTTP/1.1 request must not reach the backend: {:?}",
        b.recorded()
    );
}

#[test]
fn connect_is_refused_with_405_and_never_forwarded() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[], &[b.addr()], &[]).build());
    let r = send_raw(
        listen,
        b"CONNECT internal.test:22 HTTP/1.1\r\nHost: internal.test:22\r\n\r\nSSH-2.0-x\r\n",
        T,
    );
    let resp = r.parse().expect("a complete 405");
    assert_levee_error(&resp, 405, "connect_refused");
    let allow = resp.header("allow").unwrap_or("");
    assert!(
        allow.contains("GET") && !allow.contains("CONNECT"),
        "Allow: {allow:?}"
    );
    assert!(r.closed, "closed after the refused CONNECT: {r:?}");
    wait_errors(&levee, "connect_refused", 1.0);
    assert_eq!(b.requests(), 0, "CONNECT never reaches the backend");
    assert_still_serving(listen, "b1");
}

#[test]
fn http2_preface_on_an_http1_listener_gets_goaway_and_is_counted() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[], &[b.addr()], &[]).build());
    let wrong = |p| levee.metric("levee_connections_wrong_protocol_total", &[("protocol", p)]);
    assert_eq!(wrong("http2"), Some(0.0), "present at 0 before any event");
    assert_eq!(wrong("tls"), Some(0.0), "present at 0 before any event");

    // The preface and an empty SETTINGS frame, as a prior-knowledge client
    // sends them.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let r = send_raw(listen, &hello, T);
    assert!(r.closed, "closed after the answer: {r:?}");
    let got = &r.bytes;
    assert!(got.len() >= 26, "a SETTINGS and a GOAWAY frame: {got:?}");
    assert_eq!(got[3], 0x4, "first frame is SETTINGS: {got:?}");
    assert_eq!(got[9 + 3], 0x7, "second frame is GOAWAY: {got:?}");
    assert_eq!(
        &got[9 + 9 + 4..9 + 9 + 8],
        &[0, 0, 0, 0xd],
        "GOAWAY says HTTP_1_1_REQUIRED"
    );
    wait_metric(
        &levee,
        "levee_connections_wrong_protocol_total",
        &[("protocol", "http2")],
        1.0,
    );

    // A real HTTP/2 client reports why.
    let out = std::process::Command::new("curl")
        .args(["-sSv", "--http2-prior-knowledge", "--max-time", "5"])
        .arg(format!("http://{listen}/"))
        .output()
        .expect("curl runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "curl must fail: {err}");
    // curl 7.88 words it "recveived GOAWAY, error=13" (13: HTTP_1_1_REQUIRED).
    assert!(err.contains("GOAWAY, error=13"), "curl says: {err}");
    wait_metric(
        &levee,
        "levee_connections_wrong_protocol_total",
        &[("protocol", "http2")],
        2.0,
    );
    assert_eq!(b.requests(), 0, "nothing reaches the backend");
    assert_still_serving(listen, "b1");
}

#[test]
fn tls_client_hello_on_a_plain_listener_gets_an_alert_and_is_counted() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[], &[b.addr()], &[]).build());
    let out = std::process::Command::new("curl")
        .args(["-sS", "--insecure", "--max-time", "5"])
        .arg(format!("https://{listen}/"))
        .output()
        .expect("curl runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "curl must fail: {err}");
    assert!(err.contains("handshake failure"), "curl says: {err}");
    wait_metric(
        &levee,
        "levee_connections_wrong_protocol_total",
        &[("protocol", "tls")],
        1.0,
    );
    assert_eq!(b.requests(), 0, "nothing reaches the backend");
    assert_still_serving(listen, "b1");
}

// ---------------------------------------------------------------------------
// 5. Header timeout (slowloris)
// ---------------------------------------------------------------------------

#[test]
fn slowloris_head_gets_408_and_close() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(
        &config(
            listen,
            &["header_timeout = \"1s\"", "idle_timeout = \"10s\""],
            &[b.addr()],
            &[],
        )
        .build(),
    );

    // 5 bytes a second: this head would take ~12 s to arrive.
    let head = b"GET / HTTP/1.1\r\nHost: levee.test\r\nUser-Agent: slowloris\r\n\r\n";
    let s = send_slowly(
        listen,
        head,
        Duration::from_millis(200),
        Duration::from_secs(6),
    );
    assert!(
        s.bytes_sent < head.len(),
        "the head should not have completed: {s:?}"
    );
    assert_eq!(s.received.status, Some(408), "{:?}", s.received.text);
    let closed = s
        .closed_after
        .unwrap_or_else(|| panic!("connection not closed: {s:?}"));
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "closed after {closed:?}, want ~1 s (header_timeout)"
    );
    let resp = s.received.parse().expect("a complete 408");
    assert_eq!(resp.header("connection"), Some("close"));
    assert_levee_error(&resp, 408, "header_timeout");

    assert_eq!(b.requests(), 0);
    wait_errors(&levee, "header_timeout", 1.0);
}

#[test]
fn header_timeout_counts_from_first_byte_not_connection_age() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(
        &config(
            listen,
            &["header_timeout = \"1s\"", "idle_timeout = \"10s\""],
            &[b.addr()],
            &[],
        )
        .build(),
    );
    let req = b"GET / HTTP/1.1\r\nHost: levee.test\r\n\r\n";

    // A: open, silent. B: one request, then a kept-alive connection.
    let mut a = RawConn::connect(listen).expect("connect A");
    let mut bc = RawConn::connect(listen).expect("connect B");
    bc.write_all(req).expect("write B");
    assert_eq!(bc.read_response(T).expect("B first").status, 200);

    // Let both connections grow older than header_timeout. This sleep is the
    // point of the test (time passing), not a wait for readiness.
    std::thread::sleep(Duration::from_millis(1500));

    // A's first request arrives in two parts 300 ms apart: well within the
    // header timeout counted from its first byte.
    let (first, second) = req.split_at(10);
    a.write_all(first).expect("write A part 1");
    std::thread::sleep(Duration::from_millis(300));
    a.write_all(second).expect("write A part 2");
    let r = a.read_response(T).expect("A response");
    assert_eq!(r.status, 200, "A was 408'd by connection age: {}", r.text());

    bc.write_all(req).expect("write B again");
    let r = bc.read_response(T).expect("B second");
    assert_eq!(r.status, 200, "B was 408'd by idle time: {}", r.text());

    assert_eq!(b.requests(), 3);
    assert_eq!(errors_of(&levee, &["header_timeout"]), 0.0);
}

#[test]
fn stalled_head_after_a_quiet_spell_gets_408_one_header_timeout_after_its_first_byte() {
    let b = Backend::start("b1");
    let listen = free_addr();
    // idle_timeout far above header_timeout: a 408 that waits for the idle
    // deadline shows up as late.
    let levee = Levee::start(
        &config(
            listen,
            &["header_timeout = \"1s\"", "idle_timeout = \"6s\""],
            &[b.addr()],
            &[],
        )
        .build(),
    );

    std::thread::scope(|s| {
        // A fresh connection that stays silent for a while first.
        let fresh = s.spawn(|| {
            let c = RawConn::connect(listen).expect("connect");
            (c, false)
        });
        // A kept-alive connection after one request.
        let kept = s.spawn(|| {
            let mut c = RawConn::connect(listen).expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\nHost: levee.test\r\n\r\n")
                .expect("write");
            assert_eq!(c.read_response(T).expect("response").status, 200);
            (c, true)
        });
        let conns = [
            fresh.join().expect("fresh thread"),
            kept.join().expect("kept thread"),
        ];
        // Both connections sit quiet past the header timeout (time passing is
        // the point here), then a head starts and stalls.
        std::thread::sleep(Duration::from_millis(1500));
        let waits: Vec<_> = conns
            .into_iter()
            .map(|(mut c, kept)| {
                s.spawn(move || {
                    c.write_all(b"GET / HTTP/1.1\r\nHo")
                        .expect("write partial head");
                    let start = Instant::now();
                    let closed = c.read_until_close(Duration::from_secs(8));
                    let text = String::from_utf8_lossy(c.received()).into_owned();
                    (kept, closed, start.elapsed(), text)
                })
            })
            .collect();
        for w in waits {
            let (kept, closed, took, text) = w.join().expect("client thread");
            let what = if kept { "kept-alive" } else { "fresh" };
            assert!(closed, "{what}: stalled head, connection not closed in 8 s");
            assert!(
                text.starts_with("HTTP/1.1 408"),
                "{what}: stalled head must get 408, got {text:?} after {took:?}"
            );
            assert!(
                took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
                "{what}: 408 came {took:?} after the head's first byte, want ~1 s \
                 (header_timeout), not the idle deadline"
            );
        }
    });

    assert_eq!(b.requests(), 1);
    wait_errors(&levee, "header_timeout", 2.0);
}

#[test]
fn partial_head_pipelined_behind_a_request_gets_408() {
    let b = Backend::start("b1");
    let listen = free_addr();
    // The idle timeout is well above the header timeout, so the two are told
    // apart by when (and how) the connection ends.
    let levee = Levee::start(
        &config(
            listen,
            &["header_timeout = \"1s\"", "idle_timeout = \"5s\""],
            &[b.addr()],
            &[],
        )
        .build(),
    );

    // One complete request and the first bytes of the next, in one write: the
    // second head started arriving now and must be complete within 1 s.
    let mut c = RawConn::connect(listen).expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nHost: levee.test\r\n\r\nGET / HTTP/1.1\r\nHost: levee.test\r\nX-Stall: ")
        .expect("write");
    let start = Instant::now();
    let r = c.read_response(T).expect("first response");
    assert_eq!(r.status, 200);
    let closed = c.read_until_close(Duration::from_secs(8));
    let took = start.elapsed();
    let text = String::from_utf8_lossy(c.received()).into_owned();
    assert!(closed, "connection not closed within 8 s");
    assert!(
        text.starts_with("HTTP/1.1 408") && took < Duration::from_millis(2500),
        "the pipelined partial head must get 408 ~1 s after its first byte; \
         got {text:?} and the connection closed after {took:?}"
    );
    wait_errors(&levee, "header_timeout", 1.0);
}

// ---------------------------------------------------------------------------
// 6. Idle keep-alive timeout
// ---------------------------------------------------------------------------

#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let _levee = Levee::start(
        &config(
            listen,
            &["idle_timeout = \"1s\"", "header_timeout = \"5s\""],
            &[b.addr()],
            &[],
        )
        .build(),
    );

    std::thread::scope(|s| {
        // A connection that never sends anything.
        let silent = s.spawn(|| {
            let start = Instant::now();
            let mut c = RawConn::connect(listen).expect("connect");
            let closed = c.read_until_close(Duration::from_secs(6));
            (closed, start.elapsed(), c.received().to_vec())
        });
        // A connection kept alive after one request.
        let kept = s.spawn(|| {
            let mut c = RawConn::connect(listen).expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\nHost: levee.test\r\n\r\n")
                .expect("write");
            let r = c.read_response(T).expect("response");
            assert_eq!(r.status, 200);
            assert_ne!(r.header("connection"), Some("close"), "kept alive");
            let start = Instant::now();
            let closed = c.read_until_close(Duration::from_secs(6));
            (closed, start.elapsed(), c.received().to_vec())
        });
        for (what, handle) in [("silent", silent), ("kept-alive", kept)] {
            let (closed, took, got) = handle.join().expect("client thread");
            assert!(closed, "{what} connection not closed within 6 s");
            assert!(
                took >= Duration::from_millis(800) && took < Duration::from_secs(4),
                "{what} connection closed after {took:?}, want ~1 s (idle_timeout)"
            );
            assert!(
                got.is_empty(),
                "an idle connection is closed without a response: {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    });
    assert_eq!(b.requests(), 1);
}

// ---------------------------------------------------------------------------
// 7. max_connections
// ---------------------------------------------------------------------------

#[test]
fn connections_beyond_max_connections_are_refused() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(
        &config(
            listen,
            &["max_connections = 2", "idle_timeout = \"30s\""],
            &[b.addr()],
            &[],
        )
        .build(),
    );
    let main = [("listener", "main")];
    let req = b"GET / HTTP/1.1\r\nHost: levee.test\r\n\r\n";

    // Two connections, each served once and kept open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = RawConn::connect(listen).expect("connect");
        c.write_all(req).expect("write");
        assert_eq!(c.read_response(T).expect("response").status, 200);
        held.push(c);
    }
    wait_metric(&levee, "levee_connections_active", &main, 2.0);

    // The third is closed at once, without a response.
    let r = send_raw(listen, req, T);
    assert!(r.closed, "third connection not closed: {r:?}");
    assert!(
        r.bytes.is_empty(),
        "third connection got an answer: {:?}",
        r.text
    );
    assert!(
        r.elapsed < Duration::from_secs(2),
        "closed after {:?}",
        r.elapsed
    );
    wait_metric(&levee, "levee_connections_refused_total", &main, 1.0);

    // The held connections are unaffected.
    held[1].write_all(req).expect("write on held");
    assert_eq!(held[1].read_response(T).expect("held").status, 200);

    // Closing one makes room for a new connection.
    drop(held.remove(0));
    wait_metric(&levee, "levee_connections_active", &main, 1.0);
    assert_still_serving(listen, "b1");

    assert_eq!(
        b.requests(),
        4,
        "the refused request never reached the backend"
    );
    wait_metric(&levee, "levee_connections_refused_total", &main, 1.0);
    wait_metric(&levee, "levee_connections_total", &main, 3.0);
}
