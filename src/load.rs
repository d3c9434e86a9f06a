//! A configuration file as Levee takes it: read, parsed and validated
//! (`config`), then the files it names (TLS certificates, keys, CAs, ticket
//! keys) read and checked (`tls::check`). It sits above both, so that
//! `config` needs nothing of `tls`.

use std::path::Path;

use crate::config::{self, Config, ConfigError};

/// The configuration at `path`, its files checked; warnings (a certificate
/// about to expire) are logged.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let (config, warnings) = load_with_warnings(path)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

/// `load`, with the warnings returned (for `levee check`).
pub fn load_with_warnings(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let (config, text) = config::read(path)?;
    let warnings = crate::tls::check::files(&config, std::time::SystemTime::now())
        .map_err(|v| config::error_at(path, &text, v.span.start, v.key, v.message))?;
    Ok((config, warnings))
}
