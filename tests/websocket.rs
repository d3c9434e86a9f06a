//! WebSocket tunnels end to end, against the real binary with a real
//! WebSocket client and server (tokio-tungstenite, `tests/support/ws.rs`):
//! echo through Levee, other upgrades not tunnelled, least_conn counting
//! open tunnels, the close with 1001 (going away) after a reload's drain
//! timeout, the idle timeout, an endpoint drained, and a shutdown;
//! `/status`, metrics and the access-log line; the same over a TLS
//! listener (wss).

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use support::tls::Pki;
use support::ws::{WsEnd, WsServer, ws_ask, ws_connect, ws_end, wss_connect};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

/// One listener `main` with `ws` settings, cluster `app` over `servers`.
fn config(listen: std::net::SocketAddr, servers: &[&WsServer], ws: &[&str]) -> ConfigBuilder {
    let addrs: Vec<_> = servers.iter().map(|s| s.addr()).collect();
    let mut listener = Vec::new();
    let table: Vec<String> = ws.iter().map(|l| l.to_string()).collect();
    if !table.is_empty() {
        listener.push(format!("websocket = {{ {} }}", table.join(", ")));
    }
    let listener: Vec<&str> = listener.iter().map(String::as_str).collect();
    ConfigBuilder::new()
        // Tunnels are served by Levee's own HTTP/1.1 server.
        .set("server", "http1 = \"levee\"")
        .listener_with("main", listen, &listener)
        .cluster("app", &addrs)
        .route("all", "app")
}

fn metric(levee: &Levee, name: &str, labels: &[(&str, &str)]) -> f64 {
    levee.metric(name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_levee_with_status_metrics_and_one_log_line() {
    let server = WsServer::start("w1");
    let listen = free_addr();
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let cfg = config(listen, &[&server], &[])
        .set("access_log", "enabled = true")
        .set(
            "access_log",
            &format!("path = {:?}", log_path.display().to_string()),
        )
        .build();
    let levee = Levee::start(&cfg);

    let mut ws = ws_connect(listen, "/chat").await;
    assert_eq!(ws_ask(&mut ws, "who").await, "w1");
    assert_eq!(ws_ask(&mut ws, "hello").await, "hello");
    // Larger than one copy buffer: passes in pieces, back-pressure and all.
    let big = vec![b'z'; 200_000];
    ws.send(Message::binary(big.clone())).await.expect("send");
    let back = loop {
        match tokio::time::timeout(T, futures_util::StreamExt::next(&mut ws)).await {
            Ok(Some(Ok(Message::Binary(b)))) => break b,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no echo: {other:?}"),
        }
    };
    assert_eq!(back.len(), big.len());

    assert_eq!(
        metric(
            &levee,
            "levee_websocket_tunnels_open",
            &[("listener", "main")]
        ),
        1.0
    );
    assert_eq!(
        metric(&levee, "levee_upstream_in_flight", &[("cluster", "app")]),
        1.0,
        "an open tunnel counts as in flight on its endpoint"
    );
    let status = levee.status_json();
    let main = status["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "main"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(main["websocket"]["open_tunnels"], 1, "{status}");
    assert!(
        main["websocket"]["bytes_in"].as_u64().unwrap_or(0) >= 200_000,
        "{status}"
    );

    // The client starts the closing handshake; the server answers and,
    // as RFC 6455 §7.1.1 wants, closes the TCP connection first.
    ws.close(None).await.expect("close");
    assert_eq!(ws_end(&mut ws, T).await, WsEnd::Close(None));
    drop(ws);
    assert!(
        wait_until_async(T, || metric(
            &levee,
            "levee_websocket_tunnels_total",
            &[("end", "endpoint_closed")]
        ) == 1.0)
        .await,
        "{}",
        levee.metrics_text()
    );
    assert_eq!(
        metric(
            &levee,
            "levee_websocket_tunnels_open",
            &[("listener", "main")]
        ),
        0.0
    );
    assert_eq!(
        metric(&levee, "levee_upstream_in_flight", &[("cluster", "app")]),
        0.0
    );
    assert!(
        metric(
            &levee,
            "levee_websocket_bytes_total",
            &[("direction", "out")]
        ) >= 200_000.0,
        "{}",
        levee.metrics_text()
    );
    let lines = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until_async(T, || lines().len() == 1).await,
        "{:?}",
        lines()
    );
    let line = &lines()[0];
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["tunnel"], "endpoint_closed", "{line}");
    assert_eq!(line["endpoint"], server.addr().to_string(), "{line}");
    assert!(line["bytes_in"].as_u64().unwrap_or(0) >= 200_000, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap_or(0) >= 200_000, "{line}");
}

#[test]
fn other_upgrades_are_not_tunnelled() {
    let b = Backend::start("b1");
    let listen = free_addr();
    let cfg = ConfigBuilder::simple(listen, &[b.addr()])
        .set("server", "http1 = \"levee\"")
        .build();
    let _levee = Levee::start(&cfg);
    for token in ["h2c", "foo/1", "TLS/1.2"] {
        let request = format!(
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\nUpgrade: {token}\r\n\r\n"
        );
        let r = send_raw(listen, request.as_bytes(), T);
        assert_eq!(r.status, Some(200), "{token}: {}", r.text);
        assert!(!r.statuses().contains(&101), "{token}: {}", r.text);
        let seen = b.last_request().expect("the backend saw it");
        assert_eq!(seen.header("upgrade"), None, "{token}: {:?}", seen.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_new_tunnels_away_from_an_endpoint_holding_them() {
    let (a, b) = (WsServer::start("a"), WsServer::start("b"));
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .set("server", "http1 = \"levee\"")
        .listener("main", listen)
        .cluster_with("app", &[a.addr(), b.addr()], &["balance = \"least_conn\""])
        .route("all", "app")
        .build();
    let levee = Levee::start(&cfg);
    let drain = |what: &str| {
        let path = format!("/clusters/app/endpoints/{}/{what}", b.addr());
        let r = levee.admin_request("POST", &path, b"").expect("admin");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    };
    // With b drained, three tunnels open on a...
    drain("drain");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut ws = ws_connect(listen, "/").await;
        assert_eq!(ws_ask(&mut ws, "who").await, "a");
        held.push(ws);
    }
    // ...and stay open: the next three go to b (0, 1, 2 against a's 3).
    drain("undrain");
    for i in 0..3 {
        let mut ws = ws_connect(listen, "/").await;
        assert_eq!(
            ws_ask(&mut ws, "who").await,
            "b",
            "tunnel {i} after undrain"
        );
        held.push(ws);
    }
    assert_eq!((a.open(), b.open()), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_tunnels_until_the_drain_timeout_then_closes_them_with_1001() {
    let server = WsServer::start("w1");
    let listen = free_addr();
    let cfg = config(listen, &[&server], &["tunnel_drain_timeout = \"2s\""]).build();
    let mut levee = Levee::start(&cfg);
    let mut ws = ws_connect(listen, "/").await;
    assert_eq!(ws_ask(&mut ws, "one").await, "one");
    let reloads = metric(
        &levee,
        "levee_config_reloads_total",
        &[("result", "applied")],
    );
    assert!(levee.sighup());
    assert!(
        wait_until_async(T, || metric(
            &levee,
            "levee_config_reloads_total",
            &[("result", "applied")]
        ) > reloads)
        .await
    );
    let reloaded = std::time::Instant::now();
    // Still running on the old configuration.
    assert_eq!(ws_ask(&mut ws, "two").await, "two");
    let end = ws_end(&mut ws, T).await;
    let took = reloaded.elapsed();
    assert_eq!(end, WsEnd::Close(Some(1001)));
    assert!(
        took >= Duration::from_millis(1500),
        "closed {took:?} after the reload"
    );
    assert!(
        wait_until_async(T, || server.closes() == vec![Some(1001)]).await,
        "{:?}",
        server.closes()
    );
    assert!(
        wait_until_async(T, || metric(
            &levee,
            "levee_websocket_tunnels_total",
            &[("end", "reload")]
        ) == 1.0)
        .await
    );
    // New tunnels are served as before.
    let mut again = ws_connect(listen, "/").await;
    assert_eq!(ws_ask(&mut again, "three").await, "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_with_1001() {
    let server = WsServer::start("w1");
    let listen = free_addr();
    let cfg = config(listen, &[&server], &["idle_timeout = \"1s\""]).build();
    let levee = Levee::start(&cfg);
    let mut ws = ws_connect(listen, "/").await;
    // Traffic keeps it open past the idle timeout...
    for i in 0..4 {
        assert_eq!(ws_ask(&mut ws, &format!("m{i}")).await, format!("m{i}"));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // ...silence closes it.
    let quiet = std::time::Instant::now();
    assert_eq!(ws_end(&mut ws, T).await, WsEnd::Close(Some(1001)));
    assert!(
        quiet.elapsed() >= Duration::from_millis(500),
        "{:?}",
        quiet.elapsed()
    );
    assert!(
        wait_until_async(T, || server.closes() == vec![Some(1001)]).await,
        "{:?}",
        server.closes()
    );
    assert!(
        wait_until_async(T, || metric(
            &levee,
            "levee_websocket_tunnels_total",
            &[("end", "idle_timeout")]
        ) == 1.0)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_drained_closes_its_tunnels_after_the_grace() {
    let (a, b) = (WsServer::start("a"), WsServer::start("b"));
    let listen = free_addr();
    let cfg = config(listen, &[&a, &b], &["endpoint_down_grace = \"1s\""]).build();
    let levee = Levee::start(&cfg);
    let mut on_a = None;
    let mut on_b = None;
    for _ in 0..10 {
        let mut ws = ws_connect(listen, "/").await;
        match ws_ask(&mut ws, "who").await.as_str() {
            "a" if on_a.is_none() => on_a = Some(ws),
            "b" if on_b.is_none() => on_b = Some(ws),
            _ => {}
        }
        if on_a.is_some() && on_b.is_some() {
            break;
        }
    }
    let (mut on_a, mut on_b) = (on_a.expect("a tunnel on a"), on_b.expect("a tunnel on b"));
    let path = format!("/clusters/app/endpoints/{}/drain", a.addr());
    let r = levee.admin_request("POST", &path, b"").expect("admin");
    assert_eq!(r.status, 200, "{}", r.text());
    let drained = std::time::Instant::now();
    assert_eq!(ws_end(&mut on_a, T).await, WsEnd::Close(Some(1001)));
    assert!(
        drained.elapsed() >= Duration::from_millis(750),
        "{:?}",
        drained.elapsed()
    );
    assert!(
        wait_until_async(T, || a.closes().contains(&Some(1001))).await,
        "{:?}",
        a.closes()
    );
    // The other endpoint's tunnel is untouched.
    assert_eq!(ws_ask(&mut on_b, "still").await, "still");
    assert!(
        wait_until_async(T, || metric(
            &levee,
            "levee_websocket_tunnels_total",
            &[("end", "endpoint_down")]
        ) == 1.0)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_tunnels_with_1001_not_a_reset() {
    let server = WsServer::start("w1");
    let listen = free_addr();
    let cfg = config(listen, &[&server], &["tunnel_drain_timeout = \"1s\""])
        .set("server", "drain_timeout = \"10s\"")
        .build();
    let mut levee = Levee::start(&cfg);
    let mut ws = ws_connect(listen, "/").await;
    assert_eq!(ws_ask(&mut ws, "hi").await, "hi");
    assert!(levee.sigterm());
    assert_eq!(ws_end(&mut ws, T).await, WsEnd::Close(Some(1001)));
    assert!(
        wait_until_async(T, || server.closes() == vec![Some(1001)]).await,
        "{:?}",
        server.closes()
    );
    let status = levee.wait_exit(T).expect("levee exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hyper_engine_refuses_websocket_upgrades_clearly() {
    let server = WsServer::start("w1");
    let listen = free_addr();
    let cfg = ConfigBuilder::new()
        .set("server", "http1 = \"hyper\"")
        .listener("main", listen)
        .cluster("app", &[server.addr()])
        .route("all", "app")
        .build();
    let _levee = Levee::start(&cfg);
    let url = format!("ws://{listen}/");
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 501);
        }
        other => panic!("expected a 501, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(server.accepted(), 0, "nothing reached the endpoint");
}

/// One TLS listener `secure` for `ws.example.com` with `ws` settings,
/// cluster `app` over `server`.
fn tls_config(pki: &Pki, listen: std::net::SocketAddr, server: &WsServer, ws: &str) -> String {
    let cert = pki.server("ws", &["ws.example.com"], 30);
    ConfigBuilder::new()
        .set("server", "http1 = \"levee\"")
        .listener_with(
            "secure",
            listen,
            &[
                &format!("tls = {{ certificates = [{{ {} }}] }}", cert.toml()),
                &format!("websocket = {{ {ws} }}"),
            ],
        )
        .cluster("app", &[server.addr()])
        .route("all", "app")
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_a_tls_listener_echoes_and_an_idle_tunnel_gets_1001() {
    let pki = Pki::new("wss CA");
    let server = WsServer::start("w1");
    let listen = free_addr();
    let levee = Levee::start(&tls_config(&pki, listen, &server, "idle_timeout = \"1s\""));
    let mut ws = wss_connect(listen, "ws.example.com", &pki.ca_pem, "/chat").await;
    assert_eq!(ws_ask(&mut ws, "who").await, "w1");
    // Larger than one copy buffer and than one TLS record, both ways.
    let big = vec![b'q'; 300_000];
    ws.send(Message::binary(big.clone())).await.expect("send");
    let back = loop {
        match tokio::time::timeout(T, futures_util::StreamExt::next(&mut ws)).await {
            Ok(Some(Ok(Message::Binary(b)))) => break b,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no echo: {other:?}"),
        }
    };
    assert_eq!(back.len(), big.len());
    assert!(back.iter().all(|&b| b == b'q'));
    assert_eq!(
        metric(
            &levee,
            "levee_websocket_tunnels_open",
            &[("listener", "secure")]
        ),
        1.0
    );
    // Silence: the idle timeout closes it with a close frame inside TLS.
    let quiet = std::time::Instant::now();
    assert_eq!(ws_end(&mut ws, T).await, WsEnd::Close(Some(1001)));
    assert!(
        quiet.elapsed() >= Duration::from_millis(500),
        "{:?}",
        quiet.elapsed()
    );
    assert!(
        wait_until_async(T, || server.closes() == vec![Some(1001)]).await,
        "{:?}",
        server.closes()
    );
    assert!(
        wait_until_async(T, || metric(
            &levee,
            "levee_websocket_tunnels_total",
            &[("end", "idle_timeout")]
        ) == 1.0)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_tunnels_are_closed_with_1001_after_a_reload_drain_and_on_shutdown() {
    let pki = Pki::new("wss CA");
    let server = WsServer::start("w1");
    let listen = free_addr();
    let cfg = tls_config(&pki, listen, &server, "tunnel_drain_timeout = \"1s\"");
    let mut levee = Levee::start(&cfg);
    let mut ws = wss_connect(listen, "ws.example.com", &pki.ca_pem, "/").await;
    assert_eq!(ws_ask(&mut ws, "one").await, "one");
    let applied = |levee: &Levee| {
        metric(
            levee,
            "levee_config_reloads_total",
            &[("result", "applied")],
        )
    };
    let before = applied(&levee);
    assert!(levee.sighup());
    assert!(wait_until_async(T, || applied(&levee) > before).await);
    let reloaded = std::time::Instant::now();
    // Kept on the old configuration until the drain timeout...
    assert_eq!(ws_ask(&mut ws, "two").await, "two");
    assert_eq!(ws_end(&mut ws, T).await, WsEnd::Close(Some(1001)));
    assert!(
        reloaded.elapsed() >= Duration::from_millis(700),
        "closed {:?} after the reload",
        reloaded.elapsed()
    );
    assert!(
        wait_until_async(T, || server.closes() == vec![Some(1001)]).await,
        "{:?}",
        server.closes()
    );
    // ...and a shutdown closes a new one the same way, then Levee exits.
    let mut again = wss_connect(listen, "ws.example.com", &pki.ca_pem, "/").await;
    assert_eq!(ws_ask(&mut again, "three").await, "three");
    assert!(levee.sigterm());
    assert_eq!(ws_end(&mut again, T).await, WsEnd::Close(Some(1001)));
    assert!(
        wait_until_async(T, || server.closes() == vec![Some(1001), Some(1001)]).await,
        "{:?}",
        server.closes()
    );
    let status = levee.wait_exit(T).expect("levee exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_are_spliced_intact_and_a_shutdown_still_closes_with_1001() {
    let server = WsServer::start("w1");
    let listen = free_addr();
    let cfg = config(listen, &[&server], &["tunnel_drain_timeout = \"1s\""])
        .set("server", "drain_timeout = \"10s\"")
        .build();
    let mut levee = Levee::start(&cfg);
    let pipes = || metric(&levee, "levee_splice_pipes", &[]);
    let mut ws = ws_connect(listen, "/").await;
    // Small frames are read, never spliced: no pipe.
    assert_eq!(ws_ask(&mut ws, "hi").await, "hi");
    assert_eq!(pipes(), 0.0);
    // Odd sizes around the 64 KiB splice floor, with small frames between,
    // each echoed byte for byte.
    for (i, len) in [1_000_003usize, 65_537, 300_001, 70_000]
        .into_iter()
        .enumerate()
    {
        let body: Vec<u8> = (0..len).map(|k| (k * 7 + k / 251 + i) as u8).collect();
        ws.send(Message::binary(body.clone())).await.expect("send");
        let back = loop {
            match tokio::time::timeout(T, futures_util::StreamExt::next(&mut ws)).await {
                Ok(Some(Ok(Message::Binary(b)))) => break b,
                Ok(Some(Ok(_))) => continue,
                other => panic!("no echo of {len}: {other:?}"),
            }
        };
        assert!(back[..] == body[..], "echo of {len} bytes differs");
        assert_eq!(
            ws_ask(&mut ws, &format!("after {len}")).await,
            format!("after {len}")
        );
    }
    // One pipe per direction, kept while the tunnel is open.
    assert_eq!(pipes(), 2.0);
    assert!(
        metric(
            &levee,
            "levee_websocket_bytes_total",
            &[("direction", "in")]
        ) > 1_435_000.0,
        "spliced bytes are counted"
    );
    // The close frame still finds its place between two frames.
    assert!(levee.sigterm());
    assert_eq!(ws_end(&mut ws, T).await, WsEnd::Close(Some(1001)));
    assert!(
        wait_until_async(T, || server.closes() == vec![Some(1001)]).await,
        "{:?}",
        server.closes()
    );
    let status = levee.wait_exit(T).expect("levee exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_off_reads_every_byte() {
    let server = WsServer::start("w1");
    let listen = free_addr();
    let levee = Levee::start(&config(listen, &[&server], &["splice = false"]).build());
    let mut ws = ws_connect(listen, "/").await;
    let body = vec![b'q'; 500_001];
    ws.send(Message::binary(body.clone())).await.expect("send");
    let back = loop {
        match tokio::time::timeout(T, futures_util::StreamExt::next(&mut ws)).await {
            Ok(Some(Ok(Message::Binary(b)))) => break b,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no echo: {other:?}"),
        }
    };
    assert!(back[..] == body[..]);
    assert_eq!(metric(&levee, "levee_splice_pipes", &[]), 0.0);
}
