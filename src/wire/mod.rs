//! A client connection's bytes before a protocol serves them, shared by
//! the HTTP server (`server`) and the TCP listeners (`tcp`), below both:
//! looking at the first bytes without taking them (`peek`), what a client
//! speaks (`sniff`, with `ReadReady` for the streams that carry it), the
//! PROXY protocol header from a trusted load balancer (`proxy_protocol`),
//! a ClientHello's server name and the SNI routes it picks from (`sni`),
//! a TLS listener's handshake (`handshake`), closing with a last answer
//! without a reset (`linger`), the pipe of a splice(2) copy (`pipe`), and
//! a stream that gives back its idle buffers to an engine that owns it
//! (`release`).

pub mod handshake;
mod linger;
pub mod peek;
pub mod pipe;
pub mod proxy_protocol;
pub mod release;
pub mod sni;
pub mod sniff;

pub use linger::linger_close;
