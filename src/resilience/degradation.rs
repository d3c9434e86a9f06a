//! Graceful degradation: the service level, FULL → DEGRADED → MINIMAL →
//! MAINTENANCE, which switches off the less important routes (they answer
//! their configured fallback) so that what is left of the capacity goes to
//! the routes that matter.
//!
//! **Which routes serve.** The levels are ordered by severity, FULL <
//! DEGRADED < MINIMAL < MAINTENANCE. A route declares the most severe level
//! at which it still serves (its `min_level`: the least service it is part
//! of), and serves iff `current ≤ min_level`; `Level::serves` says so. A
//! route of `min_level = Minimal` serves at FULL, DEGRADED and MINIMAL and
//! answers its fallback at MAINTENANCE; one of `Maintenance` (a status page,
//! the health endpoint) always serves; one of `Full` serves only when all is
//! well.
//!
//! **Who sets the level.** An operator, through the admin API: a manual
//! level overrides the automatic one for as long as it is set, and
//! clearing it returns to whatever the automatic level is by then (the
//! triggers are followed all along). Otherwise the triggers, evaluated by
//! `observe` every interval (about a second) on the signals of that
//! interval:
//!
//! - health: the worst cluster's fraction of healthy endpoints below
//!   `healthy_below` (0.5) asks for DEGRADED, below `minimal_below` (0.25)
//!   for MINIMAL (clusters without endpoints say nothing);
//! - overload: the fraction of the interval's requests that were shed
//!   (refused by a bulkhead or a concurrency limit) above `shed_above`
//!   (0.1) asks for DEGRADED, above `shed_minimal_above` (0.5) for MINIMAL,
//!   once the interval holds at least `min_requests` (20), so that 1 of 3
//!   requests shed on a quiet night switches nothing off.
//!
//! The automatic level never reaches MAINTENANCE: that is a decision for a
//! person. A threshold that cannot be met (0 or less for the health ones,
//! negative or 1 and more for the shed ones, NaN) disables its trigger.
//!
//! **Hysteresis.** A level is entered once its trigger has held at every
//! observation for `enter_after` (5 s), directly (FULL → MINIMAL if the
//! MINIMAL trigger held that long). It is left once its trigger has been
//! clear at every observation for `exit_after` (30 s), one level at a time,
//! each step waiting `exit_after` again from the step before: the traffic
//! of the routes switched back on is load too, and the next step should
//! see it. A single observation either way restarts the count, so signals
//! that flap faster than that do not flap the level.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A service level, ordered by severity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    #[default]
    Full,
    Degraded,
    Minimal,
    Maintenance,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Full,
        Level::Degraded,
        Level::Minimal,
        Level::Maintenance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::Degraded => "degraded",
            Level::Minimal => "minimal",
            Level::Maintenance => "maintenance",
        }
    }

    /// Whether, at this level, a route whose `min_level` is `route` serves
    /// (rather than answering its fallback): iff `self ≤ route`.
    pub fn serves(self, route: Level) -> bool {
        self <= route
    }

    /// One level less severe; FULL stays FULL.
    fn milder(self) -> Level {
        match self {
            Level::Full | Level::Degraded => Level::Full,
            Level::Minimal => Level::Degraded,
            Level::Maintenance => Level::Minimal,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown service level {0:?}: expected full, degraded, minimal or maintenance")]
pub struct ParseLevelError(pub String);

impl FromStr for Level {
    type Err = ParseLevelError;

    /// The names of `as_str`, in any case, surrounding blanks ignored (an
    /// admin API body sent with `curl -d` may end in a newline).
    fn from_str(s: &str) -> Result<Level, ParseLevelError> {
        let name = s.trim();
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| ParseLevelError(s.to_string()))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DegradationConfig {
    /// DEGRADED when the worst cluster's healthy fraction is below this.
    pub healthy_below: f64,
    /// MINIMAL when it is below this.
    pub minimal_below: f64,
    /// DEGRADED when more than this fraction of the requests was shed.
    pub shed_above: f64,
    /// MINIMAL when more than this fraction was shed.
    pub shed_minimal_above: f64,
    /// Fewer requests in an interval say nothing about overload.
    pub min_requests: u64,
    /// How long a trigger must hold before its level is entered.
    pub enter_after: Duration,
    /// How long it must be clear before its level is left, one step.
    pub exit_after: Duration,
}

impl Default for DegradationConfig {
    fn default() -> Self {
        DegradationConfig {
            healthy_below: 0.5,
            minimal_below: 0.25,
            shed_above: 0.1,
            shed_minimal_above: 0.5,
            min_requests: 20,
            enter_after: Duration::from_secs(5),
            exit_after: Duration::from_secs(30),
        }
    }
}

/// One cluster's endpoints, as the health checkers see them now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterHealth {
    pub name: String,
    /// Endpoints taking traffic (healthy or degraded), of `total`.
    pub healthy: u32,
    pub total: u32,
}

/// What `observe` judges: the clusters now, and the requests of the last
/// interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    pub clusters: Vec<ClusterHealth>,
    pub requests: u64,
    /// Of `requests`, those refused by a bulkhead or a concurrency limit.
    pub shed: u64,
}

/// A change of the effective level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: Level,
    pub to: Level,
    /// Why, with the numbers: for the log line and `/status`.
    pub reason: String,
}

/// Since when a trigger has held (or been clear) at every observation.
#[derive(Clone, Copy, Debug)]
struct Run {
    holds: bool,
    since: Instant,
}

/// One observation, judged.
struct Judged {
    /// The most severe level asked for.
    target: Level,
    /// For DEGRADED and MINIMAL: the first trigger asking for at least it.
    why: [Option<String>; 2],
    /// The numbers, for the reason of a step down.
    summary: String,
}

#[derive(Clone, Debug)]
pub struct Degradation {
    cfg: DegradationConfig,
    auto: Level,
    /// Why `auto` is what it is, from its last change.
    auto_reason: String,
    manual: Option<Level>,
    /// The least the automatic level may be: raised by routes acting on a
    /// fast SLO burn (`slo::act`), FULL when none does.
    floor: Level,
    /// For DEGRADED and MINIMAL: the run of their triggers.
    runs: [Run; 2],
    /// When `auto` last changed: each step down waits `exit_after` from it.
    auto_since: Instant,
    /// When the effective level last changed.
    since: Instant,
}

/// The automatic levels, as indices into `runs` and `Judged::why`.
const AUTO: [Level; 2] = [Level::Degraded, Level::Minimal];

fn index(level: Level) -> Option<usize> {
    AUTO.iter().position(|&l| l == level)
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

impl Degradation {
    pub fn new(cfg: DegradationConfig, now: Instant) -> Degradation {
        Degradation {
            cfg,
            auto: Level::Full,
            auto_reason: String::new(),
            manual: None,
            floor: Level::Full,
            runs: [Run {
                holds: false,
                since: now,
            }; 2],
            auto_since: now,
            since: now,
        }
    }

    /// Evaluates the triggers on this interval's signals; returns the
    /// change of the effective level, if any. While a manual level is set
    /// the automatic one still moves, silently.
    pub fn observe(&mut self, signals: &Signals, now: Instant) -> Option<Change> {
        let judged = self.judge(signals);
        for (run, level) in self.runs.iter_mut().zip(AUTO) {
            let holds = judged.target >= level;
            if run.holds != holds {
                *run = Run { holds, since: now };
            }
        }
        let held = |run: Run| now.saturating_duration_since(run.since);
        // Enter the most severe level whose trigger held long enough...
        let enter = AUTO
            .iter()
            .rev()
            .zip(self.runs.iter().rev())
            .find(|&(&l, &r)| l > self.auto && r.holds && held(r) >= self.cfg.enter_after);
        let (to, reason) = if let Some((&to, &run)) = enter {
            let why = index(to).and_then(|i| judged.why[i].clone());
            let why = why.unwrap_or_else(|| judged.summary.clone());
            (to, format!("{why} for {:?}", held(run)))
        } else {
            // ...or leave the current one, a step, once clear long enough.
            let run = index(self.auto).map(|i| self.runs[i])?;
            let clear = now.saturating_duration_since(run.since.max(self.auto_since));
            if run.holds || clear < self.cfg.exit_after {
                return None;
            }
            let reason = format!(
                "recovered: no {} trigger for {clear:?}; {}",
                self.auto, judged.summary
            );
            (self.auto.milder(), reason)
        };
        let from = self.level();
        self.auto = to;
        self.auto_since = now;
        self.auto_reason = reason.clone();
        self.changed(from, reason, now)
    }

    /// Sets (`Some`) or clears (`None`) the manual level; returns the change
    /// of the effective level, if any.
    pub fn set_manual(&mut self, level: Option<Level>, now: Instant) -> Option<Change> {
        let from = self.level();
        self.manual = level;
        let reason = match level {
            Some(l) => format!("set by hand to {l}"),
            None if self.auto_reason.is_empty() => {
                format!("manual level cleared; automatic level {}", self.auto)
            }
            None => format!(
                "manual level cleared; automatic level {} ({})",
                self.auto, self.auto_reason
            ),
        };
        self.changed(from, reason, now)
    }

    /// Sets the floor under the automatic level (routes acting on a fast
    /// SLO burn; FULL: none); returns the change of the effective level, if
    /// any. Like the triggers, it gives way to a manual level.
    pub fn set_floor(&mut self, floor: Level, reason: String, now: Instant) -> Option<Change> {
        let from = self.level();
        self.floor = floor;
        self.changed(from, reason, now)
    }

    pub fn floor(&self) -> Level {
        self.floor
    }

    fn changed(&mut self, from: Level, reason: String, now: Instant) -> Option<Change> {
        let to = self.level();
        if to == from {
            return None;
        }
        self.since = now;
        Some(Change { from, to, reason })
    }

    fn judge(&self, signals: &Signals) -> Judged {
        let cfg = &self.cfg;
        // (level asked for, why) per trigger, health first.
        let mut asks: Vec<(Level, String)> = Vec::new();
        let mut summary = Vec::new();

        let fraction = |c: &ClusterHealth| f64::from(c.healthy.min(c.total)) / f64::from(c.total);
        let worst = signals
            .clusters
            .iter()
            .filter(|c| c.total > 0)
            .min_by(|a, b| fraction(a).total_cmp(&fraction(b)));
        if let Some(c) = worst {
            let f = fraction(c);
            let (name, healthy, total) = (&c.name, c.healthy.min(c.total), c.total);
            let what = format!("cluster {name}: {healthy} of {total} endpoints healthy");
            for (level, below) in [
                (Level::Minimal, cfg.minimal_below),
                (Level::Degraded, cfg.healthy_below),
            ] {
                if f < below {
                    asks.push((level, format!("{what} ({} < {})", pct(f), pct(below))));
                    break;
                }
            }
            summary.push(format!("{what} ({})", pct(f)));
        }

        let (requests, shed) = (signals.requests, signals.shed.min(signals.requests));
        if requests > 0 {
            let f = shed as f64 / requests as f64;
            let what = format!("{shed} of {requests} requests shed");
            if requests >= cfg.min_requests {
                for (level, above) in [
                    (Level::Minimal, cfg.shed_minimal_above),
                    (Level::Degraded, cfg.shed_above),
                ] {
                    if above >= 0.0 && f > above {
                        asks.push((level, format!("{what} ({} > {})", pct(f), pct(above))));
                        break;
                    }
                }
            }
            summary.push(format!("{what} ({})", pct(f)));
        }

        let why = AUTO.map(|level| {
            let ask = asks.iter().find(|(l, _)| *l >= level);
            ask.map(|(_, why)| why.clone())
        });
        let target = asks.iter().map(|&(l, _)| l).max().unwrap_or(Level::Full);
        let summary = match summary.is_empty() {
            true => "no signals".to_string(),
            false => summary.join(", "),
        };
        Judged {
            target,
            why,
            summary,
        }
    }

    /// The effective level: the manual one if set, else the automatic one
    /// or the floor, whichever is more severe.
    pub fn level(&self) -> Level {
        self.manual.unwrap_or(self.auto.max(self.floor))
    }

    /// The level the triggers ask for, whether or not overridden.
    pub fn auto_level(&self) -> Level {
        self.auto
    }

    pub fn manual(&self) -> Option<Level> {
        self.manual
    }

    /// When the effective level last changed (or the state was made).
    pub fn since(&self) -> Instant {
        self.since
    }

    pub fn config(&self) -> &DegradationConfig {
        &self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Level::{Degraded, Full, Maintenance, Minimal};

    #[test]
    fn a_floor_raises_the_level_until_lifted_and_gives_way_to_a_manual_one() {
        let t0 = Instant::now();
        let mut d = Degradation::new(DegradationConfig::default(), t0);
        let c = d.set_floor(Degraded, "route api burns".into(), t0);
        assert_eq!(
            c,
            Some(Change {
                from: Full,
                to: Degraded,
                reason: "route api burns".into()
            })
        );
        assert_eq!(
            (d.level(), d.auto_level(), d.floor()),
            (Degraded, Full, Degraded)
        );
        // The triggers asking for more win.
        for i in 0..=5 {
            d.observe(&healthy(1, 5), t0 + i * SEC);
        }
        assert_eq!(d.level(), Minimal);
        // A manual level wins over both; cleared, the floor is back.
        assert!(d.set_manual(Some(Full), t0).is_some());
        assert_eq!(d.level(), Full);
        d.set_manual(None, t0);
        assert_eq!(d.level(), Minimal);
        // Lifted while the triggers still hold: no change.
        assert_eq!(d.set_floor(Full, "ended".into(), t0), None);
        let mut d = Degradation::new(DegradationConfig::default(), t0);
        d.set_floor(Minimal, "burn".into(), t0);
        let c = d.set_floor(Full, "burn over".into(), t0).expect("lifted");
        assert_eq!((c.from, c.to), (Minimal, Full));
    }

    const SEC: Duration = Duration::from_secs(1);

    fn healthy(n: u32, of: u32) -> Signals {
        Signals {
            clusters: vec![
                ClusterHealth {
                    name: "web".into(),
                    healthy: 3,
                    total: 3,
                },
                ClusterHealth {
                    name: "api".into(),
                    healthy: n,
                    total: of,
                },
            ],
            requests: 1000,
            shed: 0,
        }
    }

    fn shed(n: u64, of: u64) -> Signals {
        Signals {
            requests: of,
            shed: n,
            ..healthy(4, 4)
        }
    }

    /// Observes `signals` once a second from `*t` (exclusive) for `secs`;
    /// returns the changes as (seconds since `t0`, from, to, reason).
    fn feed(
        d: &mut Degradation,
        t0: Instant,
        t: &mut Instant,
        secs: u32,
        signals: &Signals,
    ) -> Vec<(u64, Level, Level, String)> {
        let mut out = Vec::new();
        for _ in 0..secs {
            *t += SEC;
            if let Some(c) = d.observe(signals, *t) {
                out.push(((*t - t0).as_secs(), c.from, c.to, c.reason));
            }
        }
        out
    }

    fn change(at: u64, from: Level, to: Level, reason: &str) -> (u64, Level, Level, String) {
        (at, from, to, reason.to_string())
    }

    #[test]
    fn levels_order_parse_and_serve() {
        assert!(Full < Degraded && Degraded < Minimal && Minimal < Maintenance);
        for l in Level::ALL {
            assert_eq!(l.as_str().parse::<Level>(), Ok(l));
            assert_eq!(l.to_string(), l.as_str());
        }
        assert_eq!("MAINTENANCE".parse(), Ok(Maintenance));
        assert_eq!(" Degraded\n".parse(), Ok(Degraded));
        let err = "down".parse::<Level>().err().map(|e| e.to_string());
        let msg = "unknown service level \"down\": expected full, degraded, minimal or maintenance";
        assert_eq!(err.as_deref(), Some(msg));
        // A `min_level = minimal` route serves down to MINIMAL, not at
        // MAINTENANCE; a `full` one only at FULL; `maintenance` always.
        let serving = |route: Level| Level::ALL.map(|now| now.serves(route));
        assert_eq!(serving(Minimal), [true, true, true, false]);
        assert_eq!(serving(Full), [true, false, false, false]);
        assert_eq!(serving(Degraded), [true, true, false, false]);
        assert_eq!(serving(Maintenance), [true; 4]);
        assert_eq!(Level::default(), Full);
    }

    #[test]
    fn enter_and_exit_timings_are_exact() {
        let t0 = Instant::now();
        let mut t = t0;
        let mut d = Degradation::new(DegradationConfig::default(), t0);
        // Bad from 1 s: entered at 6 s, after 5 s, not before.
        let why = "cluster api: 1 of 4 endpoints healthy (25 % < 50 %) for 5s";
        assert_eq!(
            feed(&mut d, t0, &mut t, 10, &healthy(1, 4)),
            [change(6, Full, Degraded, why)]
        );
        assert_eq!((d.level(), d.since()), (Degraded, t0 + 6 * SEC));
        // Clear from 11 s: left at 41 s, after 30 s, not before.
        let why = "recovered: no degraded trigger for 30s; cluster api: 2 of 4 endpoints \
                   healthy (50 %), 0 of 1000 requests shed (0 %)";
        assert_eq!(
            feed(&mut d, t0, &mut t, 40, &healthy(2, 4)),
            [change(41, Degraded, Full, why)]
        );
    }

    #[test]
    fn straight_to_minimal_and_down_one_step_at_a_time() {
        let t0 = Instant::now();
        let mut t = t0;
        let mut d = Degradation::new(DegradationConfig::default(), t0);
        let why = "cluster api: 0 of 4 endpoints healthy (0 % < 25 %) for 5s";
        assert_eq!(
            feed(&mut d, t0, &mut t, 10, &healthy(0, 4)),
            [change(6, Full, Minimal, why)]
        );
        // All healthy from 11 s: MINIMAL → DEGRADED at 41 s, → FULL at 71 s.
        let changes = feed(&mut d, t0, &mut t, 80, &healthy(4, 4));
        let steps: Vec<_> = changes.iter().map(|c| (c.0, c.1, c.2)).collect();
        assert_eq!(steps, [(41, Minimal, Degraded), (71, Degraded, Full)]);
        assert_eq!(
            changes[1].3,
            "recovered: no degraded trigger for 30s; cluster web: 3 of 3 endpoints healthy \
             (100 %), 0 of 1000 requests shed (0 %)"
        );
        // Half recovered: MINIMAL is left for DEGRADED, which stays.
        let mut d = Degradation::new(DegradationConfig::default(), t0);
        let mut t = t0;
        feed(&mut d, t0, &mut t, 10, &healthy(0, 4));
        let changes = feed(&mut d, t0, &mut t, 120, &healthy(1, 4));
        let steps: Vec<_> = changes.iter().map(|c| (c.0, c.1, c.2)).collect();
        assert_eq!(steps, [(41, Minimal, Degraded)]);
    }

    #[test]
    fn flapping_signals_do_not_flap_the_level() {
        let t0 = Instant::now();
        let mut t = t0;
        let mut d = Degradation::new(DegradationConfig::default(), t0);
        // Five bad observations (4 s), one good, for two minutes: the
        // trigger never holds 5 s.
        for _ in 0..20 {
            assert!(feed(&mut d, t0, &mut t, 5, &healthy(1, 4)).is_empty());
            assert!(feed(&mut d, t0, &mut t, 1, &healthy(4, 4)).is_empty());
        }
        assert_eq!(d.level(), Full);
        // Six: entered. Then thirty good (29 s), one bad, for five minutes:
        // never clear 30 s, never left.
        assert_eq!(feed(&mut d, t0, &mut t, 6, &healthy(1, 4)).len(), 1);
        for _ in 0..10 {
            assert!(feed(&mut d, t0, &mut t, 30, &healthy(4, 4)).is_empty());
            assert!(feed(&mut d, t0, &mut t, 1, &healthy(1, 4)).is_empty());
        }
        assert_eq!(d.level(), Degraded);
        // Thirty-one good: left at the last.
        let changes = feed(&mut d, t0, &mut t, 31, &healthy(4, 4));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, (t - t0).as_secs());
        assert_eq!(d.level(), Full);
    }

    #[test]
    fn overload_triggers() {
        let t0 = Instant::now();
        let mut t = t0;
        let mut d = Degradation::new(DegradationConfig::default(), t0);
        let why = "120 of 1000 requests shed (12 % > 10 %) for 5s";
        assert_eq!(
            feed(&mut d, t0, &mut t, 6, &shed(120, 1000)),
            [change(6, Full, Degraded, why)]
        );
        let why = "600 of 1000 requests shed (60 % > 50 %) for 5s";
        assert_eq!(
            feed(&mut d, t0, &mut t, 6, &shed(600, 1000)),
            [change(12, Degraded, Minimal, why)]
        );
        // Too few requests to judge: 10 of 19 shed is no trigger.
        let mut d = Degradation::new(DegradationConfig::default(), t0);
        let mut t = t0;
        assert!(feed(&mut d, t0, &mut t, 60, &shed(10, 19)).is_empty());
        // Health and overload at once: the health reason is named for
        // DEGRADED, the overload one for MINIMAL.
        let both = Signals {
            shed: 700,
            ..healthy(1, 4)
        };
        let changes = feed(&mut d, t0, &mut t, 6, &both);
        let why = "700 of 1000 requests shed (70 % > 50 %) for 5s";
        assert_eq!(changes, [change(66, Full, Minimal, why)]);
    }

    #[test]
    fn manual_level_wins() {
        let t0 = Instant::now();
        let mut t = t0;
        let mut d = Degradation::new(DegradationConfig::default(), t0);
        let c = d.set_manual(Some(Maintenance), t0);
        let expect = Change {
            from: Full,
            to: Maintenance,
            reason: "set by hand to maintenance".into(),
        };
        assert_eq!(c, Some(expect));
        // The triggers are followed silently meanwhile.
        assert!(feed(&mut d, t0, &mut t, 10, &healthy(1, 4)).is_empty());
        assert_eq!((d.level(), d.auto_level()), (Maintenance, Degraded));
        assert_eq!(d.since(), t0);
        // Cleared: back to the automatic level as it is now.
        let c = d.set_manual(None, t).map(|c| (c.from, c.to, c.reason));
        let why = "manual level cleared; automatic level degraded (cluster api: 1 of 4 \
                   endpoints healthy (25 % < 50 %) for 5s)";
        assert_eq!(c, Some((Maintenance, Degraded, why.to_string())));
        // Setting what it already is changes nothing, but pins it.
        assert_eq!(d.set_manual(Some(Degraded), t), None);
        assert!(feed(&mut d, t0, &mut t, 60, &healthy(4, 4)).is_empty());
        assert_eq!((d.level(), d.auto_level()), (Degraded, Full));
        let c = d.set_manual(None, t).map(|c| c.reason);
        let why = "manual level cleared; automatic level full (recovered: no degraded \
                   trigger for 30s; cluster web: 3 of 3 endpoints healthy (100 %), 0 of \
                   1000 requests shed (0 %))";
        assert_eq!(c.as_deref(), Some(why));
        // Never set: just the level.
        let mut d = Degradation::new(DegradationConfig::default(), t0);
        d.set_manual(Some(Minimal), t0);
        let c = d.set_manual(None, t0).map(|c| c.reason);
        assert_eq!(
            c.as_deref(),
            Some("manual level cleared; automatic level full")
        );
        assert_eq!(d.manual(), None);
    }

    #[test]
    fn odd_signals_and_settings() {
        let t0 = Instant::now();
        let mut t = t0;
        let mut d = Degradation::new(DegradationConfig::default(), t0);
        // No endpoints, more healthy than total, more shed than requests,
        // nothing at all: no panic, and only real numbers count.
        let odd = Signals {
            clusters: vec![
                ClusterHealth {
                    name: "empty".into(),
                    healthy: 0,
                    total: 0,
                },
                ClusterHealth {
                    name: "odd".into(),
                    healthy: 9,
                    total: 4,
                },
            ],
            requests: 0,
            shed: 5,
        };
        assert!(feed(&mut d, t0, &mut t, 60, &odd).is_empty());
        assert!(feed(&mut d, t0, &mut t, 60, &Signals::default()).is_empty());
        let over = Signals {
            requests: 100,
            shed: 500,
            ..odd
        };
        let c = feed(&mut d, t0, &mut t, 6, &over);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].3, "100 of 100 requests shed (100 % > 50 %) for 5s");
        // Disabled triggers; zero delays enter and leave at once.
        let cfg = DegradationConfig {
            healthy_below: f64::NAN,
            minimal_below: 0.0,
            shed_above: -1.0,
            shed_minimal_above: 1.0,
            enter_after: Duration::ZERO,
            exit_after: Duration::ZERO,
            ..DegradationConfig::default()
        };
        let mut d = Degradation::new(cfg.clone(), t0);
        let mut t = t0;
        assert!(feed(&mut d, t0, &mut t, 10, &healthy(0, 4)).is_empty());
        assert!(feed(&mut d, t0, &mut t, 10, &shed(1000, 1000)).is_empty());
        let mut d = Degradation::new(
            DegradationConfig {
                healthy_below: 0.5,
                ..cfg
            },
            t0,
        );
        let mut t = t0;
        let c = feed(&mut d, t0, &mut t, 1, &healthy(1, 4));
        assert_eq!(
            c[0].3,
            "cluster api: 1 of 4 endpoints healthy (25 % < 50 %) for 0ns"
        );
        assert_eq!(feed(&mut d, t0, &mut t, 1, &healthy(4, 4)).len(), 1);
    }
}
