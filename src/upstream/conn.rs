//! One connection to an endpoint: the socket and what has been read from it
//! but not yet consumed. While a request uses it, it is polled by that
//! request's own task (no separate connection task, no channels); between
//! requests it sits in the pool, polled by nobody.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

/// Read buffer size: room for a typical response head and a body chunk.
pub const READ_CHUNK: usize = 16 * 1024;

pub struct Conn {
    pub stream: TcpStream,
    pub read: BytesMut,
}

#[derive(Debug)]
pub enum ConnectError {
    Refused(io::Error),
    TimedOut,
}

impl Conn {
    pub async fn connect(address: SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Err(_) => return Err(ConnectError::TimedOut),
            Ok(Err(e)) => return Err(ConnectError::Refused(e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
        })
    }

    /// Whether an idle pooled connection can take a request: nothing has
    /// arrived on it since its last response, not even the end of stream.
    /// Costs no system call unless the event loop saw the socket readable.
    pub fn is_idle_and_open(&self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}
