//! TCP listeners end to end (`protocol = "tcp"`), against the real binary
//! and real sockets: per-connection balancing (round robin, a hash on the
//! client address), a refused connect retried on another endpoint and the
//! endpoint ejected, the idle timeout, the per-IP cap, the bulkhead as a
//! connection cap, `on_endpoint_down = "shutdown_sessions"`, `/status`,
//! metrics and the access-log line; Levee short of file descriptors: the
//! connections it cannot make are refused, not charged to the endpoints;
//! the cluster's source addresses, which connections leave from; and, in a
//! network namespace of the test's own with few local ports, a source
//! address out of ports passing connections on to the next, then Levee out
//! of all of them (a TCP client closed, an HTTP 503 `local_shortage`), no
//! endpoint charged.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(10);

/// A TCP server that greets each connection with its name and a newline,
/// then echoes what it reads. `stop_accepting` closes the listening socket
/// and keeps the open connections.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start(name: &str) -> Echo {
        Echo::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn start_at(name: &str, at: SocketAddr) -> Echo {
        let listener = TcpListener::bind(at).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let greeting = format!("{name}\n");
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let greeting = greeting.clone();
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            if s.write_all(greeting.as_bytes()).is_err() {
                                return;
                            }
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = s.read(&mut buf) {
                                if n == 0 || s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Echo { addr, stop }
    }

    fn stop_accepting(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

/// A connection through Levee from `from` (a loopback address), with the
/// greeting it got: the name of the endpoint that took it.
fn connect_from(listen: SocketAddr, from: [u8; 4]) -> (BufReader<TcpStream>, String) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((from, 0)).into())
        .expect("bind the client address");
    socket
        .connect_timeout(&listen.into(), T)
        .expect("connect to levee");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(T)).expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).expect("a greeting");
    (reader, greeting.trim().to_owned())
}

fn connect(listen: SocketAddr) -> (BufReader<TcpStream>, String) {
    connect_from(listen, [127, 0, 0, 1])
}

/// Writes a line and reads its echo.
fn echo(conn: &mut BufReader<TcpStream>, text: &str) -> String {
    conn.get_mut()
        .write_all(format!("{text}\n").as_bytes())
        .expect("write");
    let mut line = String::new();
    conn.read_line(&mut line).expect("echo");
    line.trim().to_owned()
}

/// Whether the peer closes the connection within `within` (end of file or
/// a reset, rather than a read timeout).
fn closed_within(conn: &mut BufReader<TcpStream>, within: Duration) -> bool {
    conn.get_ref()
        .set_read_timeout(Some(within))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn tcp_listener(cluster: &str, extra: &[&str]) -> Vec<String> {
    let mut lines = vec![
        "protocol = \"tcp\"".to_string(),
        format!("cluster = {cluster:?}"),
    ];
    lines.extend(extra.iter().map(|s| s.to_string()));
    lines
}

fn start(cfg: ConfigBuilder) -> Levee {
    Levee::start(&cfg.set("server", "workers = 2").build())
}

#[test]
fn connections_are_balanced_and_a_refused_connect_goes_elsewhere() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let (_hold, refusing) = refusing_addr();
    let listen = free_addr();
    let extra: Vec<String> = tcp_listener("db", &[]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let levee = start(
        ConfigBuilder::new()
            .listener_with("pg", listen, &extra)
            .cluster_with(
                "db",
                &[a.addr, b.addr, refusing],
                &[
                    "balance = \"round_robin\"",
                    "connect_timeout = \"1s\"",
                    "outlier_detection = { consecutive_failures = 1, base_ejection = \"30s\" }",
                ],
            ),
    );
    let mut seen = std::collections::HashMap::new();
    for i in 0..12 {
        let (mut conn, name) = connect(listen);
        assert_eq!(echo(&mut conn, &format!("hello {i}")), format!("hello {i}"));
        *seen.entry(name).or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "both live endpoints took connections: {seen:?}"
    );
    assert!(seen.values().all(|&n| n >= 3), "spread: {seen:?}");
    let failed = levee
        .metric(
            "levee_upstream_connect_errors_total",
            &[("endpoint", &refusing.to_string())],
        )
        .unwrap_or(0.0);
    assert_eq!(
        failed,
        1.0,
        "one refused connect, then ejected:\n{}",
        levee.logs()
    );
    let ejections = levee.metric(
        "levee_outlier_ejections_total",
        &[("endpoint", &refusing.to_string())],
    );
    assert_eq!(ejections, Some(1.0));
    let status = levee.status_json();
    let pg = &status["listeners"][0];
    assert_eq!(pg["protocol"], "tcp", "{status}");
    assert_eq!(pg["cluster"], "db");
    // One access-log line per connection, with bytes both ways.
    assert!(
        wait_until(T, || {
            let m = levee.metric("levee_tcp_connections_total", &[("end", "client_closed")]);
            m == Some(12.0)
        }),
        "{}",
        levee.metrics_text()
    );
    let out = levee.stdout_text();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["protocol"] == "tcp")
        .collect();
    assert_eq!(lines.len(), 12, "{out}");
    let retried = lines.iter().filter(|l| l["attempts"] == 2).count();
    assert_eq!(retried, 1, "the refused connect was retried: {out}");
    for l in &lines {
        assert_eq!(l["end"], "client_closed");
        assert_eq!(l["bytes_out"], l["bytes_in"].as_u64().unwrap() + 2, "{l}");
        assert!(l["endpoint"].as_str().is_some() && l["duration_ms"].as_f64().is_some());
    }
    let bytes_in = levee.metric("levee_tcp_bytes_total", &[("direction", "in")]);
    assert!(bytes_in.is_some_and(|b| b > 0.0));
    drop((a, b));
}

#[test]
fn a_client_address_sticks_to_its_endpoint() {
    let echoes: Vec<Echo> = ["a", "b", "c"].into_iter().map(Echo::start).collect();
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr).collect();
    let listen = free_addr();
    let extra = tcp_listener("db", &[]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let _levee = start(
        ConfigBuilder::new()
            .listener_with("pg", listen, &extra)
            .cluster_with("db", &addrs, &["balance = \"consistent_hash\""]),
    );
    let mut names = std::collections::HashSet::new();
    for client in 1..=8u8 {
        let from = [127, 0, 0, client];
        let (_c, first) = connect_from(listen, from);
        for _ in 0..4 {
            let (_c, again) = connect_from(listen, from);
            assert_eq!(again, first, "client 127.0.0.{client} moved");
        }
        names.insert(first);
    }
    assert!(
        names.len() >= 2,
        "eight clients all on one endpoint: {names:?}"
    );
}

#[test]
fn idle_connections_close_and_caps_hold() {
    let a = Echo::start("a");
    let (idle_at, capped_at) = (free_addr(), free_addr());
    let idle = tcp_listener("idle", &["idle_timeout = \"400ms\""]);
    let idle: Vec<&str> = idle.iter().map(String::as_str).collect();
    let capped = tcp_listener("capped", &["max_connections_per_ip = 2"]);
    let capped: Vec<&str> = capped.iter().map(String::as_str).collect();
    let levee = start(
        ConfigBuilder::new()
            .listener_with("idle", idle_at, &idle)
            .listener_with("capped", capped_at, &capped)
            .cluster("idle", &[a.addr])
            .cluster_with(
                "capped",
                &[a.addr],
                &["bulkhead = { max_concurrent = 3, max_queue = 0 }"],
            ),
    );
    // Idle: closed after the timeout, not before; traffic keeps it open.
    let (mut busy, _) = connect(idle_at);
    let start_idle = Instant::now();
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(echo(&mut busy, &i.to_string()), i.to_string());
    }
    assert!(start_idle.elapsed() > Duration::from_millis(800));
    let opened = Instant::now();
    assert!(closed_within(&mut busy, Duration::from_secs(5)));
    let idle = opened.elapsed();
    assert!(
        idle >= Duration::from_millis(350) && idle < Duration::from_secs(4),
        "closed after {idle:?} idle"
    );
    assert!(wait_until(T, || {
        levee.metric("levee_tcp_connections_total", &[("end", "idle_timeout")]) == Some(1.0)
    }));

    // Per IP: two from 127.0.0.1, the third closed at once; another IP
    // still gets in.
    let (mut one, _) = connect(capped_at);
    let (_two, _) = connect(capped_at);
    let mut third = TcpStream::connect(capped_at).expect("connect");
    third.set_read_timeout(Some(T)).expect("timeout");
    let mut buf = [0u8; 8];
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "the third connection from one IP is closed"
    );
    let refused = levee.metric(
        "levee_connections_per_ip_refused_total",
        &[("listener", "capped")],
    );
    assert_eq!(refused, Some(1.0));
    // The bulkhead (3) caps connections across IPs: the fourth is closed.
    let (_other, _) = connect_from(capped_at, [127, 0, 0, 2]);
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 3], 0)).into())
        .expect("bind");
    socket.connect(&capped_at.into()).expect("connect");
    let mut fourth: TcpStream = socket.into();
    fourth.set_read_timeout(Some(T)).expect("timeout");
    assert!(matches!(fourth.read(&mut buf), Ok(0) | Err(_)));
    assert!(wait_until(T, || {
        levee.metric("levee_tcp_connections_total", &[("end", "bulkhead_full")]) == Some(1.0)
    }));
    // Those open are not disturbed.
    assert_eq!(echo(&mut one, "still"), "still");
}

#[test]
fn sessions_of_an_endpoint_that_leaves_service_are_closed() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let listen = free_addr();
    let extra = tcp_listener("db", &[]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let levee = start(
        ConfigBuilder::new()
            .listener_with("pg", listen, &extra)
            .cluster_with(
                "db",
                &[a.addr, b.addr],
                &[
                    "balance = \"least_conn\"",
                    "on_endpoint_down = \"shutdown_sessions\"",
                    "health_check = { type = \"tcp\", interval = \"100ms\", timeout = \"100ms\", jitter = \"0s\", unhealthy_threshold = 2 }",
                ],
            ),
    );
    // least_conn sees open connections: four spread two and two.
    let mut conns: Vec<(BufReader<TcpStream>, String)> = (0..4).map(|_| connect(listen)).collect();
    let on_a = conns.iter().filter(|(_, n)| n == "a").count();
    assert_eq!(on_a, 2, "least_conn spreads open connections");
    a.stop_accepting();
    let down = Instant::now();
    for (conn, name) in conns.iter_mut() {
        if name == "a" {
            assert!(
                closed_within(conn, Duration::from_secs(5)),
                "a's session closed"
            );
        }
    }
    let took = down.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "closed {took:?} after a stopped"
    );
    for (conn, name) in conns.iter_mut() {
        if name == "b" {
            assert_eq!(echo(conn, "on b"), "on b", "b's sessions stay");
        }
    }
    assert!(wait_until(T, || {
        levee.metric("levee_tcp_connections_total", &[("end", "endpoint_down")]) == Some(2.0)
    }));
    // New connections go to b only.
    for _ in 0..3 {
        assert_eq!(connect(listen).1, "b");
    }
}

/// The port of the Redis server a connection through Levee reached.
fn redis_port_through(listen: SocketAddr) -> u16 {
    let mut conn = TcpStream::connect(listen).expect("connect");
    conn.set_read_timeout(Some(T)).expect("timeout");
    conn.write_all(b"CONFIG GET port\r\n").expect("write");
    // *2 $4 port $N <port>
    let mut reader = BufReader::new(conn);
    let mut lines = Vec::new();
    for _ in 0..5 {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a reply line");
        lines.push(line.trim().to_owned());
    }
    lines[4]
        .parse()
        .unwrap_or_else(|_| panic!("reply {lines:?}"))
}

#[test]
fn a_redis_role_check_sends_connections_to_the_master_only() {
    let master = support::redis::RedisServer::start();
    let replica = support::redis::RedisServer::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &master.port().to_string(),
    ]);
    let (m, r) = (
        SocketAddr::from(([127, 0, 0, 1], master.port())),
        SocketAddr::from(([127, 0, 0, 1], replica.port())),
    );
    let listen = free_addr();
    let extra = tcp_listener("kv", &[]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let levee = start(
        ConfigBuilder::new()
            .listener_with("kv", listen, &extra)
            .cluster_with(
                "kv",
                &[r, m],
                &[
                    "on_endpoint_down = \"shutdown_sessions\"",
                    "health_check = { type = \"redis\", role = \"primary\", interval = \"100ms\", timeout = \"100ms\", jitter = \"0s\", unhealthy_threshold = 1, healthy_threshold = 1 }",
                ],
            ),
    );
    let states = || {
        let s = levee.status_json();
        let eps = &s["clusters"][0]["endpoints"];
        (
            eps[0]["state"].as_str().unwrap_or("").to_owned(),
            eps[1]["state"].as_str().unwrap_or("").to_owned(),
        )
    };
    // Role-checked endpoints start WARMING: nothing reaches the replica
    // before its first verdict.
    assert!(wait_until(T, || states().1 == "healthy"), "{:?}", states());
    assert_ne!(states().0, "healthy");
    for _ in 0..6 {
        assert_eq!(redis_port_through(listen), master.port());
    }
    // Swap the roles: the replica becomes the master.
    let mut session = TcpStream::connect(listen).expect("connect");
    session.set_read_timeout(Some(T)).expect("timeout");
    replica.query(&["REPLICAOF", "NO", "ONE"]);
    master.query(&["REPLICAOF", "127.0.0.1", &replica.port().to_string()]);
    assert!(
        wait_until(T, || states() == ("healthy".into(), "unhealthy".into())),
        "{:?}",
        states()
    );
    for _ in 0..6 {
        assert_eq!(redis_port_through(listen), replica.port());
    }
    // The session opened on the old master was closed.
    let mut buf = [0u8; 16];
    assert!(matches!(session.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn a_scripted_tcp_check_sends_and_expects() {
    // Each echo server greets with its name, then echoes: only a's answer
    // to "hello" starts with "a".
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let listen = free_addr();
    let extra: Vec<String> = tcp_listener("db", &[]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let check = "health_check = { type = \"tcp\", send = \"hello\\n\", expect = \"a\\nhello\", interval = \"100ms\", timeout = \"100ms\", jitter = \"0s\", unhealthy_threshold = 1 }";
    let levee = start(
        ConfigBuilder::new()
            .listener_with("db", listen, &extra)
            .cluster_with(
                "db",
                &[a.addr, b.addr],
                &["balance = \"round_robin\"", check],
            ),
    );
    assert!(
        wait_until(T, || (0..4).all(|_| connect(listen).1 == "a")),
        "b fails its check"
    );
    assert!(
        wait_until(T, || levee.logs().contains(
            r#"expected "a\nhello", got "b\nhello\n" before the timeout"#
        )),
        "the log says what b sent: {}",
        levee.logs()
    );
}

#[test]
fn a_tcp_cluster_is_checked_over_http_on_another_port() {
    // Two nodes, each with its service and, on one port for both, an
    // agent that tells whether it is the primary (as Patroni's REST API).
    let (a, b) = (
        Echo::start_at("a", "127.0.0.21:0".parse().expect("addr")),
        Echo::start_at("b", "127.0.0.22:0".parse().expect("addr")),
    );
    let port = free_port();
    let agent_a = Backend::start_on("agent-a", SocketAddr::from(([127, 0, 0, 21], port)));
    let agent_b = Backend::start_on("agent-b", SocketAddr::from(([127, 0, 0, 22], port)));
    agent_b.set_status(Some(503));
    let listen = free_addr();
    let extra: Vec<String> = tcp_listener("db", &[]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let check = format!(
        "health_check = {{ type = \"http\", port = {port}, path = \"/primary\", interval = \"100ms\", timeout = \"100ms\", jitter = \"0s\", unhealthy_threshold = 1, healthy_threshold = 1 }}"
    );
    let _levee = start(
        ConfigBuilder::new()
            .listener_with("db", listen, &extra)
            .cluster_with(
                "db",
                &[a.addr, b.addr],
                &["balance = \"round_robin\"", &check],
            ),
    );
    let only = |name: &str| wait_until(T, || (0..4).all(|_| connect(listen).1 == name));
    assert!(only("a"), "b's agent says it is not the primary");
    assert!(
        agent_a.recorded().iter().all(|r| r.uri == "/primary"),
        "the agent is asked"
    );
    // A switchover: b is promoted, a demoted.
    agent_b.set_status(None);
    agent_a.set_status(Some(503));
    assert!(only("b"), "after the switchover");
}

/// A TCP server that reads a PROXY header (v1 or v2) off each connection,
/// parses it with `ppp` and answers the source address it carries, then
/// closes.
fn proxy_reader() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(T));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 256];
                let answer = loop {
                    let Ok(n) = s.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Ok(h) = ppp::v2::Header::try_from(&buf[..]) {
                        break format!("v2 {:?}\n", h.addresses);
                    }
                    if let Ok(h) =
                        ppp::v1::Header::try_from(std::str::from_utf8(&buf).unwrap_or(""))
                    {
                        break format!("v1 {}", h.addresses);
                    }
                    if buf.len() > 512 {
                        break "garbage\n".to_owned();
                    }
                };
                let _ = s.write_all(answer.as_bytes());
            });
        }
    });
    addr
}

#[test]
fn the_client_address_reaches_the_endpoint_in_a_proxy_header() {
    let reader = proxy_reader();
    let (v1_at, v2_at) = (free_addr(), free_addr());
    let v1 = tcp_listener("v1", &[]);
    let v1: Vec<&str> = v1.iter().map(String::as_str).collect();
    let v2 = tcp_listener("v2", &[]);
    let v2: Vec<&str> = v2.iter().map(String::as_str).collect();
    let _levee = start(
        ConfigBuilder::new()
            .listener_with("v1", v1_at, &v1)
            .listener_with("v2", v2_at, &v2)
            .cluster_with("v1", &[reader], &["send_proxy_protocol = \"v1\""])
            .cluster_with("v2", &[reader], &["send_proxy_protocol = \"v2\""]),
    );
    let (conn, line) = connect_from(v1_at, [127, 0, 0, 5]);
    let client = conn.get_ref().local_addr().expect("addr");
    assert_eq!(
        line,
        format!(
            "v1 PROXY TCP4 127.0.0.5 127.0.0.1 {} {}",
            client.port(),
            v1_at.port()
        )
    );
    let (conn, line) = connect_from(v2_at, [127, 0, 0, 6]);
    let client = conn.get_ref().local_addr().expect("addr");
    let expected = ppp::v2::Addresses::from((client, v2_at));
    assert_eq!(line, format!("v2 {expected:?}"));
    assert!(line.contains("127.0.0.6"), "{line}");
}

/// A TCP server on `at` that answers each connection with the address it
/// came from and keeps it open, and keeps every such address (health
/// checks' connections too).
fn peer_teller(at: SocketAddr) -> (SocketAddr, Arc<std::sync::Mutex<Vec<std::net::IpAddr>>>) {
    let listener = TcpListener::bind(at).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let Ok(peer) = s.peer_addr() else { continue };
            keep.lock().expect("lock").push(peer.ip());
            let _ = s.write_all(format!("{}\n", peer.ip()).as_bytes());
            open.push(s);
        }
    });
    (addr, seen)
}

#[test]
fn connections_to_endpoints_leave_from_the_cluster_source_addresses() {
    let (teller, told) = peer_teller("127.0.0.1:0".parse().expect("addr"));
    let web = Backend::start("web");
    let (tcp, http) = (free_addr(), free_addr());
    let extra: Vec<String> = tcp_listener("db", &[]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let check = "health_check = { type = \"tcp\", interval = \"100ms\", jitter = \"0s\", timeout = \"100ms\" }";
    let _levee = start(
        ConfigBuilder::new()
            .listener_with("db", tcp, &extra)
            .listener("web", http)
            .cluster_with(
                "db",
                &[teller],
                &["source_addresses = [\"127.0.0.2\", \"127.0.0.3\"]", check],
            )
            .cluster_with(
                "web",
                &[web.addr()],
                &["source_addresses = [\"127.0.0.4\"]"],
            )
            .route("all", "web"),
    );
    // TCP: the connections take the two addresses in turn.
    let mut from = Vec::new();
    for _ in 0..6 {
        let (_, line) = connect(tcp);
        from.push(line);
    }
    from.sort();
    from.dedup();
    assert_eq!(from, ["127.0.0.2", "127.0.0.3"]);
    // The health checks left from them too.
    assert!(
        wait_until(T, || told.lock().expect("lock").len() >= 10),
        "health checks reach the endpoint"
    );
    let all = told.lock().expect("lock").clone();
    assert!(
        all.iter()
            .all(|ip| ["127.0.0.2", "127.0.0.3"].contains(&ip.to_string().as_str())),
        "{all:?}"
    );
    // HTTP: requests over new and pooled connections alike.
    for _ in 0..4 {
        let r = http_get(http, "/x").expect("request");
        assert_eq!(r.status, 200);
    }
    let peers: Vec<String> = web
        .recorded()
        .iter()
        .map(|r| r.peer.expect("peer").ip().to_string())
        .collect();
    assert_eq!(peers, ["127.0.0.4"; 4]);
}

/// A network namespace of the test's own (`unshare --net`, held by a
/// `sleep` in it) with its loopback up and its ephemeral port range narrowed
/// to `ports`, so that connections from one address to one endpoint run out
/// of local ports after a few. `enter` moves the calling thread into it;
/// the threads and processes it starts afterwards are in it too. Needs what
/// the rest of the suite needs (root).
struct Netns {
    holder: std::process::Child,
}

impl Netns {
    fn new(ports: &str) -> Netns {
        let holder = std::process::Command::new("unshare")
            .args(["--net", "sleep", "300"])
            .spawn()
            .expect("unshare (util-linux)");
        let ns = format!("/proc/{}/ns/net", holder.id());
        let ours = std::fs::read_link("/proc/self/ns/net").expect("our netns");
        // Until unshare has made the namespace and run sleep in it.
        assert!(
            wait_until(T, || std::fs::read_link(&ns).is_ok_and(|l| l != ours)),
            "unshare --net made no network namespace (needs CAP_SYS_ADMIN, as root)"
        );
        let setup =
            format!("ip link set lo up && echo '{ports}' > /proc/sys/net/ipv4/ip_local_port_range");
        let status = std::process::Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args(["sh", "-c", &setup])
            .status()
            .expect("nsenter");
        assert!(status.success(), "setting up the namespace: {setup}");
        Netns { holder }
    }

    fn enter(&self) {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.holder.id())).expect("netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A connection from `from` to `to` whose local port the kernel picks at
/// connect from the ephemeral range, as Levee's (`IP_BIND_ADDRESS_NO_PORT`).
fn connect_via_range(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    )?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect_timeout(&to.into(), T)?;
    Ok(socket.into())
}

/// Closes `conn` with a reset, so that its port is free at once (a FIN
/// would leave it in TIME_WAIT).
fn give_back(conn: Option<TcpStream>) {
    let conn = socket2::Socket::from(conn.expect("a held connection"));
    conn.set_linger(Some(Duration::ZERO)).expect("linger");
}

/// Reads the line an endpoint greeted a connection through Levee with, or
/// `None` when Levee closed it instead.
fn greeting(conn: TcpStream) -> Option<String> {
    conn.set_read_timeout(Some(T)).expect("timeout");
    let mut line = String::new();
    match BufReader::new(conn).read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim().to_owned()),
        _ => None,
    }
}

#[test]
fn out_of_local_ports_the_next_source_address_takes_over_and_no_endpoint_is_charged() {
    // On a thread of its own, which alone enters the namespace, whatever
    // thread the test harness runs tests on.
    let run = std::thread::spawn(out_of_local_ports);
    if let Err(panic) = run.join() {
        std::panic::resume_unwind(panic);
    }
}

fn out_of_local_ports() {
    // PORTS local ports per (source address, endpoint) pair: few to hold,
    // enough for the test's own requests to Levee (a connection it closes
    // keeps its port in TIME_WAIT for a second at least). Everything that
    // listens has a fixed port outside them: the namespace is this test's.
    const PORTS: u8 = 24;
    let netns = Netns::new(&format!("40000 {}", 40000 + u16::from(PORTS) - 1));
    netns.enter();
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let (teller, _) = peer_teller(at(20001));
    let web = Backend::start_on("web", at(20002));
    let (pair_a, pair_b) = (
        Backend::start_on("pair-a", at(20003)),
        Backend::start_on("pair-b", at(20004)),
    );
    let (e1, e2) = (
        Echo::start_at("e1", at(20005)),
        Echo::start_at("e2", at(20006)),
    );
    let (tcp, http, admin, tcp2) = (at(20011), at(20012), at(20013), at(20014));
    let extra: Vec<String> = tcp_listener("db", &[]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let extra2: Vec<String> = tcp_listener("db2", &[]);
    let extra2: Vec<&str> = extra2.iter().map(String::as_str).collect();
    let eject = "outlier_detection = { consecutive_failures = 1, base_ejection = \"60s\" }";
    let rr = "balance = \"round_robin\"";
    let levee = start(
        ConfigBuilder::new()
            .admin_at(admin)
            .listener_with("db", tcp, &extra)
            .listener_with("db2", tcp2, &extra2)
            .listener("web", http)
            .cluster_with(
                "db",
                &[teller],
                &["source_addresses = [\"127.0.0.2\", \"127.0.0.3\"]", eject],
            )
            .cluster_with(
                "db2",
                &[e1.addr, e2.addr],
                &["source_addresses = [\"127.0.0.6\"]", eject, rr],
            )
            .cluster_with(
                "web",
                &[web.addr()],
                &["source_addresses = [\"127.0.0.4\"]", eject],
            )
            .cluster_with(
                "pair",
                &[pair_a.addr(), pair_b.addr()],
                &["source_addresses = [\"127.0.0.5\"]", eject, rr],
            )
            .route_with("pair", "pair", &["path_prefix = \"/pair\""])
            .route("all", "web"),
    );
    // The test holds all of 127.0.0.2's ports towards the endpoint.
    let mut held: Vec<TcpStream> = (0..PORTS)
        .map(|_| connect_via_range([127, 0, 0, 2], teller).expect("a port of 127.0.0.2"))
        .collect();
    assert!(
        connect_via_range([127, 0, 0, 2], teller).is_err(),
        "PORTS ports only"
    );
    // Each client from its own address (its own ports towards Levee).
    let client = |n: u8| connect_via_range([127, 0, 0, 10 + n], tcp).expect("connect to levee");
    // Levee's connections all leave from 127.0.0.3, whose turn or not...
    let mut through = Vec::new();
    for n in 0..PORTS {
        let conn = client(n);
        let from = greeting(conn.try_clone().expect("clone"));
        assert_eq!(from.as_deref(), Some("127.0.0.3"), "connection {n}");
        through.push(conn);
    }
    // ...until it has no port left either: that client is closed, and the
    // endpoint is not charged.
    assert_eq!(
        greeting(client(PORTS)),
        None,
        "closed when no source has a port"
    );
    let shortage = || {
        levee.metric(
            "levee_local_shortage_total",
            &[("cause", "local_ports"), ("at", "connect")],
        )
    };
    assert_eq!(shortage(), Some(1.0), "{}", levee.metrics_text());
    // A port of 127.0.0.2 given back: the next connection takes it.
    give_back(held.pop());
    assert_eq!(greeting(client(PORTS + 1)).as_deref(), Some("127.0.0.2"));

    // Two endpoints, one out of ports: its connections go to the other at
    // once, charged to neither (round robin picks each first once).
    let held_e1: Vec<TcpStream> = (0..PORTS)
        .map(|_| connect_via_range([127, 0, 0, 6], e1.addr).expect("a port of 127.0.0.6"))
        .collect();
    for n in 100..102 {
        let conn = connect_via_range([127, 0, 0, n], tcp2).expect("connect to levee");
        assert_eq!(greeting(conn).as_deref(), Some("e2"));
    }
    assert_eq!(shortage(), Some(2.0), "{}", levee.metrics_text());

    // HTTP: 127.0.0.4's ports towards `web` all held, a request is 503
    // `local_shortage`; one given back, it is served.
    let mut held_web: Vec<TcpStream> = (0..PORTS)
        .map(|_| connect_via_range([127, 0, 0, 4], web.addr()).expect("a port of 127.0.0.4"))
        .collect();
    let r = http_get(http, "/").expect("an answer");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("local_shortage"), "{}", r.text());
    assert_eq!(shortage(), Some(3.0), "{}", levee.metrics_text());
    give_back(held_web.pop());
    let r = http_get(http, "/").expect("an answer");
    assert_eq!(r.status, 200, "{}", r.text());
    // And two endpoints, one out of ports: the other answers.
    let held_pair: Vec<TcpStream> = (0..PORTS)
        .map(|_| connect_via_range([127, 0, 0, 5], pair_a.addr()).expect("a port of 127.0.0.5"))
        .collect();
    for _ in 0..2 {
        let r = http_get(http, "/pair").expect("an answer");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-backend"), Some("pair-b"));
    }
    assert_eq!(shortage(), Some(4.0), "{}", levee.metrics_text());
    for (name, labels) in [
        ("levee_outlier_ejections_total", &[][..]),
        ("levee_upstream_connect_errors_total", &[][..]),
    ] {
        assert_eq!(
            levee.metric(name, labels).unwrap_or(0.0),
            0.0,
            "{name}: {}",
            levee.metrics_text()
        );
    }
    assert_eq!(
        levee.metric("levee_tcp_connections_total", &[("end", "local_shortage")]),
        Some(1.0)
    );
    drop((held, held_web, through, held_e1, held_pair));
}

/// The numbers of the file descriptors `pid` has open.
fn open_fds(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Sets the soft limit of `pid`'s open files (util-linux `prlimit`).
fn set_open_files(pid: u32, soft: &str) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit --nofile={soft}: {status}");
}

/// `pid`'s soft limit of open files, as /proc shows it.
fn open_files_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .expect("Max open files")
        .to_owned()
}

#[test]
fn a_shortage_of_file_descriptors_is_not_charged_to_the_endpoints() {
    // Levee runs out of file descriptors with one left: each client it
    // accepts takes that one and its connect upstream fails with EMFILE.
    // That is Levee's shortage, not the endpoints' failure: with outlier
    // detection ejecting at the first failed connect, charging it to them
    // would eject both, and the service would stay down after the
    // shortage. Instead the clients are refused (TCP: closed; HTTP: 503
    // local_shortage), counted by cause, and once descriptors are free
    // again both endpoints of each cluster serve at once.
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let (h1, h2) = (Backend::start("h1"), Backend::start("h2"));
    let (tcp, http) = (free_addr(), free_addr());
    let extra: Vec<String> = tcp_listener("db", &[]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let eject = "outlier_detection = { consecutive_failures = 1, base_ejection = \"60s\" }";
    let check = "health_check = { interval = \"200ms\", jitter = \"0s\", timeout = \"200ms\", unhealthy_threshold = 2 }";
    let levee = start(
        ConfigBuilder::new()
            .listener_with("pg", tcp, &extra)
            .listener("web", http)
            .cluster_with(
                "db",
                &[a.addr, b.addr],
                &["balance = \"round_robin\"", eject],
            )
            .cluster_with(
                "web",
                &[h1.addr(), h2.addr()],
                &["balance = \"round_robin\"", eject, check],
            )
            .route("all", "web"),
    );
    let pid = levee.pid();
    let limit = open_files_limit(pid);
    // The lowest free descriptor number is left for the accept; the next
    // one, the connect's socket, is over the limit. Levee's own are those
    // open in every look over longer than the checks' interval (a check
    // holds its connection's for a moment).
    let mut used = open_fds(pid);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(60));
        let now = open_fds(pid);
        used.retain(|fd| now.contains(fd));
    }
    let free = |skip: usize| (0..).filter(|n| !used.contains(n)).nth(skip);
    let ceiling = free(1).expect("a second free descriptor");
    set_open_files(pid, &ceiling.to_string());
    for i in 0..3 {
        let mut c = BufReader::new(TcpStream::connect(tcp).expect("connect to levee"));
        assert!(
            closed_within(&mut c, T),
            "tcp connection {i} closed at once"
        );
    }
    // Three requests on one connection (a new one would need a second
    // descriptor): the pool is empty, each needs a connect.
    let mut web = RawConn::connect_timeout(http, T).expect("connect to levee");
    for i in 0..3 {
        web.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            .expect("write");
        let r = web.read_response(T).expect("an answer");
        assert_eq!(r.status, 503, "request {i}: {}", r.text());
        assert!(r.text().contains("local_shortage"), "{}", r.text());
    }
    // While `web` holds the last descriptor, the health checks of `web`'s
    // endpoints cannot connect either: no verdict, not a failed check.
    let not_made = || levee.stderr_text().matches("health check not made").count();
    assert!(wait_until(T, || not_made() >= 4), "{}", levee.logs());
    drop(web);
    set_open_files(pid, &limit);

    let shortages = levee.metric(
        "levee_local_shortage_total",
        &[("cause", "file_descriptors"), ("at", "connect")],
    );
    assert_eq!(shortages, Some(6.0), "{}", levee.metrics_text());
    assert_eq!(
        levee
            .metric("levee_outlier_ejections_total", &[])
            .unwrap_or(0.0),
        0.0,
        "{}",
        levee.metrics_text()
    );
    assert_eq!(
        levee
            .metric("levee_upstream_connect_errors_total", &[])
            .unwrap_or(0.0),
        0.0
    );
    assert!(
        wait_until(T, || levee.metric(
            "levee_tcp_connections_total",
            &[("end", "local_shortage")]
        ) == Some(3.0)),
        "{}",
        levee.metrics_text()
    );
    let checks = levee.metric(
        "levee_local_shortage_total",
        &[("cause", "file_descriptors"), ("at", "health_check")],
    );
    assert!(checks.is_some_and(|n| n >= 4.0), "{checks:?}");
    let status = levee.status_json();
    let web = status["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "web"))
        .expect("cluster web in /status");
    for ep in web["endpoints"].as_array().expect("endpoints") {
        assert_eq!(ep["state"], "healthy", "{ep}");
    }
    // Both endpoints of each cluster serve at once.
    let mut seen = std::collections::HashSet::new();
    for i in 0..4 {
        let (mut conn, name) = connect(tcp);
        assert_eq!(echo(&mut conn, &format!("after {i}")), format!("after {i}"));
        seen.insert(name);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = http_get(http, "/").expect("a request after the shortage");
        assert_eq!(r.status, 200, "{}", r.text());
        seen.insert(r.header("x-backend").unwrap_or_default().to_owned());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn the_limit_of_open_files_is_raised_at_start_and_a_short_one_is_named() {
    // Started as a service manager would (a soft limit of 512 under a hard
    // one of 4096), Levee lifts its soft limit to the hard one, and says
    // that even 4096 is short of what its caps may hold open (one
    // listener of 10,000 connections by default, two descriptors each).
    let a = Echo::start("a");
    let listen = free_addr();
    let extra: Vec<String> = tcp_listener("db", &[]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let config = ConfigBuilder::new()
        .listener_with("pg", listen, &extra)
        .cluster("db", &[a.addr])
        .set("server", "workers = 1")
        .build();
    let mut levee = Levee::spawn_wrapped(&config, &[], &["prlimit", "--nofile=512:4096"]);
    levee.wait_ready(T).expect("levee starts");
    assert_eq!(open_files_limit(levee.pid()), "4096");
    let log = levee.stderr_text();
    assert!(
        log.contains("limit of open files raised from=512 to=4096"),
        "{log}"
    );
    assert!(
        log.contains("the limit of open files (4096) is below the 20256"),
        "{log}"
    );
    let (mut conn, name) = connect(listen);
    assert_eq!(name, "a");
    assert_eq!(echo(&mut conn, "hello"), "hello");
}
