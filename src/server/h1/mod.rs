//! Levee's own HTTP/1.1 server (`server.http1 = "levee"`): a pure codec on
//! `httparse` (`codec`, `chunked`), the request body handed to the pipeline
//! (`body`), and the connection driver (`conn`) that holds a buffer only
//! while a request is being read or answered.

pub mod body;
pub mod codec;
pub mod conn;
pub mod date;
#[cfg(test)]
mod props;
