//! The content-addressed download cache (`$CHRYSALIS_CACHE`, default `~/.cache/chrysalis`).
//!
//! Files are stored under `sha256/<first two hex>/<digest>` and are verified every time they are used:
//! [`Cache::get`] re-hashes the file, so a corrupted or replaced entry is an error that names the file and
//! both digests rather than a silently different image. Writes go to a temporary file in the cache and are
//! renamed into place only once the digest matches.
//!
//! The cache also hosts derived, re-creatable state under [`Cache::dir`] (build roots, built wheels), each
//! keyed by the digest of its inputs.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{HashingWriter, Sha256Digest};

/// A cache operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Reading or writing the cache failed.
    #[error("cache I/O on {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The bytes do not have the pinned digest.
    #[error("{name}: sha256 mismatch: expected {expected}, got {actual} ({path})")]
    HashMismatch {
        /// What the file is (its name in the lock).
        name: String,
        /// Where the bytes were (cache entry or download).
        path: PathBuf,
        /// The pinned digest.
        expected: Sha256Digest,
        /// The digest of the bytes found.
        actual: Sha256Digest,
    },
    /// The bytes do not have the pinned size.
    #[error("{name}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What the file is.
        name: String,
        /// The pinned size.
        expected: u64,
        /// The size found.
        actual: u64,
    },
    /// The reader failed (e.g. the download broke off).
    #[error("{name}: reading the source failed")]
    Source {
        /// What the file is.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A content-addressed cache rooted at one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Cache {
    /// Opens (creating if needed) a cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        for sub in ["sha256", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Self { root })
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        let hex = digest.to_string();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// A directory for derived state of one `kind` (created if needed).
    pub fn dir(&self, kind: &str) -> Result<PathBuf, CacheError> {
        let p = self.root.join(kind);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
        Ok(p)
    }

    /// A fresh temporary directory inside the cache (same file system as the entries, so renames work).
    pub fn temp_dir(&self) -> Result<tempfile::TempDir, CacheError> {
        let p = self.root.join("tmp");
        tempfile::TempDir::new_in(&p).map_err(io_err(&p))
    }

    /// The verified path of the blob `digest`, or `None` when it is not cached.
    ///
    /// Returns `Err(HashMismatch)` when the entry exists but its bytes have another digest; the entry is
    /// left in place for inspection (delete it to download again).
    pub fn get(&self, name: &str, digest: &Sha256Digest) -> Result<Option<PathBuf>, CacheError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::Io { path, source: e }),
        };
        let actual = Sha256Digest::of_reader(io::BufReader::with_capacity(1 << 20, file))
            .map_err(io_err(&path))?;
        if actual != *digest {
            return Err(CacheError::HashMismatch {
                name: name.to_owned(),
                path,
                expected: *digest,
                actual,
            });
        }
        Ok(Some(path))
    }

    /// Streams `reader` into the cache as the blob `digest`. The bytes are hashed on the way; only when they
    /// match (and match `size`, if given) is the entry renamed into place. Returns the entry's path.
    pub fn insert(
        &self,
        name: &str,
        digest: &Sha256Digest,
        size: Option<u64>,
        mut reader: impl Read,
    ) -> Result<PathBuf, CacheError> {
        let tmp_dir = self.root.join("tmp");
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_err(&tmp_dir))?;
        let mut writer = HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp));
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(CacheError::Source {
                        name: name.to_owned(),
                        source,
                    });
                }
            };
            writer.write_all(&buf[..n]).map_err(io_err(&tmp_dir))?;
        }
        let (actual, len, buffered) = writer.finish();
        let tmp = buffered.into_inner().map_err(|e| CacheError::Io {
            path: tmp_dir.clone(),
            source: e.into_error(),
        })?;
        if let Some(expected) = size
            && expected != len
        {
            return Err(CacheError::SizeMismatch {
                name: name.to_owned(),
                expected,
                actual: len,
            });
        }
        if actual != *digest {
            return Err(CacheError::HashMismatch {
                name: name.to_owned(),
                path: PathBuf::from(format!("download of {name}")),
                expected: *digest,
                actual,
            });
        }
        let dest = self.blob_path(digest);
        let parent = dest.parent().expect("blob path has a parent");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        tmp.as_file().sync_all().map_err(io_err(&dest))?;
        tmp.persist(&dest).map_err(|e| CacheError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(dest)
    }

    /// Copies the local file `src` into the cache, verifying it has `digest`.
    pub fn insert_file(
        &self,
        name: &str,
        digest: &Sha256Digest,
        src: &Path,
    ) -> Result<PathBuf, CacheError> {
        let f = File::open(src).map_err(io_err(src))?;
        self.insert(name, digest, None, f)
    }

    /// Makes the verified blob `digest` appear at `dest` under its real file name (hard link, else copy).
    /// Tools such as pip and apt want file names, not digests.
    pub fn link_to(
        &self,
        name: &str,
        digest: &Sha256Digest,
        dest: &Path,
    ) -> Result<(), CacheError> {
        let src = self.get(name, digest)?.ok_or_else(|| CacheError::Io {
            path: self.blob_path(digest),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} is not in the cache"),
            ),
        })?;
        let _ = fs::remove_file(dest);
        if fs::hard_link(&src, dest).is_err() {
            fs::copy(&src, dest).map_err(io_err(dest))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_then_get_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = Sha256Digest::of_bytes(b"payload");
        assert_eq!(cache.get("p", &d).unwrap(), None);
        let path = cache.insert("p", &d, Some(7), &b"payload"[..]).unwrap();
        assert_eq!(cache.get("p", &d).unwrap(), Some(path.clone()));
        assert!(path.ends_with(format!("sha256/{}/{}", &d.to_string()[..2], d)));
    }

    #[test]
    fn wrong_bytes_are_not_stored_and_the_error_names_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let want = Sha256Digest::of_bytes(b"right");
        let err = cache
            .insert("thing.deb", &want, None, &b"wrong"[..])
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("thing.deb"), "{msg}");
        assert!(msg.contains(&want.to_string()), "{msg}");
        assert!(
            msg.contains(&Sha256Digest::of_bytes(b"wrong").to_string()),
            "{msg}"
        );
        assert_eq!(cache.get("thing.deb", &want).unwrap(), None);
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "temp file removed"
        );
    }

    #[test]
    fn size_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = Sha256Digest::of_bytes(b"abc");
        assert!(matches!(
            cache.insert("x", &d, Some(4), &b"abc"[..]),
            Err(CacheError::SizeMismatch {
                expected: 4,
                actual: 3,
                ..
            })
        ));
    }

    #[test]
    fn a_corrupted_entry_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = Sha256Digest::of_bytes(b"original");
        let path = cache
            .insert("model.gguf", &d, None, &b"original"[..])
            .unwrap();
        fs::write(&path, b"0riginal").unwrap();
        match cache.get("model.gguf", &d) {
            Err(CacheError::HashMismatch {
                name,
                path: p,
                expected,
                actual,
            }) => {
                assert_eq!(name, "model.gguf");
                assert_eq!(p, path);
                assert_eq!(expected, d);
                assert_eq!(actual, Sha256Digest::of_bytes(b"0riginal"));
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        let dest = dir.path().join("out");
        assert!(
            cache.link_to("model.gguf", &d, &dest).is_err(),
            "never hands out bad bytes"
        );
    }

    #[test]
    fn link_to_gives_the_file_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("c")).unwrap();
        let d = Sha256Digest::of_bytes(b"wheel");
        cache.insert("a.whl", &d, None, &b"wheel"[..]).unwrap();
        let dest = dir.path().join("a.whl");
        cache.link_to("a.whl", &d, &dest).unwrap();
        assert_eq!(fs::read(dest).unwrap(), b"wheel");
    }

    #[test]
    fn a_failing_reader_is_a_source_error() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = Sha256Digest::of_bytes(b"");
        assert!(matches!(
            cache.insert("x", &d, None, Broken),
            Err(CacheError::Source { .. })
        ));
    }
}
