//! Error types, one per area, every variant documented and matchable.

use thiserror::Error;

/// Evidence that could not be read: wrong length, not hex, not a quote or report.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvidenceError {
    /// A fixed-size field had the wrong number of bytes.
    #[error("{what} must be {expected} bytes, got {got}")]
    BadLength {
        /// The field or structure.
        what: &'static str,
        /// Its size in bytes.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// A fixed-size field given as hex was not valid hex of the right length.
    #[error("{what} must be {expected_bytes} bytes as hex ({} hex digits), got {got_chars} characters", expected_bytes * 2)]
    BadHex {
        /// The field.
        what: &'static str,
        /// Its size in bytes.
        expected_bytes: usize,
        /// How many characters were given.
        got_chars: usize,
    },
    /// The platform name is not `tdx` or `snp`.
    #[error("unknown platform {0:?} (expected \"tdx\" or \"snp\")")]
    UnknownPlatform(String),
    /// The bytes do not decode as the named structure.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The structure.
        what: &'static str,
        /// What the decoder reported.
        reason: String,
    },
}
