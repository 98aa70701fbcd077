//! `chrysalis evidence show|verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrysalis_attestation::{Evidence, Platform, Policy, Rejection, VerifyError};
use chrysalis_client::report;
use clap::{ArgGroup, Args, Subcommand};

use super::Ctx;

#[derive(Debug, Subcommand)]
pub(crate) enum EvidenceCommand {
    /// Parse a quote or report (TDX, SEV-SNP, NVIDIA GPU) and print every field (nothing is verified).
    Show(ShowArgs),
    /// Verify a quote or report: signature chain to a vendor root, TCB, debug, and the
    /// measurements pinned by --policy. Exit 0 accepted, 1 rejected, 2 unusable input.
    Verify(Box<VerifyArgs>),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["tdx_quote", "snp_report", "gpu_report"])))]
pub(crate) struct ShowArgs {
    /// An NVIDIA H100 SPDM attestation report (request ‖ response), raw binary or hex text.
    #[arg(long, value_name = "FILE")]
    gpu_report: Option<PathBuf>,
    /// A TDX quote (v4 or v5), raw binary or hex text.
    #[arg(long, value_name = "FILE")]
    tdx_quote: Option<PathBuf>,
    /// An SEV-SNP attestation report, raw binary or hex text.
    #[arg(long, value_name = "FILE")]
    snp_report: Option<PathBuf>,
    /// Print one JSON object with lowercase hex strings.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["tdx_quote", "snp_report", "gpu_report"])))]
pub(crate) struct VerifyArgs {
    /// An NVIDIA H100 SPDM attestation report, raw binary or hex text; needs --gpu-chain and
    /// --gpu-nonce. What is checked: docs/gpu.md.
    #[arg(long, value_name = "FILE", requires_all = ["gpu_chain", "gpu_nonce"])]
    gpu_report: Option<PathBuf>,
    /// The GPU's certificate chain (PEM, attestation key certificate first).
    #[arg(long, value_name = "FILE", requires = "gpu_report")]
    gpu_chain: Option<PathBuf>,
    /// The 32-byte nonce the report must answer, 64 hex digits.
    #[arg(long, value_name = "HEX", requires = "gpu_report")]
    gpu_nonce: Option<String>,
    /// The device identity root CA to trust (PEM) instead of the policy's pinned roots (by
    /// default NVIDIA's, whose copy the chain carries; docs/gpu.md "Policy").
    #[arg(long, value_name = "FILE", requires = "gpu_report")]
    gpu_root: Option<PathBuf>,
    /// The RIM signing root CA to trust (PEM) instead of the policy's pinned roots.
    #[arg(long, value_name = "FILE", requires = "gpu_report")]
    gpu_rim_root: Option<PathBuf>,
    /// DER OCSP responses for the GPU chain (repeatable; e.g. saved from NVIDIA's responder).
    /// Without them the policy's `[gpu] dangerous_no_ocsp` decides.
    #[arg(long, value_name = "FILE", requires = "gpu_report")]
    gpu_ocsp: Vec<PathBuf>,
    /// The driver's signed reference manifest (SWID tag XML).
    #[arg(long, value_name = "FILE", requires = "gpu_report")]
    driver_rim: Option<PathBuf>,
    /// The VBIOS's signed reference manifest (SWID tag XML).
    #[arg(long, value_name = "FILE", requires = "gpu_report")]
    vbios_rim: Option<PathBuf>,
    /// A TDX quote (v4 or v5), raw binary or hex text; needs --collateral.
    #[arg(long, value_name = "FILE", requires = "collateral")]
    tdx_quote: Option<PathBuf>,
    /// Intel collateral for the quote (QuoteCollateralV3 JSON, as dcap-qvl and PCCS clients write it).
    #[arg(long, value_name = "FILE", requires = "tdx_quote")]
    collateral: Option<PathBuf>,
    /// An SEV-SNP attestation report, raw binary or hex text; needs --vcek.
    #[arg(long, value_name = "FILE", requires = "vcek")]
    snp_report: Option<PathBuf>,
    /// The VCEK (or VLEK) certificate that signed the report, DER or PEM.
    #[arg(long, value_name = "FILE", requires = "snp_report")]
    vcek: Option<PathBuf>,
    /// ASK + ARK chain (PEM or DER); default: the AMD roots built in for Milan, Genoa, Turin.
    #[arg(long, value_name = "FILE", requires = "snp_report")]
    chain: Option<PathBuf>,
    /// The time to verify at, in unix seconds (explicit so results are reproducible).
    #[arg(long, value_name = "UNIX_SECONDS")]
    now: u64,
    /// Client policy (TOML). Without it: vendor roots, TCB UpToDate, no debug, and NO
    /// measurement pin — it proves genuine hardware, not which software runs there.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Print one JSON object (accepted, platform, tcb_status, advisory_ids,
    /// tcb_evaluation_data_number, collateral_issued, measurements, checks, reasons). `checks`
    /// lists each SNP platform check (TCB floor, guest-policy bits, VMPL) with its outcome,
    /// passed or not; `tcb_status` is null for SNP.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(ctx: &Ctx, cmd: EvidenceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EvidenceCommand::Show(a) => show(ctx, a),
        EvidenceCommand::Verify(a) => verify(ctx, *a),
    }
}

fn show(ctx: &Ctx, a: ShowArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = &a.gpu_report {
        return super::gpu::show(p, a.json);
    }
    let (title, evidence) = if let Some(p) = &a.tdx_quote {
        let q = Evidence::tdx(ctx.read_evidence(p, "TDX quote")?, None)
            .with_context(|| format!("{} is not a TDX quote", p.display()))?;
        (format!("TDX quote v{}", q.version()), q)
    } else {
        let p = a.snp_report.as_ref().expect("clap requires one input");
        let r = Evidence::snp(ctx.read_evidence(p, "SNP report")?, None, None)
            .with_context(|| format!("{} is not an SEV-SNP report", p.display()))?;
        (format!("SEV-SNP report v{}", r.version()), r)
    };
    let fields = report::evidence_fields(&evidence);
    if a.json {
        println!("{}", serde_json::Value::Object(fields));
    } else {
        println!("{title} (parsed, not verified)");
        print!("{}", report::text_lines(&fields));
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn verify(ctx: &Ctx, a: VerifyArgs) -> anyhow::Result<ExitCode> {
    if let Some(report) = &a.gpu_report {
        return super::gpu::verify(super::gpu::GpuInputs {
            report,
            chain: a.gpu_chain.as_deref().expect("clap requires --gpu-chain"),
            nonce: a.gpu_nonce.as_deref().expect("clap requires --gpu-nonce"),
            device_root: a.gpu_root.as_deref(),
            rim_root: a.gpu_rim_root.as_ref(),
            driver_rim: a.driver_rim.as_ref(),
            vbios_rim: a.vbios_rim.as_ref(),
            ocsp: &a.gpu_ocsp,
            policy: a.policy.as_ref(),
            now: a.now,
            json: a.json,
        });
    }
    let policy = match &a.policy {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read policy {}", p.display()))?;
            Policy::from_toml(&text).with_context(|| format!("policy {}", p.display()))?
        }
        None => Policy::dangerous_unpinned(),
    };
    // Evidence that does not parse is rejected like evidence that does not verify (exit 1,
    // the reason printed), not treated as unusable input.
    let (platform, evidence) = if let Some(q) = &a.tdx_quote {
        let path = a.collateral.as_ref().expect("clap requires --collateral");
        let collateral: dcap_qvl::QuoteCollateralV3 =
            serde_json::from_slice(&read(path, "collateral")?).with_context(|| {
                format!(
                    "collateral {} is not QuoteCollateralV3 JSON",
                    path.display()
                )
            })?;
        (
            Platform::Tdx,
            Evidence::tdx(ctx.read_evidence(q, "TDX quote")?, Some(collateral)),
        )
    } else {
        let r = a.snp_report.as_ref().expect("clap requires one input");
        let vcek = pem_or_der(read(
            a.vcek.as_ref().expect("clap requires --vcek"),
            "VCEK",
        )?);
        let chain = a
            .chain
            .as_ref()
            .map(|c| read(c, "certificate chain"))
            .transpose()?;
        (
            Platform::Snp,
            Evidence::snp(ctx.read_evidence(r, "SNP report")?, Some(vcek), chain),
        )
    };
    let result = match &evidence {
        Ok(evidence) => policy.appraise(evidence, None, a.now),
        Err(e) => Err(Rejection::from(VerifyError::Evidence(e.clone()))),
    };
    // Every check's outcome, also when another rule rejected the evidence; nothing when the
    // evidence does not verify at all (the reason says why).
    let checks = evidence
        .ok()
        .and_then(|e| {
            chrysalis_attestation::verify::verify(&e, &policy.trust_anchors(), None, a.now).ok()
        })
        .map(|v| policy.checks(&v))
        .unwrap_or_default();
    if a.json {
        let mut out = report::verdict_json(platform, &result);
        out["checks"] = serde_json::to_value(&checks).context("checks as JSON")?;
        println!("{out}");
    }
    match &result {
        Ok(v) => {
            if !a.json {
                let d = v.verdict();
                println!("ACCEPTED {} evidence v{}", d.platform, d.evidence_version);
                println!("root        {}", d.root);
                match d.tcb_status {
                    Some(s) => println!("tcb_status  {s}"),
                    None => println!("tcb_status  none (AMD assigns none; TCB floor checked)"),
                }
                for c in &checks {
                    println!(
                        "check       {} {}: {}",
                        if c.passed { "ok" } else { "FAILED" },
                        c.check,
                        c.detail
                    );
                }
                if let Some(n) = d.tcb_evaluation_data_number {
                    println!(
                        "tcb_eval    {n} (collateral issued {})",
                        d.collateral_issued.map_or("?".into(), |t| t.to_string())
                    );
                }
                if !d.advisory_ids.is_empty() {
                    println!("advisories  {}", d.advisory_ids.join(", "));
                }
                println!(
                    "pin         {}",
                    v.matched_pin().unwrap_or("(measurements not pinned)")
                );
                print!(
                    "{}",
                    report::text_lines(&report::measurement_fields(&d.measurements))
                );
                println!("report_data {}", d.report_data);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(r) => {
            for m in r.messages() {
                eprintln!("rejected: {m}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// A certificate file as DER: PEM input is converted, anything else passed through.
fn pem_or_der(bytes: Vec<u8>) -> Vec<u8> {
    match x509_parser::pem::parse_x509_pem(&bytes) {
        Ok((_, pem)) if pem.label == "CERTIFICATE" => pem.contents,
        _ => bytes,
    }
}
