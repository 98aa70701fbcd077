//! The `chrysalis.*` keys of the measured kernel command line, parsed strictly.
//!
//! The command line is measured by the TEE firmware, so everything init trusts hangs off it: the
//! dm-verity root hashes of the rootfs and the model pack and the sha256 of the config. Parsing is
//! strict on purpose: an unknown `chrysalis.*` key (a typo), a repeated key or a malformed value is
//! an error, never a default. Keys of other subsystems (`console=`, `panic=`, …) are ignored.

use std::collections::BTreeMap;

use super::error::InitError;

/// Largest salt dm-verity accepts (`MAX_SALT_SIZE` in drivers/md/dm-verity.h).
const MAX_SALT_BYTES: usize = 256;

/// Every `chrysalis.*` key this init understands. Documented in docs/image.md ("Boot").
const KEYS: [&str; 7] = [
    "chrysalis.rootfs_verity",
    "chrysalis.rootfs_salt",
    "chrysalis.rootfs_blocks",
    "chrysalis.model_verity",
    "chrysalis.model_salt",
    "chrysalis.model_blocks",
    "chrysalis.config_sha256",
];

/// What is needed to open one dm-verity device whose hash tree follows its data on the same disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerityParams {
    /// sha256 root hash of the hash tree.
    pub(crate) root_hash: [u8; 32],
    /// Salt prepended to every hashed block; empty for none.
    pub(crate) salt: Vec<u8>,
    /// Number of 4096-byte data blocks; the hash tree starts right after them.
    pub(crate) data_blocks: u64,
}

/// Everything init takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootParams {
    /// The rootfs disk (virtio-blk serial `rootfs`).
    pub(crate) rootfs: VerityParams,
    /// The model pack disk (virtio-blk serial `model`).
    pub(crate) model: VerityParams,
    /// sha256 of the runtime config on the config disk (virtio-blk serial `config`).
    pub(crate) config_sha256: [u8; 32],
}

/// Splits a command line into words the way the kernel's `next_arg` does: whitespace separates
/// words except inside double quotes, and the quotes themselves are dropped.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_quote = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                started = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// Parses `/proc/cmdline`. Returns Ok only if every required `chrysalis.*` key is present exactly
/// once with a well-formed value and no unknown `chrysalis.*` key appears. It does not check that
/// the hashes match anything: dm-verity and the config check do that.
pub(crate) fn parse(cmdline: &str) -> Result<BootParams, InitError> {
    let mut found: BTreeMap<&'static str, String> = BTreeMap::new();
    for word in words(cmdline) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word.as_str(), None),
        };
        if !key.starts_with("chrysalis.") {
            continue;
        }
        let Some(&known) = KEYS.iter().find(|k| **k == key) else {
            return Err(InitError::UnknownKey(key.to_owned()));
        };
        let Some(value) = value else {
            return Err(InitError::BadValue {
                key: known,
                reason: "has no value".into(),
            });
        };
        if found.insert(known, value.to_owned()).is_some() {
            return Err(InitError::DuplicateKey(known));
        }
    }
    let mut take = |key: &'static str| found.remove(key).ok_or(InitError::MissingKey(key));
    let rootfs = VerityParams {
        root_hash: digest(&take("chrysalis.rootfs_verity")?, "chrysalis.rootfs_verity")?,
        salt: salt(&take("chrysalis.rootfs_salt")?, "chrysalis.rootfs_salt")?,
        data_blocks: blocks(&take("chrysalis.rootfs_blocks")?, "chrysalis.rootfs_blocks")?,
    };
    let model = VerityParams {
        root_hash: digest(&take("chrysalis.model_verity")?, "chrysalis.model_verity")?,
        salt: salt(&take("chrysalis.model_salt")?, "chrysalis.model_salt")?,
        data_blocks: blocks(&take("chrysalis.model_blocks")?, "chrysalis.model_blocks")?,
    };
    let config_sha256 = digest(&take("chrysalis.config_sha256")?, "chrysalis.config_sha256")?;
    Ok(BootParams {
        rootfs,
        model,
        config_sha256,
    })
}

fn digest(value: &str, key: &'static str) -> Result<[u8; 32], InitError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out).map_err(|e| InitError::BadValue {
        key,
        reason: format!("must be 64 hex digits (a sha256): {e}"),
    })?;
    Ok(out)
}

fn salt(value: &str, key: &'static str) -> Result<Vec<u8>, InitError> {
    if value == "-" {
        return Ok(Vec::new());
    }
    let bytes = hex::decode(value).map_err(|e| InitError::BadValue {
        key,
        reason: format!("must be hex or '-' for no salt: {e}"),
    })?;
    if bytes.is_empty() || bytes.len() > MAX_SALT_BYTES {
        return Err(InitError::BadValue {
            key,
            reason: format!("salt must be 1 to {MAX_SALT_BYTES} bytes, or '-'"),
        });
    }
    Ok(bytes)
}

fn blocks(value: &str, key: &'static str) -> Result<u64, InitError> {
    let n: u64 = value.parse().map_err(|_| InitError::BadValue {
        key,
        reason: format!("must be a decimal block count, got {value:?}"),
    })?;
    // The dm target length is counted in 512-byte sectors: 8 per 4096-byte block.
    if n == 0 || n.checked_mul(8).is_none() {
        return Err(InitError::BadValue {
            key,
            reason: format!("block count {n} is out of range"),
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "2f8a3c1e0b9d7f6a5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a21";
    const MODEL: &str = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
    const CONFIG: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn full() -> String {
        format!(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 panic=-1 chrysalis.rootfs_verity={ROOT} \
             chrysalis.rootfs_salt=a1b2 chrysalis.rootfs_blocks=1234 chrysalis.model_verity={MODEL} \
             chrysalis.model_salt=- chrysalis.model_blocks=7 chrysalis.config_sha256={CONFIG}\n"
        )
    }

    #[test]
    fn parses_all_keys_and_ignores_others() {
        let p = parse(&full()).unwrap();
        assert_eq!(hex::encode(p.rootfs.root_hash), ROOT);
        assert_eq!(p.rootfs.salt, vec![0xa1, 0xb2]);
        assert_eq!(p.rootfs.data_blocks, 1234);
        assert_eq!(hex::encode(p.model.root_hash), MODEL.to_lowercase());
        assert!(p.model.salt.is_empty());
        assert_eq!(p.model.data_blocks, 7);
        assert_eq!(hex::encode(p.config_sha256), CONFIG);
    }

    #[test]
    fn quotes_are_handled_like_the_kernel() {
        assert_eq!(words(r#"a="b c" d  "e f"=g"#), vec!["a=b c", "d", "e f=g"]);
        assert_eq!(words("  \n"), Vec::<String>::new());
        assert_eq!(words(r#"x="""#), vec!["x="]);
    }

    #[test]
    fn every_key_is_required() {
        for key in KEYS {
            let line: String = full()
                .split_whitespace()
                .filter(|w| !w.starts_with(&format!("{key}=")))
                .collect::<Vec<_>>()
                .join(" ");
            assert_eq!(parse(&line), Err(InitError::MissingKey(key)), "{key}");
        }
    }

    #[test]
    fn unknown_and_duplicate_keys_are_rejected() {
        let typo = format!("{} chrysalis.rootfs_veritty=00", full());
        assert_eq!(
            parse(&typo),
            Err(InitError::UnknownKey("chrysalis.rootfs_veritty".into()))
        );
        let twice = format!("{} chrysalis.model_blocks=8", full());
        assert_eq!(
            parse(&twice),
            Err(InitError::DuplicateKey("chrysalis.model_blocks"))
        );
        let bare = format!("{} chrysalis.config_sha256", full());
        assert!(matches!(
            parse(&bare),
            Err(InitError::BadValue {
                key: "chrysalis.config_sha256",
                ..
            })
        ));
    }

    #[test]
    fn malformed_values_are_rejected_with_the_key() {
        let cases = [
            (
                format!("chrysalis.rootfs_verity={ROOT}"),
                "chrysalis.rootfs_verity=abcd",
            ),
            (
                format!("chrysalis.rootfs_verity={ROOT}"),
                "chrysalis.rootfs_verity=zz",
            ),
            (
                "chrysalis.rootfs_salt=a1b2".into(),
                "chrysalis.rootfs_salt=a1b",
            ),
            (
                "chrysalis.rootfs_salt=a1b2".into(),
                "chrysalis.rootfs_salt=",
            ),
            (
                "chrysalis.rootfs_blocks=1234".into(),
                "chrysalis.rootfs_blocks=0",
            ),
            (
                "chrysalis.rootfs_blocks=1234".into(),
                "chrysalis.rootfs_blocks=-1",
            ),
            (
                "chrysalis.rootfs_blocks=1234".into(),
                "chrysalis.rootfs_blocks=0x10",
            ),
            (
                "chrysalis.model_blocks=7".into(),
                "chrysalis.model_blocks=2305843009213693952",
            ),
        ];
        for (good, bad) in cases {
            let line = full().replace(&good, bad);
            let key = bad.split('=').next().unwrap();
            match parse(&line) {
                Err(InitError::BadValue { key: k, .. }) => assert_eq!(k, key, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let long_salt = format!("chrysalis.rootfs_salt={}", "ab".repeat(257));
        assert!(parse(&full().replace("chrysalis.rootfs_salt=a1b2", &long_salt)).is_err());
    }
}
