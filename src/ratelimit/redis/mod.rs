//! The rate-limit algorithms run in a shared Redis (one server or a Redis
//! Cluster), so that several Levee instances enforce one limit. The client
//! is redis-rs; this module adds what a request path needs from it: bounded
//! waits, failing fast while Redis is down, one log line per outage, and a
//! reconnect backoff.
//!
//! Each algorithm is a Lua script ([`scripts`]) that reads the key's state,
//! decides and writes the new state in one atomic step (`EVALSHA`, through
//! `redis::Script`, which loads the script again after `NOSCRIPT`). The
//! clock is Redis's (`redis.call('TIME')`, microseconds), so instances
//! whose clocks disagree still share one timeline. Every key written gets a
//! TTL of about the time after which its state would be fresh again, so
//! idle keys vanish on their own. Keys are `levee:rl:<algorithm>:{<key>}`
//! ([`RedisStore::key_for`]): the braces are a Redis Cluster hash tag, so
//! that everything a script touches for one key lives in one slot.
//!
//! The decisions follow the semantics stated in [`super::algorithm`]
//! (capacity `burst + 1` for the leaky bucket, cost 0 is a peek, a cost
//! that can never pass gets `retry_after = period`, `reset` is 0 when the
//! quota is whole), with these differences: times are whole microseconds
//! (periods under 1 µs count as 1 µs) and the buckets' arithmetic is in
//! doubles (within 1 µs, not exact to the ns); windows are aligned to the
//! Unix epoch; the sliding log keeps µs timestamps (not ms rounded up);
//! the sliding counter's limit is not capped at 2³² − 1.
//!
//! # Concurrency: one client thread per store, one multiplexed connection
//!
//! Levee's workers are threads with their own current-thread runtimes. A
//! redis-rs multiplexed connection (and a cluster connection, which holds
//! one per node) is driven by a task on the runtime that created it, and
//! would stop with that runtime. So a store owns one thread running its own
//! current-thread runtime, which creates the connection and drives it; the
//! connection outlives any worker, reload or test runtime. Callers on any
//! runtime hand a command to that thread over a bounded `tokio::sync::mpsc`
//! channel and wait for the reply on a `oneshot`; both work across
//! runtimes. The thread runs each command as a task on the shared
//! connection, which pipelines them: one socket (per cluster node) carries
//! every worker's checks. The hop costs a few microseconds, small next to
//! the round trip to Redis; in exchange the connection, the reconnect
//! backoff and the outage state live in one place.
//!
//! # Failure
//!
//! Every call is bounded by the store's timeout (queueing, connecting and
//! the reply together) and never hangs on Redis. The connection is made
//! lazily by the first call (and checked with `SCRIPT LOAD`, which also
//! loads the scripts). When it fails (connect refused, reset, EOF, a reply
//! that does not come for `max(4 × timeout, 500 ms)`) the calls get
//! [`StoreError::Unavailable`] and the connection is dropped; the next call
//! reconnects. A failed connect starts a backoff (100 ms doubling to 2 s)
//! during which calls fail at once, on the caller's thread, without
//! touching the client thread. The store logs one `warn` when it goes down
//! and one `info` when it is back ([`RedisStore::is_up`]); errors are
//! counted for metrics ([`RedisStore::errors`]).
//!
//! A cluster connection is not dropped when calls fail: redis-rs follows
//! `MOVED`/`ASK`, refreshes the slot map and reconnects to each node on its
//! own, and one dead master must not stop the checks whose keys live on the
//! others. A cluster store is down from a failed call until no call has
//! failed for [`CLUSTER_QUIET`]: one `warn` when failures start, one `info`
//! once they have stopped, however the failing and the working slots
//! interleave.

pub mod scripts;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, TlsCertificates};
use tokio::sync::{mpsc, oneshot};

pub use crate::config::redis_url::{Addr, RedisUrl, UrlError};
pub use ::redis::Value as Reply;

use super::{Algorithm, Decision, Limit};
use crate::config::ratelimit::RateLimitConfig;

/// The timeout [`RedisStore::new`] uses when given zero.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The prefix of every key the store writes.
pub const KEY_PREFIX: &str = "levee:rl:";

/// How long a cluster store must see no failed call before it counts as up
/// again (and logs so).
pub const CLUSTER_QUIET: Duration = Duration::from_secs(1);

/// Commands waiting for the client thread; beyond, callers wait (within
/// their timeout) for room.
const QUEUE: usize = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection whose reply is older than this (and than 4 × the timeout)
/// is taken for dead.
const STALL_MIN: Duration = Duration::from_millis(500);

/// Why a call to the store failed. The caller decides what a failure means
/// (fail open or closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No connection: Redis is down, refused, reset the connection, or the
    /// store is backing off before reconnecting.
    #[error("rate-limit store unavailable: {0}")]
    Unavailable(String),
    /// No answer within the store's timeout.
    #[error("rate-limit store timed out")]
    Timeout,
    /// Redis answered something unexpected (an error reply, a malformed
    /// reply).
    #[error("rate-limit store protocol error: {0}")]
    Protocol(String),
}

/// Why a store could not be created.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("a redis cluster needs at least one node")]
    NoNodes,
    #[error("cannot read the redis TLS CA file {path}: {error}")]
    Ca {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot start the redis client thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What a store talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One Redis server.
    Single(RedisUrl),
    /// A Redis Cluster, found from these seed nodes (any one reachable
    /// will do; the others are learned from `CLUSTER SLOTS`).
    Cluster(Vec<RedisUrl>),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Single(url) => write!(f, "{url}"),
            Target::Cluster(nodes) => {
                f.write_str("redis cluster ")?;
                for (i, n) in nodes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{n}")?;
                }
                Ok(())
            }
        }
    }
}

/// How a store connects, besides where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// The longest a call waits ([`DEFAULT_TIMEOUT`] if zero).
    pub timeout: Duration,
    /// PEM file of the CA(s) that sign the servers' certificates for
    /// `rediss://`; the system's roots if unset.
    pub tls_ca_file: Option<PathBuf>,
}

/// A rate-limit store in Redis. Cheap to share (`Arc`), usable from any
/// tokio runtime; see the module doc for how it works.
pub struct RedisStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
}

struct Shared {
    target: Target,
    /// `target` as logs show it (no credentials).
    name: String,
    tls: Option<TlsCertificates>,
    timeout: Duration,
    stall: Duration,
    up: AtomicBool,
    errors: AtomicU64,
    /// The start of the clock `retry_at` and `failed_at` count in.
    base: std::time::Instant,
    /// Microseconds since `base` before which no reconnect is tried; 0 when
    /// not backing off.
    retry_at: AtomicU64,
    /// Cluster only: microseconds since `base` of the last failed call.
    failed_at: AtomicU64,
}

impl Shared {
    fn cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// How long the backoff still lasts, if it does.
    fn backoff_left(&self) -> Option<Duration> {
        let at = self.retry_at.load(Ordering::Acquire);
        if at == 0 {
            return None;
        }
        let now = self.now_us();
        (now < at).then(|| Duration::from_micros(at - now))
    }

    fn back_off(&self, wait: Duration) {
        let at = self
            .now_us()
            .saturating_add(u64::try_from(wait.as_micros()).unwrap_or(u64::MAX))
            .max(1);
        self.retry_at.store(at, Ordering::Release);
    }

    fn down_error(&self, left: Duration) -> StoreError {
        StoreError::Unavailable(format!(
            "{} is down, next reconnect in {} ms",
            self.name,
            left.as_millis().max(1)
        ))
    }

    fn mark_down(&self, reason: &str) {
        if self.cluster() {
            self.failed_at
                .store(self.now_us().max(1), Ordering::Release);
        }
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                store = %self.name,
                "rate-limit store {} unreachable: {reason}",
                self.name
            );
        } else {
            tracing::debug!(store = %self.name, "rate-limit store still unreachable: {reason}");
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(store = %self.name, "rate-limit store {} reachable again", self.name);
        }
    }

    /// A cluster call succeeded: up again once no call has failed for
    /// `CLUSTER_QUIET`.
    fn cluster_ok(&self) {
        if self.up.load(Ordering::Acquire) {
            return;
        }
        let failed = self.failed_at.load(Ordering::Acquire);
        let quiet = u64::try_from(CLUSTER_QUIET.as_micros()).unwrap_or(u64::MAX);
        if self.now_us().saturating_sub(failed) >= quiet {
            self.mark_up();
        }
    }
}

struct Request {
    cmd: Cmd,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

enum Cmd {
    Script {
        algorithm: Algorithm,
        key: Vec<u8>,
        args: [u64; 5],
    },
    Raw(Vec<Vec<u8>>),
}

impl RedisStore {
    /// A store for one server at `url` (see [`RedisUrl`]) whose calls each
    /// take at most `timeout` ([`DEFAULT_TIMEOUT`] if zero). Starts the
    /// store's client thread; does not connect yet.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, OpenError> {
        RedisStore::open(
            Target::Single(RedisUrl::parse(url)?),
            Options {
                timeout,
                ..Options::default()
            },
        )
    }

    /// A store for the Redis Cluster that `nodes` belong to.
    pub fn cluster(nodes: &[&str], timeout: Duration) -> Result<RedisStore, OpenError> {
        let nodes = nodes
            .iter()
            .map(|n| RedisUrl::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        RedisStore::open(
            Target::Cluster(nodes),
            Options {
                timeout,
                ..Options::default()
            },
        )
    }

    pub fn open(target: Target, options: Options) -> Result<RedisStore, OpenError> {
        if matches!(&target, Target::Cluster(n) if n.is_empty()) {
            return Err(OpenError::NoNodes);
        }
        // redis-rs builds its rustls configs with the process's default
        // crypto provider: aws-lc-rs, installed at start (and here for a
        // store opened without `Server::start`, e.g. in tests).
        crate::tls::install_provider();
        let timeout = if options.timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            options.timeout
        };
        let tls = match &options.tls_ca_file {
            None => None,
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|error| OpenError::Ca {
                    path: path.clone(),
                    error,
                })?),
            }),
        };
        let shared = Arc::new(Shared {
            name: target.to_string(),
            target,
            tls,
            timeout,
            stall: (timeout * 4).max(STALL_MIN),
            up: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            base: std::time::Instant::now(),
            retry_at: AtomicU64::new(0),
            failed_at: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("levee-redis".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                runtime.block_on(run(thread_shared, rx));
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(RedisStore { shared, tx }),
            Ok(Err(e)) => Err(OpenError::Thread(e)),
            Err(_) => Err(OpenError::Thread(std::io::Error::other(
                "the redis client thread exited",
            ))),
        }
    }

    /// Runs `limit`'s algorithm for `key`, taking `cost` requests' worth.
    /// Keys of different algorithms never collide.
    pub async fn check(
        &self,
        key: &[u8],
        limit: &Limit,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        if limit.limit == 0 {
            // Nothing can pass (as in `algorithm`): no need to ask Redis,
            // nor to divide by zero there.
            return Ok(Decision {
                allowed: cost == 0,
                limit: 0,
                remaining: 0,
                reset: Duration::ZERO,
                retry_after: match cost {
                    0 => Duration::ZERO,
                    _ => limit.period.max(Duration::from_nanos(1)),
                },
                delay: Duration::ZERO,
            });
        }
        // In whole µs, at least 1 and at most 2^52 (142 years) so that
        // Lua's doubles stay exact.
        let period = u64::try_from(limit.period.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 1 << 52);
        let cmd = Cmd::Script {
            algorithm: limit.algorithm,
            key: RedisStore::key_for(limit.algorithm, key),
            args: [
                period,
                limit.limit.min(1 << 52),
                capacity(limit).min(1 << 52),
                cost.min(1 << 52),
                u64::from(limit.delay),
            ],
        };
        let reply = self.call(cmd).await?;
        decision(reply, limit).inspect_err(|_| self.count_error())
    }

    /// Sends any command and returns Redis's reply (an error reply is a
    /// [`StoreError::Protocol`]). For tests and diagnostics; in a cluster
    /// it goes where redis-rs routes it (by its first key).
    pub async fn command(&self, args: &[&[u8]]) -> Result<Reply, StoreError> {
        self.call(Cmd::Raw(args.iter().map(|a| a.to_vec()).collect()))
            .await
    }

    /// `PING`: whether Redis answers, within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self.command(&[b"PING"]).await? {
            Reply::SimpleString(s) if s == "PONG" => Ok(()),
            other => {
                self.count_error();
                Err(StoreError::Protocol(format!(
                    "unexpected reply to PING: {other:?}"
                )))
            }
        }
    }

    /// The Redis key holding `key`'s state for `algorithm`:
    /// `levee:rl:<algorithm>:{<key>}`. The braces make the whole key
    /// Redis Cluster's hash tag (up to a `}` in `key`, which only shortens
    /// the tag): whatever one script touches for a key is in one slot.
    pub fn key_for(algorithm: Algorithm, key: &[u8]) -> Vec<u8> {
        let name = algorithm.as_str();
        let mut k = Vec::with_capacity(KEY_PREFIX.len() + name.len() + 3 + key.len());
        k.extend_from_slice(KEY_PREFIX.as_bytes());
        k.extend_from_slice(name.as_bytes());
        k.extend_from_slice(b":{");
        k.extend_from_slice(key);
        k.push(b'}');
        k
    }

    /// False from a failed connection until a connect succeeds again (a
    /// cluster: until no call has failed for [`CLUSTER_QUIET`]); true
    /// before the first connection.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// Calls that have failed (any [`StoreError`]) since the store was made.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    pub fn target(&self) -> &Target {
        &self.shared.target
    }

    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    fn count_error(&self) {
        self.shared.errors.fetch_add(1, Ordering::Relaxed);
    }

    async fn call(&self, cmd: Cmd) -> Result<Reply, StoreError> {
        let result = self.call_inner(cmd).await;
        if result.is_err() {
            self.count_error();
        }
        result
    }

    async fn call_inner(&self, cmd: Cmd) -> Result<Reply, StoreError> {
        if let Some(left) = self.shared.backoff_left() {
            return Err(self.shared.down_error(left));
        }
        let (reply, rx) = oneshot::channel();
        let exchange = async {
            self.tx
                .send(Request { cmd, reply })
                .await
                .map_err(|_| StoreError::Unavailable("the redis client thread stopped".into()))?;
            rx.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "the redis client dropped the request".into(),
                ))
            })
        };
        match tokio::time::timeout(self.shared.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.shared.name)
            .field("timeout", &self.shared.timeout)
            .field("up", &self.is_up())
            .finish()
    }
}

/// The GCRA script's capacity, in requests (the window scripts ignore it).
pub(crate) fn capacity(limit: &Limit) -> u64 {
    match limit.algorithm {
        Algorithm::TokenBucket => limit.burst.max(1),
        Algorithm::LeakyBucket => limit.burst.saturating_add(1),
        _ => limit.burst,
    }
}

/// A script's reply as a decision.
fn decision(reply: Reply, limit: &Limit) -> Result<Decision, StoreError> {
    let items = match reply {
        Reply::Array(items) if items.len() == 5 => items,
        other => {
            return Err(StoreError::Protocol(format!(
                "unexpected script reply {other:?}"
            )));
        }
    };
    let mut n = [0u64; 5];
    for (slot, item) in n.iter_mut().zip(&items) {
        *slot = match item {
            Reply::Int(v) => u64::try_from(*v)
                .map_err(|_| StoreError::Protocol(format!("negative value {v} in script reply")))?,
            other => {
                return Err(StoreError::Protocol(format!(
                    "unexpected value {other:?} in script reply"
                )));
            }
        };
    }
    let [allowed, remaining, reset, retry_after, delay] = n;
    Ok(Decision {
        allowed: allowed == 1,
        limit: limit.limit,
        remaining,
        reset: Duration::from_micros(reset),
        retry_after: Duration::from_micros(retry_after),
        delay: Duration::from_micros(delay),
    })
}

// ---------------------------------------------------------------------------
// The client thread.

/// A connection made by the client thread; clones share it.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn run(&mut self, cmd: &Cmd) -> Result<Reply, RedisError> {
        match self {
            Conn::Single(c) => run_on(c, cmd).await,
            Conn::Cluster(c) => run_on(c, cmd).await,
        }
    }
}

async fn run_on(conn: &mut impl ConnectionLike, cmd: &Cmd) -> Result<Reply, RedisError> {
    match cmd {
        Cmd::Script {
            algorithm,
            key,
            args,
        } => {
            let mut call = scripts::script(*algorithm).key(key.as_slice());
            for a in args {
                call.arg(*a);
            }
            call.invoke_async(conn).await
        }
        Cmd::Raw(args) => {
            let Some((name, rest)) = args.split_first() else {
                return Ok(Reply::Nil);
            };
            let mut c = ::redis::cmd(&String::from_utf8_lossy(name));
            for a in rest {
                c.arg(a.as_slice());
            }
            c.query_async(conn).await
        }
    }
}

/// Whether an error means the connection is unusable (rather than one
/// command failing on a working connection).
fn fatal(e: &RedisError) -> bool {
    !matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

/// A connection or its handshake failed: why, in words for the log (auth
/// failures say so).
fn connect_error(e: &RedisError) -> String {
    let text = e.to_string();
    if e.kind() == ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
    {
        format!("AUTH failed: {text}")
    } else {
        text
    }
}

/// The client thread's loop: connect when a request comes, run each
/// request as a task on the shared connection, drop a connection that
/// failed, back off after failed connects.
async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Request>) {
    let mut backoff = BACKOFF_MIN;
    let mut conn: Option<(u64, Conn)> = None;
    let mut generation = 0u64;
    // Tasks report a connection they found dead, by generation.
    let (dead_tx, mut dead_rx) = mpsc::unbounded_channel::<u64>();
    loop {
        let request = tokio::select! {
            biased;
            Some(dead) = dead_rx.recv() => {
                if conn.as_ref().is_some_and(|(g, _)| *g == dead) {
                    conn = None;
                }
                continue;
            }
            request = rx.recv() => match request {
                Some(request) => request,
                None => return,
            },
        };
        if request.reply.is_closed() {
            continue; // the caller gave up while it was queued
        }
        if conn.is_none() {
            if let Some(left) = shared.backoff_left() {
                let _ = request.reply.send(Err(shared.down_error(left)));
                continue;
            }
            let attempt = match tokio::time::timeout(shared.timeout, connect(&shared)).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "no connection within {} ms",
                    shared.timeout.as_millis()
                )),
            };
            match attempt {
                Err(reason) => {
                    shared.mark_down(&reason);
                    shared.back_off(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    let _ = request.reply.send(Err(StoreError::Unavailable(format!(
                        "{}: {reason}",
                        shared.name
                    ))));
                    continue;
                }
                Ok(c) => {
                    shared.retry_at.store(0, Ordering::Release);
                    backoff = BACKOFF_MIN;
                    if !shared.cluster() {
                        shared.mark_up();
                    }
                    generation += 1;
                    conn = Some((generation, c));
                }
            }
        }
        let Some((generation, c)) = &conn else {
            continue;
        };
        let (generation, mut c) = (*generation, c.clone());
        let shared = shared.clone();
        let dead_tx = dead_tx.clone();
        tokio::spawn(async move {
            let Request { cmd, reply } = request;
            let result = match tokio::time::timeout(shared.stall, c.run(&cmd)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) if !fatal(&e) => Err(StoreError::Protocol(e.to_string())),
                Ok(Err(e)) => Err(StoreError::Unavailable(format!("{}: {e}", shared.name))),
                Err(_) => Err(StoreError::Unavailable(format!(
                    "{}: no reply for {} ms",
                    shared.name,
                    shared.stall.as_millis()
                ))),
            };
            match (&result, shared.cluster()) {
                (Err(StoreError::Unavailable(reason)), false) => {
                    // Before the caller hears of it, so that it sees
                    // `is_up` false.
                    shared.mark_down(reason);
                    let _ = dead_tx.send(generation);
                }
                (Err(StoreError::Unavailable(reason)), true) => shared.mark_down(reason),
                (_, true) => shared.cluster_ok(),
                (_, false) => {}
            }
            let _ = reply.send(result);
        });
    }
}

/// Connects and checks the connection: for one server, `SCRIPT LOAD` of
/// every script (which also proves that Redis answers, and that AUTH and
/// SELECT worked); for a cluster, the slot map and a `PING`.
async fn connect(shared: &Shared) -> Result<Conn, String> {
    let err = |e: RedisError| connect_error(&e);
    match &shared.target {
        Target::Single(url) => {
            let info = connection_info(url).map_err(err)?;
            let client = match &shared.tls {
                Some(certs) if url.tls() => Client::build_with_tls(info, certs.clone()),
                _ => Client::open(info),
            }
            .map_err(err)?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(shared.timeout))
                .set_response_timeout(None);
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(err)?;
            let mut load = ::redis::pipe();
            for text in scripts::texts() {
                load.cmd("SCRIPT").arg("LOAD").arg(text.as_str());
            }
            let _: Vec<String> = load.query_async(&mut conn).await.map_err(err)?;
            Ok(Conn::Single(conn))
        }
        Target::Cluster(nodes) => {
            let infos = nodes
                .iter()
                .map(connection_info)
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            let mut builder = ClusterClientBuilder::new(infos)
                .connection_timeout(shared.timeout)
                .response_timeout(shared.stall)
                // A call meets a dead node at most twice; the caller's
                // timeout bounds it anyway.
                .retries(1)
                .min_retry_wait(10)
                .max_retry_wait(100);
            if let Some(certs) = &shared.tls
                && nodes.iter().any(RedisUrl::tls)
            {
                builder = builder.certs(certs.clone());
            }
            let client = builder.build().map_err(err)?;
            let mut conn = client.get_async_connection().await.map_err(err)?;
            let _: String = ::redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            Ok(Conn::Cluster(conn))
        }
    }
}

/// The Redis the rules share (`redis_url` or `redis_cluster`), how to
/// reach it, and an id that changes whenever either does (to keep a store
/// across reloads while it stays the same). `None` when neither is set,
/// or (validation refuses it) a URL does not parse.
pub fn target_of(config: &RateLimitConfig) -> Option<(Target, Options, String)> {
    let (target, mut id) = match (&config.redis_url, &config.redis_cluster) {
        (Some(url), _) => (
            Target::Single(RedisUrl::parse(url.get_ref()).ok()?),
            url.get_ref().clone(),
        ),
        (None, Some(nodes)) => {
            let urls = nodes
                .get_ref()
                .iter()
                .map(|n| RedisUrl::parse(n.get_ref()).ok())
                .collect::<Option<Vec<_>>>()?;
            let id = nodes
                .get_ref()
                .iter()
                .map(|n| n.get_ref().as_str())
                .collect::<Vec<_>>()
                .join(",");
            (Target::Cluster(urls), format!("cluster {id}"))
        }
        (None, None) => return None,
    };
    let options = Options {
        timeout: config.redis_timeout.get(),
        tls_ca_file: config
            .redis_tls_ca_file
            .as_ref()
            .map(|f| f.get_ref().into()),
    };
    id.push_str(&format!("\0{options:?}"));
    Some((target, options, id))
}

/// What redis-rs connects with: the address, database and credentials,
/// RESP2, and no `CLIENT SETINFO` (one round trip less, and Redis
/// before 7.2 does not know it).
fn connection_info(url: &RedisUrl) -> Result<::redis::ConnectionInfo, RedisError> {
    let addr = match &url.addr {
        Addr::Tcp {
            host,
            port,
            tls: false,
        } => ::redis::ConnectionAddr::Tcp(host.clone(), *port),
        Addr::Tcp {
            host,
            port,
            tls: true,
        } => ::redis::ConnectionAddr::TcpTls {
            host: host.clone(),
            port: *port,
            insecure: false,
            tls_params: None,
        },
        Addr::Unix(path) => ::redis::ConnectionAddr::Unix(path.clone()),
    };
    let mut redis = ::redis::RedisConnectionInfo::default()
        .set_db(i64::from(url.db))
        .set_skip_set_lib_name();
    if let Some(user) = &url.username {
        redis = redis.set_username(user);
    }
    if let Some(pass) = &url.password {
        redis = redis.set_password(pass);
    }
    Ok(::redis::IntoConnectionInfo::into_connection_info(addr)?.set_redis_settings(redis))
}

#[cfg(test)]
mod tests;
