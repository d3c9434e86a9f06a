//! TLS towards endpoints, for tests: certificates made at test time
//! ([`TestCa`], rcgen) and [`TlsFront`], a real TLS server (rustls) on
//! loopback in front of a plain [`super::Backend`], so every backend
//! behaviour and counter works over TLS. One TCP connection to the backend
//! per TLS connection: the backend's connection count is the number of TLS
//! connections that got through the handshake.
//!
//! The front can also do what makes pooled TLS connections hard: send a
//! TLS 1.3 key update a while after each response (a post-handshake message
//! that arrives while the connection sits idle in Levee's pool, as late
//! session tickets do), and close idle connections with `close_notify`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A certificate authority made for one test binary.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// A certificate signed by a [`TestCa`] and its key, both PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        TestCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), for a server
    /// or a client.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Writes `text` to `dir/name` and returns the path as a string for TOML.
pub fn write_pem(dir: &Path, name: &str, text: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, text).expect("write pem");
    path.display().to_string()
}

#[derive(Clone, Default)]
pub struct FrontOptions {
    /// Require a client certificate signed by this CA (PEM).
    pub client_ca: Option<String>,
    /// Send a TLS 1.3 key update this long after each answer from the
    /// backend (when the connection is idle in the client's pool).
    pub key_update_after: Option<Duration>,
    /// Close a connection idle this long, with `close_notify`.
    pub idle_close: Option<Duration>,
    /// Speak TLS 1.2 only.
    pub tls12_only: bool,
}

#[derive(Default)]
struct Seen {
    handshakes: AtomicU64,
    failed: AtomicU64,
    with_client_cert: AtomicU64,
    key_updates: AtomicU64,
    idle_closes: AtomicU64,
    resumed: AtomicU64,
    sni: Mutex<Vec<Option<String>>>,
    versions: Mutex<Vec<String>>,
}

/// A TLS server in front of a plain backend, on its own thread and runtime.
pub struct TlsFront {
    addr: SocketAddr,
    seen: Arc<Seen>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TlsFront {
    pub fn start(backend: SocketAddr, leaf: &Leaf, options: FrontOptions) -> TlsFront {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if options.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("versions");
        let builder = match &options.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(c.expect("client ca pem")).expect("client ca");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("cert pem");
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key pem");
        let config = builder.with_single_cert(chain, key).expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std.set_nonblocking(true).expect("nonblocking");
        let addr = std.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let (tx, mut rx) = oneshot::channel::<()>();
        let s = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            tokio::spawn(serve(tcp, acceptor.clone(), backend, options.clone(), s.clone()));
                        }
                    }
                }
            });
        });
        TlsFront {
            addr,
            seen,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Handshakes completed.
    pub fn handshakes(&self) -> u64 {
        self.seen.handshakes.load(Ordering::SeqCst)
    }

    /// Handshakes that failed (the client refused our certificate, or
    /// had none when one is required).
    pub fn failed_handshakes(&self) -> u64 {
        self.seen.failed.load(Ordering::SeqCst)
    }

    /// Handshakes in which the client presented a (valid) certificate.
    pub fn with_client_cert(&self) -> u64 {
        self.seen.with_client_cert.load(Ordering::SeqCst)
    }

    /// Key updates sent to idle connections.
    pub fn key_updates(&self) -> u64 {
        self.seen.key_updates.load(Ordering::SeqCst)
    }

    /// Idle connections closed with `close_notify`.
    pub fn idle_closes(&self) -> u64 {
        self.seen.idle_closes.load(Ordering::SeqCst)
    }

    /// Handshakes that resumed an earlier session (abbreviated).
    pub fn resumed(&self) -> u64 {
        self.seen.resumed.load(Ordering::SeqCst)
    }

    /// The SNI of each completed handshake, in order (`None`: none sent).
    pub fn sni(&self) -> Vec<Option<String>> {
        self.seen.sni.lock().expect("sni").clone()
    }

    /// The protocol version of each completed handshake ("TLSv1_3", ...).
    pub fn versions(&self) -> Vec<String> {
        self.seen.versions.lock().expect("versions").clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    backend: SocketAddr,
    options: FrontOptions,
    seen: Arc<Seen>,
) {
    let mut tls = match acceptor.accept(tcp).await {
        Ok(t) => t,
        Err(_) => {
            seen.failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    {
        let conn = tls.get_ref().1;
        seen.sni
            .lock()
            .expect("sni")
            .push(conn.server_name().map(str::to_string));
        seen.versions.lock().expect("versions").push(
            conn.protocol_version()
                .map_or_else(String::new, |v| format!("{v:?}")),
        );
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            seen.resumed.fetch_add(1, Ordering::SeqCst);
        }
        if conn.peer_certificates().is_some_and(|c| !c.is_empty()) {
            seen.with_client_cert.fetch_add(1, Ordering::SeqCst);
        }
    }
    seen.handshakes.fetch_add(1, Ordering::SeqCst);
    let Ok(mut inner) = TcpStream::connect(backend).await else {
        return;
    };
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    let far = Duration::from_secs(3600);
    let mut key_update_at: Option<tokio::time::Instant> = None;
    loop {
        let idle = tokio::time::sleep(options.idle_close.unwrap_or(far));
        let update = tokio::time::sleep_until(
            key_update_at.unwrap_or_else(|| tokio::time::Instant::now() + far),
        );
        tokio::select! {
            r = tls.read(&mut up) => match r {
                Ok(n) if n > 0 => {
                    if inner.write_all(&up[..n]).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            r = inner.read(&mut down) => match r {
                Ok(n) if n > 0 => {
                    if tls.write_all(&down[..n]).await.is_err() || tls.flush().await.is_err() {
                        break;
                    }
                    if let Some(after) = options.key_update_after {
                        key_update_at = Some(tokio::time::Instant::now() + after);
                    }
                }
                _ => {
                    let _ = tls.shutdown().await;
                    break;
                }
            },
            _ = update, if key_update_at.is_some() => {
                key_update_at = None;
                if tls.get_mut().1.refresh_traffic_keys().is_err() || tls.flush().await.is_err() {
                    break;
                }
                seen.key_updates.fetch_add(1, Ordering::SeqCst);
            }
            _ = idle, if options.idle_close.is_some() => {
                let _ = tls.shutdown().await;
                seen.idle_closes.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
    }
}
