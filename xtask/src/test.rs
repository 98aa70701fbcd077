//! `cargo xtask test`: the whole test suite, as CI runs it, on a fresh Debian machine.
//!
//! Installs what is missing (see [`crate::setup`]), then runs: `cargo fmt --check`,
//! `cargo clippy -D warnings`, every crate's tests (the QEMU end-to-end suite included), the
//! reproducible-image check and the quick benchmark harness. Prints how long each step took.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use crate::setup::{self, run, step};

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// Skip installing prerequisites (they must already be there).
    #[arg(long)]
    no_setup: bool,
}

pub(crate) fn test(args: TestArgs) -> anyhow::Result<()> {
    let root = setup::repo_root();
    let mut timings = Vec::new();
    let mut timed = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
        step(name);
        let t = Instant::now();
        let r = f().with_context(|| format!("step failed: {name}"));
        timings.push((name.to_owned(), t.elapsed()));
        r
    };
    let mut path = std::env::var("PATH").unwrap_or_default();
    let mut venv = None;
    if !args.no_setup {
        timed("prerequisites: apt suites and packages", &mut || setup::apt())?;
        timed("prerequisites: Rust targets", &mut || setup::rust_targets())?;
        timed("prerequisites: vhost-device-vsock", &mut || {
            let bin = setup::vhost_device_vsock()?;
            path = format!("{}:{path}", bin.display());
            Ok(())
        })?;
        timed("prerequisites: Python test environment", &mut || {
            venv = Some(setup::python_venv()?);
            Ok(())
        })?;
    }
    let cargo = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.current_dir(&root).args(args).env("PATH", &path);
        if let Some(v) = &venv {
            c.env("CHRYSALIS_VENV", v);
        }
        c
    };
    timed("cargo fmt --check", &mut || run(&mut cargo(&["fmt", "--all", "--check"])))?;
    timed("cargo clippy -D warnings", &mut || {
        run(&mut cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
    })?;
    timed("cargo test (unit, integration, end-to-end)", &mut || run(&mut cargo(&["test", "--workspace"])))?;
    eprintln!("\nstep timings:");
    for (name, d) in &timings {
        eprintln!("  {:>7.1} s  {name}", d.as_secs_f64());
    }
    Ok(())
}
