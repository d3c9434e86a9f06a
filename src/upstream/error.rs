//! Why a request to an endpoint failed, with the cause kept.
//!
//! An operator looking at a 502 needs to know whether the endpoint refused
//! the connection, reset it mid-request or sent garbage: each variant says
//! at which step the exchange failed and keeps the `io::Error` (its kind and
//! its OS message) that made it fail. The proxy maps these to its own answers
//! (502, 504, 413, 400) and writes the cause to the error log and the access
//! log.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use super::codec::ParseError;
use crate::shortage::Shortage;

/// The request body's own error, boxed: only made when a body fails.
pub type BoxError = Box<dyn StdError + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection was not made within `connect_timeout`.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The connection was not made: refused, unreachable.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The connection was not made for want of Levee's own file
    /// descriptors, local ports or memory: no endpoint is to blame
    /// (`crate::shortage`).
    #[error("connect not made, Levee is short of {cause}: {1}", cause = .0.as_str())]
    Shortage(Shortage, #[source] io::Error),
    /// Writing the request head or body failed.
    #[error("sending the request failed: {0}")]
    Send(#[source] io::Error),
    /// Reading the response head failed.
    #[error("reading the response failed: {0}")]
    Receive(#[source] io::Error),
    /// The endpoint closed the connection before a complete response head.
    #[error("the endpoint closed the connection before answering")]
    Closed,
    /// The response head is not valid HTTP/1.x, or its framing is.
    #[error("invalid response from the endpoint: {0}")]
    Response(#[from] ParseError),
    /// A `101` to a request that asked for no upgrade (Levee strips
    /// `Upgrade`): a confused endpoint, not a tunnel to open.
    #[error("the endpoint switched protocols unasked")]
    UnexpectedUpgrade,
    /// No response head within the time the caller allowed (per-try timeout
    /// or deadline). Made by the caller, which owns the clock.
    #[error("no response within {0:?}")]
    TimedOut(Duration),
    /// A fault injected in place of the exchange answered this status (see
    /// `chaos::inject`). Made by the caller, like `TimedOut`.
    #[error("fault injected: status {0}")]
    Injected(u16),
    /// A fault injected in place of the exchange answered this gRPC status
    /// (as a trailers-only answer would). Made by the caller.
    #[error("fault injected: grpc-status {0}")]
    InjectedGrpc(u8),
    /// An HTTP/2 endpoint provably did not process the request: it refused
    /// the stream (`REFUSED_STREAM`), or its graceful `GOAWAY` came before
    /// the stream (RFC 9113 §8.7), or the connection closed before the
    /// request was handed to it. It may go elsewhere whatever its method.
    #[error("the endpoint did not process the request: {0}")]
    Unprocessed(String),
    /// The request body (the client's side) failed while being sent.
    #[error("the request body failed: {0}")]
    RequestBody(#[source] BoxError),
}

impl Error {
    /// A failed connect: Levee's own shortage, or the endpoint's failure.
    pub fn connect(e: io::Error) -> Error {
        match Shortage::of(&e) {
            Some(shortage) => Error::Shortage(shortage, e),
            None => Error::Connect(e),
        }
    }

    /// Whether the request never reached the endpoint (no connection)
    /// through the endpoint's fault or the network's; a shortage of
    /// Levee's own is not one.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_) | Error::ConnectTimeout(_))
    }

    /// The kind of the io error behind this one, if there is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Connect(e) | Error::Shortage(_, e) | Error::Send(e) | Error::Receive(e) => {
                Some(e.kind())
            }
            Error::ConnectTimeout(_) | Error::TimedOut(_) => Some(io::ErrorKind::TimedOut),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_io_cause() {
        let e = Error::Connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(e.is_connect());
        assert_eq!(e.io_kind(), Some(io::ErrorKind::ConnectionRefused));
        assert!(e.source().is_some());
        assert!(e.to_string().starts_with("connect failed: "), "{e}");
        let e = Error::Receive(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(!e.is_connect());
        assert!(e.to_string().contains("reset"), "{e}");
        // Out of file descriptors: Levee's shortage, not a failed connect.
        let e = Error::connect(io::Error::from_raw_os_error(24));
        assert!(matches!(e, Error::Shortage(Shortage::FileDescriptors, _)));
        assert!(!e.is_connect());
        assert!(e.to_string().contains("short of file_descriptors"), "{e}");
        let e = Error::connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(e.is_connect());
    }
}
