//! # chrysalis-attestation
//!
//! The one crate that decides whether a chrysalis node is trusted. It is a pure library:
//! no sockets, no clock, no global trust store. Time, trust roots and policy are always
//! passed in, so recorded evidence stays verifiable years later and tests are deterministic.
//!
//! ```text
//!   evidence bytes ──parse──▶ TdxQuote / SnpReport          (evidence)
//!         │
//!         └──verify(bundle, anchors, now)──▶ Verdict          (verify: dcap-qvl, sev)
//!                                               │
//!                      Policy::evaluate(verdict)─▶ VerifiedEvidence   (policy; proof type)
//! ```
//!
//! * [`evidence`]: platforms, 48/64-byte register newtypes, parsed quotes and reports.
//! * [`verify`]: cryptographic verification into one structured [`Verdict`].
//! * [`policy`]: what a client accepts (TOML), and the only way to obtain a
//!   [`VerifiedEvidence`], the proof type that releases keys, requests and prompts.
//! * [`ratls`]: certificates that carry evidence bound to their own key, and rustls verifiers.
//! * [`receipt`]: usage receipts signed with the attested key, and their verification.
//! * [`sim`]: a deterministic simulated Intel PKI that signs real-format TDX quotes. It is a
//!   second trust anchor that a policy must name, never a bypass.
//! * [`measure`]: precomputation of TDX and SNP measurements, and TCG event-log replay.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod error;
pub mod evidence;
pub mod hostcall;
pub mod measure;
pub mod policy;
pub mod ratls;
pub mod receipt;
pub mod sim;
pub mod verify;

#[cfg(test)]
mod testutil;

pub use bundle::EvidenceBundle;
pub use error::EvidenceError;
pub use evidence::{
    ChipId, Flags64, HostData, InputEncoding, Measurement, Measurements, Platform, ReportData,
    Sha256, SnpMeasurements, SnpReport, SnpTcb, TdxMeasurements, TdxQuote,
};
pub use policy::{Policy, PolicyError, RejectReason, Rejection, VerifiedEvidence};
pub use ratls::{AttestedKey, RaTlsClientVerifier, RaTlsServerVerifier, VerifiedPeer};
pub use verify::{TcbStatus, TrustAnchors, TrustRoot, Verdict, VerifyError};
