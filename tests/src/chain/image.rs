//! The built guest image the chain boots: where to find it, and copies of it with one byte
//! changed and the manifest rewritten to match (what a malicious host can do).

use std::path::{Path, PathBuf};

use chrysalis_attestation::manifest::{Artifact, Manifest};

use super::ChainError;
use super::process::write_atomic;

/// A guest image: `manifest.json` and the artifacts beside it.
#[derive(Clone, Debug)]
pub struct Image {
    /// The manifest file.
    pub manifest_path: PathBuf,
    /// The parsed manifest.
    pub manifest: Manifest,
}

/// A one-byte change to an image that the host's own artifact check cannot see (the manifest is
/// rewritten to the new hash), but the guest's measurements or dm-verity do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Byte 9 of the initramfs's gzip header (the OS field, which the kernel's decompressor
    /// ignores): the guest boots as before, but RTMR2, which measures the initrd, changes.
    InitramfsGzipOs,
    /// One byte of the rootfs's first data block (its erofs superblock, read while mounting):
    /// dm-verity refuses the block and the guest init powers off.
    RootfsByte,
}

/// Where the image directory is looked for, in order.
pub const IMAGE_HINT: &str = "CHRYSALIS_IMAGE_DIR=<dir with manifest.json>, \
     CHRYSALIS_IMAGE_MANIFEST=<manifest.json>, or out/cpu/manifest.json in the repository \
     (cargo xtask image build --flavor cpu)";

impl Image {
    /// Reads and checks `manifest.json` (format, command line against the verity parameters).
    /// Does not hash the artifacts; the host agent does that before every launch.
    pub fn open(manifest_path: &Path) -> Result<Image, ChainError> {
        let text = std::fs::read_to_string(manifest_path).map_err(|source| ChainError::Io {
            what: format!("reading {}", manifest_path.display()),
            source,
        })?;
        let manifest = Manifest::from_json(&text).map_err(|e| ChainError::Manifest {
            path: manifest_path.to_owned(),
            source: Box::new(e),
        })?;
        Ok(Image {
            manifest_path: manifest_path.to_owned(),
            manifest,
        })
    }

    /// The built image's manifest: `$CHRYSALIS_IMAGE_DIR/manifest.json`, else
    /// `$CHRYSALIS_IMAGE_MANIFEST`, else `<repo>/out/cpu/manifest.json`; None if none exists.
    pub fn find(repo: &Path) -> Option<PathBuf> {
        let candidates = [
            std::env::var_os("CHRYSALIS_IMAGE_DIR").map(|d| PathBuf::from(d).join("manifest.json")),
            std::env::var_os("CHRYSALIS_IMAGE_MANIFEST").map(PathBuf::from),
            Some(repo.join("out/cpu/manifest.json")),
        ];
        candidates.into_iter().flatten().find(|p| p.is_file())
    }

    /// The directory holding the artifacts.
    pub fn dir(&self) -> &Path {
        self.manifest_path.parent().unwrap_or(Path::new("."))
    }

    /// Every file the manifest names (artifacts and firmware).
    pub fn files(&self) -> Vec<String> {
        self.manifest
            .artifacts
            .iter()
            .map(|(_, a)| a.file.clone())
            .chain(self.manifest.firmware.values().map(|a| a.file.clone()))
            .collect()
    }

    /// A copy of this image in `dest` with `tamper` applied and the manifest rewritten to the
    /// changed file's size and SHA-256. Unchanged files are hard links where possible (never
    /// written to); the changed file and the manifest are new files, written then renamed.
    pub fn tampered_copy(&self, dest: &Path, tamper: Tamper) -> Result<Image, ChainError> {
        let io = |what: String| move |source| ChainError::Io { what, source };
        std::fs::create_dir_all(dest).map_err(io(format!("creating {}", dest.display())))?;
        let target = match tamper {
            Tamper::InitramfsGzipOs => self.manifest.artifacts.initramfs.file.clone(),
            Tamper::RootfsByte => self.manifest.artifacts.rootfs.file.clone(),
        };
        for f in self.files() {
            if f == target {
                continue;
            }
            let (src, dst) = (self.dir().join(&f), dest.join(&f));
            let _ = std::fs::remove_file(&dst);
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).map_err(io(format!(
                    "copying {} to {}",
                    src.display(),
                    dst.display()
                )))?;
            }
        }
        let src = self.dir().join(&target);
        let mut bytes = std::fs::read(&src).map_err(io(format!("reading {}", src.display())))?;
        match tamper {
            Tamper::InitramfsGzipOs => {
                if bytes.len() < 10 || bytes[..2] != [0x1f, 0x8b] {
                    return Err(ChainError::BadImage(format!(
                        "{} is not gzip-compressed; cannot change its header's OS byte",
                        src.display()
                    )));
                }
                // Any other OS code: 255 (unknown) is what the image builder writes.
                bytes[9] = if bytes[9] == 3 { 255 } else { 3 };
            }
            Tamper::RootfsByte => {
                if bytes.len() < 4096 {
                    return Err(ChainError::BadImage(format!(
                        "{} is too small",
                        src.display()
                    )));
                }
                bytes[1024 + 8] ^= 0xff;
            }
        }
        write_atomic(&dest.join(&target), &bytes)?;
        let mut m = self.manifest.clone();
        let described = Artifact::describe(dest, &target).map_err(|e| ChainError::Manifest {
            path: dest.join(&target),
            source: Box::new(e),
        })?;
        match tamper {
            Tamper::InitramfsGzipOs => m.artifacts.initramfs = described,
            Tamper::RootfsByte => m.artifacts.rootfs = described,
        }
        let manifest_path = dest.join("manifest.json");
        write_atomic(&manifest_path, m.to_json().as_bytes())?;
        Image::open(&manifest_path)
    }
}
