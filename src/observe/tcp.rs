//! The metrics of TCP listeners (`src/tcp/`). Open connections per listener are the
//! listeners' `levee_connections_active`, open connections per endpoint
//! `levee_upstream_in_flight` (least_conn reads the same count).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub listener: String,
    pub cluster: String,
    /// How the connection ended (`End::as_str`).
    pub end: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub listener: String,
    /// `in`: client → endpoint; `out`: endpoint → client.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

pub struct TcpMetrics {
    pub connections: Family<EndLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 86400.0])
}

impl TcpMetrics {
    pub fn register(registry: &mut Registry) -> TcpMetrics {
        let connections = Family::<EndLabels, Counter>::default();
        registry.register(
            "tcp_connections",
            "Connections of tcp listeners, counted when they end, by listener, cluster and how they ended (client_closed, endpoint_closed, idle_timeout, endpoint_down, connect_failed, no_endpoint, breaker_open, bulkhead_full, error)",
            connections.clone(),
        );
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register(
            "tcp_bytes",
            "Bytes relayed by tcp listeners, by listener and direction (in: client to endpoint, out: endpoint to client), counted as they pass",
            bytes.clone(),
        );
        let duration = Family::<ListenerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register(
            "tcp_connection_duration_seconds",
            "Life of the connections of tcp listeners, accept to close",
            duration.clone(),
        );
        TcpMetrics {
            connections,
            bytes,
            duration,
        }
    }
}
