//! Levee: a load balancer and reverse proxy built for reliability.
//!
//! The request path reads top to bottom: `server` accepts and drives
//! connections, `proxy` runs the pipeline, `route` matches, `cluster` picks an
//! endpoint for each try and records its result, `upstream` talks to it over
//! its pooled connections. `config` and `snapshot` are the control plane that
//! builds what the data path reads. Each module imports only those below it
//! (`docs/architecture.md` draws the graph).
#![forbid(unsafe_code)]

pub mod admin;
pub mod availability;
pub mod chaos;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod events;
pub mod http1;
pub mod load;
pub mod observe;
pub mod proxy;
pub mod ratelimit;
pub mod resilience;
pub mod rewrite;
pub mod route;
pub mod server;
pub mod service_level;
pub mod shared;
pub mod shortage;
pub mod slo;
pub mod snapshot;
pub mod tcp;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod wire;
