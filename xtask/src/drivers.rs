//! `cargo xtask demo`, `bench` and `serve-local`: the drivers are binaries of the tests crate
//! (tests/src/bin/), which links the chain harness; xtask runs them with the same arguments.
//!
//! So xtask depends only on image and attestation (ARCHITECTURE), and `./x` compiles less before
//! its first phase; the driver compiles when it is first run.

use std::ffi::OsString;

use anyhow::Context as _;

/// Everything after the subcommand, `--help` included, for the driver to parse.
#[derive(clap::Args)]
pub(crate) struct Forward {
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

/// Replaces xtask with `cargo run -p chrysalis-tests --bin BIN -- ARGS…`, so that the driver is
/// the process a Ctrl-C reaches and its exit status is xtask's. The driver reaches xtask again
/// (image builds, setup) through `CHRYSALIS_XTASK`, and the same cache through `CHRYSALIS_CACHE`.
pub(crate) fn run(bin: &str, forward: Forward) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let exe = std::env::current_exe().context("the path of xtask")?;
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(crate::repo_root())
        .args([
            "run",
            "--quiet",
            "--package",
            "chrysalis-tests",
            "--bin",
            bin,
            "--",
        ])
        .args(&forward.args)
        .env("CHRYSALIS_XTASK", exe)
        .env("CHRYSALIS_CACHE", crate::cache_root());
    // Returns only if the exec failed.
    Err(cmd.exec()).with_context(|| format!("cannot run the {bin} driver through cargo"))
}
