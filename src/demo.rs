//! `levee demo`: three small backends on loopback and an embedded config, so
//! Levee can be tried with nothing else installed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header::HeaderValue};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Checks that the demo's addresses are free, before anything starts, so
/// that a taken port is reported with the flag that moves it (and a free
/// address to try) rather than as a bare "address in use".
pub fn check_ports(
    listen: SocketAddr,
    admin: SocketAddr,
    backends: &[SocketAddr],
) -> Result<(), String> {
    let taken = |a: SocketAddr| std::net::TcpListener::bind(a).err();
    for (address, flag) in [(listen, "--listen"), (admin, "--admin")] {
        if let Some(e) = taken(address) {
            let hint = next_free(address, 1)
                .map(|a| format!(", e.g. {flag} {a}"))
                .unwrap_or_default();
            return Err(format!(
                "{address} is not available ({e}); choose another address with {flag}{hint}"
            ));
        }
    }
    for &address in backends {
        if let Some(e) = taken(address) {
            let (first, n) = (backends[0], backends.len());
            let hint = next_free(first, n)
                .map(|a| format!(", e.g. --backend-port {}", a.port()))
                .unwrap_or_default();
            return Err(format!(
                "the {n} demo backends need ports {} to {} and {address} is not available ({e}); \
                 choose other ports with --backend-port{hint}",
                first.port(),
                first.port().saturating_add(n as u16 - 1)
            ));
        }
    }
    Ok(())
}

/// The first address after `from` (same IP, a higher port, at most 100
/// ports on) where `n` consecutive ports are free now.
fn next_free(from: SocketAddr, n: usize) -> Option<SocketAddr> {
    (1..=100u16).find_map(|step| {
        let start = from.port().checked_add(step)?;
        let all_free = (0..n as u16).all(|i| {
            start
                .checked_add(i)
                .is_some_and(|p| std::net::TcpListener::bind(SocketAddr::new(from.ip(), p)).is_ok())
        });
        all_free.then(|| SocketAddr::new(from.ip(), start))
    })
}

/// Starts the demo backends on their own thread; returns once they listen.
pub fn start_backends(addresses: &[SocketAddr]) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut listeners = Vec::new();
    for (i, &address) in addresses.iter().enumerate() {
        let std = std::net::TcpListener::bind(address)
            .map_err(|e| std::io::Error::new(e.kind(), format!("demo backend {address}: {e}")))?;
        std.set_nonblocking(true)?;
        listeners.push((format!("demo-{}", i + 1), std));
    }
    std::thread::Builder::new()
        .name("levee-demo-backends".into())
        .spawn(move || {
            runtime.block_on(async move {
                for (name, std) in listeners {
                    let Ok(listener) = TcpListener::from_std(std) else {
                        continue;
                    };
                    tokio::spawn(backend(name, listener));
                }
                std::future::pending::<()>().await;
            });
        })?;
    Ok(())
}

async fn backend(name: String, listener: TcpListener) {
    let header = HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("demo"));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        let header = header.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let body = format!("hello from {name}: {} {}\n", req.method(), req.uri());
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut().insert("x-backend", header.clone());
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Sends a few requests through Levee and prints which backend answered each.
pub async fn show_spread(listen: SocketAddr, requests: usize) {
    println!("\n{requests} requests through Levee:");
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..requests {
        match get_backend(listen).await {
            Ok(b) => *counts.entry(b).or_insert(0) += 1,
            Err(e) => {
                println!("  request failed: {e}");
                return;
            }
        }
    }
    for (backend, n) in counts {
        println!("  {backend}: {n}");
    }
}

async fn get_backend(listen: SocketAddr) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(listen)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/")
        .header("host", listen.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(resp
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned())
}
