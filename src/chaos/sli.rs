//! A route's service level indicators as Levee counts them: requests,
//! errors (5xx answers) and the request duration histogram, read from the
//! text of `GET /metrics` (`levee_requests_total`,
//! `levee_request_duration_seconds`). Counters only grow, so the SLIs of a
//! span are the difference of two samples (`Slis::between`).

use std::time::Duration;

use serde::Serialize;

/// One route's counters at one moment (cumulative).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub requests: u64,
    /// Answers of class 5xx (Levee's own and the endpoints').
    pub errors: u64,
    /// Cumulative histogram buckets: (upper bound in seconds, count), in
    /// ascending order, `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
}

/// The SLIs of a span between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Slis {
    pub requests: u64,
    /// Percent of the requests answered 5xx.
    pub error_rate: f64,
    /// The 99th percentile of the request duration, estimated from the
    /// histogram as Prometheus's `histogram_quantile` does (linear within
    /// the bucket); `None` without requests.
    #[serde(serialize_with = "millis")]
    pub p99: Option<Duration>,
}

fn millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3),
        None => s.serialize_none(),
    }
}

impl Slis {
    pub fn between(from: &Sample, to: &Sample) -> Slis {
        let requests = to.requests.saturating_sub(from.requests);
        let errors = to.errors.saturating_sub(from.errors);
        let error_rate = if requests == 0 {
            0.0
        } else {
            errors as f64 * 100.0 / requests as f64
        };
        let buckets: Vec<(f64, u64)> = to
            .buckets
            .iter()
            .map(|&(le, n)| {
                let before = from
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0, |(_, m)| *m);
                (le, n.saturating_sub(before))
            })
            .collect();
        Slis {
            requests,
            error_rate,
            p99: quantile(0.99, &buckets),
        }
    }
}

/// The `q` quantile of cumulative `buckets`, linear within the bucket it
/// falls in (from the bucket below's bound, or 0). In the `+Inf` bucket it
/// is the highest finite bound: the histogram cannot say more.
pub fn quantile(q: f64, buckets: &[(f64, u64)]) -> Option<Duration> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = (0.0, 0u64);
    for &(le, n) in buckets {
        if n as f64 >= rank {
            if le.is_infinite() {
                return Some(Duration::from_secs_f64(below.0));
            }
            let in_bucket = (n - below.1) as f64;
            let share = if in_bucket == 0.0 {
                1.0
            } else {
                (rank - below.1 as f64) / in_bucket
            };
            return Some(Duration::from_secs_f64(below.0 + (le - below.0) * share));
        }
        below = (le, n);
    }
    Some(Duration::from_secs_f64(below.0))
}

/// `route`'s sample from the text of `GET /metrics`; `None` when the route
/// has no series (no such route).
pub fn parse(metrics: &str, route: &str) -> Option<Sample> {
    let mut sample = Sample::default();
    let mut seen = false;
    for line in metrics.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let labels = labels.trim_end_matches('}');
        if label(labels, "route") != Some(route) {
            continue;
        }
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        match name {
            "levee_requests_total" => {
                seen = true;
                sample.requests += value as u64;
                if label(labels, "class") == Some("5xx") {
                    sample.errors += value as u64;
                }
            }
            "levee_request_duration_seconds_bucket" => {
                let le = match label(labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => match v.parse() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                seen = true;
                sample.buckets.push((le, value as u64));
            }
            _ => {}
        }
    }
    sample.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    seen.then_some(sample)
}

/// The value of label `key` in `a="x",b="y"` (route and cluster names
/// never hold quotes: config names are letters, digits, `-`, `_`, `.`).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP levee_requests Requests answered
# TYPE levee_requests counter
levee_requests_total{route="api",cluster="app",class="2xx"} 95
levee_requests_total{route="api",cluster="app",class="5xx"} 5
levee_requests_total{route="web",cluster="app",class="2xx"} 7
levee_request_duration_seconds_sum{route="api"} 3.0
levee_request_duration_seconds_count{route="api"} 100
levee_request_duration_seconds_bucket{le="0.1",route="api"} 90
levee_request_duration_seconds_bucket{le="0.25",route="api"} 98
levee_request_duration_seconds_bucket{le="0.5",route="api"} 100
levee_request_duration_seconds_bucket{le="+Inf",route="api"} 100
"#;

    #[test]
    fn a_routes_counters_from_the_metrics_text() {
        let s = parse(TEXT, "api").unwrap();
        assert_eq!(s.requests, 100);
        assert_eq!(s.errors, 5);
        assert_eq!(s.buckets.len(), 4);
        assert_eq!(s.buckets[3].0, f64::INFINITY);
        assert!(parse(TEXT, "nope").is_none());
        let slis = Slis::between(&Sample::default(), &s);
        assert_eq!(slis.error_rate, 5.0);
        // Rank 99 of 100 lies in (0.25, 0.5], half way: 0.375 s.
        assert_eq!(slis.p99, Some(Duration::from_millis(375)));
    }

    #[test]
    fn a_span_is_the_difference_of_two_samples() {
        let a = Sample {
            requests: 100,
            errors: 0,
            buckets: vec![(0.1, 100), (0.5, 100), (f64::INFINITY, 100)],
        };
        let b = Sample {
            requests: 200,
            errors: 50,
            buckets: vec![(0.1, 100), (0.5, 200), (f64::INFINITY, 200)],
        };
        let slis = Slis::between(&a, &b);
        assert_eq!(slis.requests, 100);
        assert_eq!(slis.error_rate, 50.0);
        let p99 = slis.p99.unwrap();
        assert!(p99 > Duration::from_millis(490), "{p99:?}");
        let none = Slis::between(&b, &b);
        assert_eq!((none.requests, none.p99), (0, None));
        // Beyond the last finite bound, the bound.
        let q = quantile(0.99, &[(0.5, 1), (f64::INFINITY, 100)]);
        assert_eq!(q, Some(Duration::from_millis(500)));
    }
}
