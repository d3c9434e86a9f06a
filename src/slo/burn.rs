//! Burn rates and the multi-window alerts of the SRE workbook (chapter 5,
//! "Alerting on SLOs"): an alert fires while the error budget burns at least
//! `factor` times too fast over both a long window (it matters) and a short
//! one (it is still happening, so the alert ends soon after the burn does).
//!
//! A burn rate is the bad share over a window divided by the budget
//! (1 − target): 1 spends the budget exactly over the SLO window, 14.4
//! spends 2 % of a 30-day budget in an hour.

/// One alert: its name, the two windows (seconds) and the factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alert {
    pub name: &'static str,
    pub long: u64,
    pub short: u64,
    pub factor: f64,
    /// `page` or `ticket`, as the workbook sorts them.
    pub severity: &'static str,
}

const MIN: u64 = 60;
const HOUR: u64 = 3600;

/// The workbook's three pairs.
pub const ALERTS: [Alert; 3] = [
    Alert {
        name: "fast_burn_1h",
        long: HOUR,
        short: 5 * MIN,
        factor: 14.4,
        severity: "page",
    },
    Alert {
        name: "fast_burn_6h",
        long: 6 * HOUR,
        short: 30 * MIN,
        factor: 6.0,
        severity: "page",
    },
    Alert {
        name: "slow_burn_3d",
        long: 72 * HOUR,
        short: 6 * HOUR,
        factor: 1.0,
        severity: "ticket",
    },
];

/// Every window a burn rate is reported for, shortest first.
pub const WINDOWS: [(u64, &str); 6] = [
    (5 * MIN, "5m"),
    (30 * MIN, "30m"),
    (HOUR, "1h"),
    (6 * HOUR, "6h"),
    (72 * HOUR, "3d"),
    // The SLO window itself is reported as "slo".
    (0, "slo"),
];

/// The name of a window of `secs` seconds in [`WINDOWS`].
pub fn window_name(secs: u64) -> &'static str {
    WINDOWS
        .iter()
        .find(|(s, _)| *s == secs)
        .map_or("slo", |(_, n)| n)
}

/// Burn rate of a bad share against a budget.
pub fn burn_rate(bad_ratio: f64, budget: f64) -> f64 {
    if budget <= 0.0 {
        return 0.0;
    }
    bad_ratio / budget
}

/// Whether an alert fires given the burn rates over its two windows.
pub fn fires(alert: &Alert, long_rate: f64, short_rate: f64) -> bool {
    long_rate >= alert.factor && short_rate >= alert.factor
}

/// The share of the budget left over the SLO window: 1 untouched, 0 spent,
/// below 0 overspent.
pub fn budget_remaining(slo_window_rate: f64) -> f64 {
    1.0 - slo_window_rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workbook_numbers() {
        // 99.9 %: a 0.1 % budget. 1.44 % errors burn it 14.4 times too fast.
        let budget = 0.001;
        assert!((burn_rate(0.0144, budget) - 14.4).abs() < 1e-9);
        assert!(fires(&ALERTS[0], 14.4, 20.0));
        assert!(!fires(&ALERTS[0], 14.4, 14.0));
        assert!(!fires(&ALERTS[0], 10.0, 20.0));
        assert!((budget_remaining(0.25) - 0.75).abs() < 1e-12);
        assert_eq!(window_name(3600), "1h");
        assert_eq!(window_name(30 * 86400), "slo");
    }
}
