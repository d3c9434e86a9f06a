//! The rate-limit algorithms run in a shared Redis, so that several Levee
//! instances enforce one limit.
//!
//! Each algorithm is a Lua script that reads the key's state, decides and
//! writes the new state in one atomic step (`EVALSHA`). The clock is Redis's
//! (`redis.call('TIME')`, microseconds), so instances whose clocks disagree
//! still share one timeline. Every key written gets a TTL of about the time
//! after which its state would be fresh again, so idle keys vanish on their
//! own. Keys are `levee:rl:<algorithm>:<key>` ([`RedisStore::key_for`]).
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
//! # Concurrency: one client thread per store, one pipelined connection
//!
//! Levee's workers are threads with their own current-thread runtimes, and a
//! tokio socket belongs to the runtime that created it, so no worker can
//! share another's connection. Rather than a pool per worker (N workers × M
//! instances connections to Redis, each with its own reconnect state), a
//! store owns one thread running its own current-thread runtime and a single
//! connection. Callers on any runtime hand it a command over a bounded
//! `tokio::sync::mpsc` channel and wait for the reply on a `oneshot`; both
//! work across runtimes. The connection task pipelines: it writes every
//! queued command in one `write` and matches replies to callers in order
//! (Redis answers in order), so one connection carries many concurrent
//! requests and Redis sees large batches instead of many sockets. The hop
//! to the client thread costs a few microseconds, small next to the round
//! trip to Redis, and in exchange the connection, its scripts, the
//! reconnect backoff and the outage state live in one place, independent of
//! the runtimes of the callers (workers, the admin runtime, tests).
//!
//! # Failure
//!
//! Every call is bounded by the store's timeout (queueing, connecting and
//! the reply together) and never hangs on Redis. The connection is made
//! lazily by the first call. When it fails (connect refused, reset, EOF,
//! a reply that does not come for `max(4 × timeout, 500 ms)`) the waiting
//! calls get [`StoreError::Unavailable`] and the connection is dropped; the
//! next call reconnects. A failed connect starts a backoff (100 ms doubling
//! to 2 s) during which calls fail at once, on the caller's thread, without
//! touching the client thread. The store logs one `warn` when it goes down
//! and one `info` when it is back ([`RedisStore::is_up`]); errors are
//! counted for metrics ([`RedisStore::errors`]).
//!
//! Scripts are loaded (`SCRIPT LOAD`) when a connection is made. If Redis
//! forgets them (`SCRIPT FLUSH`, a restart behind a proxy, a failover), the
//! `NOSCRIPT` error makes the connection send `SCRIPT LOAD` and the same
//! `EVALSHA` again, once.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Algorithm, Decision, Limit};

/// The timeout [`RedisStore::new`] uses when given zero.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The prefix of every key the store writes.
pub const KEY_PREFIX: &str = "levee:rl:";

/// Commands waiting for the client thread; beyond, callers wait (within
/// their timeout) for room.
const QUEUE: usize = 4096;
/// Commands written to the socket in one go at most.
const MAX_BATCH: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection whose oldest outstanding reply is older than this (and
/// than 4 × the timeout) is taken for dead.
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
    #[error("cannot start the redis client thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A malformed Redis URL. The message never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid redis URL `{url}`: {reason} (expected redis://[[user]:password@]host[:port][/db])"
)]
pub struct UrlError {
    url: String,
    reason: String,
}

/// `redis://[[user]:password@]host[:port][/db]`. The port defaults to 6379
/// and the database to 0; user and password may be percent-encoded. With a
/// password the connection sends `AUTH`, with a database `SELECT`.
///
/// `Display` shows the URL without credentials, as logs should.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, UrlError> {
        let fail = |reason: &str| UrlError {
            url: redact(url),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(fail("missing the redis:// scheme"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "redis" => {}
            "rediss" => return Err(fail("TLS (rediss://) is not supported")),
            "unix" | "redis+unix" => return Err(fail("unix sockets are not supported")),
            _ => return Err(fail("the scheme must be redis://")),
        }
        if rest.contains('?') || rest.contains('#') {
            return Err(fail("query parameters and fragments are not supported"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let Some((user, pass)) = info.split_once(':') else {
                    return Err(fail("credentials need a password (redis://:password@host)"));
                };
                let user = percent_decode(user).ok_or_else(|| fail("bad %-escape in the user"))?;
                let pass =
                    percent_decode(pass).ok_or_else(|| fail("bad %-escape in the password"))?;
                if pass.is_empty() {
                    return Err(fail("the password is empty"));
                }
                ((!user.is_empty()).then_some(user), Some(pass))
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(fail("unclosed [ in an IPv6 host"));
            };
            if after.is_empty() {
                (host, None)
            } else if let Some(port) = after.strip_prefix(':') {
                (host, Some(port))
            } else {
                return Err(fail("unexpected text after the IPv6 host"));
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(fail("the host is missing"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/@[]".contains(c))
        {
            return Err(fail("the host contains invalid characters"));
        }
        let port = match port {
            None => 6379,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(fail("the port must be a number from 1 to 65535")),
            },
        };
        let db = match path {
            "" => 0,
            db => db
                .parse::<u32>()
                .map_err(|_| fail("the path must be a database number (/0, /1, …)"))?,
        };
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            db,
            username,
            password,
        })
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, UrlError> {
        RedisUrl::parse(s)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "redis://[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "redis://{}:{}", self.host, self.port)?;
        }
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The URL with any credentials replaced, for error messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------
// The scripts.
//
// All take KEYS[1] and ARGV = period (µs), limit, capacity, cost, delay (0/1),
// and return {allowed (0/1), remaining, reset µs, retry_after µs, delay µs}.
// Times are Lua doubles in µs since the Unix epoch (exact below 2^53, i.e.
// until the year 2255). Stored numbers are formatted explicitly, since
// Lua's tostring would print them in scientific notation.

const PRELUDE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local burst = tonumber(ARGV[3]) -- capacity, for GCRA
local cost = tonumber(ARGV[4])
local shape = ARGV[5] == '1'
local key = KEYS[1]
local function ms(us)
  local v = math.ceil(us / 1000)
  if v < 1 then v = 1 end
  return v
end
local function up(us)
  if us <= 0 then return 0 end
  return math.ceil(us)
end
local function wait(us)
  if us < 1 then return 1 end
  return math.ceil(us)
end
local function count(x)
  if x <= 0 then return 0 end
  return math.floor(x + 1e-6)
end
"#;

/// GCRA, for the token bucket and the leaky bucket: the key holds the
/// theoretical arrival time (TAT), when the bucket of `capacity` (ARGV[3]:
/// the token bucket's `burst`, the leaky bucket's `burst + 1`) is full
/// again. A request of cost `c` is allowed iff `max(tat, now) + c·T − now
/// ≤ capacity·T`. A missing key is a full bucket. With `shape` (a leaky
/// bucket with `delay`), the delay is the time until the request's slot,
/// `max(tat, now) + (c − 1)·T − now`.
const GCRA: &str = r#"
local T = period / limit
local tau = T * burst
local tat = tonumber(redis.call('GET', key)) or 0
local start = tat
if start < now then start = now end
local new_tat = start + cost * T
local allowed = new_tat - now <= tau + 0.5
local occupied = start - now
if allowed then occupied = new_tat - now end
local remaining = count((tau - occupied) / T)
if not allowed then
  if cost > burst then return {0, remaining, up(occupied), up(period), 0} end
  return {0, remaining, up(occupied), wait(new_tat - tau - now), 0}
end
if cost == 0 then return {1, remaining, up(occupied), 0, 0} end
redis.call('SET', key, string.format('%.17g', new_tat), 'PX', ms(new_tat - now))
local d = 0
if shape then d = up(new_tat - T - now) end
return {1, remaining, up(occupied), 0, d}
"#;

/// A hash {w = window number, c = count}; windows are aligned to multiples
/// of the period since the Unix epoch. Rejected requests do not count.
const FIXED_WINDOW: &str = r#"
local win = math.floor(now / period)
local wstr = string.format('%.0f', win)
local reset = (win + 1) * period - now
local data = redis.call('HMGET', key, 'w', 'c')
local n = 0
if data[1] == wstr then n = tonumber(data[2]) or 0 end
local function whole()
  if n == 0 then return 0 end
  return up(reset)
end
if n + cost <= limit then
  n = n + cost
  if cost > 0 then
    redis.call('HSET', key, 'w', wstr, 'c', string.format('%.0f', n))
    redis.call('PEXPIRE', key, ms(reset))
  end
  return {1, limit - n, whole(), 0, 0}
end
if cost > limit then return {0, count(limit - n), whole(), up(period), 0} end
return {0, count(limit - n), whole(), wait(reset), 0}
"#;

/// A sorted set of the allowed requests' timestamps; members are
/// `time-ordinal`, unique even for requests in the same microsecond.
const SLIDING_LOG: &str = r#"
redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now - period))
local n = redis.call('ZCARD', key)
local function age_reset()
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if newest[2] then return up(tonumber(newest[2]) + period - now) end
  return 0
end
if n + cost <= limit then
  if cost > 0 then
    local nowstr = string.format('%.0f', now)
    local i = 1
    while i <= cost do
      local args = {}
      local j = 0
      while i <= cost and j < 200 do
        args[#args + 1] = nowstr
        args[#args + 1] = nowstr .. '-' .. string.format('%.0f', n + i)
        i = i + 1
        j = j + 1
      end
      redis.call('ZADD', key, unpack(args))
    end
    redis.call('PEXPIRE', key, ms(period))
    return {1, limit - n - cost, up(period), 0, 0}
  end
  return {1, limit - n, age_reset(), 0, 0}
end
if cost > limit then return {0, count(limit - n), age_reset(), up(period), 0} end
local retry = 1
local idx = n + cost - limit - 1
local e = redis.call('ZRANGE', key, idx, idx, 'WITHSCORES')
if e[2] then retry = tonumber(e[2]) + period - now end
return {0, count(limit - n), age_reset(), wait(retry), 0}
"#;

/// A hash {w = window number, c = its count, p = the previous window's}.
/// The estimate is p × (the part of the previous window still inside the
/// sliding period) + c.
const SLIDING_COUNTER: &str = r#"
local win = math.floor(now / period)
local wstr = string.format('%.0f', win)
local wstart = win * period
local elapsed = now - wstart
local data = redis.call('HMGET', key, 'w', 'c', 'p')
local sw = tonumber(data[1])
local cur, prev = 0, 0
if sw == win then
  cur = tonumber(data[2]) or 0
  prev = tonumber(data[3]) or 0
elseif sw == win - 1 then
  prev = tonumber(data[2]) or 0
end
local weight = (period - elapsed) / period
local est = prev * weight + cur
if est + cost <= limit + 1e-9 then
  cur = cur + cost
  local reset = 0
  if cur > 0 then reset = wstart + 2 * period - now elseif prev > 0 then reset = period - elapsed end
  if cost > 0 then
    redis.call('HSET', key, 'w', wstr, 'c', string.format('%.0f', cur), 'p', string.format('%.0f', prev))
    redis.call('PEXPIRE', key, ms(wstart + 2 * period - now))
  end
  return {1, count(limit - (prev * weight + cur)), up(reset), 0, 0}
end
local reset = 0
if cur > 0 then reset = wstart + 2 * period - now elseif prev > 0 then reset = period - elapsed end
if cost > limit then return {0, count(limit - est), up(reset), up(period), 0} end
-- The earliest time the estimate leaves room: in this window, while the
-- previous one weighs less and less; else in the next, where this one
-- becomes the previous.
local retry
local room = limit - cur - cost
if room >= 0 and prev > 0 then
  retry = period * (1 - room / prev) - elapsed
elseif cur <= limit - cost then
  retry = period - elapsed
else
  retry = (period - elapsed) + period * (1 - (limit - cost) / cur)
end
return {0, count(limit - est), up(reset), wait(retry), 0}
"#;

/// How many scripts there are: GCRA, fixed window, sliding log, sliding
/// counter.
const SCRIPTS: usize = 4;

fn script_index(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::TokenBucket | Algorithm::LeakyBucket => 0,
        Algorithm::FixedWindow => 1,
        Algorithm::SlidingLog => 2,
        Algorithm::SlidingCounter => 3,
    }
}

/// The script texts, in [`script_index`] order, built once.
fn scripts() -> &'static [String; SCRIPTS] {
    static TEXTS: std::sync::OnceLock<[String; SCRIPTS]> = std::sync::OnceLock::new();
    TEXTS.get_or_init(|| {
        [GCRA, FIXED_WINDOW, SLIDING_LOG, SLIDING_COUNTER].map(|body| format!("{PRELUDE}{body}"))
    })
}

// ---------------------------------------------------------------------------
// RESP2.

/// A Redis reply (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

const MAX_BULK: usize = 512 * 1024 * 1024;
const MAX_ARRAY: usize = 1 << 24;
const MAX_DEPTH: usize = 8;
const MAX_LINE: usize = 64 * 1024;

/// Appends one command (an array of bulk strings) to `out`.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    push_decimal(out, args.len() as u64);
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        push_decimal(out, arg.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn decimal(n: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    push_decimal(&mut v, n);
    v
}

/// Parses one reply from the front of `buf`: `Ok(None)` when it is not
/// complete yet, else the reply and how many bytes it took.
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], start: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    if depth > MAX_DEPTH {
        return Err("replies nested too deep".into());
    }
    let Some((line, next)) = read_line(buf, start)? else {
        return Ok(None);
    };
    let Some((&kind, body)) = line.split_first() else {
        return Err("empty reply line".into());
    };
    let text = || String::from_utf8_lossy(body).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Simple(text()), next))),
        b'-' => Ok(Some((Reply::Error(text()), next))),
        b':' => {
            let n = parse_int(body)?;
            Ok(Some((Reply::Integer(n), next)))
        }
        b'$' => {
            let n = parse_int(body)?;
            if n == -1 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let len = usize::try_from(n)
                .ok()
                .filter(|&l| l <= MAX_BULK)
                .ok_or_else(|| format!("bad bulk length {n}"))?;
            let end = next + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("bulk string not terminated by CRLF".into());
            }
            Ok(Some((Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)))
        }
        b'*' => {
            let n = parse_int(body)?;
            if n == -1 {
                return Ok(Some((Reply::Array(None), next)));
            }
            let len = usize::try_from(n)
                .ok()
                .filter(|&l| l <= MAX_ARRAY)
                .ok_or_else(|| format!("bad array length {n}"))?;
            let mut items = Vec::with_capacity(len.min(1024));
            let mut at = next;
            for _ in 0..len {
                match parse_at(buf, at, depth + 1)? {
                    Some((item, after)) => {
                        items.push(item);
                        at = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(format!("unknown reply type byte 0x{other:02x}")),
    }
}

/// The line starting at `start` without its CRLF, and where the next begins.
fn read_line(buf: &[u8], start: usize) -> Result<Option<(&[u8], usize)>, String> {
    let rest = buf.get(start..).unwrap_or_default();
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&rest[..i], start + i + 2))),
        None if rest.len() > MAX_LINE => Err("reply line too long".into()),
        None => Ok(None),
    }
}

fn parse_int(digits: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| format!("bad integer {:?}", String::from_utf8_lossy(digits)))
}

// ---------------------------------------------------------------------------
// The store.

/// A rate-limit store in Redis. Cheap to share (`Arc`), usable from any
/// tokio runtime; see the module doc for how it works.
pub struct RedisStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
}

struct Shared {
    url: RedisUrl,
    timeout: Duration,
    stall: Duration,
    up: AtomicBool,
    errors: AtomicU64,
    /// The start of the clock `retry_at` counts in.
    base: std::time::Instant,
    /// Microseconds since `base` before which no reconnect is tried; 0 when
    /// not backing off.
    retry_at: AtomicU64,
}

impl Shared {
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
            self.url,
            left.as_millis().max(1)
        ))
    }

    fn mark_down(&self, reason: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                store = %self.url,
                "rate-limit store {} unreachable: {reason}",
                self.url
            );
        } else {
            tracing::debug!(store = %self.url, "rate-limit store still unreachable: {reason}");
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(store = %self.url, "rate-limit store {} reachable again", self.url);
        }
    }
}

struct Request {
    cmd: Cmd,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

enum Cmd {
    Script(ScriptCall),
    Raw(Vec<Vec<u8>>),
}

struct ScriptCall {
    script: usize,
    key: Vec<u8>,
    args: [u64; 5],
}

impl RedisStore {
    /// A store for `url` (`redis://[[user]:password@]host[:port][/db]`)
    /// whose calls each take at most `timeout` ([`DEFAULT_TIMEOUT`] if zero).
    /// Starts the store's client thread; does not connect yet.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, OpenError> {
        RedisStore::open(RedisUrl::parse(url)?, timeout)
    }

    /// [`RedisStore::new`] with a parsed URL.
    pub fn open(url: RedisUrl, timeout: Duration) -> Result<RedisStore, OpenError> {
        let timeout = if timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            timeout
        };
        let shared = Arc::new(Shared {
            url,
            timeout,
            stall: (timeout * 4).max(STALL_MIN),
            up: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            base: std::time::Instant::now(),
            retry_at: AtomicU64::new(0),
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
        // The GCRA script's capacity, in requests.
        let capacity = match limit.algorithm {
            Algorithm::TokenBucket => limit.burst.max(1),
            Algorithm::LeakyBucket => limit.burst.saturating_add(1),
            _ => limit.burst,
        };
        let call = ScriptCall {
            script: script_index(limit.algorithm),
            key: RedisStore::key_for(limit.algorithm, key),
            args: [
                period,
                limit.limit.min(1 << 52),
                capacity.min(1 << 52),
                cost.min(1 << 52),
                u64::from(limit.delay),
            ],
        };
        let reply = self.call(Cmd::Script(call)).await?;
        decision(reply, limit).inspect_err(|_| self.count_error())
    }

    /// Sends any command and returns Redis's reply (an error reply is
    /// `Ok(Reply::Error(..))`). For tests and diagnostics.
    pub async fn command(&self, args: &[&[u8]]) -> Result<Reply, StoreError> {
        self.call(Cmd::Raw(args.iter().map(|a| a.to_vec()).collect()))
            .await
    }

    /// `PING`: whether Redis answers, within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self.command(&[b"PING"]).await? {
            Reply::Simple(s) if s == "PONG" => Ok(()),
            other => {
                self.count_error();
                Err(StoreError::Protocol(format!(
                    "unexpected reply to PING: {other:?}"
                )))
            }
        }
    }

    /// The Redis key holding `key`'s state for `algorithm`:
    /// `levee:rl:<algorithm>:<key>`.
    pub fn key_for(algorithm: Algorithm, key: &[u8]) -> Vec<u8> {
        let name = algorithm.as_str();
        let mut k = Vec::with_capacity(KEY_PREFIX.len() + name.len() + 1 + key.len());
        k.extend_from_slice(KEY_PREFIX.as_bytes());
        k.extend_from_slice(name.as_bytes());
        k.push(b':');
        k.extend_from_slice(key);
        k
    }

    /// False from a failed connection until a connect succeeds again; true
    /// before the first connection.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// Calls that have failed (any [`StoreError`]) since the store was made.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    pub fn url(&self) -> &RedisUrl {
        &self.shared.url
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
            .field("url", &self.shared.url)
            .field("timeout", &self.shared.timeout)
            .field("up", &self.is_up())
            .finish()
    }
}

/// A script's reply as a decision.
fn decision(reply: Reply, limit: &Limit) -> Result<Decision, StoreError> {
    let items = match reply {
        Reply::Array(Some(items)) if items.len() == 5 => items,
        Reply::Error(e) => return Err(StoreError::Protocol(e)),
        other => {
            return Err(StoreError::Protocol(format!(
                "unexpected script reply {other:?}"
            )));
        }
    };
    let mut n = [0u64; 5];
    for (slot, item) in n.iter_mut().zip(&items) {
        *slot = match item {
            Reply::Integer(v) => u64::try_from(*v)
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

/// The client thread's loop: connect when a request comes, serve the
/// connection until it fails, back off after failed connects.
async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Request>) {
    let mut backoff = BACKOFF_MIN;
    while let Some(first) = rx.recv().await {
        if first.reply.is_closed() {
            continue;
        }
        if let Some(left) = shared.backoff_left() {
            let _ = first.reply.send(Err(shared.down_error(left)));
            continue;
        }
        let attempt = match tokio::time::timeout(shared.timeout, connect(&shared.url)).await {
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
                let _ = first.reply.send(Err(StoreError::Unavailable(format!(
                    "{}: {reason}",
                    shared.url
                ))));
            }
            Ok(conn) => {
                shared.retry_at.store(0, Ordering::Release);
                backoff = BACKOFF_MIN;
                shared.mark_up();
                match serve(conn, first, &mut rx, &shared).await {
                    End::Shutdown => return,
                    // Marked down already if calls failed with it.
                    End::Lost { reason, failed } => {
                        if !failed {
                            tracing::debug!(
                                store = %shared.url,
                                "idle rate-limit store connection closed: {reason}"
                            );
                        }
                    }
                }
            }
        }
    }
}

struct Conn {
    stream: TcpStream,
    shas: [Vec<u8>; SCRIPTS],
}

/// Connects, authenticates, selects the database and loads the scripts, in
/// one round trip.
async fn connect(url: &RedisUrl) -> Result<Conn, String> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("connect: {e}"))?;
    let mut out = Vec::new();
    let mut expect_ok = Vec::new();
    if let Some(password) = &url.password {
        match &url.username {
            Some(user) => encode(&mut out, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
            None => encode(&mut out, &[b"AUTH", password.as_bytes()]),
        }
        expect_ok.push("AUTH");
    }
    if url.db != 0 {
        encode(&mut out, &[b"SELECT", &decimal(u64::from(url.db))]);
        expect_ok.push("SELECT");
    }
    for body in scripts() {
        encode(&mut out, &[b"SCRIPT", b"LOAD", body.as_bytes()]);
    }
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = BytesMut::with_capacity(4096);
    for what in expect_ok {
        match read_reply(&mut stream, &mut buf).await? {
            Reply::Simple(s) if s == "OK" => {}
            Reply::Error(e) => return Err(format!("{what} failed: {e}")),
            other => return Err(format!("unexpected reply to {what}: {other:?}")),
        }
    }
    let mut shas: [Vec<u8>; SCRIPTS] = Default::default();
    for sha in &mut shas {
        match read_reply(&mut stream, &mut buf).await? {
            Reply::Bulk(Some(s)) if s.len() == 40 && s.iter().all(u8::is_ascii_hexdigit) => {
                *sha = s
            }
            Reply::Error(e) => return Err(format!("SCRIPT LOAD failed: {e}")),
            other => return Err(format!("unexpected reply to SCRIPT LOAD: {other:?}")),
        }
    }
    if !buf.is_empty() {
        return Err("unexpected extra data after the handshake".into());
    }
    Ok(Conn { stream, shas })
}

async fn read_reply(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Reply, String> {
    loop {
        if let Some((reply, used)) = parse(buf)? {
            buf.advance(used);
            return Ok(reply);
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) => return Err("connection closed by the server".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

enum End {
    /// The store was dropped.
    Shutdown,
    /// The connection failed; `failed` when calls were waiting on it.
    Lost { reason: String, failed: bool },
}

enum Outcome {
    Shutdown,
    Lost(String),
}

/// A command written, waiting for its reply.
struct Pending {
    sent: Instant,
    kind: PendingKind,
}

enum PendingKind {
    /// A reply nobody waits for (the `SCRIPT LOAD` before a retry).
    Discard,
    Reply {
        tx: oneshot::Sender<Result<Reply, StoreError>>,
        /// The call, kept for one retry after `NOSCRIPT`.
        retry: Option<ScriptCall>,
    },
}

/// A script call to send again, after `SCRIPT LOAD`.
struct Retry {
    tx: oneshot::Sender<Result<Reply, StoreError>>,
    call: ScriptCall,
}

/// Serves one connection: a writer that batches queued commands and a
/// reader that hands replies back in order, polled together in this task.
async fn serve(
    conn: Conn,
    first: Request,
    rx: &mut mpsc::Receiver<Request>,
    shared: &Shared,
) -> End {
    let Conn { stream, shas } = conn;
    let (rd, wr) = stream.into_split();
    let (pend_tx, mut pend_rx) = mpsc::unbounded_channel();
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel();
    let mut inflight = VecDeque::new();
    let outcome = {
        let writer = write_loop(wr, first, rx, &mut retry_rx, pend_tx, &shas);
        let reader = read_loop(rd, &mut pend_rx, &mut inflight, retry_tx, shared.stall);
        tokio::select! {
            o = writer => o,
            o = reader => o,
        }
    };
    let reason = match outcome {
        Outcome::Shutdown => return End::Shutdown,
        Outcome::Lost(reason) => reason,
    };
    while let Ok(p) = pend_rx.try_recv() {
        inflight.push_back(p);
    }
    let mut waiting: Vec<_> = inflight
        .into_iter()
        .filter_map(|p| match p.kind {
            PendingKind::Reply { tx, .. } => Some(tx),
            PendingKind::Discard => None,
        })
        .collect();
    while let Ok(r) = retry_rx.try_recv() {
        waiting.push(r.tx);
    }
    let failed = !waiting.is_empty();
    if failed {
        // Before the callers hear of it, so that they see `is_up` false.
        shared.mark_down(&reason);
    }
    let error = StoreError::Unavailable(format!("{}: {reason}", shared.url));
    for tx in waiting {
        let _ = tx.send(Err(error.clone()));
    }
    End::Lost { reason, failed }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    first: Request,
    rx: &mut mpsc::Receiver<Request>,
    retry_rx: &mut mpsc::UnboundedReceiver<Retry>,
    pend_tx: mpsc::UnboundedSender<Pending>,
    shas: &[Vec<u8>; SCRIPTS],
) -> Outcome {
    let mut out = Vec::with_capacity(16 * 1024);
    let mut next = Some(first);
    loop {
        if next.is_none() {
            tokio::select! {
                biased;
                Some(retry) = retry_rx.recv() => queue_retry(&mut out, retry, &pend_tx, shas),
                request = rx.recv() => match request {
                    Some(request) => next = Some(request),
                    None => return Outcome::Shutdown,
                },
            }
        }
        if let Some(request) = next.take() {
            queue(&mut out, request, &pend_tx, shas);
        }
        for _ in 1..MAX_BATCH {
            if let Ok(retry) = retry_rx.try_recv() {
                queue_retry(&mut out, retry, &pend_tx, shas);
            } else if let Ok(request) = rx.try_recv() {
                queue(&mut out, request, &pend_tx, shas);
            } else {
                break;
            }
        }
        if out.is_empty() {
            continue;
        }
        if let Err(e) = wr.write_all(&out).await {
            return Outcome::Lost(format!("write: {e}"));
        }
        out.clear();
    }
}

/// Encodes a request, registering its reply before it is written.
fn queue(
    out: &mut Vec<u8>,
    request: Request,
    pend_tx: &mpsc::UnboundedSender<Pending>,
    shas: &[Vec<u8>; SCRIPTS],
) {
    if request.reply.is_closed() {
        return; // the caller gave up while it was queued
    }
    let retry = match request.cmd {
        Cmd::Script(call) => {
            encode_script(out, &shas[call.script], &call);
            Some(call)
        }
        Cmd::Raw(args) => {
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            encode(out, &args);
            None
        }
    };
    let _ = pend_tx.send(Pending {
        sent: Instant::now(),
        kind: PendingKind::Reply {
            tx: request.reply,
            retry,
        },
    });
}

fn queue_retry(
    out: &mut Vec<u8>,
    retry: Retry,
    pend_tx: &mpsc::UnboundedSender<Pending>,
    shas: &[Vec<u8>; SCRIPTS],
) {
    let Retry { tx, call } = retry;
    let body = scripts()
        .get(call.script)
        .map(String::as_bytes)
        .unwrap_or_default();
    encode(out, &[b"SCRIPT", b"LOAD", body]);
    let _ = pend_tx.send(Pending {
        sent: Instant::now(),
        kind: PendingKind::Discard,
    });
    // The sha is the SHA-1 of the text: loading it again gives the same.
    encode_script(out, &shas[call.script], &call);
    let _ = pend_tx.send(Pending {
        sent: Instant::now(),
        kind: PendingKind::Reply { tx, retry: None },
    });
}

fn encode_script(out: &mut Vec<u8>, sha: &[u8], call: &ScriptCall) {
    let [a, b, c, d, e] = call.args.map(decimal);
    encode(out, &[b"EVALSHA", sha, b"1", &call.key, &a, &b, &c, &d, &e]);
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    pend_rx: &mut mpsc::UnboundedReceiver<Pending>,
    inflight: &mut VecDeque<Pending>,
    retry_tx: mpsc::UnboundedSender<Retry>,
    stall: Duration,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        loop {
            match parse(&buf) {
                Ok(Some((reply, used))) => {
                    buf.advance(used);
                    let Some(pending) = inflight.pop_front().or_else(|| pend_rx.try_recv().ok())
                    else {
                        return Outcome::Lost("a reply nobody asked for".into());
                    };
                    deliver(pending, reply, &retry_tx);
                }
                Ok(None) => break,
                Err(e) => return Outcome::Lost(format!("protocol error: {e}")),
            }
        }
        while let Ok(p) = pend_rx.try_recv() {
            inflight.push_back(p);
        }
        buf.reserve(16 * 1024);
        let read = match inflight.front() {
            Some(oldest) => {
                match tokio::time::timeout_at(oldest.sent + stall, rd.read_buf(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => {
                        return Outcome::Lost(format!("no reply for {} ms", stall.as_millis()));
                    }
                }
            }
            None => tokio::select! {
                p = pend_rx.recv() => match p {
                    Some(p) => {
                        inflight.push_back(p);
                        continue;
                    }
                    None => return Outcome::Shutdown,
                },
                read = rd.read_buf(&mut buf) => read,
            },
        };
        match read {
            Ok(0) => return Outcome::Lost("connection closed by the server".into()),
            Ok(_) => {}
            Err(e) => return Outcome::Lost(format!("read: {e}")),
        }
    }
}

fn deliver(pending: Pending, reply: Reply, retry_tx: &mpsc::UnboundedSender<Retry>) {
    let PendingKind::Reply { tx, retry } = pending.kind else {
        return;
    };
    if let Reply::Error(e) = &reply
        && e.starts_with("NOSCRIPT")
        && let Some(call) = retry
    {
        if let Err(mpsc::error::SendError(r)) = retry_tx.send(Retry { tx, call }) {
            let _ = r.tx.send(Err(StoreError::Protocol(
                "script missing and connection closing".into(),
            )));
        }
        return;
    }
    let _ = tx.send(Ok(reply));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RedisUrl {
        RedisUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn url_err(s: &str) -> String {
        match RedisUrl::parse(s) {
            Ok(u) => panic!("{s} parsed as {u:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_urls() {
        let u = url("redis://127.0.0.1:6380");
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 6380, 0));
        assert_eq!((u.username, u.password), (None, None));

        let u = url("redis://cache.internal");
        assert_eq!((u.host.as_str(), u.port, u.db), ("cache.internal", 6379, 0));
        assert_eq!(url("redis://h/").db, 0);
        assert_eq!(url("redis://h:1/15").db, 15);
        assert_eq!(url("REDIS://h").host, "h");

        let u = url("redis://:s3cr%40t@h:7000/2");
        assert_eq!(u.username, None);
        assert_eq!(u.password.as_deref(), Some("s3cr@t"));
        assert_eq!((u.port, u.db), (7000, 2));

        let u = url("redis://levee:pw:with:colons@h");
        assert_eq!(u.username.as_deref(), Some("levee"));
        assert_eq!(u.password.as_deref(), Some("pw:with:colons"));

        let u = url("redis://[::1]:6390/3");
        assert_eq!((u.host.as_str(), u.port, u.db), ("::1", 6390, 3));
        assert_eq!(url("redis://[::1]").port, 6379);
    }

    #[test]
    fn displays_urls_without_credentials() {
        assert_eq!(
            url("redis://:pw@10.0.0.1:6380/4").to_string(),
            "redis://10.0.0.1:6380/4"
        );
        assert_eq!(url("redis://h").to_string(), "redis://h:6379");
        assert_eq!(url("redis://[::1]:1").to_string(), "redis://[::1]:1");
        let debug = format!("{:?}", url("redis://u:hunter2@h"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn rejects_bad_urls_clearly() {
        for (bad, why) in [
            ("127.0.0.1:6379", "missing the redis:// scheme"),
            ("http://h", "the scheme must be redis://"),
            ("rediss://h", "TLS"),
            ("unix:///tmp/redis.sock", "unix sockets"),
            ("redis://", "the host is missing"),
            ("redis://:6379", "the host is missing"),
            ("redis://h:0", "the port must be"),
            ("redis://h:99999", "the port must be"),
            ("redis://h:port", "the port must be"),
            ("redis://h/db", "database number"),
            ("redis://h/1/2", "database number"),
            ("redis://h?timeout=1", "query"),
            ("redis://user@h", "need a password"),
            ("redis://:@h", "password is empty"),
            ("redis://:%zz@h", "%-escape"),
            ("redis://[::1", "unclosed"),
            ("redis://[::1]x", "after the IPv6 host"),
            ("redis://a b", "invalid characters"),
        ] {
            let e = url_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("expected redis://"), "{bad}: {e}");
        }
        let e = url_err("redis://:hunter2@h:0");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("redis://***@h:0"), "{e}");
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert_eq!(decimal(0), b"0");
        assert_eq!(decimal(u64::MAX), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn parses_replies() {
        let cases: [(&[u8], Reply); 8] = [
            (b"+OK\r\n", Reply::Simple("OK".into())),
            (b"-ERR no\r\n", Reply::Error("ERR no".into())),
            (b":-42\r\n", Reply::Integer(-42)),
            (b"$3\r\na\r\n\r\n", Reply::Bulk(Some(b"a\r\n".to_vec()))),
            (b"$-1\r\n", Reply::Bulk(None)),
            (b"*-1\r\n", Reply::Array(None)),
            (b"*0\r\n", Reply::Array(Some(vec![]))),
            (
                b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n",
                Reply::Array(Some(vec![
                    Reply::Integer(1),
                    Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec()))])),
                ])),
            ),
        ];
        for (wire, want) in cases {
            // Every strict prefix is incomplete; the whole parses exactly.
            for cut in 0..wire.len() {
                assert_eq!(parse(&wire[..cut]), Ok(None), "{:?}", &wire[..cut]);
            }
            let mut more = wire.to_vec();
            more.extend_from_slice(b"+next\r\n");
            assert_eq!(parse(&more), Ok(Some((want, wire.len()))));
        }
    }

    #[test]
    fn rejects_malformed_replies() {
        for bad in [
            &b"?\r\n"[..],
            b"\r\n",
            b":12x\r\n",
            b"$-2\r\n",
            b"$1\r\nab\r\n",
            b"*-5\r\n",
            b"$99999999999\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        assert!(parse(&vec![b'+'; MAX_LINE + 10]).is_err());
    }

    #[test]
    fn script_replies_become_decisions() {
        let limit = Limit {
            algorithm: Algorithm::LeakyBucket,
            limit: 10,
            period: Duration::from_secs(1),
            burst: 5,
            delay: true,
        };
        let ints = |v: [i64; 5]| Reply::Array(Some(v.map(Reply::Integer).to_vec()));
        assert_eq!(
            decision(ints([1, 4, 200_000, 0, 100_000]), &limit),
            Ok(Decision {
                allowed: true,
                limit: 10,
                remaining: 4,
                reset: Duration::from_millis(200),
                retry_after: Duration::ZERO,
                delay: Duration::from_millis(100),
            })
        );
        assert!(matches!(
            decision(ints([1, -1, 0, 0, 0]), &limit),
            Err(StoreError::Protocol(_))
        ));
        assert!(matches!(
            decision(Reply::Error("ERR boom".into()), &limit),
            Err(StoreError::Protocol(e)) if e == "ERR boom"
        ));
        assert!(decision(Reply::Array(Some(vec![])), &limit).is_err());
        assert!(decision(Reply::Integer(1), &limit).is_err());
    }

    #[test]
    fn keys_are_prefixed_by_algorithm() {
        assert_eq!(
            RedisStore::key_for(Algorithm::SlidingLog, b"client:1.2.3.4"),
            b"levee:rl:sliding_log:client:1.2.3.4"
        );
    }

    #[test]
    fn scripts_share_one_prelude() {
        let texts = scripts();
        assert!(texts.iter().all(|t| t.contains("redis.call('TIME')")));
        assert!(
            texts
                .iter()
                .all(|t| t.contains("PX") || t.contains("PEXPIRE"))
        );
    }

    #[tokio::test]
    async fn zero_limit_is_answered_locally() {
        // No Redis behind this URL: the answer must not need one.
        let store = RedisStore::new("redis://127.0.0.1:1", Duration::from_millis(50)).unwrap();
        let limit = Limit {
            algorithm: Algorithm::FixedWindow,
            limit: 0,
            period: Duration::from_secs(3),
            burst: 0,
            delay: false,
        };
        let d = store.check(b"k", &limit, 1).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(3));
        assert!(store.check(b"k", &limit, 0).await.unwrap().allowed);
        assert_eq!(store.errors(), 0);
    }
}
