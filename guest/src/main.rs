//! `chrysalis-guest`: the attested inference server that runs inside the confidential VM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use chrysalis_guest::config::{Config, GpuAttest, Listen, ProviderKind};
use chrysalis_guest::engine::{Engine, FailedEngine};
use chrysalis_guest::evidence::EvidenceProvider;
use chrysalis_guest::evidence::collateral::HostCollateral;
use chrysalis_guest::evidence::configfs::ConfigfsTsm;
use chrysalis_guest::evidence::sim::{SimEndpoint, SimPlatform, SimQuoteClient};
use chrysalis_guest::server::{self, AppState};
use chrysalis_guest::tls::CertStore;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chrysalis-guest",
    version,
    about = "Attested OpenAI-compatible inference server (runs inside the CVM)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve. In the image the init starts this with the configuration from the verity rootfs.
    #[command(after_help = chrysalis_guest::config::HELP)]
    Serve {
        /// The TOML configuration (see `chrysalis-guest config-help`).
        #[arg(long)]
        config: PathBuf,
        /// Development: override [server].listen ("tcp:ADDR:PORT" or "vsock:PORT").
        #[arg(long)]
        listen: Option<Listen>,
        /// Development: override [evidence] ("configfs-tsm", "sim:vsock", "sim:tcp:ADDR:PORT",
        /// "sim:unix:PATH"; "sim-tdx:…" and "sim-snp:…" also set sim_platform).
        #[arg(long)]
        evidence: Option<String>,
        /// Write the bound address here (temp file + rename) once serving.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Print every configuration key with its default and meaning.
    ConfigHelp,
    /// Parse and check a configuration file, then exit.
    CheckConfig {
        /// The TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::ConfigHelp => {
            print!("{}", chrysalis_guest::config::HELP);
            Ok(())
        }
        Cmd::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Cmd::Serve {
            config,
            listen,
            evidence,
            ready_file,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let mut cfg = Config::load(&config)?;
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            if let Some(e) = evidence {
                apply_evidence_override(&mut cfg, &e)?;
            }
            let served = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(cfg, ready_file));
            if let Err(e) = &served {
                // One line the host agent finds on the console and puts in its /status (e.g. a
                // GPU outside confidential-computing mode: the node does not serve).
                eprintln!("chrysalis-guest: FATAL: {e:#}");
            }
            served
        }
    }
}

fn apply_evidence_override(cfg: &mut Config, arg: &str) -> anyhow::Result<()> {
    if arg == "configfs-tsm" {
        cfg.evidence.provider = ProviderKind::ConfigfsTsm;
    } else if let Some((platform, rest)) = [
        ("sim:", None),
        ("sim-tdx:", Some(SimPlatform::Tdx)),
        ("sim-snp:", Some(SimPlatform::Snp)),
    ]
    .into_iter()
    .find_map(|(prefix, p)| arg.strip_prefix(prefix).map(|rest| (p, rest)))
    {
        cfg.evidence.provider = ProviderKind::Sim;
        if let Some(p) = platform {
            cfg.evidence.sim_platform = p;
        }
        cfg.evidence.sim_endpoint = if rest == "vsock" {
            "vsock:2:4050".to_owned()
        } else {
            rest.to_owned()
        };
    } else {
        bail!(
            "--evidence {arg:?}: expected configfs-tsm, sim:vsock, sim:tcp:ADDR:PORT or sim:unix:PATH \
             (sim-tdx: or sim-snp: in place of sim: to choose the platform)"
        );
    }
    Ok(())
}

fn sim_endpoint(s: &str) -> anyhow::Result<SimEndpoint> {
    if let Some(rest) = s.strip_prefix("vsock:") {
        let (cid, port) = rest
            .split_once(':')
            .context("sim endpoint vsock:CID:PORT")?;
        Ok(SimEndpoint::Vsock(
            cid.parse().context("vsock CID")?,
            port.parse().context("vsock port")?,
        ))
    } else if let Some(a) = s.strip_prefix("tcp:") {
        Ok(SimEndpoint::Tcp(a.to_owned()))
    } else if let Some(p) = s.strip_prefix("unix:") {
        Ok(SimEndpoint::Unix(PathBuf::from(p)))
    } else {
        bail!("evidence.sim_endpoint {s:?}: expected vsock:CID:PORT, tcp:ADDR:PORT or unix:PATH")
    }
}

#[cfg(feature = "engine")]
fn start_engine(cfg: &Config) -> Arc<dyn Engine> {
    use chrysalis_guest::engine::python::PythonEngine;
    match PythonEngine::start(
        &cfg.engine,
        Duration::from_secs(cfg.server.request_timeout_secs.max(600)),
    ) {
        Ok(e) if e.models().contains(&cfg.model.id) => Arc::new(e),
        Ok(e) => {
            let reason = format!(
                "the adapter serves {:?}, not the configured model {:?}",
                e.models(),
                cfg.model.id
            );
            tracing::error!("{reason}");
            Arc::new(FailedEngine { reason })
        }
        Err(e) => {
            tracing::error!(error = %e, "engine failed to start; serving errors until restarted");
            Arc::new(FailedEngine {
                reason: e.to_string(),
            })
        }
    }
}

#[cfg(not(feature = "engine"))]
fn start_engine(_cfg: &Config) -> Arc<dyn Engine> {
    Arc::new(FailedEngine {
        reason: "built without the `engine` feature".into(),
    })
}

/// The control device NVIDIA's driver creates when it has bound a GPU.
const NVIDIA_DEVICE: &str = "/dev/nvidiactl";

/// Devices the tdx_guest and sev_guest drivers create inside a TD / an SNP guest.
const TEE_GUEST_DEVICES: [&str; 2] = ["/dev/tdx_guest", "/dev/sev-guest"];

async fn serve(cfg: Config, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    let kind = match cfg.evidence.provider {
        // The tsm configfs tree exists whenever its module is loaded; the TEE guest devices exist
        // only when the kernel runs inside a TD or an SNP guest.
        ProviderKind::Auto if TEE_GUEST_DEVICES.iter().any(|d| Path::new(d).exists()) => {
            ProviderKind::ConfigfsTsm
        }
        ProviderKind::Auto => {
            tracing::warn!(
                devices = ?TEE_GUEST_DEVICES,
                sim_endpoint = %cfg.evidence.sim_endpoint,
                "no TDX or SEV-SNP guest device: evidence comes from the \
                 host's SIMULATED quote service; only policies that name the simulated root accept it"
            );
            ProviderKind::Sim
        }
        k => k,
    };
    let provider: Arc<dyn EvidenceProvider> = match kind {
        ProviderKind::ConfigfsTsm => {
            let p = ConfigfsTsm::new(&cfg.evidence.configfs_root, &cfg.evidence.configfs_entry);
            Arc::new(if cfg.evidence.collateral_endpoint.is_empty() {
                tracing::warn!(
                    "evidence.collateral_endpoint is empty: TDX quotes are served without \
                     collateral; clients need their own PCCS"
                );
                p
            } else {
                p.with_collateral(Arc::new(HostCollateral::new(
                    sim_endpoint(&cfg.evidence.collateral_endpoint)
                        .context("evidence.collateral_endpoint")?,
                    Duration::from_secs(cfg.evidence.timeout_secs),
                )))
            })
        }
        ProviderKind::Sim => Arc::new(
            SimQuoteClient::new(
                sim_endpoint(&cfg.evidence.sim_endpoint)?,
                Duration::from_secs(cfg.evidence.timeout_secs),
            )
            .with_platform(cfg.evidence.sim_platform),
        ),
        _ => bail!("unsupported evidence provider"),
    };
    let mut certs = CertStore::generate()?;
    let gpu_kind = match cfg.gpu.attest {
        GpuAttest::Auto if Path::new(NVIDIA_DEVICE).exists() => GpuAttest::Nvml,
        GpuAttest::Auto => {
            tracing::warn!(
                device = NVIDIA_DEVICE,
                sim_endpoint = %cfg.evidence.sim_endpoint,
                "no NVIDIA device: GPU evidence comes from the host's SIMULATED GPU; only \
                 policies that name the simulated NVIDIA roots accept it"
            );
            GpuAttest::Sim
        }
        k => k,
    };
    match gpu_kind {
        GpuAttest::None => {}
        #[cfg(feature = "engine")]
        GpuAttest::Nvml => {
            certs = certs.with_gpu(Arc::new(chrysalis_guest::evidence::gpu::NvmlPython::new(
                cfg.engine.python_path.clone(),
            )));
        }
        #[cfg(not(feature = "engine"))]
        GpuAttest::Nvml => bail!("gpu.attest = \"nvml\" needs the `engine` feature (Python)"),
        GpuAttest::Sim => {
            certs = certs.with_gpu(Arc::new(
                SimQuoteClient::new(
                    sim_endpoint(&cfg.evidence.sim_endpoint)?,
                    Duration::from_secs(cfg.evidence.timeout_secs),
                )
                .with_platform(cfg.evidence.sim_platform),
            ));
        }
        _ => bail!("unsupported gpu.attest"),
    }
    let certs = Arc::new(certs);
    let validity = Duration::from_secs(cfg.tls.validity_secs);
    let info = certs
        .renew(provider.as_ref(), SystemTime::now(), validity)
        .await
        .context(if cfg.gpu.attest == GpuAttest::None {
            "first certificate"
        } else {
            "first certificate (with GPU evidence: the node does not serve without it)"
        })?;
    tracing::info!(provider = provider.name(), cert = %info.cert_sha256, spki = %info.spki_sha256, "certificate issued over fresh evidence");
    certs.clone().spawn_renewal(
        provider.clone(),
        validity,
        cfg.tls.renew_fraction,
        Duration::from_secs(cfg.tls.retry_secs),
    );

    let engine_cfg = cfg.clone();
    let engine = tokio::task::spawn_blocking(move || start_engine(&engine_cfg)).await?;
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()));
    let state = AppState::new(
        cfg.server.clone(),
        cfg.model.clone(),
        engine,
        certs,
        provider.name(),
    );

    match &cfg.server.listen {
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding tcp:{addr}"))?;
            let bound = l.local_addr()?;
            tracing::info!(%bound, "serving");
            announce(ready_file.as_deref(), &format!("tcp:{bound}"))?;
            server::serve(state, tls, || server::accept_tcp(&l)).await?;
        }
        Listen::Vsock(port) => {
            let l = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                tokio_vsock::VMADDR_CID_ANY,
                *port,
            ))
            .with_context(|| format!("binding vsock:{port}"))?;
            tracing::info!(port, "serving on vsock");
            announce(ready_file.as_deref(), &format!("vsock:{port}"))?;
            server::serve(state, tls, || async { l.accept().await.map(|(s, _)| s) }).await?;
        }
    }
    Ok(())
}

fn announce(path: Option<&Path>, addr: &str) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
