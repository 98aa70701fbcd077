//! SHA-256 digests: the project-wide [`chrysalis_attestation::Sha256`], and a writer that hashes
//! what passes through it.

use std::io::{self, Write};

use sha2::{Digest as _, Sha256};

/// The digest type of locks, caches and manifests: the attestation crate's SHA-256 newtype
/// (lowercase hex in text; parsing accepts either case).
pub use chrysalis_attestation::Sha256 as Sha256Digest;

/// A writer that hashes and counts everything passed through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The digest and length of what was written, and the inner writer.
    pub fn finish(self) -> (Sha256Digest, u64, W) {
        (
            Sha256Digest::from_bytes(self.hasher.finalize().into()),
            self.len,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_lowercase_hex() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d: Sha256Digest = hex.parse().unwrap();
        assert_eq!(d, Sha256Digest::of_bytes(b""));
        assert_eq!(d.to_string(), hex);
        assert_eq!(hex.to_uppercase().parse::<Sha256Digest>().unwrap(), d);
    }

    #[test]
    fn refuses_short_and_non_hex() {
        for bad in [
            "e3b0",
            "g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "",
        ] {
            assert!(bad.parse::<Sha256Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hashing_writer_matches_one_shot_digest() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (d, len, inner) = w.finish();
        assert_eq!(d, Sha256Digest::of_bytes(b"hello world"));
        assert_eq!(len, 11);
        assert_eq!(inner, b"hello world");
    }
}
