//! Fault injection and chaos experiments end to end, over real sockets:
//! faults posted to the admin API act on real requests (statuses, which
//! backend got what, timings, counters) and remove themselves after their
//! ttl; `levee chaos run` drives experiments against a running Levee, passes
//! a latency hypothesis with a latency-aware cluster and fails it with
//! round robin, and aborts (removing its fault) within 2 s when its
//! error-rate bound breaks.
//!
//! One Levee serves every test, each on its own route and cluster over the
//! same three backends, so the tests run side by side.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_levee");

struct World {
    levee: Levee,
    listen: SocketAddr,
    backends: [Backend; 3],
    /// The only endpoint of route `api`'s cluster, so that what it got is
    /// known whatever the other tests do.
    solo: Backend,
    /// The latency-aware cluster's own three: live endpoint state (the
    /// latency estimate) is per address, and the round-robin experiment
    /// running beside it slows the shared ones.
    aware: [Backend; 3],
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let backends = [Backend::start("b1"), Backend::start("b2"), Backend::start("b3")];
        let all: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
        let solo = Backend::start("solo");
        let aware_backends = [Backend::start("a1"), Backend::start("a2"), Backend::start("a3")];
        let aware_addrs: Vec<SocketAddr> = aware_backends.iter().map(Backend::addr).collect();
        let listen = free_addr();
        let plain = ["outlier_detection = { enabled = false }"];
        // Retries on 503 and resets, so that an injected failure on one
        // endpoint is retried on another like a real one.
        let retrying = [
            "retry = { max_attempts = 2, retry_on = [\"connect_failure\", \"reset\", \"gateway_error\"], backoff_base = \"1ms\", backoff_max = \"2ms\" }",
            "outlier_detection = { enabled = false }",
        ];
        // Latency-aware: peak EWMA, a per-try timeout retried elsewhere,
        // outlier detection (timeouts are failures).
        let aware = [
            "balance = \"peak_ewma\"",
            "retry = { max_attempts = 2, retry_on = [\"connect_failure\", \"timeout\"], per_try_timeout = \"150ms\", backoff_base = \"1ms\", backoff_max = \"2ms\", budget = { ratio = 1.0 } }",
            "outlier_detection = { consecutive_failures = 2, base_ejection = \"30s\" }",
        ];
        let path = |p: &str| format!("path_prefix = \"/{p}\"");
        // The shaping routes reach the backend's own paths (`/download`).
        let strip = |p: &str| format!("rewrite = {{ strip_prefix = \"/{p}\" }}");
        // Slow headers on one endpoint count against the per-try timeout
        // and are retried on the other, as a real slow head would be.
        let timing_out = [
            "retry = { max_attempts = 2, retry_on = [\"timeout\"], per_try_timeout = \"300ms\", backoff_base = \"1ms\", backoff_max = \"2ms\", budget = { ratio = 1.0 } }",
            "outlier_detection = { enabled = false }",
        ];
        let slo = "slo = { target = 99.9, window_days = 30 }";
        let config = ConfigBuilder::new()
            .set("chaos", "enabled = true")
            .listener("main", listen)
            .cluster_with("app", &[solo.addr()], &plain)
            .cluster_with("retrying", &all[..2], &retrying)
            .cluster_with("trigger", &all[..1], &plain)
            .cluster_with("rr", &all, &plain)
            .cluster_with("aware", &aware_addrs, &aware)
            .cluster_with("errs", &all, &plain)
            .route_with("api", "app", &[&path("api")])
            .route_with("retrying", "retrying", &[&path("retrying")])
            .route_with("trigger", "trigger", &[&path("trigger")])
            .route_with("rr", "rr", &[&path("rr")])
            .route_with("aware", "aware", &[&path("aware")])
            .route_with("errs", "errs", &[&path("errs")])
            .cluster_with("trunc", &all[..1], &plain)
            .cluster_with("hdr", &all[..2], &timing_out)
            .cluster_with("shape", &all[..1], &plain)
            .route_with("trunc", "trunc", &[&path("trunc"), &strip("trunc")])
            .route_with("hdr", "hdr", &[&path("hdr"), &strip("hdr")])
            .route_with("bw", "shape", &[&path("bw"), &strip("bw")])
            .route_with("rst", "shape", &[&path("rst")])
            .route_with("ramp", "shape", &[&path("ramp")])
            .route_with("budget", "shape", &[&path("budget"), slo])
            .build();
        World {
            levee: Levee::start(&config),
            listen,
            backends,
            solo,
            aware: aware_backends,
        }
    })
}

fn post_faults(w: &World, toml: &str) -> HttpResponse {
    w.levee
        .admin_request("POST", "/faults", toml.as_bytes())
        .unwrap_or_else(|e| panic!("POST /faults: {e}"))
}

fn faults(w: &World) -> Vec<serde_json::Value> {
    let r = w.levee.admin_get("/faults").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["faults"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn named<'a>(list: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    list.iter().find(|f| f["name"] == name)
}

fn get(w: &World, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(w.listen, "GET", path, headers, b"", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[test]
fn a_route_fault_aborts_and_delays_then_removes_itself() {
    let w = world();
    let r = post_faults(
        w,
        "[[faults]]\nname = \"api-abort\"\nroute = \"api\"\npercent = 100\nabort = 418\ndelay = \"200ms\"\nttl = \"2s\"\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = faults(w);
    let f = named(&listed, "api-abort").expect("listed");
    assert_eq!(f["target"], "route api");
    let left = f["ttl_remaining_seconds"].as_f64().unwrap();
    assert!(left > 0.5 && left <= 2.0, "{left}");

    let before = w.solo.requests();
    let t = Instant::now();
    let r = get(w, "/api/x", &[]);
    let took = t.elapsed();
    assert_eq!(r.status, 418, "{}", r.text());
    assert!(r.text().contains("fault_injected"), "{}", r.text());
    assert!(took >= Duration::from_millis(190), "{took:?}");
    // Nothing was forwarded: the route's fault acts before any try.
    assert_eq!(w.solo.requests(), before);
    let hits = w.levee.metric(
        "levee_fault_injections_total",
        &[("fault", "api-abort"), ("effect", "abort")],
    );
    assert!(hits.is_some_and(|h| h >= 1.0), "{hits:?}");

    // The ttl passes: the fault is gone from the list and from the path.
    assert!(
        wait_until(Duration::from_secs(5), || named(&faults(w), "api-abort")
            .is_none()),
        "the fault did not remove itself"
    );
    let r = get(w, "/api/x", &[]);
    assert_eq!((r.status, r.header("x-backend")), (200, Some("solo")));
    assert_eq!(w.solo.requests(), before + 1);
    // The sweep counts its event within a fraction of a second.
    let expired = || {
        w.levee.metric(
            "levee_fault_events_total",
            &[("fault", "api-abort"), ("event", "expired")],
        ) == Some(1.0)
    };
    assert!(wait_until(Duration::from_secs(2), expired));
    let started = w.levee.metric(
        "levee_fault_events_total",
        &[("fault", "api-abort"), ("event", "started")],
    );
    assert_eq!(started, Some(1.0));
}

#[test]
fn a_try_fault_is_retried_and_counted_like_a_real_failure() {
    let w = world();
    let b1 = &w.backends[0];
    let toml = format!(
        "[[faults]]\nname = \"b1-503\"\ncluster = \"retrying\"\nendpoint = \"{}\"\npercent = 100\nabort = 503\nttl = \"30s\"\n",
        b1.addr()
    );
    assert_eq!(post_faults(w, &toml).status, 200);
    let retries = |w: &World| {
        w.levee
            .metric("levee_upstream_retries_total", &[("cluster", "retrying")])
            .unwrap_or(0.0)
    };
    let retried_before = retries(w);
    // Every answer comes from b2: a try to b1 fails with the injected 503
    // and is retried on b2, as a real 503 would be.
    for _ in 0..20 {
        let r = get(w, "/retrying/x", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-backend"), Some("b2"));
    }
    let hits = named(&faults(w), "b1-503").unwrap()["injections"]
        .as_u64()
        .unwrap();
    assert!(
        hits >= 5,
        "round robin sends about half the first tries to b1: {hits}"
    );
    assert!(
        retries(w) - retried_before >= hits as f64,
        "every injected 503 was retried"
    );

    // A reset instead: same story, counted as a reset.
    let toml = toml.replace("abort = 503", "reset = true");
    assert_eq!(post_faults(w, &toml).status, 200);
    for _ in 0..10 {
        let r = get(w, "/retrying/x", &[]);
        assert_eq!((r.status, r.header("x-backend")), (200, Some("b2")));
    }
    let resets = w.levee.metric(
        "levee_fault_injections_total",
        &[("fault", "b1-503"), ("effect", "reset")],
    );
    assert!(resets.is_some_and(|n| n >= 2.0), "{resets:?}");
    let r = w
        .levee
        .admin_request("DELETE", "/faults/b1-503", b"")
        .unwrap();
    assert_eq!(r.status, 200);
    let r = w
        .levee
        .admin_request("DELETE", "/faults/b1-503", b"")
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no fault named"), "{}", r.text());
}

#[test]
fn the_trigger_header_counts_only_from_trusted_sources() {
    let w = world();
    let fault = |name: &str, trusted: &str| {
        format!(
            "[[faults]]\nname = \"{name}\"\nroute = \"trigger\"\npercent = 0\nabort = 503\nheader = \"x-levee-fault\"\ntrusted_sources = [\"{trusted}\"]\nttl = \"30s\"\n"
        )
    };
    assert_eq!(post_faults(w, &fault("trig", "127.0.0.0/8")).status, 200);
    assert_eq!(
        get(w, "/trigger/x", &[]).status,
        200,
        "percent 0: no hit without the header"
    );
    assert_eq!(get(w, "/trigger/x", &[("x-levee-fault", "1")]).status, 503);
    // From a network that is not trusted, the header does nothing.
    assert_eq!(post_faults(w, &fault("trig", "10.0.0.0/8")).status, 200);
    assert_eq!(get(w, "/trigger/x", &[("x-levee-fault", "1")]).status, 200);
    let replaced = w.levee.metric(
        "levee_fault_events_total",
        &[("fault", "trig"), ("event", "replaced")],
    );
    assert_eq!(replaced, Some(1.0));
    assert_eq!(
        w.levee
            .admin_request("DELETE", "/faults/trig", b"")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn the_admin_api_refuses_bad_faults_clearly() {
    let w = world();
    let r = post_faults(
        w,
        "[[faults]]\nname = \"x\"\nroute = \"nope\"\npercent = 5\nabort = 503\nttl = \"1m\"\n",
    );
    assert_eq!(r.status, 400);
    let msg = r.json().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.starts_with("POST /faults:3:9: faults[0].route: no route named \"nope\"; routes: "),
        "{msg}"
    );
    let r = post_faults(
        w,
        "[[faults]]\nname = \"x\"\nroute = \"api\"\npercent = 150\nabort = 503\nttl = \"1m\"\n",
    );
    assert_eq!(r.status, 400);
    let msg = r.json().unwrap()["message"].as_str().unwrap().to_owned();
    assert_eq!(
        msg,
        "POST /faults:4:11: faults[0].percent: 150 is not a percentage; use 0 to 100"
    );
    let r = post_faults(
        w,
        "[[faults]]\nname = \"x\"\nroute = \"api\"\npercent = 5\nabort = 503\n",
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("missing field `ttl`"), "{}", r.text());
    assert!(
        faults(w).iter().all(|f| f["name"] != "x"),
        "nothing refused was started"
    );

    // Faults are off unless the configuration says so.
    let listen = free_addr();
    let plain = ConfigBuilder::simple(listen, &[w.backends[0].addr()]).build();
    let off = Levee::start(&plain);
    let r = off
        .admin_request(
            "POST",
            "/faults",
            b"[[faults]]\nname = \"x\"\nroute = \"all\"\npercent = 5\nabort = 503\nttl = \"1m\"\n",
        )
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("[chaos]"), "{}", r.text());
    let with_fault = format!(
        "{plain}\n[[faults]]\nname = \"x\"\nroute = \"all\"\npercent = 5\nabort = 503\nttl = \"1m\"\n"
    );
    let (code, _, err) = Levee::check(&with_fault);
    assert_eq!(code, 1);
    assert!(
        err.contains("faults[0].name: fault injection is off"),
        "{err}"
    );
}

/// Writes an experiment file and runs `levee chaos run` on it.
fn run_experiment(w: &World, name: &str, body: &str) -> (i32, String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.toml"));
    std::fs::write(&file, body).unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(BIN)
        .args(["chaos", "run"])
        .arg(&file)
        .args(["--admin", &format!("http://{}", w.levee.admin_addr())])
        .arg("--report")
        .arg(&report)
        .env("LEVEE_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = std::fs::read_to_string(&report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| panic!("no report; stdout:\n{stdout}\nstderr:\n{stderr}"));
    (
        out.status.code().unwrap_or(-1),
        format!("{stdout}\n{stderr}"),
        json,
    )
}

/// "One of three endpoints gets +500 ms", shortened, on route `route`.
fn slow_endpoint_experiment(w: &World, route: &str, slow: SocketAddr) -> String {
    format!(
        r#"
name = "one-slow-endpoint-{route}"
baseline = "2s"
duration = "4s"
recovery = "2s"
check_every = "250ms"

[hypothesis]
route = "{route}"
max_p99 = "300ms"
window = "2s"
min_requests = 20

[load]
url = "http://{listen}/{route}/x"
rate = 40

[[faults]]
name = "slow-b3-{route}"
cluster = "{route}"
endpoint = "{b3}"
percent = 100
delay = "500ms"
"#,
        listen = w.listen,
        b3 = slow
    )
}

#[test]
fn a_latency_aware_cluster_passes_the_slow_endpoint_experiment() {
    let w = world();
    // The instance that turns sick is the fastest one: the balancer sends
    // it most of the traffic when the fault begins (a peak-EWMA balancer
    // never picks the costliest of three, so a sick instance that was
    // already the slowest would be hit by nothing).
    w.aware[0].set_delay(Duration::from_millis(20));
    w.aware[1].set_delay(Duration::from_millis(20));
    let (code, out, report) = run_experiment(
        w,
        "aware",
        &slow_endpoint_experiment(w, "aware", w.aware[2].addr()),
    );
    assert_eq!(report["verdict"]["result"], "passed", "{out}");
    assert_eq!(code, 0, "{out}");
    // The fault did act: requests to b3 were slowed, and the report says so.
    let hit = report["faults"][0]["injections"].as_u64().unwrap_or(0);
    assert!(hit >= 1, "{report}");
    assert!(out.contains("slow-b3-aware`: "), "{out}");
    assert!(out.contains("delay 500ms"), "{out}");
    let during = &report["slis"]["during"];
    assert!(during["requests"].as_u64().unwrap() >= 80, "{report}");
    assert!(during["p99"].as_f64().unwrap() <= 300.0, "{report}");
    assert!(
        named(&faults(w), "slow-b3-aware").is_none(),
        "the fault is out"
    );
}

#[test]
fn round_robin_fails_the_slow_endpoint_experiment() {
    let w = world();
    let (code, out, report) = run_experiment(
        w,
        "rr",
        &slow_endpoint_experiment(w, "rr", w.backends[2].addr()),
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(report["verdict"]["result"], "aborted", "{out}");
    let why = report["verdict"]["why"].as_str().unwrap();
    assert!(why.starts_with("p99 ") && why.contains("> 300 ms"), "{why}");
    assert!(out.contains("FAILED: aborted after"), "{out}");
    // A third of the requests went to the slow endpoint: the report names
    // the fault that slowed them.
    assert!(
        report["faults"][0]["injections"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        named(&faults(w), "slow-b3-rr").is_none(),
        "the fault is out"
    );
    // Which requests were slow and why: the slowest, with the fault that
    // hit them and the endpoint that answered.
    let slowest = report["slowest"].as_array().expect("slowest requests");
    let first = &slowest[0];
    assert!(first["total_ms"].as_f64().unwrap() >= 450.0, "{first}");
    assert_eq!(first["faults"][0], "slow-b3-rr", "{first}");
    assert_eq!(
        first["endpoint"],
        w.backends[2].addr().to_string(),
        "{first}"
    );
    assert_eq!(first["route"], "rr", "{first}");
    assert!(
        out.contains("The slowest requests since the faults went in"),
        "{out}"
    );
}

#[test]
fn an_experiment_breaking_its_error_bound_aborts_within_two_seconds() {
    let w = world();
    let body = format!(
        r#"
name = "errors"
baseline = "1s"
duration = "30s"
recovery = "1s"
check_every = "200ms"

[hypothesis]
route = "errs"
max_error_rate = 1
min_requests = 10

[load]
url = "http://{listen}/errs/x"
rate = 50

[[faults]]
name = "errs-500"
cluster = "errs"
percent = 50
abort = 500
"#,
        listen = w.listen
    );
    // Watch the fault from the outside while the experiment runs.
    let watcher = {
        let admin = w.levee.admin_addr();
        std::thread::spawn(move || {
            let present = || {
                http_get(admin, "/faults")
                    .ok()
                    .and_then(|r| r.json().ok())
                    .is_some_and(|v| {
                        v["faults"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|f| f["name"] == "errs-500"))
                    })
            };
            let appeared = wait_until(Duration::from_secs(20), present).then(Instant::now)?;
            wait_until(Duration::from_secs(20), || !present()).then(|| appeared.elapsed())
        })
    };
    let t = Instant::now();
    let (code, out, report) = run_experiment(w, "errors", &body);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "it did not run the 30 s: {out}"
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(report["verdict"]["result"], "aborted", "{out}");
    let after = report["verdict"]["after_seconds"].as_f64().unwrap();
    assert!(after < 2.0, "aborted after {after} s: {out}");
    assert!(
        report["verdict"]["why"]
            .as_str()
            .unwrap()
            .starts_with("error rate"),
        "{report}"
    );
    let lived = watcher
        .join()
        .unwrap()
        .expect("the fault was seen, then gone");
    assert!(lived < Duration::from_secs(2), "the fault lived {lived:?}");
    let removed = w.levee.metric(
        "levee_fault_events_total",
        &[("fault", "errs-500"), ("event", "removed")],
    );
    assert_eq!(removed, Some(1.0));
}

#[test]
fn a_reload_keeps_configured_faults_running_and_drops_removed_ones() {
    let w = world();
    let listen = free_addr();
    let base = ConfigBuilder::simple(listen, &[w.backends[0].addr()])
        .set("chaos", "enabled = true")
        .build();
    let fault = "\n[[faults]]\nname = \"cfg-slow\"\ncluster = \"app\"\npercent = 100\ndelay = \"100ms\"\nttl = \"1h\"\n";
    let levee = Levee::start(&format!("{base}{fault}"));
    let list = |l: &Levee| -> Vec<serde_json::Value> {
        l.admin_get("/faults").unwrap().json().unwrap()["faults"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let first = list(&levee);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["origin"], "config");
    let t = Instant::now();
    assert_eq!(get_from(listen, "/x").status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(95),
        "the configured delay acts"
    );
    let left = first[0]["ttl_remaining_seconds"].as_f64().unwrap();

    // The same file again: the fault runs on, its ttl not restarted.
    assert_eq!(levee.reload_via_admin(), 200);
    let again = list(&levee);
    assert_eq!(again.len(), 1);
    assert!(again[0]["ttl_remaining_seconds"].as_f64().unwrap() < left);
    let started = levee.metric(
        "levee_fault_events_total",
        &[("fault", "cfg-slow"), ("event", "started")],
    );
    assert_eq!(started, Some(1.0), "not started a second time");

    // Out of the file: stopped by the reload.
    levee.write_config(&base);
    assert_eq!(levee.reload_via_admin(), 200);
    assert!(list(&levee).is_empty());
    let injections = || {
        levee.metric(
            "levee_fault_injections_total",
            &[("fault", "cfg-slow"), ("effect", "delay")],
        )
    };
    let before = injections();
    assert_eq!(get_from(listen, "/x").status, 200);
    assert_eq!(injections(), before, "no fault acts any more");
}

fn get_from(listen: SocketAddr, path: &str) -> HttpResponse {
    http_request(listen, "GET", path, &[], b"", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[test]
fn an_experiment_without_a_steady_state_injects_nothing() {
    let w = world();
    // p99 ≤ 1 ms cannot hold over real sockets: refused after the baseline.
    let body = format!(
        r#"
name = "impossible"
baseline = "1s"
duration = "10s"

[hypothesis]
route = "trigger"
max_p99 = "1ms"
min_requests = 10

[load]
url = "http://{listen}/trigger/x"
rate = 40

[[faults]]
name = "never"
route = "trigger"
percent = 100
abort = 500
"#,
        listen = w.listen
    );
    let (code, out, report) = run_experiment(w, "impossible", &body);
    assert_eq!(code, 2, "{out}");
    assert_eq!(report["verdict"]["result"], "refused", "{out}");
    let why = report["verdict"]["why"].as_str().unwrap();
    assert!(
        why.starts_with("the steady state does not hold before any fault: p99"),
        "{why}"
    );
    let started = w
        .levee
        .metric("levee_fault_events_total", &[("fault", "never")]);
    assert_eq!(started, None, "nothing was injected");
}

/// Sends a GET on a raw connection and reads until the connection closes.
fn raw_get(w: &World, path: &str) -> (Vec<u8>, Duration) {
    let mut conn = RawConn::connect(w.listen).unwrap();
    let t = Instant::now();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert!(conn.read_until_close(Duration::from_secs(15)), "not closed");
    (conn.received().to_vec(), t.elapsed())
}

/// The head and body of a raw response.
fn split(raw: &[u8]) -> (String, &[u8]) {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(raw)));
    (
        String::from_utf8_lossy(&raw[..at]).to_lowercase(),
        &raw[at + 4..],
    )
}

#[test]
fn a_truncated_body_reaches_the_client_cut() {
    let w = world();
    let toml = "[[faults]]\nname = \"cut\"\ncluster = \"trunc\"\npercent = 100\ntruncate_after = \"1000B\"\nttl = \"30s\"\n";
    let r = post_faults(w, toml);
    assert_eq!(r.status, 200, "{}", r.text());
    // The head announces 100000 bytes; 1000 come, then the connection
    // closes: a cut response, as when an endpoint breaks off mid-body.
    let (raw, _) = raw_get(w, "/trunc/download?bytes=100000");
    let (head, body) = split(&raw);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 100000"), "{head}");
    assert_eq!(body.len(), 1000);
    // Chunked: no last chunk.
    let (raw, _) = raw_get(w, "/trunc/download?bytes=100000&chunked=1");
    let (head, body) = split(&raw);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!body.ends_with(b"0\r\n\r\n"), "the body was not cut");
    assert!(body.len() < 2000, "{}", body.len());
    // An HTTP client sees an error, not a response.
    let e = http_request(
        w.listen,
        "GET",
        "/trunc/download?bytes=100000",
        &[],
        b"",
        Duration::from_secs(10),
    );
    assert!(e.is_err(), "{:?}", e.map(|r| r.body.len()));
    let hits = w.levee.metric(
        "levee_fault_injections_total",
        &[("fault", "cut"), ("effect", "truncate")],
    );
    assert!(hits.is_some_and(|n| n >= 3.0), "{hits:?}");
    w.levee.admin_request("DELETE", "/faults/cut", b"").unwrap();
    let (raw, _) = raw_get(w, "/trunc/download?bytes=100000");
    assert_eq!(split(&raw).1.len(), 100_000, "whole again");
}

#[test]
fn a_bandwidth_limit_paces_the_body() {
    let w = world();
    let toml = "[[faults]]\nname = \"thin\"\nroute = \"bw\"\npercent = 100\nbandwidth = \"50KiB\"\nttl = \"30s\"\n";
    assert_eq!(post_faults(w, toml).status, 200);
    // 75 KiB at 50 KiB/s: 1.5 s, whole and intact.
    let (raw, took) = raw_get(w, "/bw/download?bytes=76800");
    let (head, body) = split(&raw);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body.len(), 76_800);
    let rate = 76_800.0 / took.as_secs_f64();
    assert!(
        took >= Duration::from_millis(1400) && took <= Duration::from_secs(8),
        "75 KiB took {took:?} ({rate:.0} B/s)"
    );
    w.levee
        .admin_request("DELETE", "/faults/thin", b"")
        .unwrap();
    let (_, took) = raw_get(w, "/bw/download?bytes=76800");
    assert!(
        took < Duration::from_millis(1000),
        "unlimited again: {took:?}"
    );
}

#[test]
fn slow_headers_delay_the_first_byte_and_count_against_the_try_timeout() {
    let w = world();
    // On a try: b1's head comes 1 s late, past the 300 ms per-try
    // timeout: the try times out and is retried on b2, like a real one.
    let toml = format!(
        "[[faults]]\nname = \"late-b1\"\ncluster = \"hdr\"\nendpoint = \"{}\"\npercent = 100\nslow_headers = \"1s\"\nttl = \"30s\"\n",
        w.backends[0].addr()
    );
    assert_eq!(post_faults(w, &toml).status, 200);
    for _ in 0..6 {
        let r = get(w, "/hdr/echo", &[]);
        assert_eq!((r.status, r.header("x-backend")), (200, Some("b2")));
    }
    let timeouts = w.levee.metric(
        "levee_upstream_retries_total",
        &[("cluster", "hdr"), ("kind", "timeout")],
    );
    assert!(timeouts.is_some_and(|n| n >= 1.0), "{timeouts:?}");
    w.levee
        .admin_request("DELETE", "/faults/late-b1", b"")
        .unwrap();

    // On the route: the time to first byte grows by the fault's 600 ms.
    let toml = "[[faults]]\nname = \"late-hdr\"\nroute = \"hdr\"\npercent = 100\nslow_headers = \"600ms\"\nttl = \"30s\"\n";
    assert_eq!(post_faults(w, toml).status, 200);
    let mut conn = RawConn::connect(w.listen).unwrap();
    let t = Instant::now();
    conn.write_all(b"GET /hdr/echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = conn.read_head_response(Duration::from_secs(10)).unwrap();
    let ttfb = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        ttfb >= Duration::from_millis(580) && ttfb < Duration::from_secs(5),
        "{ttfb:?}"
    );
    w.levee
        .admin_request("DELETE", "/faults/late-hdr", b"")
        .unwrap();
}

#[test]
fn a_route_reset_closes_the_connection_unanswered() {
    let w = world();
    let toml =
        "[[faults]]\nname = \"rst\"\nroute = \"rst\"\npercent = 100\nreset = true\nttl = \"30s\"\n";
    let r = post_faults(w, toml);
    assert_eq!(r.status, 200, "{}", r.text());
    let (raw, _) = raw_get(w, "/rst/x");
    assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
    assert!(get_from_result(w.listen, "/rst/x").is_err());
    let reset = w
        .levee
        .metric("levee_errors_total", &[("kind", "fault_reset")]);
    assert!(reset.is_some_and(|n| n >= 2.0), "{reset:?}");
    // The route's slowest requests say what happened to them.
    let list = w
        .levee
        .admin_get("/chaos/requests?route=rst")
        .unwrap()
        .json()
        .unwrap();
    let first = &list["routes"]["rst"]["requests"][0];
    assert_eq!(first["faults"][0], "rst", "{list}");
    assert_eq!(first["error"], "fault_reset", "{list}");
    assert_eq!(first["tries"], 0, "nothing was forwarded: {list}");
    w.levee.admin_request("DELETE", "/faults/rst", b"").unwrap();
    assert_eq!(get(w, "/rst/x", &[]).status, 200);
}

fn get_from_result(listen: SocketAddr, path: &str) -> Result<HttpResponse, String> {
    http_request(listen, "GET", path, &[], b"", Duration::from_secs(10))
}

#[test]
fn a_ramp_raises_the_blast_radius_in_steps_shown_in_the_report() {
    let w = world();
    let body = format!(
        r#"
name = "ramp"
baseline = "1s"
duration = "3s"
recovery = "1s"
check_every = "200ms"
ramp = [10, 50, 100]

[hypothesis]
route = "ramp"
max_p99 = "2s"
min_requests = 5

[load]
url = "http://{listen}/ramp/x"
rate = 40
start_rate = 10
ramp_up = "2s"
fail_url = "http://{listen}/nowhere"
fail_percent = 10

[[faults]]
name = "ramp-slow"
route = "ramp"
percent = 1
delay = "50ms"
"#,
        listen = w.listen
    );
    let (code, out, report) = run_experiment(w, "ramp", &body);
    assert_eq!(code, 0, "{out}");
    let steps = report["ramp"].as_array().expect("ramp steps");
    let percents: Vec<f64> = steps
        .iter()
        .map(|s| s["percent"].as_f64().unwrap())
        .collect();
    assert_eq!(percents, [10.0, 50.0, 100.0], "{report}");
    for s in steps {
        assert!(
            s["slis"]["requests"].as_u64().unwrap_or(0) >= 10,
            "{report}"
        );
    }
    // Each step was posted: the fault replaced twice.
    let replaced = w.levee.metric(
        "levee_fault_events_total",
        &[("fault", "ramp-slow"), ("event", "replaced")],
    );
    assert_eq!(replaced, Some(2.0));
    assert!(out.contains("| 3 | 100 % |"), "{out}");
    // The load ramped up, and a tenth of it went to the failing URL.
    let load = &report["load"];
    let per_second: Vec<u64> = load["sent_per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert!(
        per_second.len() >= 4 && per_second[0] < per_second[3],
        "{load}"
    );
    let sent = load["sent"].as_u64().unwrap() as f64;
    let not_found = load["by_status"]["404"].as_u64().unwrap_or(0) as f64;
    assert!(
        (0.05..=0.15).contains(&(not_found / sent)),
        "{not_found} of {sent} to the failing URL: {load}"
    );
    assert!(out.contains("blast radius raised to 50 %"), "{out}");
}

#[test]
fn an_error_budget_below_its_floor_refuses_the_experiment() {
    let w = world();
    // Spend the route's budget: 99.9 % allows 1 bad request in 1000.
    let toml = "[[faults]]\nname = \"spend\"\nroute = \"budget\"\npercent = 100\nabort = 503\nttl = \"30s\"\n";
    assert_eq!(post_faults(w, toml).status, 200);
    for _ in 0..5 {
        assert_eq!(get(w, "/budget/x", &[]).status, 503);
    }
    w.levee
        .admin_request("DELETE", "/faults/spend", b"")
        .unwrap();
    let body = r#"
name = "budget"
baseline = "1s"
duration = "5s"

[hypothesis]
route = "budget"
max_error_rate = 50
min_requests = 1
min_error_budget = 25

[[faults]]
name = "never-budget"
route = "budget"
percent = 10
delay = "10ms"
"#;
    let t = Instant::now();
    let (code, out, report) = run_experiment(w, "budget", body);
    assert_eq!(code, 2, "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "refused at once: {out}"
    );
    assert_eq!(report["verdict"]["result"], "refused", "{out}");
    let why = report["verdict"]["why"].as_str().unwrap();
    assert!(
        why.starts_with("the error budget of route \"budget\" is ")
            && why.ends_with("below the floor min_error_budget = 25 %"),
        "{why}"
    );
    let started = w
        .levee
        .metric("levee_fault_events_total", &[("fault", "never-budget")]);
    assert_eq!(started, None, "nothing was injected");
    // A route without an SLO cannot have a floor: refused, saying why.
    assert_eq!(get(w, "/ramp/x", &[]).status, 200, "the route has series");
    let (code, out, _) = run_experiment(
        w,
        "budget",
        &body.replace("route = \"budget\"\nmax", "route = \"ramp\"\nmax"),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("has no SLO"), "{out}");
}
