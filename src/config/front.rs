//! What a listener reads of a connection before serving it:
//! `[listeners.proxy_protocol]` (a PROXY protocol header from a load
//! balancer in front, accepted from trusted networks only) and
//! `[[listeners.sni]]` (a tcp listener's TLS passthrough: the cluster a
//! connection goes to, chosen by the SNI of its ClientHello).

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::ratelimit::Cidr;
use super::schema::{Config, Protocol};
use super::validate::{Invalid, invalid};
use super::value::Duration;

/// `[listeners.proxy_protocol]`: every connection must start with a PROXY
/// protocol header (v1 or v2), and must come from a `trusted` network;
/// the header's source address is then the client's address for
/// everything (balancing, rate limits, per-IP caps, X-Forwarded-For,
/// logs). Anything else is closed and counted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolAccept {
    /// Networks of the load balancers allowed to send the header, e.g.
    /// `["10.0.0.0/8", "::1"]`.
    pub trusted: Spanned<Vec<Spanned<String>>>,
    /// Time the header has to arrive, from the connection.
    #[serde(default = "default_timeout")]
    pub timeout: Spanned<Duration>,
}

fn default_timeout() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(5))
}

impl ProxyProtocolAccept {
    /// The trusted networks; validation guarantees they parse.
    pub fn networks(&self) -> Vec<Cidr> {
        self.trusted
            .get_ref()
            .iter()
            .filter_map(|t| t.get_ref().parse().ok())
            .collect()
    }
}

/// `[[listeners.sni]]`: connections whose ClientHello names one of `names`
/// go to `cluster`, TLS untouched.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniRoute {
    /// Server names: exact (`db.example.com`) or one `*.` label
    /// (`*.example.com`).
    pub names: Spanned<Vec<Spanned<String>>>,
    pub cluster: Spanned<String>,
}

pub(super) fn check(config: &Config) -> Result<(), Invalid> {
    for (i, l) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        if let Some(p) = &l.proxy_protocol {
            let key = format!("{key}.proxy_protocol");
            if p.trusted.get_ref().is_empty() {
                return Err(invalid(
                    p.trusted.span(),
                    format!("{key}.trusted"),
                    "trusts no network, so every connection would be closed; list the \
                     networks of the load balancers in front, e.g. [\"10.0.0.0/8\"]",
                ));
            }
            for (j, t) in p.trusted.get_ref().iter().enumerate() {
                t.get_ref()
                    .parse::<Cidr>()
                    .map_err(|m| invalid(t.span(), format!("{key}.trusted[{j}]"), m))?;
            }
            if p.timeout.get_ref().get().is_zero() {
                return Err(invalid(
                    p.timeout.span(),
                    format!("{key}.timeout"),
                    "must be above 0",
                ));
            }
        }
        for (j, s) in l.sni.iter().enumerate() {
            let key = format!("{key}.sni[{j}]");
            if l.protocol != Protocol::Tcp {
                return Err(invalid(
                    s.cluster.span(),
                    key,
                    "only applies to protocol = \"tcp\" (TLS passthrough); an HTTP \
                     listener routes by host with [[routes]]",
                ));
            }
            if l.tls.is_some() {
                return Err(invalid(
                    s.cluster.span(),
                    key,
                    "a listener with [listeners.tls] terminates TLS, so it cannot pass \
                     it through by SNI; remove one of the two",
                ));
            }
            if s.names.get_ref().is_empty() {
                return Err(invalid(
                    s.names.span(),
                    format!("{key}.names"),
                    "needs at least one server name",
                ));
            }
            for (k, n) in s.names.get_ref().iter().enumerate() {
                if !super::tls::valid_server_name(n.get_ref()) {
                    return Err(invalid(
                        n.span(),
                        format!("{key}.names[{k}]"),
                        format!(
                            "{:?} is not a server name; write e.g. \"db.example.com\" or \
                             \"*.example.com\"",
                            n.get_ref()
                        ),
                    ));
                }
            }
        }
        if l.protocol == Protocol::Tcp
            && let Some(tls) = &l.tls
            && let Some(a) = tls.alpn.first().filter(|a| !a.span().is_empty())
        {
            return Err(invalid(
                a.span(),
                format!("{key}.tls.alpn"),
                "a tcp listener serves no HTTP, so it offers no ALPN protocol; remove alpn",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn refused(text: &str) -> String {
        match crate::config::parse(std::path::Path::new("t.toml"), text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const TCP: &str = "[[listeners]]\nname = \"pg\"\naddress = \"127.0.0.1:6432\"\nprotocol = \"tcp\"\ncluster = \"db\"\n";
    const CLUSTER: &str =
        "[[clusters]]\nname = \"db\"\n[[clusters.endpoints]]\naddress = \"127.0.0.1:5432\"\n";

    #[test]
    fn proxy_protocol_needs_trusted_networks_that_parse() {
        let ok = format!(
            "{TCP}[listeners.proxy_protocol]\ntrusted = [\"10.0.0.0/8\", \"::1\"]\n{CLUSTER}"
        );
        crate::config::parse(std::path::Path::new("t.toml"), &ok).unwrap();
        let e = refused(&format!(
            "{TCP}[listeners.proxy_protocol]\ntrusted = []\n{CLUSTER}"
        ));
        assert!(
            e.contains("t.toml:7:11")
                && e.contains("proxy_protocol.trusted")
                && e.contains("trusts no network"),
            "{e}"
        );
        let e = refused(&format!(
            "{TCP}[listeners.proxy_protocol]\ntrusted = [\"10.0.0.0/33\"]\n{CLUSTER}"
        ));
        assert!(e.contains("proxy_protocol.trusted[0]"), "{e}");
        let e = refused(&format!(
            "{TCP}[listeners.proxy_protocol]\ntrusted = [\"::1\"]\ntimeout = \"0s\"\n{CLUSTER}"
        ));
        assert!(e.contains("proxy_protocol.timeout"), "{e}");
    }

    #[test]
    fn sni_routes_only_on_a_plain_tcp_listener() {
        let sni = "[[listeners.sni]]\nnames = [\"a.example.com\", \"*.b.example.com\"]\ncluster = \"db\"\n";
        crate::config::parse(
            std::path::Path::new("t.toml"),
            &format!("{TCP}{sni}{CLUSTER}"),
        )
        .unwrap();
        let e = refused(&format!(
            "{TCP}[[listeners.sni]]\nnames = [\"a b\"]\ncluster = \"db\"\n{CLUSTER}"
        ));
        assert!(e.contains("sni[0].names[0]"), "{e}");
        let e = refused(&format!(
            "{TCP}[[listeners.sni]]\nnames = []\ncluster = \"db\"\n{CLUSTER}"
        ));
        assert!(e.contains("sni[0].names"), "{e}");
        let e = refused(&format!(
            "{TCP}[[listeners.sni]]\nnames = [\"a.example.com\"]\ncluster = \"nope\"\n{CLUSTER}"
        ));
        assert!(e.contains("no cluster named \"nope\""), "{e}");
        let http = "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\n";
        let e = refused(&format!(
            "{http}{sni}[[routes]]\nname = \"r\"\ncluster = \"db\"\n{CLUSTER}"
        ));
        assert!(e.contains("sni[0]") && e.contains("only applies"), "{e}");
    }
}
