//! Reloads (SIGHUP and admin `POST /reload`) and graceful shutdown (SIGTERM,
//! SIGINT), end to end against the real binary.
//!
//! - reloads under continuous load lose no request, and every request goes
//!   where the config in force when it was sent says;
//! - a bad file (syntax or semantic error) is refused, reported with its
//!   file:line:column, counted, and the old config keeps serving;
//! - requests in flight survive a reload that removes their route;
//! - listeners come and go with reloads;
//! - SIGTERM/SIGINT stop accepting, let in-flight requests finish, exit 0,
//!   and the drain is bounded by `drain_timeout`.
//!
//! Run with `cargo test --test reload_shutdown`.

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(10);

/// A config with one listener `main` on `listen`, one cluster `app` over
/// `backends`, one route `all`; the admin listener stays on `admin` across
/// rewrites; no access log (it is not what these tests look at).
fn simple(listen: SocketAddr, admin: SocketAddr, backends: &[SocketAddr]) -> ConfigBuilder {
    ConfigBuilder::simple(listen, backends)
        .admin_at(admin)
        .set("access_log", "enabled = false")
}

fn backend_name(r: &HttpResponse) -> String {
    r.header("x-backend").unwrap_or("<none>").to_owned()
}

/// `GET path` on a new connection; panics unless it answers 200.
#[track_caller]
fn get_ok(addr: SocketAddr, path: &str) -> HttpResponse {
    match http_get(addr, path) {
        Ok(r) if r.status == 200 => r,
        Ok(r) => panic!("GET {path} on {addr}: status {} {:?}", r.status, r.text()),
        Err(e) => panic!("GET {path} on {addr}: {e}"),
    }
}

/// Sends `n` requests on new connections and returns the backends that
/// answered them.
#[track_caller]
fn answered_by(addr: SocketAddr, n: usize) -> Vec<String> {
    (0..n).map(|_| backend_name(&get_ok(addr, "/"))).collect()
}

fn reloads(levee: &Levee, result: &str) -> u64 {
    levee
        .metric("levee_config_reloads_total", &[("result", result)])
        .unwrap_or(0.0) as u64
}

fn connect_refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Starts `GET path` with `Connection: close` on its own thread.
fn request_in_background(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> JoinHandle<Result<HttpResponse, String>> {
    let path = path.to_owned();
    std::thread::spawn(move || http_request(addr, "GET", &path, &[], b"", timeout))
}

// ---------------------------------------------------------------------------
// a. Reload under continuous load.

const TOTAL: u64 = 2000;
const RELOADS: u64 = 10;
/// Reload k is triggered once k * STEP requests have completed, and no
/// request beyond (reloads done + 1) * STEP + SLACK is sent before the next
/// reload is confirmed: every reload happens while requests are flowing.
const STEP: u64 = 150;
const SLACK: u64 = 100;

/// The backends config generation `g` routes to: the initial config (0) has
/// all four, then odd reloads set A and even reloads set B.
fn generation_set(g: u64) -> &'static [&'static str] {
    match g {
        0 => &["a1", "a2", "b1", "b2"],
        g if g % 2 == 1 => &["a1", "a2"],
        _ => &["b1", "b2"],
    }
}

#[derive(Default)]
struct Load {
    /// Next request index to claim.
    issued: AtomicU64,
    /// Requests finished (whatever the outcome).
    done: AtomicU64,
    /// Reloads triggered (config rewritten and signal / POST sent).
    started: AtomicU64,
    /// Reloads known to be applied.
    confirmed: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Requests answered by a backend their config generation excludes.
    misrouted: Mutex<Vec<String>>,
    /// Requests sent after the last reload was confirmed, by backend.
    after_last: Mutex<HashMap<String, u64>>,
}

impl Load {
    /// Claims the next request index, waiting (bounded) for the reload that
    /// lets it go; `None` when all requests are claimed.
    fn claim(&self) -> Option<u64> {
        let j = self.issued.fetch_add(1, Ordering::SeqCst);
        if j >= TOTAL {
            return None;
        }
        let allowed = || {
            let c = self.confirmed.load(Ordering::SeqCst);
            c == RELOADS || j < (c + 1) * STEP + SLACK
        };
        if !wait_until(Duration::from_secs(60), allowed) {
            self.fail(format!("request {j}: the reloads stalled"));
        }
        Some(j)
    }

    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    /// Checks one answer against the generations that may have served it.
    fn check(&self, j: u64, gen_before: u64, result: Result<HttpResponse, String>) {
        let gen_after = self.started.load(Ordering::SeqCst);
        match result {
            Err(e) => self.fail(format!("request {j}: {e}")),
            Ok(r) if r.status != 200 => {
                self.fail(format!("request {j}: status {} {:?}", r.status, r.text()))
            }
            Ok(r) => {
                let name = backend_name(&r);
                if r.text() != format!("hello from {name}\n") {
                    self.fail(format!("request {j}: body {:?}", r.text()));
                }
                let allowed =
                    (gen_before..=gen_after).any(|g| generation_set(g).contains(&name.as_str()));
                if !allowed {
                    self.misrouted.lock().unwrap().push(format!(
                        "request {j} (generations {gen_before}..={gen_after}) went to {name}"
                    ));
                }
                if gen_before == RELOADS {
                    *self.after_last.lock().unwrap().entry(name).or_default() += 1;
                }
            }
        }
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

/// A client that keeps one connection open and sends requests on it one
/// after the other (reconnecting only if Levee asked to close).
fn keep_alive_client(load: Arc<Load>, listen: SocketAddr) {
    let mut conn: Option<RawConn> = None;
    while let Some(j) = load.claim() {
        let gen_before = load.confirmed.load(Ordering::SeqCst);
        let result = (|| {
            if conn.is_none() {
                conn = Some(RawConn::connect(listen).map_err(|e| format!("connect: {e}"))?);
            }
            let c = conn.as_mut().expect("connected");
            let req = format!("GET /load/{j} HTTP/1.1\r\nHost: levee.test\r\n\r\n");
            c.write_all(req.as_bytes())
                .map_err(|e| format!("write on a kept-alive connection: {e}"))?;
            let r = c.read_response(T)?;
            if r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            {
                conn = None;
            }
            Ok(r)
        })();
        if result.is_err() {
            conn = None;
        }
        load.check(j, gen_before, result);
    }
}

/// A client that opens a new connection for every request.
fn new_connection_client(load: Arc<Load>, listen: SocketAddr) {
    while let Some(j) = load.claim() {
        let gen_before = load.confirmed.load(Ordering::SeqCst);
        let result = http_request(listen, "GET", &format!("/load/{j}"), &[], b"", T);
        load.check(j, gen_before, result);
    }
}

#[test]
fn reloads_under_continuous_load_lose_no_request() {
    let a = [Backend::start("a1"), Backend::start("a2")];
    let b = [Backend::start("b1"), Backend::start("b2")];
    let set_a: Vec<SocketAddr> = a.iter().map(Backend::addr).collect();
    let set_b: Vec<SocketAddr> = b.iter().map(Backend::addr).collect();
    let all: Vec<SocketAddr> = set_a.iter().chain(&set_b).copied().collect();
    let listen = free_addr();
    let admin = free_addr();
    let config = |g: u64| {
        let backends = match g {
            0 => &all,
            g if g % 2 == 1 => &set_a,
            _ => &set_b,
        };
        simple(listen, admin, backends).build()
    };
    let mut levee = Levee::start(&config(0));

    let load = Arc::new(Load::default());
    let started = Instant::now();
    let clients: Vec<JoinHandle<()>> = (0..4)
        .map(|i| {
            let load = load.clone();
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    keep_alive_client(load, listen)
                } else {
                    new_connection_client(load, listen)
                }
            })
        })
        .collect();

    for k in 1..=RELOADS {
        assert!(
            wait_until(Duration::from_secs(60), || load.done.load(Ordering::SeqCst)
                >= k * STEP),
            "load stalled before reload {k}: {} done, failures {:?}",
            load.done.load(Ordering::SeqCst),
            load.failures.lock().unwrap()
        );
        load.started.store(k, Ordering::SeqCst);
        levee.write_config(&config(k));
        if k % 2 == 1 {
            assert!(levee.sighup(), "SIGHUP {k}");
            assert!(
                wait_until(T, || reloads(&levee, "applied") == k),
                "reload {k} (SIGHUP) not applied\n{}",
                levee.logs()
            );
        } else {
            assert_eq!(levee.reload_via_admin(), 200, "reload {k} (POST /reload)");
            assert_eq!(reloads(&levee, "applied"), k);
        }
        load.confirmed.store(k, Ordering::SeqCst);
        // Requests sent from now on must see the new config.
        let want = generation_set(k);
        for name in answered_by(listen, 4) {
            assert!(
                want.contains(&name.as_str()),
                "after reload {k} a new request went to {name}, not {want:?}"
            );
        }
    }
    for c in clients {
        c.join().expect("client thread");
    }
    let took = started.elapsed();

    let failures = load.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        levee.logs()
    );
    let misrouted = load.misrouted.lock().unwrap();
    assert!(
        misrouted.is_empty(),
        "{} misrouted requests, e.g. {:?}",
        misrouted.len(),
        &misrouted[..misrouted.len().min(10)]
    );
    assert_eq!(load.done.load(Ordering::SeqCst), TOTAL);
    // The final config (set B) took every request sent after it.
    let after_last = load.after_last.lock().unwrap();
    let after_last_total: u64 = after_last.values().sum();
    assert!(
        after_last_total >= TOTAL - RELOADS * STEP - SLACK,
        "requests after the last reload: {after_last:?}"
    );
    assert!(
        after_last.keys().all(|n| n.starts_with('b')),
        "{after_last:?}"
    );
    for be in a.iter().chain(&b) {
        assert!(be.requests() > 0, "backend {} got no request", be.name());
    }
    assert_eq!(reloads(&levee, "applied"), RELOADS);
    assert_eq!(reloads(&levee, "refused"), 0);
    let errors_5xx = levee
        .metric("levee_requests_total", &[("class", "5xx")])
        .unwrap_or(0.0);
    assert_eq!(errors_5xx, 0.0, "Levee answered 5xx during the reloads");
    println!(
        "{TOTAL} requests over {RELOADS} reloads in {took:.2?} ({:.0} req/s), 0 failed",
        TOTAL as f64 / took.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// b. A bad config is refused; the old one keeps serving.

#[test]
fn bad_config_is_refused_and_the_old_one_keeps_serving() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let listen = free_addr();
    let admin = free_addr();
    let good_a = simple(listen, admin, &[a.addr()]).build();
    let mut levee = Levee::start(&good_a);
    let path = levee.config_path().display().to_string();
    assert_eq!(backend_name(&get_ok(listen, "/")), "a");

    // Both bad files would send traffic to `b` if they were half applied.
    let syntax_error = format!(
        r#"[admin]
address = "{admin}"

[[listeners]]
name = "main"
address = "{listen}"

[[clusters]
name = "app"

[[clusters.endpoints]]
address = "{}"

[[routes]]
name = "all"
cluster = "app"
"#,
        b.addr()
    );
    let syntax_msg = format!("{path}:8:12: unclosed array table, expected `]`");
    let semantic_error = format!(
        r#"[admin]
address = "{admin}"

[[listeners]]
name = "main"
address = "{listen}"

[[clusters]]
name = "app"

[[clusters.endpoints]]
address = "{}"

[[routes]]
name = "all"
cluster = "ap"
"#,
        b.addr()
    );
    let semantic_msg = format!(
        r#"{path}:16:11: routes[0].cluster: no cluster named "ap"; defined clusters: "app""#
    );

    let cases = [
        ("SIGHUP", &syntax_error, &syntax_msg),
        ("POST /reload", &syntax_error, &syntax_msg),
        ("SIGHUP", &semantic_error, &semantic_msg),
        ("POST /reload", &semantic_error, &semantic_msg),
    ];
    for (n, (how, text, msg)) in cases.into_iter().enumerate() {
        let n = n as u64 + 1;
        levee.write_config(text);
        if how == "SIGHUP" {
            assert!(levee.sighup());
            assert!(
                wait_until(T, || reloads(&levee, "refused") == n),
                "{how}: refusal {n} not counted\n{}",
                levee.logs()
            );
        } else {
            let r = levee
                .admin_request("POST", "/reload", b"")
                .expect("POST /reload");
            assert_eq!(r.status, 400, "{how}: {}", r.text());
            let body = r.json().expect("JSON answer");
            assert_eq!(body["result"], "refused", "{body}");
            assert_eq!(body["error"].as_str(), Some(msg.as_str()), "{body}");
            assert_eq!(reloads(&levee, "refused"), n);
        }
        // The error, with file:line:column, is in Levee's log (each file is
        // refused twice: the first time by SIGHUP, the second by POST).
        let logged = 2 - n % 2;
        let times_logged = || levee.stderr_text().matches(msg.as_str()).count() as u64;
        assert!(
            wait_until(T, || times_logged() == logged),
            "{how}: stderr lacks {msg:?}\n{}",
            levee.stderr_text()
        );
        assert_eq!(reloads(&levee, "applied"), 0, "{how}: nothing applied");
        for name in answered_by(listen, 3) {
            assert_eq!(name, "a", "{how}: the old config keeps serving");
        }
        assert!(levee.is_running());
    }
    // Each message was logged once per refusal (two each).
    let stderr = levee.stderr_text();
    assert_eq!(stderr.matches(syntax_msg.as_str()).count(), 2, "{stderr}");
    assert_eq!(stderr.matches(semantic_msg.as_str()).count(), 2, "{stderr}");
    assert_eq!(b.requests(), 0);

    // A good file afterwards applies, by either trigger.
    levee.write_config(&simple(listen, admin, &[b.addr()]).build());
    assert!(levee.sighup());
    assert!(
        wait_until(T, || reloads(&levee, "applied") == 1),
        "{}",
        levee.logs()
    );
    for name in answered_by(listen, 3) {
        assert_eq!(name, "b");
    }
    levee.write_config(&good_a);
    assert_eq!(levee.reload_via_admin(), 200);
    assert_eq!(reloads(&levee, "applied"), 2);
    assert_eq!(reloads(&levee, "refused"), 4);
    for name in answered_by(listen, 3) {
        assert_eq!(name, "a");
    }
}

/// Issue 9, item 0a: an empty or truncated file (an editor's half-written
/// save, a failed template run) is refused by SIGHUP and by `POST /reload`,
/// and every listener keeps serving. Only a file that says
/// `allow_no_listeners = true` may leave the admin API alone.
#[test]
fn an_empty_or_truncated_file_never_stops_the_listeners() {
    let a = Backend::start("a");
    let (listen, admin) = (free_addr(), free_addr());
    let good = simple(listen, admin, &[a.addr()]).build();
    let mut levee = Levee::start(&good);
    assert_eq!(backend_name(&get_ok(listen, "/")), "a");
    // Cut short after the admin table: valid TOML, no listener.
    let truncated = format!("[admin]\naddress = \"{admin}\"\n");
    let cases = [
        ("SIGHUP", ""),
        ("POST /reload", ""),
        ("SIGHUP", truncated.as_str()),
    ];
    for (n, (how, text)) in cases.into_iter().enumerate() {
        levee.write_config(text);
        let n = n as u64 + 1;
        if how == "SIGHUP" {
            assert!(levee.sighup());
            assert!(
                wait_until(T, || reloads(&levee, "refused") == n),
                "{how} {text:?}: not refused\n{}",
                levee.logs()
            );
        } else {
            let r = levee
                .admin_request("POST", "/reload", b"")
                .expect("POST /reload");
            assert_eq!(r.status, 400, "{how}: {}", r.text());
            let body = r.json().expect("JSON answer");
            assert_eq!(body["result"], "refused", "{body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains(":1:1: listeners: no listener"), "{body}");
        }
        assert_eq!(reloads(&levee, "applied"), 0);
        for name in answered_by(listen, 3) {
            assert_eq!(name, "a", "{how} {text:?}: still serving");
        }
    }
    assert!(
        levee
            .stderr_text()
            .contains("configuration refused, still running the previous one"),
        "{}",
        levee.stderr_text()
    );
    // Said explicitly: applied, and the listener closes.
    levee.write_config(&format!(
        "[server]\nallow_no_listeners = true\n[admin]\naddress = \"{admin}\"\n[access_log]\nenabled = false\n"
    ));
    assert_eq!(levee.reload_via_admin(), 200, "{}", levee.logs());
    assert!(
        wait_until(T, || connect_refused(listen)),
        "the listener should close"
    );
    assert_eq!(
        levee.status_json()["listeners"].as_array().map(Vec::len),
        Some(0)
    );
}

/// Issue 9, item 0b: a setting fixed at start (`server.workers`,
/// `admin.address`, `access_log.enabled`, ...) changed by a reload is refused
/// with the reason, not accepted and ignored; a new `access_log.path` is
/// applied (the log is reopened there).
#[test]
fn a_reload_refuses_restart_only_changes_and_moves_the_access_log() {
    let a = Backend::start("a");
    let (listen, admin) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().expect("temp dir");
    let log = |name: &str| dir.path().join(name).display().to_string();
    let with = |workers: usize, log_path: &str| {
        ConfigBuilder::simple(listen, &[a.addr()])
            .admin_at(admin)
            .set("server", &format!("workers = {workers}"))
            .set("access_log", &format!("path = {log_path:?}"))
            .build()
    };
    let mut levee = Levee::start(&with(1, &log("first.log")));
    let path = levee.config_path().display().to_string();
    get_ok(listen, "/one");
    levee.write_config(&with(2, &log("first.log")));
    let r = levee
        .admin_request("POST", "/reload", b"")
        .expect("POST /reload");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json().expect("JSON")["error"].as_str(),
        Some(
            format!(
                "{path}: server.workers: a reload cannot change it (running 1, the file says 2); \
                 restart Levee to apply it, or put the running value back"
            )
            .as_str()
        )
    );
    levee.write_config(&with(1, &log("second.log")));
    assert_eq!(levee.reload_via_admin(), 200, "{}", levee.logs());
    get_ok(listen, "/two");
    let paths = |name: &str| {
        let text = std::fs::read_to_string(log(name)).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["path"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(T, || paths("second.log") == ["/two"]),
        "{:?}\n{}",
        paths("second.log"),
        levee.logs()
    );
    assert_eq!(paths("first.log"), ["/one"]);
    assert!(levee.sighup());
    assert!(wait_until(T, || reloads(&levee, "applied") == 2));
}

// ---------------------------------------------------------------------------
// c. In-flight requests finish across a reload.

#[test]
fn in_flight_request_survives_a_reload_that_removes_its_route_and_cluster() {
    let app = Backend::start("app");
    let slow = Backend::start("slow");
    let listen = free_addr();
    let admin = free_addr();
    let before = ConfigBuilder::new()
        .admin_at(admin)
        .set("access_log", "enabled = false")
        .listener("main", listen)
        .cluster("slow", &[slow.addr()])
        .cluster("app", &[app.addr()])
        .route_with("slow", "slow", &["path_prefix = \"/slow\""])
        .route_with("other", "app", &["path_prefix = \"/other\""])
        .build();
    let after = ConfigBuilder::new()
        .admin_at(admin)
        .set("access_log", "enabled = false")
        .listener("main", listen)
        .cluster("app", &[app.addr()])
        .route_with("other", "app", &["path_prefix = \"/other\""])
        .build();
    let levee = Levee::start(&before);

    let started = Instant::now();
    let request = request_in_background(listen, "/slow?delay=1s", T);
    assert!(
        wait_until(T, || slow.in_flight() == 1),
        "the slow request never reached its backend"
    );
    levee.write_config(&after);
    assert_eq!(levee.reload_via_admin(), 200);
    // The route is gone for new requests...
    let r = http_get(listen, "/slow").expect("GET /slow after the reload");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(backend_name(&get_ok(listen, "/other")), "app");
    assert_eq!(slow.in_flight(), 1, "still in flight during the checks");
    // ...but the one in flight completes.
    let r = request
        .join()
        .expect("client thread")
        .expect("in-flight request across the reload");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(backend_name(&r), "slow");
    assert_eq!(r.text(), "hello from slow\n");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(slow.requests(), 1);
}

// ---------------------------------------------------------------------------
// d. Listeners come and go with reloads.

#[test]
fn reload_adds_and_removes_listeners() {
    let b = Backend::start("b");
    let main = free_addr();
    let extra = free_addr();
    let admin = free_addr();
    let only_main = simple(main, admin, &[b.addr()]).build();
    let both = simple(main, admin, &[b.addr()])
        .listener("extra", extra)
        .build();
    let only_extra = ConfigBuilder::new()
        .admin_at(admin)
        .set("access_log", "enabled = false")
        .listener("extra", extra)
        .cluster("app", &[b.addr()])
        .route("all", "app")
        .build();
    let mut levee = Levee::start(&only_main);
    get_ok(main, "/");
    assert!(connect_refused(extra), "{extra} is not a listener yet");

    // Added by SIGHUP: serving as soon as the reload is applied.
    levee.write_config(&both);
    assert!(levee.sighup());
    assert!(
        wait_until(T, || reloads(&levee, "applied") == 1),
        "{}",
        levee.logs()
    );
    assert_eq!(backend_name(&get_ok(extra, "/")), "b");
    get_ok(main, "/");

    // Removed by POST /reload: stops accepting (bounded wait: the accept
    // loops notice asynchronously), the other listener keeps serving.
    levee.write_config(&only_extra);
    assert_eq!(levee.reload_via_admin(), 200);
    assert!(
        wait_until(T, || connect_refused(main)),
        "{main} still accepts after its listener was removed"
    );
    get_ok(extra, "/");
    let status = levee.status_json();
    let names: Vec<&str> = status["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(names, ["extra"]);

    // And the same address can come back.
    levee.write_config(&both);
    assert_eq!(levee.reload_via_admin(), 200);
    get_ok(main, "/");
    get_ok(extra, "/");
}

// ---------------------------------------------------------------------------
// e. Graceful shutdown.

fn graceful_shutdown(signal: i32) {
    let b = Backend::start("b");
    let listen = free_addr();
    let admin = free_addr();
    let drain_timeout = Duration::from_secs(10);
    let cfg = simple(listen, admin, &[b.addr()])
        .set("server", "drain_timeout = \"10s\"")
        .build();
    let mut levee = Levee::start(&cfg);

    // An idle keep-alive connection must not hold the drain up.
    let mut idle = RawConn::connect(listen).expect("connect");
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: levee.test\r\n\r\n")
        .expect("write");
    assert_eq!(idle.read_response(T).expect("response").status, 200);

    let started = Instant::now();
    let request = request_in_background(listen, "/?delay=1500ms", T);
    assert!(
        wait_until(T, || b.in_flight() == 1),
        "the slow request never reached the backend"
    );
    let signalled = Instant::now();
    assert!(levee.signal(signal));

    // New connections are refused while the slow request is still running.
    assert!(
        wait_until(Duration::from_secs(5), || connect_refused(listen)),
        "{listen} still accepts after the signal"
    );
    assert!(
        !request.is_finished() && levee.is_running(),
        "refusal must be seen during the drain, not after exit ({:?} after the signal)",
        signalled.elapsed()
    );
    assert!(
        idle.read_until_close(Duration::from_secs(2)),
        "the idle keep-alive connection was not closed at shutdown"
    );
    assert!(
        !request.is_finished(),
        "idle connection closed during the drain"
    );

    let r = request
        .join()
        .expect("client thread")
        .expect("the in-flight request completes during the drain");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello from b\n");
    assert!(started.elapsed() >= Duration::from_millis(1500));

    let status = levee
        .wait_exit(drain_timeout)
        .unwrap_or_else(|| panic!("levee still runs {drain_timeout:?} after the signal"));
    let exited_after = signalled.elapsed();
    assert!(status.success(), "exit status {status}\n{}", levee.logs());
    assert!(
        exited_after < drain_timeout,
        "exited {exited_after:?} after the signal"
    );
    println!("signal {signal}: exited with {status} {exited_after:.2?} after the signal");
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    graceful_shutdown(libc::SIGTERM);
}

#[test]
fn sigint_behaves_like_sigterm() {
    graceful_shutdown(libc::SIGINT);
}

#[test]
fn drain_is_bounded_by_drain_timeout() {
    let b = Backend::start("b");
    let listen = free_addr();
    let admin = free_addr();
    let cfg = simple(listen, admin, &[b.addr()])
        .set("server", "drain_timeout = \"500ms\"")
        .build();
    let mut levee = Levee::start(&cfg);
    let request = request_in_background(listen, "/?delay=10s", Duration::from_secs(20));
    assert!(
        wait_until(T, || b.in_flight() == 1),
        "request never arrived"
    );

    let signalled = Instant::now();
    assert!(levee.sigterm());
    let status = levee
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("levee ignored its 500ms drain_timeout\n{}", levee.logs()));
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}\n{}", levee.logs());
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM with drain_timeout 500ms"
    );
    // The cut request fails promptly instead of hanging for its 10 s.
    let result = request.join().expect("client thread");
    assert!(
        result.is_err(),
        "the request cut by the drain timeout cannot have completed: {result:?}"
    );
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert!(
        levee.stderr_text().contains("drain timeout reached"),
        "{}",
        levee.logs()
    );
    println!("drain_timeout 500ms: exited with {status} {took:.2?} after SIGTERM");
}

#[test]
fn shutdown_waits_for_a_request_on_a_listener_removed_by_reload() {
    let b = Backend::start("b");
    let old = free_addr();
    let new = free_addr();
    let admin = free_addr();
    let drain = "drain_timeout = \"10s\"";
    let mut levee = Levee::start(&simple(old, admin, &[b.addr()]).set("server", drain).build());
    let request = request_in_background(old, "/?delay=1500ms", T);
    assert!(
        wait_until(T, || b.in_flight() == 1),
        "request never arrived"
    );

    // Move the listener; the request on the old one is still in flight.
    levee.write_config(&simple(new, admin, &[b.addr()]).set("server", drain).build());
    assert_eq!(levee.reload_via_admin(), 200);
    assert!(
        wait_until(T, || connect_refused(old)),
        "{old} still accepts"
    );
    get_ok(new, "/");

    assert!(levee.sigterm());
    let r = request
        .join()
        .expect("client thread")
        .expect("the request on the removed listener completes during the drain");
    assert_eq!(r.status, 200, "{}", r.text());
    let status = levee.wait_exit(T).expect("exits within drain_timeout");
    assert!(status.success(), "exit status {status}");
}
