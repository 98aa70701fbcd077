//! Confidential-VM firmware built from source: OVMF for AMD SEV-SNP and TDVF for Intel TDX.
//!
//! The firmware is part of what the hardware measures, so clients can only pin a launch digest or
//! an MRTD that anyone can recompute if the firmware itself can be rebuilt bit for bit. This module
//! builds both images from Debian's edk2 source package, pinned by sha256 in a lock file, with
//! Debian's patches applied, in a fixed environment, and caches the result under a key that covers
//! every input.
//!
//! ```text
//!  lock/firmware.toml ──SourceLock──▶ SourceStore::ensure (apt index check, download, sha256)
//!                                            │ orig + debian tarballs (content-addressed)
//!  Recipe::new(platform, epoch) ──cache_key(recipe, sources, toolchain, env)──▶ cache hit?
//!                                            │ no
//!  BuildEnv::run: extract ─▶ apply debian/patches ─▶ make BaseTools ─▶ edk2 `build` ─▶ OVMF.fd
//!                                            │
//!                      <cache>/firmware/<key>/{ovmf-snp.fd, record.json}
//! ```
//!
//! * [`lock`]: the pinned source files and their verification (a mismatch names the file and both
//!   hashes).
//! * [`recipe`]: platforms, build arguments, the fixed build environment, and the cache key.
//! * [`env`]: the [`BuildEnv`] seam that runs build steps (on the host today; a pinned build
//!   chroot can implement it later), and the check-and-install of the build tools.
//! * [`fetch`]: the content-addressed source store and the fetchers that fill it (apt, a folder).
//! * [`build`]: the whole build, its cache, and the JSON record of each output.
//!
//! What the firmware does not contain: AmdSevX64.dsc embeds a GRUB image for booting an encrypted
//! disk with an injected secret. chrysalis boots the kernel directly (its hash is in the measured
//! SEV hashes table), so the recipe builds with an empty `grub.efi` stub, as Kata Containers and
//! others do; without a `-kernel` the SNP firmware has nothing to boot. See [`recipe`].

pub mod build;
pub mod env;
pub mod fetch;
pub mod lock;
pub mod recipe;

pub use build::{
    BuildOptions, BuildRecord, BuiltFirmware, Progress, SilentProgress, build, export, write_record,
};
pub use env::{
    BuildEnv, HostEnv, REQUIRED_TOOLS, Step, StepOutcome, ToolRequirement, ensure_tools,
    missing_tools, probe_toolchain,
};
pub use fetch::{
    AptFetcher, DirFetcher, Fetcher, IndexEntry, SourceStore, check_index, parse_print_uris,
};
pub use lock::{FileRole, SourceFile, SourceLock, SourcePackage, sha256_file};
pub use recipe::{BUILD_ORDER, CacheKey, Platform, Recipe, Toolchain, cache_key, dsc, file_name};

use std::path::PathBuf;

/// Everything that can go wrong while pinning, fetching, building or caching the firmware.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// A file could not be read, written, renamed or created.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (e.g. "reading", "creating directory").
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The lock file is not valid TOML or misses a field.
    #[error("lock file {path}: {reason}")]
    LockParse {
        /// The lock file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The lock file parses but is not usable (duplicate role, malformed hash, unsafe file name).
    #[error("lock file is invalid: {0}")]
    LockInvalid(String),
    /// A file's sha256 is not the pinned one.
    #[error("sha256 mismatch for {file}: pinned {expected}, got {actual}")]
    HashMismatch {
        /// The file name (as pinned).
        file: String,
        /// The pinned sha256 (lowercase hex).
        expected: String,
        /// The sha256 of the bytes found (lowercase hex).
        actual: String,
    },
    /// A file's size is not the pinned one.
    #[error("size mismatch for {file}: pinned {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The file name (as pinned).
        file: String,
        /// The pinned size in bytes.
        expected: u64,
        /// The size found.
        actual: u64,
    },
    /// The archive's signed index lists the pinned file with another hash or size.
    #[error(
        "archive index disagrees with the lock for {file}: pinned sha256 {pinned} ({pinned_size} bytes), index has {index} ({index_size} bytes)"
    )]
    IndexMismatch {
        /// The file name.
        file: String,
        /// The pinned sha256.
        pinned: String,
        /// The pinned size.
        pinned_size: u64,
        /// The sha256 the index lists.
        index: String,
        /// The size the index lists.
        index_size: u64,
    },
    /// The archive does not serve the pinned package version, or not one of its files.
    #[error("the archive does not list {file} of source package {package} {version}{hint}")]
    NotInIndex {
        /// The source package.
        package: String,
        /// The pinned version.
        version: String,
        /// The missing file.
        file: String,
        /// Advice on where else the file can be found.
        hint: String,
    },
    /// A pinned file that the build consumes is neither cached nor obtainable from the fetcher.
    #[error("source file {file} is not available: {reason}")]
    SourceUnavailable {
        /// The file name.
        file: String,
        /// Why it could not be obtained.
        reason: String,
    },
    /// A program could not be started at all.
    #[error("could not start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A build step exited unsuccessfully; the tail of its output is included.
    #[error("step `{step}` failed ({status}); full log: {log}\n--- last lines ---\n{tail}")]
    StepFailed {
        /// The step's name.
        step: String,
        /// How it ended ("exit status 2", "killed by signal 9").
        status: String,
        /// Where its full output was written.
        log: PathBuf,
        /// Its last output lines.
        tail: String,
    },
    /// Output of a probe or a tool could not be understood.
    #[error("unexpected output from {what}: {detail}")]
    UnexpectedOutput {
        /// Which probe or tool.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// Build tools are still missing after the install attempt.
    #[error("build tools missing after installing: {0}")]
    ToolsMissing(String),
    /// The build finished but did not leave the expected firmware image.
    #[error("the build did not produce {0}")]
    MissingOutput(PathBuf),
    /// A cached firmware image no longer matches its record (corruption or tampering).
    #[error(
        "cached firmware {path} does not match its record: recorded sha256 {expected}, found {actual}; delete {dir} to rebuild"
    )]
    CacheCorrupt {
        /// The cached image.
        path: PathBuf,
        /// The entry's directory.
        dir: PathBuf,
        /// The sha256 in the record.
        expected: String,
        /// The sha256 of the file found.
        actual: String,
    },
    /// A record could not be serialized or parsed.
    #[error("build record {path}: {source}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// The serde error.
        source: serde_json::Error,
    },
}

impl FirmwareError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
