//! The PROXY protocol header (v1 text or v2 binary, parsed with the `ppp`
//! crate) that a load balancer in front sends before its client's bytes,
//! on a listener with `[listeners.proxy_protocol]`. Only a peer inside the
//! `trusted` networks may send it; the header must arrive within `timeout`
//! and fit in 536 bytes (the buffer size the specification asks a receiver
//! to provide). The source address it carries is then the connection's
//! client address for everything downstream: the balancer's hash,
//! per-IP caps, rate limits, X-Forwarded-For and the logs. A `LOCAL`
//! (v2) or `UNKNOWN` (v1) header, which a load balancer's own health
//! check sends, keeps the peer's address.
//!
//! Anything else closes the connection and is counted by reason in
//! `levee_proxy_protocol_refused_total`: `untrusted` (a peer outside the
//! networks), `missing` (the first bytes are not a PROXY signature),
//! `malformed` (a signature, then a header that does not parse or does not
//! fit), `timeout`, `closed` (the peer left before a whole header).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::PartialResult;
use tokio::net::TcpStream;

use super::peek::{self, Look, Undecided};
use crate::config::ratelimit::Cidr;

/// The largest header accepted, v2 TLVs included.
pub const MAX_HEADER: usize = 536;

const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A listener's settings, built from its `[listeners.proxy_protocol]`.
#[derive(Debug)]
pub struct Accept {
    pub trusted: Vec<Cidr>,
    pub timeout: Duration,
}

impl Accept {
    pub fn from_config(c: &crate::config::front::ProxyProtocolAccept) -> Accept {
        Accept {
            trusted: c.networks(),
            timeout: c.timeout.get_ref().get(),
        }
    }

    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(peer))
    }
}

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// A whole header of `len` bytes; the client it names, if it names
    /// one (`None`: LOCAL or UNKNOWN).
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    Missing,
    Malformed,
}

/// Judges the first bytes of a connection; `More` while they are the start
/// of a header.
pub fn judge(bytes: &[u8]) -> Look<Judged> {
    let starts = |sig: &[u8]| {
        let n = bytes.len().min(sig.len());
        bytes[..n] == sig[..n]
    };
    if bytes.is_empty() {
        return Look::More;
    }
    if starts(V2_SIGNATURE) {
        let parsed = ppp::v2::Header::try_from(bytes);
        if parsed.is_incomplete() {
            return Look::More;
        }
        let Ok(h) = parsed else {
            return Look::Done(Judged::Malformed);
        };
        let source = match (h.command, h.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (_, ppp::v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            (_, ppp::v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            _ => None,
        };
        return Look::Done(Judged::Header {
            len: h.len(),
            source,
        });
    }
    if starts(V1_SIGNATURE) {
        let parsed = ppp::v1::Header::try_from(bytes);
        if parsed.is_incomplete() {
            return Look::More;
        }
        let Ok(h) = parsed else {
            return Look::Done(Judged::Malformed);
        };
        let source = match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Unknown => None,
        };
        return Look::Done(Judged::Header {
            len: h.header.len(),
            source,
        });
    }
    Look::Done(Judged::Missing)
}

/// Reads the header of a connection from `peer` and returns the client
/// address it carries, or the reason the connection must be closed.
pub async fn read(
    stream: &mut TcpStream,
    peer: SocketAddr,
    accept: &Accept,
) -> Result<SocketAddr, &'static str> {
    if !accept.trusts(peer.ip()) {
        return Err("untrusted");
    }
    let work = async {
        let judged = match peek::peek_until(stream, MAX_HEADER, judge).await {
            Ok(j) => j,
            Err(Undecided::Closed) => return Err("closed"),
            Err(Undecided::TooLarge) => return Err("malformed"),
        };
        match judged {
            Judged::Header { len, source } => {
                peek::consume(stream, len).await.map_err(|_| "closed")?;
                Ok(source.unwrap_or(peer))
            }
            Judged::Missing => Err("missing"),
            Judged::Malformed => Err("malformed"),
        }
    };
    match tokio::time::timeout(accept.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err("timeout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(bytes: &[u8]) -> Option<Judged> {
        match judge(bytes) {
            Look::More => None,
            Look::Done(j) => Some(j),
        }
    }

    #[test]
    fn v1_headers_and_their_length() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            done(h),
            Some(Judged::Header {
                len: 45,
                source: Some("192.0.2.7:40000".parse().unwrap())
            })
        );
        assert_eq!(
            done(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"),
            Some(Judged::Header {
                len: 40,
                source: Some("[2001:db8::1]:1".parse().unwrap())
            })
        );
        assert_eq!(
            done(b"PROXY UNKNOWN\r\n"),
            Some(Judged::Header {
                len: 15,
                source: None
            })
        );
        // Split across segments: more is needed, then it decides.
        assert_eq!(done(b"PRO"), None);
        assert_eq!(done(b"PROXY TCP4 192.0.2.7 "), None);
    }

    #[test]
    fn v2_headers_with_and_without_an_address() {
        let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let local: SocketAddr = "198.51.100.1:443".parse().unwrap();
        let mut h = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, local),
        )
        .build()
        .unwrap();
        let len = h.len();
        h.extend_from_slice(b"after");
        assert_eq!(
            done(&h),
            Some(Judged::Header {
                len,
                source: Some(client)
            })
        );
        assert_eq!(done(&h[..14]), None);
        let local_cmd = ppp::v2::Builder::new(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            done(&local_cmd),
            Some(Judged::Header {
                len: 16,
                source: None
            })
        );
    }

    #[test]
    fn garbage_is_missing_and_a_broken_header_malformed() {
        assert_eq!(done(b"GET / HTTP/1.1\r\n"), Some(Judged::Missing));
        assert_eq!(done(&[0x16, 0x03, 0x01]), Some(Judged::Missing));
        assert_eq!(
            done(b"PROXY TCP4 999.0.0.1 1.2.3.4 1 2\r\n"),
            Some(Judged::Malformed)
        );
        assert_eq!(done(b"PROXY TCP9 x\r\n"), Some(Judged::Malformed));
        // A v1 line that never ends within its 107 bytes.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(done(&long), Some(Judged::Malformed));
        // v2 signature with a wrong version nibble.
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 12]);
        bad.extend_from_slice(&[0; 12]);
        assert_eq!(done(&bad), Some(Judged::Malformed));
    }

    #[test]
    fn only_trusted_networks() {
        let a = Accept {
            trusted: vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
            timeout: Duration::from_secs(1),
        };
        assert!(a.trusts("10.1.2.3".parse().unwrap()));
        assert!(a.trusts("::1".parse().unwrap()));
        assert!(!a.trusts("127.0.0.1".parse().unwrap()));
        assert!(!a.trusts("11.0.0.1".parse().unwrap()));
    }
}
