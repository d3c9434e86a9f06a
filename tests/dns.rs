//! Endpoints by name, against a real DNS server: one `dnsmasq` on a loopback
//! port for the whole binary, serving A records from files in a hosts
//! directory (re-read on change) and fixed SRV records. Backends listen on
//! 127.0.0.2 and up, which Linux routes to loopback without setup.
//!
//! Tests take the server's lock for their whole run: one of them stops the
//! server, and the others must not see that.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use support::*;

/// The fixed SRV records: (target host, its IP, port, priority, weight).
struct SrvRecord {
    host: &'static str,
    ip: [u8; 4],
    port: u16,
    priority: u16,
    weight: u16,
}

struct Dnsmasq {
    child: Option<Child>,
    port: u16,
    hosts: tempfile::TempDir,
    srv: Vec<SrvRecord>,
}

impl Dnsmasq {
    fn start() -> Dnsmasq {
        let srv = vec![
            SrvRecord {
                host: "b1.srv.test",
                ip: [127, 0, 0, 5],
                port: free_port(),
                priority: 10,
                weight: 3,
            },
            SrvRecord {
                host: "b2.srv.test",
                ip: [127, 0, 0, 6],
                port: free_port(),
                priority: 10,
                weight: 1,
            },
            // A worse priority: a backup, idle while the others serve.
            SrvRecord {
                host: "b3.srv.test",
                ip: [127, 0, 0, 7],
                port: free_port(),
                priority: 20,
                weight: 1,
            },
        ];
        let mut d = Dnsmasq {
            child: None,
            port: free_port(),
            hosts: tempfile::tempdir().expect("temp dir"),
            srv,
        };
        d.spawn();
        d
    }

    fn binary() -> PathBuf {
        ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("dnsmasq"))
    }

    fn spawn(&mut self) {
        // The server lives in a static, which is never dropped: a small
        // shell stays with it and stops it when this test process is gone
        // (or when the shell is killed), so no dnsmasq outlives the tests.
        let watchdog = format!(
            "\"$0\" \"$@\" & d=$!; trap 'kill $d 2>/dev/null; wait $d; exit 0' TERM; \
             while kill -0 {pid} 2>/dev/null && kill -0 $d 2>/dev/null; do sleep 0.2; done; \
             kill $d 2>/dev/null; wait $d; kill -0 {pid} 2>/dev/null || rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.hosts.path().display()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(watchdog).arg(Self::binary());
        cmd.args([
            "--no-daemon",
            "--keep-in-foreground",
            &format!("--port={}", self.port),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--local-ttl=1",
            "--user=root",
            &format!("--hostsdir={}", self.hosts.path().display()),
        ]);
        for r in &self.srv {
            let ip = std::net::Ipv4Addr::from(r.ip);
            cmd.arg(format!("--host-record={},{ip}", r.host));
            cmd.arg(format!(
                "--srv-host=_http._tcp.srv.test,{},{},{},{}",
                r.host, r.port, r.priority, r.weight
            ));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs (apt-get install dnsmasq)");
        self.child = Some(child);
        // Ready when it answers on its port: the UDP socket is bound before
        // dnsmasq reads its hosts, so wait for a name we put there.
        self.set_hosts("probe", &[("probe.test", [127, 0, 0, 1])]);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || query_a(port, "probe.test")),
            "dnsmasq answers on 127.0.0.1:{port}"
        );
    }

    /// Stops the server and returns once it is gone.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM to the shell: it stops dnsmasq, waits for it, exits.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Writes one hosts file of the directory (each test has its own);
    /// dnsmasq notices the change by itself.
    fn set_hosts(&self, file: &str, entries: &[(&str, [u8; 4])]) {
        let text: String = entries
            .iter()
            .map(|(name, ip)| format!("{} {name}\n", std::net::Ipv4Addr::from(*ip)))
            .collect();
        // Write then rename, so dnsmasq never reads half a file.
        let tmp = self.hosts.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write hosts");
        std::fs::rename(&tmp, self.hosts.path().join(file)).expect("rename hosts");
    }

    fn nameserver(&self) -> String {
        format!("nameservers = [\"127.0.0.1:{}\"]", self.port)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a minimal A query for `name` gets an answer with at least one
/// record (hand-built packet: the test does not lean on the resolver under
/// test to decide that the server is up).
fn query_a(port: u16, name: &str) -> bool {
    let Ok(socket) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    if socket.send_to(&packet, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    match socket.recv(&mut buf) {
        // ANCOUNT is bytes 6-7.
        Ok(n) if n >= 12 => u16::from_be_bytes([buf[6], buf[7]]) > 0,
        _ => false,
    }
}

fn dns() -> MutexGuard<'static, Dnsmasq> {
    static DNS: OnceLock<Mutex<Dnsmasq>> = OnceLock::new();
    DNS.get_or_init(|| Mutex::new(Dnsmasq::start()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn at(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// A config with one listener, one route and cluster `app` whose single
/// endpoint is `address`, resolved through the test's dnsmasq with short
/// TTL bounds.
fn config(d: &Dnsmasq, listen: SocketAddr, address: &str, cluster_lines: &str) -> String {
    ConfigBuilder::new()
        .listener("main", listen)
        .route("all", "app")
        .set("dns", &d.nameserver())
        .set("dns", "min_ttl = \"200ms\"")
        .set("dns", "max_ttl = \"1s\"")
        .set("dns", "timeout = \"300ms\"")
        .raw(&format!(
            "[[clusters]]\nname = \"app\"\n{cluster_lines}\n\
             [[clusters.endpoints]]\naddress = \"{address}\"\n"
        ))
        .build()
}

#[test]
fn a_name_follows_its_records_new_addresses_warm_up_and_old_ones_drain() {
    let d = dns();
    let port = free_port();
    let b2 = Backend::start_on("b2", at([127, 0, 0, 2], port));
    let b3 = Backend::start_on("b3", at([127, 0, 0, 3], port));
    let b4 = Backend::start_on("b4", at([127, 0, 0, 4], port));
    d.set_hosts(
        "follow",
        &[
            ("follow.test", [127, 0, 0, 2]),
            ("follow.test", [127, 0, 0, 3]),
        ],
    );
    let listen = free_addr();
    let levee = Levee::start(&config(
        &d,
        listen,
        &format!("follow.test:{port}"),
        "[clusters.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\njitter = \"0ms\"\n\
         healthy_threshold = 2\n",
    ));

    // Both addresses serve from the start (resolved before serving).
    for _ in 0..20 {
        assert_eq!(http_get(listen, "/").expect("request").status, 200);
    }
    let (n2, n3) = (b2.requests(), b3.requests());
    assert!(
        n2 >= 8 && n3 >= 8,
        "spread over both addresses: {n2} and {n3} (health checks included)"
    );

    // A slow request in flight on 127.0.0.2 (round robin: one of two lands
    // there).
    let slow: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || http_get(listen, "/slow?delay=2s")))
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || b2.in_flight() >= 1),
        "a slow request is in flight on 127.0.0.2"
    );

    // The records change: 127.0.0.4 comes, 127.0.0.2 goes.
    d.set_hosts(
        "follow",
        &[
            ("follow.test", [127, 0, 0, 3]),
            ("follow.test", [127, 0, 0, 4]),
        ],
    );
    let new = format!("127.0.0.4:{port}");
    let warmed = wait_until(Duration::from_secs(10), || {
        levee
            .metric(
                "levee_endpoint_transitions_total",
                &[("endpoint", &new), ("from", "warming"), ("to", "healthy")],
            )
            .unwrap_or(0.0)
            >= 1.0
    });
    assert!(warmed, "127.0.0.4 appeared WARMING and passed its checks");
    let kept = format!("127.0.0.3:{port}");
    assert_eq!(
        levee
            .metric(
                "levee_endpoint_transitions_total",
                &[("endpoint", &kept), ("from", "warming")],
            )
            .unwrap_or(0.0),
        0.0,
        "127.0.0.3 stayed: its state was kept, it did not start over WARMING"
    );
    assert_eq!(
        levee.metric(
            "levee_endpoint_state",
            &[("endpoint", &kept), ("state", "healthy")]
        ),
        Some(1.0)
    );
    let gone = format!("127.0.0.2:{port}");
    assert_eq!(
        levee.metric(
            "levee_endpoint_state",
            &[("endpoint", &gone), ("state", "draining")]
        ),
        Some(1.0),
        "127.0.0.2 is draining"
    );

    // The slow requests finish, the one on the removed address included.
    for s in slow {
        let r = s.join().expect("thread").expect("slow request");
        assert_eq!(r.status, 200);
    }
    assert_eq!(b2.in_flight(), 0);

    // New requests go to .3 and .4 only.
    let before = (b2.requests(), b4.requests());
    for _ in 0..20 {
        assert_eq!(http_get(listen, "/").expect("request").status, 200);
    }
    assert_eq!(b2.requests(), before.0, "nothing new reaches 127.0.0.2");
    assert!(
        b4.requests() >= before.1 + 10,
        "127.0.0.4 takes its share: {} -> {}",
        before.1,
        b4.requests()
    );
    assert!(
        levee.stdout_text().contains("now resolves to")
            || levee.stderr_text().contains("now resolves to"),
        "the change is logged"
    );
}

#[test]
fn when_the_dns_server_is_down_the_last_known_addresses_keep_serving() {
    let mut d = dns();
    let b = Backend::start_on("b", at([127, 0, 0, 2], free_port()));
    d.set_hosts("outage", &[("outage.test", [127, 0, 0, 2])]);
    let listen = free_addr();
    let levee = Levee::start(&config(
        &d,
        listen,
        &format!("outage.test:{}", b.addr().port()),
        "",
    ));
    let failed = |levee: &Levee| {
        levee.metric(
            "levee_dns_lookups_total",
            &[("name", "outage.test"), ("result", "failed")],
        )
    };
    assert_eq!(failed(&levee), Some(0.0), "the failure counter exists at 0");
    assert_eq!(http_get(listen, "/").expect("request").status, 200);

    d.stop();
    let grew = wait_until(Duration::from_secs(10), || {
        failed(&levee).unwrap_or(0.0) >= 2.0
    });
    d.spawn();
    assert!(grew, "failed lookups are counted: {:?}", failed(&levee));
    let before = b.requests();
    for _ in 0..10 {
        assert_eq!(http_get(listen, "/").expect("request").status, 200);
    }
    assert_eq!(b.requests(), before + 10, "the last known address served");
    assert!(
        levee
            .stdout_text()
            .contains("keeping the last known addresses")
            || levee
                .stderr_text()
                .contains("keeping the last known addresses"),
        "the outage is logged"
    );
}

#[test]
fn srv_records_give_ports_weights_and_backups() {
    let d = dns();
    let backends: Vec<Backend> = d
        .srv
        .iter()
        .map(|r| Backend::start_on(r.host, at(r.ip, r.port)))
        .collect();
    let listen = free_addr();
    let _levee = Levee::start(&config(
        &d,
        listen,
        "srv:_http._tcp.srv.test",
        "balance = \"weighted_round_robin\"",
    ));
    for _ in 0..40 {
        assert_eq!(http_get(listen, "/").expect("request").status, 200);
    }
    let counts: Vec<u64> = backends.iter().map(Backend::requests).collect();
    assert_eq!(
        counts,
        [30, 10, 0],
        "weights 3:1 on their own ports; the priority-20 target is a backup"
    );
}

#[test]
fn a_name_that_does_not_resolve_yet_starts_empty_and_fills_in() {
    let d = dns();
    let b = Backend::start_on("late", at([127, 0, 0, 3], free_port()));
    d.set_hosts("late", &[]);
    let listen = free_addr();
    let levee = Levee::start(&config(
        &d,
        listen,
        &format!("late.test:{}", b.addr().port()),
        "",
    ));
    let r = http_get(listen, "/").expect("request");
    assert_eq!(r.status, 503, "no endpoint yet: {}", r.text());
    assert!(r.text().contains("no_endpoint"), "{}", r.text());

    d.set_hosts("late", &[("late.test", [127, 0, 0, 3])]);
    let served = wait_until(Duration::from_secs(10), || {
        http_get(listen, "/").is_ok_and(|r| r.status == 200)
    });
    assert!(served, "the name resolved and its address serves");
    assert!(b.requests() >= 1);
    drop(levee);
}

#[test]
fn check_validates_names_without_dns_and_refuses_bad_addresses() {
    let listen = free_addr();
    let ok = ConfigBuilder::new()
        .listener("main", listen)
        .route("all", "app")
        .raw(
            "[[clusters]]\nname = \"app\"\n\
             [[clusters.endpoints]]\naddress = \"nowhere.invalid:8080\"\n\
             [[clusters.endpoints]]\naddress = \"srv:_http._tcp.nowhere.invalid\"\n",
        )
        .build();
    let (code, out, err) = Levee::check(&ok);
    assert_eq!(code, 0, "names need no DNS to validate: {out} {err}");

    let bad = ok.replace("nowhere.invalid:8080", "nowhere.invalid:0");
    let (code, _, err) = Levee::check(&bad);
    assert_eq!(code, 1);
    assert!(
        err.contains("clusters[0].endpoints[0].address") && err.contains("HOST:PORT"),
        "{err}"
    );

    let weighted = ok.replace(
        "address = \"srv:_http._tcp.nowhere.invalid\"",
        "address = \"srv:_http._tcp.nowhere.invalid\"\nweight = 5",
    );
    let (code, _, err) = Levee::check(&weighted);
    assert_eq!(code, 1);
    assert!(
        err.contains("clusters[0].endpoints[1].weight") && err.contains("SRV"),
        "{err}"
    );
}

#[test]
fn a_reload_keeps_resolved_names_and_resolves_new_ones() {
    let d = dns();
    let port = free_port();
    let one = Backend::start_on("one", at([127, 0, 0, 2], port));
    let two = Backend::start_on("two", at([127, 0, 0, 3], port));
    d.set_hosts(
        "reload",
        &[
            ("one.reload.test", [127, 0, 0, 2]),
            ("two.reload.test", [127, 0, 0, 3]),
        ],
    );
    let listen = free_addr();
    let first = config(&d, listen, &format!("one.reload.test:{port}"), "");
    let levee = Levee::start(&first);
    assert_eq!(http_get(listen, "/").expect("request").status, 200);

    // The same name after a reload: served at once, no gap while it is
    // looked up again.
    levee.write_config(&format!(
        "{first}\n[[routes]]\nname = \"other\"\ncluster = \"app\"\n"
    ));
    assert_eq!(levee.reload_via_admin(), 200);
    let r = http_get(listen, "/").expect("request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(one.requests(), 2);

    // A name added by a reload serves as soon as it is resolved.
    let added = first.replace(
        &format!("address = \"one.reload.test:{port}\""),
        &format!(
            "address = \"one.reload.test:{port}\"\n\n[[clusters.endpoints]]\n\
             address = \"two.reload.test:{port}\""
        ),
    );
    assert_ne!(added, first, "test bug: the endpoint was not added");
    levee.write_config(&added);
    assert_eq!(levee.reload_via_admin(), 200);
    let reached = wait_until(Duration::from_secs(10), || {
        let _ = http_get(listen, "/");
        two.requests() > 0
    });
    assert!(reached, "the name added by the reload serves");
}
