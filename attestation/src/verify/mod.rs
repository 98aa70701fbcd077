//! Cryptographic verification of evidence into one structured [`Verdict`].
//!
//! A `Verdict` says what the evidence proves: which root it chains to, the TCB status the
//! vendor's collateral assigns (TDX only), the measurements (with SNP's reported, committed
//! and launch TCB), the debug flag and the report data. It does
//! NOT say whether any of that is acceptable: [`crate::policy::Policy::evaluate`] decides, and
//! only it produces the [`crate::VerifiedEvidence`] proof that downstream code requires.
//!
//! The verification functions return a [`CryptoVerified`]: a verdict sealed by this module, which
//! only verification constructs. A `Verdict` is a plain value anyone can build or deserialize; a
//! `CryptoVerified` is the only thing the policy turns into proof.
//!
//! Trust anchors and time are arguments. The production Intel and AMD roots are built in;
//! a simulated root is accepted only when the caller's anchors name its fingerprint.

mod snp;
mod tdx;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bundle::Evidence;
use crate::error::EvidenceError;
use crate::evidence::{Measurements, Platform, ReportData, Sha256, SnpReport, TdxQuote};

pub use snp::{
    AmdGeneration, AmdRoot, SnpCertificates, SnpSigner, SnpVerified, SnpVerifyError,
    forget_verified_chains, verify_snp, verify_snp_report,
};
pub use tdx::{DcapError, INTEL_SGX_ROOT_CA_SHA256, TdxVerifyError};

/// The root certificate a piece of evidence chains to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TrustRoot {
    /// Intel's SGX Root CA (the production root of TDX quotes).
    IntelSgxRootCa,
    /// A simulated Intel root (see [`crate::sim`]): accepted only by policies naming it.
    SimulatedIntel {
        /// SHA-256 of the root certificate's DER.
        sha256: Sha256,
    },
    /// A simulated AMD ARK (see [`crate::sim::SimAmdPki`]): accepted only by policies naming it.
    SimulatedAmd {
        /// SHA-256 of the ARK certificate's DER.
        sha256: Sha256,
    },
    /// An AMD root key (ARK).
    AmdArk {
        /// Processor family of the ARK (Milan, Genoa, Turin) or "chain file".
        product: String,
        /// SHA-256 of the ARK certificate's DER.
        sha256: Sha256,
    },
}

impl std::fmt::Display for TrustRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustRoot::IntelSgxRootCa => f.write_str("Intel SGX Root CA"),
            TrustRoot::SimulatedIntel { sha256 } => write!(f, "simulated Intel root {sha256}"),
            TrustRoot::SimulatedAmd { sha256 } => write!(f, "simulated AMD ARK {sha256}"),
            TrustRoot::AmdArk { product, sha256 } => write!(f, "AMD ARK ({product}) {sha256}"),
        }
    }
}

/// TCB status as Intel's collateral assigns it (TDX).
///
/// AMD publishes no TCB status, so an SNP verdict has none (`Verdict::tcb_status` is `None`);
/// the policy instead compares the SNP TCB with a per-product floor ([`crate::snp_policy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TcbStatus {
    /// The platform is patched.
    UpToDate,
    /// Patched, but software hardening (e.g. against a side channel) is needed.
    SWHardeningNeeded,
    /// Patched, but a platform configuration change is needed.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSWHardeningNeeded,
    /// A newer TCB exists; this platform is not at it.
    OutOfDate,
    /// Out of date and needing configuration.
    OutOfDateConfigurationNeeded,
    /// The TCB level was revoked.
    Revoked,
    /// TDX 1.5: launched out of date, current TCB patched; relaunch advised.
    TDRelaunchAdvised,
    /// As above, and configuration needed.
    TDRelaunchAdvisedConfigurationNeeded,
}

impl TcbStatus {
    /// Every status, for listing in messages.
    pub const ALL: [TcbStatus; 9] = [
        TcbStatus::UpToDate,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
        TcbStatus::OutOfDate,
        TcbStatus::OutOfDateConfigurationNeeded,
        TcbStatus::Revoked,
        TcbStatus::TDRelaunchAdvised,
        TcbStatus::TDRelaunchAdvisedConfigurationNeeded,
    ];

    /// Intel's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::Revoked => "Revoked",
            TcbStatus::TDRelaunchAdvised => "TDRelaunchAdvised",
            TcbStatus::TDRelaunchAdvisedConfigurationNeeded => {
                "TDRelaunchAdvisedConfigurationNeeded"
            }
        }
    }
}

impl std::fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TcbStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TcbStatus::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = TcbStatus::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown TCB status {s:?} (known: {})", known.join(", "))
            })
    }
}

/// What a piece of evidence cryptographically proves. Not a decision: see the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The platform.
    pub platform: Platform,
    /// Evidence format version (TDX quote version, SNP report version).
    pub evidence_version: u32,
    /// The root the signature chain ends in.
    pub root: TrustRoot,
    /// TCB status from Intel's collateral; `None` for SNP, for which AMD assigns none (the
    /// SNP TCB values are in [`crate::SnpMeasurements`] and the policy checks them against a
    /// floor instead).
    pub tcb_status: Option<TcbStatus>,
    /// Security advisories that apply to this TCB level.
    pub advisory_ids: Vec<String>,
    /// The measured state.
    pub measurements: Measurements,
    /// True when the host can debug (read) or profile the guest: for TDX any "TD under debug"
    /// bit (TD_ATTRIBUTES 0-7), for SNP guest policy bit 19.
    pub debug: bool,
    /// Which of those flags are set, by name (`debug`, `perf_prof`, `pmt_prof`,
    /// `hgs_plus_prof`, `tud_bit3`...); empty for a trusted guest.
    #[serde(default)]
    pub debug_flags: Vec<String>,
    /// The 64 bytes bound into the evidence.
    pub report_data: ReportData,
    /// When the first piece of collateral used expires (unix seconds), if it has a date.
    pub valid_until: Option<u64>,
    /// TDX: the lower `tcbEvaluationDataNumber` of the collateral's TCB info and QE identity,
    /// i.e. which of Intel's TCB evaluation data sets (TCB recoveries) the collateral reflects.
    /// None for SNP.
    #[serde(default)]
    pub tcb_evaluation_data_number: Option<u32>,
    /// TDX: the earlier `issueDate` of the collateral's TCB info and QE identity (unix seconds).
    /// None for SNP.
    #[serde(default)]
    pub collateral_issued: Option<u64>,
    /// The time verification ran at (the `now` the verifier was given, unix seconds); the policy
    /// measures the collateral's age against it.
    #[serde(default)]
    pub verified_at: u64,
}

/// A [`Verdict`] that this module's verification produced: the signatures, certificate chain
/// and collateral behind it verified against the caller's anchors. Only this crate constructs
/// one (the field is private and there is no conversion from `Verdict`), so a hand-made or
/// deserialized verdict can never reach [`crate::policy::Policy::evaluate`]:
///
/// ```compile_fail,E0423
/// use chrysalis_attestation::verify::{CryptoVerified, Verdict};
/// fn forge(v: Verdict) -> CryptoVerified {
///     CryptoVerified(v)
/// }
/// ```
///
/// It reads as the verdict it wraps (`Deref`), and serializes as it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CryptoVerified(Verdict);

impl CryptoVerified {
    /// Seals a verdict. Callers must have verified the evidence it describes.
    pub(crate) fn new(verdict: Verdict) -> Self {
        Self(verdict)
    }

    /// What was verified.
    pub fn verdict(&self) -> &Verdict {
        &self.0
    }

    /// The verdict as a plain value (no longer proof of anything).
    pub fn into_verdict(self) -> Verdict {
        self.0
    }
}

impl std::ops::Deref for CryptoVerified {
    type Target = Verdict;
    fn deref(&self) -> &Verdict {
        &self.0
    }
}

/// Which roots verification may end in. Built from a policy; the vendor roots are built in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustAnchors {
    pub(crate) intel: bool,
    pub(crate) amd: bool,
    pub(crate) simulated_intel: Vec<Sha256>,
    pub(crate) simulated_amd: Vec<Sha256>,
}

impl TrustAnchors {
    /// Intel's and AMD's production roots, nothing else.
    pub fn vendor() -> Self {
        Self {
            intel: true,
            amd: true,
            simulated_intel: Vec::new(),
            simulated_amd: Vec::new(),
        }
    }

    /// No root at all: every verification fails (useful to build up explicitly).
    pub fn none() -> Self {
        Self {
            intel: false,
            amd: false,
            simulated_intel: Vec::new(),
            simulated_amd: Vec::new(),
        }
    }

    /// Also accept quotes from a simulated Intel PKI whose root certificate has this SHA-256.
    /// Simulated evidence proves nothing about hardware: never use this in production.
    pub fn dangerous_with_simulated_intel_root(mut self, root_sha256: Sha256) -> Self {
        if !self.simulated_intel.contains(&root_sha256) {
            self.simulated_intel.push(root_sha256);
        }
        self
    }

    /// Also accept SNP reports whose chain file ends in a simulated AMD ARK
    /// ([`crate::sim::SimAmdPki`]) with this SHA-256. Simulated evidence proves nothing about
    /// hardware: never use this in production.
    pub fn dangerous_with_simulated_amd_root(mut self, ark_sha256: Sha256) -> Self {
        if !self.simulated_amd.contains(&ark_sha256) {
            self.simulated_amd.push(ark_sha256);
        }
        self
    }

    /// Sets whether Intel's production root is trusted.
    pub fn with_intel(mut self, on: bool) -> Self {
        self.intel = on;
        self
    }

    /// Sets whether AMD's production roots are trusted.
    pub fn with_amd(mut self, on: bool) -> Self {
        self.amd = on;
        self
    }
}

/// A root that a chain ends in but the trust anchors do not include.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FoundRoot {
    /// The root certificate that a TDX collateral's issuer chain ends in.
    IntelChain {
        /// The certificate's subject ("unparseable certificate" when it does not parse).
        subject: String,
        /// SHA-256 of its DER.
        sha256: Sha256,
    },
    /// AMD's built-in ARK of this generation, while AMD's roots are not trusted.
    AmdBuiltIn(AmdGeneration),
    /// An ARK from a chain file that is none of AMD's.
    AmdChainFile {
        /// SHA-256 of the ARK's DER.
        ark_sha256: Sha256,
    },
}

impl std::fmt::Display for FoundRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FoundRoot::IntelChain { subject, sha256 } => write!(f, "{subject} (sha256 {sha256})"),
            FoundRoot::AmdBuiltIn(generation) => {
                write!(f, "AMD ARK ({generation}): AMD's roots are not trusted")
            }
            FoundRoot::AmdChainFile { ark_sha256 } => write!(
                f,
                "ARK from the chain file (sha256 {ark_sha256}) is not an AMD root"
            ),
        }
    }
}

/// Why evidence failed verification.
///
/// Messages do not repeat their source: print the chain ([`std::error::Error::source`]) to see
/// the whole reason, as [`crate::RejectReason`]'s `Display` does.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The evidence could not be parsed.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// The chain ends in a root the anchors do not include.
    #[error("{platform} evidence chains to an untrusted root: {root}")]
    UntrustedRoot {
        /// Platform of the evidence.
        platform: Platform,
        /// The root that was found.
        root: FoundRoot,
    },
    /// The platform's roots are not among the anchors at all.
    #[error("{0} evidence is not accepted: no {0} root is trusted")]
    PlatformNotTrusted(Platform),
    /// TDX evidence came without collateral and none was supplied.
    #[error("TDX quote has no collateral (neither carried nor supplied by the verifier)")]
    MissingCollateral,
    /// SNP evidence came without a VCEK.
    #[error("SNP report has no VCEK/VLEK certificate")]
    MissingVcek,
    /// The platform's TCB (CPUSVN, PCESVN, TEE TCB SVN) is below every level of the
    /// collateral's TCB info: Intel no longer lists it, so no status can be assigned.
    #[error(
        "TCB not listed: the platform's TCB matches no level of Intel's TCB info \
         (older than every listed level: out of date)"
    )]
    TcbNotListed,
    /// The TDX quote or its collateral failed verification.
    #[error("TDX quote verification failed")]
    Tdx(#[from] TdxVerifyError),
    /// The SNP report or its certificates failed verification.
    #[error("SNP report verification failed")]
    Snp(#[from] SnpVerifyError),
    /// TD_ATTRIBUTES break a rule no policy can lift (see [`crate::tdx_attributes`]): a reserved
    /// bit set (TUD bits 1-3 and 7 included), MIGRATABLE or SERVTD_EXT set, SEPT_VE_DISABLE
    /// clear.
    #[error("TD_ATTRIBUTES {attributes} are refused: {}", .violations.join(", "))]
    TdAttributes {
        /// The 8 bytes as the quote stores them.
        attributes: crate::evidence::Flags64,
        /// Each broken rule, naming its bit (`tud_bit3 set`, `sept_ve_disable clear`).
        violations: Vec<String>,
    },
}

/// The earliest `nextUpdate` of a collateral's TCB info and QE identity (unix seconds): when it
/// must have been replaced. None when either has no readable date. Says nothing about whether
/// the collateral verifies.
pub fn collateral_valid_until(c: &dcap_qvl::QuoteCollateralV3) -> Option<u64> {
    let tcb = tdx::next_update(&c.tcb_info)?;
    let qe = tdx::next_update(&c.qe_identity)?;
    Some(tcb.min(qe))
}

/// Verifies evidence against `anchors` at `now` (unix seconds).
///
/// `collateral` replaces the TDX collateral carried in the evidence when given (a verifier may
/// prefer its own cached copy); carried or not, it must verify against the anchors.
pub fn verify(
    evidence: &Evidence,
    anchors: &TrustAnchors,
    collateral: Option<&dcap_qvl::QuoteCollateralV3>,
    now: u64,
) -> Result<CryptoVerified, VerifyError> {
    let verdict = match evidence {
        Evidence::Tdx {
            quote,
            collateral: carried,
        } => {
            let collateral = collateral
                .or(carried.as_ref())
                .ok_or(VerifyError::MissingCollateral)?;
            tdx::verify_tdx(quote, collateral, anchors, now)
        }
        Evidence::Snp {
            report,
            vcek,
            chain,
        } => {
            let vcek = vcek.as_deref().ok_or(VerifyError::MissingVcek)?;
            snp_verdict(report, vcek, chain.as_deref(), anchors, now)
        }
    }?;
    Ok(CryptoVerified::new(verdict))
}

/// Verifies a TDX quote with `collateral` at `now` (unix seconds).
///
/// Returns Ok only if the quote's signature chain (attestation key → QE report → PCK
/// certificate → PCK CA → root), the collateral's signatures (TCB info, QE identity, CRLs →
/// the same root) and their validity at `now` all verify, and the root is among `anchors`.
/// It does NOT judge the TCB status, debug flag or measurements: that is the policy's job.
pub fn verify_tdx(
    quote: &[u8],
    collateral: &dcap_qvl::QuoteCollateralV3,
    anchors: &TrustAnchors,
    now: u64,
) -> Result<CryptoVerified, VerifyError> {
    tdx::verify_tdx(&TdxQuote::parse(quote)?, collateral, anchors, now).map(CryptoVerified::new)
}

/// Verifies an SNP report with its VCEK (and optional ASK/ARK chain) into a sealed verdict.
///
/// AMD's own ARKs are anchors when `anchors` trusts AMD; a chain file whose ARK is not one of
/// them is refused unless `anchors` names its SHA-256 as a simulated AMD root
/// ([`TrustAnchors::dangerous_with_simulated_amd_root`]). Either way the report, the chain and
/// the VCEK go through the same checks ([`verify_snp`]). AMD publishes no TCB status, so the verdict's `tcb_status`
/// is `None`; see [`TcbStatus`].
pub fn verify_snp_evidence(
    report: &[u8],
    vcek_der: &[u8],
    chain: Option<&[u8]>,
    anchors: &TrustAnchors,
    now: u64,
) -> Result<CryptoVerified, VerifyError> {
    if !anchors.amd && anchors.simulated_amd.is_empty() {
        return Err(VerifyError::PlatformNotTrusted(Platform::Snp));
    }
    let report = SnpReport::parse(report).map_err(SnpVerifyError::from)?;
    snp_verdict(&report, vcek_der, chain, anchors, now).map(CryptoVerified::new)
}

/// The unsealed verdict of [`verify_snp_evidence`].
fn snp_verdict(
    report: &SnpReport,
    vcek_der: &[u8],
    chain: Option<&[u8]>,
    anchors: &TrustAnchors,
    now: u64,
) -> Result<Verdict, VerifyError> {
    if !anchors.amd && anchors.simulated_amd.is_empty() {
        return Err(VerifyError::PlatformNotTrusted(Platform::Snp));
    }
    let certs = SnpCertificates {
        vcek_der: vcek_der.to_vec(),
        chain: chain.map(<[u8]>::to_vec),
    };
    let v = verify_snp_report(report, &certs, now)?;
    let root = match v.root {
        AmdRoot::BuiltIn(generation) if anchors.amd => TrustRoot::AmdArk {
            product: generation.name().into(),
            sha256: generation.builtin_ark_sha256()?,
        },
        AmdRoot::BuiltIn(generation) => {
            return Err(VerifyError::UntrustedRoot {
                platform: Platform::Snp,
                root: FoundRoot::AmdBuiltIn(generation),
            });
        }
        AmdRoot::ChainFile { ark_sha256 } if anchors.simulated_amd.contains(&ark_sha256) => {
            TrustRoot::SimulatedAmd { sha256: ark_sha256 }
        }
        AmdRoot::ChainFile { ark_sha256 } => {
            return Err(VerifyError::UntrustedRoot {
                platform: Platform::Snp,
                root: FoundRoot::AmdChainFile { ark_sha256 },
            });
        }
    };
    let measurements = v.report.measurements();
    Ok(Verdict {
        platform: Platform::Snp,
        evidence_version: v.report.version(),
        root,
        tcb_status: None,
        advisory_ids: Vec::new(),
        debug: measurements.debug(),
        debug_flags: measurements.debug_flags(),
        report_data: v.report.report_data(),
        measurements: Measurements::Snp(measurements),
        valid_until: Some(v.valid_until),
        tcb_evaluation_data_number: None,
        collateral_issued: None,
        verified_at: now,
    })
}
