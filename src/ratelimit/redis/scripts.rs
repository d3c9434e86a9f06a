//! The rate-limit algorithms as Lua scripts, run atomically in Redis.
//!
//! All take KEYS[1] and ARGV = period (µs), limit, capacity, cost, delay (0/1),
//! and return {allowed (0/1), remaining, reset µs, retry_after µs, delay µs}.
//! Times are Lua doubles in µs since the Unix epoch (exact below 2^53, i.e.
//! until the year 2255). Stored numbers are formatted explicitly, since
//! Lua's tostring would print them in scientific notation.

use crate::ratelimit::Algorithm;

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

/// The script of `algorithm`, built once. `redis::Script` knows its SHA-1
/// and sends `EVALSHA`, loading the text after a `NOSCRIPT` reply.
pub fn script(algorithm: Algorithm) -> &'static ::redis::Script {
    static SCRIPTS_: std::sync::OnceLock<[::redis::Script; SCRIPTS]> = std::sync::OnceLock::new();
    &SCRIPTS_.get_or_init(|| texts().each_ref().map(|t| ::redis::Script::new(t)))
        [script_index(algorithm)]
}

/// The script texts, in [`script_index`] order, built once.
pub fn texts() -> &'static [String; SCRIPTS] {
    static TEXTS: std::sync::OnceLock<[String; SCRIPTS]> = std::sync::OnceLock::new();
    TEXTS.get_or_init(|| {
        [GCRA, FIXED_WINDOW, SLIDING_LOG, SLIDING_COUNTER].map(|body| format!("{PRELUDE}{body}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_share_one_prelude() {
        assert!(texts().iter().all(|t| t.contains("redis.call('TIME')")));
        assert!(
            texts()
                .iter()
                .all(|t| t.contains("PX") || t.contains("PEXPIRE"))
        );
    }
}
