//! Load balancing end to end: the real binary, real sockets, real backends.
//!
//! - latency-aware balancers (`least_response_time`, `peak_ewma`) starve a
//!   slow endpoint, and `peak_ewma` also one that fails fast with 500s;
//! - `least_conn` sends no new request to an endpoint busy with long ones;
//! - hash balancers (`consistent_hash` by header and by cookie, `maglev`,
//!   `ip_hash`) keep every key on one endpoint and spread keys over all;
//! - `consistent_hash` keeps most keys in place when a reload adds an
//!   endpoint, and moves the others only to the new one;
//! - `levee check` refuses bad balancing settings, naming the key and what
//!   would be valid.
//!
//! Run with `cargo test --test balancing`. Splits are printed (`--nocapture`).

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);
const REQ_TIMEOUT: Duration = Duration::from_secs(5);

/// One worker (exact counts), no access log, one listener `main` on
/// `listen`, one cluster `app` over `backends` with `extra` lines, one route.
fn config(
    admin: SocketAddr,
    listen: SocketAddr,
    backends: &[SocketAddr],
    extra: &[&str],
) -> String {
    ConfigBuilder::new()
        .admin_at(admin)
        .set("server", "workers = 1")
        .set("access_log", "enabled = false")
        .listener("main", listen)
        .cluster_with("app", backends, extra)
        .route("all", "app")
        .build()
}

fn start(backends: &[&Backend], extra: &[&str]) -> (Levee, SocketAddr) {
    let listen = free_addr();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let levee = Levee::start(&config(free_addr(), listen, &addrs, extra));
    (levee, listen)
}

/// Sends one GET and returns (status, `x-backend`); panics on transport
/// errors or a response without `x-backend` (not from a backend).
fn get(listen: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let r = http_request(listen, "GET", path, headers, b"", REQ_TIMEOUT)
        .unwrap_or_else(|e| panic!("GET {path} via {listen}: {e}"));
    let backend = r
        .header("x-backend")
        .unwrap_or_else(|| panic!("no x-backend in {} {:?}", r.status, r.text()))
        .to_owned();
    (r.status, backend)
}

/// `total` GETs of `/` from `threads` concurrent clients; returns the count
/// per backend name and per status.
fn load(
    listen: SocketAddr,
    total: usize,
    threads: usize,
) -> (HashMap<String, usize>, HashMap<u16, usize>) {
    let left = Arc::new(AtomicUsize::new(total));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let left = left.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    seen.push(get(listen, "/", &[]));
                }
                seen
            })
        })
        .collect();
    let mut by_backend = HashMap::new();
    let mut by_status = HashMap::new();
    for h in handles {
        for (status, backend) in h.join().expect("client thread") {
            *by_backend.entry(backend).or_default() += 1;
            *by_status.entry(status).or_default() += 1;
        }
    }
    (by_backend, by_status)
}

fn split(by_backend: &HashMap<String, usize>, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n}={}", by_backend.get(*n).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(" ")
}

const TOTAL: usize = 300;
const CLIENTS: usize = 8;

/// Three backends, `slow` made slow or failing by `setup`; asserts it gets
/// under 10 % of `TOTAL` requests from `CLIENTS` concurrent clients.
fn starves_bad_endpoint(balance: &str, what: &str, setup: impl FnOnce(&Backend)) {
    let (fast1, fast2, bad) = (
        Backend::start("fast1"),
        Backend::start("fast2"),
        Backend::start("bad"),
    );
    setup(&bad);
    let line = format!("balance = \"{balance}\"");
    let (levee, listen) = start(&[&fast1, &fast2, &bad], &[&line]);
    let (by_backend, by_status) = load(listen, TOTAL, CLIENTS);
    let bad_share = by_backend.get("bad").copied().unwrap_or(0);
    println!(
        "{balance}, {what}: {} of {TOTAL} requests ({CLIENTS} clients); statuses {by_status:?}",
        split(&by_backend, &["fast1", "fast2", "bad"])
    );
    assert_eq!(by_backend.values().sum::<usize>(), TOTAL);
    assert_eq!(
        by_status.get(&200).copied().unwrap_or(0) + by_status.get(&500).copied().unwrap_or(0),
        TOTAL,
        "{by_status:?}"
    );
    assert!(
        bad_share * 10 < TOTAL,
        "{balance}: the {what} backend got {bad_share} of {TOTAL}: {by_backend:?}\n{}",
        levee.logs()
    );
    // Not asserted: an even split between fast1 and fast2. Each endpoint's
    // estimate is seeded by its first response (a fresh upstream connection,
    // slower than pooled ones) and, weighted by time with a 10 s decay, barely
    // moves during this sub-second run, so the two can split 40/260.
}

#[test]
fn least_response_time_avoids_slow_backend() {
    starves_bad_endpoint("least_response_time", "+50 ms backend", |b| {
        b.set_delay(Duration::from_millis(50))
    });
}

#[test]
fn peak_ewma_avoids_slow_backend() {
    starves_bad_endpoint("peak_ewma", "+50 ms backend", |b| {
        b.set_delay(Duration::from_millis(50))
    });
}

#[test]
fn peak_ewma_avoids_fast_failing_backend() {
    starves_bad_endpoint("peak_ewma", "fast-500 backend", |b| b.set_status(Some(500)));
}

#[test]
fn least_response_time_avoids_fast_failing_backend() {
    starves_bad_endpoint("least_response_time", "fast-500 backend", |b| {
        b.set_status(Some(500))
    });
}

/// The busy endpoint's long requests are started while it is the only one
/// (so they all land on it), then a reload adds two idle endpoints; the
/// in-flight count lives in the endpoint's live state and survives it.
#[test]
fn least_conn_skips_busy_backend() {
    let (busy, idle1, idle2) = (
        Backend::start("busy"),
        Backend::start("idle1"),
        Backend::start("idle2"),
    );
    let (admin, listen) = (free_addr(), free_addr());
    let lc = ["balance = \"least_conn\""];
    let mut levee = Levee::start(&config(admin, listen, &[busy.addr()], &lc));

    let long: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || get(listen, "/?delay=2s", &[])))
        .collect();
    assert!(
        wait_until(T, || busy.in_flight() == 4),
        "busy backend has {} in flight",
        busy.in_flight()
    );

    levee.write_config(&config(
        admin,
        listen,
        &[busy.addr(), idle1.addr(), idle2.addr()],
        &lc,
    ));
    assert!(levee.sighup());
    let endpoints = |l: &Levee| l.status_json()["clusters"][0]["endpoints"].clone();
    assert!(
        wait_until(T, || endpoints(&levee).as_array().map(Vec::len) == Some(3)),
        "reload not applied: {}\n{}",
        endpoints(&levee),
        levee.logs()
    );
    let status = endpoints(&levee);
    let busy_in_flight = status
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == busy.addr().to_string())
        .map(|e| e["in_flight"].clone());
    println!("least_conn: endpoints after reload: {status}");
    assert_eq!(busy_in_flight, Some(serde_json::json!(4)), "{status}");

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let (status, backend) = get(listen, "/", &[]);
        assert_eq!(status, 200);
        *counts.entry(backend).or_default() += 1;
    }
    println!(
        "least_conn, busy backend holding 4 requests: {} of 30 quick requests",
        split(&counts, &["busy", "idle1", "idle2"])
    );
    assert_eq!(busy.in_flight(), 4, "the long requests are still out");
    assert_eq!(counts.get("busy"), None, "{counts:?}");
    assert!(counts.get("idle1") >= Some(&10), "{counts:?}");
    assert!(counts.get("idle2") >= Some(&10), "{counts:?}");

    for h in long {
        assert_eq!(h.join().expect("long request"), (200, "busy".to_owned()));
    }
}

/// For each of 50 ids, `rounds` requests carrying it (through `headers`)
/// must all land on one backend; ids must cover every backend. Returns the
/// map id → backend.
fn check_affinity(
    listen: SocketAddr,
    backends: usize,
    label: &str,
    headers: impl Fn(&str) -> Vec<(String, String)>,
) -> HashMap<String, String> {
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for i in 0..50 {
            let id = format!("user-{i}");
            let hs = headers(&id);
            let hs: Vec<(&str, &str)> = hs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let (status, backend) = get(listen, "/", &hs);
            assert_eq!(status, 200);
            match owner.get(&id) {
                None => {
                    assert_eq!(round, 0);
                    owner.insert(id, backend);
                }
                Some(first) => assert_eq!(
                    *first, backend,
                    "{label}: {id} went to {first}, then to {backend} (round {round})"
                ),
            }
        }
    }
    let mut per: HashMap<String, usize> = HashMap::new();
    for b in owner.values() {
        *per.entry(b.clone()).or_default() += 1;
    }
    println!("{label}: 50 ids (3 rounds each) over backends: {per:?}");
    assert_eq!(per.len(), backends, "{label}: ids not spread: {per:?}");
    owner
}

fn three() -> [Backend; 3] {
    [
        Backend::start("b1"),
        Backend::start("b2"),
        Backend::start("b3"),
    ]
}

/// Requests without the key fall back to the client IP: all on one backend.
fn no_key_is_sticky(listen: SocketAddr, label: &str) {
    let first = get(listen, "/", &[]).1;
    for _ in 0..10 {
        assert_eq!(
            get(listen, "/", &[]).1,
            first,
            "{label}: keyless requests moved"
        );
    }
}

#[test]
fn consistent_hash_by_header() {
    let bs = three();
    let (_levee, listen) = start(
        &[&bs[0], &bs[1], &bs[2]],
        &[
            "balance = \"consistent_hash\"",
            "hash_key = \"header:X-User\"",
        ],
    );
    check_affinity(listen, 3, "consistent_hash header:X-User", |id| {
        vec![("X-User".into(), id.into())]
    });
    no_key_is_sticky(listen, "consistent_hash header:X-User");
}

#[test]
fn consistent_hash_by_cookie() {
    let bs = three();
    let (_levee, listen) = start(
        &[&bs[0], &bs[1], &bs[2]],
        &[
            "balance = \"consistent_hash\"",
            "hash_key = \"cookie:session\"",
        ],
    );
    let owner = check_affinity(listen, 3, "consistent_hash cookie:session", |id| {
        // Other cookies around it must not matter.
        vec![(
            "Cookie".into(),
            format!("theme=dark; session={id}; lang=en"),
        )]
    });
    // The same session with other cookies (or alone) lands in the same place.
    for (id, backend) in owner.iter().take(10) {
        let cookie = format!("session={id}");
        assert_eq!(get(listen, "/", &[("Cookie", &cookie)]).1, *backend);
    }
    no_key_is_sticky(listen, "consistent_hash cookie:session");
}

#[test]
fn maglev_by_header() {
    let bs = three();
    let (_levee, listen) = start(
        &[&bs[0], &bs[1], &bs[2]],
        &["balance = \"maglev\"", "hash_key = \"header:X-User\""],
    );
    check_affinity(listen, 3, "maglev header:X-User", |id| {
        vec![("X-User".into(), id.into())]
    });
    no_key_is_sticky(listen, "maglev header:X-User");
}

#[test]
fn ip_hash_is_sticky_per_client_ip() {
    let bs = three();
    let (_levee, listen) = start(&[&bs[0], &bs[1], &bs[2]], &["balance = \"ip_hash\""]);
    let first = get(listen, "/", &[]).1;
    let mut seen = HashSet::new();
    for i in 0..30 {
        // Neither the path nor headers that other keys would use matter.
        let path = format!("/item/{i}");
        let user = format!("user-{i}");
        let (status, backend) = get(listen, &path, &[("X-User", &user)]);
        assert_eq!(status, 200);
        seen.insert(backend);
    }
    println!("ip_hash: 31 requests from 127.0.0.1 all went to {seen:?} (first {first})");
    assert_eq!(seen, HashSet::from([first]));
}

#[test]
fn consistent_hash_keeps_most_keys_across_reload_adding_endpoint() {
    let [b1, b2, b3] = three();
    let b4 = Backend::start("b4");
    let (admin, listen) = (free_addr(), free_addr());
    let extra = [
        "balance = \"consistent_hash\"",
        "hash_key = \"header:X-User\"",
    ];
    let old = [b1.addr(), b2.addr(), b3.addr()];
    let mut levee = Levee::start(&config(admin, listen, &old, &extra));

    let ids: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
    let map = |ids: &[String]| -> Vec<String> {
        ids.iter()
            .map(|id| {
                let (status, backend) = get(listen, "/", &[("X-User", id)]);
                assert_eq!(status, 200);
                backend
            })
            .collect()
    };
    let before = map(&ids);
    assert_eq!(before, map(&ids), "not stable before the reload");

    let new = [b1.addr(), b2.addr(), b3.addr(), b4.addr()];
    levee.write_config(&config(admin, listen, &new, &extra));
    assert!(levee.sighup());
    let count = |l: &Levee| {
        l.status_json()["clusters"][0]["endpoints"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(
        wait_until(T, || count(&levee) == 4),
        "reload not applied ({} endpoints)\n{}",
        count(&levee),
        levee.logs()
    );

    let after = map(&ids);
    assert_eq!(after, map(&ids), "not stable after the reload");
    let unchanged = before.iter().zip(&after).filter(|(a, b)| a == b).count();
    let on_new = after.iter().filter(|b| *b == "b4").count();
    println!(
        "consistent_hash reload 3 -> 4 endpoints: {unchanged} of 100 ids unchanged, \
         {} moved (all to b4: {on_new} on b4); ideal 75 unchanged",
        100 - unchanged
    );
    for ((id, b), a) in ids.iter().zip(&before).zip(&after) {
        assert!(
            a == b || a == "b4",
            "{id} moved from {b} to {a}, not to the new endpoint"
        );
    }
    assert!(
        unchanged >= 60,
        "only {unchanged} of 100 ids kept their backend"
    );
    assert!(on_new > 0, "the new endpoint got no ids");
}

/// A valid config (it is checked, not run) with `extra` cluster lines.
fn check_cluster(extra: &[&str]) -> (i32, String) {
    let cfg = config(free_addr(), free_addr(), &[free_addr()], extra);
    let (code, stdout, stderr) = Levee::check(&cfg);
    (code, format!("{stdout}{stderr}"))
}

#[test]
fn balancing_config_errors() {
    let (code, out) = check_cluster(&[
        "balance = \"consistent_hash\"",
        "hash_key = \"header:X-User\"",
        "virtual_nodes = 1000",
        "hash_balance_factor = 1.25",
    ]);
    assert_eq!(code, 0, "a valid config was refused: {out}");

    let cases: &[(&[&str], &str, &[&str])] = &[
        (
            &["balance = \"consistent_hash\"", "hash_key = \"bogus\""],
            "clusters[0].hash_key",
            &["\"bogus\"", "client_ip", "header:NAME", "cookie:NAME"],
        ),
        (
            &["balance = \"consistent_hash\"", "hash_balance_factor = 0.5"],
            "clusters[0].hash_balance_factor",
            &["0.5", "at least 1.0"],
        ),
        (
            &["balance = \"round_robin\"", "hash_balance_factor = 1.25"],
            "clusters[0].hash_balance_factor",
            &["only applies to balance = \"consistent_hash\""],
        ),
        (
            &["balance = \"consistent_hash\"", "virtual_nodes = 0"],
            "clusters[0].virtual_nodes",
            &["1 to 1000"],
        ),
        (
            &["balance = \"fastest\""],
            "clusters[0].balance",
            &["fastest", "round_robin", "consistent_hash", "peak_ewma"],
        ),
    ];
    for (lines, key, wanted) in cases {
        let (code, out) = check_cluster(lines);
        println!("check {lines:?}: exit {code}: {}", out.trim());
        assert_eq!(code, 1, "{lines:?}: {out}");
        assert!(out.contains(key), "{lines:?}: no {key} in {out:?}");
        for w in *wanted {
            assert!(out.contains(w), "{lines:?}: no {w:?} in {out:?}");
        }
    }
}

/// Issue 9, item 0b: `round_robin` honours weights as nginx's and HAProxy's
/// do (it ignored them: 20/20/20 with `weight = 3`), smooth and exact over
/// each cycle; a reload that changes a weight changes the split.
#[test]
fn round_robin_honours_weights_and_their_reload() {
    let bs = three();
    let (admin, listen) = (free_addr(), free_addr());
    let weighted = |w: u32| {
        ConfigBuilder::new()
            .admin_at(admin)
            .set("server", "workers = 1")
            .set("access_log", "enabled = false")
            .listener("main", listen)
            .cluster_with("app", &[], &["balance = \"round_robin\""])
            .endpoint("app", bs[0].addr(), &[&format!("weight = {w}")])
            .endpoint("app", bs[1].addr(), &[])
            .endpoint("app", bs[2].addr(), &[])
            .route("all", "app")
            .build()
    };
    let levee = Levee::start(&weighted(1));
    let names = ["b1", "b2", "b3"];
    let count = |n: usize| {
        let mut by = HashMap::new();
        for _ in 0..n {
            *by.entry(get(listen, "/", &[]).1).or_insert(0usize) += 1;
        }
        by
    };
    let by = count(30);
    println!("round_robin 1:1:1: {}", split(&by, &names));
    assert_eq!(
        by.values().copied().collect::<HashSet<_>>(),
        HashSet::from([10])
    );
    levee.write_config(&weighted(3));
    assert_eq!(levee.reload_via_admin(), 200);
    // Sequential requests on one worker: exactly 3/1/1 of every 5.
    let by = count(50);
    println!("round_robin 3:1:1: {}", split(&by, &names));
    assert_eq!(
        [by.get("b1"), by.get("b2"), by.get("b3")],
        [Some(&30), Some(&10), Some(&10)],
        "{by:?}"
    );
}
