//! TLS passthrough: a tcp listener with `[[listeners.sni]]` routes each
//! connection to a cluster by the server name (SNI) of its ClientHello,
//! without terminating TLS. The ClientHello is peeked, not read (at most
//! `MAX_HELLO` bytes, within the listener's `header_timeout`), and parsed
//! by rustls's `Acceptor`; the bytes stay in the socket and reach the
//! endpoint untouched. A name matches exactly, else by a `*.` wildcard for
//! its parent domain (one label, as for certificates); no match (or no
//! SNI) goes to the listener's `cluster`, or is closed when it has none.
//! Anything that is not a ClientHello is closed. Both are counted in
//! `levee_tcp_sni_refused_total` by reason (`no_match`, `not_tls`,
//! `timeout`, `closed`).

use std::collections::HashMap;
use std::sync::Arc;

use super::peek::Look;

/// The most of a connection peeked for its ClientHello: one TLS record's
/// worth (a ClientHello with post-quantum key shares is about 2 KB).
pub const MAX_HELLO: usize = 16 * 1024 + 5;

/// What the first bytes of a passthrough connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello, with the server name it asks for.
    Tls(Option<String>),
    NotTls,
}

/// Judges the first bytes; `More` while they are the start of a
/// ClientHello.
pub fn client_hello(bytes: &[u8]) -> Look<Hello> {
    match bytes.first() {
        None => return Look::More,
        // A TLS handshake record, else not TLS at all.
        Some(0x16) => {}
        Some(_) => return Look::Done(Hello::NotTls),
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(None) => Look::More,
        Ok(Some(accepted)) => Look::Done(Hello::Tls(
            accepted.client_hello().server_name().map(str::to_owned),
        )),
        Err(_) => Look::Done(Hello::NotTls),
    }
}

/// A listener's SNI routes, and its default relay (`R`: what a route
/// leads to, the TCP listener's relay).
pub struct SniRoutes<R> {
    exact: HashMap<String, Arc<R>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<R>>,
    pub default: Option<Arc<R>>,
}

impl<R> SniRoutes<R> {
    /// `routes` in configured order: the first one naming a name wins it.
    pub fn new<'a>(
        routes: impl IntoIterator<Item = (&'a [String], Arc<R>)>,
        default: Option<Arc<R>>,
    ) -> SniRoutes<R> {
        let mut r = SniRoutes {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        };
        for (names, relay) in routes {
            for n in names {
                let n = n.to_ascii_lowercase();
                let entry = match n.strip_prefix("*.") {
                    Some(parent) => r.wildcard.entry(parent.to_owned()),
                    None => r.exact.entry(n),
                };
                entry.or_insert_with(|| relay.clone());
            }
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// The relay for server name `sni` (`None`: the client sent none).
    pub fn pick(&self, sni: Option<&str>) -> Option<&Arc<R>> {
        let Some(name) = sni else {
            return self.default.as_ref();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(r) = self.exact.get(&name) {
            return Some(r);
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(r) = self.wildcard.get(parent)
        {
            return Some(r);
        }
        self.default.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, written by a rustls client.
    fn hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    fn done(bytes: &[u8]) -> Option<Hello> {
        match client_hello(bytes) {
            Look::More => None,
            Look::Done(h) => Some(h),
        }
    }

    #[test]
    fn reads_the_server_name_once_the_hello_is_whole() {
        let h = hello("db.example.com");
        assert_eq!(done(&h), Some(Hello::Tls(Some("db.example.com".into()))));
        assert_eq!(done(&h[..h.len() / 2]), None);
        assert_eq!(done(&h[..3]), None);
        // An IP address is not sent as SNI.
        assert_eq!(done(&hello("192.0.2.1")), Some(Hello::Tls(None)));
    }

    #[test]
    fn garbage_is_not_tls() {
        assert_eq!(done(b"GET / HTTP/1.1\r\n"), Some(Hello::NotTls));
        assert_eq!(done(b"PROXY TCP4 "), Some(Hello::NotTls));
        // A handshake record type, then nonsense.
        assert_eq!(
            done(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Some(Hello::NotTls)
        );
    }
}
