//! The admin API: every endpoint is in [`ENDPOINTS`] (health, metrics,
//! status, reload, the service level, draining an endpoint), which the 404
//! answer lists.
//!
//! Bound to loopback by default. When `admin.token` is set, everything but
//! `/healthz` (which probes need) requires `Authorization: Bearer <token>`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

mod dashboard;
mod faults;

use crate::observe::access_log::rfc3339_millis;
use crate::shared::Shared;

pub mod events;
pub mod slo;
pub mod stats;

/// A request to the server's control loop from the admin API.
pub enum Control {
    Reload(oneshot::Sender<Result<String, String>>),
}

/// Every endpoint of the admin API, as the 404 answer lists them.
pub const ENDPOINTS: &[&str] = &[
    "GET /healthz",
    "GET /dashboard",
    "GET /dashboard/app.js",
    "GET /dashboard/app.css",
    "GET /openapi.json",
    "GET /metrics",
    "GET /status",
    "GET /availability",
    "GET /slo",
    "GET /stats",
    "GET /events",
    "GET /events/stream",
    "POST /reload",
    "GET /degradation",
    "PUT /degradation",
    "POST /clusters/{cluster}/endpoints/{ip:port}/drain",
    "POST /clusters/{cluster}/endpoints/{ip:port}/undrain",
    "GET /faults",
    "POST /faults",
    "DELETE /faults/{name}",
    "GET /chaos/requests",
    "DELETE /chaos/requests",
];

/// Whether the request carries the admin token.
///
/// Compared in constant time (`subtle`): `==` on strings stops at the first
/// differing byte, so the time of a refusal would tell a remote guesser how
/// many leading bytes were right, and the token could be found a byte at a
/// time. Only the length can still be learnt, which says little.
fn token_matches(given: Option<&str>, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes())))
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, control: mpsc::Sender<Control>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let control = control.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                let control = control.clone();
                async move {
                    // The event stream is the one answer with an endless body.
                    if req.method() == Method::GET && req.uri().path() == "/events/stream" {
                        if let Some(denied) = unauthorized(&req, &shared) {
                            return Ok(denied.map(Either::Left));
                        }
                        return Ok::<_, Infallible>(events::stream(&req).map(Either::Right));
                    }
                    Ok(route(req, &shared, &control).await.map(Either::Left))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn reply_json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    reply(status, "application/json", s)
}

/// The refusal when `admin.token` is set and the request lacks it (as
/// `Authorization: Bearer`, or as the dashboard's cookie).
fn unauthorized<B>(req: &Request<B>, shared: &Shared) -> Option<Response<Full<Bytes>>> {
    let token = shared.snapshot.load().config.admin.token.clone()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = dashboard::cookie_token(req.headers());
    (!token_matches(given, &token) && !token_matches(cookie, &token)).then(|| {
        reply_json(
            StatusCode::UNAUTHORIZED,
            json!({"error": "unauthorized", "message": "admin token required: Authorization: Bearer <token> (in a browser: open /dashboard?token=<token>)"}),
        )
    })
}

async fn route(
    req: Request<Incoming>,
    shared: &Shared,
    control: &mpsc::Sender<Control>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/healthz" {
        return reply(StatusCode::OK, "text/plain", "ok\n");
    }
    // A browser opening the dashboard with the token in its address: the
    // token goes into a cookie (admin/dashboard.rs).
    if path == "/dashboard"
        && let Some(given) = dashboard::query_token(req.uri().query())
        && let Some(token) = shared.snapshot.load().config.admin.token.clone()
        && token_matches(Some(given), &token)
    {
        return dashboard::login(&token);
    }
    if let Some(denied) = unauthorized(&req, shared) {
        return denied;
    }
    if req.method() == Method::GET
        && let Some(page) = dashboard::asset(path)
    {
        return page;
    }
    match (req.method(), path) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        ),
        (&Method::GET, "/status") => reply_json(StatusCode::OK, status(shared)),
        (&Method::GET, "/availability") => reply_json(
            StatusCode::OK,
            serde_json::to_value(crate::availability::topology::live(
                shared,
                std::time::Instant::now(),
            ))
            .unwrap_or_default(),
        ),
        (&Method::GET, "/slo") => reply_json(
            StatusCode::OK,
            slo::reports(&shared.snapshot.load(), crate::slo::unix_now()),
        ),
        (&Method::GET, "/stats") => reply_json(
            StatusCode::OK,
            stats::report(
                &shared.snapshot.load(),
                req.uri().query(),
                crate::slo::unix_now(),
            ),
        ),
        (&Method::GET, "/events") => events::list(&req),
        (&Method::POST, "/reload") => {
            let (tx, rx) = oneshot::channel();
            if control.send(Control::Reload(tx)).await.is_err() {
                return reply_json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "shutting_down", "message": "the server is shutting down"}),
                );
            }
            match rx.await {
                Ok(Ok(summary)) => reply_json(
                    StatusCode::OK,
                    json!({"result": "applied", "summary": summary}),
                ),
                Ok(Err(e)) => reply_json(
                    StatusCode::BAD_REQUEST,
                    json!({"result": "refused", "error": e, "message": "the previous configuration is still running"}),
                ),
                Err(_) => reply_json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "reload_lost"}),
                ),
            }
        }
        (&Method::GET, "/degradation") => reply_json(StatusCode::OK, shared.service_level.status()),
        (&Method::PUT, "/degradation") => set_level(req, shared).await,
        (&Method::POST, p)
            if p.starts_with("/clusters/")
                && (p.ends_with("/drain") || p.ends_with("/undrain")) =>
        {
            drain(p, shared)
        }
        (&Method::GET, "/faults") => faults::list(shared),
        (&Method::POST, "/faults") => faults::post(req, shared).await,
        (&Method::DELETE, p) if p.starts_with("/faults/") => faults::delete(p, shared),
        (&Method::GET, "/chaos/requests") => faults::slowest(&req, shared),
        (&Method::DELETE, "/chaos/requests") => faults::clear_slowest(&req, shared),
        (
            _,
            "/metrics" | "/status" | "/reload" | "/degradation" | "/faults" | "/slo" | "/stats"
            | "/events",
        ) => reply_json(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "method_not_allowed", "message": format!("admin endpoints: {}", ENDPOINTS.join(", ")), "endpoints": ENDPOINTS}),
        ),
        _ => reply_json(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "message": format!("admin endpoints: {}", ENDPOINTS.join(", ")), "endpoints": ENDPOINTS}),
        ),
    }
}

/// `PUT /degradation` with a level (`full`, `degraded`, `minimal`,
/// `maintenance`) as the body, plain or as `{"level": "..."}`; `auto` (or
/// `{"level": null}`) clears the level set by hand.
async fn set_level(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    use crate::resilience::degradation::Level;
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return reply_json(
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_body", "message": "send a level of at most 1 KiB"}),
            );
        }
    };
    let text = String::from_utf8_lossy(&body);
    let wanted = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(o)) => match o.get("level") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) => "auto".into(),
            _ => String::new(),
        },
        _ => text.trim().trim_matches('"').to_string(),
    };
    let level = if wanted.eq_ignore_ascii_case("auto") {
        None
    } else {
        match wanted.parse::<Level>() {
            Ok(l) => Some(l),
            Err(e) => {
                return reply_json(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "bad_level", "message": format!("{e}, or auto to clear")}),
                );
            }
        }
    };
    shared.service_level.set_manual(level);
    reply_json(StatusCode::OK, shared.service_level.status())
}

/// `POST /clusters/{cluster}/endpoints/{address}/drain`: no new requests to
/// that endpoint; the ones in flight finish. It stays draining until
/// `.../undrain` (or until it is removed from the configuration), which takes
/// it back: WARMING if its cluster has active checks, HEALTHY otherwise.
fn drain(path: &str, shared: &Shared) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let [
        _,
        cluster,
        "endpoints",
        endpoint,
        action @ ("drain" | "undrain"),
    ] = parts.as_slice()
    else {
        return reply_json(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "message": "POST /clusters/{cluster}/endpoints/{ip:port}/drain or /undrain"}),
        );
    };
    let snapshot = shared.snapshot.load();
    let Some(c) = snapshot.clusters.iter().find(|c| &*c.name == *cluster) else {
        return reply_json(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "message": format!("no cluster {cluster}")}),
        );
    };
    let Some(e) = c
        .endpoints
        .iter()
        .find(|e| e.address.to_string() == *endpoint)
    else {
        return reply_json(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "message": format!("no endpoint {endpoint} in cluster {cluster}")}),
        );
    };
    let now = std::time::Instant::now();
    let transition = if *action == "drain" {
        e.live.drain(now)
    } else {
        e.live.undrain(c.health_check.is_some(), now)
    };
    if let Some(t) = transition {
        tracing::info!(
            cluster,
            endpoint,
            "endpoint {} -> {}: {} (admin API)",
            t.from.as_str(),
            t.to.as_str(),
            t.reason
        );
        let labels = crate::observe::metrics::TransitionLabels {
            cluster: (*cluster).to_owned(),
            endpoint: (*endpoint).to_owned(),
            from: t.from.as_str(),
            to: t.to.as_str(),
        };
        shared.metrics.transitions.get_or_create(&labels).inc();
    }
    reply_json(
        StatusCode::OK,
        json!({"cluster": cluster, "endpoint": endpoint, "state": e.live.state().as_str(), "in_flight": e.live.in_flight()}),
    )
}

fn breaker_json(b: &crate::cluster::guard::SharedBreaker) -> serde_json::Value {
    let s = b.status();
    json!({
        "state": s.state.as_str(),
        "calls": s.counts.calls,
        "failures": s.counts.failures,
        "slow_calls": s.counts.slow_calls,
        "rejections": s.counts.rejections,
        "last_transition": s.last_transition.map(|(at, reason)| json!({
            "time": rfc3339_millis(at),
            "unix_ms": at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            "reason": reason,
        })),
    })
}

/// The running configuration and live endpoint state, as JSON.
fn status(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot.load();
    let listeners: Vec<_> = snap
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": &*l.name,
                "address": l.address.to_string(),
                "max_connections": l.max_connections,
                "protocol": if l.tcp.is_some() { "tcp" } else { "http" },
                "cluster": l.tcp.as_ref().and_then(|t| t.default.as_ref()).map(|r| &*r.cluster.name),
                "routes": if l.tcp.is_some() { Vec::new() } else { l.routes.iter().map(|r| &*r.name).collect::<Vec<_>>() },
                "websocket": l.tcp.is_none().then(|| crate::observe::websocket::status(&shared.metrics.websocket, &l.name, l.websocket.enabled)),
            })
        })
        .collect();
    let routes: Vec<_> = snap
        .config
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name.get_ref(),
                "cluster": r.cluster.as_ref().map(|c| c.get_ref()),
                "split": r.split.iter().map(|t| json!({"cluster": t.cluster.get_ref(), "weight": t.weight.get_ref()})).collect::<Vec<_>>(),
                "split_key": r.split_key.as_ref().map(ToString::to_string),
                "host": r.host.as_ref().map(|h| h.get_ref()),
                "path": r.path.as_ref().map(|h| h.get_ref()),
                "path_prefix": r.path_prefix.as_ref().map(|h| h.get_ref()),
                "methods": r.methods.iter().map(|m| m.get_ref()).collect::<Vec<_>>(),
                "headers": r.headers.iter().map(|(k, v)| (k.clone(), v.get_ref().clone())).collect::<std::collections::BTreeMap<_, _>>(),
                "rate_limits": r.rate_limits.iter().map(|n| n.get_ref()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let clusters: Vec<_> = snap
        .clusters
        .iter()
        .map(|c| {
            json!({
                "name": &*c.name,
                "balance": c.balance.as_str(),
                "endpoints": c.endpoints.iter().map(|e| json!({
                    "address": e.address.to_string(),
                    "weight": e.weight,
                    "backup": e.backup,
                    "state": e.live.state().as_str(),
                    "ejected": e.live.is_ejected(std::time::Instant::now()),
                    "usable": e.live.usable(std::time::Instant::now()),
                    "in_flight": e.live.in_flight(),
                    "idle_connections": e.live.pool.idle_count(),
                    "breaker": e.breaker.as_deref().map(breaker_json),
                })).collect::<Vec<_>>(),
                "breaker": c.guard.breaker.as_deref().map(breaker_json),
                "bulkhead": c.guard.bulkhead.as_ref().map(|b| {
                    let n = b.counts();
                    json!({
                        "max_concurrent": b.max_concurrent(),
                        "in_flight": b.in_flight(),
                        "queued": b.queued(),
                        "rejected_full": n.rejected_full,
                        "rejected_timeout": n.rejected_timeout,
                    })
                }),
                "adaptive_concurrency": c.guard.adaptive.as_ref().map(|a| {
                    let (limit, in_flight, n) = a.limit();
                    json!({
                        "limit": limit,
                        "in_flight": in_flight,
                        "admitted": n.admitted,
                        "rejected": n.rejected,
                    })
                }),
                "retry_budget": c.guard.budget_counts().map(|(allowed, refused)| json!({
                    "allowed": allowed,
                    "refused": refused,
                })),
            })
        })
        .collect();
    let (started_at, started) = shared.started;
    let last_reload = shared
        .last_reload
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "started": rfc3339_millis(started_at),
        "uptime_seconds": started.elapsed().as_secs(),
        "config_path": shared.config_path.as_ref().map(|p| p.display().to_string()),
        "last_reload": last_reload.map(|r| {
            let (result, detail) = match &r.result {
                Ok(summary) => ("applied", json!({"summary": summary})),
                Err(e) => ("refused", json!({"error": e})),
            };
            let mut v = json!({
                "time": rfc3339_millis(r.at),
                "trigger": r.trigger,
                "result": result,
            });
            if let (Some(o), Some(d)) = (v.as_object_mut(), detail.as_object()) {
                o.extend(d.clone());
            }
            v
        }),
        "workers": shared.live.workers(),
        "listeners": listeners,
        "routes": routes,
        "clusters": clusters,
        "degradation": shared.service_level.status(),
        "rate_limits": snap.rate_limits.status(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every endpoint the router serves (the list its 404 answer gives) is
    /// in the OpenAPI description, and it describes no other.
    #[test]
    fn openapi_describes_every_endpoint() {
        let doc: serde_json::Value = serde_json::from_str(dashboard::OPENAPI).unwrap();
        let mut described: Vec<String> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| format!("{} {path}", m.to_uppercase()))
            })
            .collect();
        let mut served: Vec<String> = ENDPOINTS
            .iter()
            .map(|e| e.replace("{ip:port}", "{endpoint}"))
            .collect();
        described.sort();
        served.sort();
        assert_eq!(described, served);
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches(Some("s3cret"), "s3cret"));
        assert!(!token_matches(Some("s3creT"), "s3cret"));
        assert!(!token_matches(Some("s3cre"), "s3cret"));
        assert!(!token_matches(Some(""), "s3cret"));
        assert!(!token_matches(None, "s3cret"));
    }
}
