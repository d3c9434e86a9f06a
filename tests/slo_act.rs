//! Acting on the error budget end to end (`on_fast_burn`, docs/slo.md): a
//! failing backend makes a route burn its budget fast; Levee raises the
//! service level (a nice-to-have route answers its fallback), refuses the
//! route's retries with a tightened budget, and holds its split weights
//! against a reload; when the burn stops, all of it ends, each step an
//! `slo_action` event with its reason. Also: an action Levee could not take
//! is refused with file:line:column.
//! Run with `cargo test --test slo_act`.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(5);
/// SLOs are evaluated every 5 s; an action may take that long to start.
const EVAL: Duration = Duration::from_secs(25);

fn get(addr: std::net::SocketAddr, route: &str) -> HttpResponse {
    http_request(addr, "GET", "/", &[("x-route", route)], b"", T).expect("request")
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

fn level(levee: &Levee) -> serde_json::Value {
    levee
        .admin_get("/degradation")
        .expect("GET /degradation")
        .json()
        .expect("JSON")
}

fn config(
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    stable: &Backend,
    canary: &Backend,
    weights: (u32, u32),
) -> String {
    let cluster = [
        "retry = { max_attempts = 2, retry_statuses = [500], backoff_base = \"1ms\", backoff_max = \"2ms\" }",
        "outlier_detection = { enabled = false }",
    ];
    ConfigBuilder::new()
        .admin_at(admin)
        .listener("main", listen)
        .cluster_with("stable", &[stable.addr()], &cluster)
        .cluster_with("canary", &[canary.addr()], &cluster)
        .route_with(
            "extras",
            "stable",
            &[
                "headers = { \"x-route\" = \"extras\" }",
                "min_level = \"full\"",
                "fallback = { status = 200, body = \"extras are off\" }",
            ],
        )
        .raw(&format!(
            r#"
[[routes]]
name = "api"
headers = {{ "x-route" = "api" }}
split = [{{ cluster = "stable", weight = {} }}, {{ cluster = "canary", weight = {} }}]
slo = {{ target = 95.0 }}
on_fast_burn = {{ service_level = "degraded", retry_budget = {{ ratio = 0.0 }}, hold_split = true }}
"#,
            weights.0, weights.1
        ))
        .build()
}

#[test]
fn a_fast_burn_raises_the_level_tightens_retries_holds_the_split_and_all_ends_with_it() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let listen = free_addr();
    let admin = free_addr();
    let levee = Levee::start(&config(listen, admin, &stable, &canary, (100, 0)));
    let retries = || {
        levee
            .metric("levee_upstream_retries_total", &[("cluster", "stable")])
            .unwrap_or(0.0)
    };

    // Before: FULL, extras served by the backend, failures retried.
    assert_eq!(level(&levee)["level"], "full");
    assert_eq!(get(listen, "extras").header("x-backend"), Some("stable"));
    stable.set_status(Some(500));
    for _ in 0..20 {
        assert_eq!(get(listen, "api").status, 500);
    }
    let retried_before = retries();
    assert!(
        retried_before >= 20.0,
        "retried while the budget allows: {retried_before}"
    );

    // Everything failing: burn rate 20× a 5 % budget; fast_burn_1h fires
    // at the next evaluation and the actions start.
    assert!(
        wait_until(EVAL, || level(&levee)["level"] == "degraded"),
        "{}\n{:?}",
        level(&levee),
        events(&levee, "kind=slo_alert,slo_action")
    );
    let l = level(&levee);
    assert_eq!(l["raised_by_slo"]["api"], "degraded", "{l}");
    assert_eq!(l["manual"], serde_json::Value::Null, "{l}");
    let slo = levee
        .admin_get("/slo")
        .expect("GET /slo")
        .json()
        .expect("JSON");
    let on = &slo["routes"]["api"]["on_fast_burn"];
    assert_eq!(on["active"], true, "{slo}");
    let started = events(&levee, "kind=slo_action&subject=route%20api");
    let start = started
        .iter()
        .find(|e| {
            e["what"]
                .as_str()
                .is_some_and(|w| w.starts_with("actions started"))
        })
        .unwrap_or_else(|| panic!("{started:?}"));
    let why = start["why"].as_str().unwrap_or("");
    assert!(why.contains("fast_burn_1h fires: burn rate 20.0×"), "{why}");
    assert!(why.contains("split held at stable 100 / canary 0"), "{why}");
    let what = start["what"].as_str().unwrap_or("");
    assert!(
        what.contains("service level raised to degraded")
            && what.contains("retry budget tightened to 0 %")
            && what.contains("split weights held"),
        "{what}"
    );
    let raised = events(&levee, "kind=service_level");
    assert!(
        raised.iter().any(|e| e["what"] == "full → degraded"
            && e["why"]
                .as_str()
                .is_some_and(|w| w.contains("route api raised it to degraded"))),
        "{raised:?}"
    );

    // The nice-to-have route answers its fallback, without the backend.
    let seen = stable.requests();
    let r = get(listen, "extras");
    assert_eq!((r.status, r.text().as_str()), (200, "extras are off"));
    assert_eq!(stable.requests(), seen);

    // Retries of the burning route are refused by the tightened budget.
    let retried = retries();
    for _ in 0..10 {
        assert_eq!(get(listen, "api").status, 500);
    }
    assert_eq!(retries(), retried, "no retry while the budget is tightened");
    assert_eq!(stable.requests(), seen + 10, "one try per request");
    let refused = events(&levee, "kind=retry_budget&subject=cluster%20stable");
    assert!(
        refused.iter().any(|e| e["why"]
            .as_str()
            .is_some_and(|w| w.contains("tightened to 0 %"))),
        "{refused:?}"
    );

    // A reload that promotes the canary is held while the burn lasts.
    levee.write_config(&config(listen, admin, &stable, &canary, (0, 100)));
    assert_eq!(levee.reload_via_admin(), 200);
    let held = events(&levee, "kind=slo_action&subject=route%20api");
    assert!(
        held.iter().any(|e| e["what"] == "split weight shift held"
            && e["why"]
                .as_str()
                .is_some_and(|w| w
                    .contains("configured stable 0 / canary 100 held at stable 100 / canary 0"))),
        "{held:?}"
    );
    assert_eq!(get(listen, "api").header("x-backend"), Some("stable"));

    // The backend recovers; good answers bring the short window's bad share
    // under the alerts' (30 bad of 700: 4.3 % < 5 % × 6): the burn stops,
    // and every action ends.
    stable.set_status(None);
    for _ in 0..670 {
        assert_eq!(get(listen, "api").status, 200);
    }
    assert!(
        wait_until(EVAL, || level(&levee)["level"] == "full"),
        "{}\n{:?}",
        level(&levee),
        events(&levee, "kind=slo_alert,slo_action")
    );
    let ended = events(&levee, "kind=slo_action&subject=route%20api");
    let end = ended
        .iter()
        .find(|e| {
            e["what"]
                .as_str()
                .is_some_and(|w| w.starts_with("actions ended"))
        })
        .unwrap_or_else(|| panic!("{ended:?}"));
    let why = end["why"].as_str().unwrap_or("");
    assert!(why.contains("no fast burn alert fires any more"), "{why}");
    assert!(
        why.contains("split weights now stable 0 / canary 100"),
        "{why}"
    );
    let slo = levee
        .admin_get("/slo")
        .expect("GET /slo")
        .json()
        .expect("JSON");
    assert_eq!(
        slo["routes"]["api"]["on_fast_burn"]["active"], false,
        "{slo}"
    );
    assert_eq!(level(&levee)["raised_by_slo"], serde_json::json!({}));
    // The extras are served again, and the shift held back is in force.
    assert_eq!(get(listen, "extras").header("x-backend"), Some("stable"));
    assert_eq!(get(listen, "api").header("x-backend"), Some("canary"));
}

#[test]
fn actions_levee_could_not_take_are_refused_with_their_place() {
    let route = |extra: &str| {
        ConfigBuilder::new()
            .listener("main", free_addr())
            .cluster("a", &[free_addr()])
            .cluster("b", &[free_addr()])
            .route_with("r", "a", &["slo = { target = 99.9 }", extra])
            .build()
    };
    let cases = [
        (
            ConfigBuilder::new()
                .listener("main", free_addr())
                .cluster("a", &[free_addr()])
                .route_with(
                    "r",
                    "a",
                    &["on_fast_burn = { service_level = \"degraded\" }"],
                )
                .build(),
            "routes[0].on_fast_burn: the route has no slo",
        ),
        (
            route("on_fast_burn = { service_level = \"maintenance\" }"),
            "routes[0].on_fast_burn.service_level: maintenance is for a person",
        ),
        (
            route("on_fast_burn = { service_level = \"full\" }"),
            "full raises nothing",
        ),
        (
            route("on_fast_burn = { hold_split = true }"),
            "routes[0].on_fast_burn.hold_split: the route has no split",
        ),
        (
            route("on_fast_burn = { retry_budget = { ratio = 0.5, min_per_sec = 10.0 } }"),
            "no tighter than cluster a's budget (ratio 0.2, min_per_sec 10)",
        ),
        (
            route("on_fast_burn = { retry_budget = { ratio = 1.5 } }"),
            "ratio 1.5 is not a share between 0 and 1",
        ),
        (
            route("on_fast_burn = { hold_split = false }"),
            "on_fast_burn does nothing",
        ),
    ];
    for (text, want) in cases {
        let (code, _, err) = Levee::check(&text);
        assert_ne!(code, 0, "accepted:\n{text}");
        assert!(err.contains(want), "want {want:?} in:\n{err}\n{text}");
        // file:line:column of the offending key.
        let line = text
            .lines()
            .position(|l| l.contains("on_fast_burn") || l.contains("maintenance"))
            .map(|i| i + 1)
            .unwrap_or(0);
        assert!(
            err.contains(&format!(":{line}:")),
            "line {line} in:\n{err}\n{text}"
        );
    }
    // A retry budget on a cluster that never retries cannot be tightened.
    let text = ConfigBuilder::new()
        .listener("main", free_addr())
        .cluster_with("a", &[free_addr()], &["retry = { max_attempts = 1 }"])
        .route_with(
            "r",
            "a",
            &[
                "slo = { target = 99.9 }",
                "on_fast_burn = { retry_budget = { ratio = 0.01 } }",
            ],
        )
        .build();
    let (code, _, err) = Levee::check(&text);
    assert_ne!(code, 0);
    assert!(err.contains("never retried (max_attempts 1)"), "{err}");
}
