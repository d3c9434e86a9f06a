//! The metrics of TCP listeners (`src/tcp/`). Open connections per listener are the
//! listeners' `levee_connections_active`, open connections per endpoint
//! `levee_upstream_in_flight` (least_conn reads the same count).

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub listener: String,
    pub reason: &'static str,
}

pub struct TcpMetrics {
    pub connections: Family<EndLabels, Counter>,
    /// Connections closed for their PROXY protocol header (any listener
    /// with `[listeners.proxy_protocol]`, HTTP ones too).
    pub proxy_protocol_refused: Family<ReasonLabels, Counter>,
    /// TLS passthrough connections closed before a cluster was chosen.
    pub sni_refused: Family<ReasonLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    /// Pipes held by spliced connections (`wire::pipe`: tcp listeners and
    /// WebSocket tunnels), two file descriptors each.
    pub pipes: Gauge,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 86400.0])
}

impl TcpMetrics {
    pub fn register(registry: &mut Registry) -> TcpMetrics {
        let connections = Family::<EndLabels, Counter>::default();
        registry.register(
            "tcp_connections",
            "Connections of tcp listeners, counted when they end, by listener, cluster and how they ended (client_closed, endpoint_closed, idle_timeout, endpoint_down, connect_failed, local_shortage, no_endpoint, breaker_open, bulkhead_full, error)",
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
        let proxy_protocol_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "proxy_protocol_refused",
            "Connections closed for their PROXY protocol header, by listener and reason (untrusted: the peer is outside proxy_protocol.trusted; missing: no PROXY signature; malformed; timeout; closed: the peer left mid-header)",
            proxy_protocol_refused.clone(),
        );
        let sni_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tcp_sni_refused",
            "TLS passthrough connections closed before a cluster was chosen, by listener and reason (no_match: no SNI route and no default cluster; not_tls: not a ClientHello; timeout; closed)",
            sni_refused.clone(),
        );
        let pipes = Gauge::default();
        registry.register(
            "splice_pipes",
            "Pipes in use by splice(2) copies, one per spliced direction, two file descriptors each: tcp listeners (copy = \"splice\", or \"auto\" once a direction carried 128 KiB) and WebSocket tunnels (the rest of a frame of 64 KiB or more)",
            pipes.clone(),
        );
        TcpMetrics {
            connections,
            pipes,
            proxy_protocol_refused,
            sni_refused,
            bytes,
            duration,
        }
    }
}

/// One tcp relay's (a listener's, to one cluster) metric handles, taken
/// from the families when first used and then kept: a connection would
/// otherwise allocate its label sets, take each family's lock and hash
/// them, five times, for series that are the same for every connection.
/// A series still appears when its first event happens, as before.
#[derive(Default)]
pub struct RelayHandles {
    bytes: OnceLock<(Counter, Counter)>,
    duration: OnceLock<Histogram>,
    /// By the index of how the connection ended (`tcp::relay::End`).
    ends: [OnceLock<Counter>; ENDS],
}

/// At least the number of ways a tcp connection ends.
pub const ENDS: usize = 12;

impl RelayHandles {
    /// Bytes in (client → endpoint) and out.
    pub fn bytes(&self, m: &TcpMetrics, listener: &str) -> &(Counter, Counter) {
        self.bytes.get_or_init(|| {
            let counter = |direction| {
                m.bytes.get_or_create_owned(&BytesLabels {
                    listener: listener.to_owned(),
                    direction,
                })
            };
            (counter("in"), counter("out"))
        })
    }

    pub fn duration(&self, m: &TcpMetrics, listener: &str) -> &Histogram {
        self.duration.get_or_init(|| {
            m.duration.get_or_create_owned(&ListenerLabels {
                listener: listener.to_owned(),
            })
        })
    }

    /// The count of connections that ended as `end` (`index`: its place
    /// among the ways to end, below `ENDS`).
    pub fn end(
        &self,
        m: &TcpMetrics,
        listener: &str,
        cluster: &str,
        index: usize,
        end: &'static str,
    ) -> Counter {
        let make = || {
            m.connections.get_or_create_owned(&EndLabels {
                listener: listener.to_owned(),
                cluster: cluster.to_owned(),
                end,
            })
        };
        match self.ends.get(index) {
            Some(cell) => cell.get_or_init(make).clone(),
            None => make(),
        }
    }
}
