//! The experiment's report as one self-contained HTML page (no script, no
//! external file: it can be mailed or attached to a ticket): the verdict,
//! and for every route of the hypothesis its bounds, its SLIs before, during
//! and after, and two plots over the experiment's timeline, the p99 and the
//! error rate, each with its bound drawn and the injection shaded. Rendered
//! from the JSON report (`report::report`), so the two never disagree.

use std::fmt::Write;

use serde_json::Value;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A JSON value as text: strings bare, null as a dash.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "–".into(),
        v => v.to_string(),
    }
}

const W: f64 = 640.0;
const H: f64 = 150.0;
/// Room for the axis labels.
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 20.0;

/// One plot: `values` (seconds since the start, value) over the timeline,
/// the injection (`injecting`: from, to, in seconds) shaded, `bound` dashed.
fn plot(
    title: &str,
    unit: &str,
    values: &[(f64, Option<f64>)],
    injecting: Option<(f64, f64)>,
    bound: Option<f64>,
) -> String {
    let end = values.iter().map(|v| v.0).fold(0.0_f64, f64::max).max(1.0);
    let top = values
        .iter()
        .filter_map(|v| v.1)
        .chain(bound)
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |t: f64| LEFT + t / end * (W - LEFT - 4.0);
    let y = |v: f64| (H - BOTTOM) - v / top * (H - BOTTOM - 6.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{title}"><title>{title}</title>"#,
        title = esc(title)
    );
    if let Some((from, to)) = injecting {
        let _ = write!(
            svg,
            r##"<rect class="injecting" x="{:.1}" y="0" width="{:.1}" height="{:.1}" fill="#fbe3e3"/>"##,
            x(from),
            (x(to) - x(from)).max(1.0),
            H - BOTTOM
        );
    }
    // Axes and their labels: 0 and the top value, 0 s and the end.
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{b}" x2="{W}" y2="{b}" stroke="#999"/><line x1="{LEFT}" y1="0" x2="{LEFT}" y2="{b}" stroke="#999"/><text x="{lx}" y="{b}" font-size="10" text-anchor="end">0</text><text x="{lx}" y="12" font-size="10" text-anchor="end">{top:.1} {unit}</text><text x="{LEFT}" y="{H}" font-size="10">0 s</text><text x="{W}" y="{H}" font-size="10" text-anchor="end">{end:.1} s</text>"##,
        b = H - BOTTOM,
        lx = LEFT - 4.0,
        top = top,
        unit = esc(unit),
    );
    if let Some(b) = bound {
        let _ = write!(
            svg,
            r##"<line class="bound" x1="{LEFT}" y1="{y:.1}" x2="{W}" y2="{y:.1}" stroke="#c0392b" stroke-dasharray="5,4"><title>bound {b} {unit}</title></line>"##,
            y = y(b),
            unit = esc(unit)
        );
    }
    let points: Vec<String> = values
        .iter()
        .filter_map(|&(t, v)| Some(format!("{:.1},{:.1}", x(t), y(v?))))
        .collect();
    let _ = write!(
        svg,
        r##"<polyline class="series" fill="none" stroke="#2c6fbb" stroke-width="1.5" points="{}"/></svg>"##,
        points.join(" ")
    );
    svg
}

/// Where the injection began and ended on the timeline, if it did.
fn injecting_span(timeline: &[Value]) -> Option<(f64, f64)> {
    let at = |p: &Value| p["at"].as_f64().unwrap_or(0.0);
    let during: Vec<f64> = timeline
        .iter()
        .filter(|p| p["phase"] == "injecting")
        .map(at)
        .collect();
    let from = during.first().copied()?;
    // Up to the first point after it, when the faults were out.
    let to = timeline
        .iter()
        .map(at)
        .find(|t| *t > *during.last().unwrap_or(&from))
        .unwrap_or(*during.last().unwrap_or(&from));
    Some((from, to))
}

/// The page for a JSON report.
pub fn render(report: &Value) -> String {
    let name = text(&report["experiment"]);
    let verdict = &report["verdict"];
    let result = text(&verdict["result"]);
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Chaos experiment: {n}</title><style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}th{{background:#f4f4f4}}.passed{{color:#1e7e34}}.aborted,.notrecovered,.refused{{color:#c0392b}}.plot{{display:block;margin:.5em 0}}</style></head><body><h1>Chaos experiment: {n}</h1><p>Started {started}.</p><p id="verdict" data-result="{r}" class="{r}"><strong>Verdict: {r}</strong>{why}</p>"#,
        n = esc(&name),
        started = esc(&text(&report["started"])),
        r = esc(&result),
        why = match verdict["why"].as_str() {
            Some(w) => format!(
                ": {}{}",
                esc(w),
                verdict["after_seconds"]
                    .as_f64()
                    .map_or(String::new(), |s| format!(" (after {s:.2} s of injection)"))
            ),
            None => String::new(),
        }
    );
    for r in report["routes"].as_array().into_iter().flatten() {
        let route = text(&r["route"]);
        let h = &r["hypothesis"];
        let max_p99 = h["max_p99"].as_f64();
        let max_errors = h["max_error_rate"].as_f64();
        let _ = write!(
            page,
            r#"<section data-route="{rt}"><h2>Route {rt}</h2><p>Bounds: error rate ≤ {e} %, p99 ≤ {p} ms.</p><table><tr><th>phase</th><th>requests</th><th>error rate</th><th>p99</th></tr>"#,
            rt = esc(&route),
            e = esc(&text(&h["max_error_rate"])),
            p = esc(&text(&h["max_p99"])),
        );
        for phase in ["before", "during", "after"] {
            let s = &r["slis"][phase];
            if s.is_null() {
                continue;
            }
            let _ = write!(
                page,
                "<tr><th>{phase}</th><td>{}</td><td>{:.2} %</td><td>{} ms</td></tr>",
                text(&s["requests"]),
                s["error_rate"].as_f64().unwrap_or(0.0),
                esc(&text(&s["p99"]))
            );
        }
        page.push_str("</table>");
        let timeline = r["timeline"].as_array().cloned().unwrap_or_default();
        let span = injecting_span(&timeline);
        let series = |key: &str| -> Vec<(f64, Option<f64>)> {
            timeline
                .iter()
                .map(|p| (p["at"].as_f64().unwrap_or(0.0), p[key].as_f64()))
                .collect()
        };
        page.push_str(&plot(
            &format!("route {route}: p99 over the last window"),
            "ms",
            &series("p99"),
            span,
            max_p99,
        ));
        page.push_str(&plot(
            &format!("route {route}: error rate over the last window"),
            "%",
            &series("error_rate"),
            span,
            max_errors,
        ));
        page.push_str("</section>");
    }
    let faults = report["faults"].as_array().cloned().unwrap_or_default();
    if !faults.is_empty() {
        page.push_str("<h2>Faults</h2><ul>");
        for f in &faults {
            let effects: Vec<String> = f["effects"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            let _ = write!(
                page,
                "<li><code>{}</code>: {} requests hit: {}, {}</li>",
                esc(&text(&f["name"])),
                text(&f["injections"]),
                esc(&text(&f["target"])),
                esc(&effects.join(", "))
            );
        }
        page.push_str("</ul>");
    }
    let slowest = report["slowest"].as_array().cloned().unwrap_or_default();
    if !slowest.is_empty() {
        page.push_str("<h2>The slowest requests since the faults went in, and why</h2><table><tr><th>route</th><th>ms</th><th>status</th><th>request</th><th>endpoint</th><th>tries</th><th>faults</th><th>error</th></tr>");
        for q in &slowest {
            let faults: Vec<String> = q["faults"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text(&q["route"])),
                esc(&text(&q["total_ms"])),
                esc(&text(&q["status"])),
                esc(&text(&q["method"])),
                esc(&text(&q["path"])),
                esc(&text(&q["endpoint"])),
                esc(&text(&q["tries"])),
                esc(&if faults.is_empty() {
                    "none".into()
                } else {
                    faults.join(", ")
                }),
                esc(&text(&q["error"]))
            );
        }
        page.push_str("</table>");
    }
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_route_gets_its_table_and_plots_with_its_bounds() {
        let point = |at: f64, phase: &str, p99: f64, e: f64| json!({"at": at, "phase": phase, "requests": 10, "error_rate": e, "p99": p99});
        let report = json!({
            "experiment": "two <routes>",
            "started": "2026-12-03T10:00:00.000Z",
            "verdict": {"result": "aborted", "why": "route \"b\": error rate 20.00 % > 10 %", "after_seconds": 1.5},
            "routes": [
                {"route": "a", "hypothesis": {"max_p99": 300, "max_error_rate": 1.0},
                 "slis": {"before": {"requests": 10, "error_rate": 0.0, "p99": 20.0}, "during": null, "after": null},
                 "timeline": [point(0.0, "baseline", 20.0, 0.0), point(1.0, "injecting", 40.0, 0.0), point(2.0, "recovery", 20.0, 0.0)]},
                {"route": "b", "hypothesis": {"max_p99": null, "max_error_rate": 10.0},
                 "slis": {"before": {"requests": 10, "error_rate": 0.0, "p99": 20.0}},
                 "timeline": [point(0.0, "baseline", 20.0, 0.0), point(1.0, "injecting", 20.0, 20.0), point(2.0, "recovery", 20.0, 0.0)]},
            ],
            "faults": [{"name": "f", "injections": 3, "target": "route b", "effects": ["abort 503"]}],
            "slowest": [],
        });
        let page = render(&report);
        assert!(
            page.contains("Chaos experiment: two &lt;routes&gt;"),
            "escaped"
        );
        assert!(page.contains(r#"data-result="aborted""#));
        assert!(page.contains("route &quot;b&quot;: error rate 20.00 %"));
        assert!(page.contains(r#"<section data-route="a">"#));
        assert!(page.contains(r#"<section data-route="b">"#));
        // Two plots per route; a bound line wherever the route has one
        // (a: p99 and errors; b: errors only).
        assert_eq!(page.matches("<svg").count(), 4);
        assert_eq!(page.matches(r#"class="bound""#).count(), 3);
        assert_eq!(page.matches(r#"class="injecting""#).count(), 4);
        assert!(page.contains("<code>f</code>: 3 requests hit: route b, abort 503"));
        assert_eq!(
            injecting_span(report["routes"][0]["timeline"].as_array().unwrap()),
            Some((1.0, 2.0))
        );
    }
}
