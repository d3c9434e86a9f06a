//! One TLS listener's rustls configuration. It is built from the listener's
//! settings and files at start and on every reload, and rebuilt when one of
//! its files changes (`refresh`, polled by the control plane): the new
//! configuration is swapped in whole, so new handshakes use it while open
//! connections keep the one they were made with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderValue;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, WebPkiClientVerifier};

use super::material;
use super::metrics::{CertificateLabels, ReloadLabels, TlsMetrics};
use super::sni::SniResolver;
use super::tickets::FileTicketer;
use crate::config::Config;
use crate::config::tls::{ClientAuth, ListenerTlsConfig, TlsVersion};

/// What identifies a file's content without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // Follows symlinks: a Kubernetes secret swaps the link's target.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

pub struct Terminator {
    pub listener: Arc<str>,
    settings: ListenerTlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
    pub handshake_timeout: Duration,
    /// The `Strict-Transport-Security` value of the listener's responses.
    pub hsts: Option<HeaderValue>,
    watched: Mutex<Vec<(PathBuf, Option<Stamp>)>>,
    /// Certificate file and its notAfter (Unix seconds).
    expiry: Mutex<Vec<(String, i64)>>,
}

struct Built {
    config: Arc<rustls::ServerConfig>,
    expiry: Vec<(String, i64)>,
}

impl Terminator {
    pub fn build(listener: &str, settings: &ListenerTlsConfig) -> Result<Terminator, String> {
        let watched = watched_files(settings);
        let built = build(settings)?;
        let hsts = settings.hsts.map(|age| {
            let mut v = format!("max-age={}", age.get().as_secs());
            if settings.hsts_include_subdomains {
                v.push_str("; includeSubDomains");
            }
            HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("max-age=0"))
        });
        Ok(Terminator {
            listener: listener.into(),
            settings: settings.clone(),
            current: ArcSwap::new(built.config),
            handshake_timeout: settings.handshake_timeout.get(),
            hsts,
            watched: Mutex::new(watched),
            expiry: Mutex::new(built.expiry),
        })
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// Rebuilds the configuration if one of its files changed since the
    /// last build, and sets the expiry gauges. A failed rebuild keeps the
    /// current configuration serving (and is retried at the next change).
    pub fn refresh(&self, metrics: &TlsMetrics, now: SystemTime) {
        let changed = {
            let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
            let mut changed = false;
            for (path, last) in watched.iter_mut() {
                let s = stamp(path);
                if s != *last {
                    *last = s;
                    changed = true;
                }
            }
            changed
        };
        if changed {
            let result = match build(&self.settings) {
                Ok(built) => {
                    self.current.store(built.config);
                    *self.expiry.lock().unwrap_or_else(PoisonError::into_inner) = built.expiry;
                    tracing::info!(listener = %self.listener, "TLS certificates re-read: their files changed");
                    "ok"
                }
                Err(e) => {
                    tracing::error!(listener = %self.listener, "TLS files changed but cannot be used, still serving the previous certificates: {e}");
                    "failed"
                }
            };
            metrics
                .reloads
                .get_or_create(&ReloadLabels {
                    listener: self.listener.to_string(),
                    result,
                })
                .inc();
        }
        self.set_expiry(metrics, now);
    }

    pub fn set_expiry(&self, metrics: &TlsMetrics, now: SystemTime) {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for (cert, not_after) in self
            .expiry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            metrics
                .expiry
                .get_or_create(&CertificateLabels {
                    listener: self.listener.to_string(),
                    certificate: cert.clone(),
                })
                .set(not_after - now);
        }
    }
}

fn watched_files(s: &ListenerTlsConfig) -> Vec<(PathBuf, Option<Stamp>)> {
    let mut files: Vec<PathBuf> = s
        .certificates
        .iter()
        .flat_map(|c| [c.cert.get_ref().into(), c.key.get_ref().into()])
        .collect();
    files.extend(s.client_ca.iter().map(|p| p.get_ref().into()));
    files.extend(s.ticket_key_file.iter().map(|p| p.get_ref().into()));
    files
        .into_iter()
        .map(|p| {
            let s = stamp(&p);
            (p, s)
        })
        .collect()
}

/// Session tickets sealed with keys random to this process, rotated by
/// rustls every 6 hours; one for the process, so a reload does not
/// invalidate the tickets clients hold.
fn process_ticketer() -> Result<Arc<dyn ProducesTickets>, String> {
    static TICKETER: OnceLock<Result<Arc<dyn ProducesTickets>, String>> = OnceLock::new();
    TICKETER
        .get_or_init(|| rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| e.to_string()))
        .clone()
}

/// TLS 1.2 sessions resumed by id; one cache for the process.
fn session_cache() -> Arc<ServerSessionMemoryCache> {
    static CACHE: OnceLock<Arc<ServerSessionMemoryCache>> = OnceLock::new();
    CACHE
        .get_or_init(|| ServerSessionMemoryCache::new(16 * 1024))
        .clone()
}

fn build(s: &ListenerTlsConfig) -> Result<Built, String> {
    let provider = super::provider();
    let mut certs = Vec::with_capacity(s.certificates.len());
    let mut expiry = Vec::with_capacity(s.certificates.len());
    for (i, c) in s.certificates.iter().enumerate() {
        let names: Option<Vec<String>> = c
            .names
            .as_ref()
            .map(|n| n.iter().map(|n| n.get_ref().clone()).collect());
        let m = material::load(
            Path::new(c.cert.get_ref()),
            Path::new(c.key.get_ref()),
            names.as_deref(),
            &provider,
        )
        .map_err(|e| format!("certificates[{i}]: {}", e.message))?;
        expiry.push((c.cert.get_ref().clone(), m.not_after));
        certs.push((m.names, m.key));
    }
    let resolver = SniResolver::new(
        certs.iter().map(|(n, k)| (n.as_slice(), k.clone())),
        s.strict_sni,
    );
    let versions: &[&rustls::SupportedProtocolVersion] = match s.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &s.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = material::ca_roots(Path::new(ca.get_ref()))?;
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if s.client_auth == ClientAuth::Optional {
                v = v.allow_unauthenticated();
            }
            let verifier = v
                .build()
                .map_err(|e| format!("client_ca {}: {e}", ca.get_ref()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = s
        .alpn
        .iter()
        .map(|p| p.get_ref().as_bytes().to_vec())
        .collect();
    // The server's cipher suite order (strongest first) over the client's.
    config.ignore_client_order = true;
    if s.session_tickets {
        config.ticketer = match &s.ticket_key_file {
            Some(f) => Arc::new(FileTicketer::load(Path::new(f.get_ref()))?),
            None => process_ticketer()?,
        };
        config.session_storage = session_cache();
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Built {
        config: Arc::new(config),
        expiry,
    })
}

/// The TLS listeners' terminators by address, replaced whole on reload.
#[derive(Default)]
pub struct Terminators(ArcSwap<HashMap<SocketAddr, Arc<Terminator>>>);

impl Terminators {
    /// Builds a terminator for every TLS listener of `config` (reading its
    /// files again: a reload re-reads certificates). Nothing is swapped.
    pub fn build(
        config: &Config,
        metrics: &TlsMetrics,
    ) -> Result<HashMap<SocketAddr, Arc<Terminator>>, String> {
        let mut out = HashMap::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let Some(tls) = &l.tls else { continue };
            let name = l.name.get_ref();
            // A tcp listener serves no HTTP: it offers no ALPN protocol
            // (validation refuses an explicit `alpn` there).
            let tcp = crate::config::tls::ListenerTlsConfig {
                alpn: Vec::new(),
                ..tls.clone()
            };
            let tls = if l.protocol == crate::config::Protocol::Tcp {
                &tcp
            } else {
                tls
            };
            let t = Terminator::build(name, tls)
                .map_err(|e| format!("listeners[{i}].tls ({name}): {e}"))?;
            metrics.listener(name);
            t.set_expiry(metrics, SystemTime::now());
            out.insert(*l.address.get_ref(), Arc::new(t));
        }
        Ok(out)
    }

    pub fn install(&self, built: HashMap<SocketAddr, Arc<Terminator>>) {
        self.0.store(Arc::new(built));
    }

    pub fn get(&self, address: SocketAddr) -> Option<Arc<Terminator>> {
        self.0.load().get(&address).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Terminator>> {
        self.0.load().values().cloned().collect()
    }

    /// The control plane's tick: re-reads changed files, sets the gauges.
    pub fn refresh(&self, metrics: &TlsMetrics, now: SystemTime) {
        for t in self.all() {
            t.refresh(metrics, now);
        }
    }
}
