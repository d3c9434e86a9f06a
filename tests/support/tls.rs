//! Certificates made at test time with rcgen: a CA, server certificates for
//! given names (signed by it), client certificates for mutual TLS, written
//! as PEM files in a temporary directory that lives as long as the `Pki`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_pem: String,
    pub ca_path: PathBuf,
}

/// A certificate and its key, as files and as PEM text.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// `cert = "…", key = "…"` for a TOML inline table.
    pub fn toml(&self) -> String {
        format!("cert = {:?}, key = {:?}", self.cert, self.key)
    }
}

impl Pki {
    pub fn new(ca_name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, ca_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key"))
            .expect("ca certificate");
        let ca_pem = ca.pem();
        let ca_path = dir.path().join(format!("{ca_name}.ca.pem"));
        std::fs::write(&ca_path, &ca_pem).expect("write ca");
        Pki {
            dir,
            ca,
            ca_pem,
            ca_path,
        }
    }

    /// A server certificate for `names` (SAN DNS names), valid for `days`
    /// from now, written as `<file>.pem` and `<file>.key`.
    pub fn server(&self, file: &str, names: &[&str], days: u64) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{file} server"));
        params.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
        params.not_after = (SystemTime::now() + Duration::from_secs(days * 86_400)).into();
        self.issue(file, params)
    }

    /// A client certificate whose subject's common name is `cn`.
    pub fn client(&self, file: &str, cn: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file, params)
    }

    fn issue(&self, file: &str, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let issued = Issued {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&issued.cert, &issued.cert_pem).expect("write cert");
        std::fs::write(&issued.key, &issued.key_pem).expect("write key");
        issued
    }

    /// Writes `text` to `file` in the directory; returns its path.
    pub fn write(&self, file: &str, text: &[u8]) -> PathBuf {
        let p = self.dir.path().join(file);
        std::fs::write(&p, text).expect("write");
        p
    }
}

/// The subject common name of the certificate a TLS server presents for
/// `sni` at `addr` (rustls client trusting `ca_pem`), and the protocol
/// version negotiated.
pub fn presented_cn(addr: std::net::SocketAddr, sni: &str, ca_pem: &str) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use std::io::{Read, Write};
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let der = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?
        .to_vec();
    Ok(common_name(&der))
}

/// The subject CN of a DER certificate (parsed by rcgen's own reader is
/// not available; a minimal scan for the CN attribute is enough here).
pub fn common_name(der: &[u8]) -> String {
    // OID 2.5.4.3 (commonName) = 06 03 55 04 03, then a string type and length.
    let oid = [0x06, 0x03, 0x55, 0x04, 0x03];
    // The subject comes after the issuer: take the last CN.
    let mut found = String::new();
    let mut i = 0;
    while i + oid.len() + 2 <= der.len() {
        if der[i..i + oid.len()] == oid {
            let len = der[i + oid.len() + 1] as usize;
            let start = i + oid.len() + 2;
            if start + len <= der.len() {
                found = String::from_utf8_lossy(&der[start..start + len]).into_owned();
            }
        }
        i += 1;
    }
    found
}
