//! The front door of TCP listeners, end to end against the real binary:
//! PROXY protocol headers accepted from a trusted load balancer (the
//! client address they carry reaches the endpoint, the balancer's hash,
//! the per-IP cap, the X-Forwarded-For of an HTTP listener and the access
//! log), bad headers
//! closed and counted; TLS passthrough by SNI to two clusters of real
//! `openssl s_server`s, checked with `openssl s_client`; TLS terminated in
//! front of a TCP echo cluster; and bad input: half-open connections, a
//! client that never reads, a connection flood above the cap; and the
//! splice(2) copy (`copy = "splice"`): bytes intact both ways, the
//! half-close passed on, the idle timeout; and the default `copy = "auto"`:
//! the same across its switch from userspace to splice, and no pipe for a
//! short connection; and `half_close = false`: the first end of file ends
//! the connection.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::tls::{Issued, Pki};
use support::*;

const T: Duration = Duration::from_secs(10);

/// Serves each connection of a fresh listener on its own thread.
fn server(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let serve = serve.clone();
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

/// Greets each connection with `name` and a newline, then echoes.
fn echo_server(name: &'static str) -> SocketAddr {
    server(move |mut s| {
        if s.write_all(format!("{name}\n").as_bytes()).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// Reads the PROXY header Levee sends (v1) and answers the source address
/// it carries, then closes.
fn proxy_reader() -> SocketAddr {
    server(|mut s| {
        let _ = s.set_read_timeout(Some(T));
        let mut line = String::new();
        if BufReader::new(&mut s).read_line(&mut line).is_err() {
            return;
        }
        let answer = match ppp::v1::Header::try_from(line.as_str()) {
            Ok(h) => format!("{}\n", h.addresses),
            Err(_) => "garbage\n".to_owned(),
        };
        let _ = s.write_all(answer.as_bytes());
    })
}

fn read_line(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(T)).expect("timeout");
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while let Ok(1) = s.read(&mut b) {
        if b[0] == b'\n' {
            break;
        }
        out.push(b[0]);
    }
    String::from_utf8_lossy(&out).trim_end().to_owned()
}

/// Whether Levee closes `s` (end of file or reset) without a byte.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(T)).expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn v1(client: &str, to: SocketAddr) -> String {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 {}\r\n", to.port())
}

fn start(cfg: ConfigBuilder) -> Levee {
    Levee::start(&cfg.set("server", "workers = 1").build())
}

#[test]
fn proxy_headers_from_a_trusted_balancer_name_the_client() {
    let reader = proxy_reader();
    let echo = echo_server("e");
    let hashed: Vec<SocketAddr> = ["h1", "h2", "h3"].into_iter().map(echo_server).collect();
    let backend = Backend::start("web");
    let (pp, capped, web, strict) = (free_addr(), free_addr(), free_addr(), free_addr());
    let sticky = free_addr();
    let trusted = "proxy_protocol = { trusted = [\"127.0.0.1\"], timeout = \"500ms\" }";
    let levee = start(
        ConfigBuilder::new()
            .listener_with(
                "pp",
                pp,
                &["protocol = \"tcp\"", "cluster = \"reader\"", trusted],
            )
            .listener_with(
                "capped",
                capped,
                &[
                    "protocol = \"tcp\"",
                    "cluster = \"echo\"",
                    "max_connections_per_ip = 1",
                    trusted,
                ],
            )
            .listener_with("web", web, &[trusted])
            .listener_with(
                "strict",
                strict,
                &[
                    "protocol = \"tcp\"",
                    "cluster = \"echo\"",
                    "proxy_protocol = { trusted = [\"127.0.0.2/32\"] }",
                ],
            )
            .listener_with(
                "sticky",
                sticky,
                &["protocol = \"tcp\"", "cluster = \"hashed\"", trusted],
            )
            .cluster_with("hashed", &hashed, &["balance = \"consistent_hash\""])
            .cluster_with("reader", &[reader], &["send_proxy_protocol = \"v1\""])
            .cluster("echo", &[echo])
            .cluster("web", &[backend.addr()])
            .route("all", "web"),
    );

    // v1 in, v1 out: the endpoint learns the client the balancer named.
    let mut c = TcpStream::connect(pp).expect("connect");
    c.write_all(v1("192.0.2.7", pp).as_bytes()).expect("write");
    assert_eq!(
        read_line(&mut c),
        format!("PROXY TCP4 192.0.2.7 127.0.0.1 40000 {}", pp.port())
    );
    // v2 in, split over two writes, with bytes right behind it.
    let source: SocketAddr = "198.51.100.9:5555".parse().unwrap();
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, pp),
    )
    .build()
    .expect("v2 header");
    let mut c = TcpStream::connect(pp).expect("connect");
    c.write_all(&v2[..10]).expect("write");
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(&v2[10..]).expect("write");
    assert_eq!(
        read_line(&mut c),
        format!("PROXY TCP4 198.51.100.9 127.0.0.1 5555 {}", pp.port())
    );
    drop(c);
    // The access log names the carried client.
    assert!(
        wait_until(T, || levee
            .stdout_text()
            .contains("\"client\":\"198.51.100.9:5555\"")),
        "{}",
        levee.logs()
    );

    // The balancer's hash places the carried address: every connection
    // comes from 127.0.0.1, yet each named client keeps its endpoint and
    // the clients spread.
    let through = |client: &str| {
        let mut c = TcpStream::connect(sticky).expect("connect");
        c.write_all(v1(client, sticky).as_bytes()).expect("write");
        read_line(&mut c)
    };
    let mut names = std::collections::HashSet::new();
    for i in 1..=8 {
        let client = format!("192.0.2.{i}");
        let first = through(&client);
        for _ in 0..3 {
            assert_eq!(through(&client), first, "{client} moved");
        }
        names.insert(first);
    }
    assert!(names.len() >= 2, "eight clients on one endpoint: {names:?}");

    // The per-IP cap counts the carried address, not the balancer's.
    let mut first = TcpStream::connect(capped).expect("connect");
    first
        .write_all(v1("192.0.2.1", capped).as_bytes())
        .expect("write");
    assert_eq!(read_line(&mut first), "e");
    let mut same = TcpStream::connect(capped).expect("connect");
    same.write_all(v1("192.0.2.1", capped).as_bytes())
        .expect("write");
    assert!(closed(&mut same), "a second connection of 192.0.2.1");
    let mut other = TcpStream::connect(capped).expect("connect");
    other
        .write_all(v1("192.0.2.2", capped).as_bytes())
        .expect("write");
    assert_eq!(read_line(&mut other), "e");
    assert_eq!(
        levee.metric(
            "levee_connections_per_ip_refused_total",
            &[("listener", "capped")]
        ),
        Some(1.0)
    );

    // An HTTP listener: the carried address is X-Forwarded-For's.
    let mut c = TcpStream::connect(web).expect("connect");
    c.set_read_timeout(Some(T)).expect("timeout");
    c.write_all(
        format!(
            "{}GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            v1("203.0.113.5", web)
        )
        .as_bytes(),
    )
    .expect("write");
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"x-forwarded-for\":[\"203.0.113.5\"]"),
        "{answer}"
    );

    // Bad headers: closed and counted by reason; the listener serves on.
    let refused = |listener: &str, reason: &str| {
        levee.metric(
            "levee_proxy_protocol_refused_total",
            &[("listener", listener), ("reason", reason)],
        )
    };
    let mut c = TcpStream::connect(capped).expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    assert!(closed(&mut c), "no PROXY header");
    assert_eq!(refused("capped", "missing"), Some(1.0));
    let mut c = TcpStream::connect(capped).expect("connect");
    c.write_all(b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n")
        .expect("write");
    assert!(closed(&mut c), "a malformed header");
    assert_eq!(refused("capped", "malformed"), Some(1.0));
    let mut c = TcpStream::connect(capped).expect("connect");
    c.write_all(&[b'\r'; 400]).expect("write");
    assert!(closed(&mut c), "binary garbage");
    assert_eq!(refused("capped", "missing"), Some(2.0));
    let mut c = TcpStream::connect(capped).expect("connect");
    c.write_all(b"PROXY TCP4 192.0.2.").expect("write");
    let t0 = Instant::now();
    assert!(closed(&mut c), "half a header, then silence");
    assert!(
        t0.elapsed() >= Duration::from_millis(400) && t0.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        t0.elapsed()
    );
    assert_eq!(refused("capped", "timeout"), Some(1.0));
    // 127.0.0.1 is not trusted on `strict`: even a good header is refused.
    let mut c = TcpStream::connect(strict).expect("connect");
    c.write_all(v1("192.0.2.1", strict).as_bytes())
        .expect("write");
    assert!(closed(&mut c), "an untrusted balancer");
    assert_eq!(refused("strict", "untrusted"), Some(1.0));
    // Those open are not disturbed.
    first.write_all(b"still\n").expect("write");
    assert_eq!(read_line(&mut first), "still");
}

/// `openssl s_server` for one certificate, stopped on drop.
struct OpensslServer {
    child: Child,
    addr: SocketAddr,
}

impl OpensslServer {
    fn start(cert: &Issued) -> OpensslServer {
        let addr = free_addr();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(&cert.cert)
            .arg("-key")
            .arg(&cert.key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        assert!(
            wait_until(T, || TcpStream::connect(addr).is_ok()),
            "s_server at {addr}"
        );
        OpensslServer { child, addr }
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `openssl s_client -servername NAME` reports: the peer certificate's
/// subject and whether it verified against the CA.
fn s_client(at: SocketAddr, name: &str, ca: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error", "-connect"])
        .arg(at.to_string())
        .args(["-servername", name, "-CAfile"])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn tls_passes_through_by_sni_to_two_clusters() {
    let pki = Pki::new("ca");
    let a = OpensslServer::start(&pki.server("a", &["a.example.com"], 30));
    let b = OpensslServer::start(&pki.server("b", &["*.b.example.com"], 30));
    let (sni, with_default) = (free_addr(), free_addr());
    let routes = "sni = [{ names = [\"a.example.com\"], cluster = \"a\" }, { names = [\"*.b.example.com\"], cluster = \"b\" }]";
    let levee = start(
        ConfigBuilder::new()
            .listener_with("sni", sni, &["protocol = \"tcp\"", routes])
            .listener_with(
                "fallback",
                with_default,
                &["protocol = \"tcp\"", "cluster = \"b\"", routes],
            )
            .cluster("a", &[a.addr])
            .cluster("b", &[b.addr]),
    );
    // Each name reaches its own server, whose certificate verifies: the
    // TLS was not terminated on the way.
    let out = s_client(sni, "a.example.com", &pki.ca_path);
    assert!(out.contains("CN = a server"), "{out}");
    assert!(out.contains("Verification: OK"), "{out}");
    let out = s_client(sni, "db.b.example.com", &pki.ca_path);
    assert!(out.contains("CN = b server"), "{out}");
    assert!(out.contains("Verification: OK"), "{out}");
    // No route and no default: refused.
    let out = s_client(sni, "c.example.com", &pki.ca_path);
    assert!(!out.contains("CN = "), "{out}");
    assert_eq!(
        levee.metric(
            "levee_tcp_sni_refused_total",
            &[("listener", "sni"), ("reason", "no_match")]
        ),
        Some(1.0)
    );
    // With a default cluster, an unknown name goes there.
    let out = s_client(with_default, "c.example.com", &pki.ca_path);
    assert!(out.contains("CN = b server"), "{out}");
    // Not TLS at all: closed and counted.
    let mut c = TcpStream::connect(sni).expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n")
        .expect("write");
    assert!(closed(&mut c));
    assert_eq!(
        levee.metric(
            "levee_tcp_sni_refused_total",
            &[("listener", "sni"), ("reason", "not_tls")]
        ),
        Some(1.0)
    );
    // One connection relayed to `a`, however it ended (s_client's close
    // and the server's race).
    assert!(wait_until(T, || {
        levee.metric(
            "levee_tcp_connections_total",
            &[("listener", "sni"), ("cluster", "a")],
        ) == Some(1.0)
    }));
}

#[test]
fn tls_is_terminated_in_front_of_a_tcp_cluster() {
    let pki = Pki::new("ca");
    let cert = pki.server("edge", &["echo.example.com"], 30);
    let echo = echo_server("plain");
    let at = free_addr();
    let tls = format!("tls = {{ certificates = [{{ {} }}] }}", cert.toml());
    let _levee = start(
        ConfigBuilder::new()
            .listener_with(
                "tls",
                at,
                &["protocol = \"tcp\"", "cluster = \"echo\"", &tls],
            )
            .cluster("echo", &[echo]),
    );
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("echo.example.com").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let sock = TcpStream::connect(at).expect("connect");
    sock.set_read_timeout(Some(T)).expect("timeout");
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, sock));
    let mut line = String::new();
    tls.read_line(&mut line).expect("greeting over TLS");
    assert_eq!(line, "plain\n");
    for text in ["one\n", "two\n"] {
        tls.get_mut().write_all(text.as_bytes()).expect("write");
        line.clear();
        tls.read_line(&mut line).expect("echo over TLS");
        assert_eq!(line, text);
    }
    assert_eq!(
        tls.get_ref().conn.alpn_protocol(),
        None,
        "no HTTP protocol offered"
    );
    // The echo server saw plain bytes: what came back was decrypted there
    // and encrypted again by Levee. A plain client is not relayed.
    let mut plain = TcpStream::connect(at).expect("connect");
    plain.write_all(b"hello\n").expect("write");
    assert!(closed(&mut plain));
}

#[test]
fn half_open_slow_readers_and_floods_are_bounded() {
    // Reads until the client's end of file, then answers how much it got.
    let counter = server(|mut s| {
        let mut n = 0usize;
        let mut buf = [0u8; 16384];
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
        }
        let _ = s.write_all(format!("got {n}\n").as_bytes());
    });
    // Writes as fast as it may, counting what the socket took.
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let firehose = server(move |mut s| {
        let chunk = vec![b'x'; 64 * 1024];
        while s.write_all(&chunk).is_ok() {
            w.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if w.load(Ordering::Relaxed) > 1 << 30 {
                break;
            }
        }
    });
    let echo = echo_server("e");
    let (half, slow, flood) = (free_addr(), free_addr(), free_addr());
    let levee = start(
        ConfigBuilder::new()
            .listener_with(
                "half",
                half,
                &["protocol = \"tcp\"", "cluster = \"counter\""],
            )
            .listener_with(
                "slow",
                slow,
                &["protocol = \"tcp\"", "cluster = \"firehose\""],
            )
            .listener_with(
                "flood",
                flood,
                &[
                    "protocol = \"tcp\"",
                    "cluster = \"echo\"",
                    "max_connections = 10",
                ],
            )
            .cluster("counter", &[counter])
            .cluster("firehose", &[firehose])
            .cluster("echo", &[echo]),
    );

    // Half-open: the client stops writing; the answer still comes back,
    // then both sides close.
    let mut c = TcpStream::connect(half).expect("connect");
    c.set_read_timeout(Some(T)).expect("timeout");
    c.write_all(&vec![b'y'; 300_000]).expect("write");
    c.shutdown(Shutdown::Write).expect("half close");
    let mut answer = String::new();
    c.read_to_string(&mut answer).expect("read to the end");
    assert_eq!(answer, "got 300000\n");
    assert!(wait_until(T, || {
        levee.metric(
            "levee_tcp_connections_total",
            &[("listener", "half"), ("end", "client_closed")],
        ) == Some(1.0)
    }));

    // A client that never reads: the endpoint is held back by the full
    // buffers, and Levee's memory does not grow with what it would send.
    let rss_before = levee.rss_kib().expect("rss");
    let mut sleeper = TcpStream::connect(slow).expect("connect");
    let mut last = 0;
    let stalled = wait_until(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(500));
        let now = written.load(Ordering::Relaxed);
        let same = now == last && now > 0;
        last = now;
        same
    });
    assert!(stalled, "the endpoint kept writing: {last} bytes");
    // What the kernel buffers hold on both hops (a few MB each at most)
    // plus Levee's 16 KiB per direction, not the gigabyte on offer.
    assert!(last < 64 << 20, "the endpoint wrote {last} bytes");
    let grown = levee.rss_kib().expect("rss").saturating_sub(rss_before);
    assert!(grown < 16 * 1024, "Levee grew {grown} KiB");
    // It still reads what is there once the client reads.
    let mut buf = [0u8; 4096];
    sleeper.set_read_timeout(Some(T)).expect("timeout");
    assert!(sleeper.read(&mut buf).expect("read") > 0);
    drop(sleeper);

    // A flood above max_connections: refused at accept and counted; the
    // ten admitted are served, and a place freed is taken again.
    let mut held: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut c = TcpStream::connect(flood).expect("connect");
            assert_eq!(read_line(&mut c), "e");
            c
        })
        .collect();
    let extra: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(flood).expect("connect"))
        .collect();
    for mut c in extra {
        assert!(closed(&mut c), "a connection above the cap");
    }
    assert_eq!(
        levee.metric("levee_connections_refused_total", &[("listener", "flood")]),
        Some(50.0)
    );
    held[0].write_all(b"served\n").expect("write");
    assert_eq!(read_line(&mut held[0]), "served");
    held.truncate(9);
    assert!(wait_until(T, || {
        let mut c = TcpStream::connect(flood).expect("connect");
        read_line(&mut c) == "e"
    }));
}

#[test]
fn half_close_false_ends_the_connection_at_the_first_end_of_file() {
    // Says "bye", shuts its write side, then reads until the end of file
    // and hands over what it got: what the client sent after the "bye".
    let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<Vec<u8>>>();
    let tx = std::sync::Mutex::new(tx);
    let leaver = server(move |mut s| {
        if s.write_all(b"bye\n").is_err() || s.shutdown(Shutdown::Write).is_err() {
            return;
        }
        let _ = s.set_read_timeout(Some(T));
        let mut got = Vec::new();
        // A timeout is an error, not an end of file.
        let read = s.read_to_end(&mut got).map(|_| got);
        let _ = tx.lock().map(|t| t.send(read));
    });
    let (half, whole, whole_user) = (free_addr(), free_addr(), free_addr());
    let tcp = ["protocol = \"tcp\"", "cluster = \"leaver\""];
    let levee = start(
        ConfigBuilder::new()
            .listener_with("half", half, &tcp)
            .listener_with("whole", whole, &[tcp[0], tcp[1], "half_close = false"])
            .listener_with(
                "whole-user",
                whole_user,
                &[tcp[0], tcp[1], "half_close = false", "copy = \"userspace\""],
            )
            .cluster("leaver", &[leaver]),
    );
    let ended = |listener: &str| {
        wait_until(T, || {
            levee.metric(
                "levee_tcp_connections_total",
                &[("listener", listener), ("end", "endpoint_closed")],
            ) == Some(1.0)
        })
    };

    // Default: the endpoint's end of file is passed on, and the client
    // can still send it bytes until it shuts its own side.
    let mut c = TcpStream::connect(half).expect("connect");
    assert_eq!(read_line(&mut c), "bye");
    assert!(closed(&mut c), "the endpoint's half-close passed on");
    c.write_all(b"more\n")
        .expect("write after the endpoint's end of file");
    c.shutdown(Shutdown::Write).expect("half-close");
    let got = rx.recv_timeout(T).expect("the endpoint's read");
    assert_eq!(got.expect("an end of file"), b"more\n");
    assert!(ended("half"));

    // half_close = false, both copies: the endpoint's end of file ends
    // the connection, what it sent first delivered, while the client
    // still holds its side open: the endpoint reads its end of file.
    for (name, at) in [("whole", whole), ("whole-user", whole_user)] {
        let mut c = TcpStream::connect(at).expect("connect");
        assert_eq!(read_line(&mut c), "bye", "{name}");
        assert!(closed(&mut c), "{name}");
        let got = rx.recv_timeout(T).expect("the endpoint's read ended");
        let got = got.expect("an end of file, not a timeout");
        assert!(got.is_empty(), "{name}: {got:?}");
        assert!(ended(name), "{name}");
        drop(c);
    }
}

/// The byte at `i` of a test stream `seed`: not periodic at any small
/// length, so a lost, repeated or reordered chunk is seen.
fn pattern(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8
}

/// Reads a connection to its end of file, checking each byte against
/// `pattern(seed, _)`; returns how many came and whether all matched.
fn read_pattern(s: &mut TcpStream, seed: u64) -> (u64, bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut at, mut intact) = (0u64, true);
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (at, intact),
            Ok(n) => {
                for &b in &buf[..n] {
                    intact &= b == pattern(seed, at);
                    at += 1;
                }
            }
        }
    }
}

fn write_pattern(s: &mut TcpStream, seed: u64, len: u64) -> std::io::Result<()> {
    let mut at = 0;
    let mut buf = vec![0u8; 50_000];
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(seed, at + k as u64);
        }
        s.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

#[test]
fn splice_copies_bytes_intact_both_ways_through_a_half_close() {
    const UP: u64 = 6_000_000;
    const DOWN: u64 = 9_000_000;
    // Reads the client's whole stream (until its half-close), then
    // answers a line saying what it got, then its own stream, then closes.
    let backend = server(|mut s| {
        let _ = s.set_read_timeout(Some(T));
        let (got, intact) = read_pattern(&mut s, 1);
        if s.write_all(format!("{got} {intact}\n").as_bytes()).is_ok() {
            let _ = write_pattern(&mut s, 2, DOWN);
        }
    });
    let echo = echo_server("e");
    let (at, idle_at) = (free_addr(), free_addr());
    let levee = start(
        ConfigBuilder::new()
            .listener_with(
                "spliced",
                at,
                &[
                    "protocol = \"tcp\"",
                    "cluster = \"sink\"",
                    "copy = \"splice\"",
                ],
            )
            .listener_with(
                "idle",
                idle_at,
                &[
                    "protocol = \"tcp\"",
                    "cluster = \"echo\"",
                    "copy = \"splice\"",
                    "idle_timeout = \"500ms\"",
                ],
            )
            .cluster("sink", &[backend])
            .cluster("echo", &[echo]),
    );
    // Three at once, each both ways, each through a half-close.
    let clients: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(at).expect("connect");
                c.set_read_timeout(Some(T)).expect("timeout");
                let mut w = c.try_clone().expect("clone");
                let writer = std::thread::spawn(move || {
                    write_pattern(&mut w, 1, UP).expect("upload");
                    w.shutdown(Shutdown::Write).expect("half-close");
                });
                let line = read_line(&mut c);
                let (got, intact) = read_pattern(&mut c, 2);
                writer.join().expect("writer");
                (line, got, intact)
            })
        })
        .collect();
    for c in clients {
        let (line, got, intact) = c.join().expect("client");
        assert_eq!(line, format!("{UP} true"), "what the endpoint received");
        assert_eq!((got, intact), (DOWN, true), "what the client received");
    }
    assert!(wait_until(T, || {
        levee.metric("levee_tcp_connections_total", &[("listener", "spliced")]) == Some(3.0)
    }));
    let bytes = |direction| {
        levee
            .metric(
                "levee_tcp_bytes_total",
                &[("listener", "spliced"), ("direction", direction)],
            )
            .unwrap_or(0.0)
    };
    assert_eq!(bytes("in"), (3 * UP) as f64);
    // The answer line, then the stream.
    assert!(bytes("out") >= (3 * DOWN) as f64, "{}", bytes("out"));

    // The bytes went through pipes: one per direction (two descriptors
    // each) while the connection is open, none once it is closed.
    let pipes = || {
        std::fs::read_dir(format!("/proc/{}/fd", levee.pid()))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let before = pipes();
    // The idle timeout holds for a spliced connection: traffic keeps it,
    // silence closes it.
    let mut c = TcpStream::connect(idle_at).expect("connect");
    assert_eq!(read_line(&mut c), "e");
    for i in 0..4 {
        std::thread::sleep(Duration::from_millis(200));
        c.write_all(format!("{i}\n").as_bytes()).expect("write");
        assert_eq!(read_line(&mut c), i.to_string());
    }
    assert_eq!(pipes(), before + 4);
    let quiet = Instant::now();
    assert!(closed(&mut c));
    assert!(
        quiet.elapsed() >= Duration::from_millis(400),
        "{:?}",
        quiet.elapsed()
    );
    assert!(wait_until(T, || {
        levee.metric("levee_tcp_connections_total", &[("end", "idle_timeout")]) == Some(1.0)
    }));
    assert!(wait_until(T, || pipes() == before), "{} pipes", pipes());
}

/// Reads exactly `len` bytes of `pattern(seed, _)`; whether all matched.
fn read_pattern_exact(s: &mut TcpStream, seed: u64, len: u64) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut at, mut intact) = (0u64, true);
    while at < len {
        let want = (len - at).min(buf.len() as u64) as usize;
        match s.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                for &b in &buf[..n] {
                    intact &= b == pattern(seed, at);
                    at += 1;
                }
            }
        }
    }
    intact
}

#[test]
fn auto_copies_in_userspace_then_splices_and_a_short_connection_makes_no_pipe() {
    // Past the 128 KiB switch each way, odd sizes so the last chunk of
    // each phase is a partial one.
    const UP: u64 = 1_234_567;
    const DOWN: u64 = 777_777;
    // Reads the client's stream, answers a line saying whether it was
    // intact, sends its own stream, then waits for the client's end of
    // file and closes.
    let backend = server(|mut s| {
        let _ = s.set_read_timeout(Some(T));
        let intact = read_pattern_exact(&mut s, 3, UP);
        if s.write_all(format!("{intact}\n").as_bytes()).is_ok() {
            let _ = write_pattern(&mut s, 4, DOWN);
            let (rest, _) = read_pattern(&mut s, 0);
            let _ = s.write_all(format!("{rest}\n").as_bytes());
        }
    });
    let echo = echo_server("e");
    let (at, short_at) = (free_addr(), free_addr());
    // No `copy` key: "auto" is the default.
    let levee = start(
        ConfigBuilder::new()
            .listener_with("auto", at, &["protocol = \"tcp\"", "cluster = \"sink\""])
            .listener_with(
                "short",
                short_at,
                &[
                    "protocol = \"tcp\"",
                    "cluster = \"echo\"",
                    "idle_timeout = \"500ms\"",
                ],
            )
            .cluster("sink", &[backend])
            .cluster("echo", &[echo]),
    );
    let pipes = || levee.metric("levee_splice_pipes", &[]);
    assert_eq!(pipes(), Some(0.0));

    // Two at once; both directions pass the switch while the connection
    // is open, so each holds two pipes until it ends.
    let barrier = Arc::new(std::sync::Barrier::new(3));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(at).expect("connect");
                c.set_read_timeout(Some(T)).expect("timeout");
                let mut w = c.try_clone().expect("clone");
                let writer = std::thread::spawn(move || write_pattern(&mut w, 3, UP));
                let line = read_line(&mut c);
                let down = read_pattern_exact(&mut c, 4, DOWN);
                writer.join().expect("writer").expect("upload");
                barrier.wait();
                barrier.wait();
                // The half-close after the switch reaches the endpoint,
                // whose answer (no byte after the stream) comes back.
                c.shutdown(Shutdown::Write).expect("half-close");
                let after = read_line(&mut c);
                let (tail, _) = read_pattern(&mut c, 0);
                (line, down, after, tail)
            })
        })
        .collect();
    barrier.wait();
    let open = pipes();
    barrier.wait();
    for c in clients {
        let (line, down, after, tail) = c.join().expect("client");
        assert_eq!(line, "true", "what the endpoint received");
        assert!(down, "what the client received");
        assert_eq!(after, "0", "bytes the endpoint saw after the stream");
        assert_eq!(tail, 0, "the endpoint's end of file");
    }
    assert_eq!(open, Some(4.0), "a pipe per spliced direction");
    assert!(wait_until(T, || pipes() == Some(0.0)), "{:?}", pipes());
    let bytes = |direction| {
        levee
            .metric(
                "levee_tcp_bytes_total",
                &[("listener", "auto"), ("direction", direction)],
            )
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(T, || bytes("in") == (2 * UP) as f64),
        "{}",
        bytes("in")
    );
    assert_eq!(bytes("out"), (2 * (DOWN + "true\n0\n".len() as u64)) as f64);

    // A short exchange stays in userspace: no pipe, no pipe descriptor;
    // the idle timeout and the half-close hold as for any copy.
    let fd_pipes = || {
        std::fs::read_dir(format!("/proc/{}/fd", levee.pid()))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let before = fd_pipes();
    let mut c = TcpStream::connect(short_at).expect("connect");
    assert_eq!(read_line(&mut c), "e");
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        c.write_all(format!("{i}\n").as_bytes()).expect("write");
        assert_eq!(read_line(&mut c), i.to_string());
    }
    assert_eq!(pipes(), Some(0.0));
    assert_eq!(fd_pipes(), before);
    let quiet = Instant::now();
    assert!(closed(&mut c));
    assert!(
        quiet.elapsed() >= Duration::from_millis(400),
        "{:?}",
        quiet.elapsed()
    );
    assert!(wait_until(T, || {
        levee.metric(
            "levee_tcp_connections_total",
            &[("listener", "short"), ("end", "idle_timeout")],
        ) == Some(1.0)
    }));
    let mut c = TcpStream::connect(short_at).expect("connect");
    assert_eq!(read_line(&mut c), "e");
    c.write_all(b"last\n").expect("write");
    c.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_line(&mut c), "last");
    assert!(closed(&mut c), "the endpoint's close passed on");
    assert!(wait_until(T, || {
        levee.metric(
            "levee_tcp_connections_total",
            &[("listener", "short"), ("end", "client_closed")],
        ) == Some(1.0)
    }));
    assert_eq!(pipes(), Some(0.0));
}
