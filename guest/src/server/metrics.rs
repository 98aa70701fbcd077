//! The counters and their two public views: `/healthz` (JSON) and `/metrics` (Prometheus text).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use super::state::AppState;

/// Counters, visible at `/healthz` (JSON) and `/metrics` (Prometheus text).
///
/// Both endpoints answer anyone who reaches the port, the host included, so they carry only
/// request counts and outcomes the host already sees on the wire (a connection per request, when
/// it ends). Nothing derived from content is counted: a token counter read before and after one
/// connection would give that request's exact prompt and completion sizes. The client that made a
/// request sees its own usage in the response and the receipt.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Generations completed and answered.
    pub served: AtomicU64,
    /// Requests refused with 429.
    pub rejected_busy: AtomicU64,
    /// Generations cancelled because the client went away.
    pub cancelled: AtomicU64,
    /// Generations stopped at the request deadline.
    pub timeouts: AtomicU64,
    /// Generations that failed in the engine.
    pub engine_errors: AtomicU64,
    /// Cancelled generations whose engine did not stop within the grace period.
    pub stuck: AtomicU64,
}

impl AppState {
    pub(super) fn health(&self) -> Value {
        let m = &self.metrics;
        let unavailable = self.engine.unavailable();
        json!({
            "status": if unavailable.is_some() { "degraded" } else { "ok" },
            "engine_error": unavailable,
            "model": self.model.id,
            "capacity": self.server.max_concurrency,
            "in_flight": self.in_flight(),
            "served": m.served.load(Ordering::Relaxed),
            "rejected_busy": m.rejected_busy.load(Ordering::Relaxed),
            "cancelled": m.cancelled.load(Ordering::Relaxed),
            "timeouts": m.timeouts.load(Ordering::Relaxed),
            "engine_errors": m.engine_errors.load(Ordering::Relaxed),
            "stuck": m.stuck.load(Ordering::Relaxed),
        })
    }

    pub(super) fn prometheus(&self) -> String {
        let h = self.health();
        let mut out = String::new();
        for k in [
            "capacity",
            "in_flight",
            "served",
            "rejected_busy",
            "cancelled",
            "timeouts",
            "engine_errors",
            "stuck",
        ] {
            out.push_str(&format!("chrysalis_guest_{k} {}\n", h[k]));
        }
        out
    }
}
