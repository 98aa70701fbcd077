//! Developer tasks: `cargo xtask <command>`, run from the project root.

use clap::{Parser, Subcommand};

mod vm;

#[derive(Parser)]
#[command(about = "chrysalis developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot images under QEMU.
    #[command(subcommand)]
    Vm(VmCommand),
}

#[derive(Subcommand)]
enum VmCommand {
    /// Boot a kernel + initramfs (+ disks) on q35 under TCG, console on stdout.
    Run(vm::RunArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Vm(VmCommand::Run(args)) => vm::run(args),
    }
}
