//! The runtime fault (`fault::Fault`) of a checked `[[faults]]` entry: the
//! configuration's types stay in `config::chaos`, which imports nothing of
//! `chaos`.

use super::fault::{Delay, Effects, Fault, Outcome, Selector, Subset, Target, Trigger};
use crate::config::chaos::{FaultConfig, grpc_code};

/// The runtime fault of a checked configuration.
pub fn fault(f: &FaultConfig) -> Fault {
    let target = match (&f.route, &f.cluster, &f.endpoint) {
        (Some(r), _, _) => Target::Route(r.get_ref().clone()),
        (None, Some(c), Some(e)) => Target::Endpoint {
            cluster: c.get_ref().clone(),
            address: *e.get_ref(),
        },
        (None, Some(c), None) => Target::Cluster(c.get_ref().clone()),
        // `check` refuses a fault without a target; one that slips through
        // targets nothing.
        (None, None, _) => Target::Route(String::new()),
    };
    let delay = match (&f.delay, &f.delay_jitter, &f.delay_distribution) {
        (Some(d), Some(j), _) => Some(Delay::Jitter {
            base: d.get_ref().get(),
            jitter: j.get_ref().get(),
        }),
        (Some(d), None, _) => Some(Delay::Fixed(d.get_ref().get())),
        (None, _, Some(dist)) => crate::config::chaos::parse_distribution(dist)
            .ok()
            .map(Delay::Distribution),
        (None, _, None) => None,
    };
    let outcome = if let Some(a) = &f.abort {
        Outcome::Abort(*a.get_ref())
    } else if let Some(code) = f.grpc_abort.as_ref().and_then(|g| grpc_code(g.get_ref())) {
        Outcome::GrpcAbort(code)
    } else if f.reset.as_ref().is_some_and(|r| *r.get_ref()) {
        Outcome::Reset
    } else if let Some(t) = &f.truncate_after {
        Outcome::Truncate(t.get_ref().0)
    } else {
        Outcome::Forward
    };
    let name = f.name.get_ref().clone();
    Fault {
        target,
        effects: Effects {
            delay,
            outcome,
            bandwidth: f.bandwidth.as_ref().map(|b| b.get_ref().0),
            slow_headers: f.slow_headers.as_ref().map(|s| s.get_ref().get()),
        },
        selector: Selector {
            percent: *f.percent.get_ref(),
            subset: f.clients_percent.as_ref().map(|p| Subset {
                percent: *p.get_ref(),
                seed: xxhash_rust::xxh3::xxh3_64(name.as_bytes()),
            }),
            trigger: f.header.as_ref().map(|h| Trigger {
                header: h.get_ref().to_ascii_lowercase(),
                trusted: f
                    .trusted_sources
                    .iter()
                    .filter_map(|s| s.get_ref().parse().ok())
                    .collect(),
            }),
        },
        ttl: Some(f.ttl.get_ref().get()),
        name,
    }
}
