//! `chrysalis explain`: why a TDX node's quote does not match an image, register by register
//! and event by event through the boot's event log.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrysalis_attestation::manifest::VmShape;
use chrysalis_attestation::measure::eventlog::EventLog;
use chrysalis_attestation::measure::eventlog::Register;
use chrysalis_attestation::measure::explain::{EventStatus, RegisterStatus, explain_tdx};
use chrysalis_attestation::measure::image::{tdx_image, tdx_image_for_shape};
use chrysalis_attestation::measure::tdx_acpi::{TDX_VMM, supported_shapes};
use chrysalis_attestation::{Measurement, Platform, TdxQuote};
use clap::Args;

use super::Ctx;
use super::measure::load_inputs;

#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// The node's TDX quote (raw binary or hex text). Its signature is NOT verified here: use
    /// `chrysalis evidence verify` for that; this explains the registers it reports.
    #[arg(long, value_name = "FILE")]
    quote: PathBuf,
    /// The CCEL event log of the same boot (/sys/firmware/acpi/tables/data/CCEL).
    #[arg(long, value_name = "FILE")]
    eventlog: PathBuf,
    /// The image's manifest.json (artifacts in the same directory).
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,
    /// An RTMR0 captured on hardware for the node's VM shape. Without it RTMR0 and its events
    /// are predicted for the `tdx` profile's QEMU and machine type and the shape given by
    /// --vcpus/--memory, or, without those, for the modelled shape whose events the log matches
    /// best (named in the output).
    #[arg(long, value_name = "HEX", conflicts_with_all = ["vcpus", "memory"])]
    rtmr0: Option<Measurement>,
    /// vCPUs of the node's VM (with --memory): predict RTMR0 for this shape.
    #[arg(long, value_name = "N", requires = "memory")]
    vcpus: Option<u32>,
    /// Memory in MiB of the node's VM (with --vcpus).
    #[arg(long, value_name = "MIB", requires = "vcpus")]
    memory: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn short(m: &Measurement) -> String {
    m.to_hex()[..16].to_string()
}

pub(crate) fn run(ctx: &Ctx, a: ExplainArgs) -> anyhow::Result<ExitCode> {
    let quote = TdxQuote::parse(&ctx.read_evidence(&a.quote, "TDX quote")?)
        .with_context(|| format!("{} is not a TDX quote", a.quote.display()))?;
    let log_bytes = ctx.read_evidence(&a.eventlog, "event log")?;
    let log = EventLog::parse(&log_bytes)
        .with_context(|| format!("{} is not a TCG2 event log", a.eventlog.display()))?;
    let (loaded, inputs) = load_inputs(&a.manifest, &[Platform::Tdx])?;
    let measurements = quote.measurements();
    let mut predicted_for = None;
    let x = if let Some(rtmr0) = a.rtmr0 {
        let mut expected = tdx_image(&inputs)?;
        expected.pin_rtmr0(rtmr0);
        explain_tdx(&measurements, &log, &expected)
    } else {
        let shapes = match a.vcpus.zip(a.memory) {
            Some((vcpus, memory_mib)) => vec![VmShape { vcpus, memory_mib }],
            None => supported_shapes(&TDX_VMM)
                .iter()
                .map(|s| VmShape {
                    vcpus: s.vcpus,
                    memory_mib: s.memory_mib,
                })
                .collect(),
        };
        // The shape whose RTMR0 events the log matches best (the one given, if one was).
        let mut best = None;
        for shape in shapes {
            let expected = tdx_image_for_shape(&inputs, &shape, &TDX_VMM)?;
            let x = explain_tdx(&measurements, &log, &expected);
            let score = x
                .events
                .iter()
                .filter(|e| e.register == Register::Rtmr0 && e.status == EventStatus::Match)
                .count();
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, shape, x));
            }
        }
        let (_, shape, x) = best.context("no VM shape to predict RTMR0 for")?;
        predicted_for = Some(format!(
            "{} vCPU, {} MiB under {}",
            shape.vcpus, shape.memory_mib, TDX_VMM
        ));
        x
    };

    if a.json {
        let mut v = serde_json::to_value(&x)?;
        v["matches"] = serde_json::json!(x.matches());
        v["rtmr0_predicted_for"] = serde_json::json!(predicted_for);
        println!("{v}");
    } else {
        println!(
            "image {} {} ({}) against the quote {}",
            loaded.manifest.flavor,
            loaded.manifest.version,
            a.manifest.display(),
            a.quote.display()
        );
        println!("\nregisters:");
        for r in &x.registers {
            let status = match r.status {
                RegisterStatus::Match => "match",
                RegisterStatus::Differs => "DIFFERS",
                RegisterStatus::NotPinned => "not pinned",
            };
            let expected = r.expected.as_ref().map_or("-".into(), short);
            println!(
                "  {:<6} {:<10} expected {:<16}  actual {}  ({})",
                r.register.to_string(),
                status,
                expected,
                short(&r.actual),
                r.measures
            );
        }
        if x.log_not_of_this_quote.is_empty() {
            println!("\nevent log: replays to the quote's RTMR0-3 (it is this boot's log)");
        } else {
            let regs: Vec<String> = x
                .log_not_of_this_quote
                .iter()
                .map(|r| r.to_string())
                .collect();
            println!(
                "\nevent log: does NOT replay to the quote's {} (incomplete, or another boot's log): \
                 the events below do not explain those registers",
                regs.join(", ")
            );
        }
        match &predicted_for {
            Some(p) => println!(
                "\nevents (RTMR0 predicted for {p}; RTMR1-3 compared with the image's expected events):"
            ),
            None => println!(
                "\nevents (RTMR0 compared as a captured value only; RTMR1-3 compared with the image's expected events):"
            ),
        }
        for e in &x.events {
            let status = match e.status {
                EventStatus::Match => "match",
                EventStatus::Differs => "DIFFERS",
                EventStatus::Missing => "MISSING",
                EventStatus::Unexpected => "UNEXPECTED",
                EventStatus::NotPredicted => "logged",
            };
            let shown = e.actual.as_ref().or(e.expected.as_ref()).expect("one side");
            println!(
                "  {:<6} {:<10} {:<34} {}",
                e.register.to_string(),
                status,
                shown.event_type.to_string(),
                truncate(&shown.description, 80)
            );
            if matches!(
                e.status,
                EventStatus::Differs | EventStatus::Missing | EventStatus::Unexpected
            ) {
                if let Some(exp) = &e.expected {
                    println!(
                        "  {:18}expected digest {}  {}",
                        "",
                        short(&exp.digest),
                        truncate(&exp.description, 60)
                    );
                }
                if let Some(act) = &e.actual {
                    println!("  {:18}logged digest   {}", "", short(&act.digest));
                }
                println!("  {:18}comes from: {}", "", e.source);
            }
        }
        let n = x.differing_events().count();
        println!(
            "\n{}",
            if x.matches() {
                "result: the quote matches the image".to_string()
            } else {
                format!("result: the quote does NOT match the image ({n} event(s) differ)")
            }
        );
    }
    Ok(if x.matches() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn truncate(s: &str, n: usize) -> String {
    let one_line = s.replace('\n', " ");
    match one_line.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}
