//! Golden tests of `chrysalis-host run --dry-run`: the exact QEMU and vhost-device-vsock command
//! lines for the tdx, snp and sim profiles.
//!
//! The expected output lives in `tests/golden/<profile>.txt`. After an intended change, regenerate
//! with `CHRYSALIS_BLESS=1 cargo test -p chrysalis-host --test dry_run` and review the diff.
//! Artifact paths come from `tests/golden/manifest.json` (format 1 of
//! `chrysalis_attestation::manifest`), relative to its directory; the golden text writes that
//! directory as `<golden>` so it does not depend on the checkout. `--dry-run` does not read the
//! artifacts, so the fixture lists files that do not exist.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrysalis_host::HostConfig;
use chrysalis_host::LoadedImage;
use chrysalis_host::launch;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn dry_run(profile: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_chrysalis-host"))
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
    let m = LoadedImage::load(&cfg.image.as_ref().unwrap().manifest).unwrap();
    let plan = launch::plan(&cfg, &m, || panic!("accel is explicit in the fixtures")).unwrap();
    (plan.qemu.args, plan.vhost_vsock.map(|v| v.args))
}

fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
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
    assert_eq!(
        value_after(&a, "-bios"),
        ["/usr/share/ovmf/OVMF.inteltdx.fd"]
    );
    assert_eq!(
        value_after(&a, "-device")
            .iter()
            .filter(|d| d.starts_with("vfio-pci,host="))
            .count(),
        2
    );
}

#[test]
fn snp_golden() {
    check_golden("snp");
    let (a, _) = argv("snp");
    assert!(
        value_after(&a, "-object")
            .iter()
            .any(|o| o.starts_with("sev-snp-guest,") && o.contains("kernel-hashes=on"))
    );
    assert_eq!(value_after(&a, "-cpu"), ["EPYC-v4"]);
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
    let image = LoadedImage::load(&golden_dir().join("manifest.json")).unwrap();
    let at = |f: &str| golden_dir().join(f).to_str().unwrap().to_string();
    for profile in ["tdx", "snp", "sim"] {
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
    // Firmware: host.toml's override (tdx fixture), the manifest's role (snp), none for sim.
    assert_eq!(value_after(&argv("snp").0, "-bios"), [at("ovmf-snp.fd")]);
    assert!(value_after(&argv("sim").0, "-bios").is_empty());
}

#[test]
fn check_verifies_every_artifact_and_names_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let img = chrysalis_host::testkit::image::TestImage::write(&dir.path().join("image")).unwrap();
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
