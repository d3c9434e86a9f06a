//! The files a configuration's TLS listeners name, read and checked when the
//! configuration is loaded (`levee check`, start, reload): each must be
//! readable and parse, each key must belong to its certificate. A failure
//! points at the key of the configuration that names the file. A
//! certificate that expires within 14 days is a warning.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::material::{self, Which};
use super::tickets::FileTicketer;
use crate::config::Config;
use crate::config::validate::{Invalid, invalid};

/// A certificate expiring sooner than this is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Checks every TLS file; returns the warnings.
pub(crate) fn files(config: &Config, now: SystemTime) -> Result<Vec<String>, Invalid> {
    let provider = super::provider();
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut warnings = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let key = format!("listeners[{i}].tls");
        for (j, c) in tls.certificates.iter().enumerate() {
            let names: Option<Vec<String>> = c
                .names
                .as_ref()
                .map(|n| n.iter().map(|n| n.get_ref().clone()).collect());
            let m = material::load(
                Path::new(c.cert.get_ref()),
                Path::new(c.key.get_ref()),
                names.as_deref(),
                &provider,
            )
            .map_err(|e| {
                let (span, field) = match e.which {
                    Which::Cert => (c.cert.span(), "cert"),
                    Which::Key => (c.key.span(), "key"),
                };
                invalid(span, format!("{key}.certificates[{j}].{field}"), e.message)
            })?;
            let left = m.not_after - now_secs;
            if left < 0 {
                warnings.push(format!(
                    "{key}.certificates[{j}].cert: the certificate in {} ({}) expired {} days ago",
                    c.cert.get_ref(),
                    m.subject,
                    -left / 86_400
                ));
            } else if left < EXPIRY_WARNING.as_secs() as i64 {
                warnings.push(format!(
                    "{key}.certificates[{j}].cert: the certificate in {} ({}) expires in {} days {} hours",
                    c.cert.get_ref(),
                    m.subject,
                    left / 86_400,
                    left % 86_400 / 3600
                ));
            }
            if m.names.is_empty() {
                warnings.push(format!(
                    "{key}.certificates[{j}].cert: the certificate in {} names no DNS name; only clients without SNI or with an unknown name get it (as the default)",
                    c.cert.get_ref()
                ));
            }
        }
        if let Some(ca) = &tls.client_ca {
            material::ca_roots(Path::new(ca.get_ref()))
                .map_err(|e| invalid(ca.span(), format!("{key}.client_ca"), e))?;
        }
        if let Some(f) = &tls.ticket_key_file {
            FileTicketer::load(Path::new(f.get_ref()))
                .map_err(|e| invalid(f.span(), format!("{key}.ticket_key_file"), e))?;
        }
    }
    Ok(warnings)
}
