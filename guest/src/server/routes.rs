//! Routing, and the response builders every handler uses.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::completion::completion;
use super::state::AppState;
use crate::api::{ApiError, Endpoint};

/// The response body type.
pub type Body = BoxBody<Bytes, Infallible>;

pub(super) fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

pub(super) fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.status, &e.body())
}

/// Routes one request. Never fails: every problem becomes an OpenAI-style error response.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => json_response(StatusCode::OK, &state.health()),
        (Method::GET, "/metrics") => full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.prometheus(),
        ),
        (Method::GET, "/v1/models") => {
            let data: Vec<Value> = std::iter::once(state.model.id.clone())
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "chrysalis"}))
                .collect();
            json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
        }
        (Method::GET, "/v1/attestation") => json_response(StatusCode::OK, &state.attestation()),
        (Method::POST, "/v1/chat/completions") => completion(state, req, Endpoint::Chat).await,
        (Method::POST, "/v1/completions") => completion(state, req, Endpoint::Completion).await,
        (
            _,
            "/healthz"
            | "/metrics"
            | "/v1/models"
            | "/v1/attestation"
            | "/v1/chat/completions"
            | "/v1/completions",
        ) => error_response(&ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method()),
        )),
        _ => error_response(&ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("no such endpoint: {path}"),
        )),
    };
    Ok(resp)
}
