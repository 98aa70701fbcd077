//! `cargo xtask test`: the whole test suite, as CI runs it, on a fresh Debian machine.
//!
//! Phases: prerequisites ([`crate::setup`]), `cargo fmt --check`, `cargo clippy --workspace
//! --all-targets -- -D warnings`, the cpu image (`cargo xtask image build`, cached), `cargo test --workspace` with the
//! paths setup provides, and the quick benchmark harness. Prints how long each phase took, also when one fails.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::setup::{self, TestEnv, run, step};

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// Do not install prerequisites: use the paths of the env file an earlier `cargo xtask setup`
    /// wrote.
    #[arg(long)]
    no_setup: bool,
}

pub(crate) fn main(args: TestArgs) -> Result<()> {
    let total = Instant::now();
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let result = phases(&args, &mut timings);
    eprintln!("\nphase timings:");
    for (name, d) in &timings {
        eprintln!("  {:>7.1} s  {name}", d.as_secs_f64());
    }
    eprintln!("  {:>7.1} s  total", total.elapsed().as_secs_f64());
    match &result {
        Ok(()) => eprintln!("all phases passed"),
        Err(e) => eprintln!("FAILED: {e:#}"),
    }
    result
}

fn phases(args: &TestArgs, timings: &mut Vec<(String, Duration)>) -> Result<()> {
    let t = Instant::now();
    let env = if args.no_setup {
        TestEnv::load(&setup::cache_dir().join(setup::ENV_FILE))?
    } else {
        let (env, parts) = setup::ensure(false)?;
        timings.extend(parts.into_iter().map(|(n, d)| (format!("  setup: {n}"), d)));
        env
    };
    timings.insert(0, ("setup".into(), t.elapsed()));

    let root = crate::image::repo_root();
    let cargo = |args: &[&str]| {
        let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.current_dir(&root).args(args);
        env.apply(&mut c);
        c
    };
    let xtask = |args: &[&str]| -> Result<Command> {
        let mut c = Command::new(std::env::current_exe().context("the path of xtask")?);
        c.current_dir(&root).args(args);
        env.apply(&mut c);
        Ok(c)
    };
    let mut phase = |name: &str, cmd: &mut Command| -> Result<()> {
        step(name);
        let t = Instant::now();
        let r = run(cmd).with_context(|| format!("phase failed: {name}"));
        timings.push((name.to_owned(), t.elapsed()));
        r
    };
    phase(
        "cargo fmt --check",
        &mut cargo(&["fmt", "--all", "--check"]),
    )?;
    phase(
        "cargo clippy -D warnings",
        &mut cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The boot and end-to-end tests boot the cpu image: build it, or check the cached one.
    let mut c = xtask(&["image", "build", "--flavor", "cpu"])?;
    phase("cargo xtask image build --flavor cpu", &mut c)?;
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    phase(
        "cargo test --workspace",
        &mut cargo(&["test", "--workspace", "--no-fail-fast"]),
    )?;
    // Keeps the benchmark harness from rotting (issue 9).
    let mut c = xtask(&["bench", "--quick"])?;
    phase("cargo xtask bench --quick", &mut c)?;
    Ok(())
}
