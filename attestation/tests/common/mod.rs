//! Shared helpers for the attestation crate's integration tests.

#![allow(dead_code, unreachable_pub, unused_imports)]

pub use chrysalis_testkit::fixtures::{registry_file, registry_package_dir};

/// A dcap-qvl sample quote and its collateral.
pub fn dcap_sample(quote: &str) -> (Vec<u8>, dcap_qvl::QuoteCollateralV3) {
    let q = registry_file("dcap-qvl", &format!("sample/{quote}"));
    let c = registry_file("dcap-qvl", &format!("sample/{quote}_collateral.json"));
    (q, serde_json::from_slice(&c).expect("collateral JSON"))
}
