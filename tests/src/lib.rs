//! Helpers for cross-crate tests: [`chain`] runs the whole chrysalis chain (host agent, guest VM,
//! proxy) as real processes, for tests/tests/e2e.rs and `cargo xtask demo`. The demo and benchmark
//! drivers that `cargo xtask demo` and `cargo xtask bench` run are this crate's binaries
//! (src/bin/), with what they share in [`driver`].
#![deny(unsafe_code)]

pub mod chain;
pub mod driver;
