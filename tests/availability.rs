//! Availability arithmetic end to end: `GET /availability` from the live
//! topology (per endpoint, per cluster, per route, the single points of
//! failure) over real sockets, and the `levee availability` command.

mod support;

use std::collections::HashMap;
use std::process::Command;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_levee");

/// What the client saw, per backend: (answers < 500, 5xx answers).
#[derive(Default, Debug, Clone, Copy)]
struct Seen {
    ok: u64,
    failed: u64,
}

impl Seen {
    fn ratio(self) -> f64 {
        self.ok as f64 / (self.ok + self.failed) as f64
    }
}

fn close(v: &serde_json::Value, want: f64) -> bool {
    v.as_f64().is_some_and(|a| (a - want).abs() < 1e-9)
}

#[test]
fn live_figures_match_what_was_sent() {
    let b1 = Backend::start("b1");
    let b2 = Backend::start("b2");
    let b3 = Backend::start("b3");
    // b3 answers 500 to about 30 % of requests (a fixed seed).
    b3.fail_ratio(0.3, 500);
    let listen = free_addr();
    // Failures are neither retried nor ejected, so that every try the
    // client sees is one try Levee counted.
    let plain = [
        "retry = { max_attempts = 1 }",
        "outlier_detection = { enabled = false }",
    ];
    let config = ConfigBuilder::new()
        .listener("main", listen)
        .cluster_with("app", &[b1.addr(), b2.addr()], &plain)
        .cluster_with("flaky", &[b3.addr()], &plain)
        .route_with("app", "app", &["path_prefix = \"/app\""])
        .route_with("flaky", "flaky", &["path_prefix = \"/flaky\""])
        .raw(
            "[[routes]]\nname = \"split\"\npath_prefix = \"/split\"\nsplit = [{ cluster = \"app\", weight = 3 }, { cluster = \"flaky\", weight = 1 }]\n",
        )
        .build();
    let levee = Levee::start(&config);

    let mut by_backend: HashMap<String, Seen> = HashMap::new();
    let mut by_route: HashMap<&str, Seen> = HashMap::new();
    for (route, n) in [("app", 40), ("flaky", 60), ("split", 40)] {
        for _ in 0..n {
            let r = http_get(listen, &format!("/{route}")).expect("request");
            let backend = r.header("x-backend").expect("x-backend").to_owned();
            let failed = r.status >= 500;
            for seen in [
                by_backend.entry(backend).or_default(),
                by_route.entry(route).or_default(),
            ] {
                if failed {
                    seen.failed += 1;
                } else {
                    seen.ok += 1;
                }
            }
        }
    }
    let b3_seen = by_backend["b3"];
    // The seeded share makes this certain; the assertions below need both.
    assert!(b3_seen.failed > 5 && b3_seen.ok > 5, "{b3_seen:?}");
    assert_eq!(by_backend["b1"].failed + by_backend["b2"].failed, 0);

    let r = levee.admin_get("/availability").expect("GET /availability");
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json().expect("json");
    assert_eq!(report["window_seconds"], 300);

    let cluster = |name: &str| {
        report["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name} in {report:#}"))
            .clone()
    };
    // Per endpoint: the counts are what the client saw from each backend,
    // since start and over the window alike.
    for (name, addr, c) in [
        ("b1", b1.addr(), cluster("app")),
        ("b2", b2.addr(), cluster("app")),
        ("b3", b3.addr(), cluster("flaky")),
    ] {
        let e = c["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .find(|e| e["address"] == addr.to_string())
            .unwrap_or_else(|| panic!("{addr} not in {c:#}"))
            .clone();
        let seen = by_backend[name];
        for scope in ["since_start", "window"] {
            assert_eq!(e[scope]["ok"], seen.ok, "{name} {scope}: {e:#}");
            assert_eq!(e[scope]["failed"], seen.failed, "{name} {scope}: {e:#}");
            assert!(close(&e[scope]["availability"], seen.ratio()), "{e:#}");
        }
    }
    // Per cluster: app has two perfect endpoints (one of two needed), flaky
    // is b3 alone.
    let app = cluster("app");
    assert_eq!(app["needed"], 1);
    assert_eq!(app["primaries"], 2);
    assert!(close(&app["availability"]["since_start"], 1.0), "{app:#}");
    assert!(
        app["nines"]["since_start"].is_null(),
        "perfect: no finite nines"
    );
    let flaky = cluster("flaky");
    assert!(
        close(&flaky["availability"]["since_start"], b3_seen.ratio()),
        "{flaky:#}"
    );
    assert!(
        close(&flaky["availability"]["window"], b3_seen.ratio()),
        "{flaky:#}"
    );

    // Per route: composed from the clusters (the split by its 3:1 weights),
    // and observed from the answers the route gave.
    let route = |name: &str| {
        report["routes"]
            .as_array()
            .expect("routes")
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no route {name} in {report:#}"))
            .clone()
    };
    assert!(close(&route("app")["availability"]["since_start"], 1.0));
    let f = route("flaky");
    assert!(
        close(&f["availability"]["since_start"], b3_seen.ratio()),
        "{f:#}"
    );
    assert_eq!(f["observed"]["ok"], by_route["flaky"].ok);
    assert_eq!(f["observed"]["failed"], by_route["flaky"].failed);
    let s = route("split");
    let want = 0.75 + 0.25 * b3_seen.ratio();
    assert!(
        close(&s["availability"]["since_start"], want),
        "{s:#}, want {want}"
    );
    assert_eq!(s["observed"]["ok"], by_route["split"].ok, "{s:#}");
    assert_eq!(s["observed"]["failed"], by_route["split"].failed, "{s:#}");

    // The single points of failure name the one-endpoint cluster, the
    // routes without a backup, and Levee itself; not the pair.
    let spof = report["single_points_of_failure"]
        .as_array()
        .expect("findings")
        .clone();
    let has = |kind: &str, subject: &str| {
        spof.iter()
            .any(|f| f["kind"] == kind && f["subject"] == subject)
    };
    assert!(has("single_endpoint", "cluster flaky"), "{spof:#?}");
    assert!(!has("single_endpoint", "cluster app"), "{spof:#?}");
    assert!(has("no_backup", "route flaky"), "{spof:#?}");
    assert!(has("single_instance", "levee"), "{spof:#?}");

    // With b1 drained, app is down to one usable endpoint: the report says
    // so from the live state.
    let path = format!("/clusters/app/endpoints/{}/drain", b1.addr());
    assert_eq!(
        levee
            .admin_request("POST", &path, b"")
            .expect("drain")
            .status,
        200
    );
    let report = levee
        .admin_get("/availability")
        .expect("GET /availability")
        .json()
        .expect("json");
    let found = report["single_points_of_failure"]
        .as_array()
        .expect("findings")
        .iter()
        .any(|f| f["kind"] == "single_usable_endpoint" && f["subject"] == "cluster app");
    assert!(found, "{report:#}");
}

fn levee(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("availability")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_reproduces_the_textbook_figures() {
    let (ok, out, err) = levee(&["99.9 -> 99.9 -> 99.9"]);
    assert!(ok, "{err}");
    assert!(out.contains("availability: 99.7003 %"), "{out}");

    let (ok, out, err) = levee(&["app || app", "--part", "app=99.9"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("availability: 99.9999 % (6.00 nines)"),
        "{out}"
    );

    let (ok, out, err) = levee(&[
        "(lb || lb) -> 2of3(app, app, app)",
        "--part",
        "lb=99.99",
        "--part",
        "app=99",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let app = 3.0 * 0.99f64.powi(2) * 0.01 + 0.99f64.powi(3);
    let want = (1.0 - 1e-8) * app;
    assert!(close(&v["availability"], want), "{v:#}, want {want}");

    // Nines to downtime and back.
    let (ok, out, _) = levee(&["99.95"]);
    assert!(ok);
    assert!(out.contains("per year:  4h 22m 59s"), "{out}");
    assert!(out.contains("per month: 21m 55s"), "{out}");
    let (ok, out, _) = levee(&["--downtime", "52m 36s", "--per", "year"]);
    assert!(ok);
    assert!(out.contains("availability: 99.99"), "{out}");

    // A parse error: exit 1, the column and what was expected.
    let (ok, _, err) = levee(&["99.9 -> (99.9 || "]);
    assert!(!ok);
    assert!(err.contains("column 18: expected a part"), "{err}");
    let (ok, _, err) = levee(&["--downtime", "4h", "--per", "fortnight"]);
    assert!(!ok);
    assert!(err.contains("year, month, week or day"), "{err}");
    // --per belongs to --downtime.
    let (ok, _, err) = levee(&["99.9", "--per", "week"]);
    assert!(!ok);
    assert!(err.contains("--downtime"), "{err}");
}

#[test]
fn the_command_reports_single_points_of_failure_of_a_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("levee.toml");
    // A Redis-backed limit that denies when Redis is down: Redis is a
    // single point of failure for the route (read from the file; no Redis
    // needs to run).
    let config = ConfigBuilder::new()
        .listener("main", free_addr())
        .cluster("solo", &[free_addr()])
        .route_with("all", "solo", &["rate_limits = [\"strict\"]"])
        .raw("[rate_limit]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\non_store_error = \"deny\"\n\n[[rate_limit.rules]]\nname = \"strict\"\nlimit = 10\n")
        .build();
    std::fs::write(&path, config).expect("write config");
    let path = path.to_string_lossy().into_owned();
    let (ok, out, err) = levee(&["--config", &path]);
    assert!(ok, "{err}");
    assert!(
        out.contains("[high] single_endpoint: cluster solo has one endpoint"),
        "{out}"
    );
    assert!(out.contains("single_instance"), "{out}");
    assert!(
        out.contains("redis_without_fallback: rate limit strict"),
        "{out}"
    );

    // A bad file is refused with its position.
    std::fs::write(dir.path().join("bad.toml"), "[[clusters]]\nname = 3\n").expect("write");
    let bad = dir.path().join("bad.toml").to_string_lossy().into_owned();
    let (ok, _, err) = levee(&["--config", &bad]);
    assert!(!ok);
    assert!(err.contains("bad.toml:2:"), "{err}");
}
