//! A small but well-formed image for tests: an EFI PE kernel, an initramfs, verity-shaped disks, a
//! config disk, a synthetic TDVF firmware and a manifest.json that `chrysalis_attestation::manifest`
//! accepts. Nothing here boots; it exists so that manifest checks, launch plans and the sim
//! measurements run on real formats without a multi-hundred-MiB image build.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use chrysalis_attestation::Policy;
use chrysalis_attestation::Sha256;
use chrysalis_attestation::bootargs::{self, MeasuredArgs};
use chrysalis_attestation::manifest::{
    Artifact, Artifacts, KernelInfo, LockInfo, MANIFEST_FORMAT, Manifest, ModelInfo, Verity,
    VerityParams,
};
use chrysalis_attestation::measure::tdx::{
    OVMF_TABLE_FOOTER_GUID, PageAddOrder, Rtmr0Source, TDX_METADATA_OFFSET_GUID, TdxBootInputs,
    expected_tdx,
};
use chrysalis_attestation::policy::TdxPin;
use chrysalis_attestation::sim::{DEFAULT_SEED, SimPki};

/// A PE32+ EFI application (subsystem 10) of 0x600 bytes whose section bytes depend on `seed`:
/// enough for the Authenticode digest and the image-load event of a TDX direct boot.
pub fn efi_pe_kernel(seed: u8) -> Vec<u8> {
    let mut pe = vec![0u8; 0x600];
    let put16 =
        |pe: &mut Vec<u8>, at: usize, v: u16| pe[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |pe: &mut Vec<u8>, at: usize, v: u32| pe[at..at + 4].copy_from_slice(&v.to_le_bytes());
    pe[..2].copy_from_slice(b"MZ");
    put32(&mut pe, 0x3c, 0x40);
    pe[0x40..0x44].copy_from_slice(b"PE\0\0");
    let coff = 0x44;
    put16(&mut pe, coff, 0x8664); // machine
    put16(&mut pe, coff + 2, 2); // sections
    put16(&mut pe, coff + 16, 240); // optional header size
    put16(&mut pe, coff + 18, 0x0022); // executable, large address aware
    let opt = 0x58;
    put16(&mut pe, opt, 0x20b); // PE32+
    put32(&mut pe, opt + 16, 0x1000); // entry point
    pe[opt + 24..opt + 32].copy_from_slice(&0x1_0000u64.to_le_bytes()); // image base
    put32(&mut pe, opt + 32, 0x1000); // section alignment
    put32(&mut pe, opt + 36, 0x200); // file alignment
    put32(&mut pe, opt + 56, 0x3000); // size of image
    put32(&mut pe, opt + 60, 0x200); // size of headers
    put16(&mut pe, opt + 68, 10); // EFI application
    put32(&mut pe, opt + 108, 16); // data directories
    let sections = opt + 240;
    for (i, (name, va, raw)) in [
        (b".text\0\0\0", 0x1000u32, 0x200u32),
        (b".data\0\0\0", 0x2000, 0x400),
    ]
    .into_iter()
    .enumerate()
    {
        let s = sections + 40 * i;
        pe[s..s + 8].copy_from_slice(name);
        put32(&mut pe, s + 8, 0x200);
        put32(&mut pe, s + 12, va);
        put32(&mut pe, s + 16, 0x200);
        put32(&mut pe, s + 20, raw);
        put32(&mut pe, s + 36, 0x6000_0020);
    }
    for (i, b) in pe[0x200..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(seed);
    }
    pe
}

/// A 64 KiB firmware image with TDVF metadata (BFV of two extended pages, CFV, TD HOB, temporary
/// memory) reachable through the OVMF GUIDed table, as QEMU and the MRTD calculator find it.
pub fn tdvf_firmware() -> Vec<u8> {
    const LEN: usize = 0x10000;
    const META_AT: usize = 0xF000;
    const BFV: u64 = 0xFFFF_0000;
    let sections: [(u32, u32, u64, u64, u32, u32); 4] = [
        (0, 0x2000, BFV, 0x2000, 0, 1),
        (0x2000, 0x1000, BFV + 0x2000, 0x1000, 1, 0),
        (0, 0, 0x80_9000, 0x1000, 2, 0),
        (0, 0, 0x80_A000, 0x2000, 3, 0),
    ];
    let mut fw = vec![0u8; LEN];
    for (i, b) in fw[..0x3000].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let mut meta = b"TDVF".to_vec();
    meta.extend_from_slice(&((16 + 32 * sections.len()) as u32).to_le_bytes());
    meta.extend_from_slice(&1u32.to_le_bytes());
    meta.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for (off, raw, gpa, size, ty, attr) in sections {
        meta.extend_from_slice(&off.to_le_bytes());
        meta.extend_from_slice(&raw.to_le_bytes());
        meta.extend_from_slice(&gpa.to_le_bytes());
        meta.extend_from_slice(&size.to_le_bytes());
        meta.extend_from_slice(&ty.to_le_bytes());
        meta.extend_from_slice(&attr.to_le_bytes());
    }
    fw[META_AT..META_AT + meta.len()].copy_from_slice(&meta);
    // The OVMF table, read backwards from 48 bytes before the end: footer GUID, total length,
    // then one entry (offset of the metadata from the end, its length, the TDX metadata GUID).
    let end = LEN - 32;
    fw[end - 16..end].copy_from_slice(&OVMF_TABLE_FOOTER_GUID);
    fw[end - 18..end - 16].copy_from_slice(&40u16.to_le_bytes());
    fw[end - 34..end - 18].copy_from_slice(&TDX_METADATA_OFFSET_GUID);
    fw[end - 36..end - 34].copy_from_slice(&22u16.to_le_bytes());
    fw[end - 40..end - 36].copy_from_slice(&((LEN - META_AT) as u32).to_le_bytes());
    fw
}

/// The base kernel arguments of the test image.
pub const TEST_BASE_ARGS: &[&str] = &["console=ttyS0", "panic=-1"];

/// A written test image.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// The manifest.json.
    pub manifest: PathBuf,
    /// The manifest as written.
    pub parsed: Manifest,
}

fn verity(seed: u8, blocks: u64) -> VerityParams {
    VerityParams {
        hash_type: 1,
        hash_algorithm: "sha256".into(),
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks: blocks,
        hash_offset: blocks * 4096,
        salt: hex::encode([seed; 32]),
        root_hash: Sha256::from_bytes([seed; 32]),
    }
}

impl TestImage {
    /// Writes the artifacts and manifest.json into `dir`.
    pub fn write(dir: &Path) -> io::Result<Self> {
        Self::write_with(dir, |_| {})
    }

    /// As [`write`](Self::write), letting `edit` change the manifest before it is written (the
    /// artifacts' entries are filled in afterwards from the files).
    pub fn write_with(dir: &Path, edit: impl FnOnce(&mut Manifest)) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let put = |name: &str, bytes: &[u8]| -> io::Result<Artifact> {
            std::fs::write(dir.join(name), bytes)?;
            Ok(Artifact {
                file: name.into(),
                size: bytes.len() as u64,
                sha256: Sha256::digest(bytes),
            })
        };
        let (rootfs_v, model_v) = (verity(1, 4), verity(2, 2));
        let config = b"[server]\nport = 8443\n".to_vec();
        let mut config_disk = config.clone();
        config_disk.resize(4096, 0);
        let artifacts = Artifacts {
            kernel: put("vmlinuz", &efi_pe_kernel(1))?,
            initramfs: put("initramfs.cpio.gz", b"070701 a test initramfs")?,
            rootfs: put("rootfs.img", &vec![0x11; 5 * 4096])?,
            model: put("model.img", &vec![0x22; 3 * 4096])?,
            guest_config: put("guest.toml", &config)?,
            config_disk: put("config.img", &config_disk)?,
        };
        let firmware = BTreeMap::from([(
            chrysalis_attestation::measure::image::FIRMWARE_TDX.to_string(),
            put("ovmf-tdx.fd", &tdvf_firmware())?,
        )]);
        let base: Vec<String> = TEST_BASE_ARGS.iter().map(|s| s.to_string()).collect();
        let kernel_cmdline = bootargs::build(
            &base,
            &MeasuredArgs {
                rootfs: (&rootfs_v).into(),
                model: (&model_v).into(),
                config_sha256: artifacts.guest_config.sha256,
            },
        )
        .map_err(io::Error::other)?;
        let mut m = Manifest {
            format: MANIFEST_FORMAT,
            flavor: "test".into(),
            version: "0.0.0".into(),
            source_date_epoch: 1,
            lock: LockInfo {
                file: "image/locks/test.lock".into(),
                sha256: Sha256::from_bytes([4; 32]),
            },
            kernel: KernelInfo {
                package: "test-kernel".into(),
                version: "1".into(),
                release: "test".into(),
            },
            kernel_cmdline,
            artifacts,
            verity: Verity {
                rootfs: rootfs_v,
                model: model_v,
            },
            model: ModelInfo {
                id: "test".into(),
                files: vec![],
            },
            firmware,
            builders: BTreeMap::new(),
            expected_measurements: None,
        };
        edit(&mut m);
        m.validate().map_err(io::Error::other)?;
        let manifest = dir.join("manifest.json");
        std::fs::write(&manifest, m.to_json())?;
        Ok(Self {
            manifest,
            parsed: m,
        })
    }

    /// The policy a client of a host agent serving this image under the sim profile pins: what the
    /// measurement calculator computes from the image files (MRTD, RTMR1-3; RTMR0 zero, as the
    /// sim quote service reports it), with the simulated Intel root named.
    pub fn sim_tdx_policy(&self) -> io::Result<Policy> {
        let dir = self.manifest.parent().unwrap_or(Path::new("."));
        let read = |f: &str| std::fs::read(dir.join(f));
        let want = expected_tdx(&TdxBootInputs {
            firmware: &read("ovmf-tdx.fd")?,
            kernel: &read("vmlinuz")?,
            initrd: Some(&read("initramfs.cpio.gz")?),
            cmdline: &self.parsed.kernel_cmdline,
            rtmr0: Rtmr0Source::NotPinned,
            page_add_order: PageAddOrder::PerPage,
        })
        .map_err(io::Error::other)?;
        // RTMR0 pinned too: the sim quotes zero for an image that pins none, as `want` holds it.
        let pin = TdxPin::from_registers(&want.registers, true);
        let mut policy = Policy::pinned(vec![pin], vec![]);
        policy
            .trust
            .dangerous_simulated_intel_roots
            .push(SimPki::from_seed(DEFAULT_SEED).root_sha256());
        Ok(policy)
    }
}
