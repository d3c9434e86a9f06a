//! What Levee tells about itself: Prometheus metrics and the access log.

pub mod access_log;
pub mod chaos;
pub mod known;
pub mod metrics;
pub mod otlp;
pub mod tcp;
pub mod trace;

pub use access_log::{AccessLog, LogRecord};
pub use metrics::Metrics;
