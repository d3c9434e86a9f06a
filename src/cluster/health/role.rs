//! Role checks: an endpoint passes only if the server behind it answers in
//! the role its cluster wants. HAProxy's checks see a port that accepts;
//! these see a PostgreSQL that is the primary (`SELECT pg_is_in_recovery()`
//! is false) or a replica (true, with its replay lag under a bound), and a
//! Redis that is the master or a replica (`ROLE`). Each check speaks the
//! ecosystem's client (tokio-postgres, redis-rs) over a connection of its
//! own, made by the caller (from the cluster's source addresses, and its
//! errors judged like any check's connect), and closes it.

use std::time::Duration;

use tokio::net::TcpStream;

use super::NotPassed;
use crate::config::Role;

/// What a role check asks, and of whom.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleProbe {
    pub server: Server,
    pub role: Role,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
    /// `postgres`, `role = "replica"`: most replay lag that passes.
    pub max_lag: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Redis,
}

/// What the server says it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    pub primary: bool,
    /// A PostgreSQL replica's time since its last replayed transaction.
    pub lag: Option<Duration>,
}

/// Whether `seen` passes `probe`: `Err` says why not.
pub fn judge(probe: &RoleProbe, seen: Seen) -> Result<(), String> {
    let name = |primary: bool| if primary { "primary" } else { "replica" };
    match probe.role {
        Role::Any => return Ok(()),
        Role::Primary if !seen.primary => return Err("is a replica, not the primary".into()),
        Role::Replica if seen.primary => return Err("is the primary, not a replica".into()),
        _ => {}
    }
    if let (Some(max), Some(lag)) = (probe.max_lag, seen.lag)
        && lag > max
    {
        return Err(format!(
            "{} replays {lag:.1?} behind (max_replication_lag {max:?})",
            name(seen.primary)
        ));
    }
    Ok(())
}

/// Asks the server on `tcp` its role. The caller bounds the time.
pub async fn ask(tcp: TcpStream, probe: &RoleProbe, timeout: Duration) -> Result<Seen, NotPassed> {
    match probe.server {
        Server::Postgres => postgres(tcp, probe).await,
        Server::Redis => redis(tcp, probe, timeout).await,
    }
}

async fn postgres(tcp: TcpStream, probe: &RoleProbe) -> Result<Seen, NotPassed> {
    let user = probe.user.as_deref().unwrap_or("postgres");
    let mut config = tokio_postgres::Config::new();
    config
        .user(user)
        .dbname(probe.database.as_deref().unwrap_or(user))
        .application_name("levee-health-check");
    if let Some(p) = &probe.password {
        config.password(p);
    }
    let (client, connection) = config
        .connect_raw(tcp, tokio_postgres::NoTls)
        .await
        .map_err(|e| NotPassed::connecting("postgres", &e))?;
    // The connection is driven beside the query and dropped with it.
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    // The lag: time since the last replayed transaction (0 on a primary).
    // On a replica of an idle primary it grows although nothing is behind.
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
             COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::float8",
            &[],
        )
        .await;
    drop(client);
    driver.abort();
    let row = row.map_err(|e| format!("postgres: {e}"))?;
    let in_recovery: bool = row.try_get(0).map_err(|e| format!("postgres: {e}"))?;
    let lag: f64 = row.try_get(1).map_err(|e| format!("postgres: {e}"))?;
    Ok(Seen {
        primary: !in_recovery,
        lag: in_recovery.then(|| Duration::from_secs_f64(lag.max(0.0))),
    })
}

async fn redis(tcp: TcpStream, probe: &RoleProbe, timeout: Duration) -> Result<Seen, NotPassed> {
    use ::redis::RedisConnectionInfo;
    let err = |e: ::redis::RedisError| format!("redis: {e}");
    let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
    if let Some(user) = &probe.user {
        settings = settings.set_username(user);
    }
    if let Some(pass) = &probe.password {
        settings = settings.set_password(pass);
    }
    let config = ::redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
    let (mut conn, driver) =
        ::redis::aio::MultiplexedConnection::new_with_config(&settings, tcp, config)
            .await
            .map_err(|e| NotPassed::connecting("redis", &e))?;
    // The connection is driven beside the command and dropped with it.
    let command = ::redis::cmd("ROLE");
    let query = command.query_async::<::redis::Value>(&mut conn);
    let role = tokio::select! {
        r = query => r.map_err(err)?,
        () = driver => return Err(NotPassed::Failed("redis: the connection closed".into())),
    };
    // The first element names the role: "master", "slave" or "sentinel".
    let first = match &role {
        ::redis::Value::Array(items) => items.first(),
        _ => None,
    };
    let name = match first {
        Some(::redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(::redis::Value::SimpleString(s)) => s.clone(),
        _ => {
            return Err(NotPassed::Failed(
                "redis: ROLE answered something else than a role".into(),
            ));
        }
    };
    match name.as_str() {
        "master" => Ok(Seen {
            primary: true,
            lag: None,
        }),
        "slave" | "replica" => Ok(Seen {
            primary: false,
            lag: None,
        }),
        other => Err(NotPassed::Failed(format!(
            "redis: role {other:?} is neither master nor replica"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(role: Role, max_lag: Option<Duration>) -> RoleProbe {
        RoleProbe {
            server: Server::Postgres,
            role,
            user: None,
            password: None,
            database: None,
            max_lag,
        }
    }

    #[test]
    fn the_role_decides() {
        let primary = Seen {
            primary: true,
            lag: None,
        };
        let replica = Seen {
            primary: false,
            lag: Some(Duration::from_secs(2)),
        };
        assert!(judge(&probe(Role::Primary, None), primary).is_ok());
        assert!(judge(&probe(Role::Primary, None), replica).is_err());
        assert!(judge(&probe(Role::Replica, None), primary).is_err());
        assert!(judge(&probe(Role::Replica, None), replica).is_ok());
        assert!(judge(&probe(Role::Any, None), replica).is_ok());
        let lagging = judge(&probe(Role::Replica, Some(Duration::from_secs(1))), replica);
        assert!(lagging.is_err_and(|e| e.contains("behind")));
        assert!(judge(&probe(Role::Replica, Some(Duration::from_secs(5))), replica).is_ok());
    }
}
