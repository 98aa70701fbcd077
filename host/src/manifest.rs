//! The few fields of the image manifest (manifest.json) that the launcher needs.
//!
//! TEMPORARY: the image crate defines the typed manifest (image/src/manifest.rs) in parallel, and
//! the host may not depend on the image crate. Until the manifest types move to a crate the host
//! can use (or their layout is fixed), this reads only: the artifacts to boot and attach (`kernel`,
//! `initrd`, `rootfs`, optional `model` and `firmware`, each with a `path` relative to the
//! manifest's directory) and the measured kernel command line; other fields are ignored, except
//! `measurements`, which /status shows as it is.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Errors of reading a manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    #[error("reading image manifest {path}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the expected JSON.
    #[error("parsing image manifest {path}")]
    Parse {
        /// The manifest path.
        path: PathBuf,
        /// The JSON error (names the field and line).
        #[source]
        source: serde_json::Error,
    },
    /// A field has a value the launcher cannot use.
    #[error("image manifest {path}: {field}: {reason}")]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// The field, e.g. `artifacts.kernel.path`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// One file of the image.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct Artifact {
    /// Path relative to the manifest's directory (or absolute).
    pub path: PathBuf,
    /// Its SHA-256, hex (not checked by the host: the measurement is what the client checks).
    #[serde(default)]
    pub sha256: Option<String>,
}

/// The artifacts the launcher boots or attaches.
#[derive(Clone, Debug, Deserialize)]
pub struct Artifacts {
    /// The guest kernel (bzImage), booted directly.
    pub kernel: Artifact,
    /// The initramfs.
    pub initrd: Artifact,
    /// The root file system image (with its dm-verity tree), attached read-only.
    pub rootfs: Artifact,
    /// The model pack (with its dm-verity tree), attached read-only.
    #[serde(default)]
    pub model: Option<Artifact>,
    /// Firmware built with the image (TDVF / AmdSev OVMF), if any.
    #[serde(default)]
    pub firmware: Option<Artifact>,
}

/// The part of manifest.json that the host reads.
#[derive(Clone, Debug, Deserialize)]
pub struct ImageManifest {
    /// The artifacts.
    pub artifacts: Artifacts,
    /// The kernel command line (measured: it carries the dm-verity root hashes).
    pub cmdline: String,
    /// Expected measurements, shown in /status as they are.
    #[serde(default)]
    pub measurements: Option<serde_json::Value>,
}

/// A manifest read from disk, with where it came from and its digest.
#[derive(Clone, Debug)]
pub struct LoadedManifest {
    /// The parsed fields.
    pub manifest: ImageManifest,
    /// The manifest file.
    pub path: PathBuf,
    /// SHA-256 of the manifest file's bytes, hex.
    pub digest: String,
}

impl LoadedManifest {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let bytes = std::fs::read(path).map_err(|source| ManifestError::Read {
            path: path.into(),
            source,
        })?;
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse {
                path: path.into(),
                source,
            })?;
        let invalid = |field, reason: &str| ManifestError::Invalid {
            path: path.into(),
            field,
            reason: reason.into(),
        };
        if manifest.cmdline.contains('\n') || manifest.cmdline.contains('\0') {
            return Err(invalid("cmdline", "contains a newline or NUL"));
        }
        if manifest.artifacts.kernel.path.as_os_str().is_empty() {
            return Err(invalid("artifacts.kernel.path", "is empty"));
        }
        Ok(Self {
            manifest,
            path: path.into(),
            digest: hex::encode(Sha256::digest(&bytes)),
        })
    }

    /// An artifact's path, resolved against the manifest's directory.
    pub fn resolve(&self, artifact: &Artifact) -> PathBuf {
        match self.path.parent() {
            Some(dir) if artifact.path.is_relative() => dir.join(&artifact.path),
            _ => artifact.path.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_artifacts_relative_to_the_manifest_and_hashes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let text = r#"{"schema": 1, "artifacts": {"kernel": {"path": "vmlinuz", "sha256": "00"},
            "initrd": {"path": "initrd.img"}, "rootfs": {"path": "/abs/rootfs.erofs"}},
            "cmdline": "console=ttyS0 ro", "measurements": {"tdx": {"mrtd": "ab"}}}"#;
        std::fs::write(&path, text).unwrap();
        let m = LoadedManifest::load(&path).unwrap();
        assert_eq!(
            m.resolve(&m.manifest.artifacts.kernel),
            dir.path().join("vmlinuz")
        );
        assert_eq!(
            m.resolve(&m.manifest.artifacts.rootfs),
            PathBuf::from("/abs/rootfs.erofs")
        );
        assert!(m.manifest.artifacts.model.is_none());
        assert_eq!(m.digest, hex::encode(Sha256::digest(text.as_bytes())));
    }

    #[test]
    fn missing_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(
            &path,
            r#"{"artifacts": {"kernel": {"path": "k"}, "initrd": {"path": "i"}}, "cmdline": ""}"#,
        )
        .unwrap();
        let e = LoadedManifest::load(&path).unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains("rootfs"), "{chain}");
    }
}
