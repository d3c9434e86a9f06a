//! A route's service level objective (`[routes.slo]`): the availability
//! target, what counts as a good answer, and the window the budget spans.

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::schema::Config;
use super::validate::{Invalid, invalid};
use super::value::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// Share of good requests promised, in percent: `99.9`.
    pub target: Spanned<f64>,
    /// Days the error budget spans.
    #[serde(default = "default_window_days")]
    pub window_days: Spanned<u32>,
    /// Status classes that count as good (`"2xx"`, …). Default: all but
    /// `5xx` (a client's mistake is not the service's failure).
    #[serde(default = "default_good")]
    pub good_statuses: Vec<Spanned<String>>,
    /// A good answer must also have been answered within this (arrival to
    /// the end of the response). Unset: latency does not count.
    #[serde(default)]
    pub latency: Option<Spanned<Duration>>,
    /// Latency percentile objectives, judged over the last 5 minutes from
    /// the route's histogram: `{ p99 = "200ms", p50 = "20ms" }` (keys `p50`,
    /// `p90`, `p99`, `p99.9`).
    #[serde(default)]
    pub latency_targets: std::collections::BTreeMap<String, Spanned<Duration>>,
}

/// `[slo]`: keeping the routes' SLO counts across restarts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SloStateConfig {
    /// The file the counts are saved to (written to a temporary file,
    /// fsynced, renamed over it). Unset: counts live in memory only.
    pub state_file: Option<Spanned<String>>,
    /// How often they are saved.
    pub save_interval: Spanned<Duration>,
}

impl Default for SloStateConfig {
    fn default() -> Self {
        SloStateConfig {
            state_file: None,
            save_interval: Spanned::new(0..0, Duration::from_secs(60)),
        }
    }
}

fn default_window_days() -> Spanned<u32> {
    Spanned::new(0..0, 30)
}

fn default_good() -> Vec<Spanned<String>> {
    ["1xx", "2xx", "3xx", "4xx"]
        .into_iter()
        .map(|c| Spanned::new(0..0, c.to_owned()))
        .collect()
}

pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The percentiles `latency_targets` may name (`observe::latency` reports
/// these).
pub const PERCENTILES: [&str; 4] = ["p50", "p90", "p99", "p99.9"];

pub(super) fn check(config: &Config) -> Result<(), Invalid> {
    // The access log's sampling sits here with the other observability
    // checks.
    let sample = &config.access_log.success_sample;
    if !(0.0..=1.0).contains(sample.get_ref()) {
        return Err(invalid(
            sample.span(),
            "access_log.success_sample".into(),
            format!(
                "success_sample {} is not a share between 0 and 1 (1 logs every success, 0.1 one in ten)",
                sample.get_ref()
            ),
        ));
    }
    if let Some(f) = &config.slo.state_file
        && f.get_ref().trim().is_empty()
    {
        return Err(invalid(
            f.span(),
            "slo.state_file".into(),
            "an empty path; write a file path, or leave state_file out",
        ));
    }
    let every = &config.slo.save_interval;
    if every.get_ref().get() < std::time::Duration::from_secs(1) {
        return Err(invalid(
            every.span(),
            "slo.save_interval".into(),
            "save_interval must be at least 1s",
        ));
    }
    for (i, r) in config.routes.iter().enumerate() {
        let Some(slo) = &r.slo else { continue };
        let key = format!("routes[{i}].slo");
        let t = *slo.target.get_ref();
        if !(t > 0.0 && t < 100.0) {
            return Err(invalid(
                slo.target.span(),
                format!("{key}.target"),
                format!(
                    "target {t} is not a percentage between 0 and 100 (exclusive); write e.g. 99.9 \
                     (100 would leave no error budget)"
                ),
            ));
        }
        let days = *slo.window_days.get_ref();
        if !(1..=90).contains(&days) {
            return Err(invalid(
                slo.window_days.span(),
                format!("{key}.window_days"),
                format!("window_days {days} is out of range; use 1 to 90 (30 is usual)"),
            ));
        }
        if slo.good_statuses.is_empty() {
            return Err(invalid(
                r.name.span(),
                format!("{key}.good_statuses"),
                "good_statuses is empty: no request could ever be good",
            ));
        }
        for (j, c) in slo.good_statuses.iter().enumerate() {
            if !CLASSES.contains(&c.get_ref().as_str()) {
                return Err(invalid(
                    c.span(),
                    format!("{key}.good_statuses[{j}]"),
                    format!(
                        "unknown status class {:?}; classes are {}",
                        c.get_ref(),
                        CLASSES.join(", ")
                    ),
                ));
            }
        }
        for (q, d) in &slo.latency_targets {
            if !PERCENTILES.contains(&q.as_str()) {
                return Err(invalid(
                    d.span(),
                    format!("{key}.latency_targets.{q}"),
                    format!(
                        "unknown percentile {q:?}; latency_targets keys are {}",
                        PERCENTILES.join(", ")
                    ),
                ));
            }
            if d.get_ref().get().is_zero() {
                return Err(invalid(
                    d.span(),
                    format!("{key}.latency_targets.{q}"),
                    "a latency target of 0 can never be met; write e.g. \"200ms\"",
                ));
            }
        }
        if let Some(l) = &slo.latency
            && l.get_ref().get().is_zero()
        {
            return Err(invalid(
                l.span(),
                format!("{key}.latency"),
                "latency 0 would make every request bad; write e.g. \"300ms\", or leave it out",
            ));
        }
    }
    Ok(())
}
