//! HTTP/1.1 message syntax that Levee's server (`server::h1`) and its
//! client (`upstream`) both read, below both: the chunked transfer coding
//! (`chunked`).

pub mod chunked;
