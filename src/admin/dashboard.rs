//! `GET /dashboard`: the live dashboard, a page and its script and style
//! embedded in the binary (no build step, nothing fetched from elsewhere),
//! which reads the same admin API a script would (`GET /status`,
//! `GET /stats`, `GET /events/stream`). And `GET /openapi.json`, that API's
//! description.
//!
//! A browser cannot send `Authorization: Bearer` on a page load or an
//! `EventSource`, so with `admin.token` set the page is opened once as
//! `/dashboard?token=TOKEN`: the token is checked like the header, stored in
//! an `HttpOnly`, `SameSite=Strict` cookie for this admin listener and the
//! browser is sent on to `/dashboard`, without the token in its address.
//! The admin API accepts that cookie in place of the header.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

use super::reply;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");
/// The admin API's OpenAPI 3 description.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The cookie that carries the admin token for the dashboard.
pub const COOKIE: &str = "levee_admin_token";

/// The dashboard's own paths.
pub fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let (content_type, body) = match path {
        "/dashboard" | "/dashboard/" => ("text/html; charset=utf-8", INDEX),
        "/dashboard/app.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/dashboard/app.css" => ("text/css; charset=utf-8", STYLE),
        "/openapi.json" => ("application/json", OPENAPI),
        _ => return None,
    };
    let mut r = reply(StatusCode::OK, content_type, body);
    let h = r.headers_mut();
    // The page only talks to this listener.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    Some(r)
}

/// `?token=` of a query, when present.
pub fn query_token(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|p| p.strip_prefix("token="))
}

/// The token from the dashboard's cookie, when the request carries it.
pub fn cookie_token(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The answer to `/dashboard?token=` with the right token: the cookie, and
/// on to the page without the token in the address.
pub fn login(token: &str) -> Response<Full<Bytes>> {
    let mut r = reply(StatusCode::SEE_OTHER, "text/plain", "to /dashboard\n");
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        header::HeaderValue::from_static("/dashboard"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    )) {
        h.insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_query_and_cookie() {
        assert_eq!(query_token(Some("a=1&token=s3cret")), Some("s3cret"));
        assert_eq!(query_token(Some("tokens=x")), None);
        assert_eq!(query_token(None), None);
        let mut h = http::HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=b; levee_admin_token=s3cret".parse().unwrap(),
        );
        assert_eq!(cookie_token(&h), Some("s3cret"));
        let mut h = http::HeaderMap::new();
        h.append(header::COOKIE, "levee_admin_tokenx=s3cret".parse().unwrap());
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn the_openapi_description_is_json() {
        let v: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(v["openapi"].as_str().map(|s| &s[..2]), Some("3."));
    }
}
