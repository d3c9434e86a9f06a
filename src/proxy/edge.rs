//! What a listener at the edge adds to the pipeline: the redirect of plain
//! HTTP to https (`redirect_https`), HSTS on TLS listeners, and the client
//! certificate's subject (mutual TLS) as a request header that routes can
//! match and endpoints read.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};

use super::ConnCtx;
use super::body::ResponseBody;
use super::record::{Arrival, Completion, Outcome, Places, Tries};
use crate::snapshot::Snapshot;
use crate::tls::TlsInfo;

/// The verified client certificate's subject; a client's own value is
/// always removed, so it cannot be forged.
pub static X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");

/// Sets `X-Client-Cert-Subject` from the handshake, removing what the
/// client sent.
pub fn client_subject(headers: &mut HeaderMap, tls: Option<&TlsInfo>) {
    headers.remove(&X_CLIENT_CERT_SUBJECT);
    if let Some(subject) = tls.and_then(|t| t.client_subject.clone()) {
        headers.insert(X_CLIENT_CERT_SUBJECT.clone(), subject);
    }
}

/// Where a request on a `redirect_https` listener is sent: the same host
/// and path over https, on the listener's `https_port`.
pub fn https_location<B>(
    cx: &ConnCtx,
    snapshot: &Snapshot,
    req: &Request<B>,
) -> Option<HeaderValue> {
    if cx.tls.is_some() {
        return None;
    }
    let port = snapshot.listener(cx.local)?.redirect_https?;
    let host = crate::route::request_host(req.uri(), req.headers())?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    HeaderValue::from_str(&location).ok()
}

/// The 308 to `location` (method and body kept by the client, RFC 9110
/// §15.4.9), counted and logged like any answer.
pub fn redirect(
    cx: Arc<ConnCtx>,
    snapshot: Arc<Snapshot>,
    arrival: Arrival,
    location: HeaderValue,
) -> Response<ResponseBody> {
    let request_id = arrival.request_id.clone();
    let status = StatusCode::PERMANENT_REDIRECT;
    let completion = Box::new(Completion {
        cx,
        snapshot,
        arrival,
        outcome: Outcome {
            status: status.as_u16(),
            error: None,
            routed: None,
            places: Places::default(),
            tries: Tries::default(),
            grpc: None,
        },
        body_error: None,
        tunnel: None,
    });
    let mut response = Response::new(ResponseBody::full(Bytes::new(), Some(completion)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    h.insert(super::headers::X_REQUEST_ID.clone(), request_id);
    response
}

/// Adds the listener's HSTS header unless the endpoint sent its own.
pub fn hsts(headers: &mut HeaderMap, value: Option<HeaderValue>) {
    if let Some(v) = value
        && !headers.contains_key(header::STRICT_TRANSPORT_SECURITY)
    {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, v);
    }
}
