//! [`Levee`]: the real `levee` binary as a child process.
//!
//! `Levee::start(toml)` writes the config into a fresh temporary directory,
//! runs `levee run --config <dir>/levee.toml` with stdout and stderr captured
//! to `<dir>/stdout.log` and `<dir>/stderr.log`, and returns once the admin
//! listener (`[admin] address` in the config) answers `GET /healthz` with 200
//! — polled every 20 ms for at most 10 s; it panics with Levee's stderr if
//! the process exits or never gets ready. Dropping a `Levee` SIGKILLs it if it
//! still runs, and prints its logs when the test is panicking.
//!
//! ```ignore
//! let mut levee = Levee::start(&ConfigBuilder::simple(listen, &[b.addr()]).build());
//! levee.write_config(&new_toml);
//! assert_eq!(levee.reload_via_admin(), 200);
//! levee.sigterm();
//! assert!(levee.wait_exit(Duration::from_secs(5)).expect("exits").success());
//! ```

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::config::config_facts;
use super::http::{HttpResponse, http_request};

const BIN: &str = env!("CARGO_BIN_EXE_levee");
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `levee run` process. See the module docs.
pub struct Levee {
    child: Child,
    exit: Option<ExitStatus>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    admin: SocketAddr,
    admin_enabled: bool,
    admin_token: Option<String>,
    listeners: Vec<SocketAddr>,
}

impl Levee {
    /// Spawns `levee run` and waits until it is ready; panics otherwise.
    pub fn start(config_toml: &str) -> Levee {
        let mut levee = Levee::spawn(config_toml);
        if let Err(e) = levee.wait_ready(READY_TIMEOUT) {
            panic!("{e}");
        }
        levee
    }

    /// Spawns `levee run` without waiting (for tests of failed starts; pair
    /// with `wait_ready` or `wait_exit`).
    pub fn spawn(config_toml: &str) -> Levee {
        Levee::spawn_with(config_toml, &[])
    }

    /// `spawn` with extra environment variables (e.g. `RUST_LOG`).
    pub fn spawn_with(config_toml: &str, envs: &[(&str, &str)]) -> Levee {
        Levee::spawn_wrapped(config_toml, envs, &[])
    }

    /// `spawn_with`, run by a program that execs it (same pid), e.g.
    /// `["prlimit", "--nofile=512:4096"]` to start it under other limits.
    pub fn spawn_wrapped(config_toml: &str, envs: &[(&str, &str)], wrapper: &[&str]) -> Levee {
        let dir = tempfile::tempdir().expect("create temp dir");
        let config_path = dir.path().join("levee.toml");
        fs::write(&config_path, config_toml).expect("write config");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "stdout.log"))
            .stderr(log_file(dir.path(), "stderr.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        reap_at_exit(child.id());
        let facts = config_facts(config_toml);
        Levee {
            child,
            exit: None,
            dir,
            config_path,
            admin: facts.admin,
            admin_enabled: facts.admin_enabled,
            admin_token: facts.admin_token,
            listeners: facts.listeners,
        }
    }

    /// Polls every 20 ms until `/healthz` answers 200 (or, with the admin
    /// listener disabled, until the first listener accepts a connection).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not tried");
        loop {
            if let Some(status) = self.try_exit() {
                return Err(format!(
                    "levee exited while starting ({status})\n{}",
                    self.logs()
                ));
            }
            let ready = if self.admin_enabled {
                match self.admin_request_within("GET", "/healthz", b"", Duration::from_secs(1)) {
                    Ok(r) if r.status == 200 => true,
                    Ok(r) => {
                        last = format!("/healthz answered {}", r.status);
                        false
                    }
                    Err(e) => {
                        last = e;
                        false
                    }
                }
            } else {
                match self.listeners.first() {
                    Some(a) => TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok(),
                    None => true,
                }
            };
            if ready && self.admin_enabled {
                // The port was free when the test picked it, but another
                // process may have taken it since: make sure the admin API
                // that answered is this child's.
                let pid = self
                    .admin_request_within("GET", "/status", b"", Duration::from_secs(1))
                    .ok()
                    .and_then(|r| r.json().ok())
                    .and_then(|v: serde_json::Value| v["pid"].as_u64());
                if pid != Some(u64::from(self.pid())) {
                    return Err(format!(
                        "another process (pid {pid:?}) answers on admin address {}; this levee is pid {}\n{}",
                        self.admin,
                        self.pid(),
                        self.logs()
                    ));
                }
                return Ok(());
            }
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "levee not ready within {timeout:?} (admin {}: {last})\n{}",
                    self.admin,
                    self.logs()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs `levee check --config <file>` (at most 10 s) and returns its exit
    /// code (-1 if killed by a signal), stdout and stderr.
    pub fn check(config_toml: &str) -> (i32, String, String) {
        let dir = tempfile::tempdir().expect("create temp dir");
        let config_path = dir.path().join("levee.toml");
        fs::write(&config_path, config_toml).expect("write config");
        let mut child = Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "stdout.log"))
            .stderr(log_file(dir.path(), "stderr.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        let status = wait_child(&mut child, READY_TIMEOUT);
        let read = |name| fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "levee check did not exit within {READY_TIMEOUT:?}\nstderr:\n{}",
                read("stderr.log")
            );
        };
        (
            status.code().unwrap_or(-1),
            read("stdout.log"),
            read("stderr.log"),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temporary directory holding the config and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Listener addresses found in the config the process started with.
    pub fn listener_addrs(&self) -> &[SocketAddr] {
        &self.listeners
    }

    /// Replaces the config file atomically (write + rename), so a reload
    /// never reads half a file. Follow with `sighup()` or `reload_via_admin()`.
    pub fn write_config(&self, config_toml: &str) {
        let tmp = self.dir.path().join("levee.toml.new");
        fs::write(&tmp, config_toml).expect("write new config");
        fs::rename(&tmp, &self.config_path).expect("replace config");
    }

    /// Sends `signal` unless the process has already been reaped (its pid
    /// could belong to someone else by then). Returns whether it was sent.
    pub fn signal(&mut self, signal: i32) -> bool {
        if self.try_exit().is_some() {
            return false;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory effects; `pid` is our own child,
        // not yet reaped (checked just above), so it cannot be recycled.
        unsafe { libc::kill(pid, signal) == 0 }
    }

    pub fn sighup(&mut self) -> bool {
        self.signal(libc::SIGHUP)
    }

    pub fn sigterm(&mut self) -> bool {
        self.signal(libc::SIGTERM)
    }

    pub fn sigint(&mut self) -> bool {
        self.signal(libc::SIGINT)
    }

    /// `POST /reload` on the admin listener; returns the status (0 if the
    /// request itself failed).
    pub fn reload_via_admin(&self) -> u16 {
        self.admin_request("POST", "/reload", b"")
            .map_or(0, |r| r.status)
    }

    /// Waits (polling every 20 ms) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = wait_child(&mut self.child, timeout);
        }
        self.exit
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Peak resident set size (VmHWM) in KiB; `None` once the process is gone.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        if self.exit.is_some() {
            return None; // reaped: the pid may belong to another process
        }
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// Current resident set size (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        if self.exit.is_some() {
            return None; // reaped: the pid may belong to another process
        }
        proc_status_kib(self.child.id(), "VmRSS:")
    }

    /// A request to the admin listener (with the config's bearer token, if
    /// any), 5 s timeout.
    pub fn admin_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<HttpResponse, String> {
        self.admin_request_within(method, path, body, ADMIN_TIMEOUT)
    }

    pub fn admin_get(&self, path: &str) -> Result<HttpResponse, String> {
        self.admin_request("GET", path, b"")
    }

    fn admin_request_within(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<HttpResponse, String> {
        let auth = self.admin_token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http_request(self.admin, method, path, &headers, body, timeout)
    }

    /// `GET /metrics`; panics unless it answers 200.
    pub fn metrics_text(&self) -> String {
        match self.admin_get("/metrics") {
            Ok(r) if r.status == 200 => r.text(),
            Ok(r) => panic!("GET /metrics answered {}: {}", r.status, r.text()),
            Err(e) => panic!("GET /metrics failed: {e}"),
        }
    }

    /// Sum of the samples of metric `name` whose labels include `labels`
    /// (see [`metric_sum`]), from a fresh `/metrics`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_sum(&self.metrics_text(), name, labels)
    }

    /// `GET /status` as JSON; panics unless it answers 200 with JSON.
    pub fn status_json(&self) -> serde_json::Value {
        match self.admin_get("/status") {
            Ok(r) if r.status == 200 => r.json().unwrap_or_else(|e| panic!("GET /status: {e}")),
            Ok(r) => panic!("GET /status answered {}: {}", r.status, r.text()),
            Err(e) => panic!("GET /status failed: {e}"),
        }
    }

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- levee stderr ---\n{}\n--- levee stdout ---\n{}",
            tail(&self.stderr_text()),
            tail(&self.stdout_text())
        )
    }
}

impl Drop for Levee {
    fn drop(&mut self) {
        forget_at_exit(self.child.id());
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("levee (pid {}) logs:\n{}", self.child.id(), self.logs());
        }
    }
}

/// Sum of the samples of `name` (exact metric name, e.g.
/// `levee_requests_total`) in Prometheus text whose labels include every
/// `key="value"` of `labels`; `None` if no sample matched.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series_name, label_text, rest) = match (line.find('{'), line.rfind('}')) {
            (Some(open), Some(close)) if open < close => {
                (&line[..open], &line[open + 1..close], &line[close + 1..])
            }
            _ => match line.split_once(' ') {
                Some((n, rest)) => (n, "", rest),
                None => continue,
            },
        };
        if series_name.trim() != name {
            continue;
        }
        let has = |(k, v): &(&str, &str)| {
            let want = format!("{k}=\"{v}\"");
            label_text.split(',').any(|pair| pair.trim() == want)
        };
        if !labels.iter().all(has) {
            continue;
        }
        if let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

fn log_file(dir: &Path, name: &str) -> File {
    File::create(dir.join(name)).unwrap_or_else(|e| panic!("create {name}: {e}"))
}

/// Levees that are never dropped (a test binary's shared one, in a
/// `static`: Rust runs no destructor for those) would outlive the test
/// process; their pids are killed when it exits.
static LIVE: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn reap_at_exit(pid: u32) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn kill_live() {
        let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        for &pid in live.iter() {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) with a pid this process spawned and has
                // not reaped (dropped Levees leave the list first).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    ONCE.call_once(|| {
        // SAFETY: registers a plain function that only locks and signals.
        unsafe { libc::atexit(kill_live) };
    });
    LIVE.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}

fn forget_at_exit(pid: u32) {
    LIVE.lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|&p| p != pid);
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// The last 8 KiB of a log, cut at a char boundary.
fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(8 * 1024);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
