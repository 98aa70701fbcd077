//! Client policy: what a verifier accepts, and the only constructor of [`VerifiedEvidence`].
//!
//! A policy is TOML. Defaults are strict: vendor roots only, TDX TCB status `UpToDate` only,
//! no advisories, no debug guests, and no measurement accepted unless a pinned set matches.
//! SEV-SNP evidence has no TCB status; instead its reported and committed TCB must reach a
//! floor per AMD product (a built-in table, [`crate::snp_policy`]), its guest policy must not
//! allow MIGRATE_MA or DEBUG, and it must come from VMPL 0.
//! Everything that weakens this is spelled `dangerous_…` so a reviewer's grep finds it.
//!
//! ```toml
//! version = 1
//!
//! [trust]
//! intel = true                     # Intel SGX Root CA (TDX)
//! amd = true                       # AMD ARKs built into the sev crate (SNP)
//! # dangerous_simulated_intel_roots = ["<sha256 of a simulated root>"]
//! # dangerous_simulated_amd_roots = ["<sha256 of a simulated ARK>"]
//!
//! [tcb]
//! accepted_statuses = ["UpToDate"]      # TDX only: AMD assigns SNP no status
//! allowed_advisories = []
//! # snp_minimum = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }  # every SNP product
//!
//! [tcb.snp_floor]                  # per product; a product left out uses the built-in table
//! milan = { bootloader = 0, tee = 0, snp = 24, microcode = 219 }
//! genoa = { bootloader = 0, tee = 0, snp = 23, microcode = 84 }
//! # turin = { fmc = 0, bootloader = 0, tee = 0, snp = 0, microcode = 0 }  # no built-in floor
//! # dangerous_accept_milan = false  # [tcb]: Milan reports can be forged by the host's owner
//!
//! [collateral]                     # TDX collateral: where from, how fresh
//! # pccs_url = "https://api.trustedservices.intel.com"   # fetch it when a node carries none
//! # prefer_own = false             # true: use fetched collateral even when the node carries some
//! # min_tcb_evaluation_data_number = 20   # default: collateral::DEFAULT_MIN_TCB_EVALUATION_DATA_NUMBER
//! # max_age_days = 7               # default: none (nextUpdate, 30 days after issue, still applies)
//!
//! # dangerous_allow_debug = false
//! # dangerous_accept_any_measurement = false
//!
//! [[tdx]]                          # any listed set may match; unset registers are not pinned
//! name = "chrysalis cpu 0.1.0, 2 vCPU, 4096 MiB"
//! mr_td = "…"                      # required
//! rtmr0 = "…"
//! rtmr1 = "…"
//! rtmr2 = "…"
//! rtmr3 = "…"
//!
//! [[snp]]
//! name = "chrysalis cpu 0.1.0, 2 vCPU EPYC-v4"
//! measurement = "…"                # required
//! policy = 196608                  # the guest policy, exactly (0x30000)
//! vmpl = 0
//!
//! [gpu]                            # NVIDIA GPU evidence in RA-TLS certificates (docs/gpu.md)
//! require = true                   # refuse a node without it (gpu images); default false
//! # nvidia = true                  # NVIDIA's device identity and RIM roots (by SHA-256)
//! # dangerous_simulated_nvidia_roots = ["<sha256 of a simulated NVIDIA root>"]
//! # allowed_driver_versions = ["550.90.07"]
//! # allowed_vbios_versions = ["96.00.9f.00.01"]
//! # dangerous_no_ocsp = false
//! # dangerous_no_rims = false
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bundle::Evidence;
use crate::evidence::{
    Flags64, HostData, Measurement, Measurements, Platform, ReportData, Sha256, SnpMeasurements,
    SnpTcb, TdxMeasurements, TdxRegisters,
};
use crate::gpu::GpuPolicy;
use crate::snp_policy::{FloorSource, PolicyCheck, policy_bit_names};
use crate::tdx_attributes::TdAttributes;
use crate::verify::{
    self, AmdGeneration, CryptoVerified, TcbStatus, TrustAnchors, TrustRoot, Verdict, VerifyError,
};

/// The only policy format version.
pub const POLICY_VERSION: u32 = 1;

/// What a client accepts. See the module documentation for the TOML form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Format version; must be 1.
    pub version: u32,
    /// Which roots evidence may chain to.
    #[serde(default)]
    pub trust: TrustConfig,
    /// Which TCB states are acceptable.
    #[serde(default)]
    pub tcb: TcbConfig,
    /// Where TDX collateral comes from and how fresh it must be.
    #[serde(default, skip_serializing_if = "CollateralConfig::is_default")]
    pub collateral: CollateralConfig,
    /// Accept guests under debug, whose host can read or profile them: TDX TD_ATTRIBUTES bits
    /// 0-7 (DEBUG, HGS_PLUS_PROF, PERF_PROF, PMT_PROF; the reserved ones fail verification
    /// anyway), SNP guest policy DEBUG. Also leaves those bits out of a pinned `td_attributes`.
    /// Never in production.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dangerous_allow_debug: bool,
    /// Accept any measurement: the evidence then proves only "some guest on genuine hardware".
    #[serde(default, skip_serializing_if = "is_false")]
    pub dangerous_accept_any_measurement: bool,
    /// Pinned TDX measurement sets; any may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tdx: Vec<TdxPin>,
    /// Pinned SNP measurement sets; any may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snp: Vec<SnpPin>,
    /// What is accepted of a node's GPUs (RA-TLS certificates only: bare CPU evidence has none).
    #[serde(default, skip_serializing_if = "GpuPolicy::is_default")]
    pub gpu: GpuPolicy,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

/// Trusted roots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Trust Intel's SGX Root CA for TDX.
    #[serde(default = "yes")]
    pub intel: bool,
    /// Trust AMD's ARKs for SNP.
    #[serde(default = "yes")]
    pub amd: bool,
    /// Simulated Intel roots (by SHA-256 of the root certificate) to accept. For CI and
    /// development only: a simulated quote proves nothing about hardware.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dangerous_simulated_intel_roots: Vec<Sha256>,
    /// Simulated AMD ARKs (by SHA-256 of the ARK certificate) to accept for SNP. For CI and
    /// development only: a simulated report proves nothing about hardware.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dangerous_simulated_amd_roots: Vec<Sha256>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            intel: true,
            amd: true,
            dangerous_simulated_intel_roots: Vec::new(),
            dangerous_simulated_amd_roots: Vec::new(),
        }
    }
}

/// TCB rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcbConfig {
    /// Accepted TDX TCB statuses (Intel's spelling). Default: `["UpToDate"]`. Does not apply to
    /// SNP, which has no status: see `snp_minimum` and `snp_floor`.
    #[serde(default = "default_statuses")]
    pub accepted_statuses: Vec<TcbStatus>,
    /// Advisory IDs (e.g. "INTEL-SA-00837") that may apply to an accepted platform.
    #[serde(default)]
    pub allowed_advisories: Vec<String>,
    /// The lowest SNP TCB accepted, component by component, on every AMD product: the explicit
    /// override of `snp_floor` and of the built-in table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp_minimum: Option<SnpTcb>,
    /// The lowest SNP TCB accepted per AMD product; a product not listed uses
    /// [`crate::snp_policy::builtin_tcb_floor`], and one without a built-in floor (Turin) is
    /// refused unless listed here or `snp_minimum` is set.
    #[serde(default, skip_serializing_if = "SnpFloors::is_empty")]
    pub snp_floor: SnpFloors,
    /// Accepts EPYC Milan reports although their platform's owner can forge them
    /// ([`crate::snp_policy::MILAN_FORGERY`]): only where the owner is trusted anyway.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dangerous_accept_milan: bool,
}

/// Per-product SNP TCB floors (`[tcb.snp_floor]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpFloors {
    /// EPYC 7003 (Milan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milan: Option<SnpTcb>,
    /// EPYC 9004/8004 (Genoa).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genoa: Option<SnpTcb>,
    /// EPYC 9005 (Turin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turin: Option<SnpTcb>,
}

impl SnpFloors {
    /// The built-in table, written out (what `policy from-manifest` puts in a policy).
    pub fn builtin() -> Self {
        use crate::snp_policy::builtin_tcb_floor;
        Self {
            milan: builtin_tcb_floor(AmdGeneration::Milan),
            genoa: builtin_tcb_floor(AmdGeneration::Genoa),
            turin: builtin_tcb_floor(AmdGeneration::Turin),
        }
    }

    /// The floor listed for `product`.
    pub fn get(&self, product: AmdGeneration) -> Option<SnpTcb> {
        match product {
            AmdGeneration::Milan => self.milan,
            AmdGeneration::Genoa => self.genoa,
            AmdGeneration::Turin => self.turin,
        }
    }

    /// True when no product is listed.
    pub fn is_empty(&self) -> bool {
        self.milan.is_none() && self.genoa.is_none() && self.turin.is_none()
    }
}

fn default_statuses() -> Vec<TcbStatus> {
    vec![TcbStatus::UpToDate]
}

impl Default for TcbConfig {
    fn default() -> Self {
        Self {
            accepted_statuses: default_statuses(),
            allowed_advisories: Vec::new(),
            snp_minimum: None,
            snp_floor: SnpFloors::default(),
            dangerous_accept_milan: false,
        }
    }
}

/// TDX collateral: a verifier's own source, and freshness rules that apply to all collateral
/// (carried by the node, from its host, or fetched by the verifier).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollateralConfig {
    /// A PCCS or Intel PCS base URL (`https://api.trustedservices.intel.com`) the verifier
    /// fetches collateral from (PCS API v4) for nodes that carry none. Fetched collateral is
    /// verified against Intel's root like any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pccs_url: Option<String>,
    /// Use collateral from `pccs_url` even when the node carries some.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefer_own: bool,
    /// The lowest `tcbEvaluationDataNumber` accepted in the TCB info and QE identity. Unset:
    /// [`crate::collateral::DEFAULT_MIN_TCB_EVALUATION_DATA_NUMBER`] for Intel's production
    /// root, none for simulated roots. 0 turns the rule off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tcb_evaluation_data_number: Option<u32>,
    /// The oldest collateral accepted, in days since the earlier `issueDate` of its TCB info and
    /// QE identity. Unset: no limit beyond `nextUpdate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u32>,
}

impl CollateralConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The `tcbEvaluationDataNumber` floor for evidence chaining to `root`, if any.
    pub fn min_tcb_evaluation_data_number_for(&self, root: &TrustRoot) -> Option<u32> {
        match (self.min_tcb_evaluation_data_number, root) {
            (Some(0), _) => None,
            (Some(n), _) => Some(n),
            (None, TrustRoot::IntelSgxRootCa) => {
                Some(crate::collateral::DEFAULT_MIN_TCB_EVALUATION_DATA_NUMBER)
            }
            (None, _) => None,
        }
    }
}

/// A pinned set of TDX registers. `mr_td` is required; other registers left out are not checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxPin {
    /// A label shown in verdicts ("which image and VM shape matched").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Firmware measurement.
    pub mr_td: Measurement,
    /// RTMR0 (firmware configuration, ACPI tables; depends on the VM shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr0: Option<Measurement>,
    /// RTMR1 (kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr1: Option<Measurement>,
    /// RTMR2 (command line and initrd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr2: Option<Measurement>,
    /// RTMR3 (guest runtime extensions; zero for chrysalis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr3: Option<Measurement>,
    /// MRCONFIGID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mr_config_id: Option<Measurement>,
    /// MROWNER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mr_owner: Option<Measurement>,
    /// MROWNERCONFIG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mr_owner_config: Option<Measurement>,
    /// TD attributes, all 64 bits (8 bytes as the quote stores them; bits 0-7 are left out
    /// under `dangerous_allow_debug`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub td_attributes: Option<Flags64>,
    /// XFAM: which extended CPU state the TD may use (8 bytes as the quote stores them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xfam: Option<Flags64>,
}

impl TdxPin {
    /// A pin of `mr_td` alone; set the other registers to pin them too.
    pub fn new(mr_td: Measurement) -> Self {
        Self {
            name: None,
            mr_td,
            rtmr0: None,
            rtmr1: None,
            rtmr2: None,
            rtmr3: None,
            mr_config_id: None,
            mr_owner: None,
            mr_owner_config: None,
            td_attributes: None,
            xfam: None,
        }
    }

    /// A pin of `registers`: MRTD, RTMR1-3, and RTMR0 when `rtmr0_pinned`. Nothing else is set
    /// (no name, no launch values).
    pub fn from_registers(registers: &TdxRegisters, rtmr0_pinned: bool) -> Self {
        let [rtmr0, rtmr1, rtmr2, rtmr3] = registers.rtmr;
        Self {
            rtmr0: rtmr0_pinned.then_some(rtmr0),
            rtmr1: Some(rtmr1),
            rtmr2: Some(rtmr2),
            rtmr3: Some(rtmr3),
            ..Self::new(registers.mr_td)
        }
    }

    /// The registers of `t` that differ from this pin, each as "`reg` is X, pinned Y"; empty
    /// when `t` matches. With `allow_debug`, the "TD under debug" bits of TD_ATTRIBUTES are left
    /// out of a pinned `td_attributes`, so that `dangerous_allow_debug` alone accepts a debug TD
    /// of a pinned image; every other bit is still compared.
    pub fn diff(&self, t: &TdxMeasurements, allow_debug: bool) -> Vec<String> {
        let p = self;
        let mut out = Vec::new();
        let r = &t.registers;
        diff(&mut out, "mr_td", Some(&p.mr_td), &r.mr_td);
        for (i, pin) in [&p.rtmr0, &p.rtmr1, &p.rtmr2, &p.rtmr3]
            .into_iter()
            .enumerate()
        {
            diff(&mut out, &format!("rtmr{i}"), pin.as_ref(), &r.rtmr[i]);
        }
        diff(
            &mut out,
            "mr_config_id",
            p.mr_config_id.as_ref(),
            &t.mr_config_id,
        );
        diff(&mut out, "mr_owner", p.mr_owner.as_ref(), &t.mr_owner);
        diff(
            &mut out,
            "mr_owner_config",
            p.mr_owner_config.as_ref(),
            &t.mr_owner_config,
        );
        let tud_free = |f: &Flags64| {
            let mut a = TdAttributes::from_flags(*f);
            if allow_debug {
                a.0 &= !TdAttributes::TUD_MASK;
            }
            a.to_flags()
        };
        if let Some(pin) = &p.td_attributes
            && tud_free(pin) != tud_free(&t.td_attributes)
        {
            out.push(format!(
                "td_attributes is {} ({}), pinned {} ({})",
                t.td_attributes,
                TdAttributes::from_flags(t.td_attributes)
                    .set_names()
                    .join(" "),
                pin,
                TdAttributes::from_flags(*pin).set_names().join(" "),
            ));
        }
        diff(&mut out, "xfam", p.xfam.as_ref(), &t.xfam);
        out
    }
}

/// A pinned set of SNP fields. `measurement` is required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpPin {
    /// A label shown in verdicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Launch measurement.
    pub measurement: Measurement,
    /// HOST_DATA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<HostData>,
    /// Guest policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<u64>,
    /// VMPL that requested the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmpl: Option<u32>,
}

/// A policy file that could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not valid TOML, or a key is unknown, missing or of the wrong type.
    #[error("invalid policy: {0}")]
    Toml(#[from] toml::de::Error),
    /// The contents are well-formed but not acceptable.
    #[error("invalid policy: {key}: {message}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The policy could not be written as TOML.
    #[error("cannot write policy: {0}")]
    Serialize(#[from] toml::ser::Error),
}

/// One rule a piece of evidence failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The evidence did not verify cryptographically.
    Verification(VerifyError),
    /// The evidence chains to a root this policy does not trust.
    RootNotTrusted(TrustRoot),
    /// The TCB status is not in the accepted list.
    TcbStatus {
        /// The platform's status.
        status: TcbStatus,
        /// What the policy accepts.
        accepted: Vec<TcbStatus>,
    },
    /// A TDX verdict carries no TCB status.
    TcbStatusMissing,
    /// Advisories apply that the policy does not allow.
    Advisories(Vec<String>),
    /// An SNP TCB (reported or committed) has components below the floor of its product.
    SnpTcbBelowFloor {
        /// `reported_tcb` or `committed_tcb`.
        tcb: &'static str,
        /// The AMD product (Milan, Genoa, Turin).
        product: String,
        /// Each component below the floor: (name, value, minimum).
        below: Vec<(&'static str, u8, u8)>,
        /// Where the floor comes from.
        source: FloorSource,
    },
    /// The SNP product's reports can be forged by its owner, whatever their TCB.
    SnpProductForgeable {
        /// The AMD product.
        product: String,
        /// Why its reports prove nothing against its owner.
        why: &'static str,
    },
    /// The policy names no SNP TCB floor for this product and the built-in table has none.
    SnpNoTcbFloor {
        /// The product (or the root, when it names none).
        product: String,
    },
    /// A guest-policy bit that makes the guest untrusted is set.
    SnpGuestPolicyBit {
        /// The bit number.
        bit: u8,
        /// Its name in AMD's ABI (MIGRATE_MA, DEBUG).
        name: &'static str,
        /// What it lets the host do.
        why: &'static str,
    },
    /// The report was requested from a VMPL other than 0.
    SnpVmpl {
        /// The report's VMPL.
        vmpl: u32,
    },
    /// The collateral's `tcbEvaluationDataNumber` is below the policy's floor
    /// (`collateral.min_tcb_evaluation_data_number`): it predates a TCB recovery.
    TcbEvaluationDataNumber {
        /// The collateral's number (None: it carries none).
        found: Option<u32>,
        /// The floor.
        minimum: u32,
    },
    /// The collateral was issued longer ago than `collateral.max_age_days` allows.
    CollateralTooOld {
        /// The earlier `issueDate` of TCB info and QE identity (unix seconds; None: undated).
        issued: Option<u64>,
        /// When verification ran (unix seconds).
        at: u64,
        /// The limit in days.
        max_age_days: u32,
    },
    /// The guest is debuggable (a verdict whose `debug` is set without naming a flag).
    Debug,
    /// The guest is under debug: the host can read or profile it. Names each set flag (TDX
    /// TD_ATTRIBUTES bits 0-7: `debug`, `hgs_plus_prof`, `perf_prof`, `pmt_prof`, `tud_bitN`;
    /// SNP guest policy: `debug`).
    UnderDebug {
        /// The platform.
        platform: Platform,
        /// The set flags, by name.
        flags: Vec<String>,
    },
    /// No measurement set of this platform is pinned.
    NothingPinned(Platform),
    /// No pinned set matches; one line per pinned set saying which registers differ.
    MeasurementNotPinned {
        /// The platform.
        platform: Platform,
        /// Per pinned set: its label and the mismatching registers.
        mismatches: Vec<String>,
    },
    /// The evidence's report_data does not bind the key being used.
    KeyBinding {
        /// What the key requires.
        expected: Box<ReportData>,
        /// What the evidence carries.
        actual: Box<ReportData>,
    },
    /// The RA-TLS certificate itself is unacceptable (expired, too long-lived, malformed...).
    Certificate(String),
    /// The policy requires GPU evidence (`gpu.require`) and the certificate carries none.
    GpuEvidenceMissing,
    /// A GPU's evidence was refused.
    Gpu {
        /// The GPU's position in the node's record.
        index: usize,
        /// The failed check, with its causes.
        reason: String,
    },
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The verifier's errors keep their causes as sources; show the whole chain.
            RejectReason::Verification(e) => write!(f, "{}", crate::error::ErrorChain(e)),
            RejectReason::RootNotTrusted(r) => write!(f, "root not trusted by policy: {r}"),
            RejectReason::TcbStatus { status, accepted } => {
                let acc: Vec<_> = accepted.iter().map(|s| s.as_str()).collect();
                write!(
                    f,
                    "TCB status {status} is not accepted (accepted: {})",
                    acc.join(", ")
                )
            }
            RejectReason::TcbStatusMissing => f.write_str("TDX verdict carries no TCB status"),
            RejectReason::Advisories(ids) => {
                write!(
                    f,
                    "TCB advisories not allowed by policy: {}",
                    ids.join(", ")
                )
            }
            RejectReason::SnpTcbBelowFloor {
                tcb,
                product,
                below,
                source,
            } => {
                let parts: Vec<String> = below
                    .iter()
                    .map(|(name, v, min)| format!("{name} {v} < {min}"))
                    .collect();
                write!(
                    f,
                    "SNP {tcb} below the {product} TCB floor ({source}): {}",
                    parts.join(", ")
                )
            }
            RejectReason::SnpProductForgeable { product, why } => write!(
                f,
                "SNP product {product} refused: {why}; only tcb.dangerous_accept_milan accepts it"
            ),
            RejectReason::SnpNoTcbFloor { product } => write!(
                f,
                "SNP TCB floor unknown for {product}: the built-in table has none; \
                 set tcb.snp_floor or tcb.snp_minimum"
            ),
            RejectReason::SnpGuestPolicyBit { bit, name, why } => write!(
                f,
                "SNP guest policy bit {bit} {name} is set: {why} (forbidden by policy)"
            ),
            RejectReason::SnpVmpl { vmpl } => write!(
                f,
                "SNP report requested at VMPL {vmpl}: the policy requires VMPL 0"
            ),
            RejectReason::TcbEvaluationDataNumber { found, minimum } => match found {
                Some(n) => write!(
                    f,
                    "collateral.min_tcb_evaluation_data_number: collateral has \
                     tcbEvaluationDataNumber {n}, the policy requires at least {minimum} \
                     (collateral from before a TCB recovery)"
                ),
                None => write!(
                    f,
                    "collateral.min_tcb_evaluation_data_number: collateral has no \
                     tcbEvaluationDataNumber, the policy requires at least {minimum}"
                ),
            },
            RejectReason::CollateralTooOld {
                issued,
                at,
                max_age_days,
            } => match issued {
                Some(i) => write!(
                    f,
                    "collateral.max_age_days: collateral issued at {i} is {} days old at {at}, \
                     the policy allows {max_age_days}",
                    at.saturating_sub(*i) / 86_400
                ),
                None => write!(
                    f,
                    "collateral.max_age_days: collateral has no issueDate, the policy allows \
                     {max_age_days} days"
                ),
            },
            RejectReason::Debug => {
                f.write_str("guest is debuggable (debug is forbidden by policy)")
            }
            RejectReason::UnderDebug { platform, flags } => {
                let field = match platform {
                    Platform::Tdx => "TD_ATTRIBUTES",
                    Platform::Snp => "guest policy",
                };
                write!(
                    f,
                    "guest is under debug: {platform} {field} has {} set (the host can read or \
                     profile the guest; forbidden unless the policy sets dangerous_allow_debug)",
                    flags.join(", ")
                )
            }
            RejectReason::NothingPinned(p) => {
                write!(
                    f,
                    "measurement not pinned: the policy pins no {p} measurements"
                )
            }
            RejectReason::MeasurementNotPinned {
                platform,
                mismatches,
            } => write!(
                f,
                "measurement not pinned: no pinned {platform} set matches ({})",
                mismatches.join("; ")
            ),
            RejectReason::KeyBinding { expected, actual } => write!(
                f,
                "evidence is not bound to this key: report_data is {actual}, the key needs {expected}"
            ),
            RejectReason::Certificate(m) => write!(f, "certificate: {m}"),
            RejectReason::GpuEvidenceMissing => f.write_str(
                "no GPU evidence: the policy requires it (gpu.require) and the certificate carries none",
            ),
            RejectReason::Gpu { index, reason } => write!(f, "GPU {index}: {reason}"),
        }
    }
}

/// Evidence was not accepted. Lists every rule that failed.
#[derive(Clone, PartialEq, Eq, Error)]
pub struct Rejection {
    /// The failed rules, in the order they were checked.
    pub reasons: Vec<RejectReason>,
}

impl Rejection {
    pub(crate) fn one(r: RejectReason) -> Self {
        Self { reasons: vec![r] }
    }

    /// The reasons as strings.
    pub fn messages(&self) -> Vec<String> {
        self.reasons.iter().map(ToString::to_string).collect()
    }
}

// rustls shows a verifier's error with Debug; make that the readable reason, not a struct dump.
impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rejected: {}", self.messages().join("; "))
    }
}

impl From<VerifyError> for Rejection {
    fn from(e: VerifyError) -> Self {
        Rejection::one(RejectReason::Verification(e))
    }
}

/// What a policy concluded about verified evidence that is bound to no key: for reports such as
/// `chrysalis evidence verify`. It is not proof: nothing that releases a prompt or a key takes
/// one, because the evidence may have been made for someone else's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appraisal {
    verdict: Verdict,
    matched_pin: Option<String>,
}

impl Appraisal {
    /// What was verified.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// The label of the pinned set that matched (None when measurements were not pinned).
    pub fn matched_pin(&self) -> Option<&str> {
        self.matched_pin.as_deref()
    }
}

/// Proof that evidence verified, that its report_data is the key binding the caller expected,
/// and that a policy accepted it. Only [`Policy::evaluate`] constructs one, and only from a
/// [`CryptoVerified`] that verification produced, so code that requires it cannot be reached by
/// skipping a check, by a hand-made or deserialized [`Verdict`], or by evidence made for
/// another key (the rustls `HandshakeSignatureValid` pattern).
///
/// A verdict that verification did not produce cannot be evaluated:
///
/// ```compile_fail,E0308
/// use chrysalis_attestation::{Policy, ReportData, Verdict, VerifiedEvidence};
/// fn forge(p: &Policy, v: Verdict) -> VerifiedEvidence {
///     p.evaluate(v, &ReportData::ZERO).unwrap()
/// }
/// ```
///
/// nor can the proof be built directly:
///
/// ```compile_fail,E0063
/// use chrysalis_attestation::{Appraisal, VerifiedEvidence};
/// fn forge(a: Appraisal) -> VerifiedEvidence {
///     VerifiedEvidence { appraisal: a }
/// }
/// ```
///
/// The honest path compiles:
///
/// ```
/// use chrysalis_attestation::verify::CryptoVerified;
/// use chrysalis_attestation::{Policy, ReportData, Rejection, VerifiedEvidence};
/// fn accept(p: &Policy, v: CryptoVerified, key: &ReportData) -> Result<VerifiedEvidence, Rejection> {
///     p.evaluate(v, key)
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEvidence {
    appraisal: Appraisal,
    _seal: Seal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Seal;

impl VerifiedEvidence {
    /// What was verified.
    pub fn verdict(&self) -> &Verdict {
        &self.appraisal.verdict
    }

    /// The label of the pinned set that matched (None when measurements were not pinned).
    pub fn matched_pin(&self) -> Option<&str> {
        self.appraisal.matched_pin()
    }

    /// The policy's conclusion, as a report value.
    pub fn appraisal(&self) -> &Appraisal {
        &self.appraisal
    }
}

impl Policy {
    /// Parses and validates a policy.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let p: Policy = toml::from_str(text)?;
        p.validate()?;
        Ok(p)
    }

    /// Writes the policy as TOML.
    pub fn to_toml(&self) -> Result<String, PolicyError> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Strict defaults with the given pins (vendor roots, UpToDate only, no debug).
    pub fn pinned(tdx: Vec<TdxPin>, snp: Vec<SnpPin>) -> Self {
        Self {
            version: POLICY_VERSION,
            trust: TrustConfig::default(),
            tcb: TcbConfig::default(),
            collateral: CollateralConfig::default(),
            dangerous_allow_debug: false,
            dangerous_accept_any_measurement: false,
            tdx,
            snp,
            gpu: GpuPolicy::default(),
        }
    }

    /// Chain, signature, TCB and debug rules with vendor roots, and no measurement pin: what
    /// `chrysalis evidence verify` applies without `--policy`. It proves genuine hardware,
    /// not which software runs there.
    pub fn dangerous_unpinned() -> Self {
        Self {
            dangerous_accept_any_measurement: true,
            ..Self::pinned(Vec::new(), Vec::new())
        }
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.version != POLICY_VERSION {
            return Err(PolicyError::Invalid {
                key: "version",
                message: format!(
                    "{} is not supported (expected {POLICY_VERSION})",
                    self.version
                ),
            });
        }
        if self.tcb.accepted_statuses.is_empty() {
            return Err(PolicyError::Invalid {
                key: "tcb.accepted_statuses",
                message: "must list at least one status (an empty list accepts nothing)".into(),
            });
        }
        if let Some(url) = &self.collateral.pccs_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(PolicyError::Invalid {
                key: "collateral.pccs_url",
                message: format!("{url:?} is not an http(s) URL"),
            });
        }
        if !self.trust.intel
            && !self.trust.amd
            && self.trust.dangerous_simulated_intel_roots.is_empty()
            && self.trust.dangerous_simulated_amd_roots.is_empty()
        {
            return Err(PolicyError::Invalid {
                key: "trust",
                message: "trusts no root at all, so nothing can ever be accepted".into(),
            });
        }
        if self.gpu.require
            && !self.gpu.nvidia
            && self.gpu.dangerous_simulated_nvidia_roots.is_empty()
        {
            return Err(PolicyError::Invalid {
                key: "gpu",
                message: "requires GPU evidence but trusts no NVIDIA root, so nothing can ever be accepted".into(),
            });
        }
        Ok(())
    }

    /// The roots this policy trusts, for [`verify::verify`].
    pub fn trust_anchors(&self) -> TrustAnchors {
        let mut a = TrustAnchors::none()
            .with_intel(self.trust.intel)
            .with_amd(self.trust.amd);
        for r in &self.trust.dangerous_simulated_intel_roots {
            a = a.dangerous_with_simulated_intel_root(*r);
        }
        for r in &self.trust.dangerous_simulated_amd_roots {
            a = a.dangerous_with_simulated_amd_root(*r);
        }
        a
    }

    /// Verifies evidence against this policy's roots at `now` and applies every rule to the
    /// verdict, without a key binding: a report, not proof (see [`Appraisal`]).
    /// `collateral` replaces carried TDX collateral when given.
    pub fn appraise(
        &self,
        evidence: &Evidence,
        collateral: Option<&dcap_qvl::QuoteCollateralV3>,
        now: u64,
    ) -> Result<Appraisal, Rejection> {
        let verdict = verify::verify(evidence, &self.trust_anchors(), collateral, now)?;
        let verdict = verdict.into_verdict();
        let matched_pin = self.rules(&verdict)?;
        Ok(Appraisal {
            verdict,
            matched_pin,
        })
    }

    /// The only constructor of [`VerifiedEvidence`]: accepts `verified` when its report_data is
    /// `expected_report_data` (the binding of the key in use, e.g.
    /// [`crate::ratls::report_data_for_spki`]) and every rule of this policy holds. The
    /// rejection names each check that failed, the key binding first.
    pub fn evaluate(
        &self,
        verified: CryptoVerified,
        expected_report_data: &ReportData,
    ) -> Result<VerifiedEvidence, Rejection> {
        let verdict = verified.into_verdict();
        let mut reasons = Vec::new();
        if verdict.report_data != *expected_report_data {
            reasons.push(RejectReason::KeyBinding {
                expected: Box::new(*expected_report_data),
                actual: Box::new(verdict.report_data),
            });
        }
        match self.rules(&verdict) {
            Ok(matched_pin) if reasons.is_empty() => Ok(VerifiedEvidence {
                appraisal: Appraisal {
                    verdict,
                    matched_pin,
                },
                _seal: Seal,
            }),
            Ok(_) => Err(Rejection { reasons }),
            Err(mut r) => {
                reasons.append(&mut r.reasons);
                Err(Rejection { reasons })
            }
        }
    }

    /// Applies every rule of this policy to a verdict and returns no proof: for reports and
    /// tests on verdicts that verification did not produce. The rejection names each rule that
    /// failed. The key binding is not checked here.
    pub fn check(&self, verdict: &Verdict) -> Result<(), Rejection> {
        self.rules(verdict).map(|_| ())
    }

    /// Every rule; Ok carries the label of the pinned set that matched.
    fn rules(&self, verdict: &Verdict) -> Result<Option<String>, Rejection> {
        let mut reasons = Vec::new();
        let root_ok = match &verdict.root {
            TrustRoot::IntelSgxRootCa => self.trust.intel,
            TrustRoot::AmdArk { .. } => self.trust.amd,
            TrustRoot::SimulatedIntel { sha256 } => {
                self.trust.dangerous_simulated_intel_roots.contains(sha256)
            }
            TrustRoot::SimulatedAmd { sha256 } => {
                self.trust.dangerous_simulated_amd_roots.contains(sha256)
            }
        };
        if !root_ok {
            reasons.push(RejectReason::RootNotTrusted(verdict.root.clone()));
        }
        // AMD assigns no status: SNP is held to its TCB floor below instead.
        if verdict.platform == Platform::Tdx {
            match verdict.tcb_status {
                Some(s) if self.tcb.accepted_statuses.contains(&s) => {}
                Some(status) => reasons.push(RejectReason::TcbStatus {
                    status,
                    accepted: self.tcb.accepted_statuses.clone(),
                }),
                None => reasons.push(RejectReason::TcbStatusMissing),
            }
        }
        let bad: Vec<String> = verdict
            .advisory_ids
            .iter()
            .filter(|id| !self.tcb.allowed_advisories.contains(id))
            .cloned()
            .collect();
        if !bad.is_empty() {
            reasons.push(RejectReason::Advisories(bad));
        }
        if let Measurements::Snp(m) = &verdict.measurements {
            reasons.extend(
                self.snp_checks(&verdict.root, m)
                    .into_iter()
                    .filter_map(|(_, r)| r),
            );
        }
        if verdict.platform == Platform::Tdx {
            reasons.extend(self.collateral_freshness(verdict));
        }
        // SNP's DEBUG bit is refused by name in snp_checks.
        if !self.dangerous_allow_debug && verdict.platform != Platform::Snp {
            // The flags are read from the measurements as well as the verdict's own fields, so a
            // verdict that says `debug: false` beside a TUD bit is still refused.
            let mut flags = verdict.measurements.debug_flags();
            for f in &verdict.debug_flags {
                if !flags.contains(f) {
                    flags.push(f.clone());
                }
            }
            if !flags.is_empty() {
                reasons.push(RejectReason::UnderDebug {
                    platform: verdict.measurements.platform(),
                    flags,
                });
            } else if verdict.debug {
                reasons.push(RejectReason::Debug);
            }
        }
        let matched_pin = if self.dangerous_accept_any_measurement {
            None
        } else {
            match self.match_pins(&verdict.measurements) {
                Ok(name) => Some(name),
                Err(r) => {
                    reasons.push(r);
                    None
                }
            }
        };
        if reasons.is_empty() {
            Ok(matched_pin)
        } else {
            Err(Rejection { reasons })
        }
    }

    /// The outcome of each platform check this policy makes of `verdict`, passed or not, for
    /// display (`chrysalis evidence verify --json`). Today these are the SNP checks (TCB floor
    /// on reported and committed TCB, MIGRATE_MA, DEBUG, VMPL); empty for TDX. Produces no
    /// proof: only [`Policy::appraise`] accepts evidence.
    pub fn checks(&self, verdict: &Verdict) -> Vec<PolicyCheck> {
        match &verdict.measurements {
            Measurements::Snp(m) => self
                .snp_checks(&verdict.root, m)
                .into_iter()
                .map(|(c, _)| c)
                .collect(),
            Measurements::Tdx(_) => Vec::new(),
        }
    }

    /// The `[collateral]` freshness rules for a TDX verdict.
    fn collateral_freshness(&self, verdict: &Verdict) -> Vec<RejectReason> {
        let mut reasons = Vec::new();
        if let Some(minimum) = self
            .collateral
            .min_tcb_evaluation_data_number_for(&verdict.root)
            && verdict
                .tcb_evaluation_data_number
                .is_none_or(|n| n < minimum)
        {
            reasons.push(RejectReason::TcbEvaluationDataNumber {
                found: verdict.tcb_evaluation_data_number,
                minimum,
            });
        }
        if let Some(max_age_days) = self.collateral.max_age_days {
            let too_old = match verdict.collateral_issued {
                Some(i) => verdict.verified_at.saturating_sub(i) > u64::from(max_age_days) * 86_400,
                None => true,
            };
            if too_old {
                reasons.push(RejectReason::CollateralTooOld {
                    issued: verdict.collateral_issued,
                    at: verdict.verified_at,
                    max_age_days,
                });
            }
        }
        reasons
    }

    fn match_pins(&self, m: &Measurements) -> Result<String, RejectReason> {
        let (platform, results): (Platform, Vec<(String, Vec<String>)>) = match m {
            Measurements::Tdx(t) => (
                Platform::Tdx,
                self.tdx
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (label(&p.name, i), p.diff(t, self.dangerous_allow_debug)))
                    .collect(),
            ),
            Measurements::Snp(s) => (
                Platform::Snp,
                self.snp
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (label(&p.name, i), snp_diff(p, s)))
                    .collect(),
            ),
        };
        if results.is_empty() {
            return Err(RejectReason::NothingPinned(platform));
        }
        if let Some((name, _)) = results.iter().find(|(_, d)| d.is_empty()) {
            return Ok(name.clone());
        }
        Err(RejectReason::MeasurementNotPinned {
            platform,
            mismatches: results
                .into_iter()
                .map(|(n, d)| format!("{n}: {}", d.join(", ")))
                .collect(),
        })
    }
}

fn label(name: &Option<String>, i: usize) -> String {
    name.clone().unwrap_or_else(|| format!("set #{}", i + 1))
}

fn diff<T: PartialEq + fmt::Display>(
    out: &mut Vec<String>,
    what: &str,
    pinned: Option<&T>,
    actual: &T,
) {
    if let Some(p) = pinned
        && p != actual
    {
        out.push(format!("{what} is {actual}, pinned {p}"));
    }
}

fn snp_diff(p: &SnpPin, s: &SnpMeasurements) -> Vec<String> {
    let mut out = Vec::new();
    diff(
        &mut out,
        "measurement",
        Some(&p.measurement),
        &s.measurement,
    );
    diff(&mut out, "host_data", p.host_data.as_ref(), &s.host_data);
    if let Some(pinned) = p.policy
        && pinned != s.policy
    {
        out.push(format!(
            "policy is {:#x}, pinned {pinned:#x} (differs in {})",
            s.policy,
            policy_bit_names(pinned ^ s.policy).join(", ")
        ));
    }
    diff(&mut out, "vmpl", p.vmpl.as_ref(), &s.vmpl);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::ReportData;

    fn tdx_verdict() -> Verdict {
        Verdict {
            platform: Platform::Tdx,
            evidence_version: 4,
            root: TrustRoot::IntelSgxRootCa,
            tcb_status: Some(TcbStatus::UpToDate),
            advisory_ids: vec![],
            measurements: Measurements::Tdx(TdxMeasurements {
                registers: TdxRegisters {
                    mr_td: Measurement([1; 48]),
                    rtmr: [2, 3, 4, 0].map(|b| Measurement([b; 48])),
                },
                mr_config_id: Measurement::ZERO,
                mr_owner: Measurement::ZERO,
                mr_owner_config: Measurement::ZERO,
                mr_seam: Measurement([9; 48]),
                td_attributes: Flags64([0; 8]),
                xfam: Flags64([0xe7, 0x02, 0x06, 0, 0, 0, 0, 0]),
            }),
            debug: false,
            debug_flags: vec![],
            report_data: ReportData([0; 64]),
            valid_until: None,
            tcb_evaluation_data_number: Some(
                crate::collateral::DEFAULT_MIN_TCB_EVALUATION_DATA_NUMBER,
            ),
            collateral_issued: Some(1_790_000_000),
            verified_at: 1_790_000_000 + 2 * 86_400,
        }
    }

    fn pin() -> TdxPin {
        TdxPin {
            name: Some("cpu".into()),
            mr_td: Measurement([1; 48]),
            rtmr0: None,
            rtmr1: Some(Measurement([3; 48])),
            rtmr2: Some(Measurement([4; 48])),
            rtmr3: None,
            mr_config_id: None,
            mr_owner: None,
            mr_owner_config: None,
            td_attributes: None,
            xfam: None,
        }
    }

    #[test]
    fn accepts_matching_pin_and_names_it() {
        let ok = Policy::pinned(vec![pin()], vec![])
            .evaluate(CryptoVerified::new(tdx_verdict()), &ReportData([0; 64]))
            .unwrap();
        assert_eq!(ok.matched_pin(), Some("cpu"));
    }

    #[test]
    fn proof_requires_the_expected_key_binding() {
        let p = Policy::pinned(vec![pin()], vec![]);
        let err = p
            .evaluate(CryptoVerified::new(tdx_verdict()), &ReportData([1; 64]))
            .unwrap_err();
        assert!(
            matches!(&err.reasons[..], [RejectReason::KeyBinding { .. }]),
            "{err}"
        );
        assert!(err.to_string().contains("not bound to this key"), "{err}");
        // The binding is reported with every other failed rule, first.
        let mut v = tdx_verdict();
        v.debug = true;
        let err = p
            .evaluate(CryptoVerified::new(v.clone()), &ReportData([1; 64]))
            .unwrap_err();
        assert!(matches!(
            &err.reasons[..],
            [RejectReason::KeyBinding { .. }, RejectReason::Debug]
        ));
        // check() applies the same rules and yields no proof.
        assert_eq!(p.check(&v).unwrap_err().reasons, vec![RejectReason::Debug]);
        assert!(p.check(&tdx_verdict()).is_ok());
    }

    #[test]
    fn rejection_names_every_failed_rule() {
        let mut v = tdx_verdict();
        v.tcb_status = Some(TcbStatus::OutOfDate);
        v.advisory_ids = vec!["INTEL-SA-00837".into()];
        v.debug = true;
        v.root = TrustRoot::SimulatedIntel {
            sha256: Sha256([5; 32]),
        };
        let mut p = pin();
        p.rtmr1 = Some(Measurement([0xee; 48]));
        let err = Policy::pinned(vec![p], vec![]).check(&v).unwrap_err();
        let msg = err.to_string();
        for needle in [
            "root not trusted",
            "OutOfDate",
            "INTEL-SA-00837",
            "debug",
            "measurement not pinned",
            "rtmr1",
        ] {
            assert!(msg.contains(needle), "{needle} missing in {msg}");
        }
        assert_eq!(err.reasons.len(), 5);
    }

    #[test]
    fn nothing_pinned_is_a_rejection_and_unpinned_is_explicit() {
        let err = Policy::pinned(vec![], vec![])
            .check(&tdx_verdict())
            .unwrap_err();
        assert!(err.to_string().contains("pins no tdx"), "{err}");
        let ok = Policy::dangerous_unpinned()
            .evaluate(CryptoVerified::new(tdx_verdict()), &ReportData([0; 64]))
            .unwrap();
        assert_eq!(ok.matched_pin(), None);
    }

    #[test]
    fn simulated_root_only_when_named() {
        let sha = Sha256([5; 32]);
        let mut v = tdx_verdict();
        v.root = TrustRoot::SimulatedIntel { sha256: sha };
        let mut p = Policy::pinned(vec![pin()], vec![]);
        assert!(p.check(&v).is_err());
        p.trust.dangerous_simulated_intel_roots.push(sha);
        assert!(p.check(&v).is_ok());
    }

    /// The recorded Milan report's TCB (2023 firmware): below the built-in Milan floor.
    const OLD_MILAN: SnpTcb = SnpTcb {
        fmc: None,
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
    };

    fn snp_verdict(product: &str, tcb: SnpTcb) -> Verdict {
        Verdict {
            platform: Platform::Snp,
            evidence_version: 2,
            root: TrustRoot::AmdArk {
                product: product.into(),
                sha256: Sha256([1; 32]),
            },
            tcb_status: None,
            measurements: Measurements::Snp(SnpMeasurements {
                measurement: Measurement([7; 48]),
                host_data: HostData([0; 32]),
                policy: crate::measure::snp::CHRYSALIS_GUEST_POLICY,
                reported_tcb: tcb,
                committed_tcb: tcb,
                launch_tcb: tcb,
                current_tcb: tcb,
                chip_id: crate::evidence::ChipId([0; 64]),
                vmpl: 0,
            }),
            ..tdx_verdict()
        }
    }

    fn snp_mut(v: &mut Verdict) -> &mut SnpMeasurements {
        match &mut v.measurements {
            Measurements::Snp(m) => m,
            Measurements::Tdx(_) => unreachable!(),
        }
    }

    fn milan_floor() -> SnpTcb {
        crate::snp_policy::builtin_tcb_floor(AmdGeneration::Milan).unwrap()
    }

    fn genoa_floor() -> SnpTcb {
        crate::snp_policy::builtin_tcb_floor(AmdGeneration::Genoa).unwrap()
    }

    /// The floor tests use the recorded Milan figures; Milan itself needs the dangerous switch.
    fn accepting_milan() -> Policy {
        let mut p = Policy::dangerous_unpinned();
        p.tcb.dangerous_accept_milan = true;
        p
    }

    #[test]
    fn milan_is_refused_at_any_tcb_unless_dangerous_accept_milan() {
        let high = SnpTcb {
            fmc: None,
            bootloader: 255,
            tee: 255,
            snp: 255,
            microcode: 255,
        };
        let v = snp_verdict("Milan", high);
        let err = Policy::dangerous_unpinned().check(&v).unwrap_err();
        assert!(
            matches!(&err.reasons[..], [RejectReason::SnpProductForgeable { product, .. }] if product == "Milan"),
            "{err}"
        );
        assert!(err.to_string().contains("arXiv 2605.12990"), "{err}");
        let checks = Policy::dangerous_unpinned().checks(&v);
        assert_eq!((checks[0].check, checks[0].passed), ("snp.product", false));
        accepting_milan().check(&v).unwrap();
        // The switch round-trips through TOML and is not written when off.
        let text = accepting_milan().to_toml().unwrap();
        assert!(text.contains("dangerous_accept_milan = true"), "{text}");
        assert_eq!(Policy::from_toml(&text).unwrap(), accepting_milan());
        let off = Policy::dangerous_unpinned().to_toml().unwrap();
        assert!(!off.contains("dangerous_accept_milan"), "{off}");
    }

    #[test]
    fn snp_has_no_tcb_status_and_accepted_statuses_do_not_apply() {
        let v = snp_verdict("Genoa", genoa_floor());
        let mut p = Policy::dangerous_unpinned();
        p.tcb.accepted_statuses = vec![TcbStatus::OutOfDate];
        p.check(&v).unwrap();
        assert_eq!(v.tcb_status, None);
        // A TDX verdict without a status is refused, never waved through.
        let mut t = tdx_verdict();
        t.tcb_status = None;
        let err = Policy::dangerous_unpinned().check(&t).unwrap_err();
        assert_eq!(err.reasons, vec![RejectReason::TcbStatusMissing]);
    }

    #[test]
    fn builtin_floor_refuses_old_milan_firmware_by_component() {
        let err = accepting_milan()
            .check(&snp_verdict("Milan", OLD_MILAN))
            .unwrap_err();
        let msgs = err.messages();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert_eq!(
            msgs[0],
            "SNP reported_tcb below the Milan TCB floor (built-in table, AMD-SB-3019 \
             (CVE-2024-56161), 2026-12): snp 8 < 24, microcode 115 < 219"
        );
        assert!(
            msgs[1].starts_with("SNP committed_tcb below the Milan"),
            "{msgs:?}"
        );
        // At the floor exactly: accepted. Genoa's floor is its own.
        accepting_milan()
            .check(&snp_verdict("Milan", milan_floor()))
            .unwrap();
        let genoa = genoa_floor();
        Policy::dangerous_unpinned()
            .check(&snp_verdict("Genoa", genoa))
            .unwrap();
        let err = Policy::dangerous_unpinned()
            .check(&snp_verdict(
                "Genoa",
                SnpTcb {
                    microcode: 83,
                    ..genoa
                },
            ))
            .unwrap_err();
        assert!(err.to_string().contains("microcode 83 < 84"), "{err}");
    }

    #[test]
    fn committed_tcb_is_floored_too_and_launch_tcb_is_not() {
        let mut v = snp_verdict("Milan", milan_floor());
        snp_mut(&mut v).launch_tcb = OLD_MILAN;
        accepting_milan().check(&v.clone()).unwrap();
        snp_mut(&mut v).committed_tcb = SnpTcb {
            snp: 23,
            ..milan_floor()
        };
        let err = accepting_milan().check(&v).unwrap_err();
        assert_eq!(
            err.messages(),
            [
                "SNP committed_tcb below the Milan TCB floor (built-in table, AMD-SB-3019 \
                 (CVE-2024-56161), 2026-12): snp 23 < 24"
            ]
        );
    }

    #[test]
    fn explicit_floors_override_the_table() {
        let v = snp_verdict("Milan", OLD_MILAN);
        let mut p = accepting_milan();
        p.tcb.snp_floor.milan = Some(OLD_MILAN);
        p.check(&v.clone()).unwrap();
        // snp_minimum is the override for every product, above snp_floor.
        p.tcb.snp_minimum = Some(SnpTcb {
            microcode: 200,
            ..OLD_MILAN
        });
        let msg = p.check(&v.clone()).unwrap_err().to_string();
        assert!(
            msg.contains("(policy tcb.snp_minimum): microcode 115 < 200"),
            "{msg}"
        );
        p.tcb.snp_minimum = Some(OLD_MILAN);
        p.check(&v).unwrap();
    }

    #[test]
    fn turin_has_no_builtin_floor_and_needs_one_named() {
        let turin = SnpTcb {
            fmc: Some(1),
            bootloader: 1,
            tee: 1,
            snp: 1,
            microcode: 9,
        };
        let v = snp_verdict("Turin", turin);
        let err = Policy::dangerous_unpinned().check(&v.clone()).unwrap_err();
        assert!(
            matches!(&err.reasons[..], [RejectReason::SnpNoTcbFloor { product }] if product == "Turin"),
            "{err}"
        );
        let mut p = Policy::dangerous_unpinned();
        p.tcb.snp_floor.turin = Some(SnpTcb {
            fmc: Some(2),
            ..turin
        });
        let msg = p.check(&v.clone()).unwrap_err().to_string();
        assert!(msg.contains("fmc 1 < 2"), "{msg}");
        p.tcb.snp_floor.turin = Some(turin);
        p.check(&v).unwrap();
    }

    #[test]
    fn migrate_ma_debug_and_vmpl_are_refused_by_name_without_pins() {
        let base = snp_verdict("Genoa", genoa_floor());
        let p = Policy::dangerous_unpinned();

        let mut v = base.clone();
        snp_mut(&mut v).policy |= SnpMeasurements::POLICY_MIGRATE_MA_BIT;
        let err = p.check(&v).unwrap_err();
        assert_eq!(
            err.reasons,
            vec![RejectReason::SnpGuestPolicyBit {
                bit: 18,
                name: "MIGRATE_MA",
                why: "a migration agent may export the guest's memory",
            }]
        );

        let mut v = base.clone();
        snp_mut(&mut v).policy |= SnpMeasurements::POLICY_DEBUG_BIT;
        v.debug = true;
        let err = p.check(&v.clone()).unwrap_err();
        assert_eq!(err.reasons.len(), 1, "{err}");
        assert!(err.to_string().contains("bit 19 DEBUG is set"), "{err}");
        let mut lenient = p.clone();
        lenient.dangerous_allow_debug = true;
        lenient.check(&v).unwrap();

        let mut v = base.clone();
        snp_mut(&mut v).vmpl = 1;
        let err = p.check(&v).unwrap_err();
        assert_eq!(err.reasons, vec![RejectReason::SnpVmpl { vmpl: 1 }]);
        assert!(err.to_string().contains("VMPL 1"), "{err}");

        // Each outcome is listed, passed or not.
        let mut v = base;
        snp_mut(&mut v).vmpl = 2;
        let checks = p.checks(&v);
        let names: Vec<_> = checks.iter().map(|c| (c.check, c.passed)).collect();
        assert_eq!(
            names,
            [
                ("snp.reported_tcb", true),
                ("snp.committed_tcb", true),
                ("snp.policy.migrate_ma", true),
                ("snp.policy.debug", true),
                ("snp.vmpl", false),
            ]
        );
        assert!(p.checks(&tdx_verdict()).is_empty());
    }

    #[test]
    fn pinned_guest_policy_mismatch_names_the_bits() {
        let mut v = snp_verdict("Genoa", genoa_floor());
        // SMT off: not refused by default, but a pin of the launch policy catches it.
        snp_mut(&mut v).policy = 0x2_0000;
        let pin = SnpPin {
            name: Some("cpu".into()),
            measurement: Measurement([7; 48]),
            host_data: None,
            policy: Some(crate::measure::snp::CHRYSALIS_GUEST_POLICY),
            vmpl: Some(0),
        };
        Policy::dangerous_unpinned().check(&v.clone()).unwrap();
        let err = Policy::pinned(vec![], vec![pin]).check(&v).unwrap_err();
        assert!(
            err.to_string()
                .contains("policy is 0x20000, pinned 0x30000 (differs in bit 16 SMT)"),
            "{err}"
        );
    }

    fn with_attributes(bits: u64) -> Verdict {
        let mut v = tdx_verdict();
        if let Measurements::Tdx(t) = &mut v.measurements {
            t.td_attributes = TdAttributes(bits).to_flags();
        }
        v
    }

    const SEPT: u64 = 1 << TdAttributes::SEPT_VE_DISABLE;

    /// Every TUD bit is refused by name even where the verdict says `debug: false` (what
    /// verify reported for the profiling bits before), and only dangerous_allow_debug lifts it.
    #[test]
    fn every_tud_bit_is_refused_by_name_unless_dangerous_allow_debug() {
        let names = [
            "debug",
            "tud_bit1",
            "tud_bit2",
            "tud_bit3",
            "hgs_plus_prof",
            "perf_prof",
            "pmt_prof",
            "tud_bit7",
        ];
        let mut p = pin();
        p.td_attributes = Some(TdAttributes(SEPT).to_flags());
        for (bit, name) in names.iter().enumerate() {
            let v = with_attributes(SEPT | 1 << bit);
            let err = Policy::pinned(vec![p.clone()], vec![])
                .check(&v.clone())
                .unwrap_err();
            assert!(
                err.reasons.contains(&RejectReason::UnderDebug {
                    platform: Platform::Tdx,
                    flags: vec![name.to_string()],
                }),
                "bit {bit}: {err}"
            );
            assert!(err.to_string().contains(name), "{err}");
            let mut allow = Policy::pinned(vec![p.clone()], vec![]);
            allow.dangerous_allow_debug = true;
            assert!(allow.check(&v).is_ok(), "bit {bit}");
        }
        // Bits above the TUD group are no debug flag.
        for bit in 8..64 {
            let ok = Policy::pinned(vec![pin()], vec![]).check(&with_attributes(SEPT | 1 << bit));
            assert!(ok.is_ok(), "bit {bit}");
        }
    }

    #[test]
    fn several_tud_bits_are_all_named() {
        let v = with_attributes(SEPT | 1 | 1 << 5 | 1 << 6);
        let err = Policy::pinned(vec![pin()], vec![]).check(&v).unwrap_err();
        assert_eq!(
            err.reasons,
            [RejectReason::UnderDebug {
                platform: Platform::Tdx,
                flags: vec!["debug".into(), "perf_prof".into(), "pmt_prof".into()],
            }]
        );
        // A verdict flagging debug without names is still refused.
        let mut v = tdx_verdict();
        v.debug = true;
        let err = Policy::pinned(vec![pin()], vec![]).check(&v).unwrap_err();
        assert_eq!(err.reasons, [RejectReason::Debug]);
    }

    #[test]
    fn pinned_td_attributes_and_xfam_compare_every_other_bit() {
        let mut p = pin();
        p.td_attributes = Some(TdAttributes(SEPT).to_flags());
        p.xfam = Some(Flags64([0xe7, 0x02, 0x06, 0, 0, 0, 0, 0]));
        let policy = |allow_debug| {
            let mut pol = Policy::pinned(vec![p.clone()], vec![]);
            pol.dangerous_allow_debug = allow_debug;
            pol
        };
        assert!(policy(false).check(&with_attributes(SEPT)).is_ok());
        // PKS is no debug bit: dangerous_allow_debug does not hide it from the pin.
        let pks = with_attributes(SEPT | 1 << TdAttributes::PKS);
        for allow in [false, true] {
            let msg = policy(allow).check(&pks.clone()).unwrap_err().to_string();
            assert!(
                msg.contains("td_attributes is 0000005000000000 (sept_ve_disable pks)"),
                "{msg}"
            );
        }
        let mut wider = with_attributes(SEPT);
        if let Measurements::Tdx(t) = &mut wider.measurements {
            t.xfam.0[1] |= 0x18; // CET_U, CET_S
        }
        let msg = policy(true).check(&wider).unwrap_err().to_string();
        assert!(msg.contains("xfam is e71a060000000000"), "{msg}");
    }

    #[test]
    fn snp_debug_policy_bit_is_named() {
        let mut v = snp_verdict("Milan", milan_floor());
        if let Measurements::Snp(m) = &mut v.measurements {
            m.policy |= SnpMeasurements::POLICY_DEBUG_BIT;
        }
        let msg = Policy::dangerous_unpinned()
            .check(&v)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("SNP guest policy bit 19 DEBUG is set"),
            "{msg}"
        );
    }

    /// Sim quotes through verify and the policy: the TUD bits reach the policy by name, the
    /// rules no policy lifts (reserved bits, MIGRATABLE, SEPT_VE_DISABLE) fail verification
    /// naming the bit, as dcap-qvl would.
    #[test]
    fn td_attributes_of_real_quotes_through_verify_and_policy() {
        use crate::bundle::Evidence;
        use crate::sim::{DEFAULT_SEED, SimPki, SimTdReport, td_measurements};
        let pki = SimPki::from_seed(DEFAULT_SEED);
        let issued = 1_767_225_600;
        let collateral = pki.collateral(issued, 86_400).unwrap();
        let appraise = |bits: u64, allow_debug: bool| {
            let mut m = td_measurements(Measurement([1; 48]), [Measurement::ZERO; 4]);
            m.td_attributes = TdAttributes(bits).to_flags();
            let quote = pki.quote(&SimTdReport::new(m, ReportData([0; 64])));
            let mut p = Policy::dangerous_unpinned();
            p.trust.dangerous_simulated_intel_roots = vec![pki.root_sha256()];
            p.dangerous_allow_debug = allow_debug;
            p.appraise(
                &Evidence::tdx(quote, Some(collateral.clone())).unwrap(),
                None,
                issued + 60,
            )
        };
        let ok = appraise(SEPT, false).unwrap();
        assert!(!ok.verdict().debug);
        assert!(ok.verdict().debug_flags.is_empty());
        for (bit, name) in [
            (0, "debug"),
            (4, "hgs_plus_prof"),
            (5, "perf_prof"),
            (6, "pmt_prof"),
        ] {
            let err = appraise(SEPT | 1 << bit, false).unwrap_err();
            assert_eq!(
                err.reasons,
                [RejectReason::UnderDebug {
                    platform: Platform::Tdx,
                    flags: vec![name.into()],
                }],
                "bit {bit}"
            );
            let ok = appraise(SEPT | 1 << bit, true).unwrap();
            assert!(ok.verdict().debug, "bit {bit}");
            assert_eq!(ok.verdict().debug_flags, [name], "bit {bit}");
        }
        for (bits, what) in [
            (0, "sept_ve_disable clear"),
            (SEPT | 1 << 3, "tud_bit3 set"),
            (SEPT | 1 << 7, "tud_bit7 set"),
            (SEPT | 1 << 12, "reserved_bit12 set"),
            (SEPT | 1 << 40, "reserved_bit40 set"),
            (SEPT | 1 << TdAttributes::MIGRATABLE, "migratable set"),
            (SEPT | 1 << TdAttributes::SERVTD_EXT, "servtd_ext set"),
        ] {
            for allow_debug in [false, true] {
                let err = appraise(bits, allow_debug).unwrap_err();
                assert!(
                    matches!(
                        &err.reasons[..],
                        [RejectReason::Verification(VerifyError::TdAttributes { violations, .. })]
                            if violations == &[what.to_string()]
                    ),
                    "{what}: {err}"
                );
            }
        }
    }

    #[test]
    fn collateral_freshness_rules_name_themselves() {
        let p = Policy::pinned(vec![pin()], vec![]);
        let floor = crate::collateral::DEFAULT_MIN_TCB_EVALUATION_DATA_NUMBER;
        // The default floor applies to Intel's root, not to simulated roots.
        let old = Verdict {
            tcb_evaluation_data_number: Some(floor - 1),
            ..tdx_verdict()
        };
        let err = p.check(&old.clone()).unwrap_err();
        assert_eq!(
            err.reasons,
            vec![RejectReason::TcbEvaluationDataNumber {
                found: Some(floor - 1),
                minimum: floor
            }]
        );
        assert!(
            err.to_string()
                .contains("collateral.min_tcb_evaluation_data_number"),
            "{err}"
        );
        let sim = Verdict {
            root: TrustRoot::SimulatedIntel {
                sha256: Sha256([5; 32]),
            },
            ..old.clone()
        };
        let mut p_sim = p.clone();
        p_sim
            .trust
            .dangerous_simulated_intel_roots
            .push(Sha256([5; 32]));
        assert!(p_sim.check(&sim.clone()).is_ok());
        p_sim.collateral.min_tcb_evaluation_data_number = Some(floor);
        assert!(p_sim.check(&sim).is_err());
        // An explicit lower floor accepts; 0 turns the rule off; a missing number is refused.
        let mut lower = p.clone();
        lower.collateral.min_tcb_evaluation_data_number = Some(floor - 1);
        assert!(lower.check(&old.clone()).is_ok());
        lower.collateral.min_tcb_evaluation_data_number = Some(0);
        assert!(lower.check(&old).is_ok());
        let none = Verdict {
            tcb_evaluation_data_number: None,
            ..tdx_verdict()
        };
        assert!(
            p.check(&none)
                .unwrap_err()
                .to_string()
                .contains("no tcbEvaluationDataNumber")
        );
        // Age: issued 2 days before verification.
        let mut aged = p.clone();
        aged.collateral.max_age_days = Some(2);
        assert!(aged.check(&tdx_verdict()).is_ok());
        aged.collateral.max_age_days = Some(1);
        let err = aged.check(&tdx_verdict()).unwrap_err();
        assert!(
            matches!(
                err.reasons[..],
                [RejectReason::CollateralTooOld {
                    max_age_days: 1,
                    ..
                }]
            ),
            "{err}"
        );
        assert!(err.to_string().contains("collateral.max_age_days"), "{err}");
        assert!(err.to_string().contains("2 days old"), "{err}");
        // The section round-trips through TOML and refuses unknown keys.
        let text = "version = 1\n[collateral]\npccs_url = \"http://127.0.0.1:1\"\n\
                    min_tcb_evaluation_data_number = 17\nmax_age_days = 7\n";
        let parsed = Policy::from_toml(text).unwrap();
        assert_eq!(parsed.collateral.min_tcb_evaluation_data_number, Some(17));
        assert_eq!(
            Policy::from_toml(&parsed.to_toml().unwrap()).unwrap(),
            parsed
        );
        assert!(Policy::from_toml("version = 1\n[collateral]\nfloor = 1\n").is_err());
        let err = Policy::from_toml("version = 1\n[collateral]\npccs_url = \"ftp://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("collateral.pccs_url"), "{err}");
    }

    #[test]
    fn toml_round_trip_and_errors_name_the_key() {
        let mut p = Policy::pinned(vec![pin()], vec![]);
        p.tcb.snp_floor = SnpFloors::builtin();
        let text = p.to_toml().unwrap();
        assert!(text.contains("[tcb.snp_floor.milan]"), "{text}");
        assert_eq!(Policy::from_toml(&text).unwrap(), p);
        let err = Policy::from_toml("version = 1\n[tcb.snp_floor.venice]\nsnp = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("venice"), "{err}");
        let err = Policy::from_toml("version = 1\n[tcb]\naccepted = []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("accepted"), "{err}");
        let err = Policy::from_toml("version = 2\n").unwrap_err().to_string();
        assert!(err.contains("version"), "{err}");
        let err = Policy::from_toml("version = 1\n[[tdx]]\nrtmr1 = \"00\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mr_td") || err.contains("rtmr1"), "{err}");
        let err =
            Policy::from_toml("version = 1\n[tcb]\naccepted_statuses = [\"Fine\"]\n").unwrap_err();
        assert!(err.to_string().contains("Fine"), "{err}");
    }
}
