//! The rewriting settings of a route, and their checks: header rules
//! (`request_headers`, `response_headers`), the path and host rewrite
//! (`rewrite`), and the two actions a route may take instead of forwarding
//! (`redirect`, `respond`).
//!
//! Every template and pattern is compiled here once, so that a mistake (an
//! unknown variable, a bad regular expression, a hop-by-hop header) is
//! refused at load time with its position, never met by a request.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::schema::RouteConfig;
use super::validate::{Invalid, invalid};
use crate::rewrite::path::{check_replacement, regex_error};
use crate::rewrite::template::{Template, Var};

/// `request_headers` / `response_headers`: header name → template.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesConfig {
    /// Replaces every value of the header (nginx `proxy_set_header`,
    /// HAProxy `set-header`).
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<String>>,
    /// Adds a value, keeping those already there (HAProxy `add-header`).
    #[serde(default)]
    pub add: BTreeMap<String, Spanned<String>>,
    /// Removes the header (HAProxy `del-header`, nginx
    /// `proxy_set_header X ""` / `proxy_hide_header`).
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
    /// Response rules only: also on Levee's own answers (errors, a
    /// fallback), as nginx's `add_header ... always`.
    #[serde(default)]
    pub always: Option<Spanned<bool>>,
}

/// `rewrite`: what changes in the request before it goes upstream.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// `/api/users` → `/users` (a prefix on path-segment boundaries).
    #[serde(default)]
    pub strip_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub replace_prefix: Option<ReplacePrefixConfig>,
    /// A regular expression replace of the path (`$1`, `${name}` for groups).
    #[serde(default)]
    pub path_regex: Option<PathRegexConfig>,
    /// The `Host` the backend sees (a template).
    #[serde(default)]
    pub host: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplacePrefixConfig {
    pub from: Spanned<String>,
    pub to: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathRegexConfig {
    pub pattern: Spanned<String>,
    pub replace: Spanned<String>,
}

/// `redirect`: the route answers with a redirect instead of forwarding.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: Spanned<u16>,
    /// `http` or `https`; unset: the request's.
    #[serde(default)]
    pub scheme: Option<Spanned<String>>,
    /// A template; unset: the request's `Host`.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// A template starting with '/' or a variable; unset: the request's path.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// Whether the request's query string is kept.
    #[serde(default = "default_true")]
    pub keep_query: bool,
}

fn default_redirect_status() -> Spanned<u16> {
    Spanned::new(0..0, 302)
}
fn default_true() -> bool {
    true
}

/// `respond`: the route answers with a fixed response (nginx `return`,
/// HAProxy `http-request return`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    #[serde(default = "default_respond_status")]
    pub status: Spanned<u16>,
    /// Header name → template.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    #[serde(default = "empty_body")]
    pub body: Spanned<String>,
}

fn empty_body() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}

fn default_respond_status() -> Spanned<u16> {
    Spanned::new(0..0, 200)
}

/// Headers a rule may not touch: they describe one connection, or the
/// message's framing, which Levee itself keeps right.
const REFUSED: &[(&str, &str)] = &[
    ("connection", "a hop-by-hop header"),
    ("keep-alive", "a hop-by-hop header"),
    ("proxy-connection", "a hop-by-hop header"),
    ("te", "a hop-by-hop header"),
    ("trailer", "a hop-by-hop header"),
    ("transfer-encoding", "a hop-by-hop header"),
    ("upgrade", "a hop-by-hop header"),
    ("content-length", "the body's framing, which Levee sets"),
];

/// Where a template is rendered: before the endpoint is picked, or after.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Request,
    Response,
}

fn template(value: &Spanned<String>, key: &str, phase: Phase) -> Result<Template, Invalid> {
    let t = Template::parse(value.get_ref()).map_err(|m| invalid(value.span(), key.into(), m))?;
    if phase == Phase::Request && t.vars().any(|v| *v == Var::Endpoint) {
        return Err(invalid(
            value.span(),
            key.into(),
            "${endpoint} is known only once the request has gone upstream; \
             use it in response_headers",
        ));
    }
    Ok(t)
}

fn header_name(name: &str, value: &Spanned<String>, key: &str) -> Result<HeaderName, Invalid> {
    let h = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        invalid(
            value.span(),
            key.into(),
            format!("{name:?} is not a valid header name"),
        )
    })?;
    if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == h.as_str()) {
        return Err(invalid(
            value.span(),
            key.into(),
            format!("{name:?} cannot be rewritten: it is {why}"),
        ));
    }
    Ok(h)
}

fn check_rules(rules: &HeaderRulesConfig, key: &str, phase: Phase) -> Result<(), Invalid> {
    for (op, map) in [("set", &rules.set), ("add", &rules.add)] {
        for (name, value) in map {
            let k = format!("{key}.{op}.{name}");
            let h = header_name(name, value, &k)?;
            if phase == Phase::Request && h == http::header::HOST {
                return Err(invalid(
                    value.span(),
                    k,
                    "the Host header is rewritten with `rewrite.host`",
                ));
            }
            let t = template(value, &k, phase)?;
            if let Some(text) = t.as_literal()
                && HeaderValue::from_str(text).is_err()
            {
                return Err(invalid(
                    value.span(),
                    k,
                    "not a valid header value (visible ASCII only)",
                ));
            }
        }
    }
    for (j, name) in rules.remove.iter().enumerate() {
        header_name(name.get_ref(), name, &format!("{key}.remove[{j}]"))?;
    }
    if phase == Phase::Request
        && let Some(a) = &rules.always
    {
        return Err(invalid(
            a.span(),
            format!("{key}.always"),
            "only applies to response_headers (a request header rule always acts)",
        ));
    }
    Ok(())
}

fn check_prefix(p: &Spanned<String>, key: String, may_be_empty: bool) -> Result<(), Invalid> {
    let s = p.get_ref();
    if (may_be_empty && s.is_empty()) || (s.starts_with('/') && !s.contains([' ', '?', '#'])) {
        return Ok(());
    }
    Err(invalid(
        p.span(),
        key,
        format!("{s:?} must start with '/' and hold no spaces, '?' or '#'"),
    ))
}

fn check_rewrite(r: &RewriteConfig, key: &str) -> Result<(), Invalid> {
    let paths = [
        r.strip_prefix.as_ref().map(|p| p.span()),
        r.replace_prefix.as_ref().map(|p| p.from.span()),
        r.path_regex.as_ref().map(|p| p.pattern.span()),
    ];
    if let Some(second) = paths.iter().flatten().nth(1) {
        return Err(invalid(
            second.clone(),
            key.into(),
            "one path rewrite per route: `strip_prefix`, `replace_prefix` or `path_regex`",
        ));
    }
    if let Some(p) = &r.strip_prefix {
        check_prefix(p, format!("{key}.strip_prefix"), false)?;
    }
    if let Some(p) = &r.replace_prefix {
        check_prefix(&p.from, format!("{key}.replace_prefix.from"), false)?;
        check_prefix(&p.to, format!("{key}.replace_prefix.to"), true)?;
    }
    if let Some(p) = &r.path_regex {
        let pattern = regex::Regex::new(p.pattern.get_ref()).map_err(|e| {
            invalid(
                p.pattern.span(),
                format!("{key}.path_regex.pattern"),
                regex_error(&e),
            )
        })?;
        let k = format!("{key}.path_regex.replace");
        check_replacement(&pattern, p.replace.get_ref())
            .map_err(|m| invalid(p.replace.span(), k.clone(), m))?;
        if p.replace.get_ref().contains(['?', '#', ' ']) {
            return Err(invalid(
                p.replace.span(),
                k,
                "a path holds no '?', '#' or spaces (the query string is kept as it was)",
            ));
        }
    }
    if let Some(h) = &r.host {
        let k = format!("{key}.host");
        let t = template(h, &k, Phase::Request)?;
        if h.get_ref().is_empty() || t.as_literal().is_some_and(|l| l.contains(['/', ' ', '@'])) {
            return Err(invalid(
                h.span(),
                k,
                format!(
                    "{:?} is not a host; write e.g. \"api.internal\" or \"api.internal:8080\"",
                    h.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

fn check_redirect(r: &RedirectConfig, key: &str) -> Result<(), Invalid> {
    let status = *r.status.get_ref();
    if ![301, 302, 303, 307, 308].contains(&status) {
        return Err(invalid(
            r.status.span(),
            format!("{key}.status"),
            format!("{status} is not a redirect; use 301, 302, 303, 307 or 308"),
        ));
    }
    if let Some(s) = &r.scheme
        && !matches!(s.get_ref().as_str(), "http" | "https")
    {
        return Err(invalid(
            s.span(),
            format!("{key}.scheme"),
            format!(
                "{:?} is not a scheme; use \"http\" or \"https\"",
                s.get_ref()
            ),
        ));
    }
    if let Some(h) = &r.host {
        let k = format!("{key}.host");
        let t = template(h, &k, Phase::Request)?;
        if h.get_ref().is_empty() || t.leading_text().contains(['/', ' ', '@']) {
            return Err(invalid(
                h.span(),
                k,
                format!(
                    "{:?} is not a host; write e.g. \"www.example.com\"",
                    h.get_ref()
                ),
            ));
        }
    }
    if let Some(p) = &r.path {
        let k = format!("{key}.path");
        let t = template(p, &k, Phase::Request)?;
        let lead = t.leading_text();
        if (lead.is_empty() && t.as_literal().is_some())
            || (!lead.is_empty() && !lead.starts_with('/'))
        {
            return Err(invalid(
                p.span(),
                k,
                format!(
                    "{:?} must start with '/' or a variable, e.g. \"/new${{path}}\"",
                    p.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

fn check_respond(r: &RespondConfig, key: &str) -> Result<(), Invalid> {
    let status = *r.status.get_ref();
    if !(200..=599).contains(&status) {
        return Err(invalid(
            r.status.span(),
            format!("{key}.status"),
            format!("{status} is not a final HTTP status; use 200 to 599"),
        ));
    }
    if matches!(status, 204 | 304) && !r.body.get_ref().is_empty() {
        return Err(invalid(
            r.body.span(),
            format!("{key}.body"),
            format!("a {status} response has no body"),
        ));
    }
    check_rules(
        &HeaderRulesConfig {
            set: r.headers.clone(),
            ..HeaderRulesConfig::default()
        },
        &format!("{key}.headers"),
        Phase::Request,
    )
    .map_err(|mut e| {
        e.key = e.key.replace(".headers.set.", ".headers.");
        e
    })
}

/// Whether the route answers itself instead of forwarding.
pub fn is_action(r: &RouteConfig) -> bool {
    r.redirect.is_some() || r.respond.is_some()
}

/// The rewriting checks of one route; run before its cluster is checked, so
/// that a route with both a cluster and a redirect is told so.
pub(super) fn check_route(r: &RouteConfig, key: &str) -> Result<(), Invalid> {
    let action = match (&r.redirect, &r.respond) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                r.name.span(),
                format!("{key}.respond"),
                "a route has either `redirect` or `respond`, not both",
            ));
        }
        (Some(_), None) => Some("redirect"),
        (None, Some(_)) => Some("respond"),
        (None, None) => None,
    };
    if let Some(action) = action {
        if let Some(c) = &r.cluster {
            return Err(invalid(
                c.span(),
                format!("{key}.cluster"),
                format!("a route has either `cluster` or `{action}`, not both"),
            ));
        }
        if !r.split.is_empty() {
            return Err(invalid(
                r.split[0].cluster.span(),
                format!("{key}.split"),
                format!("a route has either `split` or `{action}`, not both"),
            ));
        }
        let forwarding_only = [
            ("request_headers", r.request_headers.is_some()),
            ("rewrite", r.rewrite.is_some()),
            ("retry", r.retry.is_some()),
            ("split_key", r.split_key.is_some()),
        ];
        if let Some((field, _)) = forwarding_only.iter().find(|(_, set)| *set) {
            return Err(invalid(
                r.name.span(),
                format!("{key}.{field}"),
                format!(
                    "only applies to a route that forwards to a cluster; this route answers with `{action}`"
                ),
            ));
        }
    }
    if let Some(rules) = &r.request_headers {
        check_rules(rules, &format!("{key}.request_headers"), Phase::Request)?;
    }
    if let Some(rules) = &r.response_headers {
        check_rules(rules, &format!("{key}.response_headers"), Phase::Response)?;
    }
    if let Some(rw) = &r.rewrite {
        check_rewrite(rw, &format!("{key}.rewrite"))?;
    }
    if let Some(redirect) = &r.redirect {
        check_redirect(redirect, &format!("{key}.redirect"))?;
    }
    if let Some(respond) = &r.respond {
        check_respond(respond, &format!("{key}.respond"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::parse_part;

    fn refused(route: &str) -> String {
        let text = format!("[[clusters]]\nname = \"c\"\n[[routes]]\nname = \"r\"\n{route}");
        match parse_part(&text) {
            Ok(_) => panic!("accepted: {route}"),
            Err(e) => format!("{}:{}: {}: {}", e.line, e.column, e.key, e.message),
        }
    }

    fn accepted(route: &str) {
        let text = format!("[[clusters]]\nname = \"c\"\n[[routes]]\nname = \"r\"\n{route}");
        if let Err(e) = parse_part(&text) {
            panic!("refused {route}: {e}");
        }
    }

    #[test]
    fn a_complete_rewriting_route_is_accepted() {
        accepted(
            "cluster = \"c\"\n\
             request_headers = { set = { \"x-client\" = \"${client_addr}:${client_port}\" }, add = { \"x-via\" = \"levee ${route}\" }, remove = [\"x-debug\"] }\n\
             response_headers = { set = { \"x-served-by\" = \"${endpoint}\" }, remove = [\"server\"], always = true }\n\
             rewrite = { path_regex = { pattern = \"^/u/(\\\\d+)$\", replace = \"/users/$1\" }, host = \"${header.x-tenant}.internal\" }",
        );
        accepted("redirect = { status = 301, scheme = \"https\", path = \"/new${path}\" }");
        accepted("respond = { status = 204 }");
        accepted(
            "respond = { status = 200, body = \"ok\", headers = { \"content-type\" = \"text/plain\" } }\nresponse_headers = { add = { \"x-a\" = \"1\" } }",
        );
    }

    #[test]
    fn mistakes_are_refused_with_their_key() {
        assert_eq!(
            refused("cluster = \"c\"\nrequest_headers = { set = { \"x-a\" = \"${nope}\" } }"),
            format!(
                "6:37: routes[0].request_headers.set.x-a: unknown variable ${{nope}}; valid variables are {}",
                crate::rewrite::template::NAMES
                    .iter()
                    .map(|n| format!("${{{n}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
        assert!(
            refused("cluster = \"c\"\nrequest_headers = { set = { \"x-a\" = \"${endpoint}\" } }")
                .contains("use it in response_headers")
        );
        assert!(
            refused("cluster = \"c\"\nresponse_headers = { remove = [\"Connection\"] }")
                .ends_with("response_headers.remove[0]: \"Connection\" cannot be rewritten: it is a hop-by-hop header")
        );
        assert!(
            refused("cluster = \"c\"\nrequest_headers = { set = { \"host\" = \"x\" } }")
                .contains("rewrite.host")
        );
        assert!(
            refused("cluster = \"c\"\nrequest_headers = { always = true }")
                .contains("only applies to response_headers")
        );
        assert!(
            refused("cluster = \"c\"\nrewrite = { path_regex = { pattern = \"(a\", replace = \"/\" } }")
                .ends_with("routes[0].rewrite.path_regex.pattern: not a valid regular expression: unclosed group")
        );
        assert!(refused("cluster = \"c\"\nrewrite = { path_regex = { pattern = \"(a)\", replace = \"/$2\" } }").contains("names group $2"));
        assert!(refused("cluster = \"c\"\nrewrite = { strip_prefix = \"/a\", replace_prefix = { from = \"/b\", to = \"/\" } }").contains("one path rewrite per route"));
        assert!(
            refused("cluster = \"c\"\nrewrite = { strip_prefix = \"api\" }")
                .contains("must start with '/'")
        );
        assert!(
            refused("cluster = \"c\"\nredirect = { status = 301 }").starts_with(
                "5:11: routes[0].cluster: a route has either `cluster` or `redirect`, not both"
            )
        );
        assert!(refused("redirect = { status = 200 }").contains("200 is not a redirect"));
        assert!(refused("redirect = { scheme = \"ftp\" }").contains("not a scheme"));
        assert!(refused("redirect = { path = \"new\" }").contains("must start with '/'"));
        assert!(refused("redirect = {}\nrespond = {}").contains("either `redirect` or `respond`"));
        assert!(refused("respond = { status = 204, body = \"x\" }").contains("has no body"));
        assert!(
            refused("respond = { headers = { \"transfer-encoding\" = \"chunked\" } }")
                .contains("routes[0].respond.headers.transfer-encoding:")
        );
        assert!(
            refused("respond = {}\nrewrite = { strip_prefix = \"/a\" }")
                .contains("only applies to a route that forwards")
        );
    }
}
