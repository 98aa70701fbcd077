//! Reading a request body within `max_body_bytes`: over the limit is 413, after draining what the
//! client is still sending.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::state::AppState;
use crate::api::ApiError;

/// How much of an oversized body is read (and dropped) before answering 413, so that a client
/// that is still sending sees the answer rather than a reset.
const DRAIN_LIMIT: usize = 64 << 20;

pub(super) async fn read_body(
    state: &AppState,
    body: Incoming,
    content_length: Option<u64>,
) -> Result<Bytes, ApiError> {
    let max = state.server.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("request body exceeds the {max}-byte limit"),
        )
    };
    if content_length.is_some_and(|n| n > max as u64) {
        drain(body).await;
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "bad_body",
            format!("reading the request body: {e}"),
        )),
    }
}

async fn drain(body: Incoming) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        Limited::new(body, DRAIN_LIMIT).collect(),
    )
    .await;
}
