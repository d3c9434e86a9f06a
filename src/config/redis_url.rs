//! Redis URLs as the config writes them, checked up front with messages
//! that name what is wrong (and never the password). The rate-limit store
//! turns them into redis-rs's `ConnectionInfo` (`ratelimit::redis`).

use std::fmt;
use std::path::PathBuf;

/// The forms a URL may take, for error messages.
const FORMS: &str = "redis://[[user]:password@]host[:port][/db], rediss://… (TLS), \
                     or unix:///path/to/redis.sock[?db=N&user=U&pass=P]";

/// A malformed Redis URL. The message never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid redis URL `{url}`: {reason} (expected {FORMS})")]
pub struct UrlError {
    url: String,
    reason: String,
}

/// Where Redis listens.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Addr {
    /// `redis://` (plain) or `rediss://` (`tls`).
    Tcp { host: String, port: u16, tls: bool },
    /// `unix://` or `redis+unix://`.
    Unix(PathBuf),
}

/// A parsed Redis URL:
///
/// - `redis://[[user]:password@]host[:port][/db]`: the port defaults to
///   6379 and the database to 0; user and password may be percent-encoded.
///   With a user the connection authenticates as that ACL user
///   (`AUTH user password`), with only a password as `default`.
/// - `rediss://…`: the same over TLS (the server's certificate is checked
///   against the system's roots, or `redis_tls_ca_file`).
/// - `unix:///path/to/redis.sock` (or `redis+unix://`), with the database
///   and credentials as query parameters `db`, `user`, `pass`.
///
/// `Display` shows the URL without credentials, as logs should.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub addr: Addr,
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, UrlError> {
        let fail = |reason: &str| UrlError {
            url: redact(url),
            reason: reason.to_string(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(fail("missing the redis:// scheme"));
        };
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "redis" => false,
            "rediss" => true,
            "unix" | "redis+unix" => return RedisUrl::parse_unix(rest, &fail),
            _ => return Err(fail("the scheme must be redis://, rediss:// or unix://")),
        };
        if rest.contains('?') || rest.contains('#') {
            return Err(fail("query parameters and fragments are not supported"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let Some((user, pass)) = info.split_once(':') else {
                    return Err(fail("credentials need a password (redis://:password@host)"));
                };
                let user = percent_decode(user).ok_or_else(|| fail("bad %-escape in the user"))?;
                let pass =
                    percent_decode(pass).ok_or_else(|| fail("bad %-escape in the password"))?;
                credentials(user, pass).map_err(&fail)?
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(fail("unclosed [ in an IPv6 host"));
            };
            if after.is_empty() {
                (host, None)
            } else if let Some(port) = after.strip_prefix(':') {
                (host, Some(port))
            } else {
                return Err(fail("unexpected text after the IPv6 host"));
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(fail("the host is missing"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/@[]".contains(c))
        {
            return Err(fail("the host contains invalid characters"));
        }
        let port = match port {
            None => 6379,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(fail("the port must be a number from 1 to 65535")),
            },
        };
        let db = match path {
            "" => 0,
            db => db
                .parse::<u32>()
                .map_err(|_| fail("the path must be a database number (/0, /1, …)"))?,
        };
        Ok(RedisUrl {
            addr: Addr::Tcp {
                host: host.to_string(),
                port,
                tls,
            },
            db,
            username,
            password,
        })
    }

    /// `unix:///path[?db=N&user=U&pass=P]` (what follows `unix://`).
    fn parse_unix(rest: &str, fail: &dyn Fn(&str) -> UrlError) -> Result<RedisUrl, UrlError> {
        if rest.contains('#') {
            return Err(fail("fragments are not supported"));
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if !path.starts_with('/') || path.len() < 2 {
            return Err(fail(
                "a unix socket needs an absolute path (unix:///run/redis.sock)",
            ));
        }
        let path = percent_decode(path).ok_or_else(|| fail("bad %-escape in the path"))?;
        let (mut db, mut user, mut pass) = (0, String::new(), None);
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| fail("bad %-escape in the query"))?;
            match name {
                "db" => {
                    db = value
                        .parse::<u32>()
                        .map_err(|_| fail("db= must be a database number"))?
                }
                "user" => user = value,
                "pass" => pass = Some(value),
                _ => return Err(fail("the query parameters are db, user and pass")),
            }
        }
        let (username, password) = match pass {
            Some(pass) => credentials(user, pass).map_err(fail)?,
            None if !user.is_empty() => return Err(fail("user= needs pass=")),
            None => (None, None),
        };
        Ok(RedisUrl {
            addr: Addr::Unix(PathBuf::from(path)),
            db,
            username,
            password,
        })
    }

    pub fn tls(&self) -> bool {
        matches!(self.addr, Addr::Tcp { tls: true, .. })
    }
}

/// User and password from a URL: a password is needed, the user may be
/// empty (then `AUTH password`, the `default` user).
fn credentials(
    user: String,
    pass: String,
) -> Result<(Option<String>, Option<String>), &'static str> {
    if pass.is_empty() {
        return Err("the password is empty");
    }
    Ok(((!user.is_empty()).then_some(user), Some(pass)))
}

impl std::str::FromStr for RedisUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, UrlError> {
        RedisUrl::parse(s)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            Addr::Tcp { host, port, tls } => {
                let scheme = if *tls { "rediss" } else { "redis" };
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]:{port}")?;
                } else {
                    write!(f, "{scheme}://{host}:{port}")?;
                }
                if self.db != 0 {
                    write!(f, "/{}", self.db)?;
                }
            }
            Addr::Unix(path) => {
                write!(f, "unix://{}", path.display())?;
                if self.db != 0 {
                    write!(f, "?db={}", self.db)?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("addr", &self.addr)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The URL with any credentials replaced, for error messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if let Some((path, query)) = rest.split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some(("pass", _)) => "pass=***".to_string(),
                _ => p.to_string(),
            })
            .collect();
        return format!("{scheme}://{path}?{}", query.join("&"));
    }
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RedisUrl {
        RedisUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn url_err(s: &str) -> String {
        match RedisUrl::parse(s) {
            Ok(u) => panic!("{s} parsed as {u:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn tcp(u: &RedisUrl) -> (&str, u16, bool) {
        match &u.addr {
            Addr::Tcp { host, port, tls } => (host, *port, *tls),
            Addr::Unix(p) => panic!("unix {p:?}"),
        }
    }

    #[test]
    fn parses_urls() {
        let u = url("redis://127.0.0.1:6380");
        assert_eq!((tcp(&u), u.db), (("127.0.0.1", 6380, false), 0));
        assert_eq!((u.username, u.password), (None, None));

        let u = url("redis://cache.internal");
        assert_eq!((tcp(&u), u.db), (("cache.internal", 6379, false), 0));
        assert_eq!(url("redis://h/").db, 0);
        assert_eq!(url("redis://h:1/15").db, 15);
        assert_eq!(tcp(&url("REDIS://h")).0, "h");

        let u = url("redis://:s3cr%40t@h:7000/2");
        assert_eq!(u.username, None);
        assert_eq!(u.password.as_deref(), Some("s3cr@t"));
        assert_eq!((tcp(&u).1, u.db), (7000, 2));

        let u = url("redis://levee:pw:with:colons@h");
        assert_eq!(u.username.as_deref(), Some("levee"));
        assert_eq!(u.password.as_deref(), Some("pw:with:colons"));

        let u = url("redis://[::1]:6390/3");
        assert_eq!((tcp(&u), u.db), (("::1", 6390, false), 3));
        assert_eq!(tcp(&url("redis://[::1]")).1, 6379);

        let u = url("rediss://levee:pw@cache:6380/1");
        assert_eq!((tcp(&u), u.db), (("cache", 6380, true), 1));
        assert!(u.tls());

        let u = url("unix:///run/redis/redis.sock");
        assert_eq!(u.addr, Addr::Unix("/run/redis/redis.sock".into()));
        assert_eq!((u.db, u.username, u.password), (0, None, None));
        let u = url("redis+unix:///tmp/r.sock?db=3&user=levee&pass=p%26w");
        assert_eq!(u.addr, Addr::Unix("/tmp/r.sock".into()));
        assert_eq!(u.db, 3);
        assert_eq!(u.username.as_deref(), Some("levee"));
        assert_eq!(u.password.as_deref(), Some("p&w"));
    }

    #[test]
    fn displays_urls_without_credentials() {
        assert_eq!(
            url("redis://:pw@10.0.0.1:6380/4").to_string(),
            "redis://10.0.0.1:6380/4"
        );
        assert_eq!(url("redis://h").to_string(), "redis://h:6379");
        assert_eq!(url("rediss://u:pw@h").to_string(), "rediss://h:6379");
        assert_eq!(url("redis://[::1]:1").to_string(), "redis://[::1]:1");
        assert_eq!(
            url("unix:///s.sock?db=2&pass=x").to_string(),
            "unix:///s.sock?db=2"
        );
        let debug = format!("{:?}", url("redis://u:hunter2@h"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn rejects_bad_urls_clearly() {
        for (bad, why) in [
            ("127.0.0.1:6379", "missing the redis:// scheme"),
            ("http://h", "the scheme must be"),
            ("redis://", "the host is missing"),
            ("redis://:6379", "the host is missing"),
            ("redis://h:0", "the port must be"),
            ("redis://h:99999", "the port must be"),
            ("redis://h:port", "the port must be"),
            ("redis://h/db", "database number"),
            ("redis://h/1/2", "database number"),
            ("redis://h?timeout=1", "query"),
            ("redis://user@h", "need a password"),
            ("redis://:@h", "password is empty"),
            ("redis://:%zz@h", "%-escape"),
            ("redis://[::1", "unclosed"),
            ("redis://[::1]x", "after the IPv6 host"),
            ("redis://a b", "invalid characters"),
            ("unix://relative.sock", "absolute path"),
            ("unix:///s.sock?db=x", "database number"),
            ("unix:///s.sock?user=u", "needs pass"),
            ("unix:///s.sock?timeout=1", "db, user and pass"),
        ] {
            let e = url_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("expected redis://"), "{bad}: {e}");
        }
        let e = url_err("redis://:hunter2@h:0");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("redis://***@h:0"), "{e}");
        let e = url_err("unix:///s?pass=hunter2&x=1");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
