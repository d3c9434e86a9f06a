//! The metrics of WebSocket tunnels (`src/tunnel/`). An open tunnel also
//! counts in its endpoint's `levee_upstream_in_flight` (least_conn and p2c
//! read the same count) until it closes.

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
    /// How the tunnel ended (`tunnel::End::as_str`).
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

pub struct WebSocketMetrics {
    pub open: Family<ListenerLabels, Gauge>,
    pub tunnels: Family<EndLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 86400.0])
}

impl WebSocketMetrics {
    pub fn register(registry: &mut Registry) -> WebSocketMetrics {
        let open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "websocket_tunnels_open",
            "WebSocket tunnels open now, by listener",
            open.clone(),
        );
        let tunnels = Family::<EndLabels, Counter>::default();
        registry.register(
            "websocket_tunnels",
            "WebSocket tunnels, counted when they end, by listener, cluster and how they ended (client_closed, endpoint_closed, idle_timeout, reload, shutdown, endpoint_down, error)",
            tunnels.clone(),
        );
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register(
            "websocket_bytes",
            "Bytes relayed by WebSocket tunnels after the 101, by listener and direction (in: client to endpoint, out: endpoint to client), counted as they pass",
            bytes.clone(),
        );
        let duration = Family::<ListenerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register(
            "websocket_tunnel_duration_seconds",
            "Life of WebSocket tunnels, from the 101 to their close",
            duration.clone(),
        );
        WebSocketMetrics {
            open,
            tunnels,
            bytes,
            duration,
        }
    }
}

/// A listener's tunnels as `/status` shows them.
pub fn status(metrics: &WebSocketMetrics, listener: &str, enabled: bool) -> serde_json::Value {
    let bytes = |direction| {
        metrics
            .bytes
            .get_or_create(&BytesLabels {
                listener: listener.to_owned(),
                direction,
            })
            .get()
    };
    let open = metrics
        .open
        .get_or_create(&ListenerLabels {
            listener: listener.to_owned(),
        })
        .get();
    serde_json::json!({
        "enabled": enabled,
        "open_tunnels": open,
        "bytes_in": bytes("in"),
        "bytes_out": bytes("out"),
    })
}
