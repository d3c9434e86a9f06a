//! Levee's own shortages: a socket call refused for want of the proxy's
//! resources (file descriptors, local ports, kernel memory), not because
//! of anything an endpoint did.
//!
//! A connect that fails this way says nothing about the endpoint: every
//! endpoint would meet the same shortage. Charged to the endpoint, as a
//! refused connection is, it would feed outlier detection, breakers and
//! passive health, and a moment of fd or port exhaustion on the proxy
//! would eject and trip every healthy endpoint behind it, turning a local
//! and passing fault into an outage that outlasts it. So the paths that
//! connect (`tcp::connect`, `upstream`, the active health checks) and the
//! accept loop ask `Shortage::of` first: a shortage is counted in
//! `levee_local_shortage_total{cause, at}` and logged, the connection or
//! request it stopped is refused (HTTP answers 503 `local_shortage`), and
//! no endpoint's record changes. HAProxy keeps the same line (its `R`
//! termination state: "a resource on the proxy has been exhausted").

use std::error::Error;
use std::io;
use std::sync::Arc;

use rustix::io::Errno;

/// Where a shortage is met: the `at` label of its counter.
pub const PLACES: [&str; 3] = ["accept", "connect", "health_check"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// `EMFILE`, `ENFILE`: the process's or the system's file descriptors.
    FileDescriptors,
    /// `EADDRNOTAVAIL` from connect(2): no free local port (ephemeral
    /// ports held by connections and TIME_WAIT toward that address).
    LocalPorts,
    /// `ENOBUFS`, `ENOMEM`: the kernel's socket memory.
    Memory,
}

impl Shortage {
    /// Every cause, for the counters made at 0.
    pub const ALL: [Shortage; 3] = [
        Shortage::FileDescriptors,
        Shortage::LocalPorts,
        Shortage::Memory,
    ];

    /// The shortage `e` reports, if it is one.
    pub fn of(e: &io::Error) -> Option<Shortage> {
        match Errno::from_io_error(e)? {
            Errno::MFILE | Errno::NFILE => Some(Shortage::FileDescriptors),
            Errno::ADDRNOTAVAIL => Some(Shortage::LocalPorts),
            Errno::NOBUFS | Errno::NOMEM => Some(Shortage::Memory),
            _ => None,
        }
    }

    /// The shortage `e` or one of its sources reports: for the errors of
    /// client libraries (tokio-postgres, redis-rs) that keep the io error
    /// of their connect as a source.
    pub fn in_chain(e: &(dyn Error + 'static)) -> Option<Shortage> {
        let mut next = Some(e);
        while let Some(e) = next {
            // redis-rs gives its io error as an `Arc<dyn Error>`, whose own
            // `source` skips the io error inside.
            let inner = match e.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
                Some(arc) => &**arc as &(dyn Error + 'static),
                None => e,
            };
            if let Some(s) = inner.downcast_ref::<io::Error>().and_then(Shortage::of) {
                return Some(s);
            }
            next = inner.source();
        }
        None
    }

    /// The `cause` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Shortage::FileDescriptors => "file_descriptors",
            Shortage::LocalPorts => "local_ports",
            Shortage::Memory => "memory",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_proxys_shortages_from_the_endpoints_failures() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(
            Shortage::of(&os(Errno::MFILE.raw_os_error())),
            Some(Shortage::FileDescriptors)
        );
        assert_eq!(
            Shortage::of(&os(Errno::NFILE.raw_os_error())),
            Some(Shortage::FileDescriptors)
        );
        assert_eq!(
            Shortage::of(&os(Errno::ADDRNOTAVAIL.raw_os_error())),
            Some(Shortage::LocalPorts)
        );
        assert_eq!(
            Shortage::of(&os(Errno::NOBUFS.raw_os_error())),
            Some(Shortage::Memory)
        );
        // The endpoint's doing, or the network's: charged to it.
        for e in [Errno::CONNREFUSED, Errno::TIMEDOUT, Errno::HOSTUNREACH] {
            assert_eq!(Shortage::of(&os(e.raw_os_error())), None, "{e:?}");
        }
        assert_eq!(Shortage::of(&io::Error::other("no errno")), None);
    }

    #[test]
    fn finds_a_shortage_among_an_errors_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("client: {0}")]
        struct Client(#[source] io::Error);
        let wrapped = Client(io::Error::from_raw_os_error(Errno::MFILE.raw_os_error()));
        assert_eq!(
            Shortage::in_chain(&wrapped),
            Some(Shortage::FileDescriptors)
        );
        let refused = Client(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(Shortage::in_chain(&refused), None);
        // redis-rs keeps it behind an Arc.
        let redis = ::redis::RedisError::from(io::Error::from_raw_os_error(
            Errno::ADDRNOTAVAIL.raw_os_error(),
        ));
        assert_eq!(Shortage::in_chain(&redis), Some(Shortage::LocalPorts));
    }
}
