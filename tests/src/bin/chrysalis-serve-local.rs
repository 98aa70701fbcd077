//! `cargo xtask serve-local`: a chrysalis node on this machine in seconds, without a VM: the
//! guest runtime (`chrysalis-guest serve`) as a local process, the host agent's relay and
//! simulated quote service, and the pinning proxy, with the image's measured configuration and
//! model pack. For app developers (an OpenAI endpoint backed by the real chain: RA-TLS,
//! verification, receipts) and for tests and benchmarks that measure our software rather than
//! TCG. Stops everything it started on Ctrl-C.
//!
//! What differs from the VM: no TEE and no VM, so the evidence is signed by the host agent's
//! simulated PKI over the measurements of the image's artifacts (the policy it prints names that
//! root as dangerous), and the guest configuration's two in-VM paths (the engine's Python path
//! and the model file under /models) point at this machine's copies: the test venv, and the
//! model extracted from the image's model pack after its hash was checked.
//!
//! xtask runs this binary (`cargo run -p chrysalis-tests --bin chrysalis-serve-local -- ARGS…`).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrysalis_attestation::hostcall::{COLLATERAL_PORT, GUEST_TLS_PORT, SIM_QUOTE_PORT};
use chrysalis_attestation::manifest::ImageDir;
use chrysalis_tests::chain::{
    self, AgentSpec, Chat, Guarded, HostAgent, Proxy, SimPlatform, Tools,
};
use chrysalis_tests::driver::{self, repo_root};
use clap::Parser as _;
use nix::sys::signal::Signal;

/// A chrysalis node on this machine without a VM: the guest runtime as a local process, the host
/// agent's relay and simulated quote service, and the pinning proxy. Prints the OpenAI base URL
/// and the client policy, then serves until Ctrl-C.
#[derive(Debug, clap::Parser)]
#[command(name = "xtask serve-local", bin_name = "xtask serve-local")]
struct Args {
    /// A built image: the directory of its manifest.json (default: out/cpu, built with `cargo
    /// xtask image build --flavor cpu` when missing or out of date).
    #[arg(long, value_name = "DIR")]
    image: Option<PathBuf>,
    /// Where the OpenAI-compatible endpoint (the pinning proxy) listens.
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// The hardware whose evidence the host agent simulates: tdx (profile `sim`) or snp
    /// (`sim-snp`).
    #[arg(long, value_enum, default_value = "tdx")]
    platform: PlatformArg,
    /// Answer one chat completion through the proxy, print it with its receipt check, and stop
    /// (a smoke test of the local node).
    #[arg(long)]
    check: bool,
    /// Build optimised binaries (slower to build, faster to serve).
    #[arg(long)]
    release: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PlatformArg {
    Tdx,
    Snp,
}

/// How long the guest may take to load the model before serve-local gives up (a hang guard).
const READY_GUARD: Duration = Duration::from_secs(600);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    driver::without_cargo_package_vars()?;
    driver::install_interrupt_handler("the proxy, the host agent and the guest")?;
    let work = tempfile::Builder::new()
        .prefix("chrysalis-serve-local-")
        .tempdir()
        .context("cannot create a working directory")?;
    match serve(&args, work.path()) {
        Ok(()) => Ok(()),
        Err(e) => {
            let kept = work.keep();
            if chain::interrupted() {
                eprintln!("stopped; logs in {}", kept.display());
                return Ok(());
            }
            eprintln!("logs and configs kept in {}", kept.display());
            Err(e)
        }
    }
}

fn serve(args: &Args, work: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = repo_root();
    let platform = match args.platform {
        PlatformArg::Tdx => SimPlatform::Tdx,
        PlatformArg::Snp => SimPlatform::Snp,
    };
    // Refuse a busy port before minutes of building, not after.
    TcpListener::bind(args.listen)
        .with_context(|| format!("--listen {}: cannot listen there", args.listen))?;

    // A venv named by the caller (the tests, which ran setup already) skips setup.
    let vars = match std::env::var_os("CHRYSALIS_VENV") {
        Some(v) => BTreeMap::from([("CHRYSALIS_VENV".into(), v.to_string_lossy().into_owned())]),
        None => {
            eprintln!("[1/6] prerequisites (cargo xtask setup)");
            driver::setup_env()?
        }
    };
    let venv = vars
        .get("CHRYSALIS_VENV")
        .map(PathBuf::from)
        .context("cargo xtask setup recorded no CHRYSALIS_VENV")?;
    let site_packages = site_packages(&venv)?;

    eprintln!("[2/6] guest image");
    let manifest = driver::image_manifest(args.image.as_deref(), &root)?;
    let image =
        ImageDir::load(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
    let model = extract_model(&image, &work.join("models"))?;
    let guest_toml =
        local_guest_config(&image, &root.join("guest/python"), &site_packages, &model)?;
    let guest_cfg = work.join("guest.toml");
    chain::write_atomic(&guest_cfg, guest_toml.as_bytes())?;
    eprintln!(
        "      {} (flavor {}, model {})",
        manifest.display(),
        image.manifest.flavor,
        image.manifest.model.id
    );

    eprintln!("[3/6] build chrysalis-guest, chrysalis-host and chrysalis");
    let tools = Tools::build(&root, args.release)?;
    let guest_bin = Tools::build_guest(&root, args.release)?;

    eprintln!("[4/6] host agent (relay and simulated quote service, no VM)");
    let offset = chain::free_port_offset(&[SIM_QUOTE_PORT, COLLATERAL_PORT])
        .context("no free TCP ports on 127.0.0.1 for the guest's services")?;
    let mut spec = match platform {
        SimPlatform::Tdx => AgentSpec::sim(&manifest),
        SimPlatform::Snp => AgentSpec::sim_snp(&manifest),
    };
    spec.external_tcp_offset = Some(offset);
    if let Some(v) = vars.get("CHRYSALIS_VHOST_DEVICE_VSOCK") {
        spec.vhost_device_vsock = v.clone();
    }
    let mut agent = HostAgent::start(&tools.host, &spec, &work.join("host"))?;
    let relay_file = agent.state_dir().join("relay.addr");
    let relay = agent.wait_for(
        "the host agent's relay",
        Duration::from_secs(60),
        |_| agent_relay(&relay_file),
        &mut |_| {},
    )?;

    eprintln!("[5/6] guest runtime (loading the model)");
    let mut guest = start_guest(&guest_bin, &guest_cfg, platform, offset, work)?;
    let ready = work.join("guest.addr");
    let t = Instant::now();
    while !ready.exists() {
        chain::check_interrupted()?;
        guest.check_running()?;
        agent.check_running()?;
        if t.elapsed() > READY_GUARD {
            bail!(
                "the guest did not serve within {READY_GUARD:?}:\n{}",
                guest.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    eprintln!("[6/6] client policy and pinning proxy");
    let policy = work.join("policy.toml");
    chain::derive_policy_for(&tools.chrysalis, &manifest, platform, true, &policy)?;
    let listen = args.listen.to_string();
    let proxy = Proxy::start_on(
        &tools.chrysalis,
        &listen,
        &[&relay],
        &policy,
        &work.join("proxy"),
    )?;
    eprintln!(
        "ready in {:.1} s. The policy pins the image's measurements and names the simulated {} root \
         (dangerous: only for local development). Logs: {}",
        started.elapsed().as_secs_f64(),
        match platform {
            SimPlatform::Tdx => "Intel",
            SimPlatform::Snp => "AMD",
        },
        work.display()
    );
    println!("OPENAI_BASE_URL={}", proxy.base_url());
    println!("CHRYSALIS_POLICY={}", policy.display());

    if args.check {
        return check(&proxy);
    }
    eprintln!("serving; Ctrl-C stops the proxy, the host agent and the guest");
    loop {
        if chain::interrupted() {
            return Ok(());
        }
        guest.check_running()?;
        agent.check_running()?;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One chat completion through the proxy, and its receipt in the ledger.
fn check(proxy: &Proxy) -> anyhow::Result<()> {
    let model = proxy
        .models()?
        .into_iter()
        .next()
        .context("the node lists no model")?;
    let reply = proxy.chat(
        &Chat {
            model,
            prompt: "What is the capital of France? Answer in one sentence.".into(),
            max_tokens: 24,
        },
        Duration::from_secs(300),
    )?;
    if reply.status != 200 {
        bail!("the proxy answered {}: {}", reply.status, reply.body);
    }
    println!(
        "answer ({:.1} s): {}",
        reply.elapsed.as_secs_f64(),
        reply.text().unwrap_or("").trim()
    );
    let records = proxy.records(1, Duration::from_secs(60))?;
    let r = &records[0];
    println!("receipt verified: {}", r.verified);
    if !r.verified {
        bail!(
            "the receipt did not verify: {}",
            r.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn agent_relay(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The venv's site-packages directory (the one with llama_cpp).
fn site_packages(venv: &Path) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(venv.join("lib"))
        .with_context(|| format!("{}: no lib/", venv.display()))?
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.join("llama_cpp").is_dir())
        .with_context(|| format!("{} has no llama_cpp package", venv.display()))
}

/// Checks the model pack against the manifest and extracts its one model file into `dir`; the
/// file's SHA-256 must be the manifest's.
fn extract_model(image: &ImageDir, dir: &Path) -> anyhow::Result<PathBuf> {
    let pack = &image.manifest.artifacts.model;
    pack.verify(&image.dir)
        .with_context(|| format!("the model pack {}", pack.file))?;
    let [file] = image.manifest.model.files.as_slice() else {
        bail!(
            "the manifest lists {} model files; serve-local serves a pack of one file",
            image.manifest.model.files.len()
        );
    };
    if file.name.contains('/') || file.name.starts_with('.') {
        bail!("model file name {:?} is not a plain file name", file.name);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = Command::new("fsck.erofs")
        .arg(format!("--extract={}", dir.display()))
        .arg("--no-preserve")
        .arg(image.path_of(pack))
        .output()
        .context("cannot run fsck.erofs (erofs-utils; `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "fsck.erofs --extract {}: {}",
            pack.file,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = dir.join(&file.name);
    let digest = chrysalis_attestation::Sha256::of_file(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    if digest != file.sha256 {
        bail!(
            "{} extracted from {} has SHA-256 {digest}, the manifest says {}",
            file.name,
            pack.file,
            file.sha256
        );
    }
    Ok(path)
}

/// The image's guest configuration (checked against the manifest) with its in-VM paths replaced
/// by this machine's: the engine's Python path and the model file.
fn local_guest_config(
    image: &ImageDir,
    adapters: &Path,
    site_packages: &Path,
    model: &Path,
) -> anyhow::Result<String> {
    let art = &image.manifest.artifacts.guest_config;
    let bytes = image
        .read_verified(art)
        .with_context(|| format!("the guest configuration {}", art.file))?;
    let text = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", art.file))?;
    let mut cfg: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", art.file))?;
    let engine = cfg
        .get_mut("engine")
        .and_then(toml::Value::as_table_mut)
        .with_context(|| format!("{} has no [engine]", art.file))?;
    let path = |p: &Path| toml::Value::String(p.display().to_string());
    engine.insert(
        "python_path".into(),
        toml::Value::Array(vec![path(adapters), path(site_packages)]),
    );
    let options = engine
        .get_mut("options")
        .and_then(toml::Value::as_table_mut)
        .with_context(|| format!("{} has no [engine.options]", art.file))?;
    options.insert("model_path".into(), path(model));
    Ok(format!(
        "# {}, with the engine's Python path and model file on this machine (cargo xtask serve-local).\n{}",
        art.file,
        toml::to_string(&cfg)?
    ))
}

/// `chrysalis-guest serve` on the image's configuration, on TCP at GUEST_TLS_PORT + `offset`,
/// asking the agent's simulated quote service for its evidence.
fn start_guest(
    bin: &Path,
    cfg: &Path,
    platform: SimPlatform,
    offset: i32,
    work: &Path,
) -> anyhow::Result<Guarded> {
    let port = |p: u32| p as i32 + offset;
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config"])
        .arg(cfg)
        .arg("--listen")
        .arg(format!("tcp:127.0.0.1:{}", port(GUEST_TLS_PORT)))
        .arg("--evidence")
        .arg(format!(
            "{}:tcp:127.0.0.1:{}",
            match platform {
                SimPlatform::Tdx => "sim-tdx",
                SimPlatform::Snp => "sim-snp",
            },
            port(SIM_QUOTE_PORT)
        ))
        .arg("--ready-file")
        .arg(work.join("guest.addr"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    Ok(Guarded::spawn(
        "chrysalis-guest",
        cmd,
        &work.join("guest.log"),
        Signal::SIGTERM,
        Duration::from_secs(10),
    )?)
}
