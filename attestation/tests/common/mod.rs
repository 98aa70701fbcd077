//! Shared helpers for the attestation crate's integration tests: recorded vectors from registry packages.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The directory of a dependency's registry package (where its recorded test vectors ship),
/// located with `cargo metadata` as the project's rules require.
pub fn registry_package_dir(name: &str) -> PathBuf {
    static META: OnceLock<serde_json::Value> = OnceLock::new();
    let meta = META.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let out = Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--offline",
                "--manifest-path",
                manifest,
            ])
            .output()
            .expect("run cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("cargo metadata JSON")
    });
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("package {name} is not a dependency"));
    PathBuf::from(pkg["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Reads a file of a dependency's registry package.
pub fn registry_file(package: &str, rel: &str) -> Vec<u8> {
    let path = registry_package_dir(package).join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A dcap-qvl sample quote and its collateral.
pub fn dcap_sample(quote: &str) -> (Vec<u8>, dcap_qvl::QuoteCollateralV3) {
    let q = registry_file("dcap-qvl", &format!("sample/{quote}"));
    let c = registry_file("dcap-qvl", &format!("sample/{quote}_collateral.json"));
    (q, serde_json::from_slice(&c).expect("collateral JSON"))
}
