//! Loading and validating the configuration file.
//!
//! A config is either accepted whole or refused with one precise error that
//! names the file, line, column, the key and what would be valid. Levee never
//! runs half-configured, and a refused reload leaves the running config alone.

pub mod burn_actions;
pub mod chaos;
pub mod dns;
pub mod front;
pub mod http2;
mod ignored;
pub mod otlp;
pub mod ratelimit;
pub mod redis_url;
pub mod resilience;
pub mod rewrite;
mod schema;
pub mod slo;
mod tcp;
pub mod tls;
pub mod upstream_http2;
pub mod upstream_tls;
pub(crate) mod validate;
pub mod value;
pub mod websocket;
mod words;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use dns::{DnsConfig, EndpointAddress};
pub use schema::*;
pub use value::{ByteSize, Duration};

/// A refused configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no position (e.g. unreadable file).
    pub line: usize,
    pub column: usize,
    /// Dotted key path such as `clusters[0].endpoints[1].address`; empty when
    /// the error is not about one key (a TOML syntax error).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates a config file; returns it with its text
/// (for the positions of later errors). The files it names (TLS) are
/// checked by `crate::load`, which sits above `config` and `tls`.
pub fn read(path: &Path) -> Result<(Config, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: 0,
        column: 0,
        key: String::new(),
        message: format!("cannot read the file: {e}"),
    })?;
    let config = parse(path, &text)?;
    Ok((config, text))
}

/// An error at byte `offset` of the config `text` read from `path`.
pub fn error_at(
    path: &Path,
    text: &str,
    offset: usize,
    key: String,
    message: String,
) -> ConfigError {
    let (line, column) = line_column(text, offset);
    ConfigError {
        file: path.to_owned(),
        line,
        column,
        key,
        message,
    }
}

/// Parses and validates config text; `path` is only used in errors.
/// For unit tests of one part of a configuration: `text` parsed as
/// `t.toml` with `server.allow_no_listeners = true` appended, so that it
/// needs no listener and its lines keep their numbers.
#[cfg(test)]
pub fn parse_part(text: &str) -> Result<Config, ConfigError> {
    let text = format!("{text}\n[server]\nallow_no_listeners = true\n");
    parse(Path::new("t.toml"), &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let at = |span: Option<Range<usize>>, key: String, message: String| {
        let (line, column) = span.map_or((0, 0), |s| line_column(text, s.start));
        ConfigError {
            file: path.to_owned(),
            line,
            column,
            key,
            message,
        }
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| at(e.span(), String::new(), words::in_user_words(e.message())))?;
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        // serde_spanned shows up in the path as a private field; hide it.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let key = if key == "." { String::new() } else { key };
        let inner = e.into_inner();
        let mut message = words::in_user_words(inner.message());
        if message == "invalid socket address syntax" {
            message.push_str("; write IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"");
        }
        at(inner.span(), key, message)
    })?;
    validate::check(&config).map_err(|v| at(Some(v.span), v.key, v.message))?;
    // Last: it reads files, worth doing only for an otherwise valid config.
    upstream_tls::load(&mut config).map_err(|v| at(Some(v.span), v.key, v.message))?;
    Ok(config)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The configuration `levee demo` runs: one listener, three local backends.
pub fn demo_text(listen: &str, admin: &str, backends: &[String]) -> String {
    let mut t = format!(
        r#"# Levee demo: one listener, three built-in backends on loopback.
[admin]
address = "{admin}"

[access_log]
enabled = false

# Fault injection allowed, for `levee chaos run examples/chaos/demo-slow-backend.toml`.
[chaos]
enabled = true

[[listeners]]
name = "demo"
address = "{listen}"
# Well within any machine's limit of open files (two per connection).
max_connections = 1000

# 5 requests per second per client, in bursts of up to 5.
[[rate_limit.rules]]
name = "per-client"
key = ["client_ip"]
limit = 5
period = "1s"

[[routes]]
name = "limited"
path_prefix = "/limited"
cluster = "demo"
rate_limits = ["per-client"]

# A nice-to-have: switched off (an empty list) below the FULL service level.
[[routes]]
name = "recommendations"
path_prefix = "/reco"
cluster = "demo"
min_level = "full"
fallback = {{ status = 200, body = "[]\n", headers = {{ "content-type" = "application/json" }} }}

[[routes]]
name = "all"
path_prefix = "/"
cluster = "demo"

[[clusters]]
name = "demo"
balance = "round_robin"
# Retry a connect failure or a 502/503/504 on another backend, within the budget.
retry = {{ max_attempts = 2, retry_on = ["connect_failure", "gateway_error"] }}
circuit_breaker = {{ consecutive_failures = 5, open_duration = "10s" }}
"#
    );
    for b in backends {
        t.push_str(&format!("\n[[clusters.endpoints]]\naddress = \"{b}\"\n"));
    }
    t
}
