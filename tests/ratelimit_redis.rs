//! The Redis rate-limit store against a real `redis-server` (Debian's, at
//! /usr/bin/redis-server): each algorithm's counts, TTLs, two stores sharing
//! one limit, script reloading, outages, recovery and throughput.
//!
//! Every test starts its own server on a free loopback port, so tests run in
//! parallel without sharing state. Waiting is bounded polling, never a fixed
//! sleep, except where a test waits for a limiter's own `retry_after`.
//!
//! Run with `cargo test --test ratelimit_redis -- --nocapture` to see the
//! throughput figures.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use levee::ratelimit::redis::{Options, RedisStore, Reply, StoreError, Target};
use levee::ratelimit::{Algorithm, Decision, Limit};

mod support;

use support::redis::{self as redis_support, RedisServer, wait_until};
use support::redis_cluster::RedisCluster;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
/// A timeout generous enough for a loaded 2-core CI box.
const SLOW_OK: Duration = Duration::from_secs(2);

fn limit(algorithm: Algorithm, limit: u64, period: Duration, burst: u64) -> Limit {
    Limit {
        algorithm,
        limit,
        period,
        burst,
        delay: false,
    }
}

fn store(server: &RedisServer) -> RedisStore {
    RedisStore::new(&server.url(), SLOW_OK).unwrap()
}

async fn check(store: &RedisStore, key: &str, l: &Limit) -> Decision {
    store
        .check(key.as_bytes(), l, 1)
        .await
        .unwrap_or_else(|e| panic!("check {key}: {e}"))
}

/// If the current aligned window of `period` (Redis aligns windows to the
/// Unix epoch, on this machine's clock) has less than `need` left, sleeps
/// into the next one.
fn avoid_window_edge(period: Duration, need: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_nanos((now.as_nanos() % period.as_nanos()) as u64);
    let left = period - into;
    if left < need {
        std::thread::sleep(left + 5 * MS);
    }
}

fn key_of(algorithm: Algorithm, key: &str) -> String {
    String::from_utf8(RedisStore::key_for(algorithm, key.as_bytes())).unwrap()
}

// --- Each algorithm --------------------------------------------------------

#[tokio::test]
async fn token_bucket_allows_the_burst_then_refills_at_the_rate() {
    let server = RedisServer::start();
    let store = store(&server);
    let l = limit(Algorithm::TokenBucket, 10, SEC, 5);
    for i in 0..5u64 {
        let d = check(&store, "tb", &l).await;
        assert!(d.allowed, "request {i}: {d:?}");
        assert_eq!(d.limit, 10);
        assert_eq!(d.remaining, 4 - i);
        assert_eq!(d.delay, Duration::ZERO);
    }
    let d = check(&store, "tb", &l).await;
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.remaining, 0);
    // One token per 100 ms: due within 100 ms (less the time the burst
    // took); the bucket is full again within 500 ms.
    assert!(
        d.retry_after > 50 * MS && d.retry_after <= 100 * MS,
        "{d:?}"
    );
    assert!(d.reset > 400 * MS && d.reset <= 500 * MS, "{d:?}");
    tokio::time::sleep(d.retry_after).await;
    assert!(check(&store, "tb", &l).await.allowed);
    // Other keys are separate.
    assert!(check(&store, "tb-other", &l).await.allowed);
}

#[tokio::test]
async fn leaky_bucket_shapes_with_delays_and_rejects_beyond_the_burst() {
    let server = RedisServer::start();
    let store = store(&server);
    let mut l = limit(Algorithm::LeakyBucket, 10, SEC, 5);
    l.delay = true;
    let start = Instant::now();
    // Burst 5 beyond the one leaking: six fit, each in the next 100 ms slot.
    for i in 0..6u32 {
        let d = check(&store, "lb", &l).await;
        assert!(d.allowed, "request {i}: {d:?}");
        let slot = i * 100 * MS;
        let early = start.elapsed() + MS;
        assert!(
            d.delay <= slot && d.delay + early >= slot,
            "request {i}: delay {:?}, slot {slot:?}",
            d.delay
        );
    }
    let d = check(&store, "lb", &l).await;
    assert!(!d.allowed, "{d:?}");
    assert!(
        d.retry_after > 50 * MS && d.retry_after <= 100 * MS,
        "{d:?}"
    );
    assert_eq!(d.delay, Duration::ZERO);

    // Without delay (nodelay): the same six pass at once.
    l.delay = false;
    for i in 0..6 {
        let d = check(&store, "lb-nodelay", &l).await;
        assert!(d.allowed && d.delay == Duration::ZERO, "request {i}: {d:?}");
    }
    assert!(!check(&store, "lb-nodelay", &l).await.allowed);
}

#[tokio::test]
async fn fixed_window_counts_per_aligned_window() {
    let server = RedisServer::start();
    let store = store(&server);
    let l = limit(Algorithm::FixedWindow, 10, SEC, 0);
    avoid_window_edge(SEC, 500 * MS);
    for i in 0..10u64 {
        let d = check(&store, "fw", &l).await;
        assert!(d.allowed, "request {i}: {d:?}");
        assert_eq!(d.remaining, 9 - i);
    }
    let d = check(&store, "fw", &l).await;
    assert!(!d.allowed, "{d:?}");
    // Until the end of the window, which is aligned to whole seconds.
    assert!(
        d.retry_after > Duration::ZERO && d.retry_after <= SEC,
        "{d:?}"
    );
    assert_eq!(d.reset, d.retry_after);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let to_edge = SEC - Duration::from_nanos((now.as_nanos() % SEC.as_nanos()) as u64);
    let skew = d.retry_after.abs_diff(to_edge);
    assert!(
        skew < 50 * MS,
        "retry {:?} vs edge {to_edge:?}",
        d.retry_after
    );
    tokio::time::sleep(d.retry_after).await;
    let d = check(&store, "fw", &l).await;
    assert!(d.allowed && d.remaining == 9, "{d:?}");
}

#[tokio::test]
async fn sliding_log_is_exact_over_any_period() {
    let server = RedisServer::start();
    let store = store(&server);
    let l = limit(Algorithm::SlidingLog, 5, SEC, 0);
    let start = Instant::now();
    for i in 0..5u64 {
        let d = check(&store, "sl", &l).await;
        assert!(d.allowed, "request {i}: {d:?}");
        assert_eq!(d.remaining, 4 - i);
        assert_eq!(d.reset, SEC);
    }
    let d = check(&store, "sl", &l).await;
    assert!(!d.allowed, "{d:?}");
    // The oldest entry leaves one period after it came.
    let elapsed = start.elapsed();
    assert!(
        d.retry_after <= SEC && d.retry_after + elapsed + MS >= SEC,
        "{d:?}"
    );
    let zset = server.query(&["ZCARD", &key_of(Algorithm::SlidingLog, "sl")]);
    assert_eq!(zset.int(), 5, "rejected requests are not logged");
    tokio::time::sleep(d.retry_after).await;
    assert!(check(&store, "sl", &l).await.allowed);
}

#[tokio::test]
async fn sliding_counter_weighs_the_previous_window() {
    let server = RedisServer::start();
    let store = store(&server);
    let period = 2 * SEC;
    let l = limit(Algorithm::SlidingCounter, 10, period, 0);
    avoid_window_edge(period, SEC);
    for i in 0..10u64 {
        let d = check(&store, "sc", &l).await;
        assert!(d.allowed, "request {i}: {d:?}");
        assert_eq!(d.remaining, 9 - i);
    }
    let d = check(&store, "sc", &l).await;
    assert!(!d.allowed, "{d:?}");
    // Full window: room again once a tenth of the previous window (10
    // requests) has slid out: 200 ms into the next window.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let to_edge = period - Duration::from_nanos((now.as_nanos() % period.as_nanos()) as u64);
    let want = to_edge + 200 * MS;
    assert!(
        d.retry_after.abs_diff(want) < 50 * MS,
        "retry {:?}, want {want:?}",
        d.retry_after
    );
    assert!(d.reset > to_edge + period - 50 * MS, "{d:?}");
    tokio::time::sleep(d.retry_after).await;
    // Just one: the previous window still weighs (unless the sleep overshot
    // by another 200 ms).
    assert!(check(&store, "sc", &l).await.allowed);
    assert!(!check(&store, "sc", &l).await.allowed);
}

#[tokio::test]
async fn a_peek_with_cost_zero_changes_nothing() {
    let server = RedisServer::start();
    let store = store(&server);
    for algorithm in ALL {
        let l = limit(algorithm, 3, 10 * SEC, 3);
        let d = store.check(b"peek", &l, 0).await.unwrap();
        assert!(d.allowed, "{algorithm:?}: {d:?}");
        let key = key_of(algorithm, "peek");
        assert_eq!(server.query(&["EXISTS", &key]).int(), 0, "{algorithm:?}");
        // A cost beyond the capacity can never pass: a nominal retry.
        let d = store.check(b"big", &l, 100).await.unwrap();
        assert!(
            !d.allowed && d.retry_after == 10 * SEC,
            "{algorithm:?}: {d:?}"
        );
    }
}

const ALL: [Algorithm; 5] = [
    Algorithm::TokenBucket,
    Algorithm::LeakyBucket,
    Algorithm::FixedWindow,
    Algorithm::SlidingLog,
    Algorithm::SlidingCounter,
];

#[tokio::test]
async fn every_key_gets_a_ttl_and_goes_away() {
    let server = RedisServer::start();
    let store = store(&server);
    let period = 200 * MS;
    for algorithm in ALL {
        let l = limit(algorithm, 10, period, 10);
        assert!(check(&store, "ttl", &l).await.allowed);
        let key = key_of(algorithm, "ttl");
        let ttl = server.query(&["PTTL", &key]).int();
        // About the time until the state would be fresh again: one
        // interval (20 ms) for the buckets, the window or period for the
        // others, two windows for the counter.
        let max = match algorithm {
            Algorithm::TokenBucket | Algorithm::LeakyBucket => 20,
            Algorithm::SlidingCounter => 400,
            _ => 200,
        };
        assert!(ttl > 0 && ttl <= max, "{algorithm:?}: PTTL {ttl}");
    }
    let gone = wait_until(5 * SEC, || {
        server.query(&["KEYS", "levee:rl:*"]) == redis_support::Value::Array(vec![])
    });
    assert!(
        gone,
        "keys left: {:?}",
        server.query(&["KEYS", "levee:rl:*"])
    );
}

// --- Sharing ---------------------------------------------------------------

/// Runs `n` checks of `l` on `key` from a new thread with its own
/// current-thread runtime (like a Levee worker); returns how many passed.
fn worker(
    store: Arc<RedisStore>,
    key: &'static str,
    l: Limit,
    n: usize,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut allowed = 0;
            for _ in 0..n {
                if check(&store, key, &l).await.allowed {
                    allowed += 1;
                }
            }
            allowed
        })
    })
}

#[test]
fn two_stores_share_one_limit_exactly() {
    let server = RedisServer::start();
    // Two stores: two Levee processes with one Redis.
    let a = Arc::new(store(&server));
    let b = Arc::new(store(&server));
    let period = 100 * SEC;
    avoid_window_edge(period, 5 * SEC);
    for algorithm in ALL {
        // 20 at once for every algorithm (the leaky bucket holds burst + 1).
        let burst = if algorithm == Algorithm::LeakyBucket {
            19
        } else {
            20
        };
        let l = limit(algorithm, 20, period, burst);
        let workers = [
            worker(a.clone(), "shared", l, 25),
            worker(b.clone(), "shared", l, 25),
            worker(a.clone(), "shared", l, 25),
            worker(b.clone(), "shared", l, 25),
        ];
        let allowed: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(allowed, 20, "{algorithm:?}");
    }
}

#[test]
fn one_store_serves_many_runtimes_at_once() {
    let server = RedisServer::start();
    let store = Arc::new(store(&server));
    let l = limit(Algorithm::SlidingLog, 40, 100 * SEC, 0);
    let workers: Vec<_> = (0..4)
        .map(|_| worker(store.clone(), "many", l, 50))
        .collect();
    let allowed: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(allowed, 40);
    assert_eq!(store.errors(), 0);
}

// --- Scripts ---------------------------------------------------------------

#[tokio::test]
async fn scripts_are_reloaded_after_script_flush() {
    let server = RedisServer::start();
    let store = Arc::new(store(&server));
    let l = limit(Algorithm::SlidingLog, 100, 100 * SEC, 0);
    assert_eq!(check(&store, "flush", &l).await.remaining, 99);
    let flushed = store.command(&[b"SCRIPT", b"FLUSH"]).await.unwrap();
    assert_eq!(flushed, Reply::Okay);
    // The next call meets NOSCRIPT, loads the script and runs it once.
    assert_eq!(check(&store, "flush", &l).await.remaining, 98);
    // Many at once, pipelined, after another flush: each runs exactly once.
    server.query(&["SCRIPT", "FLUSH"]);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { check(&store, "flush", &l).await.allowed })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap());
    }
    assert_eq!(check(&store, "flush", &l).await.remaining, 77);
    // Every algorithm recovers.
    server.query(&["SCRIPT", "FLUSH"]);
    for algorithm in ALL {
        let l = limit(algorithm, 10, 10 * SEC, 10);
        assert!(
            check(&store, "flush-all", &l).await.allowed,
            "{algorithm:?}"
        );
    }
    assert_eq!(store.errors(), 0);
}

// --- Failure ---------------------------------------------------------------

#[tokio::test]
async fn a_dead_redis_fails_fast_and_a_restarted_one_is_used_again() {
    let mut server = RedisServer::start();
    let timeout = 100 * MS;
    let store = RedisStore::new(&server.url(), timeout).unwrap();
    let l = limit(Algorithm::TokenBucket, 1000, SEC, 1000);
    assert!(check(&store, "down", &l).await.allowed);
    assert!(store.is_up());
    assert_eq!(store.errors(), 0);

    server.kill();
    let start = Instant::now();
    let e = store.check(b"down", &l, 1).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    assert!(took < timeout + 300 * MS, "first failure took {took:?}");
    assert!(!store.is_up());
    assert!(e.to_string().contains("unavailable"), "{e}");

    // While backing off, calls fail at once without trying to connect.
    for _ in 0..100 {
        let start = Instant::now();
        let e = store.check(b"down", &l, 1).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
        assert!(start.elapsed() < 50 * MS, "{:?}", start.elapsed());
    }
    assert!(store.errors() >= 101, "{}", store.errors());

    server.restart();
    let back = poll_until(10 * SEC, || async {
        store.check(b"down", &l, 1).await.is_ok()
    })
    .await;
    assert!(back, "the store did not reconnect");
    assert!(store.is_up());
    // The restarted Redis has no scripts and no state: both come back.
    assert!(check(&store, "down", &l).await.allowed);
}

/// Polls the async `cond` every 20 ms until it holds or `timeout` passes.
async fn poll_until<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut cond: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(20 * MS).await;
    }
}

#[tokio::test]
async fn an_unreachable_redis_never_blocks_a_call() {
    // Nothing listens on this port.
    let port = redis_support::free_port();
    let store = RedisStore::new(&format!("redis://127.0.0.1:{port}"), 100 * MS).unwrap();
    let l = limit(Algorithm::FixedWindow, 10, SEC, 0);
    for _ in 0..20 {
        let start = Instant::now();
        let e = store.check(b"k", &l, 1).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
        assert!(start.elapsed() < 400 * MS, "{:?}", start.elapsed());
    }
    assert!(!store.is_up());
    assert_eq!(store.errors(), 20);
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_timeout() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let timeout = 100 * MS;
    let store = RedisStore::new(&url, timeout).unwrap();
    let l = limit(Algorithm::SlidingLog, 10, SEC, 0);
    for _ in 0..5 {
        let start = Instant::now();
        let e = store.check(b"k", &l, 1).await.unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(e, StoreError::Timeout | StoreError::Unavailable(_)),
            "{e}"
        );
        assert!(took < timeout + 300 * MS, "{took:?}");
    }
    drop(listener);
}

#[tokio::test]
async fn a_stalled_redis_is_taken_for_down_then_recovers() {
    let server = RedisServer::start();
    let timeout = 100 * MS;
    let store = RedisStore::new(&server.url(), timeout).unwrap();
    let l = limit(Algorithm::TokenBucket, 1000, SEC, 1000);
    assert!(check(&store, "stall", &l).await.allowed);

    server.pause();
    let start = Instant::now();
    let e = store.check(b"stall", &l, 1).await.unwrap_err();
    assert_eq!(e, StoreError::Timeout);
    assert!(
        start.elapsed() < timeout + 300 * MS,
        "{:?}",
        start.elapsed()
    );
    // Within a few timeouts the connection is given up and calls fail fast.
    let mut calls = 0;
    let down = loop {
        calls += 1;
        let start = Instant::now();
        let r = store.check(b"stall", &l, 1).await;
        assert!(r.is_err());
        assert!(
            start.elapsed() < timeout + 300 * MS,
            "{:?}",
            start.elapsed()
        );
        if !store.is_up() || calls > 100 {
            break !store.is_up();
        }
    };
    assert!(down, "still up after {calls} calls");

    server.resume();
    let back = poll_until(10 * SEC, || async {
        store.check(b"stall", &l, 1).await.is_ok()
    })
    .await;
    assert!(back, "the store did not recover");
    assert!(store.is_up());
}

#[tokio::test]
async fn password_and_database_from_the_url() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let port = server.port();
    let store = RedisStore::new(&format!("redis://:s3cret@127.0.0.1:{port}/2"), SLOW_OK).unwrap();
    let l = limit(Algorithm::FixedWindow, 10, 10 * SEC, 0);
    assert!(check(&store, "auth", &l).await.allowed);
    let key = key_of(Algorithm::FixedWindow, "auth");
    let exists = store.command(&[b"EXISTS", key.as_bytes()]).await.unwrap();
    assert_eq!(exists, Reply::Int(1));
    let db0 = store.command(&[b"SELECT", b"0"]).await.unwrap();
    assert_eq!(db0, Reply::Okay);
    assert_eq!(
        store.command(&[b"EXISTS", key.as_bytes()]).await.unwrap(),
        Reply::Int(0)
    );

    let wrong = RedisStore::new(&format!("redis://:nope@127.0.0.1:{port}"), SLOW_OK).unwrap();
    let e = wrong.check(b"auth", &l, 1).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Unavailable(m) if m.contains("AUTH failed")),
        "{e}"
    );
    assert!(!wrong.is_up());
}

#[test]
fn bad_urls_are_refused_up_front() {
    let e = RedisStore::new("http://127.0.0.1:6379", SLOW_OK).unwrap_err();
    assert!(e.to_string().contains("redis://"), "{e}");
    let e = RedisStore::new("redis://:pw@host:70000", SLOW_OK).unwrap_err();
    assert!(
        e.to_string().contains("port") && !e.to_string().contains("pw"),
        "{e}"
    );
}

// --- Throughput ------------------------------------------------------------

#[test]
fn throughput() {
    const N: usize = 20_000;
    let server = RedisServer::start();
    let store = Arc::new(store(&server));
    let l = limit(Algorithm::TokenBucket, 1_000_000, SEC, 1_000_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // One caller, one check at a time: latency-bound.
    let start = Instant::now();
    runtime.block_on(async {
        for i in 0..N {
            let key = format!("seq-{}", i % 1000);
            assert!(check(&store, &key, &l).await.allowed);
        }
    });
    let sequential = N as f64 / start.elapsed().as_secs_f64();

    // Two worker threads (current-thread runtimes), 64 tasks each: the
    // client pipelines.
    let start = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let tasks: Vec<_> = (0..64)
                        .map(|j| {
                            let store = store.clone();
                            tokio::spawn(async move {
                                for i in 0..N / 128 {
                                    let key = format!("par-{t}-{j}-{}", i % 8);
                                    assert!(check(&store, &key, &l).await.allowed);
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let concurrent = N as f64 / start.elapsed().as_secs_f64();
    println!(
        "redis rate-limit store: {N} checks: {sequential:.0} checks/s sequential, \
         {concurrent:.0} checks/s concurrent (2 threads x 64 tasks)"
    );
    assert_eq!(store.errors(), 0);
}

// --- Outage logging --------------------------------------------------------

/// Log lines of every test in this binary (the client thread logs, so a
/// thread-local subscriber would not see them).
fn captured_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
    .clone()
}

struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_outage_is_logged_once_and_so_is_the_recovery() {
    let logs = captured_logs();
    let mut server = RedisServer::start();
    let store = RedisStore::new(&server.url(), 100 * MS).unwrap();
    let l = limit(Algorithm::TokenBucket, 1000, SEC, 1000);
    assert!(check(&store, "log", &l).await.allowed);
    server.kill();
    // Many failures over several reconnect attempts (backoff 100, 200 ms).
    let start = Instant::now();
    while start.elapsed() < 500 * MS {
        assert!(store.check(b"log", &l, 1).await.is_err());
        tokio::time::sleep(5 * MS).await;
    }
    server.restart();
    let back = poll_until(10 * SEC, || async {
        store.check(b"log", &l, 1).await.is_ok()
    })
    .await;
    assert!(back);
    for _ in 0..10 {
        assert!(check(&store, "log", &l).await.allowed);
    }
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let ours = format!("redis://127.0.0.1:{}", server.port());
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&ours)).collect();
    let down: Vec<_> = lines.iter().filter(|l| l.contains("unreachable")).collect();
    let up: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("reachable again"))
        .collect();
    assert_eq!(down.len(), 1, "{lines:#?}");
    assert!(down[0].contains("WARN"), "{}", down[0]);
    assert_eq!(up.len(), 1, "{lines:#?}");
    assert!(up[0].contains("INFO"), "{}", up[0]);
}

// --- Unix sockets, ACL users, TLS -------------------------------------------

#[tokio::test]
async fn a_unix_socket_and_an_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("redis.sock");
    let sock = sock.to_str().unwrap();
    // An ACL user that may only touch Levee's keys; the default user needs
    // a password nobody gives.
    let server = RedisServer::start_with(&[
        "--unixsocket",
        sock,
        "--unixsocketperm",
        "700",
        // One argument per word, as in redis.conf's `user` line.
        "--user",
        "levee",
        "on",
        ">s3cret",
        "~levee:rl:*",
        "+@all",
        "--requirepass",
        "not-this-one",
    ]);
    let store = RedisStore::new(&format!("unix://{sock}?user=levee&pass=s3cret"), SLOW_OK).unwrap();
    let l = limit(Algorithm::FixedWindow, 3, 100 * SEC, 0);
    let allowed = {
        let mut n = 0;
        for _ in 0..5 {
            n += usize::from(check(&store, "acl", &l).await.allowed);
        }
        n
    };
    assert_eq!(allowed, 3);
    // Authenticated as `levee`, not as the default user: other keys are
    // refused by the ACL.
    let e = store.command(&[b"SET", b"other", b"1"]).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Protocol(m) if m.to_lowercase().contains("noperm")),
        "{e}"
    );
    assert!(store.is_up(), "a refused command is not an outage");
    let key = key_of(Algorithm::FixedWindow, "acl");

    // A wrong password is an outage, logged as an AUTH failure.
    let wrong = RedisStore::new(&format!("unix://{sock}?user=levee&pass=nope"), SLOW_OK).unwrap();
    let e = wrong.check(b"acl", &l, 1).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Unavailable(m) if m.contains("AUTH failed")),
        "{e}"
    );
    // Over TCP the same user works too.
    let tcp = RedisStore::new(
        &format!("redis://levee:s3cret@127.0.0.1:{}", server.port()),
        SLOW_OK,
    )
    .unwrap();
    let exists = tcp.command(&[b"EXISTS", key.as_bytes()]).await.unwrap();
    assert_eq!(exists, Reply::Int(1));
    assert!(!check(&tcp, "acl", &l).await.allowed);
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made with
/// `openssl` in `dir`; returns (ca, cert, key) paths.
fn make_certs(dir: &std::path::Path) -> [String; 3] {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=levee test CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("server.pem"),
    ]);
    [p("ca.pem"), p("server.pem"), p("server.key")]
}

#[tokio::test]
async fn tls_with_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = make_certs(dir.path());
    let tls_port = redis_support::free_port().to_string();
    // Plain TCP stays open for the test's own queries.
    let server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let open = |url: &str, ca: Option<&str>| {
        RedisStore::open(
            Target::Single(url.parse().unwrap()),
            Options {
                timeout: SLOW_OK,
                tls_ca_file: ca.map(Into::into),
            },
        )
        .unwrap()
    };
    let l = limit(Algorithm::TokenBucket, 10, 100 * SEC, 2);
    for host in ["localhost", "127.0.0.1"] {
        let store = open(&format!("rediss://{host}:{tls_port}"), Some(&ca));
        let key = format!("tls-{host}");
        assert!(check(&store, &key, &l).await.allowed);
        assert!(check(&store, &key, &l).await.allowed);
        assert!(!check(&store, &key, &l).await.allowed);
        // Written in the same Redis the plain port serves.
        let k = key_of(Algorithm::TokenBucket, &key);
        assert_eq!(server.query(&["EXISTS", &k]).int(), 1);
    }
    // Without the CA (the system's roots), the certificate is not trusted.
    let untrusted = open(&format!("rediss://localhost:{tls_port}"), None);
    let e = untrusted.check(b"tls", &l, 1).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    assert!(!untrusted.is_up());
    // Plain text to the TLS port is no Redis either.
    let plain = open(&format!("redis://127.0.0.1:{tls_port}"), None);
    assert!(plain.check(b"tls", &l, 1).await.is_err());
}

// --- Redis Cluster ---------------------------------------------------------

#[tokio::test]
async fn a_cluster_spreads_the_keys_and_outlives_a_dead_master() {
    let logs = captured_logs();
    let mut cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    // One seed is enough: the others are learned from the cluster.
    let timeout = 300 * MS;
    let store = RedisStore::cluster(&urls[..1], timeout).unwrap();
    let l = limit(Algorithm::SlidingLog, 5, 100 * SEC, 0);
    let keys: Vec<String> = (0..24).map(|i| format!("user-{i}")).collect();
    for k in &keys {
        let mut allowed = 0;
        for _ in 0..7 {
            allowed += usize::from(check(&store, k, &l).await.allowed);
        }
        assert_eq!(allowed, 5, "{k}");
    }
    // Each key lives on the master of its slot, and all three have some.
    let owners: Vec<usize> = keys
        .iter()
        .map(|k| cluster.owner(&key_of(Algorithm::SlidingLog, k)))
        .collect();
    for node in 0..3 {
        assert!(owners.contains(&node), "no key on node {node}: {owners:?}");
    }
    for (k, &o) in keys.iter().zip(&owners) {
        let zset = cluster.nodes[o].query(&["ZCARD", &key_of(Algorithm::SlidingLog, k)]);
        assert_eq!(zset.int(), 5, "{k} on node {o}");
    }
    assert_eq!(store.errors(), 0);

    // A master dies (no replica takes over): its keys fail within the
    // timeout, the others keep their counts and keep working.
    cluster.nodes[0].kill();
    let fresh = |i: usize| format!("fresh-{i}");
    for round in 0..3 {
        for (k, &o) in keys.iter().zip(&owners) {
            let start = Instant::now();
            let r = store.check(k.as_bytes(), &l, 1).await;
            let took = start.elapsed();
            assert!(took < timeout + 300 * MS, "{k}: {took:?}");
            if o == 0 {
                assert!(r.is_err(), "round {round}, {k} on the dead node: {r:?}");
            } else {
                let d = r.unwrap_or_else(|e| panic!("round {round}, {k} on node {o}: {e}"));
                assert!(!d.allowed, "{k} kept its count");
            }
        }
        for i in 0..10 {
            let k = fresh(round * 10 + i);
            let o = cluster.owner(&key_of(Algorithm::SlidingLog, &k));
            let r = store.check(k.as_bytes(), &l, 1).await;
            assert_eq!(r.is_ok(), o != 0, "{k} on node {o}: {r:?}");
        }
    }
    assert!(!store.is_up());
    assert!(store.errors() > 0);

    // Back (empty: no persistence): its keys work again, from scratch.
    cluster.nodes[0].restart();
    let on_dead = keys.iter().zip(&owners).find(|(_, o)| **o == 0).unwrap().0;
    let back = poll_until(30 * SEC, || async {
        store.check(on_dead.as_bytes(), &l, 1).await.is_ok()
    })
    .await;
    assert!(back, "the restarted master's slots never came back");
    // Up again (logged once) when no call has failed for CLUSTER_QUIET.
    let up = poll_until(10 * SEC, || async {
        store.check(on_dead.as_bytes(), &l, 0).await.is_ok() && store.is_up()
    })
    .await;
    assert!(up, "still down");
    // One outage, however the dead and the live masters' calls interleaved:
    // one warning, one recovery.
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let ours = format!("redis cluster {}", urls[0]);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&ours)).collect();
    let down = lines.iter().filter(|l| l.contains("unreachable")).count();
    let up = lines
        .iter()
        .filter(|l| l.contains("reachable again"))
        .count();
    assert_eq!((down, up), (1, 1), "{lines:#?}");
}

/// The master's `INFO replication` names a replica whose offset equals the
/// master's own.
fn replica_caught_up(master: &RedisServer) -> bool {
    let Ok(redis_support::Value::Str(info)) = master.try_query(&["INFO", "replication"]) else {
        return false;
    };
    let field = |line: &str, key: &str| -> Option<i64> {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(key)?.trim().parse().ok())
    };
    let Some(offset) = info.lines().find_map(|l| field(l, "master_repl_offset:")) else {
        return false;
    };
    info.lines()
        .filter(|l| l.starts_with("slave"))
        .any(|l| field(l.split_once(':').map_or("", |(_, v)| v), "offset=") == Some(offset))
}

#[tokio::test]
async fn a_replica_takes_over_a_dead_master_and_checks_resume() {
    // Three masters, one replica each; node timeout 1 s.
    let mut cluster = RedisCluster::start_with_replicas(3, 1);
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let timeout = 300 * MS;
    let store = RedisStore::cluster(&urls, timeout).unwrap();
    let l = limit(Algorithm::SlidingLog, 1000, 100 * SEC, 0);
    let key = "failover";
    for _ in 0..10 {
        assert!(check(&store, key, &l).await.allowed);
    }
    let redis_key = key_of(Algorithm::SlidingLog, key);
    let master = cluster.owner(&redis_key);
    // Replication is asynchronous: the count is the replica's only once it
    // has acknowledged the writes (WAIT), else a kill may lose the last ones.
    // WAIT answers how many replicas acknowledged: ask again until one has
    // (under load a replica may be re-syncing), and also wait until its
    // offset has caught up with the master's.
    let node = &cluster.nodes[master];
    assert!(
        wait_until(20 * SEC, || {
            matches!(node.try_query(&["WAIT", "1", "1000"]), Ok(redis_support::Value::Int(n)) if n >= 1)
                && replica_caught_up(node)
        }),
        "no replica acknowledged the writes in 20 s: {:?}",
        node.try_query(&["INFO", "replication"])
    );
    cluster.nodes[master].kill();
    let killed = Instant::now();
    // While no replica has taken over, the checks fail within the timeout;
    // then the replica serves the slots, with the count it had replicated.
    let mut failed = 0;
    let d = loop {
        let start = Instant::now();
        match store.check(key.as_bytes(), &l, 1).await {
            Ok(d) => break d,
            Err(_) => failed += 1,
        }
        assert!(
            start.elapsed() < timeout + 300 * MS,
            "{:?}",
            start.elapsed()
        );
        assert!(killed.elapsed() < 30 * SEC, "no failover in 30 s");
        tokio::time::sleep(20 * MS).await;
    };
    println!(
        "redis cluster failover: checks failed for {:?} ({failed} calls), then the replica answered",
        killed.elapsed()
    );
    assert!(d.allowed);
    assert_eq!(d.remaining, 1000 - 11, "the replica had the count");
    // The nodes' views converge by gossip: wait for them to agree.
    assert!(
        wait_until(10 * SEC, || cluster.owner(&redis_key) != master),
        "the cluster still names the dead master"
    );
}
