//! How long to wait before a retry: capped exponential backoff with jitter,
//! and the server's own say in the matter through `Retry-After`.
//!
//! Retry `n` (1 for the first retry) may wait up to
//! `min(max, base × 2^(n-1))`, the *cap*. Waiting exactly the cap (`None`)
//! makes every client that failed together retry together; jitter spreads
//! them out. `Full` draws uniformly from `[0, cap]` (AWS's recommendation:
//! the least total work for contending clients); `Equal` keeps half the cap
//! and draws the other half, so no retry comes back at once.
//!
//! The random number is passed in, like the clock elsewhere, so tests are
//! deterministic; the caller feeds any uniform `u64` (a per-worker PRNG).
//!
//! `retry_after` reads a 429 or 503's `Retry-After` (RFC 9110 §10.2.3) as
//! delta-seconds or an HTTP-date, capped so that a server cannot park a
//! request for an hour. Dates are parsed by the `httpdate` crate, which
//! reads the IMF-fixdate senders must produce and the obsolete RFC 850 and
//! asctime forms that RFC 9110 §5.6.7 requires a recipient to accept too.
//! `None` means "no usable hint", and the caller falls back to its own
//! backoff.

use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, cap]`.
    #[default]
    Full,
    /// `cap / 2` plus uniform in `[0, cap / 2]`.
    Equal,
    /// Exactly the cap.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_secs(1),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The exponential cap for retry `attempt` (1 = first retry; 0 is
    /// treated as 1): `min(max, base × 2^(attempt-1))`, without overflow.
    pub fn cap(&self, attempt: u32) -> Duration {
        let shift = attempt.max(1) - 1;
        let grown = 1u32
            .checked_shl(shift)
            .and_then(|factor| self.base.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        grown.min(self.max)
    }

    /// The wait before retry `attempt`, jittered with `random` (any uniform
    /// `u64`). Caps beyond `u64::MAX` nanoseconds (584 years) are clamped.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let cap = u64::try_from(self.cap(attempt).as_nanos()).unwrap_or(u64::MAX);
        let nanos = match self.jitter {
            Jitter::Full => uniform(random, cap),
            Jitter::Equal => {
                let half = cap / 2;
                half + uniform(random, cap - half)
            }
            Jitter::None => cap,
        };
        Duration::from_nanos(nanos)
    }
}

/// Maps `random` onto `[0, n]`, inclusive, by multiply-and-shift (no
/// division, bias below one part in 2^64 / n).
fn uniform(random: u64, n: u64) -> u64 {
    ((u128::from(random) * (u128::from(n) + 1)) >> 64) as u64
}

/// The delay a `Retry-After` value asks for, at most `cap`: delta-seconds,
/// or an HTTP-date relative to `now` (a date already past asks for zero).
/// `None` for anything else.
pub fn retry_after(header: &str, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = header.trim_matches([' ', '\t']);
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a long time".
        value.parse().map_or(Duration::MAX, Duration::from_secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn splitmix64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn cap_doubles_then_stops_at_max() {
        let b = Backoff {
            jitter: Jitter::None,
            ..Backoff::default()
        };
        let caps: Vec<u64> = (1..=8).map(|n| b.delay(n, 0).as_millis() as u64).collect();
        assert_eq!(caps, [25, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(0, 0), 25 * MS, "attempt 0 counts as the first");
        // No overflow, however late the attempt or large the base.
        assert_eq!(b.delay(100, u64::MAX), SEC);
        assert_eq!(b.delay(u32::MAX, 0), SEC);
        let huge = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
            jitter: Jitter::Full,
        };
        assert_eq!(huge.cap(100), Duration::MAX);
        assert_eq!(huge.delay(100, u64::MAX), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn full_jitter_spans_zero_to_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(3, 0), Duration::ZERO);
        assert_eq!(b.delay(3, u64::MAX), 100 * MS);
        assert_eq!(b.delay(3, 1 << 63), 50 * MS);
        assert_eq!(b.delay(100, u64::MAX), SEC);
    }

    #[test]
    fn full_jitter_mean_is_half_the_cap() {
        for attempt in [1, 3, 7] {
            let b = Backoff::default();
            let cap = b.cap(attempt).as_secs_f64();
            let mut seed = 42;
            let draws: Vec<f64> = (0..10_000)
                .map(|_| b.delay(attempt, splitmix64(&mut seed)).as_secs_f64())
                .collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            assert!(
                (mean / (cap / 2.0) - 1.0).abs() < 0.03,
                "attempt {attempt}: mean {mean} vs cap {cap}"
            );
            assert!(draws.iter().all(|&d| (0.0..=cap).contains(&d)));
            // Spread over the whole range, not bunched in the middle.
            let lo = draws.iter().filter(|&&d| d < cap / 10.0).count();
            let hi = draws.iter().filter(|&&d| d > cap * 0.9).count();
            assert!(lo > 800 && hi > 800, "lo {lo}, hi {hi}");
        }
    }

    #[test]
    fn equal_jitter_keeps_half() {
        let b = Backoff {
            jitter: Jitter::Equal,
            ..Backoff::default()
        };
        let mut seed = 7;
        for attempt in 1..=10 {
            let cap = b.cap(attempt);
            for _ in 0..1000 {
                let d = b.delay(attempt, splitmix64(&mut seed));
                assert!(
                    d >= cap / 2 && d <= cap,
                    "{d:?} outside [{:?}, {cap:?}]",
                    cap / 2
                );
            }
        }
        assert_eq!(b.delay(3, 0), 50 * MS);
        assert_eq!(b.delay(3, u64::MAX), 100 * MS);
        // An odd cap still reaches it exactly.
        let odd = Backoff {
            base: Duration::from_nanos(3),
            max: SEC,
            jitter: Jitter::Equal,
        };
        assert_eq!(odd.delay(1, 0), Duration::from_nanos(1));
        assert_eq!(odd.delay(1, u64::MAX), Duration::from_nanos(3));
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        let cap = 30 * SEC;
        assert_eq!(retry_after("5", now, cap), Some(5 * SEC));
        assert_eq!(retry_after(" 0\t", now, cap), Some(Duration::ZERO));
        assert_eq!(retry_after("120", now, cap), Some(cap));
        assert_eq!(retry_after("99999999999999999999999", now, cap), Some(cap));
    }

    #[test]
    fn retry_after_date() {
        // RFC 9110's example date: 784111777 seconds after the epoch.
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        let at = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let cap = 60 * SEC;
        assert_eq!(retry_after(date, at - 20 * SEC, cap), Some(20 * SEC));
        assert_eq!(retry_after(date, at - 500 * MS, cap), Some(500 * MS));
        assert_eq!(retry_after(date, at - 3600 * SEC, cap), Some(cap));
        assert_eq!(retry_after(date, at + SEC, cap), Some(Duration::ZERO));
        // Leap years, month ends, a leap second.
        let leap = UNIX_EPOCH + Duration::from_secs(1_709_164_800);
        let t = |s| retry_after(s, leap, Duration::MAX);
        assert_eq!(t("Thu, 29 Feb 2024 00:00:10 GMT"), Some(10 * SEC));
        assert_eq!(t("Fri, 01 Mar 2024 00:00:00 GMT"), Some(86_400 * SEC));
        assert_eq!(t("Sat, 01 Jan 2000 00:00:00 GMT"), Some(Duration::ZERO));
        let epoch = |s| retry_after(s, UNIX_EPOCH, Duration::MAX);
        assert_eq!(epoch("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(
            epoch("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(Duration::from_secs(253_402_300_799))
        );
    }

    /// RFC 9110 §5.6.7: a recipient must accept the obsolete RFC 850 and
    /// asctime forms as well as the IMF-fixdate.
    #[test]
    fn retry_after_obsolete_date_forms() {
        let at = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let cap = 60 * SEC;
        for date in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                retry_after(date, at - 20 * SEC, cap),
                Some(20 * SEC),
                "{date}"
            );
        }
    }

    #[test]
    fn retry_after_garbage_is_none() {
        let now = SystemTime::now();
        for bad in [
            "",
            " ",
            "-5",
            "+5",
            "5.5",
            "soon",
            "5s",
            "Thu, 30 Feb 2024 00:00:00 GMT",
            "Fri, 29 Feb 2023 00:00:00 GMT",
            "Thu, 29 Feb 2024 24:00:00 GMT",
            "Thu, 29 Feb 2024 00:60:00 GMT",
            "Thu, 00 Feb 2024 00:00:00 GMT",
            "Thu, 29 Foo 2024 00:00:00 GMT",
            "Xyz, 29 Feb 2024 00:00:00 GMT",
            "Thu, 29 Feb 2024 00:00:00 UTC",
            "Thu, 29-Feb-2024 00:00:00 GMT",
            "Thu, 29 Feb 2024 0a:00:00 GMT",
            "Thu, 29 Feb 2024 00:00:00 GMT.",
            "Thé 29 Feb 2024 00:00:00 GMT",
            "Thu, 29 Feb 2024 00:00:00 GMTé",
            // The day name must match the date.
            "Fri, 29 Feb 2024 00:00:00 GMT",
            "Thursday, 30-Feb-24 00:00:00 GMT",
        ] {
            assert_eq!(retry_after(bad, now, SEC), None, "{bad:?}");
        }
    }
}
