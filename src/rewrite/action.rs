//! What a route may do instead of forwarding: answer with a redirect
//! (nginx `return 301 https://$host$request_uri`, HAProxy `redirect scheme
//! https code 301`) or with a fixed response (nginx `return 200 "ok"`,
//! HAProxy `http-request return`).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::Failed;
use super::template::{Template, Var, Vars};

#[derive(Debug)]
pub enum Action {
    Redirect {
        status: StatusCode,
        /// Unset: the request's scheme.
        scheme: Option<String>,
        /// Unset: the request's host.
        host: Option<Template>,
        /// Unset: the request's path.
        path: Option<Template>,
        keep_query: bool,
    },
    Respond {
        status: StatusCode,
        headers: Vec<(HeaderName, Template)>,
        body: Bytes,
    },
}

/// Levee's answer for an action.
#[derive(Debug)]
pub struct Canned {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Action {
    /// The answer for one request.
    pub fn answer(&self, vars: &Vars) -> Result<Canned, Failed> {
        match self {
            Action::Redirect {
                status,
                scheme,
                host,
                path,
                keep_query,
            } => {
                let mut location = Vec::new();
                let mut authority = Vec::new();
                match host {
                    Some(t) => t.render_into(vars, &mut authority),
                    None => Template::from_var(Var::Host).render_into(vars, &mut authority),
                }
                // Without a host to send the client to (an HTTP/1.0 request
                // without `Host`), the redirect is relative.
                if !authority.is_empty() {
                    location.extend_from_slice(
                        scheme.as_deref().unwrap_or(vars.conn.scheme).as_bytes(),
                    );
                    location.extend_from_slice(b"://");
                    location.extend_from_slice(&authority);
                }
                let path_start = location.len();
                match path {
                    Some(t) => t.render_into(vars, &mut location),
                    None => location.extend_from_slice(vars.uri.path().as_bytes()),
                }
                if location.len() == path_start || location[path_start] != b'/' {
                    location.insert(path_start, b'/');
                }
                if let (true, Some(q)) = (*keep_query, vars.uri.query()) {
                    let joint = if location[path_start..].contains(&b'?') {
                        b'&'
                    } else {
                        b'?'
                    };
                    location.push(joint);
                    location.extend_from_slice(q.as_bytes());
                }
                let location = HeaderValue::from_maybe_shared(Bytes::from(location))
                    .map_err(|_| Failed("the redirect's Location is not a header value".into()))?;
                let mut headers = HeaderMap::new();
                headers.insert(http::header::LOCATION, location);
                Ok(Canned {
                    status: *status,
                    headers,
                    body: Bytes::new(),
                })
            }
            Action::Respond {
                status,
                headers,
                body,
            } => {
                let mut map = HeaderMap::with_capacity(headers.len());
                for (name, t) in headers {
                    let value = t.header_value(vars).ok_or_else(|| {
                        Failed(format!("the value for {name} is not a valid header value"))
                    })?;
                    map.append(name.clone(), value);
                }
                Ok(Canned {
                    status: *status,
                    headers: map,
                    body: body.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::template::{Conn, Headers};
    use http::Uri;

    fn action(text: &str) -> Action {
        let text = format!("[[routes]]\nname = \"r\"\n{text}");
        let config = crate::config::parse_part(&text).unwrap();
        crate::route::rewrite::action(&config.routes[0]).unwrap()
    }

    fn answer(a: &Action, uri: &str, host: Option<&str>) -> Canned {
        let mut headers = HeaderMap::new();
        if let Some(h) = host {
            headers.insert("host", HeaderValue::from_str(h).unwrap());
        }
        let uri: Uri = uri.parse().unwrap();
        let id = HeaderValue::from_static("id-9");
        let vars = Vars {
            conn: Conn {
                client: "127.0.0.1:1000".parse().unwrap(),
                scheme: "http",
                tls_version: None,
                sni: None,
            },
            request_id: &id,
            route: "r",
            cluster: "",
            endpoint: None,
            method: &http::Method::GET,
            uri: &uri,
            headers: Headers::Map(&headers),
        };
        a.answer(&vars).unwrap()
    }

    fn location(c: &Canned) -> &str {
        c.headers["location"].to_str().unwrap()
    }

    #[test]
    fn redirect_to_https_keeps_host_path_and_query() {
        let a = action("redirect = { status = 301, scheme = \"https\" }");
        let c = answer(&a, "/a/b?x=1", Some("shop.example"));
        assert_eq!(c.status, 301);
        assert_eq!(location(&c), "https://shop.example/a/b?x=1");
    }

    #[test]
    fn redirect_to_a_new_host_and_path() {
        let a = action(
            "redirect = { status = 308, host = \"new.example\", path = \"/v2${path}\", keep_query = false }",
        );
        let c = answer(&a, "/a?x=1", Some("old.example"));
        assert_eq!(c.status, 308);
        assert_eq!(location(&c), "http://new.example/v2/a");
        let a = action("redirect = { path = \"/search?from=${path}\" }");
        let c = answer(&a, "/old?q=1", Some("h"));
        assert_eq!(c.status, 302);
        assert_eq!(location(&c), "http://h/search?from=/old&q=1");
    }

    #[test]
    fn redirect_without_a_host_is_relative() {
        let a = action("redirect = { path = \"/elsewhere\" }");
        assert_eq!(location(&answer(&a, "/x", None)), "/elsewhere");
    }

    #[test]
    fn respond_renders_its_headers() {
        let a = action(
            "respond = { status = 403, body = \"no\\n\", headers = { \"x-id\" = \"${request_id}\", \"content-type\" = \"text/plain\" } }",
        );
        let c = answer(&a, "/", None);
        assert_eq!(c.status, 403);
        assert_eq!(c.headers["x-id"], "id-9");
        assert_eq!(c.headers["content-type"], "text/plain");
        assert_eq!(c.body, "no\n");
    }
}
