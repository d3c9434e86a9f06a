//! A route's rewriting (`crate::rewrite`) built from its validated
//! configuration: the templates and patterns `config::rewrite` checked are
//! compiled again here, and cannot fail.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderName, StatusCode};
use serde_spanned::Spanned;

use crate::config::RouteConfig;
use crate::config::rewrite::HeaderRulesConfig;
use crate::rewrite::{Action, HeaderRules, PathRewrite, Rewrite, Template};

/// The route's rewriting; `None` when it has none.
pub fn build(r: &RouteConfig) -> Option<Box<Rewrite>> {
    let rw = r.rewrite.as_ref();
    let path = rw.and_then(|rw| {
        if let Some(p) = &rw.strip_prefix {
            return Some(PathRewrite::Prefix {
                from: p.get_ref().clone(),
                to: String::new(),
            });
        }
        if let Some(p) = &rw.replace_prefix {
            return Some(PathRewrite::Prefix {
                from: p.from.get_ref().clone(),
                to: p.to.get_ref().clone(),
            });
        }
        let p = rw.path_regex.as_ref()?;
        Some(PathRewrite::Regex {
            pattern: regex::Regex::new(p.pattern.get_ref()).ok()?,
            replace: p.replace.get_ref().clone(),
        })
    });
    Rewrite::new(
        header_rules(r.request_headers.as_ref()),
        header_rules(r.response_headers.as_ref()),
        r.response_headers
            .as_ref()
            .and_then(|h| h.always.as_ref())
            .is_some_and(|a| *a.get_ref()),
        path,
        template(rw.and_then(|rw| rw.host.as_ref())),
        action(r),
    )
}

/// The route's redirect or fixed response; `None` for a route that
/// forwards.
pub fn action(r: &RouteConfig) -> Option<Action> {
    if let Some(c) = &r.redirect {
        return Some(Action::Redirect {
            status: StatusCode::from_u16(*c.status.get_ref()).unwrap_or(StatusCode::FOUND),
            scheme: c.scheme.as_ref().map(|s| s.get_ref().clone()),
            host: template(c.host.as_ref()),
            path: template(c.path.as_ref()),
            keep_query: c.keep_query,
        });
    }
    let c = r.respond.as_ref()?;
    Some(Action::Respond {
        status: StatusCode::from_u16(*c.status.get_ref()).unwrap_or(StatusCode::OK),
        headers: rules(&c.headers),
        body: Bytes::from(c.body.get_ref().clone()),
    })
}

fn template(t: Option<&Spanned<String>>) -> Option<Template> {
    Template::parse(t?.get_ref()).ok()
}

fn rules(map: &BTreeMap<String, Spanned<String>>) -> Vec<(HeaderName, Template)> {
    map.iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                Template::parse(value.get_ref()).ok()?,
            ))
        })
        .collect()
}

fn header_rules(c: Option<&HeaderRulesConfig>) -> HeaderRules {
    let Some(c) = c else {
        return HeaderRules::default();
    };
    HeaderRules {
        set: rules(&c.set),
        add: rules(&c.add),
        remove: c
            .remove
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.get_ref().as_bytes()).ok())
            .collect(),
    }
}
