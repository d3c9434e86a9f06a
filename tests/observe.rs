//! What Levee tells about itself: the JSON access log, the admin API's token,
//! worker threads, connection gauges and the latency histogram; and the
//! `levee demo` command end to end.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(5);

fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn access_log_has_one_json_line_per_request() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let config = ConfigBuilder::new()
        .set("access_log", "enabled = true")
        .set(
            "access_log",
            &format!("path = {:?}", log_path.display().to_string()),
        )
        .listener("main", listen)
        .cluster("app", &[b.addr()])
        .route_with("all", "app", &["path_prefix = \"/echo\""])
        .build();
    let _levee = Levee::start(&config);

    let body = vec![b'x'; 1000];
    let ok = http_request(
        listen,
        "POST",
        "/echo?x=1",
        &[("X-Request-Id", "obs-1"), ("Content-Length", "1000")],
        &body,
        T,
    )
    .expect("request");
    assert_eq!(ok.status, 200);
    let missing = http_request(listen, "GET", "/nowhere", &[], b"", T).expect("request");
    assert_eq!(missing.status, 404);

    assert!(
        wait_until(T, || read_lines(&log_path).len() == 2),
        "expected two access log lines, got {:?}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let lines = read_lines(&log_path);
    // A line is written when its response is over, which may come after
    // the next request's on another worker: found by method, not order.
    let by_method = |m: &str| {
        lines
            .iter()
            .find(|l| l["method"] == m)
            .unwrap_or_else(|| panic!("no {m} line in {lines:?}"))
    };
    let first = by_method("POST");
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/echo?x=1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "all");
    assert_eq!(first["cluster"], "app");
    assert_eq!(first["endpoint"], b.addr().to_string());
    assert_eq!(first["request_id"], "obs-1");
    assert_eq!(first["bytes_in"], 1000);
    assert_eq!(first["bytes_out"], ok.body.len());
    let upstream = first["upstream_ms"].as_f64().expect("upstream_ms");
    let total = first["total_ms"].as_f64().expect("total_ms");
    assert!(upstream >= 0.0 && total >= upstream, "{first}");
    let time = first["time"].as_str().expect("time");
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.starts_with("20"),
        "{time}"
    );
    assert!(first.get("error").is_none(), "{first}");

    let second = by_method("GET");
    assert_eq!(second["status"], 404);
    assert_eq!(second["error"], "no_route");
    assert_eq!(second["route"], serde_json::Value::Null);
    assert_eq!(second["endpoint"], serde_json::Value::Null);
    assert_eq!(second["upstream_ms"], serde_json::Value::Null);
    assert_eq!(
        second["request_id"].as_str(),
        missing.header("x-request-id"),
        "the logged id is the one the client got"
    );
}

/// A 502 says why: the io cause of the failed try is in the access log
/// (`upstream_error`) and in the error log line.
#[test]
fn a_failed_try_logs_its_cause() {
    let (_refusing, dead) = refusing_addr();
    let live = Backend::start("live");
    let listen = free_addr();
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let config = ConfigBuilder::new()
        .set("access_log", "enabled = true")
        .set(
            "access_log",
            &format!("path = {:?}", log_path.display().to_string()),
        )
        .listener("main", listen)
        .cluster_with("dead", &[dead], &["retry = { max_attempts = 1 }"])
        .cluster("live", &[live.addr()])
        .route_with("cut", "live", &["path_prefix = \"/close-mid\""])
        .route("all", "dead")
        .build();
    let levee = Levee::start(&config);

    let r =
        http_request(listen, "GET", "/x", &[("X-Request-Id", "dead-1")], b"", T).expect("request");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        wait_until(T, || read_lines(&log_path).len() == 1),
        "expected one access log line"
    );
    let line = &read_lines(&log_path)[0];
    assert_eq!(line["error"], "upstream_connect", "{line}");
    let cause = line["upstream_error"].as_str().unwrap_or_default();
    assert!(
        cause.starts_with("connect failed: ") && cause.to_lowercase().contains("refused"),
        "the io cause is kept: {line}"
    );

    // The endpoint breaks off mid-body: the client gets a truncated body,
    // the access log says why.
    let cut = http_request(listen, "GET", "/close-mid", &[], b"", T);
    assert!(cut.is_err() || cut.is_ok_and(|r| r.body.len() < 1000));
    assert!(
        wait_until(T, || read_lines(&log_path).len() == 2),
        "expected two access log lines"
    );
    let line = &read_lines(&log_path)[1];
    assert_eq!(line["endpoint"], live.addr().to_string(), "{line}");
    assert!(
        line["upstream_error"]
            .as_str()
            .is_some_and(|e| e.contains("before the end of the body")),
        "{line}"
    );

    assert!(
        wait_until(T, || {
            let logs = levee.stderr_text();
            logs.contains("dead-1") && logs.to_lowercase().contains("connection refused")
        }),
        "the error log names the request and the cause: {}",
        levee.stderr_text()
    );
}

/// Timings mean one thing each: a request that waited in the bulkhead
/// queue shows the wait as `wait_ms`, not as upstream time; `head_ms` and
/// `upstream_ms` run from its try's start.
#[test]
fn a_queued_request_shows_its_wait_apart_from_upstream_time() {
    let b = Backend::start("slow");
    let listen = free_addr();
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    // One worker: both requests use the same slot of the pool.
    let config = ConfigBuilder::new()
        .set("server", "workers = 1")
        .set("access_log", "enabled = true")
        .set(
            "access_log",
            &format!("path = {:?}", log_path.display().to_string()),
        )
        .listener("main", listen)
        .cluster_with(
            "one_at_a_time",
            &[b.addr()],
            &[r#"bulkhead = { max_concurrent = 1, max_queue = 4, queue_timeout = "5s" }"#],
        )
        .route("all", "one_at_a_time")
        .build();
    let levee = Levee::start(&config);

    // The first holds the only slot for 300 ms; the second, sent while it
    // does, waits in the queue for it.
    let first = std::thread::spawn(move || http_get(listen, "/first?delay=300ms"));
    assert!(
        wait_until(T, || b.in_flight() == 1),
        "the first request reaches the backend"
    );
    let second = http_get(listen, "/second?delay=300ms").expect("second");
    assert_eq!(second.status, 200);
    assert_eq!(first.join().expect("thread").expect("first").status, 200);

    assert!(
        wait_until(T, || read_lines(&log_path).len() == 2),
        "expected two access log lines"
    );
    let lines = read_lines(&log_path);
    let line = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"].as_str().is_some_and(|p| p.starts_with(path)))
            .unwrap_or_else(|| panic!("no line for {path}: {lines:?}"))
            .clone()
    };
    let f = |l: &serde_json::Value, k: &str| {
        l[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number: {l}"))
    };
    let (first, queued) = (line("/first"), line("/second"));

    assert!(f(&first, "wait_ms") < 150.0, "{first}");
    assert!(f(&first, "connect_ms") >= 0.0, "a new connection: {first}");
    assert!(f(&first, "head_ms") >= 290.0, "{first}");

    let (wait, head, upstream, total) = (
        f(&queued, "wait_ms"),
        f(&queued, "head_ms"),
        f(&queued, "upstream_ms"),
        f(&queued, "total_ms"),
    );
    assert!(wait >= 150.0, "waited for the first to finish: {queued}");
    assert!(
        (290.0..2000.0).contains(&head) && head <= upstream,
        "head and exchange from the try's start: {queued}"
    );
    assert!(
        upstream <= total - wait + 1.0,
        "the queue wait is not upstream time: {queued}"
    );
    assert!(total >= wait + head - 1.0, "{queued}");
    assert_eq!(
        queued["connect_ms"],
        serde_json::Value::Null,
        "the first's connection was back in the pool before the second's try: {queued}"
    );

    // The same, as histograms by cluster.
    let cluster = [("cluster", "one_at_a_time")];
    let metric = |name: &str| levee.metric(name, &cluster).unwrap_or(-1.0);
    assert_eq!(metric("levee_request_wait_seconds_count"), 2.0);
    let waited = metric("levee_request_wait_seconds_sum");
    assert!((0.15..2.0).contains(&waited), "waited {waited} s in all");
    assert_eq!(metric("levee_upstream_response_head_seconds_count"), 2.0);
    let heads = metric("levee_upstream_response_head_seconds_sum");
    assert!((0.58..4.0).contains(&heads), "heads took {heads} s in all");
}

#[test]
fn admin_token_guards_everything_but_healthz() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let config = ConfigBuilder::simple(listen, &[b.addr()])
        .set("admin", "token = \"s3cret\"")
        .build();
    let levee = Levee::start(&config);
    let admin = levee.admin_addr();
    for path in ["/metrics", "/status"] {
        let none = http_request(admin, "GET", path, &[], b"", T).expect("admin");
        assert_eq!(none.status, 401, "{path} without token");
        let wrong = http_request(
            admin,
            "GET",
            path,
            &[("Authorization", "Bearer nope")],
            b"",
            T,
        )
        .expect("admin");
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
        let right = http_request(
            admin,
            "GET",
            path,
            &[("Authorization", "Bearer s3cret")],
            b"",
            T,
        )
        .expect("admin");
        assert_eq!(right.status, 200, "{path} with the token");
    }
    let reload = http_request(admin, "POST", "/reload", &[], b"", T).expect("admin");
    assert_eq!(reload.status, 401, "reload without token");
    // Not reloaded: the counters exist, at 0.
    assert_eq!(levee.metric("levee_config_reloads_total", &[]), Some(0.0));
    let health = http_request(admin, "GET", "/healthz", &[], b"", T).expect("admin");
    assert_eq!(health.status, 200);
}

#[test]
fn workers_are_threads_with_their_own_loops() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let config = ConfigBuilder::simple(listen, &[b.addr()])
        .set("server", "workers = 3")
        .build();
    let levee = Levee::start(&config);
    assert_eq!(levee.status_json()["workers"], 3);
    // Worker threads may still be starting when the admin API answers.
    let workers = || {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", levee.pid())).expect("tasks");
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("levee-worker-"))
            .count()
    };
    assert!(wait_until(T, || workers() == 3), "{} workers", workers());
    // Every worker serves: 60 fresh connections all get answers.
    for _ in 0..60 {
        assert_eq!(http_get(listen, "/").expect("request").status, 200);
    }
}

#[test]
fn connection_gauge_totals_and_latency_histogram() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&ConfigBuilder::simple(listen, &[b.addr()]).build());
    let active = |levee: &Levee| levee.metric("levee_connections_active", &[("listener", "main")]);

    let mut held: Vec<RawConn> = (0..2)
        .map(|_| {
            let mut c = RawConn::connect(listen).expect("connect");
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("write");
            assert_eq!(c.read_response(T).expect("response").status, 200);
            c
        })
        .collect();
    assert!(
        wait_until(T, || active(&levee) == Some(2.0)),
        "{:?}",
        active(&levee)
    );
    held.clear();
    assert!(
        wait_until(T, || active(&levee) == Some(0.0)),
        "{:?}",
        active(&levee)
    );
    assert_eq!(
        levee.metric("levee_connections_total", &[("listener", "main")]),
        Some(2.0)
    );
    assert_eq!(
        levee.metric("levee_request_duration_seconds_count", &[("route", "all")]),
        Some(2.0)
    );
    assert_eq!(
        levee.metric(
            "levee_requests_total",
            &[("route", "all"), ("class", "2xx")]
        ),
        Some(2.0)
    );
}

/// Three consecutive free loopback ports for the demo backends.
fn three_free_ports() -> u16 {
    for _ in 0..50 {
        let p = free_port();
        if p < 65_000 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
    panic!("no three consecutive free ports");
}

#[test]
fn demo_serves_and_shows_the_spread() {
    let listen = free_addr();
    let admin = free_addr();
    let first = three_free_ports();
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args([
            "demo",
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
            "--backend-port",
            &first.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start levee demo");
    let stdout = child.stdout.take().expect("stdout");
    // Read the banner and the spread on a thread, bounded by the deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline && !seen.iter().any(|l: &String| l.contains("demo-3:")) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(line);
        }
    }
    let text = seen.join("\n");
    assert!(text.contains(&format!("http://{listen}/")), "{text}");
    for backend in ["demo-1: 2", "demo-2: 2", "demo-3: 2"] {
        assert!(text.contains(backend), "missing {backend:?} in:\n{text}");
    }
    let r = http_get(listen, "/hello").expect("request through the demo");
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-backend")
            .is_some_and(|b| b.starts_with("demo-"))
    );
    let status = http_get(admin, "/status").expect("admin");
    assert_eq!(status.status, 200);

    // What the banner invites to try: the per-client limit (5 at once)...
    let statuses: Vec<u16> = (0..8)
        .map(|_| http_get(listen, "/limited").expect("request").status)
        .collect();
    assert_eq!(&statuses[..5], [200; 5], "{statuses:?}");
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    // ...and a service level that switches the nice-to-have route off.
    let put = http_request(
        admin,
        "PUT",
        "/degradation",
        &[],
        b"minimal",
        Duration::from_secs(5),
    )
    .expect("PUT /degradation");
    assert_eq!(put.status, 200);
    let reco = http_get(listen, "/reco").expect("request");
    assert_eq!((reco.status, reco.text().as_str()), (200, "[]\n"));
    assert_eq!(reco.header("x-backend"), None);

    // SIGTERM: a clean exit, and nothing listens any more.
    assert_eq!(send_sigterm(child.id()), 0);
    let exit = wait_child(&mut child, Duration::from_secs(10)).expect("demo exits");
    assert!(exit.success(), "{exit:?}");
    assert!(
        TcpStream::connect(listen).is_err(),
        "still listening after exit"
    );
}

fn send_sigterm(pid: u32) -> i32 {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map_or(-1, |s| s.code().unwrap_or(-1))
}

fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

// ---- Operating it day to day (issue 9, item 5) ----

/// Item 5a: counters that exist from the start at 0, so that "absent means
/// 0" alerts and `increase()` work from the first event: error kinds, reload
/// results, per-cluster retry reasons, per-endpoint health and breaker
/// transitions, outlier ejections; and those of a cluster a reload adds.
#[test]
fn known_counters_exist_at_zero_from_the_start() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let config = |more: bool| {
        let mut c = ConfigBuilder::new()
            .set("access_log", "enabled = false")
            .listener("main", listen)
            .cluster_with(
                "app",
                &[b.addr()],
                &[
                    "health_check = { interval = \"1s\" }",
                    "circuit_breaker = { consecutive_failures = 5 }",
                    "endpoint_circuit_breaker = { consecutive_failures = 5 }",
                ],
            )
            .route("all", "app");
        if more {
            c = c.cluster("more", &[b.addr()]);
        }
        c
    };
    let cfg = config(false);
    let admin = cfg.admin_addr();
    let levee = Levee::start(&cfg.build());
    let text = levee.metrics_text();
    let at_zero = |text: &str, name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            metric_sum(text, name, labels),
            Some(0.0),
            "{name} {labels:?} should exist at 0 in:\n{text}"
        );
    };
    let ep = b.addr().to_string();
    for kind in [
        "no_route",
        "no_endpoint",
        "upstream_connect",
        "breaker_open",
        "header_timeout",
    ] {
        at_zero(&text, "levee_errors_total", &[("kind", kind)]);
    }
    for result in ["applied", "refused"] {
        at_zero(&text, "levee_config_reloads_total", &[("result", result)]);
    }
    for kind in [
        "connect_failure",
        "timeout",
        "gateway_error",
        "rate_limited",
    ] {
        at_zero(
            &text,
            "levee_upstream_retries_total",
            &[("cluster", "app"), ("kind", kind)],
        );
    }
    at_zero(
        &text,
        "levee_retry_budget_exhausted_total",
        &[("cluster", "app")],
    );
    for (from, to) in [
        ("healthy", "unhealthy"),
        ("unhealthy", "healthy"),
        ("healthy", "draining"),
    ] {
        at_zero(
            &text,
            "levee_endpoint_transitions_total",
            &[
                ("cluster", "app"),
                ("endpoint", &ep),
                ("from", from),
                ("to", to),
            ],
        );
    }
    for endpoint in ["", ep.as_str()] {
        at_zero(
            &text,
            "levee_breaker_transitions_total",
            &[
                ("cluster", "app"),
                ("endpoint", endpoint),
                ("from", "closed"),
                ("to", "open"),
            ],
        );
    }
    at_zero(
        &text,
        "levee_outlier_ejections_total",
        &[("cluster", "app"), ("endpoint", &ep)],
    );
    // A cluster added by a reload: its counters at 0 as soon as it is in.
    levee.write_config(&config(true).admin_at(admin).build());
    assert_eq!(levee.reload_via_admin(), 200);
    let text = levee.metrics_text();
    at_zero(
        &text,
        "levee_upstream_retries_total",
        &[("cluster", "more"), ("kind", "connect_failure")],
    );
    assert_eq!(
        levee.metric("levee_config_reloads_total", &[("result", "applied")]),
        Some(1.0)
    );
}

/// Item 5b: SIGUSR1 reopens the access log, as logrotate's `postrotate`
/// expects: lines before it stay in the moved file, lines after go to a new
/// file at the configured path.
#[test]
fn sigusr1_reopens_the_access_log_after_logrotate() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let config = ConfigBuilder::simple(listen, &[b.addr()])
        .set(
            "access_log",
            &format!("path = {:?}", log_path.display().to_string()),
        )
        .build();
    let mut levee = Levee::start(&config);
    assert_eq!(http_get(listen, "/before").expect("request").status, 200);
    assert!(wait_until(T, || read_lines(&log_path).len() == 1));
    std::fs::rename(&log_path, &rotated).expect("rotate");
    assert!(levee.signal(libc::SIGUSR1));
    assert!(
        wait_until(T, || levee.stderr_text().contains("access log reopened")),
        "{}",
        levee.logs()
    );
    assert_eq!(http_get(listen, "/after").expect("request").status, 200);
    assert!(
        wait_until(T, || read_lines(&log_path).len() == 1),
        "a new file at the configured path\n{}",
        levee.logs()
    );
    assert_eq!(read_lines(&log_path)[0]["path"], "/after");
    let old = read_lines(&rotated);
    assert_eq!(old.len(), 1);
    assert_eq!(old[0]["path"], "/before");
    assert!(levee.is_running());
}

/// Item 5b: `server.pid_file` holds the pid while Levee runs and is removed
/// on a clean exit.
#[test]
fn pid_file_is_written_and_removed_on_a_clean_exit() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_path = dir.path().join("levee.pid");
    let config = ConfigBuilder::simple(listen, &[b.addr()])
        .set(
            "server",
            &format!("pid_file = {:?}", pid_path.display().to_string()),
        )
        .set("access_log", "enabled = false")
        .build();
    let mut levee = Levee::start(&config);
    assert_eq!(
        std::fs::read_to_string(&pid_path).expect("pid file"),
        format!("{}\n", levee.pid())
    );
    assert!(levee.sigterm());
    let exit = levee.wait_exit(T).expect("exits");
    assert!(exit.success(), "{exit:?}");
    assert!(
        !pid_path.exists(),
        "the pid file is removed on a clean exit"
    );
    // A pid file that cannot be written: Levee refuses to start.
    let bad = ConfigBuilder::simple(free_addr(), &[b.addr()])
        .set("server", "pid_file = \"/nonexistent-dir/levee.pid\"")
        .build();
    let mut levee = Levee::spawn(&bad);
    let exit = levee.wait_exit(T).expect("exits");
    assert_eq!(exit.code(), Some(1));
    assert!(
        levee
            .stderr_text()
            .contains("cannot write the pid file /nonexistent-dir/levee.pid"),
        "{}",
        levee.stderr_text()
    );
}

/// An RFC 3339 UTC timestamp as Levee writes it: `2026-11-22T05:26:11.123Z`.
fn is_rfc3339(v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(|t| {
        let b = t.as_bytes();
        t.len() == 24 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && t.ends_with('Z')
    })
}

/// Item 5b: `/status` shows when Levee started, its uptime, the config
/// file, and the last reload (time, trigger, result) in RFC 3339.
#[test]
fn status_shows_uptime_config_path_and_the_last_reload() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::simple(listen, &[b.addr()]).set("access_log", "enabled = false");
    let good = cfg.build();
    let mut levee = Levee::start(&good);
    let s = levee.status_json();
    assert!(is_rfc3339(&s["started"]), "{s}");
    assert!(s["uptime_seconds"].as_u64().is_some(), "{s}");
    let path = levee.config_path().display().to_string();
    assert_eq!(s["config_path"].as_str(), Some(path.as_str()));
    assert!(s["last_reload"].is_null(), "{s}");

    assert_eq!(levee.reload_via_admin(), 200);
    let r = &levee.status_json()["last_reload"];
    assert!(is_rfc3339(&r["time"]), "{r}");
    assert_eq!(r["trigger"], "admin");
    assert_eq!(r["result"], "applied");
    assert_eq!(r["summary"], "1 listeners, 1 routes, 1 clusters");

    levee.write_config("");
    assert!(levee.sighup());
    assert!(
        wait_until(T, || levee.status_json()["last_reload"]["result"]
            == "refused"),
        "{}",
        levee.logs()
    );
    let r = &levee.status_json()["last_reload"];
    assert_eq!(r["trigger"], "SIGHUP");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("{path}:1:1: listeners: no listener"))),
        "{r}"
    );
    // The service level's last change: readable too.
    let put = levee
        .admin_request("PUT", "/degradation", b"minimal")
        .expect("PUT /degradation");
    assert_eq!(put.status, 200);
    let change = &levee.status_json()["degradation"]["last_change"];
    assert!(is_rfc3339(&change["time"]), "{change}");
    std::thread::sleep(Duration::from_millis(1100));
    assert!(levee.status_json()["uptime_seconds"].as_u64() >= Some(1));
}

/// Item 5b: the admin API's 404 lists every endpoint, and each listed GET
/// endpoint answers.
#[test]
fn admin_404_lists_every_endpoint() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&ConfigBuilder::simple(listen, &[b.addr()]).build());
    let admin = levee.admin_addr();
    let r = http_get(admin, "/nope").expect("admin");
    assert_eq!(r.status, 404);
    let body = r.json().expect("JSON");
    let listed: Vec<&str> = body["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        listed,
        [
            "GET /healthz",
            "GET /dashboard",
            "GET /dashboard/app.js",
            "GET /dashboard/app.css",
            "GET /openapi.json",
            "GET /metrics",
            "GET /status",
            "GET /availability",
            "GET /slo",
            "GET /stats",
            "GET /events",
            "GET /events/stream",
            "POST /reload",
            "GET /degradation",
            "PUT /degradation",
            "POST /clusters/{cluster}/endpoints/{ip:port}/drain",
            "POST /clusters/{cluster}/endpoints/{ip:port}/undrain",
            "GET /faults",
            "POST /faults",
            "DELETE /faults/{name}",
            "GET /chaos/requests",
            "DELETE /chaos/requests",
        ]
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("PUT /degradation")),
        "{body}"
    );
    // The event stream never ends: it is tested in tests/slo.rs.
    for e in listed
        .iter()
        .filter_map(|e| e.strip_prefix("GET "))
        .filter(|e| *e != "/events/stream")
    {
        assert_eq!(http_get(admin, e).expect("admin").status, 200, "GET {e}");
    }
    let drain = format!("/clusters/app/endpoints/{}/drain", b.addr());
    let r = http_request(admin, "POST", &drain, &[], b"", T).expect("drain");
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Item 5c: `levee demo` with a port already taken says which flag chooses
/// another (and suggests a free one), for each of its three kinds of port.
#[test]
fn demo_names_the_flag_for_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr");
    let run = |listen: String, admin: String, backend_port: String| {
        let out = Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(["demo", "--listen", &listen, "--admin", &admin])
            .args(["--backend-port", &backend_port])
            .stdin(Stdio::null())
            .output()
            .expect("run levee demo");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let free = || free_addr().to_string();
    let ports = three_free_ports().to_string();
    let (code, stderr) = run(busy.to_string(), free(), ports.clone());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("levee demo: {busy} is not available"))
            && stderr.contains("choose another address with --listen, e.g. --listen 127.0.0.1:"),
        "{stderr}"
    );
    let (code, stderr) = run(free(), busy.to_string(), ports);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("choose another address with --admin, e.g. --admin 127.0.0.1:"),
        "{stderr}"
    );
    // A busy port as the second of the three backends.
    let first = three_free_ports();
    let second = std::net::TcpListener::bind(("127.0.0.1", first + 1)).expect("bind");
    let (code, stderr) = run(free(), free(), first.to_string());
    drop(second);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("and 127.0.0.1:{} is not available", first + 1))
            && stderr.contains("choose other ports with --backend-port, e.g. --backend-port "),
        "{stderr}"
    );
    drop(taken);
}
