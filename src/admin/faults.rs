//! `GET /faults`, `POST /faults`, `DELETE /faults/{name}`: the faults in
//! force, with what is left of their ttl; starting faults at runtime (a
//! `[[faults]]` document, as in the configuration, each with its `ttl`);
//! stopping one. Posting is refused unless the configuration says
//! `chaos.enabled = true`. `GET /chaos/requests[?route=R]`: each route's slowest
//! requests since `DELETE /chaos/requests[?route=R]` (`chaos::slowest`),
//! with the faults that hit them.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;

use super::reply_json;
use crate::shared::Shared;

/// Largest `[[faults]]` document accepted.
const MAX_BODY: usize = 64 * 1024;

pub(super) fn list(shared: &Shared) -> Response<Full<Bytes>> {
    let enabled = shared.snapshot.load().config.chaos.enabled;
    reply_json(
        StatusCode::OK,
        json!({"enabled": enabled, "faults": shared.faults.status(Instant::now())}),
    )
}

pub(super) async fn post(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let snapshot = shared.snapshot.load_full();
    if !snapshot.config.chaos.enabled {
        return reply_json(
            StatusCode::FORBIDDEN,
            json!({"error": "chaos_disabled", "message": "fault injection is off; set `enabled = true` under [chaos] in the configuration and reload"}),
        );
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return reply_json(
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_body", "message": "send a [[faults]] document of at most 64 KiB"}),
            );
        }
    };
    let text = String::from_utf8_lossy(&body);
    let faults = match crate::config::chaos::parse_faults(
        Path::new("POST /faults"),
        &text,
        Some(&snapshot.config),
    ) {
        Ok(f) if f.is_empty() => {
            return reply_json(
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_fault", "message": "no [[faults]] in the body"}),
            );
        }
        Ok(f) => f,
        Err(e) => {
            return reply_json(
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_fault", "message": e.to_string()}),
            );
        }
    };
    let now = Instant::now();
    let mut started = Vec::new();
    for f in &faults {
        let fault = crate::chaos::build::fault(f);
        started.push(fault.name.clone());
        shared.faults.add(fault, now, &shared.metrics.chaos);
    }
    reply_json(
        StatusCode::OK,
        json!({"started": started, "faults": shared.faults.status(now)}),
    )
}

pub(super) fn delete(path: &str, shared: &Shared) -> Response<Full<Bytes>> {
    let name = path.trim_start_matches("/faults/");
    if shared.faults.remove(name, &shared.metrics.chaos) {
        reply_json(StatusCode::OK, json!({"removed": name}))
    } else {
        reply_json(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "message": format!("no fault named {name:?} is in force")}),
        )
    }
}

/// The `route` of a query string, if any.
fn route_param(req: &Request<Incoming>) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("route="))
        .map(crate::events::percent_decode)
}

pub(super) fn slowest(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let enabled = shared.snapshot.load().config.chaos.enabled;
    let mut v = shared.faults.slowest.report(route_param(req).as_deref());
    v["enabled"] = json!(enabled);
    reply_json(StatusCode::OK, v)
}

pub(super) fn clear_slowest(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let route = route_param(req);
    shared
        .faults
        .slowest
        .clear(route.as_deref(), std::time::SystemTime::now());
    reply_json(
        StatusCode::OK,
        json!({"cleared": route.unwrap_or_else(|| "*".into())}),
    )
}
