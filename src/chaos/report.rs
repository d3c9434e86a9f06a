//! The experiment's report: JSON (the verdict, the SLIs before, during and
//! after, each ramp step, what each fault hit, the slowest requests with
//! the faults that hit them, the load's own view, the timeline) and a
//! Markdown summary.

use serde_json::json;

use super::experiment::{Experiment, Phase, Verdict};
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
        "ramp": exp.steps,
        "min_error_budget": plan.min_error_budget,
        "slowest": slowest,
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
    if !exp.steps.is_empty() {
        md.push_str("\nRamp (the blast radius raised while the hypothesis held):\n\n| step | percent | from | requests | error rate | p99 |\n|---|---|---|---|---|---|\n");
        for (i, step) in exp.steps.iter().enumerate() {
            let (requests, rate, p99) = match &step.slis {
                Some(s) => (
                    s.requests.to_string(),
                    format!("{:.2} %", s.error_rate),
                    s.p99
                        .map_or("-".into(), |d| format!("{} ms", d.as_millis())),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            md.push_str(&format!(
                "| {} | {} % | {:.1} s | {requests} | {rate} | {p99} |\n",
                i + 1,
                step.percent,
                step.at
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
    if !slowest.is_empty() {
        md.push_str("\nThe slowest requests since the faults went in, and why:\n\n| ms | status | request | endpoint | tries | faults | error |\n|---|---|---|---|---|---|---|\n");
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
                "| {} | {} | {} {} | {} | {} | {faults} | {} |\n",
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
            "\nLoad (open loop, latency from the scheduled send): {} sent, by status {}, p50 {} ms, p99 {} ms\n",
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
