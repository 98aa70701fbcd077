//! The SSE response: a [`StreamJob`] pumps engine events to the client through a bounded channel
//! and ends with `[DONE]` and, when the client asked for trailers, the receipt.
//!
//! Every frame goes to the client through [`StreamJob::send`]; a client that stops reading fills
//! the channel and blocks the pump there, for at most `write_stall_secs` (and never past the
//! request deadline): then the generation is cancelled and its slot freed, whatever the client
//! keeps sending.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use chrysalis_attestation::Sha256;
use http::{HeaderValue, Response, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use super::completion::make_receipt;
use super::routes::{Body, error_response};
use super::slot::{Active, Next, deadline_error, engine_failure};
use crate::api::{ApiError, Responder, sse_event};
use crate::engine::{Chunk, EngineEvent};
use crate::receipt::{RECEIPT_HEADER, StreamHasher};

/// A response body fed by a channel: dropping it (the client went away) closes the channel.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn sse(payload: &[u8]) -> Frame<Bytes> {
    Frame::data(Bytes::from(sse_event(payload)))
}

/// Starts the SSE response for `active`. Waits for the engine's first event before committing to
/// 200, so that an engine failing at once is a 500 (and a deadline passed by then a 504).
pub(super) async fn stream_response(
    mut active: Active,
    responder: Responder,
    request_sha256: Sha256,
    include_usage: bool,
    te_trailers: bool,
) -> Response<Body> {
    let state = active.state.clone();
    let first = match active.next_event().await {
        Next::Event(EngineEvent::Chunk(c)) => c,
        Next::Event(EngineEvent::Error(m)) => {
            active.aborted = true;
            return error_response(&engine_failure(&state, m));
        }
        Next::EngineDone => {
            active.aborted = true;
            return error_response(&engine_failure(
                &state,
                "the engine ended the generation without output".into(),
            ));
        }
        Next::Deadline => {
            active.next_deadline_error();
            return error_response(&deadline_error(&state));
        }
    };
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(state.server.stream_buffer);
    let job = StreamJob {
        responder: responder.clone(),
        tx,
        write_stall: Duration::from_secs(state.server.write_stall_secs),
        request_sha256,
        include_usage,
        te_trailers,
    };
    tokio::spawn(job.run(active, first));
    let mut r = Response::new(ChannelBody(rx).boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&responder.id) {
        h.insert("x-request-id", v);
    }
    if te_trailers {
        h.insert(header::TRAILER, HeaderValue::from_static(RECEIPT_HEADER));
    }
    r
}

/// Why a frame did not reach the client.
enum NotSent {
    /// The client went away (the response body was dropped).
    Gone,
    /// The client took nothing for the write-stall time, or the request deadline passed.
    Stalled,
}

/// Where one streamed generation goes and how it is worded: the channel to the response body, the
/// chunk wording, what the client asked for, and what the receipt covers. The generation itself
/// (its slot and deadline) is the [`Active`] that [`StreamJob::run`] drives.
struct StreamJob {
    responder: Responder,
    /// Frames to the response body ([`ChannelBody`]); closed when the client goes away.
    tx: mpsc::Sender<Frame<Bytes>>,
    /// How long one frame may wait for the client to take it.
    write_stall: Duration,
    request_sha256: Sha256,
    /// The client asked for a final usage chunk (`stream_options.include_usage`).
    include_usage: bool,
    /// The client sent `TE: trailers`: the receipt goes in a trailer.
    te_trailers: bool,
}

impl StreamJob {
    /// Sends one frame, waiting while the channel is full (the client reads slower than the
    /// engine writes), but not past the write-stall time or `deadline`.
    async fn send(&self, frame: Frame<Bytes>, deadline: Instant) -> Result<(), NotSent> {
        let until = (Instant::now() + self.write_stall).min(deadline);
        match tokio::time::timeout_at(until, self.tx.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(NotSent::Gone),
            Err(_) => Err(NotSent::Stalled),
        }
    }

    /// Sends an error as the stream's last event (the deadline may have passed: only the stall
    /// time bounds it).
    async fn send_error(&self, e: &ApiError) {
        let frame = sse(&serde_json::to_vec(&e.body()).unwrap_or_default());
        let _ = self.send(frame, Instant::now() + self.write_stall).await;
    }

    /// Sends `frame` for `active`; false when the stream must end (the client is gone, or stalled:
    /// then the generation counts as timed out).
    async fn forward(&self, active: &mut Active, frame: Frame<Bytes>) -> bool {
        match self.send(frame, active.deadline()).await {
            Ok(()) => true,
            Err(NotSent::Gone) => false,
            Err(NotSent::Stalled) => {
                tracing::info!(
                    id = %self.responder.id,
                    "the client took no chunk in time; cancelling the generation"
                );
                active.stalled();
                false
            }
        }
    }

    /// Pumps the events of `active`, starting with `first`, until the generation finishes, fails,
    /// passes its deadline, or the client goes away (then dropping `active` cancels it).
    async fn run(self, mut active: Active, first: Chunk) {
        let state = active.state.clone();
        let mut hasher = StreamHasher::default();
        let mut is_first = true;
        let mut chunk = Some(first);
        loop {
            let c = match chunk.take() {
                Some(c) => c,
                None => {
                    let ev = tokio::select! {
                        biased;
                        _ = self.tx.closed() => return, // client gone: `active` drops → cancelled
                        ev = active.next_event() => ev,
                    };
                    match ev {
                        Next::Event(EngineEvent::Chunk(c)) => c,
                        Next::Event(EngineEvent::Error(m)) => {
                            active.aborted = true;
                            self.send_error(&engine_failure(&state, m)).await;
                            return;
                        }
                        Next::EngineDone => {
                            active.aborted = true;
                            let e = engine_failure(
                                &state,
                                "the engine ended the generation without a finish reason".into(),
                            );
                            self.send_error(&e).await;
                            return;
                        }
                        Next::Deadline => {
                            active.next_deadline_error();
                            self.send_error(&deadline_error(&state)).await;
                            return;
                        }
                    }
                }
            };
            let responder = &self.responder;
            let include_usage = self.include_usage;
            let mut payloads = Vec::with_capacity(3);
            let has_output =
                !c.text.is_empty() || !c.tool_calls.is_empty() || !c.logprobs.is_empty();
            if has_output || is_first || c.finish_reason.is_none() {
                let v = responder.chunk(&c, None, is_first, include_usage);
                payloads.push(serde_json::to_vec(&v).unwrap_or_default());
                is_first = false;
            }
            let finished = c.finish_reason.clone();
            if let Some(reason) = &finished {
                payloads.push(
                    serde_json::to_vec(&responder.chunk(
                        &Chunk::default(),
                        Some(reason),
                        false,
                        include_usage,
                    ))
                    .unwrap_or_default(),
                );
                let usage = c.usage.unwrap_or_default();
                if include_usage {
                    payloads.push(
                        serde_json::to_vec(&responder.usage_chunk(&usage)).unwrap_or_default(),
                    );
                }
                payloads.push(b"[DONE]".to_vec());
                for p in &payloads {
                    hasher.data(p);
                    if !self.forward(&mut active, sse(p)).await {
                        return;
                    }
                }
                let deadline = active.deadline();
                active.completed();
                let receipt =
                    make_receipt(&state, self.request_sha256, hasher.finish(), true, usage);
                if self.te_trailers
                    && let Some(h) = receipt.and_then(|s| HeaderValue::from_str(&s).ok())
                {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert(RECEIPT_HEADER, h);
                    let _ = self.send(Frame::trailers(trailers), deadline).await;
                }
                return;
            }
            for p in &payloads {
                hasher.data(p);
                if !self.forward(&mut active, sse(p)).await {
                    return;
                }
            }
        }
    }
}
