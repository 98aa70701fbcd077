//! Client policy: what a verifier accepts, and the only constructor of [`VerifiedEvidence`].
//!
//! A policy is TOML. Defaults are strict: vendor roots only, TCB status `UpToDate` only, no
//! advisories, no debug guests, and no measurement accepted unless a pinned set matches.
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
//! accepted_statuses = ["UpToDate"]
//! allowed_advisories = []
//! # snp_minimum = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }
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
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bundle::EvidenceBundle;
use crate::evidence::{
    Flags64, HostData, Measurement, Measurements, Platform, Sha256, SnpMeasurements, SnpTcb,
    TdxMeasurements,
};
use crate::verify::{self, TcbStatus, TrustAnchors, TrustRoot, Verdict, VerifyError};

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
    /// Accept guests whose host can read their memory. Never in production.
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
    /// Accepted TCB statuses (Intel's spelling). Default: `["UpToDate"]`.
    #[serde(default = "default_statuses")]
    pub accepted_statuses: Vec<TcbStatus>,
    /// Advisory IDs (e.g. "INTEL-SA-00837") that may apply to an accepted platform.
    #[serde(default)]
    pub allowed_advisories: Vec<String>,
    /// The lowest SNP TCB accepted, component by component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp_minimum: Option<SnpTcb>,
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
    /// TD attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub td_attributes: Option<Flags64>,
    /// XFAM.
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
    /// Advisories apply that the policy does not allow.
    Advisories(Vec<String>),
    /// An SNP TCB component is below the policy's minimum.
    SnpTcbTooOld {
        /// The reported TCB.
        reported: SnpTcb,
        /// The minimum.
        minimum: SnpTcb,
    },
    /// The guest is debuggable.
    Debug,
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
        expected: String,
        /// What the evidence carries.
        actual: String,
    },
    /// The RA-TLS certificate itself is unacceptable (expired, too long-lived, malformed...).
    Certificate(String),
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::Verification(e) => write!(f, "{e}"),
            RejectReason::RootNotTrusted(r) => write!(f, "root not trusted by policy: {r}"),
            RejectReason::TcbStatus { status, accepted } => {
                let acc: Vec<_> = accepted.iter().map(|s| s.as_str()).collect();
                write!(
                    f,
                    "TCB status {status} is not accepted (accepted: {})",
                    acc.join(", ")
                )
            }
            RejectReason::Advisories(ids) => {
                write!(
                    f,
                    "TCB advisories not allowed by policy: {}",
                    ids.join(", ")
                )
            }
            RejectReason::SnpTcbTooOld { reported, minimum } => write!(
                f,
                "SNP TCB below policy minimum: reported {reported:?}, minimum {minimum:?}"
            ),
            RejectReason::Debug => {
                f.write_str("guest is debuggable (debug is forbidden by policy)")
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

/// Proof that evidence verified and a policy accepted it. Only this crate can construct one,
/// so code that requires it cannot be reached by skipping a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEvidence {
    verdict: Verdict,
    matched_pin: Option<String>,
    _seal: Seal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Seal;

impl VerifiedEvidence {
    /// What was verified.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// The label of the pinned set that matched (None when measurements were not pinned).
    pub fn matched_pin(&self) -> Option<&str> {
        self.matched_pin.as_deref()
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
            dangerous_allow_debug: false,
            dangerous_accept_any_measurement: false,
            tdx,
            snp,
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

    /// Verifies a bundle against this policy's roots at `now` and evaluates the verdict.
    /// `collateral` replaces carried TDX collateral when given.
    pub fn appraise(
        &self,
        bundle: &EvidenceBundle,
        collateral: Option<&dcap_qvl::QuoteCollateralV3>,
        now: u64,
    ) -> Result<VerifiedEvidence, Rejection> {
        let verdict = verify::verify(bundle, &self.trust_anchors(), collateral, now)?;
        self.evaluate(verdict)
    }

    /// Applies every rule to a verdict; the rejection names each rule that failed.
    pub fn evaluate(&self, verdict: Verdict) -> Result<VerifiedEvidence, Rejection> {
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
        if !self.tcb.accepted_statuses.contains(&verdict.tcb_status) {
            reasons.push(RejectReason::TcbStatus {
                status: verdict.tcb_status,
                accepted: self.tcb.accepted_statuses.clone(),
            });
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
        if let (Measurements::Snp(m), Some(min)) = (&verdict.measurements, &self.tcb.snp_minimum)
            && !m.reported_tcb.at_least(min)
        {
            reasons.push(RejectReason::SnpTcbTooOld {
                reported: m.reported_tcb,
                minimum: *min,
            });
        }
        if verdict.debug && !self.dangerous_allow_debug {
            reasons.push(RejectReason::Debug);
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
            Ok(VerifiedEvidence {
                verdict,
                matched_pin,
                _seal: Seal,
            })
        } else {
            Err(Rejection { reasons })
        }
    }

    fn match_pins(&self, m: &Measurements) -> Result<String, RejectReason> {
        let (platform, results): (Platform, Vec<(String, Vec<String>)>) = match m {
            Measurements::Tdx(t) => (
                Platform::Tdx,
                self.tdx
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (label(&p.name, i), tdx_diff(p, t)))
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

fn tdx_diff(p: &TdxPin, t: &TdxMeasurements) -> Vec<String> {
    let mut out = Vec::new();
    diff(&mut out, "mr_td", Some(&p.mr_td), &t.mr_td);
    for (i, pin) in [&p.rtmr0, &p.rtmr1, &p.rtmr2, &p.rtmr3]
        .into_iter()
        .enumerate()
    {
        diff(&mut out, &format!("rtmr{i}"), pin.as_ref(), &t.rtmr[i]);
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
    diff(
        &mut out,
        "td_attributes",
        p.td_attributes.as_ref(),
        &t.td_attributes,
    );
    diff(&mut out, "xfam", p.xfam.as_ref(), &t.xfam);
    out
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
    diff(&mut out, "policy", p.policy.as_ref(), &s.policy);
    diff(&mut out, "vmpl", p.vmpl.as_ref(), &s.vmpl);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{ReportData, SnpTcb};

    fn tdx_verdict() -> Verdict {
        Verdict {
            platform: Platform::Tdx,
            evidence_version: 4,
            root: TrustRoot::IntelSgxRootCa,
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: vec![],
            measurements: Measurements::Tdx(TdxMeasurements {
                mr_td: Measurement([1; 48]),
                rtmr: [
                    Measurement([2; 48]),
                    Measurement([3; 48]),
                    Measurement([4; 48]),
                    Measurement::ZERO,
                ],
                mr_config_id: Measurement::ZERO,
                mr_owner: Measurement::ZERO,
                mr_owner_config: Measurement::ZERO,
                mr_seam: Measurement([9; 48]),
                td_attributes: Flags64([0; 8]),
                xfam: Flags64([0xe7, 0x02, 0x06, 0, 0, 0, 0, 0]),
            }),
            debug: false,
            report_data: ReportData([0; 64]),
            valid_until: None,
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
            .evaluate(tdx_verdict())
            .unwrap();
        assert_eq!(ok.matched_pin(), Some("cpu"));
    }

    #[test]
    fn rejection_names_every_failed_rule() {
        let mut v = tdx_verdict();
        v.tcb_status = TcbStatus::OutOfDate;
        v.advisory_ids = vec!["INTEL-SA-00837".into()];
        v.debug = true;
        v.root = TrustRoot::SimulatedIntel {
            sha256: Sha256([5; 32]),
        };
        let mut p = pin();
        p.rtmr1 = Some(Measurement([0xee; 48]));
        let err = Policy::pinned(vec![p], vec![]).evaluate(v).unwrap_err();
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
            .evaluate(tdx_verdict())
            .unwrap_err();
        assert!(err.to_string().contains("pins no tdx"), "{err}");
        let ok = Policy::dangerous_unpinned()
            .evaluate(tdx_verdict())
            .unwrap();
        assert_eq!(ok.matched_pin(), None);
    }

    #[test]
    fn simulated_root_only_when_named() {
        let sha = Sha256([5; 32]);
        let mut v = tdx_verdict();
        v.root = TrustRoot::SimulatedIntel { sha256: sha };
        let mut p = Policy::pinned(vec![pin()], vec![]);
        assert!(p.evaluate(v.clone()).is_err());
        p.trust.dangerous_simulated_intel_roots.push(sha);
        assert!(p.evaluate(v).is_ok());
    }

    #[test]
    fn snp_minimum_tcb() {
        let tcb = SnpTcb {
            fmc: None,
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        };
        let v = Verdict {
            platform: Platform::Snp,
            evidence_version: 2,
            root: TrustRoot::AmdArk {
                product: "Milan".into(),
                sha256: Sha256([1; 32]),
            },
            measurements: Measurements::Snp(SnpMeasurements {
                measurement: Measurement([7; 48]),
                host_data: HostData([0; 32]),
                policy: 0x30000,
                reported_tcb: tcb,
                chip_id: crate::evidence::ChipId([0; 64]),
                vmpl: 0,
            }),
            ..tdx_verdict()
        };
        let mut p = Policy::dangerous_unpinned();
        p.tcb.snp_minimum = Some(SnpTcb {
            microcode: 200,
            ..tcb
        });
        let msg = p.evaluate(v.clone()).unwrap_err().to_string();
        assert!(msg.contains("SNP TCB below"), "{msg}");
        p.tcb.snp_minimum = Some(tcb);
        assert!(p.evaluate(v).is_ok());
    }

    #[test]
    fn toml_round_trip_and_errors_name_the_key() {
        let p = Policy::pinned(vec![pin()], vec![]);
        let text = p.to_toml().unwrap();
        assert_eq!(Policy::from_toml(&text).unwrap(), p);
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
