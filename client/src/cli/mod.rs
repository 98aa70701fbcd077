//! Command-line interface: argument definitions and dispatch.

mod eventlog;
mod evidence;
mod explain;
mod gpu;
mod measure;
mod policy;
mod proxy;
mod receipts;
mod sim;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chrysalis_attestation::InputEncoding;
use chrysalis_attestation::evidence::decode_binary_or_hex;
use chrysalis_client::collateral::CollateralSource;
use clap::{Args, Parser, Subcommand};

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
    /// Serve plain HTTP on loopback for OpenAI SDKs, forwarding /v1/* to attested upstreams
    /// only, verifying every receipt and appending it to a ledger.
    Proxy(proxy::ProxyArgs),
    /// Inspect the receipts ledger that `chrysalis proxy --receipts` writes.
    #[command(subcommand)]
    Receipts(receipts::ReceiptsCommand),
    /// Show or verify TDX quotes and SEV-SNP reports.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCommand),
    /// Replay TDX event logs (CCEL) into RTMR values.
    #[command(subcommand)]
    Eventlog(eventlog::EventlogCommand),
    /// The simulated TEE: make quotes signed by the deterministic simulated Intel PKI.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Recompute the measurements a VM booted from an image's manifest reports.
    /// Exit 0 computed, 1 the manifest records other values, 2 bad input.
    Measure(measure::MeasureArgs),
    /// Client policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Explain a TDX quote against an image: registers expected vs actual and, through the
    /// event log, which event differs and which artifact or setting it comes from.
    /// Exit 0 match, 1 differs, 2 bad input.
    Explain(explain::ExplainArgs),
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Ctx {
        verbose: cli.verbose,
    };
    match cli.command {
        Command::Evidence(c) => evidence::run(&ctx, c),
        Command::Sim(c) => sim::run(&ctx, c),
        Command::Eventlog(c) => eventlog::run(&ctx, c),
        Command::Measure(a) => measure::run(&ctx, a),
        Command::Policy(c) => policy::run(&ctx, c),
        Command::Explain(a) => explain::run(&ctx, a),
        Command::Verify(a) => runtime()?.block_on(verify::run(&ctx, a)),
        Command::Receipts(c) => receipts::run(&ctx, c),
        Command::Proxy(a) => {
            init_logging(ctx.verbose);
            runtime()?.block_on(proxy::run(&ctx, a))
        }
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

/// Logs to stderr: RUST_LOG when set, else info (debug with --verbose).
fn init_logging(verbose: bool) {
    let default = if verbose {
        "info,chrysalis_client=debug"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Where `proxy` and `verify` fetch TDX collateral for nodes that carry none.
#[derive(Debug, Args)]
pub(crate) struct CollateralArgs {
    /// Fetch TDX collateral from this PCCS or Intel PCS base URL (PCS API v4, e.g.
    /// https://api.trustedservices.intel.com) for nodes that carry none; overrides the policy's
    /// [collateral] pccs_url. Fetched collateral must verify against Intel's root like any other.
    #[arg(long, value_name = "URL")]
    pccs_url: Option<String>,
    /// PEM bundle of CAs for the PCCS's TLS certificate (default: the system bundle).
    #[arg(long, value_name = "FILE")]
    pccs_ca_file: Option<std::path::PathBuf>,
    /// Keep fetched collateral in this directory as well (one JSON file per platform, used
    /// until its nextUpdate), so a later run does not fetch it again.
    #[arg(long, value_name = "DIR")]
    collateral_cache: Option<std::path::PathBuf>,
    /// NVIDIA RIMs (driver and VBIOS SWID tags, e.g. from NVIDIA's RIM service) for GPU nodes
    /// whose evidence carries none: every file in DIR. Each is still verified up to NVIDIA's
    /// RIM root before its measurements are compared.
    #[arg(long, value_name = "DIR")]
    pub(crate) gpu_rims: Option<std::path::PathBuf>,
}

impl CollateralArgs {
    fn source(&self) -> CollateralSource {
        CollateralSource {
            pccs_url: self.pccs_url.clone(),
            pccs_ca_file: self.pccs_ca_file.clone(),
            cache_dir: self.collateral_cache.clone(),
            gpu_rims_dir: self.gpu_rims.clone(),
        }
    }
}
