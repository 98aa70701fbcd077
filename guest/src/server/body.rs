//! Reading a request body within `max_body_bytes` and in time: over the limit is 413, after
//! draining what the client is still sending; a body that does not arrive within
//! `body_timeout_secs` plus one second per `body_min_bytes_per_sec` bytes received (and within the
//! request deadline) is 408, so a client trickling its body cannot hold a connection.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::state::AppState;
use crate::api::ApiError;

/// How much of an oversized body is read (and dropped) before answering 413, so that a client
/// that is still sending sees the answer rather than a reset.
const DRAIN_LIMIT: usize = 64 << 20;

pub(super) async fn read_body(
    state: &AppState,
    mut body: Incoming,
    content_length: Option<u64>,
    deadline: Instant,
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
    let start = Instant::now();
    let (base, rate) = (
        state.server.body_timeout_secs,
        state.server.body_min_bytes_per_sec.max(1),
    );
    let mut buf = BytesMut::new();
    loop {
        // The allowance grows with what has arrived: a slow link still gets its body through, a
        // client sending a byte now and then does not.
        let allowed = start + Duration::from_secs(base) + per_rate(buf.len(), rate);
        let frame = match tokio::time::timeout_at(allowed.min(deadline), body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    "request_timeout",
                    format!(
                        "the request body did not arrive in time ({} of {} bytes after {:.0} s; \
                         allowed: {base} s plus 1 s per {rate} bytes, within the request deadline)",
                        buf.len(),
                        content_length.map_or_else(|| "?".to_owned(), |n| n.to_string()),
                        start.elapsed().as_secs_f64(),
                    ),
                ));
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "bad_body",
                    format!("reading the request body: {e}"),
                ));
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
}

/// The time `bytes` take at `rate` bytes per second.
fn per_rate(bytes: usize, rate: u64) -> Duration {
    Duration::from_millis((bytes as u64).saturating_mul(1000) / rate)
}

async fn drain(body: Incoming) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        Limited::new(body, DRAIN_LIMIT).collect(),
    )
    .await;
}
