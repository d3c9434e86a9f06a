//! `levee availability`: what the command prints, kept out of `main.rs` so
//! that the command line stays a thin shell.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::json;

use super::compose::{self, PERIODS, Period};
use super::expression;
use super::spof;

/// The subcommand's inputs, as parsed by clap.
pub struct Request {
    pub expression: Option<String>,
    /// `NAME=PERCENT`.
    pub parts: Vec<String>,
    pub downtime: Option<String>,
    pub per: Period,
    pub config: Option<PathBuf>,
    pub json: bool,
}

/// The text (or JSON) to print, or the error to show.
pub fn run(req: &Request) -> Result<String, String> {
    let figure = match (&req.expression, &req.downtime) {
        (Some(_), Some(_)) => return Err("give an expression or --downtime, not both".into()),
        (Some(text), None) => Some(evaluate(text, &req.parts)?),
        (None, Some(text)) => {
            if !req.parts.is_empty() {
                return Err("--part names parts of an expression; --downtime takes none".into());
            }
            let seconds = compose::parse_downtime(text)?;
            if seconds > req.per.seconds() {
                return Err(format!(
                    "{text} of downtime is more than a {}",
                    req.per.as_str()
                ));
            }
            let label = format!("{text} of downtime per {}", req.per.as_str());
            Some((label, compose::from_downtime(seconds, req.per)))
        }
        (None, None) => {
            if !req.parts.is_empty() {
                return Err("--part needs an expression that names the part".into());
            }
            None
        }
    };
    let findings = match &req.config {
        Some(path) => {
            let config = crate::load::load(path).map_err(|e| e.to_string())?;
            Some(spof::findings(&config, &|_| None))
        }
        None => None,
    };
    if figure.is_none() && findings.is_none() {
        return Err(
            "give an availability (99.95), an expression (\"99.9 -> 99.9\"), --downtime 4h, or --config FILE"
                .into(),
        );
    }
    if req.json {
        let mut out = serde_json::Map::new();
        if let Some((label, a)) = &figure {
            out.insert("input".into(), json!(label));
            out.insert("availability".into(), json!(a));
            out.insert("percent".into(), json!(compose::percent_text(*a)));
            let nines = compose::nines(*a);
            out.insert("nines".into(), json!(nines.is_finite().then_some(nines)));
            let downtime: serde_json::Map<String, serde_json::Value> = PERIODS
                .iter()
                .map(|(p, _)| (p.as_str().to_owned(), json!(compose::downtime(*a, *p))))
                .collect();
            out.insert("downtime_seconds".into(), downtime.into());
        }
        if let Some(f) = &findings {
            out.insert("single_points_of_failure".into(), json!(f));
        }
        let mut text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        text.push('\n');
        return Ok(text);
    }
    let mut out = String::new();
    if let Some((label, a)) = &figure {
        let nines = compose::nines(*a);
        let nines = if nines.is_finite() {
            format!(" ({nines:.2} nines)")
        } else {
            String::new()
        };
        let _ = writeln!(out, "{label}");
        let _ = writeln!(out, "availability: {} %{nines}", compose::percent_text(*a));
        for (i, (p, _)) in PERIODS.iter().enumerate() {
            let head = if i == 0 { "downtime" } else { "" };
            let _ = writeln!(
                out,
                "{head:<8} per {:<6} {}",
                format!("{}:", p.as_str()),
                compose::duration_text(compose::downtime(*a, *p))
            );
        }
    }
    if let Some(findings) = &findings {
        if figure.is_some() {
            out.push('\n');
        }
        let _ = writeln!(out, "single points of failure:");
        for f in findings {
            let _ = writeln!(out, "  [{}] {}: {}", f.severity, f.kind, f.message);
        }
    }
    Ok(out)
}

/// Parses and evaluates an expression with its `--part` values. Returns the
/// expression as read back and its availability.
fn evaluate(text: &str, parts: &[String]) -> Result<(String, f64), String> {
    let expr =
        expression::parse(text).map_err(|e| format!("bad expression:\n{}", e.pointed(text)))?;
    let mut values: Vec<(String, f64)> = Vec::new();
    for part in parts {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("--part {part}: expected NAME=PERCENT, e.g. app=99.9"))?;
        let value = value.trim().trim_end_matches('%').trim();
        let percent: f64 = value
            .parse()
            .ok()
            .filter(|p| (0.0..=100.0).contains(p))
            .ok_or_else(|| {
                format!("--part {part}: expected a percentage from 0 to 100, found {value:?}")
            })?;
        let name = name.trim();
        if !expr.names().contains(&name) {
            return Err(format!(
                "--part {name}: the expression has no part {name:?}"
            ));
        }
        values.push((name.to_owned(), percent / 100.0));
    }
    let lookup = |name: &str| values.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let a = expr
        .eval(&lookup)
        .map_err(|e| format!("missing part:\n{}", e.pointed(text)))?;
    let mut label = expr.to_string();
    if !values.is_empty() {
        let given: Vec<String> = values
            .iter()
            .map(|(n, v)| format!("{n} = {} %", compose::percent_text(*v)))
            .collect();
        let _ = write!(label, "  with {}", given.join(", "));
    }
    Ok((label, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(expression: Option<&str>) -> Request {
        Request {
            expression: expression.map(Into::into),
            parts: vec![],
            downtime: None,
            per: Period::Year,
            config: None,
            json: false,
        }
    }

    #[test]
    fn nines_to_downtime() {
        let out = run(&request(Some("99.9"))).unwrap();
        assert!(out.contains("availability: 99.9 % (3.00 nines)"), "{out}");
        assert!(out.contains("per year:  8h 45m 58s"), "{out}");
        assert!(out.contains("per day:   1m 26s"), "{out}");
    }

    #[test]
    fn downtime_to_nines() {
        let mut req = request(None);
        req.downtime = Some("4h".into());
        let out = run(&req).unwrap();
        assert!(
            out.contains("availability: 99.95437 % (3.34 nines)"),
            "{out}"
        );
        req.downtime = Some("400d".into());
        assert!(run(&req).unwrap_err().contains("more than a year"));
    }

    #[test]
    fn parts_by_name() {
        let mut req = request(Some("app -> app -> app"));
        req.parts = vec!["app=99.9".into()];
        let out = run(&req).unwrap();
        assert!(out.contains("availability: 99.7003 %"), "{out}");
        req.parts = vec!["db=99.9".into()];
        assert!(run(&req).unwrap_err().contains("no part \"db\""));
        req.parts = vec!["app".into()];
        assert!(run(&req).unwrap_err().contains("NAME=PERCENT"));
        req.parts = vec!["app=101".into()];
        assert!(run(&req).unwrap_err().contains("from 0 to 100"));
        req.parts = vec![];
        let err = run(&req).unwrap_err();
        assert!(err.contains("--part app=99.9"), "{err}");
    }

    #[test]
    fn json_output() {
        let mut req = request(Some("99.9 || 99.9"));
        req.json = true;
        let v: serde_json::Value = serde_json::from_str(&run(&req).unwrap()).unwrap();
        assert_eq!(v["percent"], "99.9999");
        let a = v["availability"].as_f64().unwrap();
        assert!((a - 0.999_999).abs() < 1e-12);
        let year = v["downtime_seconds"]["year"].as_f64().unwrap();
        assert!((year - 31.5576).abs() < 1e-3, "{year}");
    }

    #[test]
    fn nothing_to_do_is_an_error() {
        assert!(run(&request(None)).unwrap_err().contains("--config FILE"));
        let err = run(&request(Some("99 ->"))).unwrap_err();
        assert!(err.contains("^ column 6"), "{err}");
    }
}
