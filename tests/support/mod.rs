//! Shared harness for Levee's end-to-end tests: real sockets, real processes.
//!
//! Include it from any file in `tests/` with `mod support;` and use what you
//! need; every test file compiles its own copy, hence `allow(dead_code)`.
//!
//! - [`Backend`] — a programmable HTTP/1.1 + h2c upstream on 127.0.0.1 with an
//!   ephemeral port, on its own thread and runtime. Behaviour is chosen per
//!   request by path and query (`/status/503`, `?delay=250ms`, `/echo`,
//!   `/download?bytes=N`, `/upload`, `/close-mid`, `/slow-body`, `/drop`), or
//!   globally (`set_status`, `fail_next`, `set_delay`, `stop`). Counters tell
//!   how many requests and TCP connections it saw.
//! - [`Levee`] — the real `levee` binary as a child process, started from a
//!   TOML string (see [`ConfigBuilder`]) and ready once the admin `/healthz`
//!   answers 200. Signals, reload, logs, RSS, metrics and status.
//! - [`raw`] helpers — hand-written bytes over TCP ([`send_raw`], [`RawConn`],
//!   [`send_slowly`]) for malformed requests and slowloris tests.
//! - [`tls_upstream`] — test certificates (rcgen) and a TLS server in front
//!   of a [`Backend`], for TLS to endpoints.
//! - [`ws`] — a WebSocket server (echo, `who` answers its name, close
//!   codes kept) and client helpers, with tokio-tungstenite.
//! - `h2_endpoint.rs` (included by path where needed, like `grpc.rs`) — an
//!   HTTP/2 endpoint on the `h2` crate that refuses streams (REFUSED_STREAM)
//!   or goes silent on its open connections, on request.
//! - [`http_get`] / [`http_request`] — a tiny blocking HTTP/1.1 client, usable
//!   from plain `#[test]` functions without a runtime.
//!
//! ```ignore
//! mod support;
//! use support::*;
//!
//! #[tokio::test]
//! async fn proxies_to_the_backend() {
//!     let b = Backend::start("b1");
//!     let listen = free_addr();
//!     let cfg = ConfigBuilder::simple(listen, &[b.addr()]);
//!     let levee = Levee::start(&cfg.build());
//!     let r = reqwest::get(format!("http://{listen}/")).await.unwrap();
//!     assert_eq!(r.headers()["x-backend"], "b1");
//!     assert_eq!(b.requests(), 1);
//!     drop(levee);
//! }
//! ```
//!
//! Waiting is always bounded polling ([`wait_until`]), never a fixed sleep.
// Each test file uses a part of this module: the rest is not dead.
#![allow(dead_code, unused_imports)]

mod backend;
mod behave;
mod body;
mod canned;
mod config;
mod http;
mod levee;
pub mod otlp;
pub mod raw;
pub mod redis;
pub mod redis_cluster;
pub mod tls;
pub mod tls_upstream;
pub mod ws;

pub use backend::{Backend, RecordedRequest};
pub use behave::{download_pattern, is_download_pattern, parse_duration};
pub use canned::{canned_upstream, mirror_upstream};
pub use config::{ConfigBuilder, free_addr, free_port, refusing_addr};
pub use http::{HttpResponse, http_get, http_request};
pub use levee::{Levee, metric_sum};
pub use raw::{RawConn, RawResponse, SlowResult, send_raw, send_slowly};

use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it returns true or `timeout` passes.
/// Returns whether it became true. Use it instead of sleeping.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Async twin of [`wait_until`] for `#[tokio::test]`s, so the test's own
/// runtime is not blocked while it waits.
pub async fn wait_until_async(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
