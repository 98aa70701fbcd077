//! A chrysalis image directory (manifest.json and artifacts) built in a temporary directory, for
//! the measurement CLI tests and benchmark.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrysalis_attestation::bootargs::{self, MeasuredArgs};
use chrysalis_attestation::manifest::{
    Artifact, Artifacts, KernelInfo, LockInfo, MANIFEST_FORMAT, Manifest, ModelInfo, Verity,
    VerityParams,
};
use chrysalis_attestation::measure::snp::{SnpLaunchInputs, SnpVcpuType, snp_launch_digest};
use chrysalis_attestation::measure::tdx::{
    ExpectedTdx, PageAddOrder, Rtmr0Source, TdxBootInputs, expected_tdx,
};
use chrysalis_attestation::{Measurement, Sha256};

use crate::fixtures::{efi_pe, registry_file, tdvf_from_sev_suffix};

/// The sev crate's recorded AmdSev OVMF suffix (SNP firmware with a kernel-hashes section).
pub fn snp_firmware() -> Vec<u8> {
    registry_file("sev", "tests/measurement/ovmf_AmdSev_suffix.bin")
}

/// An image directory: manifest.json plus its artifacts. The kernel is a small PE32+ EFI
/// application, the TDX firmware the sev crate's recorded OvmfPkgX64 suffix padded to its
/// 4 MiB layout, the SNP firmware its recorded AmdSev suffix.
pub struct Image {
    /// The directory.
    pub dir: tempfile::TempDir,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Image {
    /// An image with the default kernel and firmware and `initrd`.
    pub fn new(initrd: &[u8]) -> Self {
        Self::with(
            &efi_pe(0x90, b"kernel"),
            initrd,
            &tdvf_from_sev_suffix(),
            &snp_firmware(),
        )
    }

    /// An image of the given kernel, initrd and firmware images.
    pub fn with(kernel: &[u8], initrd: &[u8], tdvf: &[u8], snp: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, bytes: &[u8]| {
            std::fs::write(dir.path().join(file), bytes).unwrap();
            Artifact {
                file: file.into(),
                size: bytes.len() as u64,
                sha256: Sha256::of_bytes(bytes),
            }
        };
        let verity = |n: u8| VerityParams {
            hash_type: 1,
            hash_algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 1,
            hash_offset: 4096,
            salt: hex::encode([n; 32]),
            root_hash: Sha256::from_bytes([n; 32]),
        };
        let (rootfs_v, model_v) = (verity(1), verity(2));
        let config = write("guest.toml", b"[guest]\n");
        let kernel_cmdline = bootargs::build(
            &["console=ttyS0".into()],
            &MeasuredArgs {
                rootfs: (&rootfs_v).into(),
                model: (&model_v).into(),
                config_sha256: config.sha256,
            },
        )
        .unwrap();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            flavor: "cpu".into(),
            version: "0.1.0".into(),
            source_date_epoch: 1,
            lock: LockInfo {
                file: "image/locks/cpu.lock".into(),
                sha256: Sha256::from_bytes([4; 32]),
            },
            kernel: KernelInfo {
                package: "linux-image-test".into(),
                version: "1".into(),
                release: "test".into(),
            },
            kernel_cmdline,
            artifacts: Artifacts {
                kernel: write("vmlinuz", kernel),
                initramfs: write("initramfs.cpio.gz", initrd),
                rootfs: write("rootfs.img", &[1; 8192]),
                model: write("model.img", &[2; 8192]),
                guest_config: config,
                config_disk: write("config.img", &[0; 4096]),
            },
            verity: Verity {
                rootfs: rootfs_v,
                model: model_v,
            },
            model: ModelInfo {
                id: "m".into(),
                files: vec![],
            },
            firmware: BTreeMap::from([
                ("tdx".into(), write("tdvf.fd", tdvf)),
                ("snp".into(), write("ovmf-snp.fd", snp)),
            ]),
            builders: BTreeMap::new(),
            expected_measurements: None,
        };
        manifest.validate().unwrap();
        let image = Self { dir, manifest };
        image.write_manifest();
        image
    }

    /// Writes the (changed) manifest back to manifest.json.
    pub fn write_manifest(&self) {
        std::fs::write(self.manifest_path(), self.manifest.to_json()).unwrap();
    }

    /// The path of manifest.json.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("manifest.json")
    }

    /// The path of manifest.json, as a command-line argument.
    pub fn path(&self) -> String {
        self.manifest_path().display().to_string()
    }

    /// The bytes of a file of the image.
    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(file)).unwrap()
    }

    /// The TDX calculator called directly on the bytes.
    pub fn tdx(&self) -> ExpectedTdx {
        expected_tdx(&TdxBootInputs {
            firmware: &self.read("tdvf.fd"),
            kernel: &self.read("vmlinuz"),
            initrd: Some(&self.read("initramfs.cpio.gz")),
            cmdline: &self.manifest.kernel_cmdline,
            rtmr0: Rtmr0Source::NotPinned,
            page_add_order: PageAddOrder::PerPage,
        })
        .unwrap()
    }

    /// The RTMR0 calculator called directly on the bytes, for the `tdx` profile's QEMU.
    pub fn rtmr0(&self, vcpus: u32, memory_mib: u64) -> Measurement {
        use chrysalis_attestation::manifest::VmShape;
        use chrysalis_attestation::measure::image::{ImageInputs, tdx_rtmr0_events};
        use chrysalis_attestation::measure::rtmr0::rtmr0;
        use chrysalis_attestation::measure::tdx_acpi::TDX_VMM;
        let inputs = ImageInputs {
            kernel: self.read("vmlinuz"),
            initrd: self.read("initramfs.cpio.gz"),
            cmdline: self.manifest.kernel_cmdline.clone(),
            tdx_firmware: Some(self.read("tdvf.fd")),
            snp_firmware: None,
        };
        let shape = VmShape { vcpus, memory_mib };
        rtmr0(&tdx_rtmr0_events(&inputs, &shape, &TDX_VMM).unwrap())
    }

    /// The SNP calculator called directly on the bytes.
    pub fn snp(&self, vcpus: u32, t: SnpVcpuType) -> Measurement {
        let (fw, k, i) = (
            self.read("ovmf-snp.fd"),
            self.read("vmlinuz"),
            self.read("initramfs.cpio.gz"),
        );
        snp_launch_digest(&SnpLaunchInputs {
            kernel: Some(&k),
            initrd: Some(&i),
            cmdline: Some(&self.manifest.kernel_cmdline),
            ..SnpLaunchInputs::new(&fw, vcpus, t)
        })
        .unwrap()
    }
}
