//! Helpers for cross-crate tests: [`chain`] runs the whole chrysalis chain (host agent, guest VM,
//! proxy) as real processes, for tests/tests/e2e.rs and `cargo xtask demo`.
#![deny(unsafe_code)]

pub mod chain;
