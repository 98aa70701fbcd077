//! `chrysalis evidence show|verify --gpu-report`: NVIDIA H100 evidence, parsed or verified offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrysalis_attestation::gpu::{self, GpuEvidence, GpuPolicy, GpuReport};

/// The GPU inputs of `evidence verify`.
pub(crate) struct GpuInputs<'a> {
    pub(crate) report: &'a Path,
    pub(crate) chain: &'a Path,
    pub(crate) nonce: &'a str,
    pub(crate) device_root: Option<&'a Path>,
    pub(crate) rim_root: Option<&'a PathBuf>,
    pub(crate) driver_rim: Option<&'a PathBuf>,
    pub(crate) vbios_rim: Option<&'a PathBuf>,
    pub(crate) ocsp: &'a [PathBuf],
    pub(crate) policy: Option<&'a PathBuf>,
    pub(crate) now: u64,
    pub(crate) json: bool,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn certs(path: &Path, what: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    gpu::chain::pem_certificates(&read(path, what)?)
        .with_context(|| format!("{what} {} is not PEM certificates", path.display()))
}

fn parse_report(path: &Path) -> anyhow::Result<(Vec<u8>, GpuReport)> {
    let raw = read(path, "GPU report")?;
    let text: Option<String> = std::str::from_utf8(&raw)
        .ok()
        .map(|s| s.split_whitespace().collect());
    let bytes = match text {
        Some(t) if !t.is_empty() && t.bytes().all(|c| c.is_ascii_hexdigit()) => hex::decode(&t)
            .with_context(|| format!("GPU report {} is odd-length hex", path.display()))?,
        _ => raw,
    };
    let report = GpuReport::parse(&bytes).with_context(|| {
        format!(
            "{} is not an NVIDIA SPDM attestation report",
            path.display()
        )
    })?;
    Ok((bytes, report))
}

/// Prints the parsed report (nothing verified).
pub(crate) fn show(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (_, r) = parse_report(path)?;
    if json {
        println!("{}", serde_json::to_value(&r).context("report as JSON")?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("NVIDIA GPU SPDM report (parsed, not verified)");
    println!("spdm_version          {:#04x}", r.spdm_version);
    println!("request_nonce         {}", hex::encode(r.request_nonce));
    println!("response_nonce        {}", hex::encode(r.response_nonce));
    println!("slot_id               {}", r.slot_id);
    let o = &r.opaque;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
    println!("driver_version        {}", opt(&o.driver_version));
    println!("vbios_version         {}", opt(&o.vbios_version));
    println!("project               {}", opt(&o.project));
    println!("project_sku           {}", opt(&o.project_sku));
    println!("chip_sku              {}", opt(&o.chip_sku));
    println!(
        "board_id              {}",
        o.board_id.map_or("(absent)".into(), |b| format!("{b:#x}"))
    );
    println!(
        "fwid                  {}",
        o.fwid.as_ref().map_or("(absent)".into(), hex::encode)
    );
    println!(
        "nvdec0_status         {}",
        o.nvdec0_status
            .map_or("(absent)".into(), |b| format!("{b:#04x}"))
    );
    println!(
        "protected_pcie_status {}",
        o.protected_pcie_status
            .map_or("(absent)".into(), |b| format!("{b:#04x}"))
    );
    println!(
        "feature_flag          {}",
        o.feature_flag.map_or("(absent)".into(), |f| f.to_string())
    );
    println!("cc_mode               not a signed field of this report");
    for b in &r.blocks {
        println!(
            "measurement[{:>2}]       type {:#04x} {}",
            b.index,
            b.value_type,
            hex::encode(&b.value)
        );
    }
    println!("signature             {}", hex::encode(&r.signature));
    Ok(ExitCode::SUCCESS)
}

/// Verifies GPU evidence; exit 0 accepted, 1 rejected (bad input is an error: exit 2).
pub(crate) fn verify(i: GpuInputs<'_>) -> anyhow::Result<ExitCode> {
    let (report, _) = parse_report(i.report)?;
    let nonce: [u8; 32] = hex::decode(i.nonce.trim())
        .ok()
        .and_then(|n| n.try_into().ok())
        .context("--gpu-nonce must be 64 hex digits (32 bytes)")?;
    let policy = match i.policy {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read policy {}", p.display()))?;
            GpuPolicy::from_policy_toml(&text).with_context(|| format!("policy {}", p.display()))?
        }
        None => GpuPolicy::default(),
    };
    let rim = |p: Option<&PathBuf>, what| p.map(|p| read(p, what)).transpose();
    let evidence = GpuEvidence {
        report,
        chain: certs(i.chain, "GPU certificate chain")?,
        driver_rim: rim(i.driver_rim, "driver RIM")?,
        vbios_rim: rim(i.vbios_rim, "VBIOS RIM")?,
        ocsp: i
            .ocsp
            .iter()
            .map(|p| read(p, "OCSP response"))
            .collect::<anyhow::Result<_>>()?,
    };
    // Roots named on the command line replace the policy's pinned ones.
    let mut trust = policy.trust_for(&evidence);
    if let Some(p) = i.device_root {
        trust.device_roots = certs(p, "NVIDIA device root")?;
    }
    if let Some(p) = i.rim_root {
        trust.rim_roots = certs(p, "NVIDIA RIM root")?;
    }
    match gpu::verify(&evidence, &nonce, &trust, &policy, i.now) {
        Ok(v) => {
            let d = v.verdict();
            if i.json {
                let mut out = serde_json::to_value(d).context("verdict as JSON")?;
                out["accepted"] = true.into();
                println!("{out}");
            } else {
                println!("ACCEPTED NVIDIA GPU evidence");
                println!(
                    "device_root     {} (sha256 {})",
                    d.device_root, d.device_root_sha256
                );
                println!("driver          {}", d.driver_version);
                println!("vbios           {}", d.vbios_version);
                println!("cc_mode         {}", d.cc_mode);
                println!("production_mode {}", d.production_mode);
                for c in &d.checks {
                    println!("check           {c}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let reason = format!("{:#}", anyhow::Error::new(e));
            if i.json {
                println!(
                    "{}",
                    serde_json::json!({ "accepted": false, "reasons": [reason] })
                );
            }
            eprintln!("rejected: {reason}");
            Ok(ExitCode::from(1))
        }
    }
}
