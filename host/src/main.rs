//! `chrysalis-host`: the host agent binary (`run`, `run --dry-run`, `check`, `preflight`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrysalis_host::agent::{self, AgentError, AgentOptions};
use chrysalis_host::launch::{self, LaunchError};
use chrysalis_host::{HostConfig, PlatformProfile, preflight};
use clap::{Parser, Subcommand};

/// The chrysalis host agent: launches the confidential VM, relays ciphertext to it, serves its
/// guest→host requests. It never holds a key.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Read /sys, /proc, /dev and /etc below this directory instead of / (tests fake a host with it).
    #[arg(long, global = true, hide = true, default_value = "/")]
    root: PathBuf,
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
    /// Check this host's prerequisites for the configured profile and say how to fix each;
    /// exits non-zero when one fails.
    Preflight {
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
    let root = cli.root;
    match cli.command {
        Cmd::Preflight { config } => {
            let cfg = HostConfig::load(&config)?;
            println!(
                "preflight for {} (platform {})",
                config.display(),
                cfg.vm.platform.as_str()
            );
            let checks = preflight::run(&cfg, &root);
            print!("{}", preflight::report(&checks));
            if preflight::failed(&checks) {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Check { config } => {
            let cfg = HostConfig::load(&config)?;
            let (manifest, plan) = match agent::plan_from_config_in(&cfg, &root) {
                Ok(p) => p,
                Err(e) => {
                    explain_unmeasured_snp_shape(&cfg, &e);
                    return Err(e.into());
                }
            };
            println!(
                "{}: ok (platform {})",
                config.display(),
                cfg.vm.platform.as_str()
            );
            if let Some(m) = manifest {
                agent::verify_image(&cfg, &m)?;
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
                let (_, plan) = agent::plan_from_config_in(&cfg, &root)?;
                let plan =
                    plan.context("vm.launch is false: there is no VM command line to print")?;
                print!("{}", plan.dry_run_text());
                return Ok(());
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let opts = AgentOptions {
                root: (root != Path::new("/")).then_some(root),
                ..AgentOptions::default()
            };
            rt.block_on(async move {
                agent::run(cfg, opts, shutdown_signal()).await?;
                Ok(())
            })
        }
    }
}

/// For an SNP shape the manifest does not list, computes the launch digest it would have from the
/// manifest's verified artifacts and prints it, so the image's owner can publish it.
fn explain_unmeasured_snp_shape(cfg: &HostConfig, e: &AgentError) {
    if cfg.vm.platform != PlatformProfile::Snp
        || !matches!(e, AgentError::Launch(LaunchError::UnmeasuredShape { .. }))
    {
        return;
    }
    let Some(image) = &cfg.image else { return };
    let digest = chrysalis_host::image::load(&image.manifest)
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        .and_then(|m| launch::snp_digest_for_config(cfg, &m));
    match digest {
        Ok(d) => eprintln!(
            "the launch digest of this shape ({} vCPUs, {}, {} MiB) is {d}: add it to the manifest's expected_measurements.snp to serve it",
            cfg.vm.vcpus, cfg.snp.cpu, cfg.vm.memory_mib
        ),
        Err(err) => eprintln!("the launch digest of this shape could not be computed: {err}"),
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
