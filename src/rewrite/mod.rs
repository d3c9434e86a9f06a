//! Rewriting, as users of nginx and HAProxy expect it, per route: request
//! and response headers set, added and removed with values that use
//! variables (`template`), the path (a prefix stripped or replaced, a
//! regular expression replaced: `path`) and the host rewritten, and two
//! actions a route may take instead of forwarding: a redirect or a fixed
//! response (`action`).
//!
//! Everything is compiled when the configuration is loaded; a route without
//! rewriting has no `Rewrite` at all, so the pipeline's checks are one
//! `Option` test and cost that route nothing else.
//!
//! When each rule acts:
//! - request rules, after Levee's own head rewrite (hop-by-hop headers out,
//!   `X-Forwarded-*` and `X-Request-Id` in): every value is rendered first,
//!   from the request as it stands, then headers are removed, set and added,
//!   the `Host` rewritten and the path rewritten. So `${path}` and
//!   `${header.NAME}` read the request as the client sent it;
//! - response rules, on the endpoint's response and on the route's own
//!   redirect or fixed response; on Levee's other answers (an error, a
//!   fallback, a 429) only with `always = true`, as nginx's `add_header
//!   ... always`. Their variables read the request as it arrived: the
//!   request headers they name are kept for them when the request goes
//!   upstream (`Kept`).

pub mod action;
pub mod path;
pub mod template;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

pub use action::{Action, Canned};
pub use path::PathRewrite;
pub use template::{Conn, Headers, Template, Var, Vars};

/// A route's rewriting, compiled.
#[derive(Debug)]
pub struct Rewrite {
    request: HeaderRules,
    response: HeaderRules,
    /// Response rules also act on Levee's own answers.
    always: bool,
    path: Option<PathRewrite>,
    host: Option<Template>,
    pub action: Option<Action>,
    /// The request headers the response rules read (`Host` for `${host}`).
    keep: Vec<HeaderName>,
}

/// Why a request could not be rewritten: the result is not a valid path or
/// header value (a request header with a control character, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed(pub String);

impl Rewrite {
    /// The rewriting of a route from its compiled parts; `None` when it
    /// does nothing, so that the route carries no `Rewrite` at all.
    pub fn new(
        request: HeaderRules,
        response: HeaderRules,
        always: bool,
        path: Option<PathRewrite>,
        host: Option<Template>,
        action: Option<Action>,
    ) -> Option<Box<Rewrite>> {
        let empty = request.is_empty()
            && response.is_empty()
            && path.is_none()
            && host.is_none()
            && action.is_none();
        if empty {
            return None;
        }
        Some(Box::new(Rewrite {
            keep: response.headers_read(),
            request,
            response,
            always,
            path,
            host,
            action,
        }))
    }

    /// The request headers the response rules will read, kept before the
    /// request goes upstream; `None` when they read none.
    pub fn keep(&self, headers: &HeaderMap) -> Option<Kept> {
        if self.keep.is_empty() {
            return None;
        }
        Some(Kept(
            self.keep
                .iter()
                .filter_map(|n| Some((n.clone(), headers.get(n)?.clone())))
                .collect(),
        ))
    }

    /// Applies the request rules to the head going upstream. `vars` reads
    /// everything but the headers, which are taken from `parts`.
    pub fn request(&self, parts: &mut Parts, vars: RequestVars) -> Result<(), Failed> {
        let uri = parts.uri.clone();
        let vars = Vars {
            conn: vars.conn,
            request_id: vars.request_id,
            route: vars.route,
            cluster: vars.cluster,
            endpoint: None,
            method: &parts.method,
            uri: vars.original_uri.unwrap_or(&uri),
            headers: Headers::Map(&parts.headers),
        };
        let edits = self.request.render(&vars)?;
        let host = match &self.host {
            Some(t) => {
                let host = t.header_value(&vars).filter(|h| {
                    !h.is_empty() && http::uri::Authority::try_from(h.as_bytes()).is_ok()
                });
                Some(host.ok_or_else(|| Failed("the rewritten Host is not a host".into()))?)
            }
            None => None,
        };
        edits.apply(&mut parts.headers);
        if let Some(host) = host {
            parts.headers.insert(http::header::HOST, host);
        }
        if let Some(rule) = &self.path
            && let Some(path) = rule.apply(uri.path())
        {
            let pq = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let pq = PathAndQuery::try_from(pq.as_str())
                .map_err(|_| Failed(format!("the rewritten path {pq:?} is not a valid path")))?;
            parts.uri = Uri::from(pq);
        }
        Ok(())
    }

    /// The response rules rendered for one answer; `None` when they do not
    /// act on it (Levee's own error answer, without `always`).
    pub fn response(&self, vars: &Vars, own_error: bool) -> Option<Edits> {
        if self.response.is_empty() || (own_error && !self.always) {
            return None;
        }
        // A value that does not render to a header value (a kept request
        // header with a control character) is left out; the answer stands.
        Some(self.response.render_lenient(vars))
    }
}

/// What `Rewrite::request` reads besides the request head.
#[derive(Clone, Copy)]
pub struct RequestVars<'a> {
    pub conn: Conn<'a>,
    pub request_id: &'a HeaderValue,
    pub route: &'a str,
    pub cluster: &'a str,
    /// The URI as the client sent it, when the head's was already changed
    /// (absolute-form made origin-form); `None`: the head's.
    pub original_uri: Option<&'a Uri>,
}

/// The request headers the response rules read, kept from the request.
#[derive(Debug, Default)]
pub struct Kept(Vec<(HeaderName, HeaderValue)>);

impl Kept {
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Set, add and remove rules for one side.
#[derive(Debug, Default)]
pub struct HeaderRules {
    /// Replace every value of the header.
    pub set: Vec<(HeaderName, Template)>,
    /// Add a value, keeping those there.
    pub add: Vec<(HeaderName, Template)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// The request headers the templates read.
    fn headers_read(&self) -> Vec<HeaderName> {
        let mut names = Vec::new();
        for (_, t) in self.set.iter().chain(&self.add) {
            for v in t.vars() {
                let name = match v {
                    Var::Header(n) => n.clone(),
                    Var::Host => http::header::HOST,
                    _ => continue,
                };
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    fn render(&self, vars: &Vars) -> Result<Edits, Failed> {
        let one = |(name, t): &(HeaderName, Template)| {
            t.header_value(vars)
                .map(|v| (name.clone(), v))
                .ok_or_else(|| Failed(format!("the value for {name} is not a valid header value")))
        };
        Ok(Edits {
            remove: self.remove.clone(),
            set: self.set.iter().map(one).collect::<Result<_, _>>()?,
            add: self.add.iter().map(one).collect::<Result<_, _>>()?,
        })
    }

    fn render_lenient(&self, vars: &Vars) -> Edits {
        let one = |(name, t): &(HeaderName, Template)| Some((name.clone(), t.header_value(vars)?));
        Edits {
            remove: self.remove.clone(),
            set: self.set.iter().filter_map(one).collect(),
            add: self.add.iter().filter_map(one).collect(),
        }
    }
}

/// Header rules rendered for one message, ready to apply.
#[derive(Debug, Default)]
pub struct Edits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Edits {
    /// Removes, then sets (replacing every value), then adds.
    pub fn apply(self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in self.set {
            headers.insert(name, value);
        }
        for (name, value) in self.add {
            headers.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn route(text: &str) -> Option<Box<Rewrite>> {
        let text = format!("[[clusters]]\nname = \"c\"\n[[routes]]\nname = \"r\"\n{text}");
        let config = crate::config::parse_part(&text).unwrap();
        crate::route::rewrite::build(&config.routes[0])
    }

    fn conn() -> Conn<'static> {
        Conn {
            client: SocketAddr::from(([192, 0, 2, 9], 4000)),
            scheme: "http",
            tls_version: None,
            sni: None,
        }
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn request(rw: &Rewrite, p: &mut Parts) -> Result<(), Failed> {
        let id = HeaderValue::from_static("id-1");
        rw.request(
            p,
            RequestVars {
                conn: conn(),
                request_id: &id,
                route: "r",
                cluster: "c",
                original_uri: None,
            },
        )
    }

    #[test]
    fn a_route_without_rules_has_no_rewrite() {
        assert!(route("cluster = \"c\"").is_none());
        assert!(route("cluster = \"c\"\nrequest_headers = {}\nresponse_headers = {}").is_none());
    }

    #[test]
    fn request_rules_render_from_the_request_as_sent_then_apply() {
        let rw = route(
            "cluster = \"c\"\n\
             request_headers = { set = { \"x-who\" = \"${client_addr} ${header.x-user} ${path}\", \"x-user\" = \"anon\" }, add = { \"x-via\" = \"levee\" }, remove = [\"x-debug\"] }\n\
             rewrite = { strip_prefix = \"/api\", host = \"${header.x-tenant}.internal\" }",
        )
        .unwrap();
        let mut p = parts(
            "/api/items?q=1",
            &[
                ("host", "shop.example"),
                ("x-user", "ada"),
                ("x-via", "edge"),
                ("x-debug", "1"),
                ("x-tenant", "blue"),
            ],
        );
        request(&rw, &mut p).unwrap();
        let h = &p.headers;
        assert_eq!(h["x-who"], "192.0.2.9 ada /api/items");
        assert_eq!(h["x-user"], "anon");
        let via: Vec<_> = h.get_all("x-via").iter().collect();
        assert_eq!(via, ["edge", "levee"]);
        assert!(!h.contains_key("x-debug"));
        assert_eq!(h["host"], "blue.internal");
        assert_eq!(p.uri, "/items?q=1");
    }

    #[test]
    fn a_host_that_renders_empty_or_no_host_fails_the_request() {
        let rw = route("cluster = \"c\"\nrewrite = { host = \"${header.x-tenant}\" }").unwrap();
        let mut p = parts("/", &[("host", "a")]);
        assert!(request(&rw, &mut p).is_err());
        let mut p = parts("/", &[("host", "a"), ("x-tenant", "a/b")]);
        assert!(request(&rw, &mut p).is_err());
        let mut p = parts("/", &[("host", "a"), ("x-tenant", "b:81")]);
        assert!(request(&rw, &mut p).is_ok());
        assert_eq!(p.headers["host"], "b:81");
    }

    #[test]
    fn response_rules_skip_own_errors_unless_always() {
        let id = HeaderValue::from_static("id-1");
        let uri: Uri = "/x".parse().unwrap();
        let kept_from = {
            let mut h = HeaderMap::new();
            h.insert("x-user", HeaderValue::from_static("ada"));
            h.insert("x-other", HeaderValue::from_static("no"));
            h
        };
        for (always, applies) in [(false, false), (true, true)] {
            let rw = route(&format!(
                "cluster = \"c\"\nresponse_headers = {{ set = {{ \"x-for\" = \"${{header.x-user}}@${{endpoint}}\" }}, always = {always} }}"
            ))
            .unwrap();
            let kept = rw.keep(&kept_from).unwrap();
            assert_eq!(kept.0.len(), 1, "only the headers the rules read are kept");
            let vars = Vars {
                conn: conn(),
                request_id: &id,
                route: "r",
                cluster: "c",
                endpoint: Some(SocketAddr::from(([10, 0, 0, 1], 80))),
                method: &http::Method::GET,
                uri: &uri,
                headers: Headers::Kept(&kept),
            };
            let mut h = HeaderMap::new();
            rw.response(&vars, false).unwrap().apply(&mut h);
            assert_eq!(h["x-for"], "ada@10.0.0.1:80");
            assert_eq!(rw.response(&vars, true).is_some(), applies);
        }
    }
}
