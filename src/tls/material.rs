//! A certificate chain and its private key, read from PEM files and checked
//! against each other, with the server names the chain answers for and when
//! it expires.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Which of the two files a load failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

#[derive(Debug)]
pub struct LoadError {
    pub which: Which,
    pub message: String,
}

fn fail(which: Which, message: String) -> LoadError {
    LoadError { which, message }
}

pub struct Material {
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS names, `*.` wildcards included.
    pub names: Vec<String>,
    /// The leaf's notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
    pub subject: String,
}

/// Reads `cert` (the leaf first, then intermediates) and `key`, and checks
/// that the key is the certificate's. `names` replaces the certificate's own
/// names when given.
pub fn load(
    cert: &Path,
    key: &Path,
    names: Option<&[String]>,
    provider: &CryptoProvider,
) -> Result<Material, LoadError> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| fail(Which::Cert, format!("cannot read {}: {e}", cert.display())))?;
    let key_pem = std::fs::read(key)
        .map_err(|e| fail(Which::Key, format!("cannot read {}: {e}", key.display())))?;
    let chain = chain_from_pem(&cert_pem)
        .map_err(|e| fail(Which::Cert, format!("{}: {e}", cert.display())))?;
    let (own, not_after, subject) = x509_parser::parse_x509_certificate(&chain[0])
        .map(|(_, leaf)| {
            (
                own_names(&leaf),
                leaf.validity().not_after.timestamp(),
                leaf.subject().to_string(),
            )
        })
        .map_err(|e| {
            fail(
                Which::Cert,
                format!(
                    "{}: the first certificate does not parse as X.509: {e}",
                    cert.display()
                ),
            )
        })?;
    for (i, der) in chain.iter().enumerate().skip(1) {
        x509_parser::parse_x509_certificate(der).map_err(|e| {
            fail(
                Which::Cert,
                format!(
                    "{}: certificate {} of the chain does not parse as X.509: {e}",
                    cert.display(),
                    i + 1
                ),
            )
        })?;
    }
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        fail(
            Which::Key,
            format!(
                "{}: no private key found (a PKCS#8, PKCS#1 or SEC1 PEM section): {e}",
                key.display()
            ),
        )
    })?;
    let signing = provider.key_provider.load_private_key(der).map_err(|e| {
        fail(
            Which::Key,
            format!("{}: unusable private key: {e}", key.display()),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(fail(
                Which::Key,
                format!(
                    "{} is not the private key of the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                ),
            ));
        }
    }
    let names = match names {
        Some(n) => n.iter().map(|n| n.to_ascii_lowercase()).collect(),
        None => own,
    };
    Ok(Material {
        key: Arc::new(certified),
        names,
        not_after,
        subject,
    })
}

fn chain_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate found (a \"BEGIN CERTIFICATE\" PEM section)".into());
    }
    Ok(chain)
}

/// The DNS names of the certificate's subjectAltName, or its subject's
/// common name when it has none.
fn own_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

/// CA certificates for verifying client certificates.
pub fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = chain_from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots.add(c).map_err(|e| {
            format!(
                "{}: certificate {} is not a usable CA certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(roots)
}
