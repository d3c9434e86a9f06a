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
//! - `accept`: one connection's handshake (timeout, plain HTTP on the TLS
//!   port, metrics) and what it negotiated (`TlsInfo`);
//! - `check`: the files of a configuration, checked by `config::load`;
//! - `metrics`: handshakes, failures by reason, certificate expiry.

pub mod accept;
pub mod check;
pub mod material;
pub mod metrics;
pub mod sni;
pub mod terminator;
pub mod tickets;

use std::sync::Arc;

pub use accept::TlsInfo;
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
