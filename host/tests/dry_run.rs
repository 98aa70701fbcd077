//! Golden tests of `chrysalis-host run --dry-run`: the exact QEMU and vhost-device-vsock command
//! lines for the tdx, tdx-gpu, snp, snp-gpu and sim profiles.
//!
//! The expected output lives in `tests/golden/<profile>.txt`. After an intended change, regenerate
//! with `CHRYSALIS_BLESS=1 cargo test -p chrysalis-host --test dry_run` and review the diff.
//! Artifact paths come from `tests/golden/manifest.json` (format 1 of
//! `chrysalis_attestation::manifest`), relative to its directory; the golden text writes that
//! directory as `<golden>` so it does not depend on the checkout. `--dry-run` does not read the
//! artifacts, so the fixture lists files that do not exist. GPU BARs come from a faked sysfs
//! ([`fake_root`], passed with the hidden `--root`): two NVIDIA H100s as Linux lists them.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrysalis_host::HostConfig;

use chrysalis_host::launch;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// An H100's sysfs `resource`: BAR0 16 MiB (32-bit), BAR1 128 GiB and BAR3 32 MiB (64-bit,
/// prefetchable), then the expansion ROM.
pub const H100_RESOURCE: &str = "\
0x00000000e2000000 0x00000000e2ffffff 0x0000000000040200
0x0000382000000000 0x0000383fffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000384000000000 0x0000384001ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000e3000000 0x00000000e307ffff 0x0000000000046200
";

/// A directory standing in for `/`, with `/sys/bus/pci/devices/<gpu>/resource` for each GPU.
fn fake_root(gpus: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (gpu, resource) in gpus {
        let d = dir.path().join("sys/bus/pci/devices").join(gpu);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("resource"), resource).unwrap();
    }
    dir
}

fn h100s() -> tempfile::TempDir {
    fake_root(&[
        ("0000:3b:00.0", H100_RESOURCE),
        ("0000:c1:00.0", H100_RESOURCE),
    ])
}

fn dry_run(profile: &str) -> String {
    let root = h100s();
    let out = Command::new(env!("CARGO_BIN_EXE_chrysalis-host"))
        .arg("--root")
        .arg(root.path())
        .args(["run", "--dry-run", "--config"])
        .arg(golden_dir().join(format!("{profile}.toml")))
        .output()
        .expect("run chrysalis-host");
    assert!(
        out.status.success(),
        "dry run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    text.replace(golden_dir().to_str().unwrap(), "<golden>")
}

fn check_golden(profile: &str) {
    let got = dry_run(profile);
    let path = golden_dir().join(format!("{profile}.txt"));
    if std::env::var_os("CHRYSALIS_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        got,
        want,
        "dry-run output for {profile} differs from {}",
        path.display()
    );
}

/// The argv that `run` would execute, straight from the library.
fn argv(profile: &str) -> (Vec<String>, Option<Vec<String>>) {
    let cfg = HostConfig::load(&golden_dir().join(format!("{profile}.toml"))).unwrap();
    let m = chrysalis_host::image::load(&cfg.image.as_ref().unwrap().manifest).unwrap();
    let root = h100s();
    let plan = launch::plan_in(
        &cfg,
        &m,
        || panic!("accel is explicit in the fixtures"),
        root.path(),
    )
    .unwrap();
    (plan.qemu.args, plan.vhost_vsock.map(|v| v.args))
}

fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

fn at(f: &str) -> String {
    golden_dir().join(f).to_str().unwrap().to_string()
}

/// The tdx and snp profiles: versioned machine type with the HPET off, the manifest's firmware.
fn assert_cvm_machine(a: &[String], profile: &str) {
    let machine = value_after(a, "-machine")[0];
    assert!(
        machine.starts_with(&format!("{},", launch::CVM_MACHINE_TYPE))
            && machine.split(',').any(|o| o == "hpet=off"),
        "{profile}: {machine}"
    );
    let fw = if profile.starts_with("tdx") {
        "ovmf-tdx.fd"
    } else {
        "ovmf-snp.fd"
    };
    assert_eq!(value_after(a, "-bios"), [at(fw)], "{profile}");
}

/// GPUs: `rombar=0`, and a 64-bit window of the BARs (128 GiB + 32 MiB per H100) plus 1 GiB,
/// rounded up to 1 GiB: 130 GiB = 133120 MiB for one.
fn assert_gpu(a: &[String], profile: &str, gpu: &str) {
    let vfio: Vec<_> = value_after(a, "-device")
        .into_iter()
        .filter(|d| d.starts_with("vfio-pci,"))
        .collect();
    assert_eq!(
        vfio,
        [format!(
            "vfio-pci,host={gpu},bus=rp0,iommufd=iommufd0,rombar=0"
        )],
        "{profile}"
    );
    assert_eq!(
        value_after(a, "-fw_cfg"),
        ["name=opt/ovmf/X-PciMmio64Mb,string=133120"],
        "{profile}"
    );
}

#[test]
fn tdx_golden() {
    check_golden("tdx");
    let (a, helper) = argv("tdx");
    assert!(helper.is_none());
    let objects = value_after(&a, "-object");
    let tdx: serde_json::Value = serde_json::from_str(objects[0]).unwrap();
    assert_eq!(tdx["qom-type"], "tdx-guest");
    assert_eq!(tdx["quote-generation-socket"]["port"], "4050");
    assert!(value_after(&a, "-machine")[0].contains("kernel-irqchip=split"));
    assert_cvm_machine(&a, "tdx");
    assert!(value_after(&a, "-fw_cfg").is_empty());
    assert!(
        !value_after(&a, "-device")
            .iter()
            .any(|d| d.starts_with("vfio-pci"))
    );
}

#[test]
fn tdx_gpu_golden() {
    check_golden("tdx-gpu");
    let (a, _) = argv("tdx-gpu");
    assert_cvm_machine(&a, "tdx-gpu");
    assert_gpu(&a, "tdx-gpu", "0000:3b:00.0");
}

#[test]
fn snp_golden() {
    check_golden("snp");
    let (a, _) = argv("snp");
    assert!(
        value_after(&a, "-object")
            .iter()
            .any(|o| o.starts_with("sev-snp-guest,")
                && o.contains("kernel-hashes=on")
                && o.ends_with(",policy=0x30000"))
    );
    assert_eq!(value_after(&a, "-cpu"), ["EPYC-v4"]);
    assert_cvm_machine(&a, "snp");
    assert!(value_after(&a, "-fw_cfg").is_empty());
}

#[test]
fn snp_gpu_golden() {
    check_golden("snp-gpu");
    let (a, _) = argv("snp-gpu");
    assert_cvm_machine(&a, "snp-gpu");
    assert_gpu(&a, "snp-gpu", "0000:c1:00.0");
}

#[test]
fn sim_golden() {
    check_golden("sim");
    let (a, helper) = argv("sim");
    assert_eq!(value_after(&a, "-accel"), ["tcg"]);
    assert!(value_after(&a, "-device").contains(&"vhost-user-vsock-pci,chardev=vsock0"));
    let helper = helper.expect("sim starts vhost-device-vsock");
    assert_eq!(helper[0], "--vm");
    assert!(
        helper[1].contains("uds-path=/run/chrysalis/vsock.sock"),
        "{}",
        helper[1]
    );
}

#[test]
fn every_profile_boots_the_manifest_read_only() {
    let image = chrysalis_host::image::load(&golden_dir().join("manifest.json")).unwrap();
    for profile in ["tdx", "tdx-gpu", "snp", "snp-gpu", "sim"] {
        let (a, _) = argv(profile);
        assert_eq!(value_after(&a, "-kernel"), [at("vmlinuz")], "{profile}");
        assert_eq!(
            value_after(&a, "-initrd"),
            [at("initramfs.cpio.gz")],
            "{profile}"
        );
        assert_eq!(
            value_after(&a, "-append"),
            [image.manifest.kernel_cmdline.as_str()],
            "{profile}"
        );
        let drives = value_after(&a, "-drive");
        assert_eq!(drives.len(), 3, "{profile}");
        assert!(
            drives
                .iter()
                .all(|d| d.ends_with(",format=raw,readonly=on")),
            "{profile}: {drives:?}"
        );
        // The comma in the model's file name is escaped for QEMU's option parser.
        assert!(
            drives[1].contains("smollm2,,135m.img"),
            "{profile}: {}",
            drives[1]
        );
        assert!(drives[2].contains("config.img"), "{profile}: {}", drives[2]);
        let serials: Vec<_> = value_after(&a, "-device")
            .into_iter()
            .filter(|d| d.starts_with("virtio-blk-pci,"))
            .map(|d| {
                d.split(",serial=")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(serials, ["rootfs", "model", "config"], "{profile}");
        assert!(a.contains(&"-no-reboot".to_string()), "{profile}");
    }
    // Firmware: the manifest's role (tdx, snp), none for sim.
    assert_eq!(value_after(&argv("tdx").0, "-bios"), [at("ovmf-tdx.fd")]);
    assert_eq!(value_after(&argv("snp").0, "-bios"), [at("ovmf-snp.fd")]);
    assert!(value_after(&argv("sim").0, "-bios").is_empty());
    // sim keeps the unversioned machine type and the HPET.
    assert_eq!(value_after(&argv("sim").0, "-machine"), ["q35"]);
}

#[test]
fn check_verifies_every_artifact_and_names_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let img = chrysalis_testkit::image::TestImage::write(&dir.path().join("image")).unwrap();
    let cfg = dir.path().join("host.toml");
    std::fs::write(
        &cfg,
        "[image]\nmanifest = \"image/manifest.json\"\n[vm]\nplatform = \"sim\"\nvcpus = 2\nmemory_mib = 2048\n",
    )
    .unwrap();
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_chrysalis-host"))
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // In the sim profile it also prints what the sim quote service will quote.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sim_quote "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let sim: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(sim["firmware"], "manifest:tdx");
    assert_eq!(sim["rtmr"].as_array().unwrap().len(), 4);
    let rootfs = dir.path().join("image/rootfs.img");
    let mut bytes = std::fs::read(&rootfs).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&rootfs, &bytes).unwrap();
    let out = check();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = img.parsed.artifacts.rootfs.sha256.to_string();
    let found = chrysalis_attestation::Sha256::digest(&bytes).to_string();
    assert!(
        err.contains("rootfs.img") && err.contains(&want) && err.contains(&found),
        "{err}"
    );
}

#[test]
fn dry_run_of_an_invalid_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("host.toml");
    std::fs::write(
        &cfg,
        "[image]\nmanifest = \"m.json\"\n[vm]\nplatform = \"sim\"\nvcpus = 2\nmemory_mib = 100\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chrysalis-host"))
        .args(["run", "--dry-run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vm.memory_mib: must be ≥ 512"), "{err}");
}
