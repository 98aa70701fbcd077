//! Evidence providers: who signs the guest's report_data. The runtime does not care which.
//!
//! * [`configfs::ConfigfsTsm`]: the Linux configfs-tsm interface (TDX and SEV-SNP guests, Linux ≥ 6.7).
//! * [`sim::SimQuoteClient`]: the host's simulated quote service (a second trust anchor, never a bypass:
//!   clients accept its quotes only when their policy names the simulated root).
//! * [`FixedEvidence`]: fixed bytes, for tests of the code around the seam.

pub mod configfs;
pub mod sim;

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use chrysalis_attestation::{Platform, ReportData};
use serde::Serialize;
use thiserror::Error;

/// Evidence over one report_data, with what an offline verifier needs beside it.
///
/// Mirrors the attestation crate's RA-TLS bundle: the evidence bytes are the TDX quote or the
/// SEV-SNP report exactly as the hardware (or the sim service) produced them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EvidenceBundle {
    /// Which platform produced `evidence`.
    pub platform: Platform,
    /// The TDX quote or SEV-SNP report.
    #[serde(with = "hex_bytes")]
    pub evidence: Vec<u8>,
    /// TDX collateral (QE identity, TCB info, CRLs), when the provider had it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdx_collateral: Option<dcap_qvl::QuoteCollateralV3>,
    /// SEV-SNP certificate table (VCEK/VLEK, ASK, ARK) from the auxblob, as the kernel returned it.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_hex_bytes")]
    pub snp_certs: Option<Vec<u8>>,
}

/// Why evidence could not be obtained.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// A file of the configfs-tsm interface could not be created, written or read.
    #[error("configfs-tsm {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel's provider is not one chrysalis knows (`tdx_guest`, `sev_guest`).
    #[error("configfs-tsm provider {0:?} is neither tdx_guest nor sev_guest")]
    UnknownProvider(String),
    /// Another writer changed the report entry between our write and our read, on every attempt.
    #[error("configfs-tsm report entry kept changing under us ({attempts} attempts)")]
    Contended {
        /// How many times we tried.
        attempts: u32,
    },
    /// The kernel returned an empty outblob.
    #[error("configfs-tsm returned empty evidence")]
    Empty,
    /// The host's sim quote service could not be reached or broke the protocol.
    #[error("sim quote service at {endpoint}: {reason}")]
    Sim {
        /// Where we asked.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The host's sim quote service refused.
    #[error("sim quote service refused: {0}")]
    Refused(String),
}

/// A source of hardware (or simulated) evidence over caller-chosen report_data.
pub trait EvidenceProvider: Send + Sync + 'static {
    /// Obtains fresh evidence whose report_data field equals `report_data`.
    ///
    /// Implementations do not verify what they return; clients do.
    fn evidence(
        &self,
        report_data: ReportData,
    ) -> Pin<Box<dyn Future<Output = Result<EvidenceBundle, EvidenceError>> + Send + '_>>;

    /// A short name for logs and `/v1/attestation` (`configfs-tsm`, `sim`, `fixed`).
    fn name(&self) -> &'static str;
}

/// Returns the same evidence bytes for any report_data and records what it was asked.
///
/// For tests of the TLS lifecycle and server only: such evidence never verifies.
#[derive(Debug)]
pub struct FixedEvidence {
    bundle: EvidenceBundle,
    asked: Mutex<Vec<ReportData>>,
}

impl FixedEvidence {
    /// A provider that answers with `evidence` labelled as `platform`.
    pub fn new(platform: Platform, evidence: Vec<u8>) -> Self {
        Self {
            bundle: EvidenceBundle {
                platform,
                evidence,
                tdx_collateral: None,
                snp_certs: None,
            },
            asked: Mutex::new(Vec::new()),
        }
    }

    /// Every report_data asked for so far, in order.
    pub fn asked(&self) -> Vec<ReportData> {
        self.asked.lock().expect("poisoned").clone()
    }
}

impl EvidenceProvider for FixedEvidence {
    fn evidence(
        &self,
        report_data: ReportData,
    ) -> Pin<Box<dyn Future<Output = Result<EvidenceBundle, EvidenceError>> + Send + '_>> {
        self.asked.lock().expect("poisoned").push(report_data);
        let b = self.bundle.clone();
        Box::pin(async move { Ok(b) })
    }

    fn name(&self) -> &'static str {
        "fixed"
    }
}

mod hex_bytes {
    use serde::Serializer;
    pub(super) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
}

mod opt_hex_bytes {
    use serde::Serializer;
    pub(super) fn serialize<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
}
