//! Health end to end: active checks, passive outlier detection and what the
//! balancer does with their verdicts, against the real binary.
//!
//! - active checks move an endpoint with hysteresis: out after exactly
//!   `unhealthy_threshold` failed checks (a blip of two does nothing), back
//!   after exactly `healthy_threshold` passes, and no client request reaches
//!   it in between;
//! - a deep check whose body says `{"status":"degraded"}` makes the endpoint
//!   DEGRADED, which still takes traffic;
//! - a stopped backend under steady load: connect failures are retried on
//!   another endpoint (no client-visible error), the endpoint is ejected
//!   after `consecutive_failures` of them, and takes traffic again once
//!   restarted and the ejection is over, through one probe request (no
//!   active checks);
//! - with active checks, a restarted backend is back within about a second:
//!   its passing checks end the (30 s) ejection;
//! - all primaries failing their checks sends traffic to the backup, and it
//!   moves back when a primary recovers;
//! - panic mode: a cluster whose only endpoint fails its checks still
//!   forwards requests;
//! - an endpoint added by a reload starts WARMING and takes traffic only
//!   after `healthy_threshold` passing checks.
//!
//! Run with `cargo test --test health -- --nocapture` to see the figures.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const T: Duration = Duration::from_secs(10);
const REQ_TIMEOUT: Duration = Duration::from_secs(5);

/// Fast, deterministic checks: every 100 ms, no jitter.
const CHECK: &str = r#"interval = "100ms", jitter = "0s", timeout = "100ms""#;

fn health_check(extra: &str) -> String {
    if extra.is_empty() {
        format!("health_check = {{ {CHECK} }}")
    } else {
        format!("health_check = {{ {CHECK}, {extra} }}")
    }
}

/// One worker, no access log, listener `main`, cluster `app` over `primaries`
/// (with `extra` lines) plus `backups`, one route to it.
fn config(
    admin: SocketAddr,
    listen: SocketAddr,
    primaries: &[SocketAddr],
    backups: &[SocketAddr],
    extra: &[&str],
) -> String {
    let mut cfg = ConfigBuilder::new()
        .admin_at(admin)
        .set("server", "workers = 1")
        .set("access_log", "enabled = false")
        .listener("main", listen)
        .cluster_with("app", primaries, extra);
    for b in backups {
        cfg = cfg.endpoint("app", *b, &["backup = true"]);
    }
    cfg.route("all", "app").build()
}

/// `GET path` through Levee: (status, `x-backend` or "" if none).
fn get(listen: SocketAddr, path: &str) -> (u16, String) {
    let r = http_request(listen, "GET", path, &[], b"", REQ_TIMEOUT)
        .unwrap_or_else(|e| panic!("GET {path} via {listen}: {e}"));
    let backend = r.header("x-backend").unwrap_or_default().to_owned();
    (r.status, backend)
}

/// Sends `n` GETs; returns the backends that answered, asserting each is a 200.
fn get_n(listen: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (status, backend) = get(listen, "/client");
            assert_eq!(status, 200, "request {i} answered {status} by {backend:?}");
            backend
        })
        .collect()
}

/// The `/status` entry of endpoint `addr` in cluster `app`.
fn endpoint(levee: &Levee, addr: SocketAddr) -> Option<Value> {
    let status = levee.status_json();
    let cluster = status["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "app")?
        .clone();
    cluster["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
}

fn state(levee: &Levee, addr: SocketAddr) -> String {
    endpoint(levee, addr)
        .and_then(|e| e["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn wait_state(levee: &Levee, addr: SocketAddr, want: &str) {
    assert!(
        wait_until(T, || state(levee, addr) == want),
        "{addr} never became {want:?}: {:?}",
        endpoint(levee, addr)
    );
}

/// Health checks (`path`) the backend received after request number `after`.
fn checks_after(b: &Backend, path: &str, after: u64) -> usize {
    b.recorded()
        .iter()
        .filter(|r| r.seq > after && r.uri == path)
        .count()
}

fn transitions(levee: &Levee, addr: SocketAddr, from: &str, to: &str) -> f64 {
    let ep = addr.to_string();
    levee
        .metric(
            "levee_endpoint_transitions_total",
            &[
                ("cluster", "app"),
                ("endpoint", &ep),
                ("from", from),
                ("to", to),
            ],
        )
        .unwrap_or(0.0)
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

#[test]
fn active_checks_have_hysteresis_both_ways() {
    let b1 = Backend::start("b1");
    let b2 = Backend::start("b2");
    let (admin, listen) = (free_addr(), free_addr());
    // unhealthy_interval 300 ms: once b1 is out, the next check comes late
    // enough that the count of failed checks read at the transition is exact.
    let hc = health_check(r#"unhealthy_interval = "300ms""#);
    let levee = Levee::start(&config(admin, listen, &[b1.addr(), b2.addr()], &[], &[&hc]));

    assert!(
        wait_until(T, || checks_after(&b1, "/health", 0) >= 2),
        "no checks reach b1"
    );
    assert_eq!(state(&levee, b1.addr()), "healthy");

    // A blip of two failed checks (fewer than unhealthy_threshold 3) moves
    // nothing: b1 stays healthy through them and the passes that follow.
    let mark = b1.requests();
    b1.fail_next(2, 503);
    assert!(wait_until(T, || {
        assert_eq!(state(&levee, b1.addr()), "healthy", "a blip flipped b1");
        checks_after(&b1, "/health", mark) >= 4
    }));

    // Down: exactly unhealthy_threshold failed checks.
    b1.set_status(Some(503));
    // Every request numbered after `mark` was answered 503 (the counter is
    // bumped before the backend reads the forced status).
    let mark = b1.requests();
    let started = Instant::now();
    let mut seen_before = 0;
    assert!(
        wait_until(T, || {
            if state(&levee, b1.addr()) == "unhealthy" {
                return true;
            }
            seen_before = checks_after(&b1, "/health", mark);
            false
        }),
        "b1 never became unhealthy"
    );
    let failed = checks_after(&b1, "/health", mark);
    println!(
        "down: {failed} failed checks to unhealthy ({:?}); still healthy after {seen_before}",
        started.elapsed()
    );
    // Never before the third failed check. A busy machine can delay this
    // test's polling past the next check, so the count seen may be higher;
    // the exact sequence is checked with an injected clock in
    // `cluster::health::state`'s unit tests.
    assert!(
        (3..=5).contains(&failed),
        "unhealthy_threshold is 3: {failed}"
    );
    // The backend counts a check when it arrives, Levee judges it when the
    // answer is back: a poll between the two sees the third check counted
    // and the endpoint still healthy.
    assert!(seen_before <= 3, "still healthy after {seen_before} fails");
    let ep = endpoint(&levee, b1.addr()).unwrap();
    assert_eq!(ep["usable"], false, "{ep}");
    assert_eq!(ep["ejected"], false, "{ep}");
    assert_eq!(state_gauge(&levee, b1.addr(), "unhealthy"), 1.0);
    assert_eq!(state_gauge(&levee, b1.addr(), "healthy"), 0.0);

    // While out, client traffic goes to b2 only.
    let before = b1.requests();
    let backends = get_n(listen, 20);
    assert!(backends.iter().all(|b| b == "b2"), "{backends:?}");
    let to_b1: Vec<String> = b1
        .recorded()
        .into_iter()
        .filter(|r| r.seq > before && r.uri != "/health")
        .map(|r| r.uri)
        .collect();
    assert!(to_b1.is_empty(), "client requests reached b1: {to_b1:?}");

    // Up: exactly healthy_threshold passing checks.
    b1.set_status(None);
    let mark = b1.requests();
    let started = Instant::now();
    assert!(
        wait_until(T, || state(&levee, b1.addr()) == "healthy"),
        "b1 never came back"
    );
    let passed = checks_after(&b1, "/health", mark);
    println!(
        "up: {passed} passing checks to healthy ({:?})",
        started.elapsed()
    );
    // Never before the second passing check (see above for the upper bound).
    assert!(
        (2..=4).contains(&passed),
        "healthy_threshold is 2: {passed}"
    );

    let backends = get_n(listen, 20);
    let n1 = backends.iter().filter(|b| *b == "b1").count();
    let n2 = backends.iter().filter(|b| *b == "b2").count();
    println!("back in: b1 {n1}, b2 {n2} of 20");
    assert!(n1 > 0 && n2 > 0 && n1 + n2 == 20, "{backends:?}");

    assert_eq!(transitions(&levee, b1.addr(), "healthy", "unhealthy"), 1.0);
    assert_eq!(transitions(&levee, b1.addr(), "unhealthy", "healthy"), 1.0);
    let all_b1 = levee
        .metric(
            "levee_endpoint_transitions_total",
            &[("endpoint", &b1.addr().to_string())],
        )
        .unwrap_or(0.0);
    assert_eq!(all_b1, 2.0, "only the two moves");
    let all_b2 = levee
        .metric(
            "levee_endpoint_transitions_total",
            &[("endpoint", &b2.addr().to_string())],
        )
        .unwrap_or(0.0);
    assert_eq!(all_b2, 0.0, "b2 never moved");
}

/// The test backend cannot answer a JSON `status` body, so the degraded
/// endpoint is a canned upstream saying `{"status":"degraded"}` to anything.
#[test]
fn degraded_endpoint_is_standby_capacity() {
    const DEGRADED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
        content-length: 21\r\nx-backend: deep\r\n\r\n{\"status\":\"degraded\"}";
    let deep = canned_upstream(DEGRADED, false);
    let b2 = Backend::start("b2");
    let (admin, listen) = (free_addr(), free_addr());
    let hc = health_check(r#"path = "/ready""#);
    let levee = Levee::start(&config(admin, listen, &[deep, b2.addr()], &[], &[&hc]));

    wait_state(&levee, deep, "degraded");
    let ep = endpoint(&levee, deep).unwrap();
    assert_eq!(ep["usable"], true, "degraded still takes traffic: {ep}");
    assert_eq!(state_gauge(&levee, deep, "degraded"), 1.0);
    assert_eq!(transitions(&levee, deep, "healthy", "degraded"), 1.0);

    // The check uses the configured path; b2 passes it and stays healthy.
    assert!(wait_until(T, || checks_after(&b2, "/ready", 0) >= 3));
    assert_eq!(checks_after(&b2, "/health", 0), 0);
    assert_eq!(state(&levee, b2.addr()), "healthy");

    // Standby capacity: while b2 is healthy, the degraded endpoint gets
    // nothing; when b2 fails its checks, the degraded one serves.
    let backends = get_n(listen, 20);
    assert!(backends.iter().all(|b| b == "b2"), "{backends:?}");
    b2.set_status(Some(503));
    wait_state(&levee, b2.addr(), "unhealthy");
    let backends = get_n(listen, 20);
    assert!(backends.iter().all(|b| b == "deep"), "{backends:?}");
}

/// One response seen by the load thread.
struct Seen {
    status: u16,
    backend: String,
}

#[test]
fn stopped_backend_is_ejected_without_client_errors() {
    let b1 = Backend::start("b1");
    let b2 = Backend::start("b2");
    let mut b3 = Backend::start("b3");
    let b3_addr = b3.addr();
    let ep3 = b3_addr.to_string();
    let (admin, listen) = (free_addr(), free_addr());
    let levee = Levee::start(&config(
        admin,
        listen,
        &[b1.addr(), b2.addr(), b3_addr],
        &[],
        &["outlier_detection = { base_ejection = \"1s\" }"],
    ));

    // Steady load: 200 GET/s for 3 s, paced from one thread.
    const RATE_GAP: Duration = Duration::from_millis(5);
    const TOTAL: usize = 600;
    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::with_capacity(TOTAL)));
    let load = {
        let (sent, done, seen) = (sent.clone(), done.clone(), seen.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0..TOTAL {
                let due = start + RATE_GAP * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait); // pacing, not readiness
                }
                let r = http_request(listen, "GET", "/load", &[], b"", REQ_TIMEOUT);
                let s = match r {
                    Ok(r) => Seen {
                        status: r.status,
                        backend: r.header("x-backend").unwrap_or_default().to_owned(),
                    },
                    Err(e) => Seen {
                        status: 0,
                        backend: e,
                    },
                };
                seen.lock().unwrap().push(s);
                sent.fetch_add(1, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    // After about a second of load, b3 dies.
    assert!(wait_until(T, || sent.load(Ordering::SeqCst) >= 200));
    assert!(b3.requests() > 0, "b3 took no traffic before the stop");
    b3.stop();
    let stopped = Instant::now();
    let sent_at_stop = sent.load(Ordering::SeqCst);

    let ejected = |levee: &Levee| endpoint(levee, b3_addr).is_some_and(|e| e["ejected"] == true);
    assert!(wait_until(T, || ejected(&levee)), "b3 never ejected");
    let to_ejection = stopped.elapsed();
    let ejected_at = Instant::now();
    let metrics = levee.metrics_text();
    let connect_errors = metric_sum(
        &metrics,
        "levee_upstream_connect_errors_total",
        &[("endpoint", &ep3)],
    )
    .unwrap_or(0.0);
    let retries = metric_sum(
        &metrics,
        "levee_upstream_retries_total",
        &[("kind", "connect_failure")],
    )
    .unwrap_or(0.0);
    let ejections = metric_sum(
        &metrics,
        "levee_outlier_ejections_total",
        &[("cluster", "app"), ("endpoint", &ep3)],
    )
    .unwrap_or(0.0);
    println!(
        "stop -> ejection: {to_ejection:?} ({} requests sent meanwhile); \
         connect errors to b3 {connect_errors}, connect-failure retries {retries}, ejections {ejections}",
        sent.load(Ordering::SeqCst) - sent_at_stop
    );
    assert_eq!(ejections, 1.0);
    assert!(
        (1.0..=5.0).contains(&connect_errors),
        "{connect_errors} connect errors before ejection (consecutive_failures 5)"
    );
    assert_eq!(retries, connect_errors, "each connect failure retried once");
    let ep = endpoint(&levee, b3_addr).unwrap();
    assert_eq!(ep["usable"], false, "{ep}");
    assert_eq!(ep["state"], "healthy", "no active checks: {ep}");

    // Back on the same port; it takes traffic once the 1 s ejection is over.
    let b3 = Backend::start_on("b3", b3_addr);
    let mut first_request = None;
    assert!(
        wait_until(T, || {
            if b3.requests() > 0 {
                first_request = Some(ejected_at.elapsed());
                return true;
            }
            if done.load(Ordering::SeqCst) {
                let _ = get(listen, "/after-load");
            }
            false
        }),
        "restarted b3 never got traffic again"
    );
    let back_after = first_request.unwrap();
    println!("restarted b3 got traffic {back_after:?} after the ejection was seen");
    assert!(
        back_after >= Duration::from_millis(800),
        "traffic during the 1 s ejection: {back_after:?}"
    );
    // That first request was its probe; its success ends the ejection.
    assert!(
        wait_until(T, || endpoint(&levee, b3_addr)
            .is_some_and(|e| e["ejected"] == false && e["usable"] == true)),
        "{:?}",
        endpoint(&levee, b3_addr)
    );
    let probes = levee.metric(
        "levee_outlier_ejections_ended_total",
        &[("cluster", "app"), ("endpoint", &ep3), ("reason", "probe")],
    );
    assert_eq!(probes, Some(1.0));

    load.join().expect("load thread");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), TOTAL);
    let errors: Vec<(usize, u16, &str)> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.status != 200)
        .map(|(i, s)| (i, s.status, s.backend.as_str()))
        .collect();
    assert!(errors.is_empty(), "client-visible errors: {errors:?}");
    let from_b3 = seen.iter().filter(|s| s.backend == "b3").count();
    println!(
        "load: {TOTAL} responses, all 200; {from_b3} from b3 (before the stop and after the return)"
    );
}

#[test]
fn backup_serves_when_all_primaries_fail_checks() {
    let p1 = Backend::start("p1");
    let p2 = Backend::start("p2");
    let bk = Backend::start("bk");
    let (admin, listen) = (free_addr(), free_addr());
    let hc = health_check("");
    let levee = Levee::start(&config(
        admin,
        listen,
        &[p1.addr(), p2.addr()],
        &[bk.addr()],
        &[&hc],
    ));

    let backends = get_n(listen, 10);
    assert!(!backends.iter().any(|b| b == "bk"), "{backends:?}");

    p1.set_status(Some(503));
    p2.set_status(Some(503));
    wait_state(&levee, p1.addr(), "unhealthy");
    wait_state(&levee, p2.addr(), "unhealthy");
    assert_eq!(state(&levee, bk.addr()), "healthy");
    let backends = get_n(listen, 20);
    assert!(backends.iter().all(|b| b == "bk"), "{backends:?}");

    p1.set_status(None);
    wait_state(&levee, p1.addr(), "healthy");
    let backends = get_n(listen, 20);
    assert!(backends.iter().all(|b| b == "p1"), "{backends:?}");
}

#[test]
fn panic_mode_forwards_to_a_failing_only_endpoint() {
    let b1 = Backend::start("b1");
    let (admin, listen) = (free_addr(), free_addr());
    // The backend answers 200 to /health, which this check does not accept:
    // the endpoint fails every check while it serves clients fine.
    let hc = health_check("expect_status = [204]");
    let levee = Levee::start(&config(admin, listen, &[b1.addr()], &[], &[&hc]));

    wait_state(&levee, b1.addr(), "unhealthy");
    let ep = endpoint(&levee, b1.addr()).unwrap();
    assert_eq!(ep["usable"], false, "{ep}");
    let backends = get_n(listen, 10);
    assert!(backends.iter().all(|b| b == "b1"), "{backends:?}");
    let no_endpoint = levee
        .metric("levee_errors_total", &[("kind", "no_endpoint")])
        .unwrap_or(0.0);
    assert_eq!(no_endpoint, 0.0);
}

#[test]
fn endpoint_added_by_reload_warms_up_first() {
    let b1 = Backend::start("b1");
    let b2 = Backend::start("b2");
    let b3 = Backend::start("b3");
    let (admin, listen) = (free_addr(), free_addr());
    let hc = health_check("");
    let mut levee = Levee::start(&config(admin, listen, &[b1.addr(), b2.addr()], &[], &[&hc]));
    assert_eq!(
        state(&levee, b1.addr()),
        "healthy",
        "first endpoints start healthy"
    );

    // Client traffic all along, so b3 would get some the moment it could.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                statuses.push(get(listen, "/client").0);
                std::thread::sleep(Duration::from_millis(5)); // pacing
            }
            statuses
        })
    };

    levee.write_config(&config(
        admin,
        listen,
        &[b1.addr(), b2.addr(), b3.addr()],
        &[],
        &[&hc],
    ));
    assert!(levee.sighup());
    let mut states = Vec::new();
    assert!(
        wait_until(T, || {
            let s = state(&levee, b3.addr());
            if states.last() != Some(&s) {
                states.push(s.clone());
            }
            s == "healthy"
        }),
        "b3 never became healthy: {states:?}"
    );
    println!("b3 states seen after the reload: {states:?}");
    assert_eq!(transitions(&levee, b3.addr(), "warming", "healthy"), 1.0);
    assert!(
        states
            .iter()
            .all(|s| s.is_empty() || s == "warming" || s == "healthy"),
        "{states:?}"
    );

    assert!(
        wait_until(T, || b3.recorded().iter().any(|r| r.uri == "/client")),
        "b3 never got client traffic"
    );
    stop.store(true, Ordering::SeqCst);
    let statuses = load.join().expect("load thread");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let recorded = b3.recorded();
    let first_client = recorded.iter().position(|r| r.uri == "/client").unwrap();
    let checks_before = recorded[..first_client]
        .iter()
        .filter(|r| r.uri == "/health")
        .count();
    println!("b3: {checks_before} checks before its first client request");
    assert!(
        checks_before >= 2,
        "healthy_threshold is 2: {checks_before}"
    );
    assert_eq!(transitions(&levee, b1.addr(), "healthy", "warming"), 0.0);
}

/// Paced GETs of `/load` from one thread, every `gap`, until `stop` is set
/// (at most `max`): each answer's status and backend (status 0: no answer).
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(listen: SocketAddr, gap: Duration, max: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0..max {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let due = start + gap * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait); // pacing, not readiness
                }
                let r = http_request(listen, "GET", "/load", &[], b"", REQ_TIMEOUT);
                v.lock().unwrap().push(match r {
                    Ok(r) => Seen {
                        status: r.status,
                        backend: r.header("x-backend").unwrap_or_default().to_owned(),
                    },
                    Err(e) => Seen {
                        status: 0,
                        backend: e,
                    },
                });
            }
        });
        Load { stop, seen, thread }
    }

    fn sent(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Stops the load; returns every answer.
    fn finish(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("load thread");
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// The issue's measurement: a backend killed under load and restarted is
/// ejected by outlier detection (30 s by default) and marked unhealthy by
/// its checks; once restarted, the checks HAProxy would run (every 500 ms,
/// rise 2) bring it back, ending the ejection, in about a second. Before,
/// the ejection ran its full 30 s.
#[test]
fn a_restarted_backend_is_back_as_soon_as_its_checks_pass() {
    let b1 = Backend::start("b1");
    let b2 = Backend::start("b2");
    let mut b3 = Backend::start("b3");
    let b3_addr = b3.addr();
    let ep3 = b3_addr.to_string();
    let (admin, listen) = (free_addr(), free_addr());
    let levee = Levee::start(&config(
        admin,
        listen,
        &[b1.addr(), b2.addr(), b3_addr],
        &[],
        &[
            r#"health_check = { interval = "500ms", timeout = "500ms", jitter = "0s", healthy_threshold = 2, unhealthy_threshold = 3 }"#,
        ],
    ));
    let ended = |reason: &str| {
        levee.metric(
            "levee_outlier_ejections_ended_total",
            &[("cluster", "app"), ("endpoint", &ep3), ("reason", reason)],
        )
    };
    assert_eq!(ended("active_check"), Some(0.0), "present from the start");

    // 200 GET/s (at most 20 s).
    let load = Load::start(listen, Duration::from_millis(5), 4000);
    assert!(wait_until(T, || load.sent() >= 100));
    b3.stop();
    // Ejected by the failed requests, then unhealthy by its checks.
    assert!(wait_until(T, || endpoint(&levee, b3_addr)
        .is_some_and(|e| e["ejected"] == true)));
    wait_state(&levee, b3_addr, "unhealthy");

    let b3 = Backend::start_on("b3", b3_addr);
    let restarted = Instant::now();
    let first = || {
        b3.recorded()
            .iter()
            .find(|r| r.uri == "/load")
            .map(|r| r.at)
    };
    assert!(
        wait_until(T, || first().is_some()),
        "b3 never got traffic back"
    );
    let back = first().unwrap().saturating_duration_since(restarted);
    println!("restarted b3 took its first request {back:?} after the restart");
    assert!(back < Duration::from_secs(2), "back after {back:?}");
    assert!(wait_until(T, || ended("active_check") == Some(1.0)));
    assert_eq!(ended("expired"), Some(0.0));
    assert!(wait_until(T, || b3.requests() >= 20), "a full share");

    let seen = load.finish();
    let errors: Vec<(u16, &str)> = seen
        .iter()
        .filter(|s| s.status != 200)
        .map(|s| (s.status, s.backend.as_str()))
        .collect();
    println!("{} responses, {} errors", seen.len(), errors.len());
    assert!(errors.is_empty(), "client-visible errors: {errors:?}");
    assert!(
        levee
            .stderr_text()
            .contains("outlier ejection ended: 2 passing active checks in a row"),
        "the end is logged"
    );
}
