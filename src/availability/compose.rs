//! The arithmetic of availability: series, parallel, N of M, nines and
//! downtime.
//!
//! An availability is a probability in `[0, 1]` that a part works. The
//! formulas assume the parts fail independently, which is the textbook
//! model and also its main caveat (a shared rack, a shared deploy, a shared
//! dependency make real failures correlated, and the composed figure
//! optimistic):
//!
//! - series (every part is needed): `A = a1 · a2 · … · an`
//! - parallel (any one part is enough): `A = 1 − (1 − a1)(1 − a2)…(1 − an)`
//! - N of M (at least N of the M parts are needed): the sum of the
//!   probabilities that exactly N, N+1, …, M parts work. With different
//!   availabilities per part that is a Poisson binomial, computed exactly by
//!   dynamic programming over the parts.
//!
//! Parallel and N of M work on the unavailabilities (`1 − a`), where the
//! small numbers are, so that "six nines" keeps its digits in an `f64`.

/// Seconds in the periods downtime is quoted per. A year is the Julian year
/// (365.25 days) and a month a twelfth of it, as the usual tables have it
/// (99.9 % ≈ 8 h 45 m 57 s a year, 43 m 49 s a month).
pub const PERIODS: [(Period, f64); 4] = [
    (Period::Year, 365.25 * 86_400.0),
    (Period::Month, 365.25 * 86_400.0 / 12.0),
    (Period::Week, 7.0 * 86_400.0),
    (Period::Day, 86_400.0),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Year,
    Month,
    Week,
    Day,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Year => "year",
            Period::Month => "month",
            Period::Week => "week",
            Period::Day => "day",
        }
    }

    pub fn seconds(self) -> f64 {
        PERIODS
            .iter()
            .find(|(p, _)| *p == self)
            .map_or(0.0, |(_, s)| *s)
    }
}

impl std::str::FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PERIODS
            .iter()
            .map(|(p, _)| *p)
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown period {s:?}; use year, month, week or day"))
    }
}

/// Every part is needed.
pub fn series(parts: &[f64]) -> f64 {
    parts.iter().product()
}

/// Any one part is enough.
pub fn parallel(parts: &[f64]) -> f64 {
    1.0 - parts.iter().map(|a| 1.0 - a).product::<f64>()
}

/// At least `needed` of the parts must work. `needed` 0 is always up;
/// `needed` above the number of parts never is.
pub fn at_least(needed: usize, parts: &[f64]) -> f64 {
    if needed == 0 {
        return 1.0;
    }
    if needed > parts.len() {
        return 0.0;
    }
    // exactly[j]: probability that exactly j of the parts seen so far work.
    let mut exactly = vec![0.0; parts.len() + 1];
    exactly[0] = 1.0;
    for (seen, &a) in parts.iter().enumerate() {
        for j in (0..=seen + 1).rev() {
            let up = if j > 0 { exactly[j - 1] * a } else { 0.0 };
            exactly[j] = exactly[j] * (1.0 - a) + up;
        }
    }
    // Down when fewer than `needed` work: a sum of small numbers, kept
    // precise, then taken from 1.
    1.0 - exactly[..needed].iter().sum::<f64>()
}

/// The number of nines: `−log10(1 − A)` (99.9 % → 3, 99.95 % → 3.3);
/// infinite for a perfect 1.
pub fn nines(a: f64) -> f64 {
    -(1.0 - a).log10()
}

/// Expected downtime, in seconds, over `period` at availability `a`.
pub fn downtime(a: f64, period: Period) -> f64 {
    (1.0 - a) * period.seconds()
}

/// The availability that allows `seconds` of downtime per `period`.
pub fn from_downtime(seconds: f64, period: Period) -> f64 {
    1.0 - seconds / period.seconds()
}

/// An availability as a percentage with enough decimals to show four
/// significant digits of what is missing: 99.7003, 99.9999, 99.95, 100.
pub fn percent_text(a: f64) -> String {
    let missing = (1.0 - a) * 100.0;
    let decimals = if missing <= 0.0 {
        0
    } else {
        ((-missing.log10()).ceil().max(0.0) as usize + 3).min(12)
    };
    let text = format!("{:.*}", decimals, a * 100.0);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A duration for people: "8h 45m 58s", "43m 50s", "1.4s", "86ms".
pub fn duration_text(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    if seconds < 1.0 {
        return format!("{:.0}ms", seconds * 1000.0);
    }
    if seconds < 60.0 {
        return format!("{:.1}s", seconds);
    }
    let total = seconds.round() as u64;
    let (d, h, m, s) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else {
        format!("{m}m {s}s")
    }
}

/// Parses a downtime such as `4h`, `52m 36s`, `1h30m`, `1.5d`, `26s` or
/// `500ms` into seconds (units: ms, s, m, h, d, w).
pub fn parse_downtime(text: &str) -> Result<f64, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty downtime; write e.g. 4h, 52m 36s or 1.5d".into());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(end);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("downtime {text:?}: expected a number at {rest:?}"))?;
        let unit_end = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 7.0 * 86_400.0,
            "" => {
                return Err(format!(
                    "downtime {text:?}: {num} has no unit (ms, s, m, h, d, w)"
                ));
            }
            other => {
                return Err(format!(
                    "downtime {text:?}: unknown unit {other:?} (ms, s, m, h, d, w)"
                ));
            }
        };
        total += value * scale;
        rest = tail.trim_start();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn three_parts_in_series_lose_their_nines() {
        let a = series(&[0.999, 0.999, 0.999]);
        assert!(close(a, 0.997_002_999, 1e-12), "{a}");
        assert_eq!(percent_text(a), "99.7003");
    }

    #[test]
    fn a_pair_in_parallel_doubles_them() {
        let a = parallel(&[0.999, 0.999]);
        assert!(close(a, 0.999_999, 1e-12), "{a}");
        assert_eq!(percent_text(a), "99.9999");
        assert!(close(nines(a), 6.0, 1e-6), "{}", nines(a));
    }

    #[test]
    fn n_of_m_matches_the_binomial() {
        // 2 of 3 at 0.9: 3·0.9²·0.1 + 0.9³ = 0.243 + 0.729.
        assert!(close(at_least(2, &[0.9; 3]), 0.972, 1e-12));
        // 1 of M is parallel, M of M is series.
        let parts = [0.99, 0.95, 0.9];
        assert!(close(at_least(1, &parts), parallel(&parts), 1e-15));
        assert!(close(at_least(3, &parts), series(&parts), 1e-15));
        assert_eq!(at_least(0, &parts), 1.0);
        assert_eq!(at_least(4, &parts), 0.0);
    }

    #[test]
    fn different_parts_in_n_of_m() {
        // 2 of (0.9, 0.8, 0.7): all three, or exactly one down.
        let want = 0.9 * 0.8 * 0.7 + 0.1 * 0.8 * 0.7 + 0.9 * 0.2 * 0.7 + 0.9 * 0.8 * 0.3;
        assert!(close(at_least(2, &[0.9, 0.8, 0.7]), want, 1e-12));
    }

    #[test]
    fn high_nines_keep_their_digits() {
        // Three 99.99 % parts in parallel: twelve nines, still told apart
        // from 1.0.
        let a = parallel(&[0.9999; 3]);
        assert!(close(nines(a), 12.0, 0.01), "{}", nines(a));
        assert!(nines(at_least(2, &[0.999; 3])) > 5.5);
    }

    #[test]
    fn downtime_tables() {
        // The usual table: 99.9 % is 8h 45m 57.6s a year, 43m 49.7s a
        // month, 10m 4.8s a week, 1m 26.4s a day.
        assert!(close(downtime(0.999, Period::Year), 31_557.6, 1e-6));
        assert_eq!(duration_text(downtime(0.999, Period::Year)), "8h 45m 58s");
        assert_eq!(duration_text(downtime(0.999, Period::Month)), "43m 50s");
        assert_eq!(duration_text(downtime(0.999, Period::Week)), "10m 5s");
        assert_eq!(duration_text(downtime(0.999, Period::Day)), "1m 26s");
        assert_eq!(duration_text(downtime(0.99999, Period::Day)), "864ms");
        assert_eq!(duration_text(downtime(0.99, Period::Year)), "3d 15h 39m");
        // And back: 4 hours a year is 99.95437 %.
        let a = from_downtime(4.0 * 3600.0, Period::Year);
        assert_eq!(percent_text(a), "99.95437");
        assert!(close(
            from_downtime(downtime(0.9995, Period::Week), Period::Week),
            0.9995,
            1e-12
        ));
    }

    #[test]
    fn percentages_are_printed_to_what_matters() {
        assert_eq!(percent_text(0.9995), "99.95");
        assert_eq!(percent_text(1.0), "100");
        assert_eq!(percent_text(0.5), "50");
        assert_eq!(percent_text(0.0), "0");
    }

    #[test]
    fn downtimes_parse() {
        assert_eq!(parse_downtime("4h"), Ok(14_400.0));
        assert_eq!(parse_downtime("52m 36s"), Ok(3156.0));
        assert_eq!(parse_downtime("1h30m"), Ok(5400.0));
        assert_eq!(parse_downtime("1.5d"), Ok(129_600.0));
        assert_eq!(parse_downtime("500ms"), Ok(0.5));
        assert!(parse_downtime("4").unwrap_err().contains("no unit"));
        assert!(parse_downtime("4y").unwrap_err().contains("unknown unit"));
        assert!(parse_downtime("").is_err());
        assert!(parse_downtime("h").is_err());
    }

    #[test]
    fn periods_parse() {
        assert_eq!("Month".parse::<Period>(), Ok(Period::Month));
        assert!("fortnight".parse::<Period>().is_err());
    }
}
