//! The kernel command line: the flavor's base arguments plus the three measured `chrysalis.*` keys.
//!
//! The firmware measures the command line (TDX RTMR2, SNP launch digest through the kernel hashes table),
//! so whatever the guest trusts is reachable from it: the dm-verity root hashes (with salt and data block
//! count) of the rootfs and the model pack, and the SHA-256 of the guest configuration file. The key names
//! are fixed here and in docs/image.md ("Boot"); the guest init parses the same names.

use std::collections::BTreeMap;

use crate::evidence::Sha256 as Sha256Digest;

/// dm-verity root hash of the rootfs image (64 lowercase hex characters).
pub const ROOTFS_VERITY: &str = "chrysalis.rootfs_verity";
/// Salt of the rootfs hash tree (lowercase hex, `-` for none).
pub const ROOTFS_SALT: &str = "chrysalis.rootfs_salt";
/// Number of 4 KiB data blocks of the rootfs image; its hash tree starts right after them.
pub const ROOTFS_BLOCKS: &str = "chrysalis.rootfs_blocks";
/// dm-verity root hash of the model pack image.
pub const MODEL_VERITY: &str = "chrysalis.model_verity";
/// Salt of the model pack hash tree.
pub const MODEL_SALT: &str = "chrysalis.model_salt";
/// Number of 4 KiB data blocks of the model pack image.
pub const MODEL_BLOCKS: &str = "chrysalis.model_blocks";
/// SHA-256 of the guest configuration file (`guest.toml`, served on the `config` disk).
pub const CONFIG_SHA256: &str = "chrysalis.config_sha256";
/// The keys the builder writes; a flavor may not set them itself.
pub const RESERVED_KEYS: [&str; 7] = [
    ROOTFS_VERITY,
    ROOTFS_SALT,
    ROOTFS_BLOCKS,
    MODEL_VERITY,
    MODEL_SALT,
    MODEL_BLOCKS,
    CONFIG_SHA256,
];

/// A command line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmdlineError {
    /// A `chrysalis.*` key is missing.
    #[error("kernel command line has no {0}=")]
    Missing(&'static str),
    /// A key appears twice (the kernel would pass both; which one wins must never be a question).
    #[error("kernel command line sets {0} more than once")]
    Duplicate(String),
    /// A value is not what its key needs.
    #[error("kernel command line {key}: {value:?} is not {want}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
        /// What was expected.
        want: &'static str,
    },
    /// A `chrysalis.*` key that is not one of [`RESERVED_KEYS`] (a typo, or a newer image format).
    #[error("kernel command line has unknown key {0}")]
    UnknownKey(String),
    /// An argument holds a character that the kernel would split or mangle.
    #[error("kernel command line argument {0:?} contains whitespace, quotes or control characters")]
    BadArgument(String),
}

/// What the guest needs to open one dm-verity device (the layout is in docs/image.md, "Boot").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityArgs {
    /// Root hash of the tree.
    pub root_hash: Sha256Digest,
    /// Salt, lowercase hex (empty for none, written `-`).
    pub salt: String,
    /// Number of 4 KiB data blocks.
    pub data_blocks: u64,
}

#[cfg(feature = "full")]
impl From<&crate::manifest::VerityParams> for VerityArgs {
    fn from(p: &crate::manifest::VerityParams) -> Self {
        Self {
            root_hash: p.root_hash,
            salt: p.salt.clone(),
            data_blocks: p.data_blocks,
        }
    }
}

/// The measured values carried on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasuredArgs {
    /// The rootfs image.
    pub rootfs: VerityArgs,
    /// The model pack image.
    pub model: VerityArgs,
    /// SHA-256 of the guest configuration file.
    pub config_sha256: Sha256Digest,
}

fn salt_arg(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Joins `base` and the measured keys into one command line (single spaces, measured keys last).
pub fn build(base: &[String], m: &MeasuredArgs) -> Result<String, CmdlineError> {
    for a in base {
        if a.is_empty()
            || a.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"')
        {
            return Err(CmdlineError::BadArgument(a.clone()));
        }
        if let Some(k) = RESERVED_KEYS
            .iter()
            .find(|k| a.split('=').next() == Some(**k))
        {
            return Err(CmdlineError::Duplicate((*k).into()));
        }
    }
    for salt in [&m.rootfs.salt, &m.model.salt] {
        if !salt.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) || salt.len() % 2 != 0 {
            return Err(CmdlineError::BadArgument(salt.clone()));
        }
    }
    let mut args: Vec<String> = base.to_vec();
    args.push(format!("{ROOTFS_VERITY}={}", m.rootfs.root_hash));
    args.push(format!("{ROOTFS_SALT}={}", salt_arg(&m.rootfs.salt)));
    args.push(format!("{ROOTFS_BLOCKS}={}", m.rootfs.data_blocks));
    args.push(format!("{MODEL_VERITY}={}", m.model.root_hash));
    args.push(format!("{MODEL_SALT}={}", salt_arg(&m.model.salt)));
    args.push(format!("{MODEL_BLOCKS}={}", m.model.data_blocks));
    args.push(format!("{CONFIG_SHA256}={}", m.config_sha256));
    Ok(args.join(" "))
}

/// Largest salt dm-verity accepts (`MAX_SALT_SIZE` in drivers/md/dm-verity.h).
const MAX_SALT_BYTES: usize = 256;

/// Splits a command line into words the way the kernel's `next_arg` does: whitespace separates
/// words except inside double quotes, and the quotes themselves are dropped.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let (mut in_quote, mut started) = (false, false);
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

/// Reads the measured keys back from a command line, strictly: every key of [`RESERVED_KEYS`]
/// exactly once with a well-formed value, and no other `chrysalis.*` key (a typo must never fall
/// back to a default). Keys of other subsystems (`console=`, `panic=`, …) are ignored. This is the
/// parser the guest's init runs on `/proc/cmdline`.
pub fn parse(cmdline: &str) -> Result<MeasuredArgs, CmdlineError> {
    let mut found = BTreeMap::<&'static str, String>::new();
    for word in words(cmdline) {
        let (k, v) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word.as_str(), None),
        };
        if !k.starts_with("chrysalis.") {
            continue;
        }
        let Some(&key) = RESERVED_KEYS.iter().find(|r| **r == k) else {
            return Err(CmdlineError::UnknownKey(k.into()));
        };
        let Some(v) = v else {
            return Err(CmdlineError::BadValue {
                key,
                value: String::new(),
                want: "key=value",
            });
        };
        if found.insert(key, v.into()).is_some() {
            return Err(CmdlineError::Duplicate(k.into()));
        }
    }
    let get = |key: &'static str| {
        found
            .get(key)
            .map(String::as_str)
            .ok_or(CmdlineError::Missing(key))
    };
    let digest = |key: &'static str| -> Result<Sha256Digest, CmdlineError> {
        let v = get(key)?;
        v.parse().map_err(|_| CmdlineError::BadValue {
            key,
            value: v.into(),
            want: "64 hex characters",
        })
    };
    let salt = |key: &'static str| -> Result<String, CmdlineError> {
        let v = get(key)?;
        if v == "-" {
            return Ok(String::new());
        }
        if v.is_empty()
            || v.len() % 2 != 0
            || v.len() / 2 > MAX_SALT_BYTES
            || !v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(CmdlineError::BadValue {
                key,
                value: v.into(),
                want: "1 to 256 bytes of lowercase hex, or -",
            });
        }
        Ok(v.into())
    };
    let blocks = |key: &'static str| -> Result<u64, CmdlineError> {
        let v = get(key)?;
        v.parse::<u64>()
            .ok()
            // The dm target length is counted in 512-byte sectors: 8 per 4096-byte block.
            .filter(|n| *n > 0 && n.checked_mul(8).is_some())
            .ok_or(CmdlineError::BadValue {
                key,
                value: v.into(),
                want: "a positive decimal block count that fits in 64-bit sectors",
            })
    };
    Ok(MeasuredArgs {
        rootfs: VerityArgs {
            root_hash: digest(ROOTFS_VERITY)?,
            salt: salt(ROOTFS_SALT)?,
            data_blocks: blocks(ROOTFS_BLOCKS)?,
        },
        model: VerityArgs {
            root_hash: digest(MODEL_VERITY)?,
            salt: salt(MODEL_SALT)?,
            data_blocks: blocks(MODEL_BLOCKS)?,
        },
        config_sha256: digest(CONFIG_SHA256)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> MeasuredArgs {
        MeasuredArgs {
            rootfs: VerityArgs {
                root_hash: Sha256Digest::of_bytes(b"r"),
                salt: "a1b2".into(),
                data_blocks: 1234,
            },
            model: VerityArgs {
                root_hash: Sha256Digest::of_bytes(b"m"),
                salt: String::new(),
                data_blocks: 7,
            },
            config_sha256: Sha256Digest::of_bytes(b"c"),
        }
    }

    #[test]
    fn builds_and_parses_back() {
        let line = build(&["console=ttyS0".into(), "panic=-1".into()], &args()).unwrap();
        assert!(
            line.starts_with("console=ttyS0 panic=-1 chrysalis.rootfs_verity="),
            "{line}"
        );
        assert!(
            line.contains(" chrysalis.rootfs_salt=a1b2 chrysalis.rootfs_blocks=1234 "),
            "{line}"
        );
        assert!(
            line.contains(" chrysalis.model_salt=- chrysalis.model_blocks=7 "),
            "{line}"
        );
        assert_eq!(parse(&line).unwrap(), args());
    }

    #[test]
    fn refuses_duplicates_missing_keys_and_bad_values() {
        let line = build(&[], &args()).unwrap();
        let dup = format!("{line} {ROOTFS_VERITY}={}", Sha256Digest::of_bytes(b"x"));
        assert_eq!(
            parse(&dup),
            Err(CmdlineError::Duplicate(ROOTFS_VERITY.into()))
        );
        assert_eq!(
            parse("console=ttyS0"),
            Err(CmdlineError::Missing(ROOTFS_VERITY))
        );
        let bad = line.replace(&args().model.root_hash.to_string(), "abc");
        assert!(matches!(
            parse(&bad),
            Err(CmdlineError::BadValue {
                key: MODEL_VERITY,
                ..
            })
        ));
        let bad = line.replace("rootfs_blocks=1234", "rootfs_blocks=0");
        assert!(matches!(
            parse(&bad),
            Err(CmdlineError::BadValue {
                key: ROOTFS_BLOCKS,
                ..
            })
        ));
        let bad = line.replace("rootfs_salt=a1b2", "rootfs_salt=A1");
        assert!(matches!(
            parse(&bad),
            Err(CmdlineError::BadValue {
                key: ROOTFS_SALT,
                ..
            })
        ));
    }

    #[test]
    fn quotes_are_split_like_the_kernel() {
        assert_eq!(words(r#"a="b c" d  "e f"=g"#), vec!["a=b c", "d", "e f=g"]);
        assert_eq!(words("  \n"), Vec::<String>::new());
        assert_eq!(words(r#"x="""#), vec!["x="]);
        let line = build(&["BOOT_IMAGE=/vmlinuz".into()], &args()).unwrap();
        assert_eq!(parse(&format!("{line}\n")).unwrap(), args());
    }

    #[test]
    fn refuses_unknown_bare_and_out_of_range_keys() {
        let line = build(&[], &args()).unwrap();
        assert_eq!(
            parse(&format!("{line} chrysalis.rootfs_veritty=00")),
            Err(CmdlineError::UnknownKey("chrysalis.rootfs_veritty".into()))
        );
        let bare = format!("{line} {CONFIG_SHA256}");
        assert!(matches!(
            parse(&bare),
            Err(CmdlineError::BadValue {
                key: CONFIG_SHA256,
                ..
            })
        ));
        for (good, bad, key) in [
            ("rootfs_blocks=1234", "rootfs_blocks=-1", ROOTFS_BLOCKS),
            ("rootfs_blocks=1234", "rootfs_blocks=0x10", ROOTFS_BLOCKS),
            (
                "model_blocks=7",
                "model_blocks=2305843009213693952",
                MODEL_BLOCKS,
            ),
            ("rootfs_salt=a1b2", "rootfs_salt=a1b", ROOTFS_SALT),
            ("rootfs_salt=a1b2", "rootfs_salt=", ROOTFS_SALT),
        ] {
            match parse(&line.replace(good, bad)) {
                Err(CmdlineError::BadValue { key: k, .. }) => assert_eq!(k, key, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let long_salt = format!("rootfs_salt={}", "ab".repeat(MAX_SALT_BYTES + 1));
        assert!(parse(&line.replace("rootfs_salt=a1b2", &long_salt)).is_err());
        let max_salt = format!("rootfs_salt={}", "ab".repeat(MAX_SALT_BYTES));
        assert!(parse(&line.replace("rootfs_salt=a1b2", &max_salt)).is_ok());
    }

    #[test]
    fn refuses_base_arguments_that_would_break_the_line() {
        assert!(matches!(
            build(&["a b".into()], &args()),
            Err(CmdlineError::BadArgument(_))
        ));
        assert!(matches!(
            build(&[format!("{CONFIG_SHA256}=00")], &args()),
            Err(CmdlineError::Duplicate(_))
        ));
    }
}
