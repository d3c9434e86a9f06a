//! One try of a request, as the cluster sees it, without HTTP: which
//! endpoint takes it (admitted by the cluster's breaker and the endpoint's
//! own), and what its result teaches the cluster (the endpoint's latency
//! estimate, outlier detection, both breakers). The HTTP pipeline uses these
//! two calls; a TCP proxy can use them unchanged.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::guard::Pass;
use super::{Cluster, Endpoint, PickInput};
use crate::observe::Metrics;
use crate::observe::metrics::EndpointLabels;
use crate::resilience::policy::TryResult;

/// Why no try can be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The cluster's breaker is open; it may admit calls again after this.
    BreakerOpen(Duration),
    /// No endpoint may take the try (none usable, or every one's breaker
    /// refused it).
    NoEndpoint,
}

/// The endpoint chosen for a try, with the passes of the breakers that
/// admitted it; give it back to `Cluster::record` with the try's result.
pub struct Chosen<'c> {
    pub endpoint: &'c Endpoint,
    cluster_pass: Option<Pass>,
    endpoint_pass: Option<Pass>,
}

/// A try whose result is known only later (a gRPC status in the trailers
/// after the response head): the breakers' passes, held until then.
pub struct Pending {
    address: SocketAddr,
    cluster_pass: Option<Pass>,
    endpoint_pass: Option<Pass>,
}

impl Chosen<'_> {
    /// Holds the passes until the try's result is known (`record_pending`).
    pub fn pending(self) -> Pending {
        Pending {
            address: self.endpoint.address,
            cluster_pass: self.cluster_pass,
            endpoint_pass: self.endpoint_pass,
        }
    }
}

impl Cluster {
    /// `record` for a try whose result came late. An endpoint a reload
    /// removed meanwhile is not judged (its passes are given back).
    pub fn record_pending(
        &self,
        pending: Pending,
        outcome: TryResult,
        took: Duration,
        now: Instant,
        metrics: &Metrics,
    ) {
        let Some(endpoint) = self.endpoints.iter().find(|e| e.address == pending.address) else {
            return;
        };
        let chosen = Chosen {
            endpoint,
            cluster_pass: pending.cluster_pass,
            endpoint_pass: pending.endpoint_pass,
        };
        self.record(chosen, outcome, took, now, metrics);
    }

    /// An endpoint for the next try, admitted by the cluster's breaker and
    /// its own: `pinned` if given (session affinity), otherwise a pick that
    /// avoids the endpoints already `tried` when another is available.
    pub fn pick_for_try<'c>(
        &'c self,
        pick: &mut PickInput,
        mut pinned: Option<&'c Endpoint>,
        tried: &[SocketAddr],
        now: Instant,
    ) -> Result<Chosen<'c>, Unavailable> {
        let cluster_pass = match &self.guard.breaker {
            Some(b) => Some(b.allow(now).map_err(Unavailable::BreakerOpen)?),
            None => None,
        };
        // Endpoints whose own breaker refused this request.
        let mut refused: Vec<SocketAddr> = Vec::new();
        for _ in 0..=self.endpoints.len() {
            let endpoint = match pinned.take() {
                Some(e) => e,
                None => {
                    pick.avoid.clear();
                    pick.avoid.extend_from_slice(tried);
                    pick.avoid.extend_from_slice(&refused);
                    match self.pick(pick) {
                        Some(e) => e,
                        // Every endpoint was tried: one of them again
                        // rather than none.
                        None if !tried.is_empty() => {
                            pick.avoid.clone_from(&refused);
                            self.pick(pick).ok_or(Unavailable::NoEndpoint)?
                        }
                        None => return Err(Unavailable::NoEndpoint),
                    }
                }
            };
            let endpoint_pass = match &endpoint.breaker {
                None => None,
                Some(b) => match b.allow(now) {
                    Ok(pass) => Some(pass),
                    Err(_) => {
                        refused.push(endpoint.address);
                        continue;
                    }
                },
            };
            return Ok(Chosen {
                endpoint,
                cluster_pass,
                endpoint_pass,
            });
        }
        Err(Unavailable::NoEndpoint)
    }

    /// Feeds one try's result (`took`: from the try's start to its result)
    /// to the endpoint's try counts (availability), its latency estimate and outlier detector and to the
    /// breakers that admitted it. An ejection is logged and counted.
    pub fn record(
        &self,
        chosen: Chosen<'_>,
        outcome: TryResult,
        took: Duration,
        now: Instant,
        metrics: &Metrics,
    ) {
        let endpoint = chosen.endpoint;
        let ok = outcome.is_ok();
        endpoint.live.tries.record(ok, now);
        if self.balance.uses_latency() {
            endpoint.live.latency.record(took, ok, now);
        }
        if let Some(cfg) = &self.outlier {
            let max = self.max_ejection_percent;
            if let Some((reason, duration)) = endpoint.live.record_response(ok, cfg, max, self, now)
            {
                tracing::warn!(
                    cluster = %self.name,
                    endpoint = %endpoint.address,
                    "endpoint ejected for {duration:?}: {reason}"
                );
                crate::events::emit(
                    crate::events::Kind::Ejection,
                    format!("endpoint {} of cluster {}", endpoint.address, self.name),
                    format!("ejected for {duration:?}"),
                    reason.to_string(),
                );
                let labels = EndpointLabels {
                    cluster: self.name.to_string(),
                    endpoint: endpoint.address.to_string(),
                };
                metrics.ejections.get_or_create(&labels).inc();
            }
        }
        for pass in [chosen.cluster_pass, chosen.endpoint_pass]
            .into_iter()
            .flatten()
        {
            pass.record(outcome, took, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::LiveRegistry;

    /// Two endpoints (ports 1 and 2) and the cluster keys `extra`.
    fn cluster(extra: &str) -> Cluster {
        let text = format!(
            "[server]\nallow_no_listeners = true\n[[clusters]]\nname = \"c\"\n{extra}\n\
             [[clusters.endpoints]]\naddress = \"127.0.0.1:1\"\n\
             [[clusters.endpoints]]\naddress = \"127.0.0.1:2\"\n"
        );
        let config = crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        Cluster::build(
            &config.clusters[0],
            &LiveRegistry::new(1),
            &Metrics::new(),
            true,
        )
    }

    fn input(now: Instant) -> PickInput {
        PickInput {
            now,
            key: 0,
            random: 7,
            avoid: Vec::new(),
        }
    }

    #[test]
    fn a_retry_goes_elsewhere_and_a_pin_wins() {
        let now = Instant::now();
        let c = cluster("");
        let tried = [c.endpoints[0].address];
        for _ in 0..20 {
            let chosen = c.pick_for_try(&mut input(now), None, &tried, now).unwrap();
            assert_eq!(chosen.endpoint.address.port(), 2);
        }
        let both = [c.endpoints[0].address, c.endpoints[1].address];
        assert!(
            c.pick_for_try(&mut input(now), None, &both, now).is_ok(),
            "every endpoint tried: one of them again rather than none"
        );
        let pinned = Some(&c.endpoints[0]);
        let chosen = c.pick_for_try(&mut input(now), pinned, &[], now).unwrap();
        assert_eq!(chosen.endpoint.address.port(), 1);
    }

    #[test]
    fn recorded_failures_open_the_breaker_and_eject() {
        let now = Instant::now();
        let c = cluster(
            "circuit_breaker = { consecutive_failures = 3, open_duration = \"10s\" }\n\
             outlier_detection = { consecutive_failures = 2 }",
        );
        let metrics = Metrics::new();
        for _ in 0..3 {
            let chosen = c.pick_for_try(&mut input(now), None, &[], now).unwrap();
            let took = Duration::from_millis(1);
            c.record(chosen, TryResult::ConnectFailure, took, now, &metrics);
        }
        let ejected = c
            .endpoints
            .iter()
            .filter(|e| e.live.is_ejected(now))
            .count();
        assert_eq!(ejected, 1, "two failures in a row eject (at most half)");
        match c.pick_for_try(&mut input(now), None, &[], now) {
            Err(Unavailable::BreakerOpen(wait)) => assert!(wait <= Duration::from_secs(10)),
            other => panic!("the cluster breaker is open: {:?}", other.err()),
        }
    }
}
