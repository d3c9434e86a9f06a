//! A listener's `[listeners.websocket]` table: whether an HTTP/1.1 request
//! with `Upgrade: websocket` is tunnelled to its endpoint, and the timeouts
//! of an open tunnel (`crate::tunnel`).

use serde::{Deserialize, Serialize};

use super::value::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Tunnel WebSocket upgrades. Off: the `Upgrade` header is dropped like
    /// any hop-by-hop header and the request is proxied as plain HTTP.
    pub enabled: bool,
    /// A tunnel through which no byte passed either way for this long is
    /// closed (1001 to both sides).
    pub idle_timeout: Duration,
    /// After a reload, or once a graceful shutdown starts, an open tunnel
    /// keeps running on the configuration it started with for this long,
    /// then is closed (1001). A shutdown also stops at `server.drain_timeout`.
    pub tunnel_drain_timeout: Duration,
    /// When a tunnel's endpoint leaves service (marked unhealthy, ejected,
    /// drained or removed from its cluster), the tunnel is closed (1001)
    /// this long after.
    pub endpoint_down_grace: Duration,
    /// When the client and the endpoint are both plain TCP, the rest of a
    /// frame's payload of 64 KiB or more moves by splice(2), inside the
    /// kernel (`tunnel::copy`); frame headers are still read, so a close
    /// frame can still be put between two frames.
    pub splice: bool,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            enabled: true,
            idle_timeout: Duration::from_secs(300),
            tunnel_drain_timeout: Duration::from_secs(60),
            endpoint_down_grace: Duration::from_secs(5),
            splice: true,
        }
    }
}
