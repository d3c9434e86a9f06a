//! Levee's own HTTP/1.1 client towards endpoints: bodies framed every way an
//! endpoint may frame them, responses without bodies, pooled connections the
//! endpoint closed, and endpoints that answer nonsense.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(5);

fn levee_over(endpoints: &[SocketAddr]) -> (Levee, SocketAddr) {
    let listen = free_addr();
    let config = ConfigBuilder::simple(listen, endpoints)
        .set("server", "workers = 1")
        .build();
    (Levee::start(&config), listen)
}

#[test]
fn body_until_close_is_passed_whole() {
    let upstream = canned_upstream(
        b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\nread me until the end",
        true,
    );
    let (_levee, listen) = levee_over(&[upstream]);
    for _ in 0..3 {
        let r = http_get(listen, "/").expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-kind"), Some("eof"));
        assert_eq!(r.text(), "read me until the end");
    }
}

#[test]
fn chunked_body_with_extensions_and_trailers() {
    let upstream = canned_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
        false,
    );
    let (levee, listen) = levee_over(&[upstream]);
    let mut c = RawConn::connect(listen).expect("connect");
    for _ in 0..3 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let r = c.read_response(T).expect("response");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello, world");
    }
    // One upstream connection served all three.
    let new = levee.metric("levee_upstream_requests_total", &[("connection", "new")]);
    assert_eq!(new, Some(1.0));
}

#[test]
fn head_204_and_304_have_no_body_and_keep_the_connection() {
    let b = Backend::start("b1");
    let (_levee, listen) = levee_over(&[b.addr()]);
    let mut c = RawConn::connect(listen).expect("connect");
    c.write_all(b"HEAD /download?bytes=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let r = c.read_head_response(T).expect("HEAD response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("100"));
    for status in [204, 304] {
        c.write_all(format!("GET /status/{status} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("write");
        let r = c.read_response(T).expect("response");
        assert_eq!(r.status, status);
        assert!(r.body.is_empty());
    }
    c.write_all(b"GET /download?bytes=10 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let r = c.read_response(T).expect("response");
    assert_eq!(r.body.len(), 10);
    assert_eq!(b.requests(), 4);
    assert_eq!(
        b.connections(),
        1,
        "the upstream connection was reused throughout"
    );
}

#[test]
fn a_pooled_connection_closed_by_the_endpoint_is_not_an_error() {
    let mut b = Backend::start("b1");
    let addr = b.addr();
    let (levee, listen) = levee_over(&[addr]);
    assert_eq!(http_get(listen, "/").expect("first").status, 200);
    // The endpoint restarts: the pooled connection is dead.
    b.stop();
    let b2 = Backend::start_on("b1-again", addr);
    for _ in 0..5 {
        let r = http_get(listen, "/").expect("after restart");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-backend"), Some("b1-again"));
    }
    assert_eq!(b2.connections(), 1);
    assert_eq!(
        levee.metric("levee_errors_total", &[]),
        Some(0.0),
        "no error was answered"
    );
}

#[test]
fn nonsense_from_the_endpoint_is_502() {
    let garbage = canned_upstream(b"this is not http\r\n\r\n", true);
    let switching = canned_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        true,
    );
    let bad_length = canned_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        true,
    );
    for upstream in [garbage, switching, bad_length] {
        let (_levee, listen) = levee_over(&[upstream]);
        let r = http_get(listen, "/").expect("request");
        assert_eq!(r.status, 502, "{}", r.text());
        let body = r.json().expect("json body");
        assert_eq!(body["error"], "upstream_failed");
    }
}

#[test]
fn interim_100_continue_from_the_endpoint_is_skipped() {
    let upstream = canned_upstream(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        false,
    );
    let (_levee, listen) = levee_over(&[upstream]);
    let r = http_get(listen, "/").expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
}

#[test]
fn a_refused_connect_is_retried_once_on_another_endpoint() {
    let (_hold, dead) = refusing_addr();
    let b = Backend::start("alive");
    let (levee, listen) = levee_over(&[dead, b.addr()]);
    // Round robin sends every other request to the dead endpoint first; none
    // of them fails, whatever the method.
    for i in 0..10 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r =
            http_request(listen, method, "/", &[("Content-Length", "0")], b"", T).expect("request");
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        assert_eq!(r.header("x-backend"), Some("alive"));
    }
    assert_eq!(b.requests(), 10);
    // Each retry is counted. Until passive health checks eject the dead
    // endpoint, it keeps getting first tries (a retry's pick also takes a
    // round-robin turn), so between half and all of the requests retried.
    let retries = levee
        .metric(
            "levee_upstream_retries_total",
            &[("kind", "connect_failure")],
        )
        .unwrap_or(0.0);
    assert!((5.0..=10.0).contains(&retries), "{retries} retries");
    assert_eq!(levee.metric("levee_errors_total", &[]), Some(0.0));

    // With no other endpoint left, the client gets the 502.
    let (_hold2, dead2) = refusing_addr();
    let (_levee2, listen2) = levee_over(&[dead2]);
    assert_eq!(http_get(listen2, "/").expect("request").status, 502);
}
