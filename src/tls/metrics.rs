//! TLS metrics: handshakes by listener, version and result, failures by
//! reason, and the seconds left before each certificate expires.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub listener: String,
    /// `TLSv1.2`, `TLSv1.3`, or `none` when the handshake failed.
    pub version: &'static str,
    /// `full`, `resumed` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub listener: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub listener: String,
    /// The certificate file.
    pub certificate: String,
}

/// Every failure reason, pre-registered per TLS listener so an absent
/// series means 0.
pub const REASONS: &[&str] = &[
    "timeout",
    "plain_http",
    "closed",
    "bad_message",
    "protocol_version",
    "no_shared_cipher",
    "no_certificate_for_name",
    "no_application_protocol",
    "client_certificate_missing",
    "client_certificate_invalid",
    "alert_received",
    "other",
];

#[derive(Clone, Default)]
pub struct TlsMetrics {
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub expiry: Family<CertificateLabels, Gauge>,
    pub reloads: Family<ReloadLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub listener: String,
    /// `ok` or `failed` (the previous certificates keep serving).
    pub result: &'static str,
}

impl TlsMetrics {
    pub fn register(registry: &mut Registry) -> TlsMetrics {
        let m = TlsMetrics::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes on client listeners, by listener, version and result (full, resumed, failed)",
            m.handshakes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes on client listeners, by listener and reason",
            m.failures.clone(),
        );
        registry.register(
            "tls_certificate_expiry_seconds",
            "Seconds until a listener's certificate expires (negative: expired)",
            m.expiry.clone(),
        );
        registry.register(
            "tls_certificate_reloads",
            "Certificates and keys re-read because their files changed, by listener and result",
            m.reloads.clone(),
        );
        m
    }

    /// Makes a TLS listener's series exist at 0.
    pub fn listener(&self, listener: &str) {
        for reason in REASONS {
            drop(self.failures.get_or_create(&FailureLabels {
                listener: listener.to_owned(),
                reason,
            }));
        }
    }

    pub fn failed(&self, listener: &str, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
        self.handshakes
            .get_or_create(&HandshakeLabels {
                listener: listener.to_owned(),
                version: "none",
                result: "failed",
            })
            .inc();
    }
}
