//! SEV-SNP appraisal of a real Milan report recorded by the sev crate's authors.

mod common;

use chrysalis_attestation::evidence::decode_binary_or_hex;
use chrysalis_attestation::measure::snp::CHRYSALIS_GUEST_POLICY;
use chrysalis_attestation::{
    Evidence, Measurements, Platform, Policy, RejectReason, SnpTcb, TrustAnchors, TrustRoot,
};
use common::registry_file;

// Inside the recorded VCEK's validity (2023-04-03 .. 2030-04-03).
const NOW: u64 = 1_750_500_000;

fn milan_report() -> Vec<u8> {
    decode_binary_or_hex(&registry_file("sev", "tests/certs_data/report_milan.hex")).0
}

fn milan_vcek() -> Vec<u8> {
    registry_file("sev", "tests/certs_data/vcek_milan.der")
}

fn milan_chain() -> Option<Vec<u8>> {
    Some(registry_file("sev", "tests/certs_data/cert_chain_milan"))
}

fn milan() -> Evidence {
    Evidence::snp(milan_report(), Some(milan_vcek()), milan_chain()).unwrap()
}

/// The recorded report's TCB (Milan firmware of 2023): reported, committed, launch and current
/// are all this.
const RECORDED_TCB: SnpTcb = SnpTcb {
    fmc: None,
    bootloader: 3,
    tee: 0,
    snp: 8,
    microcode: 115,
};

/// Chain, signature and guest-policy rules, with the floor lowered to the recorded firmware
/// and Milan accepted although its owner can forge its reports (what these tests examine is
/// the rest of the path).
fn accepting_old_firmware() -> Policy {
    let mut p = accepting_milan();
    p.tcb.snp_minimum = Some(RECORDED_TCB);
    p
}

fn accepting_milan() -> Policy {
    let mut p = Policy::dangerous_unpinned();
    p.tcb.dangerous_accept_milan = true;
    p
}

#[test]
fn milan_verdict_has_no_tcb_status_and_carries_the_tcbs() {
    let v = chrysalis_attestation::verify::verify(&milan(), &TrustAnchors::vendor(), None, NOW)
        .unwrap();
    assert_eq!(v.platform, Platform::Snp);
    assert_eq!(v.tcb_status, None, "AMD assigns no TCB status");
    assert!(
        matches!(&v.root, TrustRoot::AmdArk { product, .. } if product == "Milan"),
        "{:?}",
        v.root
    );
    assert!(!v.debug);
    let Measurements::Snp(m) = &v.measurements else {
        panic!("not SNP")
    };
    for tcb in [m.reported_tcb, m.committed_tcb, m.launch_tcb, m.current_tcb] {
        assert_eq!(tcb, RECORDED_TCB);
    }
    assert_eq!((m.policy, m.vmpl), (CHRYSALIS_GUEST_POLICY, 0));
}

#[test]
fn default_policy_refuses_the_recorded_milan_report_by_product_and_firmware() {
    let err = Policy::dangerous_unpinned()
        .appraise(&milan(), None, NOW)
        .unwrap_err();
    assert!(
        matches!(&err.reasons[0], RejectReason::SnpProductForgeable { product, .. } if product == "Milan"),
        "{err}"
    );
    // Under the dangerous switch the firmware floor still applies, component by component.
    let err = accepting_milan().appraise(&milan(), None, NOW).unwrap_err();
    let tcbs: Vec<_> = err
        .reasons
        .iter()
        .map(|r| match r {
            RejectReason::SnpTcbBelowFloor { tcb, below, .. } => (*tcb, below.clone()),
            other => panic!("unexpected reason {other}"),
        })
        .collect();
    let below = vec![("snp", 8, 24), ("microcode", 115, 219)];
    assert_eq!(
        tcbs,
        [("reported_tcb", below.clone()), ("committed_tcb", below)]
    );
    assert!(
        err.to_string().contains("below the Milan TCB floor"),
        "{err}"
    );
    // The same floor written out per product, as from-manifest writes it: same components.
    let mut p = accepting_milan();
    p.tcb.snp_floor = chrysalis_attestation::policy::SnpFloors::builtin();
    let written = p.appraise(&milan(), None, NOW).unwrap_err().to_string();
    assert!(
        written.contains("(policy tcb.snp_floor): snp 8 < 24, microcode 115 < 219"),
        "{written}"
    );
}

#[test]
fn recorded_milan_is_accepted_with_an_explicit_floor_and_every_check_is_shown() {
    let p = accepting_old_firmware();
    let ok = p.appraise(&milan(), None, NOW).unwrap();
    let checks = p.checks(ok.verdict());
    assert!(checks.iter().all(|c| c.passed), "{checks:?}");
    assert_eq!(checks.len(), 6);
    let mut p = accepting_milan();
    p.tcb.snp_floor.milan = Some(RECORDED_TCB);
    p.appraise(&milan(), None, NOW).unwrap();
    // A Genoa floor does not apply to a Milan report.
    let mut p = accepting_milan();
    p.tcb.snp_floor.genoa = Some(RECORDED_TCB);
    assert!(p.appraise(&milan(), None, NOW).is_err());
}

#[test]
fn milan_report_with_builtin_chain_is_accepted_and_amd_can_be_distrusted() {
    let b = Evidence::snp(milan_report(), Some(milan_vcek()), None).unwrap();
    accepting_old_firmware().appraise(&b, None, NOW).unwrap();
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
    let policy = accepting_old_firmware();
    policy.appraise(&good, None, NOW).unwrap();
    // A flip that breaks the report's structure is refused by the parser, any other by the
    // verifier.
    let rejected =
        |report: &[u8], vcek: Vec<u8>| match Evidence::snp(report, Some(vcek), milan_chain()) {
            Err(_) => true,
            Ok(b) => policy.appraise(&b, None, NOW).is_err(),
        };
    for i in (0..0x4A0).step_by(7) {
        let mut report = milan_report();
        report[i] ^= 1;
        assert!(
            rejected(&report, milan_vcek()),
            "report flip at {i:#x} accepted"
        );
    }
    for i in (0..milan_vcek().len()).step_by(5) {
        let mut vcek = milan_vcek();
        vcek[i] ^= 0x80;
        assert!(rejected(&milan_report(), vcek), "VCEK flip at {i} accepted");
    }
}
