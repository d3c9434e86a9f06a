//! The faults in force in a running Levee: the `FaultSet` core behind a
//! lock, with the events logged and counted, a quick "none" for the request
//! path, and what a reload does to them.
//!
//! The request path asks `for_route` (once per request) and `for_try` (per
//! try); with no fault in force that is one atomic load. A hit comes back
//! as a `Hit` (the delay drawn, the outcome), counted per fault and effect.
//!
//! A reload (`configure`): `[[faults]]` of the new file start (a changed
//! one replaces the running one and restarts its ttl; an unchanged one runs
//! on, its ttl unchanged); a configured fault that left the file stops; a
//! fault posted through the admin API runs on unless its route or cluster
//! is gone. `chaos.enabled = false` stops every fault.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::fault::{Delay, Event, Fault, FaultSet, Outcome, RequestFacts, Target};
use super::shape::Shape;
use super::slowest::Slowest;
use crate::config::Config;
use crate::observe::chaos::{ChaosMetrics, FaultEventLabels, InjectionLabels};

/// What a fault does to one request or try.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub fault: String,
    pub delay: Duration,
    pub outcome: Outcome,
    /// The response head is held back this long once it arrived.
    pub slow_headers: Option<Duration>,
    /// Response body bytes per second.
    pub bandwidth: Option<u64>,
}

impl Hit {
    /// How the response body is shaped, if it is.
    pub fn shape(&self) -> Option<Shape> {
        let truncate_after = match self.outcome {
            Outcome::Truncate(n) => Some(n),
            _ => None,
        };
        (truncate_after.is_some() || self.bandwidth.is_some()).then(|| Shape {
            fault: self.fault.clone(),
            truncate_after,
            bandwidth: self.bandwidth,
        })
    }
}

#[derive(Default)]
struct State {
    set: FaultSet,
    /// The faults the configuration started, as configured: a reload
    /// compares with these.
    configured: Vec<Fault>,
    /// Injections per fault, for `GET /faults`.
    hits: HashMap<String, u64>,
}

/// The active faults of the process.
#[derive(Default)]
pub struct Faults {
    state: Mutex<State>,
    /// Whether any fault is in the set: the request path's fast "none".
    armed: AtomicBool,
    /// The slowest requests lately, and which faults hit them
    /// (`GET /chaos/requests`).
    pub slowest: Slowest,
}

/// One fault as `GET /faults` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultStatus {
    pub name: String,
    pub target: String,
    pub percent: f64,
    pub effects: Vec<String>,
    /// Seconds left before it removes itself.
    pub ttl_remaining_seconds: Option<f64>,
    pub injections: u64,
    /// `config` or `admin`.
    pub origin: &'static str,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any fault is in the set (expired ones until the sweep).
    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    fn rearm(&self, state: &State) {
        self.armed
            .store(state.set.active_names().next().is_some(), Ordering::Release);
    }

    /// The fault on a request of `route` (before any try), if one hits it.
    pub fn for_route(
        &self,
        route: &str,
        req: &RequestFacts,
        draw: u64,
        now: Instant,
        metrics: &ChaosMetrics,
    ) -> Option<Hit> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.lock();
        let fault = state.set.for_route(route, req, draw, now)?;
        let hit = hit(fault, draw);
        Some(count(&mut state, hit, metrics))
    }

    /// The fault on a try to `address` of `cluster`, if one hits it.
    pub fn for_try(
        &self,
        cluster: &str,
        address: SocketAddr,
        req: &RequestFacts,
        draw: u64,
        now: Instant,
        metrics: &ChaosMetrics,
    ) -> Option<Hit> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.lock();
        let fault = state.set.for_try(cluster, address, req, draw, now)?;
        let hit = hit(fault, draw);
        Some(count(&mut state, hit, metrics))
    }

    /// Starts a fault (or replaces the one of its name).
    pub fn add(&self, fault: Fault, now: Instant, metrics: &ChaosMetrics) {
        let mut state = self.lock();
        let ttl = fault.ttl;
        let event = state.set.add(fault, now);
        state.hits.entry(event.name().to_owned()).or_default();
        tracing::info!(fault = event.name(), ?ttl, "fault {}", event.kind());
        record(&[event], metrics);
        self.settle(&state, metrics);
    }

    /// Stops a fault; false if there is none of that name.
    pub fn remove(&self, name: &str, metrics: &ChaosMetrics) -> bool {
        let mut state = self.lock();
        let Some(event) = state.set.remove(name) else {
            return false;
        };
        state.hits.remove(name);
        tracing::info!(fault = name, "fault removed");
        record(&[event], metrics);
        self.settle(&state, metrics);
        true
    }

    /// Drops the faults whose ttl has passed.
    pub fn expire(&self, now: Instant, metrics: &ChaosMetrics) {
        if !self.armed.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        let events = state.set.expire(now);
        for e in &events {
            state.hits.remove(e.name());
            tracing::info!(fault = e.name(), "fault expired (its ttl passed)");
        }
        record(&events, metrics);
        self.settle(&state, metrics);
    }

    fn settle(&self, state: &State, metrics: &ChaosMetrics) {
        self.rearm(state);
        metrics.active.set(state.set.active_names().count() as i64);
    }

    /// Applies a (new or reloaded) configuration: see the module doc.
    pub fn configure(&self, config: &Config, now: Instant, metrics: &ChaosMetrics) {
        let enabled = config.chaos.enabled;
        let wanted: Vec<Fault> = if enabled {
            config
                .faults
                .iter()
                .map(crate::chaos::build::fault)
                .collect()
        } else {
            Vec::new()
        };
        let mut state = self.lock();
        let mut events = Vec::new();
        let names: Vec<String> = state.set.active_names().map(str::to_owned).collect();
        for name in names {
            let was_configured = state.configured.iter().any(|f| f.name == name);
            let target_gone = state
                .set
                .get(&name)
                .is_some_and(|f| !target_exists(&f.target, config));
            let stays = enabled
                && !target_gone
                && (!was_configured || wanted.iter().any(|f| f.name == name));
            if !stays && let Some(e) = state.set.remove(&name) {
                state.hits.remove(&name);
                events.push(e);
            }
        }
        for fault in &wanted {
            let unchanged =
                state.configured.contains(fault) && state.set.get(&fault.name).is_some();
            if !unchanged {
                state.hits.entry(fault.name.clone()).or_default();
                events.push(state.set.add(fault.clone(), now));
            }
        }
        state.configured = wanted;
        for e in &events {
            tracing::info!(fault = e.name(), "fault {} (configuration)", e.kind());
        }
        record(&events, metrics);
        self.settle(&state, metrics);
    }

    /// The faults in force, for `GET /faults`.
    pub fn status(&self, now: Instant) -> Vec<FaultStatus> {
        let state = self.lock();
        state
            .set
            .active(now)
            .map(|f| FaultStatus {
                name: f.name.clone(),
                target: match &f.target {
                    Target::Route(r) => format!("route {r}"),
                    Target::Cluster(c) => format!("cluster {c}"),
                    Target::Endpoint { cluster, address } => {
                        format!("endpoint {address} of cluster {cluster}")
                    }
                },
                percent: f.selector.percent,
                effects: effects(f),
                ttl_remaining_seconds: state.set.remaining(&f.name, now).map(|d| d.as_secs_f64()),
                injections: state.hits.get(&f.name).copied().unwrap_or(0),
                origin: if state.configured.iter().any(|c| c.name == f.name) {
                    "config"
                } else {
                    "admin"
                },
            })
            .collect()
    }
}

fn hit(fault: &Fault, draw: u64) -> Hit {
    // The selector used the draw's top bits against the percentage; the
    // delay takes another stretch of it, so that the requests hit are not
    // only the short (or long) delays of a distribution.
    let delay = fault
        .effects
        .delay
        .as_ref()
        .map_or(Duration::ZERO, |d: &Delay| d.sample(draw.rotate_left(29)));
    Hit {
        fault: fault.name.clone(),
        delay,
        outcome: fault.effects.outcome,
        slow_headers: fault.effects.slow_headers,
        bandwidth: fault.effects.bandwidth,
    }
}

fn count(state: &mut State, hit: Hit, metrics: &ChaosMetrics) -> Hit {
    *state.hits.entry(hit.fault.clone()).or_default() += 1;
    let effect = match hit.outcome {
        Outcome::Abort(_) => "abort",
        Outcome::GrpcAbort(_) => "grpc_abort",
        Outcome::Reset => "reset",
        Outcome::Truncate(_) => "truncate",
        Outcome::Forward if hit.bandwidth.is_some() => "bandwidth",
        Outcome::Forward if hit.slow_headers.is_some() && hit.delay.is_zero() => "slow_headers",
        Outcome::Forward => "delay",
    };
    metrics
        .injections
        .get_or_create(&InjectionLabels {
            fault: hit.fault.clone(),
            effect,
        })
        .inc();
    hit
}

fn record(events: &[Event], metrics: &ChaosMetrics) {
    for e in events {
        metrics
            .events
            .get_or_create(&FaultEventLabels {
                fault: e.name().to_owned(),
                event: e.kind(),
            })
            .inc();
    }
}

fn target_exists(target: &Target, config: &Config) -> bool {
    match target {
        Target::Route(r) => config.routes.iter().any(|x| x.name.get_ref() == r),
        Target::Cluster(c) | Target::Endpoint { cluster: c, .. } => {
            config.clusters.iter().any(|x| x.name.get_ref() == c)
        }
    }
}

/// A fault's effects in words.
fn effects(f: &Fault) -> Vec<String> {
    let mut out = Vec::new();
    match &f.effects.delay {
        Some(Delay::Fixed(d)) => out.push(format!("delay {d:?}")),
        Some(Delay::Jitter { base, jitter }) => {
            out.push(format!("delay {base:?} + up to {jitter:?}"))
        }
        Some(Delay::Distribution(points)) => out.push(format!(
            "delay {}",
            points
                .iter()
                .map(|(p, d)| format!("p{p} {d:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => {}
    }
    match f.effects.outcome {
        Outcome::Abort(s) => out.push(format!("abort {s}")),
        Outcome::GrpcAbort(c) => out.push(format!("grpc abort, grpc-status {c}")),
        Outcome::Reset => out.push("reset".into()),
        Outcome::Truncate(n) => out.push(format!("truncate after {n} bytes")),
        Outcome::Forward => {}
    }
    if let Some(b) = f.effects.bandwidth {
        out.push(format!("bandwidth {b} B/s"));
    }
    if let Some(d) = f.effects.slow_headers {
        out.push(format!("slow headers {d:?}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(faults: &str) -> Config {
        let text = format!(
            r#"
[[listeners]]
name = "web"
address = "127.0.0.1:8080"

[[clusters]]
name = "app"
[[clusters.endpoints]]
address = "127.0.0.1:9001"

[[routes]]
name = "api"
cluster = "app"

[chaos]
enabled = true
{faults}"#
        );
        crate::config::parse(Path::new("levee.toml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    const SLOW: &str = "[[faults]]\nname = \"slow\"\ncluster = \"app\"\npercent = 100\ndelay = \"50ms\"\nttl = \"60s\"\n";

    fn facts(headers: &http::HeaderMap) -> RequestFacts<'_> {
        RequestFacts {
            peer: "127.0.0.1".parse().unwrap(),
            headers,
            client_key: b"127.0.0.1",
        }
    }

    #[test]
    fn a_reload_keeps_unchanged_faults_and_stops_removed_ones() {
        let m = ChaosMetrics::default();
        let faults = Faults::default();
        let t0 = Instant::now();
        let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let h = http::HeaderMap::new();
        faults.configure(&config(SLOW), t0, &m);
        let hit = faults.for_try("app", a, &facts(&h), 0, t0, &m).unwrap();
        assert_eq!(hit.delay, Duration::from_millis(50));
        assert_eq!(faults.status(t0)[0].injections, 1);
        assert_eq!(faults.status(t0)[0].origin, "config");
        // Unchanged: the ttl runs on from the first start.
        let t1 = t0 + Duration::from_secs(30);
        faults.configure(&config(SLOW), t1, &m);
        let left = faults.status(t1)[0].ttl_remaining_seconds.unwrap();
        assert!((left - 30.0).abs() < 0.01, "{left}");
        // A posted fault runs on across a reload; the configured one that
        // left the file stops.
        let posted = crate::config::chaos::parse_faults(
            Path::new("POST /faults"),
            "[[faults]]\nname = \"boom\"\nroute = \"api\"\npercent = 100\nabort = 503\nttl = \"60s\"\n",
            None,
        )
        .unwrap();
        faults.add(crate::chaos::build::fault(&posted[0]), t1, &m);
        faults.configure(&config(""), t1, &m);
        let names: Vec<String> = faults.status(t1).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["boom"]);
        // Switching chaos off stops everything, and the fast path is off.
        let mut off = config("");
        off.chaos.enabled = false;
        faults.configure(&off, t1, &m);
        assert!(faults.status(t1).is_empty());
        assert!(faults.for_route("api", &facts(&h), 0, t1, &m).is_none());
        assert_eq!(m.active.get(), 0);
    }

    #[test]
    fn expiry_counts_an_event_and_disarms() {
        let m = ChaosMetrics::default();
        let faults = Faults::default();
        let t0 = Instant::now();
        faults.configure(&config(SLOW), t0, &m);
        assert_eq!(m.active.get(), 1);
        faults.expire(t0 + Duration::from_secs(60), &m);
        assert_eq!(m.active.get(), 0);
        let expired = m
            .events
            .get_or_create(&FaultEventLabels {
                fault: "slow".into(),
                event: "expired",
            })
            .get();
        assert_eq!(expired, 1);
        assert!(!faults.armed.load(Ordering::Acquire));
    }
}
