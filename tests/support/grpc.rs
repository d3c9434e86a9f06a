//! gRPC for tests: a real tonic server ([`GrpcBackend`]: an echo service
//! with unary, server-streaming, client-streaming and bidirectional
//! methods, and the standard `grpc.health.v1.Health` service from
//! tonic-health) over h2c or TLS with ALPN h2, and a tonic client for it
//! ([`EchoClient`]).
//!
//! The messages are derived with prost by hand and the service glue is
//! written as tonic-build would generate it, so no `protoc` and no build
//! script are needed:
//!
//! ```proto
//! package levee.test;
//! message EchoRequest { string message = 1; uint32 delay_ms = 2; uint32 count = 3; }
//! message EchoReply { string message = 1; string server = 2; }
//! service Echo {
//!   rpc Unary(EchoRequest) returns (EchoReply);
//!   rpc ServerStream(EchoRequest) returns (stream EchoReply);  // `count` replies
//!   rpc ClientStream(stream EchoRequest) returns (EchoReply);  // messages joined
//!   rpc Bidi(stream EchoRequest) returns (stream EchoReply);   // one reply each
//! }
//! ```
//!
//! Behaviour is set per server: `fail_with(code)` makes every echo call end
//! with that status (a unary call trailers-only; a server-streaming call
//! with the status in trailers after the response head),
//! `goaway_after(n)` closes each connection gracefully (GOAWAY) after it
//! took `n` calls, and the health service's status is set with
//! `set_serving`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::{BoxFuture, Service};
use tonic::{Code, Request, Response, Status, Streaming};

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub delay_ms: u32,
    #[prost(uint32, tag = "3")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub server: String,
}

impl EchoRequest {
    pub fn new(message: &str) -> EchoRequest {
        EchoRequest {
            message: message.to_owned(),
            delay_ms: 0,
            count: 0,
        }
    }
}

/// What a server does and what it saw.
struct State {
    name: String,
    fail: Mutex<Option<Code>>,
    /// Calls of the echo service (every method).
    calls: AtomicUsize,
    connections: AtomicUsize,
    /// Calls each connection takes before it is closed with GOAWAY.
    goaway_after: Mutex<Option<usize>>,
    /// The `grpc-timeout` of the last echo call that had one.
    last_timeout: Mutex<Option<String>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl State {
    fn reply(&self, message: String) -> EchoReply {
        EchoReply {
            message,
            server: self.name.clone(),
        }
    }

    fn failing(&self) -> Option<Status> {
        let code = (*self.fail.lock().unwrap_or_else(|p| p.into_inner()))?;
        Some(Status::new(code, format!("{} fails on purpose", self.name)))
    }
}

#[derive(Clone)]
struct EchoService(Arc<State>);

struct UnarySvc(Arc<State>);
impl tonic::server::UnaryService<EchoRequest> for UnarySvc {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;
    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let req = request.into_inner();
            if req.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(u64::from(req.delay_ms))).await;
            }
            if let Some(status) = state.failing() {
                return Err(status);
            }
            Ok(Response::new(state.reply(req.message)))
        })
    }
}

struct ServerStreamSvc(Arc<State>);
impl tonic::server::ServerStreamingService<EchoRequest> for ServerStreamSvc {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;
    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let req = request.into_inner();
            // A failure here comes after the response head: its status is
            // in the trailers.
            if let Some(status) = state.failing() {
                let s: BoxStream<EchoReply> = Box::pin(tokio_stream::once(Err(status)));
                return Ok(Response::new(s));
            }
            let delay = Duration::from_millis(u64::from(req.delay_ms));
            let replies: Vec<EchoReply> = (0..req.count)
                .map(|i| state.reply(format!("{} {i}", req.message)))
                .collect();
            let s: BoxStream<EchoReply> =
                Box::pin(tokio_stream::iter(replies).then(move |r| async move {
                    tokio::time::sleep(delay).await;
                    Ok(r)
                }));
            Ok(Response::new(s))
        })
    }
}

struct ClientStreamSvc(Arc<State>);
impl tonic::server::ClientStreamingService<EchoRequest> for ClientStreamSvc {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;
    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut all = Vec::new();
            while let Some(m) = stream.message().await? {
                all.push(m.message);
            }
            Ok(Response::new(state.reply(all.join(","))))
        })
    }
}

struct BidiSvc(Arc<State>);
impl tonic::server::StreamingService<EchoRequest> for BidiSvc {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;
    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let stream = request.into_inner();
            let s: BoxStream<EchoReply> = Box::pin(stream.map(move |m| {
                let m = m?;
                Ok(state.reply(m.message))
            }));
            Ok(Response::new(s))
        })
    }
}

impl<B> Service<http::Request<B>> for EchoService
where
    B: hyper::body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let state = self.0.clone();
        state.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = req.headers().get("grpc-timeout") {
            *state.last_timeout.lock().unwrap_or_else(|p| p.into_inner()) =
                t.to_str().ok().map(str::to_owned);
        }
        let codec = tonic_prost::ProstCodec::<EchoReply, EchoRequest>::default;
        match req.uri().path() {
            "/levee.test.Echo/Unary" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(codec());
                Ok(grpc.unary(UnarySvc(state), req).await)
            }),
            "/levee.test.Echo/ServerStream" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(codec());
                Ok(grpc.server_streaming(ServerStreamSvc(state), req).await)
            }),
            "/levee.test.Echo/ClientStream" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(codec());
                Ok(grpc.client_streaming(ClientStreamSvc(state), req).await)
            }),
            "/levee.test.Echo/Bidi" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(codec());
                Ok(grpc.streaming(BidiSvc(state), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// How a [`GrpcBackend`] serves.
#[derive(Default, Clone)]
pub struct GrpcOptions {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` it announces.
    pub max_concurrent_streams: Option<u32>,
    /// TLS with ALPN h2: certificate and key PEM.
    pub tls: Option<(String, String)>,
}

/// A tonic gRPC server on 127.0.0.1, on its own thread and runtime.
pub struct GrpcBackend {
    addr: SocketAddr,
    state: Arc<State>,
    health: tonic_health::server::HealthReporter,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcBackend {
    pub fn start(name: &str) -> GrpcBackend {
        GrpcBackend::start_with(name, GrpcOptions::default())
    }

    pub fn start_with(name: &str, options: GrpcOptions) -> GrpcBackend {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let state = Arc::new(State {
            name: name.to_owned(),
            fail: Mutex::new(None),
            calls: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            goaway_after: Mutex::new(None),
            last_timeout: Mutex::new(None),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let served = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let (health, health_service) = tonic_health::server::health_reporter();
                health
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
                let _ = ready_tx.send((health, tokio::runtime::Handle::current()));
                let listener = TcpListener::from_std(std_listener).expect("listener");
                let tls = options
                    .tls
                    .as_ref()
                    .map(|(cert, key)| tls_acceptor(cert, key));
                let accept = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = tcp.set_nodelay(true);
                        served.connections.fetch_add(1, Ordering::SeqCst);
                        let conn = Connection {
                            state: served.clone(),
                            health: health_service.clone(),
                            max_streams: options.max_concurrent_streams,
                        };
                        match &tls {
                            None => {
                                tokio::spawn(conn.serve(TokioIo::new(tcp)));
                            }
                            Some(acceptor) => {
                                let acceptor = acceptor.clone();
                                tokio::spawn(async move {
                                    if let Ok(stream) = acceptor.accept(tcp).await {
                                        conn.serve(TokioIo::new(stream)).await;
                                    }
                                });
                            }
                        }
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        let (health, runtime) = ready_rx.recv().expect("gRPC server started");
        GrpcBackend {
            addr,
            state,
            health,
            runtime,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Echo calls received.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// The `grpc-timeout` header of the last echo call that had one.
    pub fn last_timeout(&self) -> Option<String> {
        self.state
            .last_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every echo call ends with `code` from now on (`None`: serve again).
    pub fn fail_with(&self, code: Option<Code>) {
        *self.state.fail.lock().unwrap_or_else(|p| p.into_inner()) = code;
    }

    /// Each connection is closed gracefully (GOAWAY) once it took `n` calls.
    pub fn goaway_after(&self, n: Option<usize>) {
        *self
            .state
            .goaway_after
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = n;
    }

    /// The health service's answer for the whole server ("").
    pub fn set_serving(&self, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        let health = self.health.clone();
        // On the server's runtime (the caller may be inside another one).
        let (done, wait) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            health.set_service_status("", status).await;
            let _ = done.send(());
        });
        wait.recv().expect("health status set");
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One accepted connection and what serves it.
struct Connection<H> {
    state: Arc<State>,
    health: H,
    max_streams: Option<u32>,
}

impl<H> Connection<H>
where
    H: Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    async fn serve<I>(self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let taken = Arc::new(AtomicUsize::new(0));
        let goaway = Arc::new(Notify::new());
        let (state, health) = (self.state.clone(), self.health);
        let limit = *self
            .state
            .goaway_after
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (counted, told) = (taken.clone(), goaway.clone());
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let is_health = req.uri().path().starts_with("/grpc.health.v1.Health/");
            if !is_health
                && let Some(n) = limit
                && counted.fetch_add(1, Ordering::SeqCst) + 1 == n
            {
                told.notify_one();
            }
            let mut echo = EchoService(state.clone());
            let mut health = health.clone();
            async move {
                if is_health {
                    health.call(req).await
                } else {
                    echo.call(req).await
                }
            }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        if let Some(n) = self.max_streams {
            builder.max_concurrent_streams(n);
        }
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = goaway.notified() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A tonic client of the echo service over one HTTP/2 connection: a tonic
/// `Channel` (`connect`), or hyper's bare connection (`connect_raw`), which,
/// unlike a `Channel`, does not enforce a call's `grpc-timeout` itself, so
/// that the deadline is the proxy's to keep.
#[derive(Clone)]
pub struct EchoClient<T = tonic::transport::Channel> {
    inner: tonic::client::Grpc<T>,
}

fn path(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(method)
}

/// hyper's HTTP/2 client connection as a tonic transport.
#[derive(Clone)]
pub struct RawChannel(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl Service<http::Request<tonic::body::Body>> for RawChannel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

impl EchoClient {
    pub async fn connect(addr: SocketAddr) -> EchoClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the gRPC listener");
        EchoClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }
}

impl EchoClient<RawChannel> {
    pub async fn connect_raw(addr: SocketAddr) -> EchoClient<RawChannel> {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        let origin: http::Uri = format!("http://{addr}").parse().expect("origin");
        EchoClient {
            inner: tonic::client::Grpc::with_origin(RawChannel(send), origin),
        }
    }
}

impl<T> EchoClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("not ready: {}", e.into())))
    }
    pub async fn unary(
        &mut self,
        req: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
        self.inner
            .unary(req, path("/levee.test.Echo/Unary"), codec)
            .await
    }

    pub async fn server_stream(
        &mut self,
        req: Request<EchoRequest>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
        self.inner
            .server_streaming(req, path("/levee.test.Echo/ServerStream"), codec)
            .await
    }

    pub async fn client_stream<S>(&mut self, messages: S) -> Result<Response<EchoReply>, Status>
    where
        S: Stream<Item = EchoRequest> + Send + 'static,
    {
        self.ready().await?;
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
        self.inner
            .client_streaming(
                Request::new(messages),
                path("/levee.test.Echo/ClientStream"),
                codec,
            )
            .await
    }

    pub async fn bidi<S>(&mut self, messages: S) -> Result<Response<Streaming<EchoReply>>, Status>
    where
        S: Stream<Item = EchoRequest> + Send + 'static,
    {
        self.ready().await?;
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
        self.inner
            .streaming(Request::new(messages), path("/levee.test.Echo/Bidi"), codec)
            .await
    }
}
