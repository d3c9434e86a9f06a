//! What the request path calls: a route's fault before any try, a try's
//! fault around the exchange. With no fault in force both return at once.
//!
//! A try's fault is applied inside the try's timeout, in place of the
//! exchange: its delay counts against the per-try timeout, an abort comes
//! back as `upstream::Error::Injected` (a try that answered that status;
//! `InjectedGrpc` for a gRPC status, judged as an endpoint's `grpc-status`),
//! a reset as the error a reset connection gives, slow headers as a head
//! that came late. So the breakers, retries, outlier detection and the
//! latency estimate see an injected failure as they would see a real one.
//! A truncated body reaches the client as a cut response, as when an
//! endpoint breaks off mid-body.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use http::HeaderMap;

use super::fault::{Outcome, RequestFacts};
use super::live::Faults;
use super::live::Hit;
use crate::observe::chaos::ChaosMetrics;
use crate::upstream;

/// The client key of the subset: the client IP's bytes.
fn client_key(ip: IpAddr) -> ([u8; 16], usize) {
    let mut key = [0u8; 16];
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            key[..4].copy_from_slice(&a.octets());
            (key, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

/// The faults in force and where their injections are counted.
#[derive(Clone, Copy)]
pub struct Armed<'a> {
    pub faults: &'a Faults,
    pub metrics: &'a ChaosMetrics,
}

/// The fault on a request of `route`, if one hits it, its delay waited
/// here. The caller acts on its outcome (an abort or a reset answers in
/// place of the endpoint), holds the response head back (slow headers)
/// and shapes the response body.
pub async fn on_route(
    armed: Armed<'_>,
    route: &str,
    client: SocketAddr,
    headers: &HeaderMap,
    draw: u64,
    now: Instant,
) -> Option<Hit> {
    if !armed.faults.is_armed() {
        return None;
    }
    let (key, len) = client_key(client.ip());
    let facts = RequestFacts {
        peer: client.ip().to_canonical(),
        headers,
        client_key: &key[..len],
    };
    let hit = armed
        .faults
        .for_route(route, &facts, draw, now, armed.metrics)?;
    if !hit.delay.is_zero() {
        tokio::time::sleep(hit.delay).await;
    }
    Some(hit)
}

/// The fault on a try to `endpoint` of `cluster`, if one hits it.
pub fn for_try(
    armed: Armed<'_>,
    cluster: &str,
    endpoint: SocketAddr,
    client: SocketAddr,
    headers: &HeaderMap,
    draw: u64,
    now: Instant,
) -> Option<Hit> {
    if !armed.faults.is_armed() {
        return None;
    }
    let (key, len) = client_key(client.ip());
    let facts = RequestFacts {
        peer: client.ip().to_canonical(),
        headers,
        client_key: &key[..len],
    };
    armed
        .faults
        .for_try(cluster, endpoint, &facts, draw, now, armed.metrics)
}

/// The try under its fault: the delay, then the exchange, or in its place
/// the injected abort or reset; with slow headers, the response head held
/// back once it came (all within the try's timeout). The exchange future
/// is lazy: an aborted try never connects. A truncation or a bandwidth
/// limit acts on the body later (`Hit::shape`).
pub async fn around_try<F>(
    hit: Option<&Hit>,
    exchange: F,
) -> Result<upstream::Exchange, upstream::Error>
where
    F: Future<Output = Result<upstream::Exchange, upstream::Error>>,
{
    let Some(hit) = hit else {
        return exchange.await;
    };
    if !hit.delay.is_zero() {
        tokio::time::sleep(hit.delay).await;
    }
    match hit.outcome {
        Outcome::Abort(status) => Err(upstream::Error::Injected(status)),
        Outcome::GrpcAbort(code) => Err(upstream::Error::InjectedGrpc(code)),
        Outcome::Reset => Err(upstream::Error::Receive(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            format!("reset by fault {}", hit.fault),
        ))),
        Outcome::Forward | Outcome::Truncate(_) => {
            let exchange = exchange.await?;
            if let Some(d) = hit.slow_headers {
                tokio::time::sleep(d).await;
            }
            Ok(exchange)
        }
    }
}

/// Marks a response whose client connection a route's reset fault closes
/// instead of answering: the servers see it and drop the connection (an
/// HTTP/2 stream is reset) without writing a byte of the response.
#[derive(Debug, Clone, Copy)]
pub struct ResetConnection;

/// The service's answer for a hyper server: a response marked
/// `ResetConnection` becomes an error, on which hyper closes an HTTP/1
/// connection, or resets an HTTP/2 stream, without answering.
pub fn unless_reset<B>(response: http::Response<B>) -> Result<http::Response<B>, ResetByFault> {
    if response.extensions().get::<ResetConnection>().is_some() {
        Err(ResetByFault)
    } else {
        Ok(response)
    }
}

/// The error that makes hyper drop the connection or stream.
#[derive(Debug, thiserror::Error)]
#[error("the connection was reset by an injected fault")]
pub struct ResetByFault;
