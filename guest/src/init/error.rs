//! Errors of the guest init's pure parts: command line, modules.dep, config check.

/// What init found wrong in its inputs. System-call failures are reported with context by the
/// steps that make them; every error ends in a `chrysalis-init: FATAL:` line and a power-off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum InitError {
    /// A required `chrysalis.*` key is not on the kernel command line.
    #[error("kernel command line lacks {0}=")]
    MissingKey(&'static str),
    /// A `chrysalis.*` key appears more than once.
    #[error("kernel command line has {0}= more than once")]
    DuplicateKey(&'static str),
    /// A `chrysalis.*` key that this init does not know (a typo, or a newer image format).
    #[error("kernel command line has unknown key {0}")]
    UnknownKey(String),
    /// A `chrysalis.*` key whose value is malformed.
    #[error("kernel command line key {key}= {reason}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A modules.dep line is not `path: dep dep …`.
    #[error("modules.dep line {line}: {reason}")]
    ModulesDep {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// modules.dep names a dependency that has no line of its own, or the dependencies loop.
    #[error("modules.dep: {0}")]
    ModuleGraph(String),
    /// The config disk holds more than init accepts.
    #[error("config disk holds {0} bytes, more than the {max} init accepts", max = super::config::MAX_CONFIG_BYTES)]
    ConfigTooLarge(usize),
    /// The config's sha256 differs from `chrysalis.config_sha256`.
    #[error("config sha256 is {actual}, the kernel command line pins {expected}")]
    ConfigDigest {
        /// Digest pinned on the command line (hex).
        expected: String,
        /// Digest of the config disk's content (hex).
        actual: String,
    },
}
