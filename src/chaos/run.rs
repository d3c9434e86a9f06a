//! `levee chaos run experiment.toml --admin URL`: the async shell around
//! `experiment::Experiment`. It drives a running Levee through its admin
//! API only: samples `GET /metrics` every `check_every` (at most a second),
//! posts the faults (`POST /faults`) when the baseline holds, deletes them
//! (`DELETE /faults/{name}`) when the duration is over or the hypothesis
//! breaks, and reads `GET /faults` for how many requests each fault hit.
//! Every route the hypothesis names is sampled and judged on its own bounds.
//! With a ramp it posts the faults again at each step's blast radius; with
//! `min_error_budget` it reads the route's budget (`GET /slo`) before
//! starting and at every sample; it clears `GET /chaos/requests` when the
//! faults go in and reads it at the end: the slowest requests, and why.
//! The file is `plan`'s, the load `load`'s, the report `report`'s.
//!
//! Safety: each fault is posted with a ttl, so a runner that dies leaves no
//! fault behind for long; Ctrl-C removes the faults before exiting; a
//! runner that fails after injecting removes them too.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use super::experiment::{Action, Experiment, Phase, Verdict};
use super::load::{LoadStats, generate};
use super::plan::{Plan, load};
use super::report::{Report, report};
use super::sli;

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

/// Runs the experiment against the Levee at `admin`; `log` gets a line per
/// phase change as it happens.
pub async fn run(plan: Plan, admin: &Admin, log: &mut dyn FnMut(&str)) -> Result<Report, String> {
    let metrics = admin.ok(Method::GET, "/metrics", "").await?;
    let routes: Vec<String> = plan.hypotheses.iter().map(|h| h.route.clone()).collect();
    if let Some(r) = routes.iter().find(|r| sli::parse(&metrics, r).is_none()) {
        return Err(format!(
            "route {r:?} has no series in GET /metrics: no such route on this Levee"
        ));
    }
    let started_wall = std::time::SystemTime::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load_stats = Arc::new(Mutex::new(LoadStats::default()));
    if let Some(l) = &plan.load {
        let fail = l
            .fail
            .as_ref()
            .map_or(String::new(), |(u, p)| format!(", {p} % to {u}"));
        match &l.users {
            Some(u) => log(&format!(
                "load: {} virtual users to {}, a request each every {:?} (think time), starting over {:?}{fail}",
                u.count, l.uri, u.think_time, u.ramp_up
            )),
            None => {
                let ramp = if l.ramp_up.is_zero() {
                    String::new()
                } else {
                    format!(", from {} over {:?}", l.start_rate, l.ramp_up)
                };
                log(&format!(
                    "load: {} requests/s to {}{ramp}{fail} (open loop)",
                    l.rate, l.uri
                ));
            }
        }
        tokio::spawn(generate(l.clone(), load_stats.clone(), stop_rx));
    }
    let mut exp = Experiment::new(plan.hypotheses.clone(), plan.schedule, Instant::now())
        .with_ramp(plan.ramp.clone());
    // The error-budget floors: checked before anything else, so that an
    // experiment never spends a budget that is already short.
    if let Some(why) = below_floor(admin, &plan.min_error_budget, "is").await {
        log(&format!("REFUSED: {why}"));
        exp.abort(Instant::now(), samples(&metrics, &routes), why);
    }
    log(&format!(
        "baseline: {:?} of steady state on route{} {}",
        plan.schedule.baseline,
        if routes.len() > 1 { "s" } else { "" },
        routes
            .iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut injected = false;
    let mut ever_injected = false;
    let mut injections: Vec<(String, u64, Vec<String>)> = Vec::new();
    if exp.phase() == Phase::Done {
        let _ = stop_tx.send(true);
        let verdict = exp.verdict.clone().unwrap_or(Verdict::Refused {
            why: "refused".into(),
        });
        return Ok(report(
            &plan,
            &exp,
            verdict,
            injections,
            None,
            Vec::new(),
            started_wall,
        ));
    }
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
        if let Some(r) = routes.iter().find(|r| sli::parse(&text, r).is_none()) {
            failure = Some(format!("route {r:?} left GET /metrics (reloaded away?)"));
            break;
        }
        let sample = samples(&text, &routes);
        if injected {
            injections = fault_counts(admin, &plan.fault_names)
                .await
                .unwrap_or(injections);
        }
        let now = Instant::now();
        let below_floor = match exp.phase() {
            Phase::Baseline | Phase::Injecting => {
                below_floor(admin, &plan.min_error_budget, "fell to").await
            }
            _ => None,
        };
        let action = match below_floor {
            Some(why) => exp.abort(now, sample, why),
            None => exp.observe(now, sample),
        };
        match action {
            Action::Wait => {}
            Action::Raise(percent) => {
                if let Err(e) = admin
                    .ok(Method::POST, "/faults", &plan.faults_at(percent))
                    .await
                {
                    failure = Some(format!("the ramp's next step was refused: {e}"));
                    break;
                }
                log(&format!(
                    "ramp: the hypothesis held; blast radius raised to {percent} %"
                ));
            }
            Action::Inject => {
                // The slowest requests from here on are the report's.
                for r in &routes {
                    let _ = admin.ok(Method::DELETE, &requests_path(r), "").await;
                }
                if let Err(e) = admin.ok(Method::POST, "/faults", &plan.faults).await {
                    failure = Some(format!("the faults were refused: {e}"));
                    break;
                }
                injected = true;
                ever_injected = true;
                log(&format!(
                    "injecting {} for {:?}{}",
                    plan.fault_names.join(", "),
                    plan.schedule.duration,
                    plan.ramp
                        .first()
                        .map_or(String::new(), |p| format!(", ramp starting at {p} %"))
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
    let mut slowest = Vec::new();
    if ever_injected {
        for r in &routes {
            slowest.extend(slowest_requests(admin, r).await.unwrap_or_default());
        }
    }
    let load = plan.load.as_ref().map(|_| {
        load_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .summary()
    });
    Ok(report(
        &plan,
        &exp,
        verdict,
        injections,
        load,
        slowest,
        started_wall,
    ))
}

/// Each route's sample from the text of `GET /metrics`, in `routes`'
/// order (a route without series counts nothing).
fn samples(metrics: &str, routes: &[String]) -> Vec<sli::Sample> {
    routes
        .iter()
        .map(|r| sli::parse(metrics, r).unwrap_or_default())
        .collect()
}

/// Why a route's error budget is below its floor (`min_error_budget`), if
/// one is; `verb`: "is" before the start, "fell to" later.
async fn below_floor(admin: &Admin, floors: &[(String, f64)], verb: &str) -> Option<String> {
    for (route, floor) in floors {
        match budget_left(admin, route).await {
            Ok(left) if left < *floor => {
                return Some(format!(
                    "the error budget of route {route:?} {verb} {left:.1} % left, below the floor min_error_budget = {floor} %"
                ));
            }
            Ok(_) => {}
            Err(e) => return Some(e),
        }
    }
    None
}

/// The share (percent) of `route`'s error budget left, from `GET /slo`.
async fn budget_left(admin: &Admin, route: &str) -> Result<f64, String> {
    let text = admin.ok(Method::GET, "/slo", "").await?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    v["routes"][route]["budget_remaining"]
        .as_f64()
        .map(|left| left * 100.0)
        .ok_or_else(|| {
            format!(
                "route {route:?} has no SLO on this Levee (a `slo` on the route): min_error_budget needs its error budget"
            )
        })
}

/// `/chaos/requests?route=R`, the route escaped.
fn requests_path(route: &str) -> String {
    let mut q = String::new();
    for b in route.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    format!("/chaos/requests?route={q}")
}

/// The slowest requests of `route` since the faults went in
/// (`GET /chaos/requests`), each with its route.
async fn slowest_requests(admin: &Admin, route: &str) -> Result<Vec<serde_json::Value>, String> {
    let text = admin.ok(Method::GET, &requests_path(route), "").await?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut list = v["routes"][route]["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for r in &mut list {
        if let Some(o) = r.as_object_mut() {
            o.entry("route").or_insert_with(|| route.into());
        }
    }
    Ok(list)
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

/// Where `levee chaos run` writes the report besides standard output.
#[derive(Default, Clone, Copy)]
pub struct Outputs<'a> {
    pub json: Option<&'a Path>,
    pub html: Option<&'a Path>,
}

/// `levee chaos run`: the exit code (0 passed, 1 failed, 2 could not run:
/// nothing was injected).
pub fn cli(file: &Path, admin: &str, token: Option<String>, outputs: Outputs<'_>) -> u8 {
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
            let files = [
                (
                    outputs.json,
                    serde_json::to_string_pretty(&r.json).unwrap_or_default() + "\n",
                ),
                (outputs.html, super::html::render(&r.json)),
            ];
            for (path, text) in files {
                if let Some(path) = path
                    && let Err(e) = std::fs::write(path, text)
                {
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
