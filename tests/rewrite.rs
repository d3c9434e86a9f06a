//! Rewriting end to end, over real sockets: header rules with variables,
//! path and host rewrites, redirects and fixed responses, each judged by
//! what the backend received and what the client got.
//!
//! One Levee and one backend serve the whole binary (started on first use,
//! killed at exit); each test marks its requests with its own
//! `x-test-id` and finds them in the backend's log by it, so tests run in
//! parallel. Run with `cargo test --test rewrite`.

mod support;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(5);

const ROUTES: &str = r#"
[[routes]]
name = "headers"
path_prefix = "/h"
cluster = "app"
request_headers = { set = { "x-client" = "${client_addr}", "x-where" = "${route}/${cluster}", "x-tenant-copy" = "${header.x-tenant}", "x-tls" = "[${tls_version}][${sni}]", "x-id" = "${request_id}", "x-price" = "$$5 ${method} ${path}?${query}" }, add = { "x-via" = "levee" }, remove = ["x-debug"] }
response_headers = { set = { "x-served-by" = "${endpoint}", "x-user-was" = "${header.x-user}", "x-host-was" = "${host}" }, add = { "x-backend" = "seen" }, remove = ["x-backend-seq"] }

[[routes]]
name = "strip"
path_prefix = "/api"
cluster = "app"
rewrite = { strip_prefix = "/api" }

[[routes]]
name = "replace"
path_prefix = "/old"
cluster = "app"
rewrite = { replace_prefix = { from = "/old", to = "/new" } }

[[routes]]
name = "regex"
path_prefix = "/users"
cluster = "app"
rewrite = { path_regex = { pattern = '^/users/(\d+)/(?P<tab>\w+)$', replace = '/u/$1/${tab}' } }

[[routes]]
name = "tenant"
path_prefix = "/tenant"
cluster = "app"
rewrite = { host = "${header.x-tenant}.internal" }

[[routes]]
name = "to-https"
host = "old.example"
redirect = { status = 301, scheme = "https" }

[[routes]]
name = "moved"
path_prefix = "/moved"
redirect = { status = 308, host = "new.example", path = "/v2${path}", keep_query = false }

[[routes]]
name = "temporary"
path_prefix = "/temporary"
redirect = { status = 307, path = "/elsewhere" }

[[routes]]
name = "found"
path_prefix = "/found"
redirect = { path = "/there" }

[[routes]]
name = "static"
path = "/static"
respond = { status = 418, body = "short and stout\n", headers = { "content-type" = "text/plain", "x-id" = "${request_id}" } }
response_headers = { add = { "x-route" = "${route}" } }

[[routes]]
name = "down-always"
path_prefix = "/down-always"
cluster = "dead"
response_headers = { set = { "x-cors" = "*", "x-tried" = "${endpoint}", "x-user-was" = "${header.x-user}" }, always = true }

[[routes]]
name = "down"
path_prefix = "/down"
cluster = "dead"
response_headers = { set = { "x-cors" = "*" } }

[[routes]]
name = "plain"
path_prefix = "/"
cluster = "app"
"#;

struct Fixture {
    listen: SocketAddr,
    dead_addr: SocketAddr,
    backend: Backend,
    levee: Levee,
    _dead: socket2::Socket,
}

/// The Levee's pid, killed when the test binary exits (statics are never
/// dropped).
static PID: AtomicU32 = AtomicU32::new(0);

extern "C" fn kill_levee() {
    let pid = PID.load(Ordering::SeqCst);
    if pid != 0 {
        // SAFETY: kill(2) on a pid this process spawned; no memory involved.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let backend = Backend::start("b1");
        let (dead, dead_addr) = refusing_addr();
        let listen = free_addr();
        let cfg = ConfigBuilder::new()
            .set("server", "workers = 1")
            .listener("main", listen)
            .cluster("app", &[backend.addr()])
            .cluster_with(
                "dead",
                &[dead_addr],
                &["retry = { max_attempts = 1 }", "connect_timeout = \"1s\""],
            )
            .raw(ROUTES)
            .build();
        let levee = Levee::start(&cfg);
        PID.store(levee.pid(), Ordering::SeqCst);
        // SAFETY: registers a plain function, run once at exit.
        unsafe {
            libc::atexit(kill_levee);
        }
        Fixture {
            listen,
            dead_addr,
            backend,
            levee,
            _dead: dead,
        }
    })
}

/// A fresh id to find this test's requests by.
fn test_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}", N.fetch_add(1, Ordering::SeqCst))
}

/// `method path` with `headers` (and Host: the listener), marked `id`.
fn send(method: &str, path: &str, headers: &[(&str, &str)], id: &str) -> HttpResponse {
    let f = fixture();
    let mut all = headers.to_vec();
    all.push(("x-test-id", id));
    http_request(f.listen, method, path, &all, b"", T)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A GET with the given Host line, written by hand.
fn send_with_host(host: &str, path: &str) -> HttpResponse {
    let bytes = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    send_raw(fixture().listen, bytes.as_bytes(), T)
        .parse()
        .unwrap_or_else(|e| panic!("GET {path} (Host {host}): {e}"))
}

/// What the backend received for the request marked `id`; `None` if it
/// received none.
fn received(id: &str) -> Option<RecordedRequest> {
    fixture()
        .backend
        .recorded()
        .into_iter()
        .find(|r| r.header("x-test-id") == Some(id))
}

fn all<'a>(r: &'a RecordedRequest, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn request_headers_are_set_added_and_removed_with_variables() {
    let id = test_id();
    let r = send(
        "GET",
        "/h/x?a=1",
        &[
            ("x-tenant", "blue"),
            ("x-debug", "1"),
            ("x-via", "edge"),
            ("x-user", "ada"),
            ("x-client", "spoofed"),
        ],
        &id,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = received(&id).expect("the backend got the request");
    assert_eq!(
        got.header("x-client"),
        Some("127.0.0.1"),
        "set replaces the client's value"
    );
    assert_eq!(all(&got, "x-client").len(), 1);
    assert_eq!(got.header("x-where"), Some("headers/app"));
    assert_eq!(got.header("x-tenant-copy"), Some("blue"));
    assert_eq!(
        got.header("x-tls"),
        Some("[][]"),
        "no TLS on a plain listener"
    );
    assert_eq!(got.header("x-price"), Some("$5 GET /h/x?a=1"));
    let request_id = r.header("x-request-id").expect("x-request-id");
    assert_eq!(got.header("x-id"), Some(request_id));
    assert_eq!(
        all(&got, "x-via"),
        ["edge", "levee"],
        "add keeps what was there"
    );
    assert_eq!(got.header("x-debug"), None, "removed");
    assert_eq!(got.uri, "/h/x?a=1", "no path rule: the path is unchanged");
}

#[test]
fn response_headers_are_set_added_and_removed_with_variables() {
    let id = test_id();
    let r = send("GET", "/h/y", &[("x-user", "ada")], &id);
    assert_eq!(r.status, 200);
    let f = fixture();
    assert_eq!(
        r.header("x-served-by"),
        Some(f.backend.addr().to_string().as_str())
    );
    assert_eq!(
        r.header("x-user-was"),
        Some("ada"),
        "a request header, kept for the response"
    );
    let host = f.listen.to_string();
    assert_eq!(r.header("x-host-was"), Some(host.as_str()));
    assert_eq!(r.header_all("x-backend"), ["b1", "seen"]);
    assert_eq!(r.header("x-backend-seq"), None, "removed");
    // Without the request header, its variable renders empty.
    let r = send("GET", "/h/y", &[], &test_id());
    assert_eq!(r.header("x-user-was"), Some(""));
}

#[test]
fn a_route_without_rules_changes_nothing() {
    let id = test_id();
    let r = send("GET", "/plain/p?q=1", &[("x-debug", "1")], &id);
    assert_eq!(r.status, 200);
    assert!(r.header("x-backend-seq").is_some());
    assert_eq!(r.header("x-served-by"), None);
    let got = received(&id).expect("forwarded");
    assert_eq!(got.header("x-debug"), Some("1"));
    assert_eq!(got.uri, "/plain/p?q=1");
}

#[test]
fn a_prefix_is_stripped_or_replaced_and_the_query_kept() {
    for (path, want) in [
        ("/api/echo?x=1", "/echo?x=1"),
        ("/api", "/"),
        ("/api/", "/"),
        ("/old/a/b?c=2", "/new/a/b?c=2"),
        ("/old", "/new"),
    ] {
        let id = test_id();
        let r = send("GET", path, &[], &id);
        assert_eq!(r.status, 200, "{path}");
        let got = received(&id).unwrap_or_else(|| panic!("{path} forwarded"));
        assert_eq!(got.uri, want, "{path}");
    }
    // The backend's own view: /echo answered, as the rewritten path says.
    let r = send("GET", "/api/echo?x=1", &[], &test_id());
    let echo = r.json().expect("echo JSON");
    assert_eq!(echo["path"], "/echo?x=1", "{echo}");
}

#[test]
fn a_regex_rewrites_the_path_with_its_groups() {
    let id = test_id();
    send("GET", "/users/42/posts?z=1", &[], &id);
    assert_eq!(received(&id).expect("forwarded").uri, "/u/42/posts?z=1");
    // No match: the path goes as it came.
    let id = test_id();
    send("GET", "/users/ada", &[], &id);
    assert_eq!(received(&id).expect("forwarded").uri, "/users/ada");
}

#[test]
fn the_host_is_rewritten_and_the_original_forwarded() {
    let id = test_id();
    let r = send("GET", "/tenant/x", &[("x-tenant", "blue")], &id);
    assert_eq!(r.status, 200);
    let got = received(&id).expect("forwarded");
    assert_eq!(got.header("host"), Some("blue.internal"));
    let listen = fixture().listen.to_string();
    assert_eq!(got.header("x-forwarded-host"), Some(listen.as_str()));
    // A header that makes no host ("bad/tenant.internal"): refused, and
    // the backend never sees the request.
    let id = test_id();
    let r = send("GET", "/tenant/x", &[("x-tenant", "bad/tenant")], &id);
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json().expect("JSON error")["error"], "rewrite_failed");
    assert!(received(&id).is_none());
}

#[test]
fn redirects_carry_status_scheme_host_path_and_query() {
    let f = fixture();
    let r = send_with_host("old.example", "/a/b?q=1");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://old.example/a/b?q=1"));

    let ids = [test_id(), test_id(), test_id()];
    let r = send("GET", "/moved/x?q=1", &[], &ids[0]);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("http://new.example/v2/moved/x"),
        "keep_query = false"
    );

    let listen = f.listen;
    let r = send("POST", "/temporary/x", &[], &ids[1]);
    assert_eq!(r.status, 307);
    assert_eq!(
        r.header("location"),
        Some(format!("http://{listen}/elsewhere").as_str())
    );

    let r = send("GET", "/found?k=v", &[], &ids[2]);
    assert_eq!(r.status, 302, "the default status");
    assert_eq!(
        r.header("location"),
        Some(format!("http://{listen}/there?k=v").as_str())
    );
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.body.len(), 0);
    for id in &ids {
        assert!(received(id).is_none(), "a redirect never reaches a backend");
    }
}

#[test]
fn a_static_response_with_its_headers_and_the_routes_response_rules() {
    let f = fixture();
    let r = send("GET", "/static", &[], &test_id());
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "short and stout\n");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-id"), r.header("x-request-id"));
    assert_eq!(
        r.header("x-route"),
        Some("static"),
        "response rules act on the route's answer"
    );
    // Counted under the route, with no cluster.
    let counted = || {
        f.levee
            .metric(
                "levee_requests_total",
                &[("route", "static"), ("class", "4xx")],
            )
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(T, || counted() >= 1.0),
        "{}",
        f.levee.metrics_text()
    );
}

#[test]
fn a_static_response_to_head_has_no_body() {
    let r = send("HEAD", "/static", &[], &test_id());
    assert_eq!(r.status, 418);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(r.body.is_empty(), "{:?}", r.text());
}

#[test]
fn a_static_answer_to_a_request_with_a_body_keeps_the_connection_usable() {
    let f = fixture();
    let mut conn = RawConn::connect_timeout(f.listen, T).expect("connect");
    let listen = f.listen;
    conn.write_all(
        format!("POST /static HTTP/1.1\r\nHost: {listen}\r\nContent-Length: 5\r\n\r\nhello")
            .as_bytes(),
    )
    .expect("write");
    let first = conn.read_response(T).expect("first response");
    assert_eq!(first.status, 418);
    conn.write_all(
        format!("GET /static HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("write");
    let second = conn
        .read_response(T)
        .expect("second response on the same connection");
    assert_eq!(second.status, 418);
}

#[test]
fn response_rules_reach_levees_own_errors_only_with_always() {
    let r = send("GET", "/down-always/x", &[("x-user", "ada")], &test_id());
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("x-cors"), Some("*"));
    let dead = fixture().dead_addr.to_string();
    assert_eq!(
        r.header("x-tried"),
        Some(dead.as_str()),
        "the endpoint that failed"
    );
    assert_eq!(r.header("x-user-was"), Some("ada"));
    let r = send("GET", "/down/x", &[], &test_id());
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("x-cors"), None);
}

/// The pipeline's rewriting steps on a route that has only request rules:
/// keeping request headers for response rules, and the response rules,
/// cost no allocation (a route with no rules at all has no `Rewrite`, so
/// each step is one `None` test).
mod allocations {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::net::SocketAddr;

    use http::{HeaderMap, HeaderValue, Method, Uri};
    use levee::rewrite::{Conn, Headers, Vars};
    use levee::route::rewrite::build;

    struct Counting;
    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }
    // SAFETY: forwards to the system allocator unchanged; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: the caller's contract is passed on as is.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
    #[global_allocator]
    static COUNTING: Counting = Counting;

    fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
        let before = ALLOCATIONS.with(Cell::get);
        let r = f();
        (r, ALLOCATIONS.with(Cell::get) - before)
    }

    fn route(text: &str) -> levee::config::RouteConfig {
        let text = format!(
            "[server]\nallow_no_listeners = true\n[[clusters]]\nname = \"c\"\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n{text}"
        );
        levee::config::parse(std::path::Path::new("t.toml"), &text)
            .expect("valid")
            .routes
            .remove(0)
    }

    #[test]
    fn steps_a_route_does_not_use_allocate_nothing() {
        assert!(build(&route("")).is_none());
        let rw =
            build(&route("request_headers = { set = { \"x-a\" = \"1\" } }")).expect("a rewrite");
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("ada"));
        let id = HeaderValue::from_static("id");
        let uri = Uri::from_static("/x");
        let vars = Vars {
            conn: Conn {
                client: SocketAddr::from(([127, 0, 0, 1], 1)),
                scheme: "http",
                tls_version: None,
                sni: None,
            },
            request_id: &id,
            route: "r",
            cluster: "c",
            endpoint: None,
            method: &Method::GET,
            uri: &uri,
            headers: Headers::Map(&headers),
        };
        let ((kept, response), n) = count(|| (rw.keep(&headers), rw.response(&vars, false)));
        assert!(kept.is_none() && response.is_none());
        assert_eq!(n, 0, "allocations");
        // The counter counts: response rules that read a request header do
        // allocate to keep it.
        let rw = build(&route(
            "response_headers = { set = { \"x-b\" = \"${header.x-user}\" } }",
        ))
        .expect("a rewrite");
        let (kept, n) = count(|| rw.keep(&headers));
        assert!(kept.is_some());
        assert!(n > 0);
    }
}
