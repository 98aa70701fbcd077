//! `chrysalis measure`: the measurements a VM booted from an image's manifest will report,
//! recomputed from the artifacts next to the manifest (and the shared manifest helpers).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrysalis_attestation::manifest::{ImageDir, VmShape};
use chrysalis_attestation::measure::image::{
    DEFAULT_SNP_GUEST_FEATURES, ImageInputs, SnpShape, TdxShape, snp_for_shape, tdx_expected,
    tdx_image,
};
use chrysalis_attestation::measure::snp::SnpVcpuType;
use chrysalis_attestation::{Measurement, Platform};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::Ctx;

/// The platform a command computes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PlatformArg {
    /// Intel TDX: MRTD and RTMR0-3.
    Tdx,
    /// AMD SEV-SNP: the launch digest.
    Snp,
}

impl From<PlatformArg> for Platform {
    fn from(p: PlatformArg) -> Self {
        match p {
            PlatformArg::Tdx => Platform::Tdx,
            PlatformArg::Snp => Platform::Snp,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct MeasureArgs {
    /// The image's manifest.json; its artifacts are read from the same directory and checked
    /// against their SHA-256 first.
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,
    /// The platform.
    #[arg(long, value_enum)]
    platform: PlatformArg,
    /// vCPUs of the VM.
    #[arg(long, value_name = "N")]
    vcpus: u32,
    /// Memory of the VM in MiB (TDX: enters RTMR0 through the TD HOB and ACPI tables; SNP:
    /// labels the shape).
    #[arg(long, value_name = "MIB")]
    memory: u64,
    /// SNP: the QEMU vCPU model (EPYC-v4, EPYC-Milan, EPYC-Genoa, EPYC-Turin, ...).
    #[arg(long, value_name = "T")]
    vcpu_type: Option<String>,
    /// SNP: SEV_FEATURES of the VMSAs (hex); default 0x1, SNPActive only.
    #[arg(long, value_name = "HEX")]
    guest_features: Option<String>,
    /// TDX: an RTMR0 value captured on hardware for exactly this shape (docs/measurements.md).
    /// Without it RTMR0 is computed for the `tdx` profile's QEMU release and machine type; a
    /// shape whose ACPI tables are not modelled is an error naming it.
    #[arg(long, value_name = "HEX")]
    rtmr0: Option<Measurement>,
    /// Print one JSON object (lowercase hex).
    #[arg(long)]
    json: bool,
}

/// Loads the manifest at `path` and reads and verifies the artifacts measuring on `platforms`
/// needs.
pub(crate) fn load_inputs(
    path: &Path,
    platforms: &[Platform],
) -> anyhow::Result<(ImageDir, ImageInputs)> {
    let image = ImageDir::load(path)?;
    let inputs = ImageInputs::from_dir(&image, platforms)
        .with_context(|| format!("artifacts of the manifest in {}", image.dir.display()))?;
    Ok((image, inputs))
}

/// Parses an SNP vCPU type (default EPYC-v4, the host's default).
pub(crate) fn vcpu_type(t: Option<&str>) -> anyhow::Result<SnpVcpuType> {
    match t {
        None => Ok(SnpVcpuType::EPYC_V4),
        Some(t) => Ok(t.parse()?),
    }
}

/// Parses SEV_FEATURES given in hex (with or without 0x).
pub(crate) fn guest_features(f: Option<&str>) -> anyhow::Result<u64> {
    match f {
        None => Ok(DEFAULT_SNP_GUEST_FEATURES),
        Some(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16)
            .with_context(|| format!("--guest-features {s:?} is not a hex number")),
    }
}

pub(crate) fn run(_ctx: &Ctx, a: MeasureArgs) -> anyhow::Result<ExitCode> {
    let platform = Platform::from(a.platform);
    let shape = VmShape {
        vcpus: a.vcpus,
        memory_mib: a.memory,
    };
    if a.vcpus == 0 {
        bail!("--vcpus must be at least 1");
    }
    match platform {
        Platform::Tdx => {
            if a.vcpu_type.is_some() || a.guest_features.is_some() {
                bail!(
                    "--vcpu-type and --guest-features are SNP settings; not valid with --platform tdx"
                );
            }
        }
        Platform::Snp => {
            if a.rtmr0.is_some() {
                bail!("--rtmr0 is a TDX register; not valid with --platform snp");
            }
        }
    }
    let (loaded, inputs) = load_inputs(&a.manifest, &[platform])?;
    let recorded = loaded.manifest.expected_measurements.as_ref();
    let (value, differs_from_manifest) = match platform {
        Platform::Tdx => {
            let image = tdx_image(&inputs)?;
            let t = tdx_expected(
                &inputs,
                &image,
                &TdxShape {
                    shape: shape.clone(),
                    rtmr0: a.rtmr0,
                },
            )?;
            let differs = recorded
                .into_iter()
                .flat_map(|r| r.tdx.iter())
                .find(|r| r.shape == shape)
                // An RTMR0 the manifest leaves unpinned is not compared.
                .filter(|r| !r.matches(&t.registers))
                .is_some();
            let v = json!({
                "platform": "tdx",
                "vcpus": shape.vcpus,
                "memory_mib": shape.memory_mib,
                "mr_td": t.registers.mr_td.to_hex(),
                "rtmr0": t.rtmr0().map(|m| m.to_hex()),
                "rtmr1": t.registers.rtmr[1].to_hex(),
                "rtmr2": t.registers.rtmr[2].to_hex(),
                "rtmr3": t.registers.rtmr[3].to_hex(),
                "qemu_version": t.qemu_version,
                "qemu_machine": t.qemu_machine,
            });
            (v, differs)
        }
        Platform::Snp => {
            let s = snp_for_shape(
                &inputs,
                &SnpShape {
                    shape: shape.clone(),
                    vcpu_type: vcpu_type(a.vcpu_type.as_deref())?,
                    guest_features: guest_features(a.guest_features.as_deref())?,
                },
                None,
            )?;
            let differs = recorded
                .into_iter()
                .flat_map(|r| r.snp.iter())
                .find(|r| {
                    r.shape == shape
                        && r.vcpu_type.eq_ignore_ascii_case(&s.vcpu_type)
                        && r.guest_features == s.guest_features
                })
                .filter(|r| r.measurement != s.measurement)
                .is_some();
            let v = json!({
                "platform": "snp",
                "vcpus": shape.vcpus,
                "memory_mib": shape.memory_mib,
                "vcpu_type": s.vcpu_type,
                "guest_features": format!("{:#x}", s.guest_features),
                "measurement": s.measurement.to_hex(),
            });
            (v, differs)
        }
    };
    if a.json {
        println!("{value}");
    } else {
        for key in ["mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "measurement"] {
            match value.get(key) {
                Some(serde_json::Value::String(h)) => println!("{key:<12} {h}"),
                Some(serde_json::Value::Null) => println!(
                    "{key:<12} not pinned (depends on the VMM's ACPI tables; capture it: docs/measurements.md)"
                ),
                _ => {}
            }
        }
    }
    if differs_from_manifest {
        eprintln!(
            "chrysalis: the manifest's expected_measurements for this shape differ from the values recomputed from its artifacts"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
