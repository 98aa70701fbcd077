//! Expected measurements of a chrysalis image: a [`Manifest`] plus the bytes of its kernel,
//! initramfs and firmware, computed per VM shape for TDX and SEV-SNP.
//!
//! The bytes come through an [`ArtifactSource`] (a closure reading files is one), and every
//! artifact is checked against the manifest's size and SHA-256 before anything is computed
//! from it: a measurement is only ever of the bytes the manifest names.
//!
//! # What depends on the VM shape
//!
//! * TDX: MRTD, RTMR1, RTMR2 and RTMR3 depend only on the firmware, kernel, initrd and command
//!   line. RTMR0 depends on the VMM's ACPI tables and TD HOB (vCPUs, memory, devices, QEMU
//!   version and machine type): it is computed ([`tdx_rtmr0_events`], [`super::rtmr0`]) for the
//!   QEMU releases, machine types and shapes whose ACPI tables [`super::tdx_acpi`] holds, and
//!   any other shape is an error naming it, unless a value captured on hardware for that shape
//!   is supplied ([`TdxShape::rtmr0`]; procedure in `docs/measurements.md`).
//! * SEV-SNP: the launch digest depends on the vCPU count (one VMSA each), the vCPU model
//!   (its CPUID signature is in every VMSA) and SEV_FEATURES, not on the memory size.
//!
//! # Default VM shapes
//!
//! [`default_tdx_shapes`] and [`default_snp_shapes`] are the shapes `cargo xtask image build`
//! writes into `manifest.json`:
//!
//! | shape | why |
//! |---|---|
//! | 2 vCPU, 2048 MiB | the host's sim profile (`host/tests/golden/sim.toml`, the demo) |
//! | 2 vCPU, 4096 MiB | the smallest documented production shape |
//! | 8 vCPU, 65536 MiB | the host's SNP example (`host/tests/golden/snp.toml`) |
//! | 16 vCPU, 131072 MiB | the host's TDX example (`host/host.example.toml`) |
//!
//! SNP shapes are each of these with the vCPU models `EPYC-v4` (the host's default `snp.cpu`),
//! `EPYC-Milan` and `EPYC-Genoa`, and SEV_FEATURES [`DEFAULT_SNP_GUEST_FEATURES`].

use std::error::Error as StdError;

use thiserror::Error;

use super::MeasureError;
use super::eventlog::Event;
use super::rtmr0::{Rtmr0Error, rtmr0, rtmr0_events};
use super::snp::{
    SEV_FEATURES_SNP_ACTIVE, SnpLaunchInputs, SnpMeasureError, SnpVcpuType, snp_launch_digest,
    snp_ovmf_hash,
};
use super::tdx::{
    ExpectedTdx, PageAddOrder, Rtmr0Source, TdvfMetadata, TdxBootInputs, expected_tdx,
};
use super::tdx_acpi::{AcpiShape, QemuMachine, TDX_VMM, UnsupportedVmm, acpi_files};
use crate::evidence::{Measurement, Platform, Sha256};
use crate::manifest::{
    Artifact, ArtifactMismatch, ExpectedMeasurements, ImageDir, Manifest, SnpExpected, TdxExpected,
    VmShape,
};

/// Key of [`Manifest::firmware`] for the TDVF image (edk2 `OvmfPkg/IntelTdx`).
pub const FIRMWARE_TDX: &str = "tdx";
/// Key of [`Manifest::firmware`] for the SNP OVMF image (edk2 `OvmfPkg/AmdSev`).
pub const FIRMWARE_SNP: &str = "snp";

/// SEV_FEATURES of the default SNP shapes: SNPActive only. QEMU (9.1+, `KVM_SEV_INIT2`) sets
/// no other VMSA feature unless asked to (for example `debug-swap=on`), and the host launcher
/// does not ask.
pub const DEFAULT_SNP_GUEST_FEATURES: u64 = SEV_FEATURES_SNP_ACTIVE;

/// A TDX VM shape and, when one was captured on hardware, its RTMR0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdxShape {
    /// vCPUs and memory.
    pub shape: VmShape,
    /// RTMR0 captured for exactly this shape (firmware, QEMU version, devices), or `None`: it is
    /// then computed, and a shape the calculator does not model is an error.
    pub rtmr0: Option<Measurement>,
}

/// An SEV-SNP VM shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnpShape {
    /// vCPUs and memory (memory does not enter the digest; it labels the pin).
    pub shape: VmShape,
    /// The QEMU `-cpu` model.
    pub vcpu_type: SnpVcpuType,
    /// SEV_FEATURES of the VMSAs.
    pub guest_features: u64,
}

const DEFAULT_SHAPES: [(u32, u64); 4] = [(2, 2048), (2, 4096), (8, 65536), (16, 131072)];

/// The documented default TDX shapes (see the module docs). No RTMR0 is given: it is computed
/// for the `tdx` profile's QEMU and machine type ([`tdx_expected`]).
pub fn default_tdx_shapes() -> Vec<TdxShape> {
    DEFAULT_SHAPES
        .iter()
        .map(|&(vcpus, memory_mib)| TdxShape {
            shape: VmShape { vcpus, memory_mib },
            rtmr0: None,
        })
        .collect()
}

/// The documented default SNP shapes (see the module docs).
pub fn default_snp_shapes() -> Vec<SnpShape> {
    let types = [
        SnpVcpuType::EPYC_V4,
        SnpVcpuType::EPYC_MILAN,
        SnpVcpuType::EPYC_GENOA,
    ];
    DEFAULT_SHAPES
        .iter()
        .flat_map(|&(vcpus, memory_mib)| {
            types.iter().map(move |&vcpu_type| SnpShape {
                shape: VmShape { vcpus, memory_mib },
                vcpu_type,
                guest_features: DEFAULT_SNP_GUEST_FEATURES,
            })
        })
        .collect()
}

/// Where artifact bytes come from (a directory, a cache, memory). The bytes are checked
/// against the manifest by the caller of this trait, so implementations need not.
pub trait ArtifactSource {
    /// The bytes of `artifact` (its `file` is relative to the manifest's directory).
    fn read(&mut self, artifact: &Artifact) -> Result<Vec<u8>, Box<dyn StdError + Send + Sync>>;
}

impl<F, E> ArtifactSource for F
where
    F: FnMut(&Artifact) -> Result<Vec<u8>, E>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    fn read(&mut self, artifact: &Artifact) -> Result<Vec<u8>, Box<dyn StdError + Send + Sync>> {
        self(artifact).map_err(Into::into)
    }
}

/// Why expected measurements of an image could not be computed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImageMeasureError {
    /// The artifact source could not provide an artifact.
    #[error("cannot read {role} artifact {file}")]
    Read {
        /// Its role in the manifest (`kernel`, `initramfs`, `firmware tdx`, ...).
        role: String,
        /// Its file name.
        file: String,
        /// What the source reported.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// An artifact's bytes are not those the manifest names.
    #[error("{role} {mismatch}")]
    ArtifactMismatch {
        /// Its role in the manifest (`kernel`, `initramfs`, `firmware tdx`, ...).
        role: String,
        /// The sizes and digests.
        mismatch: Box<ArtifactMismatch>,
    },
    /// The manifest lists no firmware for the platform, so nothing can be computed for it.
    #[error(
        "the manifest lists no {platform} firmware (firmware.{role}); build it with \
         `cargo xtask firmware build` and add it to the image"
    )]
    NoFirmware {
        /// The platform.
        platform: Platform,
        /// The missing key of [`Manifest::firmware`].
        role: &'static str,
    },
    /// The TDX calculator refused the artifacts.
    #[error("TDX measurement")]
    Tdx(#[from] MeasureError),
    /// The SNP calculator refused the artifacts.
    #[error("SNP measurement")]
    Snp(#[from] SnpMeasureError),
    /// RTMR0 is not modelled for the VMM or VM shape (and no captured value was supplied).
    #[error("TDX RTMR0")]
    UnsupportedVmm(#[from] UnsupportedVmm),
    /// The RTMR0 calculator refused the firmware or the ACPI files.
    #[error("TDX RTMR0")]
    Rtmr0(#[from] Rtmr0Error),
}

/// Reads one artifact and checks its size and SHA-256 against the manifest entry
/// ([`Artifact::check`]). Returns the bytes only if both match; `role` names the artifact in errors.
fn read_verified(
    source: &mut dyn ArtifactSource,
    role: &str,
    artifact: &Artifact,
) -> Result<Vec<u8>, ImageMeasureError> {
    let bytes = source
        .read(artifact)
        .map_err(|source| ImageMeasureError::Read {
            role: role.into(),
            file: artifact.file.clone(),
            source,
        })?;
    artifact
        .check(bytes.len() as u64, Sha256::of_bytes(&bytes))
        .map_err(|mismatch| ImageMeasureError::ArtifactMismatch {
            role: role.into(),
            mismatch,
        })?;
    Ok(bytes)
}

/// The verified bytes a launch measurement depends on: kernel, initramfs, command line and
/// the firmware of each platform asked for. (Rootfs and model are measured through the
/// command line's verity root hashes, so they are not read.)
#[derive(Clone)]
pub struct ImageInputs {
    /// The kernel (bzImage with EFI stub).
    pub kernel: Vec<u8>,
    /// The initramfs.
    pub initrd: Vec<u8>,
    /// The kernel command line, as booted.
    pub cmdline: String,
    /// The TDVF image, when TDX was asked for.
    pub tdx_firmware: Option<Vec<u8>>,
    /// The SNP OVMF image, when SNP was asked for.
    pub snp_firmware: Option<Vec<u8>>,
}

impl std::fmt::Debug for ImageInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = |v: &Option<Vec<u8>>| v.as_ref().map(Vec::len);
        f.debug_struct("ImageInputs")
            .field("kernel_len", &self.kernel.len())
            .field("initrd_len", &self.initrd.len())
            .field("cmdline", &self.cmdline)
            .field("tdx_firmware_len", &len(&self.tdx_firmware))
            .field("snp_firmware_len", &len(&self.snp_firmware))
            .finish()
    }
}

impl ImageInputs {
    /// Reads and verifies what measuring `manifest` on `platforms` needs.
    ///
    /// Fails with [`ImageMeasureError::NoFirmware`] when a platform asked for has no firmware
    /// in the manifest, and with [`ImageMeasureError::ArtifactMismatch`] when any byte differs.
    pub fn read(
        manifest: &Manifest,
        platforms: &[Platform],
        source: &mut dyn ArtifactSource,
    ) -> Result<Self, ImageMeasureError> {
        let mut firmware = |platform: Platform| -> Result<Option<Vec<u8>>, ImageMeasureError> {
            if !platforms.contains(&platform) {
                return Ok(None);
            }
            let role = firmware_role(platform);
            let artifact = manifest
                .firmware
                .get(role)
                .ok_or(ImageMeasureError::NoFirmware { platform, role })?;
            read_verified(source, &format!("firmware {role}"), artifact).map(Some)
        };
        let tdx_firmware = firmware(Platform::Tdx)?;
        let snp_firmware = firmware(Platform::Snp)?;
        let a = &manifest.artifacts;
        Ok(Self {
            kernel: read_verified(source, "kernel", &a.kernel)?,
            initrd: read_verified(source, "initramfs", &a.initramfs)?,
            cmdline: manifest.kernel_cmdline.clone(),
            tdx_firmware,
            snp_firmware,
        })
    }

    /// [`ImageInputs::read`] from the files in `image`'s directory.
    pub fn from_dir(image: &ImageDir, platforms: &[Platform]) -> Result<Self, ImageMeasureError> {
        let mut read = |a: &Artifact| std::fs::read(image.path_of(a));
        Self::read(&image.manifest, platforms, &mut read)
    }

    /// The verified firmware of `platform`, or [`ImageMeasureError::NoFirmware`].
    pub fn firmware(&self, platform: Platform) -> Result<&[u8], ImageMeasureError> {
        let fw = match platform {
            Platform::Tdx => &self.tdx_firmware,
            Platform::Snp => &self.snp_firmware,
        };
        fw.as_deref().ok_or(ImageMeasureError::NoFirmware {
            platform,
            role: firmware_role(platform),
        })
    }
}

/// The [`Manifest::firmware`] key of a platform's firmware.
pub fn firmware_role(platform: Platform) -> &'static str {
    match platform {
        Platform::Tdx => FIRMWARE_TDX,
        Platform::Snp => FIRMWARE_SNP,
    }
}

/// The shape-independent TDX expectation of an image (RTMR0 not pinned), with the RTMR1/RTMR2
/// events in log order for an event-by-event comparison.
pub fn tdx_image(inputs: &ImageInputs) -> Result<ExpectedTdx, ImageMeasureError> {
    let boot = TdxBootInputs {
        firmware: inputs.firmware(Platform::Tdx)?,
        kernel: &inputs.kernel,
        initrd: Some(&inputs.initrd),
        cmdline: &inputs.cmdline,
        rtmr0: Rtmr0Source::NotPinned,
        page_add_order: PageAddOrder::default(),
    };
    Ok(expected_tdx(&boot)?)
}

/// The manifest entry for one TDX shape, from [`tdx_image`]'s result, with the shape's RTMR0 as
/// given (no calculation: see [`tdx_expected`] for the entry with RTMR0 computed).
pub fn tdx_for_shape(image: &ExpectedTdx, shape: &TdxShape) -> TdxExpected {
    let mut registers = image.registers;
    registers.rtmr[0] = shape.rtmr0.unwrap_or(Measurement::ZERO);
    TdxExpected {
        shape: shape.shape.clone(),
        firmware: FIRMWARE_TDX.into(),
        registers,
        rtmr0_pinned: shape.rtmr0.is_some(),
        qemu_version: None,
        qemu_machine: None,
    }
}

/// The RTMR0 events of the image's TDVF booted under `vmm` with `shape` (no GPUs), in log
/// order: computed from the firmware's TDVF metadata and CFV, the TD HOB QEMU builds for the
/// memory size, and QEMU's captured ACPI tables. An unmodelled VMM or shape is an error naming
/// it.
pub fn tdx_rtmr0_events(
    inputs: &ImageInputs,
    shape: &VmShape,
    vmm: &QemuMachine,
) -> Result<Vec<Event>, ImageMeasureError> {
    let acpi_shape = AcpiShape {
        vcpus: shape.vcpus,
        memory_mib: shape.memory_mib,
        gpus: 0,
    };
    let acpi = acpi_files(vmm, &acpi_shape)?;
    let firmware = inputs.firmware(Platform::Tdx)?;
    let metadata = TdvfMetadata::parse(firmware)?;
    let label = format!("{vmm}, {acpi_shape}");
    Ok(rtmr0_events(
        firmware,
        &metadata,
        shape.memory_mib,
        &acpi,
        &label,
    )?)
}

/// The TDX expectation of the image for one VM shape under `vmm`: [`tdx_image`] with RTMR0
/// computed and its events added (before the RTMR1/RTMR2 events), for `explain`.
pub fn tdx_image_for_shape(
    inputs: &ImageInputs,
    shape: &VmShape,
    vmm: &QemuMachine,
) -> Result<ExpectedTdx, ImageMeasureError> {
    let mut image = tdx_image(inputs)?;
    let mut events = tdx_rtmr0_events(inputs, shape, vmm)?;
    image.pin_rtmr0(rtmr0(&events));
    events.append(&mut image.events);
    image.events = events;
    Ok(image)
}

/// The manifest entry for one TDX shape with RTMR0: the shape's captured value when it has one,
/// otherwise computed for the `tdx` profile's VMM ([`TDX_VMM`]); a shape that is not modelled
/// is an error, never an unpinned RTMR0.
pub fn tdx_expected(
    inputs: &ImageInputs,
    image: &ExpectedTdx,
    shape: &TdxShape,
) -> Result<TdxExpected, ImageMeasureError> {
    let mut e = tdx_for_shape(image, shape);
    if !e.rtmr0_pinned {
        let events = tdx_rtmr0_events(inputs, &shape.shape, &TDX_VMM)?;
        e.registers.rtmr[0] = rtmr0(&events);
        e.rtmr0_pinned = true;
        e.qemu_version = Some(TDX_VMM.qemu_version.into());
        e.qemu_machine = Some(TDX_VMM.machine_type.into());
    }
    Ok(e)
}

/// The launch digest of the image for one SNP shape. `ovmf_hash` ([`snp_ovmf_hash`] of the
/// SNP firmware) saves rehashing the firmware across shapes; it is not checked.
pub fn snp_for_shape(
    inputs: &ImageInputs,
    shape: &SnpShape,
    ovmf_hash: Option<Measurement>,
) -> Result<SnpExpected, ImageMeasureError> {
    let launch = SnpLaunchInputs {
        kernel: Some(&inputs.kernel),
        initrd: Some(&inputs.initrd),
        cmdline: Some(&inputs.cmdline),
        guest_features: shape.guest_features,
        ovmf_hash,
        ..SnpLaunchInputs::new(
            inputs.firmware(Platform::Snp)?,
            shape.shape.vcpus,
            shape.vcpu_type,
        )
    };
    Ok(SnpExpected {
        shape: shape.shape.clone(),
        vcpu_type: shape.vcpu_type.to_string(),
        guest_features: shape.guest_features,
        firmware: FIRMWARE_SNP.into(),
        measurement: snp_launch_digest(&launch)?,
    })
}

/// Expected measurements of `manifest` for the given shapes, reading and verifying its
/// artifacts through `source`. A platform with no shapes is skipped (its firmware is not
/// needed); one with shapes but no firmware in the manifest is an error.
pub fn expected_measurements(
    manifest: &Manifest,
    tdx_shapes: &[TdxShape],
    snp_shapes: &[SnpShape],
    source: &mut dyn ArtifactSource,
) -> Result<ExpectedMeasurements, ImageMeasureError> {
    let mut platforms = Vec::new();
    if !tdx_shapes.is_empty() {
        platforms.push(Platform::Tdx);
    }
    if !snp_shapes.is_empty() {
        platforms.push(Platform::Snp);
    }
    let inputs = ImageInputs::read(manifest, &platforms, source)?;
    let mut out = ExpectedMeasurements::default();
    if !tdx_shapes.is_empty() {
        let image = tdx_image(&inputs)?;
        out.tdx = tdx_shapes
            .iter()
            .map(|s| tdx_expected(&inputs, &image, s))
            .collect::<Result<_, _>>()?;
    }
    if !snp_shapes.is_empty() {
        let ovmf_hash = snp_ovmf_hash(inputs.firmware(Platform::Snp)?)?;
        out.snp = snp_shapes
            .iter()
            .map(|s| snp_for_shape(&inputs, s, Some(ovmf_hash)))
            .collect::<Result<_, _>>()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;
    use chrysalis_testkit::fixtures::{efi_pe, registry_file, tdvf_from_sev_suffix};
    use std::collections::BTreeMap;

    /// A manifest whose kernel, initramfs and firmware are real bytes held in a map.
    fn image() -> (Manifest, BTreeMap<String, Vec<u8>>) {
        let mut m = sample();
        let mut files = BTreeMap::new();
        let mut put = |m: &mut Manifest, role: &str, file: &str, bytes: Vec<u8>| {
            let a = Artifact {
                file: file.into(),
                size: bytes.len() as u64,
                sha256: Sha256::of_bytes(&bytes),
            };
            match role {
                "kernel" => m.artifacts.kernel = a,
                "initramfs" => m.artifacts.initramfs = a,
                fw => {
                    m.firmware.insert(fw.into(), a);
                }
            }
            files.insert(file.to_owned(), bytes);
        };
        put(&mut m, "kernel", "vmlinuz", efi_pe(0x90, b"kernel"));
        put(
            &mut m,
            "initramfs",
            "initramfs.cpio.gz",
            b"initramfs bytes".to_vec(),
        );
        put(&mut m, FIRMWARE_TDX, "tdvf.fd", tdvf_from_sev_suffix());
        put(
            &mut m,
            FIRMWARE_SNP,
            "ovmf-snp.fd",
            registry_file("sev", "tests/measurement/ovmf_AmdSev_suffix.bin"),
        );
        (m, files)
    }

    fn source(
        files: &BTreeMap<String, Vec<u8>>,
    ) -> impl FnMut(&Artifact) -> Result<Vec<u8>, String> + '_ {
        |a| files.get(&a.file).cloned().ok_or(format!("no {}", a.file))
    }

    #[test]
    fn default_shapes_are_measured_with_the_calculators() {
        let (m, files) = image();
        let e = expected_measurements(
            &m,
            &default_tdx_shapes(),
            &default_snp_shapes(),
            &mut source(&files),
        )
        .unwrap();
        assert_eq!(e.tdx.len(), 4);
        assert_eq!(e.snp.len(), 12);
        let direct = expected_tdx(&TdxBootInputs {
            firmware: &files["tdvf.fd"],
            kernel: &files["vmlinuz"],
            initrd: Some(&files["initramfs.cpio.gz"]),
            cmdline: &m.kernel_cmdline,
            rtmr0: Rtmr0Source::NotPinned,
            page_add_order: PageAddOrder::PerPage,
        })
        .unwrap();
        for t in &e.tdx {
            assert_eq!(t.registers.mr_td, direct.registers.mr_td);
            assert_eq!(t.registers.rtmr[1..], direct.registers.rtmr[1..]);
            // RTMR0: the calculator's, for the tdx profile's QEMU and the shape.
            let fw = &files["tdvf.fd"];
            let md = crate::measure::tdx::TdvfMetadata::parse(fw).unwrap();
            let acpi = acpi_files(
                &TDX_VMM,
                &AcpiShape {
                    vcpus: t.shape.vcpus,
                    memory_mib: t.shape.memory_mib,
                    gpus: 0,
                },
            )
            .unwrap();
            let events = rtmr0_events(fw, &md, t.shape.memory_mib, &acpi, "x").unwrap();
            assert_eq!(t.rtmr0(), Some(rtmr0(&events)), "{:?}", t.shape);
            assert_eq!(t.qemu_machine.as_deref(), Some("pc-q35-10.0"));
        }
        // Every shape has its own RTMR0 (vCPUs reach the ACPI tables, memory the TD HOB and
        // the DSDT).
        let mut r0: Vec<_> = e.tdx.iter().map(|t| t.rtmr0()).collect();
        r0.dedup();
        assert_eq!(r0.len(), 4);
        // A shape that is not modelled is an error naming it, even among modelled ones.
        let mut shapes = default_tdx_shapes();
        shapes[1].shape.vcpus = 3;
        let err = expected_measurements(&m, &shapes, &[], &mut source(&files)).unwrap_err();
        assert!(
            matches!(err, ImageMeasureError::UnsupportedVmm(_)),
            "{err:?}"
        );
        let chain = std::error::Error::source(&err).unwrap().to_string();
        assert!(chain.contains("3 vCPU, 4096 MiB"), "{chain}");
        // A captured value is taken as given.
        shapes[1].rtmr0 = Some(Measurement([9; 48]));
        let captured = expected_measurements(&m, &shapes, &[], &mut source(&files)).unwrap();
        assert_eq!(captured.tdx[1].rtmr0(), Some(Measurement([9; 48])));
        assert_eq!(captured.tdx[1].qemu_machine, None);
        for s in &e.snp {
            let vcpu_type: SnpVcpuType = s.vcpu_type.parse().unwrap();
            let direct = snp_launch_digest(&SnpLaunchInputs {
                kernel: Some(&files["vmlinuz"]),
                initrd: Some(&files["initramfs.cpio.gz"]),
                cmdline: Some(&m.kernel_cmdline),
                ..SnpLaunchInputs::new(&files["ovmf-snp.fd"], s.shape.vcpus, vcpu_type)
            })
            .unwrap();
            assert_eq!(s.measurement, direct, "{s:?}");
        }
        // vCPU count and model enter the SNP digest; memory does not.
        assert_ne!(e.snp[0].measurement, e.snp[1].measurement);
        assert_eq!(e.snp[0].measurement, e.snp[3].measurement);
        assert_ne!(e.snp[0].measurement, e.snp[6].measurement);
    }

    #[test]
    fn a_changed_artifact_is_named_with_both_hashes() {
        let (m, mut files) = image();
        files.get_mut("initramfs.cpio.gz").unwrap()[0] ^= 1;
        let err =
            expected_measurements(&m, &default_tdx_shapes(), &[], &mut source(&files)).unwrap_err();
        let want = m.artifacts.initramfs.sha256;
        let got = Sha256::of_bytes(&files["initramfs.cpio.gz"]);
        assert!(
            matches!(&err, ImageMeasureError::ArtifactMismatch { role, mismatch: m }
                if role == "initramfs" && m.file == "initramfs.cpio.gz" && m.expected == want && m.actual == got),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&want.to_string()) && msg.contains(&got.to_string()),
            "{msg}"
        );
    }

    #[test]
    fn only_the_platforms_asked_for_need_firmware() {
        let (mut m, files) = image();
        m.firmware.remove(FIRMWARE_SNP);
        let e = expected_measurements(&m, &default_tdx_shapes(), &[], &mut source(&files)).unwrap();
        assert!(e.snp.is_empty() && e.tdx.len() == 4);
        let err =
            expected_measurements(&m, &[], &default_snp_shapes(), &mut source(&files)).unwrap_err();
        assert!(
            matches!(
                err,
                ImageMeasureError::NoFirmware {
                    platform: Platform::Snp,
                    role: "snp"
                }
            ),
            "{err}"
        );
        let err = expected_measurements(&m, &default_tdx_shapes(), &[], &mut |_: &Artifact| {
            Err::<Vec<u8>, _>(std::io::Error::other("disk gone"))
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("firmware tdx artifact tdvf.fd"),
            "{err}"
        );
    }
}
