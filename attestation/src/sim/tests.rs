//! Simulated quotes through dcap-qvl's production verifier: acceptance, every rejection a real
//! deployment relies on, determinism, and single-byte tampering.

use std::sync::OnceLock;

use dcap_qvl::verify::{QuoteVerifier, VerifiedReport};

use super::*;
use crate::evidence::TdxQuote;

/// 2026-01-01T00:00:00Z.
const ISSUED: u64 = 1_767_225_600;
const VALID_FOR: u64 = 30 * 86_400;
const NOW: u64 = ISSUED + 86_400;

fn pki() -> &'static SimPki {
    static PKI: OnceLock<SimPki> = OnceLock::new();
    PKI.get_or_init(|| SimPki::from_seed(DEFAULT_SEED))
}

fn measurements() -> TdxMeasurements {
    let m = |b: u8| Measurement([b; 48]);
    let mut t = td_measurements(m(0x11), [m(0x20), m(0x21), m(0x22), m(0x23)]);
    t.mr_config_id = m(0x31);
    t.mr_owner = m(0x32);
    t.mr_owner_config = m(0x33);
    t
}

fn report() -> SimTdReport {
    let mut rd = [0u8; 64];
    rd.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8 ^ 0x5a);
    SimTdReport::new(measurements(), ReportData(rd))
}

fn verify(
    root: &[u8],
    quote: &[u8],
    collateral: &dcap_qvl::QuoteCollateralV3,
    now: u64,
) -> Outcome {
    QuoteVerifier::new(root.to_vec())
        .verify(quote, collateral, now)
        .map_err(|e| format!("{e:#}"))
}

/// dcap-qvl's errors are anyhow errors; kept as their full chain so tests can show and match them.
type Outcome = Result<VerifiedReport, String>;

fn expect_err(result: Outcome, needle: &str) {
    match result {
        Ok(r) => panic!(
            "expected an error containing {needle:?}, got status {}",
            r.status
        ),
        Err(e) => assert!(e.contains(needle), "expected {needle:?} in: {e}"),
    }
}

#[test]
fn sim_quote_verifies_up_to_date_through_dcap_qvl() {
    let pki = pki();
    let td = report();
    let quote = pki.quote(&td);
    let collateral = pki.collateral(ISSUED, VALID_FOR).unwrap();
    let verified = verify(pki.root_der(), &quote, &collateral, NOW).unwrap();
    assert_eq!(verified.status, "UpToDate");
    assert!(
        verified.advisory_ids.is_empty(),
        "{:?}",
        verified.advisory_ids
    );

    let body = verified.report.as_td10().expect("a TD report");
    assert_eq!(crate::evidence::tdx_measurements(body), td.measurements);
    assert_eq!(body.report_data, td.report_data.0);
    assert_eq!(body.tee_tcb_svn, TEE_TCB_SVN_UP_TO_DATE);

    // The crate's own parser reads the same registers, and sees a v4 TDX quote.
    let parsed = TdxQuote::parse(&quote).unwrap();
    assert_eq!(parsed.version(), 4);
    assert_eq!(parsed.measurements(), td.measurements);
    assert_eq!(parsed.report_data(), td.report_data);
    assert!(!parsed.measurements().debug());

    // The quote carries the PCK chain leaf-first, exactly three certificates.
    let chain = dcap_qvl::intel::extract_cert_chain(parsed.inner()).unwrap();
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[2], pki.root_der());
}

#[test]
fn dcap_qvl_strict_policy_accepts_the_sim_platform() {
    let pki = pki();
    let quote = pki.quote(&report());
    let collateral = pki.collateral(ISSUED, VALID_FOR).unwrap();
    let claims = QuoteVerifier::new(pki.root_der().to_vec())
        .verify_with_policy(
            &quote,
            &collateral,
            NOW,
            &dcap_qvl::QuotePolicy::strict(NOW),
        )
        .unwrap();
    assert_eq!(claims.platform.pck.fmspc, SIM_FMSPC);
}

#[test]
fn rejected_under_intel_production_root() {
    let pki = pki();
    let quote = pki.quote(&report());
    let collateral = pki.collateral(ISSUED, VALID_FOR).unwrap();
    let result = QuoteVerifier::new_prod().verify(&quote, &collateral, NOW);
    let err = format!(
        "{:#}",
        result.expect_err("a sim quote must never verify under Intel's root")
    );
    // Refused at the first signature it checks: the root CA CRL is not signed by Intel's root.
    assert!(err.contains("root CA CRL"), "{err}");
}

#[test]
fn collateral_validity_window_is_enforced() {
    let pki = pki();
    let quote = pki.quote(&report());
    let collateral = pki.collateral(ISSUED, VALID_FOR).unwrap();
    let root = pki.root_der();
    // Valid from issued_at inclusive to nextUpdate exclusive (webpki treats a CRL as expired at
    // its nextUpdate; the JSON bodies alone would still be accepted at that second).
    assert!(verify(root, &quote, &collateral, ISSUED).is_ok());
    assert!(verify(root, &quote, &collateral, ISSUED + VALID_FOR - 1).is_ok());
    expect_err(
        verify(root, &quote, &collateral, ISSUED - 1),
        "issue date is in the future",
    );
    expect_err(
        verify(root, &quote, &collateral, ISSUED + VALID_FOR),
        "CrlExpired",
    );
    expect_err(
        verify(root, &quote, &collateral, ISSUED + VALID_FOR + 1),
        "CrlExpired",
    );
}

#[test]
fn rejected_outside_certificate_validity() {
    let pki = pki();
    let quote = pki.quote(&report());
    let late = CERT_NOT_AFTER - 10;
    let collateral = pki.collateral(late, 100).unwrap();
    assert!(verify(pki.root_der(), &quote, &collateral, late).is_ok());
    expect_err(
        verify(pki.root_der(), &quote, &collateral, CERT_NOT_AFTER + 1),
        "certificate",
    );
}

#[test]
fn rejected_with_another_seeds_pki() {
    let pki = pki();
    let other = SimPki::from_seed(b"another seed");
    let quote = pki.quote(&report());
    let collateral = pki.collateral(ISSUED, VALID_FOR).unwrap();
    let other_collateral = other.collateral(ISSUED, VALID_FOR).unwrap();
    assert!(verify(pki.root_der(), &quote, &other_collateral, NOW).is_err());
    assert!(verify(other.root_der(), &quote, &other_collateral, NOW).is_err());
    assert!(verify(other.root_der(), &quote, &collateral, NOW).is_err());
    // The other PKI is internally consistent: its own quotes verify under its own root.
    assert!(
        verify(
            other.root_der(),
            &other.quote(&report()),
            &other_collateral,
            NOW
        )
        .is_ok()
    );
}

#[test]
fn out_of_date_tdx_tcb_is_reported() {
    let pki = pki();
    let td = SimTdReport {
        tee_tcb_svn: TEE_TCB_SVN_OUT_OF_DATE,
        ..report()
    };
    let collateral = pki.collateral(ISSUED, VALID_FOR).unwrap();
    let verified = verify(pki.root_der(), &pki.quote(&td), &collateral, NOW).unwrap();
    assert_eq!(verified.status, "OutOfDate");
    assert_eq!(verified.advisory_ids, ["SIM-SA-00002"]);
}

#[test]
fn debug_td_is_rejected() {
    let pki = pki();
    let mut td = report();
    td.measurements.td_attributes.0[0] |= 1;
    assert!(td.measurements.debug());
    let collateral = pki.collateral(ISSUED, VALID_FOR).unwrap();
    expect_err(
        verify(pki.root_der(), &pki.quote(&td), &collateral, NOW),
        "Debug",
    );
}

#[test]
fn foreign_tdx_module_signer_is_rejected() {
    let pki = pki();
    let td = SimTdReport {
        mr_signer_seam: Measurement([1; 48]),
        ..report()
    };
    let collateral = pki.collateral(ISSUED, VALID_FOR).unwrap();
    expect_err(
        verify(pki.root_der(), &pki.quote(&td), &collateral, NOW),
        "MRSIGNER",
    );
}

#[test]
fn revoked_pck_certificate_is_rejected() {
    let pki = pki();
    let quote = pki.quote(&report());
    let collateral = pki.collateral_revoking(ISSUED, VALID_FOR, true).unwrap();
    expect_err(
        verify(pki.root_der(), &quote, &collateral, NOW),
        "CertRevoked",
    );
}

#[test]
fn same_seed_gives_identical_bytes_and_other_seeds_differ() {
    let a = SimPki::from_seed(DEFAULT_SEED);
    let b = SimPki::from_seed(DEFAULT_SEED);
    assert_eq!(a.root_der(), b.root_der());
    assert_eq!(a.root_sha256(), b.root_sha256());
    assert_eq!(a.root_sha256(), Sha256::digest(a.root_der()));
    let (ca, cb) = (
        a.collateral(ISSUED, VALID_FOR).unwrap(),
        b.collateral(ISSUED, VALID_FOR).unwrap(),
    );
    assert_eq!(ca, cb);
    assert_eq!(
        serde_json::to_string(&ca).unwrap(),
        serde_json::to_string(&cb).unwrap()
    );
    assert_eq!(a.quote(&report()), b.quote(&report()));

    let c = SimPki::from_seed(b"chrysalis simulated TEE v2");
    assert_ne!(a.root_der(), c.root_der());
    assert_ne!(a.root_sha256(), c.root_sha256());

    // Collateral depends on its dates, quotes on their report.
    assert_ne!(a.collateral(ISSUED + 1, VALID_FOR).unwrap(), ca);
    let mut other = report();
    other.report_data.0[0] ^= 1;
    assert_ne!(a.quote(&other), a.quote(&report()));
}

/// The default profile's root is what policies and docs pin; changing it is a breaking change
/// (every pinned sim policy stops trusting the simulator), so it must be a deliberate one.
#[test]
fn default_seed_root_fingerprint_is_stable() {
    assert_eq!(
        pki().root_sha256().to_hex(),
        "ba13e0df721eff1f4d81ec0a26f7b67b0793b99b0c11971e7b9216d252a95794"
    );
}

#[test]
fn collateral_round_trips_through_json() {
    let collateral = pki().collateral(ISSUED, VALID_FOR).unwrap();
    let json = serde_json::to_string(&collateral).unwrap();
    let back: dcap_qvl::QuoteCollateralV3 = serde_json::from_str(&json).unwrap();
    assert_eq!(back, collateral);
    assert!(verify(pki().root_der(), &pki().quote(&report()), &back, NOW).is_ok());
}

#[test]
fn impossible_collateral_times_are_errors() {
    let pki = pki();
    assert_eq!(
        pki.collateral(ISSUED, 0).unwrap_err(),
        SimError::EmptyValidity
    );
    assert!(matches!(
        pki.collateral(u64::MAX - 1, 10).unwrap_err(),
        SimError::TimeOutOfRange { .. }
    ));
    assert!(matches!(
        pki.collateral(MAX_COLLATERAL_TIME, 1).unwrap_err(),
        SimError::TimeOutOfRange { .. }
    ));
    let err = pki.collateral(ISSUED, 0).unwrap_err().to_string();
    assert!(err.contains("valid_for"), "{err}");
}

/// Header (48) + TD report (584) is what the attestation key signs; the signature follows the
/// 4-byte auth data length. Every single-byte change there must fail verification, not panic.
#[test]
fn every_byte_flip_in_signed_region_or_signature_is_rejected() {
    const SIGNED: usize = 48 + 584;
    let pki = pki();
    let quote = pki.quote(&report());
    let collateral = pki.collateral(ISSUED, VALID_FOR).unwrap();
    let verifier = QuoteVerifier::new(pki.root_der().to_vec());
    assert!(verifier.verify(&quote, &collateral, NOW).is_ok());
    let signature = SIGNED + 4..SIGNED + 4 + 64;
    let mut tampered = quote.clone();
    for i in (0..SIGNED).chain(signature) {
        for mask in [0x01, 0x80] {
            tampered[i] ^= mask;
            assert!(
                verifier.verify(&tampered, &collateral, NOW).is_err(),
                "flipping bits {mask:#04x} of byte {i} of the quote went unnoticed"
            );
            tampered[i] = quote[i];
        }
    }
}

#[test]
fn debug_output_names_the_root_not_the_keys() {
    let shown = format!("{:?}", pki());
    assert!(shown.contains(&pki().root_sha256().to_hex()), "{shown}");
    assert!(shown.len() < 200, "{shown}");
}

/// The host shares one PKI between its quote-service tasks.
#[test]
fn sim_pki_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SimPki>();
}
