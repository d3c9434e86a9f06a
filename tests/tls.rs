//! TLS termination end to end: certificates made at test time (rcgen), real
//! clients (reqwest over rustls, `openssl s_client`, `curl --resolve`), the
//! real binary.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use support::tls::{Issued, Pki, presented_cn};
use support::*;

const WAIT: Duration = Duration::from_secs(15);

fn tls_table(certs: &[&Issued], extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|c| format!("{{ {} }}", c.toml()))
        .collect();
    format!("tls = {{ certificates = [{}]{extra} }}", list.join(", "))
}

/// `openssl s_client` output for `sni` at `addr`.
fn s_client(addr: SocketAddr, sni: &str, extra: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
        ])
        // Read until Levee closes: a TLS 1.3 session ticket comes after the
        // handshake, and `-sess_out` needs it.
        .arg("-ign_eof")
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    // One request that closes the connection once answered.
    if let Some(mut stdin) = child.stdin.take() {
        let request = format!("HEAD / HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n");
        stdin
            .write_all(request.as_bytes())
            .expect("write to openssl");
    }
    let out = child.wait_with_output().expect("openssl output");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test]
async fn terminates_tls_with_sni_alpn_and_forwarded_proto() {
    let pki = Pki::new("Levee Test CA");
    let a = pki.server("a", &["a.example.com"], 90);
    let wild = pki.server("wild", &["*.example.org"], 90);
    let soon = pki.server("soon", &["soon.example.net"], 5);
    let backend = Backend::start("b1");
    let tls_addr = free_addr();
    let plain_addr = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with(
            "secure",
            tls_addr,
            &[&tls_table(&[&a, &wild, &soon], ", hsts = \"8760h\"")],
        )
        .listener("plain", plain_addr)
        .cluster("app", &[backend.addr()])
        .route_with(
            "secure-only",
            "app",
            &["scheme = \"https\"", "path_prefix = \"/s\""],
        )
        .route_with(
            "plain-only",
            "app",
            &[
                "scheme = \"http\"",
                "path_prefix = \"/s\"",
                "headers = { \"x-never\" = \"1\" }",
            ],
        )
        .route("all", "app")
        .set("access_log", "enabled = true")
        .build();
    // `levee check` warns about the certificate that expires in 5 days.
    let (code, _, err) = Levee::check(&cfg);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("expires in 4 days") || err.contains("expires in 5 days"),
        "{err}"
    );
    let levee = Levee::start(&cfg);

    // reqwest over rustls, SNI a.example.com.
    let url = format!("https://a.example.com:{}/s/x", tls_addr.port());
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("ca")])
        .resolve("a.example.com", tls_addr)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let r = c.get(&url).send().await.expect("https request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.headers()["x-backend"], "b1");
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    let seen = backend.last_request().expect("backend saw the request");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // The plain listener says http, gets no HSTS.
    let r = http_get(plain_addr, "/s/x").expect("plain request");
    assert_eq!(r.status, 200);
    assert!(r.header("strict-transport-security").is_none());
    assert_eq!(
        backend
            .last_request()
            .expect("seen")
            .header("x-forwarded-proto"),
        Some("http")
    );

    // SNI picks the certificate: exact, wildcard, default for unknown names.
    assert_eq!(
        presented_cn(tls_addr, "a.example.com", &pki.ca_pem).as_deref(),
        Ok("a server")
    );
    assert_eq!(
        presented_cn(tls_addr, "x.example.org", &pki.ca_pem).as_deref(),
        Ok("wild server")
    );
    assert_eq!(
        presented_cn(tls_addr, "soon.example.net", &pki.ca_pem).as_deref(),
        Ok("soon server")
    );
    let out = s_client(tls_addr, "unknown.example", &["-alpn", "http/1.1"]);
    assert!(
        out.contains("CN=a server") || out.contains("CN = a server"),
        "{out}"
    );
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    let out = s_client(tls_addr, "b.example.org", &["-tls1_2"]);
    assert!(out.contains("wild server"), "{out}");
    assert!(out.contains("TLSv1.2"), "{out}");

    // curl --resolve for SNI, verified against the test CA.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{ssl_verify_result}",
        ])
        .arg("--resolve")
        .arg(format!("x.example.org:{}:127.0.0.1", tls_addr.port()))
        .arg("--cacert")
        .arg(&pki.ca_path)
        .arg(format!("https://x.example.org:{}/", tls_addr.port()))
        .output()
        .expect("curl is installed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 0",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Plain HTTP to the TLS port: a clear 400, counted.
    let r = send_raw(
        tls_addr,
        b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&r.bytes).into_owned();
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("plain HTTP request was sent to a TLS port"),
        "{text}"
    );

    // Garbage after a TLS record type byte, and a truncated ClientHello.
    let mut s = TcpStream::connect(tls_addr).expect("connect");
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff])
        .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    // A fatal alert record (21), or the connection closed.
    assert!(n == 0 || buf[0] == 0x15, "{:?}", &buf[..n]);
    let mut s = TcpStream::connect(tls_addr).expect("connect");
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("half close");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = s.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || buf[0] == 0x15, "{:?}", &buf[..n]);

    // Still serving after all that.
    let r = c.get(&url).send().await.expect("https request");
    assert_eq!(r.status(), 200);

    let ok = wait_until_async(WAIT, || {
        let m = levee.metrics_text();
        metric_sum(
            &m,
            "levee_connections_wrong_protocol_total",
            &[("protocol", "http")],
        ) == Some(1.0)
            && metric_sum(
                &m,
                "levee_tls_handshake_failures_total",
                &[("listener", "secure"), ("reason", "plain_http")],
            ) == Some(1.0)
            && metric_sum(
                &m,
                "levee_tls_handshake_failures_total",
                &[("listener", "secure"), ("reason", "bad_message")],
            )
            .unwrap_or(0.0)
                + metric_sum(
                    &m,
                    "levee_tls_handshake_failures_total",
                    &[("listener", "secure"), ("reason", "closed")],
                )
                .unwrap_or(0.0)
                >= 2.0
            && metric_sum(
                &m,
                "levee_tls_handshakes_total",
                &[("version", "TLSv1.3"), ("result", "full")],
            )
            .unwrap_or(0.0)
                >= 3.0
            && metric_sum(&m, "levee_tls_handshakes_total", &[("version", "TLSv1.2")])
                .unwrap_or(0.0)
                >= 1.0
    })
    .await;
    assert!(ok, "{}", levee.metrics_text());
    let m = levee.metrics_text();
    let left = metric_sum(
        &m,
        "levee_tls_certificate_expiry_seconds",
        &[("certificate", soon.cert.to_str().expect("utf-8"))],
    )
    .expect("expiry gauge");
    assert!(left > 4.0 * 86_400.0 && left <= 5.0 * 86_400.0, "{left}");

    // The access log names the TLS version and SNI.
    let logged = wait_until_async(WAIT, || {
        levee.stdout_text().lines().any(|l| {
            l.contains("\"tls_version\":\"TLSv1.3\"") && l.contains("\"sni\":\"a.example.com\"")
        })
    })
    .await;
    assert!(logged, "{}", levee.stdout_text());
}

fn https_client(
    pki: &Pki,
    host: &str,
    addr: SocketAddr,
    identity: Option<&Issued>,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("ca")])
        .resolve(host, addr)
        .timeout(Duration::from_secs(10));
    if let Some(id) = identity {
        let pem = format!("{}{}", id.cert_pem, id.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    b.build().expect("client")
}

#[tokio::test]
async fn certificate_replaced_on_change_and_reload_keeps_open_connections() {
    let pki = Pki::new("Reload CA");
    let first = pki.server("site", &["site.example"], 90);
    let backend = Backend::start("b1");
    let addr = free_addr();
    let cfg = ConfigBuilder::new()
        .listener_with("secure", addr, &[&tls_table(&[&first], "")])
        .cluster("app", &[backend.addr()])
        .route("all", "app")
        .build();
    let mut levee = Levee::start(&cfg);
    assert_eq!(
        presented_cn(addr, "site.example", &pki.ca_pem).as_deref(),
        Ok("site server")
    );

    // A client holds a keep-alive connection made with the first certificate.
    let held = https_client(&pki, "site.example", addr, None);
    let url = format!("https://site.example:{}/", addr.port());
    assert_eq!(held.get(&url).send().await.expect("first").status(), 200);
    let connections = backend.connections();

    // The files are replaced by a new certificate (another subject): new
    // handshakes get it without any signal.
    let second = Pki::new("Reload CA 2");
    let renewed = second.server("site2", &["site.example"], 90);
    std::fs::write(&first.cert, &renewed.cert_pem).expect("replace cert");
    std::fs::write(&first.key, &renewed.key_pem).expect("replace key");
    let swapped = wait_until_async(WAIT, || {
        presented_cn(addr, "site.example", &second.ca_pem).as_deref() == Ok("site2 server")
    })
    .await;
    assert!(swapped, "{}", levee.logs());
    // The held connection still works (its session is the old certificate's).
    assert_eq!(held.get(&url).send().await.expect("held").status(), 200);
    let m = levee.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "levee_tls_certificate_reloads_total",
            &[("result", "ok")]
        ),
        Some(1.0),
        "{m}"
    );
    let handshakes =
        metric_sum(&m, "levee_tls_handshakes_total", &[("result", "full")]).unwrap_or(0.0);
    // One handshake for `held` in all: its second request reused the connection.
    assert!(handshakes >= 3.0, "{m}");
    assert!(backend.connections() >= connections);

    // A key that does not match: refused, the current certificate keeps serving.
    let stray = pki.server("stray", &["site.example"], 90);
    std::fs::write(&first.key, &stray.key_pem).expect("bad key");
    let refused = wait_until_async(WAIT, || {
        metric_sum(
            &levee.metrics_text(),
            "levee_tls_certificate_reloads_total",
            &[("result", "failed")],
        ) == Some(1.0)
    })
    .await;
    assert!(refused, "{}", levee.metrics_text());
    assert_eq!(
        presented_cn(addr, "site.example", &second.ca_pem).as_deref(),
        Ok("site2 server")
    );
    // SIGHUP reload with the mismatch still there: refused as a whole.
    assert!(levee.sighup());
    let logged = wait_until_async(WAIT, || {
        levee
            .logs()
            .contains("is not the private key of the certificate")
    })
    .await;
    assert!(logged, "{}", levee.logs());
    // Fixed, then POST /reload applies.
    std::fs::write(&first.key, &renewed.key_pem).expect("good key");
    assert_eq!(levee.reload_via_admin(), 200, "{}", levee.logs());
    assert_eq!(
        held.get(&url)
            .send()
            .await
            .expect("held after reload")
            .status(),
        200
    );
    assert_eq!(
        presented_cn(addr, "site.example", &second.ca_pem).as_deref(),
        Ok("site2 server")
    );
}

#[tokio::test]
async fn mutual_tls_accepts_a_known_client_and_refuses_others() {
    let pki = Pki::new("mTLS CA");
    let server = pki.server("srv", &["api.example"], 90);
    let alice = pki.client("alice", "alice");
    let stranger_ca = Pki::new("Other CA");
    let mallory = stranger_ca.client("mallory", "mallory");
    let backend = Backend::start("b1");
    let addr = free_addr();
    let ca = format!(", client_ca = {:?}", pki.ca_path);
    let cfg = ConfigBuilder::new()
        .listener_with("mtls", addr, &[&tls_table(&[&server], &ca)])
        .cluster("app", &[backend.addr()])
        .route_with(
            "alice",
            "app",
            &[
                "headers = { \"x-client-cert-subject\" = \"CN=alice\" }",
                "path_prefix = \"/alice\"",
            ],
        )
        .route_with("rest", "app", &["path_prefix = \"/other\""])
        .set("access_log", "enabled = true")
        .build();
    let levee = Levee::start(&cfg);
    let url = |p: &str| format!("https://api.example:{}{p}", addr.port());

    let c = https_client(&pki, "api.example", addr, Some(&alice));
    let r = c
        .get(url("/alice"))
        .header("x-client-cert-subject", "CN=forged")
        .send()
        .await
        .expect("alice");
    assert_eq!(r.status(), 200);
    assert_eq!(
        backend
            .last_request()
            .expect("seen")
            .header("x-client-cert-subject"),
        Some("CN=alice")
    );

    // No certificate, or one from another CA: the handshake fails.
    let none = https_client(&pki, "api.example", addr, None);
    assert!(none.get(url("/other")).send().await.is_err());
    let other = https_client(&pki, "api.example", addr, Some(&mallory));
    assert!(other.get(url("/other")).send().await.is_err());
    let ok = wait_until_async(WAIT, || {
        let m = levee.metrics_text();
        metric_sum(
            &m,
            "levee_tls_handshake_failures_total",
            &[("reason", "client_certificate_missing")],
        )
        .unwrap_or(0.0)
            >= 1.0
            && metric_sum(
                &m,
                "levee_tls_handshake_failures_total",
                &[("reason", "client_certificate_invalid")],
            )
            .unwrap_or(0.0)
                >= 1.0
    })
    .await;
    assert!(ok, "{}", levee.metrics_text());
    let logged = wait_until_async(WAIT, || {
        levee
            .stdout_text()
            .contains("\"client_subject\":\"CN=alice\"")
    })
    .await;
    assert!(logged, "{}", levee.stdout_text());
}

#[tokio::test]
async fn plain_listener_redirects_to_https_and_tickets_resume_sessions() {
    let pki = Pki::new("Redirect CA");
    let server = pki.server("srv", &["www.example"], 90);
    let backend = Backend::start("b1");
    let plain = free_addr();
    let secure = free_addr();
    let keys = pki.write("tickets.key", &[7u8; 160]);
    let cfg = ConfigBuilder::new()
        .listener_with(
            "plain",
            plain,
            &[
                "redirect_https = true",
                &format!("https_port = {}", secure.port()),
            ],
        )
        .listener_with(
            "secure",
            secure,
            &[&tls_table(
                &[&server],
                &format!(", ticket_key_file = {keys:?}"),
            )],
        )
        .cluster("app", &[backend.addr()])
        .route("all", "app")
        .build();
    let levee = Levee::start(&cfg);
    let r = send_raw(
        plain,
        b"POST /a/b?c=1 HTTP/1.1\r\nhost: www.example\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx",
        Duration::from_secs(5),
    );
    assert_eq!(r.status, Some(308), "{}", r.text);
    let location = format!(
        "location: https://www.example:{}/a/b?c=1\r\n",
        secure.port()
    );
    assert!(
        r.text.to_ascii_lowercase().contains(&location),
        "{}",
        r.text
    );
    assert_eq!(backend.requests(), 0);

    // openssl: a session saved from one connection resumes on the next.
    let sess = pki.dir.path().join("session.pem");
    let first = s_client(
        secure,
        "www.example",
        &["-tls1_3", "-sess_out", sess.to_str().expect("utf-8")],
    );
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let second = s_client(
        secure,
        "www.example",
        &["-tls1_3", "-sess_in", sess.to_str().expect("utf-8")],
    );
    assert!(second.contains("Reused, TLSv1.3"), "{second}");
    let resumed = wait_until_async(WAIT, || {
        metric_sum(
            &levee.metrics_text(),
            "levee_tls_handshakes_total",
            &[("result", "resumed")],
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(resumed, "{}", levee.metrics_text());
}

#[test]
fn check_refuses_bad_tls_files_with_their_position() {
    let pki = Pki::new("Check CA");
    let good = pki.server("good", &["good.example"], 90);
    let other = pki.server("other", &["other.example"], 90);
    let garbage = pki.write(
        "garbage.pem",
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let addr = free_addr();
    let config = |certs: &str| {
        ConfigBuilder::new()
            .listener_with(
                "secure",
                addr,
                &[&format!("tls = {{ certificates = [{certs}] }}")],
            )
            .cluster("app", &[addr])
            .route("all", "app")
            .build()
    };
    let line_of =
        |cfg: &str, needle: &str| cfg.lines().position(|l| l.contains(needle)).expect("line") + 1;
    // A missing file.
    let cfg = config(&format!(
        "{{ cert = \"/nonexistent/cert.pem\", key = {:?} }}",
        good.key
    ));
    let (code, _, err) = Levee::check(&cfg);
    assert_eq!(code, 1);
    let at = format!(":{}:", line_of(&cfg, "nonexistent"));
    assert!(
        err.contains(&at)
            && err.contains("listeners[0].tls.certificates[0].cert")
            && err.contains("cannot read /nonexistent/cert.pem"),
        "{err}"
    );
    // A key that is not the certificate's.
    let cfg = config(&format!(
        "{{ cert = {:?}, key = {:?} }}",
        good.cert, other.key
    ));
    let (code, _, err) = Levee::check(&cfg);
    assert_eq!(code, 1);
    assert!(
        err.contains("listeners[0].tls.certificates[0].key")
            && err.contains("is not the private key"),
        "{err}"
    );
    // A certificate that does not parse.
    let cfg = config(&format!("{{ cert = {garbage:?}, key = {:?} }}", good.key));
    let (code, _, err) = Levee::check(&cfg);
    assert_eq!(code, 1);
    assert!(
        err.contains("listeners[0].tls.certificates[0].cert") && err.contains("garbage.pem"),
        "{err}"
    );
    // And the good pair passes without warnings.
    let cfg = config(&format!("{{ {} }}", good.toml()));
    let (code, _, err) = Levee::check(&cfg);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

/// With `alpn = ["h2", "http/1.1"]` and HTTP/2 enabled, a client that
/// negotiates h2 is served HTTP/2 over TLS (each stream through the
/// pipeline); one that offers only HTTP/1.1 still gets it. Without HTTP/2
/// enabled, `h2` in `alpn` is refused with its place.
#[tokio::test]
async fn alpn_h2_serves_http2_over_tls() {
    let pki = Pki::new("Levee Test CA");
    let a = pki.server("a", &["a.example.com"], 90);
    let backend = Backend::start("b1");
    let tls_addr = free_addr();
    let listener = |http2: &str| {
        ConfigBuilder::new()
            .listener_with(
                "secure",
                tls_addr,
                &[&tls_table(&[&a], ", alpn = [\"h2\", \"http/1.1\"]"), http2],
            )
            .cluster("app", &[backend.addr()])
            .route("all", "app")
            .build()
    };
    let (code, _, err) = Levee::check(&listener(""));
    assert_eq!(code, 1, "h2 without HTTP/2 must be refused");
    assert!(
        err.contains("alpn[0]") && err.contains("[listeners.http2] enabled = true"),
        "{err}"
    );

    let _levee = Levee::start(&listener("http2 = { enabled = true }"));
    let url = format!("https://a.example.com:{}/x", tls_addr.port());
    let h2 = https_client(&pki, "a.example.com", tls_addr, None);
    for _ in 0..3 {
        let r = h2.get(&url).send().await.expect("h2 request");
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.headers()["x-backend"], "b1");
    }
    let seen = backend.last_request().expect("backend saw the request");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    let h1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("ca")])
        .resolve("a.example.com", tls_addr)
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let r = h1.get(&url).send().await.expect("http/1.1 request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
}
