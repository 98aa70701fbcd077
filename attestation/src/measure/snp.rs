//! SEV-SNP launch digest precompute: the MEASUREMENT an SNP report will carry for a given
//! firmware, direct-boot kernel/initrd/command line, vCPU count and type, VMM and SEV_FEATURES.
//!
//! The digest is computed by the sev crate's `measurement::snp` module (built with
//! `crypto_nossl`; no OpenSSL). That module reads its inputs from file paths and keeps its
//! lower-level guest-context type crate-private, so the bytes given here are written to a
//! private temporary directory (removed before returning) and handed to it by path.
//!
//! Direct boot uses QEMU's SEV kernel-hashes table (`kernel-hashes=on`): OVMF's
//! SNP_KERNEL_HASHES page then holds SHA-256 of the kernel file, of the initrd file (of nothing
//! when absent) and of the command line with its trailing NUL (`"\0"` when absent), exactly as
//! QEMU's `x86_load_linux` hashes them (QEMU leaves the kernel header unpatched for SEV guests,
//! so the kernel hash is that of the file).

use std::fmt;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sev::error::MeasurementError;
use sev::measurement::snp::{SnpMeasurementArgs, calc_snp_ovmf_hash, snp_calc_launch_digest};
use sev::measurement::vcpu_types::CpuType;
use sev::measurement::vmsa::{GuestFeatures, VMMType};

use crate::Measurement;

/// A QEMU vCPU model as the sev crate names it (`EPYC-v4`, `EPYC-Milan`, `EPYC-Genoa`,
/// `EPYC-Turin`, ...). It determines the CPUID signature placed in every VMSA's RDX.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnpVcpuType(CpuType);

impl Eq for SnpVcpuType {}

impl SnpVcpuType {
    /// `EPYC-v4`: QEMU's generic EPYC model (the sev crate's own test vectors use it).
    pub const EPYC_V4: Self = Self(CpuType::EpycV4);
    /// `EPYC-Milan`.
    pub const EPYC_MILAN: Self = Self(CpuType::EpycMilan);
    /// `EPYC-Genoa`.
    pub const EPYC_GENOA: Self = Self(CpuType::EpycGenoa);
    /// `EPYC-Turin`.
    pub const EPYC_TURIN: Self = Self(CpuType::EpycTurin);

    /// The sev crate's type.
    pub fn cpu_type(self) -> CpuType {
        self.0
    }
}

impl From<CpuType> for SnpVcpuType {
    fn from(t: CpuType) -> Self {
        Self(t)
    }
}

impl fmt::Display for SnpVcpuType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SnpVcpuType {
    type Err = SnpMeasureError;
    /// Accepts the sev crate's names, case-insensitively (`EPYC-Milan`, `epyc-v4`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CpuType::try_from(s)
            .map(Self)
            .map_err(|_| SnpMeasureError::UnknownVcpuType(s.to_owned()))
    }
}

impl Serialize for SnpVcpuType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SnpVcpuType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The VMM that launches the guest: it decides the initial register state of the VMSAs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnpVmm {
    /// QEMU (what chrysalis launches).
    #[default]
    Qemu,
    /// Amazon EC2.
    Ec2,
    /// libkrun.
    Krun,
}

impl From<SnpVmm> for VMMType {
    fn from(v: SnpVmm) -> Self {
        match v {
            SnpVmm::Qemu => VMMType::QEMU,
            SnpVmm::Ec2 => VMMType::EC2,
            SnpVmm::Krun => VMMType::KRUN,
        }
    }
}

/// SEV_FEATURES bit 0, SNPActive: set in every SNP guest's VMSA.
pub const SEV_FEATURES_SNP_ACTIVE: u64 = 1;
/// SEV_FEATURES bit 5, DebugSwap: QEMU sets it by default when KVM supports it.
pub const SEV_FEATURES_DEBUG_SWAP: u64 = 1 << 5;
/// The most vCPUs accepted (x86 KVM's largest configurable KVM_MAX_VCPUS).
pub const SNP_MAX_VCPUS: u32 = 4096;

/// The SEV-SNP guest policy chrysalis launches its image with (host.toml's default
/// `[snp] policy`), which `policy from-manifest` pins: ABI 0.0 minimum, bit 16 SMT allowed,
/// bit 17 reserved-must-be-one; MIGRATE_MA (18), DEBUG (19) and every other bit clear. The
/// guest policy is not part of the launch digest, so the report's POLICY field must be pinned
/// on its own: the manifest's SNP pins name this exact value and the host refuses any other.
pub const CHRYSALIS_GUEST_POLICY: u64 = 0x3_0000;

/// Everything the launch digest depends on.
#[derive(Clone, Copy, Debug)]
pub struct SnpLaunchInputs<'a> {
    /// The firmware image (OVMF built from OvmfPkg/AmdSev), as QEMU loads it below 4 GiB.
    pub ovmf: &'a [u8],
    /// The direct-boot kernel (`-kernel`); `Some` means QEMU runs with `kernel-hashes=on`.
    pub kernel: Option<&'a [u8]>,
    /// The initrd (`-initrd`); only with a kernel.
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line (`-append`); only with a kernel.
    pub cmdline: Option<&'a str>,
    /// Number of vCPUs (one VMSA each).
    pub vcpus: u32,
    /// The vCPU model (`-cpu`).
    pub vcpu_type: SnpVcpuType,
    /// The VMM.
    pub vmm: SnpVmm,
    /// SEV_FEATURES of the VMSAs (bit 0, SNPActive, must be set).
    pub guest_features: u64,
    /// The digest after the firmware pages alone ([`snp_ovmf_hash`]), to skip rehashing the
    /// firmware. It must be the hash of `ovmf`: it is not checked.
    pub ovmf_hash: Option<Measurement>,
}

impl<'a> SnpLaunchInputs<'a> {
    /// Inputs for `ovmf` on QEMU with SEV_FEATURES = SNPActive only, no direct boot.
    pub fn new(ovmf: &'a [u8], vcpus: u32, vcpu_type: SnpVcpuType) -> Self {
        Self {
            ovmf,
            kernel: None,
            initrd: None,
            cmdline: None,
            vcpus,
            vcpu_type,
            vmm: SnpVmm::Qemu,
            guest_features: SEV_FEATURES_SNP_ACTIVE,
            ovmf_hash: None,
        }
    }
}

/// Why a launch digest could not be computed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnpMeasureError {
    /// The vCPU count is 0 or above [`SNP_MAX_VCPUS`].
    #[error("vcpus must be 1 to {SNP_MAX_VCPUS}, got {0}")]
    BadVcpuCount(u32),
    /// The vCPU model name is not one the sev crate knows.
    #[error("unknown vCPU type {0:?} (expected a QEMU EPYC model such as EPYC-v4 or EPYC-Milan)")]
    UnknownVcpuType(String),
    /// SEV_FEATURES lacks SNPActive.
    #[error("SEV_FEATURES {0:#x} lacks bit 0 (SNPActive), which every SNP guest has")]
    SnpNotActive(u64),
    /// An initrd or command line was given without a kernel (QEMU refuses that too).
    #[error("{0} given without a kernel")]
    WithoutKernel(&'static str),
    /// The command line cannot be measured as QEMU would.
    #[error("kernel command line {0}")]
    BadCmdline(&'static str),
    /// The firmware is empty or not whole 4 KiB pages.
    #[error("firmware is {0} bytes, not a non-zero multiple of 4096")]
    BadFirmwareSize(usize),
    /// The firmware has no SNP_KERNEL_HASHES section, so it cannot measure a direct boot.
    #[error("firmware has no SNP_KERNEL_HASHES section: it cannot verify a direct-boot kernel")]
    NoKernelHashesSection,
    /// The sev crate rejected the firmware (footer table, SEV metadata, reset block).
    #[error("firmware is not an SNP-capable OVMF: {0}")]
    Firmware(String),
    /// The sev crate's firmware parser panicked (it indexes without bounds checks).
    #[error("firmware is malformed (the sev crate's OVMF parser panicked)")]
    FirmwareParserPanicked,
    /// Any other error the sev crate reported.
    #[error("sev measurement: {0}")]
    Sev(String),
    /// The scratch files for the sev crate could not be written.
    #[error("writing scratch file for the sev crate: {0}")]
    Scratch(#[source] std::io::Error),
}

impl From<MeasurementError> for SnpMeasureError {
    fn from(e: MeasurementError) -> Self {
        match e {
            MeasurementError::MissingSection(_) | MeasurementError::InvalidOvmfKernelError => {
                SnpMeasureError::NoKernelHashesSection
            }
            MeasurementError::OVMFError(e) => SnpMeasureError::Firmware(e.to_string()),
            other => SnpMeasureError::Sev(other.to_string()),
        }
    }
}

/// The launch digest the PSP will compute for these inputs: the SEV-SNP report's MEASUREMENT.
///
/// Returns an error, never a digest, when the inputs cannot describe a QEMU launch: no vCPUs,
/// SNPActive clear, initrd or command line without a kernel, a command line with a NUL or with
/// leading or trailing whitespace (QEMU hashes it verbatim, the sev crate trims it, so no
/// digest would be right), or a firmware without an SNP_KERNEL_HASHES section when a kernel is
/// given. It does NOT check that `ovmf_hash` belongs to `ovmf`, nor that the kernel boots.
pub fn snp_launch_digest(inputs: &SnpLaunchInputs<'_>) -> Result<Measurement, SnpMeasureError> {
    if inputs.vcpus == 0 || inputs.vcpus > SNP_MAX_VCPUS {
        return Err(SnpMeasureError::BadVcpuCount(inputs.vcpus));
    }
    if inputs.guest_features & SEV_FEATURES_SNP_ACTIVE == 0 {
        return Err(SnpMeasureError::SnpNotActive(inputs.guest_features));
    }
    if inputs.kernel.is_none() {
        if inputs.initrd.is_some() {
            return Err(SnpMeasureError::WithoutKernel("initrd"));
        }
        if inputs.cmdline.is_some() {
            return Err(SnpMeasureError::WithoutKernel("command line"));
        }
    }
    if let Some(cmdline) = inputs.cmdline {
        if cmdline.contains('\0') {
            return Err(SnpMeasureError::BadCmdline("contains a NUL byte"));
        }
        if cmdline.trim() != cmdline {
            return Err(SnpMeasureError::BadCmdline(
                "has leading or trailing whitespace (QEMU measures it verbatim, sev trims it)",
            ));
        }
    }
    check_firmware_size(inputs.ovmf)?;

    let scratch = Scratch::new()?;
    let ovmf_file = scratch.write("ovmf.fd", inputs.ovmf)?;
    let kernel_file = inputs
        .kernel
        .map(|k| scratch.write("kernel", k))
        .transpose()?;
    // QEMU hashes an absent initrd as zero bytes; so does sev for an empty file.
    let initrd_file = match (inputs.kernel, inputs.initrd) {
        (Some(_), initrd) => Some(scratch.write("initrd", initrd.unwrap_or_default())?),
        (None, _) => None,
    };
    let ovmf_hash = inputs.ovmf_hash.map(|h| h.to_hex());
    let args = SnpMeasurementArgs {
        vcpus: inputs.vcpus,
        vcpu_type: inputs.vcpu_type.cpu_type(),
        ovmf_file,
        guest_features: GuestFeatures(inputs.guest_features),
        kernel_file,
        initrd_file,
        append: inputs.cmdline,
        ovmf_hash_str: ovmf_hash.as_deref(),
        vmm_type: Some(inputs.vmm.into()),
    };
    let digest = catch_unwind(AssertUnwindSafe(|| snp_calc_launch_digest(args)))
        .map_err(|_| SnpMeasureError::FirmwareParserPanicked)??;
    measurement_from(digest.get_hex_ld())
}

/// The digest after measuring only the firmware pages, for [`SnpLaunchInputs::ovmf_hash`].
pub fn snp_ovmf_hash(ovmf: &[u8]) -> Result<Measurement, SnpMeasureError> {
    check_firmware_size(ovmf)?;
    let scratch = Scratch::new()?;
    let ovmf_file = scratch.write("ovmf.fd", ovmf)?;
    let digest = catch_unwind(AssertUnwindSafe(|| calc_snp_ovmf_hash(ovmf_file)))
        .map_err(|_| SnpMeasureError::FirmwareParserPanicked)??;
    measurement_from(digest.get_hex_ld())
}

fn check_firmware_size(ovmf: &[u8]) -> Result<(), SnpMeasureError> {
    if ovmf.is_empty() || !ovmf.len().is_multiple_of(4096) {
        return Err(SnpMeasureError::BadFirmwareSize(ovmf.len()));
    }
    Ok(())
}

fn measurement_from(hex: String) -> Result<Measurement, SnpMeasureError> {
    Measurement::from_hex(&hex).map_err(|e| SnpMeasureError::Sev(e.to_string()))
}

/// A private temporary directory, removed on drop.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Result<Self, SnpMeasureError> {
        tempfile::Builder::new()
            .prefix("chrysalis-snp-measure-")
            .tempdir()
            .map(Self)
            .map_err(SnpMeasureError::Scratch)
    }

    fn write(&self, name: &str, data: &[u8]) -> Result<PathBuf, SnpMeasureError> {
        let path: PathBuf = Path::new(self.0.path()).join(name);
        let mut f = std::fs::File::create_new(&path).map_err(SnpMeasureError::Scratch)?;
        f.write_all(data).map_err(SnpMeasureError::Scratch)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrysalis_testkit::fixtures::registry_package_dir;

    fn firmware(name: &str) -> Vec<u8> {
        let path = registry_package_dir("sev")
            .join("tests/measurement")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn amdsev() -> Vec<u8> {
        firmware("ovmf_AmdSev_suffix.bin")
    }

    const OVMF_HASH: &str = "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74";
    const CMDLINE: &str = "console=ttyS0 loglevel=7";
    const EMPTY: &[u8] = &[];

    /// One of sev's tests/measurement.rs SNP cases: `/dev/null` kernel and initrd become empty.
    struct Case {
        name: &'static str,
        ovmf: &'static str,
        vcpus: u32,
        features: u64,
        direct_boot: bool,
        cmdline: Option<&'static str>,
        ovmf_hash: bool,
        vmm: SnpVmm,
        expected: &'static str,
    }

    const fn case(name: &'static str, features: u64, expected: &'static str) -> Case {
        Case {
            name,
            ovmf: "ovmf_AmdSev_suffix.bin",
            vcpus: 1,
            features,
            direct_boot: true,
            cmdline: None,
            ovmf_hash: false,
            vmm: SnpVmm::Qemu,
            expected,
        }
    }

    /// Every SNP test case of sev 8.0.0's tests/measurement.rs, same inputs, same expected hex.
    const CASES: &[Case] = &[
        Case {
            ovmf_hash: true,
            ..case(
                "test_snp_ovmf_hash_gen_snp_only",
                0x1,
                "ddc5224521617a536ee7ce9dd6224d1b58a8d4fda1c741f3ac99fc4bfa04ba6e9fc98646d4a07a9079397fa3852819b5",
            )
        },
        Case {
            ovmf_hash: true,
            ..case(
                "test_snp_ovmf_hash_gen_default",
                0x21,
                "329c8ce0972ae52343b64d34a434a86f245dfd74f5ed7aae15d22efc78fb9683632b9b50e4e1d7fa41179ef98a7ef198",
            )
        },
        Case {
            ovmf_hash: true,
            cmdline: Some(CMDLINE),
            ..case(
                "test_snp_ovmf_hash_full_snp_only",
                0x1,
                "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa",
            )
        },
        Case {
            ovmf_hash: true,
            cmdline: Some(CMDLINE),
            ..case(
                "test_snp_ovmf_hash_full_default",
                0x21,
                "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977",
            )
        },
        Case {
            vmm: SnpVmm::Ec2,
            ..case(
                "test_snp_ec2_snp_only",
                0x1,
                "7d3756157c805bf6adf617064c8552e8c1688fa1c8756f11cbf56ba5d25c9270fb69c0505c1cbe1c5c66c0e34c6ed3be",
            )
        },
        Case {
            vmm: SnpVmm::Ec2,
            ..case(
                "test_snp_ec2_default",
                0x21,
                "6ae80856486b1396af8c82a40351d6ed76a20c785e9c7fa4ffa27c22d5d6313b4b3b458cd3c9968e6f89fb5d8450d7a6",
            )
        },
        Case {
            cmdline: Some(CMDLINE),
            ..case(
                "test_sev_snp_only",
                0x1,
                "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa",
            )
        },
        Case {
            cmdline: Some(CMDLINE),
            ..case(
                "test_snp_default",
                0x21,
                "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977",
            )
        },
        Case {
            direct_boot: false,
            ..case(
                "test_snp_without_kernel_snp_only",
                0x1,
                "19358ba9a7615534a9a1e2f0dfc29384dcd4dcb7062ff9c6013b26869a5fc6ecabe033c48dd6f6db5d6d76e7c5df632d",
            )
        },
        Case {
            direct_boot: false,
            ..case(
                "test_snp_without_kernel_default",
                0x21,
                "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b",
            )
        },
        Case {
            vcpus: 4,
            ..case(
                "test_snp_with_multiple_vcpus_snp_only",
                0x1,
                "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5",
            )
        },
        Case {
            vcpus: 4,
            ..case(
                "test_snp_with_multiple_vcpus_default",
                0x21,
                "4953b1fb416fa874980e8442b3706d345926d5f38879134e00813c5d7abcbe78eafe7b422907be0b4698e2414a631942",
            )
        },
        Case {
            ovmf: "ovmf_OvmfX64_suffix.bin",
            direct_boot: false,
            ..case(
                "test_snp_with_ovmfx64_without_kernel_snp_only",
                0x1,
                "da0296de8193586a5512078dcd719eccecbd87e2b825ad4148c44f665dc87df21e5b49e21523a9ad993afdb6a30b4005",
            )
        },
        Case {
            ovmf: "ovmf_OvmfX64_suffix.bin",
            direct_boot: false,
            ..case(
                "test_snp_with_ovmfx64_without_kernel_default",
                0x21,
                "28797ae0afaba4005a81e629acebfb59e6687949d6be44007cd5506823b0dd66f146aaae26ff291eed7b493d8a64c385",
            )
        },
    ];

    #[test]
    fn reproduces_every_snp_digest_of_the_sev_crate_tests() {
        for c in CASES {
            let ovmf = firmware(c.ovmf);
            let inputs = SnpLaunchInputs {
                kernel: c.direct_boot.then_some(EMPTY),
                initrd: c.direct_boot.then_some(EMPTY),
                cmdline: c.cmdline,
                vmm: c.vmm,
                guest_features: c.features,
                ovmf_hash: c
                    .ovmf_hash
                    .then(|| Measurement::from_hex(OVMF_HASH).unwrap()),
                ..SnpLaunchInputs::new(&ovmf, c.vcpus, SnpVcpuType::EPYC_V4)
            };
            let digest = snp_launch_digest(&inputs).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(digest.to_hex(), c.expected, "{}", c.name);
        }
    }

    #[test]
    fn ovmf_hash_matches_the_sev_crate_test() {
        assert_eq!(snp_ovmf_hash(&amdsev()).unwrap().to_hex(), OVMF_HASH);
    }

    #[test]
    fn kernel_with_a_firmware_without_kernel_hashes_is_an_error() {
        // sev's test_snp_with_ovmfx64_and_kernel_should_fail.
        let ovmf = firmware("ovmf_OvmfX64_suffix.bin");
        let inputs = SnpLaunchInputs {
            kernel: Some(EMPTY),
            initrd: Some(EMPTY),
            guest_features: 0x21,
            ..SnpLaunchInputs::new(&ovmf, 1, SnpVcpuType::EPYC_V4)
        };
        let err = snp_launch_digest(&inputs).unwrap_err();
        assert!(
            matches!(err, SnpMeasureError::NoKernelHashesSection),
            "{err}"
        );
    }

    #[test]
    fn every_input_changes_the_digest() {
        let ovmf = amdsev();
        let kernel = vec![0x4d; 8192];
        let initrd = vec![0x07; 5000];
        let base = SnpLaunchInputs {
            kernel: Some(&kernel),
            initrd: Some(&initrd),
            cmdline: Some("console=ttyS0 root=/dev/vda"),
            ..SnpLaunchInputs::new(&ovmf, 2, SnpVcpuType::EPYC_MILAN)
        };
        let reference = snp_launch_digest(&base).unwrap();
        assert_eq!(
            snp_launch_digest(&base).unwrap(),
            reference,
            "deterministic"
        );

        let mut flipped_kernel = kernel.clone();
        flipped_kernel[4321] ^= 1;
        let mut flipped_initrd = initrd.clone();
        flipped_initrd[0] ^= 1;
        let variants = [
            (
                "kernel byte",
                SnpLaunchInputs {
                    kernel: Some(&flipped_kernel),
                    ..base
                },
            ),
            (
                "initrd byte",
                SnpLaunchInputs {
                    initrd: Some(&flipped_initrd),
                    ..base
                },
            ),
            (
                "no initrd",
                SnpLaunchInputs {
                    initrd: None,
                    ..base
                },
            ),
            (
                "cmdline byte",
                SnpLaunchInputs {
                    cmdline: Some("console=ttyS0 root=/dev/vdb"),
                    ..base
                },
            ),
            (
                "no cmdline",
                SnpLaunchInputs {
                    cmdline: None,
                    ..base
                },
            ),
            ("vcpus", SnpLaunchInputs { vcpus: 3, ..base }),
            (
                "vcpu type",
                SnpLaunchInputs {
                    vcpu_type: SnpVcpuType::EPYC_GENOA,
                    ..base
                },
            ),
            (
                "guest features",
                SnpLaunchInputs {
                    guest_features: 0x21,
                    ..base
                },
            ),
            (
                "no direct boot",
                SnpLaunchInputs {
                    kernel: None,
                    initrd: None,
                    cmdline: None,
                    ..base
                },
            ),
        ];
        for (what, inputs) in variants {
            assert_ne!(
                snp_launch_digest(&inputs).unwrap(),
                reference,
                "{what} did not change the digest"
            );
        }
    }

    #[test]
    fn absent_and_empty_initrd_and_cmdline_measure_alike_as_in_qemu() {
        // QEMU hashes a missing initrd as zero bytes and a missing -append as "" + NUL.
        let ovmf = amdsev();
        let kernel = vec![1u8; 4096];
        let base = SnpLaunchInputs {
            kernel: Some(&kernel),
            ..SnpLaunchInputs::new(&ovmf, 1, SnpVcpuType::EPYC_V4)
        };
        let with_empty = SnpLaunchInputs {
            initrd: Some(EMPTY),
            cmdline: Some(""),
            ..base
        };
        assert_eq!(
            snp_launch_digest(&base).unwrap(),
            snp_launch_digest(&with_empty).unwrap()
        );
    }

    #[test]
    fn inputs_qemu_would_refuse_or_measure_differently_are_errors() {
        let ovmf = amdsev();
        let base = SnpLaunchInputs::new(&ovmf, 1, SnpVcpuType::EPYC_V4);
        let kernel: &[u8] = &[0u8; 16];
        let bad = [
            SnpLaunchInputs { vcpus: 0, ..base },
            SnpLaunchInputs {
                vcpus: SNP_MAX_VCPUS + 1,
                ..base
            },
            SnpLaunchInputs {
                guest_features: 0x20,
                ..base
            },
            SnpLaunchInputs {
                initrd: Some(EMPTY),
                ..base
            },
            SnpLaunchInputs {
                cmdline: Some("quiet"),
                ..base
            },
            SnpLaunchInputs {
                kernel: Some(kernel),
                cmdline: Some("quiet "),
                ..base
            },
            SnpLaunchInputs {
                kernel: Some(kernel),
                cmdline: Some("a\0b"),
                ..base
            },
            SnpLaunchInputs { ovmf: &[], ..base },
            SnpLaunchInputs {
                ovmf: &ovmf[..100],
                ..base
            },
        ];
        for inputs in bad {
            assert!(snp_launch_digest(&inputs).is_err(), "{inputs:?}");
        }
    }

    #[test]
    fn malformed_firmware_is_an_error_not_a_panic() {
        let pages = [vec![0u8; 4096], vec![0xffu8; 4096], vec![0x5a; 8192]];
        for ovmf in &pages {
            let inputs = SnpLaunchInputs::new(ovmf, 1, SnpVcpuType::EPYC_V4);
            assert!(snp_launch_digest(&inputs).is_err());
        }
        // Every single-byte flip in the firmware's last 512 bytes (footer table, SEV metadata
        // pointer, reset block): an error or a different digest, never a panic.
        let ovmf = amdsev();
        let reference =
            snp_launch_digest(&SnpLaunchInputs::new(&ovmf, 1, SnpVcpuType::EPYC_V4)).unwrap();
        for offset in ovmf.len() - 512..ovmf.len() {
            let mut bad = ovmf.clone();
            bad[offset] ^= 0xff;
            if let Ok(d) = snp_launch_digest(&SnpLaunchInputs::new(&bad, 1, SnpVcpuType::EPYC_V4)) {
                assert_ne!(d, reference, "flip at {offset}");
            }
        }
    }

    #[test]
    fn a_panic_in_the_sev_firmware_parser_becomes_an_error() {
        // A footer-table size larger than the firmware makes sev's parser index out of range.
        let mut ovmf = amdsev();
        let footer_size = ovmf.len() - 32 - 18;
        ovmf[footer_size..footer_size + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        let err =
            snp_launch_digest(&SnpLaunchInputs::new(&ovmf, 1, SnpVcpuType::EPYC_V4)).unwrap_err();
        assert!(
            matches!(err, SnpMeasureError::FirmwareParserPanicked),
            "{err}"
        );
    }

    #[test]
    fn vcpu_type_names_round_trip() {
        for name in [
            "EPYC-v4",
            "EPYC-Milan",
            "EPYC-Genoa",
            "EPYC-Turin",
            "EPYC-Rome-v3",
        ] {
            let t: SnpVcpuType = name.parse().unwrap();
            assert_eq!(t.to_string(), name);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<SnpVcpuType>(&json).unwrap(), t);
        }
        assert_eq!(
            "epyc-milan".parse::<SnpVcpuType>().unwrap(),
            SnpVcpuType::EPYC_MILAN
        );
        assert!(matches!(
            "Xeon".parse::<SnpVcpuType>(),
            Err(SnpMeasureError::UnknownVcpuType(_))
        ));
    }
}
