//! # chrysalis-attestation
//!
//! The one crate that decides whether a chrysalis node is trusted. It is a pure library:
//! no sockets, no clock, no global trust store. Time, trust roots and policy are always
//! passed in, so recorded evidence stays verifiable years later and tests are deterministic.
//!
//! ```text
//!  guest (inside the CVM)                          client
//!  ──────────────────────                          ──────
//!  AttestedKey::generate()                         Policy::from_toml(..)
//!    └ report_data() ─▶ TEE (configfs-tsm, sim)      │
//!                Evidence ◀─┘                        ▼
//!  ratls::issue_certificate ──── TLS 1.3 ───▶ RaTlsServerVerifier (rustls)
//!                                              └ ratls::verify_certificate
//!                                                  ├ verify::verify(evidence, anchors, now)
//!                                                  │      ─▶ CryptoVerified (sealed Verdict)
//!                                                  │      (dcap-qvl for TDX, sev for SNP)
//!                                                  └ Policy::evaluate(verified, H(tag ‖ SPKI))
//!                                                         key binding + rules ─▶ VerifiedEvidence
//!  receipt::sign(key, body) ───── response ──▶ receipt::verify(jws, peer.spki_der())
//! ```
//!
//! ## Modules
//! * [`evidence`]: platforms, 48/64-byte register newtypes, parsed TDX quotes and SNP reports.
//!   [`TdxRegisters`] (MRTD, RTMR0-3) is the one TDX register type: a quote's
//!   [`TdxMeasurements`], the calculators' `ExpectedTdx`, a manifest's `TdxExpected` and the
//!   host's sim /status hold it, and `policy::TdxPin::from_registers` pins it.
//! * [`bundle`]: [`Evidence`], an enum per platform (quote and collateral, or report, VCEK and
//!   chain), parsed once from bytes or from its DER wire form, the evidence bundle.
//! * [`verify`]: cryptographic verification into one structured [`Verdict`], sealed as
//!   [`CryptoVerified`] so that only verification produces what the policy accepts; no judgement.
//! * [`policy`]: what a client accepts (TOML), and the only constructor of
//!   [`VerifiedEvidence`], the proof type that code releasing prompts or keys requires.
//! * [`snp_policy`]: the SEV-SNP rules of a policy: the TCB floor per AMD product (a dated
//!   table from AMD's bulletins), the guest-policy bits (MIGRATE_MA, DEBUG) and VMPL 0.
//! * [`ratls`]: certificates carrying evidence bound to their own key (RFC 9999 `id-pe-cmw`),
//!   rustls server and client verifiers with a verdict cache. Wire format: docs/ra-tls.md.
//! * [`receipt`]: usage receipts (JWS ES256) signed with the attested key. Format: docs/receipts.md.
//! * [`collateral`]: which platform a TDX quote needs collateral for, a verifier's own
//!   collateral store, and the freshness floor of Intel's TCB evaluation data (with its table).
//! * `pcs` (feature `pcs`): a PCS API v4 client that fetches TDX collateral from a PCCS or
//!   Intel's PCS, for the host's collateral cache and the client (not linked by the guest).
//! * [`gpu`]: NVIDIA H100 evidence (SPDM measurement report, device chain, signed RIMs),
//!   verified offline with the nonce, roots, policy and time passed in. What it checks: docs/gpu.md.
//! * [`hostcall`]: the guest→host service protocol (sim quotes, collateral), framed once here.
//! * [`sim`]: a deterministic simulated Intel PKI that signs real-format TDX quotes. It is a
//!   second trust anchor that a policy must name (`dangerous_simulated_intel_roots`), never a
//!   bypass: sim quotes go through the same dcap-qvl path as hardware quotes.
//! * [`measure`]: expected TDX and SNP measurements from the artifacts (per image and VM shape:
//!   [`measure::image`]), CCEL replay, and the event-by-event explainer ([`measure::explain`]).
//! * [`manifest`]: the image's manifest.json (artifacts, verity, command line, expected
//!   measurements), read by hosts and clients; [`bootargs`]: the measured kernel command line.
//!
//! ## Features
//! The defaults are all three of:
//! * `full`: the verifier side, everything above but `sim` and the key-holding items below. It
//!   holds no private key. Without it the crate is [`bootargs`], [`evidence`]'s value types and
//!   [`error`]: what the static guest init links (it parses the measured command line and compiles
//!   no TLS, X.509 or quote verification).
//! * `signing`: the code that holds a private key: `ratls::AttestedKey`,
//!   `ratls::issue_certificate`, `ratls::server_config` and `receipt::sign`. The guest links it;
//!   the host, which must never hold a key, cannot (its dependency leaves the feature off, and a
//!   tidy test checks that).
//! * `dangerous-sim`: the simulated TEE ([`sim`]), whose PKIs' private keys derive from a public
//!   seed. The host signs sim quotes with it in the sim profiles; the client derives the sim roots
//!   a development policy names.
//! * `pcs` (not default) adds the PCS client.
//!
//! ## Defaults are strict
//! A [`Policy`] trusts vendor roots only, accepts TCB status `UpToDate` only, refuses debug
//! guests and accepts no measurement unless a pinned set matches. Everything that weakens this
//! is spelled `dangerous_…`.
//!
//! ## Example: an attested certificate, end to end, with the simulated TEE
//! ```
//! # #[cfg(all(feature = "signing", feature = "dangerous-sim"))] fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use chrysalis_attestation::policy::TdxPin;
//! use chrysalis_attestation::ratls::{self, AttestedKey};
//! use chrysalis_attestation::sim::{DEFAULT_SEED, SimPki, SimTdReport, td_measurements};
//! use chrysalis_attestation::{Evidence, Measurement, Policy};
//!
//! let now = 1_800_000_000;
//! // Inside the guest: a key, and evidence over its binding (here from the simulated TEE).
//! let key = AttestedKey::generate()?;
//! let pki = SimPki::from_seed(DEFAULT_SEED);
//! let m = td_measurements(Measurement([1; 48]), [Measurement::ZERO; 4]);
//! let quote = pki.quote(&SimTdReport::new(m, key.report_data()));
//! let evidence = Evidence::tdx(quote, Some(pki.collateral(now - 60, 86_400)?))?;
//! let cert = ratls::issue_certificate(&key, &evidence, now - 60, 3600)?;
//!
//! // At the client: a policy that pins the measurement and names the simulated root.
//! let mut policy = Policy::pinned(vec![TdxPin::new(Measurement([1; 48]))], vec![]);
//! let peer = ratls::verify_certificate(&cert, &policy, None, now);
//! assert!(peer.unwrap_err().to_string().contains("untrusted root"));
//! policy.trust.dangerous_simulated_intel_roots.push(pki.root_sha256());
//! let peer = ratls::verify_certificate(&cert, &policy, None, now)?;
//! assert_eq!(peer.spki_der(), key.spki_der());
//! # Ok(()) }
//! # #[cfg(not(all(feature = "signing", feature = "dangerous-sim")))] fn main() {}
//! ```
#![forbid(unsafe_code)]

pub mod bootargs;
#[cfg(feature = "full")]
pub mod bundle;
#[cfg(feature = "full")]
pub mod collateral;
pub mod error;
pub mod evidence;
#[cfg(feature = "full")]
pub mod gpu;
#[cfg(feature = "full")]
pub mod hostcall;
#[cfg(feature = "full")]
pub mod manifest;
#[cfg(feature = "full")]
pub mod measure;
#[cfg(feature = "pcs")]
pub mod pcs;
#[cfg(feature = "full")]
pub mod policy;
#[cfg(feature = "full")]
pub mod ratls;
#[cfg(feature = "full")]
pub mod receipt;
#[cfg(feature = "dangerous-sim")]
pub mod sim;
#[cfg(feature = "full")]
pub mod snp_policy;
pub mod tdx_attributes;
#[cfg(feature = "full")]
pub mod verify;

#[cfg(feature = "full")]
pub use bundle::Evidence;
pub use error::{ErrorChain, EvidenceError, ForeignError};
pub use evidence::{
    ChipId, Flags64, HostData, InputEncoding, Measurement, Measurements, Platform, ReportData,
    Sha256, SnpMeasurements, SnpTcb, TdxMeasurements, TdxRegisters,
};
#[cfg(feature = "full")]
pub use evidence::{SnpReport, TdxQuote};
#[cfg(feature = "full")]
pub use policy::{Appraisal, Policy, PolicyError, RejectReason, Rejection, VerifiedEvidence};
#[cfg(feature = "signing")]
pub use ratls::AttestedKey;
#[cfg(feature = "full")]
pub use ratls::{RaTlsClientVerifier, RaTlsServerVerifier, VerifiedPeer};
pub use tdx_attributes::{TdAttributes, Xfam};
#[cfg(feature = "full")]
pub use verify::{
    CryptoVerified, FoundRoot, SnpVerifyError, TcbStatus, TdxVerifyError, TrustAnchors, TrustRoot,
    Verdict, VerifyError,
};
