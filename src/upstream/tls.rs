//! TLS to endpoints: a cluster's client settings (`Connector`), the name
//! each endpoint is verified against (`EndpointTls`), and the handshake.
//!
//! rustls with the aws-lc-rs provider, chosen here explicitly
//! (`ClientConfig::builder_with_provider`), so the process-wide default
//! provider, whoever installs it, does not matter. Certificates are checked
//! against the system's roots (`rustls-native-certs`: Debian's
//! `/etc/ssl/certs`) or a CA file; a client certificate (mTLS to the
//! endpoint) is optional. Sessions are resumed from rustls's in-memory cache,
//! so a new connection to an endpoint usually costs an abbreviated handshake.
//!
//! Everything that can fail (files, PEM, a key that does not match its
//! certificate, no system roots) fails in `Connector::build`, which the
//! configuration loader calls: a bad file refuses the configuration (and a
//! reload keeps the old one), it never surfaces as failing requests.

use std::hash::Hasher;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The stream of a TLS connection to an endpoint.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A cluster's TLS settings, as the configuration gives them.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// PEM file of the CA certificates to trust; `None`: the system's roots.
    pub ca_file: Option<&'a Path>,
    /// `false`: any certificate is accepted (the handshake's signatures are
    /// still checked, so the connection is encrypted, but not authenticated).
    pub verify: bool,
    /// Client certificate chain and its key (PEM), for endpoints that ask
    /// for one.
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    /// The name sent as SNI and verified, for every endpoint of the cluster.
    pub sni: Option<&'a str>,
}

/// Which setting a problem is in, so the configuration can point at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    CaFile,
    Cert,
    Key,
    Sni,
    /// No setting of its own: the system's roots could not be loaded.
    Roots,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub field: Field,
    pub message: String,
}

fn refuse(field: Field, message: impl Into<String>) -> SettingsError {
    SettingsError {
        field,
        message: message.into(),
    }
}

/// What connects a cluster's endpoints over TLS.
pub struct Connector {
    connector: TlsConnector,
    /// The same settings offering ALPN `h2` only, for `protocol = "h2"`.
    h2: TlsConnector,
    sni: Option<ServerName<'static>>,
    /// Digest of the settings and of the files' contents: a pooled
    /// connection made under other settings (before a reload) is not reused.
    fingerprint: u64,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("sni", &self.sni)
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .finish()
    }
}

/// The provider every TLS connection to an endpoint uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(field: Field, path: &Path, what: &str) -> Result<Vec<u8>, SettingsError> {
    std::fs::read(path)
        .map_err(|e| refuse(field, format!("cannot read {what} {}: {e}", path.display())))
}

/// Every certificate of a PEM file; at least one.
fn certificates(
    field: Field,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refuse(field, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(refuse(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

impl Connector {
    /// Reads the files and builds the client configuration.
    pub fn build(settings: &Settings<'_>) -> Result<Connector, SettingsError> {
        let mut digest = xxhash_rust::xxh3::Xxh3::new();
        digest.write_u8(u8::from(settings.verify));
        let sni = match settings.sni {
            Some(name) => {
                digest.write(name.as_bytes());
                Some(ServerName::try_from(name.to_owned()).map_err(|_| {
                    refuse(
                        Field::Sni,
                        format!("{name:?} is neither a DNS name nor an IP address"),
                    )
                })?)
            }
            None => None,
        };
        digest.write_u8(0xff);
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| refuse(Field::Roots, format!("TLS provider: {e}")))?;
        let builder = if settings.verify {
            let mut roots = RootCertStore::empty();
            match settings.ca_file {
                Some(path) => {
                    let pem = read(Field::CaFile, path, "ca_file")?;
                    digest.write(&pem);
                    for cert in certificates(Field::CaFile, path, &pem)? {
                        roots.add(cert).map_err(|e| {
                            refuse(
                                Field::CaFile,
                                format!("{}: a certificate is unusable: {e}", path.display()),
                            )
                        })?;
                    }
                }
                None => {
                    // Certificates the system store holds but rustls cannot
                    // use are skipped, as every TLS client does.
                    let native = rustls_native_certs::load_native_certs();
                    let (added, _) = roots.add_parsable_certificates(native.certs);
                    if added == 0 {
                        let why = native
                            .errors
                            .first()
                            .map_or_else(String::new, |e| format!(" ({e})"));
                        return Err(refuse(
                            Field::Roots,
                            format!(
                                "no usable system root certificate{why}; set ca_file, or install ca-certificates"
                            ),
                        ));
                    }
                }
            }
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                    provider.signature_verification_algorithms,
                )))
        };
        let mut config = match (settings.cert, settings.key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read(Field::Cert, cert, "cert")?;
                let chain = certificates(Field::Cert, cert, &cert_pem)?;
                let key_pem = read(Field::Key, key, "key")?;
                let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    refuse(
                        Field::Key,
                        format!("{} holds no usable PEM private key: {e}", key.display()),
                    )
                })?;
                digest.write(&cert_pem);
                digest.write(&key_pem);
                builder.with_client_auth_cert(chain, private).map_err(|e| {
                    refuse(
                        Field::Key,
                        format!(
                            "{} cannot be used with {}: {e}",
                            key.display(),
                            cert.display()
                        ),
                    )
                })?
            }
            (Some(_), None) => return Err(refuse(Field::Cert, "cert needs a key")),
            (None, Some(_)) => return Err(refuse(Field::Key, "key needs a cert")),
            (None, None) => builder.with_no_client_auth(),
        };
        // Levee speaks HTTP/1.1 to endpoints, or HTTP/2 to those of an
        // `h2` cluster; servers that insist on ALPN get told which.
        let mut h2 = config.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Connector {
            connector: TlsConnector::from(Arc::new(config)),
            h2: TlsConnector::from(Arc::new(h2)),
            sni,
            fingerprint: digest.finish(),
        })
    }
}

/// `verify = false`: every certificate is accepted; the handshake's own
/// signatures are still checked, as the protocol requires.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// How a handshake with an endpoint ended (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    /// The endpoint's certificate was refused (unknown issuer, expired,
    /// wrong name, ...).
    Certificate,
    /// The endpoint refused us with an alert (e.g. it wants a client
    /// certificate we do not have, or refused ours).
    Alert,
    /// The endpoint did not finish the handshake within the connect timeout.
    Timeout,
    /// Anything else: the connection closed or broke mid-handshake, the
    /// endpoint does not speak TLS, ...
    Error,
}

impl Handshake {
    pub const ALL: [Handshake; 5] = [
        Handshake::Ok,
        Handshake::Certificate,
        Handshake::Alert,
        Handshake::Timeout,
        Handshake::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Certificate => "certificate",
            Handshake::Alert => "alert",
            Handshake::Timeout => "timeout",
            Handshake::Error => "error",
        }
    }

    /// The result a failed handshake's error stands for.
    pub fn of_error(e: &io::Error) -> Handshake {
        match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType,
            ) => Handshake::Certificate,
            Some(rustls::Error::AlertReceived(_)) => Handshake::Alert,
            _ => Handshake::Error,
        }
    }
}

/// Handshakes with one endpoint, by result (the metric handles are the
/// caller's, so the labels are too).
pub struct Handshakes([Counter; 5]);

impl Handshakes {
    pub fn new(mut counter: impl FnMut(Handshake) -> Counter) -> Handshakes {
        Handshakes(Handshake::ALL.map(&mut counter))
    }

    pub fn record(&self, result: Handshake) {
        self.0[result as usize].inc();
    }

    pub fn get(&self, result: Handshake) -> u64 {
        self.0[result as usize].get()
    }
}

/// What connecting to one endpoint over TLS needs: the cluster's connector,
/// the name the endpoint is verified against, and where handshakes are
/// counted.
#[derive(Clone)]
pub struct EndpointTls {
    connector: Arc<Connector>,
    name: ServerName<'static>,
    /// Pooled connections are reused only by requests with the same key.
    pub key: u64,
    pub handshakes: Arc<Handshakes>,
}

impl EndpointTls {
    /// `host`: the endpoint's host name when its address was given by name
    /// (`HOST:PORT`). The name verified (and sent as SNI) is the cluster's
    /// `sni`, else that host name, else the endpoint's IP address (then no
    /// SNI is sent, and the certificate must name the IP).
    pub fn new(
        connector: Arc<Connector>,
        host: Option<&str>,
        address: SocketAddr,
        handshakes: Arc<Handshakes>,
    ) -> EndpointTls {
        let name = connector
            .sni
            .clone()
            .or_else(|| {
                let host = host?.trim_end_matches('.');
                ServerName::try_from(host.to_owned()).ok()
            })
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()));
        let mut digest = xxhash_rust::xxh3::Xxh3::new();
        digest.write_u64(connector.fingerprint);
        digest.write(name.to_str().as_bytes());
        EndpointTls {
            connector,
            name,
            // 0 is a plain connection's key.
            key: digest.finish().max(1),
            handshakes,
        }
    }

    /// The name sent as SNI (none for an IP address) and verified.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.name
    }

    /// The TLS handshake over an open connection. No time limit of its own:
    /// the caller's connect timeout covers it.
    pub async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        self.connector
            .connector
            .connect(self.name.clone(), tcp)
            .await
    }

    /// The handshake offering ALPN `h2` (`protocol = "h2"`). An endpoint
    /// that picks no protocol is spoken HTTP/2 to all the same (gRPC servers
    /// without ALPN); one that picks another is refused.
    pub async fn handshake_h2(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        let stream = self.connector.h2.connect(self.name.clone(), tcp).await?;
        match stream.get_ref().1.alpn_protocol() {
            None | Some(b"h2") => Ok(stream),
            Some(other) => Err(io::Error::other(format!(
                "the endpoint chose ALPN {:?}, not h2",
                String::from_utf8_lossy(other)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::conn::{Conn, Stream};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn no_counters() -> Arc<Handshakes> {
        Arc::new(Handshakes::new(|_| Counter::default()))
    }

    fn lax() -> Arc<Connector> {
        let settings = Settings {
            ca_file: None,
            verify: false,
            cert: None,
            key: None,
            sni: None,
        };
        Arc::new(Connector::build(&settings).expect("builds"))
    }

    #[test]
    fn the_verified_name_is_sni_then_host_then_ip() {
        let address: SocketAddr = "10.0.0.7:443".parse().expect("addr");
        let by_ip = EndpointTls::new(lax(), None, address, no_counters());
        assert_eq!(by_ip.server_name().to_str(), "10.0.0.7");
        assert!(matches!(by_ip.server_name(), ServerName::IpAddress(_)));
        let by_host = EndpointTls::new(lax(), Some("app.internal."), address, no_counters());
        assert_eq!(by_host.server_name().to_str(), "app.internal");
        let settings = Settings {
            ca_file: None,
            verify: false,
            cert: None,
            key: None,
            sni: Some("front.example"),
        };
        let sni = Arc::new(Connector::build(&settings).expect("builds"));
        let set = EndpointTls::new(sni, Some("app.internal"), address, no_counters());
        assert_eq!(set.server_name().to_str(), "front.example");
        // Another name, another pool key; plain TCP is 0.
        assert_ne!(by_ip.key, by_host.key);
        assert_ne!(by_host.key, set.key);
        assert_ne!(by_ip.key, 0);
    }

    /// The case the pool must get right: a TLS 1.3 server sends its
    /// session tickets after the handshake, so an idle connection's socket
    /// is readable though nothing was closed. Then the server closes it
    /// with `close_notify`, and only then is it not reusable.
    #[tokio::test]
    async fn an_idle_connection_with_unread_tickets_is_open_until_closed() {
        let ca =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).expect("write");
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![ca.cert.der().clone()],
                PrivateKeyDer::from_pem_slice(ca.signing_key.serialize_pem().as_bytes())
                    .expect("key"),
            )
            .expect("server config");
        assert_eq!(server.send_tls13_tickets, 2);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("addr");
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("handshake");
            tls.flush().await.expect("flush");
            let mut request = [0u8; 4];
            tls.read_exact(&mut request).await.expect("request");
            tls.write_all(b"pong").await.expect("response");
            tls.flush().await.expect("flush");
            let _ = close_rx.await;
            tls.shutdown().await.expect("close_notify");
        });

        let settings = Settings {
            ca_file: Some(&ca_file),
            verify: true,
            cert: None,
            key: None,
            sni: None,
        };
        let connector = Arc::new(Connector::build(&settings).expect("connector"));
        let handshakes = no_counters();
        let tls = EndpointTls::new(connector, None, address, handshakes.clone());
        let mut conn = Conn::connect(address, None, Duration::from_secs(10), Some(&tls))
            .await
            .expect("connect");
        assert_eq!(handshakes.get(Handshake::Ok), 1);
        assert_eq!(conn.transport, tls.key);
        let tcp = |c: &Conn| match &c.stream {
            Stream::Tls(t) => t.get_ref().0.peer_addr().expect("peer"),
            Stream::Plain(_) => panic!("not TLS"),
        };
        assert_eq!(tcp(&conn), address);
        // The tickets are in the socket, unread: a raw read would call the
        // connection closed (it is readable) and tear records out of it.
        let mut peek = [0u8; 1];
        let Stream::Tls(t) = &conn.stream else {
            panic!("not TLS")
        };
        let n = tokio::time::timeout(Duration::from_secs(10), t.get_ref().0.peek(&mut peek))
            .await
            .expect("tickets arrive")
            .expect("peek");
        assert_eq!(n, 1);
        assert!(conn.is_idle_and_open(), "tickets are not a close");
        // And the connection works after the check.
        conn.stream.write_all(b"ping").await.expect("write");
        conn.stream.flush().await.expect("flush");
        let mut response = [0u8; 4];
        conn.stream
            .read_exact(&mut response)
            .await
            .expect("response");
        assert_eq!(&response, b"pong");
        assert!(conn.is_idle_and_open());

        close_tx.send(()).expect("server waits");
        server.await.expect("server");
        let Stream::Tls(t) = &conn.stream else {
            panic!("not TLS")
        };
        tokio::time::timeout(Duration::from_secs(10), t.get_ref().0.readable())
            .await
            .expect("close_notify arrives")
            .expect("readable");
        assert!(!conn.is_idle_and_open(), "close_notify is a close");
    }

    #[tokio::test]
    async fn a_plain_server_fails_the_handshake_and_is_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        });
        let handshakes = no_counters();
        let tls = EndpointTls::new(lax(), None, address, handshakes.clone());
        let e = Conn::connect(address, None, Duration::from_secs(10), Some(&tls)).await;
        assert!(matches!(
            e,
            Err(crate::upstream::conn::ConnectError::Handshake(_))
        ));
        assert_eq!(handshakes.get(Handshake::Error), 1);
        assert_eq!(handshakes.get(Handshake::Ok), 0);
    }
}
