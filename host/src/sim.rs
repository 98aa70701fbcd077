//! The host playing the TDX hardware in the `sim` profile: measurements of the exact artifacts the
//! agent launches, computed as a TDX direct boot would extend them, quoted by the simulated Intel
//! PKI (`chrysalis_attestation::sim`) over the guest's report_data.
//!
//! What the quote carries, register by register ("as if on TDX"):
//!
//! * MRTD: `measure::tdx::mr_td` of the manifest's TDX firmware (`firmware.tdx`, or
//!   `services.sim_quote.tdx_firmware` when the manifest has none). The sim VM itself boots with
//!   SeaBIOS; the TDVF image is measured, not run, so the value equals what a TDX host running the
//!   same image would produce.
//! * RTMR1, RTMR2: `measure::tdx::expected_tdx`, through `measure::image::tdx_image` as the image
//!   build computes `expected_measurements`, over the kernel, the initramfs and the manifest's
//!   kernel command line, the same bytes and string QEMU is given. One changed initramfs byte or
//!   command-line character changes RTMR2; one changed kernel byte changes RTMR1.
//! * RTMR0: not predictable from artifacts (TDVF measures QEMU's ACPI tables and TD HOB there).
//!   The calculator's answer is used as it is: the value the manifest pins for this VM shape
//!   (`expected_measurements.tdx[]` with the same vCPUs, memory and firmware role) when it pins
//!   one, otherwise none, which the quote carries as 48 zero bytes. A policy built from the
//!   manifest (`Manifest::tdx_pins`) pins RTMR0 exactly when the manifest does, so both agree.
//! * RTMR3 zero; MRCONFIGID, MROWNER, MROWNERCONFIG zero; TD_ATTRIBUTES and XFAM exactly those
//!   every chrysalis TD is launched with (`tdx_attributes::LAUNCH_TD_ATTRIBUTES`, SEPT_VE_DISABLE
//!   only, and `LAUNCH_XFAM`), which `Manifest::tdx_pins` pins; the simulated MRSEAM
//!   (`sim::td_measurements`).
//!
//! The artifacts are read once, when the signer is built, and checked byte for byte against the
//! manifest's digests, so the measured bytes are the manifest's bytes. Collateral is issued from
//! the clock passed in (never a hidden one), a minute in the past, valid for a short period.
//!
//! In the `sim-snp` profile the host plays the AMD PSP instead ([`SimSnpSigner`]): every report
//! carries MEASUREMENT = `measure::image::snp_for_shape` of the manifest's AmdSev OVMF
//! (`firmware.snp`, or `services.sim_quote.snp_firmware`), kernel, initramfs and command line for
//! the configured vCPUs and vCPU model (`services.sim_quote.snp_vcpu_type`, default EPYC-v4) with
//! SEV_FEATURES = SNPActive: the value `chrysalis measure --platform snp` and the image build
//! compute. HOST_DATA zero, guest policy 0x30000 (`sim::SIM_GUEST_POLICY`), VMPL 0, and reported,
//! committed, launch and current TCB equal to the simulated VCEK's (`sim::SIM_SNP_TCB`); signed by
//! the simulated AMD PKI (`sim::SimAmdPki`) of the same seed.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use chrysalis_attestation::manifest::{TdxExpected, VmShape};
use chrysalis_attestation::measure::image::{
    DEFAULT_SNP_GUEST_FEATURES, ImageInputs, ImageMeasureError, SnpShape, snp_for_shape, tdx_image,
};
use chrysalis_attestation::measure::snp::SnpVcpuType;
use chrysalis_attestation::sim::{self, SimAmdPki, SimError, SimPki, SimSnpReport, SimTdReport};
use chrysalis_attestation::{Measurement, ReportData, Sha256, TdxMeasurements, TdxRegisters};
use dcap_qvl::QuoteCollateralV3;
use serde::Serialize;

use crate::image::{self, FIRMWARE_SNP, FIRMWARE_TDX, ImageError};
use crate::services::{QuoteSigner, SimQuote, SimSnpEvidence, SnpReportSigner};
use chrysalis_attestation::manifest::ImageDir;

/// How far in the past collateral is dated, so that a verifier whose clock is a little behind the
/// host's still accepts it.
pub const COLLATERAL_BACKDATE: Duration = Duration::from_secs(60);

/// Errors of building the sim quote signer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimSignerError {
    /// An artifact could not be read or differs from the manifest.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The manifest has no TDX firmware and host.toml names none.
    #[error(
        "services.sim_quote: the image manifest lists no firmware \"tdx\" (TDVF) to compute MRTD from; set services.sim_quote.tdx_firmware"
    )]
    NoTdxFirmware,
    /// `services.sim_quote.tdx_firmware` could not be read.
    #[error("services.sim_quote.tdx_firmware: reading {path}")]
    FirmwareRead {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The calculator refused the artifacts (not a TDVF image, not an EFI PE kernel, ...).
    #[error("computing the TDX measurements of the launched artifacts")]
    Measure(#[from] ImageMeasureError),
    /// The seed is not hex.
    #[error("services.sim_quote.seed_hex: not hex")]
    Seed,
    /// The simulated PKI could not issue collateral.
    #[error("issuing simulated collateral")]
    Collateral(#[from] SimError),
    /// sim-snp: the manifest has no SNP firmware and host.toml names none.
    #[error(
        "services.sim_quote: the image manifest lists no firmware \"snp\" (AmdSev OVMF) to compute the launch digest from; set services.sim_quote.snp_firmware"
    )]
    NoSnpFirmware,
    /// sim-snp: `services.sim_quote.snp_vcpu_type` is not a vCPU model the calculator knows.
    #[error("services.sim_quote.snp_vcpu_type: {0}")]
    VcpuType(String),
}

/// What the sim quote service quotes, as /status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SimMeasurements {
    /// MRTD and RTMR0..3 as quoted (RTMR0 zero unless the manifest pins it for this shape);
    /// shown flat (`mr_td`, `rtmr`).
    #[serde(flatten)]
    pub registers: TdxRegisters,
    /// Whether RTMR0 came from the manifest's pin for this VM shape.
    pub rtmr0_pinned: bool,
    /// Which firmware was measured: `manifest:tdx` or the configured file.
    pub firmware: String,
    /// SHA-256 of the simulated root certificate: what a client policy names in
    /// `dangerous_simulated_intel_roots`.
    pub sim_root_sha256: Sha256,
    /// Whether these equal the manifest's `expected_measurements` for this shape (`None` when the
    /// manifest states none for it).
    pub matches_manifest: Option<bool>,
}

/// Computes what a TD booted from `image` with `shape` reports, with `firmware` as its TDVF; the
/// flag says whether RTMR0 came from the manifest's pin for `shape` (else it is zero). Reads the
/// kernel and initramfs and fails if their bytes differ from the manifest.
pub fn tdx_measurements(
    image: &ImageDir,
    firmware: &[u8],
    shape: &VmShape,
) -> Result<(TdxMeasurements, bool), SimSignerError> {
    let arts = &image.manifest.artifacts;
    // The same function the image build uses for `expected_measurements`, so the two agree.
    let expected = tdx_image(&ImageInputs {
        kernel: image::read_verified(image, &arts.kernel)?,
        initrd: image::read_verified(image, &arts.initramfs)?,
        cmdline: image.manifest.kernel_cmdline.clone(),
        tdx_firmware: Some(firmware.to_vec()),
        snp_firmware: None,
    })?;
    // RTMR0 is not predicted from the artifacts: the manifest's pin for the shape, else zero.
    let mut registers = expected.registers;
    let pinned_rtmr0 = shape_entry(image, shape).and_then(TdxExpected::rtmr0);
    registers.rtmr[0] = pinned_rtmr0.unwrap_or(Measurement::ZERO);
    Ok((
        sim::td_measurements(registers.mr_td, registers.rtmr),
        pinned_rtmr0.is_some(),
    ))
}

fn shape_entry<'a>(image: &'a ImageDir, shape: &VmShape) -> Option<&'a TdxExpected> {
    image
        .manifest
        .expected_measurements
        .as_ref()?
        .tdx
        .iter()
        .find(|e| e.shape == *shape && e.firmware == FIRMWARE_TDX)
}

/// The sim quote signer: the simulated PKI of one seed and the measurements of one image.
pub struct SimTdxSigner {
    pki: SimPki,
    measurements: TdxMeasurements,
    status: SimMeasurements,
    collateral_validity: Duration,
    clock: fn() -> SystemTime,
}

impl std::fmt::Debug for SimTdxSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTdxSigner")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl SimTdxSigner {
    /// Builds the signer for `image` booted with `shape`. `seed` selects the simulated PKI
    /// ([`sim::DEFAULT_SEED`] unless configured); `tdx_firmware` is used only when the manifest lists
    /// no `tdx` firmware. Collateral is issued at `clock() - COLLATERAL_BACKDATE` and valid for
    /// `collateral_validity`.
    pub fn new(
        image: &ImageDir,
        shape: &VmShape,
        seed: &[u8],
        tdx_firmware: Option<&std::path::Path>,
        collateral_validity: Duration,
        clock: fn() -> SystemTime,
    ) -> Result<Self, SimSignerError> {
        let (firmware, label) = match (image.firmware(FIRMWARE_TDX), tdx_firmware) {
            (Some(a), _) => (
                image::read_verified(image, a)?,
                format!("manifest:{FIRMWARE_TDX}"),
            ),
            (None, Some(path)) => (
                std::fs::read(path).map_err(|source| SimSignerError::FirmwareRead {
                    path: path.into(),
                    source,
                })?,
                path.display().to_string(),
            ),
            (None, None) => return Err(SimSignerError::NoTdxFirmware),
        };
        let (measurements, rtmr0_pinned) = tdx_measurements(image, &firmware, shape)?;
        let pki = SimPki::from_seed(seed);
        let matches_manifest =
            shape_entry(image, shape).map(|e| e.matches(&measurements.registers));
        if matches_manifest == Some(false) {
            tracing::warn!(
                "the sim measurements of the verified artifacts differ from the manifest's expected_measurements for this shape; clients pinning the manifest will reject this guest"
            );
        }
        let status = SimMeasurements {
            registers: measurements.registers,
            rtmr0_pinned,
            firmware: label,
            sim_root_sha256: pki.root_sha256(),
            matches_manifest,
        };
        Ok(Self {
            pki,
            measurements,
            status,
            collateral_validity: collateral_validity.max(Duration::from_secs(1)),
            clock,
        })
    }

    /// The seed bytes of `services.sim_quote.seed_hex`, or [`sim::DEFAULT_SEED`].
    pub fn seed_bytes(seed_hex: Option<&str>) -> Result<Vec<u8>, SimSignerError> {
        match seed_hex {
            Some(h) => hex::decode(h).map_err(|_| SimSignerError::Seed),
            None => Ok(sim::DEFAULT_SEED.to_vec()),
        }
    }

    /// The registers every quote carries.
    pub fn measurements(&self) -> &TdxMeasurements {
        &self.measurements
    }

    /// What /status shows.
    pub fn status(&self) -> &SimMeasurements {
        &self.status
    }

    /// The simulated root certificate (DER): the trust anchor a test or client gives the verifier.
    pub fn root_der(&self) -> &[u8] {
        self.pki.root_der()
    }

    /// Collateral issued now (by the signer's clock) minus [`COLLATERAL_BACKDATE`], valid for the
    /// configured period from then.
    pub fn collateral(&self) -> Result<QuoteCollateralV3, SimError> {
        let now = (self.clock)()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let issued = now.saturating_sub(COLLATERAL_BACKDATE.as_secs());
        self.pki.collateral(
            issued,
            self.collateral_validity.as_secs() + COLLATERAL_BACKDATE.as_secs(),
        )
    }

    /// How long issued collateral stays valid after "now".
    pub fn collateral_validity(&self) -> Duration {
        self.collateral_validity
    }
}

impl QuoteSigner for SimTdxSigner {
    fn quote(
        &self,
        report_data: &ReportData,
    ) -> Result<SimQuote, Box<dyn std::error::Error + Send + Sync>> {
        let quote = self
            .pki
            .quote(&SimTdReport::new(self.measurements.clone(), *report_data));
        Ok(SimQuote {
            quote,
            collateral: Some(self.collateral()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrysalis_attestation::measure::tdx::{
        PageAddOrder, Rtmr0Source, TdxBootInputs, expected_tdx,
    };
    use chrysalis_attestation::policy::TdxPin;
    use chrysalis_attestation::{Evidence, Policy, TrustAnchors};
    use chrysalis_testkit::image::TestImage;

    const SHAPE: VmShape = VmShape {
        vcpus: 2,
        memory_mib: 2048,
    };

    fn signer(dir: &std::path::Path) -> SimTdxSigner {
        let img = image::load(&dir.join("manifest.json")).unwrap();
        SimTdxSigner::new(
            &img,
            &SHAPE,
            sim::DEFAULT_SEED,
            None,
            Duration::from_secs(600),
            SystemTime::now,
        )
        .unwrap()
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// The calculator's own answer for the test image, computed here from the files directly.
    fn calculator(dir: &std::path::Path) -> chrysalis_attestation::measure::tdx::ExpectedTdx {
        let m = TestImage::write(&dir.join("calc")).unwrap().parsed;
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        expected_tdx(&TdxBootInputs {
            firmware: &read("ovmf-tdx.fd"),
            kernel: &read("vmlinuz"),
            initrd: Some(&read("initramfs.cpio.gz")),
            cmdline: &m.kernel_cmdline,
            rtmr0: Rtmr0Source::NotPinned,
            page_add_order: PageAddOrder::PerPage,
        })
        .unwrap()
    }

    #[test]
    fn quotes_verify_against_the_sim_root_with_a_policy_pinning_the_calculator() {
        let dir = tempfile::tempdir().unwrap();
        TestImage::write(dir.path()).unwrap();
        let s = signer(dir.path());
        let want = calculator(dir.path());
        // RTMR0 unpinned: the calculator's zero, as quoted.
        assert_eq!(s.measurements().registers, want.registers);

        let rd = ReportData([0x5a; 64]);
        let q = s.quote(&rd).unwrap();
        let bundle = Evidence::tdx(q.quote, q.collateral).unwrap();
        let now = unix_now();
        let anchors =
            TrustAnchors::none().dangerous_with_simulated_intel_root(s.status().sim_root_sha256);
        let verdict = chrysalis_attestation::verify::verify(&bundle, &anchors, None, now).unwrap();

        let pin = TdxPin::from_registers(&want.registers, false);
        let mut policy = Policy::pinned(vec![pin], vec![]);
        policy
            .trust
            .dangerous_simulated_intel_roots
            .push(s.status().sim_root_sha256);
        let ok = policy.evaluate(verdict, &rd).unwrap();
        assert_eq!(ok.verdict().report_data, rd);

        // The same quote under a policy pinning another RTMR2 is rejected.
        let q = s.quote(&rd).unwrap();
        let bundle = Evidence::tdx(q.quote, q.collateral).unwrap();
        let verdict = chrysalis_attestation::verify::verify(&bundle, &anchors, None, now).unwrap();
        let mut other = TdxPin::new(want.registers.mr_td);
        other.rtmr2 = Some(Measurement([9; 48]));
        let mut policy = Policy::pinned(vec![other], vec![]);
        policy
            .trust
            .dangerous_simulated_intel_roots
            .push(s.status().sim_root_sha256);
        assert!(policy.evaluate(verdict, &rd).is_err());
    }

    #[test]
    fn one_initrd_byte_or_cmdline_change_changes_the_quoted_registers() {
        let dir = tempfile::tempdir().unwrap();
        TestImage::write(dir.path()).unwrap();
        let base = signer(dir.path()).measurements().registers;

        // Flip one initramfs byte and rewrite the manifest to match (a different, consistent image).
        let edited = tempfile::tempdir().unwrap();
        TestImage::write(edited.path()).unwrap();
        let initrd = edited.path().join("initramfs.cpio.gz");
        let mut bytes = std::fs::read(&initrd).unwrap();
        bytes[3] ^= 0x01;
        std::fs::write(&initrd, &bytes).unwrap();
        let mut m = image::load(&edited.path().join("manifest.json"))
            .unwrap()
            .manifest;
        m.artifacts.initramfs.sha256 = Sha256::digest(&bytes);
        std::fs::write(edited.path().join("manifest.json"), m.to_json()).unwrap();
        let flipped = signer(edited.path()).measurements().registers;
        assert_eq!(flipped.mr_td, base.mr_td);
        assert_eq!(flipped.rtmr[1], base.rtmr[1]);
        assert_ne!(
            flipped.rtmr[2], base.rtmr[2],
            "RTMR2 must change with the initrd"
        );

        // The same byte flipped without updating the manifest is refused, naming the file.
        let stale = tempfile::tempdir().unwrap();
        TestImage::write(stale.path()).unwrap();
        std::fs::write(stale.path().join("initramfs.cpio.gz"), &bytes).unwrap();
        let img = image::load(&stale.path().join("manifest.json")).unwrap();
        let err = SimTdxSigner::new(
            &img,
            &SHAPE,
            sim::DEFAULT_SEED,
            None,
            Duration::from_secs(60),
            SystemTime::now,
        )
        .unwrap_err();
        let msg = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(msg.contains("initramfs.cpio.gz"), "{msg}");

        // A different command line (one more base argument) changes RTMR2 as well.
        let other = tempfile::tempdir().unwrap();
        TestImage::write_with(other.path(), |m| {
            m.kernel_cmdline = format!("quiet {}", m.kernel_cmdline);
        })
        .unwrap();
        let cmd = signer(other.path()).measurements().registers;
        assert_ne!(cmd.rtmr[2], base.rtmr[2]);
        assert_eq!(cmd.rtmr[1], base.rtmr[1]);
    }

    #[test]
    fn rtmr0_follows_the_manifest_pin_for_the_shape_and_seeds_select_the_root() {
        use chrysalis_attestation::manifest::ExpectedMeasurements;
        let dir = tempfile::tempdir().unwrap();
        TestImage::write_with(dir.path(), |m| {
            m.expected_measurements = Some(ExpectedMeasurements {
                tdx: vec![TdxExpected {
                    shape: SHAPE,
                    firmware: FIRMWARE_TDX.into(),
                    registers: TdxRegisters {
                        mr_td: Measurement([1; 48]),
                        rtmr: [7, 2, 3, 0].map(|b| Measurement([b; 48])),
                    },
                    rtmr0_pinned: true,
                    qemu_version: None,
                    qemu_machine: None,
                }],
                snp: vec![],
            });
        })
        .unwrap();
        let s = signer(dir.path());
        assert_eq!(s.measurements().registers.rtmr[0], Measurement([7; 48]));
        assert!(s.status().rtmr0_pinned);
        // The stated values are made up, so they do not match what the artifacts give.
        assert_eq!(s.status().matches_manifest, Some(false));

        let img = image::load(&dir.path().join("manifest.json")).unwrap();
        let other = SimTdxSigner::new(
            &img,
            &VmShape {
                vcpus: 4,
                memory_mib: 2048,
            },
            &[9; 32],
            None,
            Duration::from_secs(60),
            SystemTime::now,
        )
        .unwrap();
        assert_eq!(other.measurements().registers.rtmr[0], Measurement::ZERO);
        assert_eq!(other.status().matches_manifest, None);
        assert_ne!(other.status().sim_root_sha256, s.status().sim_root_sha256);
    }

    #[test]
    fn the_quote_matches_what_the_image_build_writes_into_the_manifest() {
        use chrysalis_attestation::measure::image::{default_tdx_shapes, expected_measurements};
        let dir = tempfile::tempdir().unwrap();
        let t = TestImage::write(dir.path()).unwrap();
        let mut m = t.parsed.clone();
        let mut read =
            |a: &chrysalis_attestation::manifest::Artifact| std::fs::read(dir.path().join(&a.file));
        m.expected_measurements =
            Some(expected_measurements(&m, &default_tdx_shapes(), &[], &mut read).unwrap());
        std::fs::write(&t.manifest, m.to_json()).unwrap();
        // SHAPE (2 vCPUs, 2048 MiB) is one of the default shapes the build measures.
        let s = signer(dir.path());
        assert_eq!(s.status().matches_manifest, Some(true));
        let img = image::load(&t.manifest).unwrap();
        let pins = img.manifest.tdx_pins();
        let pin = pins
            .iter()
            .find(|p| p.name.as_deref().unwrap().contains("2 vCPU, 2048 MiB"))
            .unwrap();
        let q = s.measurements();
        // The image build computes RTMR0 for the shape; the sim quote carries the pinned value.
        assert!(pin.rtmr0.is_some());
        assert!(pin.diff(q, false).is_empty(), "{:?}", pin.diff(q, false));
        // The quote carries exactly the TD attributes and XFAM the manifest's policy pins.
        assert_eq!(
            (pin.td_attributes, pin.xfam),
            (Some(q.td_attributes), Some(q.xfam))
        );
    }

    #[test]
    fn collateral_is_short_lived_from_the_clock_given() {
        let dir = tempfile::tempdir().unwrap();
        TestImage::write(dir.path()).unwrap();
        let img = image::load(&dir.path().join("manifest.json")).unwrap();
        fn then() -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
        }
        let s = SimTdxSigner::new(
            &img,
            &SHAPE,
            sim::DEFAULT_SEED,
            None,
            Duration::from_secs(600),
            then,
        )
        .unwrap();
        let c = s.collateral().unwrap();
        let next = crate::collateral::next_update(&c).unwrap();
        assert_eq!(next, then() + Duration::from_secs(600));
        let q = s.quote(&ReportData([1; 64])).unwrap();
        let verify = |at: u64| {
            dcap_qvl::verify::QuoteVerifier::new(s.root_der().to_vec()).verify(
                &q.quote,
                q.collateral.as_ref().unwrap(),
                at,
            )
        };
        assert!(verify(1_800_000_000).is_ok());
        assert!(
            verify(1_800_000_000 + 601).is_err(),
            "expired collateral must not verify"
        );
    }

    #[test]
    fn a_manifest_without_tdx_firmware_needs_the_configured_one() {
        let dir = tempfile::tempdir().unwrap();
        TestImage::write_with(dir.path(), |m| m.firmware.clear()).unwrap();
        let img = image::load(&dir.path().join("manifest.json")).unwrap();
        let err = SimTdxSigner::new(
            &img,
            &SHAPE,
            sim::DEFAULT_SEED,
            None,
            Duration::from_secs(60),
            SystemTime::now,
        )
        .unwrap_err();
        assert!(err.to_string().contains("tdx_firmware"), "{err}");
        let fw = dir.path().join("ovmf-tdx.fd");
        let s = SimTdxSigner::new(
            &img,
            &SHAPE,
            sim::DEFAULT_SEED,
            Some(&fw),
            Duration::from_secs(60),
            SystemTime::now,
        )
        .unwrap();
        assert_eq!(
            s.measurements().registers.mr_td,
            calculator(dir.path()).registers.mr_td
        );
        assert_eq!(s.status().firmware, fw.display().to_string());
    }
}

/// What the sim-snp service signs, as /status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SimSnpMeasurements {
    /// The launch digest every report carries.
    pub measurement: Measurement,
    /// The vCPU model it was computed for.
    pub vcpu_type: String,
    /// SEV_FEATURES it was computed for.
    pub guest_features: u64,
    /// Which firmware was measured: `manifest:snp` or the configured file.
    pub firmware: String,
    /// SHA-256 of the simulated ARK: what a client policy names in
    /// `dangerous_simulated_amd_roots`.
    pub sim_ark_sha256: Sha256,
    /// Whether the digest equals the manifest's `expected_measurements.snp` entry for this
    /// shape and vCPU model (`None` when the manifest states none for it).
    pub matches_manifest: Option<bool>,
}

/// The sim-snp report signer: the simulated AMD PKI of one seed and the launch digest of one
/// image.
pub struct SimSnpSigner {
    pki: SimAmdPki,
    status: SimSnpMeasurements,
}

impl std::fmt::Debug for SimSnpSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSnpSigner")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl SimSnpSigner {
    /// Builds the signer for `image` booted with `shape` on `vcpu_type` vCPUs. `seed` selects
    /// the simulated AMD PKI; `snp_firmware` is used only when the manifest lists no `snp`
    /// firmware. Reads the kernel, initramfs and firmware and fails if they differ from the
    /// manifest.
    pub fn new(
        image: &ImageDir,
        shape: &VmShape,
        vcpu_type: &str,
        seed: &[u8],
        snp_firmware: Option<&std::path::Path>,
    ) -> Result<Self, SimSignerError> {
        let vcpu: SnpVcpuType = vcpu_type.parse().map_err(
            |e: chrysalis_attestation::measure::snp::SnpMeasureError| {
                SimSignerError::VcpuType(e.to_string())
            },
        )?;
        let (firmware, label) = match (image.firmware(FIRMWARE_SNP), snp_firmware) {
            (Some(a), _) => (
                image::read_verified(image, a)?,
                format!("manifest:{FIRMWARE_SNP}"),
            ),
            (None, Some(path)) => (
                std::fs::read(path).map_err(|source| SimSignerError::FirmwareRead {
                    path: path.into(),
                    source,
                })?,
                path.display().to_string(),
            ),
            (None, None) => return Err(SimSignerError::NoSnpFirmware),
        };
        let arts = &image.manifest.artifacts;
        let inputs = ImageInputs {
            kernel: image::read_verified(image, &arts.kernel)?,
            initrd: image::read_verified(image, &arts.initramfs)?,
            cmdline: image.manifest.kernel_cmdline.clone(),
            tdx_firmware: None,
            snp_firmware: Some(firmware),
        };
        // The function the image build and `chrysalis measure --platform snp` use.
        let expected = snp_for_shape(
            &inputs,
            &SnpShape {
                shape: shape.clone(),
                vcpu_type: vcpu,
                guest_features: DEFAULT_SNP_GUEST_FEATURES,
            },
            None,
        )?;
        let matches_manifest = image
            .manifest
            .expected_measurements
            .as_ref()
            .and_then(|e| {
                e.snp.iter().find(|s| {
                    s.shape == *shape
                        && s.vcpu_type == expected.vcpu_type
                        && s.guest_features == expected.guest_features
                        && s.firmware == FIRMWARE_SNP
                })
            })
            .map(|s| s.measurement == expected.measurement);
        if matches_manifest == Some(false) {
            tracing::warn!(
                "the sim launch digest of the verified artifacts differs from the manifest's expected_measurements for this shape; clients pinning the manifest will reject this guest"
            );
        }
        let pki = SimAmdPki::from_seed(seed);
        let status = SimSnpMeasurements {
            measurement: expected.measurement,
            vcpu_type: expected.vcpu_type,
            guest_features: expected.guest_features,
            firmware: label,
            sim_ark_sha256: pki.ark_sha256(),
            matches_manifest,
        };
        Ok(Self { pki, status })
    }

    /// What /status shows.
    pub fn status(&self) -> &SimSnpMeasurements {
        &self.status
    }
}

impl SnpReportSigner for SimSnpSigner {
    fn snp_report(
        &self,
        report_data: &ReportData,
    ) -> Result<SimSnpEvidence, Box<dyn std::error::Error + Send + Sync>> {
        Ok(SimSnpEvidence {
            report: self
                .pki
                .report(&SimSnpReport::new(self.status.measurement, *report_data)),
            vcek: self.pki.vcek_der().to_vec(),
            chain: self.pki.chain_pem(),
        })
    }
}

#[cfg(test)]
mod snp_tests {
    use super::*;
    use chrysalis_attestation::{Evidence, Policy, TrustAnchors};
    use chrysalis_testkit::image::TestImage;

    const SHAPE: VmShape = VmShape {
        vcpus: 2,
        memory_mib: 2048,
    };

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// The sev crate's recorded AmdSev OVMF (its tests/measurement), found with cargo metadata.
    fn amdsev_ovmf() -> Vec<u8> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "cargo metadata failed");
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let manifest = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "sev")
            .and_then(|p| p["manifest_path"].as_str())
            .unwrap()
            .to_owned();
        let path = std::path::Path::new(&manifest)
            .parent()
            .unwrap()
            .join("tests/measurement/ovmf_AmdSev_suffix.bin");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The test image with the recorded AmdSev OVMF as its `snp` firmware.
    fn write_snp_image(dir: &std::path::Path) -> TestImage {
        let ovmf = amdsev_ovmf();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("ovmf-snp.fd"), &ovmf).unwrap();
        TestImage::write_with(dir, |m| {
            m.firmware.insert(
                FIRMWARE_SNP.into(),
                chrysalis_attestation::manifest::Artifact {
                    file: "ovmf-snp.fd".into(),
                    size: ovmf.len() as u64,
                    sha256: Sha256::digest(&ovmf),
                },
            );
        })
        .unwrap()
    }

    #[test]
    fn sim_snp_reports_carry_the_calculators_launch_digest_and_verify_under_the_sim_ark() {
        use chrysalis_attestation::measure::image::{default_snp_shapes, expected_measurements};
        let dir = tempfile::tempdir().unwrap();
        let t = write_snp_image(dir.path());
        let mut m = t.parsed.clone();
        let mut read =
            |a: &chrysalis_attestation::manifest::Artifact| std::fs::read(dir.path().join(&a.file));
        m.expected_measurements =
            Some(expected_measurements(&m, &[], &default_snp_shapes(), &mut read).unwrap());
        std::fs::write(&t.manifest, m.to_json()).unwrap();
        let img = image::load(&t.manifest).unwrap();
        let s = SimSnpSigner::new(&img, &SHAPE, "EPYC-v4", sim::DEFAULT_SEED, None).unwrap();
        assert_eq!(s.status().matches_manifest, Some(true));

        let r = s.snp_report(&ReportData([0x33; 64])).unwrap();
        let bundle = Evidence::snp(r.report, Some(r.vcek), Some(r.chain.into_bytes())).unwrap();
        // The manifest's own pins, with the sim ARK named: accepted.
        let mut policy = Policy::pinned(vec![], img.manifest.snp_pins());
        policy
            .trust
            .dangerous_simulated_amd_roots
            .push(s.status().sim_ark_sha256);
        let ok = policy.appraise(&bundle, None, unix_now()).unwrap();
        assert_eq!(ok.verdict().report_data, ReportData([0x33; 64]));
        // Not named: refused.
        let vendor_only = Policy::pinned(vec![], img.manifest.snp_pins());
        assert!(vendor_only.appraise(&bundle, None, unix_now()).is_err());
        let anchors = TrustAnchors::vendor();
        assert!(
            chrysalis_attestation::verify::verify(&bundle, &anchors, None, unix_now()).is_err()
        );

        // Another vCPU model changes the digest; an unknown one is named.
        let genoa = SimSnpSigner::new(&img, &SHAPE, "EPYC-Genoa", sim::DEFAULT_SEED, None).unwrap();
        assert_ne!(genoa.status().measurement, s.status().measurement);
        let err = SimSnpSigner::new(&img, &SHAPE, "Pentium", sim::DEFAULT_SEED, None).unwrap_err();
        assert!(err.to_string().contains("snp_vcpu_type"), "{err}");
    }

    #[test]
    fn a_manifest_without_snp_firmware_needs_the_configured_one() {
        let dir = tempfile::tempdir().unwrap();
        TestImage::write_with(dir.path(), |m| m.firmware.clear()).unwrap();
        let img = image::load(&dir.path().join("manifest.json")).unwrap();
        let err = SimSnpSigner::new(&img, &SHAPE, "EPYC-v4", sim::DEFAULT_SEED, None).unwrap_err();
        assert!(err.to_string().contains("snp_firmware"), "{err}");
    }
}
