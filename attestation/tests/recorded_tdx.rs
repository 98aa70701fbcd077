//! TDX verification against real quotes and collateral recorded by dcap-qvl's authors.

mod common;

use chrysalis_attestation::policy::RejectReason;
use chrysalis_attestation::{
    ErrorChain, Evidence, Policy, TcbStatus, TrustAnchors, TrustRoot, VerifyError,
    verify::verify_tdx,
};
use common::dcap_sample;

const SAMPLE_NOW: u64 = 1_750_500_000;
const TD15EX_NOW: u64 = 1_791_600_000;
const OUTDATED_NOW: u64 = 1_771_500_000;

#[test]
fn sample_quote_is_up_to_date_under_the_intel_root() {
    let (quote, collateral) = dcap_sample("tdx_quote");
    let v = verify_tdx(&quote, &collateral, &TrustAnchors::vendor(), SAMPLE_NOW).unwrap();
    assert_eq!(v.tcb_status, Some(TcbStatus::UpToDate));
    assert_eq!(v.root, TrustRoot::IntelSgxRootCa);
    assert_eq!(v.evidence_version, 4);
    assert!(!v.debug);
    let ok = floor(17)
        .appraise(
            &Evidence::tdx(quote, Some(collateral)).unwrap(),
            None,
            SAMPLE_NOW,
        )
        .unwrap();
    assert_eq!(ok.verdict().tcb_status, Some(TcbStatus::UpToDate));
}

/// A real quote becomes proof only for the key binding its report_data carries.
#[test]
fn a_recorded_quote_is_proof_only_for_its_own_report_data() {
    let (quote, collateral) = dcap_sample("tdx_quote");
    let policy = floor(17);
    let verified = verify_tdx(&quote, &collateral, &TrustAnchors::vendor(), SAMPLE_NOW).unwrap();
    let own = verified.report_data;
    let mut other = own;
    other.0[0] ^= 1;
    let err = policy.evaluate(verified.clone(), &other).unwrap_err();
    assert!(
        matches!(&err.reasons[..], [RejectReason::KeyBinding { .. }]),
        "{err}"
    );
    let ok = policy.evaluate(verified, &own).unwrap();
    assert_eq!(ok.verdict().report_data, own);
}

/// The unpinned policy with an explicit `tcbEvaluationDataNumber` floor: the recorded samples
/// predate the crate's default floor.
fn floor(n: u32) -> Policy {
    let mut p = Policy::dangerous_unpinned();
    p.collateral.min_tcb_evaluation_data_number = Some(n);
    p
}

#[test]
fn recorded_collateral_freshness_is_in_the_verdict_and_judged() {
    let (quote, collateral) = dcap_sample("tdx_quote");
    let v = verify_tdx(&quote, &collateral, &TrustAnchors::vendor(), SAMPLE_NOW).unwrap();
    assert_eq!(v.tcb_evaluation_data_number, Some(17));
    // TCB info 2025-06-19T10:16:03Z, QE identity 2025-06-19T10:32:27Z: the earlier counts.
    assert_eq!(v.collateral_issued, Some(1_750_328_163));
    assert_eq!(v.verified_at, SAMPLE_NOW);
    let bundle = Evidence::tdx(quote, Some(collateral)).unwrap();
    // Accepted at its own number, refused one above it, and under the crate's default floor
    // (which is newer than this 2025 recording), each time naming the rule.
    assert!(floor(17).appraise(&bundle, None, SAMPLE_NOW).is_ok());
    for policy in [floor(18), Policy::dangerous_unpinned()] {
        let err = policy.appraise(&bundle, None, SAMPLE_NOW).unwrap_err();
        assert!(
            matches!(
                err.reasons[..],
                [RejectReason::TcbEvaluationDataNumber {
                    found: Some(17),
                    ..
                }]
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("collateral.min_tcb_evaluation_data_number"),
            "{err}"
        );
    }
    // Age: 2 days old at SAMPLE_NOW (2025-06-21T09:46:40Z).
    let mut aged = floor(17);
    aged.collateral.max_age_days = Some(2);
    assert!(aged.appraise(&bundle, None, SAMPLE_NOW).is_ok());
    aged.collateral.max_age_days = Some(1);
    let err = aged.appraise(&bundle, None, SAMPLE_NOW).unwrap_err();
    assert!(err.to_string().contains("collateral.max_age_days"), "{err}");
}

#[test]
fn v5_td15ex_quote_is_accepted() {
    // Its collateral (2026-10) is at the default floor: accepted without lowering it.
    let (quote, collateral) = dcap_sample("tdx_quote_td15ex");
    let ok = Policy::dangerous_unpinned()
        .appraise(
            &Evidence::tdx(quote, Some(collateral)).unwrap(),
            None,
            TD15EX_NOW,
        )
        .unwrap();
    assert_eq!(ok.verdict().evidence_version, 5);
    assert_eq!(
        ok.verdict().tcb_evaluation_data_number,
        Some(chrysalis_attestation::collateral::DEFAULT_MIN_TCB_EVALUATION_DATA_NUMBER)
    );
}

#[test]
fn outdated_quote_is_rejected_naming_the_tcb() {
    let (quote, collateral) = dcap_sample("tdx_quote_outdated");
    let err = Policy::dangerous_unpinned()
        .appraise(
            &Evidence::tdx(quote, Some(collateral)).unwrap(),
            None,
            OUTDATED_NOW,
        )
        .unwrap_err();
    assert_eq!(
        err.reasons,
        vec![RejectReason::Verification(VerifyError::TcbNotListed)],
        "{err}"
    );
    assert!(err.to_string().contains("TCB not listed"), "{err}");
}

#[test]
fn quote_after_next_update_is_rejected_as_expired() {
    let (quote, collateral) = dcap_sample("tdx_quote");
    let later = SAMPLE_NOW + 60 * 86_400;
    let err = verify_tdx(&quote, &collateral, &TrustAnchors::vendor(), later).unwrap_err();
    assert!(matches!(err, VerifyError::Tdx(_)), "{err:?}");
    // The outer message names the step; dcap-qvl's reason is its source.
    let chain = ErrorChain(&err).to_string();
    assert!(
        chain.starts_with("TDX quote verification failed: "),
        "{chain}"
    );
    assert!(chain.to_lowercase().contains("expired"), "{chain}");
}

#[test]
fn intel_root_must_be_among_the_anchors() {
    let (quote, collateral) = dcap_sample("tdx_quote");
    let anchors = TrustAnchors::vendor().with_intel(false);
    let err = verify_tdx(&quote, &collateral, &anchors, SAMPLE_NOW).unwrap_err();
    assert!(matches!(err, VerifyError::PlatformNotTrusted(_)), "{err:?}");
}

/// Header (48) + TD report 1.0 body (584) are signed; the ECDSA signature follows the 4-byte
/// auth-data length.
#[test]
fn every_byte_flip_in_signed_region_or_signature_is_rejected() {
    let (quote, collateral) = dcap_sample("tdx_quote");
    let anchors = TrustAnchors::vendor();
    let signed = 48 + 584;
    let sig = signed + 4..signed + 4 + 64;
    for i in (0..signed).chain(sig) {
        let mut q = quote.clone();
        q[i] ^= 0x01;
        assert!(
            verify_tdx(&q, &collateral, &anchors, SAMPLE_NOW).is_err(),
            "flip at {i} accepted"
        );
    }
}

#[test]
fn any_byte_flip_anywhere_never_panics() {
    let (quote, collateral) = dcap_sample("tdx_quote");
    let anchors = TrustAnchors::vendor();
    for i in 0..quote.len() {
        let mut q = quote.clone();
        q[i] ^= 0x80;
        let _ = verify_tdx(&q, &collateral, &anchors, SAMPLE_NOW);
    }
    // The recorded quote carries 70 bytes of zero padding after its auth data (as quote
    // buffers often do); cutting into the structure itself must fail.
    let structure_end = 632 + 4 + u32::from_le_bytes(quote[632..636].try_into().unwrap()) as usize;
    for len in [0, 1, 47, 48, 631, 632, 700, structure_end - 1] {
        assert!(verify_tdx(&quote[..len], &collateral, &anchors, SAMPLE_NOW).is_err());
    }
}
