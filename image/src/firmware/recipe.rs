//! The firmware build recipe (platforms, edk2 arguments, fixed environment, scripts) and its cache key.
//!
//! Everything that can change the bytes of a firmware image is in [`Recipe`], the pinned sources or
//! the probed [`Toolchain`]; [`cache_key`] hashes all of it. What cannot change the bytes (the job
//! count, the work directory, the output directory) is deliberately left out, and the
//! reproducibility check (`cargo xtask firmware reproduce`) is what backs that claim.
//!
//! Sources of non-determinism in an edk2 build and how the recipe removes them:
//! * PE/COFF time stamps: GenFw writes `time(NULL)` when converting ELF to PE; the platform DSCs
//!   pass `--zero` to GenFw in RELEASE builds, which zeroes every time stamp field. Hence RELEASE.
//! * Build paths: GenFw records the input `.dll` path in a CodeView (NB10) debug entry. `--zero`
//!   blanks the bytes, but the entry keeps its length, so a longer work directory grows every PE
//!   image (by 0x40 bytes for a 42-character longer path, measured) and moves its `.reloc` section.
//!   The build therefore runs in a workspace of fixed path length (see [`WORKSPACE_ALIAS_LEN`]);
//!   no path text survives in the images. `__FILE__` only appears in ASSERT/DEBUG, compiled out by
//!   `MDEPKG_NDEBUG` in RELEASE.
//! * Python: `PYTHONHASHSEED=0` fixes set and dict iteration order in BaseTools' code generators.
//! * Locale, time zone, umask: fixed (`C.UTF-8`, `UTC`, `022`) in the environment and scripts; the
//!   environment is otherwise empty.
//! * Tarball modes and owners: extracted with `--no-same-owner --no-same-permissions` under the
//!   fixed umask.
//! * Parallelism: edk2 links each module from its own objects and GenFds lays out files in FDF
//!   order, so `-n` does not change the output (checked: `-n 2` and `-n 3` give identical images).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::lock::SourceFile;

/// Bumped whenever the recipe changes in a way the serialized [`Recipe`] would not show.
pub const RECIPE_VERSION: u32 = 1;

/// Length of the workspace path the edk2 build sees. Build paths end up (blanked, but with their
/// length) in every PE image, so two builds are identical only if this length is. The builder makes
/// a symlink of exactly this length (`/tmp/chrysalis-edk2-<20 random characters>/e`) to the real
/// work directory and runs the build through it; edk2 uses the logical `$PWD`, not the resolved path.
pub const WORKSPACE_ALIAS_LEN: usize = 42;

/// The platform a firmware image is built for: attestation's [`Platform`], so the manifest's
/// firmware roles, the measurement calculators and the build name the same thing.
pub use chrysalis_attestation::Platform;

/// Both platforms, in build order.
pub const BUILD_ORDER: [Platform; 2] = [Platform::Snp, Platform::Tdx];

/// The platform description file of `platform`, relative to the edk2 tree.
pub fn dsc(platform: Platform) -> &'static str {
    match platform {
        Platform::Snp => "OvmfPkg/AmdSev/AmdSevX64.dsc",
        Platform::Tdx => "OvmfPkg/IntelTdx/IntelTdxX64.dsc",
    }
}

/// The DSC's OUTPUT_DIRECTORY, relative to the edk2 tree.
fn output_directory(platform: Platform) -> &'static str {
    match platform {
        Platform::Snp => "Build/AmdSev",
        Platform::Tdx => "Build/IntelTdx",
    }
}

/// Extra `-D` defines on top of the DSC defaults.
fn defines(platform: Platform) -> &'static [&'static str] {
    match platform {
        // AmdSevX64.dsc already defaults to BUILD_SHELL=FALSE and no TPM.
        Platform::Snp => &[],
        // IntelTdxX64.dsc defaults to BUILD_SHELL=TRUE; its own comment says a production
        // image should not carry the UEFI shell.
        Platform::Tdx => &["BUILD_SHELL=FALSE"],
    }
}

/// The file name of `platform`'s image in outputs and the cache.
pub fn file_name(platform: Platform) -> &'static str {
    match platform {
        Platform::Snp => "ovmf-snp.fd",
        Platform::Tdx => "ovmf-tdx.fd",
    }
}

/// The edk2 build target (RELEASE: no debug output, asserts compiled out, GenFw `--zero`).
const TARGET: &str = "RELEASE";
/// The edk2 toolchain tag for GCC ≥ 5 (what Debian uses).
const TOOLCHAIN_TAG: &str = "GCC5";

/// Unpacks the orig and debian tarballs and applies debian/patches/series in order, as
/// dpkg-source does for a "3.0 (quilt)" package. Arguments: orig tarball, debian tarball, upstream
/// directory name. Runs in the work directory.
const PREPARE_SCRIPT: &str = r#"set -eu
umask 022
orig=$1 debian=$2 dir=$3
rm -rf -- "$dir"
tar --no-same-owner --no-same-permissions -xf "$orig"
cd -- "$dir"
tar --no-same-owner --no-same-permissions -xf "$debian"
sed -e 's/#.*//' debian/patches/series | while read -r patch strip; do
  [ -n "$patch" ] || continue
  echo "applying debian/patches/$patch"
  patch ${strip:--p1} --batch --forward --no-backup-if-mismatch --quiet -i "debian/patches/$patch"
done
# AmdSevX64 embeds GRUB (for LUKS with an injected secret) and its PREBUILD script keeps an existing
# grub.efi that is newer than grub.cfg and grub.sh. chrysalis boots the kernel directly, so an
# empty stub takes GRUB's place.
: > OvmfPkg/AmdSev/Grub/grub.efi
"#;

/// Builds BaseTools (GenFw, GenFv, VfrCompile, ...). Arguments: edk2 tree, job count.
const BASETOOLS_SCRIPT: &str = r#"set -eu
umask 022
cd -- "$1"
make -C BaseTools ARCH=X64 -j "$2"
"#;

/// Runs the edk2 `build` command. Arguments: edk2 tree (the fixed-length alias), job count, then
/// the recipe's build arguments.
const BUILD_SCRIPT: &str = r#"set -eu
umask 022
cd -- "$1"
jobs=$2
shift 2
args=("$@")
# A sourced script sees the caller's positional parameters; edksetup.sh must see none.
set --
set +u
. ./edksetup.sh
set -u
build "${args[@]}" -n "$jobs"
"#;

/// How one platform's firmware is built. Serialized (as JSON) into the cache key and the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    /// [`RECIPE_VERSION`].
    pub version: u32,
    /// The platform.
    pub platform: Platform,
    /// Arguments of edk2's `build` (without `-n`).
    pub build_args: Vec<String>,
    /// The complete environment of every step (nothing is inherited).
    pub env: BTreeMap<String, String>,
    /// Script that unpacks and patches the sources.
    pub prepare_script: String,
    /// Script that builds BaseTools.
    pub basetools_script: String,
    /// Script that runs the edk2 build.
    pub build_script: String,
    /// The produced image, relative to the edk2 tree.
    pub output: String,
    /// Length of the workspace path the build runs under ([`WORKSPACE_ALIAS_LEN`]).
    pub workspace_path_len: usize,
}

impl Recipe {
    /// The recipe for `platform`, with `SOURCE_DATE_EPOCH` from the lock.
    pub fn new(platform: Platform, source_date_epoch: u64) -> Self {
        let mut build_args: Vec<String> = [
            "-a",
            "X64",
            "-t",
            TOOLCHAIN_TAG,
            "-b",
            TARGET,
            "-p",
            dsc(platform),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for define in defines(platform) {
            build_args.push("-D".to_owned());
            build_args.push((*define).to_owned());
        }
        Self {
            version: RECIPE_VERSION,
            platform,
            build_args,
            env: build_environment(source_date_epoch),
            prepare_script: PREPARE_SCRIPT.to_owned(),
            basetools_script: BASETOOLS_SCRIPT.to_owned(),
            build_script: BUILD_SCRIPT.to_owned(),
            output: format!(
                "{}/{TARGET}_{TOOLCHAIN_TAG}/FV/OVMF.fd",
                output_directory(platform)
            ),
            workspace_path_len: WORKSPACE_ALIAS_LEN,
        }
    }
}

/// The whole environment of the build steps: nothing from the caller's environment leaks in.
pub fn build_environment(source_date_epoch: u64) -> BTreeMap<String, String> {
    [
        // Debian's tools only: no pyenv shims, no /usr/local.
        ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin".to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("LC_ALL", "C.UTF-8".to_owned()),
        ("TZ", "UTC".to_owned()),
        ("SOURCE_DATE_EPOCH", source_date_epoch.to_string()),
        ("PYTHONHASHSEED", "0".to_owned()),
        ("PYTHONDONTWRITEBYTECODE", "1".to_owned()),
        ("PYTHONNOUSERSITE", "1".to_owned()),
        ("PYTHON_COMMAND", "python3".to_owned()),
        // No dotfiles: a home that does not exist, as on Debian's build daemons.
        ("HOME", "/nonexistent".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Versions of the tools that turn sources into firmware bytes, as the tools report them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Toolchain(pub BTreeMap<String, String>);

/// A cache key: sha256 (lowercase hex) over everything that determines a firmware image.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CacheKey(pub String);

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Serialize)]
struct KeyMaterial<'a> {
    purpose: &'static str,
    recipe: &'a Recipe,
    sources: Vec<(&'a str, &'a str)>,
    toolchain: &'a Toolchain,
    env: &'a str,
}

/// The cache key of one platform's image: sha256 over the recipe, the consumed source files
/// (name and sha256), the toolchain versions and the build environment's identity. The `.dsc`
/// is not consumed, so it does not enter the key.
pub fn cache_key(
    recipe: &Recipe,
    sources: &[SourceFile],
    toolchain: &Toolchain,
    env_identity: &str,
) -> CacheKey {
    let mut sources: Vec<(&str, &str)> = sources
        .iter()
        .filter(|f| f.role.consumed())
        .map(|f| (f.name.as_str(), f.sha256.as_str()))
        .collect();
    sources.sort_unstable();
    let material = KeyMaterial {
        purpose: "chrysalis firmware cache key",
        recipe,
        sources,
        toolchain,
        env: env_identity,
    };
    // Serializing plain structs, strings and BTreeMaps cannot fail.
    let json = serde_json::to_vec(&material).unwrap_or_default();
    CacheKey(hex::encode(Sha256::digest(&json)))
}

#[cfg(test)]
mod tests {
    use super::super::lock::FileRole;
    use super::*;

    fn sources() -> Vec<SourceFile> {
        vec![
            SourceFile {
                name: "edk2_2025.02.orig.tar.xz".into(),
                role: FileRole::Orig,
                size: 1,
                sha256: "a".repeat(64),
            },
            SourceFile {
                name: "edk2_2025.02-8+deb13u1.debian.tar.xz".into(),
                role: FileRole::Debian,
                size: 1,
                sha256: "b".repeat(64),
            },
            SourceFile {
                name: "edk2_2025.02-8+deb13u1.dsc".into(),
                role: FileRole::Dsc,
                size: 1,
                sha256: "c".repeat(64),
            },
        ]
    }

    fn toolchain() -> Toolchain {
        Toolchain(
            [
                ("gcc", "gcc (Debian 12.2.0-14+deb12u1) 12.2.0"),
                ("nasm", "NASM version 2.16.01"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        )
    }

    fn key_of(recipe: &Recipe) -> CacheKey {
        cache_key(recipe, &sources(), &toolchain(), "host")
    }

    #[test]
    fn key_is_deterministic_hex_sha256() {
        let r = Recipe::new(Platform::Snp, 1);
        let a = key_of(&r);
        assert_eq!(a, key_of(&Recipe::new(Platform::Snp, 1)));
        assert_eq!(a.0.len(), 64);
        assert!(a.0.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn key_changes_with_every_input_that_changes_bytes() {
        let base = Recipe::new(Platform::Snp, 1);
        let k = key_of(&base);

        assert_ne!(k, key_of(&Recipe::new(Platform::Tdx, 1)), "platform");
        assert_ne!(
            k,
            key_of(&Recipe::new(Platform::Snp, 2)),
            "SOURCE_DATE_EPOCH"
        );

        let mut r = base.clone();
        r.build_args.push("-DSECURE_BOOT_ENABLE=TRUE".into());
        assert_ne!(k, key_of(&r), "build arguments");

        let mut r = base.clone();
        r.env.insert("PYTHONHASHSEED".into(), "1".into());
        assert_ne!(k, key_of(&r), "environment");

        let mut r = base.clone();
        r.prepare_script.push_str("true\n");
        assert_ne!(k, key_of(&r), "prepare script");

        let mut s = sources();
        s[0].sha256 = "d".repeat(64);
        assert_ne!(
            k,
            cache_key(&base, &s, &toolchain(), "host"),
            "orig tarball"
        );
        let mut s = sources();
        s[1].sha256 = "d".repeat(64);
        assert_ne!(
            k,
            cache_key(&base, &s, &toolchain(), "host"),
            "debian tarball"
        );

        let mut t = toolchain();
        t.0.insert("gcc".into(), "gcc (Debian 14.2.0-19) 14.2.0".into());
        assert_ne!(k, cache_key(&base, &sources(), &t, "host"), "compiler");

        assert_ne!(
            k,
            cache_key(&base, &sources(), &toolchain(), "chroot"),
            "environment"
        );
    }

    #[test]
    fn key_ignores_what_cannot_change_bytes() {
        let base = Recipe::new(Platform::Tdx, 1);
        let k = key_of(&base);
        // The .dsc is provenance only.
        let mut s = sources();
        s[2].sha256 = "e".repeat(64);
        assert_eq!(k, cache_key(&base, &s, &toolchain(), "host"));
        // Order of the lock's entries.
        let mut s = sources();
        s.reverse();
        assert_eq!(k, cache_key(&base, &s, &toolchain(), "host"));
    }

    #[test]
    fn recipes_build_the_confidential_platforms_in_release() {
        let snp = Recipe::new(Platform::Snp, 7);
        assert!(
            snp.build_args
                .windows(2)
                .any(|w| w == ["-p", "OvmfPkg/AmdSev/AmdSevX64.dsc"])
        );
        assert!(snp.build_args.windows(2).any(|w| w == ["-b", "RELEASE"]));
        assert_eq!(snp.output, "Build/AmdSev/RELEASE_GCC5/FV/OVMF.fd");
        assert_eq!(snp.env["SOURCE_DATE_EPOCH"], "7");
        assert!(
            !snp.build_args.iter().any(|a| a == "-n"),
            "jobs stay out of the key"
        );

        let tdx = Recipe::new(Platform::Tdx, 7);
        assert!(
            tdx.build_args
                .windows(2)
                .any(|w| w == ["-D", "BUILD_SHELL=FALSE"])
        );
        assert_eq!(tdx.output, "Build/IntelTdx/RELEASE_GCC5/FV/OVMF.fd");
    }

    #[test]
    fn platform_names_round_trip() {
        for p in BUILD_ORDER {
            assert_eq!(p.as_str().parse::<Platform>().unwrap(), p);
        }
        assert!("sev".parse::<Platform>().is_err());
    }
}
