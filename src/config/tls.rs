//! `[listeners.tls]`: TLS termination on a listener (certificates chosen by
//! SNI, versions, ALPN, session resumption, client certificates, HSTS).
//! The files it names are read and checked by `crate::tls::check`, which
//! `load::load` runs, so a missing or mismatched file is refused like any
//! other mistake, at its key's line and column.

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::validate::{Invalid, invalid};
use super::value::Duration;

/// The ALPN protocol names Levee can serve on a TLS listener, in the order
/// it prefers them. `h2` needs the listener's `[listeners.http2]` enabled:
/// the connection layer then finds the HTTP/2 preface inside the TLS stream
/// and hands the connection to the HTTP/2 server, as on a plain listener.
pub const SERVED_ALPN: &[&str] = &["h2", "http/1.1"];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Certificate chains and keys. A client's SNI picks one by the names
    /// it is valid for (exact first, then `*.` wildcards); the first one is
    /// the default for a client without SNI or with an unknown name.
    pub certificates: Vec<CertificateConfig>,
    /// Refuse the handshake of a client whose SNI matches no certificate
    /// instead of answering with the default one.
    #[serde(default)]
    pub strict_sni: bool,
    /// Oldest TLS version accepted: "1.2" or "1.3".
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Protocols offered in ALPN, most preferred first.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<Spanned<String>>,
    /// Time a client has, from its connection, to complete the handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// Session resumption by tickets (TLS 1.2 and 1.3) and, for TLS 1.2,
    /// by session id.
    #[serde(default = "yes")]
    pub session_tickets: bool,
    /// A file of 80-byte ticket keys shared by several Levee instances (so
    /// a client resumes on any of them): the first key seals new tickets,
    /// all of them open tickets. Unset: keys random to this process,
    /// rotated every 6 hours.
    #[serde(default)]
    pub ticket_key_file: Option<Spanned<String>>,
    /// CA certificates (PEM) that client certificates are verified
    /// against: mutual TLS. Unset: no client certificate is asked for.
    #[serde(default)]
    pub client_ca: Option<Spanned<String>>,
    /// With `client_ca`: "required" (a client without a valid certificate
    /// fails the handshake) or "optional" (one that presents none is
    /// served, an invalid one still fails).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// `Strict-Transport-Security: max-age=…` on every response of the
    /// listener (unless the endpoint sent its own), e.g. "8760h". Unset: none.
    #[serde(default)]
    pub hsts: Option<Duration>,
    /// Adds `includeSubDomains` to the HSTS header.
    #[serde(default)]
    pub hsts_include_subdomains: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file: the certificate, then its intermediates.
    pub cert: Spanned<String>,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
    /// Server names this certificate answers for; unset: the DNS names of
    /// its subjectAltName (HAProxy's and Caddy's rule).
    #[serde(default)]
    pub names: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// HTTP/1.1 only unless the file says `h2` (which needs HTTP/2 enabled).
fn default_alpn() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "http/1.1".to_owned())]
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn yes() -> bool {
    true
}

/// Checks of a listener's TLS settings that need no file (the files are
/// `crate::tls::check`'s).
pub(super) fn check(config: &super::Config) -> Result<(), Invalid> {
    for (i, l) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        if l.redirect_https && l.tls.is_some() {
            return Err(invalid(
                l.name.span(),
                format!("{key}.redirect_https"),
                "this listener terminates TLS already; redirect_https belongs on a plain HTTP listener",
            ));
        }
        if let Some(port) = &l.https_port
            && !l.redirect_https
        {
            return Err(invalid(
                port.span(),
                format!("{key}.https_port"),
                "https_port is the port redirect_https sends clients to; set redirect_https = true or remove it",
            ));
        }
        let Some(tls) = &l.tls else { continue };
        let key = format!("{key}.tls");
        if tls.certificates.is_empty() {
            return Err(invalid(
                l.name.span(),
                format!("{key}.certificates"),
                "a TLS listener needs at least one certificate: certificates = [{ cert = \"…\", key = \"…\" }]",
            ));
        }
        if tls.alpn.is_empty() {
            return Err(invalid(
                l.name.span(),
                format!("{key}.alpn"),
                format!("needs at least one protocol; valid: {SERVED_ALPN:?}"),
            ));
        }
        for (j, p) in tls.alpn.iter().enumerate() {
            if !SERVED_ALPN.contains(&p.get_ref().as_str()) {
                return Err(invalid(
                    p.span(),
                    format!("{key}.alpn[{j}]"),
                    format!(
                        "{:?} is not a protocol this listener serves; valid: {SERVED_ALPN:?}",
                        p.get_ref()
                    ),
                ));
            }
            if p.get_ref() == "h2" && !l.http2.enabled {
                return Err(invalid(
                    p.span(),
                    format!("{key}.alpn[{j}]"),
                    "\"h2\" needs HTTP/2 on this listener: set [listeners.http2] enabled = true, or leave h2 out",
                ));
            }
        }
        if tls.handshake_timeout.get().is_zero() {
            return Err(invalid(
                l.name.span(),
                format!("{key}.handshake_timeout"),
                "must be above 0",
            ));
        }
        for (j, c) in tls.certificates.iter().enumerate() {
            for (k, n) in c.names.iter().flatten().enumerate() {
                if !valid_server_name(n.get_ref()) {
                    return Err(invalid(
                        n.span(),
                        format!("{key}.certificates[{j}].names[{k}]"),
                        format!(
                            "{:?} is not a server name; write e.g. \"example.com\" or \"*.example.com\"",
                            n.get_ref()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A DNS name, optionally with one leading `*.` label.
pub fn valid_server_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(valid_server_name("example.com"));
        assert!(valid_server_name("*.example.com"));
        assert!(!valid_server_name("*"));
        assert!(!valid_server_name("a..b"));
        assert!(!valid_server_name("foo.*.com"));
    }

    #[test]
    fn unknown_alpn_is_refused_at_its_position() {
        let e = crate::config::parse_part(
            "[[listeners]]\nname = \"s\"\naddress = \"127.0.0.1:1\"\n[listeners.tls]\ncertificates = [{ cert = \"c\", key = \"k\" }]\nalpn = [\"http/1.1\", \"spdy/3\"]\n",
        )
        .expect_err("refused");
        assert_eq!((e.line, e.column), (6, 21), "{e}");
        assert_eq!(e.key, "listeners[0].tls.alpn[1]");
    }

    #[test]
    fn redirect_settings_belong_on_plain_listeners() {
        let e = crate::config::parse_part(
            "[[listeners]]\nname = \"s\"\naddress = \"127.0.0.1:1\"\nredirect_https = true\n[listeners.tls]\ncertificates = [{ cert = \"c\", key = \"k\" }]\n",
        )
        .expect_err("refused");
        assert_eq!(e.key, "listeners[0].redirect_https", "{e}");
        let e = crate::config::parse_part(
            "[[listeners]]\nname = \"p\"\naddress = \"127.0.0.1:1\"\nhttps_port = 8443\n",
        )
        .expect_err("refused");
        assert_eq!(
            (e.line, e.key.as_str()),
            (4, "listeners[0].https_port"),
            "{e}"
        );
        let ok = crate::config::parse_part(
            "[[listeners]]\nname = \"p\"\naddress = \"127.0.0.1:1\"\nredirect_https = true\nhttps_port = 8443\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }
}
