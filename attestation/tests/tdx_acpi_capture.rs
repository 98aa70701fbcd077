//! Re-derives the committed TDX ACPI fw_cfg files (`attestation/data/tdx-acpi`) from the real
//! QEMU binary: starts it under TCG with the arguments of `measure::tdx_acpi::capture_args` and
//! a 203-byte fw_cfg dumper as firmware (`data/tdx-acpi/fwcfg-dump.asm`, assembled below), and
//! compares the ACPI files it serves byte for byte with the committed ones.
//!
//! Runs when a QEMU of the recorded release is found (`CHRYSALIS_QEMU`, else
//! `qemu-system-x86_64` in PATH); otherwise it says so and passes, since machines without QEMU
//! still check everything else from the committed data. With `CHRYSALIS_WRITE_TDX_ACPI=1` it
//! writes the files instead of comparing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrysalis_attestation::measure::tdx_acpi::{
    AcpiShape, QemuMachine, SUPPORTED_TDX_VMMS, capture_args, decode, encode, supported_shapes,
};

/// `nasm -f bin data/tdx-acpi/fwcfg-dump.asm`: the code at the start of the 64 KiB image.
const DUMPER_CODE: [u8; 203] = [
    0xfa, 0xfc, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x70, 0xba, 0xf8, 0x0c,
    0x66, 0xb8, 0x64, 0x00, 0x00, 0x80, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66, 0x31, 0xc0, 0x66, 0xef,
    0xba, 0xf8, 0x0c, 0x66, 0xb8, 0x60, 0x00, 0x00, 0x80, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0x66, 0xb8,
    0x01, 0x00, 0x00, 0xb0, 0x66, 0xef, 0xba, 0xf8, 0x0c, 0x66, 0xb8, 0x40, 0xf8, 0x00, 0x80, 0x66,
    0xef, 0xba, 0xfc, 0x0c, 0x66, 0xb8, 0x00, 0x06, 0x00, 0x00, 0x66, 0xef, 0xba, 0xf8, 0x0c, 0x66,
    0xb8, 0x44, 0xf8, 0x00, 0x80, 0x66, 0xef, 0xba, 0xfc, 0x0c, 0xb0, 0x80, 0xee, 0xba, 0x10, 0x05,
    0xb8, 0x19, 0x00, 0xef, 0xba, 0x11, 0x05, 0xbf, 0x00, 0x10, 0xb9, 0x04, 0x00, 0xec, 0xaa, 0xe6,
    0xe9, 0xe2, 0xfa, 0x8a, 0x26, 0x02, 0x10, 0xa0, 0x03, 0x10, 0x89, 0xc3, 0x89, 0xc1, 0xc1, 0xe1,
    0x06, 0x74, 0x35, 0xec, 0xaa, 0xe6, 0xe9, 0xe2, 0xfa, 0xbe, 0x04, 0x10, 0x85, 0xdb, 0x74, 0x28,
    0x8a, 0x64, 0x04, 0x8a, 0x44, 0x05, 0xba, 0x10, 0x05, 0xef, 0xba, 0x11, 0x05, 0x66, 0x8b, 0x04,
    0x66, 0x0f, 0xc8, 0x66, 0x89, 0xc1, 0x66, 0x85, 0xc9, 0x74, 0x07, 0xec, 0xe6, 0xe9, 0x66, 0x49,
    0x75, 0xf9, 0x83, 0xc6, 0x40, 0x4b, 0xeb, 0xd4, 0x66, 0x31, 0xc0, 0x66, 0xa3, 0x00, 0x09, 0xa3,
    0x04, 0x09, 0x0f, 0x01, 0x1e, 0x00, 0x09, 0xcc, 0xf4, 0xeb, 0xed,
];
/// At 0xfff0, the reset vector: `jmp 0xf000:0000`.
const RESET_JUMP: [u8; 5] = [0xea, 0x00, 0x00, 0x00, 0xf0];

fn dumper_image() -> Vec<u8> {
    let mut image = vec![0u8; 0x10000];
    image[..DUMPER_CODE.len()].copy_from_slice(&DUMPER_CODE);
    image[0xfff0..0xfff5].copy_from_slice(&RESET_JUMP);
    image
}

fn qemu() -> Option<(PathBuf, String)> {
    let bin = std::env::var_os("CHRYSALIS_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
    let out = Command::new(&bin).arg("--version").output().ok()?;
    Some((bin, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// "QEMU emulator version 10.0.2 (Debian ...)" -> "10.0.2".
fn version(text: &str) -> Option<&str> {
    text.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
}

/// The ACPI fw_cfg files (`etc/table-loader`, `etc/acpi/*`) QEMU serves for `shape`.
fn capture(
    bin: &Path,
    vmm: &QemuMachine,
    shape: &AcpiShape,
    vsock: &str,
) -> Vec<(String, Vec<u8>)> {
    // Unique per capture: the tests run in parallel.
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "chrysalis-fwcfg-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let dumper = dir.join("dump.bin");
    std::fs::write(&dumper, dumper_image()).unwrap();
    let out = dir.join("fwcfg.bin");
    let args = capture_args(
        vmm,
        shape,
        vsock,
        dumper.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let run = Command::new(bin).args(&args).output().unwrap();
    assert!(
        run.status.success(),
        "{} {}: {}",
        bin.display(),
        args.join(" "),
        String::from_utf8_lossy(&run.stderr)
    );
    let d = std::fs::read(&out).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // The stream: the file directory (count, then 64-byte entries: size BE u32, selector BE
    // u16, reserved, name), then every file's content in directory order.
    let count = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
    let mut at = 4 + 64 * count;
    let mut files = Vec::new();
    for e in d[4..at].chunks(64) {
        let size = u32::from_be_bytes(e[..4].try_into().unwrap()) as usize;
        let name = &e[8..];
        let name =
            String::from_utf8(name[..name.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap();
        let bytes = d[at..at + size].to_vec();
        at += size;
        if name == "etc/table-loader" || name.starts_with("etc/acpi/") {
            files.push((name, bytes));
        }
    }
    assert_eq!(at, d.len(), "the dump ends after the last file");
    files
}

fn data_dir(vmm: &QemuMachine) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/tdx-acpi")
        .join(format!("qemu-{}", vmm.qemu_version))
        .join(vmm.machine_type)
}

fn usable_qemu(vmm: &QemuMachine) -> Option<PathBuf> {
    let Some((bin, text)) = qemu() else {
        eprintln!("SKIPPED: no QEMU binary (CHRYSALIS_QEMU / qemu-system-x86_64)");
        return None;
    };
    let v = version(&text).unwrap_or_default();
    if v != vmm.captured_with {
        eprintln!(
            "SKIPPED: {} is QEMU {v}; {vmm} was captured with {}",
            bin.display(),
            vmm.captured_with
        );
        return None;
    }
    Some(bin)
}

#[test]
fn committed_acpi_files_equal_what_the_real_qemu_serves() {
    let write = std::env::var_os("CHRYSALIS_WRITE_TDX_ACPI").is_some();
    for vmm in SUPPORTED_TDX_VMMS {
        let Some(bin) = usable_qemu(vmm) else {
            continue;
        };
        let dir = data_dir(vmm);
        for shape in supported_shapes(vmm) {
            let files = capture(&bin, vmm, &shape, "virtio-rng-pci");
            let path = dir.join(format!("{}cpu-{}mib.fwcfg", shape.vcpus, shape.memory_mib));
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, encode(&files)).unwrap();
                continue;
            }
            let committed = decode(&std::fs::read(&path).unwrap()).unwrap();
            let mut captured = decode(&encode(&files)).unwrap();
            captured.files.sort();
            let mut expected = committed.clone();
            expected.files.sort();
            assert!(
                captured.table_loader == expected.table_loader,
                "{vmm} {shape}: etc/table-loader differs from the committed capture"
            );
            let names =
                |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
            assert_eq!(
                names(&captured.files),
                names(&expected.files),
                "{vmm} {shape}"
            );
            for ((name, a), (_, b)) in captured.files.iter().zip(&expected.files) {
                assert!(
                    a == b,
                    "{vmm} {shape}: {name} differs from the committed capture"
                );
            }
        }
    }
}

/// The device in the vhost-vsock slot does not reach ACPI: two different substitutes give the
/// same files (so the real vhost-vsock-pci, which needs /dev/vhost-vsock, would too).
#[test]
fn the_vsock_slot_substitute_does_not_change_the_tables() {
    let vmm = &SUPPORTED_TDX_VMMS[0];
    let Some(bin) = usable_qemu(vmm) else {
        return;
    };
    let shape = supported_shapes(vmm)[0];
    let a = capture(&bin, vmm, &shape, "virtio-rng-pci");
    let b = capture(&bin, vmm, &shape, "virtio-balloon-pci");
    assert_eq!(a, b);
    // ...while the shape does: another vCPU count gives other tables.
    let more = AcpiShape { vcpus: 4, ..shape };
    assert_ne!(capture(&bin, vmm, &more, "virtio-rng-pci"), a);
}
