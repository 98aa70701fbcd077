//! The HTTPS server: listeners (vsock, TCP), TLS, routing, limits, generation lifecycle, metrics.
//!
//! Every generation holds one of `max_concurrency` slots from admission until the engine has
//! finished it or really stopped working on it, not merely until the response ends: a client
//! that disconnects cancels its generation, and the slot returns once the engine confirms (or
//! after `cancel_grace_secs`). Over capacity a request is refused at once with 429 and Retry-After;
//! nothing queues.
//!
//! One file per concern:
//!
//! * `state`: [`AppState`], what every handler shares (configuration, engine, certificates,
//!   slots, counters, request ids).
//! * `metrics`: [`Metrics`] and the `/healthz` and `/metrics` views of them.
//! * `attestation`: the `/v1/attestation` view of the current certificate and its evidence.
//! * `routes`: [`handle`], the router, and the response builders every handler uses.
//! * `body`: reading a request body within `max_body_bytes` (413 otherwise).
//! * `slot`: a generation's lifecycle: admission (429 over capacity), its request deadline, and
//!   the slot's release once the engine has stopped, on completion, cancellation or failure.
//! * `completion`: the completion endpoints: validation, generation, the non-streaming answer and
//!   the receipt.
//! * `stream`: the SSE response: a `StreamJob` pumps engine events to the client.
//! * `listen`: [`serve`], the accept loop, TLS handshake and HTTP/1 connection settings.

mod attestation;
mod body;
mod completion;
mod listen;
mod metrics;
mod routes;
mod slot;
mod state;
mod stream;

pub use listen::{accept_tcp, serve};
pub use metrics::Metrics;
pub use routes::{Body, handle};
pub use state::AppState;

#[cfg(test)]
mod tests;
