//! Talking to an endpoint: take a pooled connection or open one, send the
//! request, and tell apart the failures the client must hear about.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::{TooLarge, UpstreamBody};
use super::error::ProxyError;
use crate::cluster::{Cluster, Endpoint, pool::Sender};

/// Opens a new HTTP/1.1 connection; its driver runs as a task on the calling
/// worker's event loop.
pub async fn connect(address: SocketAddr, timeout: Duration) -> Result<Sender, ProxyError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Err(_) => return Err(ProxyError::UpstreamConnectTimeout),
        Ok(Err(_)) => return Err(ProxyError::UpstreamConnect),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ProxyError::UpstreamConnect)?;
    tokio::spawn(async move {
        // Ends when the endpoint or the pool closes the connection.
        let _ = conn.await;
    });
    Ok(sender)
}

/// A response head from the endpoint, and the connection that carried it.
pub struct Sent {
    pub response: Response<Incoming>,
    pub sender: Sender,
    pub reused: bool,
}

/// Sends `req` to `endpoint` over a pooled connection if one is idle, else a
/// new one. A pooled connection that turns out to be closed before the
/// request was written is retried once on a new connection: nothing reached
/// the backend, so this is safe for any method.
pub async fn send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    worker: usize,
    mut req: Request<UpstreamBody>,
) -> Result<Sent, ProxyError> {
    let live = &endpoint.live;
    if let Some(mut sender) = live
        .pool
        .take(worker, cluster.pool_idle_timeout, Instant::now())
        && sender.ready().await.is_ok()
    {
        match sender.try_send_request(req).await {
            Ok(response) => {
                live.reused.inc();
                return Ok(Sent {
                    response,
                    sender,
                    reused: true,
                });
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(classify(e.error())),
            },
        }
    }
    let mut sender = match connect(endpoint.address, cluster.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            live.connect_errors.inc();
            return Err(e);
        }
    };
    live.opened.inc();
    match sender.send_request(req).await {
        Ok(response) => Ok(Sent {
            response,
            sender,
            reused: false,
        }),
        Err(e) => Err(classify(&e)),
    }
}

/// Maps a failed exchange to what the client is told. A body that was too
/// large, or that the client stopped sending, is the client's fault, not the
/// endpoint's.
fn classify(e: &hyper::Error) -> ProxyError {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<TooLarge>() {
            return ProxyError::BodyTooLarge;
        }
        source = s.source();
    }
    if e.is_user() {
        // The only user code in an exchange is the request body stream.
        ProxyError::ClientBody
    } else {
        ProxyError::UpstreamFailed
    }
}
