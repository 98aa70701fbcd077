//! NVIDIA Hopper (H100) confidential-computing evidence, verified offline: the SPDM measurement
//! report and its signature, the device certificate chain, and the measurements against the
//! driver's and the VBIOS's signed reference manifests (RIMs).
//!
//! ```text
//! GpuEvidence { report, chain, driver RIM, VBIOS RIM, OCSP }   nonce, GpuTrust, GpuPolicy, now
//!        └──────────────────────────── verify ─────────────────────────┘
//!   1 report parses (SPDM 1.1 GET_MEASUREMENTS request ‖ MEASUREMENTS response)
//!   2 the request's nonce equals the caller's nonce
//!   3 the device chain verifies up to a trusted device identity root at `now`
//!   4 the report's signature (ECDSA P-384 over request ‖ response-without-signature) verifies
//!     with the chain's leaf (the attestation key), and the leaf's FWID equals the report's
//!   5 revocation: OCSP answers, or a policy that names their absence
//!   6 each RIM's XML-DSig and signer chain verify up to a trusted RIM root; its version equals
//!     the report's driver / VBIOS version; the policy's version lists allow it
//!   7 every active RIM measurement equals one of its alternatives in the report
//!        └─▶ VerifiedGpu (only this module builds it) { GpuVerdict: every check, by name }
//! ```
//!
//! Like the CPU verifiers this is pure: the nonce, the roots, the policy and the time are passed
//! in. What it does not check: the CC mode and "production mode" settings of the GPU are not
//! fields of a Hopper report (driver 550 signs no such opaque field; NVIDIA's verifier reads them
//! through NVML, unsigned), so the verdict reports them as not attested; the caller that collects
//! the evidence in the guest must check them locally (docs/gpu.md).

pub mod c14n;
pub mod chain;
pub mod ocsp;
pub mod record;
pub mod rim;
pub mod spdm;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::evidence::Sha256;

pub use chain::{ChainError, VerifiedChain};
pub use record::{GpuAttestation, GpuRecord, RecordError};
pub use rim::{RimError, RimMeasurement, VerifiedRim};
pub use spdm::{GpuReport, MeasurementBlock, OpaqueFields, SpdmError};

/// The roots a GPU verifier trusts, as DER certificates (passed in like the Intel and AMD roots).
#[derive(Debug, Clone, Default)]
pub struct GpuTrust {
    /// NVIDIA's device identity roots (the GPU certificate chain ends in one).
    pub device_roots: Vec<Vec<u8>>,
    /// NVIDIA's RIM signing roots.
    pub rim_roots: Vec<Vec<u8>>,
}

/// Everything a GPU verifier is given about one GPU.
#[derive(Debug, Clone, Default)]
pub struct GpuEvidence {
    /// The attestation report: SPDM GET_MEASUREMENTS request ‖ MEASUREMENTS response.
    pub report: Vec<u8>,
    /// The GPU's certificate chain, leaf (attestation key) first, DER.
    pub chain: Vec<Vec<u8>>,
    /// The driver RIM (signed SWID tag XML), if supplied.
    pub driver_rim: Option<Vec<u8>>,
    /// The VBIOS RIM (signed SWID tag XML), if supplied.
    pub vbios_rim: Option<Vec<u8>>,
    /// DER OCSP responses for the chain's certificates, if supplied.
    pub ocsp: Vec<Vec<u8>>,
}

/// SHA-256 of NVIDIA's device identity root ("NVIDIA Device Identity CA"), the root a
/// genuine GPU's certificate chain ends in. Pinned by hash: the driver returns a copy of the root
/// with every chain, and the verifier trusts that copy only when its hash is this.
pub const NVIDIA_DEVICE_ROOT_SHA256: Sha256 = Sha256(hex_literal(
    "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48",
));
/// SHA-256 of NVIDIA's RIM signing root ("NVIDIA CoRIM signing Root CA"); every RIM's KeyInfo
/// ends in a copy of it.
pub const NVIDIA_RIM_ROOT_SHA256: Sha256 = Sha256(hex_literal(
    "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1",
));

const fn hex_literal(s: &str) -> [u8; 32] {
    let b = s.as_bytes();
    assert!(b.len() == 64);
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not a lower-case hex digit"),
    }
}

/// What a client accepts of a GPU (the `[gpu]` table of a policy file). Strict by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuPolicy {
    /// Refuse a node whose certificate carries no GPU evidence (`policy from-manifest` sets it
    /// for gpu images). GPU evidence that is present is verified either way.
    #[serde(skip_serializing_if = "is_false")]
    pub require: bool,
    /// Trust NVIDIA's device identity root and RIM signing root (by their SHA-256).
    pub nvidia: bool,
    /// Simulated NVIDIA roots (device or RIM, by SHA-256 of the certificate) to accept. For CI
    /// and development only: simulated GPU evidence proves nothing about a GPU.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dangerous_simulated_nvidia_roots: Vec<Sha256>,
    /// Accepted driver versions (e.g. `550.90.07`); empty: any version that has a valid RIM.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_driver_versions: Vec<String>,
    /// Accepted VBIOS versions (e.g. `96.00.9f.00.01`); empty: any version that has a valid RIM.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_vbios_versions: Vec<String>,
    /// Accept the chain without OCSP answers. The default refuses: a revoked attestation key
    /// (NVIDIA revokes keys of GPUs with known firmware flaws) must not pass for lack of an answer.
    #[serde(skip_serializing_if = "is_false")]
    pub dangerous_no_ocsp: bool,
    /// Accept a report without comparing its measurements to RIMs (when none are supplied).
    #[serde(skip_serializing_if = "is_false")]
    pub dangerous_no_rims: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for GpuPolicy {
    fn default() -> Self {
        Self {
            require: false,
            nvidia: true,
            dangerous_simulated_nvidia_roots: Vec::new(),
            allowed_driver_versions: Vec::new(),
            allowed_vbios_versions: Vec::new(),
            dangerous_no_ocsp: false,
            dangerous_no_rims: false,
        }
    }
}

impl GpuPolicy {
    /// Whether this is the default table (then a policy file leaves it out).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The roots this policy trusts for `evidence`: the copies of roots it carries (the chain's
    /// last certificate, each RIM's last KeyInfo certificate) whose SHA-256 the policy pins.
    /// A root copy with another hash is ignored, so the chain then fails to reach a root.
    pub fn trust_for(&self, evidence: &GpuEvidence) -> GpuTrust {
        let pinned = |der: &[u8], nvidia_root: &Sha256| {
            let h = Sha256::digest(der);
            (self.nvidia && h == *nvidia_root) || self.dangerous_simulated_nvidia_roots.contains(&h)
        };
        let device_roots = evidence
            .chain
            .last()
            .filter(|r| pinned(r, &NVIDIA_DEVICE_ROOT_SHA256))
            .into_iter()
            .cloned()
            .collect();
        let mut rim_roots: Vec<Vec<u8>> = Vec::new();
        for xml in [&evidence.driver_rim, &evidence.vbios_rim]
            .into_iter()
            .flatten()
        {
            if let Ok((_, certs)) = rim::claims(xml)
                && let Some(root) = certs.last()
                && pinned(root, &NVIDIA_RIM_ROOT_SHA256)
                && !rim_roots.contains(root)
            {
                rim_roots.push(root.clone());
            }
        }
        GpuTrust {
            device_roots,
            rim_roots,
        }
    }
}

/// RIMs a verifier holds itself (e.g. downloaded from NVIDIA's RIM service), by the version
/// they claim. Looked up for GPUs whose evidence carries no RIM; a RIM found here is verified
/// like a carried one.
#[derive(Debug, Clone, Default)]
pub struct GpuRims {
    by_version: std::collections::HashMap<String, Vec<u8>>,
}

impl GpuRims {
    /// Adds a RIM under the version it claims (lower case); a second RIM for one version
    /// replaces the first.
    pub fn insert(&mut self, xml: Vec<u8>) -> Result<String, RimError> {
        let (version, _) = rim::claims(&xml)?;
        self.by_version.insert(version.clone(), xml);
        Ok(version)
    }

    /// The RIM for a version (compared without regard to case).
    pub fn get(&self, version: &str) -> Option<&[u8]> {
        self.by_version
            .get(&version.to_ascii_lowercase())
            .map(Vec::as_slice)
    }

    /// How many RIMs are held.
    pub fn len(&self) -> usize {
        self.by_version.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.by_version.is_empty()
    }
}

/// Why GPU evidence was refused. Each variant names the failed check.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GpuError {
    /// The report did not parse.
    #[error("GPU report")]
    Report(#[from] SpdmError),
    /// The report answers another nonce.
    #[error("GPU report nonce {found} is not the expected {expected}")]
    Nonce {
        /// The requester nonce in the report.
        found: String,
        /// The caller's nonce.
        expected: String,
    },
    /// No device root is trusted.
    #[error("no NVIDIA device identity root is trusted")]
    NoDeviceRoot,
    /// The device chain verifies up to none of the trusted device roots.
    #[error("GPU certificate chain")]
    Chain(#[source] ChainError),
    /// The report's signature does not verify with the attestation key.
    #[error("GPU report signature does not verify with the attestation key certificate")]
    Signature,
    /// The attestation key certificate's FWID is not the report's.
    #[error("GPU report FWID {report} is not the attestation key certificate's {cert}")]
    Fwid {
        /// The report's FWID.
        report: String,
        /// The certificate's.
        cert: String,
    },
    /// No OCSP answers and the policy does not name their absence.
    #[error(
        "GPU certificate revocation unchecked: no OCSP answers supplied and the policy does not set dangerous_no_ocsp"
    )]
    MissingOcsp,
    /// The OCSP answers do not show every certificate above the attestation key as good.
    #[error("GPU certificate revocation (OCSP)")]
    Ocsp(#[source] ocsp::OcspError),
    /// A RIM was not supplied and the policy requires it.
    #[error("no {0} RIM supplied and the policy does not set dangerous_no_rims")]
    MissingRim(&'static str),
    /// A RIM failed verification.
    #[error("{which} RIM")]
    Rim {
        /// `driver` or `VBIOS`.
        which: &'static str,
        /// Why.
        #[source]
        source: RimError,
    },
    /// A RIM describes another version than the report's.
    #[error("{which} RIM is for version {rim}, the report's is {report}")]
    RimVersion {
        /// `driver` or `VBIOS`.
        which: &'static str,
        /// The RIM's version.
        rim: String,
        /// The report's version.
        report: String,
    },
    /// The report's version is not in the policy's list.
    #[error("{which} version {version} is not allowed by the policy")]
    VersionNotAllowed {
        /// `driver` or `VBIOS`.
        which: &'static str,
        /// The report's version.
        version: String,
    },
    /// Both RIMs have an active measurement at the same index.
    #[error("the driver and VBIOS RIMs both claim measurement index {0}")]
    IndexConflict(u16),
    /// Measurements differ from every alternative of their RIM.
    #[error("GPU measurements do not match the RIMs at {}", mismatches.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", "))]
    Measurements {
        /// Each mismatching index.
        mismatches: Vec<Mismatch>,
    },
}

/// One measurement that matches none of its RIM's alternatives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// The RIM index (0-based; the SPDM block index is this plus one).
    pub index: u16,
    /// `driver` or `VBIOS`.
    pub source: &'static str,
    /// The report's value, hex; `None` when the report has no block at this index.
    pub found: Option<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.found {
            Some(v) => write!(
                f,
                "index {} ({}: report has {}…)",
                self.index,
                self.source,
                &v[..v.len().min(16)]
            ),
            None => write!(
                f,
                "index {} ({}: missing from the report)",
                self.index, self.source
            ),
        }
    }
}

/// The RIM part of a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RimVerdict {
    /// The SWID tag id.
    pub tag_id: String,
    /// The version (equal to the report's).
    pub version: String,
    /// The signer's subject.
    pub signer: String,
    /// The RIM root's subject.
    pub root: String,
    /// SHA-256 of the RIM root's DER.
    pub root_sha256: String,
    /// Active measurement indices compared.
    pub compared: Vec<u16>,
}

/// How revocation was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Revocation {
    /// OCSP answers, signed for the chain, say every certificate above the attestation key is
    /// good at the verification time.
    OcspGood,
    /// Not checked: no OCSP answers, and the policy's `dangerous_no_ocsp` allowed that.
    DangerousNotChecked,
}

/// The result of GPU verification: every check, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuVerdict {
    /// The nonce the report answers (the caller's).
    pub nonce: String,
    /// The device identity root (subject) the chain ends in.
    pub device_root: String,
    /// SHA-256 of that root's DER.
    pub device_root_sha256: String,
    /// The attestation key certificate's subject.
    pub attestation_key: String,
    /// The driver version in the report.
    pub driver_version: String,
    /// The VBIOS version in the report.
    pub vbios_version: String,
    /// Chip SKU, project and board id from the report.
    pub chip_sku: Option<String>,
    /// Project (e.g. `1010`) and SKU, for the VBIOS RIM's name.
    pub project: Option<String>,
    /// Project SKU.
    pub project_sku: Option<String>,
    /// Board id.
    pub board_id: Option<u32>,
    /// The FWID, checked equal in the report and the attestation key certificate (hex).
    pub fwid: Option<String>,
    /// CC mode is not a signed field of a Hopper report: always `not attested`.
    pub cc_mode: &'static str,
    /// Production mode is not a signed field of a Hopper report: always `not attested`.
    pub production_mode: &'static str,
    /// How revocation was decided.
    pub revocation: Revocation,
    /// The driver RIM, when compared.
    pub driver_rim: Option<RimVerdict>,
    /// The VBIOS RIM, when compared.
    pub vbios_rim: Option<RimVerdict>,
    /// Number of measurement blocks in the report.
    pub measurement_blocks: usize,
    /// The time verification ran at (unix seconds).
    pub verified_at: u64,
    /// Every check that passed, in order, as one line each.
    pub checks: Vec<String>,
}

/// Proof that GPU evidence verified: only [`verify`] builds it.
#[derive(Debug, Clone)]
pub struct VerifiedGpu {
    verdict: GpuVerdict,
    report: GpuReport,
}

impl VerifiedGpu {
    /// The verdict.
    pub fn verdict(&self) -> &GpuVerdict {
        &self.verdict
    }
    /// The parsed report.
    pub fn report(&self) -> &GpuReport {
        &self.report
    }
}

const NOT_ATTESTED: &str = "not attested (no signed field in a Hopper report)";

/// Verifies GPU evidence against `nonce`, the trusted roots, the policy and `now` (unix seconds).
/// Returns `Ok` only if every check in the module description passed.
pub fn verify(
    evidence: &GpuEvidence,
    nonce: &[u8; 32],
    trust: &GpuTrust,
    policy: &GpuPolicy,
    now: u64,
) -> Result<VerifiedGpu, GpuError> {
    let mut checks = Vec::new();
    let report = GpuReport::parse(&evidence.report)?;
    checks.push(format!(
        "report parsed: SPDM {:#04x}, {} measurement blocks",
        report.spdm_version,
        report.blocks.len()
    ));

    if &report.request_nonce != nonce {
        return Err(GpuError::Nonce {
            found: hex::encode(report.request_nonce),
            expected: hex::encode(nonce),
        });
    }
    checks.push(format!("nonce {} equals the request's", hex::encode(nonce)));

    if trust.device_roots.is_empty() {
        return Err(GpuError::NoDeviceRoot);
    }
    let mut last = None;
    let mut verified = None;
    for root in &trust.device_roots {
        match chain::verify_chain(&evidence.chain, root, now) {
            Ok(v) => {
                verified = Some((v, root));
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some((chain_ok, device_root)) = verified else {
        return Err(GpuError::Chain(last.unwrap_or(ChainError::Empty)));
    };
    checks.push(format!(
        "device chain ({} certificates) verifies up to {} (sha256 {})",
        chain_ok.depth, chain_ok.root_subject, chain_ok.root_sha256
    ));

    let leaf = evidence
        .chain
        .first()
        .ok_or(GpuError::Chain(ChainError::Empty))?;
    rim::verify_p384(leaf, &report.signed, &report.signature).ok_or(GpuError::Signature)?;
    checks.push(format!(
        "report signature (ECDSA P-384, SHA-384) verifies with {}",
        chain_ok.leaf_subject
    ));

    if let Some(fwid) = &report.opaque.fwid {
        let cert = chain::dice_fwid(leaf).unwrap_or_default();
        if &cert != fwid {
            return Err(GpuError::Fwid {
                report: hex::encode(fwid),
                cert: hex::encode(cert),
            });
        }
        checks.push(format!(
            "FWID {} equals the attestation key certificate's",
            hex::encode(fwid)
        ));
    }

    let revocation = if !evidence.ocsp.is_empty() {
        // NVIDIA's responder answers for the certificates NVIDIA issued: not the leaf, which the
        // GPU's own boot ROM key issues (NVIDIA's verifier skips it too).
        let v = ocsp::check_chain_except_leaf(&evidence.chain, device_root, &evidence.ocsp, now)
            .map_err(GpuError::Ocsp)?;
        checks.push(format!(
            "revocation: OCSP answers good for {} certificates above the attestation key",
            v.answers().len()
        ));
        Revocation::OcspGood
    } else if policy.dangerous_no_ocsp {
        checks
            .push("revocation NOT checked: no OCSP answers, policy sets dangerous_no_ocsp".into());
        Revocation::DangerousNotChecked
    } else {
        return Err(GpuError::MissingOcsp);
    };

    let driver_version = report.opaque.driver_version.clone().unwrap_or_default();
    let vbios_version = report.opaque.vbios_version.clone().unwrap_or_default();
    for (which, version, allowed) in [
        ("driver", &driver_version, &policy.allowed_driver_versions),
        ("VBIOS", &vbios_version, &policy.allowed_vbios_versions),
    ] {
        if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(version)) {
            return Err(GpuError::VersionNotAllowed {
                which,
                version: version.clone(),
            });
        }
    }

    let mut rims: Vec<(&'static str, VerifiedRim)> = Vec::new();
    for (which, xml, version) in [
        ("driver", &evidence.driver_rim, &driver_version),
        ("VBIOS", &evidence.vbios_rim, &vbios_version),
    ] {
        let Some(xml) = xml else {
            if policy.dangerous_no_rims {
                checks.push(format!(
                    "{which} measurements NOT compared: no RIM, policy sets dangerous_no_rims"
                ));
                continue;
            }
            return Err(GpuError::MissingRim(which));
        };
        let r = verify_rim_any(xml, &trust.rim_roots, now)
            .map_err(|source| GpuError::Rim { which, source })?;
        if !r.version.eq_ignore_ascii_case(version) {
            return Err(GpuError::RimVersion {
                which,
                rim: r.version,
                report: version.clone(),
            });
        }
        checks.push(format!(
            "{which} RIM {} (version {}) signed by {}, chains to {} (sha256 {})",
            r.tag_id, r.version, r.signer, r.root, r.root_sha256
        ));
        rims.push((which, r));
    }

    let compared = compare_measurements(&report, &rims)?;
    if compared > 0 {
        checks.push(format!(
            "{compared} active RIM measurements equal the report's"
        ));
    }

    let rim_verdict = |which: &str| {
        rims.iter()
            .find(|(w, _)| *w == which)
            .map(|(_, r)| RimVerdict {
                tag_id: r.tag_id.clone(),
                version: r.version.clone(),
                signer: r.signer.clone(),
                root: r.root.clone(),
                root_sha256: r.root_sha256.clone(),
                compared: r
                    .measurements
                    .iter()
                    .filter(|m| m.active)
                    .map(|m| m.index)
                    .collect(),
            })
    };
    let verdict = GpuVerdict {
        nonce: hex::encode(nonce),
        device_root: chain_ok.root_subject.clone(),
        device_root_sha256: chain_ok.root_sha256.clone(),
        attestation_key: chain_ok.leaf_subject.clone(),
        driver_version,
        vbios_version,
        chip_sku: report.opaque.chip_sku.clone(),
        project: report.opaque.project.clone(),
        project_sku: report.opaque.project_sku.clone(),
        board_id: report.opaque.board_id,
        fwid: report.opaque.fwid.as_ref().map(hex::encode),
        cc_mode: NOT_ATTESTED,
        production_mode: NOT_ATTESTED,
        revocation,
        driver_rim: rim_verdict("driver"),
        vbios_rim: rim_verdict("VBIOS"),
        measurement_blocks: report.blocks.len(),
        verified_at: now,
        checks,
    };
    Ok(VerifiedGpu { verdict, report })
}

/// Compares the report's measurements with the active measurements of verified RIMs (each
/// given with its name, `driver` or `VBIOS`): every active RIM index must be in the report
/// (SPDM index = RIM index + 1) with the RIM's size and a value equal to one of its
/// alternatives. Returns how many were compared; refuses an index active in two RIMs and names
/// every mismatching index. Checks nothing else (not the RIMs' versions or signatures).
pub fn compare_measurements(
    report: &GpuReport,
    rims: &[(&'static str, VerifiedRim)],
) -> Result<usize, GpuError> {
    let mut golden: Vec<(&'static str, &RimMeasurement)> = Vec::new();
    for (which, r) in rims {
        for m in r.measurements.iter().filter(|m| m.active) {
            if golden.iter().any(|(_, g)| g.index == m.index) {
                return Err(GpuError::IndexConflict(m.index));
            }
            golden.push((which, m));
        }
    }
    golden.sort_by_key(|(_, m)| m.index);
    let mut mismatches = Vec::new();
    for (source, m) in &golden {
        let block = u8::try_from(m.index + 1).ok().and_then(|i| report.block(i));
        let found = block.map(|b| hex::encode(&b.value));
        let ok = block.is_some_and(|b| {
            b.value.len() == m.size && m.alternatives.iter().any(|a| Some(a) == found.as_ref())
        });
        if !ok {
            mismatches.push(Mismatch {
                index: m.index,
                source,
                found,
            });
        }
    }
    if !mismatches.is_empty() {
        return Err(GpuError::Measurements { mismatches });
    }
    Ok(golden.len())
}

fn verify_rim_any(xml: &[u8], roots: &[Vec<u8>], now: u64) -> Result<VerifiedRim, RimError> {
    let mut last = RimError::Chain(ChainError::Empty);
    for root in roots {
        match rim::verify_rim(xml, root, now) {
            Ok(r) => return Ok(r),
            Err(e @ RimError::Chain(_)) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Why a policy file's `[gpu]` table was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GpuPolicyError {
    /// The file is not TOML, or its `[gpu]` table has unknown or mistyped keys.
    #[error("policy [gpu] table")]
    Toml(#[from] toml::de::Error),
}

impl GpuPolicy {
    /// Reads the `[gpu]` table of a policy file (other tables are ignored here); the strict
    /// default when the file has none.
    pub fn from_policy_toml(text: &str) -> Result<Self, GpuPolicyError> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            gpu: GpuPolicy,
        }
        let table: toml::Table = toml::from_str(text)?;
        let file: File = toml::Value::Table(table).try_into()?;
        Ok(file.gpu)
    }
}
