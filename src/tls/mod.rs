//! TLS termination on client listeners (rustls, with the aws-lc-rs crypto
//! provider chosen explicitly for the whole process).
//!
//! - `material`: a certificate chain and its key read from PEM files, with
//!   the names it answers for and its expiry;
//! - `sni`: the certificate a ClientHello gets (exact name, wildcard, default);
//! - `tickets`: session-ticket keys shared through a file by several instances;
//! - `terminator`: one listener's rustls configuration, swapped whole when its
//!   files change (new handshakes take the new one, open connections keep
//!   theirs);
//! - `TlsInfo`: what a connection's handshake negotiated (the handshake
//!   itself is `wire::handshake`'s);
//! - `check`: the files of a configuration, checked by `load::load`;
//! - `metrics`: handshakes, failures by reason, certificate expiry.

pub mod check;
pub mod material;
pub mod metrics;
pub mod sni;
pub mod terminator;
pub mod tickets;

use std::sync::Arc;

use http::HeaderValue;

pub use terminator::{Terminator, Terminators};

/// The crypto provider of every TLS connection in the process.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process's default provider, for code that
/// builds rustls configurations without naming one (redis-rs's `rediss://`).
/// Idempotent; called at start.
pub fn install_provider() {
    // An error means a provider is installed already: ours, by an earlier call.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// What a client connection's handshake negotiated.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The server name the client asked for (SNI).
    pub sni: Option<Box<str>>,
    /// The ALPN protocol agreed (`http/1.1`; `h2` once HTTP/2 is served):
    /// which server the connection belongs to.
    pub alpn: Option<Box<[u8]>>,
    /// The verified client certificate's subject (mutual TLS), RFC 4514
    /// style, e.g. `CN=alice, O=Example`.
    pub client_subject: Option<HeaderValue>,
    /// The listener's `Strict-Transport-Security` value, if it sends one.
    pub hsts: Option<HeaderValue>,
}
