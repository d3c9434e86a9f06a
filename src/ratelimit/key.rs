//! From a request to the bytes a rule counts it under.
//!
//! A key is one or more parts (`client_ip`, `header:NAME`, `cookie:NAME`,
//! `route`, `global`), written one after the other as readable text, so
//! that a Redis key can be read by an operator:
//! `ip=203.0.113.7|h:x-api-key=5:k-123`. Header and cookie values carry
//! their length, so no value can forge another composite key.
//!
//! # The client IP
//!
//! The peer address, unless the peer is a trusted proxy
//! (`rate_limit.trusted_proxies`): then `X-Forwarded-For` is read from the
//! right (the entry the trusted proxy itself added) and the first address
//! that is not a trusted proxy is the client, like NGINX's `real_ip` with
//! `real_ip_recursive on`. Entries left of it were written by whoever the
//! client is, and are not believed. Without a usable header the peer is
//! the client.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::HeaderName;

use crate::config::ratelimit::{Cidr, KeyPart, OnMissingKey};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client a request counts for; see the module doc.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let mut client = peer;
    // Several header lines are one list, in order (RFC 9110 §5.3).
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in line.as_bytes().rsplit(|&b| b == b',') {
            let Some(ip) = parse_entry(entry) else {
                // Garbage where an address should be: the last hop we
                // could read is as far as the chain can be trusted.
                return client;
            };
            client = ip;
            if !trusted.iter().any(|c| c.contains(ip)) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`1.2.3.4:80`, `[::1]:80`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(ip.to_canonical())
}

/// What a rule's key is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    parts: Vec<KeyPart>,
    on_missing: OnMissingKey,
}

/// What a key is computed from.
pub struct KeyInput<'a> {
    pub headers: &'a HeaderMap,
    pub client: IpAddr,
    pub route: &'a str,
}

impl KeySpec {
    pub fn new(parts: Vec<KeyPart>, on_missing: OnMissingKey) -> KeySpec {
        KeySpec { parts, on_missing }
    }

    /// Whether the key may need the client IP.
    pub fn needs_client_ip(&self) -> bool {
        self.parts.iter().any(|p| {
            matches!(p, KeyPart::ClientIp)
                || (matches!(p, KeyPart::Header(_) | KeyPart::Cookie(_))
                    && self.on_missing == OnMissingKey::ClientIp)
        })
    }

    /// Appends the request's key to `out`. `false` when the rule does not
    /// apply (a part is missing and `on_missing_key = "skip"`).
    pub fn write(&self, input: &KeyInput, out: &mut Vec<u8>) -> bool {
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push(b'|');
            }
            let value = match part {
                KeyPart::ClientIp => {
                    out.extend_from_slice(b"ip=");
                    push_ip(out, input.client);
                    continue;
                }
                KeyPart::Route => {
                    let _ = write!(out, "r={}", input.route);
                    continue;
                }
                KeyPart::Global => {
                    out.push(b'*');
                    continue;
                }
                KeyPart::Header(name) => {
                    out.extend_from_slice(b"h:");
                    out.extend_from_slice(name.as_str().as_bytes());
                    input.headers.get(name).map(|v| v.as_bytes())
                }
                KeyPart::Cookie(name) => {
                    out.extend_from_slice(b"c:");
                    out.extend_from_slice(name.as_bytes());
                    cookie(input.headers, name)
                }
            };
            match value {
                Some(v) => {
                    let _ = write!(out, "={}:", v.len());
                    out.extend_from_slice(v);
                }
                None if self.on_missing == OnMissingKey::Skip => return false,
                // `?` where `=` would be: a missing value never shares a
                // count with a present one.
                None => {
                    out.extend_from_slice(b"?ip=");
                    push_ip(out, input.client);
                }
            }
        }
        true
    }
}

/// The address as text; IPv4 by hand, as it is on every request of a
/// per-IP rule and `Display` goes through the formatting machinery.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = cidrs(&["127.0.0.1", "10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("203.0.113.7"));
        // An untrusted peer's header is ignored.
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &trusted), ip("192.0.2.1"));
        // No trusted proxies: never read.
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
        // Without the header, the peer.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &trusted),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn forwarded_for_is_read_from_the_right_past_trusted_hops() {
        let trusted = cidrs(&["127.0.0.1", "10.0.0.0/8"]);
        // The client forged the first entry; the proxies appended the rest.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.9, 10.0.0.5")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("198.51.100.9"));
        // Several lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "198.51.100.9:4711, 10.0.0.5"),
        ]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("198.51.100.9"));
        // All trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.0.0.5")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("10.1.1.1"));
        // Garbage stops the walk at the last readable hop.
        let h = headers(&[("x-forwarded-for", "203.0.113.1, garbage, 10.0.0.5")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("10.0.0.5"));
        // IPv6 and mapped addresses.
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &trusted),
            ip("2001:db8::1")
        );
    }

    fn key(spec: &KeySpec, h: &HeaderMap) -> Option<String> {
        let input = KeyInput {
            headers: h,
            client: ip("192.0.2.1"),
            route: "api",
        };
        let mut out = Vec::new();
        spec.write(&input, &mut out)
            .then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn keys_are_readable_and_unambiguous() {
        let parts = |s: &[&str]| s.iter().map(|p| p.parse().unwrap()).collect();
        let h = headers(&[
            ("x-api-key", "k|h:x=1"),
            ("cookie", "a=1; session = s-9 ;b=2"),
        ]);
        let spec = KeySpec::new(
            parts(&[
                "client_ip",
                "header:x-api-key",
                "cookie:session",
                "route",
                "global",
            ]),
            OnMissingKey::ClientIp,
        );
        assert_eq!(
            key(&spec, &h).unwrap(),
            "ip=192.0.2.1|h:x-api-key=7:k|h:x=1|c:session=3:s-9|r=api|*"
        );
        assert!(spec.needs_client_ip());
        let global = KeySpec::new(parts(&["global"]), OnMissingKey::ClientIp);
        assert!(!global.needs_client_ip());
        assert_eq!(key(&global, &h).unwrap(), "*");
        let mut out = Vec::new();
        for ip in ["0.0.0.0", "10.200.9.255", "2001:db8::1"] {
            out.clear();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip.as_bytes());
        }

        // A missing part: the client IP, marked, or no key at all.
        let spec = KeySpec::new(parts(&["header:x-user"]), OnMissingKey::ClientIp);
        assert_eq!(key(&spec, &h).unwrap(), "h:x-user?ip=192.0.2.1");
        let skip = KeySpec::new(parts(&["header:x-user"]), OnMissingKey::Skip);
        assert_eq!(key(&skip, &h), None);
        assert!(!skip.needs_client_ip());
        let h = headers(&[("x-user", "u1")]);
        assert_eq!(key(&skip, &h).unwrap(), "h:x-user=2:u1");
    }
}
