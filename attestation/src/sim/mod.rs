//! The simulated TEE: a deterministic, seeded stand-in for Intel's SGX/TDX PKI that signs TDX
//! quotes in the real v4 format, for machines without TDX (CI, every dev box); and its AMD
//! counterpart, [`SimAmdPki`], which signs SEV-SNP reports under a simulated ARK → ASK → VCEK
//! chain (see its module docs; everything below about roots holds for it as well); and
//! [`SimNvidiaPki`], which signs NVIDIA H100 measurement reports and reference manifests for
//! the GPU verifier ([`crate::gpu::verify`]) under simulated device identity and RIM roots.
//!
//! It is **not a bypass**. Its quotes and collateral go through exactly the production verifier,
//! `dcap_qvl::verify::QuoteVerifier::new(root_der).verify(quote, collateral, now)`; the only
//! difference is the trust anchor: the simulated root ([`SimPki::root_der`]) instead of Intel's.
//! A verifier that was not told to trust that root rejects every simulated quote, and a policy
//! must name the root (by [`SimPki::root_sha256`]) before anything simulated is accepted.
//!
//! ```text
//!  Simulated SGX Root CA (self-signed) ── root CA CRL
//!   ├─ Simulated SGX PCK Platform CA ──── PCK CRL
//!   │    └─ Simulated SGX PCK Certificate   (SGX extension: PPID, TCB, PCE-ID, FMSPC, ...)
//!   │         └─ signs the QE report  ──▶  binds the attestation key
//!   │                                         └─ signs quote header ‖ TD report
//!   └─ Simulated SGX TCB Signing ──▶ signs TCB info (TDX, v3) and QE identity (TD_QE, v2)
//! ```
//!
//! Everything is a pure function of the seed: keys are derived from it, validity dates and
//! serials are fixed, and signatures are deterministic ECDSA (RFC 6979). The same seed gives
//! byte-identical certificates, collateral and quotes on every machine, so the root fingerprint
//! of [`DEFAULT_SEED`] can be recomputed by any reviewer and pinned.
//!
//! ```
//! use chrysalis_attestation::sim::{self, SimPki, SimTdReport};
//! use chrysalis_attestation::{Measurement, ReportData};
//!
//! let pki = SimPki::from_seed(sim::DEFAULT_SEED);
//! let measurements = sim::td_measurements(Measurement([1; 48]), [Measurement::ZERO; 4]);
//! let quote = pki.quote(&SimTdReport::new(measurements, ReportData([7; 64])));
//! let now = 1_767_225_600; // 2026-01-01
//! let collateral = pki.collateral(now - 3600, 30 * 86400).unwrap();
//! let report = dcap_qvl::verify::QuoteVerifier::new(pki.root_der().to_vec())
//!     .verify(&quote, &collateral, now)
//!     .unwrap();
//! assert_eq!(report.status, "UpToDate");
//! ```

use std::fmt;

use thiserror::Error;
use time::format_description::well_known::Rfc3339;

use crate::evidence::{Flags64, Measurement, ReportData, Sha256, TdxMeasurements, TdxRegisters};

mod amd;
mod certs;
mod collateral;
mod gpu;
mod keys;
mod platform;
mod quote;
#[cfg(test)]
mod tests;

pub use amd::{
    SIM_GUEST_POLICY, SIM_PRODUCT_NAME, SIM_RSA_BITS, SIM_SNP_TCB, SimAmdPki, SimSnpReport,
};
pub use gpu::{SimGpu, SimNvidiaPki};
pub use platform::{
    SIM_FMSPC, TD_ATTRIBUTES, TEE_TCB_SVN_OUT_OF_DATE, TEE_TCB_SVN_UP_TO_DATE, XFAM,
};

/// Well-known seed of the sim profile, so reviewers can recompute the sim root fingerprint.
pub const DEFAULT_SEED: &[u8] = b"chrysalis simulated TEE v1";

/// notBefore of every simulated certificate: 2024-01-01T00:00:00Z (unix seconds).
pub const CERT_NOT_BEFORE: u64 = 1_704_067_200;
/// notAfter of every simulated certificate: 2049-12-31T23:59:59Z (unix seconds), like Intel's root.
pub const CERT_NOT_AFTER: u64 = 2_524_607_999;

/// The latest time collateral can carry: 9999-12-31T23:59:59Z, the end of RFC 3339.
const MAX_COLLATERAL_TIME: u64 = 253_402_300_799;

/// Collateral that the simulated PKI cannot issue.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimError {
    /// The validity period of collateral was zero seconds long.
    #[error("collateral must be valid for at least one second (valid_for was 0)")]
    EmptyValidity,
    /// A time cannot be written into collateral: past year 9999, or the sum overflowed.
    #[error(
        "{what} {secs} (unix seconds) is out of range: collateral times end at 9999-12-31T23:59:59Z"
    )]
    TimeOutOfRange {
        /// Which time.
        what: &'static str,
        /// Its value.
        secs: u64,
    },
    /// rcgen or the DER encoder refused to produce a certificate, CRL or extension.
    #[error("cannot issue the simulated {what}: {reason}")]
    Issue {
        /// The object being issued.
        what: &'static str,
        /// What the encoder reported.
        reason: String,
    },
}

/// A TD report for the simulated TDX module to quote: what the TD's registers hold and the
/// report_data it asked for, plus the TDX module's own fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimTdReport {
    /// MRTD, RTMRs, config/owner registers, MRSEAM, TD attributes and XFAM, quoted as given.
    pub measurements: TdxMeasurements,
    /// The 64 bytes the TD binds into the quote.
    pub report_data: ReportData,
    /// TEE_TCB_SVN: module ISVSVN, module version, TDX microcode SVN, ... Default
    /// [`TEE_TCB_SVN_UP_TO_DATE`]; [`TEE_TCB_SVN_OUT_OF_DATE`] gives an `OutOfDate` quote.
    pub tee_tcb_svn: [u8; 16],
    /// MRSIGNERSEAM. The TCB info expects Intel's all-zero module signer; anything else fails
    /// dcap-qvl's module identity check.
    pub mr_signer_seam: Measurement,
    /// SEAMATTRIBUTES. The TCB info expects zero.
    pub seam_attributes: Flags64,
}

impl SimTdReport {
    /// A report of `measurements` and `report_data` from an up-to-date production TDX module.
    pub fn new(measurements: TdxMeasurements, report_data: ReportData) -> Self {
        Self {
            measurements,
            report_data,
            tee_tcb_svn: TEE_TCB_SVN_UP_TO_DATE,
            mr_signer_seam: Measurement::ZERO,
            seam_attributes: Flags64::ZERO,
        }
    }
}

/// MRSEAM of the simulated TDX module: SHA-384 of a fixed label, so it is plainly not one of Intel's.
pub fn sim_mr_seam() -> Measurement {
    use sha2::Digest;
    Measurement(sha2::Sha384::digest(b"chrysalis simulated TDX module").into())
}

/// TDX registers of a production TD with the given MRTD and RTMRs: MRCONFIGID, MROWNER and
/// MROWNERCONFIG zero, the simulated MRSEAM, [`TD_ATTRIBUTES`] (DEBUG off) and [`XFAM`].
pub fn td_measurements(mr_td: Measurement, rtmr: [Measurement; 4]) -> TdxMeasurements {
    TdxMeasurements {
        registers: TdxRegisters { mr_td, rtmr },
        mr_config_id: Measurement::ZERO,
        mr_owner: Measurement::ZERO,
        mr_owner_config: Measurement::ZERO,
        mr_seam: sim_mr_seam(),
        td_attributes: TD_ATTRIBUTES,
        xfam: XFAM,
    }
}

/// The simulated Intel PKI of one seed: certificates, signing keys, and the quoting enclave.
pub struct SimPki {
    certs: certs::Certificates,
    attestation_key: keys::SimKey,
    qe_mr_enclave: [u8; 32],
    qe_mr_signer: [u8; 32],
    qe_id: [u8; 16],
    root_sha256: Sha256,
}

impl fmt::Debug for SimPki {
    /// Names the root by fingerprint; never prints keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPki")
            .field("root_sha256", &self.root_sha256)
            .finish_non_exhaustive()
    }
}

fn rfc3339(secs: u64, what: &'static str) -> Result<String, SimError> {
    certs::unix_time(secs, what)?
        .format(&Rfc3339)
        .map_err(|_| SimError::TimeOutOfRange { what, secs })
}

impl SimPki {
    /// Builds the PKI of `seed`. The same seed gives byte-identical certificates, collateral and
    /// quotes; different seeds give unrelated keys (and so a different root).
    pub fn from_seed(seed: &[u8]) -> SimPki {
        // Every input of issuance is a constant or a fixed-size derived value, so failure here
        // is a bug in this module, which the tests exercise on every seed they use.
        let certs = certs::Certificates::issue(seed).expect("simulated certificates are issuable");
        let root_sha256 = Sha256::digest(&certs.root.der);
        SimPki {
            certs,
            attestation_key: keys::SimKey::derive(seed, "qe attestation key"),
            qe_mr_enclave: certs::seeded_bytes(seed, "qe mrenclave"),
            qe_mr_signer: certs::seeded_bytes(seed, "qe mrsigner"),
            qe_id: certs::seeded_bytes(seed, "qe id"),
            root_sha256,
        }
    }

    /// DER of the simulated root CA certificate: the trust anchor to give the verifier.
    pub fn root_der(&self) -> &[u8] {
        &self.certs.root.der
    }

    /// PEM of the simulated root CA certificate.
    pub fn root_pem(&self) -> &str {
        &self.certs.root.pem
    }

    /// SHA-256 of [`root_der`](Self::root_der): the fingerprint a policy names to trust this PKI.
    pub fn root_sha256(&self) -> Sha256 {
        self.root_sha256
    }

    /// Collateral whose TCB info, QE identity and both CRLs are issued at `issued_at` (unix
    /// seconds) and expire (nextUpdate) at `issued_at + valid_for`; byte-identical for the same
    /// inputs. dcap-qvl accepts it only for `issued_at <= now < issued_at + valid_for` (the CRLs
    /// count as expired from their nextUpdate on), and only within the certificates' validity
    /// ([`CERT_NOT_BEFORE`]..=[`CERT_NOT_AFTER`]).
    ///
    /// Fails when `valid_for` is 0 or a time would fall after 9999-12-31T23:59:59Z.
    pub fn collateral(
        &self,
        issued_at: u64,
        valid_for: u64,
    ) -> Result<dcap_qvl::QuoteCollateralV3, SimError> {
        self.collateral_revoking(issued_at, valid_for, false)
    }

    /// As [`collateral`](Self::collateral); `revoke_pck` also lists this platform's PCK
    /// certificate in the PCK CRL.
    fn collateral_revoking(
        &self,
        issued_at: u64,
        valid_for: u64,
        revoke_pck: bool,
    ) -> Result<dcap_qvl::QuoteCollateralV3, SimError> {
        if valid_for == 0 {
            return Err(SimError::EmptyValidity);
        }
        let next_update = issued_at
            .checked_add(valid_for)
            .filter(|t| *t <= MAX_COLLATERAL_TIME)
            .ok_or(SimError::TimeOutOfRange {
                what: "issued_at + valid_for",
                secs: valid_for,
            })?;
        let issue_date = rfc3339(issued_at, "issued_at")?;
        let next_date = rfc3339(next_update, "issued_at + valid_for")?;

        let tcb_info = collateral::tcb_info_json(&issue_date, &next_date);
        let qe_identity = collateral::qe_identity_json(&issue_date, &next_date, &self.qe_mr_signer);
        let tcb_key = &self.certs.tcb_signing.key;
        let (root_ca_crl, pck_crl) = self.certs.crls(
            certs::unix_time(issued_at, "issued_at")?,
            certs::unix_time(next_update, "issued_at + valid_for")?,
            revoke_pck,
        )?;
        let signer_chain = format!("{}{}", self.certs.tcb_signing.pem, self.certs.root.pem);
        Ok(dcap_qvl::QuoteCollateralV3 {
            pck_crl_issuer_chain: format!("{}{}", self.certs.platform_ca.pem, self.certs.root.pem),
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain: signer_chain.clone(),
            tcb_info_signature: tcb_key.sign_raw(tcb_info.as_bytes()).to_vec(),
            tcb_info,
            qe_identity_issuer_chain: signer_chain,
            qe_identity_signature: tcb_key.sign_raw(qe_identity.as_bytes()).to_vec(),
            qe_identity,
            // The quote carries the PCK chain (certification data 6 wrapping 5).
            pck_certificate_chain: None,
        })
    }

    /// A TDX quote v4 over `td`, signed by this PKI's quoting enclave: certification data type 6
    /// (QE report signed by the PCK key) with inner type 5 (PEM chain: PCK leaf, PCK Platform
    /// CA, root). Byte-identical for the same report.
    pub fn quote(&self, td: &SimTdReport) -> Vec<u8> {
        let chain = format!(
            "{}{}{}",
            self.certs.pck.pem, self.certs.platform_ca.pem, self.certs.root.pem
        );
        quote::QuotingEnclave {
            attestation_key: &self.attestation_key,
            pck_key: &self.certs.pck.key,
            mr_enclave: self.qe_mr_enclave,
            mr_signer: self.qe_mr_signer,
            qe_id: self.qe_id,
            pck_chain_pem: chain,
        }
        .quote(td)
    }
}
