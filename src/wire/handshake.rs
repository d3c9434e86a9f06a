//! One client connection's TLS handshake on a TLS listener: its first byte must start a TLS
//! record (plain HTTP on the TLS port is answered 400, as nginx does); the
//! handshake must finish within the listener's `handshake_timeout`; what it
//! negotiated becomes the connection's `TlsInfo`.

use std::io;
use std::task::{Context, Poll};

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::sniff::{Prefix, Prefixed, ReadReady, Speaks};
use crate::tls::metrics::{HandshakeLabels, TlsMetrics};
use crate::tls::{Terminator, TlsInfo};

pub type ServerStream = TlsStream<Prefixed<TcpStream>>;

/// How a handshake ended badly.
pub enum Refused {
    /// Plain HTTP on the TLS port: answer it (the caller has the words).
    PlainHttp(Prefixed<TcpStream>),
    /// Anything else: the connection is gone (an alert was sent if rustls
    /// had one to send).
    Failed,
}

/// Runs the handshake. Failures are counted by reason.
pub async fn handshake(
    mut stream: TcpStream,
    t: &Terminator,
    metrics: &TlsMetrics,
) -> Result<(ServerStream, TlsInfo), Refused> {
    let listener = &*t.listener;
    let work = async {
        let mut prefix = Prefix::default();
        match prefix.read(&mut stream).await {
            Ok(Some(Speaks::Tls)) => {}
            Ok(Some(_)) => {
                metrics.failed(listener, "plain_http");
                return Err(Refused::PlainHttp(Prefixed::new(prefix, stream)));
            }
            Ok(None) | Err(_) => {
                metrics.failed(listener, "closed");
                return Err(Refused::Failed);
            }
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(t.config());
        match acceptor.accept(Prefixed::new(prefix, stream)).await {
            Ok(tls) => Ok(tls),
            Err(e) => {
                metrics.failed(listener, reason(&e));
                Err(Refused::Failed)
            }
        }
    };
    let tls = match tokio::time::timeout(t.handshake_timeout, work).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(refused)) => return Err(refused),
        Err(_) => {
            metrics.failed(listener, "timeout");
            return Err(Refused::Failed);
        }
    };
    let conn = tls.get_ref().1;
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    };
    let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    metrics
        .handshakes
        .get_or_create(&HandshakeLabels {
            listener: listener.to_owned(),
            version,
            result: if resumed { "resumed" } else { "full" },
        })
        .inc();
    let client_subject = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .and_then(|(_, c)| HeaderValue::from_str(&c.subject().to_string()).ok());
    let info = TlsInfo {
        version,
        sni: conn.server_name().map(Into::into),
        alpn: conn.alpn_protocol().map(Into::into),
        client_subject,
        hsts: t.hsts.clone(),
    };
    Ok((tls, info))
}

/// The failure reason label of a handshake error.
fn reason(e: &io::Error) -> &'static str {
    use rustls::{Error, PeerIncompatible};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => "closed",
            _ => "other",
        };
    };
    match tls {
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => "bad_message",
        Error::InappropriateHandshakeMessage { .. } | Error::PeerMisbehaved(_) => "bad_message",
        Error::PeerIncompatible(p) => match p {
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::Tls13RequiredForQuic
            | PeerIncompatible::SupportedVersionsExtensionRequired => "protocol_version",
            PeerIncompatible::NoCipherSuitesInCommon
            | PeerIncompatible::NoKxGroupsInCommon
            | PeerIncompatible::NoSignatureSchemesInCommon => "no_shared_cipher",
            _ => "other",
        },
        Error::General(m) if m.contains("no server certificate") => "no_certificate_for_name",
        Error::NoApplicationProtocol => "no_application_protocol",
        Error::NoCertificatesPresented => "client_certificate_missing",
        Error::InvalidCertificate(_) => "client_certificate_invalid",
        Error::AlertReceived(_) => "alert_received",
        _ => "other",
    }
}

/// A TLS stream is ready to read when rustls holds decrypted bytes (or the
/// peer's close), else when its socket is readable.
impl<S: ReadReady + AsyncRead + AsyncWrite + Unpin> ReadReady for TlsStream<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (io, conn) = self.get_ref();
        if !conn.wants_read() {
            return Poll::Ready(Ok(()));
        }
        io.poll_read_ready(cx)
    }

    fn keeps_buffers(&self) -> bool {
        true
    }

    /// rustls keeps a 4 KiB buffer of received records for the life of a
    /// connection; the patched rustls (vendor/rustls) lets it go when no
    /// record is in it, and takes one again at the next read.
    fn release_idle(&mut self) {
        self.get_mut().1.release_idle_buffers();
    }
}
