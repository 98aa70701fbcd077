//! `manifest.json`: what a build produced, for hosts (what to boot), clients and reviewers (what to pin).
//!
//! Every artifact is listed with its size and SHA-256; the verity parameters and the kernel command line
//! are recorded as booted; the lock digest and the builder versions say what it was made from. Nothing in
//! a manifest depends on where or when it was built, so two reproducible builds write identical manifests.
//! `expected_measurements` is left for the measurement step (issue 6) to fill.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bootargs as cmdline;
use crate::evidence::Sha256 as Sha256Digest;

/// The manifest format this code reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// Everything needed to open a verity device over an image; recorded in manifests and model pack JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityParams {
    /// dm-verity hash format (always 1: salt hashed before each block).
    pub hash_type: u32,
    /// Hash algorithm (`sha256`).
    pub hash_algorithm: String,
    /// Data block size in bytes.
    pub data_block_size: u32,
    /// Hash block size in bytes.
    pub hash_block_size: u32,
    /// Number of data blocks.
    pub data_blocks: u64,
    /// Byte offset of the hash tree in the file (`data_blocks * data_block_size`).
    pub hash_offset: u64,
    /// Salt, lowercase hex.
    pub salt: String,
    /// Root hash: what goes on the kernel command line.
    pub root_hash: Sha256Digest,
}

/// A manifest that cannot be used, or artifacts that do not match it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not valid JSON for a manifest.
    #[error("manifest is not valid JSON for format {MANIFEST_FORMAT}")]
    Parse(#[source] serde_json::Error),
    /// A format this code does not know.
    #[error("manifest format {found} is not supported (this code reads format {MANIFEST_FORMAT})")]
    Format {
        /// The format in the file.
        found: u32,
    },
    /// The manifest contradicts itself.
    #[error("manifest is inconsistent: {0}")]
    Inconsistent(String),
    /// An artifact could not be read.
    #[error("cannot read artifact {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An artifact's bytes differ from the manifest.
    #[error(transparent)]
    ArtifactMismatch(#[from] Box<ArtifactMismatch>),
    /// The manifest file could not be read.
    #[error("cannot read manifest {path}")]
    Read {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The manifest file is not a usable manifest.
    #[error("manifest {path}")]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ManifestError>,
    },
}

/// An artifact whose size or SHA-256 differs from its manifest entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "artifact {file}: expected {expected_size} bytes sha256 {expected}, found {actual_size} bytes sha256 {actual}"
)]
pub struct ArtifactMismatch {
    /// The artifact's file name.
    pub file: String,
    /// Size in the manifest.
    pub expected_size: u64,
    /// Digest in the manifest.
    pub expected: Sha256Digest,
    /// Size found.
    pub actual_size: u64,
    /// Digest found.
    pub actual: Sha256Digest,
}

/// One file of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// File name, relative to the manifest's directory.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file.
    pub sha256: Sha256Digest,
}

impl Artifact {
    /// Describes the file `dir/file` as it is now.
    pub fn describe(dir: &Path, file: &str) -> Result<Self, ManifestError> {
        let path = dir.join(file);
        let err = |source| ManifestError::Io {
            path: path.clone(),
            source,
        };
        let size = std::fs::metadata(&path).map_err(err)?.len();
        let sha256 = Sha256Digest::of_file(&path).map_err(err)?;
        Ok(Self {
            file: file.into(),
            size,
            sha256,
        })
    }

    /// Returns Ok only if `size` and `sha256` (of bytes read, or of a file hashed) are this
    /// entry's. The one comparison every artifact check goes through.
    pub fn check(&self, size: u64, sha256: Sha256Digest) -> Result<(), Box<ArtifactMismatch>> {
        if size != self.size || sha256 != self.sha256 {
            return Err(Box::new(ArtifactMismatch {
                file: self.file.clone(),
                expected_size: self.size,
                expected: self.sha256,
                actual_size: size,
                actual: sha256,
            }));
        }
        Ok(())
    }

    /// Checks the file `dir/self.file` against this entry, hashing it as it streams (artifacts
    /// such as the rootfs can be large).
    pub fn verify(&self, dir: &Path) -> Result<(), ManifestError> {
        let now = Self::describe(dir, &self.file)?;
        Ok(self.check(now.size, now.sha256)?)
    }
}

/// The files a host needs to boot the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifacts {
    /// The kernel (bzImage), for direct boot.
    pub kernel: Artifact,
    /// The initramfs (guest init + kernel modules).
    pub initramfs: Artifact,
    /// The rootfs disk (virtio-blk serial `rootfs`): erofs followed by its verity tree.
    pub rootfs: Artifact,
    /// The model pack disk (serial `model`): erofs followed by its verity tree.
    pub model: Artifact,
    /// The guest configuration file whose SHA-256 is on the command line.
    pub guest_config: Artifact,
    /// The config disk (serial `config`): the configuration zero-padded to a multiple of 4096 bytes.
    pub config_disk: Artifact,
}

impl Artifacts {
    /// All artifacts with their roles, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Artifact)> {
        [
            ("kernel", &self.kernel),
            ("initramfs", &self.initramfs),
            ("rootfs", &self.rootfs),
            ("model", &self.model),
            ("guest_config", &self.guest_config),
            ("config_disk", &self.config_disk),
        ]
        .into_iter()
    }
}

/// dm-verity parameters of the two verity images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verity {
    /// The rootfs image.
    pub rootfs: VerityParams,
    /// The model pack image.
    pub model: VerityParams,
}

/// The kernel the image boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInfo {
    /// Debian package it comes from.
    pub package: String,
    /// That package's version.
    pub version: String,
    /// `uname -r`.
    pub release: String,
}

/// One model file in the model pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFileInfo {
    /// File name (the guest sees it under `/models/`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256.
    pub sha256: Sha256Digest,
}

/// The model served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Model id.
    pub id: String,
    /// Files in the pack.
    pub files: Vec<ModelFileInfo>,
}

/// The lock the image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockInfo {
    /// Path in the repository (`image/locks/cpu.lock`).
    pub file: String,
    /// SHA-256 of the lock file.
    pub sha256: Sha256Digest,
}

/// The image manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Flavor (`cpu`, `gpu`).
    pub flavor: String,
    /// Version of the builder (the workspace version).
    pub version: String,
    /// The timestamp all files carry.
    pub source_date_epoch: u64,
    /// The lock.
    pub lock: LockInfo,
    /// The kernel.
    pub kernel: KernelInfo,
    /// The exact kernel command line to boot with (measured).
    pub kernel_cmdline: String,
    /// The files.
    pub artifacts: Artifacts,
    /// dm-verity parameters (their root hashes, salts and block counts are on the command line).
    pub verity: Verity,
    /// The model.
    pub model: ModelInfo,
    /// Firmware images (role → file), filled by the firmware build; empty until then.
    #[serde(default)]
    pub firmware: BTreeMap<String, Artifact>,
    /// Tool versions that shaped the bytes (rustc, mkfs.erofs, veritysetup, gcc, python, …).
    pub builders: BTreeMap<String, String>,
    /// Expected launch measurements per platform and VM shape, computed from the artifacts by
    /// [`crate::measure`] when the image is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_measurements: Option<ExpectedMeasurements>,
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        let m: Self = serde_json::from_str(text).map_err(ManifestError::Parse)?;
        m.validate()?;
        Ok(m)
    }

    /// Pretty JSON with a final newline (keys in struct order, maps sorted: stable bytes).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a manifest always serialises");
        s.push('\n');
        s
    }

    /// Checks that the manifest agrees with itself: the command line carries exactly the verity
    /// parameters and config digest recorded, and artifact names are plain, distinct file names.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format { found: self.format });
        }
        let bad = |m: String| Err(ManifestError::Inconsistent(m));
        let args = cmdline::parse(&self.kernel_cmdline)
            .map_err(|e| ManifestError::Inconsistent(e.to_string()))?;
        if args.rootfs != (&self.verity.rootfs).into() {
            return bad(
                "the command line's rootfs verity arguments differ from verity.rootfs".into(),
            );
        }
        if args.model != (&self.verity.model).into() {
            return bad(
                "the command line's model verity arguments differ from verity.model".into(),
            );
        }
        if args.config_sha256 != self.artifacts.guest_config.sha256 {
            return bad("chrysalis.config_sha256 differs from artifacts.guest_config".into());
        }
        let mut names = std::collections::BTreeSet::new();
        let firmware = self
            .firmware
            .iter()
            .map(|(k, v)| (format!("firmware {k}"), v));
        for (role, a) in self
            .artifacts
            .iter()
            .map(|(r, a)| (r.to_owned(), a))
            .chain(firmware)
        {
            if a.file.is_empty() || a.file.contains('/') || a.file.starts_with('.') {
                return bad(format!("{role}: {:?} is not a plain file name", a.file));
            }
            if !names.insert(a.file.as_str()) {
                return bad(format!("{role}: {} is listed twice", a.file));
            }
        }
        for (role, v, a) in [
            ("rootfs", &self.verity.rootfs, &self.artifacts.rootfs),
            ("model", &self.verity.model, &self.artifacts.model),
        ] {
            let tree_start = v.data_blocks * u64::from(v.data_block_size);
            if v.hash_offset != tree_start || a.size <= tree_start {
                return bad(format!(
                    "{role}: hash tree offset {} does not follow {} data blocks in a {}-byte file",
                    v.hash_offset, v.data_blocks, a.size
                ));
            }
        }
        Ok(())
    }

    /// Checks every artifact in `dir` (the manifest's directory) against the manifest.
    pub fn verify_artifacts(&self, dir: &Path) -> Result<(), ManifestError> {
        for (_, a) in self.artifacts.iter() {
            a.verify(dir)?;
        }
        for a in self.firmware.values() {
            a.verify(dir)?;
        }
        Ok(())
    }
}

/// A manifest and the directory its artifacts lie in: what a host boots, and what `chrysalis
/// measure` and `chrysalis policy from-manifest` compute measurements from.
#[derive(Clone, Debug)]
pub struct ImageDir {
    /// The parsed and validated manifest.
    pub manifest: Manifest,
    /// The manifest file, as given to [`ImageDir::load`].
    pub path: PathBuf,
    /// The manifest's directory, absolute: artifact `file` names are relative to it.
    pub dir: PathBuf,
    /// SHA-256 of the manifest file's bytes.
    pub digest: Sha256Digest,
}

impl ImageDir {
    /// Reads, parses and validates the manifest at `path`. Does not read the artifacts (see
    /// [`verify_artifacts`](Self::verify_artifacts) and [`read_verified`](Self::read_verified)).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let read_err = |source| ManifestError::Read {
            path: path.into(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let manifest = Manifest::from_json(&text).map_err(|source| ManifestError::Invalid {
            path: path.into(),
            source: Box::new(source),
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).map_err(read_err)?;
        Ok(Self {
            manifest,
            path: path.into(),
            dir,
            digest: Sha256Digest::digest(text.as_bytes()),
        })
    }

    /// Where `artifact` lies on disk.
    pub fn path_of(&self, artifact: &Artifact) -> PathBuf {
        self.dir.join(&artifact.file)
    }

    /// The firmware image of `role` (`tdx`, `snp`), if the manifest lists one.
    pub fn firmware(&self, role: &str) -> Option<&Artifact> {
        self.manifest.firmware.get(role)
    }

    /// Reads `artifact` and returns its bytes only if their size and SHA-256 are the
    /// manifest's, so that what the caller boots or measures is exactly what the manifest names.
    pub fn read_verified(&self, artifact: &Artifact) -> Result<Vec<u8>, ManifestError> {
        let path = self.path_of(artifact);
        let bytes = std::fs::read(&path).map_err(|source| ManifestError::Io { path, source })?;
        artifact.check(bytes.len() as u64, Sha256Digest::digest(&bytes))?;
        Ok(bytes)
    }

    /// Re-hashes every artifact (and firmware image) listed in the manifest. Returns Ok only if
    /// each file exists with exactly the recorded size and SHA-256; the first mismatch is an
    /// error naming the file and both digests.
    pub fn verify_artifacts(&self) -> Result<(), ManifestError> {
        self.manifest.verify_artifacts(&self.dir)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bootargs::MeasuredArgs;

    fn art(file: &str, n: u8, size: u64) -> Artifact {
        Artifact {
            file: file.into(),
            size,
            sha256: Sha256Digest::from_bytes([n; 32]),
        }
    }

    fn verity(n: u8, blocks: u64) -> VerityParams {
        VerityParams {
            hash_type: 1,
            hash_algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: blocks,
            hash_offset: blocks * 4096,
            salt: hex::encode([n; 32]),
            root_hash: Sha256Digest::from_bytes([n; 32]),
        }
    }

    pub(crate) fn sample() -> Manifest {
        let rootfs = verity(1, 100);
        let model = verity(2, 10);
        let config = art("guest.toml", 3, 50);
        let kernel_cmdline = cmdline::build(
            &["console=ttyS0".into()],
            &MeasuredArgs {
                rootfs: (&rootfs).into(),
                model: (&model).into(),
                config_sha256: config.sha256,
            },
        )
        .unwrap();
        Manifest {
            format: MANIFEST_FORMAT,
            flavor: "cpu".into(),
            version: "0.1.0".into(),
            source_date_epoch: 1,
            lock: LockInfo {
                file: "image/locks/cpu.lock".into(),
                sha256: Sha256Digest::from_bytes([4; 32]),
            },
            kernel: KernelInfo {
                package: "linux-image-x".into(),
                version: "1".into(),
                release: "x".into(),
            },
            kernel_cmdline,
            artifacts: Artifacts {
                kernel: art("vmlinuz", 5, 1),
                initramfs: art("initramfs.cpio.gz", 6, 1),
                rootfs: art("rootfs.img", 7, 100 * 4096 + 8192),
                model: art("model.img", 8, 10 * 4096 + 4096),
                guest_config: config,
                config_disk: art("config.img", 9, 4096),
            },
            verity: Verity { rootfs, model },
            model: ModelInfo {
                id: "m".into(),
                files: vec![],
            },
            firmware: BTreeMap::new(),
            builders: BTreeMap::from([("rustc".into(), "rustc 1.95.0".into())]),
            expected_measurements: None,
        }
    }

    #[test]
    fn json_round_trip_is_byte_stable() {
        let m = sample();
        let json = m.to_json();
        let back = Manifest::from_json(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_json(), json);
        assert!(
            !json.contains("expected_measurements"),
            "absent until the measurement step fills it"
        );
    }

    #[test]
    fn expected_measurements_round_trip_and_become_pins() {
        use crate::Measurement;
        let mut m = sample();
        let shape = VmShape {
            vcpus: 2,
            memory_mib: 4096,
        };
        m.expected_measurements = Some(ExpectedMeasurements {
            tdx: vec![TdxExpected {
                shape: shape.clone(),
                firmware: "tdx".into(),
                registers: crate::TdxRegisters {
                    mr_td: Measurement([1; 48]),
                    rtmr: [0, 2, 3, 0].map(|b| Measurement([b; 48])),
                },
                rtmr0_pinned: false,
                qemu_version: None,
                qemu_machine: None,
            }],
            snp: vec![SnpExpected {
                shape,
                vcpu_type: "EPYC-v4".into(),
                guest_features: 1,
                firmware: "snp".into(),
                measurement: Measurement([4; 48]),
            }],
        });
        let back = Manifest::from_json(&m.to_json()).unwrap();
        assert_eq!(back.expected_measurements, m.expected_measurements);
        let tdx = back.tdx_pins();
        assert_eq!(tdx.len(), 1);
        assert_eq!(tdx[0].rtmr2, Some(Measurement([3; 48])));
        assert_eq!(tdx[0].rtmr0, None);
        // The full TD_ATTRIBUTES and XFAM every shape is launched with are pinned.
        assert_eq!(
            tdx[0].td_attributes.map(|f| f.to_hex()).as_deref(),
            Some("0000001000000000")
        );
        assert_eq!(
            tdx[0].xfam.map(|f| f.to_hex()).as_deref(),
            Some("e702060000000000")
        );
        assert!(tdx[0].name.as_deref().unwrap().contains("2 vCPU"));
        assert_eq!(back.snp_pins()[0].measurement, Measurement([4; 48]));
        assert_eq!(
            back.snp_pins()[0].policy,
            Some(crate::measure::snp::CHRYSALIS_GUEST_POLICY)
        );
    }

    #[test]
    fn tdx_entries_keep_one_key_per_register() {
        use crate::{Measurement, TdxRegisters};
        let h = |b: u8| format!("{b:02x}").repeat(48);
        let mut e = TdxExpected {
            shape: VmShape {
                vcpus: 2,
                memory_mib: 2048,
            },
            firmware: "tdx".into(),
            registers: TdxRegisters {
                mr_td: Measurement([1; 48]),
                rtmr: [0, 2, 3, 4].map(|b| Measurement([b; 48])),
            },
            rtmr0_pinned: false,
            qemu_version: None,
            qemu_machine: None,
        };
        // The manifest's layout: one key per register, RTMR0 and the QEMU keys between MRTD
        // and RTMR1 when RTMR0 is pinned.
        let json = |rtmr0: &str| {
            format!(
                r#"{{"shape":{{"vcpus":2,"memory_mib":2048}},"firmware":"tdx","mr_td":"{}",{rtmr0}"rtmr1":"{}","rtmr2":"{}","rtmr3":"{}"}}"#,
                h(1),
                h(2),
                h(3),
                h(4)
            )
        };
        let unpinned = json("");
        assert_eq!(serde_json::to_string(&e).unwrap(), unpinned);
        assert_eq!(serde_json::from_str::<TdxExpected>(&unpinned).unwrap(), e);
        assert_eq!(e.rtmr0(), None);

        e.registers.rtmr[0] = Measurement([9; 48]);
        e.rtmr0_pinned = true;
        e.qemu_version = Some("10.0".into());
        e.qemu_machine = Some("pc-q35-10.0".into());
        let pinned = json(&format!(
            r#""rtmr0":"{}","qemu_version":"10.0","qemu_machine":"pc-q35-10.0","#,
            h(9)
        ));
        assert_eq!(serde_json::to_string(&e).unwrap(), pinned);
        assert_eq!(serde_json::from_str::<TdxExpected>(&pinned).unwrap(), e);
        assert_eq!(e.rtmr0(), Some(Measurement([9; 48])));

        // Unknown keys are refused, as before the registers were one value.
        let extra = pinned.replacen("{\"shape\"", "{\"rtmr\":[],\"shape\"", 1);
        assert!(serde_json::from_str::<TdxExpected>(&extra).is_err());
        // RTMR0 is compared only where the entry pins it.
        let mut other = e.registers;
        other.rtmr[0] = Measurement::ZERO;
        assert!(!e.matches(&other));
        e.rtmr0_pinned = false;
        assert!(e.matches(&other));
        other.rtmr[2] = Measurement::ZERO;
        assert!(!e.matches(&other));
    }

    #[test]
    fn a_command_line_that_disagrees_is_refused() {
        let mut m = sample();
        m.verity.rootfs.root_hash = Sha256Digest::from_bytes([0xee; 32]);
        assert!(
            matches!(m.validate(), Err(ManifestError::Inconsistent(msg)) if msg.contains("rootfs"))
        );
        let mut m = sample();
        m.artifacts.guest_config.sha256 = Sha256Digest::from_bytes([0xee; 32]);
        assert!(
            matches!(m.validate(), Err(ManifestError::Inconsistent(msg)) if msg.contains("config"))
        );
        let mut m = sample();
        m.artifacts.model.file = "rootfs.img".into();
        assert!(
            matches!(m.validate(), Err(ManifestError::Inconsistent(msg)) if msg.contains("twice"))
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = sample().to_json().replacen("{", "{\n  \"extra\": 1,", 1);
        assert!(matches!(
            Manifest::from_json(&json),
            Err(ManifestError::Parse(_))
        ));
    }

    #[test]
    fn an_image_dir_reads_only_the_bytes_its_manifest_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"kernel").unwrap();
        let mut m = sample();
        m.artifacts.kernel = Artifact::describe(dir.path(), "vmlinuz").unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, m.to_json()).unwrap();
        let image = ImageDir::load(&path).unwrap();
        assert_eq!(image.digest, Sha256Digest::digest(m.to_json().as_bytes()));
        assert!(image.dir.is_absolute());
        let kernel = &image.manifest.artifacts.kernel;
        assert_eq!(image.read_verified(kernel).unwrap(), b"kernel");
        std::fs::write(dir.path().join("vmlinuz"), b"kernel!").unwrap();
        assert!(matches!(
            image.read_verified(kernel),
            Err(ManifestError::ArtifactMismatch(e)) if e.file == "vmlinuz" && e.actual_size == 7
        ));
        std::fs::remove_file(dir.path().join("vmlinuz")).unwrap();
        assert!(matches!(
            image.read_verified(kernel),
            Err(ManifestError::Io { path, .. }) if path.ends_with("vmlinuz")
        ));
        assert!(matches!(
            ImageDir::load(&dir.path().join("none.json")),
            Err(ManifestError::Read { .. })
        ));
        std::fs::write(&path, "{}").unwrap();
        assert!(matches!(
            ImageDir::load(&path),
            Err(ManifestError::Invalid { source, .. }) if matches!(*source, ManifestError::Parse(_))
        ));
    }

    #[test]
    fn artifacts_are_verified_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"kernel").unwrap();
        let good = Artifact::describe(dir.path(), "vmlinuz").unwrap();
        good.verify(dir.path()).unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"kernel!").unwrap();
        let err = good.verify(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("vmlinuz") && err.contains("expected 6 bytes"),
            "{err}"
        );
    }
}

/// A VM shape: what, besides the artifacts, a launch measurement depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmShape {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// The registers a TDX guest booted from this image reports, for one VM shape. In the manifest
/// each register is its own key (`mr_td`, `rtmr0` only when pinned, `rtmr1`..`rtmr3`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TdxExpectedWire", into = "TdxExpectedWire")]
pub struct TdxExpected {
    /// The VM shape.
    pub shape: VmShape,
    /// Which firmware artifact (key of [`Manifest::firmware`]) was measured.
    pub firmware: String,
    /// MRTD of that firmware; RTMR1 the kernel, as TDVF measures a direct boot; RTMR2 the
    /// command line and initrd; RTMR3 zero (nothing extends it). RTMR0 is computed for the QEMU
    /// release and machine type below, or captured on real hardware for this shape (it depends
    /// on the VMM's ACPI tables and TD HOB); zero when `rtmr0_pinned` is false.
    pub registers: crate::TdxRegisters,
    /// Whether `registers.rtmr[0]` is pinned; when false RTMR0 is not compared.
    pub rtmr0_pinned: bool,
    /// The QEMU release (major.minor) RTMR0 was computed for, when it was computed.
    pub qemu_version: Option<String>,
    /// The QEMU machine type RTMR0 was computed for (`pc-q35-10.0`), when it was computed.
    pub qemu_machine: Option<String>,
}

impl TdxExpected {
    /// RTMR0 when it is pinned.
    pub fn rtmr0(&self) -> Option<crate::Measurement> {
        self.rtmr0_pinned.then_some(self.registers.rtmr[0])
    }

    /// Whether `registers` are what this entry states: MRTD and RTMR1-3 equal, and RTMR0 too
    /// when this entry pins it.
    pub fn matches(&self, registers: &crate::TdxRegisters) -> bool {
        let stated = &self.registers;
        stated.mr_td == registers.mr_td
            && stated.rtmr[1..] == registers.rtmr[1..]
            && (!self.rtmr0_pinned || stated.rtmr[0] == registers.rtmr[0])
    }

    /// The registers this entry states, as a pin: MRTD, RTMR1-3, and RTMR0 when it is pinned.
    /// Nothing else is set (see [`Manifest::tdx_pins`] for the launch values a policy adds).
    pub fn pin(&self) -> crate::policy::TdxPin {
        crate::policy::TdxPin::from_registers(&self.registers, self.rtmr0_pinned)
    }
}

/// [`TdxExpected`] as the manifest lays it out (the key order is part of the format).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TdxExpectedWire {
    shape: VmShape,
    firmware: String,
    mr_td: crate::Measurement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rtmr0: Option<crate::Measurement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    qemu_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    qemu_machine: Option<String>,
    rtmr1: crate::Measurement,
    rtmr2: crate::Measurement,
    rtmr3: crate::Measurement,
}

impl From<TdxExpectedWire> for TdxExpected {
    fn from(w: TdxExpectedWire) -> Self {
        Self {
            shape: w.shape,
            firmware: w.firmware,
            registers: crate::TdxRegisters {
                mr_td: w.mr_td,
                rtmr: [
                    w.rtmr0.unwrap_or(crate::Measurement::ZERO),
                    w.rtmr1,
                    w.rtmr2,
                    w.rtmr3,
                ],
            },
            rtmr0_pinned: w.rtmr0.is_some(),
            qemu_version: w.qemu_version,
            qemu_machine: w.qemu_machine,
        }
    }
}

impl From<TdxExpected> for TdxExpectedWire {
    fn from(e: TdxExpected) -> Self {
        let rtmr0 = e.rtmr0();
        let [_, rtmr1, rtmr2, rtmr3] = e.registers.rtmr;
        Self {
            shape: e.shape,
            firmware: e.firmware,
            mr_td: e.registers.mr_td,
            rtmr0,
            qemu_version: e.qemu_version,
            qemu_machine: e.qemu_machine,
            rtmr1,
            rtmr2,
            rtmr3,
        }
    }
}

/// The launch digest an SEV-SNP guest booted from this image reports, for one VM shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpExpected {
    /// The VM shape.
    pub shape: VmShape,
    /// The vCPU model (its CPUID signature is part of the VMSAs), e.g. `EPYC-v4`.
    pub vcpu_type: String,
    /// SEV_FEATURES of the VMSAs.
    pub guest_features: u64,
    /// Which firmware artifact (key of [`Manifest::firmware`]) was measured.
    pub firmware: String,
    /// The launch measurement.
    pub measurement: crate::Measurement,
}

/// Expected measurements per platform and VM shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedMeasurements {
    /// TDX, one entry per shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tdx: Vec<TdxExpected>,
    /// SEV-SNP, one entry per shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snp: Vec<SnpExpected>,
}

impl Manifest {
    /// Policy pins for every TDX shape of this image, labelled with the image and shape.
    pub fn tdx_pins(&self) -> Vec<crate::policy::TdxPin> {
        let e = self.expected_measurements.iter().flat_map(|e| e.tdx.iter());
        e.map(|t| {
            let mut pin = t.pin();
            pin.name = Some(format!(
                "chrysalis {} {}, {} vCPU, {} MiB (tdx)",
                self.flavor, self.version, t.shape.vcpus, t.shape.memory_mib
            ));
            // Host-chosen launch values the launcher never sets: pinned to their zero default,
            // so no host can carry its own identity or configuration id in a pinned TD.
            pin.mr_config_id = Some(crate::evidence::Measurement::ZERO);
            pin.mr_owner = Some(crate::evidence::Measurement::ZERO);
            pin.mr_owner_config = Some(crate::evidence::Measurement::ZERO);
            // Every shape is launched with the same attributes and XFAM (the host launcher's
            // `tdx-guest` object and the sim quote service alike).
            pin.td_attributes = Some(crate::tdx_attributes::LAUNCH_TD_ATTRIBUTES);
            pin.xfam = Some(crate::tdx_attributes::LAUNCH_XFAM);
            pin
        })
        .collect()
    }

    /// Policy pins for every SNP shape of this image.
    pub fn snp_pins(&self) -> Vec<crate::policy::SnpPin> {
        let e = self.expected_measurements.iter().flat_map(|e| e.snp.iter());
        e.map(|s| crate::policy::SnpPin {
            name: Some(format!(
                "chrysalis {} {}, {} vCPU {}, {} MiB (snp)",
                self.flavor, self.version, s.shape.vcpus, s.vcpu_type, s.shape.memory_mib
            )),
            measurement: s.measurement,
            // The launcher sets no HOST_DATA: pinned to zero like TDX's MRCONFIGID.
            host_data: Some(crate::evidence::HostData([0; 32])),
            // Not part of the launch digest: pinned on its own, as the host launches it.
            policy: Some(crate::measure::snp::CHRYSALIS_GUEST_POLICY),
            vmpl: None,
        })
        .collect()
    }
}
