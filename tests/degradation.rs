//! Graceful degradation end to end, against the real binary:
//!
//! - set by hand (`PUT /degradation`): at MINIMAL the low-priority routes
//!   answer their fallback at once, without touching the backend, while the
//!   high-priority ones keep serving; MAINTENANCE leaves only the routes
//!   marked for it; `auto` gives the level back to the triggers;
//! - automatic: a cluster with fewer than half its endpoints usable moves
//!   the level to DEGRADED after `enter_after`, logged with the numbers,
//!   and back to FULL after `exit_after` once it recovers.
//!
//! Run with `cargo test --test degradation -- --nocapture` to see timings.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(10);

/// (status, body, time taken, answered by the backend).
fn get(listen: SocketAddr, path: &str) -> (u16, String, Duration, bool) {
    let started = Instant::now();
    let r = http_request(listen, "GET", path, &[], b"", T)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (
        r.status,
        r.text(),
        started.elapsed(),
        r.header("x-backend").is_some(),
    )
}

fn set_level(levee: &Levee, level: &str) -> serde_json::Value {
    let r = levee
        .admin_request("PUT", "/degradation", level.as_bytes())
        .expect("PUT /degradation");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().expect("JSON")
}

#[test]
fn levels_set_by_hand_switch_routes_off_by_priority() {
    let b = Backend::start("b");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .set("server", "workers = 1")
        .set("access_log", "enabled = false")
        .listener("main", listen)
        .cluster("app", &[b.addr()])
        .route_with(
            "recommendations",
            "app",
            &[
                r#"path_prefix = "/reco""#,
                r#"min_level = "full""#,
                r#"fallback = { status = 200, body = "[]", headers = { "content-type" = "application/json" } }"#,
            ],
        )
        .route_with(
            "search",
            "app",
            &[r#"path_prefix = "/search""#, r#"min_level = "degraded""#],
        )
        .route_with("checkout", "app", &[r#"path_prefix = "/checkout""#])
        .route_with(
            "status",
            "app",
            &[r#"path_prefix = "/status""#, r#"min_level = "maintenance""#],
        )
        .build();
    let levee = Levee::start(&cfg);
    let paths = ["/reco", "/search", "/checkout", "/status"];
    // Which of the routes the backend answers at the current level.
    let served = || -> Vec<bool> { paths.iter().map(|p| get(listen, p).3).collect() };
    assert_eq!(served(), [true, true, true, true]);
    assert_eq!(
        levee
            .admin_get("/degradation")
            .expect("GET")
            .json()
            .expect("JSON")["level"],
        "full"
    );

    let v = set_level(&levee, "minimal");
    assert_eq!(v["level"], "minimal");
    assert_eq!(v["manual"], "minimal");
    let before = b.requests();
    let (status, body, took, by_backend) = get(listen, "/reco");
    assert_eq!((status, body.as_str(), by_backend), (200, "[]", false));
    let (status, body, _, by_backend) = get(listen, "/search");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"degraded\""), "{body}");
    assert!(!by_backend);
    assert_eq!(
        b.requests(),
        before,
        "a switched-off route reached the backend"
    );
    println!("fallback of a switched-off route answered in {took:?}");
    assert_eq!(served(), [false, false, true, true]);

    set_level(&levee, "{\"level\": \"maintenance\"}");
    assert_eq!(served(), [false, false, false, true]);
    assert!(
        levee
            .stderr_text()
            .contains("service level minimal → maintenance")
    );

    let v = set_level(&levee, "auto");
    assert_eq!(v["level"], "full");
    assert_eq!(v["manual"], serde_json::Value::Null);
    assert_eq!(served(), [true, true, true, true]);

    let bad = levee
        .admin_request("PUT", "/degradation", b"panic")
        .expect("PUT");
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(
        bad.text()
            .contains("expected full, degraded, minimal or maintenance")
    );
    assert_eq!(levee.status_json()["degradation"]["level"], "full");
}

#[test]
fn too_few_healthy_endpoints_degrade_the_service_and_recovery_restores_it() {
    let backends: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("b{i}"))).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .set("server", "workers = 1")
        .set("access_log", "enabled = false")
        .set("degradation", "auto = true")
        .set("degradation", r#"interval = "100ms""#)
        .set("degradation", r#"enter_after = "1s""#)
        .set("degradation", r#"exit_after = "2s""#)
        .listener("main", listen)
        .cluster("app", &addrs)
        .route_with(
            "low",
            "app",
            &[r#"path_prefix = "/low""#, r#"min_level = "full""#],
        )
        .route("rest", "app")
        .build();
    let levee = Levee::start(&cfg);
    let level = |levee: &Levee| levee.status_json()["degradation"]["level"].clone();
    assert_eq!(level(&levee), "full");

    // Three of four endpoints drained: 25 % usable, below healthy_below 50 %.
    let drained = Instant::now();
    for a in &addrs[..3] {
        let r = levee
            .admin_request("POST", &format!("/clusters/app/endpoints/{a}/drain"), b"")
            .expect("drain");
        assert_eq!(r.status, 200);
    }
    assert!(
        wait_until(T, || level(&levee) == "degraded"),
        "never degraded"
    );
    let entered = drained.elapsed();
    println!("1 of 4 endpoints usable -> DEGRADED after {entered:?} (enter_after 1s)");
    assert!(entered >= Duration::from_millis(900), "{entered:?}");
    let log = levee.stderr_text();
    assert!(
        log.contains("cluster app: 1 of 4 endpoints healthy (25 % < 50 %)"),
        "{log}"
    );
    assert_eq!(get(listen, "/low").0, 503);
    assert_eq!(get(listen, "/other").0, 200);

    let restored = Instant::now();
    for a in &addrs[..3] {
        let r = levee
            .admin_request("POST", &format!("/clusters/app/endpoints/{a}/undrain"), b"")
            .expect("undrain");
        assert_eq!(r.status, 200);
    }
    assert!(wait_until(T, || level(&levee) == "full"), "never recovered");
    let left = restored.elapsed();
    println!("all usable again -> FULL after {left:?} (exit_after 2s)");
    assert!(left >= Duration::from_millis(1900), "{left:?}");
    assert_eq!(get(listen, "/low").0, 200);
}
