//! The server's shared state: configuration, engine, certificates, slots, counters, request ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use chrysalis_attestation::Sha256;
use tokio::sync::Semaphore;

use super::metrics::Metrics;
use crate::api::{Endpoint, Limits};
use crate::config::{ModelConfig, ServerConfig};
use crate::engine::Engine;
use crate::tls::CertStore;

/// Everything a request handler needs.
pub struct AppState {
    pub(super) server: ServerConfig,
    pub(super) model: ModelConfig,
    pub(super) engine: Arc<dyn Engine>,
    pub(super) certs: Arc<CertStore>,
    pub(super) evidence_provider: &'static str,
    pub(super) slots: Arc<Semaphore>,
    pub(super) metrics: Metrics,
    next_id: AtomicU64,
    id_nonce: String,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model", &self.model.id)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Wires the server together.
    pub fn new(
        server: ServerConfig,
        model: ModelConfig,
        engine: Arc<dyn Engine>,
        certs: Arc<CertStore>,
        evidence_provider: &'static str,
    ) -> Arc<Self> {
        let nonce = Sha256::digest(
            &[
                certs.key().spki_der(),
                &SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
                    .to_le_bytes(),
            ]
            .concat(),
        );
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(server.max_concurrency)),
            server,
            model,
            engine,
            certs,
            evidence_provider,
            metrics: Metrics::default(),
            next_id: AtomicU64::new(1),
            id_nonce: nonce.to_hex()[..12].to_owned(),
        })
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Generations holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.server.max_concurrency - self.slots.available_permits()
    }

    pub(super) fn limits(&self) -> Limits {
        Limits {
            model_id: self.model.id.clone(),
            max_tokens_cap: self.server.max_tokens_cap,
            default_max_tokens: self.server.default_max_tokens,
        }
    }

    pub(super) fn new_id(&self, endpoint: Endpoint) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        format!("{prefix}-{}{n:08x}", self.id_nonce)
    }
}
