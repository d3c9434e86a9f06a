//! What the pipeline reads of the request head and how it rewrites it for
//! the endpoint: its deadline, affinity keys and cookies, the head as the
//! endpoint sees it, and the limits on its size.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Uri, Version};

use super::{ConnCtx, MAX_HEADERS, grpc, headers};
use crate::cluster::Cluster;
use crate::cluster::balance::stable_hash;
use crate::config::HashKey;

/// When Levee gives up on the request: the cluster's `response_timeout`
/// from its arrival, or sooner if the client's deadline header (the
/// cluster's `deadline_header`, in milliseconds) says so.
pub(super) fn request_deadline(
    cluster: &Cluster,
    headers: &http::HeaderMap,
    start: Instant,
    grpc: bool,
) -> Instant {
    let own = start + cluster.response_timeout;
    // A gRPC client's `grpc-timeout`, within the cluster's own.
    let own = match grpc.then(|| grpc::timeout(headers)).flatten() {
        Some(t) => own.min(start + t),
        None => own,
    };
    let theirs = cluster
        .deadline_header
        .as_ref()
        .and_then(|name| headers.get(name))
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(|ms| start + Duration::from_millis(ms));
    theirs.map_or(own, |t| t.min(own))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(super) fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The xxh3 hash of what the cluster's `hash_key` names. A request without
/// the header or cookie falls back to its client IP, so it still lands
/// consistently.
pub(super) fn affinity_key<B>(key: &HashKey, req: &Request<B>, client: SocketAddr) -> u64 {
    let by_ip = || match client.ip().to_canonical() {
        std::net::IpAddr::V4(a) => stable_hash(&a.octets()),
        std::net::IpAddr::V6(a) => stable_hash(&a.octets()),
    };
    match key {
        HashKey::ClientIp => by_ip(),
        HashKey::Path => stable_hash(req.uri().path().as_bytes()),
        HashKey::Header(name) => req
            .headers()
            .get(name)
            .map_or_else(by_ip, |v| stable_hash(v.as_bytes())),
        HashKey::Cookie(name) => {
            cookie(req.headers(), name).map_or_else(by_ip, |v| stable_hash(v.as_bytes()))
        }
    }
}

/// The head as the backend should see it: origin-form URI, HTTP/1.1, no
/// hop-by-hop headers, forwarding headers and the request id added, `Host`
/// kept as the client sent it (or the target's, for an absolute-form URI).
pub(super) fn rewrite_request(
    parts: &mut http::request::Parts,
    cx: &ConnCtx,
    request_id: &HeaderValue,
) {
    // Absolute-form (`GET http://host/path`): the target's host is the one
    // the request was routed by, and it replaces any Host header
    // (RFC 9112 §3.2.2). Built from host and port only, so that userinfo
    // never ends up in Host.
    if let Some(host) = parts.uri.host() {
        let target = match parts.uri.port_u16() {
            Some(port) => HeaderValue::from_str(&format!("{host}:{port}")),
            None => HeaderValue::from_str(host),
        };
        if let Ok(h) = target {
            parts.headers.insert(header::HOST, h);
        }
    }
    let original_host = parts.headers.get(header::HOST).cloned();
    headers::strip_hop_by_hop_request(&mut parts.headers);
    // We stream the body as soon as the backend connection is up; the
    // client's `Expect` was answered by us.
    parts.headers.remove(header::EXPECT);
    headers::add_forwarding(
        &mut parts.headers,
        cx.client.ip().to_canonical(),
        cx.scheme(),
        original_host.as_ref(),
    );
    parts
        .headers
        .insert(headers::X_REQUEST_ID.clone(), request_id.clone());
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    parts.version = Version::HTTP_11;
}

/// `Connection: upgrade` and `Upgrade: websocket`, on the request to the
/// endpoint and on its 101 to the client.
pub(super) fn upgrade_headers(headers: &mut http::HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// The body length known from the head: 0 without a body, `None` when it is
/// chunked.
pub(super) fn body_len(headers: &http::HeaderMap) -> Option<u64> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    match headers.get(header::CONTENT_LENGTH) {
        None => Some(0),
        Some(v) => v.to_str().ok()?.trim().parse().ok(),
    }
}

pub(super) fn head_too_large<B>(req: &Request<B>, max: usize) -> bool {
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return true;
    }
    let uri = req.uri();
    let mut size = req.method().as_str().len()
        + uri.authority().map_or(0, |a| a.as_str().len() + 8)
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
        if size > max {
            return true;
        }
    }
    false
}
