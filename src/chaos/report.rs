//! The experiment's report: JSON (the verdict; each named route's bounds,
//! its SLIs before, during and after, and its timeline; each ramp step;
//! what each fault hit; the slowest requests with the faults that hit
//! them; the load's own view) and a Markdown summary.

use serde_json::json;

use super::experiment::{Experiment, Hypothesis, Phase, Verdict};
use super::plan::Plan;
use super::sli::Slis;

/// The report: JSON, and a Markdown summary.
pub struct Report {
    pub json: serde_json::Value,
    pub markdown: String,
    pub passed: bool,
    /// Nothing was injected (the steady state did not hold, or the faults
    /// were refused).
    pub refused: bool,
}

/// The report of `exp`, ended with `verdict`; `injections`: each fault's
/// name, requests hit, target and effects.
pub fn report(
    plan: &Plan,
    exp: &Experiment,
    verdict: Verdict,
    injections: Vec<(String, u64, Vec<String>)>,
    load: Option<serde_json::Value>,
    slowest: Vec<serde_json::Value>,
    started: std::time::SystemTime,
) -> Report {
    let phase = |p: Phase| exp.phases.iter().find(|x| x.0 == p).map(|x| &x.1);
    let (before, during, after) = (
        phase(Phase::Baseline),
        phase(Phase::Injecting),
        phase(Phase::Recovery),
    );
    let at = |slis: Option<&Vec<Slis>>, i: usize| slis.and_then(|s| s.get(i)).copied();
    let passed = verdict == Verdict::Passed;
    let refused = matches!(verdict, Verdict::Refused { .. });
    // Each route on its own: its bounds, its SLIs before, during and
    // after, and its timeline.
    let routes: Vec<serde_json::Value> = plan
        .hypotheses
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let timeline: Vec<serde_json::Value> = exp
                .timeline
                .iter()
                .filter_map(|p| {
                    let s = p.slis.get(i)?;
                    Some(json!({"at": p.at, "phase": p.phase, "requests": s.requests, "error_rate": s.error_rate, "p99": s.p99.map(ms)}))
                })
                .collect();
            json!({
                "route": h.route,
                "hypothesis": h,
                "min_error_budget": plan.min_error_budget.iter().find(|(r, _)| *r == h.route).map(|(_, f)| f),
                "slis": {"before": at(before, i), "during": at(during, i), "after": at(after, i)},
                "timeline": timeline,
            })
        })
        .collect();
    let ramp: Vec<serde_json::Value> = exp
        .steps
        .iter()
        .map(|step| {
            let slis: serde_json::Map<String, serde_json::Value> = plan
                .hypotheses
                .iter()
                .enumerate()
                .map(|(i, h)| (h.route.clone(), json!(at(step.slis.as_ref(), i))))
                .collect();
            json!({"percent": step.percent, "at": step.at, "slis": slis})
        })
        .collect();
    let json = json!({
        "experiment": plan.name,
        "started": crate::observe::access_log::rfc3339_millis(started),
        "verdict": verdict,
        "routes": routes,
        "faults": injections.iter().map(|(name, n, what)| json!({
            "name": name, "injections": n, "target": what.first(), "effects": &what[1.min(what.len())..],
        })).collect::<Vec<_>>(),
        "ramp": ramp,
        "slowest": slowest,
        "load": load,
    });
    let mut md = format!("# Chaos experiment: {}\n\n", plan.name);
    md.push_str("Hypothesis (each route on its own bounds; a breach on any one aborts):\n\n");
    for h in &plan.hypotheses {
        md.push_str(&format!("- route `{}`:{}\n", h.route, bounds(h)));
    }
    md.push_str(&format!(
        "\n**Verdict: {}**\n\n",
        match &verdict {
            Verdict::Passed => "PASSED: the hypothesis held before, during and after".to_owned(),
            Verdict::Refused { why } => format!("REFUSED (nothing injected): {why}"),
            Verdict::Aborted { why, after_seconds } => format!(
                "FAILED: aborted after {after_seconds:.2} s of injection, faults removed: {why}"
            ),
            Verdict::NotRecovered { why } => format!("FAILED: did not recover: {why}"),
        }
    ));
    md.push_str("| route | phase | requests | error rate | p99 | within bounds |\n|---|---|---|---|---|---|\n");
    for (i, h) in plan.hypotheses.iter().enumerate() {
        for (name, slis) in [("before", before), ("during", during), ("after", after)] {
            if let Some(s) = at(slis, i) {
                let held = match h.broken(&s) {
                    None if s.requests < h.min_requests => "too few requests".to_owned(),
                    None => "yes".to_owned(),
                    Some(why) => format!("**no**: {why}"),
                };
                md.push_str(&format!(
                    "| {} | {name} | {} | {:.2} % | {} | {held} |\n",
                    h.route,
                    s.requests,
                    s.error_rate,
                    s.p99
                        .map_or("-".into(), |d| format!("{} ms", d.as_millis()))
                ));
            }
        }
    }
    if !exp.steps.is_empty() {
        md.push_str("\nRamp (the blast radius raised while the hypothesis held):\n\n| step | percent | from | route | requests | error rate | p99 |\n|---|---|---|---|---|---|---|\n");
        for (n, step) in exp.steps.iter().enumerate() {
            for (i, h) in plan.hypotheses.iter().enumerate() {
                let (requests, rate, p99) = match at(step.slis.as_ref(), i) {
                    Some(s) => (
                        s.requests.to_string(),
                        format!("{:.2} %", s.error_rate),
                        s.p99
                            .map_or("-".into(), |d| format!("{} ms", d.as_millis())),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                md.push_str(&format!(
                    "| {} | {} % | {:.1} s | {} | {requests} | {rate} | {p99} |\n",
                    n + 1,
                    step.percent,
                    step.at,
                    h.route
                ));
            }
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
    if !slowest.is_empty() {
        md.push_str("\nThe slowest requests since the faults went in, and why:\n\n| route | ms | status | request | endpoint | tries | faults | error |\n|---|---|---|---|---|---|---|---|\n");
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            v => v.to_string(),
        };
        for r in &slowest {
            let faults = r["faults"]
                .as_array()
                .filter(|f| !f.is_empty())
                .map_or("none".into(), |f| {
                    f.iter().map(text).collect::<Vec<_>>().join(", ")
                });
            md.push_str(&format!(
                "| {} | {} | {} | {} {} | {} | {} | {faults} | {} |\n",
                text(&r["route"]),
                text(&r["total_ms"]),
                text(&r["status"]),
                text(&r["method"]),
                text(&r["path"]),
                text(&r["endpoint"]),
                text(&r["tries"]),
                text(&r["error"]),
            ));
        }
    }
    if let Some(l) = &json["load"].as_object() {
        md.push_str(&format!(
            "\nLoad ({}, latency from when each request was due): {} sent, by status {}, p50 {} ms, p99 {} ms\n",
            match plan.load.as_ref().and_then(|l| l.users) {
                Some(u) => format!("{} virtual users, think time {:?}", u.count, u.think_time),
                None => "open loop".to_owned(),
            },
            l.get("sent").cloned().unwrap_or_default(),
            l.get("by_status").cloned().unwrap_or_default(),
            l.get("p50_ms").and_then(|v| v.as_f64()).map_or("-".into(), |v| format!("{v:.0}")),
            l.get("p99_ms").and_then(|v| v.as_f64()).map_or("-".into(), |v| format!("{v:.0}")),
        ));
        if let Some(per) = l.get("sent_per_second") {
            md.push_str(&format!("Sent per second: {per}\n"));
        }
    }
    Report {
        json,
        markdown: md,
        passed,
        refused,
    }
}

/// A route's bounds in words.
fn bounds(h: &Hypothesis) -> String {
    let mut out = String::new();
    if let Some(r) = h.max_error_rate {
        out.push_str(&format!(" error rate ≤ {r} %"));
    }
    if let Some(d) = h.max_p99 {
        out.push_str(&format!(" p99 ≤ {} ms", d.as_millis()));
    }
    if let Some(w) = h.window {
        out.push_str(&format!(" (over {} s windows)", w.as_secs_f64()));
    }
    out
}

/// Milliseconds, to the microsecond.
fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
