//! Knowing which endpoints are healthy: the lifecycle state machine with
//! hysteresis (`state`), passive outlier detection from real traffic
//! (`outlier`), and active checks (`active`, with the PostgreSQL and Redis
//! role checks in `role` and the gRPC health check in `grpc`). The state machines are
//! synchronous and take the clock as a parameter; the async checker is a
//! thin shell around one check.

pub mod active;
pub mod grpc;
pub mod outlier;
pub mod role;
pub mod state;
