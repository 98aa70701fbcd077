//! Host prerequisites for building and testing on a fresh Debian machine: apt suites and
//! packages, the musl target, vhost-device-vsock, and the Python test environment.
//!
//! Every step checks first and only acts when something is missing, so a second run costs
//! seconds. Downloads and builds are cached under [`cache_dir`], keyed by content hashes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// Where downloads and built tools are cached: `$CHRYSALIS_CACHE`, else `~/.cache/chrysalis`
/// (outside the checkout, so fresh clones share it).
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CHRYSALIS_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/chrysalis")
}

/// The repository root (xtask runs from anywhere inside it).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repo root").to_path_buf()
}

pub(crate) fn step(msg: &str) {
    eprintln!("==> {msg}");
}

/// Runs a command, failing with its name and status.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Debian packages the build and the tests need, with the suite to take each from.
const APT_PACKAGES: &[(&str, Option<&str>)] = &[
    ("qemu-system-x86", Some("bookworm-backports")),
    ("qemu-utils", Some("bookworm-backports")),
    ("erofs-utils", None),
    ("cryptsetup-bin", None),
    ("musl-tools", None),
    ("socat", None),
    ("dpkg-dev", None),
    ("python3-venv", None),
    ("python3-dev", None),
    ("build-essential", None),
    ("cmake", None),
    ("mmdebstrap", None),
    ("xz-utils", None),
    ("zstd", None),
];

/// The apt sources entry for the suites the project needs beside the machine's own, built from
/// the archive URI the machine is already configured with (no mirror is named in the repo).
const EXTRA_SOURCES: &str = "/etc/apt/sources.list.d/chrysalis-extra.sources";
const TRIXIE_PIN: &str = "/etc/apt/preferences.d/chrysalis-trixie";

fn ensure_apt_sources() -> anyhow::Result<()> {
    let uri = chrysalis_image::apt::archive_root_for_suite("bookworm")
        .context("cannot find the machine's Debian archive in /etc/apt")?;
    let want = format!(
        "# Written by `cargo xtask setup`: suites chrysalis needs, from this machine's archive.\n\
         Types: deb deb-src\nURIs: {uri}\nSuites: bookworm-backports trixie\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    );
    let pin = "Package: *\nPin: release n=trixie\nPin-Priority: 100\n";
    for (path, text) in [(EXTRA_SOURCES, want.as_str()), (TRIXIE_PIN, pin)] {
        if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
            std::fs::write(path, text).with_context(|| format!("cannot write {path} (run as root)"))?;
        }
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Adds the apt suites and installs missing packages.
pub(crate) fn apt() -> anyhow::Result<()> {
    ensure_apt_sources()?;
    let missing: Vec<_> = APT_PACKAGES.iter().filter(|(p, _)| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(" ")
    ));
    // New suites need their lists and old lists may be stale: one update is cheap.
    run(Command::new("apt-get").args(["update", "-q"]))?;
    for suite in [Some("bookworm-backports"), None] {
        let pkgs: Vec<&str> = missing.iter().filter(|(_, s)| *s == suite).map(|(p, _)| *p).collect();
        if pkgs.is_empty() {
            continue;
        }
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-q", "--no-install-recommends"]);
        if let Some(s) = suite {
            cmd.args(["-t", s]);
        }
        run(cmd.args(&pkgs))?;
    }
    Ok(())
}

/// The musl target for the static guest init.
pub(crate) fn rust_targets() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == "x86_64-unknown-linux-musl") {
        step("adding the Rust target x86_64-unknown-linux-musl");
        run(Command::new("rustup").args(["target", "add", "x86_64-unknown-linux-musl"]))?;
    }
    Ok(())
}

/// The vhost-user vsock daemon that gives a TCG guest a vsock device.
pub(crate) const VHOST_DEVICE_VSOCK_VERSION: &str = "0.3.0";

/// Installs vhost-device-vsock into the cache (once per version) and returns its bin dir.
pub(crate) fn vhost_device_vsock() -> anyhow::Result<PathBuf> {
    let root = cache_dir().join(format!("tools/vhost-device-vsock-{VHOST_DEVICE_VSOCK_VERSION}"));
    let bin = root.join("bin");
    if !bin.join("vhost-device-vsock").exists() {
        step(&format!("building vhost-device-vsock {VHOST_DEVICE_VSOCK_VERSION} (cached afterwards)"));
        run(Command::new("cargo").args([
            "install",
            "--locked",
            "--version",
            VHOST_DEVICE_VSOCK_VERSION,
            "--root",
            root.to_str().context("cache path is not UTF-8")?,
            "vhost-device-vsock",
        ]))?;
    }
    Ok(bin)
}

/// The pinned llama-cpp-python source release and how it is built for the host tests.
const LLAMA_CPP_PYTHON: &str = "llama-cpp-python==0.3.36";
const LLAMA_CMAKE_ARGS: &str = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON";

/// The Python test environment (Debian's python3 + pinned wheels), cached by the hash of the
/// requirements and the interpreter. Returns the venv directory.
pub(crate) fn python_venv() -> anyhow::Result<PathBuf> {
    let req = repo_root().join("guest/python/requirements-test.txt");
    let req_text = std::fs::read(&req).with_context(|| format!("cannot read {}", req.display()))?;
    let py = output(Command::new("/usr/bin/python3").args(["-c", "import sys; print(sys.version)"]))?;
    let mut h = Sha256::new();
    h.update(&req_text);
    h.update(py.as_bytes());
    h.update(LLAMA_CPP_PYTHON.as_bytes());
    h.update(LLAMA_CMAKE_ARGS.as_bytes());
    let key = hex::encode(&h.finalize()[..8]);
    let venv = cache_dir().join(format!("venv/{key}"));
    if venv.join(".complete").exists() {
        return Ok(venv);
    }
    let wheels = cache_dir().join(format!("wheels/{key}"));
    std::fs::create_dir_all(&wheels)?;
    // A venv records its own path, so it is built where it stays; the marker file written last
    // says it is complete, and an incomplete one is rebuilt from scratch.
    let _ = std::fs::remove_dir_all(&venv);
    step("creating the Python test environment (llama-cpp-python compiles for several minutes, once)");
    run(Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv))?;
    let python = venv.join("bin/python");
    let built = std::fs::read_dir(&wheels)?
        .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("llama_cpp_python")));
    if !built {
        run(Command::new(&python)
            .env("CMAKE_ARGS", LLAMA_CMAKE_ARGS)
            .args(["-m", "pip", "wheel", "--no-deps", "--no-binary", "llama-cpp-python", "-w"])
            .arg(&wheels)
            .arg(LLAMA_CPP_PYTHON))?;
    }
    run(Command::new(&python).args(["-m", "pip", "install", "-q", "--require-hashes", "-r"]).arg(&req))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--no-deps", "--no-index", "--find-links"])
        .arg(&wheels)
        .arg("llama-cpp-python"))?;
    std::fs::write(venv.join(".complete"), b"")?;
    Ok(venv)
}
