//! The dm-verity table for a disk that holds its data followed by its hash tree.
//!
//! Layout (docs/image.md, "Boot"): format 1, sha256, 4096-byte data and hash blocks, no verity
//! superblock; the hash tree starts at byte `data_blocks * 4096` of the same disk. Every parameter
//! comes from the measured command line, none from the untrusted disk.

use chrysalis_attestation::bootargs::VerityArgs;

/// Size of a data and of a hash block.
pub(crate) const BLOCK_BYTES: u64 = 4096;

/// A device-mapper target line: where it starts, how long it is (512-byte sectors), its type
/// and its parameter string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Length in 512-byte sectors.
    pub(crate) sectors: u64,
    /// Target type, e.g. `verity`.
    pub(crate) kind: &'static str,
    /// Target parameters as the kernel's table parser reads them.
    pub(crate) params: String,
}

/// Builds the verity target for the disk `major:minor`. No optional arguments: a block that does
/// not match its hash is an I/O error (dm-verity's default), never silently accepted.
pub(crate) fn verity_target(disk: (u64, u64), p: &VerityArgs) -> Target {
    let (major, minor) = disk;
    let salt = if p.salt.is_empty() { "-" } else { &p.salt };
    let blocks = p.data_blocks;
    Target {
        sectors: blocks * (BLOCK_BYTES / 512),
        kind: "verity",
        params: format!(
            "1 {major}:{minor} {major}:{minor} {BLOCK_BYTES} {BLOCK_BYTES} {blocks} {blocks} sha256 {} {salt}",
            p.root_hash
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_dm_verity_syntax() {
        let p = VerityArgs {
            root_hash: chrysalis_attestation::evidence::Sha256([0xab; 32]),
            salt: "0102fe".into(),
            data_blocks: 2560,
        };
        let t = verity_target((254, 16), &p);
        assert_eq!(t.kind, "verity");
        assert_eq!(t.sectors, 20480);
        assert_eq!(
            t.params,
            format!(
                "1 254:16 254:16 4096 4096 2560 2560 sha256 {} 0102fe",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn empty_salt_is_a_dash() {
        let p = VerityArgs {
            root_hash: chrysalis_attestation::evidence::Sha256::ZERO,
            salt: String::new(),
            data_blocks: 1,
        };
        assert!(
            verity_target((8, 0), &p)
                .params
                .ends_with(&format!("{} -", "00".repeat(32)))
        );
    }
}
