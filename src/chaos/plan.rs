//! An experiment file, read and checked before anything is sent: the
//! steady-state hypothesis, the schedule, the faults (each posted with a
//! ttl: the duration plus 10 s unless the file sets one, so that a runner
//! that dies leaves nothing behind for long), and an optional load.
//!
//! ```toml
//! name = "one-slow-endpoint"
//! baseline = "5s"          # the hypothesis must hold this long first
//! duration = "60s"         # how long the faults stay in
//! recovery = "5s"          # and must hold again this long after
//! check_every = "250ms"    # at most 1s
//! ramp = [10, 50, 100]     # optional: the blast radius in steps, each an
//!                          # equal share of the duration, while it holds
//!
//! [[hypothesis]]           # one per route: each judged on its own bounds,
//! route = "api"            # a breach on any one aborts ([hypothesis] for one)
//! max_error_rate = 1       # percent of 5xx
//! max_p99 = "300ms"
//! window = "10s"
//! min_requests = 20
//! min_error_budget = 25    # optional: % of the route's SLO error budget
//!                          # that must be left to start and to go on
//!
//! [[hypothesis]]
//! route = "login"
//! max_error_rate = 10
//! max_p99 = "800ms"
//!
//! [load]                   # optional
//! url = "http://127.0.0.1:8080/"
//! rate = 50                # requests per second (open loop)
//! start_rate = 5           # optional, with ramp_up: rising to `rate`
//! ramp_up = "10s"
//! # or, instead of rate: virtual users (a login rush), starting one after
//! # another over ramp_up, each pacing its requests by think_time
//! # users = 200
//! # think_time = "2s"
//! fail_url = "http://127.0.0.1:8080/login?bad=1"  # optional, with
//! fail_percent = 10        # fail_percent: this share goes there
//!
//! [[faults]]               # as in the configuration; ttl optional here
//! name = "slow-one"
//! cluster = "app"
//! endpoint = "127.0.0.1:9003"
//! percent = 100
//! delay = "500ms"
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::experiment::{Hypothesis, Schedule};
use crate::config::value::Duration as ConfigDuration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperimentFile {
    name: String,
    #[serde(default = "five_seconds")]
    baseline: ConfigDuration,
    duration: ConfigDuration,
    #[serde(default = "five_seconds")]
    recovery: ConfigDuration,
    #[serde(default = "quarter_second")]
    check_every: ConfigDuration,
    /// One table, or an array of them (one per route).
    hypothesis: toml::Value,
    #[serde(default)]
    ramp: Vec<f64>,
    #[serde(default)]
    load: Option<LoadFile>,
    faults: Vec<toml::Table>,
}

fn five_seconds() -> ConfigDuration {
    ConfigDuration::from_millis(5000)
}
fn quarter_second() -> ConfigDuration {
    ConfigDuration::from_millis(250)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HypothesisFile {
    route: String,
    #[serde(default)]
    max_error_rate: Option<f64>,
    #[serde(default)]
    max_p99: Option<ConfigDuration>,
    #[serde(default)]
    window: Option<ConfigDuration>,
    #[serde(default = "twenty")]
    min_requests: u64,
    #[serde(default)]
    min_error_budget: Option<f64>,
}

fn twenty() -> u64 {
    20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadFile {
    url: String,
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default)]
    users: Option<u32>,
    #[serde(default)]
    think_time: Option<ConfigDuration>,
    #[serde(default)]
    start_rate: Option<f64>,
    #[serde(default)]
    ramp_up: Option<ConfigDuration>,
    #[serde(default)]
    fail_url: Option<String>,
    #[serde(default)]
    fail_percent: Option<f64>,
}

/// An experiment read and checked.
pub struct Plan {
    pub name: String,
    /// One per route, in the file's order.
    pub hypotheses: Vec<Hypothesis>,
    pub schedule: Schedule,
    pub check_every: Duration,
    /// The `[[faults]]` document to post.
    pub faults: String,
    /// The same faults, to post again at each step of the ramp.
    tables: Vec<toml::Table>,
    /// The blast radius of each step (empty: the faults' own percent).
    pub ramp: Vec<f64>,
    /// Each route's floor: the share (percent) of its error budget that
    /// must be left to start, and to go on.
    pub min_error_budget: Vec<(String, f64)>,
    pub fault_names: Vec<String>,
    pub load: Option<super::load::Load>,
}

/// Reads an experiment file; the error names the file and what is wrong.
pub fn load(path: &Path, text: &str) -> Result<Plan, String> {
    let file: ExperimentFile =
        toml::from_str(text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    let at = |m: String| format!("{}: {m}", path.display());
    let schedule = Schedule {
        baseline: file.baseline.get(),
        duration: file.duration.get(),
        recovery: file.recovery.get(),
    };
    let check_every = file.check_every.get();
    if check_every.is_zero() || check_every > Duration::from_secs(1) {
        return Err(at(format!(
            "check_every: {} is not a check interval; safety checks run at least every second (use 50ms to 1s)",
            file.check_every
        )));
    }
    if schedule.duration.is_zero() {
        return Err(at("duration: must be above 0".into()));
    }
    let hypotheses = hypotheses(&file.hypothesis).map_err(at)?;
    if let Some(p) = file.ramp.iter().find(|p| !(0.0..=100.0).contains(*p)) {
        return Err(at(format!("ramp: {p} is not a percentage; use 0 to 100")));
    }
    if file.ramp.windows(2).any(|w| w[1] <= w[0]) {
        return Err(at(format!(
            "ramp: {:?}: the steps raise the blast radius; list them in ascending order",
            file.ramp
        )));
    }
    if !file.ramp.is_empty() && schedule.duration.div_f64(file.ramp.len() as f64) < check_every {
        return Err(at(format!(
            "ramp: {} steps in {} leave less than check_every ({}) per step",
            file.ramp.len(),
            file.duration,
            file.check_every
        )));
    }
    if file.faults.is_empty() {
        return Err(at(
            "faults: an experiment needs at least one [[faults]]".into()
        ));
    }
    // The safety net: a fault outlives a dead runner by this much at most.
    let ttl = schedule.duration + Duration::from_secs(10);
    let mut fault_names = Vec::new();
    let mut tables = Vec::new();
    for mut f in file.faults {
        if !f.contains_key("ttl") {
            f.insert(
                "ttl".into(),
                toml::Value::String(format!("{}ms", ttl.as_millis())),
            );
        }
        if let Some(toml::Value::String(n)) = f.get("name") {
            fault_names.push(n.clone());
        }
        tables.push(f);
    }
    let faults = document(&tables, file.ramp.first().copied());
    crate::config::chaos::parse_faults(path, &faults, None).map_err(|e| {
        format!(
            "{}: {}: {} (in [[faults]])",
            path.display(),
            e.key,
            e.message
        )
    })?;
    let url = |key: &str, url: &str| -> Result<http::Uri, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| at(format!("load.{key}: {url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(at(format!(
                "load.{key}: {url:?}: use http://host:port/path"
            )));
        }
        Ok(uri)
    };
    let rate_ok = |key: &str, rate: f64| {
        if rate > 0.0 && rate <= 10_000.0 {
            Ok(rate)
        } else {
            Err(at(format!(
                "load.{key}: {rate} requests per second; use above 0, at most 10000"
            )))
        }
    };
    let load = match file.load {
        Some(l) => {
            let fail = match (&l.fail_url, l.fail_percent) {
                (Some(u), Some(p)) if (0.0..=100.0).contains(&p) => Some((url("fail_url", u)?, p)),
                (Some(_), Some(p)) => {
                    return Err(at(format!(
                        "load.fail_percent: {p} is not a percentage; use 0 to 100"
                    )));
                }
                (None, None) => None,
                _ => {
                    return Err(at(
                        "load: fail_url and fail_percent go together (a share of the requests to another URL)".into(),
                    ));
                }
            };
            let ramp_up = l.ramp_up.map_or(Duration::ZERO, ConfigDuration::get);
            let (rate, start_rate, users) = match (l.rate, l.users, l.think_time) {
                (Some(_), Some(_), _) => {
                    return Err(at(
                        "load: set rate (an open-loop load) or users with think_time (virtual users), not both".into(),
                    ));
                }
                (Some(rate), None, None) => {
                    if l.start_rate.is_some() != l.ramp_up.is_some() {
                        return Err(at(
                            "load: start_rate and ramp_up go together (the rate rises from start_rate to rate over ramp_up)".into(),
                        ));
                    }
                    let rate = rate_ok("rate", rate)?;
                    let start = match l.start_rate {
                        Some(r) => rate_ok("start_rate", r)?,
                        None => rate,
                    };
                    (rate, start, None)
                }
                (Some(_), None, Some(_)) => {
                    return Err(at(
                        "load.think_time: think time is for virtual users; set users too, or drop it for an open-loop rate".into(),
                    ));
                }
                (None, Some(n), Some(think)) => {
                    if !(1..=10_000).contains(&n) {
                        return Err(at(format!("load.users: {n} virtual users; use 1 to 10000")));
                    }
                    if think.get() < Duration::from_millis(1) {
                        return Err(at(
                            "load.think_time: at least 1ms between a user's requests".into(),
                        ));
                    }
                    if l.start_rate.is_some() {
                        return Err(at(
                            "load.start_rate: virtual users ramp up by starting over ramp_up; start_rate is for an open-loop rate".into(),
                        ));
                    }
                    let users = super::load::Users {
                        count: n,
                        think_time: think.get(),
                        ramp_up,
                    };
                    let rate = f64::from(n) / think.get().as_secs_f64();
                    (rate, rate, Some(users))
                }
                (None, Some(_), None) => {
                    return Err(at(
                        "load.users: virtual users need think_time (the pause between a user's requests)".into(),
                    ));
                }
                (None, None, _) => {
                    return Err(at(
                        "load: set rate (requests per second, open loop) or users and think_time (virtual users)".into(),
                    ));
                }
            };
            Some(super::load::Load {
                uri: url("url", &l.url)?,
                users,
                rate,
                start_rate,
                ramp_up,
                fail,
            })
        }
        None => None,
    };
    Ok(Plan {
        name: file.name,
        min_error_budget: hypotheses
            .iter()
            .filter_map(|(h, floor)| Some((h.route.clone(), (*floor)?)))
            .collect(),
        hypotheses: hypotheses.into_iter().map(|(h, _)| h).collect(),
        schedule,
        check_every,
        faults,
        tables,
        ramp: file.ramp,
        fault_names,
        load,
    })
}

/// The hypotheses of `[hypothesis]` (one route) or `[[hypothesis]]` (one
/// per route), each checked, with its route's error-budget floor.
fn hypotheses(value: &toml::Value) -> Result<Vec<(Hypothesis, Option<f64>)>, String> {
    let tables: Vec<(String, &toml::Value)> = match value {
        toml::Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("hypothesis[{i}]"), v))
            .collect(),
        v => vec![("hypothesis".to_owned(), v)],
    };
    if tables.is_empty() {
        return Err("hypothesis: name at least one route and its bounds".into());
    }
    let mut out: Vec<(Hypothesis, Option<f64>)> = Vec::new();
    for (key, v) in tables {
        let h: HypothesisFile = v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| format!("{key}: {}", e.message()))?;
        if h.max_error_rate.is_none() && h.max_p99.is_none() {
            return Err(format!(
                "{key}: state the steady state: max_error_rate (percent) and/or max_p99"
            ));
        }
        if let Some(r) = h.max_error_rate
            && !(0.0..=100.0).contains(&r)
        {
            return Err(format!(
                "{key}.max_error_rate: {r} is not a percentage; use 0 to 100"
            ));
        }
        if let Some(b) = h.min_error_budget
            && !(0.0..=100.0).contains(&b)
        {
            return Err(format!(
                "{key}.min_error_budget: {b} is not a percentage of the error budget; use 0 to 100"
            ));
        }
        if out.iter().any(|(o, _)| o.route == h.route) {
            return Err(format!(
                "{key}.route: route {:?} has a hypothesis already; give each route one, with all its bounds",
                h.route
            ));
        }
        out.push((
            Hypothesis {
                route: h.route,
                max_error_rate: h.max_error_rate,
                max_p99: h.max_p99.map(ConfigDuration::get),
                window: h.window.map(ConfigDuration::get),
                min_requests: h.min_requests,
            },
            h.min_error_budget,
        ));
    }
    Ok(out)
}

/// The `[[faults]]` document of `tables`, each at `percent` if given.
fn document(tables: &[toml::Table], percent: Option<f64>) -> String {
    let faults = tables
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if let Some(p) = percent {
                t.insert("percent".into(), toml::Value::Float(p));
            }
            toml::Value::Table(t)
        })
        .collect();
    let mut doc = toml::Table::new();
    doc.insert("faults".into(), toml::Value::Array(faults));
    // A table of TOML values always serializes.
    toml::to_string(&doc).unwrap_or_default()
}

impl Plan {
    /// The faults to post for a step of the ramp at `percent`.
    pub fn faults_at(&self, percent: f64) -> String {
        document(&self.tables, Some(percent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_experiment_fits_the_demo() {
        let path = Path::new("examples/chaos/demo-slow-backend.toml");
        let text = include_str!("../../examples/chaos/demo-slow-backend.toml");
        let plan = load(path, text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.hypotheses[0].route, "all");
        assert_eq!(plan.fault_names, ["demo-slow-3"]);
        // The fault is posted with a ttl, and the demo's Levee accepts it.
        assert!(plan.faults.contains("ttl = \"20000ms\""), "{}", plan.faults);
        let names: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:910{i}")).collect();
        let demo = crate::config::demo_text("127.0.0.1:8080", "127.0.0.1:9900", &names);
        let config = crate::config::parse(Path::new("<demo>"), &demo).unwrap();
        assert!(config.chaos.enabled);
        crate::config::chaos::parse_faults(Path::new("POST /faults"), &plan.faults, Some(&config))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn the_login_rush_demo_experiment_fits_the_demo() {
        let path = Path::new("examples/chaos/demo-login-rush.toml");
        let text = include_str!("../../examples/chaos/demo-login-rush.toml");
        let plan = load(path, text).unwrap_or_else(|e| panic!("{e}"));
        let routes: Vec<&str> = plan.hypotheses.iter().map(|h| h.route.as_str()).collect();
        assert_eq!(routes, ["all", "limited"]);
        let users = plan.load.as_ref().and_then(|l| l.users).expect("users");
        assert_eq!(
            (users.count, users.think_time),
            (20, Duration::from_secs(1))
        );
        let names: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:910{i}")).collect();
        let demo = crate::config::demo_text("127.0.0.1:8080", "127.0.0.1:9900", &names);
        let config = crate::config::parse(Path::new("<demo>"), &demo).unwrap();
        for route in routes {
            assert!(
                config.routes.iter().any(|r| r.name.get_ref() == route),
                "{route}"
            );
        }
        crate::config::chaos::parse_faults(Path::new("POST /faults"), &plan.faults, Some(&config))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn the_ramped_demo_experiment_fits_the_demo() {
        let path = Path::new("examples/chaos/demo-ramp.toml");
        let text = include_str!("../../examples/chaos/demo-ramp.toml");
        let plan = load(path, text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.ramp, [10.0, 50.0, 100.0]);
        // The first post is at the first step's percent; each step's posts.
        assert!(plan.faults.contains("percent = 10.0"), "{}", plan.faults);
        let names: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:910{i}")).collect();
        let demo = crate::config::demo_text("127.0.0.1:8080", "127.0.0.1:9900", &names);
        let config = crate::config::parse(Path::new("<demo>"), &demo).unwrap();
        let faults = crate::config::chaos::parse_faults(
            Path::new("POST /faults"),
            &plan.faults_at(50.0),
            Some(&config),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(*faults[0].percent.get_ref(), 50.0);
    }

    fn load_ok(text: &str) -> Plan {
        load(Path::new("e.toml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn bad_experiments_are_refused_with_the_reason() {
        let base = "name = \"x\"\nduration = \"5s\"\n[hypothesis]\nroute = \"api\"\nmax_p99 = \"300ms\"\n[[faults]]\nname = \"f\"\nroute = \"api\"\npercent = 10\nabort = 503\n";
        assert!(load(Path::new("e.toml"), base).is_ok());
        let refused = |text: &str| match load(Path::new("e.toml"), text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        };
        let e = refused(&base.replace("max_p99 = \"300ms\"\n", ""));
        assert!(e.contains("state the steady state"), "{e}");
        let e = refused(&format!("check_every = \"2s\"\n{base}"));
        assert!(e.starts_with("e.toml: check_every:"), "{e}");
        let e = refused(&base.replace("percent = 10", "percent = 150"));
        assert!(
            e.contains("faults[0].percent: 150 is not a percentage"),
            "{e}"
        );
        let e = refused(&format!("{base}[load]\nurl = \"ftp://x/\"\nrate = 5\n"));
        assert!(e.contains("load.url"), "{e}");
        let load = |extra: &str| format!("{base}[load]\nurl = \"http://127.0.0.1:1/\"\n{extra}");
        let e = refused(&load("rate = 5\nusers = 3\nthink_time = \"1s\"\n"));
        assert!(e.contains("not both"), "{e}");
        let e = refused(&load("users = 3\n"));
        assert!(
            e.contains("load.users: virtual users need think_time"),
            "{e}"
        );
        let e = refused(&load("rate = 5\nthink_time = \"1s\"\n"));
        assert!(e.contains("load.think_time"), "{e}");
        let e = refused(&load("users = 0\nthink_time = \"1s\"\n"));
        assert!(e.contains("load.users: 0"), "{e}");
        let e = refused(&load(""));
        assert!(e.contains("set rate"), "{e}");
        let plan = load_ok(&load("users = 40\nthink_time = \"2s\"\nramp_up = \"4s\"\n"));
        let l = plan.load.expect("load");
        let users = l.users.expect("users");
        assert_eq!(
            (users.count, users.think_time, users.ramp_up),
            (40, Duration::from_secs(2), Duration::from_secs(4))
        );
        assert_eq!(l.rate, 20.0);
        let e = refused(&format!("ramp = [50, 10]\n{base}"));
        assert!(e.contains("ascending"), "{e}");
        let e = refused(&format!("ramp = [10, 150]\n{base}"));
        assert!(e.contains("ramp: 150 is not a percentage"), "{e}");
        let steps: Vec<String> = (1..=30).map(|i| i.to_string()).collect();
        let e = refused(&format!("ramp = [{}]\n{base}", steps.join(", ")));
        assert!(e.contains("less than check_every"), "{e}");
        let e = refused(&base.replace("max_p99", "min_error_budget = 120\nmax_p99"));
        assert!(e.contains("hypothesis.min_error_budget: 120"), "{e}");
        let e = refused(&base.replace("max_p99 = \"300ms\"", "max_p99 = \"300ms\"\nbogus = 2"));
        assert!(e.contains("hypothesis: unknown field `bogus`"), "{e}");
        let e = refused(&format!("bogus = 1\n{base}"));
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn several_routes_each_with_their_bounds() {
        let text = "name = \"x\"\nduration = \"5s\"\n\
            [[hypothesis]]\nroute = \"api\"\nmax_p99 = \"300ms\"\nmin_error_budget = 20\n\
            [[hypothesis]]\nroute = \"login\"\nmax_error_rate = 10\nwindow = \"3s\"\nmin_requests = 5\n\
            [[faults]]\nname = \"f\"\nroute = \"api\"\npercent = 10\nabort = 503\n";
        let plan = load(Path::new("e.toml"), text).unwrap_or_else(|e| panic!("{e}"));
        let routes: Vec<&str> = plan.hypotheses.iter().map(|h| h.route.as_str()).collect();
        assert_eq!(routes, ["api", "login"]);
        assert_eq!(plan.hypotheses[0].max_p99, Some(Duration::from_millis(300)));
        assert_eq!(plan.hypotheses[0].max_error_rate, None);
        assert_eq!(plan.hypotheses[1].max_error_rate, Some(10.0));
        assert_eq!(plan.hypotheses[1].window, Some(Duration::from_secs(3)));
        assert_eq!(plan.hypotheses[1].min_requests, 5);
        assert_eq!(plan.min_error_budget, [("api".to_owned(), 20.0)]);
        let refused = |text: &str| match load(Path::new("e.toml"), text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        };
        let e = refused(&text.replace("max_error_rate = 10", "max_error_rate = 120"));
        assert!(e.contains("hypothesis[1].max_error_rate: 120"), "{e}");
        let e = refused(&text.replace("route = \"login\"", "route = \"api\""));
        assert!(
            e.contains("hypothesis[1].route: route \"api\" has a hypothesis already"),
            "{e}"
        );
        let e = refused(&text.replace("max_error_rate = 10\n", ""));
        assert!(e.contains("hypothesis[1]: state the steady state"), "{e}");
    }
}
