//! HTTP/2 from clients (h2c with prior knowledge, `[listeners.http2]`):
//! every stream is a request through the whole pipeline, balanced per
//! stream; the limits hold against abuse written as raw frames (rapid
//! reset, CONTINUATION flood, PING and SETTINGS floods), each costing the
//! offender its connection with GOAWAY ENHANCE_YOUR_CALM while other
//! clients are served (another client's p99 is measured during a
//! rapid-reset flood), a malformed frame ends the connection, a client that
//! never opens its window holds bounded memory; idle connections and a
//! shutdown end with GOAWAY after open streams finish.

#[path = "support/h2_endpoint.rs"]
mod h2_endpoint;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ENABLED: &str = "http2 = { enabled = true }";

fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// One HTTP/2 frame: 9-byte header (RFC 9113 §4.1) and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A GET / header block in HPACK from the static table only:
/// `:method GET`, `:scheme http`, `:path /`, and `:authority` as a literal
/// without indexing (RFC 7541 §6.2.2, name index 1).
fn get_block() -> Vec<u8> {
    let authority = b"localhost";
    let mut b = vec![0x82, 0x86, 0x84, 0x01, authority.len() as u8];
    b.extend_from_slice(authority);
    b
}

/// A raw HTTP/2 client connection: the preface and an empty SETTINGS sent.
async fn raw_h2(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.expect("preface");
    s
}

/// Reads frames until a GOAWAY (its error code) or the end of the
/// connection (`None`), within `limit`.
async fn read_goaway(s: &mut TcpStream, limit: Duration) -> Option<u32> {
    let until = Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let (kind, payload) = next_frame(s, left).await?;
        if kind == GOAWAY && payload.len() >= 8 {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
    }
}

/// The next frame's type and payload, within `limit`.
async fn next_frame(s: &mut TcpStream, limit: Duration) -> Option<(u8, Vec<u8>)> {
    let read = async {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.ok()?;
        Some((head[3], payload))
    };
    tokio::time::timeout(limit, read).await.ok().flatten()
}

/// Waits until a connection closed with ENHANCE_YOUR_CALM was counted (the
/// GOAWAY reaches the client before the connection's end is counted).
async fn calmed(levee: &Levee) -> bool {
    wait_until_async(Duration::from_secs(10), || {
        levee
            .metric("levee_errors_total", &[("kind", "http2_enhance_your_calm")])
            .is_some_and(|n| n >= 1.0)
    })
    .await
}

/// `GET /` over HTTP/2 through `listen`: the status and the backend.
async fn get_via(client: &reqwest::Client, listen: SocketAddr) -> (u16, String) {
    let r = client
        .get(format!("http://{listen}/"))
        .send()
        .await
        .expect("request over HTTP/2");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let backend = r.headers()["x-backend"].to_str().unwrap_or("").to_owned();
    (r.status().as_u16(), backend)
}

#[tokio::test]
async fn streams_of_one_connection_are_balanced_and_counted_per_request() {
    let backends = [
        Backend::start("b1"),
        Backend::start("b2"),
        Backend::start("b3"),
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[ENABLED])
        .cluster_with("app", &addrs, &["balance = \"round_robin\""])
        .route("all", "app");
    let levee = Levee::start(&cfg.build());
    let client = h2_client();

    // 300 requests, 30 at a time, all on the one connection reqwest keeps.
    let mut answered = Vec::new();
    for _ in 0..10 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..30 {
            let client = client.clone();
            batch.spawn(async move { get_via(&client, listen).await });
        }
        answered.extend(batch.join_all().await);
    }
    assert!(answered.iter().all(|(status, _)| *status == 200));
    for b in &backends {
        let n = answered.iter().filter(|(_, name)| name == b.name()).count();
        assert!((90..=110).contains(&n), "{} answered {n} of 300", b.name());
    }
    // Per stream in the metrics, as for HTTP/1 requests.
    let counted = levee
        .metric("levee_requests_total", &[("route", "all")])
        .unwrap_or(0.0);
    assert_eq!(counted, 300.0);
    // One client connection: the listener accepted one.
    let accepted = levee
        .metric("levee_connections_total", &[("listener", "main")])
        .unwrap_or(0.0);
    assert_eq!(accepted, 1.0);
}

#[tokio::test]
async fn off_by_default_the_preface_is_answered_http_1_1_required() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let levee = Levee::start(&ConfigBuilder::simple(listen, &[b.addr()]).build());
    let mut s = raw_h2(listen).await;
    assert_eq!(
        read_goaway(&mut s, Duration::from_secs(10)).await,
        Some(0xd)
    );
    assert_eq!(b.requests(), 0);
    drop(levee);
}

#[tokio::test]
async fn rapid_reset_costs_the_offender_its_connection_not_others_their_service() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[ENABLED])
        .cluster("app", &[b.addr()])
        .route("all", "app");
    let levee = Levee::start(&cfg.build());
    let client = h2_client();
    assert_eq!(get_via(&client, listen).await.0, 200);

    // HEADERS then RST_STREAM(CANCEL) on stream after stream, written in
    // batches without waiting for anything: at most 5000 streams.
    let mut s = raw_h2(listen).await;
    let block = get_block();
    let started = Instant::now();
    let mut sent = 0u32;
    let mut closed = false;
    'flood: for batch in 0..50u32 {
        let mut bytes = Vec::new();
        for i in 0..100u32 {
            let id = 1 + 2 * (batch * 100 + i);
            bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
            bytes.extend(frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
        }
        if s.write_all(&bytes).await.is_err() {
            closed = true;
            break 'flood;
        }
        sent += 100;
    }
    let code = read_goaway(&mut s, Duration::from_secs(10)).await;
    assert_eq!(
        code,
        Some(ENHANCE_YOUR_CALM),
        "after {sent} reset streams (write failed: {closed}) in {:?}",
        started.elapsed()
    );
    // The offender is counted; another client is still served.
    assert!(calmed(&levee).await, "the flood was not counted");
    assert_eq!(get_via(&client, listen).await.0, 200);
    // Far fewer requests reached the backend than streams were opened.
    assert!(b.requests() < 200, "{} reached the backend", b.requests());
}

/// 99th percentile of `n` sequential GETs over `client`'s connection; all
/// must be answered 200.
async fn p99_of_gets(client: &reqwest::Client, listen: SocketAddr, n: usize) -> Duration {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        assert_eq!(get_via(client, listen).await.0, 200);
        took.push(started.elapsed());
    }
    took.sort();
    took[n * 99 / 100]
}

#[tokio::test]
async fn another_clients_p99_holds_during_a_rapid_reset_flood() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[ENABLED])
        .cluster("app", &[b.addr()])
        .route("all", "app");
    let levee = Levee::start(&cfg.build());
    let client = h2_client();
    assert_eq!(get_via(&client, listen).await.0, 200);
    let quiet = p99_of_gets(&client, listen, 200).await;

    // Two flooders, each opening connection after connection (at most
    // 300) of HEADERS + RST_STREAM pairs until it is sent away.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooders = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let stop = stop.clone();
        flooders.spawn(async move {
            let block = get_block();
            let mut connections = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && connections < 300 {
                connections += 1;
                let mut s = raw_h2(listen).await;
                for batch in 0..10u32 {
                    let mut bytes = Vec::new();
                    for i in 0..100u32 {
                        let id = 1 + 2 * (batch * 100 + i);
                        bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
                        bytes.extend(frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
                    }
                    if s.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                let _ = read_goaway(&mut s, Duration::from_secs(2)).await;
            }
            connections
        });
    }
    assert!(calmed(&levee).await, "the flood did not start");
    let flooded = p99_of_gets(&client, listen, 200).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let connections: u32 = flooders.join_all().await.into_iter().sum();
    // Generous (CI machines are shared): the flood may cost the other
    // client some latency, not its service.
    let bound = (quiet * 5).max(quiet + Duration::from_millis(250));
    assert!(
        flooded <= bound,
        "p99 {flooded:?} during the flood ({connections} flood connections) vs {quiet:?} without"
    );
}

#[tokio::test]
async fn a_continuation_flood_is_cut_short_with_enhance_your_calm() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[ENABLED])
        .cluster("app", &[b.addr()])
        .route("all", "app");
    let levee = Levee::start(&cfg.build());
    let mut s = raw_h2(listen).await;
    // A header block that never ends: HEADERS without END_HEADERS, then up
    // to 1000 CONTINUATION frames of 7 valid header fields each (`x-a:
    // aaa…`, literal without indexing, 132 bytes), none the last.
    let mut bytes = frame(HEADERS, END_STREAM, 1, &get_block());
    let mut field = vec![0x00, 0x03, b'x', b'-', b'a', 126];
    field.extend([b'a'; 126]);
    let filler = field.repeat(7);
    for _ in 0..1000 {
        bytes.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    // The server closes mid-write: the write may fail, the GOAWAY is read.
    let _ = s.write_all(&bytes).await;
    assert_eq!(
        read_goaway(&mut s, Duration::from_secs(10)).await,
        Some(ENHANCE_YOUR_CALM)
    );
    assert!(calmed(&levee).await, "the flood was not counted");
    assert_eq!(b.requests(), 0);
}

/// Floods `kind` frames (up to 5000, written in batches without reading)
/// on one raw connection while another client keeps requesting: the
/// offender gets GOAWAY ENHANCE_YOUR_CALM (Levee allows a burst of 1000
/// PING/SETTINGS frames, then 100 a second), is counted, and every request
/// of the other client is answered.
async fn control_flood_costs_the_offender_its_connection(kind: u8, payload: &[u8]) {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[ENABLED])
        .cluster("app", &[b.addr()])
        .route("all", "app");
    let levee = Levee::start(&cfg.build());
    let client = h2_client();
    assert_eq!(get_via(&client, listen).await.0, 200);
    let other = tokio::spawn({
        let client = client.clone();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..20 {
                statuses.push(get_via(&client, listen).await.0);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        }
    });
    let mut s = raw_h2(listen).await;
    let batch = frame(kind, 0, 0, payload).repeat(100);
    let mut sent = 0;
    for _ in 0..50 {
        if s.write_all(&batch).await.is_err() {
            break;
        }
        sent += 100;
    }
    assert_eq!(
        read_goaway(&mut s, Duration::from_secs(10)).await,
        Some(ENHANCE_YOUR_CALM),
        "after {sent} frames"
    );
    assert!(calmed(&levee).await, "the flood was not counted");
    let statuses = other.await.expect("the other client");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(get_via(&client, listen).await.0, 200);
}

#[tokio::test]
async fn a_ping_flood_costs_the_offender_its_connection_not_others_their_service() {
    control_flood_costs_the_offender_its_connection(PING, &[7; 8]).await;
}

#[tokio::test]
async fn a_settings_flood_costs_the_offender_its_connection_not_others_their_service() {
    // SETTINGS_ENABLE_PUSH = 0, a valid setting, again and again.
    control_flood_costs_the_offender_its_connection(SETTINGS, &[0, 2, 0, 0, 0, 0]).await;
}

#[tokio::test]
async fn pings_within_the_budget_keep_the_connection_and_a_malformed_frame_ends_it() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[ENABLED])
        .cluster("app", &[b.addr()])
        .route("all", "app");
    let levee = Levee::start(&cfg.build());
    // 300 PINGs (under the burst), each answered, then a request is served
    // on the same connection.
    let mut s = raw_h2(listen).await;
    s.write_all(&frame(PING, 0, 0, &[1; 8]).repeat(300))
        .await
        .expect("pings");
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block()))
        .await
        .expect("request");
    let (mut acks, mut answered) = (0, false);
    while let Some((kind, _)) = next_frame(&mut s, Duration::from_secs(10)).await {
        match kind {
            PING => acks += 1,
            HEADERS => {
                answered = true;
                break;
            }
            _ => {}
        }
    }
    assert_eq!((acks, answered), (300, true));
    assert_eq!(b.requests(), 1);
    // A PING of 7 bytes instead of 8 is a connection error: GOAWAY
    // PROTOCOL_ERROR (what `h2` sends; RFC 9113 §6.7 names
    // FRAME_SIZE_ERROR), counted.
    s.write_all(&frame(PING, 0, 0, &[1; 7]))
        .await
        .expect("bad ping");
    assert_eq!(
        read_goaway(&mut s, Duration::from_secs(10)).await,
        Some(0x1)
    );
    assert!(
        wait_until_async(Duration::from_secs(10), || levee
            .metric("levee_errors_total", &[("kind", "http2_protocol_error")])
            .is_some_and(|n| n >= 1.0))
        .await
    );
}

#[tokio::test]
async fn a_client_that_never_opens_its_window_holds_bounded_memory() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[ENABLED])
        .cluster("app", &[b.addr()])
        .route("all", "app");
    let levee = Levee::start(&cfg.build());
    let client = h2_client();
    assert_eq!(get_via(&client, listen).await.0, 200);
    let before = levee.rss_kib().expect("rss");
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: Levee may send no DATA on any
    // stream; the client asks for 64 MiB and never sends WINDOW_UPDATE.
    let mut s = TcpStream::connect(listen).await.expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    let path = b"/download?bytes=67108864";
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    hello.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
    s.write_all(&hello).await.expect("request");
    let mut head = false;
    while let Some((kind, _)) = next_frame(&mut s, Duration::from_secs(10)).await {
        assert_ne!(kind, 0x0, "DATA sent into a zero window");
        if kind == HEADERS {
            head = true;
            break;
        }
    }
    assert!(head, "no response head");
    // For two seconds the endpoint's body waits: Levee holds what its
    // send buffer allows, not the 64 MiB, and serves another client.
    let mut grown = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        grown = grown.max(levee.rss_kib().unwrap_or(before).saturating_sub(before));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(grown < 16 * 1024, "RSS grew {grown} KiB");
    assert_eq!(get_via(&client, listen).await.0, 200);
    assert!(
        next_frame(&mut s, Duration::from_millis(200))
            .await
            .is_none_or(|(k, _)| k != 0x0),
        "DATA sent into a zero window"
    );
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_refused_and_the_connection_serves_on() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with(
            "main",
            listen,
            &["http2 = { enabled = true, max_header_list_size = \"4KiB\" }"],
        )
        .cluster("app", &[b.addr()])
        .route("all", "app");
    let _levee = Levee::start(&cfg.build());
    let client = h2_client();
    let big = "x".repeat(8 * 1024);
    let r = client
        .get(format!("http://{listen}/"))
        .header("x-big", big)
        .send()
        .await;
    // Refused before the pipeline: 431 from the server or a stream error.
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16(), 431);
    }
    assert_eq!(b.requests(), 0);
    assert_eq!(get_via(&client, listen).await.0, 200);
}

#[tokio::test]
async fn a_connection_without_streams_gets_goaway_after_the_idle_timeout() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[ENABLED, "idle_timeout = \"500ms\""])
        .cluster("app", &[b.addr()])
        .route("all", "app");
    let _levee = Levee::start(&cfg.build());
    let mut s = raw_h2(listen).await;
    let started = Instant::now();
    // NO_ERROR: a graceful end, not a failure.
    assert_eq!(read_goaway(&mut s, Duration::from_secs(10)).await, Some(0));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "GOAWAY after {took:?}"
    );
    // Then closed: the raw client never acknowledges, Levee does not wait
    // for it for long.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "still open after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_closed() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with(
            "main",
            listen,
            &["http2 = { enabled = true, keepalive_interval = \"200ms\", keepalive_timeout = \"300ms\" }"],
        )
        .cluster("app", &[b.addr()])
        .route("all", "app");
    let levee = Levee::start(&cfg.build());
    let mut s = raw_h2(listen).await;
    // The raw client never answers PING: the connection ends (read to EOF).
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(ended.is_ok(), "still open after {:?}", started.elapsed());
    assert!(
        wait_until_async(Duration::from_secs(5), || levee
            .metric("levee_errors_total", &[("kind", "http2_keepalive_timeout")])
            .is_some_and(|n| n >= 1.0))
        .await
    );
}

#[tokio::test]
async fn shutdown_lets_open_streams_finish_and_refuses_new_ones() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[ENABLED])
        .cluster("app", &[b.addr()])
        .route("all", "app");
    let mut levee = Levee::start(&cfg.build());
    let client = h2_client();
    assert_eq!(get_via(&client, listen).await.0, 200);
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .get(format!("http://{listen}/?delay=1s"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    assert!(wait_until_async(Duration::from_secs(10), || b.in_flight() == 1).await);
    // Another client, connected and idle, is told to go away at once.
    let mut idle = raw_h2(listen).await;
    assert!(
        next_frame(&mut idle, Duration::from_secs(10))
            .await
            .map(|f| f.0)
            == Some(SETTINGS),
        "the server's preface"
    );
    assert!(levee.sigterm());
    assert_eq!(
        read_goaway(&mut idle, Duration::from_secs(10)).await,
        Some(0)
    );
    let status = slow.await.expect("task");
    assert_eq!(status.ok(), Some(200));
    assert!(levee.wait_exit(Duration::from_secs(20)).is_some());
}

#[test]
fn bad_http2_settings_are_refused_with_their_place() {
    let cfg = ConfigBuilder::new()
        .listener_with(
            "main",
            free_addr(),
            &["http2 = { enabled = true, max_frame_size = 100 }"],
        )
        .cluster("app", &[free_addr()])
        .route("all", "app");
    let (code, _, err) = Levee::check(&cfg.build());
    assert_ne!(code, 0);
    assert!(err.contains("listeners[0].http2.max_frame_size"), "{err}");
    // The HTTP/2 pool's caps to endpoints: refused with their place.
    let cfg = ConfigBuilder::new()
        .listener("main", free_addr())
        .cluster_with(
            "app",
            &[free_addr()],
            &["protocol = \"h2c\"", "http2 = { max_connections = 0 }"],
        )
        .route("all", "app");
    let (code, _, err) = Levee::check(&cfg.build());
    assert_ne!(code, 0);
    assert!(err.contains("clusters[0].http2.max_connections"), "{err}");
    assert!(err.contains(".toml:"), "file:line:column: {err}");
}

/// `protocol = "h2c"`: requests go to the endpoints over HTTP/2,
/// multiplexed on few connections, balanced per request.
fn h2c_cluster(backends: &[Backend], listen: SocketAddr) -> Levee {
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[ENABLED])
        .cluster_with(
            "app",
            &addrs,
            &["balance = \"round_robin\"", "protocol = \"h2c\""],
        )
        .route("all", "app")
        .set("server", "workers = 2");
    Levee::start(&cfg.build())
}

#[tokio::test]
async fn h2c_endpoints_are_multiplexed_and_balanced_per_request() {
    let backends = [Backend::start("b1"), Backend::start("b2")];
    let listen = free_addr();
    let levee = h2c_cluster(&backends, listen);
    // HTTP/1.1 clients in: each gets its own connection, the endpoints
    // still see few.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let mut all = Vec::new();
    for _ in 0..5 {
        let mut batch = tokio::task::JoinSet::new();
        for i in 0..20 {
            let client = client.clone();
            batch.spawn(async move {
                let r = client
                    .post(format!("http://{listen}/echo?delay=20ms"))
                    .body(vec![b'x'; 1000 + i])
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status().as_u16(), 200);
                let bytes = r.bytes().await.expect("echo body");
                let v: serde_json::Value = serde_json::from_slice(&bytes).expect("echo json");
                assert_eq!(v["body_bytes"], 1000 + i as u64);
                v
            });
        }
        all.extend(batch.join_all().await);
    }
    assert!(
        all.iter().all(|v| v["version"] == "HTTP/2.0"),
        "{:?}",
        all[0]
    );
    for b in &backends {
        let n = all.iter().filter(|v| v["backend"] == b.name()).count();
        assert_eq!(n, 50, "{} answered {n} of 100", b.name());
        // At most one connection per worker while 20 streams fit on one.
        assert!(
            b.connections() <= 2,
            "{} saw {} connections",
            b.name(),
            b.connections()
        );
    }
    let reused = levee
        .metric("levee_upstream_requests_total", &[("connection", "reused")])
        .unwrap_or(0.0);
    assert!(reused >= 90.0, "reused {reused}");
}

#[tokio::test]
async fn h2_on_both_sides_passes_statuses_and_streams_bodies() {
    let backends = [Backend::start("b1")];
    let listen = free_addr();
    let _levee = h2c_cluster(&backends, listen);
    let client = h2_client();
    let r = client
        .get(format!("http://{listen}/status/503"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 503);
    let r = client
        .get(format!("http://{listen}/download?bytes=1000000"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let body = r.bytes().await.expect("body");
    assert_eq!(body.len(), 1_000_000);
    assert!(is_download_pattern(&body));
    assert_eq!(
        backends[0].last_request().map(|r| r.version),
        Some("HTTP/2.0".into())
    );
}

#[tokio::test]
async fn levees_own_errors_to_grpc_calls_are_grpc_statuses_and_counted() {
    let (_refusing, refusing) = refusing_addr();
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with("main", listen, &[ENABLED])
        .cluster_with(
            "app",
            &[refusing],
            &[
                "retry = { max_attempts = 1 }",
                "outlier_detection = { enabled = false }",
                r#"circuit_breaker = { consecutive_failures = 2, open_duration = "60s" }"#,
            ],
        )
        .cluster("empty", &[])
        .route_with(
            "limited",
            "app",
            &["path_prefix = \"/svc.Limited\"", "rate_limits = [\"one\"]"],
        )
        .route_with("none", "empty", &["path_prefix = \"/svc.Nowhere\""])
        .route_with("grpc", "app", &["path_prefix = \"/svc.Greeter\""])
        .raw(
            "[[rate_limit.rules]]\nname = \"one\"\nkey = [\"client_ip\"]\n\
             algorithm = \"sliding_log\"\nlimit = 1\nperiod = \"60s\"\n",
        );
    let levee = Levee::start(&cfg.build());
    let client = h2_client();
    let call = |path: &str, content_type: &str| {
        client
            .post(format!("http://{listen}{path}"))
            .header("content-type", content_type)
            .header("te", "trailers")
            // One empty gRPC message: not compressed, length 0.
            .body(vec![0u8; 5])
            .send()
    };
    let calls = |route: &str, code: &str| {
        levee
            .metric(
                "levee_grpc_calls_total",
                &[("route", route), ("code", code)],
            )
            .unwrap_or(0.0)
    };
    // The endpoint refuses connections: UNAVAILABLE, trailers-only; twice,
    // and the cluster's breaker opens.
    for _ in 0..2 {
        let r = call("/svc.Greeter/SayHello", "application/grpc")
            .await
            .expect("an answer");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(
            r.headers()["grpc-message"],
            "could not connect to the upstream endpoint"
        );
        assert!(r.bytes().await.expect("body").is_empty());
    }
    // Breaker open: UNAVAILABLE too, with its own message.
    let r = call("/svc.Greeter/SayHello", "application/grpc")
        .await
        .expect("an answer");
    assert_eq!(r.headers()["grpc-status"], "14");
    assert!(
        r.headers()["grpc-message"]
            .to_str()
            .is_ok_and(|m| m.contains("circuit breaker is open")),
        "{:?}",
        r.headers()
    );
    // No endpoint at all: UNAVAILABLE.
    let r = call("/svc.Nowhere/Call", "application/grpc")
        .await
        .expect("an answer");
    assert_eq!(r.headers()["grpc-status"], "14");
    assert_eq!(
        r.headers()["grpc-message"],
        "no endpoint is available for this route"
    );
    // Rate limited: the first call goes through (to the open breaker),
    // the second is RESOURCE_EXHAUSTED.
    call("/svc.Limited/Call", "application/grpc")
        .await
        .expect("an answer");
    let r = call("/svc.Limited/Call", "application/grpc")
        .await
        .expect("an answer");
    assert_eq!(r.headers()["grpc-status"], "8");
    // No route: UNIMPLEMENTED.
    let r = call("/other.Service/Method", "application/grpc+proto")
        .await
        .expect("an answer");
    assert_eq!(r.headers()["grpc-status"], "12");
    // Not gRPC: Levee's JSON error, as before, and not a gRPC call.
    let r = call("/svc.Greeter/SayHello", "application/octet-stream")
        .await
        .expect("an answer");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(!r.headers().contains_key("grpc-status"));

    // Every one of Levee's own gRPC answers is a counted call, the one no
    // route took under route "".
    assert!(
        wait_until_async(Duration::from_secs(5), || calls("", "unimplemented") == 1.0).await,
        "no route: {}",
        calls("", "unimplemented")
    );
    assert_eq!(calls("grpc", "unavailable"), 3.0);
    assert_eq!(calls("none", "unavailable"), 1.0);
    assert_eq!(calls("limited", "unavailable"), 1.0);
    assert_eq!(calls("limited", "resource_exhausted"), 1.0);
}

/// Levee in front of one `h2_endpoint` over h2c, with `http2` as the
/// cluster's `[clusters.http2]` table; one worker.
fn before_h2_endpoint(endpoint: SocketAddr, listen: SocketAddr, http2: &str) -> Levee {
    let cfg = ConfigBuilder::new()
        .listener("main", listen)
        .cluster_with(
            "app",
            &[endpoint],
            &[
                "protocol = \"h2c\"",
                "response_timeout = \"30s\"",
                &format!("http2 = {http2}"),
            ],
        )
        .route("all", "app")
        .set("server", "workers = 1");
    Levee::start(&cfg.build())
}

#[tokio::test]
async fn a_refused_stream_is_sent_again_on_another_connection_whatever_its_method() {
    let endpoint = h2_endpoint::H2Endpoint::start();
    let listen = free_addr();
    let levee = before_h2_endpoint(endpoint.addr(), listen, "{ max_connections = 4 }");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    // A first request opens the connection.
    let r = client
        .post(format!("http://{listen}/first"))
        .body("warm")
        .send()
        .await
        .expect("first request");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-connection"], "1");

    // The endpoint refuses the next stream: it provably did not process
    // it, so the POST (not idempotent, no retry_on would allow it) is
    // sent again, on another connection, body and all.
    endpoint.refuse_next(1);
    let r = client
        .post(format!("http://{listen}/order"))
        .body("one order, exactly once")
        .send()
        .await
        .expect("refused request");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-connection"], "2");
    assert_eq!(
        r.bytes().await.expect("body").as_ref(),
        b"one order, exactly once"
    );
    assert_eq!(endpoint.refused(), 1);
    assert_eq!(endpoint.served(), 2, "processed once");
    assert_eq!(endpoint.connections(), 2);
    let unprocessed = levee
        .metric("levee_upstream_retries_total", &[("kind", "unprocessed")])
        .unwrap_or(0.0);
    assert_eq!(unprocessed, 1.0);

    // The connection that refused is retired; the new one serves on.
    let r = client
        .post(format!("http://{listen}/next"))
        .body("x")
        .send()
        .await
        .expect("next request");
    assert_eq!(r.headers()["x-connection"], "2");
    assert_eq!(endpoint.connections(), 2);
}

#[tokio::test]
async fn a_silent_endpoint_connection_is_found_by_ping_and_replaced() {
    let endpoint = h2_endpoint::H2Endpoint::start();
    let listen = free_addr();
    let levee = before_h2_endpoint(
        endpoint.addr(),
        listen,
        "{ keepalive_interval = \"200ms\", keepalive_timeout = \"500ms\" }",
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let r = client
        .get(format!("http://{listen}/"))
        .send()
        .await
        .expect("first request");
    assert_eq!(r.headers()["x-connection"], "1");

    // The endpoint's host dies for this connection: the socket stays open,
    // nothing comes back. Levee's PING goes unanswered and it closes the
    // connection, idle as it is.
    endpoint.silence_open_connections();
    let started = Instant::now();
    assert!(
        wait_until_async(Duration::from_secs(15), || endpoint.closed() == 1).await,
        "the silent connection was not closed"
    );
    let found = started.elapsed();
    // A PING sent at most one interval (200ms) before the silence times
    // out 500ms after it was sent: not at once.
    assert!(
        found >= Duration::from_millis(250),
        "closed after {found:?}: before a PING could time out"
    );
    let closed = levee
        .metric(
            "levee_upstream_h2_streams_per_connection_count",
            &[("cluster", "app")],
        )
        .unwrap_or(0.0);
    assert_eq!(closed, 1.0);

    // The next request opens a new connection at once instead of waiting
    // out the 30s response timeout on the dead one.
    let started = Instant::now();
    let r = client
        .get(format!("http://{listen}/"))
        .send()
        .await
        .expect("request after the silence");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-connection"], "2");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
