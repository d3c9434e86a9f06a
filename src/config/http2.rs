//! A listener's `[listeners.http2]` table: whether it serves HTTP/2 to
//! clients (h2c with prior knowledge on a plain listener), and the limits
//! that bound what one HTTP/2 connection may cost. Every limit has a safe
//! default; together they must fit `max_connection_memory`, so that the
//! worst case of one connection is known before it is accepted.

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::schema::Config;
use super::validate::{Invalid, invalid};
use super::value::{ByteSize, Duration};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Serve HTTP/2 clients that start with the connection preface (prior
    /// knowledge). Off: they are answered GOAWAY HTTP_1_1_REQUIRED.
    pub enabled: bool,
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: Spanned<u32>,
    /// Streams the client opened and reset before Levee took them; beyond,
    /// the connection is closed with ENHANCE_YOUR_CALM (rapid reset,
    /// CVE-2023-44487).
    pub max_pending_accept_reset_streams: Spanned<usize>,
    /// Streams Levee had to reset because the client broke the protocol on
    /// them; beyond, the connection is closed with ENHANCE_YOUR_CALM
    /// ("MadeYouReset", CVE-2025-8671).
    pub max_local_error_reset_streams: Spanned<usize>,
    /// Largest decoded header list of one request (SETTINGS_MAX_HEADER_LIST_SIZE).
    /// It also bounds a header block sent in CONTINUATION frames
    /// (CVE-2024-27316 family): beyond it the connection is closed.
    pub max_header_list_size: Spanned<ByteSize>,
    /// Largest frame payload Levee accepts (SETTINGS_MAX_FRAME_SIZE,
    /// 16KiB to 16MiB - 1).
    pub max_frame_size: Spanned<ByteSize>,
    /// Flow-control window of each stream: request body bytes a client may
    /// send before Levee has passed them on.
    pub initial_stream_window: Spanned<ByteSize>,
    /// Flow-control window of the connection: request body bytes of all its
    /// streams Levee may hold at once.
    pub initial_connection_window: Spanned<ByteSize>,
    /// Response bytes buffered per stream for a client that reads slowly.
    pub max_send_buffer: Spanned<ByteSize>,
    /// How often Levee PINGs an HTTP/2 client; "0s" turns pings off.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// The most one connection may hold in request and response bodies and
    /// headers: connection window + streams × (header list + send buffer).
    /// A configuration whose limits could exceed it is refused.
    pub max_connection_memory: Spanned<ByteSize>,
}

impl Default for Http2Config {
    fn default() -> Self {
        fn s<T>(v: T) -> Spanned<T> {
            Spanned::new(0..0, v)
        }
        Http2Config {
            enabled: false,
            max_concurrent_streams: s(100),
            max_pending_accept_reset_streams: s(20),
            max_local_error_reset_streams: s(100),
            max_header_list_size: s(ByteSize(32 << 10)),
            max_frame_size: s(ByteSize(16 << 10)),
            initial_stream_window: s(ByteSize(256 << 10)),
            initial_connection_window: s(ByteSize(1 << 20)),
            max_send_buffer: s(ByteSize(64 << 10)),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_connection_memory: s(ByteSize(16 << 20)),
        }
    }
}

impl Http2Config {
    /// What one connection may hold at most under these limits (see
    /// `max_connection_memory`).
    pub fn memory_bound(&self) -> u64 {
        let per_stream = self
            .max_header_list_size
            .get_ref()
            .0
            .saturating_add(self.max_send_buffer.get_ref().0);
        self.initial_connection_window.get_ref().0.saturating_add(
            u64::from(*self.max_concurrent_streams.get_ref()).saturating_mul(per_stream),
        )
    }
}

/// What Levee speaks to a cluster's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with a keep-alive pool.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, multiplexed (`upstream::h2`).
    H2c,
    /// HTTP/2 over the cluster's TLS (ALPN `h2`), multiplexed likewise.
    H2,
}

/// HTTP/2's own bounds on its settings (RFC 9113 §6.5.2, §6.9.1).
const MIN_FRAME: u64 = 1 << 14;
const MAX_FRAME: u64 = (1 << 24) - 1;
const MAX_WINDOW: u64 = (1 << 31) - 1;
/// The smallest window RFC 9113 gives a peer before SETTINGS arrive.
const MIN_WINDOW: u64 = 65_535;

pub(super) fn check(config: &Config) -> Result<(), Invalid> {
    for (i, l) in config.listeners.iter().enumerate() {
        let h = &l.http2;
        let key = |k: &str| format!("listeners[{i}].http2.{k}");
        if *h.max_concurrent_streams.get_ref() == 0 {
            return Err(invalid(
                h.max_concurrent_streams.span(),
                key("max_concurrent_streams"),
                "must be at least 1: a client could open no stream at all",
            ));
        }
        if *h.max_pending_accept_reset_streams.get_ref() == 0 {
            return Err(invalid(
                h.max_pending_accept_reset_streams.span(),
                key("max_pending_accept_reset_streams"),
                "must be at least 1 (a client may reset a stream it just opened)",
            ));
        }
        if *h.max_local_error_reset_streams.get_ref() == 0 {
            return Err(invalid(
                h.max_local_error_reset_streams.span(),
                key("max_local_error_reset_streams"),
                "must be at least 1",
            ));
        }
        let frame = h.max_frame_size.get_ref().0;
        if !(MIN_FRAME..=MAX_FRAME).contains(&frame) {
            return Err(invalid(
                h.max_frame_size.span(),
                key("max_frame_size"),
                format!("{frame} bytes is outside HTTP/2's range of 16KiB to 16MiB - 1 (16777215)"),
            ));
        }
        for (name, v) in [
            ("initial_stream_window", &h.initial_stream_window),
            ("initial_connection_window", &h.initial_connection_window),
        ] {
            if !(MIN_WINDOW..=MAX_WINDOW).contains(&v.get_ref().0) {
                return Err(invalid(
                    v.span(),
                    key(name),
                    format!(
                        "{} bytes is outside {MIN_WINDOW} (HTTP/2's initial window) to 2GiB - 1",
                        v.get_ref().0
                    ),
                ));
            }
        }
        let header_list = h.max_header_list_size.get_ref().0;
        if !(1024..=u64::from(u32::MAX)).contains(&header_list) {
            return Err(invalid(
                h.max_header_list_size.span(),
                key("max_header_list_size"),
                "must be between 1KiB and 4GiB - 1",
            ));
        }
        if h.max_send_buffer.get_ref().0 == 0
            || usize::try_from(h.max_send_buffer.get_ref().0).is_err()
        {
            return Err(invalid(
                h.max_send_buffer.span(),
                key("max_send_buffer"),
                "must be at least 1 byte",
            ));
        }
        if !h.keepalive_interval.get().is_zero() && h.keepalive_timeout.get().is_zero() {
            return Err(invalid(
                l.name.span(),
                key("keepalive_timeout"),
                "must be more than 0s while keepalive_interval is set",
            ));
        }
        let bound = h.memory_bound();
        let cap = h.max_connection_memory.get_ref().0;
        if bound > cap {
            return Err(invalid(
                h.max_connection_memory.span(),
                key("max_connection_memory"),
                format!(
                    "the limits let one connection hold up to {} (initial_connection_window {} + \
                     max_concurrent_streams {} × (max_header_list_size {} + max_send_buffer {})), \
                     more than max_connection_memory {}; lower a limit or raise the cap",
                    ByteSize(bound),
                    h.initial_connection_window.get_ref(),
                    h.max_concurrent_streams.get_ref(),
                    h.max_header_list_size.get_ref(),
                    h.max_send_buffer.get_ref(),
                    ByteSize(cap)
                ),
            ));
        }
    }
    for (i, c) in config.clusters.iter().enumerate() {
        let tls = c.tls.as_ref().filter(|t| t.get_ref().enabled);
        match (c.protocol, tls) {
            (UpstreamProtocol::H2c, Some(tls)) => {
                // h2c is cleartext by definition.
                return Err(invalid(
                    tls.span(),
                    format!("clusters[{i}].tls"),
                    "protocol = \"h2c\" is HTTP/2 without TLS; remove [clusters.tls] or use protocol = \"h2\"",
                ));
            }
            (UpstreamProtocol::H2, None) => {
                return Err(invalid(
                    c.name.span(),
                    format!("clusters[{i}].protocol"),
                    "protocol = \"h2\" is HTTP/2 over TLS and needs [clusters.tls]; \
                     use protocol = \"h2c\" for HTTP/2 without TLS",
                ));
            }
            _ => {}
        }
    }
    super::upstream_http2::check(config)
}

#[cfg(test)]
mod tests {
    #[test]
    fn defaults_fit_the_memory_cap() {
        let d = super::Http2Config::default();
        assert_eq!(
            d.memory_bound(),
            (1 << 20) + 100 * ((32 << 10) + (64 << 10))
        );
        assert!(d.memory_bound() <= d.max_connection_memory.get_ref().0);
    }

    fn parse(table: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n[listeners.http2]\n{table}\n\
             [[clusters]]\nname = \"c\"\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n"
        );
        crate::config::parse(std::path::Path::new("t.toml"), &text).map_err(|e| e.to_string())
    }

    fn cluster(lines: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n\
             [[clusters]]\nname = \"c\"\n{lines}\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n"
        );
        crate::config::parse(std::path::Path::new("t.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn h2_needs_tls_and_h2c_refuses_it() {
        let e = cluster("protocol = \"h2\"").expect_err("h2 without TLS");
        assert!(e.contains("clusters[0].protocol"), "{e}");
        assert!(e.contains("needs [clusters.tls]"), "{e}");
        let e = cluster("protocol = \"h2c\"\ntls = { verify = false }").expect_err("h2c with TLS");
        assert!(e.contains("clusters[0].tls"), "{e}");
        let c = cluster("protocol = \"h2\"\ntls = { verify = false }").expect("h2 over TLS");
        assert_eq!(c.clusters[0].protocol, super::UpstreamProtocol::H2);
        cluster("protocol = \"h2c\"\ntls = { enabled = false, verify = false }")
            .expect("TLS switched off");
        let e = cluster("health_check = { type = \"http\", service = \"x\" }")
            .expect_err("service is for grpc checks");
        assert!(e.contains("clusters[0].health_check.service"), "{e}");
        let e = cluster("health_check = { type = \"grpc\", path = \"/x\" }")
            .expect_err("path is for http checks");
        assert!(
            e.contains("a grpc check calls grpc.health.v1.Health/Check"),
            "{e}"
        );
        cluster("health_check = { type = \"grpc\", service = \"users.v1.Users\" }")
            .expect("a grpc check");
    }

    #[test]
    fn limits_beyond_the_memory_cap_are_refused_with_their_place() {
        let e = parse("enabled = true\nmax_concurrent_streams = 1000").expect_err("over the cap");
        assert!(
            e.contains("listeners[0].http2.max_connection_memory"),
            "{e}"
        );
        assert!(e.contains("more than max_connection_memory 16MiB"), "{e}");
        parse("enabled = true\nmax_concurrent_streams = 1000\nmax_connection_memory = \"128MiB\"")
            .expect("fits a raised cap");
    }

    #[test]
    fn settings_outside_http2s_ranges_are_refused() {
        let e = parse("max_frame_size = 1024").expect_err("too small a frame");
        assert!(
            e.contains("t.toml:5:18") && e.contains("max_frame_size"),
            "{e}"
        );
        let e = parse("initial_stream_window = \"4GiB\"").expect_err("too large a window");
        assert!(e.contains("initial_stream_window"), "{e}");
        let e = parse("max_concurrent_streams = 0").expect_err("no stream");
        assert!(e.contains("max_concurrent_streams"), "{e}");
        let e = parse("streams = 5").expect_err("unknown key");
        assert!(e.contains("streams"), "{e}");
    }
}
