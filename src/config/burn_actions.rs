//! A route's `on_fast_burn` table: what Levee does by itself while one of
//! the route's fast-burn SLO alerts (`fast_burn_1h`, `fast_burn_6h`) fires,
//! and undoes when it ends (`docs/slo.md`, "Acting on the budget").
//!
//! ```toml
//! [[routes]]
//! name = "checkout"
//! split = [{ cluster = "stable", weight = 90 }, { cluster = "canary", weight = 10 }]
//! slo = { target = 99.9 }
//! on_fast_burn = { service_level = "degraded", retry_budget = { ratio = 0.05 }, hold_split = true }
//! ```
//!
//! A table Levee could not act on is refused (with file:line:column): on a
//! route without an SLO, a level that raises nothing (`full`) or that only a
//! person may set (`maintenance`), a retry budget on a cluster without one
//! or one no tighter than the cluster's, a hold on a route without a split.

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::schema::{Config, RouteConfig};
use super::validate::{Invalid, invalid};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OnFastBurn {
    /// Raise the service level to at least this (`degraded` or `minimal`)
    /// while the burn lasts: routes whose `min_level` is below it answer
    /// their fallback.
    #[serde(default)]
    pub service_level: Option<Spanned<String>>,
    /// The route's retries are allowed only within this tighter budget
    /// while the burn lasts.
    #[serde(default)]
    pub retry_budget: Option<TightBudget>,
    /// Keep the split weights in force when the burn started: a reload that
    /// shifts them takes effect only once it ends.
    #[serde(default)]
    pub hold_split: Option<Spanned<bool>>,
}

/// The tighter retry budget: over the cluster budget's own window, the
/// route's retries stay within `ratio` × requests + `min_per_sec` × window.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TightBudget {
    pub ratio: Spanned<f64>,
    #[serde(default = "zero")]
    pub min_per_sec: Spanned<f64>,
}

fn zero() -> Spanned<f64> {
    Spanned::new(0..0, 0.0)
}

/// The levels an action may raise the service level to.
pub const LEVELS: [&str; 2] = ["degraded", "minimal"];

/// The span to name for the table as a whole: its first key written, else
/// the route's name.
fn table_span(a: &OnFastBurn, r: &RouteConfig) -> std::ops::Range<usize> {
    a.service_level
        .as_ref()
        .map(Spanned::span)
        .or_else(|| a.retry_budget.as_ref().map(|b| b.ratio.span()))
        .or_else(|| a.hold_split.as_ref().map(Spanned::span))
        .unwrap_or_else(|| r.name.span())
}

pub(super) fn check(config: &Config) -> Result<(), Invalid> {
    for (i, r) in config.routes.iter().enumerate() {
        let Some(a) = &r.on_fast_burn else { continue };
        let key = format!("routes[{i}].on_fast_burn");
        if r.slo.is_none() {
            return Err(invalid(
                table_span(a, r),
                key,
                "the route has no slo: nothing could start these actions; add e.g. \
                 slo = { target = 99.9 }, or remove on_fast_burn",
            ));
        }
        let hold = a.hold_split.as_ref().is_some_and(|h| *h.get_ref());
        if a.service_level.is_none() && a.retry_budget.is_none() && !hold {
            return Err(invalid(
                table_span(a, r),
                key,
                "on_fast_burn does nothing: set service_level, retry_budget or hold_split = true",
            ));
        }
        if let Some(level) = &a.service_level {
            let name = level.get_ref().to_ascii_lowercase();
            if !LEVELS.contains(&name.as_str()) {
                let why = match name.as_str() {
                    "full" => "full raises nothing".to_string(),
                    "maintenance" => {
                        "maintenance is for a person to set (PUT /degradation), never automatic"
                            .to_string()
                    }
                    _ => format!("unknown service level {:?}", level.get_ref()),
                };
                return Err(invalid(
                    level.span(),
                    format!("{key}.service_level"),
                    format!("{why}; use {}", LEVELS.join(" or ")),
                ));
            }
        }
        if let Some(b) = &a.retry_budget {
            check_budget(config, r, b, &key)?;
        }
        if let Some(h) = &a.hold_split
            && *h.get_ref()
            && r.split.len() < 2
        {
            return Err(invalid(
                h.span(),
                format!("{key}.hold_split"),
                "the route has no split (a weighted `split` of two clusters or more): \
                 there are no weights to hold",
            ));
        }
    }
    Ok(())
}

/// The clusters a route sends to.
fn clusters<'c>(config: &'c Config, r: &RouteConfig) -> Vec<&'c super::ClusterConfig> {
    let names: Vec<&str> = match &r.cluster {
        Some(c) => vec![c.get_ref().as_str()],
        None => r
            .split
            .iter()
            .map(|t| t.cluster.get_ref().as_str())
            .collect(),
    };
    config
        .clusters
        .iter()
        .filter(|c| names.contains(&c.name.get_ref().as_str()))
        .collect()
}

fn check_budget(
    config: &Config,
    r: &RouteConfig,
    b: &TightBudget,
    key: &str,
) -> Result<(), Invalid> {
    let key = format!("{key}.retry_budget");
    let (ratio, floor) = (*b.ratio.get_ref(), *b.min_per_sec.get_ref());
    if !(0.0..=1.0).contains(&ratio) {
        return Err(invalid(
            b.ratio.span(),
            format!("{key}.ratio"),
            format!(
                "ratio {ratio} is not a share between 0 and 1 (0.05: retries up to 5 % of the requests)"
            ),
        ));
    }
    if !(floor >= 0.0 && floor.is_finite()) {
        return Err(invalid(
            b.min_per_sec.span(),
            format!("{key}.min_per_sec"),
            format!("min_per_sec {floor} must be 0 or more"),
        ));
    }
    let retries = r.retry.as_ref().map(|p| *p.max_attempts.get_ref() > 1);
    for c in clusters(config, r) {
        let name = c.name.get_ref();
        if retries == Some(false) || (retries.is_none() && *c.retry.max_attempts.get_ref() <= 1) {
            return Err(invalid(
                b.ratio.span(),
                key,
                format!(
                    "the route's requests to cluster {name} are never retried (max_attempts 1): \
                     there is no retry to refuse"
                ),
            ));
        }
        let budget = &c.retry.budget;
        if !budget.enabled {
            return Err(invalid(
                b.ratio.span(),
                key,
                format!(
                    "cluster {name} has no retry budget (retry.budget.enabled = false) to tighten"
                ),
            ));
        }
        if ratio >= *budget.ratio.get_ref() && floor >= *budget.min_per_sec.get_ref() {
            return Err(invalid(
                b.ratio.span(),
                key,
                format!(
                    "ratio {ratio} and min_per_sec {floor} are no tighter than cluster {name}'s \
                     budget (ratio {}, min_per_sec {})",
                    budget.ratio.get_ref(),
                    budget.min_per_sec.get_ref()
                ),
            ));
        }
    }
    Ok(())
}
