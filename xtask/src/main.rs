//! Developer tasks, run from the repository root as `cargo xtask <command>`.
//!
//! One small dispatcher; each task lives in its own module.
#![forbid(unsafe_code)]

mod bench;
mod demo;
mod firmware;
mod image;
mod model;
mod setup;
mod test;
mod vm;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// chrysalis developer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reproducible guest image: lock inputs, build, rebuild and compare.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Model packs (erofs + dm-verity) for the guest.
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// Confidential-VM firmware (OVMF for SEV-SNP, TDVF for TDX) built from pinned sources.
    #[command(subcommand)]
    Firmware(firmware::FirmwareCommand),
    /// Run every benchmark with its baseline and write docs/benchmarks.md.
    Bench(bench::BenchArgs),
    /// Boot images under QEMU.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Install what building and testing need on this Debian machine (apt, rustup, tools, Python).
    Setup(setup::SetupArgs),
    /// The whole test suite as CI runs it: setup, fmt, clippy, tests, quick benchmarks.
    Test(test::TestArgs),
    /// The whole chain on this machine: image, policy, host agent + VM (sim), proxy, a chat
    /// completion and its receipt, with timings; stops everything at the end or on Ctrl-C.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum VmCommand {
    /// Boot a kernel + initramfs (+ disks) on q35 under TCG, console on stdout.
    Run(vm::RunArgs),
}

/// The download and build cache shared by every task and by fresh clones: `$CHRYSALIS_CACHE`,
/// else `~/.cache/chrysalis`. Entries are keyed by content hashes.
fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("CHRYSALIS_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from("/root"), PathBuf::from)
        .join(".cache/chrysalis")
}

/// The repository root (the parent of this crate's directory).
fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Image(c) => image::run(c),
        Command::Model(c) => model::run(c),
        Command::Firmware(cmd) => firmware::run(cmd),
        Command::Vm(VmCommand::Run(args)) => vm::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Setup(args) => setup::main(args),
        Command::Test(args) => test::main(args),
        Command::Demo(args) => demo::run(args),
    }
}
