//! The pipeline's side of a route's rewriting (`crate::rewrite`): the
//! variables of a request, gathered from the connection, the arrival and
//! the route, at the three points where rules act (the route's own answer,
//! the head going upstream, the response going back).
//!
//! Each function is called only for a route that has a `Rewrite`.

use http::HeaderMap;
use http::request::Parts;

use super::ConnCtx;
use super::error::ProxyError;
use super::record::{Arrival, Routed};
use crate::rewrite::{Action, Canned, Conn, Edits, Headers, Kept, RequestVars, Rewrite, Vars};
use crate::route::Route;

/// What the client connection tells templates. TLS termination fills
/// `tls_version` and `sni` (and the scheme) here from its `ConnCtx`.
pub(super) fn conn(cx: &ConnCtx) -> Conn<'_> {
    Conn {
        client: cx.client,
        scheme: "http",
        tls_version: None,
        sni: None,
    }
}

/// The route's redirect or fixed response for this request.
pub(super) fn act(
    cx: &ConnCtx,
    route: &Route,
    action: &Action,
    arrival: &Arrival,
    headers: &HeaderMap,
) -> Result<Canned, ProxyError> {
    let vars = Vars {
        conn: conn(cx),
        request_id: &arrival.request_id,
        route: &route.name,
        cluster: "",
        endpoint: None,
        method: &arrival.method,
        uri: &arrival.uri,
        headers: Headers::Map(headers),
    };
    action
        .answer(&vars)
        .map_err(|e| failed(route, arrival, &e.0))
}

/// The route's request rules on the head going to `cluster`.
pub(super) fn request(
    cx: &ConnCtx,
    rewrite: &Rewrite,
    route: &Route,
    cluster: &str,
    arrival: &Arrival,
    parts: &mut Parts,
) -> Result<(), ProxyError> {
    let vars = RequestVars {
        conn: conn(cx),
        request_id: &arrival.request_id,
        route: &route.name,
        cluster,
        original_uri: Some(&arrival.uri),
    };
    rewrite
        .request(parts, vars)
        .map_err(|e| failed(route, arrival, &e.0))
}

/// The route's response rules, rendered for this answer; `None` when the
/// route has none for it. `own_error`: Levee answers with an error or a
/// fallback.
pub(super) fn response(
    cx: &ConnCtx,
    arrival: &Arrival,
    routed: Option<&Routed>,
    endpoint: Option<std::net::SocketAddr>,
    kept: Option<&Kept>,
    own_error: bool,
) -> Option<Edits> {
    let routed = routed?;
    let rewrite = routed.route.rewrite.as_deref()?;
    let empty = Kept::default();
    let vars = Vars {
        conn: conn(cx),
        request_id: &arrival.request_id,
        route: &routed.route.name,
        cluster: routed.cluster().map_or("", |c| &c.name),
        endpoint,
        method: &arrival.method,
        uri: &arrival.uri,
        headers: Headers::Kept(kept.unwrap_or(&empty)),
    };
    rewrite.response(&vars, own_error)
}

fn failed(route: &Route, arrival: &Arrival, why: &str) -> ProxyError {
    tracing::warn!(
        route = %route.name,
        request_id = arrival.request_id.to_str().unwrap_or(""),
        "rewrite failed: {why}"
    );
    ProxyError::RewriteFailed
}
