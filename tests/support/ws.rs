//! WebSocket endpoints and clients for tests (tokio-tungstenite).
//!
//! [`WsServer`] is a WebSocket server on 127.0.0.1 with an ephemeral port,
//! on its own thread and runtime: it answers the text message `who` with
//! its name and echoes every other data message; it counts the tunnels it
//! holds open and keeps the status code of every close frame it received
//! (`None`: the connection ended without one). [`wss_connect`] opens a
//! client over TLS (tokio-rustls) trusting a test CA.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type WsClient = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// A client over TLS.
pub type WssClient = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    open: AtomicUsize,
    closes: Mutex<Vec<Option<u16>>>,
}

pub struct WsServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl WsServer {
    pub fn start(name: &str) -> WsServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (name, shared) = (name.to_owned(), seen.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let (name, seen) = (name.clone(), shared.clone());
                        tokio::spawn(serve(stream, name, seen));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        WsServer {
            addr,
            seen,
            stop: Some(stop),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// WebSocket handshakes it completed.
    pub fn accepted(&self) -> usize {
        self.seen.accepted.load(Ordering::SeqCst)
    }

    /// Tunnels open on it now.
    pub fn open(&self) -> usize {
        self.seen.open.load(Ordering::SeqCst)
    }

    /// The close codes it received, one per ended connection.
    pub fn closes(&self) -> Vec<Option<u16>> {
        self.seen.closes.lock().expect("lock").clone()
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(stream: TcpStream, name: String, seen: Arc<Seen>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    seen.accepted.fetch_add(1, Ordering::SeqCst);
    seen.open.fetch_add(1, Ordering::SeqCst);
    let mut code = None;
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) if t.as_str() == "who" => Message::text(name.clone()),
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(frame) => {
                code = frame.map(|f| u16::from(f.code));
                // tungstenite answers the close itself; read on to the end.
                continue;
            }
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
    seen.open.fetch_sub(1, Ordering::SeqCst);
    seen.closes.lock().expect("lock").push(code);
}

/// Opens a WebSocket through `listen` to `path`; panics if the handshake
/// fails.
pub async fn ws_connect(listen: SocketAddr, path: &str) -> WsClient {
    let url = format!("ws://{listen}{path}");
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(&url),
    )
    .await
    {
        Ok(Ok((ws, response))) => {
            assert_eq!(response.status(), 101, "{url}");
            ws
        }
        Ok(Err(e)) => panic!("WebSocket handshake with {url} failed: {e}"),
        Err(_) => panic!("WebSocket handshake with {url} timed out"),
    }
}

/// Opens a WebSocket over TLS through `listen` (a TLS listener) to `path`,
/// asking for server name `sni` and trusting `ca_pem`; panics if the TLS
/// or the WebSocket handshake fails.
pub async fn wss_connect(listen: SocketAddr, sni: &str, ca_pem: &str, path: &str) -> WssClient {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("server name");
    let url = format!("wss://{sni}{path}");
    let connect = async {
        let tcp = TcpStream::connect(listen).await.expect("connect");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        tokio_tungstenite::client_async(url.as_str(), tls).await
    };
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok((ws, response))) => {
            assert_eq!(response.status(), 101, "{url}");
            ws
        }
        Ok(Err(e)) => panic!("WebSocket handshake with {url} failed: {e}"),
        Err(_) => panic!("WebSocket handshake with {url} timed out"),
    }
}

/// Sends `text` and returns the next data message as text.
pub async fn ws_ask<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    text: &str,
) -> String {
    ws.send(Message::text(text)).await.expect("send");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.as_str().to_owned(),
            Ok(Some(Ok(Message::Binary(b)))) => return String::from_utf8_lossy(&b).into_owned(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no answer to {text:?}: {other:?}"),
        }
    }
}

/// How a client's connection ended, waiting up to `within`.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEnd {
    /// A close frame with this code.
    Close(Option<u16>),
    /// The connection ended without a close frame (reset or plain close).
    Cut(String),
    /// Still open after `within`.
    Open,
}

/// Reads (dropping data messages) until the connection ends or `within`
/// passes.
pub async fn ws_end<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    within: Duration,
) -> WsEnd {
    let ended = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f: CloseFrame| u16::from(f.code));
                    // Let tungstenite send the answering close and see the end.
                    while let Some(Ok(_)) = ws.next().await {}
                    return WsEnd::Close(code);
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return WsEnd::Cut(e.to_string()),
                None => return WsEnd::Cut("end of stream".into()),
            }
        }
    };
    tokio::time::timeout(within, ended)
        .await
        .unwrap_or(WsEnd::Open)
}
