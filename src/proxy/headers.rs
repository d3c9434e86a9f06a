//! Header rules of a reverse proxy: hop-by-hop headers stop here, forwarding
//! headers tell the backend who really asked, every request carries an id,
//! and ambiguous message framing is refused (request-smuggling defence).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
static HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Why a request's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Both `Content-Length` and `Transfer-Encoding`: two parsers on the path
    /// could disagree on where the body ends.
    LengthAndChunked,
    /// `Content-Length` values that disagree.
    ConflictingLength,
}

pub fn check_framing(headers: &HeaderMap) -> Result<(), Framing> {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if headers.contains_key(header::TRANSFER_ENCODING) {
            return Err(Framing::LengthAndChunked);
        }
        // hyper already refuses most conflicts; keep the rule here too so it
        // holds whatever the parser does.
        let first = first.as_bytes();
        if first.contains(&b',') || lengths.any(|v| v.as_bytes() != first) {
            let mut values = headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .flat_map(|v| v.to_str().unwrap_or("?").split(','))
                .map(str::trim);
            let first = values.next().unwrap_or("");
            if values.any(|v| v != first) {
                return Err(Framing::ConflictingLength);
            }
        }
    }
    Ok(())
}

/// Adds `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`
/// and `X-Real-IP`.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&str>,
) {
    let mut ip = String::with_capacity(48);
    let _ = write!(ip, "{client}");
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.is_empty() => format!("{prior}, {ip}"),
        _ => ip.clone(),
    };
    // Several X-Forwarded-For lines are one list; fold them into one value.
    headers.remove(&X_FORWARDED_FOR);
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
    if let Ok(v) = HeaderValue::from_str(&ip) {
        headers.insert(X_REAL_IP.clone(), v);
    }
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// The request's id: the client's `X-Request-Id` if it sent a sane one,
/// otherwise a new 16-hex-digit id unique to this process run.
pub fn request_id(headers: &HeaderMap, seed: u64) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && !v.is_empty() && v.len() <= 200 {
            return v.clone();
        }
    let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    let id = splitmix64(seed ^ n);
    let mut s = String::with_capacity(16);
    let _ = write!(s, "{id:016x}");
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// A bijective mixer: distinct inputs give distinct ids, spread out so they
/// do not look sequential.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn framing_rules() {
        assert_eq!(check_framing(&map(&[("content-length", "5")])), Ok(()));
        assert_eq!(
            check_framing(&map(&[("content-length", "5"), ("content-length", "5")])),
            Ok(())
        );
        assert_eq!(
            check_framing(&map(&[
                ("content-length", "5"),
                ("transfer-encoding", "chunked")
            ])),
            Err(Framing::LengthAndChunked)
        );
        assert_eq!(
            check_framing(&map(&[("content-length", "5"), ("content-length", "6")])),
            Err(Framing::ConflictingLength)
        );
        assert_eq!(
            check_framing(&map(&[("content-length", "5, 6")])),
            Err(Framing::ConflictingLength)
        );
    }

    #[test]
    fn forwarding_appends() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        add_forwarding(
            &mut h,
            "127.0.0.2".parse().unwrap(),
            "http",
            Some("example.com"),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
        assert_eq!(h["x-real-ip"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
    }

    #[test]
    fn request_ids_kept_or_unique() {
        let h = map(&[("x-request-id", "abc")]);
        assert_eq!(request_id(&h, 1), "abc");
        let a = request_id(&HeaderMap::new(), 7);
        let b = request_id(&HeaderMap::new(), 7);
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}
