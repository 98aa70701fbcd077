//! `chrysalis policy from-manifest`: a client policy pinning the measurements recomputed from an
//! image's artifacts, written as TOML to stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrysalis_attestation::manifest::{ExpectedMeasurements, VmShape};
use chrysalis_attestation::measure::image::{
    SnpShape, TdxShape, default_snp_shapes, default_tdx_shapes, snp_for_shape, tdx_expected,
    tdx_image,
};
use chrysalis_attestation::measure::snp::{CHRYSALIS_GUEST_POLICY, snp_ovmf_hash};
use chrysalis_attestation::policy::SnpFloors;
use chrysalis_attestation::sim::{DEFAULT_SEED, SimAmdPki, SimPki};
use chrysalis_attestation::snp_policy::{TCB_FLOOR_SOURCE, TCB_FLOOR_TABLE_DATE};
use chrysalis_attestation::tdx_attributes::{LAUNCH_TD_ATTRIBUTES, LAUNCH_XFAM};
use chrysalis_attestation::{Platform, Policy, TdAttributes, Xfam};
use clap::{Args, Subcommand};

use super::Ctx;
use super::measure::{PlatformArg, guest_features, load_inputs, vcpu_type};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Recompute an image's measurements from the artifacts next to its manifest and print a
    /// strict policy (vendor roots, TDX TCB UpToDate, no debug) pinning them, one set per VM
    /// shape (the documented default shapes, or the one given). For SNP it also writes the
    /// built-in TCB floor per AMD product and pins the guest policy the image launches with
    /// and VMPL 0. Exit 1 when the manifest records other values than those recomputed.
    FromManifest(FromManifestArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FromManifestArgs {
    /// The image's manifest.json (artifacts in the same directory).
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,
    /// The platform to pin.
    #[arg(long, value_enum)]
    platform: PlatformArg,
    /// Pin only this vCPU count (with --memory) instead of the default shapes.
    #[arg(long, value_name = "N", requires = "memory")]
    vcpus: Option<u32>,
    /// Memory in MiB of the one shape to pin.
    #[arg(long, value_name = "MIB", requires = "vcpus")]
    memory: Option<u64>,
    /// SNP: the vCPU model of the one shape to pin (default EPYC-v4).
    #[arg(long, value_name = "T", requires = "vcpus")]
    vcpu_type: Option<String>,
    /// SNP: SEV_FEATURES (hex) of the shapes; default 0x1.
    #[arg(long, value_name = "HEX")]
    guest_features: Option<String>,
    /// DANGEROUS: also trust the simulated root of the platform's sim profile (the well-known
    /// seed): the simulated Intel root for tdx (profile sim), the simulated AMD ARK for snp
    /// (profile sim-snp). Anyone can sign evidence with it; for tests and demos only, never for
    /// real nodes.
    #[arg(long)]
    dangerous_sim_root: bool,
}

pub(crate) fn run(_ctx: &Ctx, cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::FromManifest(a) = cmd;
    let platform = Platform::from(a.platform);
    let (loaded, inputs) = load_inputs(&a.manifest, &[platform])?;
    let one = a
        .vcpus
        .zip(a.memory)
        .map(|(vcpus, memory_mib)| VmShape { vcpus, memory_mib });
    let mut computed = ExpectedMeasurements::default();
    match platform {
        Platform::Tdx => {
            let shapes = match one {
                Some(shape) => vec![TdxShape { shape, rtmr0: None }],
                None => default_tdx_shapes(),
            };
            let image = tdx_image(&inputs)?;
            computed.tdx = shapes
                .iter()
                .map(|s| tdx_expected(&inputs, &image, s))
                .collect::<Result<_, _>>()?;
        }
        Platform::Snp => {
            let features = guest_features(a.guest_features.as_deref())?;
            let shapes = match one {
                Some(shape) => vec![SnpShape {
                    shape,
                    vcpu_type: vcpu_type(a.vcpu_type.as_deref())?,
                    guest_features: features,
                }],
                None => default_snp_shapes()
                    .into_iter()
                    .map(|s| SnpShape {
                        guest_features: features,
                        ..s
                    })
                    .collect(),
            };
            let fw = inputs
                .snp_firmware
                .as_deref()
                .context("no SNP firmware was read")?;
            let ovmf_hash = snp_ovmf_hash(fw)?;
            computed.snp = shapes
                .iter()
                .map(|s| snp_for_shape(&inputs, s, Some(ovmf_hash)))
                .collect::<Result<_, _>>()?;
        }
    }

    let disagreements = disagreements(loaded.manifest.expected_measurements.as_ref(), &computed);
    let mut manifest = loaded.manifest;
    manifest.expected_measurements = Some(computed);
    let (tdx, mut snp) = match platform {
        Platform::Tdx => (manifest.tdx_pins(), vec![]),
        Platform::Snp => (vec![], manifest.snp_pins()),
    };
    // The guest policy is not in the launch digest: pin what the image launches with (unless
    // the manifest's pins already say), and VMPL 0, where the image runs.
    for pin in &mut snp {
        pin.policy.get_or_insert(CHRYSALIS_GUEST_POLICY);
        pin.vmpl.get_or_insert(0);
    }
    let mut policy = Policy::pinned(tdx, snp);
    let mut header = format!(
        "# chrysalis client policy for image {} {} ({}), generated by `chrysalis policy from-manifest`\n\
         # from {} with measurements recomputed from its artifacts.\n",
        manifest.flavor,
        manifest.version,
        platform.as_str(),
        a.manifest.display(),
    );
    if platform == Platform::Tdx {
        header.push_str(
            "# RTMR0 is not pinned: it depends on the VMM's ACPI tables (docs/measurements.md).\n",
        );
        header.push_str(&format!(
            "# td_attributes and xfam are those chrysalis launches every TD with: {} and {}.\n",
            TdAttributes::from_flags(LAUNCH_TD_ATTRIBUTES)
                .set_names()
                .join(" "),
            Xfam::from_flags(LAUNCH_XFAM).set_names().join(" "),
        ));
    }
    if platform == Platform::Snp {
        // Written out so the file says what it accepts; raise it as AMD's bulletins require.
        policy.tcb.snp_floor = SnpFloors::builtin();
        header.push_str(&format!(
            "# tcb.snp_floor: the minimum reported and committed TCB per AMD product, from the\n\
             # built-in table ({TCB_FLOOR_SOURCE}, checked {TCB_FLOOR_TABLE_DATE}). Turin has no\n\
             # built-in floor: add [tcb.snp_floor.turin] to accept Turin hosts.\n"
        ));
    }
    if manifest.flavor == "gpu" {
        // Prompts run on the GPU: a gpu image without GPU evidence proves nothing about where
        // they are computed.
        policy.gpu.require = true;
        header.push_str(
            "# gpu.require: this is a gpu image, so the node must present evidence of each GPU
             # (NVIDIA H100 in CC mode), verified up to NVIDIA's roots with RIMs (docs/gpu.md).
",
        );
    }
    if a.dangerous_sim_root {
        let (vendor, root) = match platform {
            Platform::Tdx => {
                let root = SimPki::from_seed(DEFAULT_SEED).root_sha256();
                policy.trust.dangerous_simulated_intel_roots = vec![root];
                ("Intel root", root)
            }
            Platform::Snp => {
                let root = SimAmdPki::from_seed(DEFAULT_SEED).ark_sha256();
                policy.trust.dangerous_simulated_amd_roots = vec![root];
                ("AMD ARK", root)
            }
        };
        header.push_str(&format!(
            "#\n# !!! DANGEROUS: this policy trusts the SIMULATED {vendor} {root}\n\
             # !!! (chrysalis sim PKI, well-known seed). ANYONE can sign evidence that chains to it.\n\
             # !!! For tests and demos only; never use it to talk to a real node.\n"
        ));
        eprintln!(
            "chrysalis: WARNING: --dangerous-sim-root: the policy trusts the SIMULATED {vendor} {root}; anyone can forge evidence it accepts"
        );
    }
    policy.validate()?;
    let body = policy.to_toml()?;
    // What is printed must be what verify and proxy will read back.
    let text = format!("{header}\n{body}");
    let back = Policy::from_toml(&text).context("the generated policy does not parse back")?;
    if back != policy {
        bail!("the generated policy does not round-trip through TOML");
    }
    print!("{text}");
    if !disagreements.is_empty() {
        for d in &disagreements {
            eprintln!("chrysalis: manifest disagrees with its artifacts: {d}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Shapes for which the manifest records other values than those recomputed.
fn disagreements(
    recorded: Option<&ExpectedMeasurements>,
    computed: &ExpectedMeasurements,
) -> Vec<String> {
    let Some(recorded) = recorded else {
        return vec![];
    };
    let mut out = Vec::new();
    for c in &computed.tdx {
        // An RTMR0 the manifest leaves unpinned is not compared.
        if let Some(r) = recorded.tdx.iter().find(|r| r.shape == c.shape)
            && !r.matches(&c.registers)
        {
            let show = |m: Option<chrysalis_attestation::Measurement>| {
                m.map_or_else(|| "none".to_string(), |m| m.to_string())
            };
            let (rr, cr) = (&r.registers, &c.registers);
            out.push(format!(
                "tdx {} vCPU {} MiB: recorded mr_td {} rtmr0 {} rtmr1 {} rtmr2 {}, recomputed mr_td {} rtmr0 {} rtmr1 {} rtmr2 {}",
                c.shape.vcpus, c.shape.memory_mib, rr.mr_td, show(r.rtmr0()), rr.rtmr[1], rr.rtmr[2],
                cr.mr_td, show(c.rtmr0()), cr.rtmr[1], cr.rtmr[2]
            ));
        }
    }
    for c in &computed.snp {
        if let Some(r) = recorded.snp.iter().find(|r| {
            r.shape == c.shape
                && r.vcpu_type.eq_ignore_ascii_case(&c.vcpu_type)
                && r.guest_features == c.guest_features
        }) && r.measurement != c.measurement
        {
            out.push(format!(
                "snp {} vCPU {} {} MiB: recorded {}, recomputed {}",
                c.shape.vcpus, c.vcpu_type, c.shape.memory_mib, r.measurement, c.measurement
            ));
        }
    }
    out
}
