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

/// An error from a dependency (dcap-qvl, x509-parser), kept whole so that its chain of causes
/// prints, and shareable so the errors that carry it stay `Clone`. Displays as the error
/// itself (its causes are its [`std::error::Error::source`]); two are equal when their messages
/// along the chain are.
#[derive(Clone, Debug)]
pub struct ForeignError(std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>);

impl ForeignError {
    /// Wraps `e`.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(std::sync::Arc::from(e.into()))
    }

    fn messages(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::successors(Some(&*self.0 as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .map(ToString::to_string)
    }
}

impl std::fmt::Display for ForeignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for ForeignError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ForeignError {
    fn eq(&self, other: &Self) -> bool {
        self.messages().eq(other.messages())
    }
}

impl Eq for ForeignError {}

/// Displays an error followed by each of its sources, separated by ": " (what `anyhow` prints
/// with `{:#}`), for the places that show an error as one line.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] ForeignError);

    #[test]
    fn a_chain_prints_every_cause_and_foreign_errors_compare_by_it() {
        let io = || std::io::Error::other("inner");
        let e = Outer(ForeignError::new(io()));
        assert_eq!(e.to_string(), "outer");
        assert_eq!(ErrorChain(&e).to_string(), "outer: inner");
        assert_eq!(ForeignError::new(io()), ForeignError::new(io()));
        assert_ne!(
            ForeignError::new(io()),
            ForeignError::new(std::io::Error::other("other"))
        );
    }
}
