//! Closing a connection after a last answer (an error page, a TLS alert,
//! an HTTP/2 GOAWAY) so that the client still receives it.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Writes `answer` (may be empty) and closes. What the client sends is read (up to 64 KiB,
/// for at most a second) before closing, so that the close does not reset
/// the connection and lose the answer. Bounded: a client that neither reads
/// nor writes is dropped after a second.
pub async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, answer: &[u8]) {
    let answer = async {
        if !answer.is_empty() {
            stream.write_all(answer).await?;
        }
        stream.shutdown().await?;
        // On the heap: an array here would sit in every connection's future.
        let mut buf = vec![0u8; 4096];
        let mut read = 0;
        while read < 64 * 1024 {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}
