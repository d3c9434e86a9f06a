//! Endpoints by name: the endpoint `address` forms (`IP:PORT`, `HOST:PORT`,
//! `srv:NAME`) and the `[dns]` table that says where and how often names are
//! resolved. Parsing never resolves anything: `levee check` needs no DNS.

use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::validate::{Invalid, invalid};
use super::value::Duration;

/// Where an endpoint is: an address, or a name resolved at run time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    /// `IP:PORT`: used as written.
    Ip(SocketAddr),
    /// `HOST:PORT`: every A and AAAA record of `host`, each on `port`.
    Name { host: String, port: u16 },
    /// `srv:NAME` (e.g. `srv:_http._tcp.app.internal`): every SRV record of
    /// `NAME`, with its own port and weight.
    Srv(String),
}

impl EndpointAddress {
    /// The address, when it needs no resolving.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            EndpointAddress::Ip(a) => Some(*a),
            _ => None,
        }
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Ip(a) => write!(f, "{a}"),
            EndpointAddress::Name { host, port } => write!(f, "{host}:{port}"),
            EndpointAddress::Srv(name) => write!(f, "srv:{name}"),
        }
    }
}

const FORMS: &str = "write IP:PORT (\"10.0.0.5:8080\", \"[::1]:8080\"), HOST:PORT (\"app:8080\") \
                     or srv:NAME (\"srv:_http._tcp.app.internal\")";

/// A DNS name as a configuration may write it: labels of letters, digits,
/// `-` and `_` (SRV names start with `_service._proto`), separated by dots,
/// optionally ending with a dot.
fn valid_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl std::str::FromStr for EndpointAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Ok(EndpointAddress::Ip(a));
        }
        if let Some(name) = text.strip_prefix("srv:") {
            if !valid_name(name) {
                return Err(format!(
                    "{name:?} is not a valid DNS name for an SRV lookup"
                ));
            }
            return Ok(EndpointAddress::Srv(name.to_owned()));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("address {text:?} has no port; {FORMS}"));
        };
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(format!(
                    "address {text:?} has no valid port (1-65535); {FORMS}"
                ));
            }
        };
        if !valid_name(host) || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!(
                "address {text:?} is neither an IP nor a host name; {FORMS}"
            ));
        }
        Ok(EndpointAddress::Name {
            host: host.to_owned(),
            port,
        })
    }
}

impl<'de> Deserialize<'de> for EndpointAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EndpointAddress;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address string: IP:PORT, HOST:PORT or srv:NAME")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointAddress, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for EndpointAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `[dns]`: how names in endpoint addresses are resolved.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers as `IP:PORT` (UDP, then TCP). Empty: the system's
    /// (`/etc/resolv.conf`, with its search domains and `ndots`).
    pub nameservers: Vec<serde_spanned::Spanned<SocketAddr>>,
    /// A name is re-resolved when its records' TTL runs out, but never
    /// sooner than this…
    pub min_ttl: serde_spanned::Spanned<Duration>,
    /// …and never later than this.
    pub max_ttl: serde_spanned::Spanned<Duration>,
    /// One query's time limit (each attempt).
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            min_ttl: serde_spanned::Spanned::new(0..0, Duration::from_secs(1)),
            max_ttl: serde_spanned::Spanned::new(0..0, Duration::from_secs(30)),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Checks what parsing alone cannot: the TTL bounds' order, and keys that
/// mean nothing for an SRV endpoint (its records carry ports and weights).
pub(super) fn check(config: &super::Config) -> Result<(), Invalid> {
    let dns = &config.dns;
    if dns.min_ttl.get_ref().get().is_zero() {
        return Err(invalid(
            dns.min_ttl.span(),
            "dns.min_ttl".into(),
            "min_ttl must be above 0s (a name would be re-resolved in a busy loop)",
        ));
    }
    if dns.max_ttl.get_ref() < dns.min_ttl.get_ref() {
        return Err(invalid(
            dns.max_ttl.span(),
            "dns.max_ttl".into(),
            format!(
                "max_ttl {} is below min_ttl {}",
                dns.max_ttl.get_ref(),
                dns.min_ttl.get_ref()
            ),
        ));
    }
    for (i, c) in config.clusters.iter().enumerate() {
        for (j, e) in c.endpoints.iter().enumerate() {
            let written = e.weight.span() != (0..0);
            if matches!(e.address.get_ref(), EndpointAddress::Srv(_)) && written {
                return Err(invalid(
                    e.weight.span(),
                    format!("clusters[{i}].endpoints[{j}].weight"),
                    "an srv: endpoint takes its weights from the SRV records; remove weight",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<EndpointAddress, String> {
        s.parse()
    }

    #[test]
    fn the_three_forms() {
        assert_eq!(
            parse("127.0.0.1:80"),
            Ok(EndpointAddress::Ip("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            parse("[::1]:8080"),
            Ok(EndpointAddress::Ip("[::1]:8080".parse().unwrap()))
        );
        assert_eq!(
            parse("app:8080"),
            Ok(EndpointAddress::Name {
                host: "app".into(),
                port: 8080
            })
        );
        assert_eq!(
            parse("web-1.default.svc.cluster.local.:80"),
            Ok(EndpointAddress::Name {
                host: "web-1.default.svc.cluster.local.".into(),
                port: 80
            })
        );
        assert_eq!(
            parse("srv:_http._tcp.app.internal"),
            Ok(EndpointAddress::Srv("_http._tcp.app.internal".into()))
        );
    }

    #[test]
    fn mistakes_say_what_is_valid() {
        for bad in [
            "app",
            "app:",
            "app:0",
            "app:99999",
            "a b:80",
            "300.1.1.1:80",
            "srv:",
            "srv:bad name",
            ":80",
            "app..x:80",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(
                e.contains("IP:PORT") || e.contains("DNS name"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn ttl_bounds_are_checked() {
        let load = crate::config::parse_part;
        let e = load("[dns]\nmin_ttl = \"10s\"\nmax_ttl = \"5s\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "dns.max_ttl"));
        assert!(e.message.contains("below min_ttl 10s"), "{e}");
        let e = load("[dns]\nmin_ttl = \"0s\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "dns.min_ttl"));
        let e = load("[dns]\nnameservers = [\"localhost:53\"]\n").unwrap_err();
        assert!(e.key.starts_with("dns.nameservers"), "{e}");
        let ok = load("[dns]\nnameservers = [\"127.0.0.1:5353\", \"[::1]:53\"]\n").unwrap();
        assert_eq!(ok.dns.nameservers.len(), 2);
        assert_eq!(
            ok.dns.max_ttl.get_ref().get(),
            std::time::Duration::from_secs(30)
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["10.0.0.1:80", "[::1]:80", "app:8080", "srv:_http._tcp.x"] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
    }
}
