//! The agent: wires config, transport, relay, guest services, admin endpoint and supervisor together
//! and runs them until shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrysalis_attestation::manifest::VmShape;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{self, AdminState, ImageInfo};
use crate::collateral::{CollateralCache, CollateralError, PccsClient, refresh_loop};
use crate::config::{HostConfig, PlatformProfile, TransportKind};
use crate::image::{self, ImageError};
use crate::launch::{self, LaunchError, LaunchPlan};
use crate::metrics::Metrics;
use crate::relay::{Observer, Relay};
use crate::services::{self, Admission, LaunchedGuest, QuoteSigner, Service, ServiceLimits};
use crate::sim::{SimSignerError, SimSnpSigner, SimTdxSigner};
use crate::supervisor::{Supervisor, VmStatus};
use crate::transport::{
    HybridVsockTransport, TcpTransport, Transport, TransportError, VsockTransport,
};
use chrysalis_attestation::manifest::ImageDir;

/// Errors that stop the agent from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The image manifest could not be read, or an artifact differs from it.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The VM's command lines could not be built.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A program the profile needs is not installed.
    #[error("{key}: {program} not found (not an executable path, nor in PATH)")]
    MissingProgram {
        /// The config key naming it.
        key: &'static str,
        /// The program.
        program: PathBuf,
    },
    /// A listening socket could not be bound.
    #[error("{key}: binding {addr}")]
    Bind {
        /// The config key.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A guest service port could not be bound.
    #[error("binding a guest service port")]
    Transport(#[from] TransportError),
    /// Collateral could not be loaded or the PCCS client set up.
    #[error(transparent)]
    Collateral(#[from] CollateralError),
    /// The sim quote service is enabled but nothing can sign quotes (no image to measure and no
    /// signer passed in).
    #[error(
        "services.sim_quote: enabled, but there is no image manifest to measure ([image] manifest) and no signer was passed to the agent"
    )]
    NoQuoteSigner,
    /// The sim quote signer could not be built from the image.
    #[error(transparent)]
    SimSigner(#[from] SimSignerError),
    /// The state directory or a file in it could not be written.
    #[error("writing {path}")]
    State {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// What the embedding binary or test provides beyond host.toml.
#[derive(Default)]
pub struct AgentOptions {
    /// Signs sim quotes instead of the [`SimTdxSigner`] the agent builds from the image (tests).
    pub quote_signer: Option<Arc<dyn QuoteSigner>>,
    /// The clock for simulated collateral (default `SystemTime::now`).
    pub clock: Option<fn() -> SystemTime>,
    /// Sees every byte the relay forwards (tests only; forces the user-space copy path).
    pub relay_observer: Option<Arc<dyn Observer>>,
    /// Counters to use (a test may keep a handle); fresh ones when absent.
    pub metrics: Option<Arc<Metrics>>,
    /// Where sysfs is read from (GPU BARs), `/` when absent; tests pass a faked tree.
    pub root: Option<PathBuf>,
}

impl std::fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOptions")
            .field("quote_signer", &self.quote_signer.is_some())
            .field("relay_observer", &self.relay_observer.is_some())
            .finish()
    }
}

/// The transport host.toml asks for.
pub fn build_transport(cfg: &HostConfig) -> Arc<dyn Transport> {
    match cfg.transport_kind() {
        TransportKind::Vsock => Arc::new(VsockTransport::new(cfg.vm.guest_cid)),
        TransportKind::Hybrid => Arc::new(HybridVsockTransport::new(cfg.uds_path())),
        TransportKind::Tcp => Arc::new(TcpTransport::new(
            cfg.transport
                .tcp_host
                .expect("validated: tcp_host is set for the tcp transport"),
            cfg.transport.tcp_port_offset,
        )),
    }
}

/// Reads the manifest and builds the launch plan, as `run`, `check` and `--dry-run` do. Does not
/// read the artifacts: `run` and `check` call [`image::verify_artifacts`] next, `--dry-run`
/// only prints.
pub fn plan_from_config(
    cfg: &HostConfig,
) -> Result<(Option<ImageDir>, Option<LaunchPlan>), AgentError> {
    plan_from_config_in(cfg, Path::new("/"))
}

/// [`plan_from_config`], reading sysfs under `root`.
pub fn plan_from_config_in(
    cfg: &HostConfig,
    root: &Path,
) -> Result<(Option<ImageDir>, Option<LaunchPlan>), AgentError> {
    let manifest = match &cfg.image {
        Some(image) => Some(image::load(&image.manifest)?),
        None => None,
    };
    let plan = match (&manifest, cfg.vm.launch) {
        (Some(m), true) => Some(launch::plan_in(cfg, m, launch::kvm_usable, root)?),
        _ => None,
    };
    Ok((manifest, plan))
}

/// Re-hashes every file the VM boots: the manifest's artifacts and firmware and, on tdx and snp,
/// host.toml's `[qemu] firmware` when it names a copy of the manifest's firmware. `check`, `run` and
/// every restart call it.
pub fn verify_image(cfg: &HostConfig, image: &ImageDir) -> Result<(), ImageError> {
    image::verify_artifacts(image)?;
    let role = match cfg.vm.platform {
        crate::PlatformProfile::Tdx => crate::image::FIRMWARE_TDX,
        crate::PlatformProfile::Snp => crate::image::FIRMWARE_SNP,
        // sim boots no measured firmware: its quotes are computed from the manifest's TDVF.
        crate::PlatformProfile::Sim | crate::PlatformProfile::SimSnp => return Ok(()),
    };
    match &cfg.qemu.firmware {
        Some(fw) => image::verify_firmware_copy(image, role, fw),
        None => Ok(()),
    }
}

/// The sim quote signer `run` builds for `cfg` and `image`: the PKI of
/// `services.sim_quote.seed_hex` (default `sim::DEFAULT_SEED`) and the TDX measurements of the
/// image's artifacts for the VM shape of `[vm]`. Reads and hashes the kernel, initramfs and firmware.
pub fn sim_signer(
    cfg: &HostConfig,
    image: &ImageDir,
    clock: fn() -> SystemTime,
) -> Result<SimTdxSigner, SimSignerError> {
    let sq = &cfg.services.sim_quote;
    let seed = SimTdxSigner::seed_bytes(sq.seed_hex.as_deref())?;
    let shape = VmShape {
        vcpus: cfg.vm.vcpus,
        memory_mib: cfg.vm.memory_mib,
    };
    SimTdxSigner::new(
        image,
        &shape,
        &seed,
        sq.tdx_firmware.as_deref(),
        Duration::from_secs(sq.collateral_validity_secs),
        clock,
    )
}

/// The sim-snp report signer `run` builds for `cfg` and `image`: the simulated AMD PKI of
/// `services.sim_quote.seed_hex` (default `sim::DEFAULT_SEED`) and the launch digest of the
/// image's artifacts for `[vm]`'s vCPUs and `services.sim_quote.snp_vcpu_type`.
pub fn sim_snp_signer(cfg: &HostConfig, image: &ImageDir) -> Result<SimSnpSigner, SimSignerError> {
    let sq = &cfg.services.sim_quote;
    let seed = SimTdxSigner::seed_bytes(sq.seed_hex.as_deref())?;
    let shape = VmShape {
        vcpus: cfg.vm.vcpus,
        memory_mib: cfg.vm.memory_mib,
    };
    SimSnpSigner::new(
        image,
        &shape,
        &sq.snp_vcpu_type,
        &seed,
        sq.snp_firmware.as_deref(),
    )
}

/// Writes `contents` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, contents: &str) -> Result<(), AgentError> {
    let err = |source| AgentError::State {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A future that completes once `rx` sees `true`.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Reissues the simulated collateral at half its validity, so the guest never holds expired
/// collateral.
async fn sim_collateral_loop(
    signer: Arc<SimTdxSigner>,
    cache: Arc<CollateralCache>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let period = signer.collateral_validity() / 2;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(period) => {}
        }
        match signer.collateral() {
            Ok(c) => cache.set(c),
            Err(e) => tracing::error!(error = %e, "reissuing simulated collateral"),
        }
    }
}

/// Runs the agent until `shutdown` completes, then stops the VM and every listener.
///
/// It writes the bound public relay and admin addresses to `<state_dir>/relay.addr` and
/// `<state_dir>/admin.addr` (useful when host.toml asks for port 0).
pub async fn run(
    cfg: HostConfig,
    opts: AgentOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let started = Instant::now();
    let metrics = opts.metrics.clone().unwrap_or_default();
    let state_dir = cfg.vm.state_dir.clone();
    std::fs::create_dir_all(&state_dir).map_err(|source| AgentError::State {
        path: state_dir.clone(),
        source,
    })?;

    let root = opts.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let (manifest, plan) = plan_from_config_in(&cfg, &root)?;
    if let Some(m) = &manifest {
        // Every artifact, before anything starts: a stale or half-copied image is an error that
        // names the file and both digests, not a guest that clients reject.
        let (m, cfg2) = (m.clone(), cfg.clone());
        tokio::task::spawn_blocking(move || verify_image(&cfg2, &m))
            .await
            .expect("artifact check does not panic")?;
    }
    if let Some(plan) = &plan {
        if launch::find_program(&plan.qemu.program).is_none() {
            return Err(AgentError::MissingProgram {
                key: "qemu.binary",
                program: plan.qemu.program.clone(),
            });
        }
        if launch::min_qemu(cfg.vm.platform).is_some() {
            // The machine type must exist and mean what it meant when RTMR0 was captured.
            let v = launch::check_qemu_version(cfg.vm.platform, &plan.qemu.program)?;
            tracing::info!(qemu = %v, machine = launch::machine_type(cfg.vm.platform), "QEMU version");
        }
        if let Some(v) = &plan.vhost_vsock
            && launch::find_program(&v.program).is_none()
        {
            return Err(AgentError::MissingProgram {
                key: "sim.vhost_device_vsock",
                program: v.program.clone(),
            });
        }
    }
    let transport = build_transport(&cfg);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    // Guest→host services first: the guest may ask for a quote as soon as it boots.
    // The VM the sim quote service answers; the supervisor keeps its multiplexer's pid current.
    let launched = LaunchedGuest::new(cfg.vm.guest_cid);
    let clock = opts.clock.unwrap_or(SystemTime::now);
    let mut quoter: Option<Arc<SimTdxSigner>> = None;
    let mut snp_quoter: Option<Arc<SimSnpSigner>> = None;
    if cfg.sim_quote_enabled() && cfg.vm.platform == PlatformProfile::SimSnp {
        let image = manifest.clone().ok_or(AgentError::NoQuoteSigner)?;
        let cfg2 = cfg.clone();
        let s = tokio::task::spawn_blocking(move || sim_snp_signer(&cfg2, &image))
            .await
            .expect("measuring does not panic")?;
        let st = s.status();
        tracing::info!(
            measurement = %st.measurement, vcpu_type = %st.vcpu_type, sim_ark_sha256 = %st.sim_ark_sha256,
            "sim-snp service: launch digest of the launched artifacts"
        );
        let s = Arc::new(s);
        snp_quoter = Some(s.clone());
        let listener = transport.listen(cfg.services.sim_quote.port).await?;
        tasks.spawn(services::serve_only(
            listener,
            Service::SimSnp(s),
            Admission::LaunchedGuest(launched.clone()),
            ServiceLimits::default(),
            metrics.clone(),
            stopped(stop_rx.clone()),
        ));
    } else if cfg.sim_quote_enabled() {
        let signer: Arc<dyn QuoteSigner> = match (&opts.quote_signer, &manifest) {
            (Some(s), _) => s.clone(),
            (None, Some(image)) => {
                let (cfg2, image) = (cfg.clone(), image.clone());
                let s = tokio::task::spawn_blocking(move || sim_signer(&cfg2, &image, clock))
                    .await
                    .expect("measuring does not panic")?;
                let st = s.status();
                let r = &st.registers;
                tracing::info!(
                    mr_td = %r.mr_td, rtmr0 = %r.rtmr[0], rtmr1 = %r.rtmr[1], rtmr2 = %r.rtmr[2],
                    sim_root_sha256 = %st.sim_root_sha256, "sim quote service: measurements of the launched artifacts"
                );
                let s = Arc::new(s);
                quoter = Some(s.clone());
                s
            }
            (None, None) => return Err(AgentError::NoQuoteSigner),
        };
        let listener = transport.listen(cfg.services.sim_quote.port).await?;
        tasks.spawn(services::serve_only(
            listener,
            Service::SimQuote(signer),
            Admission::LaunchedGuest(launched.clone()),
            ServiceLimits::default(),
            metrics.clone(),
            stopped(stop_rx.clone()),
        ));
    }
    let col = &cfg.services.collateral;
    if col.enabled {
        let cache = Arc::new(match &col.file {
            Some(file) => CollateralCache::from_file(file)?,
            None => CollateralCache::new(),
        });
        if col.file.is_none() && col.pccs_url.is_none() {
            // Validated: only the sim profile gets here; it serves its own PKI's collateral.
            let s = quoter.clone().ok_or(AgentError::NoQuoteSigner)?;
            cache.set(s.collateral().map_err(SimSignerError::from)?);
            tasks.spawn(sim_collateral_loop(
                s,
                cache.clone(),
                stopped(stop_rx.clone()),
            ));
        }
        if let Some(url) = &col.pccs_url {
            let fmspc = col
                .fmspc
                .as_deref()
                .expect("validated: fmspc is set with pccs_url");
            let client = PccsClient::new(url, fmspc, col.pck_ca, col.pccs_ca_file.as_deref())?;
            tasks.spawn(refresh_loop(
                client,
                cache.clone(),
                Duration::from_secs(col.refresh_margin_secs),
                metrics.clone(),
                SystemTime::now,
                stopped(stop_rx.clone()),
            ));
        }
        let listener = transport.listen(col.port).await?;
        tasks.spawn(services::serve(
            listener,
            Service::Collateral(cache),
            ServiceLimits::default(),
            metrics.clone(),
            stopped(stop_rx.clone()),
        ));
    }

    let relay_listener = TcpListener::bind(cfg.relay.listen)
        .await
        .map_err(|source| AgentError::Bind {
            key: "relay.listen",
            addr: cfg.relay.listen,
            source,
        })?;
    let relay_addr = relay_listener.local_addr().ok();
    let mut relay = Relay::new(cfg.relay.relay_config(), transport.clone(), metrics.clone());
    if let Some(o) = opts.relay_observer.clone() {
        relay = relay.with_observer(o);
    }
    let relay = Arc::new(relay);
    tasks.spawn(
        relay
            .clone()
            .serve(relay_listener, stopped(stop_rx.clone())),
    );
    if let Some(a) = relay_addr {
        write_atomic(&state_dir.join("relay.addr"), &format!("{a}\n"))?;
        tracing::info!(listen = %a, guest_port = cfg.relay.guest_port, transport = transport.kind(), "relay listening");
    }

    let (vm_status, supervisor) = match plan.clone() {
        Some(plan) => {
            let probe = cfg
                .supervisor
                .ready_probe
                .then(|| (transport.clone(), cfg.relay.guest_port));
            let mut s = Supervisor::new(plan, cfg.supervisor.clone(), metrics.clone(), probe)
                .with_multiplexer_pid(launched.multiplexer_pid());
            if let Some(image) = manifest.clone() {
                let cfg2 = cfg.clone();
                s = s.with_restart_check(Arc::new(move || {
                    verify_image(&cfg2, &image).map_err(|e| {
                        let mut msg = e.to_string();
                        let mut cur = std::error::Error::source(&e);
                        while let Some(c) = cur {
                            msg = format!("{msg}: {c}");
                            cur = c.source();
                        }
                        msg
                    })
                }));
            }
            (s.status(), Some(s))
        }
        None => (watch::channel(VmStatus::external()).1, None),
    };

    if cfg.admin.enabled {
        let listener = TcpListener::bind(cfg.admin.listen)
            .await
            .map_err(|source| AgentError::Bind {
                key: "admin.listen",
                addr: cfg.admin.listen,
                source,
            })?;
        if let Ok(a) = listener.local_addr() {
            write_atomic(&state_dir.join("admin.addr"), &format!("{a}\n"))?;
            tracing::info!(listen = %a, "admin endpoint listening");
        }
        let state = AdminState {
            metrics: metrics.clone(),
            started,
            vm: vm_status,
            platform: cfg.vm.platform.as_str(),
            image: manifest.as_ref().map(|m| ImageInfo {
                manifest: m.path.display().to_string(),
                manifest_digest: m.digest.to_string(),
                expected_measurements: m
                    .manifest
                    .expected_measurements
                    .as_ref()
                    .and_then(|e| serde_json::to_value(e).ok()),
            }),
            sim_quote: quoter.as_ref().map(|s| s.status().clone()),
            sim_snp: snp_quoter.as_ref().map(|s| s.status().clone()),
            relay: Some(relay.clone()),
            relay_listen: relay_addr,
        };
        tasks.spawn(admin::serve(listener, state, stopped(stop_rx.clone())));
    }

    let supervisor_task = supervisor.map(|s| tokio::spawn(s.run(stopped(stop_rx.clone()))));

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(t) = supervisor_task {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "supervisor"),
            Err(e) => tracing::error!(error = %e, "supervisor task"),
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
