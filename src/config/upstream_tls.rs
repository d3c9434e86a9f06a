//! `[clusters.tls]`: TLS to a cluster's endpoints. Loading the
//! configuration reads the files and builds the client configuration, so a
//! missing file, a certificate that does not parse or a key that does not
//! match its certificate refuses the configuration (`levee check`, a reload)
//! with the setting's file:line:column, and the snapshot built from an
//! accepted configuration cannot fail on it.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::schema::Config;
use super::validate::{Invalid, invalid};
use crate::upstream::tls::{Connector, Field, Settings};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Writing the table turns TLS on; `enabled = false` turns it off and
    /// keeps the settings.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// PEM file of the CA certificates that endpoint certificates must
    /// chain to. Unset: the system's roots.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// The name sent as SNI and verified for every endpoint. Unset: an
    /// endpoint's own host name (`HOST:PORT`), else its IP (no SNI sent).
    #[serde(default)]
    pub sni: Option<Spanned<String>>,
    /// `false`: any certificate is accepted (encrypted, not authenticated).
    #[serde(default = "yes_spanned")]
    pub verify: Spanned<bool>,
    /// Client certificate chain (PEM) and its key, for endpoints that
    /// require one (mTLS).
    #[serde(default)]
    pub cert: Option<Spanned<String>>,
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    /// Built when the configuration is loaded (`load`); `None` while
    /// disabled.
    #[serde(skip)]
    pub connector: Option<Arc<Connector>>,
}

fn yes() -> bool {
    true
}

fn yes_spanned() -> Spanned<bool> {
    Spanned::new(0..0, true)
}

/// Checks every cluster's `tls` table and builds its connector.
pub(super) fn load(config: &mut Config) -> Result<(), Invalid> {
    for (i, cluster) in config.clusters.iter_mut().enumerate() {
        let Some(tls) = cluster.tls.as_mut() else {
            continue;
        };
        let table = tls.span();
        let tls = tls.get_mut();
        let key = |name: &str| format!("clusters[{i}].tls.{name}");
        tls.connector = None;
        if !tls.enabled {
            continue;
        }
        if !*tls.verify.get_ref()
            && let Some(ca) = &tls.ca_file
        {
            return Err(invalid(
                ca.span(),
                key("ca_file"),
                "ca_file is not used with verify = false; remove one of them",
            ));
        }
        for (name, value) in [
            ("ca_file", &tls.ca_file),
            ("cert", &tls.cert),
            ("key", &tls.key),
        ] {
            if let Some(v) = value
                && v.get_ref().trim().is_empty()
            {
                return Err(invalid(
                    v.span(),
                    key(name),
                    "an empty path; name a PEM file",
                ));
            }
        }
        let settings = Settings {
            ca_file: tls
                .ca_file
                .as_ref()
                .map(|p| Path::new(p.get_ref().as_str())),
            verify: *tls.verify.get_ref(),
            cert: tls.cert.as_ref().map(|p| Path::new(p.get_ref().as_str())),
            key: tls.key.as_ref().map(|p| Path::new(p.get_ref().as_str())),
            sni: tls.sni.as_ref().map(|s| s.get_ref().as_str()),
        };
        match Connector::build(&settings) {
            Ok(c) => tls.connector = Some(Arc::new(c)),
            Err(e) => {
                let (name, span) = match e.field {
                    Field::CaFile => ("ca_file", tls.ca_file.as_ref().map(Spanned::span)),
                    Field::Cert => ("cert", tls.cert.as_ref().map(Spanned::span)),
                    Field::Key => ("key", tls.key.as_ref().map(Spanned::span)),
                    Field::Sni => ("sni", tls.sni.as_ref().map(Spanned::span)),
                    Field::Roots => ("verify", None),
                };
                return Err(invalid(span.unwrap_or(table), key(name), e.message));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::parse_part;

    fn cluster(tls: &str) -> String {
        format!("[[clusters]]\nname = \"c\"\n[clusters.tls]\n{tls}\n")
    }

    fn err(tls: &str) -> String {
        match parse_part(&cluster(tls)) {
            Ok(_) => panic!("accepted: {tls}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_missing_ca_file_is_refused_at_its_line() {
        let e = err("ca_file = \"/nonexistent/ca.pem\"");
        assert!(
            e.starts_with(
                "t.toml:4:11: clusters[0].tls.ca_file: cannot read ca_file /nonexistent/ca.pem"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_file_that_is_not_pem_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let e = err(&format!("ca_file = {:?}", path.display().to_string()));
        assert!(e.contains("clusters[0].tls.ca_file"), "{e}");
        assert!(e.contains("holds no PEM certificate"), "{e}");
    }

    #[test]
    fn cert_without_key_and_bad_sni_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ck = rcgen::generate_simple_self_signed(vec!["client".to_string()]).expect("rcgen");
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, ck.cert.pem()).expect("write");
        let e = err(&format!("cert = {:?}", cert.display().to_string()));
        assert!(
            e.contains("t.toml:4:8: clusters[0].tls.cert: cert needs a key"),
            "{e}"
        );
        let e = err("sni = \"not a name\"");
        assert!(e.contains("t.toml:4:7: clusters[0].tls.sni"), "{e}");
        let e = err("verify = false\nca_file = \"/x.pem\"");
        assert!(e.contains("t.toml:5:11: clusters[0].tls.ca_file"), "{e}");
        let e = err("enabled = true\nverfy = false");
        assert!(e.contains("verfy"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = rcgen::generate_simple_self_signed(vec!["a".to_string()]).expect("rcgen");
        let b = rcgen::generate_simple_self_signed(vec!["b".to_string()]).expect("rcgen");
        let cert = dir.path().join("a.pem");
        let key = dir.path().join("b.key");
        std::fs::write(&cert, a.cert.pem()).expect("write");
        std::fs::write(&key, b.signing_key.serialize_pem()).expect("write");
        let e = err(&format!(
            "cert = {:?}\nkey = {:?}",
            cert.display().to_string(),
            key.display().to_string()
        ));
        assert!(e.contains("t.toml:5:7: clusters[0].tls.key"), "{e}");
        assert!(e.contains("cannot be used with"), "{e}");
        // The matching key is accepted.
        std::fs::write(&key, a.signing_key.serialize_pem()).expect("write");
        let ok = parse_part(&cluster(&format!(
            "cert = {:?}\nkey = {:?}",
            cert.display().to_string(),
            key.display().to_string()
        )));
        let config = ok.expect("a matching key is accepted");
        let tls = config.clusters[0].tls.as_ref().expect("tls");
        assert!(tls.get_ref().connector.is_some());
    }

    #[test]
    fn disabled_tls_reads_no_file() {
        let config = parse_part(&cluster("enabled = false\nca_file = \"/nonexistent.pem\""))
            .expect("disabled: accepted");
        let tls = config.clusters[0].tls.as_ref().expect("tls");
        assert!(tls.get_ref().connector.is_none());
    }

    #[test]
    fn system_roots_load() {
        // Debian's ca-certificates (scripts/test.sh installs it).
        let config = parse_part(&cluster("sni = \"example.com\"")).expect("system roots");
        let tls = config.clusters[0].tls.as_ref().expect("tls");
        assert!(tls.get_ref().connector.is_some());
    }
}
