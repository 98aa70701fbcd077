//! SEV-SNP appraisal of a real Milan report recorded by the sev crate's authors.

mod common;

use chrysalis_attestation::evidence::decode_binary_or_hex;
use chrysalis_attestation::{EvidenceBundle, Platform, Policy, TcbStatus, TrustAnchors, TrustRoot};
use common::registry_file;

// Inside the recorded VCEK's validity (2023-04-03 .. 2030-04-03).
const NOW: u64 = 1_750_500_000;

fn milan() -> EvidenceBundle {
    let (report, _) =
        decode_binary_or_hex(&registry_file("sev", "tests/certs_data/report_milan.hex"));
    EvidenceBundle::snp(
        report,
        Some(registry_file("sev", "tests/certs_data/vcek_milan.der")),
        Some(registry_file("sev", "tests/certs_data/cert_chain_milan")),
    )
}

#[test]
fn milan_report_with_vcek_and_chain_is_accepted() {
    let ok = Policy::dangerous_unpinned()
        .appraise(&milan(), None, NOW)
        .unwrap();
    let v = ok.verdict();
    assert_eq!(v.platform, Platform::Snp);
    assert_eq!(v.tcb_status, TcbStatus::UpToDate);
    assert!(
        matches!(&v.root, TrustRoot::AmdArk { product, .. } if product == "Milan"),
        "{:?}",
        v.root
    );
    assert!(!v.debug);
}

#[test]
fn milan_report_with_builtin_chain_is_accepted_and_amd_can_be_distrusted() {
    let mut b = milan();
    b.snp_chain = None;
    Policy::dangerous_unpinned()
        .appraise(&b, None, NOW)
        .unwrap();
    let err = chrysalis_attestation::verify::verify(
        &b,
        &TrustAnchors::vendor().with_amd(false),
        None,
        NOW,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no snp root is trusted"), "{err}");
}

#[test]
fn report_vcek_flips_are_rejected_through_the_bundle_path() {
    let good = milan();
    let policy = Policy::dangerous_unpinned();
    for i in (0..0x4A0).step_by(7) {
        let mut b = good.clone();
        b.evidence[i] ^= 1;
        assert!(
            policy.appraise(&b, None, NOW).is_err(),
            "report flip at {i:#x} accepted"
        );
    }
    let vcek_len = good.snp_vcek.as_ref().unwrap().len();
    for i in (0..vcek_len).step_by(5) {
        let mut b = good.clone();
        b.snp_vcek.as_mut().unwrap()[i] ^= 0x80;
        assert!(
            policy.appraise(&b, None, NOW).is_err(),
            "VCEK flip at {i} accepted"
        );
    }
}
