//! `check`, `run` and `--dry-run` refuse configurations that would boot into measurements no
//! client accepts, each with its reason: firmware other than the manifest's, a VM shape without an
//! expected measurement (for SNP the new shape's launch digest is printed), an SNP guest beyond
//! the firmware's 40-bit address space, and a QEMU older than the profile's machine type.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrysalis_attestation::manifest::{
    Artifact, ExpectedMeasurements, SnpExpected, TdxExpected, VmShape,
};
use chrysalis_attestation::{Measurement, TdxRegisters};
use chrysalis_testkit::fixtures;
use chrysalis_testkit::image::TestImage;

fn host(args: &[&str], config: &Path) -> Output {
    host_in(args, config, None)
}

fn host_in(args: &[&str], config: &Path, root: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chrysalis-host"));
    if let Some(r) = root {
        c.arg("--root").arg(r);
    }
    c.args(args).arg("--config").arg(config).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const SHAPE: VmShape = VmShape {
    vcpus: 2,
    memory_mib: 2048,
};

/// The SNP firmware of the test image: the sev crate's recorded AmdSev OVMF suffix (its launch
/// digest is computable; it does not boot).
fn snp_firmware() -> Vec<u8> {
    fixtures::registry_file("sev", "tests/measurement/ovmf_AmdSev_suffix.bin")
}

/// A test image with TDX and SNP firmware and expected measurements for [`SHAPE`] (SNP: EPYC-v4).
fn image(dir: &Path) -> TestImage {
    let img = dir.join("image");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::write(img.join("ovmf-snp.fd"), snp_firmware()).unwrap();
    TestImage::write_with(&img, |m| {
        m.firmware.insert(
            "snp".into(),
            Artifact::describe(&img, "ovmf-snp.fd").unwrap(),
        );
        m.expected_measurements = Some(expected());
    })
    .unwrap()
}

/// Expected measurements for [`SHAPE`] (values arbitrary: nothing here boots).
fn expected() -> ExpectedMeasurements {
    ExpectedMeasurements {
        tdx: vec![TdxExpected {
            shape: SHAPE,
            firmware: "tdx".into(),
            registers: TdxRegisters {
                mr_td: Measurement([1; 48]),
                rtmr: [0, 2, 3, 0].map(|b| Measurement([b; 48])),
            },
            rtmr0_pinned: false,
            qemu_version: None,
            qemu_machine: None,
        }],
        snp: vec![SnpExpected {
            shape: SHAPE,
            vcpu_type: "EPYC-v4".into(),
            guest_features: 1,
            firmware: "snp".into(),
            measurement: Measurement([4; 48]),
        }],
    }
}

fn config(dir: &Path, vm: &str, rest: &str) -> PathBuf {
    let path = dir.join("host.toml");
    std::fs::write(
        &path,
        format!(
            "[image]\nmanifest = \"image/manifest.json\"\n[vm]\n{vm}\nstate_dir = \"state\"\n{rest}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_configured_firmware_must_be_the_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let vm = "platform = \"tdx\"\nvcpus = 2\nmemory_mib = 2048";
    // The report's case: a 4 MiB file of zeros as [qemu] firmware.
    let zeros = vec![0u8; 4 << 20];
    std::fs::write(dir.path().join("zeros.fd"), &zeros).unwrap();
    let cfg = config(dir.path(), vm, "[qemu]\nfirmware = \"zeros.fd\"\n");
    let out = host(&["check"], &cfg);
    assert!(!out.status.success());
    let err = stderr(&out);
    let want = img.parsed.firmware["tdx"].sha256.to_string();
    let found = chrysalis_attestation::Sha256::digest(&zeros).to_string();
    assert!(
        err.contains("qemu.firmware")
            && err.contains("zeros.fd")
            && err.contains(&want)
            && err.contains(&found),
        "{err}"
    );
    // A byte-identical copy of the manifest's firmware is accepted, and booted from where it is.
    std::fs::copy(
        dir.path().join("image/ovmf-tdx.fd"),
        dir.path().join("copy.fd"),
    )
    .unwrap();
    let cfg = config(dir.path(), vm, "[qemu]\nfirmware = \"copy.fd\"\n");
    let out = host(&["check"], &cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    // Without [qemu] firmware the manifest's is booted.
    let cfg = config(dir.path(), vm, "");
    let out = host(&["run", "--dry-run"], &cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/image/ovmf-tdx.fd"), "{text}");
}

#[test]
fn a_manifest_without_the_profiles_firmware_is_refused_even_with_qemu_firmware() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("image");
    TestImage::write_with(&img, |m| {
        m.firmware.clear();
        m.expected_measurements = Some(expected());
    })
    .unwrap();
    std::fs::write(dir.path().join("fw.fd"), b"firmware").unwrap();
    let cfg = config(
        dir.path(),
        "platform = \"tdx\"\nvcpus = 2\nmemory_mib = 2048",
        "[qemu]\nfirmware = \"fw.fd\"\n",
    );
    let out = host(&["run", "--dry-run"], &cfg);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("firmware map has no \"tdx\" entry"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unmeasured_tdx_shape_is_refused_naming_the_measured_ones() {
    let dir = tempfile::tempdir().unwrap();
    image(dir.path());
    let cfg = config(
        dir.path(),
        "platform = \"tdx\"\nvcpus = 4\nmemory_mib = 2048",
        "",
    );
    for args in [&["check"][..], &["run", "--dry-run"][..]] {
        let out = host(args, &cfg);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("no expected tdx measurement for 4 vCPUs, 2048 MiB")
                && err.contains("it has: 2 vCPUs, 2048 MiB"),
            "{err}"
        );
    }
}

#[test]
fn an_unmeasured_snp_shape_is_refused_and_its_launch_digest_printed() {
    use chrysalis_attestation::measure::snp::{SnpLaunchInputs, SnpVcpuType, snp_launch_digest};
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let cfg = config(
        dir.path(),
        "platform = \"snp\"\nvcpus = 12\nmemory_mib = 2048",
        "",
    );
    let out = host(&["check"], &cfg);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no expected snp measurement for 12 vCPUs (EPYC-v4), 2048 MiB")
            && err.contains("it has: 2 vCPUs (EPYC-v4), 2048 MiB"),
        "{err}"
    );
    let read = |f: &str| std::fs::read(dir.path().join("image").join(f)).unwrap();
    let (fw, kernel, initrd) = (snp_firmware(), read("vmlinuz"), read("initramfs.cpio.gz"));
    let digest = snp_launch_digest(&SnpLaunchInputs {
        kernel: Some(&kernel),
        initrd: Some(&initrd),
        cmdline: Some(&img.parsed.kernel_cmdline),
        ..SnpLaunchInputs::new(&fw, 12, SnpVcpuType::EPYC_V4)
    })
    .unwrap();
    assert!(
        err.contains(&format!(
            "the launch digest of this shape (12 vCPUs, EPYC-v4, 2048 MiB) is {digest}"
        )),
        "{err}"
    );
    // Another CPU model is another shape.
    let cfg = config(
        dir.path(),
        "platform = \"snp\"\nvcpus = 2\nmemory_mib = 2048",
        "[snp]\ncpu = \"EPYC-Milan\"\n",
    );
    let err = stderr(&host(&["run", "--dry-run"], &cfg));
    assert!(err.contains("2 vCPUs (EPYC-Milan), 2048 MiB"), "{err}");
    // The measured shape passes.
    let cfg = config(
        dir.path(),
        "platform = \"snp\"\nvcpus = 2\nmemory_mib = 2048",
        "",
    );
    let out = host(&["check"], &cfg);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn bad_snp_and_tdx_settings_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    image(dir.path());
    let cases = [
        (
            "platform = \"snp\"\nvcpus = 2\nmemory_mib = 2048",
            "[snp]\ncpu = \"host\"\n",
            "snp.cpu: \"host\" cannot be measured",
        ),
        (
            "platform = \"snp\"\nvcpus = 2\nmemory_mib = 2048",
            "[snp]\npolicy = \"0x130000\"\n",
            "snp.policy: 0x130000 is not 0x30000",
        ),
        (
            "platform = \"tdx\"\nvcpus = 2\nmemory_mib = 2048\ngpus = [\"0000:3b:00.0\", \"0000:86:00.0\"]",
            "",
            "vm.gpus: 2 GPUs listed; a TDX guest gets one GPU",
        ),
    ];
    for (vm, rest, want) in cases {
        let cfg = config(dir.path(), vm, rest);
        let err = stderr(&host(&["check"], &cfg));
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn an_snp_guest_beyond_40_bits_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    image(dir.path());
    // A GPU with one 512 GiB BAR: the window (513 GiB) is aligned to 512 GiB above RAM and ends
    // past 1 TiB.
    let gpu = dir.path().join("root/sys/bus/pci/devices/0000:c1:00.0");
    std::fs::create_dir_all(&gpu).unwrap();
    std::fs::write(
        gpu.join("resource"),
        "0x0000000000000000 0x0000000000000000 0x0000000000000000\n0x0000400000000000 0x0000407fffffffff 0x000000000014220c\n",
    )
    .unwrap();
    let cfg = config(
        dir.path(),
        "platform = \"snp\"\nvcpus = 2\nmemory_mib = 2048\ngpus = [\"0000:c1:00.0\"]",
        "",
    );
    let out = host_in(&["run", "--dry-run"], &cfg, Some(&dir.path().join("root")));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("525312 MiB 64-bit PCI window") && err.contains("40-bit"),
        "{err}"
    );
    // Without the device in sysfs, the error names the file.
    let out = host_in(
        &["run", "--dry-run"],
        &cfg,
        Some(&dir.path().join("nothing")),
    );
    assert!(
        stderr(&out).contains("0000:c1:00.0/resource"),
        "{}",
        stderr(&out)
    );
}

fn fake_qemu(dir: &Path, version: &str) -> PathBuf {
    let p = dir.join(format!("qemu-{version}"));
    chrysalis_testkit::write_executable(
        &p,
        &format!(
            "#!/bin/sh\necho 'QEMU emulator version {version} (test)'\necho 'Copyright (c) 2003-2025'\n"
        ),
    );
    p
}

#[test]
fn run_refuses_a_qemu_older_than_the_profiles_machine_type() {
    let dir = tempfile::tempdir().unwrap();
    image(dir.path());
    let qemu = fake_qemu(dir.path(), "10.0.2");
    let cfg = config(
        dir.path(),
        "platform = \"tdx\"\nvcpus = 2\nmemory_mib = 2048",
        &format!(
            "[qemu]\nbinary = \"{}\"\n[relay]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n",
            qemu.display()
        ),
    );
    let out = host(&["run"], &cfg);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "is QEMU 10.0.2; the tdx profile needs QEMU >= 10.1.0 (machine type pc-q35-10.0)"
        ),
        "{err}"
    );
    use chrysalis_host::PlatformProfile;
    use chrysalis_host::launch::{QemuVersion, check_qemu_version};
    let new = fake_qemu(dir.path(), "10.2.0");
    assert_eq!(
        check_qemu_version(PlatformProfile::Snp, &new).unwrap(),
        QemuVersion {
            major: 10,
            minor: 2,
            micro: 0
        }
    );
    // sim runs on the QEMU this machine has.
    check_qemu_version(PlatformProfile::Sim, &qemu).unwrap();
}
