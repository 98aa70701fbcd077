//! `chrysalis receipts summary FILE`: usage per upstream and model, and failed receipts.

use std::path::PathBuf;
use std::process::ExitCode;

use chrysalis_client::ledger::{self, Summary};
use clap::{Args, Subcommand};

use super::Ctx;

#[derive(Debug, Subcommand)]
pub(crate) enum ReceiptsCommand {
    /// Total the token usage of verified receipts per upstream and model, and list every
    /// receipt that was missing or failed verification. Exit 0 when all verified, 1 when any
    /// failed, 2 when the ledger cannot be read.
    Summary(SummaryArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SummaryArgs {
    /// The ledger written by `chrysalis proxy --receipts FILE` (or the SDK's receipts_ledger).
    file: PathBuf,
    /// Print one JSON object: {"rows": [{upstream, model, responses, verified, failed, usage}],
    /// "total": usage, "failed": [ledger records]}.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(_ctx: &Ctx, c: ReceiptsCommand) -> anyhow::Result<ExitCode> {
    let ReceiptsCommand::Summary(a) = c;
    let records = ledger::read(&a.file)?;
    let s = Summary::of(&records);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", text(&s));
    }
    Ok(if s.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn text(s: &Summary) -> String {
    let mut out = String::new();
    let w_up = s
        .rows
        .iter()
        .map(|r| r.upstream.len())
        .chain([8])
        .max()
        .unwrap_or(8);
    let w_model = s
        .rows
        .iter()
        .map(|r| r.model.len())
        .chain([5])
        .max()
        .unwrap_or(5);
    out.push_str(&format!(
        "{:<w_up$}  {:<w_model$}  {:>9} {:>8} {:>6}  {:>10} {:>10} {:>10}\n",
        "upstream", "model", "responses", "verified", "failed", "prompt", "completion", "total"
    ));
    for r in &s.rows {
        out.push_str(&format!(
            "{:<w_up$}  {:<w_model$}  {:>9} {:>8} {:>6}  {:>10} {:>10} {:>10}\n",
            r.upstream,
            r.model,
            r.responses,
            r.verified,
            r.failed,
            r.usage.prompt_tokens,
            r.usage.completion_tokens,
            r.usage.total_tokens
        ));
    }
    out.push_str(&format!(
        "total (verified receipts only): prompt {} completion {} total {} tokens\n",
        s.total.prompt_tokens, s.total.completion_tokens, s.total.total_tokens
    ));
    if s.failed.is_empty() {
        out.push_str("no failed receipts\n");
    } else {
        out.push_str(&format!("{} FAILED receipt(s):\n", s.failed.len()));
        for f in &s.failed {
            out.push_str(&format!(
                "  {}  {}  {}  {}: {}\n",
                f.time,
                f.upstream,
                f.model.as_deref().unwrap_or("?"),
                f.path,
                f.reason.as_deref().unwrap_or("not verified")
            ));
        }
    }
    out
}
