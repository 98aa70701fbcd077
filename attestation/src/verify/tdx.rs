//! TDX quote verification through dcap-qvl, against an explicit root and time.

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::verify::QuoteVerifier;

use super::{FoundRoot, TcbStatus, TrustAnchors, TrustRoot, Verdict, VerifyError};
use crate::error::ForeignError;
use crate::evidence::{Measurements, Platform, Sha256, TdxQuote};
use crate::tdx_attributes::TdAttributes;

/// dcap-qvl's error, with its chain of causes.
pub type DcapError = ForeignError;

/// Why a TDX quote or its collateral did not verify.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TdxVerifyError {
    /// The collateral's issuer chain is not PEM.
    #[error("collateral issuer chain is not PEM")]
    IssuerChainNotPem(#[source] ForeignError),
    /// The collateral's issuer chain holds no certificate.
    #[error("collateral issuer chain is empty")]
    IssuerChainEmpty,
    /// dcap-qvl refused the quote or its collateral (its reason is the source).
    #[error(transparent)]
    Dcap(DcapError),
    /// dcap-qvl assigned a TCB status this crate does not know.
    #[error("unknown TCB status {0:?}")]
    UnknownTcbStatus(String),
}

/// SHA-256 of the DER of Intel's SGX Root CA (CN=Intel SGX Root CA, valid 2018-05-21 to
/// 2049-12-31), the root of every production TDX quote. dcap-qvl embeds the certificate;
/// this fingerprint recognises it at the end of a collateral chain.
pub const INTEL_SGX_ROOT_CA_SHA256: Sha256 = Sha256(hex_literal(
    b"44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
));

const fn hex_literal(s: &[u8; 64]) -> [u8; 32] {
    const fn nib(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not lowercase hex"),
        }
    }
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nib(s[2 * i]) << 4) | nib(s[2 * i + 1]);
        i += 1;
    }
    out
}

/// The last certificate of a PEM chain: the root the chain claims.
fn claimed_root(chain_pem: &str) -> Result<Vec<u8>, TdxVerifyError> {
    let mut last = None;
    for item in x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes()) {
        let pem = item.map_err(|e| TdxVerifyError::IssuerChainNotPem(ForeignError::new(e)))?;
        last = Some(pem.contents);
    }
    last.ok_or(TdxVerifyError::IssuerChainEmpty)
}

fn root_subject(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|_| "unparseable certificate".into())
}

/// Parses an RFC 3339 UTC timestamp as Intel writes them ("2025-07-19T10:32:27Z").
fn rfc3339(s: &str) -> Option<u64> {
    let dt = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(dt.unix_timestamp()).ok()
}

/// The dated fields of a TCB info or QE identity body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct BodyDates {
    next_update: Option<u64>,
    issue_date: Option<u64>,
    tcb_evaluation_data_number: Option<u32>,
}

/// The dated fields of a TCB info or QE identity body, bare or wrapped as Intel's PCS serves it
/// (`{"tcbInfo": {...}}`, `{"enclaveIdentity": {...}}`).
///
/// Deserializes into a struct that names only those fields: serde skips the rest without building
/// it, where a `serde_json::Value` of the whole body cost about 5% of a first-contact verify.
fn body_dates(json: &str) -> BodyDates {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(rename = "nextUpdate")]
        next_update: Option<String>,
        #[serde(rename = "issueDate")]
        issue_date: Option<String>,
        #[serde(rename = "tcbEvaluationDataNumber")]
        tcb_evaluation_data_number: Option<u32>,
    }
    #[derive(serde::Deserialize)]
    struct Outer {
        #[serde(rename = "tcbInfo")]
        tcb_info: Option<Body>,
        #[serde(rename = "enclaveIdentity")]
        enclave_identity: Option<Body>,
        #[serde(flatten)]
        bare: Body,
    }
    let Ok(outer) = serde_json::from_str::<Outer>(json) else {
        return BodyDates::default();
    };
    let body = outer
        .tcb_info
        .or(outer.enclave_identity)
        .unwrap_or(outer.bare);
    BodyDates {
        next_update: body.next_update.as_deref().and_then(rfc3339),
        issue_date: body.issue_date.as_deref().and_then(rfc3339),
        tcb_evaluation_data_number: body.tcb_evaluation_data_number,
    }
}

/// The `nextUpdate` of a TCB info or QE identity body (see [`body_dates`]).
pub(super) fn next_update(json: &str) -> Option<u64> {
    body_dates(json).next_update
}

/// Verifies a TDX quote with `collateral` at `now` (unix seconds).
///
/// Returns Ok only if the quote's signature chain (attestation key → QE report → PCK
/// certificate → PCK CA → root), the collateral's signatures (TCB info, QE identity, CRLs →
/// the same root) and their validity at `now` all verify, and the root is among `anchors`.
/// It also refuses TD_ATTRIBUTES that no policy may accept ([`VerifyError::TdAttributes`]).
/// It does NOT judge the TCB status, the "TD under debug" bits or measurements: that is the
/// policy's job.
pub(crate) fn verify_tdx(
    parsed: &TdxQuote,
    collateral: &QuoteCollateralV3,
    anchors: &TrustAnchors,
    now: u64,
) -> Result<Verdict, VerifyError> {
    let root_der = claimed_root(&collateral.tcb_info_issuer_chain)?;
    let root_sha = Sha256::digest(&root_der);
    let (root, verifier) = if root_sha == INTEL_SGX_ROOT_CA_SHA256 {
        if !anchors.intel {
            return Err(VerifyError::PlatformNotTrusted(Platform::Tdx));
        }
        // dcap-qvl's own embedded copy, not the one the collateral carries.
        (TrustRoot::IntelSgxRootCa, QuoteVerifier::new_prod())
    } else if anchors.simulated_intel.contains(&root_sha) {
        (
            TrustRoot::SimulatedIntel { sha256: root_sha },
            QuoteVerifier::new(root_der),
        )
    } else {
        return Err(VerifyError::UntrustedRoot {
            platform: Platform::Tdx,
            root: FoundRoot::IntelChain {
                subject: root_subject(&root_der),
                sha256: root_sha,
            },
        });
    };
    // dcap-qvl refuses these too; checking first makes the error name the bit.
    let attributes = parsed.measurements().td_attributes;
    let violations = TdAttributes::from_flags(attributes).violations();
    if !violations.is_empty() {
        return Err(VerifyError::TdAttributes {
            attributes,
            violations,
        });
    }
    // TDs under debug (DEBUG and the profiling bits 4-6) are reported, not refused here: the
    // policy refuses them by default and names the bits.
    let report = verifier
        .allow_debug(true)
        .verify(parsed.raw(), collateral, now)
        .map_err(|e| {
            // dcap-qvl reports a platform below every TCB level only by this message; the
            // recorded outdated quote's test keeps the match honest.
            if format!("{e:#}").contains("No matching TCB level") {
                VerifyError::TcbNotListed
            } else {
                VerifyError::Tdx(TdxVerifyError::Dcap(DcapError::new(e)))
            }
        })?;
    let tcb_status: dcap_qvl::TcbStatus =
        serde_json::from_value(serde_json::Value::String(report.status.clone()))
            .map_err(|_| TdxVerifyError::UnknownTcbStatus(report.status.clone()))?;
    let measurements = parsed.measurements();
    // dcap-qvl verified both bodies' signatures, so these fields are Intel's.
    let (tcb, qe) = (
        body_dates(&collateral.tcb_info),
        body_dates(&collateral.qe_identity),
    );
    let valid_until = [tcb.next_update, qe.next_update]
        .into_iter()
        .flatten()
        .min();
    // The older of the two decides: a fresh TCB info next to a replayed QE identity is still
    // a replay.
    let tcb_evaluation_data_number = older(
        tcb.tcb_evaluation_data_number,
        qe.tcb_evaluation_data_number,
    );
    let collateral_issued = older(tcb.issue_date, qe.issue_date);
    Ok(Verdict {
        platform: Platform::Tdx,
        evidence_version: u32::from(parsed.version()),
        root,
        tcb_status: Some(map_status(tcb_status)),
        advisory_ids: report.advisory_ids,
        debug: measurements.debug(),
        debug_flags: measurements.debug_flags(),
        report_data: parsed.report_data(),
        measurements: Measurements::Tdx(measurements),
        valid_until,
        tcb_evaluation_data_number,
        collateral_issued,
        verified_at: now,
    })
}

/// The lower of two values, or None when either is missing (a missing one cannot vouch).
fn older<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    a.zip(b).map(|(a, b)| a.min(b))
}

fn map_status(s: dcap_qvl::TcbStatus) -> TcbStatus {
    use dcap_qvl::TcbStatus as D;
    match s {
        D::UpToDate => TcbStatus::UpToDate,
        D::SWHardeningNeeded => TcbStatus::SWHardeningNeeded,
        D::ConfigurationNeeded => TcbStatus::ConfigurationNeeded,
        D::ConfigurationAndSWHardeningNeeded => TcbStatus::ConfigurationAndSWHardeningNeeded,
        D::OutOfDate => TcbStatus::OutOfDate,
        D::OutOfDateConfigurationNeeded => TcbStatus::OutOfDateConfigurationNeeded,
        D::Revoked => TcbStatus::Revoked,
        D::TDRelaunchAdvised => TcbStatus::TDRelaunchAdvised,
        D::TDRelaunchAdvisedConfigurationNeeded => TcbStatus::TDRelaunchAdvisedConfigurationNeeded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_update_of_bare_and_wrapped_bodies() {
        let at = Some(1_750_550_400); // 2025-06-22T00:00:00Z
        assert_eq!(
            next_update(r#"{"version":3,"nextUpdate":"2025-06-22T00:00:00Z","x":[1,{"y":2}]}"#),
            at
        );
        assert_eq!(
            next_update(r#"{"tcbInfo":{"nextUpdate":"2025-06-22T00:00:00Z"},"signature":"ab"}"#),
            at
        );
        assert_eq!(
            next_update(r#"{"enclaveIdentity":{"nextUpdate":"2025-06-22T00:00:00Z"}}"#),
            at
        );
        // A wrapper without the field does not fall back to a stray outer one.
        assert_eq!(
            next_update(r#"{"tcbInfo":{},"nextUpdate":"2025-06-22T00:00:00Z"}"#),
            None
        );
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"nextUpdate":7}"#,
            r#"{"nextUpdate":"yesterday"}"#,
            r#"{"nextUpdate":"1969-12-31T23:59:59Z"}"#,
        ] {
            assert_eq!(next_update(bad), None, "{bad}");
        }
    }

    #[test]
    fn dated_fields_of_bare_and_wrapped_bodies() {
        let d = body_dates(
            r#"{"tcbInfo":{"issueDate":"2025-06-19T10:16:03Z","nextUpdate":"2025-07-19T10:16:03Z","tcbEvaluationDataNumber":17}}"#,
        );
        assert_eq!(
            d,
            BodyDates {
                next_update: Some(1_752_920_163),
                issue_date: Some(1_750_328_163),
                tcb_evaluation_data_number: Some(17),
            }
        );
        let bare =
            body_dates(r#"{"issueDate":"2025-06-19T10:16:03Z","tcbEvaluationDataNumber":18}"#);
        assert_eq!(
            (bare.issue_date, bare.tcb_evaluation_data_number),
            (Some(1_750_328_163), Some(18))
        );
        assert_eq!(
            body_dates(r#"{"tcbEvaluationDataNumber":"17"}"#),
            BodyDates::default()
        );
        assert_eq!(older(Some(3), Some(2)), Some(2));
        assert_eq!(older(Some(3), None::<u32>), None);
    }

    #[test]
    fn verdict_is_valid_until_the_earliest_next_update() {
        let pki = crate::sim::SimPki::from_seed(crate::sim::DEFAULT_SEED);
        let issued = 1_750_000_000;
        let collateral = pki.collateral(issued, 86_400).unwrap();
        let quote = pki.quote(&crate::sim::SimTdReport::new(
            crate::sim::td_measurements(crate::Measurement::ZERO, [crate::Measurement::ZERO; 4]),
            crate::ReportData::ZERO,
        ));
        let anchors = TrustAnchors::none().dangerous_with_simulated_intel_root(pki.root_sha256());
        let quote = TdxQuote::parse(&quote).unwrap();
        let v = verify_tdx(&quote, &collateral, &anchors, issued + 60).unwrap();
        assert_eq!(v.valid_until, Some(issued + 86_400));
    }
}
