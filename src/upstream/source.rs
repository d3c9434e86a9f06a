//! The local addresses connections to a cluster's endpoints leave from
//! (`source_addresses`): HAProxy's `source`, nginx's `proxy_bind`, Envoy's
//! `upstream_bind_config`.
//!
//! Why: a TCP connection is told apart by its four-tuple, so one local
//! address has one ephemeral port range (~28,000 ports by default) towards
//! each endpoint address. A proxy that opens many short connections to a
//! few endpoints runs out of them (`EADDRNOTAVAIL`, counted as a
//! `local_ports` shortage, `crate::shortage`); each further source address
//! is another range. A firewall or an endpoint's access list may also
//! expect the proxy's connections from one known address.
//!
//! Each new connection (HTTP/1.1, HTTP/2, a TCP listener's relay, an
//! active health check) takes the next address of the endpoint's family in
//! turn; one with no port left towards the endpoint passes the connection
//! on to the next, so the pool runs dry only when all of them have. The
//! socket is bound with `IP_BIND_ADDRESS_NO_PORT`: the port is chosen at
//! `connect`, per destination, as an unbound socket's would be (a plain
//! `bind` to port 0 would reserve a port unique across all destinations and
//! share one range among all endpoints).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpSocket, TcpStream};

/// A cluster's source addresses, by family, and whose turn is next.
#[derive(Debug)]
pub struct Sources {
    v4: Box<[IpAddr]>,
    v6: Box<[IpAddr]>,
    next: AtomicUsize,
}

impl Sources {
    /// `None` when `addresses` is empty: connections are not bound.
    pub fn new(addresses: &[IpAddr]) -> Option<Sources> {
        if addresses.is_empty() {
            return None;
        }
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) =
            addresses.iter().copied().partition(IpAddr::is_ipv4);
        Some(Sources {
            v4: v4.into(),
            v6: v6.into(),
            next: AtomicUsize::new(0),
        })
    }

    /// The addresses a connection to `to` may leave from, in the order they
    /// are tried: starting at this connection's turn. Empty when none is
    /// of `to`'s family (the connection is then not bound).
    fn turn(&self, to: SocketAddr) -> impl Iterator<Item = IpAddr> + '_ {
        let list = if to.is_ipv4() { &self.v4 } else { &self.v6 };
        let start = match list.len() {
            0 | 1 => 0,
            n => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        list.iter().cycle().skip(start).take(list.len()).copied()
    }
}

/// A TCP connection to `to`, from one of `sources` when there are any.
pub async fn connect(sources: Option<&Sources>, to: SocketAddr) -> io::Result<TcpStream> {
    match sources {
        None => TcpStream::connect(to).await,
        Some(sources) => connect_from_any(sources, to).await,
    }
}

/// A TCP connection to `to` from the first of `sources`, in this
/// connection's turn, that has a port left towards it.
pub async fn connect_from_any(sources: &Sources, to: SocketAddr) -> io::Result<TcpStream> {
    let mut last = None;
    for from in sources.turn(to) {
        match connect_from(from, to).await {
            Ok(stream) => return Ok(stream),
            // This address has no port left towards `to`: the next may.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ADDRNOTAVAIL.raw_os_error()) => {
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    match last {
        Some(e) => Err(e),
        // None of `to`'s family: as if no source were set.
        None => TcpStream::connect(to).await,
    }
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    bound(from)?.connect(to).await
}

/// Whether `address` can be a source address here: an address of this
/// machine (binding to it works). A configuration that names another is
/// refused, since every connection from it would fail.
pub fn usable(address: IpAddr) -> io::Result<()> {
    bound(address).map(drop)
}

/// A socket bound to `address`, its port left for `connect` to choose.
fn bound(address: IpAddr) -> io::Result<TcpSocket> {
    let socket = match address {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    )
    .map_err(io::Error::from)?;
    socket.bind(SocketAddr::new(address, 0))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn turns_rotate_within_the_family_of_the_destination() {
        let s = Sources::new(&[ip("127.0.0.2"), ip("::1"), ip("127.0.0.3")]).unwrap();
        let to4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let to6: SocketAddr = "[::1]:80".parse().unwrap();
        let first: Vec<IpAddr> = s.turn(to4).collect();
        let second: Vec<IpAddr> = s.turn(to4).collect();
        assert_eq!(first, [ip("127.0.0.2"), ip("127.0.0.3")]);
        assert_eq!(second, [ip("127.0.0.3"), ip("127.0.0.2")]);
        assert_eq!(s.turn(to6).collect::<Vec<_>>(), [ip("::1")]);
        let only4 = Sources::new(&[ip("127.0.0.2")]).unwrap();
        assert_eq!(only4.turn(to6).count(), 0);
        assert!(Sources::new(&[]).is_none());
    }

    #[tokio::test]
    async fn a_connection_leaves_from_its_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let s = Sources::new(&[ip("127.0.0.7"), ip("127.0.0.8")]).unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (stream, accepted) = tokio::join!(connect(Some(&s), to), listener.accept());
            let local = stream.unwrap().local_addr().unwrap();
            let (_, peer) = accepted.unwrap();
            assert_eq!(local, peer);
            seen.push(peer.ip());
        }
        seen.sort();
        assert_eq!(seen, [ip("127.0.0.7"), ip("127.0.0.8")]);
    }

    #[test]
    fn an_address_of_another_machine_is_not_usable() {
        assert!(usable(ip("127.0.0.9")).is_ok());
        // TEST-NET-3: never assigned to a machine.
        let e = usable(ip("203.0.113.7")).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::ADDRNOTAVAIL.raw_os_error())
        );
    }
}
