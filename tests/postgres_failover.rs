//! A real PostgreSQL failover through a Levee TCP listener (issue 13, §3).
//!
//! The test starts a primary and a synchronous streaming replica (Debian's
//! `postgresql` binaries, run as the `postgres` user in a temporary
//! directory) and a Levee whose `db` cluster holds both, with a `postgres`
//! role check that passes only the primary and `on_endpoint_down =
//! "shutdown_sessions"`. A writer inserts rows through Levee, one
//! transaction each, reconnecting whenever its connection breaks. Then the
//! primary is killed (SIGKILL) and the replica promoted. Asserted:
//! - every connection the writer got through Levee reached a primary
//!   (`pg_is_in_recovery()` false), and no write ever failed as read-only;
//! - writes resume on the new primary within a bound of the check's
//!   arithmetic (promotion → `healthy_threshold` × `interval` + a check
//!   timeout; asserted under 10 s, printed);
//! - the writer's session on the old primary was closed;
//! - every acknowledged write is on the new primary (synchronous
//!   replication: a commit is acknowledged once the replica has it).
//!
//! Run with `cargo test --test postgres_failover -- --nocapture` for the
//! figures.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(30);

/// The directory of the PostgreSQL server binaries (Debian installs them
/// under /usr/lib/postgresql/VERSION/bin).
fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql: install Debian's postgresql package")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

/// Runs a PostgreSQL program as the `postgres` user; panics on failure.
fn as_postgres(bin: &Path, program: &str, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(program))
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The temporary directory with both data directories; stops every
/// server left and removes it when dropped.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = std::env::temp_dir().join(format!("levee-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(ok.success(), "chown the temp dir to postgres");
        Cluster { dir, bin: pg_bin() }
    }

    fn data(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn start(&self, name: &str, port: u16) {
        let log = self.dir.join(format!("{name}.log")).display().to_string();
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.dir.display()
        );
        as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                &self.data(name),
                "-l",
                &log,
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// The postmaster's pid, from its pid file.
    fn pid(&self, name: &str) -> i32 {
        let text = std::fs::read_to_string(self.dir.join(name).join("postmaster.pid"))
            .expect("postmaster.pid");
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for name in ["primary", "replica"] {
            let data = self.dir.join(name);
            if data.join("postmaster.pid").exists() {
                let _ = Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(self.bin.join("pg_ctl"))
                    .args(["-D", &data.display().to_string(), "-m", "immediate", "stop"])
                    .output();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- primary log ---\n{}\n--- replica log ---\n{}",
                self.log("primary"),
                self.log("replica")
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the writer saw.
#[derive(Default)]
struct Seen {
    acked: Vec<i64>,
    /// Connections through Levee, and those that reached a node in
    /// recovery (must stay 0).
    sessions: u32,
    on_replica: u32,
    /// Writes refused as read-only (must stay 0).
    read_only: u32,
    /// When each acknowledged write returned.
    acked_at: Vec<Instant>,
    /// Times a session broke under the writer.
    broken: u32,
}

async fn writer(levee: SocketAddr, stop: tokio::sync::watch::Receiver<bool>) -> Seen {
    let mut seen = Seen::default();
    let mut next = 1i64;
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres connect_timeout=2",
        levee.ip(),
        levee.port()
    );
    while !*stop.borrow() {
        let Ok(Ok((client, connection))) = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
        )
        .await
        else {
            // No primary in service: Levee closed the connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let driver = tokio::spawn(connection);
        seen.sessions += 1;
        match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
            Ok(row) if row.get::<_, bool>(0) => seen.on_replica += 1,
            Ok(_) => {}
            Err(_) => {
                driver.abort();
                continue;
            }
        }
        while !*stop.borrow() {
            let id = next;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let insert = client.execute("INSERT INTO writes (id) VALUES ($1)", &params);
            match tokio::time::timeout(Duration::from_secs(5), insert).await {
                Ok(Ok(_)) => {
                    seen.acked.push(next);
                    seen.acked_at.push(Instant::now());
                    next += 1;
                }
                Ok(Err(e))
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
                {
                    // The write whose acknowledgement the kill swallowed:
                    // it was committed (and replicated) all the same.
                    // Not counted as acknowledged; the next id follows.
                    next += 1;
                }
                Ok(Err(e)) => {
                    if e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
                    {
                        seen.read_only += 1;
                    }
                    seen.broken += 1;
                    // Not acknowledged: the same id is tried again.
                    break;
                }
                Err(_) => {
                    seen.broken += 1;
                    break;
                }
            }
        }
        driver.abort();
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_to_the_promoted_replica() {
    let pg = Cluster::new();
    let (p1, p2) = (free_port(), free_port());
    as_postgres(
        &pg.bin,
        "initdb",
        &[
            "-D",
            &pg.data("primary"),
            "-U",
            "postgres",
            "--auth=trust",
            "-N",
        ],
    );
    let conf = "wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\nfsync = off\n";
    let conf_path = pg.dir.join("primary").join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf_path).expect("postgresql.conf");
    text.push_str(conf);
    std::fs::write(&conf_path, text).expect("write postgresql.conf");
    pg.start("primary", p1);
    as_postgres(
        &pg.bin,
        "psql",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p1.to_string(),
            "-U",
            "postgres",
            "-q",
            "-c",
            "CREATE TABLE writes (id bigint PRIMARY KEY)",
        ],
    );
    as_postgres(
        &pg.bin,
        "pg_basebackup",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p1.to_string(),
            "-U",
            "postgres",
            "-D",
            &pg.data("replica"),
            "-R",
            "-X",
            "stream",
        ],
    );
    pg.start("replica", p2);
    // Synchronous replication from now on: a commit is acknowledged only
    // once the replica has it, so a failover loses no acknowledged write.
    as_postgres(
        &pg.bin,
        "psql",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p1.to_string(),
            "-U",
            "postgres",
            "-q",
            "-c",
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "-c",
            "SELECT pg_reload_conf()",
        ],
    );

    let (a1, a2) = (
        SocketAddr::from(([127, 0, 0, 1], p1)),
        SocketAddr::from(([127, 0, 0, 1], p2)),
    );
    let listen = free_addr();
    let levee = Levee::start(
        &ConfigBuilder::new()
            .set("server", "workers = 2")
            .listener_with("pg", listen, &["protocol = \"tcp\"", "cluster = \"db\""])
            .cluster_with(
                "db",
                &[a1, a2],
                &[
                    "on_endpoint_down = \"shutdown_sessions\"",
                    "connect_timeout = \"1s\"",
                    "health_check = { type = \"postgres\", role = \"primary\", interval = \"250ms\", \
                     timeout = \"250ms\", jitter = \"0s\", unhealthy_threshold = 2, healthy_threshold = 2 }",
                ],
            )
            .build(),
    );
    // The role checks find the primary; the replica never takes traffic.
    let states = || {
        let s = levee.status_json();
        let eps = &s["clusters"][0]["endpoints"];
        (
            eps[0]["state"].as_str().unwrap_or("").to_owned(),
            eps[1]["state"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert!(
        wait_until_async(T, || {
            let (a, b) = states();
            a == "healthy" && b != "healthy"
        })
        .await,
        "primary healthy, replica not: {:?}\n{}",
        states(),
        levee.logs()
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(writer(listen, stop_rx));
    // Steady writes first.
    let counted = levee
        .metric("levee_tcp_connections_total", &[])
        .unwrap_or(0.0);
    assert_eq!(counted, 0.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    let ok = Command::new("kill")
        .args(["-KILL", &pg.pid("primary").to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    // The replica is promoted at once (what an operator or a tool like
    // Patroni does); Levee learns it from its checks alone.
    as_postgres(
        &pg.bin,
        "pg_ctl",
        &["-D", &pg.data("replica"), "-w", "promote"],
    );
    let promoted = Instant::now();
    assert!(
        wait_until_async(T, || states().1 == "healthy").await,
        "the promoted replica passes its role check: {:?}\n{}",
        states(),
        levee.logs()
    );
    // Writes for a while on the new primary.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let seen = task.await.expect("writer");

    let before = seen.acked_at.iter().filter(|t| **t < killed).count();
    let first_after = seen.acked_at.iter().find(|t| **t > promoted).copied();
    let resumed = first_after.map(|t| t - promoted);
    println!(
        "acked {} writes ({before} before the kill), {} sessions, {} broken; \
         promotion took {:?}; writes resumed {resumed:?} after the promotion",
        seen.acked.len(),
        seen.sessions,
        seen.broken,
        promoted - killed
    );
    assert!(before >= 10, "steady writes before the kill: {before}");
    let resumed = resumed.expect("writes resumed on the new primary");
    // Checks every 250 ms, healthy_threshold 2: about 0.5 s once the
    // promotion is done; generous for a loaded machine.
    assert!(
        resumed < Duration::from_secs(10),
        "resumed after {resumed:?}"
    );
    assert_eq!(seen.on_replica, 0, "a session reached a replica");
    assert_eq!(seen.read_only, 0, "a write was refused as read-only");
    assert!(
        seen.broken >= 1,
        "the session on the old primary was closed"
    );
    assert!(
        seen.sessions >= 2,
        "the writer reconnected to the new primary"
    );

    // No acknowledged write lost: all of them on the new primary.
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={p2} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the new primary");
    let driver = tokio::spawn(connection);
    let rows = client
        .query("SELECT id FROM writes", &[])
        .await
        .expect("read back");
    let stored: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<i64> = seen
        .acked
        .iter()
        .copied()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    driver.abort();
    let ended = levee.metric("levee_tcp_connections_total", &[("cluster", "db")]);
    assert!(ended.is_some_and(|n| n >= 2.0), "{}", levee.metrics_text());
}
