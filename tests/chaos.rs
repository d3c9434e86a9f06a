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

#[path = "support/grpc.rs"]
#[allow(dead_code)]
mod grpc_kit;
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
            .route_with("ma", "shape", &[&path("ma")])
            .route_with("mb", "shape", &[&path("mb")])
            .route_with("users", "shape", &[&path("users"), &strip("users")])
            .route_with("stall", "shape", &[&path("stall"), &strip("stall")])
            .route_with("jit", "shape", &[&path("jit")])
            .route_with("subset", "shape", &[&path("subset")])
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
    let (code, out, json, _) = run_experiment_html(w, name, body);
    (code, out, json)
}

/// Experiments that judge a p99 bound of a few hundred ms: the
/// latency-aware one holds it exclusively (a write lock), the others share
/// it (read locks), so that on a loaded 2-core machine another
/// experiment's load and Levee do not eat the margin it measures.
static EXPERIMENTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_slot() -> std::sync::RwLockReadGuard<'static, ()> {
    EXPERIMENTS.read().unwrap_or_else(|p| p.into_inner())
}

/// The same, with the HTML report too.
fn run_experiment_html(
    w: &World,
    name: &str,
    body: &str,
) -> (i32, String, serde_json::Value, String) {
    let _slot = shared_slot();
    run_experiment_unlocked(w, name, body)
}

/// Runs an experiment without taking a slot (the caller holds one).
fn run_experiment_unlocked(
    w: &World,
    name: &str,
    body: &str,
) -> (i32, String, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.toml"));
    std::fs::write(&file, body).unwrap();
    let report = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let out = Command::new(BIN)
        .args(["chaos", "run"])
        .arg(&file)
        .args(["--admin", &format!("http://{}", w.levee.admin_addr())])
        .arg("--report")
        .arg(&report)
        .arg("--html")
        .arg(&html)
        .env("LEVEE_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = std::fs::read_to_string(&report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| panic!("no report; stdout:\n{stdout}\nstderr:\n{stderr}"));
    let html = std::fs::read_to_string(&html).unwrap_or_default();
    (
        out.status.code().unwrap_or(-1),
        format!("{stdout}\n{stderr}"),
        json,
        html,
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
    let _alone = EXPERIMENTS.write().unwrap_or_else(|p| p.into_inner());
    let (code, out, report, _) = run_experiment_unlocked(
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
    let during = &report["routes"][0]["slis"]["during"];
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
    assert!(
        why.starts_with("route \"rr\": p99 ") && why.contains("> 300 ms"),
        "{why}"
    );
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
            .starts_with("route \"errs\": error rate"),
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
        why.starts_with("the steady state does not hold before any fault: route \"trigger\": p99"),
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
            s["slis"]["ramp"]["requests"].as_u64().unwrap_or(0) >= 10,
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

/// How long each of `n` requests to `path` took.
fn timings(w: &World, path: &str, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(get(w, path, &[]).status, 200);
            t.elapsed()
        })
        .collect()
}

#[test]
fn jitter_and_a_distribution_spread_the_added_latency() {
    let w = world();
    let ms = Duration::from_millis;
    let toml = "[[faults]]\nname = \"jit\"\nroute = \"jit\"\npercent = 100\ndelay = \"100ms\"\ndelay_jitter = \"200ms\"\nttl = \"30s\"\n";
    assert_eq!(post_faults(w, toml).status, 200);
    let took = timings(w, "/jit/x", 12);
    assert!(took.iter().all(|t| *t >= ms(100)), "{took:?}");
    let (min, max) = (took.iter().min().unwrap(), took.iter().max().unwrap());
    assert!(*max <= ms(100 + 200 + 700), "{took:?}");
    assert!(
        *max - *min >= ms(30),
        "uniform jitter spreads them: {took:?}"
    );
    // By percentiles: half under 10 ms, a tenth over 300 ms.
    let toml = "[[faults]]\nname = \"jit\"\nroute = \"jit\"\npercent = 100\ndelay_distribution = { p50 = \"10ms\", p90 = \"300ms\" }\nttl = \"30s\"\n";
    assert_eq!(post_faults(w, toml).status, 200);
    let took = timings(w, "/jit/x", 20);
    let fast = took.iter().filter(|t| **t < ms(100)).count();
    let slow = took.iter().filter(|t| **t >= ms(150)).count();
    assert!(fast >= 4 && slow >= 1, "{took:?}");
    assert!(took.iter().all(|t| *t <= ms(300 + 700)), "{took:?}");
    assert_eq!(
        w.levee
            .admin_request("DELETE", "/faults/jit", b"")
            .unwrap()
            .status,
        200
    );
}

/// The status of a GET of `path` sent from source address `from` (any
/// address of 127.0.0.0/8 is this machine's).
fn status_from(from: std::net::IpAddr, listen: SocketAddr, path: &str) -> u16 {
    use std::io::{Read, Write};
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    socket
        .connect_timeout(&listen.into(), Duration::from_secs(5))
        .unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text:?}"))
}

#[test]
fn a_client_subset_is_the_same_clients_on_every_request() {
    let w = world();
    let toml = "[[faults]]\nname = \"half-the-clients\"\nroute = \"subset\"\npercent = 100\nclients_percent = 50\nabort = 503\nttl = \"30s\"\n";
    assert_eq!(post_faults(w, toml).status, 200);
    // The subset, as documented: the xxh3 of the client IP's bytes,
    // seeded by the xxh3 of the fault's name, below half of the range.
    let seed = xxhash_rust::xxh3::xxh3_64(b"half-the-clients");
    let mut hit = 0;
    for last in 10..50u8 {
        let ip = std::net::Ipv4Addr::new(127, 0, 0, last);
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(&ip.octets(), seed);
        let want = if (h >> 11) < (1u64 << 52) { 503 } else { 200 };
        // Every request of a client in the subset is hit; of one outside, none.
        for _ in 0..3 {
            assert_eq!(status_from(ip.into(), w.listen, "/subset/x"), want, "{ip}");
        }
        hit += usize::from(want == 503);
    }
    assert!(
        (8..=32).contains(&hit),
        "{hit} of 40 clients in a 50 % subset"
    );
    assert_eq!(
        w.levee
            .admin_request("DELETE", "/faults/half-the-clients", b"")
            .unwrap()
            .status,
        200
    );
}

/// Two routes named by one experiment, with their own bounds; the load
/// reaches both (its failing share goes to the second).
fn two_route_experiment(w: &World, mb_max_error_rate: u32) -> String {
    format!(
        r#"
name = "two-routes"
baseline = "1s"
duration = "2s"
recovery = "1s"
check_every = "200ms"

[[hypothesis]]
route = "ma"
max_error_rate = 5
max_p99 = "2s"
window = "1s"
min_requests = 5

[[hypothesis]]
route = "mb"
max_error_rate = {mb_max_error_rate}
window = "1s"
min_requests = 5

[load]
url = "http://{listen}/ma/x"
rate = 40
fail_url = "http://{listen}/mb/x"
fail_percent = 50

[[faults]]
name = "mb-errors"
route = "mb"
percent = 30
abort = 503
"#,
        listen = w.listen
    )
}

#[test]
fn a_hypothesis_over_several_routes_judges_each_and_aborts_on_any() {
    let w = world();
    // mb may fail up to 90 %: the fault's 30 % holds (it would break ma's
    // 5 %); ma is untouched. (A bound near 30 % would be crossed by chance
    // in some 1-second window of ~10 requests.)
    let (code, out, report) = run_experiment(w, "two-routes", &two_route_experiment(w, 90));
    assert_eq!(report["verdict"]["result"], "passed", "{out}");
    assert_eq!(code, 0, "{out}");
    let routes = report["routes"].as_array().expect("routes");
    let names: Vec<&str> = routes
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ma", "mb"], "{report}");
    for r in routes {
        for phase in ["before", "during", "after"] {
            let slis = &r["slis"][phase];
            assert!(slis["requests"].as_u64().unwrap_or(0) >= 5, "{phase}: {r}");
        }
        assert!(!r["timeline"].as_array().unwrap().is_empty(), "{r}");
    }
    assert_eq!(routes[0]["hypothesis"]["max_error_rate"], 5.0);
    assert_eq!(routes[1]["hypothesis"]["max_error_rate"], 90.0);
    assert_eq!(routes[0]["slis"]["during"]["error_rate"], 0.0, "{report}");
    let mb = routes[1]["slis"]["during"]["error_rate"].as_f64().unwrap();
    assert!(
        (5.0..=70.0).contains(&mb),
        "mb failed {mb} % during: {report}"
    );
    assert_eq!(routes[1]["slis"]["before"]["error_rate"], 0.0, "{report}");
    // The summary has a row per route and phase.
    for row in [
        "| ma | before |",
        "| ma | during |",
        "| mb | during |",
        "| mb | after |",
    ] {
        assert!(out.contains(row), "{row}: {out}");
    }
    assert!(out.contains("- route `mb`: error rate ≤ 90 %"), "{out}");

    // mb's own bound at 10 %: the same fault breaks it (ma still holds)
    // and the experiment is aborted, naming mb.
    let (code, out, report, html) =
        run_experiment_html(w, "two-routes", &two_route_experiment(w, 10));
    assert_eq!(code, 1, "{out}");
    // The HTML page: both routes, each with its table and two plots.
    assert!(html.contains(r#"data-result="aborted""#), "{html}");
    for route in ["ma", "mb"] {
        assert!(
            html.contains(&format!(r#"<section data-route="{route}">"#)),
            "{html}"
        );
    }
    assert_eq!(html.matches("<svg").count(), 4, "{html}");
    assert_eq!(report["verdict"]["result"], "aborted", "{out}");
    let why = report["verdict"]["why"].as_str().unwrap();
    assert!(why.starts_with("route \"mb\": error rate"), "{why}");
    let ma_during = &report["routes"][0]["slis"]["during"];
    assert_eq!(ma_during["error_rate"], 0.0, "{report}");
    assert!(
        out.contains("| mb | during |") && out.contains("**no**: error rate"),
        "{out}"
    );
    assert!(named(&faults(w), "mb-errors").is_none(), "the fault is out");
}

/// The login-rush load: virtual users, each a request per think time.
fn users_experiment(w: &World, route: &str, fault: &str) -> String {
    format!(
        r#"
name = "rush-{route}"
baseline = "1s"
duration = "2s"
recovery = "1s"
check_every = "200ms"

[hypothesis]
route = "{route}"
max_p99 = "10s"
min_requests = 3

[load]
url = "http://{listen}/{route}/login"
users = 6
think_time = "300ms"
ramp_up = "600ms"
fail_url = "http://{listen}/{route}/status/401"
fail_percent = 20

[[faults]]
name = "rush-{route}"
route = "{route}"
{fault}
"#,
        listen = w.listen
    )
}

#[test]
fn virtual_users_honour_their_think_time_and_stalls_count_from_when_due() {
    let w = world();
    let t = Instant::now();
    let (code, out, report) = run_experiment(
        w,
        "users",
        &users_experiment(w, "users", "percent = 10\ndelay = \"10ms\""),
    );
    let took = t.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{out}");
    let load = &report["load"];
    let sent = load["sent"].as_u64().unwrap() as f64;
    // 6 users, one request each per 300 ms, over the run: at most what
    // their schedule allows, and not far below it (the users start over
    // 600 ms, and the run's end cuts the last ones).
    let most = 6.0 * (took / 0.3 + 1.0);
    assert!(
        sent <= most,
        "{sent} sent in {took:.1} s, at most {most}: {load}"
    );
    assert!(
        sent >= 0.6 * 6.0 * (took - 1.5) / 0.3,
        "{sent} sent in {took:.1} s: {load}"
    );
    // No second holds more than each user's ceil(1 s / 300 ms) = 4.
    let per_second: Vec<u64> = load["sent_per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert!(per_second.iter().all(|n| *n <= 24), "{per_second:?}");
    assert!(
        per_second.iter().skip(1).take(2).all(|n| *n >= 12),
        "{per_second:?}"
    );
    // A fifth failed, as logins with bad credentials would.
    assert!(out.contains("6 virtual users, think time 300ms"), "{out}");
    let refused = load["by_status"]["401"].as_u64().unwrap_or(0) as f64;
    assert!(
        (0.1..=0.3).contains(&(refused / sent)),
        "{refused} of {sent} refused: {load}"
    );

    // Every request stalled 900 ms: a user's next one is due 300 ms after
    // the last was due, so it goes late; its latency counts from when it
    // was due, well above the 900 ms any one exchange took.
    let (code, out, report) = run_experiment(
        w,
        "stall",
        &users_experiment(w, "stall", "percent = 100\ndelay = \"900ms\""),
    );
    assert_eq!(code, 0, "{out}");
    let load = &report["load"];
    let p99 = load["p99_ms"].as_f64().unwrap();
    let max = load["max_ms"].as_f64().unwrap();
    assert!(
        max >= 1500.0 && p99 >= 1300.0,
        "latency from when due: {load}"
    );
    let levee_p99 = report["routes"][0]["slis"]["during"]["p99"]
        .as_f64()
        .unwrap();
    assert!(
        levee_p99 < max,
        "Levee saw {levee_p99} ms per exchange: {load}"
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

/// Kills the child (a `levee demo`) when dropped, even on a failed assert.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The packaged first experiment, as a new user runs it against `levee
/// demo` (only the ports moved to free ones, the duration shortened): the
/// demo's round robin sends a third of the requests to the slowed backend,
/// so the p99 bound breaks, the fault is removed and the verdict is FAILED.
#[test]
fn the_packaged_demo_experiment_runs_against_levee_demo() {
    let _slot = shared_slot();
    let (listen, admin, first) = (free_addr(), free_addr(), three_free_ports());
    let mut demo = Command::new(BIN);
    demo.args([
        "demo",
        "--listen",
        &listen.to_string(),
        "--admin",
        &admin.to_string(),
    ])
    .args(["--backend-port", &first.to_string()])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let _demo = Killed(demo.spawn().expect("start levee demo"));
    assert!(
        wait_until(Duration::from_secs(20), || http_get(listen, "/hello")
            .is_ok_and(|r| r.status == 200)),
        "the demo answers on {listen}"
    );
    let packaged = include_str!("../examples/chaos/demo-slow-backend.toml");
    let text = packaged
        .replace("127.0.0.1:8080", &listen.to_string())
        .replace("127.0.0.1:9103", &format!("127.0.0.1:{}", first + 2))
        .replace("duration = \"10s\"", "duration = \"4s\"");
    assert_ne!(text, packaged);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo-slow-backend.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN)
        .args(["chaos", "run"])
        .arg(&file)
        .args(["--admin", &format!("http://{admin}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(stdout.contains("**Verdict: FAILED: aborted after"), "{all}");
    assert!(stdout.contains("route \"all\": p99"), "{all}");
    assert!(stdout.contains("`demo-slow-3`: "), "{all}");
    // The fault is gone from the demo.
    let r = http_get(admin, "/faults").expect("GET /faults");
    let v: serde_json::Value = r.json().expect("JSON");
    assert_eq!(v["faults"].as_array().map(Vec::len), Some(0), "{v}");
}

/// A gRPC call to `listen` over a bare HTTP/2 connection: the response
/// head, and how many DATA bytes and trailer fields followed it.
async fn raw_grpc_call(
    listen: SocketAddr,
    headers: &[(&str, &str)],
) -> (http::response::Parts, usize, usize) {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(listen)
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("http://{listen}/levee.test.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    // One empty message: the 5-byte gRPC frame prefix, no payload.
    let body = http_body_util::Full::new(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]));
    let resp = send
        .send_request(req.body(body).expect("request"))
        .await
        .expect("response");
    let (head, mut body) = resp.into_parts();
    let (mut data, mut trailers) = (0, 0);
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Some(d) = frame.data_ref() {
            data += d.len();
        }
        if let Some(t) = frame.trailers_ref() {
            trailers += t.len();
        }
    }
    (head, data, trailers)
}

fn grpc_request(message: &str, chaos: bool) -> tonic::Request<grpc_kit::EchoRequest> {
    let mut req = tonic::Request::new(grpc_kit::EchoRequest::new(message));
    if chaos {
        req.metadata_mut()
            .insert("x-chaos", tonic::metadata::MetadataValue::from_static("1"));
    }
    req
}

/// Whether `/status` shows endpoint `addr` of `cluster` ejected.
fn ejected(levee: &Levee, cluster: &str, addr: SocketAddr) -> bool {
    let status: serde_json::Value = levee.admin_get("/status").unwrap().json().unwrap();
    status["clusters"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == cluster))
        .and_then(|c| c["endpoints"].as_array())
        .and_then(|l| l.iter().find(|e| e["address"] == addr.to_string()))
        .is_some_and(|e| e["ejected"] == true)
}

/// gRPC aborts: a route's (from the configuration, triggered by a header
/// from a trusted source) answered by Levee as a gRPC server would, HTTP
/// 200 trailers-only; a cluster's and one endpoint's (posted with a ttl)
/// judged on each try as the endpoint's own `grpc-status`: retried by
/// `retry_on = ["grpc:unavailable"]`, counted, and ejecting the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_abort_is_a_real_grpc_answer_and_judged_like_one_per_try() {
    use grpc_kit::{EchoClient, GrpcBackend};
    use tonic::Code;
    let g: Vec<GrpcBackend> = (1..=5)
        .map(|i| GrpcBackend::start(&format!("g{i}")))
        .collect();
    let (route_l, cluster_l, endpoint_l) = (free_addr(), free_addr(), free_addr());
    let h2c = ["http2 = { enabled = true }"];
    let judged = [
        "protocol = \"h2c\"",
        "balance = \"round_robin\"",
        "retry = { max_attempts = 2, retry_on = [\"grpc:unavailable\"], backoff_base = \"1ms\", backoff_max = \"2ms\", budget = { ratio = 1.0 } }",
        "outlier_detection = { consecutive_failures = 3, base_ejection = \"60s\", max_ejection_percent = 50 }",
    ];
    let on = |l: &str| format!("listeners = [{l:?}]");
    let config = ConfigBuilder::new()
        .set("chaos", "enabled = true")
        .listener_with("gr", route_l, &h2c)
        .listener_with("gc", cluster_l, &h2c)
        .listener_with("ge", endpoint_l, &h2c)
        .cluster_with("g-route", &[g[0].addr()], &["protocol = \"h2c\""])
        .cluster_with("g-cluster", &[g[1].addr(), g[2].addr()], &judged)
        .cluster_with("g-endpoint", &[g[3].addr(), g[4].addr()], &judged)
        .route_with("g-route", "g-route", &[&on("gr")])
        .route_with("g-cluster", "g-cluster", &[&on("gc")])
        .route_with("g-endpoint", "g-endpoint", &[&on("ge")])
        .raw(
            "[[faults]]\nname = \"g-exhausted\"\nroute = \"g-route\"\npercent = 0\nheader = \"x-chaos\"\ntrusted_sources = [\"127.0.0.0/8\", \"::1\"]\ngrpc_abort = \"resource_exhausted\"\nttl = \"10m\"\n",
        )
        .build();
    let levee = Levee::start(&config);

    // The route's fault: only calls carrying the trigger header.
    let mut client = EchoClient::connect(route_l).await;
    let reply = client
        .unary(grpc_request("plain", false))
        .await
        .expect("a call without the header passes");
    assert_eq!(reply.into_inner().server, "g1");
    let status = client
        .unary(grpc_request("hit", true))
        .await
        .expect_err("aborted");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("fault injected"), "{status:?}");
    assert_eq!(
        g[0].calls(),
        1,
        "the aborted call never reached the endpoint"
    );
    // On the wire: HTTP 200, application/grpc, the status in the head and
    // nothing after it (trailers-only).
    let (head, data, trailers) = raw_grpc_call(route_l, &[("x-chaos", "1")]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-type"], "application/grpc");
    assert_eq!(head.headers["grpc-status"], "8");
    assert!(
        head.headers.contains_key("grpc-message"),
        "{:?}",
        head.headers
    );
    assert_eq!((data, trailers), (0, 0), "trailers-only");
    let counted = levee.metric(
        "levee_grpc_calls_total",
        &[("route", "g-route"), ("code", "resource_exhausted")],
    );
    assert_eq!(counted, Some(2.0));
    let hits = levee.metric(
        "levee_fault_injections_total",
        &[("fault", "g-exhausted"), ("effect", "grpc_abort")],
    );
    assert_eq!(hits, Some(2.0));

    // The whole cluster answers UNAVAILABLE on every try: retried once
    // (retry_on grpc:unavailable), then the client gets UNAVAILABLE.
    let posted = levee
        .admin_request(
            "POST",
            "/faults",
            b"[[faults]]\nname = \"gc-unavailable\"\ncluster = \"g-cluster\"\npercent = 100\ngrpc_abort = \"unavailable\"\nttl = \"60s\"\n",
        )
        .unwrap();
    assert_eq!(posted.status, 200, "{}", posted.text());
    let listed: serde_json::Value = levee.admin_get("/faults").unwrap().json().unwrap();
    let f = listed["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "gc-unavailable")
        .cloned()
        .expect("listed");
    assert_eq!(f["effects"][0], "grpc abort, grpc-status 14", "{f}");
    assert!(
        f["ttl_remaining_seconds"]
            .as_f64()
            .is_some_and(|t| t > 50.0 && t <= 60.0),
        "{f}"
    );
    let retries = |cluster: &str| {
        levee
            .metric("levee_upstream_retries_total", &[("cluster", cluster)])
            .unwrap_or(0.0)
    };
    let mut client = EchoClient::connect(cluster_l).await;
    let status = client
        .unary(grpc_request("x", false))
        .await
        .expect_err("unavailable");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        retries("g-cluster"),
        1.0,
        "the injected UNAVAILABLE was retried once"
    );
    let hits = levee.metric(
        "levee_fault_injections_total",
        &[("fault", "gc-unavailable"), ("effect", "grpc_abort")],
    );
    assert_eq!(hits, Some(2.0), "one per try");
    assert_eq!(g[1].calls() + g[2].calls(), 0);
    assert_eq!(
        levee
            .admin_request("DELETE", "/faults/gc-unavailable", b"")
            .unwrap()
            .status,
        200
    );

    // One sick endpoint: each try to it fails UNAVAILABLE and is retried
    // on the other; outlier detection ejects it after 3 in a row.
    let body = format!(
        "[[faults]]\nname = \"g4-unavailable\"\ncluster = \"g-endpoint\"\nendpoint = \"{}\"\npercent = 100\ngrpc_abort = \"unavailable\"\nttl = \"60s\"\n",
        g[3].addr()
    );
    assert_eq!(
        levee
            .admin_request("POST", "/faults", body.as_bytes())
            .unwrap()
            .status,
        200
    );
    let mut client = EchoClient::connect(endpoint_l).await;
    for i in 0..20 {
        let reply = client
            .unary(grpc_request(&format!("m{i}"), false))
            .await
            .expect("retried on g5");
        assert_eq!(reply.into_inner().server, "g5");
    }
    assert_eq!(g[3].calls(), 0, "an aborted try never reaches the endpoint");
    assert_eq!(g[4].calls(), 20);
    let injected = levee
        .metric(
            "levee_fault_injections_total",
            &[("fault", "g4-unavailable"), ("effect", "grpc_abort")],
        )
        .unwrap_or(0.0);
    assert!(
        (3.0..=6.0).contains(&injected),
        "ejected after 3 failures: {injected} injections"
    );
    assert_eq!(
        retries("g-endpoint"),
        injected,
        "every injected failure was retried"
    );
    assert!(
        ejected(&levee, "g-endpoint", g[3].addr()),
        "g4 ejected by outlier detection"
    );
    assert!(!ejected(&levee, "g-endpoint", g[4].addr()));
}
