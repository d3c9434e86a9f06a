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
//! [hypothesis]
//! route = "api"
//! max_error_rate = 1       # percent of 5xx
//! max_p99 = "300ms"
//! window = "10s"
//! min_requests = 20
//! min_error_budget = 25    # optional: % of the route's SLO error budget
//!                          # that must be left to start and to go on
//!
//! [load]                   # optional
//! url = "http://127.0.0.1:8080/"
//! rate = 50                # requests per second
//! start_rate = 5           # optional, with ramp_up: rising to `rate`
//! ramp_up = "10s"
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
    hypothesis: HypothesisFile,
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
    rate: f64,
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
    pub hypothesis: Hypothesis,
    pub schedule: Schedule,
    pub check_every: Duration,
    /// The `[[faults]]` document to post.
    pub faults: String,
    /// The same faults, to post again at each step of the ramp.
    tables: Vec<toml::Table>,
    /// The blast radius of each step (empty: the faults' own percent).
    pub ramp: Vec<f64>,
    /// The share (percent) of the route's error budget that must be left
    /// to start, and to go on.
    pub min_error_budget: Option<f64>,
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
    let h = &file.hypothesis;
    if h.max_error_rate.is_none() && h.max_p99.is_none() {
        return Err(at(
            "hypothesis: state the steady state: max_error_rate (percent) and/or max_p99".into(),
        ));
    }
    if let Some(r) = h.max_error_rate
        && !(0.0..=100.0).contains(&r)
    {
        return Err(at(format!(
            "hypothesis.max_error_rate: {r} is not a percentage; use 0 to 100"
        )));
    }
    if let Some(b) = h.min_error_budget
        && !(0.0..=100.0).contains(&b)
    {
        return Err(at(format!(
            "hypothesis.min_error_budget: {b} is not a percentage of the error budget; use 0 to 100"
        )));
    }
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
            if l.start_rate.is_some() != l.ramp_up.is_some() {
                return Err(at(
                    "load: start_rate and ramp_up go together (the rate rises from start_rate to rate over ramp_up)".into(),
                ));
            }
            Some(super::load::Load {
                uri: url("url", &l.url)?,
                rate: rate_ok("rate", l.rate)?,
                start_rate: match l.start_rate {
                    Some(r) => rate_ok("start_rate", r)?,
                    None => l.rate,
                },
                ramp_up: l.ramp_up.map_or(Duration::ZERO, ConfigDuration::get),
                fail,
            })
        }
        None => None,
    };
    Ok(Plan {
        name: file.name,
        hypothesis: Hypothesis {
            route: file.hypothesis.route,
            max_error_rate: file.hypothesis.max_error_rate,
            max_p99: file.hypothesis.max_p99.map(ConfigDuration::get),
            window: file.hypothesis.window.map(ConfigDuration::get),
            min_requests: file.hypothesis.min_requests,
        },
        schedule,
        check_every,
        faults,
        tables,
        ramp: file.ramp,
        min_error_budget: file.hypothesis.min_error_budget,
        fault_names,
        load,
    })
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
        assert_eq!(plan.hypothesis.route, "all");
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
        let e = refused(&format!("ramp = [50, 10]\n{base}"));
        assert!(e.contains("ascending"), "{e}");
        let e = refused(&format!("ramp = [10, 150]\n{base}"));
        assert!(e.contains("ramp: 150 is not a percentage"), "{e}");
        let steps: Vec<String> = (1..=30).map(|i| i.to_string()).collect();
        let e = refused(&format!("ramp = [{}]\n{base}", steps.join(", ")));
        assert!(e.contains("less than check_every"), "{e}");
        let e = refused(&base.replace("max_p99", "min_error_budget = 120\nmax_p99"));
        assert!(e.contains("hypothesis.min_error_budget: 120"), "{e}");
        let e = refused(&format!("bogus = 1\n{base}"));
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }
}
