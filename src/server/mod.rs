//! Running Levee: worker threads, listeners, signals, reload and shutdown.
//!
//! Each worker is a thread with its own single-threaded event loop (the
//! nginx model): it accepts on its own sockets and serves those connections
//! start to finish, so a request never hops threads. The main thread is the
//! control plane: it binds sockets, serves the admin API, and handles
//! SIGHUP (reload), SIGUSR1 (reopen the access log, for logrotate) and
//! SIGTERM/SIGINT (graceful shutdown).

mod burn_actions;
pub mod client_body;
pub mod conn;
mod control;
mod fixed;
pub mod h1;
pub mod h2;
mod health_checks;
pub mod listener;
mod open_files;
pub mod phase;
pub mod pid_file;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::shared::Shared;
use listener::{AcceptLoop, ConnCount};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write the pid file {path}: {source}")]
    PidFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot start TLS: {0}")]
    Tls(String),
}

pub use crate::admin::Control;

struct Worker {
    tx: mpsc::UnboundedSender<AcceptLoop>,
}

struct Bound {
    stop: watch::Sender<bool>,
    count: Arc<ConnCount>,
}

/// The control plane's view of the running server.
pub struct Server {
    pub shared: Arc<Shared>,
    workers: Vec<Worker>,
    bound: HashMap<SocketAddr, Bound>,
    /// Connection counts of listeners removed by a reload whose connections
    /// may still be open; a shutdown drains them too.
    retired: Vec<Arc<ConnCount>>,
    /// Active health check tasks of the current snapshot.
    checks: Vec<tokio::task::JoinHandle<()>>,
    /// One task per endpoint name of the current configuration.
    discovery: Vec<tokio::task::JoinHandle<()>>,
    /// Woken by a discovery task when a name's addresses change.
    resolved_changed: Arc<tokio::sync::Notify>,
    /// Names that did not resolve at start (already logged), for the first
    /// discovery tasks.
    failed_at_start: Vec<crate::discovery::Query>,
    shutdown: watch::Sender<bool>,
    /// Removed when the server is dropped after a clean shutdown.
    pid_file: Option<pid_file::PidFile>,
}

/// How many workers `workers = 0` means.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Server {
    /// Binds every listener and starts the workers. Fails without serving
    /// anything if a socket cannot be bound.
    pub fn start(config: Config, config_path: Option<PathBuf>) -> Result<Server, StartError> {
        match open_files::raise() {
            Ok(Some((from, to))) => tracing::info!(from, to, "limit of open files raised"),
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot raise the limit of open files: {e}"),
        }
        if let Some(warning) = open_files::short_of(&config, open_files::current()) {
            tracing::warn!("{warning}");
        }
        let workers = match config.server.workers {
            0 => default_workers(),
            n => n,
        };
        let addresses: Vec<SocketAddr> = config
            .listeners
            .iter()
            .map(|l| *l.address.get_ref())
            .collect();
        let pid_path = config.server.pid_file.as_ref().map(|p| p.get_ref().clone());
        let names = crate::discovery::Query::all(&config);
        let dns = config.dns.clone();
        crate::tls::install_provider();
        let shared = Arc::new(Shared::new(config, config_path, workers)?);
        let terminators =
            crate::tls::Terminators::build(&shared.snapshot.load().config, &shared.metrics.tls)
                .map_err(StartError::Tls)?;
        shared.tls.install(terminators);
        let mut failed_at_start = Vec::new();
        if !names.is_empty() {
            // Serve from the first request with what the names resolve to.
            // A name that resolves to nothing does not stop the start: its
            // cluster goes without those endpoints until it resolves.
            failed_at_start = crate::discovery::task::resolve_at_start(
                &dns,
                &names,
                &shared.live.resolved,
                &shared.metrics,
            );
            shared.rebuild(true);
        }
        let (shutdown, _) = watch::channel(false);
        let mut server = Server {
            shared,
            workers: Vec::new(),
            bound: HashMap::new(),
            retired: Vec::new(),
            checks: Vec::new(),
            discovery: Vec::new(),
            resolved_changed: Arc::new(tokio::sync::Notify::new()),
            failed_at_start,
            shutdown,
            pid_file: None,
        };
        for id in 0..workers {
            server.workers.push(spawn_worker(id)?);
        }
        let sockets = bind_all(&addresses, workers)?;
        for (address, per_worker) in sockets {
            server.listen(address, per_worker);
        }
        // Last: the file announces a process that is listening.
        if let Some(path) = pid_path {
            let pid = pid_file::PidFile::create(std::path::Path::new(&path))
                .map_err(|source| StartError::PidFile { path, source })?;
            server.pid_file = Some(pid);
        }
        Ok(server)
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Addresses being listened on.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.bound.keys().copied().collect()
    }

    fn listen(&mut self, address: SocketAddr, sockets: Vec<std::net::TcpListener>) {
        let (stop, _) = watch::channel(false);
        let count = Arc::new(ConnCount::default());
        for (worker, socket) in sockets.into_iter().enumerate() {
            let accept = AcceptLoop {
                worker,
                address,
                socket,
                count: count.clone(),
                shared: self.shared.clone(),
                stop: stop.subscribe(),
                shutdown: self.shutdown.subscribe(),
            };
            let _ = self.workers[worker].tx.send(accept);
        }
        self.bound.insert(address, Bound { stop, count });
    }

    /// Re-reads the config file. New listeners are bound before anything is
    /// swapped, so a reload either applies whole or changes nothing.
    pub fn reload(&mut self) -> Result<String, String> {
        let path = self.shared.config_path.clone();
        let config = match &path {
            Some(p) => crate::load::load(p).map_err(|e| {
                self.shared.metrics.reloads_refused();
                e.to_string()
            })?,
            None => {
                return Err(
                    "this instance runs an embedded config; there is no file to reload".into(),
                );
            }
        };
        let refuse = |e: String| {
            self.shared.metrics.reloads_refused();
            match &path {
                Some(p) => format!("{}: {e}", p.display()),
                None => e,
            }
        };
        let running = self.shared.snapshot.load().config.clone();
        fixed::check(&running, &config).map_err(refuse)?;
        let wanted: Vec<SocketAddr> = config
            .listeners
            .iter()
            .map(|l| *l.address.get_ref())
            .collect();
        let new: Vec<SocketAddr> = wanted
            .iter()
            .copied()
            .filter(|a| !self.bound.contains_key(a))
            .collect();
        let sockets = bind_all(&new, self.workers.len()).map_err(|e| {
            self.shared.metrics.reloads_refused();
            e.to_string()
        })?;
        // A new access log path: reopen there before anything is swapped,
        // so a path that cannot be opened refuses the reload whole.
        if let Some(log) = &self.shared.access_log
            && config.access_log.path != running.access_log.path
        {
            log.reopen(Some(&config.access_log.path)).map_err(|e| {
                refuse(format!(
                    "access_log.path: cannot open {:?}: {e}",
                    config.access_log.path
                ))
            })?;
        }
        // Certificates and keys are read again: a reload is how an operator
        // says "use the new files" (they are also picked up on change).
        let terminators =
            crate::tls::Terminators::build(&config, &self.shared.metrics.tls).map_err(&refuse)?;
        let summary = format!(
            "{} listeners, {} routes, {} clusters",
            config.listeners.len(),
            config.routes.len(),
            config.clusters.len()
        );
        self.shared.tls.install(terminators);
        self.shared.install(config);
        self.restart_discovery();
        self.restart_checks();
        for (address, per_worker) in sockets {
            self.listen(address, per_worker);
        }
        let gone: Vec<SocketAddr> = self
            .bound
            .keys()
            .copied()
            .filter(|a| !wanted.contains(a))
            .collect();
        // Forget listeners retired by earlier reloads once their last
        // connection is gone (not the ones retired now: their accept loops
        // may still take a connection before they see `stop`).
        self.retired.retain(|c| c.get() > 0);
        for address in gone {
            if let Some(b) = self.bound.remove(&address) {
                let _ = b.stop.send(true);
                self.retired.push(b.count);
            }
        }
        Ok(summary)
    }

    /// Replaces the active checks with those of the current snapshot.
    /// Needs the control loop's runtime.
    fn restart_checks(&mut self) {
        for task in self.checks.drain(..) {
            task.abort();
        }
        self.checks = health_checks::spawn(&self.shared);
    }

    /// Replaces the name lookups with those of the current configuration
    /// (its names and its `[dns]` settings); what names resolve to is kept.
    /// Needs the control loop's runtime.
    fn restart_discovery(&mut self) {
        for task in self.discovery.drain(..) {
            task.abort();
        }
        let snapshot = self.shared.snapshot.load_full();
        self.discovery = crate::discovery::task::spawn(
            &snapshot.config.dns,
            &crate::discovery::Query::all(&snapshot.config),
            &std::mem::take(&mut self.failed_at_start),
            &self.shared.live.resolved,
            &self.resolved_changed,
            &self.shared.metrics,
        );
    }

    /// A name's addresses changed: a new snapshot from the same
    /// configuration, and checks for the endpoints it now has.
    fn apply_resolved(&mut self) {
        let snapshot = self.shared.rebuild(false);
        let endpoints: usize = snapshot.clusters.iter().map(|c| c.endpoints.len()).sum();
        tracing::info!(endpoints, "endpoints rebuilt from DNS answers");
        self.restart_checks();
    }

    fn open_connections(&self) -> usize {
        let bound: usize = self.bound.values().map(|b| b.count.get()).sum();
        let retired: usize = self.retired.iter().map(|c| c.get()).sum();
        bound + retired
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain
    /// timeout), and returns the number of connections still open.
    pub async fn drain(&self) -> usize {
        let timeout = self
            .shared
            .snapshot
            .load()
            .config
            .server
            .drain_timeout
            .get();
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + timeout;
        while self.open_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.open_connections()
    }

    /// Runs the control plane until SIGTERM or SIGINT, then drains.
    pub async fn run_until_signalled(mut self) -> std::io::Result<()> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (control_tx, mut control_rx) = mpsc::channel::<Control>(16);
        let admin = self.shared.snapshot.load().config.admin.clone();
        let admin_address = *admin.address.get_ref();
        if admin.enabled {
            let listener = tokio::net::TcpListener::bind(admin_address)
                .await
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot listen on admin address {}: {e}", admin_address),
                    )
                })?;
            tokio::spawn(crate::admin::serve(
                listener,
                self.shared.clone(),
                control_tx,
            ));
        }
        self.restart_discovery();
        self.restart_checks();
        tokio::spawn(control::service_level(self.shared.clone()));
        tokio::spawn(control::sweep_rate_limits(self.shared.clone()));
        tokio::spawn(control::fault_sweep(self.shared.clone()));
        tokio::spawn(control::slos(self.shared.clone()));
        tokio::spawn(control::watch_tls_files(self.shared.clone()));
        if let Some(export) = self.shared.otlp.as_ref().and_then(|o| o.task()) {
            tokio::spawn(export);
        }
        tracing::info!(
            workers = self.worker_count(),
            listeners = ?self.addresses(),
            admin = %admin_address,
            "levee is serving"
        );
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let _ = self.reload_by("SIGHUP");
                }
                _ = usr1.recv() => self.reopen_access_log(),
                _ = self.resolved_changed.notified() => self.apply_resolved(),
                Some(Control::Reload(reply)) = control_rx.recv() => {
                    let result = self.reload_by("admin");
                    let _ = reply.send(result);
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        let left = self.drain().await;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain timeout reached; closing the rest"
            );
        } else {
            tracing::info!("drained; exiting");
        }
        if let Some(log) = &self.shared.access_log {
            log.flush();
        }
        // The requests just drained count towards the budget after a restart.
        control::save_slos(&self.shared, crate::slo::unix_now());
        Ok(())
    }

    /// Reloads, logs the result and keeps it for `/status`.
    fn reload_by(&mut self, trigger: &'static str) -> Result<String, String> {
        let result = self.reload();
        log_reload_result(trigger, &result);
        if result.is_ok() {
            let config = &self.shared.snapshot.load().config;
            if let Some(warning) = open_files::short_of(config, open_files::current()) {
                tracing::warn!("{warning}");
            }
        }
        let last = crate::shared::LastReload {
            at: std::time::SystemTime::now(),
            trigger,
            result: result.clone(),
        };
        *self
            .shared
            .last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(last);
        result
    }

    /// SIGUSR1: logrotate has moved the access log away; open it again.
    fn reopen_access_log(&self) {
        let Some(log) = &self.shared.access_log else {
            tracing::info!("SIGUSR1: the access log is off; nothing to reopen");
            return;
        };
        let path = self.shared.snapshot.load().config.access_log.path.clone();
        match log.reopen(None) {
            Ok(()) => tracing::info!(path, "SIGUSR1: access log reopened"),
            Err(e) => tracing::error!(
                path,
                "SIGUSR1: cannot reopen the access log, still writing to the old file: {e}"
            ),
        }
    }
}

fn log_reload_result(trigger: &str, result: &Result<String, String>) {
    let (what, why) = match result {
        Ok(summary) => ("configuration applied", summary),
        Err(e) => ("configuration refused, the previous one still serves", e),
    };
    crate::events::emit(
        crate::events::Kind::Reload,
        "server",
        what,
        format!("{why} (by {trigger})"),
    );
    match result {
        Ok(summary) => tracing::info!(trigger, "configuration reloaded: {summary}"),
        Err(e) => tracing::error!(
            trigger,
            "configuration refused, still running the previous one: {e}"
        ),
    }
}

fn bind_all(
    addresses: &[SocketAddr],
    workers: usize,
) -> Result<Vec<(SocketAddr, Vec<std::net::TcpListener>)>, StartError> {
    addresses
        .iter()
        .map(|&address| {
            let sockets = (0..workers)
                .map(|_| listener::bind(address))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| StartError::Bind { address, source })?;
            Ok((address, sockets))
        })
        .collect()
}

/// A timer always due within a second on each worker.
///
/// Tokio's time driver wakes its I/O driver (a `write` to an eventfd, then
/// one more trip through `epoll_wait`) whenever a timer is registered
/// earlier than the earliest one pending, which is there for a driver
/// parked on another thread. On a worker whose only long timers are the
/// connections' idle timeouts, every request's try timeout was such a
/// timer: one wasted syscall and wake-up per request (strace: 1.0 `write`
/// per request with one client). With this one pending, a timeout longer
/// than a second is never the earliest.
async fn timer_floor() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

fn spawn_worker(id: usize) -> std::io::Result<Worker> {
    let (tx, mut rx) = mpsc::unbounded_channel::<AcceptLoop>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("levee-worker-{id}"))
        .spawn(move || {
            runtime.block_on(async move {
                tokio::spawn(timer_floor());
                while let Some(accept) = rx.recv().await {
                    tokio::spawn(accept.run());
                }
            });
        })?;
    Ok(Worker { tx })
}
