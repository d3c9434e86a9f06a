//! `[chaos]` and `[[faults]]`: fault injection as configured (see
//! `chaos::fault` for what each setting does). Faults are off unless
//! `chaos.enabled = true`, and every fault has a `ttl`: none stays on by
//! accident. `parse_faults` reads a document of `[[faults]]` alone (what
//! `POST /faults` takes) with the same file:line:column errors.
//!
//! ```toml
//! [chaos]
//! enabled = true                   # off by default: no fault applies
//!
//! [[faults]]
//! name = "slow-b3"
//! cluster = "app"
//! endpoint = "127.0.0.1:9003"      # one sick instance; omit for the whole cluster
//! percent = 10                     # the blast radius, 0 to 100 (required)
//! delay = "500ms"                  # or delay_distribution = { p50 = "20ms", p99 = "500ms" }
//! delay_jitter = "100ms"           # up to this much more, uniformly
//! abort = 503                      # or reset = true, or truncate_after = "1KiB",
//!                                  # or grpc_abort = "unavailable" (a gRPC status)
//! bandwidth = "64KiB"              # response body bytes per second
//! slow_headers = "2s"              # the response head held back this long
//! header = "x-levee-fault"         # hits any request carrying it ...
//! trusted_sources = ["10.0.0.0/8"] # ... from these peers only (required with header)
//! clients_percent = 5              # only this stable share of client IPs
//! ttl = "60s"                      # removes itself after this long (required)
//! ```
//!
//! A fault on a `cluster` (or endpoint) acts on every try it selects; a
//! route's fault once per request: its delay and abort before any try, its
//! `reset` closes the client's connection unanswered, its slow headers,
//! truncation and bandwidth act on the answer the client gets.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::ratelimit::Cidr;
use super::validate::{Invalid, check_name, invalid, list};
use super::value::{ByteSize, Duration};
use super::{Config, ConfigError};

/// `[chaos]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosConfig {
    /// Whether faults may be injected at all (from the configuration or
    /// `POST /faults`). Off by default: a production proxy never injects
    /// a fault unless its operator said so in the file.
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    pub name: Spanned<String>,
    /// Once per request of this route; or `cluster`.
    #[serde(default)]
    pub route: Option<Spanned<String>>,
    /// Every try to this cluster (or to its `endpoint`).
    #[serde(default)]
    pub cluster: Option<Spanned<String>>,
    #[serde(default)]
    pub endpoint: Option<Spanned<SocketAddr>>,
    /// Share of requests hit, 0 to 100. Required: a fault's blast radius is
    /// never implicit.
    pub percent: Spanned<f64>,
    #[serde(default)]
    pub delay: Option<Spanned<Duration>>,
    #[serde(default)]
    pub delay_jitter: Option<Spanned<Duration>>,
    /// Percentile (`p50`, `p99.9`) → delay.
    #[serde(default)]
    pub delay_distribution: Option<Spanned<BTreeMap<String, Duration>>>,
    /// Answer this status (400 to 599) instead of forwarding.
    #[serde(default)]
    pub abort: Option<Spanned<u16>>,
    /// Answer this gRPC status instead of forwarding: HTTP 200,
    /// trailers-only, as a gRPC server that failed the call would.
    #[serde(default)]
    pub grpc_abort: Option<Spanned<String>>,
    #[serde(default)]
    pub reset: Option<Spanned<bool>>,
    #[serde(default)]
    pub truncate_after: Option<Spanned<ByteSize>>,
    /// Bytes per second.
    #[serde(default)]
    pub bandwidth: Option<Spanned<ByteSize>>,
    #[serde(default)]
    pub slow_headers: Option<Spanned<Duration>>,
    #[serde(default)]
    pub header: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_sources: Vec<Spanned<String>>,
    #[serde(default)]
    pub clients_percent: Option<Spanned<f64>>,
    /// Removes itself this long after it started. Required: a fault that
    /// outlives the experiment (or the operator's attention) is an outage.
    pub ttl: Spanned<Duration>,
}

/// The gRPC status codes by name (gRPC's `statuscodes.md`), from 0: as a
/// fault names them here, and as metrics and the access log spell them
/// (`proxy::grpc::code_name`).
pub const GRPC_CODES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// The code of a gRPC status a fault may answer, by name; `None` for an
/// unknown name and for `ok` (no failure to inject).
pub fn grpc_code(name: &str) -> Option<u8> {
    GRPC_CODES
        .iter()
        .position(|n| *n == name)
        .filter(|c| *c > 0)
        .and_then(|c| u8::try_from(c).ok())
}

/// A document of faults only (`[[faults]]` tables).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsFile {
    #[serde(default)]
    faults: Vec<FaultConfig>,
}

fn percent(value: &Spanned<f64>, key: String) -> Result<f64, Invalid> {
    let p = *value.get_ref();
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(invalid(
            value.span(),
            key,
            format!("{p} is not a percentage; use 0 to 100"),
        ))
    }
}

/// Checks every fault; with `config`, also that its route, cluster and
/// endpoint exist.
pub(super) fn check(faults: &[FaultConfig], config: Option<&Config>) -> Result<(), Invalid> {
    let mut names = HashSet::new();
    for (i, f) in faults.iter().enumerate() {
        let key = |k: &str| format!("faults[{i}].{k}");
        check_name(f.name.get_ref(), f.name.span(), key("name"))?;
        if !names.insert(f.name.get_ref().as_str()) {
            return Err(invalid(
                f.name.span(),
                key("name"),
                format!("a fault named {:?} already exists", f.name.get_ref()),
            ));
        }
        percent(&f.percent, key("percent"))?;
        if let Some(p) = &f.clients_percent {
            percent(p, key("clients_percent"))?;
        }
        check_target(f, config, &key)?;
        check_effects(f, &key)?;
        if let Some(h) = &f.header {
            if http::HeaderName::from_bytes(h.get_ref().as_bytes()).is_err() {
                return Err(invalid(
                    h.span(),
                    key("header"),
                    format!("{:?} is not a header name", h.get_ref()),
                ));
            }
            if f.trusted_sources.is_empty() {
                return Err(invalid(
                    h.span(),
                    key("header"),
                    "a trigger header needs trusted_sources (the networks allowed to send it); anyone could inject the fault otherwise",
                ));
            }
        } else if let Some(first) = f.trusted_sources.first() {
            return Err(invalid(
                first.span(),
                key("trusted_sources"),
                "trusted_sources is for the trigger header; set `header` too",
            ));
        }
        for (j, s) in f.trusted_sources.iter().enumerate() {
            s.get_ref()
                .parse::<Cidr>()
                .map_err(|m| invalid(s.span(), key(&format!("trusted_sources[{j}]")), m))?;
        }
        if f.ttl.get_ref().get().is_zero() {
            return Err(invalid(
                f.ttl.span(),
                key("ttl"),
                "a ttl of 0 would remove the fault at once",
            ));
        }
    }
    Ok(())
}

/// The `[chaos]` switch and the configuration's `[[faults]]`.
pub(super) fn check_config(config: &Config) -> Result<(), Invalid> {
    if let Some(f) = config.faults.first()
        && !config.chaos.enabled
    {
        return Err(invalid(
            f.name.span(),
            "faults[0].name".into(),
            "fault injection is off; set `enabled = true` under [chaos] to allow faults",
        ));
    }
    check(&config.faults, Some(config))
}

fn check_target(
    f: &FaultConfig,
    config: Option<&Config>,
    key: &dyn Fn(&str) -> String,
) -> Result<(), Invalid> {
    match (&f.route, &f.cluster) {
        (Some(_), Some(c)) => Err(invalid(
            c.span(),
            key("cluster"),
            "set `route` or `cluster`, not both",
        )),
        (None, None) => Err(invalid(
            f.name.span(),
            key("name"),
            "a fault needs a target: set `route`, or `cluster` (and `endpoint` for one endpoint)",
        )),
        (Some(r), None) => {
            if let Some(e) = &f.endpoint {
                return Err(invalid(
                    e.span(),
                    key("endpoint"),
                    "an endpoint belongs to a cluster: set `cluster`, not `route`",
                ));
            }
            if let Some(config) = config
                && !config
                    .routes
                    .iter()
                    .any(|x| x.name.get_ref() == r.get_ref())
            {
                return Err(invalid(
                    r.span(),
                    key("route"),
                    format!(
                        "no route named {:?}; routes: {}",
                        r.get_ref(),
                        list(config.routes.iter().map(|x| x.name.get_ref().as_str()))
                    ),
                ));
            }
            Ok(())
        }
        (None, Some(c)) => {
            let Some(config) = config else {
                return Ok(());
            };
            let Some(cluster) = config
                .clusters
                .iter()
                .find(|x| x.name.get_ref() == c.get_ref())
            else {
                return Err(invalid(
                    c.span(),
                    key("cluster"),
                    format!(
                        "no cluster named {:?}; clusters: {}",
                        c.get_ref(),
                        list(config.clusters.iter().map(|x| x.name.get_ref().as_str()))
                    ),
                ));
            };
            if let Some(e) = &f.endpoint
                && !cluster
                    .endpoints
                    .iter()
                    // A name may resolve to it: only IP endpoints can be
                    // checked before the lookups.
                    .any(|x| x.address.get_ref().ip().is_none_or(|ip| ip == *e.get_ref()))
            {
                return Err(invalid(
                    e.span(),
                    key("endpoint"),
                    format!("cluster {:?} has no endpoint {}", c.get_ref(), e.get_ref()),
                ));
            }
            Ok(())
        }
    }
}

fn check_effects(f: &FaultConfig, key: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    if let (Some(_), Some(d)) = (&f.delay, &f.delay_distribution) {
        return Err(invalid(
            d.span(),
            key("delay_distribution"),
            "set `delay` (with `delay_jitter`) or `delay_distribution`, not both",
        ));
    }
    if let (None, Some(j)) = (&f.delay, &f.delay_jitter) {
        return Err(invalid(
            j.span(),
            key("delay_jitter"),
            "delay_jitter adds to `delay`; set `delay` too",
        ));
    }
    if let Some(d) = &f.delay_distribution {
        distribution(d, &key("delay_distribution"))?;
    }
    let mut outcomes = Vec::new();
    if let Some(a) = &f.abort {
        if !(400..=599).contains(a.get_ref()) {
            return Err(invalid(
                a.span(),
                key("abort"),
                format!("{} is not an error status; use 400 to 599", a.get_ref()),
            ));
        }
        outcomes.push(("abort", a.span()));
    }
    if let Some(g) = &f.grpc_abort {
        if grpc_code(g.get_ref()).is_none() {
            return Err(invalid(
                g.span(),
                key("grpc_abort"),
                format!(
                    "{:?} is not a gRPC status to fail with; use one of {}",
                    g.get_ref(),
                    list(GRPC_CODES[1..].iter().copied())
                ),
            ));
        }
        outcomes.push(("grpc_abort", g.span()));
    }
    if let Some(r) = &f.reset
        && *r.get_ref()
    {
        outcomes.push(("reset", r.span()));
    }
    if let Some(t) = &f.truncate_after {
        outcomes.push(("truncate_after", t.span()));
    }
    if let [_, (second, span), ..] = outcomes.as_slice() {
        return Err(invalid(
            span.clone(),
            key(second),
            format!(
                "a fault has one outcome: {}, not several",
                list(outcomes.iter().map(|(k, _)| *k))
            ),
        ));
    }
    if let Some(b) = &f.bandwidth
        && b.get_ref().0 == 0
    {
        return Err(invalid(
            b.span(),
            key("bandwidth"),
            "a bandwidth of 0 would stall every response; use reset = true for that",
        ));
    }
    let does_something = f.delay.is_some()
        || f.delay_distribution.is_some()
        || !outcomes.is_empty()
        || f.bandwidth.is_some()
        || f.slow_headers.is_some();
    if !does_something {
        return Err(invalid(
            f.name.span(),
            key("name"),
            "the fault does nothing: set delay, delay_distribution, abort, grpc_abort, reset, truncate_after, bandwidth or slow_headers",
        ));
    }
    Ok(())
}

/// `{ p50 = "20ms", p99 = "500ms" }` as ascending (percentile, delay)
/// points.
pub fn parse_distribution(
    d: &Spanned<BTreeMap<String, Duration>>,
) -> Result<Vec<(f64, std::time::Duration)>, String> {
    let mut points = Vec::new();
    for (k, v) in d.get_ref() {
        let p: f64 = k
            .strip_prefix('p')
            .and_then(|n| n.parse().ok())
            .filter(|p| *p > 0.0 && *p <= 100.0)
            .ok_or_else(|| {
                format!("{k:?} is not a percentile; write p50, p90, p99.9 (above 0, at most 100)")
            })?;
        points.push((p, v.get()));
    }
    if points.is_empty() {
        return Err(
            "give at least one percentile, e.g. { p50 = \"20ms\", p99 = \"500ms\" }".into(),
        );
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some(w) = points.windows(2).find(|w| w[1].1 < w[0].1) {
        return Err(format!(
            "p{} is shorter than p{}; a higher percentile cannot be faster",
            w[1].0, w[0].0
        ));
    }
    Ok(points)
}

fn distribution(d: &Spanned<BTreeMap<String, Duration>>, key: &str) -> Result<(), Invalid> {
    parse_distribution(d)
        .map(|_| ())
        .map_err(|m| invalid(d.span(), key.to_owned(), m))
}

/// Reads a document of `[[faults]]` (e.g. a file an operator loads, or a
/// test), checked against `config` when given. Errors name the file, line,
/// column and key, as the main configuration's do.
pub fn parse_faults(
    path: &Path,
    text: &str,
    config: Option<&Config>,
) -> Result<Vec<FaultConfig>, ConfigError> {
    let at = |span: Option<std::ops::Range<usize>>, key: String, message: String| {
        let (line, column) = span.map_or((0, 0), |s| super::line_column(text, s.start));
        ConfigError {
            file: path.to_owned(),
            line,
            column,
            key,
            message,
        }
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| at(e.span(), String::new(), e.message().to_owned()))?;
    let file: FaultsFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        at(inner.span(), key, inner.message().to_owned())
    })?;
    check(&file.faults, config).map_err(|v| at(Some(v.span), v.key, v.message))?;
    Ok(file.faults)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::build::fault as build;
    use crate::chaos::fault::{Delay, Fault, Outcome, Target};
    use std::time::Duration as StdDuration;

    const CONFIG: &str = r#"
[[listeners]]
name = "web"
address = "127.0.0.1:8080"

[[clusters]]
name = "app"
[[clusters.endpoints]]
address = "127.0.0.1:9001"
[[clusters.endpoints]]
address = "127.0.0.1:9003"

[[routes]]
name = "api"
cluster = "app"
"#;

    fn config() -> Config {
        crate::config::parse(Path::new("levee.toml"), CONFIG).unwrap()
    }

    fn parse(text: &str) -> Result<Vec<FaultConfig>, ConfigError> {
        parse_faults(Path::new("faults.toml"), text, Some(&config()))
    }

    fn refused(text: &str) -> String {
        match parse(text) {
            Ok(f) => panic!("accepted: {f:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_full_fault_builds() {
        let text = r#"
[[faults]]
name = "slow-b3"
cluster = "app"
endpoint = "127.0.0.1:9003"
percent = 10
delay = "500ms"
delay_jitter = "100ms"
abort = 503
header = "x-Levee-Fault"
trusted_sources = ["10.0.0.0/8", "::1"]
clients_percent = 5.5
ttl = "60s"
"#;
        let faults = parse(text).unwrap_or_else(|e| panic!("{e}"));
        let f = build(&faults[0]);
        assert_eq!(
            f.target,
            Target::Endpoint {
                cluster: "app".into(),
                address: "127.0.0.1:9003".parse().unwrap()
            }
        );
        assert_eq!(
            f.effects.delay,
            Some(Delay::Jitter {
                base: StdDuration::from_millis(500),
                jitter: StdDuration::from_millis(100)
            })
        );
        assert_eq!(f.effects.outcome, Outcome::Abort(503));
        assert_eq!(f.effects.bandwidth, None);
        assert_eq!(f.selector.percent, 10.0);
        assert_eq!(f.selector.subset.as_ref().map(|s| s.percent), Some(5.5));
        let trigger = f.selector.trigger.as_ref().unwrap();
        assert_eq!(trigger.header, "x-levee-fault");
        assert_eq!(trigger.trusted.len(), 2);
        assert_eq!(f.ttl, Some(StdDuration::from_secs(60)));
    }

    #[test]
    fn a_grpc_abort_builds_with_its_code() {
        for (name, code) in [
            ("unavailable", 14),
            ("resource_exhausted", 8),
            ("cancelled", 1),
            ("unauthenticated", 16),
        ] {
            let text = format!(
                "[[faults]]\nname = \"g\"\nroute = \"api\"\npercent = 100\ngrpc_abort = \"{name}\"\nttl = \"1m\"\n"
            );
            let faults = parse(&text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                build(&faults[0]).effects.outcome,
                Outcome::GrpcAbort(code),
                "{name}"
            );
        }
    }

    #[test]
    fn distributions_and_other_outcomes() {
        let text = r#"
[[faults]]
name = "tail"
route = "api"
percent = 100
delay_distribution = { p50 = "20ms", p99 = "500ms", "p99.9" = "1s" }
ttl = "1h"

[[faults]]
name = "rst"
cluster = "app"
percent = 0.5
reset = true
ttl = "60s"
"#;
        let faults: Vec<Fault> = parse(text).unwrap().iter().map(build).collect();
        assert_eq!(
            faults[0].effects.delay,
            Some(Delay::Distribution(vec![
                (50.0, StdDuration::from_millis(20)),
                (99.0, StdDuration::from_millis(500)),
                (99.9, StdDuration::from_secs(1)),
            ]))
        );
        assert_eq!(faults[0].target, Target::Route("api".into()));
        assert_eq!(faults[1].effects.outcome, Outcome::Reset);
        assert_eq!(faults[1].selector.percent, 0.5);
        assert_eq!(faults[1].ttl, Some(StdDuration::from_secs(60)));
    }

    #[test]
    fn a_percentage_outside_0_to_100_is_refused_with_its_position() {
        let e = refused(
            "[[faults]]\nname = \"f\"\nttl = \"60s\"\ncluster = \"app\"\npercent = 150\nabort = 503\n",
        );
        assert_eq!(
            e,
            "faults.toml:5:11: faults[0].percent: 150 is not a percentage; use 0 to 100"
        );
        let e = refused(
            "[[faults]]\nname = \"f\"\nttl = \"60s\"\ncluster = \"app\"\npercent = -1\nabort = 503\n",
        );
        assert!(e.starts_with("faults.toml:5:11: faults[0].percent:"), "{e}");
        let e = refused(
            "[[faults]]\nname = \"f\"\nttl = \"60s\"\ncluster = \"app\"\npercent = 5\nclients_percent = 101\nabort = 503\n",
        );
        assert!(
            e.starts_with("faults.toml:6:19: faults[0].clients_percent:"),
            "{e}"
        );
        let e =
            refused("[[faults]]\nname = \"f\"\nttl = \"60s\"\ncluster = \"app\"\nabort = 503\n");
        assert!(e.contains("missing field `percent`"), "{e}");
    }

    #[test]
    fn targets_must_exist() {
        let e = refused(
            "[[faults]]\nname = \"f\"\nttl = \"60s\"\nroute = \"nope\"\npercent = 5\nabort = 503\n",
        );
        assert!(
            e.starts_with(
                "faults.toml:4:9: faults[0].route: no route named \"nope\"; routes: \"api\""
            ),
            "{e}"
        );
        let e = refused(
            "[[faults]]\nname = \"f\"\nttl = \"60s\"\ncluster = \"db\"\npercent = 5\nabort = 503\n",
        );
        assert!(
            e.contains("faults[0].cluster: no cluster named \"db\""),
            "{e}"
        );
        let e = refused(
            "[[faults]]\nname = \"f\"\nttl = \"60s\"\ncluster = \"app\"\nendpoint = \"127.0.0.1:1\"\npercent = 5\nabort = 503\n",
        );
        assert!(
            e.contains("faults[0].endpoint: cluster \"app\" has no endpoint 127.0.0.1:1"),
            "{e}"
        );
        let e = refused("[[faults]]\nname = \"f\"\nttl = \"60s\"\npercent = 5\nabort = 503\n");
        assert!(e.contains("needs a target"), "{e}");
        let e = refused(
            "[[faults]]\nname = \"f\"\nttl = \"60s\"\nroute = \"api\"\ncluster = \"app\"\npercent = 5\nabort = 503\n",
        );
        assert!(e.contains("not both"), "{e}");
        let e = refused(
            "[[faults]]\nname = \"f\"\nttl = \"60s\"\nroute = \"api\"\nendpoint = \"127.0.0.1:9001\"\npercent = 5\nabort = 503\n",
        );
        assert!(e.contains("set `cluster`, not `route`"), "{e}");
        // Without a config, existence is not checked (an operator's file
        // checked before the proxy's config is known).
        let ok = parse_faults(
            Path::new("f.toml"),
            "[[faults]]\nname = \"f\"\nttl = \"60s\"\nroute = \"any\"\npercent = 5\nabort = 503\n",
            None,
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn effects_are_checked() {
        let base = "[[faults]]\nname = \"f\"\nttl = \"60s\"\ncluster = \"app\"\npercent = 5\n";
        let cases = [
            ("", "faults[0].name: the fault does nothing"),
            (
                "abort = 200\n",
                "faults[0].abort: 200 is not an error status",
            ),
            (
                "abort = 503\nreset = true\n",
                "faults[0].reset: a fault has one outcome: \"abort\", \"reset\"",
            ),
            (
                "abort = 503\ngrpc_abort = \"unavailable\"\n",
                "faults[0].grpc_abort: a fault has one outcome: \"abort\", \"grpc_abort\"",
            ),
            (
                "grpc_abort = \"ok\"\n",
                "faults[0].grpc_abort: \"ok\" is not a gRPC status to fail with; use one of \"cancelled\"",
            ),
            (
                "grpc_abort = 14\n",
                "faults[0].grpc_abort: invalid type: integer `14`, expected a string",
            ),
            (
                "delay_jitter = \"5ms\"\n",
                "faults[0].delay_jitter: delay_jitter adds to `delay`",
            ),
            (
                "delay = \"5ms\"\ndelay_distribution = { p50 = \"1ms\" }\n",
                "faults[0].delay_distribution: set `delay`",
            ),
            (
                "delay_distribution = { median = \"1ms\" }\n",
                "\"median\" is not a percentile",
            ),
            (
                "delay_distribution = { p0 = \"1ms\" }\n",
                "\"p0\" is not a percentile",
            ),
            (
                "delay_distribution = { p50 = \"100ms\", p99 = \"10ms\" }\n",
                "p99 is shorter than p50",
            ),
            ("delay_distribution = {}\n", "at least one percentile"),
            ("bandwidth = 0\n", "faults[0].bandwidth: a bandwidth of 0"),
            (
                "abort = 503\nheader = \"x-fault\"\n",
                "faults[0].header: a trigger header needs trusted_sources",
            ),
            (
                "abort = 503\nheader = \"bad header\"\ntrusted_sources = [\"::1\"]\n",
                "is not a header name",
            ),
            (
                "abort = 503\ntrusted_sources = [\"::1\"]\n",
                "set `header` too",
            ),
            (
                "abort = 503\nheader = \"x-fault\"\ntrusted_sources = [\"10.0.0.0/40\"]\n",
                "faults[0].trusted_sources[0]:",
            ),
            (
                "truncate_after = \"1KiB\"\nreset = true\n",
                "a fault has one outcome",
            ),
            ("abort = 503\nblast = 5\n", "unknown field `blast`"),
        ];
        for (extra, want) in cases {
            let e = refused(&format!("{base}{extra}"));
            assert!(e.starts_with("faults.toml:"), "{e}");
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        let e = refused(
            "[[faults]]\nname = \"f\"\nttl = \"0s\"\ncluster = \"app\"\npercent = 5\nabort = 503\n",
        );
        assert!(e.contains("faults[0].ttl: a ttl of 0"), "{e}");
        let e = refused("[[faults]]\nname = \"f\"\ncluster = \"app\"\npercent = 5\nabort = 503\n");
        assert!(e.contains("missing field `ttl`"), "{e}");
        // Every effect applies on a route as on a cluster.
        let shaped = parse(
            "[[faults]]\nname = \"f\"\nttl = \"1s\"\nroute = \"api\"\npercent = 5\nreset = true\n\n[[faults]]\nname = \"g\"\nttl = \"1s\"\ncluster = \"app\"\npercent = 5\ntruncate_after = \"1KiB\"\nbandwidth = \"2KiB\"\nslow_headers = \"1s\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let g = build(&shaped[1]);
        assert_eq!(g.effects.outcome, Outcome::Truncate(1024));
        assert_eq!(g.effects.bandwidth, Some(2048));
        assert_eq!(g.effects.slow_headers, Some(StdDuration::from_secs(1)));
        let e = refused(&format!("{base}abort = 503\n{base}abort = 503\n"));
        assert!(
            e.contains("faults[1].name: a fault named \"f\" already exists"),
            "{e}"
        );
    }
}
