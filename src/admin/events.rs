//! `GET /events` and `GET /events/stream`: the event hub (`crate::events`)
//! as JSON and as Server-Sent Events.

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use super::reply_json;

/// `GET /events?since=&kind=&subject=&limit=`: the kept events, oldest
/// first.
pub fn list<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    use crate::events::{Filter, hub};
    // `limit` is this endpoint's own; the rest is the shared filter.
    let mut limit = crate::events::RING;
    let rest: Vec<&str> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| match p.strip_prefix("limit=") {
            Some(n) => {
                limit = n.parse().unwrap_or(limit);
                false
            }
            None => true,
        })
        .collect();
    match Filter::from_query(Some(&rest.join("&"))) {
        Ok(filter) => {
            let (events, last, dropped) = hub().list(&filter, limit);
            reply_json(
                StatusCode::OK,
                json!({
                    "last_seq": last,
                    "dropped": dropped,
                    "events": events.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
                }),
            )
        }
        Err(e) => reply_json(
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_query", "message": e}),
        ),
    }
}

/// `GET /events/stream?kind=&subject=&since=`: Server-Sent Events.
pub fn stream<B>(req: &Request<B>) -> Response<crate::events::sse::SseBody> {
    let mut filter = match crate::events::Filter::from_query(req.uri().query()) {
        Ok(f) => f,
        Err(e) => {
            let body = json!({"error": "bad_query", "message": e}).to_string();
            let mut r = Response::new(crate::events::sse::once(Bytes::from(body)));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            return r;
        }
    };
    // A reconnecting browser resumes after the last event it saw.
    if let Some(last) = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        filter.since = filter.since.max(last);
    }
    let mut r = Response::new(crate::events::sse::stream(filter));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    r
}
