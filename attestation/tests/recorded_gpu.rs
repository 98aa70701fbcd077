//! The NVIDIA H100 verifier on evidence recorded from a real GPU (../shared/testvectors/nvidia-hopper,
//! from NVIDIA's nvtrust), and on tampered copies of it; and a comparison with NVIDIA's own
//! verifier when it is installed.

use std::path::PathBuf;

use chrysalis_attestation::gpu::{
    self, ChainError, GpuError, GpuEvidence, GpuPolicy, GpuReport, GpuTrust, RimError, rim,
};

/// The requester nonce in the recorded report's GET_MEASUREMENTS request (the one NVIDIA's
/// attestation SDK tests set). The testvectors README names 4cff7f53…, the nonce hard-coded in
/// NVIDIA's verifier for --test_no_gpu; that one is not in this report (NVIDIA's verifier refuses
/// the report with it too: see `nvidia_verifier_agrees`).
const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
const README_NONCE: &str = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e";
/// 2024-06-01: every certificate involved is valid (the RIM signer's expires 2026-11-11).
const NOW: u64 = 1_717_200_000;

fn vectors() -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testvectors/nvidia-hopper");
    assert!(
        dir.is_dir(),
        "recorded vectors missing: {} (see /work/shared/testvectors/README.md)",
        dir.display()
    );
    dir
}

fn file(name: &str) -> Vec<u8> {
    std::fs::read(vectors().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn pem(name: &str) -> Vec<Vec<u8>> {
    gpu::chain::pem_certificates(&file(name)).unwrap()
}

fn nonce(h: &str) -> [u8; 32] {
    hex::decode(h).unwrap().try_into().unwrap()
}

fn report_bytes() -> Vec<u8> {
    hex::decode(
        String::from_utf8(file("hopperAttestationReport.txt"))
            .unwrap()
            .trim(),
    )
    .unwrap()
}

fn trust() -> GpuTrust {
    GpuTrust {
        device_roots: pem("verifier_device_root.pem"),
        rim_roots: pem("verifier_RIM_root.pem"),
    }
}

const DRIVER_RIM: &str = "Driver_RIM_test_no_gpu.swidtag";
const VBIOS_RIM: &str = "1010_0200_882_96005E0001_test_no_gpu.swidtag";

/// The recorded report and chain, without OCSP answers or RIMs (the policy below names both).
/// NVIDIA's sample RIMs are for other versions than the report's (driver 545.00 vs 550.90.07,
/// VBIOS 96.00.5e.00.01 vs 96.00.9f.00.01), so with them the evidence is refused, as NVIDIA's
/// verifier also flags; their signatures and measurements are checked separately below.
fn evidence() -> GpuEvidence {
    GpuEvidence {
        report: report_bytes(),
        chain: pem("hopperCertChain.txt"),
        driver_rim: None,
        vbios_rim: None,
        ocsp: Vec::new(),
    }
}

fn named_policy() -> GpuPolicy {
    GpuPolicy {
        dangerous_no_ocsp: true,
        dangerous_no_rims: true,
        ..GpuPolicy::default()
    }
}

#[test]
fn report_parses_into_the_recorded_fields() {
    let r = GpuReport::from_file_bytes(&file("hopperAttestationReport.txt")).unwrap();
    assert_eq!(hex::encode(r.request_nonce), NONCE);
    assert_eq!(r.blocks.len(), 64);
    assert!(r.blocks.iter().all(|b| b.value.len() == 48));
    assert_eq!(r.opaque.driver_version.as_deref(), Some("550.90.07"));
    assert_eq!(r.opaque.vbios_version.as_deref(), Some("96.00.9f.00.01"));
    assert_eq!(r.opaque.project.as_deref(), Some("1010"));
    assert_eq!(r.opaque.project_sku.as_deref(), Some("0200"));
    assert_eq!(r.opaque.chip_sku.as_deref(), Some("882"));
    assert_eq!(r.signature.len(), 96);
}

#[test]
fn recorded_evidence_is_accepted_under_a_policy_naming_no_ocsp_and_no_rims() {
    let v = gpu::verify(&evidence(), &nonce(NONCE), &trust(), &named_policy(), NOW).unwrap();
    let d = v.verdict();
    assert_eq!(d.driver_version, "550.90.07");
    assert_eq!(d.vbios_version, "96.00.9f.00.01");
    assert!(
        d.device_root.contains("NVIDIA Device Identity CA"),
        "{}",
        d.device_root
    );
    assert!(d.driver_rim.is_none() && d.vbios_rim.is_none());
    assert!(d.checks.iter().any(|c| c.contains("report signature")));
    assert!(d.checks.iter().any(|c| c.contains("FWID")));
    assert!(
        d.checks
            .iter()
            .any(|c| c.contains("revocation NOT checked"))
    );
    assert!(
        d.checks
            .iter()
            .any(|c| c.contains("driver measurements NOT compared"))
    );
    assert!(
        d.checks
            .iter()
            .any(|c| c.contains("VBIOS measurements NOT compared"))
    );
    assert!(d.cc_mode.starts_with("not attested"));
}

fn recorded_rims() -> Vec<(&'static str, gpu::VerifiedRim)> {
    let root = &trust().rim_roots[0];
    vec![
        (
            "driver",
            rim::verify_rim(&file(DRIVER_RIM), root, NOW).unwrap(),
        ),
        (
            "VBIOS",
            rim::verify_rim(&file(VBIOS_RIM), root, NOW).unwrap(),
        ),
    ]
}

#[test]
fn recorded_rims_verify_and_differ_from_the_report_where_their_versions_do() {
    let rims = recorded_rims();
    assert_eq!(rims[0].1.version, "545.00");
    assert_eq!(rims[1].1.version, "96.00.5e.00.01");
    assert!(
        rims[1].1.root.contains("NVIDIA CoRIM signing Root CA"),
        "{}",
        rims[1].1.root
    );
    // 21 active driver and 12 active VBIOS measurements; 6 and 7 of them are equal to the
    // report's (index i of a RIM is SPDM block i + 1), the others belong to other versions.
    let report = GpuReport::parse(&report_bytes()).unwrap();
    let err = gpu::compare_measurements(&report, &rims).unwrap_err();
    let GpuError::Measurements { mismatches } = err else {
        panic!("{err}")
    };
    let named: Vec<(u16, &str)> = mismatches.iter().map(|m| (m.index, m.source)).collect();
    let vbios = [1, 2, 3, 9, 11];
    let driver = [7, 21, 22, 25, 26, 27, 29, 30, 31, 32, 34, 36, 37, 39, 40];
    let mut expected: Vec<(u16, &str)> = vbios
        .iter()
        .map(|&i| (i, "VBIOS"))
        .chain(driver.iter().map(|&i| (i, "driver")))
        .collect();
    expected.sort();
    assert_eq!(named, expected);
}

/// The recorded report with each active RIM measurement replaced by the RIM's first
/// alternative: what a GPU running exactly those versions would report.
fn report_matching(rims: &[(&'static str, gpu::VerifiedRim)]) -> GpuReport {
    let mut report = GpuReport::parse(&report_bytes()).unwrap();
    for (_, r) in rims {
        for m in r.measurements.iter().filter(|m| m.active) {
            let b = report
                .blocks
                .iter_mut()
                .find(|b| u16::from(b.index) == m.index + 1)
                .unwrap();
            b.value = hex::decode(&m.alternatives[0]).unwrap();
        }
    }
    report
}

#[test]
fn measurements_equal_to_the_rims_pass_the_comparison() {
    let rims = recorded_rims();
    assert_eq!(
        gpu::compare_measurements(&report_matching(&rims), &rims).unwrap(),
        33
    );
}

#[test]
fn the_recorded_rims_are_for_other_versions_and_refused() {
    // NVIDIA's sample driver RIM says 545.00, the report's driver is 550.90.07: NVIDIA's
    // verifier flags the same ("driver version in the RIM file is not matching").
    let mut e = evidence();
    e.driver_rim = Some(file(DRIVER_RIM));
    let err = gpu::verify(&e, &nonce(NONCE), &trust(), &named_policy(), NOW).unwrap_err();
    assert!(
        matches!(&err, GpuError::RimVersion { which: "driver", rim, .. } if rim == "545.00"),
        "{err}"
    );
    let mut e = evidence();
    e.vbios_rim = Some(file(VBIOS_RIM));
    let err = gpu::verify(&e, &nonce(NONCE), &trust(), &named_policy(), NOW).unwrap_err();
    assert!(
        matches!(&err, GpuError::RimVersion { which: "VBIOS", rim, .. } if rim == "96.00.5e.00.01"),
        "{err}"
    );
}

#[test]
fn wrong_nonce_is_refused() {
    let err = gpu::verify(
        &evidence(),
        &nonce(README_NONCE),
        &trust(),
        &named_policy(),
        NOW,
    )
    .unwrap_err();
    assert!(matches!(err, GpuError::Nonce { .. }), "{err}");
}

#[test]
fn flipped_measurement_breaks_the_signature() {
    let mut e = evidence();
    // Block 1's value starts at request (37) + header (8) + block header (4) + DMTF header (3).
    e.report[37 + 8 + 4 + 3] ^= 1;
    let err = gpu::verify(&e, &nonce(NONCE), &trust(), &named_policy(), NOW).unwrap_err();
    assert!(matches!(err, GpuError::Signature), "{err}");
}

#[test]
fn flipped_measurement_is_named_by_the_comparison() {
    let rims = recorded_rims();
    let mut report = report_matching(&rims);
    let index = rims[1]
        .1
        .measurements
        .iter()
        .find(|m| m.active)
        .unwrap()
        .index;
    let block = report
        .blocks
        .iter_mut()
        .find(|b| u16::from(b.index) == index + 1)
        .unwrap();
    block.value[0] ^= 1;
    let err = gpu::compare_measurements(&report, &rims).unwrap_err();
    let GpuError::Measurements { mismatches } = &err else {
        panic!("{err}")
    };
    assert_eq!(mismatches.len(), 1);
    assert_eq!(mismatches[0].index, index);
    assert!(
        err.to_string().contains(&format!("index {index} (VBIOS")),
        "{err}"
    );
}

#[test]
fn cut_chain_is_refused() {
    let mut e = evidence();
    e.chain.remove(1);
    let err = gpu::verify(&e, &nonce(NONCE), &trust(), &named_policy(), NOW).unwrap_err();
    assert!(
        matches!(
            err,
            GpuError::Chain(ChainError::IssuerMismatch { index: 0, .. })
        ),
        "{err}"
    );
}

#[test]
fn swapped_chain_is_refused() {
    let mut e = evidence();
    e.chain.swap(1, 2);
    let err = gpu::verify(&e, &nonce(NONCE), &trust(), &named_policy(), NOW).unwrap_err();
    assert!(
        matches!(err, GpuError::Chain(ChainError::IssuerMismatch { .. })),
        "{err}"
    );
}

#[test]
fn another_root_is_refused() {
    let t = GpuTrust {
        device_roots: trust().rim_roots,
        rim_roots: trust().rim_roots,
    };
    let err = gpu::verify(&evidence(), &nonce(NONCE), &t, &named_policy(), NOW).unwrap_err();
    assert!(matches!(err, GpuError::Chain(_)), "{err}");
}

#[test]
fn missing_ocsp_is_refused_unless_named() {
    let p = GpuPolicy {
        dangerous_no_ocsp: false,
        ..named_policy()
    };
    let err = gpu::verify(&evidence(), &nonce(NONCE), &trust(), &p, NOW).unwrap_err();
    assert!(matches!(err, GpuError::MissingOcsp), "{err}");
}

#[test]
fn missing_rim_is_refused_unless_named() {
    let p = GpuPolicy {
        dangerous_no_rims: false,
        ..named_policy()
    };
    let err = gpu::verify(&evidence(), &nonce(NONCE), &trust(), &p, NOW).unwrap_err();
    assert!(matches!(err, GpuError::MissingRim("driver")), "{err}");
}

#[test]
fn version_outside_the_policy_is_refused() {
    let p = GpuPolicy {
        allowed_driver_versions: vec!["535.104.05".into()],
        ..named_policy()
    };
    let err = gpu::verify(&evidence(), &nonce(NONCE), &trust(), &p, NOW).unwrap_err();
    assert!(
        matches!(
            err,
            GpuError::VersionNotAllowed {
                which: "driver",
                ..
            }
        ),
        "{err}"
    );
}

fn tampered_rim(from: &str, to: &str) -> RimError {
    let xml = String::from_utf8(file(VBIOS_RIM)).unwrap();
    assert!(xml.contains(from), "{from} not in the RIM");
    let xml = xml.replacen(from, to, 1);
    rim::verify_rim(xml.as_bytes(), &trust().rim_roots[0], NOW).unwrap_err()
}

#[test]
fn rim_with_another_version_breaks_its_digest() {
    let err = tampered_rim(
        "colloquialVersion=\"96.00.5E.00.01\"",
        "colloquialVersion=\"96.00.9F.00.01\"",
    );
    assert!(matches!(err, RimError::Digest), "{err}");
}

#[test]
fn rim_with_a_broken_signature_is_refused() {
    let xml = String::from_utf8(file(VBIOS_RIM)).unwrap();
    let start = xml.find("<ds:SignatureValue>").unwrap() + "<ds:SignatureValue>".len();
    let first = &xml[start..start + 1];
    let other = if first == "A" { "B" } else { "A" };
    let err = tampered_rim(
        &format!("<ds:SignatureValue>{first}"),
        &format!("<ds:SignatureValue>{other}"),
    );
    assert!(matches!(err, RimError::Signature), "{err}");
}

#[test]
fn rim_signer_expired_at_a_later_time_is_refused() {
    // The sample RIMs' signing certificate expired on 2026-11-11.
    let err = rim::verify_rim(&file(VBIOS_RIM), &trust().rim_roots[0], 1_800_000_000).unwrap_err();
    assert!(
        matches!(err, RimError::Chain(ChainError::Expired { .. })),
        "{err}"
    );
}

#[test]
fn rim_chained_to_the_device_root_is_refused() {
    let err = rim::verify_rim(&file(VBIOS_RIM), &trust().device_roots[0], NOW).unwrap_err();
    assert!(matches!(err, RimError::Chain(_)), "{err}");
}

/// Runs NVIDIA's verifier (PyPI nv-local-gpu-verifier) through tests/nv_local_gpu_verifier.py
/// with the Python named by CHRYSALIS_NV_VERIFIER_PYTHON (or `python3` if it imports
/// `verifier.cc_admin`), and checks that it agrees with ours on the recorded vectors: with the
/// README's nonce both refuse on the nonce; with the report's nonce both pass the chain, FWID,
/// nonce and signature checks and both refuse the driver RIM's version.
#[test]
fn nvidia_verifier_agrees() {
    let python = std::env::var("CHRYSALIS_NV_VERIFIER_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import verifier.cc_admin"])
        // NVIDIA's verifier writes verifier.log into the working directory when imported.
        .current_dir(std::env::temp_dir())
        .output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        eprintln!(
            "SKIPPED nvidia_verifier_agrees: {python} cannot import NVIDIA's verifier \
             (pip install nv-local-gpu-verifier in a venv, then set CHRYSALIS_NV_VERIFIER_PYTHON)"
        );
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nv_local_gpu_verifier.py");
    let run = |nonce: &str| {
        let o = std::process::Command::new(&python)
            .arg(&script)
            .current_dir(std::env::temp_dir())
            .env("NV_NONCE", nonce)
            .env("NV_TIME", NOW.to_string())
            .env("NV_DRIVER_RIM", vectors().join(DRIVER_RIM))
            .env("NV_VBIOS_RIM", vectors().join(VBIOS_RIM))
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    let nv = run(README_NONCE);
    assert!(
        nv.contains("nonce in the SPDM GET MEASUREMENT request message is not matching"),
        "{nv}"
    );
    assert!(
        gpu::verify(
            &evidence(),
            &nonce(README_NONCE),
            &trust(),
            &named_policy(),
            NOW
        )
        .is_err()
    );

    let nv = run(NONCE);
    for line in [
        "firmware ID in the device certificate chain is matching",
        "GPU attestation report certificate chain validation successful",
        "nonce in the SPDM GET MEASUREMENT request message is matching",
        "Attestation report signature verification successful",
        "driver version in the RIM file is not matching",
    ] {
        assert!(
            nv.contains(line),
            "NVIDIA's verifier did not say {line:?}:\n{nv}"
        );
    }
    let mut e = evidence();
    e.driver_rim = Some(file(DRIVER_RIM));
    let ours = gpu::verify(&e, &nonce(NONCE), &trust(), &named_policy(), NOW).unwrap_err();
    assert!(
        matches!(
            ours,
            GpuError::RimVersion {
                which: "driver",
                ..
            }
        ),
        "{ours}"
    );
    eprintln!("NVIDIA's verifier:\n{nv}");
}

#[test]
fn pinned_nvidia_roots_are_the_recorded_roots_and_their_carried_copies() {
    use chrysalis_attestation::Sha256;
    let device = &pem("verifier_device_root.pem")[0];
    let rim_root = &pem("verifier_RIM_root.pem")[0];
    assert_eq!(Sha256::digest(device), gpu::NVIDIA_DEVICE_ROOT_SHA256);
    assert_eq!(Sha256::digest(rim_root), gpu::NVIDIA_RIM_ROOT_SHA256);
    // The driver's chain and each RIM carry a copy of their root: the default policy finds and
    // trusts exactly those, and nothing else.
    let mut e = evidence();
    e.driver_rim = Some(file(DRIVER_RIM));
    e.vbios_rim = Some(file(VBIOS_RIM));
    let t = GpuPolicy::default().trust_for(&e);
    assert_eq!(t.device_roots, vec![device.clone()]);
    assert_eq!(t.rim_roots, vec![rim_root.clone()]);
    let off = GpuPolicy {
        nvidia: false,
        ..GpuPolicy::default()
    }
    .trust_for(&e);
    assert!(off.device_roots.is_empty() && off.rim_roots.is_empty());
    // Pinned trust reaches the same verdict as the root files.
    let v = gpu::verify(&e, &nonce(NONCE), &t, &named_policy(), NOW).unwrap_err();
    assert!(
        v.to_string().contains("driver RIM is for version 545.00"),
        "{v}"
    );
}
