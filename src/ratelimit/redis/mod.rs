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

mod client;
pub mod scripts;
mod state;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::redis::TlsCertificates;
use tokio::sync::{mpsc, oneshot};

use client::{Cmd, Request};
use state::Shared;

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
                runtime.block_on(client::run(thread_shared, rx));
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

#[cfg(test)]
mod tests;
