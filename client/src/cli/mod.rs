//! Command-line interface: argument definitions and dispatch.

mod eventlog;
mod evidence;
mod sim;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chrysalis_attestation::InputEncoding;
use chrysalis_attestation::evidence::decode_binary_or_hex;
use clap::{Parser, Subcommand};

/// Verify confidential-computing evidence and the chrysalis nodes that present it.
#[derive(Debug, Parser)]
#[command(name = "chrysalis", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// Say more about what is being done (e.g. how input files were decoded).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to a node, verify its RA-TLS evidence against a policy, and explain the verdict.
    /// Exit 0 accepted, 1 rejected, 2 unreachable or bad arguments.
    Verify(verify::VerifyArgs),
    /// Show or verify TDX quotes and SEV-SNP reports.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCommand),
    /// Replay TDX event logs (CCEL) into RTMR values.
    #[command(subcommand)]
    Eventlog(eventlog::EventlogCommand),
    /// The simulated TEE: make quotes signed by the deterministic simulated Intel PKI.
    #[command(subcommand)]
    Sim(sim::SimCommand),
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Ctx {
        verbose: cli.verbose,
    };
    match cli.command {
        Command::Evidence(c) => evidence::run(&ctx, c),
        Command::Sim(c) => sim::run(&ctx, c),
        Command::Eventlog(c) => eventlog::run(&ctx, c),
        Command::Verify(a) => runtime()?.block_on(verify::run(&ctx, a)),
    }
}

pub(crate) struct Ctx {
    verbose: bool,
}

impl Ctx {
    /// Reads a binary-or-hex evidence file, saying which it was when verbose.
    pub(crate) fn read_evidence(&self, path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
        let raw = std::fs::read(path)
            .with_context(|| format!("cannot read {what} {}", path.display()))?;
        let (bytes, enc) = decode_binary_or_hex(&raw);
        if self.verbose {
            let how = match enc {
                InputEncoding::Binary => "binary",
                InputEncoding::Hex => "hex text",
            };
            eprintln!(
                "{what} {}: read as {how}, {} bytes",
                path.display(),
                bytes.len()
            );
        }
        Ok(bytes)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
