//! `chrysalis`: inspect and verify TEE evidence, pin measurements, talk to attested nodes.
//!
//! Exit status: 0 success or accepted, 1 rejected, 2 bad arguments or unreadable input.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chrysalis: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
