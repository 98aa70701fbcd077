//! Errors of the guest init's pure parts: modules.dep, config check (the command line's are
//! `chrysalis_attestation::bootargs::CmdlineError`).

/// What init found wrong in its inputs. System-call failures are reported with context by the
/// steps that make them; every error ends in a `chrysalis-init: FATAL:` line and a power-off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum InitError {
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
