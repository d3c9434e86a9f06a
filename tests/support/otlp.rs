//! A test OpenTelemetry collector: an HTTP/1.1 server on 127.0.0.1 that
//! takes OTLP/HTTP export requests (`POST /v1/traces`, protobuf), decodes
//! them with the real `opentelemetry-proto` types, and keeps the spans.
//! A request that does not decode is counted and answered 400.
//!
//! ```ignore
//! let collector = Collector::start();
//! // ... [tracing] otlp_endpoint = collector.url()
//! assert!(wait_until(T, || collector.spans().len() >= 2));
//! ```

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::oneshot;

#[derive(Default)]
struct Kept {
    spans: Mutex<Vec<Span>>,
    /// `service.name` of each export request.
    services: Mutex<Vec<String>>,
    requests: AtomicU64,
    undecodable: AtomicU64,
}

pub struct Collector {
    addr: SocketAddr,
    kept: Arc<Kept>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    pub fn start() -> Collector {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind collector");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let kept = Arc::new(Kept::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let k = kept.clone();
        let thread = std::thread::spawn(move || {
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
                        let k = k.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |req| export(req, k.clone()));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Collector {
            addr,
            kept,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The URL to put in `[tracing] otlp_endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.kept.spans.lock().unwrap().clone()
    }

    pub fn services(&self) -> Vec<String> {
        self.kept.services.lock().unwrap().clone()
    }

    /// Export requests received.
    pub fn requests(&self) -> u64 {
        self.kept.requests.load(Ordering::Relaxed)
    }

    /// Export requests whose body was not an `ExportTraceServiceRequest`.
    pub fn undecodable(&self) -> u64 {
        self.kept.undecodable.load(Ordering::Relaxed)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn export(
    req: Request<Incoming>,
    kept: Arc<Kept>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    kept.requests.fetch_add(1, Ordering::Relaxed);
    let path_ok = req.method() == hyper::Method::POST && req.uri().path() == "/v1/traces";
    let type_ok = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/x-protobuf");
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let decoded = match body {
        Ok(b) if path_ok && type_ok => ExportTraceServiceRequest::decode(b).ok(),
        _ => None,
    };
    let Some(decoded) = decoded else {
        kept.undecodable.fetch_add(1, Ordering::Relaxed);
        let mut r = Response::new(Full::new(Bytes::from_static(b"not an OTLP trace export")));
        *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
        return Ok(r);
    };
    for rs in decoded.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.clone());
        if let Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) =
            service
        {
            kept.services.lock().unwrap().push(s);
        }
        for ss in rs.scope_spans {
            kept.spans.lock().unwrap().extend(ss.spans);
        }
    }
    let mut r = Response::new(Full::new(Bytes::new()));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(r)
}

/// A port that accepts connections (the kernel's backlog) and never
/// answers: a collector that hangs.
pub fn hanging_collector() -> (StdListener, SocketAddr) {
    let l = StdListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("address");
    (l, a)
}
