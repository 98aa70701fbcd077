//! Recorded vectors from registry packages, and synthetic firmware and EFI images.
//!
//! Recorded evidence ships inside our dependencies' registry packages; tests find those
//! packages with `cargo metadata` instead of copying the files into this repository.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The source directory of a registry package in this workspace's dependency graph.
pub fn registry_package_dir(name: &str) -> PathBuf {
    static META: OnceLock<serde_json::Value> = OnceLock::new();
    let meta = META.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("cargo metadata JSON")
    });
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| {
            p["name"] == name
                && p["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("registry+"))
        })
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap_or_else(|| panic!("registry package {name} not in cargo metadata"));
    Path::new(manifest)
        .parent()
        .expect("manifest dir")
        .to_path_buf()
}

/// Reads a file of a registry package.
pub fn registry_file(package: &str, rel: &str) -> Vec<u8> {
    let path = registry_package_dir(package).join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A TDVF-shaped firmware image: the sev crate's recorded last 4 KiB of an edk2 OvmfPkgX64
/// build (reset vector, OVMF GUID table and TDX metadata), zero-padded in front to the 4 MiB
/// its metadata describes. Its MRTD is computable; it does not boot.
pub fn tdvf_from_sev_suffix() -> Vec<u8> {
    let suffix = registry_file("sev", "tests/measurement/ovmf_OvmfX64_suffix.bin");
    let mut fw = vec![0u8; 4 << 20];
    let at = fw.len() - suffix.len();
    fw[at..].copy_from_slice(&suffix);
    fw
}

/// A minimal PE32+ EFI application (what the firmware measures of a bzImage's EFI stub):
/// 0x200 bytes of headers, one 0x200-byte `.text` section filled with `fill`, then `extra`
/// trailing bytes. Changing `fill` or `extra` changes its Authenticode digest.
pub fn efi_pe(fill: u8, extra: &[u8]) -> Vec<u8> {
    let mut pe = vec![0u8; 0x400];
    let put16 =
        |pe: &mut Vec<u8>, at: usize, v: u16| pe[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |pe: &mut Vec<u8>, at: usize, v: u32| pe[at..at + 4].copy_from_slice(&v.to_le_bytes());
    pe[..2].copy_from_slice(b"MZ");
    put32(&mut pe, 0x3c, 0x40);
    pe[0x40..0x44].copy_from_slice(b"PE\0\0");
    let coff = 0x44;
    put16(&mut pe, coff, 0x8664); // x86-64
    put16(&mut pe, coff + 2, 1); // one section
    put16(&mut pe, coff + 16, 240); // optional header size (PE32+, 16 directories)
    put16(&mut pe, coff + 18, 0x0022); // executable, large address aware
    let opt = 0x58;
    put16(&mut pe, opt, 0x20b); // PE32+
    put32(&mut pe, opt + 16, 0x1000); // entry point
    pe[opt + 24..opt + 32].copy_from_slice(&0x1_0000u64.to_le_bytes()); // image base
    put32(&mut pe, opt + 32, 0x1000); // section alignment
    put32(&mut pe, opt + 36, 0x200); // file alignment
    put32(&mut pe, opt + 56, 0x2000); // size of image
    put32(&mut pe, opt + 60, 0x200); // size of headers
    put16(&mut pe, opt + 68, 10); // EFI application
    put32(&mut pe, opt + 108, 16); // data directories
    let s = opt + 240;
    pe[s..s + 8].copy_from_slice(b".text\0\0\0");
    put32(&mut pe, s + 8, 0x200); // virtual size
    put32(&mut pe, s + 12, 0x1000); // virtual address
    put32(&mut pe, s + 16, 0x200); // raw size
    put32(&mut pe, s + 20, 0x200); // raw offset
    put32(&mut pe, s + 36, 0x6000_0020); // code, execute, read
    pe[0x200..0x400].fill(fill);
    pe.extend_from_slice(extra);
    pe
}
