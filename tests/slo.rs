//! SLOs, events and trace context end to end, over real sockets: a route's
//! error budget and burn rates from a known failure share (`GET /slo`, the
//! metrics, the alert events), the events of a breaker opening and of an
//! ejection (`GET /events` and the `GET /events/stream` SSE stream), W3C
//! `traceparent` at the backend and the trace id in the access log, and a
//! wrong `slo` table refused with file:line:column.
//! Run with `cargo test --test slo`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(5);
/// SLOs are evaluated every 5 s; alerts and gauges may take that long.
const EVAL: Duration = Duration::from_secs(20);

/// A GET to the route whose `x-route` header matcher is `route`.
fn get(addr: std::net::SocketAddr, route: &str, path: &str) -> u16 {
    http_request(addr, "GET", path, &[("x-route", route)], b"", T)
        .expect("request")
        .status
}

fn events(levee: &Levee, query: &str) -> Vec<serde_json::Value> {
    let r = levee
        .admin_get(&format!("/events?{query}"))
        .expect("GET /events");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().expect("JSON")["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn budget_and_burn_rates_follow_the_failure_share() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let config = ConfigBuilder::new()
        .listener("main", listen)
        .cluster_with(
            "app",
            &[b.addr()],
            &[
                "retry = { max_attempts = 1 }",
                "outlier_detection = { enabled = false }",
            ],
        )
        .route_with(
            "api",
            "app",
            &[
                "headers = { \"x-route\" = \"api\" }",
                "slo = { target = 99.0 }",
            ],
        )
        .route_with(
            "fast",
            "app",
            &[
                "headers = { \"x-route\" = \"fast\" }",
                "slo = { target = 99.9, window_days = 7, latency = \"250ms\" }",
            ],
        )
        .route_with("plain", "app", &["headers = { \"x-route\" = \"plain\" }"])
        .build();
    let levee = Levee::start(&config);

    // 200 requests, 20 of them 5xx (10 %): ten times what a 1 % budget
    // allows. 4xx answers are good by default.
    for i in 0..200 {
        let path = match i % 20 {
            0 | 1 => "/status/500",
            2 => "/status/404",
            _ => "/",
        };
        get(listen, "api", path);
    }
    // Latency counts on "fast": two slow answers of four are bad.
    for delay in ["0ms", "800ms", "0ms", "800ms"] {
        assert_eq!(get(listen, "fast", &format!("/?delay={delay}")), 200);
    }
    get(listen, "plain", "/");

    let slo = levee
        .admin_get("/slo")
        .expect("GET /slo")
        .json()
        .expect("JSON");
    let api = &slo["routes"]["api"];
    assert_eq!(api["requests"], 200, "{slo}");
    assert_eq!(api["bad"], 20, "{slo}");
    assert_eq!(api["target_percent"], 99.0);
    assert_eq!(api["window_days"], 30);
    let near =
        |v: &serde_json::Value, want: f64| v.as_f64().is_some_and(|x| (x - want).abs() < 1e-6);
    assert!(near(&api["availability"], 0.9), "{api}");
    // 10 % bad of a 1 % budget: spent ten times over.
    assert!(near(&api["budget_remaining"], -9.0), "{api}");
    for b in api["burn_rates"].as_array().expect("burn_rates") {
        assert!(near(&b["burn_rate"], 10.0), "{b}");
        assert_eq!(b["requests"], 200, "{b}");
    }
    let fast = &slo["routes"]["fast"];
    assert_eq!(
        (fast["requests"].as_u64(), fast["bad"].as_u64()),
        (Some(4), Some(2)),
        "{fast}"
    );
    assert_eq!(fast["window_days"], 7);
    assert!(
        slo["routes"].get("plain").is_none(),
        "no SLO, no report: {slo}"
    );

    // The control loop sets the gauges and starts the alerts whose factor a
    // burn rate of 10 reaches (6× and 1×) but not the 14.4× one.
    assert!(
        wait_until(EVAL, || levee
            .metric("levee_slo_burn_rate", &[("route", "api"), ("window", "5m")])
            .is_some_and(|v| (v - 10.0).abs() < 1e-6)),
        "{}",
        levee.metrics_text()
    );
    let budget = levee.metric(
        "levee_slo_error_budget_remaining_ratio",
        &[("route", "api")],
    );
    assert!(budget.is_some_and(|v| (v + 9.0).abs() < 1e-6), "{budget:?}");
    let firing = |alert| {
        levee.metric(
            "levee_slo_alert_firing",
            &[("route", "api"), ("alert", alert)],
        )
    };
    assert_eq!(firing("fast_burn_6h"), Some(1.0));
    assert_eq!(firing("slow_burn_3d"), Some(1.0));
    assert_eq!(firing("fast_burn_1h"), Some(0.0));
    let alerts = events(&levee, "kind=slo_alert&subject=route%20api");
    let started: Vec<&str> = alerts.iter().filter_map(|e| e["what"].as_str()).collect();
    assert!(
        started.contains(&"fast_burn_6h (page) started"),
        "{alerts:?}"
    );
    assert!(
        started.contains(&"slow_burn_3d (ticket) started"),
        "{alerts:?}"
    );
    assert!(
        !started.iter().any(|w| w.starts_with("fast_burn_1h")),
        "{alerts:?}"
    );
    let why = alerts[0]["why"].as_str().unwrap_or("");
    assert!(why.contains("burn rate 10.0×"), "{why}");

    // A reload keeps the counts: the budget is the route's, not the
    // snapshot's.
    assert_eq!(levee.reload_via_admin(), 200);
    let slo = levee
        .admin_get("/slo")
        .expect("GET /slo")
        .json()
        .expect("JSON");
    assert_eq!(slo["routes"]["api"]["requests"], 200, "{slo}");
    let reloads = events(&levee, "kind=reload");
    assert!(
        reloads.iter().any(|e| e["what"] == "configuration applied"),
        "{reloads:?}"
    );
}

/// Reads SSE lines from `stream` until `want` has been seen or `within`
/// passed; returns what was read.
fn read_sse_until(stream: &mut BufReader<TcpStream>, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = String::new();
    while Instant::now() < deadline && !seen.contains(want) {
        let mut line = String::new();
        match stream.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => seen.push_str(&line),
            // Read timeouts: look at the deadline again.
            Err(_) => {}
        }
    }
    seen
}

#[test]
fn events_explain_a_breaker_opening_and_an_ejection() {
    let brk = Backend::start("brk");
    let (e1, e2) = (Backend::start("e1"), Backend::start("e2"));
    let listen = free_addr();
    let config = ConfigBuilder::new()
        .listener("main", listen)
        .cluster_with(
            "brk",
            &[brk.addr()],
            &[
                "retry = { max_attempts = 1 }",
                "outlier_detection = { enabled = false }",
                r#"circuit_breaker = { consecutive_failures = 3, open_duration = "60s" }"#,
            ],
        )
        .cluster_with(
            "ej",
            &[e1.addr(), e2.addr()],
            &[
                "retry = { max_attempts = 1 }",
                r#"outlier_detection = { consecutive_failures = 3, base_ejection = "60s" }"#,
            ],
        )
        .route_with("brk", "brk", &["headers = { \"x-route\" = \"brk\" }"])
        .route_with("ej", "ej", &["headers = { \"x-route\" = \"ej\" }"])
        .build();
    let levee = Levee::start(&config);

    // Subscribe to the stream before anything happens.
    let mut sse = TcpStream::connect(levee.admin_addr()).expect("connect admin");
    sse.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    sse.write_all(b"GET /events/stream?kind=breaker,ejection HTTP/1.1\r\nHost: admin\r\n\r\n")
        .expect("write");
    let mut sse = BufReader::new(sse);
    let head = read_sse_until(&mut sse, ": levee events", T);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );

    brk.set_status(Some(500));
    for _ in 0..3 {
        assert_eq!(get(listen, "brk", "/"), 500);
    }
    // The fourth is answered by the open breaker.
    assert_eq!(get(listen, "brk", "/"), 503);
    let opened = events(&levee, "kind=breaker&subject=cluster%20brk");
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["what"], "closed → open");
    assert!(
        opened[0]["why"].as_str().is_some_and(|w| w.contains('3')),
        "{opened:?}"
    );

    e1.set_status(Some(500));
    let subject = format!("endpoint {} of cluster ej", e1.addr());
    assert!(
        wait_until(T, || {
            get(listen, "ej", "/");
            !events(&levee, "kind=ejection").is_empty()
        }),
        "no ejection event; {}",
        levee.logs()
    );
    let ejected = events(&levee, "kind=ejection");
    assert_eq!(ejected[0]["subject"], subject.as_str(), "{ejected:?}");
    assert!(
        ejected[0]["what"]
            .as_str()
            .is_some_and(|w| w.starts_with("ejected for")),
        "{ejected:?}"
    );
    // While e1 is out, e2 answers everything.
    for _ in 0..4 {
        assert_eq!(get(listen, "ej", "/"), 200);
    }

    // Both reached the stream, as SSE frames with the event's JSON.
    let mut seen = read_sse_until(&mut sse, "event: ejection", T);
    seen.push_str(&read_sse_until(
        &mut sse,
        "\n\n",
        Duration::from_millis(500),
    ));
    assert!(seen.contains("event: breaker\ndata: {"), "{seen}");
    assert!(seen.contains("closed → open"), "{seen}");
    assert!(seen.contains(&subject), "{seen}");

    // `since` resumes after what a reader has seen; bad filters are refused.
    let last = levee
        .admin_get("/events")
        .expect("events")
        .json()
        .expect("JSON")["last_seq"]
        .as_u64()
        .expect("last_seq");
    assert!(events(&levee, &format!("since={last}")).is_empty());
    assert_eq!(
        levee.admin_get("/events?kind=nope").expect("events").status,
        400
    );
}

#[test]
fn traceparent_reaches_the_backend_and_the_access_log() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let config = ConfigBuilder::simple(listen, &[b.addr()])
        .set("access_log", "enabled = true")
        .set(
            "access_log",
            &format!("path = {:?}", log_path.display().to_string()),
        )
        .build();
    let _levee = Levee::start(&config);

    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http_request(
        listen,
        "GET",
        "/one",
        &[("traceparent", given), ("tracestate", "congo=t61rcWkgMzE")],
        b"",
        T,
    )
    .expect("request");
    assert_eq!(r.status, 200);
    let seen = b.last_request().expect("backend saw it");
    let sent = seen.header("traceparent").expect("traceparent").to_owned();
    // Same trace, Levee's own span as the parent, flags kept.
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01") && sent.len() == 55, "{sent}");
    assert_ne!(sent, given);
    assert_eq!(seen.header("tracestate"), Some("congo=t61rcWkgMzE"));

    // Without one (and with a stray tracestate), a trace is started.
    let r = http_request(listen, "GET", "/two", &[("tracestate", "x=1")], b"", T).expect("request");
    assert_eq!(r.status, 200);
    let seen = b.last_request().expect("backend saw it");
    let started = seen.header("traceparent").expect("traceparent").to_owned();
    assert_eq!(started.len(), 55, "{started}");
    assert!(started.starts_with("00-") && !started.contains("-00000000000000000000000000000000-"));
    assert_eq!(
        seen.header("tracestate"),
        None,
        "a tracestate without traceparent is dropped"
    );

    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    assert!(wait_until(T, || lines().len() == 2), "{:?}", lines());
    let lines = lines();
    assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(lines[1]["trace_id"], &started[3..35]);
}

#[test]
fn a_wrong_slo_is_refused_with_its_place() {
    let cases = [
        (
            "slo = { target = 100.0 }",
            "routes[0].slo.target",
            "is not a percentage",
        ),
        (
            "slo = { target = 99.9, window_days = 0 }",
            "routes[0].slo.window_days",
            "out of range",
        ),
        (
            "slo = { target = 99.9, good_statuses = [\"2xx\", \"6xx\"] }",
            "routes[0].slo.good_statuses[1]",
            "unknown status class \"6xx\"",
        ),
        (
            "slo = { target = 99.9, latency = \"0ms\" }",
            "routes[0].slo.latency",
            "latency 0",
        ),
        (
            "slo = { target = 99.9, latency_targets = { p95 = \"200ms\" } }",
            "routes[0].slo.latency_targets.p95",
            "unknown percentile \"p95\"",
        ),
        (
            "slo = { target = 99.9, latency_targets = { p99 = \"0s\" } }",
            "routes[0].slo.latency_targets.p99",
            "can never be met",
        ),
        (
            "slo = { target = 99.9, colour = 1 }",
            "colour",
            "unknown field",
        ),
    ];
    for (slo, key, message) in cases {
        let config = ConfigBuilder::new()
            .listener("main", free_addr())
            .cluster("app", &[free_addr()])
            .route_with("api", "app", &[slo])
            .build();
        let (code, _, stderr) = Levee::check(&config);
        assert_eq!(code, 1, "{slo}: {stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(message),
            "{slo}: {stderr}"
        );
        // file:line:column of the offending value.
        let line = config
            .lines()
            .position(|l| l.contains("slo = "))
            .expect("slo line")
            + 1;
        assert!(
            stderr.contains(&format!("levee.toml:{line}:")),
            "{slo}: {stderr}"
        );
    }
}

#[test]
fn the_budget_survives_a_restart_and_a_corrupt_file_starts_fresh() {
    let b = Backend::start("b1");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("slo.json");
    let config = |listen| {
        ConfigBuilder::new()
            .set(
                "slo",
                &format!("state_file = {:?}", state.display().to_string()),
            )
            .set("slo", "save_interval = \"1s\"")
            .listener("main", listen)
            .cluster_with("app", &[b.addr()], &["retry = { max_attempts = 1 }"])
            .route_with("api", "app", &["slo = { target = 99.5 }"])
            .build()
    };
    let requests = |levee: &Levee| {
        let slo = levee
            .admin_get("/slo")
            .expect("GET /slo")
            .json()
            .expect("JSON");
        (
            slo["routes"]["api"]["requests"].as_u64(),
            slo["routes"]["api"]["bad"].as_u64(),
        )
    };

    let listen = free_addr();
    let mut levee = Levee::start(&config(listen));
    for path in ["/", "/status/502", "/", "/status/502", "/"] {
        http_get(listen, path).expect("request");
    }
    assert!(
        wait_until(T, || requests(&levee) == (Some(5), Some(2))),
        "{:?}",
        requests(&levee)
    );
    // Saved at the interval while running...
    assert!(wait_until(EVAL, || std::fs::read_to_string(&state)
        .is_ok_and(|s| s.contains("\"api\""))));
    // ...and once more at a graceful stop.
    http_get(listen, "/").expect("request");
    assert!(levee.sigterm());
    assert!(levee.wait_exit(T).is_some_and(|s| s.success()));

    let listen = free_addr();
    let levee = Levee::start(&config(listen));
    assert!(
        wait_until(T, || requests(&levee) == (Some(6), Some(2))),
        "{:?}; {}",
        requests(&levee),
        levee.logs()
    );
    drop(levee);

    std::fs::write(&state, b"{ not json").expect("corrupt the file");
    let listen = free_addr();
    let levee = Levee::start(&config(listen));
    assert_eq!(http_get(listen, "/").expect("request").status, 200);
    assert!(
        wait_until(T, || levee
            .logs()
            .contains("SLO state ignored, counts start fresh")),
        "{}",
        levee.logs()
    );
    assert!(
        wait_until(T, || requests(&levee) == (Some(1), Some(0))),
        "{:?}",
        requests(&levee)
    );
}

#[test]
fn slo_rules_print_the_prometheus_equivalent() {
    let config = ConfigBuilder::new()
        .listener("main", free_addr())
        .cluster("app", &[free_addr()])
        .route_with(
            "api",
            "app",
            &["path_prefix = \"/api\"", "slo = { target = 99.9 }"],
        )
        .route_with("web", "app", &["slo = { target = 99.0, window_days = 7 }"])
        .build();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("levee.toml");
    std::fs::write(&path, config).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["slo", "rules", "--config"])
        .arg(&path)
        .output()
        .expect("run levee slo rules");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("# Prometheus rules"), "{text}");
    for (route, window) in [("api", "30d"), ("web", "7d")] {
        assert!(
            text.contains(&format!("- name: \"levee-slo-{route}\"")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "sum(rate(levee_slo_bad_requests_total{{route=\\\"{route}\\\"}}[{window}]))"
            )),
            "{text}"
        );
    }
    assert_eq!(
        text.matches("- alert: LeveeSloFastBurn1h").count(),
        2,
        "{text}"
    );
    // The counters the rules read exist once a route with an SLO served.
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(
        &ConfigBuilder::new()
            .listener("main", listen)
            .cluster("app", &[b.addr()])
            .route_with("api", "app", &["slo = { target = 99.9 }"])
            .build(),
    );
    http_get(listen, "/status/503").expect("request");
    http_get(listen, "/").expect("request");
    assert!(wait_until(T, || levee
        .metric("levee_slo_requests_total", &[("route", "api")])
        == Some(2.0)));
    assert_eq!(
        levee.metric("levee_slo_bad_requests_total", &[("route", "api")]),
        Some(1.0)
    );
}

#[test]
fn a_failing_health_check_is_an_event() {
    let mut h1 = Backend::start("h1");
    let h2 = Backend::start("h2");
    let listen = free_addr();
    let config = ConfigBuilder::new()
        .listener("main", listen)
        .cluster_with(
            "hc",
            &[h1.addr(), h2.addr()],
            &[r#"health_check = { interval = "200ms", jitter = "0s", timeout = "200ms", unhealthy_threshold = 2 }"#],
        )
        .route("all", "hc")
        .build();
    let levee = Levee::start(&config);
    let subject = format!("endpoint {} of cluster hc", h1.addr());
    h1.stop();
    assert!(
        wait_until(Duration::from_secs(10), || {
            events(&levee, "kind=health")
                .iter()
                .any(|e| e["subject"] == subject.as_str() && e["what"] == "healthy → unhealthy")
        }),
        "{:?}",
        events(&levee, "")
    );
    let e = events(&levee, "kind=health");
    let why = e[0]["why"].as_str().unwrap_or("");
    assert!(why.contains("last check"), "{why}");
}

#[test]
fn the_access_log_in_text_keeps_every_error_and_samples_successes() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let config = ConfigBuilder::simple(listen, &[b.addr()])
        .set("access_log", "enabled = true")
        .set(
            "access_log",
            &format!("path = {:?}", log_path.display().to_string()),
        )
        .set("access_log", "format = \"text\"")
        .set("access_log", "success_sample = 0.25")
        .build();
    let _levee = Levee::start(&config);
    for i in 0..40 {
        let path = if i % 10 == 0 { "/status/502" } else { "/ok" };
        http_get(listen, path).expect("request");
    }
    let lines = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // 4 errors, all kept; 36 successes, one in four kept.
    assert!(wait_until(T, || lines().len() == 4 + 9), "{:#?}", lines());
    let lines = lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("\"GET /status/502 HTTP/1.1\" 502 "))
            .count(),
        4
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("\"GET /ok HTTP/1.1\" 200 "))
            .count(),
        9
    );
    for l in &lines {
        assert!(l.starts_with("127.0.0.1 - - ["), "{l}");
        assert!(l.contains(" trace_id=") && l.contains(" route="), "{l}");
    }
    let refused = ConfigBuilder::simple(free_addr(), &[b.addr()])
        .set("access_log", "success_sample = 2")
        .build();
    let (code, _, stderr) = Levee::check(&refused);
    assert_eq!(code, 1);
    assert!(stderr.contains("access_log.success_sample"), "{stderr}");
}

/// Latency percentiles per route from its histogram (`GET /stats`, the
/// `levee_route_latency_seconds` gauges) and a route's latency targets
/// judged against the last 5 minutes (`GET /slo`, the target gauges).
#[test]
fn latency_percentiles_and_targets() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let config = ConfigBuilder::new()
        .listener("main", listen)
        .cluster_with("app", &[b.addr()], &["retry = { max_attempts = 1 }"])
        .route_with(
            "api",
            "app",
            &[
                "headers = { \"x-route\" = \"api\" }",
                "slo = { target = 99.0, latency_targets = { p50 = \"200ms\", p99 = \"300ms\" } }",
            ],
        )
        .route("other", "app")
        .build();
    let levee = Levee::start(&config);
    // 8 fast answers, 2 slow ones (600 ms): p50 fast, p99 slow.
    for i in 0..10 {
        let delay = if i % 5 == 4 { "600ms" } else { "0ms" };
        assert_eq!(get(listen, "api", &format!("/?delay={delay}")), 200);
    }
    assert_eq!(get(listen, "other", "/status/503"), 503);

    let slo = levee
        .admin_get("/slo")
        .expect("GET /slo")
        .json()
        .expect("JSON");
    let lat = &slo["routes"]["api"]["latency"];
    assert_eq!(lat["window"], "5m", "{slo}");
    assert_eq!(lat["percentiles"]["count"], 10, "{lat}");
    let p50 = lat["percentiles"]["p50_ms"].as_f64().expect("p50");
    let p99 = lat["percentiles"]["p99_ms"].as_f64().expect("p99");
    assert!(p50 < 200.0, "{lat}");
    // At most 3.1 % above the true value, never below.
    assert!((600.0..700.0).contains(&p99), "{lat}");
    let targets = lat["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 2, "{lat}");
    assert_eq!(
        (&targets[0]["percentile"], &targets[0]["met"]),
        (&"p50".into(), &true.into())
    );
    assert_eq!(
        (&targets[1]["percentile"], &targets[1]["met"]),
        (&"p99".into(), &false.into())
    );
    assert_eq!(targets[1]["under_ms"], 300.0);

    let stats = levee
        .admin_get("/stats")
        .expect("GET /stats")
        .json()
        .expect("JSON");
    let other = &stats["routes"]["other"];
    assert_eq!(other["latency"]["1m"]["count"], 1, "{stats}");
    assert_eq!(other["error_ratio"], 1.0, "{other}");
    assert_eq!(other["slo"], serde_json::Value::Null);
    let errors: u64 = other["series"]["errors"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|v| v.as_u64())
        .sum();
    assert_eq!(errors, 1, "{other}");
    assert_eq!(
        stats["routes"]["api"]["slo"]["latency"]["targets"][1]["met"],
        false
    );

    // The control loop sets the gauges.
    assert!(
        wait_until(EVAL, || levee
            .metric(
                "levee_slo_latency_target_met",
                &[("route", "api"), ("quantile", "p99")]
            )
            .is_some_and(|v| v == 0.0)),
        "{}",
        levee.metrics_text()
    );
    let met = levee.metric(
        "levee_slo_latency_target_met",
        &[("route", "api"), ("quantile", "p50")],
    );
    assert_eq!(met, Some(1.0));
    let p99 = levee.metric(
        "levee_route_latency_seconds",
        &[("route", "api"), ("window", "5m"), ("quantile", "p99")],
    );
    assert!(p99.is_some_and(|v| (0.6..0.7).contains(&v)), "{p99:?}");
}
