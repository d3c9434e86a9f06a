//! Circuit breakers end to end, against the real binary:
//!
//! - the issue's scenario: a backend answers 503 for 10 s, then recovers.
//!   The cluster breaker opens after `consecutive_failures`; while open, the
//!   backend sees only the half-open trials and clients get the route's
//!   fallback at once (timed); after recovery it closes. Logged, counted,
//!   shown in `/status`;
//! - an endpoint breaker takes its endpoint out of selection instead of
//!   failing requests;
//! - a reload keeps a breaker, a retry budget and a bulkhead (with the
//!   requests it holds) while their settings are unchanged, wherever they
//!   moved in the file, and starts a new breaker when its settings change.
//!
//! Run with `cargo test --test breakers -- --nocapture` to see the figures.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(10);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// One request on a keep-alive connection (reconnecting when the previous
/// answer closed it): (status, fallback header present, time taken).
fn timed_get(conn: &mut Option<RawConn>, listen: SocketAddr) -> (u16, bool, Duration) {
    let c = conn.get_or_insert_with(|| RawConn::connect(listen).expect("connect"));
    let started = Instant::now();
    c.write_all(b"GET /api HTTP/1.1\r\nHost: levee.test\r\n\r\n")
        .expect("write");
    let r = c.read_response(T).expect("a response");
    let took = started.elapsed();
    if r.header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        *conn = None;
    }
    (r.status, r.header("x-fallback").is_some(), took)
}

#[test]
fn a_failing_backend_opens_the_breaker_and_recovery_closes_it() {
    let b = Backend::start("b");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .set("server", "workers = 1")
        .set("access_log", "enabled = false")
        .listener("main", listen)
        .cluster_with(
            "app",
            &[b.addr()],
            &[
                "retry = { max_attempts = 1 }",
                "outlier_detection = { enabled = false }",
                r#"circuit_breaker = { consecutive_failures = 5, open_duration = "2s", half_open_max_calls = 1, success_threshold = 2 }"#,
            ],
        )
        .route_with(
            "api",
            "app",
            &[r#"fallback = { status = 503, body = "degraded mode\n", headers = { "x-fallback" = "1" } }"#],
        )
        .build();
    let levee = Levee::start(&cfg);

    let mut conn = None;
    for _ in 0..5 {
        assert_eq!(timed_get(&mut conn, listen).0, 200);
    }

    // Down for 10 s, under a steady ~50 requests/s.
    b.set_status(Some(503));
    let before = b.requests();
    let down = Instant::now();
    let (mut passed, mut fallbacks) = (0, 0);
    let mut fallback_times = Vec::new();
    let mut slowest = Duration::ZERO;
    while down.elapsed() < Duration::from_secs(10) {
        let (status, fallback, took) = timed_get(&mut conn, listen);
        assert_eq!(status, 503);
        slowest = slowest.max(took);
        if fallback {
            fallbacks += 1;
            fallback_times.push(took);
        } else {
            passed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let reached = b.requests() - before;
    fallback_times.sort();
    println!(
        "10 s of 503s: {} requests, {passed} reached the backend ({reached} by its count), \
         {fallbacks} answered by the fallback; fallback latency p50 {:?} p99 {:?} max {:?} \
         (client-side, keep-alive); slowest answer {slowest:?}",
        passed + fallbacks,
        percentile(&fallback_times, 0.5),
        percentile(&fallback_times, 0.99),
        fallback_times.last().copied().unwrap_or_default(),
    );
    // 5 to open it, then one half-open trial per 2 s open period (at most
    // five in 10 s, one more for timing slack).
    assert!(
        reached <= 5 + 6,
        "the backend saw {reached} requests while down"
    );
    assert_eq!(reached, passed);
    assert!(fallbacks >= 300, "{fallbacks} fallbacks");
    assert!(
        slowest < Duration::from_secs(1),
        "a request hung: {slowest:?}"
    );
    assert!(percentile(&fallback_times, 0.5) < Duration::from_millis(5));

    let status = levee.status_json();
    let breaker = &status["clusters"][0]["breaker"];
    assert_eq!(breaker["state"], "open", "{breaker}");
    let reason = breaker["last_transition"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("consecutive failures") || reason.contains("half-open"),
        "{breaker}"
    );
    assert!(
        levee
            .stderr_text()
            .contains("opened: 5 consecutive failures")
    );

    // Recovered: within one open period and two trials, it is closed again.
    b.set_status(None);
    let up = Instant::now();
    let closed = wait_until(T, || {
        let (status, fallback, _) = timed_get(&mut conn, listen);
        fallbacks += u64::from(fallback);
        std::thread::sleep(Duration::from_millis(20));
        status == 200 && levee.status_json()["clusters"][0]["breaker"]["state"] == "closed"
    });
    println!("recovered backend -> breaker closed in {:?}", up.elapsed());
    assert!(closed, "{}", levee.status_json()["clusters"][0]["breaker"]);
    for _ in 0..10 {
        assert_eq!(timed_get(&mut conn, listen).0, 200);
    }
    let opened = levee
        .metric(
            "levee_breaker_transitions_total",
            &[("cluster", "app"), ("to", "open")],
        )
        .unwrap_or(0.0);
    let rejected = levee
        .metric("levee_breaker_rejections_total", &[("cluster", "app")])
        .unwrap_or(0.0);
    assert!(opened >= 1.0, "{opened}");
    assert_eq!(rejected, fallbacks as f64);
    assert_eq!(
        levee.metric(
            "levee_breaker_state",
            &[("cluster", "app"), ("endpoint", ""), ("state", "closed")]
        ),
        Some(1.0)
    );
}

#[test]
fn an_endpoint_breaker_takes_its_endpoint_out_of_selection() {
    let bad = Backend::start("bad");
    bad.set_status(Some(500));
    let good = Backend::start("good");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .set("server", "workers = 1")
        .set("access_log", "enabled = false")
        .listener("main", listen)
        .cluster_with(
            "app",
            &[bad.addr(), good.addr()],
            &[
                "retry = { max_attempts = 1 }",
                "outlier_detection = { enabled = false }",
                r#"endpoint_circuit_breaker = { consecutive_failures = 3, open_duration = "30s" }"#,
            ],
        )
        .route("all", "app")
        .build();
    let levee = Levee::start(&cfg);
    let statuses: Vec<u16> = (0..40)
        .map(|_| http_get(listen, "/").expect("request").status)
        .collect();
    let failed = statuses.iter().filter(|&&s| s == 500).count();
    println!("40 requests, one endpoint always 500: {failed} answered 500");
    assert_eq!(failed, 3, "{statuses:?}");
    assert_eq!(bad.requests(), 3);
    assert!(statuses[6..].iter().all(|&s| s == 200), "{statuses:?}");
    let status = levee.status_json();
    let endpoints = status["clusters"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let bad_status = endpoints
        .iter()
        .find(|e| e["address"] == bad.addr().to_string())
        .expect("bad endpoint in /status");
    assert_eq!(bad_status["breaker"]["state"], "open", "{bad_status}");
    assert_eq!(
        levee.metric(
            "levee_breaker_state",
            &[("endpoint", &bad.addr().to_string()), ("state", "open")]
        ),
        Some(1.0)
    );
}

#[test]
fn a_reload_keeps_an_open_breaker_unless_its_settings_change() {
    let b = Backend::start("b");
    b.set_status(Some(503));
    let (listen, admin) = (free_addr(), free_addr());
    let build = |open: &str, route: &str| {
        ConfigBuilder::new()
            .admin_at(admin)
            .set("server", "workers = 1")
            .set("access_log", "enabled = false")
            .listener("main", listen)
            .cluster_with(
                "app",
                &[b.addr()],
                &[
                    "retry = { max_attempts = 1 }",
                    "outlier_detection = { enabled = false }",
                    &format!(
                        r#"circuit_breaker = {{ consecutive_failures = 3, open_duration = "{open}" }}"#
                    ),
                ],
            )
            .route(route, "app")
            .build()
    };
    let levee = Levee::start(&build("60s", "all"));
    let state = |levee: &Levee| levee.status_json()["clusters"][0]["breaker"]["state"].clone();
    for _ in 0..3 {
        assert_eq!(http_get(listen, "/").expect("request").status, 503);
    }
    assert_eq!(state(&levee), "open");
    let reached = b.requests();

    // Another route name, the same breaker settings: still open, and the
    // backend sees nothing.
    levee.write_config(&build("60s", "renamed"));
    assert_eq!(levee.reload_via_admin(), 200);
    assert_eq!(state(&levee), "open");
    assert_eq!(http_get(listen, "/").expect("request").status, 503);
    assert_eq!(
        b.requests(),
        reached,
        "an open breaker let a request through"
    );

    // New breaker settings: a new breaker, closed.
    levee.write_config(&build("30s", "renamed"));
    assert_eq!(levee.reload_via_admin(), 200);
    assert_eq!(state(&levee), "closed");
    b.set_status(None);
    assert_eq!(http_get(listen, "/").expect("request").status, 200);
}

#[test]
fn a_reload_that_only_moves_the_text_keeps_the_breaker_and_the_budget() {
    let b = Backend::start("b");
    b.set_status(Some(503));
    let (listen, admin) = (free_addr(), free_addr());
    // Settings read as `Spanned` values (failure_rate, window_calls,
    // failure_statuses, ratio): their place in the file must not matter.
    let build = |rate: &str| {
        ConfigBuilder::new()
            .admin_at(admin)
            .set("server", "workers = 1")
            .set("access_log", "enabled = false")
            .listener("main", listen)
            .cluster_with(
                "app",
                &[b.addr()],
                &[
                    "retry = { max_attempts = 2, retry_statuses = [503], budget = { ratio = 0.5 } }",
                    "outlier_detection = { enabled = false }",
                    "bulkhead = { max_concurrent = 50 }",
                    &format!(
                        r#"circuit_breaker = {{ consecutive_failures = 0, failure_rate = {rate}, min_calls = 4, window_calls = 4, failure_statuses = [429], open_duration = "60s" }}"#
                    ),
                ],
            )
            .route_with(
                "all",
                "app",
                &[r#"fallback = { headers = { "x-fallback" = "1" } }"#],
            )
            .build()
    };
    let levee = Levee::start(&build("0.5"));
    let cluster = |levee: &Levee| levee.status_json()["clusters"][0].clone();
    // Two requests, two tries each: four failed calls open the breaker, and
    // the budget allowed two retries.
    for _ in 0..2 {
        assert_eq!(http_get(listen, "/").expect("request").status, 503);
    }
    let before = cluster(&levee);
    assert_eq!(before["breaker"]["state"], "open", "{before}");
    assert_eq!(before["retry_budget"]["allowed"], 2, "{before}");
    let reached = b.requests();

    // A comment at the top moves every setting down two lines.
    levee.write_config(&format!("# moved, not changed\n\n{}", build("0.5")));
    assert_eq!(levee.reload_via_admin(), 200);
    let after = cluster(&levee);
    assert_eq!(after["breaker"]["state"], "open", "{after}");
    assert_eq!(after["retry_budget"], before["retry_budget"], "{after}");
    let r = http_get(listen, "/").expect("request");
    assert_eq!((r.status, r.header("x-fallback").is_some()), (503, true));
    assert_eq!(
        b.requests(),
        reached,
        "an open breaker let a request through"
    );

    // A new threshold: a new breaker, closed; the budget is not the
    // breaker's and keeps its history.
    levee.write_config(&build("0.6"));
    assert_eq!(levee.reload_via_admin(), 200);
    let changed = cluster(&levee);
    assert_eq!(changed["breaker"]["state"], "closed", "{changed}");
    assert_eq!(changed["retry_budget"], before["retry_budget"], "{changed}");
    b.set_status(None);
    assert_eq!(http_get(listen, "/").expect("request").status, 200);
}

/// A bulkhead kept across a reload keeps counting the requests in flight:
/// a reload that only moves the text must not hand out a second set of
/// slots while the first are taken.
#[test]
fn a_reload_that_only_moves_the_text_keeps_the_bulkhead_full() {
    let b = Backend::start("b");
    let (listen, admin) = (free_addr(), free_addr());
    let config = ConfigBuilder::new()
        .admin_at(admin)
        .set("server", "workers = 1")
        .set("access_log", "enabled = false")
        .listener("main", listen)
        .cluster_with(
            "app",
            &[b.addr()],
            &["bulkhead = { max_concurrent = 1, max_queue = 0 }"],
        )
        .route("all", "app")
        .build();
    let levee = Levee::start(&config);
    let bulkhead = |levee: &Levee| levee.status_json()["clusters"][0]["bulkhead"].clone();
    let slow = std::thread::spawn(move || http_get(listen, "/?delay=3s").map(|r| r.status));
    assert!(wait_until(T, || bulkhead(&levee)["in_flight"] == 1));
    assert_eq!(http_get(listen, "/").expect("request").status, 503);
    assert_eq!(bulkhead(&levee)["rejected_full"], 1);

    levee.write_config(&format!("# moved, not changed\n\n{config}"));
    assert_eq!(levee.reload_via_admin(), 200);
    let after = bulkhead(&levee);
    assert_eq!(
        (after["in_flight"].clone(), after["rejected_full"].clone()),
        (1.into(), 1.into()),
        "{after}"
    );
    let r = http_get(listen, "/").expect("request");
    assert_eq!(r.status, 503, "a second slot after the reload");
    assert_eq!(slow.join().expect("slow request"), Ok(200));
    assert_eq!(http_get(listen, "/").expect("request").status, 200);
}
