//! The firmware lock file: Debian's edk2 source package pinned by file name, size and sha256.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::FirmwareError;

/// The parsed lock file (`image/lock/firmware.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceLock {
    /// The pinned source package.
    pub source: SourcePackage,
}

/// A Debian source package and its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePackage {
    /// Source package name (`edk2`).
    pub package: String,
    /// Exact Debian version (`2025.02-8+deb13u1`).
    pub version: String,
    /// The suite it was taken from, for people; apt is asked for the exact version.
    pub suite: String,
    /// The directory the orig tarball unpacks to (`edk2-2025.02`).
    pub upstream_dir: String,
    /// Seconds since the epoch of the newest debian/changelog entry, exported as
    /// `SOURCE_DATE_EPOCH` to the build.
    pub source_date_epoch: u64,
    /// The package's files.
    pub files: Vec<SourceFile>,
}

/// One pinned file of the source package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// File name as the archive serves it.
    pub name: String,
    /// What the file is.
    pub role: FileRole,
    /// Size in bytes.
    pub size: u64,
    /// sha256, lowercase hex.
    pub sha256: String,
}

/// The part a file plays in a Debian "3.0 (quilt)" source package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileRole {
    /// The signed source control file; pinned for provenance, not consumed by the build.
    Dsc,
    /// The upstream tarball.
    Orig,
    /// The Debian packaging tarball (debian/, including debian/patches).
    Debian,
}

impl FileRole {
    /// Whether the build reads this file (and therefore must have it locally).
    pub fn consumed(self) -> bool {
        !matches!(self, Self::Dsc)
    }
}

impl SourceLock {
    /// Parses and validates a lock file's text. `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, FirmwareError> {
        let lock: Self = toml::from_str(text).map_err(|e| FirmwareError::LockParse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        lock.validate()?;
        Ok(lock)
    }

    /// Reads, parses and validates a lock file.
    pub fn load(path: &Path) -> Result<Self, FirmwareError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| FirmwareError::io("reading", path, e))?;
        Self::parse(&text, path)
    }

    /// Checks what serde cannot: one file per role (orig and debian required), well-formed hashes,
    /// and file names that cannot escape a directory.
    pub fn validate(&self) -> Result<(), FirmwareError> {
        let src = &self.source;
        for role in [FileRole::Orig, FileRole::Debian] {
            if !src.files.iter().any(|f| f.role == role) {
                return Err(FirmwareError::LockInvalid(format!(
                    "no file with role {role:?} for {}",
                    src.package
                )));
            }
        }
        for (i, f) in src.files.iter().enumerate() {
            if src.files[..i].iter().any(|g| g.role == f.role) {
                return Err(FirmwareError::LockInvalid(format!(
                    "more than one file with role {:?}",
                    f.role
                )));
            }
            if f.name.is_empty() || f.name.contains('/') || f.name.starts_with('.') {
                return Err(FirmwareError::LockInvalid(format!(
                    "file name {:?} must be a plain file name",
                    f.name
                )));
            }
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(FirmwareError::LockInvalid(format!(
                    "sha256 of {} must be 64 lowercase hex digits, got {:?}",
                    f.name, f.sha256
                )));
            }
        }
        if src.upstream_dir.is_empty() || src.upstream_dir.contains('/') {
            return Err(FirmwareError::LockInvalid(format!(
                "upstream_dir {:?} must be a plain directory name",
                src.upstream_dir
            )));
        }
        Ok(())
    }

    /// The file with `role`; validation guarantees orig and debian exist.
    pub fn file(&self, role: FileRole) -> Option<&SourceFile> {
        self.source.files.iter().find(|f| f.role == role)
    }
}

impl SourceFile {
    /// Compares a measured size and sha256 with the pin. Returns Ok only if both match; the
    /// error names the file and both values.
    pub fn check(&self, size: u64, sha256: &str) -> Result<(), FirmwareError> {
        if sha256 != self.sha256 {
            return Err(FirmwareError::HashMismatch {
                file: self.name.clone(),
                expected: self.sha256.clone(),
                actual: sha256.to_owned(),
            });
        }
        if size != self.size {
            return Err(FirmwareError::SizeMismatch {
                file: self.name.clone(),
                expected: self.size,
                actual: size,
            });
        }
        Ok(())
    }

    /// Hashes the file at `path` and checks it against the pin.
    pub fn verify(&self, path: &Path) -> Result<(), FirmwareError> {
        let (size, sha256) = sha256_file(path)?;
        self.check(size, &sha256)
    }
}

/// Size and sha256 (lowercase hex) of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<(u64, String), FirmwareError> {
    let mut file = File::open(path).map_err(|e| FirmwareError::io("opening", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| FirmwareError::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"
[source]
package = "edk2"
version = "2025.02-8+deb13u1"
suite = "trixie"
upstream_dir = "edk2-2025.02"
source_date_epoch = 1762625177

[[source.files]]
name = "edk2_2025.02.orig.tar.xz"
role = "orig"
size = 3
sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

[[source.files]]
name = "edk2_2025.02-8+deb13u1.debian.tar.xz"
role = "debian"
size = 0
sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
"#;

    fn lock() -> SourceLock {
        SourceLock::parse(LOCK, Path::new("test.toml")).expect("valid lock")
    }

    #[test]
    fn the_committed_lock_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("lock/firmware.toml");
        let lock = SourceLock::load(&path).expect("committed lock parses");
        assert_eq!(lock.source.package, "edk2");
        assert!(lock.file(FileRole::Dsc).is_some(), "the .dsc is pinned too");
    }

    #[test]
    fn verify_accepts_the_pinned_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orig");
        std::fs::write(&path, b"abc").unwrap();
        lock().file(FileRole::Orig).unwrap().verify(&path).unwrap();
    }

    #[test]
    fn hash_mismatch_names_the_file_and_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orig");
        std::fs::write(&path, b"abd").unwrap();
        let err = lock()
            .file(FileRole::Orig)
            .unwrap()
            .verify(&path)
            .unwrap_err();
        let (_, actual) = sha256_file(&path).unwrap();
        match &err {
            FirmwareError::HashMismatch {
                file,
                expected,
                actual: got,
            } => {
                assert_eq!(file, "edk2_2025.02.orig.tar.xz");
                assert_eq!(
                    expected,
                    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                );
                assert_eq!(got, &actual);
            }
            other => panic!("expected HashMismatch, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("edk2_2025.02.orig.tar.xz"), "{msg}");
        assert!(msg.contains("ba7816bf"), "{msg}");
        assert!(msg.contains(&actual), "{msg}");
    }

    #[test]
    fn size_mismatch_is_reported_when_hash_matches_but_pin_size_is_wrong() {
        let mut lock = lock();
        lock.source.files[0].size = 4;
        let err = lock.source.files[0]
            .check(
                3,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            )
            .unwrap_err();
        assert!(matches!(
            err,
            FirmwareError::SizeMismatch {
                expected: 4,
                actual: 3,
                ..
            }
        ));
    }

    #[test]
    fn invalid_locks_are_rejected_with_a_reason() {
        let bad_hash = LOCK.replace("ba7816bf", "BA7816BF");
        let err = SourceLock::parse(&bad_hash, Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("lowercase hex"), "{err}");

        let traversal = LOCK.replace("edk2_2025.02.orig.tar.xz", "../evil");
        let err = SourceLock::parse(&traversal, Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("plain file name"), "{err}");

        let no_debian = LOCK.replace("role = \"debian\"", "role = \"orig\"");
        let err = SourceLock::parse(&no_debian, Path::new("x")).unwrap_err();
        assert!(matches!(err, FirmwareError::LockInvalid(_)), "{err}");

        let unknown = LOCK.replace("suite =", "mirror = \"x\"\nsuite =");
        let err = SourceLock::parse(&unknown, Path::new("lock.toml")).unwrap_err();
        assert!(err.to_string().contains("lock.toml"), "{err}");
    }
}
