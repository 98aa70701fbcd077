//! Evidence providers: who signs the guest's report_data. The runtime does not care which.
//!
//! * [`configfs::ConfigfsTsm`]: the Linux configfs-tsm interface (TDX and SEV-SNP guests, Linux ≥ 6.7).
//! * [`sim::SimQuoteClient`]: the host's simulated quote service (a second trust anchor, never a bypass:
//!   clients accept its quotes only when their policy names the simulated root).
//! * [`collateral::HostCollateral`]: not a provider; the host's collateral service, which the
//!   configfs-tsm provider asks for the TDX collateral it embeds next to a hardware quote.
//! * `LocalSim`: signs simulated quotes in this process, for tests only (see its warning); compiled
//!   only into tests and with the `test-util` feature.
//!
//! Every provider returns the attestation crate's [`Evidence`], parsed; the TLS layer puts it in
//! the certificate (`chrysalis_attestation::ratls`).

pub mod collateral;
pub mod configfs;
pub mod gpu;
pub mod sim;

use std::future::Future;
use std::pin::Pin;
#[cfg(any(test, feature = "test-util"))]
use std::sync::Mutex;

use chrysalis_attestation::ReportData;
#[cfg(any(test, feature = "test-util"))]
use chrysalis_attestation::TdxMeasurements;
pub use chrysalis_attestation::bundle::Evidence;
#[cfg(any(test, feature = "test-util"))]
use chrysalis_attestation::sim::{SimPki, SimTdReport};
use thiserror::Error;

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
    /// The host's collateral service could not be reached, refused, or served collateral for
    /// another platform.
    #[error("collateral service at {endpoint}: {reason}")]
    Collateral {
        /// Where we asked.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The evidence or its accompanying data does not decode.
    #[error("{0}")]
    Malformed(String),
    /// The quote or report the TEE returned does not parse.
    #[error(transparent)]
    Unparseable(#[from] chrysalis_attestation::EvidenceError),
    /// The host's sim quote service refused.
    #[error("sim quote service refused: {0}")]
    Refused(String),
    /// GPU evidence could not be collected, or the GPU is not in confidential-computing
    /// production mode (the message names the check).
    #[error("GPU: {0}")]
    Gpu(String),
}

/// A source of hardware (or simulated) evidence over caller-chosen report_data.
pub trait EvidenceProvider: Send + Sync + 'static {
    /// Obtains fresh evidence whose report_data field equals `report_data`.
    ///
    /// Implementations do not verify what they return; clients do.
    fn evidence(
        &self,
        report_data: ReportData,
    ) -> Pin<Box<dyn Future<Output = Result<Evidence, EvidenceError>> + Send + '_>>;

    /// A short name for logs and `/v1/attestation` (`configfs-tsm`, `sim`, `fixed`).
    fn name(&self) -> &'static str;
}

/// Signs simulated TDX quotes in this process with a [`SimPki`], over whatever report_data it is
/// asked, with fixed measurements, and records what it was asked.
///
/// For tests and benchmarks only: a guest that signs its own quotes proves nothing about what it
/// runs (in a deployment the *host* plays the hardware and signs over what it launched). Clients
/// accept these quotes only if their policy names the simulated root. Compiled only into this
/// crate's tests and with the `test-util` feature (which dev-dependencies enable).
#[cfg(any(test, feature = "test-util"))]
pub struct LocalSim {
    pki: SimPki,
    measurements: TdxMeasurements,
    collateral_from: u64,
    asked: Mutex<Vec<ReportData>>,
}

#[cfg(any(test, feature = "test-util"))]
impl std::fmt::Debug for LocalSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSim").finish_non_exhaustive()
    }
}

#[cfg(any(test, feature = "test-util"))]
impl LocalSim {
    /// Quotes with `measurements`, carrying collateral valid for 30 days from `collateral_from`
    /// (unix seconds).
    pub fn new(pki: SimPki, measurements: TdxMeasurements, collateral_from: u64) -> Self {
        Self {
            pki,
            measurements,
            collateral_from,
            asked: Mutex::new(Vec::new()),
        }
    }

    /// Every report_data asked for so far, in order.
    pub fn asked(&self) -> Vec<ReportData> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(any(test, feature = "test-util"))]
impl EvidenceProvider for LocalSim {
    fn evidence(
        &self,
        report_data: ReportData,
    ) -> Pin<Box<dyn Future<Output = Result<Evidence, EvidenceError>> + Send + '_>> {
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(report_data);
        let quote = self
            .pki
            .quote(&SimTdReport::new(self.measurements.clone(), report_data));
        let collateral = self
            .pki
            .collateral(self.collateral_from, 30 * 86_400)
            .map_err(|e| EvidenceError::Sim {
                endpoint: "in-process".into(),
                reason: e.to_string(),
            });
        Box::pin(async move { Ok(Evidence::tdx(quote, Some(collateral?))?) })
    }

    fn name(&self) -> &'static str {
        "local-sim"
    }
}
