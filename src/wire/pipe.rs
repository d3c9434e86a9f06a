//! A pipe for splice(2) (socket → pipe → socket inside the kernel), shared
//! by the TCP listeners' copy (`tcp::splice`) and WebSocket tunnels
//! (`tunnel::copy`). Each one open is counted (`levee_splice_pipes`): two
//! file descriptors and up to `CHUNK` bytes of kernel pages.

use std::io;
use std::os::fd::OwnedFd;

use prometheus_client::metrics::gauge::Gauge;
use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with};

/// Most bytes moved by one splice: one pipe's default capacity (16 pages),
/// so a read fills the pipe at most once.
pub const CHUNK: usize = 64 * 1024;

/// A pipe, counted in the gauge of pipes in use while it is open.
pub struct Pipe {
    /// The end spliced from, towards a socket.
    pub out: OwnedFd,
    /// The end spliced into, from a socket.
    pub into: OwnedFd,
    gauge: Gauge,
}

impl Pipe {
    pub fn new(gauge: &Gauge) -> io::Result<Pipe> {
        let (out, into) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        gauge.inc();
        Ok(Pipe {
            out,
            into,
            gauge: gauge.clone(),
        })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The flags of every splice: MOVE, pages are moved rather than copied
/// where the kernel can; NONBLOCK, a full socket or an empty one returns
/// at once (tokio waits for readiness).
pub fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}
