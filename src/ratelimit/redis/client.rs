//! The store's client thread: it owns the redis-rs connection (one
//! multiplexed connection, or a cluster connection), makes it lazily,
//! runs each caller's command as a task on it, drops a connection that
//! failed and backs off after failed connects (see the parent module's
//! "Concurrency" and "Failure").

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError};
use tokio::sync::{mpsc, oneshot};

use super::state::Shared;
use super::{Addr, Algorithm, RedisUrl, Reply, StoreError, Target, scripts};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub(super) struct Request {
    pub(super) cmd: Cmd,
    pub(super) reply: oneshot::Sender<Result<Reply, StoreError>>,
}

pub(super) enum Cmd {
    Script {
        algorithm: Algorithm,
        key: Vec<u8>,
        args: [u64; 5],
    },
    Raw(Vec<Vec<u8>>),
}

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
pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Request>) {
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

/// What redis-rs connects with: the address, database and credentials,
/// RESP2, and no `CLIENT SETINFO` (one round trip less, and Redis
/// before 7.2 does not know it).
pub(super) fn connection_info(url: &RedisUrl) -> Result<::redis::ConnectionInfo, RedisError> {
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
