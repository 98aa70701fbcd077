//! `chrysalis measure`, `chrysalis policy from-manifest` and `chrysalis explain`, run as a user
//! would on an image built in a temporary directory from the sev crate's recorded OVMF vectors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrysalis_attestation::measure::snp::SnpVcpuType;
use chrysalis_attestation::sim::{
    DEFAULT_SEED, SimAmdPki, SimPki, SimSnpReport, SimTdReport, td_measurements,
};
use chrysalis_attestation::{Measurement, Policy, ReportData, Sha256};
use chrysalis_testkit::measure_image::Image;

fn chrysalis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args(args)
        .output()
        .expect("run chrysalis")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            text(&o.stdout),
            text(&o.stderr)
        )
    })
}

fn is_lower_hex48(v: &serde_json::Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 96 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')))
}

#[test]
fn measure_tdx_reproduces_the_calculator() {
    let img = Image::new(b"initramfs v1");
    let o = chrysalis(&[
        "measure",
        "--manifest",
        &img.path(),
        "--platform",
        "tdx",
        "--vcpus",
        "2",
        "--memory",
        "4096",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v = json(&o);
    let e = img.tdx().registers;
    for (key, want) in [
        ("mr_td", e.mr_td),
        ("rtmr1", e.rtmr[1]),
        ("rtmr2", e.rtmr[2]),
        ("rtmr3", e.rtmr[3]),
    ] {
        assert!(is_lower_hex48(&v[key]), "{key}: {}", v[key]);
        assert_eq!(v[key], want.to_hex(), "{key}");
    }
    // RTMR0: computed for the tdx profile's QEMU release and machine type.
    assert_eq!(v["rtmr0"], img.rtmr0(2, 4096).to_hex());
    assert_ne!(
        img.rtmr0(2, 4096),
        img.rtmr0(2, 2048),
        "memory enters RTMR0"
    );
    assert_ne!(img.rtmr0(2, 4096), img.rtmr0(8, 65536));
    assert_eq!(v["qemu_machine"], "pc-q35-10.0");
    assert_eq!(e.rtmr[3], Measurement::ZERO);

    // A captured RTMR0 is passed through; text output names the registers.
    let r0 = "ab".repeat(48);
    let o = chrysalis(&[
        "measure",
        "--manifest",
        &img.path(),
        "--platform",
        "tdx",
        "--vcpus",
        "2",
        "--memory",
        "4096",
        "--rtmr0",
        &r0,
        "--json",
    ]);
    assert_eq!(json(&o)["rtmr0"], r0);
    let o = chrysalis(&[
        "measure",
        "--manifest",
        &img.path(),
        "--platform",
        "tdx",
        "--vcpus",
        "2",
        "--memory",
        "4096",
    ]);
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!("rtmr2        {}", e.rtmr[2])),
        "{out}"
    );
    assert!(
        out.contains(&format!("rtmr0        {}", img.rtmr0(2, 4096))),
        "{out}"
    );
}

/// A shape whose ACPI tables are not modelled is refused by name: RTMR0 is never silently
/// left unpinned.
#[test]
fn measure_tdx_refuses_a_shape_it_does_not_model() {
    let img = Image::new(b"initramfs v1");
    let o = chrysalis(&[
        "measure",
        "--manifest",
        &img.path(),
        "--platform",
        "tdx",
        "--vcpus",
        "3",
        "--memory",
        "3000",
        "--json",
    ]);
    assert_ne!(o.status.code(), Some(0));
    let err = text(&o.stderr);
    assert!(err.contains("3 vCPU, 3000 MiB"), "{err}");
    assert!(err.contains("pc-q35-10.0"), "{err}");
    assert!(o.stdout.is_empty());
    // With a captured value for the shape, it is taken as given.
    let r0 = "cd".repeat(48);
    let o = chrysalis(&[
        "measure",
        "--manifest",
        &img.path(),
        "--platform",
        "tdx",
        "--vcpus",
        "3",
        "--memory",
        "3000",
        "--rtmr0",
        &r0,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(json(&o)["rtmr0"], r0);
}

#[test]
fn measure_snp_reproduces_the_calculator_per_vcpu_count_and_type() {
    let img = Image::new(b"initramfs v1");
    let mut seen = Vec::new();
    for (vcpus, t, arg) in [
        (2, SnpVcpuType::EPYC_V4, None),
        (2, SnpVcpuType::EPYC_GENOA, Some("EPYC-Genoa")),
        (8, SnpVcpuType::EPYC_V4, Some("EPYC-v4")),
    ] {
        let n = vcpus.to_string();
        let mut args = vec![
            "measure",
            "--manifest",
            &img.path(),
            "--platform",
            "snp",
            "--vcpus",
            &n,
            "--memory",
            "4096",
            "--json",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if let Some(a) = arg {
            args.extend(["--vcpu-type".into(), a.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = chrysalis(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        let v = json(&o);
        assert!(is_lower_hex48(&v["measurement"]));
        assert_eq!(v["measurement"], img.snp(vcpus, t).to_hex(), "{vcpus} {t}");
        seen.push(v["measurement"].clone());
    }
    assert!(seen[0] != seen[1] && seen[0] != seen[2] && seen[1] != seen[2]);
}

#[test]
fn a_changed_artifact_is_bad_input_naming_it_and_both_hashes() {
    let img = Image::new(b"initramfs v1");
    std::fs::write(img.dir.path().join("initramfs.cpio.gz"), b"initramfs v2").unwrap();
    for platform in ["tdx", "snp"] {
        let o = chrysalis(&[
            "measure",
            "--manifest",
            &img.path(),
            "--platform",
            platform,
            "--vcpus",
            "2",
            "--memory",
            "4096",
        ]);
        assert_eq!(o.status.code(), Some(2));
        let err = text(&o.stderr);
        let now = Sha256::of_bytes(b"initramfs v2");
        assert!(
            err.contains("initramfs.cpio.gz")
                && err.contains(&img.manifest.artifacts.initramfs.sha256.to_string())
                && err.contains(&now.to_string()),
            "{err}"
        );
    }
    let o = chrysalis(&[
        "measure",
        "--manifest",
        &img.path(),
        "--platform",
        "tdx",
        "--vcpus",
        "2",
        "--memory",
        "4096",
        "--vcpu-type",
        "EPYC-v4",
    ]);
    assert_eq!(o.status.code(), Some(2), "SNP options are refused for TDX");
}

#[test]
fn a_manifest_without_firmware_for_the_platform_is_bad_input() {
    let mut img = Image::new(b"initramfs v1");
    img.manifest.firmware.remove("snp");
    img.write_manifest();
    let o = chrysalis(&[
        "policy",
        "from-manifest",
        "--manifest",
        &img.path(),
        "--platform",
        "snp",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("no snp firmware (firmware.snp)"), "{err}");
    // TDX is unaffected.
    let o = chrysalis(&[
        "policy",
        "from-manifest",
        "--manifest",
        &img.path(),
        "--platform",
        "tdx",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

#[test]
fn measure_reports_a_manifest_that_records_other_values() {
    let mut img = Image::new(b"initramfs v1");
    let e = img.tdx().registers;
    let mut wrong = e.rtmr[2];
    wrong.0[0] ^= 1;
    img.manifest.expected_measurements =
        Some(chrysalis_attestation::manifest::ExpectedMeasurements {
            tdx: vec![chrysalis_attestation::manifest::TdxExpected {
                shape: chrysalis_attestation::manifest::VmShape {
                    vcpus: 2,
                    memory_mib: 4096,
                },
                firmware: "tdx".into(),
                registers: chrysalis_attestation::TdxRegisters {
                    mr_td: e.mr_td,
                    rtmr: [Measurement::ZERO, e.rtmr[1], wrong, e.rtmr[3]],
                },
                rtmr0_pinned: false,
                qemu_version: None,
                qemu_machine: None,
            }],
            snp: vec![],
        });
    img.write_manifest();
    let o = chrysalis(&[
        "measure",
        "--manifest",
        &img.path(),
        "--platform",
        "tdx",
        "--vcpus",
        "2",
        "--memory",
        "4096",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(
        json(&o)["rtmr2"],
        e.rtmr[2].to_hex(),
        "prints the recomputed value"
    );
}

fn policy_from(img: &Image, extra: &[&str]) -> (Output, String) {
    let path = img.path();
    let mut args = vec![
        "policy",
        "from-manifest",
        "--manifest",
        &path,
        "--platform",
        "tdx",
    ];
    args.extend_from_slice(extra);
    let o = chrysalis(&args);
    let s = text(&o.stdout);
    (o, s)
}

/// A sim quote of `img`'s expected registers, its collateral, and `chrysalis evidence verify`
/// of it against `policy`.
fn verify_sim_quote(dir: &Path, img: &Image, policy: &str) -> Output {
    verify_sim_quote_with(dir, img, policy, |_| {})
}

/// As [`verify_sim_quote`], with the quoted registers changed by `edit` first.
fn verify_sim_quote_with(
    dir: &Path,
    img: &Image,
    policy: &str,
    edit: impl FnOnce(&mut chrysalis_attestation::TdxMeasurements),
) -> Output {
    let pki = SimPki::from_seed(DEFAULT_SEED);
    let now = 1_767_225_600;
    let mut registers = img.tdx().registers;
    registers.rtmr[0] = img.rtmr0(2, 2048);
    let mut m = td_measurements(registers.mr_td, registers.rtmr);
    edit(&mut m);
    let quote = pki.quote(&SimTdReport::new(m, ReportData([7; 64])));
    let collateral = pki.collateral(now - 3600, 86_400).unwrap();
    std::fs::write(dir.join("quote.bin"), quote).unwrap();
    std::fs::write(
        dir.join("collateral.json"),
        serde_json::to_vec(&collateral).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    chrysalis(&[
        "evidence",
        "verify",
        "--tdx-quote",
        &p("quote.bin"),
        "--collateral",
        &p("collateral.json"),
        "--now",
        &now.to_string(),
        "--policy",
        &p("policy.toml"),
        "--json",
    ])
}

#[test]
fn policy_from_manifest_round_trips_and_decides_sim_quotes() {
    let img = Image::new(b"initramfs v1");
    let (o, toml) = policy_from(&img, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let strict = Policy::from_toml(&toml).unwrap();
    assert!(strict.trust.dangerous_simulated_intel_roots.is_empty());
    assert!(!toml.contains("DANGEROUS"));
    let e = img.tdx().registers;
    assert_eq!(strict.tdx.len(), 4, "one pin per default shape");
    for (pin, (vcpus, mib)) in
        strict
            .tdx
            .iter()
            .zip([(2, 2048), (2, 4096), (8, 65536), (16, 131072)])
    {
        assert_eq!(
            (pin.mr_td, pin.rtmr0, pin.rtmr1, pin.rtmr2, pin.rtmr3),
            (
                e.mr_td,
                Some(img.rtmr0(vcpus, mib)),
                Some(e.rtmr[1]),
                Some(e.rtmr[2]),
                Some(e.rtmr[3])
            ),
            "{vcpus} vCPU {mib} MiB"
        );
        // The full TD_ATTRIBUTES (SEPT_VE_DISABLE only) and XFAM every shape launches with.
        assert_eq!(
            (
                pin.td_attributes.map(|f| f.to_hex()),
                pin.xfam.map(|f| f.to_hex())
            ),
            (
                Some("0000001000000000".into()),
                Some("e702060000000000".into())
            )
        );
    }
    assert!(
        toml.contains("td_attributes = \"0000001000000000\""),
        "{toml}"
    );
    assert!(toml.contains("xfam = \"e702060000000000\""), "{toml}");
    assert_eq!(
        Policy::from_toml(&strict.to_toml().unwrap()).unwrap(),
        strict
    );

    let (o, sim_toml) = policy_from(&img, &["--dangerous-sim-root"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("SIMULATED"), "loud on stderr");
    assert!(sim_toml.contains("DANGEROUS") && sim_toml.contains("SIMULATED"));
    let sim = Policy::from_toml(&sim_toml).unwrap();
    let root = SimPki::from_seed(DEFAULT_SEED).root_sha256();
    assert_eq!(sim.trust.dangerous_simulated_intel_roots, [root]);

    let work = tempfile::tempdir().unwrap();
    // The same artifacts and VMM: accepted.
    let o = verify_sim_quote(work.path(), &img, &sim_toml);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    // Another VMM (other ACPI tables or TD HOB, hence another RTMR0): refused.
    let o = verify_sim_quote_with(work.path(), &img, &sim_toml, |m| {
        m.registers.rtmr[0] = Measurement([0x5a; 48])
    });
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    // Another XFAM (CET state added): the pin refuses it.
    let o = verify_sim_quote_with(work.path(), &img, &sim_toml, |m| m.xfam.0[1] |= 0x18);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(text(&o.stdout).contains("xfam is e71a060000000000"));
    // PERF_PROF (TD_ATTRIBUTES bit 5): refused by name, and by the pin.
    let o = verify_sim_quote_with(work.path(), &img, &sim_toml, |m| {
        m.td_attributes.0[0] |= 0x20
    });
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let reasons = v["reasons"].to_string();
    assert!(
        reasons.contains("under debug") && reasons.contains("perf_prof"),
        "{reasons}"
    );
    assert!(
        reasons.contains("td_attributes is 2000001000000000"),
        "{reasons}"
    );
    // The strict policy does not trust the sim root.
    let o = verify_sim_quote(work.path(), &img, &toml);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    // A changed initrd: RTMR2 differs, rejected.
    let changed = Image::new(b"initramfs v1 + a backdoor");
    let o = verify_sim_quote(work.path(), &changed, &sim_toml);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let out = text(&o.stdout);
    assert!(out.to_lowercase().contains("measurement"), "{out}");

    // For snp the sim root is the simulated AMD ARK (profile sim-snp): a sim report with the
    // recomputed launch digest is accepted, one of another digest is not, and the strict
    // policy refuses the simulated ARK.
    let o = chrysalis(&[
        "policy",
        "from-manifest",
        "--manifest",
        &img.path(),
        "--platform",
        "snp",
        "--dangerous-sim-root",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("SIMULATED AMD ARK"),
        "loud on stderr"
    );
    let sim_snp = Policy::from_toml(&text(&o.stdout)).unwrap();
    let amd = SimAmdPki::from_seed(DEFAULT_SEED);
    assert_eq!(
        sim_snp.trust.dangerous_simulated_amd_roots,
        [amd.ark_sha256()]
    );
    assert!(sim_snp.trust.dangerous_simulated_intel_roots.is_empty());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = amd.bundle(&SimSnpReport::new(
        img.snp(2, SnpVcpuType::EPYC_V4),
        ReportData([1; 64]),
    ));
    sim_snp.appraise(&good, None, now).unwrap();
    let bad = amd.bundle(&SimSnpReport::new(
        Measurement([9; 48]),
        ReportData([1; 64]),
    ));
    assert!(sim_snp.appraise(&bad, None, now).is_err());
    let mut strict_snp = sim_snp.clone();
    strict_snp.trust.dangerous_simulated_amd_roots.clear();
    assert!(strict_snp.appraise(&good, None, now).is_err());
    // SNP pins: every default shape.
    let o = chrysalis(&[
        "policy",
        "from-manifest",
        "--manifest",
        &img.path(),
        "--platform",
        "snp",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let snp = Policy::from_toml(&text(&o.stdout)).unwrap();
    assert_eq!(snp.snp.len(), 12);
    assert!(
        snp.snp
            .iter()
            .any(|p| p.measurement == img.snp(2, SnpVcpuType::EPYC_GENOA))
    );
    // The guest policy the image launches with and VMPL 0 are pinned in every set, and the
    // TCB floors are written out per product, with their source in the header.
    for p in &snp.snp {
        assert_eq!((p.policy, p.vmpl), (Some(0x3_0000), Some(0)), "{p:?}");
    }
    assert_eq!(
        snp.tcb.snp_floor,
        chrysalis_attestation::policy::SnpFloors::builtin()
    );
    assert_eq!(
        snp.tcb.snp_floor.milan.map(|t| (t.snp, t.microcode)),
        Some((24, 219))
    );
    let out = text(&o.stdout);
    assert!(out.contains("[tcb.snp_floor.genoa]"), "{out}");
    assert!(out.contains("AMD-SB-3019"), "{out}");
}

/// The recorded quote and CCEL of a real TDX boot (shim + GRUB), or None outside CI.
fn recorded() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testvectors/tdx-ccel");
    let (q, l) = (dir.join("cos-113-tdx-quote.dat"), dir.join("ccel_data.dat"));
    if q.is_file() && l.is_file() {
        return Some((q, l));
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the recorded test vectors in {} are missing",
        dir.display()
    );
    eprintln!("SKIPPED: no recorded test vectors in {}", dir.display());
    None
}

#[test]
fn explain_names_the_differing_events_of_a_recorded_boot() {
    let Some((quote, log)) = recorded() else {
        return;
    };
    let img = Image::new(b"initramfs v1");
    let args = [
        "explain",
        "--quote",
        quote.to_str().unwrap(),
        "--eventlog",
        log.to_str().unwrap(),
        "--manifest",
        &img.path(),
    ];
    let o = chrysalis(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("replays to the quote's RTMR0-3"), "{out}");
    for reg in ["MRTD", "RTMR1", "RTMR2"] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(reg) && l.contains("DIFFERS")),
            "{reg} differs: {out}"
        );
    }
    // RTMR0 is predicted (for the modelled shape the log matches best) and differs: that
    // boot ran on another VMM with its own ACPI tables, HOB and firmware.
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("RTMR0") && l.contains("DIFFERS")),
        "{out}"
    );
    assert!(out.contains("RTMR0 predicted for"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("RTMR3") && l.contains("match"))
    );

    let mut jargs = args.to_vec();
    jargs.push("--json");
    let o = chrysalis(&jargs);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(v["matches"], false);
    let events = v["events"].as_array().unwrap();
    let by = |status: &str, ty: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| {
                e["status"] == status
                    && (e["actual"]["event_type"] == ty || e["expected"]["event_type"] == ty)
            })
            .collect()
    };
    // The boot's constant firmware actions match the direct-boot prediction...
    assert!(!by("match", "EV_EFI_ACTION").is_empty(), "{v:#}");
    // ...its kernel (here: shim's PE image) differs and is attributed to the kernel artifact...
    let kernel = by("differs", "EV_EFI_BOOT_SERVICES_APPLICATION");
    assert_eq!(kernel.len(), 1, "{kernel:#?}");
    assert!(
        kernel[0]["source"]
            .as_str()
            .unwrap()
            .contains("artifacts.kernel")
    );
    // ...GRUB's commands were not expected in a direct boot, and the command line and initrd
    // events the direct boot would have logged are missing.
    assert!(by("unexpected", "EV_IPL").len() > 10);
    let grub = by("unexpected", "EV_EFI_BOOT_SERVICES_APPLICATION");
    assert_eq!(grub.len(), 1, "{grub:#?}");
    assert!(
        grub[0]["source"]
            .as_str()
            .unwrap()
            .contains("not a direct kernel boot")
    );
    let missing = by("missing", "EV_EVENT_TAG");
    let sources: Vec<&str> = missing
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.iter().any(|s| s.contains("kernel_cmdline")),
        "{sources:?}"
    );
    assert!(
        sources.iter().any(|s| s.contains("artifacts.initramfs")),
        "{sources:?}"
    );
    // RTMR0 events are predicted: the separator and the UiApp boot option match that boot's,
    // its ACPI tables differ and are named as the VMM's.
    let r0 = |status: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["register"] == "rtmr0" && e["status"] == status)
            .collect()
    };
    assert!(
        r0("match")
            .iter()
            .any(|e| e["actual"]["event_type"] == "EV_SEPARATOR"),
        "{v:#}"
    );
    assert!(
        r0("differs").iter().any(
            |e| e["expected"]["event_type"] == "EV_PLATFORM_CONFIG_FLAGS"
                && e["source"].as_str().unwrap().contains("ACPI tables")
        ),
        "{v:#}"
    );
    assert!(
        v["rtmr0_predicted_for"]
            .as_str()
            .unwrap()
            .contains("pc-q35-10.0")
    );
}

#[test]
fn explain_refuses_bad_input() {
    let img = Image::new(b"i");
    let junk = img.dir.path().join("junk");
    std::fs::write(&junk, b"not a quote").unwrap();
    let o = chrysalis(&[
        "explain",
        "--quote",
        junk.to_str().unwrap(),
        "--eventlog",
        junk.to_str().unwrap(),
        "--manifest",
        &img.path(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("not a TDX quote"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn policy_from_manifest_requires_gpu_evidence_for_gpu_images_only() {
    let mut img = Image::new(b"initramfs v1");
    let (_, cpu) = policy_from(&img, &[]);
    assert!(!Policy::from_toml(&cpu).unwrap().gpu.require);
    assert!(!cpu.contains("[gpu]"), "{cpu}");
    img.manifest.flavor = "gpu".into();
    img.write_manifest();
    let (o, gpu) = policy_from(&img, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let p = Policy::from_toml(&gpu).unwrap();
    assert!(p.gpu.require && p.gpu.nvidia, "{gpu}");
    assert!(!p.gpu.dangerous_no_ocsp && !p.gpu.dangerous_no_rims);
    assert!(gpu.contains("[gpu]\nrequire = true"), "{gpu}");
}
