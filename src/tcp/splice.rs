//! The copy of a plain TCP ↔ TCP connection with splice(2): each
//! direction moves bytes socket → pipe → socket inside the kernel; they
//! never enter Levee's memory. `copy = "splice"` splices from the first
//! byte; `copy = "auto"` (the default) copies a direction in userspace
//! until it has carried `AUTO_AFTER` bytes, then splices it.
//!
//! Bounded like the userspace copy: a direction reads only when its pipe
//! is empty and at most `CHUNK` bytes at a time, and writes all of them
//! before it reads again, so a side that does not read stops the other
//! side's reads (back-pressure), and a connection holds at most two
//! pipes' worth of kernel pages (`CHUNK` each). A direction's pipe is
//! made when its first spliced bytes arrive: an idle connection holds
//! none (two file descriptors per direction once bytes moved). An end of
//! file is passed on as a half-close, as by the userspace copy. Pipes in
//! use are counted (`levee_splice_pipes`).
//!
//! Why `auto` is the default: measured on 2026-12-03 (`bench/tcp.sh`),
//! splice moved 1.75× the userspace copy's bytes with one connection and
//! 1.77× with 64, but a spliced connection pays a pipe per direction
//! (pipe2(2) and two close(2)s, and two more file descriptors held) from
//! its first bytes, which a short connection (a request, a query) never
//! earns back. In `auto`, a direction that stays under `AUTO_AFTER` costs
//! exactly what the userspace copy costs; one that carries more pays its
//! pipe once and splices the rest.
//!
//! Not for TLS terminated here (the plain bytes exist only in userspace):
//! the configuration refuses `copy = "splice"` with `[listeners.tls]`, and
//! `auto` copies such connections in userspace.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Poll, ready};

use bytes::BytesMut;
use prometheus_client::metrics::gauge::Gauge;
use rustix::pipe::splice;
use tokio::io::{AsyncRead, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use crate::wire::pipe::{CHUNK, Pipe, flags};

/// Bytes a direction carries in userspace before `auto` splices it. A
/// pipe costs three syscalls (pipe2, and a close per end) and two file
/// descriptors; splice saves two copies of every byte after it. Measured
/// (bench/README.md, "When copy = auto switches"): new connections per
/// second carrying 16–128 KiB one way could not be told apart between the
/// copies (noise ±20 %), at 1 MiB splice made ~1.4× as many; a direction
/// still moving bytes past 128 KiB is a transfer, not an exchange.
pub const AUTO_AFTER: u64 = 128 * 1024;

/// Most bytes read at once while a direction is copied in userspace (as
/// the userspace copy, `tunnel::copy`).
const USER_CHUNK: usize = crate::tunnel::copy::CHUNK;

/// Copies both ways until both sides have sent their end of file (passed
/// on as a half-close), or either fails; without `half_close`, until the
/// first end of file (what came before it written; the other direction's
/// bytes still in flight are dropped, as nginx's `stream` drops them), and
/// no shutdown(2): the caller's close sends both FINs. `userspace_first`:
/// bytes each direction copies in userspace before it splices (0: splice
/// from the start). `seen(from_client, n)`: `n` bytes read from the client
/// (`true`) or the endpoint; `n == 0` is its end of file. `pipes`: the
/// gauge of pipes in use.
pub async fn copy_both(
    client: &mut TcpStream,
    endpoint: &mut TcpStream,
    userspace_first: u64,
    half_close: bool,
    seen: &(impl Fn(bool, usize) + Sync),
    pipes: &Gauge,
) -> io::Result<()> {
    let (client_in, client_out) = client.split();
    let (endpoint_in, endpoint_out) = endpoint.split();
    // Without half-close, as if the other direction had already ended:
    // an end of file shuts nothing down.
    let one_done = AtomicBool::new(!half_close);
    let way = |from_client| Way {
        userspace_first,
        seen: move |n| seen(from_client, n),
        pipes,
        one_done: &one_done,
    };
    let forth = way(true).copy(client_in, endpoint_out);
    let back = way(false).copy(endpoint_in, client_out);
    if half_close {
        return tokio::try_join!(forth, back).map(|_| ());
    }
    tokio::select! {
        done = forth => done,
        done = back => done,
    }
}

/// One direction of the copy.
struct Way<'a, F> {
    userspace_first: u64,
    seen: F,
    pipes: &'a Gauge,
    /// Set by the first direction to reach its end of file.
    one_done: &'a AtomicBool,
}

impl<F: Fn(usize)> Way<'_, F> {
    /// `from` → `to`, in userspace for the first `userspace_first` bytes,
    /// then through a pipe, until `from`'s end of file; then `to`'s write
    /// side is shut.
    async fn copy(self, mut from: ReadHalf<'_>, mut to: WriteHalf<'_>) -> io::Result<()> {
        let mut moved = 0u64;
        while moved < self.userspace_first {
            // What the destination did not take at once, in a buffer of
            // the connection's own until it is written.
            let mut held = BytesMut::new();
            let n = poll_fn(|cx| {
                // Read onto the stack, not into a heap buffer: most reads
                // of a short exchange are written on at once, and a
                // 16 KiB allocation per read was a fifth of a short
                // connection's user-space instructions (mimalloc's slow
                // path). Through `poll_read` (not `try_read`): a short
                // read tells tokio the socket is drained, which saves the
                // read that would only have said "would block".
                let mut scratch = [MaybeUninit::<u8>::uninit(); USER_CHUNK];
                let mut read = ReadBuf::uninit(&mut scratch);
                ready!(Pin::new(&mut from).poll_read(cx, &mut read))?;
                let got = read.filled();
                if !got.is_empty() {
                    let written = match to.as_ref().try_write(got) {
                        Ok(w) => w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    held.extend_from_slice(&got[written..]);
                }
                Poll::Ready(Ok(got.len()))
            })
            .await?;
            (self.seen)(n);
            if n == 0 {
                return self.end(to.as_ref());
            }
            to.write_all(&held).await?;
            moved += n as u64;
        }
        let (from, to) = (from.as_ref(), to.as_ref());
        let mut pipe: Option<Pipe> = None;
        loop {
            from.readable().await?;
            let p = match &pipe {
                Some(p) => p,
                None => pipe.insert(Pipe::new(self.pipes)?),
            };
            // The pipe is empty here, so a would-block can only be the
            // socket's: tokio then waits for it to be readable again.
            let n = from
                .async_io(Interest::READABLE, || {
                    Ok(splice(from, None, &p.into, None, CHUNK, flags())?)
                })
                .await?;
            (self.seen)(n);
            if n == 0 {
                return self.end(to);
            }
            let mut held = n;
            while held > 0 {
                held -= to
                    .async_io(Interest::WRITABLE, || {
                        Ok(splice(&p.out, None, to, None, held, flags())?)
                    })
                    .await?;
            }
        }
    }

    /// `from` sent its end of file: passed on as a half-close, unless the
    /// other direction already ended. Then both sockets are closed next,
    /// and a close sends the same FIN: the shutdown(2) would be a syscall
    /// for nothing on every connection.
    fn end(&self, to: &TcpStream) -> io::Result<()> {
        if self.one_done.swap(true, Relaxed) {
            return Ok(());
        }
        socket2::SockRef::from(to).shutdown(Shutdown::Write)
    }
}
