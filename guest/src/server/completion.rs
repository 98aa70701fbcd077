//! The completion endpoints: body, validation, admission, generation, then either the SSE stream
//! or one JSON answer, each with its signed receipt.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::read_body;
use super::routes::{Body, error_response, full};
use super::slot::{Active, Next, admit, busy, deadline_error, engine_failure};
use super::state::AppState;
use super::stream::stream_response;
use crate::api::{self, ApiError, Endpoint, Responder};
use crate::engine::{Chunk, EngineError, EngineEvent, Usage};
use crate::receipt::{self, Exchange, RECEIPT_HEADER};
use chrysalis_attestation::Sha256;

/// Seconds since the Unix epoch, for `created` fields.
pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `POST /v1/chat/completions` and `POST /v1/completions`.
pub(super) async fn completion(
    state: Arc<AppState>,
    req: Request<Incoming>,
    endpoint: Endpoint,
) -> Response<Body> {
    let deadline = Instant::now() + state.server.request_timeout();
    let te_trailers = req.headers().get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    let content_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok());
    let body = match read_body(&state, req.into_body(), content_length, deadline).await {
        Ok(b) => b,
        Err(e) => {
            let mut r = error_response(&e);
            if e.status == StatusCode::REQUEST_TIMEOUT {
                state.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            // The rest of the body is not read: the connection cannot carry another request.
            if matches!(
                e.status,
                StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
            ) {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return r;
        }
    };
    let mut parsed = match api::parse(endpoint, &body, &state.limits()) {
        Ok(p) => p,
        Err(e) => return error_response(&e),
    };
    let Some(permit) = admit(&state) else {
        return busy(&state);
    };
    let id = state.new_id(endpoint);
    parsed.generate.request_id = id.clone();
    let logprobs = parsed.generate.logprobs.is_some();
    let generation = match state
        .engine
        .generate(parsed.generate, state.server.stream_buffer)
    {
        Ok(g) => g,
        Err(EngineError::Unavailable(m)) | Err(EngineError::Start(m)) => {
            return error_response(&ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "engine_unavailable",
                format!("engine unavailable: {m}"),
            ));
        }
        Err(EngineError::Generation(m)) => return error_response(&engine_failure(&state, m)),
    };
    let active = Active::new(state.clone(), generation, permit, deadline);
    let responder = Responder {
        endpoint,
        id,
        created: now_unix(),
        model: state.model.id.clone(),
        logprobs,
    };
    let request_sha256 = Sha256::digest(&body);
    if parsed.stream {
        stream_response(
            active,
            responder,
            request_sha256,
            parsed.include_usage,
            te_trailers,
        )
        .await
    } else {
        complete_response(active, responder, request_sha256).await
    }
}

/// The non-streaming answer: the whole text once the engine has finished, with the receipt in a
/// header.
async fn complete_response(
    mut active: Active,
    responder: Responder,
    request_sha256: Sha256,
) -> Response<Body> {
    let state = active.state.clone();
    let mut out = Chunk::default();
    loop {
        match active.next_event().await {
            Next::Event(EngineEvent::Chunk(c)) => {
                out.text.push_str(&c.text);
                out.tool_calls.extend(c.tool_calls);
                out.logprobs.extend(c.logprobs);
                if let Some(reason) = c.finish_reason {
                    let usage = c.usage.unwrap_or_default();
                    let v = responder.complete(&out, &reason, &usage);
                    let bytes = serde_json::to_vec(&v).unwrap_or_default();
                    active.completed();
                    let receipt =
                        make_receipt(&state, request_sha256, Sha256::digest(&bytes), false, usage);
                    let mut r = full(StatusCode::OK, "application/json", bytes);
                    match receipt.and_then(|s| HeaderValue::from_str(&s).ok()) {
                        Some(h) => {
                            r.headers_mut().insert(RECEIPT_HEADER, h);
                        }
                        None => {
                            return error_response(&ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "server_error",
                                "receipt_error",
                                "could not sign the receipt",
                            ));
                        }
                    }
                    return r;
                }
            }
            Next::Event(EngineEvent::Error(m)) => {
                active.aborted = true;
                return error_response(&engine_failure(&state, m));
            }
            Next::EngineDone => {
                active.aborted = true;
                return error_response(&engine_failure(
                    &state,
                    "the engine ended the generation without a finish reason".into(),
                ));
            }
            Next::Deadline => {
                active.next_deadline_error();
                return error_response(&deadline_error(&state));
            }
        }
    }
}

/// Counts the request as served and signs its receipt; `None` (logged) if signing failed.
pub(super) fn make_receipt(
    state: &AppState,
    request_sha256: Sha256,
    response_sha256: Sha256,
    stream: bool,
    usage: Usage,
) -> Option<String> {
    state.metrics.served.fetch_add(1, Ordering::Relaxed);
    let ex = Exchange {
        request_sha256,
        response_sha256,
        stream,
        model_id: &state.model.id,
        model_root_hash: state.model.root_hash,
        usage,
        created: now_unix(),
    };
    match receipt::issue(&state.certs, &ex) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "receipt signing failed");
            None
        }
    }
}
