//! Header rules of a reverse proxy: hop-by-hop headers stop here, forwarding
//! headers tell the backend who really asked, every request carries an id,
//! and ambiguous message framing is refused (request-smuggling defence).

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
/// `Trailer` is not one of them: it announces the trailer fields, which
/// pass end to end (RFC 9110 §6.6.2).
/// `Connection` first: `strip_hop_by_hop` reads its list.
static HOP_BY_HOP: [&HeaderName; 6] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none or one or two of them (a backend's
    // `Connection: keep-alive`): find which are present with cheap name
    // comparisons, and pay for hashed removals of those only.
    let mut present = [false; HOP_BY_HOP.len()];
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == k) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    if present[0] {
        // Connection is a list: several lines are one list (RFC 9110 §5.3).
        // `close` and `keep-alive` are its usual options, not names of
        // other headers (a `Keep-Alive` header goes with the hop-by-hop
        // ones below): no allocation for them.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (h, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(*h);
    }
}

/// Removes a request's hop-by-hop headers, but keeps `TE: trailers` when the
/// client sent it: Levee passes trailers on, so it may tell the endpoint the
/// client accepts them (some servers, hyper's among them, send trailers only
/// then; Envoy forwards `te: trailers` the same way). Other codings the
/// client named in `TE` are for Levee's hop only, and go.
pub fn strip_hop_by_hop_request(headers: &mut HeaderMap) {
    let trailers = headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    strip_hop_by_hop(headers);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Fields that may not come from a trailer section: framing, routing,
/// authentication, content format, response controls (RFC 9110 §6.5.1; the
/// list hyper applies) and hop-by-hop. Dropped from trailers passed on, so
/// that no recipient that merges trailers into the head is misled by them.
static NOT_TRAILERS: [&HeaderName; 16] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::CONTENT_LENGTH,
    &header::CONTENT_RANGE,
    &header::CONTENT_TYPE,
    &header::CONTENT_ENCODING,
    &header::HOST,
    &header::AUTHORIZATION,
    &header::CACHE_CONTROL,
    &header::MAX_FORWARDS,
    &header::SET_COOKIE,
];

/// Removes from a trailer section the fields it may not carry.
pub fn strip_trailers(trailers: &mut HeaderMap) {
    if trailers.keys().any(|k| NOT_TRAILERS.contains(&k)) {
        for name in NOT_TRAILERS {
            trailers.remove(name);
        }
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
    host: Option<&HeaderValue>,
) {
    let mut buf = [0u8; 48];
    let len = match client {
        // The common case without the formatting machinery (a tenth of
        // the instructions).
        IpAddr::V4(a) => ipv4_text(a, &mut buf),
        IpAddr::V6(_) => {
            let mut w = &mut buf[..];
            // An IP address always fits in 48 bytes.
            let _ = std::io::Write::write_fmt(&mut w, format_args!("{client}"));
            48 - w.len()
        }
    };
    let ip = HeaderValue::from_bytes(&buf[..len])
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    // Several X-Forwarded-For lines are one list; fold them into one value.
    let prior: Vec<u8> = {
        let mut values = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter(|v| !v.is_empty());
        match values.next() {
            None => Vec::new(),
            Some(first) => {
                let mut joined = first.as_bytes().to_vec();
                for v in values {
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(v.as_bytes());
                }
                joined
            }
        }
    };
    let xff = if prior.is_empty() {
        ip.clone()
    } else {
        let mut v = prior;
        v.extend_from_slice(b", ");
        v.extend_from_slice(ip.as_bytes());
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| ip.clone())
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
    }
    headers.insert(X_REAL_IP.clone(), ip);
}

/// Writes `a` in dotted decimal at the start of `buf`; returns its length.
fn ipv4_text(a: std::net::Ipv4Addr, buf: &mut [u8; 48]) -> usize {
    let mut n = 0;
    for (i, octet) in a.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    n
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// The request's id: the client's `X-Request-Id` if it sent a sane one,
/// otherwise a new 16-hex-digit id unique to this process run.
pub fn request_id(headers: &HeaderMap, seed: u64) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 200
    {
        return v.clone();
    }
    let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    let id = splitmix64(seed ^ n);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = [0u8; 16];
    for (i, c) in s.iter_mut().enumerate() {
        *c = HEX[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&s).unwrap_or_else(|_| HeaderValue::from_static("0"))
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
    fn te_trailers_passes_other_codings_do_not() {
        let mut h = map(&[("te", "gzip, Trailers"), ("connection", "TE")]);
        strip_hop_by_hop_request(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "gzip"), ("trailer", "x-sum")]);
        strip_hop_by_hop_request(&mut h);
        assert_eq!(h.len(), 1, "Trailer is end to end");
        assert_eq!(h["trailer"], "x-sum");
    }

    #[test]
    fn trailers_lose_framing_and_routing_fields() {
        let mut t = map(&[
            ("x-checksum", "abc"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("host", "evil"),
            ("grpc-status", "0"),
        ]);
        strip_trailers(&mut t);
        assert_eq!(t.len(), 2);
        assert_eq!(
            (&t["x-checksum"], &t["grpc-status"]),
            (
                &HeaderValue::from_static("abc"),
                &HeaderValue::from_static("0")
            )
        );
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
            Some(&HeaderValue::from_static("example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
        assert_eq!(h["x-real-ip"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
    }

    #[test]
    fn ipv4_text_matches_display() {
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.99",
        ] {
            let ip: std::net::Ipv4Addr = a.parse().unwrap();
            let mut buf = [0u8; 48];
            let n = ipv4_text(ip, &mut buf);
            assert_eq!(&buf[..n], ip.to_string().as_bytes());
        }
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

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn several_forwarded_for_lines_fold_into_one() {
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.1"),
        );
        h.append(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("10.0.0.2"),
        );
        add_forwarding(&mut h, "::1".parse().unwrap(), "http", None);
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, ::1");
        assert!(!h.contains_key(&X_FORWARDED_HOST));
    }
}
