//! An HTTP/2 endpoint (h2c, prior knowledge) built on the `h2` crate, for
//! what a tonic or hyper server will not do on request: refuse a stream
//! with `REFUSED_STREAM`, or go silent on its open connections as a dead
//! host or a dropped NAT entry does (bytes in are swallowed, nothing goes
//! out, not even PING acknowledgements, and the socket stays open).
//!
//! Every stream it serves is answered 200 with its request body echoed and
//! `x-connection: N` (1 for the first connection it accepted).
//!
//! ```ignore
//! #[path = "support/h2_endpoint.rs"]
//! mod h2_endpoint;
//! let e = h2_endpoint::H2Endpoint::start();
//! e.refuse_next(1);
//! ```

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    /// Streams still to refuse with REFUSED_STREAM.
    refuse: AtomicUsize,
    refused: AtomicUsize,
    served: AtomicUsize,
    connections: AtomicUsize,
    /// Connections the peer closed (EOF read), silent ones included.
    closed: AtomicUsize,
    /// One flag per accepted connection: set, it goes silent.
    silences: std::sync::Mutex<Vec<Arc<AtomicBool>>>,
}

pub struct H2Endpoint {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl H2Endpoint {
    pub fn start() -> H2Endpoint {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("address");
        let state = Arc::new(State::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                let accept = async {
                    while let Ok((tcp, _)) = listener.accept().await {
                        let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                        let silent = Arc::new(AtomicBool::new(false));
                        shared
                            .silences
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(silent.clone());
                        let io = Gate {
                            inner: tcp,
                            silent,
                            state: shared.clone(),
                            ended: false,
                        };
                        tokio::spawn(serve(io, n, shared.clone()));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        H2Endpoint {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next `n` streams are refused with REFUSED_STREAM before a byte
    /// of their request is read.
    pub fn refuse_next(&self, n: usize) {
        self.state.refuse.store(n, Ordering::SeqCst);
    }

    /// Every connection open now goes silent: what arrives is dropped
    /// unread, nothing is sent, the socket stays open until the peer
    /// closes it. Connections accepted later are served.
    pub fn silence_open_connections(&self) {
        for s in self
            .state
            .silences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            s.store(true, Ordering::SeqCst);
        }
    }

    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Streams answered 200.
    pub fn served(&self) -> usize {
        self.state.served.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections the peer closed.
    pub fn closed(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }
}

impl Drop for H2Endpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(io: Gate, connection: usize, state: Arc<State>) {
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    // `accept` also drives the connection (PINGs, SETTINGS, flow control).
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let refuse = state
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            state.refused.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let mut body = req.into_body();
            let mut echoed = Vec::new();
            while let Some(chunk) = body.data().await {
                let Ok(chunk) = chunk else { return };
                let _ = body.flow_control().release_capacity(chunk.len());
                echoed.extend_from_slice(&chunk);
            }
            let response = http::Response::builder()
                .status(200)
                .header("x-connection", connection.to_string())
                .body(())
                .expect("response");
            let Ok(mut send) = respond.send_response(response, false) else {
                return;
            };
            state.served.fetch_add(1, Ordering::SeqCst);
            let _ = send.send_data(Bytes::from(echoed), true);
        });
    }
}

/// The connection's socket, which goes silent when told: a dead host as
/// seen from the other end.
struct Gate {
    inner: TcpStream,
    silent: Arc<AtomicBool>,
    state: Arc<State>,
    /// The peer's EOF was counted.
    ended: bool,
}

impl AsyncRead for Gate {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before => {
                    if !std::mem::replace(&mut this.ended, true) {
                        this.state.closed.fetch_add(1, Ordering::SeqCst);
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) if this.silent.load(Ordering::SeqCst) => {
                    // Swallowed: h2 never sees it (no PING is answered).
                    buf.set_filled(before);
                }
                other => return other,
            }
        }
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.silent.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
