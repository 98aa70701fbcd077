//! The build root: a trixie system made by mmdebstrap from a local repository holding exactly the locked
//! build-set .debs, cached under `<cache>/buildroot/<key>` where the key digests those packages.
//!
//! Builds mount it read-only (see chrysalis_image::sandbox), so one cached build root serves every build
//! and reproduce run without being changed by them. mmdebstrap runs maintainer scripts here, which is fine:
//! the build root is a tool environment, and the bytes of the image come from its tools, not from it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use chrysalis_image::lock::{DebPackage, DebSet};
use chrysalis_image::sandbox::Sandbox;
use chrysalis_image::{Cache, Lock, Sha256Digest};

use super::Ui;
use super::fetch::{Want, debian_archive, fetch_all};
use super::ui::{log_path, run_capture, run_logged};

/// Mount points that builds bind into the (read-only) build root; created when it is made.
const MOUNT_POINTS: [&str; 9] = [
    "src",
    "build",
    "cargo",
    "opt/rust",
    "inputs",
    "out",
    "stage",
    "wheels",
    "opt/chrysalis",
];

/// Bump when the way the build root is made changes, so cached ones are not reused.
const RECIPE: &str = "chrysalis buildroot v1";

/// A ready build root.
#[derive(Debug, Clone)]
pub(crate) struct BuildRoot {
    /// Its directory.
    pub(crate) dir: PathBuf,
    /// Digest of the packages it was made from (part of every build-input digest).
    pub(crate) key: Sha256Digest,
}

/// The key of the build root for a lock: its recipe and every build-set package.
pub(crate) fn key(lock: &Lock) -> Sha256Digest {
    let mut text = format!("{RECIPE}\n{} {}\n", lock.suite, lock.arch);
    for d in lock.debs_in(DebSet::Build) {
        text.push_str(&format!(
            "{} {} {} {}\n",
            d.name, d.version, d.arch, d.sha256
        ));
    }
    Sha256Digest::of_bytes(text.as_bytes())
}

/// Fetches every package of `set` into the cache.
pub(crate) fn fetch_debs(
    ui: &Ui,
    cache: &Cache,
    lock: &Lock,
    set: DebSet,
) -> Result<Vec<(DebPackage, PathBuf)>> {
    let archive = debian_archive(&lock.suite)?;
    let debs: Vec<DebPackage> = lock.debs_in(set).cloned().collect();
    let wants: Vec<Want> = debs.iter().map(|d| Want::deb(&archive, d)).collect();
    let paths = fetch_all(ui, cache, &wants)?;
    Ok(debs.into_iter().zip(paths).collect())
}

impl BuildRoot {
    /// The cached build root for `lock`, made now if needed.
    pub(crate) fn ensure(ui: &Ui, cache: &Cache, lock: &Lock) -> Result<Self> {
        let key = key(lock);
        let dir = cache.dir("buildroot")?.join(key.to_string());
        if dir.join(".chrysalis-complete").exists() {
            return Ok(Self { dir, key });
        }
        let debs = fetch_debs(ui, cache, lock, DebSet::Build)?;
        let step = ui.step(&format!(
            "Creating the build root ({} packages, mmdebstrap)",
            debs.len()
        ));
        let tmp = cache.temp_dir()?;
        let repo = tmp.path().join("repo");
        let pool = repo.join("pool");
        let index = repo.join(format!("dists/{}/main/binary-{}", lock.suite, lock.arch));
        fs::create_dir_all(&pool)?;
        fs::create_dir_all(&index)?;
        for (d, _) in &debs {
            let file = d
                .path
                .rsplit('/')
                .next()
                .context("deb path has a file name")?;
            cache.link_to(file, &d.sha256, &pool.join(file))?;
        }
        let log = log_path(tmp.path(), "buildroot");
        let mut c = Command::new("apt-ftparchive");
        c.current_dir(&repo).args(["packages", "pool"]);
        let packages = run_capture(c, &log, "apt-ftparchive packages")?;
        fs::write(index.join("Packages"), packages)?;
        let mut c = Command::new("apt-ftparchive");
        c.current_dir(&repo).args([
            "-o".to_owned(),
            format!("APT::FTPArchive::Release::Suite={}", lock.suite),
            "-o".to_owned(),
            format!("APT::FTPArchive::Release::Codename={}", lock.suite),
            "-o".to_owned(),
            "APT::FTPArchive::Release::Components=main".to_owned(),
            "-o".to_owned(),
            format!("APT::FTPArchive::Release::Architectures={}", lock.arch),
            "release".to_owned(),
            format!("dists/{}", lock.suite),
        ]);
        let release = run_capture(c, &log, "apt-ftparchive release")?;
        fs::write(repo.join(format!("dists/{}/Release", lock.suite)), release)?;

        let target = tmp.path().join("root");
        let names: Vec<&str> = debs.iter().map(|(d, _)| d.name.as_str()).collect();
        let mkdirs: String = MOUNT_POINTS
            .iter()
            .map(|m| format!(" \"$1/{m}\""))
            .collect();
        let mut c = Command::new("mmdebstrap");
        c.env_remove("APT_CONFIG")
            .env("SOURCE_DATE_EPOCH", "0")
            .arg("--mode=root")
            .arg("--variant=essential")
            .arg("--dpkgopt=force-unsafe-io")
            .arg(format!("--architectures={}", lock.arch))
            .arg(format!("--include={}", names.join(",")))
            .arg(format!(
                "--customize-hook=mkdir -p{mkdirs} && touch \"$1/etc/resolv.conf\""
            ))
            .arg("--format=directory")
            .arg(&lock.suite)
            .arg(&target)
            .arg(format!(
                "deb [trusted=yes] copy://{} {} main",
                repo.display(),
                lock.suite
            ));
        run_logged(c, &log, "mmdebstrap")?;

        // Installed versions must be the locked ones: a resolver surprise would otherwise go unnoticed.
        let status = fs::read_to_string(target.join("var/lib/dpkg/status"))?;
        let installed: BTreeMap<String, String> = chrysalis_image::apt::parse_deb822(&status)
            .into_iter()
            .filter_map(|p| Some((p.get("Package")?.clone(), p.get("Version")?.clone())))
            .collect();
        for (d, _) in &debs {
            match installed.get(&d.name) {
                Some(v) if *v == d.version => {}
                other => bail!(
                    "build root: {} should be {} but is {:?}",
                    d.name,
                    d.version,
                    other
                ),
            }
        }
        if installed.len() != debs.len() {
            let extra: Vec<_> = installed
                .keys()
                .filter(|n| !names.contains(&n.as_str()))
                .collect();
            bail!("build root has packages that are not in the lock: {extra:?}");
        }
        fs::write(target.join(".chrysalis-complete"), format!("{key}\n"))?;
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::rename(&target, &dir)?;
        step.done(format!("{}", dir.display()));
        Ok(Self { dir, key })
    }

    /// A sandbox over this build root.
    pub(crate) fn sandbox(&self, epoch: u64) -> Sandbox {
        Sandbox::new(&self.dir).env("SOURCE_DATE_EPOCH", epoch.to_string())
    }

    /// Versions of the tools that shape image bytes, as they report them. cmake is only in the
    /// build roots of flavors with source-built wheels (cpu); where the flavor does not install it,
    /// it is not listed.
    pub(crate) fn tool_versions(&self, log_dir: &Path) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let log = log_path(log_dir, "versions");
        for (name, argv) in [
            ("gcc", vec!["gcc", "--version"]),
            ("cmake", vec!["cmake", "--version"]),
            ("python", vec!["python3", "--version"]),
            ("mkfs.erofs", vec!["mkfs.erofs", "-V"]),
            ("veritysetup", vec!["veritysetup", "--version"]),
        ] {
            if name == "cmake" && !self.dir.join("usr/bin/cmake").exists() {
                continue;
            }
            let first = run_capture(self.sandbox(0).command(&argv), &log, name)?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            out.insert(name.to_owned(), first);
        }
        Ok(out)
    }
}
