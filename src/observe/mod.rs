//! What Levee tells about itself: Prometheus metrics and the access log.

pub mod access_log;
pub mod chaos;
pub mod grpc;
pub mod known;
pub mod latency;
pub mod metrics;
pub mod otlp;
pub mod route_stats;
pub mod tcp;
pub mod trace;
pub mod websocket;

pub use access_log::{AccessLog, LogRecord};
pub use metrics::Metrics;
