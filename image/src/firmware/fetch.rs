//! The content-addressed store of pinned source files, and the fetchers that fill it (apt, a folder).
//!
//! Files live at `<cache>/sources/sha256/<hex>` and are hashed again every time they are used, so
//! a corrupted entry is noticed, removed and fetched again. Fetching runs on the host (where apt is
//! configured), not in the [`super::BuildEnv`]; whatever arrives is verified against the lock
//! before it enters the store.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::FirmwareError;
use super::lock::{FileRole, SourceFile, SourceLock};

/// One line of `apt-get source --print-uris`: where the archive serves a file, and the size and
/// sha256 its signed index lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The download URI (from the machine's apt configuration).
    pub uri: String,
    /// The file name.
    pub name: String,
    /// The size the index lists.
    pub size: u64,
    /// The sha256 the index lists (lowercase hex).
    pub sha256: String,
}

/// Parses `apt-get source --print-uris` output (`'URI' NAME SIZE SHA256:HEX` lines); other lines
/// are ignored. Entries without a SHA256 hash are ignored too: they cannot be checked.
pub fn parse_print_uris(text: &str) -> Vec<IndexEntry> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('\'')?;
            let (uri, rest) = rest.split_once("' ")?;
            let mut fields = rest.split_whitespace();
            let name = fields.next()?;
            let size = fields.next()?.parse().ok()?;
            let sha256 = fields.find_map(|f| f.strip_prefix("SHA256:"))?;
            Some(IndexEntry {
                uri: uri.to_owned(),
                name: name.to_owned(),
                size,
                sha256: sha256.to_ascii_lowercase(),
            })
        })
        .collect()
}

/// Checks every pinned file against the archive index. Returns Ok only if each pinned file is
/// listed with the pinned size and sha256.
pub fn check_index(lock: &SourceLock, index: &[IndexEntry]) -> Result<(), FirmwareError> {
    for pin in &lock.source.files {
        let Some(entry) = index.iter().find(|e| e.name == pin.name) else {
            return Err(FirmwareError::NotInIndex {
                package: lock.source.package.clone(),
                version: lock.source.version.clone(),
                file: pin.name.clone(),
                hint: String::new(),
            });
        };
        if entry.sha256 != pin.sha256 || entry.size != pin.size {
            return Err(FirmwareError::IndexMismatch {
                file: pin.name.clone(),
                pinned: pin.sha256.clone(),
                pinned_size: pin.size,
                index: entry.sha256.clone(),
                index_size: entry.size,
            });
        }
    }
    Ok(())
}

/// Something that can place pinned source files into a directory. The store verifies them; a
/// fetcher does not need to.
pub trait Fetcher {
    /// Where files come from, for messages.
    fn describe(&self) -> String;

    /// Places each of `files` (of the package in `lock`) as `dest_dir/<name>`, passing progress
    /// lines to `on_line`.
    fn fetch(
        &self,
        lock: &SourceLock,
        files: &[&SourceFile],
        dest_dir: &Path,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), FirmwareError>;
}

/// Fetches through the machine's apt configuration (deb-src must list a suite that still serves
/// the pinned version). First checks all pinned files, the `.dsc` included, against the archive's
/// signed Sources index; then downloads the needed ones with apt's own downloader.
#[derive(Debug, Clone, Copy, Default)]
pub struct AptFetcher;

fn run_streaming(
    cmd: &mut Command,
    what: &str,
    on_line: &mut dyn FnMut(&str),
) -> Result<(bool, Vec<String>), FirmwareError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirmwareError::Spawn {
            program: what.to_owned(),
            source,
        })?;
    // apt writes little to stderr; read it after stdout without risk of a full pipe.
    let mut lines = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.unwrap_or_default();
            on_line(&line);
            lines.push(line);
        }
    }
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let line = line.unwrap_or_default();
            on_line(&line);
            lines.push(line);
        }
    }
    let status = child.wait().map_err(|source| FirmwareError::Spawn {
        program: what.to_owned(),
        source,
    })?;
    Ok((status.success(), lines))
}

impl Fetcher for AptFetcher {
    fn describe(&self) -> String {
        "the Debian archive (apt deb-src)".to_owned()
    }

    fn fetch(
        &self,
        lock: &SourceLock,
        files: &[&SourceFile],
        dest_dir: &Path,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), FirmwareError> {
        let src = &lock.source;
        // apt leaves out files that already lie in the current directory: ask from an empty one.
        let empty = tempfile::tempdir_in(dest_dir)
            .map_err(|e| FirmwareError::io("creating a temporary directory in", dest_dir, e))?;
        let spec = format!("{}={}", src.package, src.version);
        let (ok, lines) = run_streaming(
            Command::new("apt-get")
                .args(["source", "--print-uris", "--only-source", &spec])
                .current_dir(empty.path()),
            "apt-get source --print-uris",
            &mut |_| {},
        )?;
        let index = parse_print_uris(&lines.join("\n"));
        if !ok || index.is_empty() {
            let file = files.first().map(|f| f.name.clone()).unwrap_or_default();
            return Err(FirmwareError::NotInIndex {
                package: src.package.clone(),
                version: src.version.clone(),
                file,
                hint: format!(
                    " (apt-get: {}); if {} moved on, fetch the files from \
                     snapshot.debian.org and pass their folder with --sources",
                    lines.last().map(String::as_str).unwrap_or("no output"),
                    src.suite
                ),
            });
        }
        check_index(lock, &index)?;
        for file in files {
            let entry = index.iter().find(|e| e.name == file.name).ok_or_else(|| {
                FirmwareError::NotInIndex {
                    package: src.package.clone(),
                    version: src.version.clone(),
                    file: file.name.clone(),
                    hint: String::new(),
                }
            })?;
            on_line(&format!("downloading {} ({} bytes)", file.name, file.size));
            let dest = dest_dir.join(&file.name);
            let (ok, lines) = run_streaming(
                Command::new("/usr/lib/apt/apt-helper")
                    .arg("download-file")
                    .arg(&entry.uri)
                    .arg(&dest)
                    .arg(format!("SHA256:{}", file.sha256)),
                "apt-helper download-file",
                on_line,
            )?;
            if !ok {
                return Err(FirmwareError::SourceUnavailable {
                    file: file.name.clone(),
                    reason: format!(
                        "apt-helper download-file {} failed: {}",
                        entry.uri,
                        lines.join(" | ")
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Takes the files from a folder (e.g. downloaded by hand from snapshot.debian.org).
#[derive(Debug, Clone)]
pub struct DirFetcher(pub PathBuf);

impl Fetcher for DirFetcher {
    fn describe(&self) -> String {
        format!("the folder {}", self.0.display())
    }

    fn fetch(
        &self,
        _lock: &SourceLock,
        files: &[&SourceFile],
        dest_dir: &Path,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), FirmwareError> {
        for file in files {
            let from = self.0.join(&file.name);
            on_line(&format!("copying {}", from.display()));
            std::fs::copy(&from, dest_dir.join(&file.name)).map_err(|e| {
                FirmwareError::SourceUnavailable {
                    file: file.name.clone(),
                    reason: format!("copying {}: {e}", from.display()),
                }
            })?;
        }
        Ok(())
    }
}

/// The content-addressed store of source files: `<root>/sha256/<hex>`.
#[derive(Debug, Clone)]
pub struct SourceStore {
    root: PathBuf,
}

impl SourceStore {
    /// A store rooted at `root` (conventionally `<cache>/sources`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Where a file with this sha256 lives.
    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }

    /// Makes every file the build consumes present and verified, fetching what is missing (or
    /// corrupt) with `fetcher`. Returns the verified path of each consumed file by role.
    pub fn ensure(
        &self,
        lock: &SourceLock,
        fetcher: &dyn Fetcher,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<BTreeMap<FileRole, PathBuf>, FirmwareError> {
        let dir = self.root.join("sha256");
        std::fs::create_dir_all(&dir)
            .map_err(|e| FirmwareError::io("creating directory", &dir, e))?;
        let mut paths = BTreeMap::new();
        let mut missing = Vec::new();
        for file in lock.source.files.iter().filter(|f| f.role.consumed()) {
            let path = self.path_for(&file.sha256);
            if path.exists() {
                match file.verify(&path) {
                    Ok(()) => {
                        paths.insert(file.role, path);
                        continue;
                    }
                    Err(e) => {
                        on_line(&format!("discarding cached {}: {e}", file.name));
                        std::fs::remove_file(&path)
                            .map_err(|e| FirmwareError::io("removing", &path, e))?;
                    }
                }
            }
            missing.push(file);
        }
        if missing.is_empty() {
            return Ok(paths);
        }
        on_line(&format!(
            "fetching {} from {}",
            missing
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            fetcher.describe()
        ));
        let staging = tempfile::tempdir_in(&self.root)
            .map_err(|e| FirmwareError::io("creating a temporary directory in", &self.root, e))?;
        fetcher.fetch(lock, &missing, staging.path(), on_line)?;
        for file in missing {
            let fetched = staging.path().join(&file.name);
            if !fetched.exists() {
                return Err(FirmwareError::SourceUnavailable {
                    file: file.name.clone(),
                    reason: format!("{} did not provide it", fetcher.describe()),
                });
            }
            file.verify(&fetched)?;
            let path = self.path_for(&file.sha256);
            std::fs::rename(&fetched, &path)
                .map_err(|e| FirmwareError::io("renaming into the store", &path, e))?;
            paths.insert(file.role, path);
        }
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    const PRINT_URIS: &str = "\
Reading package lists...
NOTICE: 'edk2' packaging is maintained in the 'Git' version control system at:
https://salsa.debian.org/qemu-team/edk2.git
Need to get 29.7 MB of source archives.
'http://deb.example/pool/main/e/edk2/edk2_1-1.dsc' edk2_1-1.dsc 4 SHA256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08
'http://deb.example/pool/main/e/edk2/edk2_1.orig.tar.xz' edk2_1.orig.tar.xz 5 SHA256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
'http://deb.example/pool/main/e/edk2/edk2_1-1.debian.tar.xz' edk2_1-1.debian.tar.xz 3 MD5Sum:abc
";

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn lock_for(dsc: &[u8], orig: &[u8], debian: &[u8]) -> SourceLock {
        let file = |name: &str, role, data: &[u8]| SourceFile {
            name: name.into(),
            role,
            size: data.len() as u64,
            sha256: sha(data),
        };
        SourceLock {
            source: super::super::lock::SourcePackage {
                package: "edk2".into(),
                version: "1-1".into(),
                suite: "trixie".into(),
                upstream_dir: "edk2-1".into(),
                source_date_epoch: 0,
                files: vec![
                    file("edk2_1-1.dsc", FileRole::Dsc, dsc),
                    file("edk2_1.orig.tar.xz", FileRole::Orig, orig),
                    file("edk2_1-1.debian.tar.xz", FileRole::Debian, debian),
                ],
            },
        }
    }

    #[test]
    fn print_uris_lines_are_parsed_and_hashes_lowercased() {
        let index = parse_print_uris(PRINT_URIS);
        assert_eq!(index.len(), 2, "the MD5-only entry is not usable");
        assert_eq!(index[0].name, "edk2_1-1.dsc");
        assert_eq!(index[0].size, 4);
        assert_eq!(
            index[0].uri,
            "http://deb.example/pool/main/e/edk2/edk2_1-1.dsc"
        );
        assert_eq!(index[0].sha256, sha(b"test"));
        assert_eq!(index[1].sha256, sha(b"hello"));
    }

    #[test]
    fn index_check_catches_a_changed_or_missing_file() {
        let index = parse_print_uris(PRINT_URIS);
        // The debian tarball's entry has no SHA256: not listed, so an error naming it.
        let lock = lock_for(b"test", b"hello", b"abc");
        let err = check_index(&lock, &index).unwrap_err();
        assert!(
            matches!(&err, FirmwareError::NotInIndex { file, .. } if file == "edk2_1-1.debian.tar.xz"),
            "{err}"
        );

        let mut index = index;
        index.push(IndexEntry {
            uri: "u".into(),
            name: "edk2_1-1.debian.tar.xz".into(),
            size: 3,
            sha256: sha(b"abc"),
        });
        check_index(&lock, &index).unwrap();

        let lock = lock_for(b"tesT", b"hello", b"abc");
        let err = check_index(&lock, &index).unwrap_err();
        match err {
            FirmwareError::IndexMismatch {
                file,
                pinned,
                index,
                ..
            } => {
                assert_eq!(file, "edk2_1-1.dsc");
                assert_eq!(pinned, sha(b"tesT"));
                assert_eq!(index, sha(b"test"));
            }
            other => panic!("expected IndexMismatch, got {other:?}"),
        }
    }

    #[test]
    fn store_fetches_verifies_and_then_serves_from_cache() {
        let cache = tempfile::tempdir().unwrap();
        let supply = tempfile::tempdir().unwrap();
        std::fs::write(supply.path().join("edk2_1.orig.tar.xz"), b"hello").unwrap();
        std::fs::write(supply.path().join("edk2_1-1.debian.tar.xz"), b"abc").unwrap();
        let lock = lock_for(b"test", b"hello", b"abc");
        let store = SourceStore::new(cache.path());
        let fetcher = DirFetcher(supply.path().to_owned());

        let paths = store.ensure(&lock, &fetcher, &mut |_| {}).unwrap();
        assert_eq!(paths.len(), 2, "the .dsc is not consumed");
        assert_eq!(std::fs::read(&paths[&FileRole::Orig]).unwrap(), b"hello");
        assert_eq!(paths[&FileRole::Orig], store.path_for(&sha(b"hello")));

        // Second run: served from the store even though the supply is gone.
        drop(supply);
        let again = store.ensure(&lock, &fetcher, &mut |_| {}).unwrap();
        assert_eq!(again, paths);
    }

    #[test]
    fn store_rejects_a_fetched_file_with_the_wrong_hash() {
        let cache = tempfile::tempdir().unwrap();
        let supply = tempfile::tempdir().unwrap();
        std::fs::write(supply.path().join("edk2_1.orig.tar.xz"), b"hellO").unwrap();
        std::fs::write(supply.path().join("edk2_1-1.debian.tar.xz"), b"abc").unwrap();
        let lock = lock_for(b"test", b"hello", b"abc");
        let store = SourceStore::new(cache.path());
        let err = store
            .ensure(&lock, &DirFetcher(supply.path().to_owned()), &mut |_| {})
            .unwrap_err();
        match err {
            FirmwareError::HashMismatch {
                file,
                expected,
                actual,
            } => {
                assert_eq!(file, "edk2_1.orig.tar.xz");
                assert_eq!(expected, sha(b"hello"));
                assert_eq!(actual, sha(b"hellO"));
            }
            other => panic!("expected HashMismatch, got {other:?}"),
        }
        assert!(
            !store.path_for(&sha(b"hello")).exists(),
            "nothing unverified enters the store"
        );
    }

    #[test]
    fn a_corrupted_store_entry_is_replaced() {
        let cache = tempfile::tempdir().unwrap();
        let supply = tempfile::tempdir().unwrap();
        std::fs::write(supply.path().join("edk2_1.orig.tar.xz"), b"hello").unwrap();
        std::fs::write(supply.path().join("edk2_1-1.debian.tar.xz"), b"abc").unwrap();
        let lock = lock_for(b"test", b"hello", b"abc");
        let store = SourceStore::new(cache.path());
        let fetcher = DirFetcher(supply.path().to_owned());
        let paths = store.ensure(&lock, &fetcher, &mut |_| {}).unwrap();
        std::fs::write(&paths[&FileRole::Orig], b"jello").unwrap();
        let mut notes = Vec::new();
        store
            .ensure(&lock, &fetcher, &mut |l| notes.push(l.to_owned()))
            .unwrap();
        assert_eq!(std::fs::read(&paths[&FileRole::Orig]).unwrap(), b"hello");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("discarding cached edk2_1.orig.tar.xz")),
            "{notes:?}"
        );
    }
}
