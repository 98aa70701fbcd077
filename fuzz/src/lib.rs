//! Shared fixtures of the chrysalis-attestation fuzz targets (see README.md).

#![forbid(unsafe_code)]

pub use chrysalis_testkit::fuzz as fixtures;
