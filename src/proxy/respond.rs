//! Step 7 of the pipeline: the response the client gets (the endpoint's,
//! the route's own, or Levee's), with the route's response header rules,
//! carrying the request's `record::Completion` until its body is over.

use std::sync::Arc;

use http::Response;
use http::header::{self, HeaderValue};

use super::body::ResponseBody;
use super::error::{self, ProxyError};
use super::record::{Arrival, Completion, GrpcCall, Outcome};
use super::request::upgrade_headers;
use super::{ConnCtx, Forwarded, Refusal, Reply, edge, grpc, headers, rewriting};
use crate::snapshot::Snapshot;
use crate::upstream;

/// Step 7: the response the client gets, and the request's outcome, which
/// the response body carries until it is over. Levee's own error answer to
/// a gRPC request is a gRPC status (`grpc`).
pub(super) fn respond(
    cx: Arc<ConnCtx>,
    snapshot: Arc<Snapshot>,
    arrival: Arrival,
    forwarded: Forwarded,
    grpc: bool,
) -> Response<ResponseBody> {
    let Forwarded {
        routed,
        rate_limit,
        places,
        mut tries,
        answer,
        kept,
    } = forwarded;
    let shape = tries.shape.take();
    let reset = matches!(
        answer,
        Err(Refusal {
            error: ProxyError::FaultReset,
            ..
        })
    );
    let attempts = routed
        .as_ref()
        .and_then(|r| r.policy()?.attempts_header.clone())
        .map(|name| (name, count_value(tries.count)));
    let endpoint = tries.last.as_ref().map(|t| t.endpoint);
    let edits = rewriting::response(
        &cx,
        &arrival,
        routed.as_ref(),
        endpoint,
        kept.as_ref(),
        answer.is_err(),
    );
    let request_id = arrival.request_id.clone();
    let hsts = cx.tls.as_ref().and_then(|t| t.hsts.clone());
    let mut outcome = Outcome {
        status: 0,
        error: None,
        routed,
        places,
        tries,
        grpc: None,
    };
    let completion = |outcome| {
        Box::new(Completion {
            cx,
            snapshot,
            arrival,
            outcome,
            body_error: None,
            tunnel: None,
        })
    };
    let mut response = match answer {
        Ok(Reply::Upstream {
            exchange,
            set_cookie,
            grpc: call,
        }) => {
            outcome.grpc = call;
            let upstream::Exchange { head, body, .. } = exchange;
            let mut headers = head.headers;
            headers::strip_hop_by_hop(&mut headers);
            // Only a WebSocket upgrade Levee asked for is answered 101
            // (`upstream` refuses any other): the client is told the same.
            if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                upgrade_headers(&mut headers);
            }
            headers.entry(&headers::X_REQUEST_ID).or_insert(request_id);
            if let Some(cookie) = set_cookie {
                headers.append(header::SET_COOKIE, cookie);
            }
            outcome.status = head.status.as_u16();
            let body = ResponseBody::upstream(body, completion(outcome)).shaped(shape);
            let mut response = Response::new(body);
            *response.status_mut() = head.status;
            *response.headers_mut() = headers;
            response
        }
        Ok(Reply::Action(canned)) => {
            outcome.status = canned.status.as_u16();
            let body = ResponseBody::full(canned.body, Some(completion(outcome)));
            let mut response = Response::new(body);
            *response.status_mut() = canned.status;
            *response.headers_mut() = canned.headers;
            let h = response.headers_mut();
            h.insert(headers::X_REQUEST_ID.clone(), request_id);
            response
        }
        Err(Refusal { error, retry_after }) => {
            outcome.error = Some(error);
            // An open breaker or a switched-off route answers with the
            // route's fallback, when it has one.
            let route = match error {
                ProxyError::BreakerOpen | ProxyError::Degraded => {
                    outcome.routed.as_ref().map(|r| r.route.clone())
                }
                _ => None,
            };
            match route.as_ref().and_then(|r| r.fallback.as_ref()) {
                Some(fallback) => {
                    outcome.status = fallback.status.as_u16();
                    let body = ResponseBody::full(fallback.body.clone(), Some(completion(outcome)));
                    let mut response = Response::new(body);
                    *response.status_mut() = fallback.status;
                    *response.headers_mut() = fallback.headers.clone();
                    let h = response.headers_mut();
                    h.insert(headers::X_REQUEST_ID.clone(), request_id);
                    if let (Some(wait), false) = (retry_after, h.contains_key(header::RETRY_AFTER))
                    {
                        h.insert(header::RETRY_AFTER, error::retry_after_value(wait));
                    }
                    response
                }
                None => {
                    let status = match (error, &rate_limit) {
                        (ProxyError::RateLimited, Some(r)) => r.status,
                        _ => error.status(),
                    };
                    outcome.status = status.as_u16();
                    if grpc {
                        outcome.grpc = Some(GrpcCall {
                            status: Some(grpc::code(error, status)),
                            pending: None,
                        });
                    }
                    let body = |b| ResponseBody::full(b, Some(completion(outcome)));
                    if grpc {
                        grpc::response(error, status, &request_id, retry_after, body)
                    } else {
                        error::response_with_status(error, status, &request_id, retry_after, body)
                    }
                }
            }
        }
    };
    if let Some(edits) = edits {
        edits.apply(response.headers_mut());
    }
    if let Some((name, value)) = attempts {
        response.headers_mut().insert(name, value);
    }
    if let Some(r) = rate_limit {
        r.apply(response.headers_mut());
    }
    edge::hsts(response.headers_mut(), hsts);
    if reset {
        response
            .extensions_mut()
            .insert(crate::chaos::inject::ResetConnection);
    }
    response
}

/// A count as a header value: a small one from a static string, since
/// formatting one costs two allocations (the attempts header is on every
/// answer by default).
fn count_value(n: u32) -> HeaderValue {
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match DIGITS.get(n as usize) {
        Some(d) => HeaderValue::from_static(d),
        None => HeaderValue::from(n),
    }
}
