//! The certificate a ClientHello gets: the one whose names contain the
//! client's SNI exactly, else one with a `*.` wildcard for its parent
//! domain (one label, as RFC 6125 allows), else the default (the first
//! certificate) unless the listener has `strict_sni`.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// `certs` in configured order: the first one naming a name wins it, the
    /// first one is the default unless `strict`.
    pub fn new<'a>(
        certs: impl IntoIterator<Item = (&'a [String], Arc<CertifiedKey>)>,
        strict: bool,
    ) -> SniResolver {
        let mut r = SniResolver::default();
        for (names, key) in certs {
            if r.default.is_none() && !strict {
                r.default = Some(key.clone());
            }
            for n in names {
                let map = match n.strip_prefix("*.") {
                    Some(parent) => r.wildcard.entry(parent.to_owned()),
                    None => r.exact.entry(n.clone()),
                };
                map.or_insert_with(|| key.clone());
            }
        }
        r
    }

    /// The certificate for server name `sni` (`None`: the client sent none).
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return Some(k.clone());
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: u8) -> Arc<CertifiedKey> {
        // Only identity matters here; the chain is a marker, never used.
        let chain = vec![rustls::pki_types::CertificateDer::from(vec![tag])];
        let signer = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(
            &rustls::pki_types::PrivateKeyDer::Pkcs8(
                rcgen::KeyPair::generate()
                    .expect("key generation")
                    .serialize_der()
                    .into(),
            ),
        )
        .expect("ecdsa key");
        Arc::new(CertifiedKey::new(chain, signer))
    }

    fn tag(k: Option<Arc<CertifiedKey>>) -> Option<u8> {
        k.map(|k| k.cert[0].as_ref()[0])
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let a = ["a.example.com".to_owned()];
        let w = ["*.example.com".to_owned(), "example.com".to_owned()];
        let r = SniResolver::new([(&a[..], key(1)), (&w[..], key(2))], false);
        assert_eq!(tag(r.pick(Some("a.example.com"))), Some(1));
        assert_eq!(tag(r.pick(Some("A.Example.COM."))), Some(1));
        assert_eq!(tag(r.pick(Some("b.example.com"))), Some(2));
        assert_eq!(tag(r.pick(Some("example.com"))), Some(2));
        // A wildcard covers one label only.
        assert_eq!(tag(r.pick(Some("x.b.example.com"))), Some(1));
        assert_eq!(tag(r.pick(Some("other.org"))), Some(1));
        assert_eq!(tag(r.pick(None)), Some(1));
    }

    #[test]
    fn strict_sni_has_no_default() {
        let a = ["a.example.com".to_owned()];
        let r = SniResolver::new([(&a[..], key(1))], true);
        assert_eq!(tag(r.pick(Some("a.example.com"))), Some(1));
        assert_eq!(tag(r.pick(Some("b.example.com"))), None);
        assert_eq!(tag(r.pick(None)), None);
    }
}
