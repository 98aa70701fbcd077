//! `chrysalis eventlog replay`: a TDX CCEL event log, replayed into RTMR0-3.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrysalis_attestation::measure::eventlog::EventLog;
use clap::{Args, Subcommand};
use serde_json::json;

use super::Ctx;

#[derive(Debug, Subcommand)]
pub(crate) enum EventlogCommand {
    /// Parse a TCG2 crypto-agile event log (the CCEL area, e.g. /sys/firmware/acpi/tables/data/CCEL)
    /// and replay it into RTMR0-3; list every event with its decoded description.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The CCEL event log (raw binary or hex text).
    #[arg(long, value_name = "FILE")]
    ccel: PathBuf,
    /// Print JSON: rtmr0..rtmr3 and the events.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(ctx: &Ctx, cmd: EventlogCommand) -> anyhow::Result<ExitCode> {
    let EventlogCommand::Replay(a) = cmd;
    let bytes = ctx.read_evidence(&a.ccel, "event log")?;
    let log = EventLog::parse(&bytes)
        .with_context(|| format!("{} is not a TCG2 event log", a.ccel.display()))?;
    let rtmr = log.replay();
    if a.json {
        let v = json!({
            "rtmr0": rtmr[0].to_hex(),
            "rtmr1": rtmr[1].to_hex(),
            "rtmr2": rtmr[2].to_hex(),
            "rtmr3": rtmr[3].to_hex(),
            "events": log.events,
        });
        println!("{v}");
    } else {
        for (i, r) in rtmr.iter().enumerate() {
            println!("rtmr{i}  {r}");
        }
        println!("\n{} events:", log.events.len());
        for e in &log.events {
            println!(
                "{:<6} {:<34} {}  {}",
                e.register.to_string(),
                e.event_type.to_string(),
                &e.digest.to_hex()[..16],
                e.description
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
