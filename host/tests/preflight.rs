//! `chrysalis-host preflight` against faked hosts: a directory tree standing in for `/` (passed with
//! the hidden `--root`), stand-in programs for QEMU, vhost-device-vsock and NVIDIA's
//! `nvidia_gpu_tools.py`, and loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    chrysalis_testkit::write_executable(&p, &format!("#!/bin/sh\n{body}\n"));
    p
}

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn preflight(config: &Path, root: &Path, bin: &Path) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chrysalis-host"))
        .arg("--root")
        .arg(root)
        .args(["preflight", "--config"])
        .arg(config)
        .env("PATH", bin)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|r| r.starts_with(&format!("{name}:")))
        })
        .unwrap_or_else(|| panic!("no {name} line in\n{text}"))
}

/// The sim golden config, with the programs replaced by stand-ins and loopback ports.
fn sim_config(dir: &Path, relay: &str) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    script(
        &bin,
        "qemu-system-x86_64",
        "echo 'QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1)'",
    );
    let vhost = script(&bin, "vhost-device-vsock", "exit 0");
    let text = std::fs::read_to_string(golden_dir().join("sim.toml"))
        .unwrap()
        .replace(
            "manifest = \"manifest.json\"",
            &format!(
                "manifest = \"{}\"",
                golden_dir().join("manifest.json").display()
            ),
        )
        .replace(
            "vhost_device_vsock = \"/usr/local/bin/vhost-device-vsock\"",
            &format!("vhost_device_vsock = \"{}\"", vhost.display()),
        );
    let path = dir.join("sim.toml");
    std::fs::write(
        &path,
        format!("{text}\n[relay]\nlisten = \"{relay}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    path
}

#[test]
fn preflight_of_the_sim_profile_on_a_faked_host() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write(
        &root,
        "/proc/meminfo",
        "MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n",
    );
    let cfg = sim_config(dir.path(), "127.0.0.1:0");
    let (out, text) = preflight(&cfg, &root, &dir.path().join("bin"));
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(line(&text, "qemu").starts_with("ok"), "{text}");
    assert!(
        line(&text, "qemu").contains("QEMU 10.0.2 (machine type q35)"),
        "{text}"
    );
    assert!(
        line(&text, "vhost-device-vsock").starts_with("ok"),
        "{text}"
    );
    assert!(line(&text, "launch plan").starts_with("ok"), "{text}");
    assert!(line(&text, "accel").contains("tcg"), "{text}");
    assert!(line(&text, "memory").starts_with("ok"), "{text}");
    assert!(text.contains("preflight: "), "{text}");

    // A relay port in use and too little memory fail, each with its fix; the exit status says so.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = sim_config(dir.path(), &busy.local_addr().unwrap().to_string());
    write(
        &root,
        "/proc/meminfo",
        "MemTotal: 2000000 kB\nMemAvailable: 1000000 kB\n",
    );
    let (out, text) = preflight(&cfg, &root, &dir.path().join("bin"));
    assert!(!out.status.success(), "{text}");
    assert!(line(&text, "relay.listen").starts_with("fail"), "{text}");
    assert!(line(&text, "memory").starts_with("fail"), "{text}");
    assert!(
        text.contains("      fix: stop what listens there"),
        "{text}"
    );
}

/// A TDX host with one H100: everything in place except what each step breaks.
#[test]
fn preflight_of_a_tdx_gpu_host_names_each_missing_prerequisite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let qemu = script(
        &bin,
        "qemu-system-x86_64",
        "echo 'QEMU emulator version 10.1.0'",
    );
    script(
        &bin,
        "nvidia_gpu_tools.py",
        "echo \"GPU $1 H100-PCIE CC mode is on\"",
    );
    write(
        &root,
        "/proc/cpuinfo",
        "processor\t: 0\nflags\t\t: fpu vmx tdx_host_platform\n",
    );
    write(&root, "/proc/meminfo", "MemAvailable: 300000000 kB\n");
    write(
        &root,
        "/proc/cmdline",
        "BOOT_IMAGE=/vmlinuz intel_iommu=on\n",
    );
    write(&root, "/dev/kvm", "");
    write(&root, "/dev/vhost-vsock", "");
    write(&root, "/dev/iommu", "");
    write(&root, "/sys/module/kvm_intel/parameters/tdx", "Y\n");
    write(&root, "/etc/qgs.conf", "port = 4050\nnumber_threads = 4\n");
    write(&root, "/etc/sgx_default_qcnl.conf", "{}\n");
    std::fs::create_dir_all(root.join("sys/class/iommu/dmar0")).unwrap();
    let dev = "sys/bus/pci/devices/0000:3b:00.0";
    write(
        &root,
        &format!("{dev}/resource"),
        "0x00000000e2000000 0x00000000e2ffffff 0x0000000000040200\n0x0000382000000000 0x0000383fffffffff 0x000000000014220c\n",
    );
    std::fs::create_dir_all(root.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    std::fs::create_dir_all(root.join("sys/bus/pci/drivers/nvidia")).unwrap();
    let link = root.join(dev).join("driver");
    std::os::unix::fs::symlink("../../../bus/pci/drivers/vfio-pci", &link).unwrap();
    let cfg = dir.path().join("host.toml");
    std::fs::write(
        &cfg,
        format!(
            "[image]\nmanifest = \"{}\"\n[vm]\nplatform = \"tdx\"\nvcpus = 16\nmemory_mib = 131072\ngpus = [\"0000:3b:00.0\"]\n[qemu]\nbinary = \"{}\"\n[relay]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            golden_dir().join("manifest.json").display(),
            qemu.display()
        ),
    )
    .unwrap();
    let (out, text) = preflight(&cfg, &root, &bin);
    assert!(out.status.success(), "{text}");
    for name in [
        "launch plan",
        "qemu",
        "cpu",
        "kvm",
        "kvm_intel tdx",
        "vhost-vsock",
        "qgs",
        "qcnl",
        "iommu",
        "iommufd",
        "gpu 0000:3b:00.0 driver",
        "gpu 0000:3b:00.0 cc mode",
        "memory",
        "relay.listen",
    ] {
        assert!(line(&text, name).starts_with("ok "), "{name}: {text}");
    }

    // Each broken prerequisite fails with its fix.
    write(&root, "/sys/module/kvm_intel/parameters/tdx", "N\n");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("../../../bus/pci/drivers/nvidia", &link).unwrap();
    std::fs::remove_dir(root.join("sys/class/iommu/dmar0")).unwrap();
    write(&root, "/etc/qgs.conf", "port = 4051\n");
    script(
        &bin,
        "nvidia_gpu_tools.py",
        "echo \"GPU $1 H100-PCIE CC mode is off\"",
    );
    script(
        &bin,
        "qemu-system-x86_64",
        "echo 'QEMU emulator version 10.0.0'",
    );
    let (out, text) = preflight(&cfg, &root, &bin);
    assert!(!out.status.success(), "{text}");
    for (name, detail) in [
        ("kvm_intel tdx", "= N"),
        ("gpu 0000:3b:00.0 driver", "bound to nvidia, not vfio-pci"),
        ("iommu", "intel_iommu=on"),
        ("qgs", "sets port 4051"),
        ("gpu 0000:3b:00.0 cc mode", "CC mode is off"),
        ("qemu", "needs QEMU >= 10.1.0"),
    ] {
        let l = line(&text, name);
        assert!(
            l.starts_with("fail") && l.contains(detail),
            "{name}: {text}"
        );
    }
    assert!(
        text.contains("fix: echo vfio-pci > /sys/bus/pci/devices/0000:3b:00.0/driver_override"),
        "{text}"
    );
    assert!(text.contains("--set-cc-mode=on"), "{text}");

    // Without NVIDIA's tool the CC mode cannot be checked: a warning.
    std::fs::remove_file(bin.join("nvidia_gpu_tools.py")).unwrap();
    let (_, text) = preflight(&cfg, &root, &bin);
    assert!(
        line(&text, "gpu 0000:3b:00.0 cc mode").starts_with("warn"),
        "{text}"
    );
}
