//! Proves the test backend and the raw/blocking clients in `tests/support/`
//! over real sockets, so that a failing end-to-end test points at Levee and
//! not at its harness. Run with `cargo test --test support_selftest`.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(5);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(T)
        .build()
        .expect("client")
}

async fn get(c: &reqwest::Client, url: String) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = c.get(url).send().await.expect("send");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.expect("body").to_vec();
    (status, headers, body)
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("JSON body")
}

#[tokio::test]
async fn default_and_status_paths() {
    let b = Backend::start("b1");
    let c = client();
    let (status, headers, body) = get(&c, b.url("/anything")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-backend"], "b1");
    assert_eq!(headers["x-backend-seq"], "1");
    assert_eq!(body, b"hello from b1\n");

    let (status, headers, _) = get(&c, b.url("/status/503")).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-backend"], "b1");
    assert_eq!(get(&c, b.url("/status/404")).await.0, 404);
    assert_eq!(get(&c, b.url("/status/abc")).await.0, 400);
    assert_eq!(get(&c, b.url("/status/101")).await.0, 400);
}

#[tokio::test]
async fn query_delay_and_global_delay() {
    let b = Backend::start("slow");
    let c = client();
    let start = Instant::now();
    assert_eq!(get(&c, b.url("/?delay=300ms")).await.0, 200);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );

    b.set_delay(Duration::from_millis(200));
    let start = Instant::now();
    assert_eq!(get(&c, b.url("/status/201")).await.0, 201);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "{took:?}"
    );

    b.reset_behaviour();
    let start = Instant::now();
    get(&c, b.url("/")).await;
    assert!(start.elapsed() < Duration::from_millis(200));
}

#[tokio::test]
async fn echo_reports_method_path_version_and_headers_in_order() {
    let b = Backend::start("e");
    let r = client()
        .post(b.url("/echo?x=1&y=2"))
        .header("x-multi", "first")
        .header("x-one", "only")
        .header("x-multi", "second")
        .body("12345")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let v = json(&r.bytes().await.expect("body"));
    assert_eq!(v["backend"], "e");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/echo?x=1&y=2");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(
        v["headers"]["x-multi"],
        serde_json::json!(["first", "second"])
    );
    assert_eq!(v["headers"]["x-one"], serde_json::json!(["only"]));
    assert_eq!(v["body_bytes"], 5);

    let rec = b.last_request().expect("recorded");
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.header("X-One"), Some("only"));
    assert_eq!(rec.seq, 1);
}

#[tokio::test]
async fn echo_over_h2c_prior_knowledge() {
    let b = Backend::start("h2");
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(T)
        .build()
        .expect("client");
    let (status, _, body) = get(&c, b.url("/echo")).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["version"], "HTTP/2.0");
}

#[tokio::test]
async fn download_with_content_length_and_chunked() {
    let b = Backend::start("d");
    let c = client();
    let (status, headers, body) = get(&c, b.url("/download?bytes=1000003")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], "1000003");
    assert_eq!(body.len(), 1_000_003);
    assert!(is_download_pattern(&body));

    let (_, headers, body) = get(&c, b.url("/download?bytes=70000&chunk=1000&chunked=1")).await;
    assert!(headers.get("content-length").is_none());
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert_eq!(body, download_pattern(70_000));

    let (_, _, body) = get(&c, b.url("/download?bytes=0")).await;
    assert!(body.is_empty());
}

#[tokio::test]
async fn upload_counts_streamed_body() {
    let b = Backend::start("u");
    let r = client()
        .post(b.url("/upload"))
        .body(vec![7u8; 3_000_000])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(
        json(&r.bytes().await.expect("body")),
        serde_json::json!({"bytes": 3_000_000})
    );
}

#[tokio::test]
async fn close_mid_breaks_the_response() {
    let b = Backend::start("cm");
    let r = client()
        .get(b.url("/close-mid"))
        .send()
        .await
        .expect("head arrives");
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(1000));
    assert!(
        r.bytes().await.is_err(),
        "body must fail: connection dropped after 500 of 1000 bytes"
    );

    // Byte-exact view: the head, 500 body bytes, then EOF.
    let raw = send_raw(b.addr(), b"GET /close-mid HTTP/1.1\r\nHost: x\r\n\r\n", T);
    assert!(raw.closed, "{raw:?}");
    assert_eq!(raw.status, Some(200));
    let head_end = raw.text.find("\r\n\r\n").expect("head") + 4;
    assert_eq!(raw.bytes.len() - head_end, 500);
}

#[tokio::test]
async fn slow_body_spaces_its_chunks() {
    let b = Backend::start("sb");
    let start = Instant::now();
    let mut r = client()
        .get(b.url("/slow-body?chunks=3&interval=150ms"))
        .send()
        .await
        .expect("send");
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await.expect("chunk") {
        body.extend_from_slice(&chunk);
    }
    let took = start.elapsed();
    assert_eq!(body, b"chunk 0\nchunk 1\nchunk 2\n");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let b = Backend::start("ka");
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, b.url("/")).await.0, 200);
    }
    assert_eq!(b.requests(), 10);
    assert_eq!(b.connections(), 1);
    assert_eq!(b.open_connections(), 1);
    assert_eq!(b.in_flight(), 0);

    drop(c);
    assert!(wait_until_async(T, || b.open_connections() == 0).await);
    b.reset_counters();
    assert_eq!((b.requests(), b.connections()), (0, 0));
}

#[tokio::test]
async fn in_flight_counts_pending_responses() {
    let b = Backend::start("if");
    let url = b.url("/?delay=400ms");
    let pending = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    assert!(wait_until_async(T, || b.in_flight() == 1).await);
    assert_eq!(pending.await.expect("join").expect("response"), 200);
    assert!(wait_until_async(T, || b.in_flight() == 0).await);
}

#[tokio::test]
async fn fail_next_then_forced_status() {
    let b = Backend::start("f");
    let c = client();
    b.fail_next(2, 503);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&c, b.url("/")).await.0);
    }
    assert_eq!(statuses, [503, 503, 200]);

    b.set_status(Some(500));
    assert_eq!(get(&c, b.url("/status/200")).await.0, 500);
    b.fail_next(1, 429);
    assert_eq!(get(&c, b.url("/")).await.0, 429);
    assert_eq!(get(&c, b.url("/")).await.0, 500);
    b.set_status(None);
    assert_eq!(get(&c, b.url("/")).await.0, 200);
}

#[tokio::test]
async fn extra_response_headers_from_query() {
    let b = Backend::start("h");
    let (_, headers, _) = get(
        &client(),
        b.url("/status/429?header=Retry-After:7&header=x-a:1"),
    )
    .await;
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(headers["x-a"], "1");
}

#[test]
fn stop_refuses_connects_and_closes_open_ones() {
    let mut b = Backend::start("k");
    let addr = b.addr();
    let mut conn = RawConn::connect(addr).expect("connect");
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(conn.read_response(T).expect("response").status, 200);

    b.stop();
    assert!(!b.is_running());
    assert!(
        conn.read_until_close(T),
        "idle keep-alive connection must be closed"
    );
    let err = TcpStream::connect_timeout(&addr, T).expect_err("connect must be refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    b.stop(); // idempotent

    let b2 = Backend::start_on("k2", addr);
    let r = http_get(addr, "/").expect("restarted backend answers");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-backend"), Some("k2"));
    assert_eq!(b2.addr(), addr);
}

#[test]
fn stop_cuts_a_pending_request() {
    let mut b = Backend::start("cut");
    let mut conn = RawConn::connect(b.addr()).expect("connect");
    conn.write_all(b"GET /?delay=10s HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(wait_until(T, || b.in_flight() == 1));
    let start = Instant::now();
    b.stop();
    assert!(conn.read_until_close(T));
    assert!(conn.received().is_empty());
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn drop_path_closes_without_response() {
    let b = Backend::start("dr");
    let r = send_raw(b.addr(), b"GET /drop HTTP/1.1\r\nHost: x\r\n\r\n", T);
    assert!(r.closed, "{r:?}");
    assert!(r.bytes.is_empty(), "{r:?}");
    assert_eq!(r.status, None);
}

#[test]
fn blocking_client_decodes_chunked_and_sized_bodies() {
    let b = Backend::start("bc");
    let r = http_get(b.addr(), "/download?bytes=100000&chunk=777&chunked=1").expect("get");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, download_pattern(100_000));
    let r =
        http_request(b.addr(), "POST", "/upload", &[("X-A", "1")], &[1; 4096], T).expect("post");
    assert_eq!(r.json().expect("json")["bytes"], 4096);
    let r = http_request(b.addr(), "HEAD", "/download?bytes=50", &[], b"", T).expect("head");
    assert_eq!((r.status, r.header("content-length")), (200, Some("50")));
    assert!(r.body.is_empty());
}

#[test]
fn raw_pipelining_and_malformed_requests() {
    let b = Backend::start("raw");
    let two = b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let r = send_raw(b.addr(), two, T);
    assert_eq!(r.statuses(), [201, 202]);
    assert!(r.closed);
    assert_eq!(r.parse().expect("first response").status, 201);

    let r = send_raw(b.addr(), b"NOT HTTP AT ALL\r\n\r\n", T);
    assert_eq!(r.status, Some(400));
    assert!(r.closed);
    assert!(r.elapsed < T);

    let mut conn = RawConn::connect(b.addr()).expect("connect");
    for expected in ["/a", "/b"] {
        conn.write_all(format!("GET /echo?p={expected} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("write");
        let v = conn
            .read_response(T)
            .expect("response")
            .json()
            .expect("json");
        assert_eq!(v["path"], format!("/echo?p={expected}"));
    }
    assert_eq!(b.connections(), 3);
}

#[test]
fn send_slowly_reports_answer_and_close() {
    let b = Backend::start("slowloris");
    let req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let interval = Duration::from_millis(5);
    let r = send_slowly(b.addr(), req, interval, T);
    assert_eq!(r.bytes_sent, req.len());
    assert_eq!(r.received.status, Some(200));
    let answered = r.answered_after.expect("answered");
    assert!(
        answered >= interval * (req.len() as u32 - 1),
        "{answered:?}"
    );
    assert!(r.closed_after.is_some(), "{r:?}");

    // Stopped by `max` before the head is complete: nothing answered.
    let r = send_slowly(
        b.addr(),
        req,
        Duration::from_millis(50),
        Duration::from_millis(300),
    );
    assert!(r.bytes_sent < req.len() && r.bytes_sent >= 3, "{r:?}");
    assert_eq!(r.received.status, None);
    assert!(r.closed_after.is_none());
}

#[test]
fn config_builder_writes_the_expected_toml() {
    let listen = free_addr();
    let b = "127.0.0.1:1001".parse().expect("addr");
    let cfg = ConfigBuilder::simple(listen, &[b])
        .set("server", "drain_timeout = \"2s\"")
        .endpoint(
            "app",
            "127.0.0.1:1002".parse().expect("addr"),
            &["backup = true"],
        )
        .route_with("api", "app", &["path_prefix = \"/api\""]);
    let text = cfg.build();
    assert!(text.starts_with(&format!("[admin]\naddress = \"{}\"\n", cfg.admin_addr())));
    assert!(text.contains("\n[server]\ndrain_timeout = \"2s\"\n"));
    assert!(text.contains(&format!(
        "\n[[listeners]]\nname = \"main\"\naddress = \"{listen}\"\n"
    )));
    assert!(text.contains(
        "\n[[clusters]]\nname = \"app\"\n\n[[clusters.endpoints]]\naddress = \"127.0.0.1:1001\"\n"
    ));
    assert!(
        text.contains("\n[[clusters.endpoints]]\naddress = \"127.0.0.1:1002\"\nbackup = true\n")
    );
    assert!(
        text.contains("\n[[routes]]\nname = \"api\"\ncluster = \"app\"\npath_prefix = \"/api\"\n")
    );
    assert_ne!(free_port(), 0);
}

#[test]
fn metric_sum_matches_name_and_labels() {
    let text = "# HELP x\n# TYPE levee_requests counter\n\
        levee_requests_total{route=\"a\",code=\"200\"} 3\n\
        levee_requests_total{route=\"a\",code=\"503\"} 2\n\
        levee_requests_total{route=\"b\",code=\"200\"} 5\n\
        levee_up 1\n";
    assert_eq!(metric_sum(text, "levee_requests_total", &[]), Some(10.0));
    assert_eq!(
        metric_sum(text, "levee_requests_total", &[("route", "a")]),
        Some(5.0)
    );
    assert_eq!(
        metric_sum(text, "levee_requests_total", &[("code", "200")]),
        Some(8.0)
    );
    assert_eq!(metric_sum(text, "levee_up", &[]), Some(1.0));
    assert_eq!(
        metric_sum(text, "levee_requests_total", &[("route", "c")]),
        None
    );
}

#[test]
fn durations_parse_like_the_query_expects() {
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("40"), Some(Duration::from_millis(40)));
    assert_eq!(parse_duration("100us"), Some(Duration::from_micros(100)));
    assert_eq!(parse_duration("soon"), None);
}
