//! `levee chaos run experiment.toml --admin URL`: the async shell around
//! `experiment::Experiment`. It drives a running Levee through its admin
//! API only: samples `GET /metrics` every `check_every` (at most a second),
//! posts the faults (`POST /faults`) when the baseline holds, deletes them
//! (`DELETE /faults/{name}`) when the duration is over or the hypothesis
//! breaks, and reads `GET /faults` for how many requests each fault hit.
//!
//! Safety: each fault is posted with a `ttl` (the experiment's duration
//! plus a margin, unless the file sets one), so a runner that dies leaves
//! no fault behind for long; Ctrl-C removes the faults before exiting.
//!
//! With `[load]`, the runner also sends the traffic itself: an open-loop
//! load at a fixed rate (each request at its scheduled time whether or not
//! the previous ones answered), its latency measured from that scheduled
//! time, so a stall is not hidden by requests that were never sent
//! (no coordinated omission).
//!
//! ```toml
//! name = "one-slow-endpoint"
//! baseline = "5s"          # the hypothesis must hold this long first
//! duration = "60s"         # how long the faults stay in
//! recovery = "5s"          # and must hold again this long after
//! check_every = "250ms"    # at most 1s
//!
//! [hypothesis]
//! route = "api"
//! max_error_rate = 1       # percent of 5xx
//! max_p99 = "300ms"
//! window = "10s"
//! min_requests = 20
//!
//! [load]                   # optional
//! url = "http://127.0.0.1:8080/"
//! rate = 50                # requests per second
//!
//! [[faults]]               # as in the configuration; ttl optional here
//! name = "slow-one"
//! cluster = "app"
//! endpoint = "127.0.0.1:9003"
//! percent = 100
//! delay = "500ms"
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::json;

use super::experiment::{Action, Experiment, Hypothesis, Phase, Schedule, Verdict};
use super::sli::{self, Slis};
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
}

fn twenty() -> u64 {
    20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadFile {
    url: String,
    rate: f64,
}

/// An experiment read and checked.
pub struct Plan {
    pub name: String,
    pub hypothesis: Hypothesis,
    pub schedule: Schedule,
    pub check_every: Duration,
    /// The `[[faults]]` document to post.
    pub faults: String,
    pub fault_names: Vec<String>,
    pub load: Option<(http::Uri, f64)>,
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
    if file.faults.is_empty() {
        return Err(at(
            "faults: an experiment needs at least one [[faults]]".into()
        ));
    }
    // The safety net: a fault outlives a dead runner by this much at most.
    let ttl = schedule.duration + Duration::from_secs(10);
    let mut faults = Vec::new();
    let mut fault_names = Vec::new();
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
        faults.push(toml::Value::Table(f));
    }
    let mut doc = toml::Table::new();
    doc.insert("faults".into(), toml::Value::Array(faults));
    let faults = toml::to_string(&doc).map_err(|e| at(e.to_string()))?;
    crate::config::chaos::parse_faults(path, &faults, None).map_err(|e| {
        format!(
            "{}: {}: {} (in [[faults]])",
            path.display(),
            e.key,
            e.message
        )
    })?;
    let load = match file.load {
        Some(l) => {
            let uri: http::Uri = l
                .url
                .parse()
                .map_err(|e| at(format!("load.url: {:?}: {e}", l.url)))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(at(format!(
                    "load.url: {:?}: use http://host:port/path",
                    l.url
                )));
            }
            if !(l.rate > 0.0 && l.rate <= 10_000.0) {
                return Err(at(format!(
                    "load.rate: {} requests per second; use above 0, at most 10000",
                    l.rate
                )));
            }
            Some((uri, l.rate))
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
        fault_names,
        load,
    })
}

/// The admin API of the Levee under test.
pub struct Admin {
    address: String,
    token: Option<String>,
}

impl Admin {
    /// `url`: `http://127.0.0.1:9900` (or `127.0.0.1:9900`).
    pub fn new(url: &str, token: Option<String>) -> Admin {
        let address = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        Admin { address, token }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> Result<(StatusCode, String), String> {
        let fail =
            |e: &dyn std::fmt::Display| format!("admin API {}: {method} {path}: {e}", self.address);
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&self.address)
                .await
                .map_err(|e| fail(&e))?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| fail(&e))?;
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(http::header::HOST, &self.address);
            if let Some(t) = &self.token {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req
                .body(Full::new(Bytes::from(body.to_owned())))
                .map_err(|e| fail(&e))?;
            let resp = send.send_request(req).await.map_err(|e| fail(&e))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| fail(&e))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| fail(&"no answer within 5s"))?
    }

    async fn ok(&self, method: Method, path: &str, body: &str) -> Result<String, String> {
        let (status, text) = self.call(method.clone(), path, body).await?;
        if status.is_success() {
            Ok(text)
        } else {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or(text);
            Err(format!("{method} {path}: {status}: {message}"))
        }
    }
}

/// What the open-loop load saw.
#[derive(Default)]
struct LoadStats {
    sent: u64,
    by_status: std::collections::BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

/// The open-loop load: one request every `1/rate` until `stop`.
async fn generate(
    uri: http::Uri,
    rate: f64,
    stats: Arc<Mutex<LoadStats>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut ticks = tokio::time::interval(every);
    // Burst: a late tick is still sent, at once; its latency counts from
    // when it should have gone.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(2000));
    loop {
        let due = ticks.tick().await.into_std();
        if *stop.borrow() {
            return;
        }
        // A bound on open requests: beyond it, the request counts as failed
        // rather than piling up without end.
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.sent += 1;
            *s.by_status
                .entry("not sent (2000 open)".into())
                .or_default() += 1;
            continue;
        };
        let uri = uri.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let result = tokio::time::timeout(Duration::from_secs(30), get(&uri)).await;
            let label = match result {
                Ok(Ok(status)) => status.as_u16().to_string(),
                Ok(Err(e)) => format!("error: {e}"),
                Err(_) => "timeout (30s)".into(),
            };
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.sent += 1;
            *s.by_status.entry(label).or_default() += 1;
            s.latencies.push(due.elapsed());
            drop(permit);
        });
    }
}

async fn get(uri: &http::Uri) -> Result<StatusCode, String> {
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// The report: JSON, and a Markdown summary.
pub struct Report {
    pub json: serde_json::Value,
    pub markdown: String,
    pub passed: bool,
    /// Nothing was injected (the steady state did not hold, or the faults
    /// were refused).
    pub refused: bool,
}

/// Runs the experiment against the Levee at `admin`; `log` gets a line per
/// phase change as it happens.
pub async fn run(plan: Plan, admin: &Admin, log: &mut dyn FnMut(&str)) -> Result<Report, String> {
    let metrics = admin.ok(Method::GET, "/metrics", "").await?;
    if sli::parse(&metrics, &plan.hypothesis.route).is_none() {
        return Err(format!(
            "route {:?} has no series in GET /metrics: no such route on this Levee",
            plan.hypothesis.route
        ));
    }
    let started_wall = std::time::SystemTime::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load_stats = Arc::new(Mutex::new(LoadStats::default()));
    if let Some((uri, rate)) = &plan.load {
        log(&format!("load: {rate} requests/s to {uri} (open loop)"));
        tokio::spawn(generate(uri.clone(), *rate, load_stats.clone(), stop_rx));
    }
    let mut exp = Experiment::new(plan.hypothesis.clone(), plan.schedule, Instant::now());
    log(&format!(
        "baseline: {:?} of steady state on route {:?}",
        plan.schedule.baseline, plan.hypothesis.route
    ));
    let mut injected = false;
    let mut ever_injected = false;
    let mut injections: Vec<(String, u64, Vec<String>)> = Vec::new();
    let mut ticks = tokio::time::interval(plan.check_every);
    let mut failure = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = &mut ctrl_c => {
                failure = Some("interrupted (Ctrl-C)".to_owned());
                break;
            }
        }
        let text = match admin.ok(Method::GET, "/metrics", "").await {
            Ok(t) => t,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let Some(sample) = sli::parse(&text, &plan.hypothesis.route) else {
            failure = Some(format!(
                "route {:?} left GET /metrics (reloaded away?)",
                plan.hypothesis.route
            ));
            break;
        };
        if injected {
            injections = fault_counts(admin, &plan.fault_names)
                .await
                .unwrap_or(injections);
        }
        let now = Instant::now();
        match exp.observe(now, sample) {
            Action::Wait => {}
            Action::Inject => {
                if let Err(e) = admin.ok(Method::POST, "/faults", &plan.faults).await {
                    failure = Some(format!("the faults were refused: {e}"));
                    break;
                }
                injected = true;
                ever_injected = true;
                log(&format!(
                    "injecting {} for {:?}",
                    plan.fault_names.join(", "),
                    plan.schedule.duration
                ));
            }
            Action::Remove => {
                injections = fault_counts(admin, &plan.fault_names)
                    .await
                    .unwrap_or(injections);
                remove(admin, &plan.fault_names).await;
                injected = false;
                match &exp.verdict {
                    Some(Verdict::Aborted { why, after_seconds }) => log(&format!(
                        "ABORTED after {after_seconds:.2}s of injection: {why}; faults removed"
                    )),
                    _ => log("duration over; faults removed; checking recovery"),
                }
            }
            Action::Finish => break,
        }
    }
    // Whatever happened, no fault of ours stays in.
    if injected || failure.is_some() {
        remove(admin, &plan.fault_names).await;
    }
    let _ = stop_tx.send(true);
    let verdict = match (failure, exp.verdict.clone()) {
        // Nothing was injected: the experiment did not take place.
        (Some(why), _) if !ever_injected => Verdict::Refused { why },
        (Some(why), _) => Verdict::Aborted {
            why,
            after_seconds: 0.0,
        },
        (None, Some(v)) => v,
        (None, None) => Verdict::Aborted {
            why: "ended before a verdict".into(),
            after_seconds: 0.0,
        },
    };
    let load = {
        let mut s = load_stats.lock().unwrap_or_else(|p| p.into_inner());
        s.latencies.sort();
        let q = |p: f64| {
            let n = s.latencies.len();
            (n > 0).then(|| s.latencies[((n as f64 * p).ceil() as usize).clamp(1, n) - 1])
        };
        plan.load.as_ref().map(|_| {
            json!({
                "sent": s.sent,
                "by_status": s.by_status,
                "p50_ms": q(0.5).map(|d| d.as_secs_f64() * 1000.0),
                "p99_ms": q(0.99).map(|d| d.as_secs_f64() * 1000.0),
                "max_ms": s.latencies.last().map(|d| d.as_secs_f64() * 1000.0),
            })
        })
    };
    Ok(report(&plan, &exp, verdict, injections, load, started_wall))
}

/// Each fault's injections and effects from `GET /faults`.
async fn fault_counts(
    admin: &Admin,
    names: &[String],
) -> Result<Vec<(String, u64, Vec<String>)>, String> {
    let text = admin.ok(Method::GET, "/faults", "").await?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let list = v
        .get("faults")
        .and_then(|f| f.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(list
        .iter()
        .filter_map(|f| {
            let name = f.get("name")?.as_str()?.to_owned();
            names.contains(&name).then(|| {
                let n = f.get("injections").and_then(|n| n.as_u64()).unwrap_or(0);
                let target = f
                    .get("target")
                    .and_then(|t| t.as_str())
                    .unwrap_or("")
                    .to_owned();
                let mut what: Vec<String> = f
                    .get("effects")
                    .and_then(|e| e.as_array())
                    .map(|e| {
                        e.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                what.insert(0, target);
                (name, n, what)
            })
        })
        .collect())
}

async fn remove(admin: &Admin, names: &[String]) {
    for name in names {
        // 404: already gone (expired, or never posted).
        let _ = admin
            .call(Method::DELETE, &format!("/faults/{name}"), "")
            .await;
    }
}

fn report(
    plan: &Plan,
    exp: &Experiment,
    verdict: Verdict,
    injections: Vec<(String, u64, Vec<String>)>,
    load: Option<serde_json::Value>,
    started: std::time::SystemTime,
) -> Report {
    let phase = |p: Phase| exp.phases.iter().find(|x| x.0 == p).map(|x| x.1);
    let (before, during, after) = (
        phase(Phase::Baseline),
        phase(Phase::Injecting),
        phase(Phase::Recovery),
    );
    let passed = verdict == Verdict::Passed;
    let refused = matches!(verdict, Verdict::Refused { .. });
    let json = json!({
        "experiment": plan.name,
        "started": crate::observe::access_log::rfc3339_millis(started),
        "hypothesis": plan.hypothesis,
        "verdict": verdict,
        "slis": {"before": before, "during": during, "after": after},
        "faults": injections.iter().map(|(name, n, what)| json!({
            "name": name, "injections": n, "target": what.first(), "effects": &what[1.min(what.len())..],
        })).collect::<Vec<_>>(),
        "load": load,
        "timeline": exp.timeline,
    });
    let mut md = format!("# Chaos experiment: {}\n\n", plan.name);
    let h = &plan.hypothesis;
    md.push_str(&format!(
        "Hypothesis on route `{}`:{}{}\n\n",
        h.route,
        h.max_error_rate
            .map_or(String::new(), |r| format!(" error rate ≤ {r} %")),
        h.max_p99
            .map_or(String::new(), |d| format!(" p99 ≤ {} ms", d.as_millis()))
    ));
    md.push_str(&format!(
        "**Verdict: {}**\n\n",
        match &verdict {
            Verdict::Passed => "PASSED: the hypothesis held before, during and after".to_owned(),
            Verdict::Refused { why } => format!("REFUSED (nothing injected): {why}"),
            Verdict::Aborted { why, after_seconds } => format!(
                "FAILED: aborted after {after_seconds:.2} s of injection, faults removed: {why}"
            ),
            Verdict::NotRecovered { why } => format!("FAILED: did not recover: {why}"),
        }
    ));
    md.push_str("| phase | requests | error rate | p99 |\n|---|---|---|---|\n");
    for (name, slis) in [("before", before), ("during", during), ("after", after)] {
        if let Some(Slis {
            requests,
            error_rate,
            p99,
        }) = slis
        {
            md.push_str(&format!(
                "| {name} | {requests} | {error_rate:.2} % | {} |\n",
                p99.map_or("-".into(), |d| format!("{} ms", d.as_millis()))
            ));
        }
    }
    if !injections.is_empty() {
        md.push_str("\nWhat the faults did (the requests made slow or failed, and why):\n\n");
        for (name, n, what) in &injections {
            md.push_str(&format!(
                "- `{name}`: {n} requests hit: {}\n",
                what.join(", ")
            ));
        }
    }
    if let Some(l) = &json["load"].as_object() {
        md.push_str(&format!(
            "\nLoad (open loop, latency from the scheduled send): {} sent, by status {}, p50 {} ms, p99 {} ms\n",
            l.get("sent").cloned().unwrap_or_default(),
            l.get("by_status").cloned().unwrap_or_default(),
            l.get("p50_ms").and_then(|v| v.as_f64()).map_or("-".into(), |v| format!("{v:.0}")),
            l.get("p99_ms").and_then(|v| v.as_f64()).map_or("-".into(), |v| format!("{v:.0}")),
        ));
    }
    Report {
        json,
        markdown: md,
        passed,
        refused,
    }
}

/// `levee chaos run`: the exit code (0 passed, 1 failed, 2 could not run:
/// nothing was injected).
pub fn cli(file: &Path, admin: &str, token: Option<String>, report_to: Option<&Path>) -> u8 {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("levee chaos: {}: {e}", file.display());
            return 2;
        }
    };
    let plan = match load(file, &text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("levee chaos: {e}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("levee chaos: {e}");
            return 2;
        }
    };
    let token = token.or_else(|| std::env::var("LEVEE_ADMIN_TOKEN").ok());
    let admin = Admin::new(admin, token);
    let result = runtime.block_on(run(plan, &admin, &mut |line| {
        eprintln!("levee chaos: {line}");
    }));
    match result {
        Ok(r) => {
            print!("{}", r.markdown);
            if let Some(path) = report_to {
                let text = serde_json::to_string_pretty(&r.json).unwrap_or_default();
                if let Err(e) = std::fs::write(path, text + "\n") {
                    eprintln!("levee chaos: {}: {e}", path.display());
                    return 2;
                }
            }
            match (r.passed, r.refused) {
                (true, _) => 0,
                (false, true) => 2,
                (false, false) => 1,
            }
        }
        Err(e) => {
            eprintln!("levee chaos: {e}");
            2
        }
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
        let e = refused(&format!("bogus = 1\n{base}"));
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }
}
