//! The image the agent boots: its manifest.json (`chrysalis_attestation::manifest`) and the
//! artifact files beside it, checked against the manifest's sizes and SHA-256 digests before launch.
//!
//! The host is untrusted, so this check protects nobody from the host; it protects the GPU owner
//! from booting a half-copied or stale image that every pinned client would then reject, and it
//! gives the sim quote service the guarantee that the bytes it measures are the manifest's.

use std::path::{Path, PathBuf};

use chrysalis_attestation::Sha256;
use chrysalis_attestation::manifest::{Artifact, ImageDir, ManifestError};

/// The manifest's firmware roles for Intel TDX (TDVF) and AMD SEV-SNP (AmdSev OVMF), as the image
/// build and the measurement calculators name them.
pub use chrysalis_attestation::measure::image::{FIRMWARE_SNP, FIRMWARE_TDX};

/// Errors of loading an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The manifest file could not be read.
    #[error("reading image manifest {path}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not a valid manifest (format, JSON, or it contradicts itself).
    #[error("image manifest {path}")]
    Manifest {
        /// The manifest path.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ManifestError>,
    },
    /// An artifact is missing, unreadable, or differs from the manifest (the source names the file,
    /// the expected and the found size and SHA-256).
    #[error("image {dir}: artifact check failed")]
    Artifact {
        /// The manifest's directory.
        dir: PathBuf,
        /// The mismatch or I/O error.
        #[source]
        source: Box<ManifestError>,
    },
    /// `[qemu] firmware` names a file that is not the manifest's firmware for the profile.
    #[error(transparent)]
    FirmwareMismatch(Box<FirmwareMismatch>),
    /// `[qemu] firmware` could not be read.
    #[error("qemu.firmware: reading {path}")]
    FirmwareRead {
        /// The configured file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `[qemu] firmware` is not a copy of the manifest's firmware (boxed in [`ImageError`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "qemu.firmware: {path} has sha256 {actual}, but the image manifest's firmware \"{role}\" ({file}) has sha256 {expected}; remove qemu.firmware to boot the manifest's firmware, which the published measurements are computed from"
)]
pub struct FirmwareMismatch {
    /// The configured file.
    pub path: PathBuf,
    /// The manifest's firmware role (`tdx`, `snp`).
    pub role: String,
    /// The manifest's file name for it.
    pub file: String,
    /// The manifest's SHA-256.
    pub expected: Sha256,
    /// The configured file's SHA-256.
    pub actual: Sha256,
}

/// Loads the manifest at `path` ([`ImageDir::load`]); does not read the artifacts (see
/// [`verify_artifacts`]).
pub fn load(path: &Path) -> Result<ImageDir, ImageError> {
    ImageDir::load(path).map_err(|e| match e {
        ManifestError::Read { path, source } => ImageError::Read { path, source },
        ManifestError::Invalid { path, source } => ImageError::Manifest { path, source },
        other => ImageError::Manifest {
            path: path.into(),
            source: Box::new(other),
        },
    })
}

/// [`ImageDir::verify_artifacts`], the error naming the image directory.
pub fn verify_artifacts(image: &ImageDir) -> Result<(), ImageError> {
    image
        .verify_artifacts()
        .map_err(|source| artifact_error(image, source))
}

/// [`ImageDir::read_verified`], the error naming the image directory.
pub fn read_verified(image: &ImageDir, artifact: &Artifact) -> Result<Vec<u8>, ImageError> {
    image
        .read_verified(artifact)
        .map_err(|source| artifact_error(image, source))
}

fn artifact_error(image: &ImageDir, source: ManifestError) -> ImageError {
    ImageError::Artifact {
        dir: image.dir.clone(),
        source: Box::new(source),
    }
}

/// Checks that `path` (host.toml's `[qemu] firmware`) has the SHA-256 of the manifest's firmware
/// `role`. A manifest without that role is left to the launch plan, which refuses it.
pub fn verify_firmware_copy(image: &ImageDir, role: &str, path: &Path) -> Result<(), ImageError> {
    let Some(artifact) = image.firmware(role) else {
        return Ok(());
    };
    let actual = Sha256::of_file(path).map_err(|source| ImageError::FirmwareRead {
        path: path.into(),
        source,
    })?;
    if actual != artifact.sha256 {
        return Err(ImageError::FirmwareMismatch(Box::new(FirmwareMismatch {
            path: path.into(),
            role: role.into(),
            file: artifact.file.clone(),
            expected: artifact.sha256,
            actual,
        })));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrysalis_testkit::image::TestImage;

    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    #[test]
    fn a_written_image_loads_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let t = TestImage::write(dir.path()).unwrap();
        let img = load(&t.manifest).unwrap();
        verify_artifacts(&img).unwrap();
        assert_eq!(
            img.path_of(&img.manifest.artifacts.kernel),
            std::path::absolute(dir.path()).unwrap().join("vmlinuz")
        );
        assert!(img.firmware(FIRMWARE_TDX).is_some());
        assert_eq!(
            img.digest,
            Sha256::digest(&std::fs::read(&t.manifest).unwrap())
        );
    }

    #[test]
    fn a_changed_artifact_is_named_with_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let t = TestImage::write(dir.path()).unwrap();
        let img = load(&t.manifest).unwrap();
        let initrd = dir.path().join(&img.manifest.artifacts.initramfs.file);
        let mut bytes = std::fs::read(&initrd).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&initrd, &bytes).unwrap();
        let expected = img.manifest.artifacts.initramfs.sha256.to_string();
        let actual = Sha256::digest(&bytes).to_string();
        for e in [
            verify_artifacts(&img).unwrap_err(),
            read_verified(&img, &img.manifest.artifacts.initramfs).unwrap_err(),
        ] {
            let msg = chain(&e);
            assert!(
                msg.contains("initramfs.cpio.gz")
                    && msg.contains(&expected)
                    && msg.contains(&actual),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_missing_file_and_a_bad_manifest_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let t = TestImage::write(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("model.img")).unwrap();
        let img = load(&t.manifest).unwrap();
        assert!(chain(&verify_artifacts(&img).unwrap_err()).contains("model.img"));

        std::fs::write(&t.manifest, "{\"format\": 1}").unwrap();
        let msg = chain(&load(&t.manifest).unwrap_err());
        assert!(msg.contains("manifest.json"), "{msg}");
    }
}
