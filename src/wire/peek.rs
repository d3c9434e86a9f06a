//! Looking at a connection's first bytes without taking them (`MSG_PEEK`),
//! until a decision can be made: what a PROXY protocol header says, which
//! server name a ClientHello asks for. What was peeked is still in the
//! socket afterwards, so a TLS passthrough relays the ClientHello
//! untouched and a PROXY header is then consumed to its exact length.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// What a look at the first bytes decided.
pub enum Look<T> {
    /// Not enough bytes yet.
    More,
    Done(T),
}

/// How peeking ended without a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecided {
    /// The client closed (or reset) first.
    Closed,
    /// `max` bytes arrived and still did not decide.
    TooLarge,
}

/// While a segment is missing, peeking again at once would return the same
/// bytes (the socket stays readable): wait this long between looks.
const AGAIN: Duration = Duration::from_millis(5);

/// Peeks at up to `max` first bytes of `stream` until `decide` decides.
/// Unbounded in time: the caller puts a timeout around it.
pub async fn peek_until<T>(
    stream: &TcpStream,
    max: usize,
    mut decide: impl FnMut(&[u8]) -> Look<T>,
) -> Result<T, Undecided> {
    let mut buf = vec![0u8; max];
    let mut seen = 0;
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Err(Undecided::Closed),
            Ok(n) => n,
        };
        if n > seen {
            if let Look::Done(t) = decide(&buf[..n]) {
                return Ok(t);
            }
            if n == max {
                return Err(Undecided::TooLarge);
            }
            seen = n;
        }
        tokio::time::sleep(AGAIN).await;
    }
}

/// Takes exactly `n` bytes off the stream (already peeked, so they are
/// there).
pub async fn consume(stream: &mut TcpStream, n: usize) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await.map(|_| ())
}
