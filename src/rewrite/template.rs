//! Templates: header values, hosts and redirect targets written with
//! variables, such as `"${client_addr}"` or `"https://${host}${path}"`.
//!
//! A template is parsed once, when the configuration is loaded, into text
//! and variables; rendering a request's value is then a walk over those
//! parts, with no parsing and no lookup by name. `${NAME}` is a variable,
//! `$$` a literal `$`; any other `$` is refused, so that an nginx habit
//! (`$remote_addr`) is an error at load time, not a literal sent to
//! every backend.
//!
//! Variables (`NAMES`): the client's address and port, the request id, the
//! route and cluster, the endpoint that answered (response rules only: it is
//! picked after the request is rewritten), the scheme, TLS version and SNI
//! of the client connection (empty on a plain connection), the request's
//! host, method, path and query, and any request header (`header.NAME`).

use std::io::Write as _;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

/// A variable a template may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// The client's IP address (nginx `$remote_addr`, HAProxy `%[src]`).
    ClientAddr,
    ClientPort,
    RequestId,
    Route,
    /// The cluster the request goes to; empty on a redirect or respond route.
    Cluster,
    /// The endpoint that answered (or, on Levee's own error after a try,
    /// the one that failed); empty when none was tried.
    Endpoint,
    /// `http` or `https`.
    Scheme,
    /// `TLSv1.3`, ...; empty on a plain connection.
    TlsVersion,
    /// The server name the client asked for in its TLS handshake.
    Sni,
    /// The request's `Host` as sent (with its port, if any).
    Host,
    Method,
    /// The request's path as received, before any rewrite.
    Path,
    /// The query string without its `?`; empty when there is none.
    Query,
    /// The first value of a request header; empty when absent.
    Header(HeaderName),
}

/// Every variable name, as the error for an unknown one lists them.
pub const NAMES: &[&str] = &[
    "client_addr",
    "client_port",
    "request_id",
    "route",
    "cluster",
    "endpoint",
    "scheme",
    "tls_version",
    "sni",
    "host",
    "method",
    "path",
    "query",
    "header.NAME",
];

impl Var {
    fn parse(name: &str) -> Result<Var, String> {
        Ok(match name {
            "client_addr" => Var::ClientAddr,
            "client_port" => Var::ClientPort,
            "request_id" => Var::RequestId,
            "route" => Var::Route,
            "cluster" => Var::Cluster,
            "endpoint" => Var::Endpoint,
            "scheme" => Var::Scheme,
            "tls_version" => Var::TlsVersion,
            "sni" => Var::Sni,
            "host" => Var::Host,
            "method" => Var::Method,
            "path" => Var::Path,
            "query" => Var::Query,
            _ => match name.strip_prefix("header.") {
                Some(h) => HeaderName::from_bytes(h.as_bytes())
                    .map(Var::Header)
                    .map_err(|_| format!("${{{name}}}: {h:?} is not a valid header name"))?,
                None => {
                    return Err(format!(
                        "unknown variable ${{{name}}}; valid variables are {}",
                        NAMES
                            .iter()
                            .map(|n| format!("${{{n}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            },
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(Box<str>),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Box<[Part]>,
}

impl Template {
    /// Parses `text`; the error says what is wrong in the file's words.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            literal.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                literal.push('$');
                rest = tail;
            } else if let Some(tail) = after.strip_prefix('{') {
                let end = tail.find('}').ok_or_else(|| {
                    format!("unclosed variable in {text:?}; write ${{name}}, e.g. ${{client_addr}}")
                })?;
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal).into()));
                }
                parts.push(Part::Var(Var::parse(tail[..end].trim())?));
                rest = &tail[end + 1..];
            } else {
                let word: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                return Err(format!(
                    "a lone '$' in {text:?} ({}); write ${{name}} for a variable, e.g. ${{client_addr}}, and $$ for a '$'",
                    if word.is_empty() {
                        "nothing follows it".to_owned()
                    } else {
                        format!("${word} is nginx's spelling")
                    }
                ));
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal.into()));
        }
        Ok(Template {
            parts: parts.into(),
        })
    }

    /// A template of one variable.
    pub fn from_var(var: Var) -> Template {
        Template {
            parts: Box::new([Part::Var(var)]),
        }
    }

    /// The variables the template names.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Text(_) => None,
        })
    }

    /// The text before the first variable.
    pub fn leading_text(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(t)) => t,
            _ => "",
        }
    }

    /// The whole template when it names no variable.
    pub fn as_literal(&self) -> Option<&str> {
        match &*self.parts {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// Appends the rendered template to `out`.
    pub fn render_into(&self, vars: &Vars, out: &mut Vec<u8>) {
        for part in &*self.parts {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Var(v) => vars.write(v, out),
            }
        }
    }

    pub fn render(&self, vars: &Vars) -> Vec<u8> {
        let mut out = Vec::new();
        self.render_into(vars, &mut out);
        out
    }

    /// The rendered template as a header value; `None` if the result is not
    /// one (a control character from a request header, say).
    pub fn header_value(&self, vars: &Vars) -> Option<HeaderValue> {
        if let Some(text) = self.as_literal() {
            return HeaderValue::from_str(text).ok();
        }
        HeaderValue::from_maybe_shared(bytes::Bytes::from(self.render(vars))).ok()
    }
}

/// What the client connection tells templates.
///
/// The TLS facts are `None` on a plain connection. When the connection
/// layer knows them (TLS termination), `proxy` fills them from its
/// `ConnCtx`; nothing here changes.
#[derive(Debug, Clone, Copy)]
pub struct Conn<'a> {
    pub client: SocketAddr,
    pub scheme: &'a str,
    pub tls_version: Option<&'a str>,
    pub sni: Option<&'a str>,
}

/// The request headers templates read: the request's own, or, when the
/// response is rendered (the request has gone upstream), the few kept for it.
#[derive(Debug, Clone, Copy)]
pub enum Headers<'a> {
    Map(&'a HeaderMap),
    Kept(&'a super::Kept),
}

impl Headers<'_> {
    fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        match self {
            Headers::Map(m) => m.get(name),
            Headers::Kept(k) => k.get(name),
        }
    }
}

/// The values of one request's variables.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub conn: Conn<'a>,
    pub request_id: &'a HeaderValue,
    pub route: &'a str,
    pub cluster: &'a str,
    pub endpoint: Option<SocketAddr>,
    pub method: &'a Method,
    /// The request's URI as received (path and query before any rewrite).
    pub uri: &'a Uri,
    pub headers: Headers<'a>,
}

impl Vars<'_> {
    fn write(&self, var: &Var, out: &mut Vec<u8>) {
        let text = |out: &mut Vec<u8>, s: &str| out.extend_from_slice(s.as_bytes());
        match var {
            Var::ClientAddr => {
                let _ = write!(out, "{}", self.conn.client.ip().to_canonical());
            }
            Var::ClientPort => {
                let _ = write!(out, "{}", self.conn.client.port());
            }
            Var::RequestId => out.extend_from_slice(self.request_id.as_bytes()),
            Var::Route => text(out, self.route),
            Var::Cluster => text(out, self.cluster),
            Var::Endpoint => {
                if let Some(e) = self.endpoint {
                    let _ = write!(out, "{e}");
                }
            }
            Var::Scheme => text(out, self.conn.scheme),
            Var::TlsVersion => text(out, self.conn.tls_version.unwrap_or("")),
            Var::Sni => text(out, self.conn.sni.unwrap_or("")),
            Var::Host => match self.uri.authority() {
                // Absolute-form: the target's authority is the host asked for.
                Some(a) => text(out, a.as_str()),
                None => {
                    if let Some(h) = self.headers.get(&http::header::HOST) {
                        out.extend_from_slice(h.as_bytes());
                    }
                }
            },
            Var::Method => text(out, self.method.as_str()),
            Var::Path => text(out, self.uri.path()),
            Var::Query => text(out, self.uri.query().unwrap_or("")),
            Var::Header(name) => {
                if let Some(v) = self.headers.get(name) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_vars<R>(f: impl FnOnce(&Vars) -> R) -> R {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("shop.example:8080"));
        headers.insert("x-user", HeaderValue::from_static("ada"));
        let id = HeaderValue::from_static("req-1");
        let uri: Uri = "/a/b?x=1&y=2".parse().unwrap();
        let vars = Vars {
            conn: Conn {
                client: "[::ffff:10.0.0.7]:5555".parse().unwrap(),
                scheme: "http",
                tls_version: None,
                sni: None,
            },
            request_id: &id,
            route: "api",
            cluster: "app",
            endpoint: Some("10.1.1.1:80".parse().unwrap()),
            method: &Method::POST,
            uri: &uri,
            headers: Headers::Map(&headers),
        };
        f(&vars)
    }

    fn render(t: &str) -> String {
        let t = Template::parse(t).unwrap();
        with_vars(|v| String::from_utf8(t.render(v)).unwrap())
    }

    #[test]
    fn every_variable_renders() {
        assert_eq!(
            render("${client_addr}:${client_port} ${request_id} ${route}/${cluster} ${endpoint}"),
            "10.0.0.7:5555 req-1 api/app 10.1.1.1:80"
        );
        assert_eq!(
            render("${scheme}://${host}${path}?${query} ${method}"),
            "http://shop.example:8080/a/b?x=1&y=2 POST"
        );
        assert_eq!(
            render("u=${header.X-User} none=[${header.x-none}]"),
            "u=ada none=[]"
        );
    }

    #[test]
    fn tls_facts_are_empty_on_a_plain_connection() {
        assert_eq!(render("[${tls_version}][${sni}]"), "[][]");
    }

    #[test]
    fn dollars_and_literals() {
        assert_eq!(render("costs $$5"), "costs $5");
        assert_eq!(render(""), "");
        let t = Template::parse("plain").unwrap();
        assert_eq!(t.as_literal(), Some("plain"));
        assert_eq!(Template::parse("/v2${path}").unwrap().leading_text(), "/v2");
    }

    #[test]
    fn mistakes_are_refused_with_words() {
        let e = Template::parse("${remote_addr}").unwrap_err();
        assert!(
            e.starts_with("unknown variable ${remote_addr}; valid variables are ${client_addr}"),
            "{e}"
        );
        let e = Template::parse("$remote_addr").unwrap_err();
        assert!(e.contains("$remote_addr is nginx's spelling"), "{e}");
        assert!(Template::parse("${path").unwrap_err().contains("unclosed"));
        assert!(
            Template::parse("${header.a b}")
                .unwrap_err()
                .contains("not a valid header name")
        );
        assert!(
            Template::parse("5$")
                .unwrap_err()
                .contains("nothing follows")
        );
    }

    #[test]
    fn a_header_value_that_is_not_one_is_none() {
        let t = Template::parse("${header.x-user}\u{1}").unwrap();
        with_vars(|v| assert_eq!(t.header_value(v), None));
        let t = Template::parse("id=${request_id}").unwrap();
        with_vars(|v| assert_eq!(t.header_value(v).unwrap(), "id=req-1"));
    }
}
