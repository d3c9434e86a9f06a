//! The strict HTTP/1 front door: requests whose meaning two parsers on the
//! path could disagree on, or that a reverse proxy must never forward, are
//! refused before routing (nginx refuses all of these in its default
//! configuration).
//!
//! - two `Host` lines: Levee would route on one while the backend may read
//!   the other (RFC 9112 §3.2 says answer 400);
//! - an HTTP/1.1 request without `Host` (RFC 9112 §3.2: 400);
//! - `CONNECT`: a tunnel request; forwarding it would rewrite its authority
//!   into a path the backend never meant to serve.

use http::{Method, Request, Version, header};

use super::error::ProxyError;

/// Refuses a request head the front door does not let in.
pub fn check<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectRefused);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadHost),
        // HTTP/1.0 has no Host requirement; HTTP/2 carries `:authority`.
        (None, None) if req.version() == Version::HTTP_11 => Err(ProxyError::BadHost),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, version: Version, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/").version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("a valid request")
    }

    #[test]
    fn one_host_passes() {
        assert_eq!(check(&req("GET", Version::HTTP_11, &["a"])), Ok(()));
    }

    #[test]
    fn two_hosts_are_refused_even_when_equal() {
        let r = req("GET", Version::HTTP_11, &["a", "a"]);
        assert_eq!(check(&r), Err(ProxyError::BadHost));
    }

    #[test]
    fn http11_without_host_is_refused_http10_is_not() {
        assert_eq!(
            check(&req("GET", Version::HTTP_11, &[])),
            Err(ProxyError::BadHost)
        );
        assert_eq!(check(&req("GET", Version::HTTP_10, &[])), Ok(()));
    }

    #[test]
    fn connect_is_refused() {
        let r = req("CONNECT", Version::HTTP_11, &["a:443"]);
        assert_eq!(check(&r), Err(ProxyError::ConnectRefused));
    }
}
