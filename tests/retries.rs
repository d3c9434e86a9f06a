//! Retries end to end, against the real binary:
//!
//! - a 503 is retried on another endpoint for an idempotent request, and the
//!   answer says how many tries it took (`x-levee-attempts`); a POST is not
//!   retried unless it carries `Idempotency-Key`, and then its body reaches
//!   the second endpoint whole;
//! - a try slower than `per_try_timeout` is abandoned for another endpoint;
//! - the retry budget: a backend failing 50 % of requests under a fixed
//!   client load gets at most (1 + ratio) × the client load with the budget,
//!   and far more without it (both printed);
//! - backoff: the spacing of tries follows full jitter (mean ≈ half the
//!   exponential cap), checked statistically;
//! - the deadline header tells the endpoint how long is left, and a client's
//!   shorter deadline is enforced.
//!
//! Run with `cargo test --test retries -- --nocapture` to see the figures.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(10);

/// One worker, no access log, listener `main`, cluster `app` over
/// `endpoints` with `extra` lines, one route to it.
fn config(listen: SocketAddr, endpoints: &[SocketAddr], extra: &[&str]) -> String {
    ConfigBuilder::new()
        .set("server", "workers = 1")
        .set("access_log", "enabled = false")
        .listener("main", listen)
        .cluster_with("app", endpoints, extra)
        .route("all", "app")
        .build()
}

fn request(
    listen: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    http_request(listen, method, path, headers, body, T)
        .unwrap_or_else(|e| panic!("{method} {path} via {listen}: {e}"))
}

#[test]
fn gateway_errors_are_retried_elsewhere_for_idempotent_requests() {
    let bad = Backend::start("bad");
    bad.set_status(Some(503));
    let good = Backend::start("good");
    let listen = free_addr();
    let _levee = Levee::start(&config(
        listen,
        &[bad.addr(), good.addr()],
        &[
            r#"retry = { max_attempts = 2, retry_on = ["gateway_error"], backoff_base = "1ms", backoff_max = "5ms" }"#,
            "outlier_detection = { enabled = false }",
        ],
    ));

    let mut attempts = HashMap::new();
    for i in 0..20 {
        let r = request(listen, "GET", "/get", &[], b"");
        assert_eq!(r.status, 200, "GET {i}: {}", r.text());
        assert_eq!(r.header("x-backend"), Some("good"));
        *attempts
            .entry(r.header("x-levee-attempts").unwrap_or("none").to_owned())
            .or_insert(0) += 1;
    }
    // Round robin sends every other first try to the bad endpoint.
    assert_eq!(attempts.get("1"), Some(&10), "{attempts:?}");
    assert_eq!(attempts.get("2"), Some(&10), "{attempts:?}");
    assert_eq!(bad.requests(), 10);

    // A POST is not retried: whoever answers first is the answer.
    let statuses: Vec<u16> = (0..4)
        .map(|_| request(listen, "POST", "/echo", &[], b"payload").status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        2,
        "{statuses:?}"
    );

    // With an Idempotency-Key it is, and the second endpoint gets the body.
    for _ in 0..4 {
        let r = request(
            listen,
            "POST",
            "/echo",
            &[("Idempotency-Key", "k-1")],
            b"0123456789",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json().expect("echo JSON");
        assert_eq!(v["body_bytes"], 10);
        assert_eq!(v["backend"], "good");
    }
}

/// The default policy retries a connection that broke before its answer
/// (a backend killed mid-request) for an idempotent request, as nginx's
/// default `proxy_next_upstream error` does; a POST is answered 502.
#[test]
fn by_default_a_broken_connection_is_retried_for_idempotent_requests_only() {
    // Reads each request head, then closes without a byte of answer.
    let dropper = canned_upstream(b"", true);
    let good = Backend::start("good");
    let listen = free_addr();
    let _levee = Levee::start(&config(
        listen,
        &[dropper, good.addr()],
        &["outlier_detection = { enabled = false }"],
    ));
    for i in 0..10 {
        let r = request(listen, "GET", "/get", &[], b"");
        assert_eq!(r.status, 200, "GET {i}: {}", r.text());
        assert_eq!(r.header("x-backend"), Some("good"));
    }
    let statuses: Vec<u16> = (0..4)
        .map(|_| request(listen, "POST", "/echo", &[], b"payload").status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        2,
        "{statuses:?}"
    );
}

#[test]
fn a_slow_try_is_abandoned_after_per_try_timeout() {
    let slow = Backend::start("slow");
    slow.set_delay(Duration::from_secs(2));
    let fast = Backend::start("fast");
    let listen = free_addr();
    let _levee = Levee::start(&config(
        listen,
        &[slow.addr(), fast.addr()],
        &[
            r#"retry = { max_attempts = 2, retry_on = ["timeout"], per_try_timeout = "150ms", backoff_base = "1ms", backoff_max = "1ms" }"#,
            "outlier_detection = { enabled = false }",
        ],
    ));
    let mut slowest = Duration::ZERO;
    for i in 0..6 {
        let started = Instant::now();
        let r = request(listen, "GET", "/", &[], b"");
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert_eq!(r.status, 200, "GET {i}: {}", r.text());
        assert_eq!(r.header("x-backend"), Some("fast"));
    }
    println!("slowest answer with a 2 s endpoint and per_try_timeout 150ms: {slowest:?}");
    assert!(slowest < Duration::from_millis(1000), "{slowest:?}");
    assert_eq!(slow.requests(), 3);
}

/// Sends `n` GETs from `threads` threads; returns how many were answered
/// 200 and how long it took.
fn load(listen: SocketAddr, n: usize, threads: usize) -> usize {
    let per = n / threads;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                (0..per)
                    .filter(|_| {
                        http_request(listen, "GET", "/", &[], b"", T).is_ok_and(|r| r.status == 200)
                    })
                    .count()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
}

#[test]
fn the_retry_budget_bounds_the_extra_load() {
    const CLIENT: usize = 400;
    let mut figures = Vec::new();
    for (label, budget) in [
        ("budget 20 %", "budget = { ratio = 0.2, min_per_sec = 0.0 }"),
        ("no budget", "budget = { enabled = false }"),
    ] {
        let b = Backend::start("flaky");
        b.fail_ratio(0.5, 503);
        let listen = free_addr();
        let levee = Levee::start(&config(
            listen,
            &[b.addr()],
            &[
                &format!(
                    r#"retry = {{ max_attempts = 3, retry_on = ["gateway_error"], backoff_base = "1ms", backoff_max = "2ms", {budget} }}"#
                ),
                "outlier_detection = { enabled = false }",
            ],
        ));
        let ok = load(listen, CLIENT, 4);
        let backend = b.requests() as f64;
        let ratio = backend / CLIENT as f64;
        let exhausted = levee
            .metric("levee_retry_budget_exhausted_total", &[("cluster", "app")])
            .unwrap_or(0.0);
        println!(
            "{label}: {CLIENT} client requests -> {backend} backend requests ({ratio:.2}x), \
             {ok} answered 200, budget refused {exhausted} retries"
        );
        figures.push((ratio, ok, exhausted));
    }
    let (with, _, refused) = figures[0];
    let (without, ok_without, _) = figures[1];
    // The budget allows 20 % of the requests in its window: at most 1.2x
    // (plus the window's rounding, the first retry before any deposit).
    assert!(with <= 1.21, "with the budget: {with:.2}x");
    assert!(refused > 50.0, "the budget refused only {refused} retries");
    // Without it, 50 % failures and 3 tries: about 1 + 0.5 + 0.25 = 1.75x.
    assert!(without > 1.6, "without the budget: {without:.2}x");
    assert!(
        ok_without as f64 > 0.8 * CLIENT as f64,
        "{ok_without} succeeded"
    );
}

#[test]
fn backoff_spacing_follows_full_jitter() {
    let b = Backend::start("down");
    b.set_status(Some(503));
    let listen = free_addr();
    let _levee = Levee::start(&config(
        listen,
        &[b.addr()],
        &[
            r#"retry = { max_attempts = 3, retry_on = ["gateway_error"], backoff_base = "100ms", backoff_max = "1s", jitter = "full", budget = { enabled = false } }"#,
            "outlier_detection = { enabled = false }",
        ],
    ));
    const N: usize = 60;
    let handles: Vec<_> = (0..6)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..N / 6 {
                    let path = format!("/r?id={t}-{i}");
                    let r = http_request(listen, "GET", &path, &[], b"", T).expect("request");
                    assert_eq!(r.status, 503);
                    assert_eq!(r.header("x-levee-attempts"), Some("3"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    let mut tries: HashMap<String, Vec<Instant>> = HashMap::new();
    for r in b.recorded() {
        tries.entry(r.uri.clone()).or_default().push(r.at);
    }
    assert_eq!(tries.len(), N);
    let mut gaps = [Vec::new(), Vec::new()];
    for times in tries.values() {
        assert_eq!(times.len(), 3);
        for k in 0..2 {
            gaps[k].push((times[k + 1] - times[k]).as_secs_f64() * 1000.0);
        }
    }
    for (k, (gaps, cap)) in gaps.iter().zip([100.0, 200.0]).enumerate() {
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let max = gaps.iter().cloned().fold(0.0, f64::max);
        println!(
            "retry {}: cap {cap} ms, mean gap {mean:.1} ms (full jitter expects {:.0}), max {max:.1} ms",
            k + 1,
            cap / 2.0
        );
        // Uniform on [0, cap]: the mean of 60 draws is within ±4 standard
        // errors (cap / sqrt(12 × 60) each) of cap / 2, plus the round trip
        // (up to 15 ms on a loaded machine: still far from equal jitter's
        // 3/4 cap, or no jitter's cap).
        let se = cap / (12.0f64 * gaps.len() as f64).sqrt();
        let late = mean - cap / 2.0;
        assert!(
            late > -4.0 * se && late < 4.0 * se + 15.0,
            "retry {}: mean {mean:.1} ms",
            k + 1
        );
        assert!(max < cap + 100.0, "retry {}: max gap {max:.1} ms", k + 1);
    }
}

#[test]
fn the_deadline_reaches_the_endpoint_and_a_shorter_client_deadline_wins() {
    let b = Backend::start("b");
    let listen = free_addr();
    let _levee = Levee::start(&config(
        listen,
        &[b.addr()],
        &[
            r#"deadline_header = "x-request-timeout-ms""#,
            r#"response_timeout = "5s""#,
        ],
    ));
    let r = request(listen, "GET", "/echo", &[], b"");
    assert_eq!(r.status, 200);
    let left: u64 = b
        .last_request()
        .and_then(|r| r.header("x-request-timeout-ms").map(str::to_owned))
        .and_then(|v| v.parse().ok())
        .expect("deadline header at the endpoint");
    assert!((4000..=5000).contains(&left), "{left} ms left");

    let r = request(
        listen,
        "GET",
        "/echo",
        &[("x-request-timeout-ms", "300")],
        b"",
    );
    assert_eq!(r.status, 200);
    let left: u64 = b
        .last_request()
        .and_then(|r| r.header("x-request-timeout-ms").map(str::to_owned))
        .and_then(|v| v.parse().ok())
        .expect("deadline header at the endpoint");
    assert!(left <= 300, "{left} ms left");

    // The client's 200 ms is enforced: a 1 s backend answer is a 504 in
    // about 200 ms.
    let started = Instant::now();
    let r = request(
        listen,
        "GET",
        "/?delay=1s",
        &[("x-request-timeout-ms", "200")],
        b"",
    );
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(800),
        "{took:?}"
    );
}

#[test]
fn a_429_is_retried_after_its_retry_after_up_to_the_cap() {
    let b = Backend::start("b");
    let listen = free_addr();
    let _levee = Levee::start(&config(
        listen,
        &[b.addr()],
        &[
            r#"retry = { max_attempts = 2, retry_statuses = [429], retry_after_max = "2s" }"#,
            "outlier_detection = { enabled = false }",
        ],
    ));
    // Retry-After: 1 is within the cap: the retry comes a second later.
    b.fail_next(1, 429);
    let started = Instant::now();
    let r = request(listen, "GET", "/?header=Retry-After:1", &[], b"");
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-levee-attempts"), Some("2"));
    println!("429 with Retry-After: 1 -> answered 200 after {took:?}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Retry-After: 30 is beyond it: the 429 goes to the client at once.
    b.fail_next(1, 429);
    let started = Instant::now();
    let r = request(listen, "GET", "/?header=Retry-After:30", &[], b"");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-levee-attempts"), Some("1"));
    assert!(started.elapsed() < Duration::from_millis(500));
}
