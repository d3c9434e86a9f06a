//! `[tracing]`: exporting spans to an OpenTelemetry collector over
//! OTLP/HTTP (protobuf). Off unless `otlp_endpoint` is set (`docs/slo.md`,
//! "OTLP export").

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::schema::Config;
use super::validate::{Invalid, invalid};
use super::value::Duration;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL, `http://HOST:PORT/v1/traces`.
    /// Unset: no export (the default).
    pub otlp_endpoint: Option<Spanned<String>>,
    /// Spans per export request, at most.
    pub batch_size: Spanned<usize>,
    /// A batch not full is sent after this long.
    pub interval: Duration,
    /// Spans waiting for export, at most; more are dropped (counted).
    pub queue_size: Spanned<usize>,
    /// Share of traces exported: 1 all, 0.1 one in ten (by trace id, so
    /// every Levee instance keeps the same traces).
    pub sample_ratio: Spanned<f64>,
    /// One export request may take this long; then its spans are dropped.
    pub timeout: Duration,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            batch_size: Spanned::new(0..0, 512),
            interval: Duration::from_millis(1000),
            queue_size: Spanned::new(0..0, 4096),
            sample_ratio: Spanned::new(0..0, 1.0),
            timeout: Duration::from_millis(5000),
            service_name: "levee".into(),
        }
    }
}

/// An `http://host:port/path` URL split: (`host:port`, path).
pub fn split_endpoint(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/v1/traces"),
    };
    let (host, port) = authority.rsplit_once(':')?;
    if host.is_empty() || port.parse::<u16>().ok()? == 0 {
        return None;
    }
    Some((authority.to_owned(), path.to_owned()))
}

pub(super) fn check(config: &Config) -> Result<(), Invalid> {
    let t = &config.tracing;
    if let Some(url) = &t.otlp_endpoint
        && split_endpoint(url.get_ref()).is_none()
    {
        return Err(invalid(
            url.span(),
            "tracing.otlp_endpoint".into(),
            format!(
                "{:?} is not an OTLP/HTTP URL Levee can send to; write \
                 \"http://HOST:PORT/v1/traces\" (plain HTTP, an address and a port)",
                url.get_ref()
            ),
        ));
    }
    let ratio = *t.sample_ratio.get_ref();
    if !(0.0..=1.0).contains(&ratio) {
        return Err(invalid(
            t.sample_ratio.span(),
            "tracing.sample_ratio".into(),
            format!("sample_ratio {ratio} is not a share between 0 and 1"),
        ));
    }
    if !(1..=65_536).contains(t.batch_size.get_ref()) {
        return Err(invalid(
            t.batch_size.span(),
            "tracing.batch_size".into(),
            format!(
                "batch_size {} is out of range; use 1 to 65536",
                t.batch_size.get_ref()
            ),
        ));
    }
    if *t.queue_size.get_ref() < *t.batch_size.get_ref() || *t.queue_size.get_ref() > 1 << 20 {
        return Err(invalid(
            t.queue_size.span(),
            "tracing.queue_size".into(),
            format!(
                "queue_size {} must hold a batch ({}) and be at most 1048576",
                t.queue_size.get_ref(),
                t.batch_size.get_ref()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            split_endpoint("http://127.0.0.1:4318/v1/traces"),
            Some(("127.0.0.1:4318".into(), "/v1/traces".into()))
        );
        assert_eq!(
            split_endpoint("http://collector:4318"),
            Some(("collector:4318".into(), "/v1/traces".into()))
        );
        for bad in [
            "https://c:4318/v1/traces",
            "http://c/v1/traces",
            "http://:4318/",
            "c:4318",
        ] {
            assert_eq!(split_endpoint(bad), None, "{bad}");
        }
    }
}
