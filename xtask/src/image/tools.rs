//! Host tools the builder needs, installed with apt-get on a fresh Debian machine.
//!
//! Only tools that prepare the build root run on the host; everything that shapes image bytes runs from
//! the locked build root. The host needs:
//!
//! | command          | Debian package | used for                                                  |
//! |------------------|----------------|-----------------------------------------------------------|
//! | `mmdebstrap`     | mmdebstrap     | creating the build root from the locked .debs             |
//! | `apt-ftparchive` | apt-utils      | indexing the local repository of exactly those .debs      |
//! | `bwrap`          | bubblewrap     | running tools in the build root (no network, fixed paths) |
//! | `apt-get`        | apt            | resolving closures (`image lock` only)                     |
//!
//! `diffoscope` is used by `image reproduce` when present; it is not installed (it is large).

use std::process::Command;

use anyhow::{Result, bail};

use super::Ui;

/// (command, package).
const TOOLS: [(&str, &str); 4] = [
    ("mmdebstrap", "mmdebstrap"),
    ("apt-ftparchive", "apt-utils"),
    ("bwrap", "bubblewrap"),
    ("apt-get", "apt"),
];

/// Whether `cmd` is on PATH.
pub(crate) fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Installs missing host tools (as root on Debian), or says exactly what to install.
pub(crate) fn ensure(ui: &Ui) -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = nix::unistd::geteuid().is_root();
    if !is_root || !have("apt-get") {
        bail!(
            "the image builder needs these packages on the build machine: {} (install them, as root: \
             apt-get install --no-install-recommends {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    let step = ui.step(&format!("Installing host tools: {}", missing.join(" ")));
    // A fresh machine may never have fetched its package lists.
    let _ = Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get install {} failed ({status})", missing.join(" "));
    }
    step.done("");
    Ok(())
}
