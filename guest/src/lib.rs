//! # chrysalis-guest
//!
//! The runtime that serves inference inside the confidential VM. TLS ends here: the TLS key is
//! generated in this process, bound into hardware evidence, and never leaves it.
//!
//! ```text
//!  vsock / TCP ──▶ rustls (cert carries evidence over this process's key)      tls
//!                    │
//!                  hyper ──▶ OpenAI API: validation, limits, deadlines         server, api
//!                    │                 │
//!                    │          metering + signed receipts                     receipt
//!                    ▼
//!                  Engine ──pyo3──▶ Python adapter (llama_cpp, vllm)           engine
//!
//!  EvidenceProvider: configfs-tsm (TDX/SNP), sim (host quote service)          evidence
//! ```
//!
//! * [`config`]: the measured configuration file (TOML) and its documentation.
//! * [`evidence`]: the [`evidence::EvidenceProvider`] seam and its implementations.
//! * [`tls`]: the in-process key, certificate issuance and hitless renewal.
//! * [`engine`]: the [`engine::Engine`] seam, the pyo3 bridge (feature `engine`), and a
//!   scripted in-memory engine for tests (feature `test-util`).
//! * [`api`]: OpenAI request validation, response and error bodies.
//! * [`receipt`]: usage receipts over request and response hashes, signed with the attested key.
//! * [`server`]: listeners, routing, limits and metrics.
//!
//! Everything but this page is behind the `runtime` feature: the static PID 1 (`chrysalis-init`)
//! shares this package and builds with `--no-default-features`.
#![forbid(unsafe_code)]

#[cfg(feature = "runtime")]
pub mod api;
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod engine;
#[cfg(feature = "runtime")]
pub mod evidence;
#[cfg(feature = "runtime")]
pub mod receipt;
#[cfg(feature = "runtime")]
pub mod server;
#[cfg(feature = "runtime")]
pub mod tls;
