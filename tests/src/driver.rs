//! What the developer drivers (`cargo xtask demo`, `bench`, `serve-local`: src/bin/) share: the
//! repository and cache roots, running xtask, the setup environment, and a clean cargo environment.
//!
//! xtask runs each driver as `cargo run -p chrysalis-tests --bin …` with the same arguments, so
//! xtask itself depends only on image and attestation and `./x` compiles less before its first
//! phase. xtask passes its own path (`CHRYSALIS_XTASK`) and cache (`CHRYSALIS_CACHE`); run
//! directly, a driver falls back to `cargo xtask` and `~/.cache/chrysalis`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::chain::is_cargo_package_var;

/// The variable through which xtask names its own executable to the drivers.
pub const XTASK_VAR: &str = "CHRYSALIS_XTASK";

/// The repository root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The download and build cache: `$CHRYSALIS_CACHE`, else `~/.cache/chrysalis` (as xtask's).
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("CHRYSALIS_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from("/root"), PathBuf::from)
        .join(".cache/chrysalis")
}

/// A command that runs `cargo xtask ARGS…`: the xtask that started this driver, else cargo.
pub fn xtask(args: &[&str]) -> Command {
    let mut c = match std::env::var_os(XTASK_VAR).filter(|p| !p.is_empty()) {
        Some(exe) => Command::new(exe),
        None => {
            let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            c.arg("xtask");
            c
        }
    };
    c.current_dir(repo_root()).args(args);
    c
}

/// Installs what is missing (`cargo xtask setup`, without its summary) and returns the variables
/// it records for the tests (the env file in the cache).
pub fn setup_env() -> anyhow::Result<BTreeMap<String, String>> {
    let status = xtask(&["setup", "--env-only"])
        .status()
        .context("cannot run cargo xtask setup")?;
    if !status.success() {
        bail!("cargo xtask setup failed ({status})");
    }
    let path = cache_root().join("env");
    let text = std::fs::read_to_string(&path)
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
    Ok(vars)
}

/// `cargo run` hands a driver the variables it sets for a package (`CARGO_MANIFEST_DIR`, …); every
/// cargo the driver starts would inherit them and rebuild ring and all that links it
/// ([`is_cargo_package_var`]). The driver replaces itself once with the same arguments and those
/// variables removed, before it starts anything. Returns only when nothing was set.
pub fn without_cargo_package_vars() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let set: Vec<_> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| is_cargo_package_var(&k.to_string_lossy()))
        .collect();
    if set.is_empty() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("find the driver's executable")?;
    let mut cmd = Command::new(&exe);
    cmd.args(std::env::args_os().skip(1));
    for k in set {
        cmd.env_remove(k);
    }
    // Returns only if the exec failed.
    Err(cmd.exec()).with_context(|| format!("re-execute {}", exe.display()))
}

/// Ctrl-C (SIGINT) and SIGTERM stop every child the chain started ([`crate::chain::interrupt`]);
/// the driver's steps then unwind. The children run in their own process groups, so a terminal's
/// Ctrl-C reaches only the driver. `what` names what is stopped, for the message.
pub fn install_interrupt_handler(what: &'static str) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered here, before any child starts; awaited on a thread of their own.
    let (mut int, mut term) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        });
        eprintln!("\n^C received: stopping {what} ...");
        crate::chain::interrupt();
    });
    Ok(())
}

/// The image's manifest: `image`'s, else out/cpu's, built first with `cargo xtask image build
/// --flavor cpu` (every cached step is reused, and an image left in out/ from older sources would
/// otherwise be served as if it were this checkout's).
pub fn image_manifest(image: Option<&Path>, root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = image {
        let m = dir.join("manifest.json");
        if !m.is_file() {
            bail!("{} has no manifest.json", dir.display());
        }
        return Ok(m);
    }
    println!(
        "    running `cargo xtask image build --flavor cpu` (long on the first run; cached afterwards)"
    );
    let status = xtask(&["image", "build", "--flavor", "cpu"])
        .status()
        .context("cannot run xtask image build")?;
    crate::chain::check_interrupted()?;
    if !status.success() {
        bail!("cargo xtask image build --flavor cpu failed ({status})");
    }
    let m = root.join("out/cpu/manifest.json");
    if !m.is_file() {
        bail!("the image build wrote no {}", m.display());
    }
    Ok(m)
}
