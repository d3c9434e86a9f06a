//! The HTTP/2-to-endpoints and gRPC metrics: how many streams each
//! connection to an endpoint carried, and the `grpc-status` of every gRPC
//! call answered. Registered by `observe::Metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::metrics::EndpointLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// The route's name, shared with it: counting a call allocates nothing.
    pub route: std::sync::Arc<str>,
    /// The status's name: ok, unavailable, deadline_exceeded, ...
    pub code: &'static str,
}

fn streams_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 10_000.0, 100_000.0,
    ])
}

#[derive(Clone)]
pub struct GrpcMetrics {
    pub streams_per_connection: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pub calls: Family<GrpcLabels, Counter>,
}

impl GrpcMetrics {
    pub fn register(registry: &mut Registry) -> GrpcMetrics {
        let m = GrpcMetrics {
            streams_per_connection: Family::new_with_constructor(streams_histogram),
            calls: Family::default(),
        };
        registry.register(
            "upstream_h2_streams_per_connection",
            "Streams (requests) each HTTP/2 connection to an endpoint carried, observed when it closed",
            m.streams_per_connection.clone(),
        );
        registry.register(
            "grpc_calls",
            "gRPC calls answered, by route and grpc-status (from the endpoint's trailers or trailers-only answer, or Levee's own)",
            m.calls.clone(),
        );
        m
    }
}
