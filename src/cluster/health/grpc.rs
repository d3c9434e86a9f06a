//! The gRPC health check (`type = "grpc"`): one unary call of the standard
//! `grpc.health.v1.Health/Check` over HTTP/2 (with prior knowledge, or over
//! the cluster's TLS with ALPN `h2`), on a connection of its own. The
//! endpoint passes when it answers `SERVING` with `grpc-status` 0; any other
//! serving status (`NOT_SERVING`, `SERVICE_UNKNOWN`) or a non-zero
//! `grpc-status` fails it, with the reason.
//!
//! The two messages are tiny protobufs, encoded and decoded here by hand
//! (`HealthCheckRequest { string service = 1; }`,
//! `HealthCheckResponse { ServingStatus status = 1; }`).

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::upstream::tls::EndpointTls;

const PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus`.
const SERVING: u64 = 1;

/// Asks `address`, over `tcp` (connected by the caller), whether `service`
/// ("" for the whole server) is serving. The caller bounds the time.
pub async fn check(
    tcp: TcpStream,
    address: SocketAddr,
    service: &str,
    tls: Option<&EndpointTls>,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let authority = address.to_string();
    let (status, headers, trailers, body) = match tls {
        None => call(TokioIo::new(tcp), "http", &authority, service).await?,
        Some(tls) => {
            let stream = tls
                .handshake_h2(tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            call(TokioIo::new(stream), "https", &authority, service).await?
        }
    };
    if status != StatusCode::OK {
        return Err(format!("HTTP status {}", status.as_u16()));
    }
    let code = grpc_status(&trailers).or_else(|| grpc_status(&headers));
    match code {
        Some(0) => {}
        Some(code) => {
            let message = trailers
                .get("grpc-message")
                .or_else(|| headers.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Err(format!("grpc-status {code} {message}")
                .trim_end()
                .to_owned());
        }
        None => return Err("no grpc-status".to_owned()),
    }
    match serving_status(body) {
        Some(SERVING) => Ok(()),
        Some(2) => Err("NOT_SERVING".to_owned()),
        Some(3) => Err("SERVICE_UNKNOWN".to_owned()),
        Some(other) => Err(format!("serving status {other}")),
        None => Err("unreadable HealthCheckResponse".to_owned()),
    }
}

type Answer = (StatusCode, HeaderMap, HeaderMap, Bytes);

async fn call<T>(io: T, scheme: &str, authority: &str, service: &str) -> Result<Answer, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    // Dropped with this function: the check's connection ends with it.
    let driver = tokio::spawn(conn);
    let request = Request::post(format!("{scheme}://{authority}{PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "levee-health-check")
        .body(Full::new(request_message(service)))
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = send
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let (head, body) = response.into_parts();
        let collected = body
            .collect()
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        Ok((head.status, head.headers, trailers, collected.to_bytes()))
    }
    .await;
    driver.abort();
    result
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A length-prefixed gRPC message holding `HealthCheckRequest`.
fn request_message(service: &str) -> Bytes {
    let mut proto = Vec::new();
    if !service.is_empty() {
        proto.push(0x0a); // field 1, length-delimited
        put_varint(&mut proto, service.len() as u64);
        proto.extend_from_slice(service.as_bytes());
    }
    let mut out = BytesMut::with_capacity(5 + proto.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(proto.len() as u32).to_be_bytes());
    out.extend_from_slice(&proto);
    out.freeze()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(buf: &mut Bytes) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `HealthCheckResponse.status` from a length-prefixed message; absent
/// (the default, UNKNOWN = 0) when the message has no field 1.
fn serving_status(mut body: Bytes) -> Option<u64> {
    if body.remaining() < 5 || body.get_u8() != 0 {
        return None; // too short, or compressed (never asked for)
    }
    let len = body.get_u32() as usize;
    if body.remaining() < len {
        return None;
    }
    let mut msg = body.split_to(len);
    let mut status = 0;
    while msg.has_remaining() {
        let key = varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg)?,
            (_, 0) => {
                varint(&mut msg)?;
            }
            (_, 2) => {
                let n = usize::try_from(varint(&mut msg)?).ok()?;
                if msg.remaining() < n {
                    return None;
                }
                msg.advance(n);
            }
            (_, 1) if msg.remaining() >= 8 => msg.advance(8),
            (_, 5) if msg.remaining() >= 4 => msg.advance(4),
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_service() {
        assert_eq!(&request_message("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request_message("echo")[..],
            &[0, 0, 0, 0, 6, 0x0a, 4, b'e', b'c', b'h', b'o']
        );
    }

    #[test]
    fn serving_statuses_are_read_and_other_fields_skipped() {
        let msg = |proto: &[u8]| {
            let mut b = vec![0];
            b.extend_from_slice(&(proto.len() as u32).to_be_bytes());
            b.extend_from_slice(proto);
            Bytes::from(b)
        };
        assert_eq!(serving_status(msg(&[0x08, 1])), Some(1));
        assert_eq!(serving_status(msg(&[0x08, 2])), Some(2));
        assert_eq!(serving_status(msg(&[])), Some(0));
        assert_eq!(
            serving_status(msg(&[0x12, 2, b'h', b'i', 0x08, 1])),
            Some(1)
        );
        assert_eq!(serving_status(msg(&[0x08])), None);
        assert_eq!(serving_status(Bytes::from_static(&[1, 0, 0, 0, 0])), None);
    }
}
