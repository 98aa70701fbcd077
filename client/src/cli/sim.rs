//! `chrysalis sim quote`: a quote from the simulated TEE, for tests and reviewers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chrysalis_attestation::sim::{DEFAULT_SEED, SimPki, SimTdReport, td_measurements};
use chrysalis_attestation::tdx_attributes::{LAUNCH_TD_ATTRIBUTES, LAUNCH_XFAM};
use chrysalis_attestation::{Flags64, Measurement, ReportData};
use clap::{Args, Subcommand};

use super::Ctx;

#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// Sign a TDX v4 quote with the simulated Intel PKI and write quote, collateral and root.
    ///
    /// Writes DIR/quote.bin, DIR/collateral.json (QuoteCollateralV3), DIR/root.der and
    /// DIR/root.pem. Verify with `chrysalis evidence verify` and a policy whose
    /// [trust] dangerous_simulated_intel_roots lists the printed root fingerprint.
    Quote(Box<QuoteArgs>),
}

#[derive(Debug, Args)]
pub(crate) struct QuoteArgs {
    /// MRTD (48 bytes, hex).
    #[arg(long, value_name = "HEX")]
    mr_td: Measurement,
    /// RTMR0 (hex; default zero).
    #[arg(long, value_name = "HEX", default_value_t = Measurement::ZERO)]
    rtmr0: Measurement,
    /// RTMR1 (hex; default zero).
    #[arg(long, value_name = "HEX", default_value_t = Measurement::ZERO)]
    rtmr1: Measurement,
    /// RTMR2 (hex; default zero).
    #[arg(long, value_name = "HEX", default_value_t = Measurement::ZERO)]
    rtmr2: Measurement,
    /// RTMR3 (hex; default zero).
    #[arg(long, value_name = "HEX", default_value_t = Measurement::ZERO)]
    rtmr3: Measurement,
    /// TD_ATTRIBUTES: the 8 bytes as the quote stores them, as `chrysalis evidence show` prints
    /// them (hex; default 0000001000000000, SEPT_VE_DISABLE only, as chrysalis launches TDs).
    /// E.g. 2000001000000000 adds PERF_PROF (bit 5), which the default policy refuses.
    #[arg(long, value_name = "HEX", default_value_t = LAUNCH_TD_ATTRIBUTES)]
    td_attributes: Flags64,
    /// XFAM: the 8 bytes as the quote stores them (hex; default e702060000000000, as chrysalis
    /// launches TDs).
    #[arg(long, value_name = "HEX", default_value_t = LAUNCH_XFAM)]
    xfam: Flags64,
    /// The 64 bytes to bind (hex).
    #[arg(long, value_name = "HEX")]
    report_data: ReportData,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Seed of the simulated PKI; the default is the sim profile's well-known seed.
    #[arg(long, default_value = std::str::from_utf8(DEFAULT_SEED).expect("ASCII seed"))]
    seed: String,
    /// Collateral issue time (unix seconds; default: now).
    #[arg(long, value_name = "UNIX_SECONDS")]
    issued_at: Option<u64>,
    /// Collateral lifetime in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30 * 86_400)]
    valid_for: u64,
}

pub(crate) fn run(_ctx: &Ctx, cmd: SimCommand) -> anyhow::Result<ExitCode> {
    let SimCommand::Quote(a) = cmd;
    let a = *a;
    let pki = SimPki::from_seed(a.seed.as_bytes());
    let issued_at = match a.issued_at {
        Some(t) => t,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("system clock before 1970")?
            .as_secs(),
    };
    let mut m = td_measurements(a.mr_td, [a.rtmr0, a.rtmr1, a.rtmr2, a.rtmr3]);
    // Quoted as given, even bits no verifier accepts: the point is to see the refusal.
    m.td_attributes = a.td_attributes;
    m.xfam = a.xfam;
    let quote = pki.quote(&SimTdReport::new(m, a.report_data));
    let collateral = pki
        .collateral(issued_at, a.valid_for)
        .context("cannot issue simulated collateral")?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    write_atomic(&a.out.join("quote.bin"), &quote)?;
    write_atomic(
        &a.out.join("collateral.json"),
        &serde_json::to_vec_pretty(&collateral)?,
    )?;
    write_atomic(&a.out.join("root.der"), pki.root_der())?;
    write_atomic(&a.out.join("root.pem"), pki.root_pem().as_bytes())?;
    println!(
        "wrote {}/{{quote.bin,collateral.json,root.der,root.pem}}",
        a.out.display()
    );
    println!("simulated root sha256 {}", pki.root_sha256());
    println!(
        "collateral valid {issued_at} .. {}",
        issued_at + a.valid_for
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes through a temporary file in the same directory, then renames: never half a file.
fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename into {}", path.display()))
}
