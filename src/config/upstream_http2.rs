//! A cluster's `http2` table: how its multiplexed HTTP/2 pool (`protocol =
//! "h2c"` or `"h2"`, `upstream::h2`) uses each endpoint. Streams per
//! connection before another is opened beside it, connections per endpoint
//! and worker at most, and the PING keep-alive that finds a connection whose
//! endpoint went silent (a dead host, a dropped NAT entry) before a request
//! is sent on it.
//!
//! ```toml
//! [[clusters]]
//! protocol = "h2c"
//! http2 = { max_streams_per_connection = 100, max_connections = 4,
//!           keepalive_interval = "30s", keepalive_timeout = "10s" }
//! ```

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::http2::UpstreamProtocol;
use super::schema::Config;
use super::validate::{Invalid, invalid};
use super::value::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamHttp2Config {
    /// Streams one connection carries at most before another is opened
    /// beside it (fewer if the endpoint's SETTINGS_MAX_CONCURRENT_STREAMS
    /// says so).
    pub max_streams_per_connection: Spanned<usize>,
    /// Connections per endpoint and worker at most; beyond, the least
    /// loaded one takes the stream, queued until the endpoint allows it.
    pub max_connections: Spanned<usize>,
    /// How often a connection is PINGed (also while idle); "0s": never.
    pub keepalive_interval: Spanned<Duration>,
    /// How long a PING may go unanswered before the connection is closed
    /// and the next request opens another.
    pub keepalive_timeout: Spanned<Duration>,
}

/// The most connections per endpoint and worker: more would only spread
/// one worker's streams thinner, and each holds buffers and a task.
pub const MAX_CONNECTIONS: usize = 64;

impl Default for UpstreamHttp2Config {
    fn default() -> Self {
        fn s<T>(v: T) -> Spanned<T> {
            Spanned::new(0..0, v)
        }
        UpstreamHttp2Config {
            max_streams_per_connection: s(100),
            max_connections: s(4),
            keepalive_interval: s(Duration::from_secs(30)),
            keepalive_timeout: s(Duration::from_secs(10)),
        }
    }
}

pub(super) fn check(config: &Config) -> Result<(), Invalid> {
    for (i, c) in config.clusters.iter().enumerate() {
        let Some(table) = &c.http2 else {
            continue;
        };
        let key = |k: &str| format!("clusters[{i}].http2.{k}");
        if c.protocol == UpstreamProtocol::Http1 {
            return Err(invalid(
                table.span(),
                format!("clusters[{i}].http2"),
                "the http2 table sets the HTTP/2 pool, but this cluster speaks HTTP/1.1; \
                 set protocol = \"h2c\" or \"h2\", or remove the table",
            ));
        }
        let h = table.get_ref();
        if *h.max_streams_per_connection.get_ref() == 0 {
            return Err(invalid(
                h.max_streams_per_connection.span(),
                key("max_streams_per_connection"),
                "must be at least 1: a connection could carry no request",
            ));
        }
        let conns = *h.max_connections.get_ref();
        if !(1..=MAX_CONNECTIONS).contains(&conns) {
            return Err(invalid(
                h.max_connections.span(),
                key("max_connections"),
                format!("{conns} is outside 1 to {MAX_CONNECTIONS} (per endpoint and worker)"),
            ));
        }
        let interval = h.keepalive_interval.get_ref().get();
        let timeout = h.keepalive_timeout.get_ref().get();
        if !interval.is_zero() && timeout.is_zero() {
            return Err(invalid(
                h.keepalive_timeout.span(),
                key("keepalive_timeout"),
                "must be more than 0s while keepalive_interval is set (\"0s\" turns PINGs off)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn cluster(lines: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n\
             [[clusters]]\nname = \"c\"\n{lines}\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n"
        );
        crate::config::parse(std::path::Path::new("t.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply_and_every_key_is_read() {
        let c = cluster("protocol = \"h2c\"").expect("no table");
        assert!(c.clusters[0].http2.is_none());
        let d = super::UpstreamHttp2Config::default();
        assert_eq!(*d.max_streams_per_connection.get_ref(), 100);
        assert_eq!(*d.max_connections.get_ref(), 4);
        let c = cluster(
            "protocol = \"h2c\"\nhttp2 = { max_streams_per_connection = 7, max_connections = 2, \
             keepalive_interval = \"5s\", keepalive_timeout = \"1s\" }",
        )
        .expect("valid");
        let h = c.clusters[0].http2.as_ref().expect("table").get_ref();
        assert_eq!(*h.max_streams_per_connection.get_ref(), 7);
        assert_eq!(*h.max_connections.get_ref(), 2);
        assert_eq!(h.keepalive_interval.get_ref().get().as_secs(), 5);
        assert_eq!(h.keepalive_timeout.get_ref().get().as_secs(), 1);
        cluster("protocol = \"h2c\"\nhttp2 = { keepalive_interval = \"0s\", keepalive_timeout = \"0s\" }")
            .expect("PINGs off");
    }

    #[test]
    fn bad_values_are_refused_with_their_place() {
        let e = cluster("protocol = \"h2c\"\nhttp2 = { max_streams_per_connection = 0 }")
            .expect_err("no stream");
        assert!(
            e.contains("t.toml:7:40") && e.contains("clusters[0].http2.max_streams_per_connection"),
            "{e}"
        );
        let e = cluster("protocol = \"h2c\"\nhttp2 = { max_connections = 0 }").expect_err("zero");
        assert!(e.contains("clusters[0].http2.max_connections"), "{e}");
        let e = cluster("protocol = \"h2c\"\nhttp2 = { max_connections = 65 }").expect_err("many");
        assert!(e.contains("65 is outside 1 to 64"), "{e}");
        let e = cluster("protocol = \"h2c\"\nhttp2 = { keepalive_timeout = \"0s\" }")
            .expect_err("PING without a timeout");
        assert!(e.contains("clusters[0].http2.keepalive_timeout"), "{e}");
        let e = cluster("http2 = { max_connections = 2 }").expect_err("HTTP/1.1 cluster");
        assert!(
            e.contains("t.toml:6:9") && e.contains("speaks HTTP/1.1"),
            "{e}"
        );
        let e = cluster("protocol = \"h2c\"\nhttp2 = { streams = 2 }").expect_err("unknown key");
        assert!(e.contains("streams"), "{e}");
    }
}
