//! The fault metrics: every fault started or stopped, every injection, and
//! how many faults are in force. Registered by `observe::Metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultEventLabels {
    pub fault: String,
    /// started, replaced, expired, removed.
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InjectionLabels {
    pub fault: String,
    /// delay, abort, reset.
    pub effect: &'static str,
}

#[derive(Clone, Default)]
pub struct ChaosMetrics {
    pub events: Family<FaultEventLabels, Counter>,
    pub injections: Family<InjectionLabels, Counter>,
    pub active: Gauge,
}

impl ChaosMetrics {
    pub fn register(registry: &mut Registry) -> ChaosMetrics {
        let m = ChaosMetrics::default();
        registry.register(
            "fault_events",
            "Faults started, replaced, expired (their ttl passed) or removed, by fault",
            m.events.clone(),
        );
        registry.register(
            "fault_injections",
            "Requests (or tries) a fault hit, by fault and effect (delay, abort, reset)",
            m.injections.clone(),
        );
        registry.register("faults_active", "Faults in force now", m.active.clone());
        m
    }
}
