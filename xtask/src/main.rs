//! Developer tasks, run from the repository root as `cargo xtask <command>`.
//!
//! One small dispatcher; each task lives in its own module.
#![forbid(unsafe_code)]

mod drivers;
mod firmware;
mod fuzz;
mod image;
mod model;
mod setup;
mod test;
mod vm;

use std::path::PathBuf;

use anyhow::Context as _;
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
    #[command(disable_help_flag = true)]
    Bench(drivers::Forward),
    /// Boot images under QEMU.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Run the cargo-fuzz targets of fuzz/ (nightly): N minutes each, or a short CI pass; fails on a
    /// crash and writes the figures to docs/fuzzing.md.
    Fuzz(fuzz::FuzzArgs),
    /// Install what building and testing need on this Debian machine (apt, rustup, tools, Python).
    Setup(setup::SetupArgs),
    /// The whole test suite as CI runs it: setup, fmt, clippy, tests, quick benchmarks.
    Test(test::TestArgs),
    /// The whole chain on this machine: image, policy, host agent + VM (sim), proxy, a chat
    /// completion and its receipt, with timings; stops everything at the end or on Ctrl-C.
    #[command(disable_help_flag = true)]
    Demo(drivers::Forward),
    /// A node on this machine in seconds, without a VM: the guest runtime as a local process
    /// (simulated evidence), the host relay and the pinning proxy; prints OPENAI_BASE_URL and
    /// serves until Ctrl-C.
    #[command(disable_help_flag = true)]
    ServeLocal(drivers::Forward),
}

#[derive(Subcommand)]
enum VmCommand {
    /// Boot a kernel + initramfs (+ disks) on q35 under TCG, console on stdout.
    Run(vm::RunArgs),
}

/// `cargo xtask` is `cargo run`, which hands xtask the variables it sets for a package
/// (`CARGO_MANIFEST_DIR=…/xtask`, …). Every cargo xtask starts would inherit them and disagree with
/// the cargo that built xtask about ring's build script, rebuilding ring and everything that links
/// it on each switch ([`is_cargo_package_var`]). xtask replaces itself once with the same
/// arguments and those variables removed, before it starts anything.
fn without_cargo_package_vars() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let set: Vec<_> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| is_cargo_package_var(&k.to_string_lossy()))
        .collect();
    if set.is_empty() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("find the xtask executable")?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1));
    for k in set {
        cmd.env_remove(k);
    }
    // Returns only if the exec failed.
    Err(cmd.exec()).with_context(|| format!("re-execute {}", exe.display()))
}

/// Whether `name` is one of the variables cargo sets for the package it runs. The same rule as
/// `chrysalis_tests::chain::is_cargo_package_var` (tested there), which xtask cannot link: it
/// depends only on image and attestation (ARCHITECTURE).
fn is_cargo_package_var(name: &str) -> bool {
    [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&name)
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
    let cli = Cli::parse();
    without_cargo_package_vars()?;
    match cli.command {
        Command::Image(c) => image::run(c),
        Command::Model(c) => model::run(c),
        Command::Firmware(cmd) => firmware::run(cmd),
        Command::Vm(VmCommand::Run(args)) => vm::run(args),
        Command::Bench(args) => drivers::run("chrysalis-bench", args),
        Command::Setup(args) => setup::main(args),
        Command::Fuzz(args) => fuzz::main(args),
        Command::Test(args) => test::main(args),
        Command::Demo(args) => drivers::run("chrysalis-demo", args),
        Command::ServeLocal(args) => drivers::run("chrysalis-serve-local", args),
    }
}
