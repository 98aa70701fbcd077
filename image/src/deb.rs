//! Unpacking Debian packages into a staging tree, without running maintainer scripts.
//!
//! The rootfs is the union of its packages' `data.tar` members, unpacked in lock order (sorted by name).
//! Nothing here depends on the build machine's dpkg, tar or umask: modes are set explicitly, ownership and
//! timestamps are left to the file system image (`mkfs.erofs --all-root -T`), and Debian's merged-/usr
//! layout is applied to every path (`lib/…` lands in `usr/lib/…`), so the order in which packages arrive
//! does not matter. Two packages that ship different bytes at one path are an error naming both, as dpkg
//! would refuse them; identical files (Multi-Arch: same) are accepted.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// The top-level directories that are symlinks into `/usr` on a merged-/usr system.
pub const MERGED_USR_ALIASES: [&str; 4] = ["bin", "lib", "lib64", "sbin"];

/// A package that cannot be unpacked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DebError {
    /// File system error while unpacking.
    #[error("{package}: I/O on {path}")]
    Io {
        /// The package being unpacked.
        package: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The .deb is not an ar archive with a data.tar member this code can read.
    #[error("{package}: not a readable .deb: {reason}")]
    Format {
        /// The package.
        package: String,
        /// What is wrong.
        reason: String,
    },
    /// An entry's path is absolute, escapes the root, or is not UTF-8.
    #[error("{package}: unsafe path in data.tar: {path:?}")]
    UnsafePath {
        /// The package.
        package: String,
        /// The path as found.
        path: String,
    },
    /// Two packages ship different things at one path.
    #[error("{path}: shipped by both {first} and {second} with different contents")]
    Conflict {
        /// The path (relative to the root).
        path: String,
        /// The package unpacked first.
        first: String,
        /// The package that conflicts.
        second: String,
    },
    /// An entry type that has no business in a package (device node, fifo).
    #[error("{package}: {path}: unsupported entry type {kind}")]
    Unsupported {
        /// The package.
        package: String,
        /// The path.
        path: String,
        /// The tar entry type.
        kind: String,
    },
}

/// What [`Stage::unpack`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Regular files written.
    pub files: u64,
    /// Bytes in those files.
    pub bytes: u64,
    /// Entries left out by the drop rules.
    pub dropped: u64,
}

/// A staging tree that packages are unpacked into.
#[derive(Debug)]
pub struct Stage {
    root: PathBuf,
    drop_paths: Vec<String>,
    owners: BTreeMap<String, String>,
}

/// A path that is absolute or climbs out of the root with `..`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path {0:?} is absolute or leaves the root")]
pub struct OutsideRoot(pub String);

/// Normalises a data.tar path: strips `./`, rejects absolute paths and `..`, applies merged-/usr.
/// Returns `None` for the archive's root entry.
pub fn canonical_path(raw: &str) -> Result<Option<String>, OutsideRoot> {
    let trimmed = raw.trim_start_matches("./").trim_end_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Ok(None);
    }
    if trimmed.starts_with('/') {
        return Err(OutsideRoot(raw.into()));
    }
    let parts: Vec<&str> = trimmed
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") || parts.is_empty() {
        return Err(OutsideRoot(raw.into()));
    }
    let joined = parts.join("/");
    if parts.len() > 1 && MERGED_USR_ALIASES.contains(&parts[0]) {
        return Ok(Some(format!("usr/{joined}")));
    }
    Ok(Some(joined))
}

/// Calls `f` with a reader over the decompressed `data.tar` of the .deb at `deb`.
pub fn with_data_tar<T>(
    package: &str,
    deb: &Path,
    f: impl FnOnce(&mut dyn Read) -> Result<T, DebError>,
) -> Result<T, DebError> {
    let file = File::open(deb).map_err(|source| DebError::Io {
        package: package.into(),
        path: deb.into(),
        source,
    })?;
    let mut archive = ar::Archive::new(io::BufReader::with_capacity(1 << 20, file));
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(|e| DebError::Format {
            package: package.into(),
            reason: e.to_string(),
        })?;
        let id = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let Some(suffix) = id.strip_prefix("data.tar") else {
            continue;
        };
        return match suffix {
            ".xz" => f(&mut liblzma::read::XzDecoder::new(entry)),
            ".gz" => f(&mut flate2::read::GzDecoder::new(entry)),
            "" => {
                let mut entry = entry;
                f(&mut entry)
            }
            other => Err(DebError::Format {
                package: package.into(),
                reason: format!("data.tar{other} compression is not supported (xz, gz or none)"),
            }),
        };
    }
    Err(DebError::Format {
        package: package.into(),
        reason: "no data.tar member".into(),
    })
}

fn make_dir(path: &Path, mode: u32) -> io::Result<()> {
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    // DirBuilder's mode is filtered by the umask; set it again so the umask never reaches the image.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

impl Stage {
    /// A stage rooted at `root` (created, mode 0755). `drop_paths` are relative path prefixes left out,
    /// except `usr/share/doc/*/copyright`.
    pub fn new(root: &Path, drop_paths: &[String]) -> io::Result<Self> {
        if !root.exists() {
            fs::create_dir_all(root)?;
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            root: root.to_owned(),
            drop_paths: drop_paths.to_vec(),
            owners: BTreeMap::new(),
        })
    }

    /// The stage's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `path` (canonical) is left out of the stage.
    pub fn is_dropped(&self, path: &str) -> bool {
        if path.starts_with("usr/share/doc/") && path.ends_with("/copyright") {
            return false;
        }
        self.drop_paths.iter().any(|p| path.starts_with(p.as_str()))
    }

    fn ensure_parents(&self, package: &str, rel: &str) -> Result<(), DebError> {
        let mut cur = self.root.clone();
        let comps: Vec<&str> = rel.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(DebError::Conflict {
                        path: rel.into(),
                        first: self.owner_of(&cur),
                        second: package.into(),
                    });
                }
                Err(_) => make_dir(&cur, 0o755).map_err(|source| DebError::Io {
                    package: package.into(),
                    path: cur.clone(),
                    source,
                })?,
            }
        }
        Ok(())
    }

    fn owner_of(&self, abs: &Path) -> String {
        abs.strip_prefix(&self.root)
            .ok()
            .and_then(|r| self.owners.get(r.to_str()?))
            .cloned()
            .unwrap_or_else(|| "(the stage)".into())
    }

    /// Unpacks the .deb at `deb` (package `package`) into the stage.
    pub fn unpack(&mut self, package: &str, deb: &Path) -> Result<UnpackStats, DebError> {
        with_data_tar(package, deb, |reader| self.unpack_tar(package, reader))
    }

    /// Unpacks a plain tar stream (a package's data.tar) into the stage.
    pub fn unpack_tar(
        &mut self,
        package: &str,
        reader: &mut dyn Read,
    ) -> Result<UnpackStats, DebError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            let package = package.to_owned();
            move |source| DebError::Io {
                package,
                path,
                source,
            }
        };
        let mut stats = UnpackStats::default();
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(io_err(&self.root))?;
        for entry in entries {
            let mut entry = entry.map_err(io_err(&self.root))?;
            let raw = String::from_utf8(entry.path_bytes().into_owned()).map_err(|e| {
                DebError::UnsafePath {
                    package: package.into(),
                    path: format!("{:?}", e.as_bytes()),
                }
            })?;
            let rel = match canonical_path(&raw) {
                Ok(Some(rel)) => rel,
                Ok(None) => continue,
                Err(_) => {
                    return Err(DebError::UnsafePath {
                        package: package.into(),
                        path: raw,
                    });
                }
            };
            if self.is_dropped(&rel) {
                stats.dropped += 1;
                continue;
            }
            let abs = self.root.join(&rel);
            let mode = entry.header().mode().map_err(io_err(&abs))? & 0o7777;
            let kind = entry.header().entry_type();
            let existing = fs::symlink_metadata(&abs).ok();
            let conflict = |owners: &BTreeMap<String, String>| DebError::Conflict {
                path: rel.clone(),
                first: owners
                    .get(&rel)
                    .cloned()
                    .unwrap_or_else(|| "(the stage)".into()),
                second: package.into(),
            };
            match kind {
                tar::EntryType::Directory => {
                    if MERGED_USR_ALIASES.contains(&rel.as_str()) {
                        // `./lib/` in an old-layout package: its contents go to usr/lib, see canonical_path.
                        continue;
                    }
                    match existing {
                        Some(m) if m.is_dir() => {}
                        Some(_) => return Err(conflict(&self.owners)),
                        None => {
                            self.ensure_parents(package, &rel)?;
                            make_dir(&abs, mode).map_err(io_err(&abs))?;
                            self.owners.insert(rel, package.into());
                        }
                    }
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::with_capacity(entry.size() as usize);
                    entry.read_to_end(&mut data).map_err(io_err(&abs))?;
                    if let Some(m) = existing {
                        let same = m.is_file()
                            && m.permissions().mode() & 0o7777 == mode
                            && fs::read(&abs).map(|old| old == data).unwrap_or(false);
                        if !same {
                            return Err(conflict(&self.owners));
                        }
                        continue;
                    }
                    self.ensure_parents(package, &rel)?;
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&abs)
                        .map_err(io_err(&abs))?;
                    io::Write::write_all(&mut f, &data).map_err(io_err(&abs))?;
                    drop(f);
                    fs::set_permissions(&abs, fs::Permissions::from_mode(mode))
                        .map_err(io_err(&abs))?;
                    stats.files += 1;
                    stats.bytes += data.len() as u64;
                    self.owners.insert(rel, package.into());
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(io_err(&abs))?
                        .ok_or_else(|| DebError::UnsafePath {
                            package: package.into(),
                            path: raw.clone(),
                        })?
                        .into_owned();
                    if let Some(m) = existing {
                        let same = m.file_type().is_symlink()
                            && fs::read_link(&abs).ok().as_deref() == Some(&target);
                        if !same {
                            return Err(conflict(&self.owners));
                        }
                        continue;
                    }
                    self.ensure_parents(package, &rel)?;
                    symlink(&target, &abs).map_err(io_err(&abs))?;
                    self.owners.insert(rel, package.into());
                }
                tar::EntryType::Link => {
                    let target_raw = entry
                        .link_name()
                        .map_err(io_err(&abs))?
                        .and_then(|t| t.to_str().map(str::to_owned))
                        .ok_or_else(|| DebError::UnsafePath {
                            package: package.into(),
                            path: raw.clone(),
                        })?;
                    let target_rel = match canonical_path(&target_raw) {
                        Ok(Some(t)) => t,
                        _ => {
                            return Err(DebError::UnsafePath {
                                package: package.into(),
                                path: target_raw,
                            });
                        }
                    };
                    if existing.is_some() {
                        return Err(conflict(&self.owners));
                    }
                    self.ensure_parents(package, &rel)?;
                    let target_abs = self.root.join(&target_rel);
                    fs::hard_link(&target_abs, &abs).map_err(io_err(&target_abs))?;
                    stats.files += 1;
                    self.owners.insert(rel, package.into());
                }
                other => {
                    return Err(DebError::Unsupported {
                        package: package.into(),
                        path: rel,
                        kind: format!("{other:?}"),
                    });
                }
            }
        }
        Ok(stats)
    }

    /// Creates the merged-/usr alias symlinks (`bin -> usr/bin`, …) that are missing. base-files ships
    /// them in trixie; this keeps a stage without base-files (e.g. the kernel's) in the same layout.
    pub fn finish_merged_usr(&mut self) -> io::Result<()> {
        for alias in MERGED_USR_ALIASES {
            let abs = self.root.join(alias);
            if fs::symlink_metadata(&abs).is_err() && self.root.join("usr").join(alias).is_dir() {
                symlink(format!("usr/{alias}"), &abs)?;
            }
        }
        Ok(())
    }

    /// Writes a file the builder itself adds (mode given explicitly); refuses to replace a packaged file.
    pub fn add_file(&mut self, rel: &str, contents: &[u8], mode: u32) -> Result<(), DebError> {
        const ME: &str = "chrysalis-image";
        let rel = match canonical_path(rel) {
            Ok(Some(r)) => r,
            _ => {
                return Err(DebError::UnsafePath {
                    package: ME.into(),
                    path: rel.into(),
                });
            }
        };
        let abs = self.root.join(&rel);
        if fs::symlink_metadata(&abs).is_ok() {
            return Err(DebError::Conflict {
                path: rel.clone(),
                first: self
                    .owners
                    .get(&rel)
                    .cloned()
                    .unwrap_or_else(|| "(the stage)".into()),
                second: ME.into(),
            });
        }
        self.ensure_parents(ME, &rel)?;
        let err = |source| DebError::Io {
            package: ME.into(),
            path: abs.clone(),
            source,
        };
        fs::write(&abs, contents).map_err(err)?;
        fs::set_permissions(&abs, fs::Permissions::from_mode(mode)).map_err(err)?;
        self.owners.insert(rel, ME.into());
        Ok(())
    }

    /// Adds the symlink `rel -> target` (target relative to the link's directory); refuses a dangling
    /// target or an existing path.
    pub fn add_symlink(&mut self, rel: &str, target: &str) -> Result<(), DebError> {
        const ME: &str = "chrysalis-image";
        let rel = match canonical_path(rel) {
            Ok(Some(r)) => r,
            _ => {
                return Err(DebError::UnsafePath {
                    package: ME.into(),
                    path: rel.into(),
                });
            }
        };
        let abs = self.root.join(&rel);
        let dir = abs.parent().expect("a canonical path has a parent");
        if !dir.join(target).exists() || target.starts_with('/') {
            return Err(DebError::UnsafePath {
                package: ME.into(),
                path: format!("{rel} -> {target} (no such target)"),
            });
        }
        if fs::symlink_metadata(&abs).is_ok() {
            return Err(DebError::Conflict {
                path: rel.clone(),
                first: self
                    .owners
                    .get(&rel)
                    .cloned()
                    .unwrap_or_else(|| "(the stage)".into()),
                second: ME.into(),
            });
        }
        self.ensure_parents(ME, &rel)?;
        symlink(target, &abs).map_err(|source| DebError::Io {
            package: ME.into(),
            path: abs.clone(),
            source,
        })?;
        self.owners.insert(rel, ME.into());
        Ok(())
    }

    /// Creates a directory the builder adds (mode 0755, parents too).
    pub fn add_dir(&mut self, rel: &str) -> Result<(), DebError> {
        const ME: &str = "chrysalis-image";
        let rel = match canonical_path(rel) {
            Ok(Some(r)) => r,
            _ => {
                return Err(DebError::UnsafePath {
                    package: ME.into(),
                    path: rel.into(),
                });
            }
        };
        self.ensure_parents(ME, &format!("{rel}/x"))
    }

    /// Paths under `prefix` (canonical, relative) that packages wrote, sorted.
    pub fn paths_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.owners
            .range(prefix.to_owned()..)
            .map(|(k, _)| k.as_str())
            .take_while(move |k| k.starts_with(prefix))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A data.tar built in memory: (path, kind, mode, data-or-link-target).
    pub(crate) fn tar_of(entries: &[(&str, tar::EntryType, u32, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, mode, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_mtime(1);
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_size(0);
                    b.append_link(&mut h, path, data).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// A .deb (ar with debian-binary, control.tar.gz, data.tar.xz) built in memory.
    pub(crate) fn deb_of(data_tar: &[u8]) -> Vec<u8> {
        let mut xz = Vec::new();
        {
            let mut enc = liblzma::write::XzEncoder::new(&mut xz, 1);
            io::Write::write_all(&mut enc, data_tar).unwrap();
            enc.finish().unwrap();
        }
        let mut out = Vec::new();
        {
            let mut ar = ar::Builder::new(&mut out);
            for (name, body) in [
                ("debian-binary", &b"2.0\n"[..]),
                ("control.tar.gz", &[][..]),
                ("data.tar.xz", &xz[..]),
            ] {
                let h = ar::Header::new(name.as_bytes().to_vec(), body.len() as u64);
                ar.append(&h, body).unwrap();
            }
        }
        out
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

    #[test]
    fn canonical_paths_apply_merged_usr_and_refuse_escapes() {
        assert_eq!(canonical_path("./").unwrap(), None);
        assert_eq!(
            canonical_path("./usr/bin/python3").unwrap().unwrap(),
            "usr/bin/python3"
        );
        assert_eq!(
            canonical_path("./lib/x86_64-linux-gnu/libc.so.6")
                .unwrap()
                .unwrap(),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(canonical_path("./sbin/").unwrap().unwrap(), "sbin");
        assert!(canonical_path("/etc/passwd").is_err());
        assert!(canonical_path("./usr/../../etc").is_err());
    }

    #[test]
    fn unpacks_a_deb_with_exact_modes_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("p.deb");
        fs::write(
            &deb,
            deb_of(&tar_of(&[
                ("./", D, 0o755, ""),
                ("./usr/", D, 0o755, ""),
                ("./usr/bin/", D, 0o755, ""),
                ("./usr/bin/tool", F, 0o4755, "#!bin"),
                ("./bin/", D, 0o755, ""),
                ("./bin/old", F, 0o644, "old layout"),
                ("./usr/bin/link", L, 0o777, "tool"),
                ("./usr/bin/hard", H, 0o755, "./usr/bin/tool"),
                ("./usr/share/man/man1/tool.1", F, 0o644, "man"),
                ("./usr/share/doc/p/copyright", F, 0o644, "GPL"),
                ("./usr/share/doc/p/changelog.gz", F, 0o644, "log"),
            ])),
        )
        .unwrap();
        let root = dir.path().join("root");
        let mut stage =
            Stage::new(&root, &["usr/share/man/".into(), "usr/share/doc/".into()]).unwrap();
        let stats = stage.unpack("p", &deb).unwrap();
        assert_eq!(stats.dropped, 2);
        let mode = |p: &str| {
            fs::symlink_metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("usr/bin/tool"), 0o4755);
        assert_eq!(
            fs::read_to_string(root.join("usr/bin/old")).unwrap(),
            "old layout"
        );
        assert!(
            !root.join("bin").exists(),
            "old-layout directories are not created"
        );
        assert_eq!(
            fs::read_link(root.join("usr/bin/link")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            fs::read_to_string(root.join("usr/bin/hard")).unwrap(),
            "#!bin"
        );
        assert_eq!(
            fs::read_to_string(root.join("usr/share/doc/p/copyright")).unwrap(),
            "GPL"
        );
        assert_eq!(
            mode("usr/share/doc/p"),
            0o755,
            "parents of kept files get 0755, not the umask"
        );
        assert!(!root.join("usr/share/man/man1/tool.1").exists());
        stage.finish_merged_usr().unwrap();
        assert_eq!(
            fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
    }

    #[test]
    fn conflicting_files_name_both_packages_and_identical_ones_pass() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = Stage::new(&dir.path().join("r"), &[]).unwrap();
        let a = tar_of(&[("./etc/x", F, 0o644, "one")]);
        let same = tar_of(&[("./etc/x", F, 0o644, "one")]);
        let other = tar_of(&[("./etc/x", F, 0o644, "two")]);
        stage.unpack_tar("pkg-a", &mut &a[..]).unwrap();
        stage.unpack_tar("pkg-same", &mut &same[..]).unwrap();
        match stage.unpack_tar("pkg-b", &mut &other[..]) {
            Err(DebError::Conflict {
                path,
                first,
                second,
            }) => {
                assert_eq!(
                    (path.as_str(), first.as_str(), second.as_str()),
                    ("etc/x", "pkg-a", "pkg-b")
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn device_nodes_and_escaping_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = Stage::new(&dir.path().join("r"), &[]).unwrap();
        let fifo = tar_of(&[("./dev/f", tar::EntryType::Fifo, 0o644, "")]);
        assert!(matches!(
            stage.unpack_tar("p", &mut &fifo[..]),
            Err(DebError::Unsupported { .. })
        ));
        let mut raw = tar_of(&[("./aa/evil", F, 0o644, "x")]);
        // Rewrite the name in place to "../evil" (the tar crate will not write such a name itself).
        raw[..8].copy_from_slice(b"../evil\0");
        let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        assert!(matches!(
            stage.unpack_tar("p", &mut &raw[..]),
            Err(DebError::UnsafePath { .. })
        ));
    }

    #[test]
    fn a_deb_without_data_tar_is_a_format_error() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("bad.deb");
        let mut out = Vec::new();
        {
            let mut ar = ar::Builder::new(&mut out);
            ar.append(
                &ar::Header::new(b"debian-binary".to_vec(), 4),
                &b"2.0\n"[..],
            )
            .unwrap();
        }
        fs::write(&deb, out).unwrap();
        let mut stage = Stage::new(&dir.path().join("r"), &[]).unwrap();
        assert!(matches!(
            stage.unpack("bad", &deb),
            Err(DebError::Format { .. })
        ));
    }

    #[test]
    fn builder_files_cannot_replace_packaged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = Stage::new(&dir.path().join("r"), &[]).unwrap();
        let a = tar_of(&[("./etc/passwd", F, 0o644, "pkg")]);
        stage.unpack_tar("base-passwd", &mut &a[..]).unwrap();
        assert!(matches!(
            stage.add_file("etc/passwd", b"x", 0o644),
            Err(DebError::Conflict { .. })
        ));
        stage
            .add_file("etc/chrysalis/guest.toml", b"x = 1\n", 0o644)
            .unwrap();
        stage
            .add_symlink("etc/chrysalis/current.toml", "guest.toml")
            .unwrap();
        assert!(stage.add_symlink("etc/dangling", "nowhere").is_err());
        assert!(
            stage
                .add_symlink("etc/passwd", "chrysalis/guest.toml")
                .is_err()
        );
        assert_eq!(
            stage.paths_under("etc/").collect::<Vec<_>>(),
            [
                "etc/chrysalis/current.toml",
                "etc/chrysalis/guest.toml",
                "etc/passwd"
            ]
        );
    }
}
