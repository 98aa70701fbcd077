//! The runtime config: read from its disk, checked against the sha256 on the command line.
//!
//! The config disk holds the config file's bytes followed by zero bytes up to a whole number of
//! 512-byte sectors. A config is text, so it never ends in a NUL byte: the trailing zeros are
//! padding and are dropped before hashing.

use std::io::Read;

use sha2::{Digest, Sha256};

use super::error::InitError;

/// Largest config disk init reads (1 MiB): a config is a few kilobytes.
pub(crate) const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Reads at most [`MAX_CONFIG_BYTES`] from `disk`; more is an error.
pub(crate) fn read_disk(disk: impl Read) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    disk.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(InitError::ConfigTooLarge(bytes.len()).into());
    }
    Ok(bytes)
}

/// Returns the config (the disk content without its zero padding) only if its sha256 equals
/// `expected`.
pub(crate) fn verified(disk: &[u8], expected: &[u8; 32]) -> Result<Vec<u8>, InitError> {
    let end = disk.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let config = &disk[..end];
    let actual: [u8; 32] = Sha256::digest(config).into();
    if &actual != expected {
        return Err(InitError::ConfigDigest {
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        });
    }
    Ok(config.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(config: &[u8]) -> Vec<u8> {
        let mut d = config.to_vec();
        d.resize(config.len().next_multiple_of(512), 0);
        d
    }

    #[test]
    fn padding_is_dropped_and_the_digest_checked() {
        let config = b"model = \"smollm2\"\n";
        let digest: [u8; 32] = Sha256::digest(config).into();
        assert_eq!(verified(&padded(config), &digest).unwrap(), config);
        assert_eq!(verified(config, &digest).unwrap(), config);
    }

    #[test]
    fn a_changed_byte_is_refused_naming_both_digests() {
        let config = b"model = \"smollm2\"\n";
        let digest: [u8; 32] = Sha256::digest(config).into();
        let mut disk = padded(config);
        disk[3] ^= 1;
        match verified(&disk, &digest) {
            Err(InitError::ConfigDigest { expected, actual }) => {
                assert_eq!(expected, hex::encode(digest));
                assert_ne!(actual, expected);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_disks_are_refused() {
        assert!(read_disk(&vec![b'a'; MAX_CONFIG_BYTES][..]).is_ok());
        let err = read_disk(&vec![b'a'; MAX_CONFIG_BYTES + 1][..]).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }
}
