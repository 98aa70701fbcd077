//! A generation's lifecycle: admission to one of `max_concurrency` slots (429 over capacity), the
//! request deadline it runs under, and the slot's release once the engine has stopped, whether
//! the generation completed, was cancelled by the client, or failed.
//!
//! Everything that bounds how long a request may hold a slot belongs here: [`Active`] carries the
//! request's deadline and every wait for the engine goes through [`Active::next_event`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::routes::{Body, error_response};
use super::state::AppState;
use crate::api::ApiError;
use crate::engine::{EngineEvent, Generation};

/// Takes a free generation slot, if there is one. Nothing queues: without one the request is
/// answered with [`busy`] at once.
pub(super) fn admit(state: &AppState) -> Option<OwnedSemaphorePermit> {
    state.slots.clone().try_acquire_owned().ok()
}

/// Counts a refusal and answers 429 with Retry-After.
pub(super) fn busy(state: &AppState) -> Response<Body> {
    state.metrics.rejected_busy.fetch_add(1, Ordering::Relaxed);
    let mut r = error_response(&ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "server_busy",
        format!(
            "all {} generation slots are busy; retry later",
            state.server.max_concurrency
        ),
    ));
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(state.server.retry_after_secs),
    );
    r
}

/// A generation and its slot. Dropped without [`Active::completed`], it counts as a client
/// cancellation and releases the slot only once the engine has stopped.
pub(super) struct Active {
    pub(super) state: Arc<AppState>,
    generation: Option<Generation>,
    permit: Option<OwnedSemaphorePermit>,
    /// When the request must have been answered; waits for the engine end there.
    deadline: Instant,
    /// Set when the end is not a client cancellation (deadline, engine error).
    pub(super) aborted: bool,
}

impl Active {
    /// A started generation holding `permit`, to be answered by `deadline`.
    pub(super) fn new(
        state: Arc<AppState>,
        generation: Generation,
        permit: OwnedSemaphorePermit,
        deadline: Instant,
    ) -> Self {
        Self {
            state,
            generation: Some(generation),
            permit: Some(permit),
            deadline,
            aborted: false,
        }
    }

    /// The generation ended normally: the engine reported its finish, so the slot is free at
    /// once (a client sending its next request right after `[DONE]` must not see 429); the
    /// engine's last bookkeeping is drained in the background.
    pub(super) fn completed(mut self) {
        if let Some(mut g) = self.generation.take() {
            g.disarm();
            drop(self.permit.take());
            let grace = Duration::from_secs(self.state.server.cancel_grace_secs);
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(grace, async { while g.next().await.is_some() {} }).await;
            });
        }
    }

    /// The deadline passed: counted as a timeout, not as a client cancellation.
    pub(super) fn next_deadline_error(&mut self) {
        self.aborted = true;
        self.state.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// When the request must have been answered.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The client stopped taking the stream's chunks: counted as a timeout, not a cancellation.
    pub(super) fn stalled(&mut self) {
        self.aborted = true;
        self.state.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// The engine's next event, or [`Next::Deadline`] once the request's deadline has passed.
    pub(super) async fn next_event(&mut self) -> Next {
        let g = self.generation.as_mut().expect("live generation");
        match tokio::time::timeout_at(self.deadline, g.next()).await {
            Ok(Some(e)) => Next::Event(e),
            Ok(None) => Next::EngineDone,
            Err(_) => Next::Deadline,
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let Some(g) = self.generation.take() else {
            return;
        };
        if !self.aborted {
            self.state.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        let permit = self.permit.take();
        let state = self.state.clone();
        let grace = Duration::from_secs(state.server.cancel_grace_secs);
        let fut = async move {
            if !g.finish(grace).await {
                state.metrics.stuck.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "engine did not stop a cancelled generation within {grace:?}; releasing its slot"
                );
            }
            drop(permit);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(fut);
            }
            Err(_) => {
                tracing::error!("generation dropped outside the runtime; slot released at once")
            }
        }
    }
}

/// What waiting for the engine gave.
pub(super) enum Next {
    Event(EngineEvent),
    EngineDone,
    Deadline,
}

/// Counts an engine failure and words it as a 500.
pub(super) fn engine_failure(state: &AppState, message: String) -> ApiError {
    state.metrics.engine_errors.fetch_add(1, Ordering::Relaxed);
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "engine_error",
        message,
    )
}

/// The 504 for a request past its deadline.
pub(super) fn deadline_error(state: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "server_error",
        "deadline_exceeded",
        format!(
            "the request exceeded its {}-second deadline",
            state.server.request_timeout_secs
        ),
    )
}
