//! Test helpers shared by unit and integration tests: recorded vectors from registry packages.
//!
//! Recorded evidence ships inside our dependencies' registry packages; tests find those
//! packages with `cargo metadata` instead of copying the files into this repository.
//! Integration tests include this file with `#[path]`, so it uses only std and serde_json.

#![allow(dead_code, unreachable_pub)]

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
