//! `cargo xtask demo`: the whole chain on this machine, step by step, for someone who has never
//! seen chrysalis: image, client policy, host agent + VM (sim profile), attestation check,
//! a chat completion through the pinning proxy, its receipt, and how long each step took.
//! Everything it starts is stopped at the end, also on Ctrl-C.
//!
//! xtask runs this binary (`cargo run -p chrysalis-tests --bin chrysalis-demo -- ARGS…`), so that
//! xtask need not link the chain harness.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrysalis_tests::chain::{self, AgentSpec, Boot, Chat, Event, HostAgent, Image, Proxy, Tools};
use chrysalis_tests::driver::{self, repo_root};
use clap::Parser as _;

/// The whole chain on this machine: image, policy, host agent + VM (sim), proxy, a chat
/// completion and its receipt, with timings; stops everything at the end or on Ctrl-C.
#[derive(Debug, clap::Parser)]
#[command(name = "xtask demo", bin_name = "xtask demo")]
struct DemoArgs {
    /// A built image: the directory of its manifest.json (default: $CHRYSALIS_IMAGE_DIR, else
    /// out/cpu, built with `cargo xtask image build --flavor cpu` when missing).
    #[arg(long, value_name = "DIR")]
    image: Option<PathBuf>,
    /// The question for the model.
    #[arg(
        long,
        default_value = "What is the capital of France? Answer in one sentence."
    )]
    prompt: String,
    /// Most tokens the model may generate.
    #[arg(long, default_value_t = 48)]
    max_tokens: u32,
    /// Keep the working directory (configs, logs, policy, receipts) after a successful run.
    #[arg(long)]
    keep: bool,
}

/// How long the VM may take to boot and load the model before the demo gives up (TCG on a busy
/// 2-core machine is slow; a hang guard, not a goal).
const BOOT_GUARD: Duration = Duration::from_secs(1800);

struct Phases {
    done: Vec<(String, Duration)>,
    current: Instant,
    total: Instant,
    step: usize,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            done: Vec::new(),
            current: Instant::now(),
            total: Instant::now(),
            step: 0,
        }
    }

    /// Prints the heading of the next step.
    fn begin(&mut self, title: &str, explain: &str) {
        self.step += 1;
        self.current = Instant::now();
        println!("\n[{}] {title}", self.step);
        for line in explain.lines() {
            println!("    {line}");
        }
    }

    fn end(&mut self, title: &str) {
        let d = self.current.elapsed();
        println!("    ({:.1} s)", d.as_secs_f64());
        self.done.push((title.to_owned(), d));
    }

    fn table(&self) {
        println!("\nTime per step:");
        for (t, d) in &self.done {
            println!("  {:>7.1} s  {t}", d.as_secs_f64());
        }
        println!("  {:>7.1} s  total", self.total.elapsed().as_secs_f64());
    }
}

fn main() -> anyhow::Result<()> {
    let args = DemoArgs::parse();
    driver::without_cargo_package_vars()?;
    run(args)
}

fn run(args: DemoArgs) -> anyhow::Result<()> {
    driver::install_interrupt_handler("the proxy, the host agent and its VM")?;
    let mut phases = Phases::new();
    println!("chrysalis demo: a confidential-inference node, end to end, on this machine.");
    println!(
        "No TEE hardware is needed: the VM runs under QEMU and the host agent plays the TDX\n\
         hardware with a simulated Intel PKI, which the client trusts only because its policy\n\
         names that simulated root explicitly. Press Ctrl-C at any time: everything stops."
    );
    let work = tempfile::Builder::new()
        .prefix("chrysalis-demo-")
        .tempdir()
        .context("cannot create the demo's working directory")?;
    let result = steps(&args, &mut phases, work.path());
    phases.table();
    match result {
        Ok(()) => {
            if args.keep {
                let kept = work.keep();
                println!("\nworking directory kept: {}", kept.display());
            }
            println!("\nAll processes stopped. Demo complete.");
            Ok(())
        }
        Err(e) => {
            let kept = work.keep();
            if chain::interrupted() {
                println!("\nInterrupted: every process the demo started has been stopped.");
                println!("logs: {}", kept.display());
                std::process::exit(130);
            }
            println!("\nlogs and configs kept in {}", kept.display());
            Err(e)
        }
    }
}

fn steps(args: &DemoArgs, phases: &mut Phases, work: &Path) -> anyhow::Result<()> {
    let root = repo_root();

    phases.begin(
        "Prerequisites",
        "QEMU and vhost-device-vsock run the VM; `cargo xtask setup` installs them on Debian.",
    );
    // Installs what is missing (apt packages, rustup target, vhost-device-vsock, the test venv);
    // a second run only checks.
    let vars = driver::setup_env()?;
    let vhost = vars
        .get("CHRYSALIS_VHOST_DEVICE_VSOCK")
        .cloned()
        .unwrap_or_else(|| "vhost-device-vsock".into());
    if let Some(p) = chain::missing_program(&["qemu-system-x86_64", &vhost]) {
        bail!("{p} is still missing after `cargo xtask setup`");
    }
    println!("    qemu-system-x86_64 and {vhost}: found");
    phases.end("prerequisites");

    phases.begin(
        "Guest image",
        "The VM image: kernel, initramfs, dm-verity protected rootfs and model pack, and a\n\
         manifest with every file's hash. It is bit-for-bit reproducible, so anyone can rebuild\n\
         it and recompute what the client pins.",
    );
    let manifest = driver::image_manifest(args.image.as_deref(), &root)?;
    let image = Image::open(&manifest)?;
    println!("    manifest: {}", manifest.display());
    println!(
        "    flavor {}, model {} ({})",
        image.manifest.flavor, image.manifest.model.id, image.manifest.artifacts.model.file
    );
    phases.end("guest image");
    chain::check_interrupted()?;

    phases.begin(
        "Build the host agent and the client",
        "chrysalis-host (runs on the GPU owner's machine, untrusted) and chrysalis (the client:\n\
         policy, verify, proxy).",
    );
    let tools = Tools::build(&root, false)?;
    phases.end("cargo build");
    chain::check_interrupted()?;

    phases.begin(
        "Client policy from the manifest",
        "The client recomputes the TDX measurements from the image's files and pins them; this\n\
         demo's policy also names the simulated Intel root (never do that for real nodes).",
    );
    let policy = work.join("policy.toml");
    chain::derive_policy(&tools.chrysalis, &manifest, true, &policy)?;
    println!(
        "    chrysalis policy from-manifest --manifest {} --platform tdx --vcpus 2 --memory 2048 --dangerous-sim-root",
        manifest.display()
    );
    for line in std::fs::read_to_string(&policy)?.lines() {
        let l = line.trim();
        if l.starts_with("mr_td") || l.starts_with("rtmr") || l.starts_with("dangerous") {
            println!("      {l}");
        }
    }
    println!("    written to {}", policy.display());
    phases.end("policy");

    phases.begin(
        "Start the host agent and boot the VM",
        "chrysalis-host launches QEMU (sim profile: TCG, vhost-user vsock), relays ciphertext\n\
         between its TCP port and the guest, and answers the guest's quote requests. Booting and\n\
         loading the model under emulation takes a while.",
    );
    let mut spec = AgentSpec::sim(&manifest);
    spec.vhost_device_vsock = vhost.clone();
    let mut agent = HostAgent::start(&tools.host, &spec, &work.join("host"))?;
    println!(
        "    agent pid {}, logs in {}",
        agent.pid(),
        work.join("host").display()
    );
    let boot_start = Instant::now();
    let mut last_print = Instant::now() - Duration::from_secs(60);
    let serial = agent.serial_log();
    let boot = agent.wait_boot(BOOT_GUARD, &mut |st| {
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let console = chain::tail(&serial, 1);
            let console: String = console.chars().take(90).collect();
            println!(
                "    {:>5.0} s  vm {:<9} console: {}",
                boot_start.elapsed().as_secs_f64(),
                st["vm"]["state"].as_str().unwrap_or("?"),
                console.trim()
            );
        }
    })?;
    let status = match boot {
        Boot::Ready(st) => st,
        Boot::Failed(st) => bail!(
            "the VM failed to boot: {}\n{}",
            st["vm"]["last_exit"],
            agent.logs()
        ),
    };
    let relay = agent.relay_addr()?;
    println!(
        "    ready after {:.0} s; relay {relay}; QEMU pid {}",
        boot_start.elapsed().as_secs_f64(),
        status["vm"]["qemu_pid"]
    );
    phases.end("boot to ready");

    phases.begin(
        "Verify the node (chrysalis verify)",
        "One TLS handshake with the guest: its certificate carries a TDX quote over its TLS key;\n\
         the client checks the signature chain, TCB status, debug flag and pinned measurements.",
    );
    let v = chain::verify(&tools.chrysalis, &relay, &policy)?;
    for line in v.report.lines() {
        println!("    | {line}");
    }
    if !v.accepted {
        bail!("the node was rejected");
    }
    phases.end("verify");

    phases.begin(
        "Start the pinning proxy",
        "A local OpenAI-compatible endpoint: it verifies every upstream connection against the\n\
         policy before sending a byte, and checks each response's signed receipt.",
    );
    let proxy = Proxy::start(&tools.chrysalis, &[&relay], &policy, &work.join("proxy"))?;
    println!(
        "    chrysalis proxy --listen {} --upstream {relay} --policy policy.toml --receipts receipts.jsonl",
        proxy.addr()
    );
    println!(
        "    any OpenAI SDK can use it: OPENAI_BASE_URL={} OPENAI_API_KEY=unused",
        proxy.base_url()
    );
    phases.end("proxy");

    phases.begin(
        "Ask the model",
        "POST /v1/chat/completions (streamed) through the proxy; the model runs inside the VM.",
    );
    let models = proxy.models()?;
    let model = models.first().cloned().context("the node lists no model")?;
    println!("    model: {model}");
    println!("    prompt: {}", args.prompt);
    // Streamed, so the answer shows token by token: under TCG each one takes seconds.
    let start = Instant::now();
    let mut stream = match proxy.chat_stream(
        &Chat {
            model: model.clone(),
            prompt: args.prompt.clone(),
            max_tokens: args.max_tokens,
        },
        Duration::from_secs(900),
    )? {
        Ok(stream) => stream,
        Err(reply) => bail!(
            "the proxy answered {}: {}\n{}",
            reply.status,
            reply.body,
            proxy.log_tail(20)
        ),
    };
    print!("    answer: ");
    std::io::stdout().flush()?;
    let mut first_token = None;
    loop {
        match stream.next_event() {
            Ok(Event::Chunk(delta)) => {
                if delta.is_empty() {
                    continue;
                }
                first_token.get_or_insert_with(|| start.elapsed());
                print!("{delta}");
                std::io::stdout().flush()?;
            }
            Ok(Event::Done) => break,
            Err(e) => {
                println!();
                return Err(e)
                    .with_context(|| format!("the answer broke off\n{}", proxy.log_tail(20)));
            }
        }
    }
    println!();
    let total = start.elapsed();
    let (_, usage) = stream.finish()?;
    let usage = usage.unwrap_or_default();
    let first = first_token.unwrap_or(total);
    println!(
        "    first token after {:.1} s (the prompt's {} tokens), then {} more in {:.1} s; {:.1} s in all",
        first.as_secs_f64(),
        usage["prompt_tokens"],
        usage["completion_tokens"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(1),
        (total - first).as_secs_f64(),
        total.as_secs_f64()
    );
    println!("    usage: {usage}");
    phases.end("chat completion");

    phases.begin(
        "The receipt",
        "The guest signs what it served (request and response hashes, model, token usage) with\n\
         its attested key; the proxy verified it and appended it to the ledger.",
    );
    let records = proxy.records(1, Duration::from_secs(60))?;
    let r = &records[0];
    println!("    ledger: {}", proxy.ledger_path().display());
    println!(
        "    verified: {}{}",
        r.verified,
        r.reason
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    println!(
        "    upstream: {}  model: {}",
        r.upstream,
        r.model.as_deref().unwrap_or("(none)")
    );
    println!("    usage: {}", serde_json::to_string(&r.usage)?);
    println!(
        "    model root hash: {}",
        r.model_root_hash.as_deref().unwrap_or("(none)")
    );
    println!("    certificate sha256: {}", r.cert_sha256);
    if let Some(jws) = &r.receipt {
        println!(
            "    receipt (JWS, {} bytes): {}…",
            jws.len(),
            &jws[..jws.len().min(96)]
        );
    }
    if !r.verified {
        bail!("the receipt did not verify");
    }
    phases.end("receipt");

    phases.begin(
        "Stop everything",
        "The proxy, then the host agent (which stops QEMU and vhost-device-vsock).",
    );
    drop(proxy);
    let agent_pid = agent.pid();
    let exit = agent.stop();
    println!(
        "    host agent {agent_pid} exited: {}",
        exit.map(|s| s.to_string()).unwrap_or_default()
    );
    phases.end("stop");
    Ok(())
}
