//! TLS to endpoints (`[clusters.tls]`), end to end: the real binary in front
//! of real TLS servers (`support::tls_upstream::TlsFront`, rustls) with
//! certificates made at test time. Verification against a CA file, SNI,
//! client certificates, pooled TLS connections that stay reusable when the
//! server sends post-handshake messages and are not reused once the server
//! closed them, health checks over TLS, and bad settings refused.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::tls_upstream::{FrontOptions, TestCa, TlsFront, write_pem};
use support::*;

const T: Duration = Duration::from_secs(10);

/// One worker (one pool slot: reuse is deterministic), no access log.
fn base(listen: SocketAddr) -> ConfigBuilder {
    ConfigBuilder::new()
        .listener("main", listen)
        .set("server", "workers = 1")
        .set("access_log", "enabled = false")
}

fn handshakes(levee: &Levee, cluster: &str, result: &str) -> f64 {
    levee
        .metric(
            "levee_upstream_tls_handshakes_total",
            &[("cluster", cluster), ("result", result)],
        )
        .unwrap_or(0.0)
}

fn reused(levee: &Levee) -> f64 {
    levee
        .metric("levee_upstream_requests_total", &[("connection", "reused")])
        .unwrap_or(0.0)
}

#[test]
fn verified_against_a_ca_file_by_ip_or_by_the_sni_setting() {
    let ca = TestCa::new("test ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write_pem(dir.path(), "ca.pem", &ca.cert_pem);
    let b = Backend::start("b1");
    // A certificate for the IP, one for a name only.
    let by_ip = TlsFront::start(b.addr(), &ca.leaf(&["127.0.0.1"]), FrontOptions::default());
    let by_name = TlsFront::start(
        b.addr(),
        &ca.leaf(&["app.internal"]),
        FrontOptions::default(),
    );
    let listen = free_addr();
    let ip_tls = format!("tls = {{ ca_file = {ca_file:?} }}");
    let sni_tls = format!("tls = {{ ca_file = {ca_file:?}, sni = \"app.internal\" }}");
    let config = base(listen)
        .route_with("ip", "ip", &[r#"path_prefix = "/ip""#])
        .route_with("sni", "sni", &[r#"path_prefix = "/sni""#])
        .route_with("nosni", "nosni", &[r#"path_prefix = "/nosni""#])
        .cluster_with("ip", &[by_ip.addr()], &[&ip_tls])
        .cluster_with("sni", &[by_name.addr()], &[&sni_tls])
        .cluster_with(
            "nosni",
            &[by_name.addr()],
            &[&ip_tls, "retry = { max_attempts = 1 }"],
        )
        .build();
    let levee = Levee::start(&config);

    let r = http_get(listen, "/ip").expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-backend"), Some("b1"));
    // An IP address is verified against the certificate's IP and sent no SNI.
    assert_eq!(by_ip.sni(), vec![None]);
    assert_eq!(handshakes(&levee, "ip", "ok"), 1.0);

    let r = http_get(listen, "/sni").expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(by_name.sni(), vec![Some("app.internal".to_string())]);

    // Without `sni` the IP is verified, and the certificate does not name it.
    let r = http_get(listen, "/nosni").expect("request");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(handshakes(&levee, "nosni", "certificate"), 1.0);
    assert_eq!(handshakes(&levee, "nosni", "ok"), 0.0);
    // The server saw the client give up: no request got through.
    assert_eq!(b.requests(), 2);
}

#[test]
fn a_certificate_of_another_ca_is_refused_unless_verify_is_off() {
    let ours = TestCa::new("ours");
    let theirs = TestCa::new("theirs");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write_pem(dir.path(), "ca.pem", &ours.cert_pem);
    let b = Backend::start("b1");
    let front = TlsFront::start(
        b.addr(),
        &theirs.leaf(&["127.0.0.1"]),
        FrontOptions::default(),
    );
    let listen = free_addr();
    let config = base(listen)
        .route_with("strict", "strict", &[r#"path_prefix = "/strict""#])
        .route_with("lax", "lax", &[r#"path_prefix = "/lax""#])
        .cluster_with(
            "strict",
            &[front.addr()],
            &[
                &format!("tls = {{ ca_file = {ca_file:?} }}"),
                "retry = { max_attempts = 1 }",
            ],
        )
        .cluster_with("lax", &[front.addr()], &["tls = { verify = false }"])
        .build();
    let levee = Levee::start(&config);
    let r = http_get(listen, "/strict").expect("request");
    assert_eq!(r.status, 502);
    assert_eq!(handshakes(&levee, "strict", "certificate"), 1.0);
    // Counted when the answer is finished, maybe after the client has it.
    assert!(wait_until(T, || levee
        .metric("levee_errors_total", &[("kind", "upstream_connect")])
        == Some(1.0)));
    assert_eq!(b.requests(), 0);
    let r = http_get(listen, "/lax").expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(handshakes(&levee, "lax", "ok"), 1.0);
    assert_eq!(b.requests(), 1);
}

/// A TLS 1.3 server may send post-handshake messages (session tickets, key
/// updates) at any time; they make the idle pooled connection's socket
/// readable without it being closed. The connection must stay reusable.
#[test]
fn a_pooled_tls13_connection_stays_reusable_after_post_handshake_messages() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write_pem(dir.path(), "ca.pem", &ca.cert_pem);
    let b = Backend::start("b1");
    let front = TlsFront::start(
        b.addr(),
        &ca.leaf(&["127.0.0.1"]),
        FrontOptions {
            key_update_after: Some(Duration::from_millis(50)),
            ..FrontOptions::default()
        },
    );
    let listen = free_addr();
    let config = base(listen)
        .route("all", "app")
        .cluster_with(
            "app",
            &[front.addr()],
            &[&format!("tls = {{ ca_file = {ca_file:?} }}")],
        )
        .build();
    let levee = Levee::start(&config);
    for i in 1..=4u64 {
        let r = http_get(listen, "/").expect("request");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        // The key update reached the connection while it sat in the pool.
        assert!(
            wait_until(T, || front.key_updates() >= i),
            "no key update after request {i}"
        );
    }
    assert_eq!(front.handshakes(), 1, "one TLS connection served all");
    assert_eq!(b.connections(), 1);
    assert_eq!(reused(&levee), 3.0);
    assert_eq!(front.versions(), vec!["TLSv1_3".to_string()]);
    assert_eq!(handshakes(&levee, "app", "ok"), 1.0);
}

#[test]
fn a_tls_connection_the_endpoint_closed_is_not_reused() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write_pem(dir.path(), "ca.pem", &ca.cert_pem);
    let b = Backend::start("b1");
    let front = TlsFront::start(
        b.addr(),
        &ca.leaf(&["127.0.0.1"]),
        FrontOptions {
            idle_close: Some(Duration::from_millis(100)),
            ..FrontOptions::default()
        },
    );
    let listen = free_addr();
    // No retries: a request sent on the closed connection would fail.
    let config = base(listen)
        .route("all", "app")
        .cluster_with(
            "app",
            &[front.addr()],
            &[
                &format!("tls = {{ ca_file = {ca_file:?} }}"),
                "retry = { max_attempts = 1 }",
            ],
        )
        .build();
    let levee = Levee::start(&config);
    for i in 1..=3u64 {
        let r = http_get(listen, "/").expect("request");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert!(wait_until(T, || front.idle_closes() >= i), "no close {i}");
    }
    assert_eq!(front.handshakes(), 3);
    // The later connections resumed the first one's session.
    assert_eq!(front.resumed(), 2);
    assert_eq!(reused(&levee), 0.0);
    assert_eq!(
        levee.metric("levee_errors_total", &[("kind", "upstream_failed")]),
        Some(0.0)
    );
}

#[test]
fn tls12_endpoints_are_pooled_too() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write_pem(dir.path(), "ca.pem", &ca.cert_pem);
    let b = Backend::start("b1");
    let front = TlsFront::start(
        b.addr(),
        &ca.leaf(&["127.0.0.1"]),
        FrontOptions {
            tls12_only: true,
            ..FrontOptions::default()
        },
    );
    let listen = free_addr();
    let config = base(listen)
        .route("all", "app")
        .cluster_with(
            "app",
            &[front.addr()],
            &[&format!("tls = {{ ca_file = {ca_file:?} }}")],
        )
        .build();
    let levee = Levee::start(&config);
    // Bodies larger than a TLS record, both ways.
    let body = vec![b'x'; 100_000];
    let r = http_request(listen, "POST", "/upload", &[], &body, T).expect("request");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"bytes\":100000"), "{}", r.text());
    for _ in 0..2 {
        let r = http_get(listen, "/download?bytes=200000").expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 200_000);
        assert!(is_download_pattern(&r.body));
    }
    assert_eq!(front.versions(), vec!["TLSv1_2".to_string()]);
    assert_eq!(reused(&levee), 2.0);
}

#[test]
fn a_client_certificate_is_presented_when_configured() {
    let server_ca = TestCa::new("server ca");
    let client_ca = TestCa::new("client ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write_pem(dir.path(), "ca.pem", &server_ca.cert_pem);
    let client = client_ca.leaf(&["levee.client"]);
    let cert = write_pem(dir.path(), "client.pem", &client.cert_pem);
    let key = write_pem(dir.path(), "client.key", &client.key_pem);
    let b = Backend::start("b1");
    let front = TlsFront::start(
        b.addr(),
        &server_ca.leaf(&["127.0.0.1"]),
        FrontOptions {
            client_ca: Some(client_ca.cert_pem.clone()),
            ..FrontOptions::default()
        },
    );
    let listen = free_addr();
    let config = base(listen)
        .route_with("mtls", "mtls", &[r#"path_prefix = "/mtls""#])
        .route_with("anon", "anon", &[r#"path_prefix = "/anon""#])
        .cluster_with(
            "mtls",
            &[front.addr()],
            &[&format!(
                "tls = {{ ca_file = {ca_file:?}, cert = {cert:?}, key = {key:?} }}"
            )],
        )
        .cluster_with(
            "anon",
            &[front.addr()],
            &[&format!("tls = {{ ca_file = {ca_file:?} }}")],
        )
        .build();
    let _levee = Levee::start(&config);
    let r = http_get(listen, "/mtls").expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(front.with_client_cert(), 1);
    // Without a certificate the server refuses the handshake.
    let r = http_get(listen, "/anon").expect("request");
    assert_eq!(r.status, 502);
    // Refused after Levee's side of a TLS 1.3 handshake is done, so the try
    // looks like a reset and the default policy tries it once more.
    assert!(wait_until(T, || front.failed_handshakes() >= 1));
    assert_eq!(b.requests(), 1);
}

#[test]
fn health_checks_of_a_tls_cluster_speak_tls() {
    let ca = TestCa::new("ca");
    let other = TestCa::new("other");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write_pem(dir.path(), "ca.pem", &ca.cert_pem);
    let b1 = Backend::start("b1");
    let b2 = Backend::start("b2");
    let good = TlsFront::start(b1.addr(), &ca.leaf(&["127.0.0.1"]), FrontOptions::default());
    // A certificate Levee does not trust: its checks fail at the handshake.
    let bad = TlsFront::start(
        b2.addr(),
        &other.leaf(&["127.0.0.1"]),
        FrontOptions::default(),
    );
    let listen = free_addr();
    let config = base(listen)
        .route("all", "app")
        .cluster_with(
            "app",
            &[good.addr(), bad.addr()],
            &[
                &format!("tls = {{ ca_file = {ca_file:?} }}"),
                r#"health_check = { interval = "200ms", jitter = "0s", timeout = "200ms", path = "/healthz" }"#,
            ],
        )
        .build();
    let levee = Levee::start(&config);
    let state = |addr: SocketAddr, state: &str| {
        levee.metric(
            "levee_endpoint_state",
            &[
                ("cluster", "app"),
                ("endpoint", &addr.to_string()),
                ("state", state),
            ],
        ) == Some(1.0)
    };
    assert!(
        wait_until(T, || state(bad.addr(), "unhealthy")),
        "the endpoint with an untrusted certificate is not UNHEALTHY\n{}",
        levee.logs()
    );
    assert!(state(good.addr(), "healthy"));
    assert!(
        levee.logs().contains("TLS handshake failed"),
        "{}",
        levee.logs()
    );
    // The good endpoint's checks went over TLS, as HTTP requests.
    assert!(b1.recorded().iter().any(|r| r.uri == "/healthz"));
    assert!(good.handshakes() >= 1);
    assert_eq!(b2.requests(), 0);
    for _ in 0..4 {
        let r = http_get(listen, "/").expect("request");
        assert_eq!(r.header("x-backend"), Some("b1"));
    }
}

#[test]
fn levee_check_refuses_missing_and_unparsable_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = write_pem(
        dir.path(),
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    );
    let listen = free_addr();
    let b = free_addr();
    let config = |tls: &str| {
        base(listen)
            .route("all", "app")
            .cluster_with("app", &[b], &[tls])
            .build()
    };
    let (code, _, err) = Levee::check(&config("tls = { ca_file = \"/nonexistent/ca.pem\" }"));
    assert_ne!(code, 0);
    assert!(err.contains("clusters[0].tls.ca_file"), "{err}");
    assert!(
        err.contains("cannot read ca_file /nonexistent/ca.pem"),
        "{err}"
    );
    assert!(err.contains("levee.toml:"), "{err}");
    let (code, _, err) = Levee::check(&config(&format!("tls = {{ ca_file = {garbage:?} }}")));
    assert_ne!(code, 0);
    assert!(err.contains("clusters[0].tls.ca_file"), "{err}");
    assert!(err.contains("is not valid PEM"), "{err}");
    let (code, _, err) = Levee::check(&config(&format!(
        "tls = {{ cert = {garbage:?}, key = {garbage:?} }}"
    )));
    assert_ne!(code, 0);
    assert!(err.contains("clusters[0].tls.cert"), "{err}");
}

#[test]
fn a_reload_with_a_missing_file_keeps_the_old_configuration() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write_pem(dir.path(), "ca.pem", &ca.cert_pem);
    let b = Backend::start("b1");
    let front = TlsFront::start(b.addr(), &ca.leaf(&["127.0.0.1"]), FrontOptions::default());
    let (listen, admin) = (free_addr(), free_addr());
    let config = |ca: &str| {
        base(listen)
            .admin_at(admin)
            .route("all", "app")
            .cluster_with(
                "app",
                &[front.addr()],
                &[&format!("tls = {{ ca_file = {ca:?} }}")],
            )
            .build()
    };
    let levee = Levee::start(&config(&ca_file));
    assert_eq!(http_get(listen, "/").expect("request").status, 200);
    levee.write_config(&config("/nonexistent/ca.pem"));
    let r = levee.admin_request("POST", "/reload", b"").expect("reload");
    assert_ne!(r.status, 200);
    assert!(
        r.text()
            .contains("clusters[0].tls.ca_file: cannot read ca_file"),
        "{}",
        r.text()
    );
    let r = http_get(listen, "/").expect("request");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-backend"), Some("b1"));
}

/// nginx (OpenSSL) as the TLS endpoint, on its own process: what Levee
/// meets in production. Started by this test and killed when dropped.
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(cert_pem: &str, key_pem: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let cert = write_pem(dir.path(), "cert.pem", cert_pem);
        let key = write_pem(dir.path(), "key.pem", key_pem);
        let addr = free_addr();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout 60s;
    server {{
        listen {addr} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "nginx $ssl_protocol sni=[$ssl_server_name] reused=$ssl_session_reused conn=$connection\n"; }}
    }}
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nginx");
        let child = std::process::Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nginx ({bin}): {e}"));
        let mut n = Nginx {
            child,
            addr,
            _dir: dir,
        };
        let up = wait_until(T, || std::net::TcpStream::connect(addr).is_ok());
        if !up {
            let log = std::fs::read_to_string(n._dir.path().join("error.log")).unwrap_or_default();
            let _ = n.child.kill();
            panic!("nginx did not start on {addr}:\n{log}");
        }
        n
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nginx_over_tls13_with_its_session_tickets_is_pooled() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write_pem(dir.path(), "ca.pem", &ca.cert_pem);
    let leaf = ca.leaf(&["127.0.0.1", "app.internal"]);
    let nginx = Nginx::start(&leaf.cert_pem, &leaf.key_pem);
    let listen = free_addr();
    let config = base(listen)
        .route_with("ip", "ip", &[r#"path_prefix = "/ip""#])
        .route_with("name", "name", &[r#"path_prefix = "/name""#])
        .cluster_with(
            "ip",
            &[nginx.addr],
            &[&format!("tls = {{ ca_file = {ca_file:?} }}")],
        )
        .cluster_with(
            "name",
            &[nginx.addr],
            &[&format!(
                "tls = {{ ca_file = {ca_file:?}, sni = \"app.internal\" }}"
            )],
        )
        .build();
    let levee = Levee::start(&config);
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let r = http_get(listen, "/ip").expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        bodies.push(r.text());
    }
    // One connection (the same nginx connection number), TLS 1.3, no SNI.
    assert!(bodies[0].starts_with("nginx TLSv1.3 sni=[] "), "{bodies:?}");
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    assert_eq!(reused(&levee), 2.0);
    let r = http_get(listen, "/name").expect("request");
    assert!(
        r.text().starts_with("nginx TLSv1.3 sni=[app.internal] "),
        "{}",
        r.text()
    );
    assert_eq!(handshakes(&levee, "ip", "ok"), 1.0);
    assert_eq!(handshakes(&levee, "name", "ok"), 1.0);
}

/// An endpoint written `HOST:PORT` is verified against its host name and
/// sends it as SNI, with no `sni` setting.
#[test]
fn a_named_endpoint_is_verified_against_its_host_name() {
    let ca = TestCa::new("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write_pem(dir.path(), "ca.pem", &ca.cert_pem);
    let b = Backend::start("b1");
    // The certificate names only "localhost", not the IP.
    let front = TlsFront::start(b.addr(), &ca.leaf(&["localhost"]), FrontOptions::default());
    let listen = free_addr();
    let port = front.addr().port();
    let config = base(listen)
        .route("all", "app")
        .raw(&format!(
            "[[clusters]]\nname = \"app\"\ntls = {{ ca_file = {ca_file:?} }}\n\
             [[clusters.endpoints]]\naddress = \"localhost:{port}\"\n"
        ))
        .build();
    let levee = Levee::start(&config);
    // "localhost" may also resolve to ::1, where nothing listens: those
    // tries fail to connect and are retried on 127.0.0.1.
    assert!(
        wait_until(T, || http_get(listen, "/").is_ok_and(|r| r.status == 200)),
        "{}",
        levee.logs()
    );
    for _ in 0..3 {
        let r = http_get(listen, "/").expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-backend"), Some("b1"));
    }
    let sni = front.sni();
    assert!(!sni.is_empty());
    assert!(
        sni.iter().all(|s| s.as_deref() == Some("localhost")),
        "{sni:?}"
    );
}

/// Pooled connections are kept per TLS settings: after a reload that
/// changes them, a connection made under the old ones is not reused.
#[test]
fn a_reload_that_changes_the_tls_settings_does_not_reuse_old_connections() {
    let ca = TestCa::new("ca");
    let b = Backend::start("b1");
    let front = TlsFront::start(b.addr(), &ca.leaf(&["127.0.0.1"]), FrontOptions::default());
    let (listen, admin) = (free_addr(), free_addr());
    let config = |tls: &str| {
        base(listen)
            .admin_at(admin)
            .route("all", "app")
            .cluster_with("app", &[front.addr()], &[tls])
            .build()
    };
    let mut levee = Levee::start(&config("tls = { verify = false }"));
    for _ in 0..2 {
        assert_eq!(http_get(listen, "/").expect("request").status, 200);
    }
    assert_eq!(front.handshakes(), 1);
    assert_eq!(reused(&levee), 1.0);
    // The same settings again: the pooled connection stays in use.
    levee.write_config(&config("tls = { verify = false }"));
    let r = levee.admin_request("POST", "/reload", b"").expect("reload");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(http_get(listen, "/").expect("request").status, 200);
    assert_eq!(front.handshakes(), 1);
    // Another SNI: a new connection, made with it.
    levee.write_config(&config("tls = { verify = false, sni = \"b.example\" }"));
    assert!(levee.sighup());
    assert!(
        wait_until(T, || {
            http_get(listen, "/").is_ok_and(|r| r.status == 200) && front.handshakes() == 2
        }),
        "{}",
        levee.logs()
    );
    assert_eq!(front.sni(), vec![None, Some("b.example".to_string())]);
}

/// How failed handshakes are counted: a server that never answers the
/// ClientHello runs out the connect timeout (`504`); a TLS 1.2 server
/// that wants a client certificate refuses us with an alert (`502`).
#[test]
fn handshake_timeouts_and_alerts_are_counted_as_such() {
    let ca = TestCa::new("ca");
    let client_ca = TestCa::new("client ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = write_pem(dir.path(), "ca.pem", &ca.cert_pem);
    // Accepted by the kernel (backlog), never read: the handshake stalls.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let b = Backend::start("b1");
    let picky = TlsFront::start(
        b.addr(),
        &ca.leaf(&["127.0.0.1"]),
        FrontOptions {
            client_ca: Some(client_ca.cert_pem.clone()),
            tls12_only: true,
            ..FrontOptions::default()
        },
    );
    let listen = free_addr();
    let tls = format!("tls = {{ ca_file = {ca_file:?} }}");
    let once = "retry = { max_attempts = 1 }";
    let config = base(listen)
        .route_with("silent", "silent", &[r#"path_prefix = "/silent""#])
        .route_with("picky", "picky", &[r#"path_prefix = "/picky""#])
        .cluster_with(
            "silent",
            &[silent_addr],
            &[&tls, once, r#"connect_timeout = "300ms""#],
        )
        .cluster_with("picky", &[picky.addr()], &[&tls, once])
        .build();
    let levee = Levee::start(&config);
    let started = std::time::Instant::now();
    let r = http_get(listen, "/silent").expect("request");
    assert_eq!(r.status, 504);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(handshakes(&levee, "silent", "timeout"), 1.0);
    let r = http_get(listen, "/picky").expect("request");
    assert_eq!(r.status, 502);
    assert_eq!(handshakes(&levee, "picky", "alert"), 1.0);
    assert_eq!(handshakes(&levee, "picky", "ok"), 0.0);
    assert_eq!(b.requests(), 0);
    drop(silent);
}
