//! Developer tasks: `cargo xtask <group> <command>`, run from anywhere in the repository.

mod image;
mod model;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "chrysalis developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reproducible guest image: lock inputs, build, rebuild and compare.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Model packs (erofs + dm-verity) for the guest.
    #[command(subcommand)]
    Model(model::ModelCmd),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Image(c) => image::run(c),
        Cmd::Model(c) => model::run(c),
    }
}
