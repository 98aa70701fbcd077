//! `chrysalis-host`: the host agent binary (`run`, `run --dry-run`, `check`).

use std::path::PathBuf;

use anyhow::Context as _;
use chrysalis_host::HostConfig;
use chrysalis_host::agent::{self, AgentOptions};
use clap::{Parser, Subcommand};

/// The chrysalis host agent: launches the confidential VM, relays ciphertext to it, serves its
/// guest→host requests. It never holds a key.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the agent until SIGTERM or SIGINT.
    Run {
        /// The agent's configuration (see host.example.toml).
        #[arg(long, short, default_value = "/etc/chrysalis/host.toml")]
        config: PathBuf,
        /// Print the exact vhost-device-vsock and QEMU command lines and exit.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate a configuration and its image manifest, then exit.
    Check {
        /// The agent's configuration.
        #[arg(long, short, default_value = "/etc/chrysalis/host.toml")]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Cmd::Check { config } => {
            let cfg = HostConfig::load(&config)?;
            let (manifest, plan) = agent::plan_from_config(&cfg)?;
            println!(
                "{}: ok (platform {})",
                config.display(),
                cfg.vm.platform.as_str()
            );
            if let Some(m) = manifest {
                m.verify_artifacts()?;
                println!(
                    "manifest {} sha256 {}: every artifact matches",
                    m.path.display(),
                    m.digest
                );
                if cfg.sim_quote_enabled()
                    && cfg.vm.platform == chrysalis_host::config::PlatformProfile::SimSnp
                {
                    // What the sim-snp service will sign, for a client policy.
                    let s = agent::sim_snp_signer(&cfg, &m)?;
                    println!(
                        "sim_snp {}",
                        serde_json::to_string(s.status()).context("encoding sim measurements")?
                    );
                } else if cfg.sim_quote_enabled() {
                    // What the sim quote service will quote, for a client policy (as /status shows it).
                    let s = agent::sim_signer(&cfg, &m, std::time::SystemTime::now)?;
                    println!(
                        "sim_quote {}",
                        serde_json::to_string(s.status()).context("encoding sim measurements")?
                    );
                }
            }
            if plan.is_none() {
                println!("vm.launch = false: the agent will not launch a VM");
            }
            Ok(())
        }
        Cmd::Run { config, dry_run } => {
            let cfg = HostConfig::load(&config)?;
            if dry_run {
                let (_, plan) = agent::plan_from_config(&cfg)?;
                let plan =
                    plan.context("vm.launch is false: there is no VM command line to print")?;
                print!("{}", plan.dry_run_text());
                return Ok(());
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                agent::run(cfg, AgentOptions::default(), shutdown_signal()).await?;
                Ok(())
            })
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
