//! The PROXY protocol header sent to an endpoint before the client's bytes
//! (`send_proxy_protocol` on the cluster), so that the endpoint learns the
//! client's address as HAProxy's `send-proxy` / `send-proxy-v2` tell it.
//! Built with the `ppp` crate.

use std::io;
use std::net::SocketAddr;

use crate::config::ProxyVersion;

/// The header for a connection from `client` to Levee's `local` address.
/// Both are of one family (an IPv6 listener takes IPv6 only); were they
/// not, the header says UNKNOWN (v1) or UNSPEC (v2), as the spec wants.
pub fn header(version: ProxyVersion, client: SocketAddr, local: SocketAddr) -> io::Result<Vec<u8>> {
    match version {
        ProxyVersion::V1 => Ok(ppp::v1::Addresses::from((client, local))
            .to_string()
            .into_bytes()),
        ProxyVersion::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (client, local),
        )
        .build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_is_one_text_line_and_v2_parses_back() {
        let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let local: SocketAddr = "198.51.100.1:6432".parse().unwrap();
        let v1 = header(ProxyVersion::V1, client, local).unwrap();
        assert_eq!(v1, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 6432\r\n");
        let v2 = header(ProxyVersion::V2, client, local).unwrap();
        assert_eq!(&v2[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(v2.len(), 16 + 12, "IPv4: 12 address bytes");
        let parsed = ppp::v2::Header::try_from(&v2[..]).unwrap();
        assert_eq!(parsed.addresses, ppp::v2::Addresses::from((client, local)));
    }
}
