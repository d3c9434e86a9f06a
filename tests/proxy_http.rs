//! End-to-end tests of Levee's HTTP proxying over real sockets: routing,
//! header forwarding, bodies, keep-alive on both sides, balancing, and the
//! admin `/status` and `/metrics` views of it.
//!
//! Every test starts its own backends and its own `levee` process on free
//! loopback ports, so tests run in parallel. Clients are blocking and raw
//! (`RawConn`), so what goes on the wire is exactly what the test wrote.
//! Run with `cargo test --test proxy_http`.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Bound on every single network wait.
const T: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------

/// The bytes of one HTTP/1.1 request. `Host: <addr>` is added unless
/// `headers` has a Host; `Content-Length` is added when there is a body.
fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A keep-alive client connection: requests one after the other on the
/// same TCP connection.
struct Client {
    addr: SocketAddr,
    conn: RawConn,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let conn = RawConn::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Client { addr, conn }
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let bytes = request_bytes(self.addr, method, path, headers, body);
        self.conn
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: write: {e}"));
        self.conn
            .read_response(T)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn get(&mut self, path: &str) -> HttpResponse {
        self.send("GET", path, &[], b"")
    }
}

/// One request on a fresh connection (left open, keep-alive, until dropped).
fn fetch(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    Client::connect(addr).send(method, path, headers, b"")
}

fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    fetch(addr, "GET", path, &[])
}

fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    fetch(addr, "GET", path, headers)
}

/// Which backend answered (`x-backend`), or `"<levee>"` when none did.
fn served_by(r: &HttpResponse) -> String {
    r.header("x-backend").unwrap_or("<levee>").to_owned()
}

/// Status and answering backend, for compact assertions.
fn outcome(r: &HttpResponse) -> (u16, String) {
    (r.status, served_by(r))
}

fn json_of(r: &HttpResponse) -> Value {
    r.json()
        .unwrap_or_else(|e| panic!("status {}: {e}", r.status))
}

/// The values of request header `name` as the backend's `/echo` saw them.
fn seen(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|vs| {
            vs.iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// How many requests each backend name answered.
fn tally<'a>(names: impl IntoIterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for n in names {
        *counts.entry(n.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Reads one interim response head (e.g. `100 Continue`) byte by byte, so
/// nothing after it is consumed; panics if none arrives within `timeout`.
fn read_interim_head(stream: &TcpStream, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no interim response within {timeout:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        stream.set_read_timeout(Some(left)).expect("set timeout");
        match (&*stream).read(&mut byte) {
            Ok(0) => panic!("connection closed; got {:?}", String::from_utf8_lossy(&got)),
            Ok(_) => got.push(byte[0]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Waits until metric `name{labels}` equals `want`; panics with the value
/// last seen otherwise. Metrics are recorded when a response body is done,
/// which may be a moment after the client has the response.
fn assert_metric(levee: &Levee, name: &str, labels: &[(&str, &str)], want: f64) {
    let mut last = None;
    let ok = wait_until(T, || {
        last = levee.metric(name, labels);
        last == Some(want)
    });
    assert!(ok, "{name}{labels:?}: want {want}, got {last:?}");
}

// ---------------------------------------------------------------------------
// 1. Routing
// ---------------------------------------------------------------------------

/// Routes are tried in declared order and the first match wins: a specific
/// route declared after a catch-all never matches; declared before, it wins
/// for its paths and the catch-all takes the rest.
#[test]
fn routes_are_tried_in_declared_order() {
    let general = Backend::start("general");
    let api = Backend::start("api");

    // Catch-all first: it shadows the later, more specific route.
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster("general", &[general.addr()])
        .cluster("api", &[api.addr()])
        .route("all", "general")
        .route_with("api", "api", &["path_prefix = \"/api\""]);
    let levee = Levee::start(&cfg.build());
    for path in ["/api", "/api/users", "/other"] {
        assert_eq!(
            outcome(&get(listen, path)),
            (200, "general".into()),
            "{path}"
        );
    }
    assert_eq!(api.requests(), 0, "the shadowed route must never match");
    drop(levee);

    // Specific first: it wins for /api, the catch-all gets everything else.
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster("general", &[general.addr()])
        .cluster("api", &[api.addr()])
        .route_with("api", "api", &["path_prefix = \"/api\""])
        .route("all", "general");
    let _levee = Levee::start(&cfg.build());
    assert_eq!(outcome(&get(listen, "/api/users")), (200, "api".into()));
    assert_eq!(outcome(&get(listen, "/api")), (200, "api".into()));
    assert_eq!(outcome(&get(listen, "/other")), (200, "general".into()));
    assert_eq!(outcome(&get(listen, "/apix")), (200, "general".into()));
}

/// `host` matches the Host header without its port, case-insensitively;
/// `*.example.com` matches any subdomain but not `example.com` itself.
#[test]
fn host_exact_and_wildcard() {
    let exact = Backend::start("exact");
    let wild = Backend::start("wild");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster("exact", &[exact.addr()])
        .cluster("wild", &[wild.addr()])
        .route_with("exact", "exact", &["host = \"api.example.com\""])
        .route_with("wild", "wild", &["host = \"*.example.com\""]);
    let _levee = Levee::start(&cfg.build());

    let cases = [
        ("api.example.com", 200, "exact"),
        ("api.example.com:8080", 200, "exact"),
        ("API.Example.COM:8080", 200, "exact"),
        ("www.example.com", 200, "wild"),
        ("www.example.com:8443", 200, "wild"),
        ("a.b.example.com:80", 200, "wild"),
        ("example.com", 404, "<levee>"),
        ("example.com:8080", 404, "<levee>"),
        ("badexample.com", 404, "<levee>"),
        ("api.example.org", 404, "<levee>"),
    ];
    for (host, status, backend) in cases {
        let r = get_with(listen, "/", &[("Host", host)]);
        assert_eq!(outcome(&r), (status, backend.into()), "Host: {host}");
    }
}

/// `path` is exact (query excluded); `path_prefix` matches on segment
/// boundaries: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
#[test]
fn path_exact_and_prefix_on_segment_boundaries() {
    let login = Backend::start("login");
    let api = Backend::start("api");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster("login", &[login.addr()])
        .cluster("api", &[api.addr()])
        .route_with("login", "login", &["path = \"/login\""])
        .route_with("api", "api", &["path_prefix = \"/api\""]);
    let _levee = Levee::start(&cfg.build());

    let cases = [
        ("/login", 200, "login"),
        ("/login?next=/home", 200, "login"),
        ("/login/", 404, "<levee>"),
        ("/login/x", 404, "<levee>"),
        ("/loginx", 404, "<levee>"),
        ("/api", 200, "api"),
        ("/api/", 200, "api"),
        ("/api/v1/users?id=3", 200, "api"),
        ("/apix", 404, "<levee>"),
        ("/ap", 404, "<levee>"),
        ("/", 404, "<levee>"),
    ];
    for (path, status, backend) in cases {
        assert_eq!(
            outcome(&get(listen, path)),
            (status, backend.into()),
            "{path}"
        );
    }
    // The backend gets the path and query exactly as the client sent them.
    let r = get(listen, "/api/v1/users?id=3");
    assert_eq!(r.status, 200);
    let rec = api.last_request().expect("api saw the request");
    assert_eq!(rec.uri, "/api/v1/users?id=3");
}

/// A header matcher sends `X-Canary: true` to the canary cluster; any other
/// value, or none, goes on to the next route.
#[test]
fn header_match_selects_canary_cluster() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster("stable", &[stable.addr()])
        .cluster("canary", &[canary.addr()])
        .route_with(
            "canary",
            "canary",
            &["headers = { \"X-Canary\" = \"true\" }"],
        )
        .route("stable", "stable");
    let _levee = Levee::start(&cfg.build());

    let canary_hdr = |v| get_with(listen, "/", &[("X-Canary", v)]);
    assert_eq!(outcome(&canary_hdr("true")), (200, "canary".into()));
    assert_eq!(
        outcome(&get_with(listen, "/", &[("x-canary", "true")])),
        (200, "canary".into()),
        "header names are case-insensitive"
    );
    assert_eq!(outcome(&canary_hdr("false")), (200, "stable".into()));
    assert_eq!(outcome(&canary_hdr("")), (200, "stable".into()));
    assert_eq!(outcome(&get(listen, "/")), (200, "stable".into()));
    assert_eq!(canary.requests(), 2);
    assert_eq!(stable.requests(), 3);
}

/// A `methods` matcher takes only the listed methods.
#[test]
fn method_match() {
    let reads = Backend::start("reads");
    let writes = Backend::start("writes");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster("reads", &[reads.addr()])
        .cluster("writes", &[writes.addr()])
        .route_with("writes", "writes", &["methods = [\"POST\", \"PUT\"]"])
        .route("reads", "reads");
    let _levee = Levee::start(&cfg.build());

    let mut c = Client::connect(listen);
    for (method, backend) in [
        ("GET", "reads"),
        ("POST", "writes"),
        ("PUT", "writes"),
        ("DELETE", "reads"),
        ("PATCH", "reads"),
    ] {
        let r = c.send(method, "/echo", &[], b"x");
        assert_eq!(outcome(&r), (200, backend.into()), "{method}");
        assert_eq!(json_of(&r)["method"], method);
    }
}

/// A route with `listeners = [...]` is served only on those listeners.
#[test]
fn route_restricted_to_a_listener() {
    let internal = Backend::start("internal");
    let public = Backend::start("public");
    let pub_addr = free_addr();
    let int_addr = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("public", pub_addr)
        .listener("internal", int_addr)
        .cluster("internal", &[internal.addr()])
        .cluster("public", &[public.addr()])
        .route_with("internal", "internal", &["listeners = [\"internal\"]"])
        .route_with(
            "public",
            "public",
            &["listeners = [\"public\"]", "path_prefix = \"/pub\""],
        );
    let _levee = Levee::start(&cfg.build());

    assert_eq!(outcome(&get(int_addr, "/x")), (200, "internal".into()));
    assert_eq!(outcome(&get(int_addr, "/pub")), (200, "internal".into()));
    assert_eq!(outcome(&get(pub_addr, "/pub/a")), (200, "public".into()));
    assert_eq!(
        outcome(&get(pub_addr, "/x")),
        (404, "<levee>".into()),
        "the internal-only route must not be served on the public listener"
    );
    assert_eq!(internal.requests(), 2);
}

/// No matching route: Levee answers 404 itself, with a JSON error and the
/// request id, and no backend is contacted.
#[test]
fn no_matching_route_is_404() {
    let b = Backend::start("b");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster("app", &[b.addr()])
        .route_with("only", "app", &["path_prefix = \"/only\""]);
    let levee = Levee::start(&cfg.build());

    let r = get(listen, "/elsewhere");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-backend"), None);
    let body = json_of(&r);
    assert_eq!(body["error"], "no_route");
    let id = r
        .header("x-request-id")
        .expect("x-request-id on errors too");
    assert_eq!(body["request_id"], id);
    assert_eq!(b.requests(), 0);
    // The connection stays usable after a 404.
    let mut c = Client::connect(listen);
    assert_eq!(c.get("/nope").status, 404);
    assert_eq!(outcome(&c.get("/only")), (200, "b".into()));
    assert_metric(&levee, "levee_errors_total", &[("kind", "no_route")], 2.0);
}

/// An absolute-form request target (`GET http://host/path`) is routed by
/// its authority, and the backend must see that same host in `Host` (RFC
/// 9112 §3.2.2: a proxy replaces the received Host with the target's) and
/// an origin-form target.
#[test]
fn absolute_form_target_routes_and_forwards_its_authority() {
    let exact = Backend::start("exact");
    let other = Backend::start("other");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster("exact", &[exact.addr()])
        .cluster("other", &[other.addr()])
        .route_with("exact", "exact", &["host = \"api.example.com\""])
        .route("other", "other");
    let _levee = Levee::start(&cfg.build());

    let r = get_with(
        listen,
        "http://api.example.com/echo?x=1",
        &[("Host", "elsewhere.test")],
    );
    assert_eq!(outcome(&r), (200, "exact".into()));
    let echo = json_of(&r);
    assert_eq!(echo["uri"], "/echo?x=1");
    assert_eq!(
        seen(&echo, "host"),
        ["api.example.com"],
        "the backend must see the host the request was routed by"
    );
}

/// An HTTP/1.0 request without `Host` (HTTP/1.0 allows it) goes to the
/// endpoint as HTTP/1.1, which requires one: it gets the endpoint's address,
/// as nginx's default `proxy_set_header Host $proxy_host` gives. A Host the
/// client sent is kept. The 1.0 client gets its answer and the close it
/// expects.
#[test]
fn http10_request_without_host_gets_the_endpoints_host() {
    let mirror = mirror_upstream();
    let listen = free_addr();
    let _levee = Levee::start(&ConfigBuilder::simple(listen, &[mirror]).build());
    for (request, host) in [
        (
            &b"GET /old?x=1 HTTP/1.0\r\nUser-Agent: old\r\n\r\n"[..],
            mirror.to_string(),
        ),
        (
            b"GET /old?x=1 HTTP/1.0\r\nHost: named.test\r\n\r\n",
            "named.test".into(),
        ),
    ] {
        let raw = send_raw(listen, request, T);
        assert!(
            raw.closed,
            "a 1.0 request without keep-alive ends its connection"
        );
        let r = raw.parse().expect("a response");
        assert_eq!(r.status, 200);
        let wire = r.text();
        let lines: Vec<String> = wire
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .lines()
            .map(str::to_ascii_lowercase)
            .collect();
        assert_eq!(lines[0], "get /old?x=1 http/1.1");
        let hosts: Vec<&String> = lines.iter().filter(|l| l.starts_with("host:")).collect();
        assert_eq!(hosts, [&format!("host: {host}")], "{lines:?}");
    }
}

// ---------------------------------------------------------------------------
// 2. Header forwarding
// ---------------------------------------------------------------------------

/// Starts one backend behind a catch-all route; returns (backend, listen, levee).
fn echo_setup(name: &str) -> (Backend, SocketAddr, Levee) {
    let b = Backend::start(name);
    let listen = free_addr();
    let levee = Levee::start(&ConfigBuilder::simple(listen, &[b.addr()]).build());
    (b, listen, levee)
}

fn is_hex16(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// A client that sends no forwarding headers: Levee sets X-Forwarded-For,
/// X-Real-IP, X-Forwarded-Proto, X-Forwarded-Host (the original Host), keeps
/// Host exactly, and generates a 16-hex-digit request id that the backend
/// sees and the client gets back.
#[test]
fn forwarding_headers_set_when_absent() {
    let (_b, listen, _levee) = echo_setup("echo");
    let host = "Shop.Example.COM:8080";
    let r = get_with(listen, "/echo?q=1", &[("Host", host)]);
    assert_eq!(r.status, 200);
    let echo = json_of(&r);
    assert_eq!(echo["path"], "/echo?q=1");
    assert_eq!(seen(&echo, "host"), [host], "Host must be kept exactly");
    assert_eq!(seen(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen(&echo, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(seen(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(seen(&echo, "x-forwarded-host"), [host]);

    let ids = seen(&echo, "x-request-id");
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(is_hex16(&ids[0]), "generated id {:?}", ids[0]);
    assert_eq!(r.header_all("x-request-id"), [ids[0].as_str()]);

    // Each request gets its own id.
    let again = get(listen, "/echo");
    let id2 = seen(&json_of(&again), "x-request-id");
    assert_eq!(id2.len(), 1);
    assert!(is_hex16(&id2[0]));
    assert_ne!(id2[0], ids[0]);
    assert_eq!(again.header("x-request-id"), Some(id2[0].as_str()));
}

/// A client that sends forwarding headers: X-Forwarded-For gets the client
/// address appended; X-Real-IP, X-Forwarded-Proto and X-Forwarded-Host are
/// Levee's, not the client's; the client's X-Request-Id is kept end to end.
#[test]
fn forwarding_headers_appended_or_overridden() {
    let (_b, listen, _levee) = echo_setup("echo");
    let r = get_with(
        listen,
        "/echo",
        &[
            ("Host", "app.test"),
            ("X-Forwarded-For", "203.0.113.7, 198.51.100.2"),
            ("X-Real-IP", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "spoofed.test"),
            ("X-Request-Id", "client-id-42"),
        ],
    );
    assert_eq!(r.status, 200);
    let echo = json_of(&r);
    assert_eq!(
        seen(&echo, "x-forwarded-for"),
        ["203.0.113.7, 198.51.100.2, 127.0.0.1"]
    );
    assert_eq!(seen(&echo, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(seen(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(seen(&echo, "x-forwarded-host"), ["app.test"]);
    assert_eq!(seen(&echo, "host"), ["app.test"]);
    assert_eq!(seen(&echo, "x-request-id"), ["client-id-42"]);
    assert_eq!(r.header_all("x-request-id"), ["client-id-42"]);
}

/// Several X-Forwarded-For lines are one comma-separated list (RFC 9110
/// §5.3): every hop must survive, with the client address appended once.
#[test]
fn x_forwarded_for_on_several_lines_is_one_list() {
    let (_b, listen, _levee) = echo_setup("echo");
    let r = get_with(
        listen,
        "/echo",
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-For", "198.51.100.2"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        seen(&json_of(&r), "x-forwarded-for"),
        ["203.0.113.7, 198.51.100.2, 127.0.0.1"],
        "no hop of the client's X-Forwarded-For may be lost"
    );
}

/// Hop-by-hop request headers (Connection, Keep-Alive, TE, Upgrade,
/// Proxy-Connection, and any header Connection names) stop at Levee;
/// end-to-end headers pass. Of `TE`, only `trailers` goes on: Levee passes
/// trailers, so the endpoint may send them.
#[test]
fn request_hop_by_hop_headers_are_not_forwarded() {
    let (_b, listen, _levee) = echo_setup("echo");
    let mut c = Client::connect(listen);
    let r = c.send(
        "GET",
        "/echo",
        &[
            ("Connection", "keep-alive, X-Secret, Upgrade"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("TE", "deflate, trailers"),
            // Not `websocket`: that one is tunnelled (tests/websocket.rs).
            ("Upgrade", "h2c"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Secret", "per-hop"),
            ("X-Keep", "end-to-end"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let echo = json_of(&r);
    for h in [
        "connection",
        "keep-alive",
        "upgrade",
        "proxy-connection",
        "x-secret",
    ] {
        assert_eq!(seen(&echo, h), Vec::<String>::new(), "{h} was forwarded");
    }
    assert_eq!(seen(&echo, "te"), ["trailers"]);
    assert_eq!(seen(&echo, "x-keep"), ["end-to-end"]);
    // The client connection is still in keep-alive use.
    assert_eq!(c.get("/").status, 200);
}

/// `Connection` is a list too (RFC 9110 §5.3): a header named in a second
/// Connection line is as hop-by-hop as one named in the first, in requests
/// and in responses.
#[test]
fn connection_header_on_several_lines_strips_every_named_header() {
    let (_b, listen, _levee) = echo_setup("echo");
    let r = get_with(
        listen,
        "/echo",
        &[
            ("Connection", "keep-alive"),
            ("Connection", "X-Secret"),
            ("X-Secret", "per-hop"),
            ("X-Keep", "end-to-end"),
        ],
    );
    assert_eq!(r.status, 200);
    let echo = json_of(&r);
    assert_eq!(seen(&echo, "x-keep"), ["end-to-end"]);
    let forwarded = seen(&echo, "x-secret");

    // The test Backend (hyper) folds Connection lines into one, so the
    // response side needs an upstream that writes its bytes verbatim.
    let upstream = canned_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-A\r\n\
          Connection: X-B\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n\r\nok",
        false,
    );
    let listen2 = free_addr();
    let _levee2 = Levee::start(&ConfigBuilder::simple(listen2, &[upstream]).build());
    let r = get(listen2, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
    assert_eq!(r.header("x-c"), Some("3"));
    let returned: Vec<&str> = ["x-a", "x-b"]
        .into_iter()
        .filter(|h| r.header(h).is_some())
        .collect();

    assert_eq!(
        (forwarded, returned),
        (Vec::<String>::new(), Vec::<&str>::new()),
        "(request headers forwarded, response headers returned) although \
         named in a Connection line"
    );
}

/// Hop-by-hop headers in the backend's response are not returned to the
/// client; end-to-end ones are, and the request id is added.
#[test]
fn response_hop_by_hop_headers_are_not_returned() {
    let (_b, listen, _levee) = echo_setup("resp");
    let mut c = Client::connect(listen);
    let path = "/?header=Connection:X-Private&header=X-Private:secret\
                &header=Keep-Alive:timeout%3D5&header=Proxy-Connection:keep-alive\
                &header=Upgrade:h2c&header=X-Normal:ok";
    let r = c.get(path);
    assert_eq!(outcome(&r), (200, "resp".into()));
    for h in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "x-private",
    ] {
        assert_eq!(r.header_all(h), Vec::<&str>::new(), "{h} was returned");
    }
    assert_eq!(r.header("x-normal"), Some("ok"));
    assert!(r.header("x-request-id").is_some_and(is_hex16));
    assert_eq!(r.text(), "hello from resp\n");
    // Still a keep-alive connection for the client.
    assert_eq!(outcome(&c.get("/")), (200, "resp".into()));
}

// ---------------------------------------------------------------------------
// 3. Bodies
// ---------------------------------------------------------------------------

/// A chunked request body (odd chunk sizes, written in several pieces) is
/// forwarded byte for byte.
#[test]
fn chunked_request_body_forwarded_intact() {
    let (b, listen, _levee) = echo_setup("up");
    let sizes = [1usize, 10, 4096, 65_536, 3, 200_000, 7, 16_384];
    let total: usize = sizes.iter().sum();
    let data = download_pattern(total);

    let mut c = Client::connect(listen);
    c.conn
        .write_all(b"POST /upload HTTP/1.1\r\nHost: up.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("write head");
    let mut at = 0;
    for size in sizes {
        let mut chunk = format!("{size:x}\r\n").into_bytes();
        chunk.extend_from_slice(&data[at..at + size]);
        chunk.extend_from_slice(b"\r\n");
        c.conn.write_all(&chunk).expect("write chunk");
        at += size;
    }
    c.conn.write_all(b"0\r\n\r\n").expect("write last chunk");
    let r = c.conn.read_response(T).expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(json_of(&r), json!({ "bytes": total }));
    assert_eq!(b.requests(), 1);

    // The connection is reusable after a chunked upload.
    let r = c.send("POST", "/upload", &[], &[b'z'; 1000]);
    assert_eq!(json_of(&r), json!({ "bytes": 1000 }));
}

/// A chunked response streams through with its content intact; a sized
/// one keeps its Content-Length.
#[test]
fn chunked_and_sized_responses_pass_through() {
    let (_b, listen, _levee) = echo_setup("down");
    let mut c = Client::connect(listen);

    let n = 300_001;
    let r = c.get(&format!("/download?bytes={n}&chunk=7000&chunked=1"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), n);
    assert!(is_download_pattern(&r.body), "chunked body corrupted");

    let r = c.get(&format!("/download?bytes={n}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("300001"));
    assert_eq!(r.body.len(), n);
    assert!(is_download_pattern(&r.body), "sized body corrupted");
}

/// A chunked body as text: its data and its trailer lines.
fn dechunk(mut s: &str) -> (String, Vec<String>) {
    let mut data = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
        if size == 0 {
            let section = rest.strip_suffix("\r\n").expect("the final CRLF");
            let lines = section.lines().map(str::to_ascii_lowercase).collect();
            return (data, lines);
        }
        data.push_str(&rest[..size]);
        s = rest[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after a chunk");
    }
}

/// A chunked request body's trailer fields reach the endpoint after the
/// last chunk, with `TE: trailers` and the `Trailer` announcement; fields no
/// trailer section may carry (framing, routing) are dropped. The client
/// connection carries another request afterwards.
#[test]
fn chunked_request_trailers_reach_the_endpoint() {
    let listen = free_addr();
    let _levee = Levee::start(&ConfigBuilder::simple(listen, &[mirror_upstream()]).build());
    let mut c = Client::connect(listen);
    c.conn
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: t.test\r\nTE: trailers\r\nTrailer: X-Checksum\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\
              X-Checksum: abc\r\nContent-Length: 99\r\nHost: evil.test\r\nX-Other: 1\r\n\r\n",
        )
        .expect("write");
    let r = c.conn.read_response(T).expect("response");
    assert_eq!(r.status, 200);
    let wire = r.text();
    let (head, body) = wire.split_once("\r\n\r\n").expect("head and body");
    let head: Vec<String> = head.lines().map(str::to_ascii_lowercase).collect();
    for line in [
        "transfer-encoding: chunked",
        "te: trailers",
        "trailer: x-checksum",
    ] {
        assert!(head.iter().any(|l| l == line), "{line:?} not in {head:?}");
    }
    let (data, mut trailers) = dechunk(body);
    trailers.sort();
    assert_eq!(
        (data.as_str(), trailers),
        (
            "hello world",
            vec!["x-checksum: abc".into(), "x-other: 1".into()]
        )
    );
    assert_eq!(c.get("/next").status, 200);
}

/// A chunked response's trailer fields reach the client after the last
/// chunk, announced by the endpoint's `Trailer` header; a framing field in
/// them is dropped. The client connection stays usable.
#[test]
fn chunked_response_trailers_reach_the_client() {
    let upstream = canned_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
          5\r\nhello\r\n0\r\nX-Checksum: abc\r\nContent-Length: 99\r\n\r\n",
        false,
    );
    let listen = free_addr();
    let _levee = Levee::start(&ConfigBuilder::simple(listen, &[upstream]).build());
    let mut c = Client::connect(listen);
    for _ in 0..2 {
        // `TE: trailers`: hyper's server (`server.http1 = "hyper"`) sends
        // trailers only to a client that asks for them.
        let r = c.send("GET", "/", &[("TE", "trailers")], b"");
        assert_eq!((r.status, r.text().as_str()), (200, "hello"));
        assert_eq!(r.header("trailer"), Some("X-Checksum"));
        assert_eq!(r.trailer("x-checksum"), Some("abc"));
        assert_eq!(r.trailers.len(), 1, "{:?}", r.trailers);
    }
}

/// `Expect: 100-continue`: Levee answers `100 Continue` before the body is
/// sent, then forwards the body and returns the backend's answer.
#[test]
fn expect_100_continue() {
    let (_b, listen, _levee) = echo_setup("exp");
    let body = download_pattern(50_000);
    let mut c = Client::connect(listen);
    c.conn
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: exp.test\r\nExpect: 100-continue\r\n\
              Content-Length: 50000\r\n\r\n",
        )
        .expect("write head");
    let interim = read_interim_head(c.conn.stream(), T);
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim:?}"
    );
    c.conn.write_all(&body).expect("write body");
    let r = c.conn.read_response(T).expect("final response");
    assert_eq!(r.status, 200);
    assert_eq!(json_of(&r), json!({ "bytes": 50_000 }));
}

// ---------------------------------------------------------------------------
// 4. Keep-alive on both sides
// ---------------------------------------------------------------------------

/// Many requests on one client connection all succeed, in order.
#[test]
fn many_requests_on_one_client_connection() {
    let (b, listen, _levee) = echo_setup("ka");
    let mut c = Client::connect(listen);
    for i in 0..100 {
        let r = match i % 3 {
            0 => c.get(&format!("/echo?i={i}")),
            1 => c.send("POST", "/upload", &[], &vec![b'x'; i]),
            _ => c.get("/download?bytes=5000&chunked=1"),
        };
        assert_eq!(r.status, 200, "request {i}");
        match i % 3 {
            0 => assert_eq!(json_of(&r)["path"], format!("/echo?i={i}")),
            1 => assert_eq!(json_of(&r), json!({ "bytes": i })),
            _ => assert!(r.body.len() == 5000 && is_download_pattern(&r.body)),
        }
    }
    assert!(!c.conn.peer_closed());
    assert_eq!(b.requests(), 100);
}

/// Upstream connections are pooled: 200 sequential requests, over one
/// client connection and then over a fresh client connection each, reuse a
/// connection or two per backend, and the metrics say ≥ 99 % were reused.
#[test]
fn upstream_connections_are_reused() {
    let b1 = Backend::start("r1");
    let b2 = Backend::start("r2");
    let listen = free_addr();
    let cfg = ConfigBuilder::simple(listen, &[b1.addr(), b2.addr()]).set("server", "workers = 1");
    let levee = Levee::start(&cfg.build());

    // Sized, chunked, uploaded and echoed bodies: each leaves the upstream
    // connection reusable once read to the end.
    let mut c = Client::connect(listen);
    for i in 0..100 {
        let r = match i % 4 {
            0 => c.get("/"),
            1 => c.get("/download?bytes=3000&chunk=1000&chunked=1"),
            2 => c.send("POST", "/upload", &[], &[b'u'; 2000]),
            _ => c.get("/echo"),
        };
        assert_eq!(r.status, 200, "request {i}");
    }
    // Client keep-alive is not what keeps upstream connections alive.
    for i in 0..100 {
        let r = fetch(listen, "GET", "/", &[("Connection", "close")]);
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(b1.requests() + b2.requests(), 200);
    for b in [&b1, &b2] {
        assert!(
            b.connections() <= 2,
            "{}: {} connections for {} requests",
            b.name(),
            b.connections(),
            b.requests()
        );
    }
    let reused = levee
        .metric(
            "levee_upstream_requests_total",
            &[("cluster", "app"), ("connection", "reused")],
        )
        .unwrap_or(0.0);
    let new = levee
        .metric(
            "levee_upstream_requests_total",
            &[("cluster", "app"), ("connection", "new")],
        )
        .unwrap_or(0.0);
    assert_eq!(reused + new, 200.0);
    assert!(
        reused / (reused + new) >= 0.99,
        "reused {reused}, new {new}"
    );
    assert_eq!(new as u64, b1.connections() + b2.connections());
}

/// A backend that answers `Connection: close` closes its connection; Levee
/// must not hand that connection to a later request, and the client keeps
/// its own connection (Connection is hop-by-hop).
#[test]
fn upstream_connection_close_is_honoured() {
    let b = Backend::start("closer");
    let listen = free_addr();
    let cfg = ConfigBuilder::simple(listen, &[b.addr()]).set("server", "workers = 1");
    let levee = Levee::start(&cfg.build());

    let mut c = Client::connect(listen);
    for i in 0..20 {
        let path = if i % 2 == 1 {
            "/?header=Connection:close"
        } else {
            "/"
        };
        let r = c.get(path);
        assert_eq!(outcome(&r), (200, "closer".into()), "request {i}");
        assert_eq!(r.header("connection"), None, "request {i}");
    }
    assert!(!c.conn.peer_closed());
    // Requests 1, 3, .., 19 each end their connection: ten connections.
    assert_eq!(b.connections(), 10);
    let new = levee.metric(
        "levee_upstream_requests_total",
        &[("cluster", "app"), ("connection", "new")],
    );
    assert_eq!(new, Some(10.0));
}

// ---------------------------------------------------------------------------
// 5. Balancing
// ---------------------------------------------------------------------------

/// Round robin over three backends: 30 sequential requests split 10/10/10,
/// each backend once in every three.
#[test]
fn round_robin_splits_evenly() {
    let bs = [
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    ];
    let listen = free_addr();
    let addrs: Vec<_> = bs.iter().map(Backend::addr).collect();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster_with("app", &addrs, &["balance = \"round_robin\""])
        .route("all", "app");
    let _levee = Levee::start(&cfg.build());

    let mut c = Client::connect(listen);
    let order: Vec<String> = (0..30).map(|_| served_by(&c.get("/"))).collect();
    for window in order.chunks(3) {
        let mut w = window.to_vec();
        w.sort();
        assert_eq!(w, ["a", "b", "c"], "order {order:?}");
    }
    for b in &bs {
        assert_eq!(b.requests(), 10, "{}", b.name());
    }
}

/// Weighted round robin 5:3:1:1 gives exactly 5/3/1/1 of every 10 sequential
/// requests, interleaved (no endpoint more than twice in a row).
#[test]
fn weighted_round_robin_five_three_one_one() {
    let bs = [
        Backend::start("w5"),
        Backend::start("w3"),
        Backend::start("w1a"),
        Backend::start("w1b"),
    ];
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .set("server", "workers = 1")
        .listener("main", listen)
        .cluster_with("app", &[], &["balance = \"weighted_round_robin\""])
        .endpoint("app", bs[0].addr(), &["weight = 5"])
        .endpoint("app", bs[1].addr(), &["weight = 3"])
        .endpoint("app", bs[2].addr(), &["weight = 1"])
        .endpoint("app", bs[3].addr(), &["weight = 1"])
        .route("all", "app");
    let _levee = Levee::start(&cfg.build());

    let mut c = Client::connect(listen);
    let order: Vec<String> = (0..40).map(|_| served_by(&c.get("/"))).collect();
    let want: HashMap<String, usize> = [("w5", 5), ("w3", 3), ("w1a", 1), ("w1b", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    for window in order.chunks(10) {
        assert_eq!(
            tally(window.iter().map(String::as_str)),
            want,
            "order {order:?}"
        );
    }
    let longest = order
        .chunk_by(|a, b| a == b)
        .map(<[String]>::len)
        .max()
        .unwrap_or(0);
    assert!(longest <= 2, "bursty order {order:?}");
    let counts: Vec<u64> = bs.iter().map(Backend::requests).collect();
    assert_eq!(counts, [20, 12, 4, 4]);
}

/// A `backup = true` endpoint takes no traffic while a primary exists.
#[test]
fn backup_endpoint_idle_while_primaries_exist() {
    let p1 = Backend::start("p1");
    let p2 = Backend::start("p2");
    let backup = Backend::start("backup");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster("app", &[p1.addr(), p2.addr()])
        .endpoint("app", backup.addr(), &["backup = true"])
        .route("all", "app");
    let levee = Levee::start(&cfg.build());

    let mut c = Client::connect(listen);
    for i in 0..30 {
        let r = c.get("/");
        assert_eq!(r.status, 200, "request {i}");
        assert_ne!(served_by(&r), "backup", "request {i}");
    }
    assert_eq!(backup.requests(), 0);
    assert_eq!(backup.connections(), 0);
    assert_eq!(p1.requests() + p2.requests(), 30);
    assert!(p1.requests() > 0 && p2.requests() > 0);
    let to_backup = levee
        .metric(
            "levee_upstream_requests_total",
            &[("endpoint", &backup.addr().to_string())],
        )
        .unwrap_or(0.0);
    assert_eq!(to_backup, 0.0);
}

/// Round robin over primaries stays even when the cluster also lists a
/// backup: the idle backup must not hand its turn to a neighbour.
#[test]
fn round_robin_with_backup_splits_primaries_evenly() {
    let p1 = Backend::start("p1");
    let p2 = Backend::start("p2");
    let backup = Backend::start("backup");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster("app", &[p1.addr(), p2.addr()])
        .endpoint("app", backup.addr(), &["backup = true"])
        .route("all", "app");
    let _levee = Levee::start(&cfg.build());

    let mut c = Client::connect(listen);
    let order: Vec<String> = (0..30).map(|_| served_by(&c.get("/"))).collect();
    assert_eq!(backup.requests(), 0);
    assert_eq!(
        (p1.requests(), p2.requests()),
        (15, 15),
        "primaries must alternate; order {order:?}"
    );
}

// ---------------------------------------------------------------------------
// 6. Admin: /status and /metrics
// ---------------------------------------------------------------------------

/// `/status` lists the listeners (with the routes each serves, in order),
/// the routes with their matchers, and the clusters with their endpoints.
#[test]
fn status_lists_listeners_routes_and_clusters() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let bk = Backend::start("bk");
    let pub_addr = free_addr();
    let int_addr = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("public", pub_addr)
        .listener("internal", int_addr)
        .cluster_with("web", &[], &["balance = \"weighted_round_robin\""])
        .endpoint("web", a.addr(), &["weight = 3"])
        .endpoint("web", b.addr(), &[])
        .endpoint("web", bk.addr(), &["backup = true"])
        .cluster("ops", &[bk.addr()])
        .route_with(
            "ops",
            "ops",
            &["listeners = [\"internal\"]", "path_prefix = \"/ops\""],
        )
        .route_with(
            "api",
            "web",
            &[
                "host = \"*.example.com\"",
                "path_prefix = \"/api\"",
                "methods = [\"GET\"]",
            ],
        )
        .route_with("home", "web", &["path = \"/\""]);
    let levee = Levee::start(&cfg.build());
    let s = levee.status_json();

    let listeners = s["listeners"].as_array().expect("listeners array");
    let by_name = |name: &str| {
        listeners
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name} in {s:#}"))
    };
    assert_eq!(listeners.len(), 2);
    assert_eq!(by_name("public")["address"], pub_addr.to_string());
    assert_eq!(by_name("public")["routes"], json!(["api", "home"]));
    assert_eq!(by_name("internal")["address"], int_addr.to_string());
    assert_eq!(by_name("internal")["routes"], json!(["ops", "api", "home"]));

    let routes = s["routes"].as_array().expect("routes array");
    let names: Vec<&str> = routes.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["ops", "api", "home"]);
    assert_eq!(routes[1]["cluster"], "web");
    assert_eq!(routes[1]["host"], "*.example.com");
    assert_eq!(routes[1]["path_prefix"], "/api");
    assert_eq!(routes[1]["methods"], json!(["GET"]));
    assert_eq!(routes[2]["path"], "/");

    let clusters = s["clusters"].as_array().expect("clusters array");
    let web = clusters
        .iter()
        .find(|c| c["name"] == "web")
        .expect("cluster web");
    assert_eq!(web["balance"], "weighted_round_robin");
    let eps: Vec<(String, u64, bool)> = web["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap_or_default().to_owned(),
                e["weight"].as_u64().unwrap_or(0),
                e["backup"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            (a.addr().to_string(), 3, false),
            (b.addr().to_string(), 1, false),
            (bk.addr().to_string(), 1, true),
        ]
    );
    let ops = clusters
        .iter()
        .find(|c| c["name"] == "ops")
        .expect("cluster ops");
    assert_eq!(ops["balance"], "round_robin");
    assert_eq!(ops["endpoints"][0]["address"], bk.addr().to_string());
}

/// `/metrics` counts requests by route, cluster and status class; requests
/// that match no route count under the empty route and cluster.
#[test]
fn metrics_count_requests_by_route_cluster_and_class() {
    let web = Backend::start("web");
    let errs = Backend::start("errs");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster("web", &[web.addr()])
        .cluster("errs", &[errs.addr()])
        .route_with("status", "errs", &["path_prefix = \"/status\""])
        .route_with("site", "web", &["path_prefix = \"/web\""]);
    let levee = Levee::start(&cfg.build());

    let mut c = Client::connect(listen);
    for (path, status) in [
        ("/web", 200),
        ("/web/a", 200),
        ("/web/b", 200),
        ("/status/503", 503),
        ("/status/502", 502),
        ("/status/404", 404),
        ("/status/302", 302),
        ("/status/204", 204),
        ("/nowhere", 404),
    ] {
        assert_eq!(c.get(path).status, status, "{path}");
    }

    let req = "levee_requests_total";
    let site = [("route", "site"), ("cluster", "web")];
    let status = [("route", "status"), ("cluster", "errs")];
    assert_metric(&levee, req, &[site[0], site[1], ("class", "2xx")], 3.0);
    assert_metric(&levee, req, &[status[0], status[1], ("class", "5xx")], 2.0);
    assert_metric(&levee, req, &[status[0], status[1], ("class", "4xx")], 1.0);
    assert_metric(&levee, req, &[status[0], status[1], ("class", "3xx")], 1.0);
    assert_metric(&levee, req, &[status[0], status[1], ("class", "2xx")], 1.0);
    assert_metric(&levee, req, &[site[0], site[1], ("class", "4xx")], 0.0);
    assert_metric(
        &levee,
        req,
        &[("route", ""), ("cluster", ""), ("class", "4xx")],
        1.0,
    );
    assert_metric(&levee, req, &[], 9.0);
    assert_metric(
        &levee,
        "levee_upstream_requests_total",
        &[("cluster", "errs")],
        5.0,
    );
    assert_metric(
        &levee,
        "levee_upstream_requests_total",
        &[("cluster", "web"), ("endpoint", &web.addr().to_string())],
        3.0,
    );
}
