//! `cargo xtask bench`: runs every benchmark with its baseline and writes the report.
//!
//! Each benchmark measures its baseline in the same process or script and appends its figures to
//! the file named by `CHRYSALIS_BENCH_FIGURES`, one JSON object per line:
//!
//! | key              | meaning                                                     |
//! |------------------|-------------------------------------------------------------|
//! | `name`           | what was measured                                           |
//! | `unit`           | `s`, `ms`, `µs`, `MB/s`, `tokens/s`, `req/s`, `req`, `MiB`  |
//! | `value`          | the measured median                                         |
//! | `baseline`       | what it is compared with (optional)                         |
//! | `baseline_value` | the baseline's median, same unit (optional)                 |
//! | `ratio`          | value / baseline (optional; medians of per-round ratios)    |
//! | `goal`           | the goal as text (optional)                                 |
//! | `met`            | whether the goal holds (optional)                           |
//! | `runs`           | how many measurements the median is of                      |
//! | `note`           | anything a reader needs to interpret the row (optional)     |
//!
//! This task collects the lines and renders docs/benchmarks.md (or, with `--quick`, a smoke
//! report under target/ so CI proves the harness still works without rewriting the docs).
//!
//! xtask runs this binary (`cargo run -p chrysalis-tests --bin chrysalis-bench -- ARGS…`), so that
//! xtask need not link the chain harness the boot figure uses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrysalis_tests::driver;
use clap::Parser as _;
use serde::Deserialize;

/// Run every benchmark with its baseline and write docs/benchmarks.md.
#[derive(clap::Parser)]
#[command(name = "xtask bench", bin_name = "xtask bench")]
struct BenchArgs {
    /// Short runs of every benchmark (under 2 minutes): proves the harness works; figures are
    /// rough. Writes target/bench/benchmarks-quick.md unless --out says otherwise.
    #[arg(long)]
    quick: bool,
    /// Where to write the report (default: docs/benchmarks.md, or target/bench/benchmarks-quick.md
    /// with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only run the benchmarks whose step name contains this text (e.g. `relay`).
    #[arg(long)]
    only: Option<String>,
}

/// One line of `CHRYSALIS_BENCH_FIGURES`.
#[derive(Deserialize)]
struct Figure {
    name: String,
    unit: String,
    value: f64,
    baseline: Option<String>,
    baseline_value: Option<f64>,
    ratio: Option<f64>,
    goal: Option<String>,
    met: Option<bool>,
    runs: Option<u64>,
    note: Option<String>,
}

/// A step: a command that appends figures.
struct Step {
    name: &'static str,
    /// Why the step cannot run here, if it cannot.
    unavailable: Option<String>,
    command: Command,
}

fn cargo_command() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn steps(quick: bool) -> Vec<Step> {
    let mut out = Vec::new();
    // `--workspace`: features are unified over the whole workspace as in `cargo test --workspace`,
    // so the dependencies that build compiled are reused; `-p` would resolve other feature sets
    // and rebuild dozens of crates. A quick run checks the harness, not the speed: it builds with
    // the dev profile (dependencies optimised, see [profile.dev.package."*"]) instead of a second,
    // release build of the whole tree; a full run uses the optimised `bench` profile.
    let bench = |target: &str| {
        let mut c = cargo_command();
        c.args(["bench", "--workspace", "--bench", target]);
        if quick {
            c.args(["--profile", "dev"]);
        }
        c
    };
    out.push(Step {
        name: "attestation verify",
        unavailable: None,
        command: bench("verify"),
    });
    out.push(Step {
        name: "ra-tls handshake",
        unavailable: None,
        command: bench("handshake"),
    });
    out.push(Step {
        name: "relay",
        unavailable: ["socat", "haproxy"]
            .into_iter()
            .find(|peer| which(peer).is_none())
            .map(|peer| format!("{peer} is not installed (`cargo xtask setup`)")),
        command: bench("relay"),
    });
    out.push(Step {
        name: "proxy",
        unavailable: None,
        command: bench("proxy"),
    });
    let mut measure = bench("measure");
    if quick {
        measure.env("CHRYSALIS_BENCH_ROUNDS", "3");
    }
    out.push(Step {
        name: "measure",
        unavailable: None,
        command: measure,
    });
    let mut chain = bench("chain");
    chain.arg("--");
    chain.args(if quick {
        ["--runs", "1", "--max-tokens", "16"]
    } else {
        ["--runs", "5", "--max-tokens", "128"]
    });
    out.push(Step {
        name: "chain",
        unavailable: std::env::var_os("CHRYSALIS_VENV")
            .is_none()
            .then(|| "CHRYSALIS_VENV is not set (the test venv from `cargo xtask setup`)".into()),
        command: chain,
    });
    // The soak (tests/tests/soak.rs): hostile load through relay and guest processes; a test
    // whose checks must hold, run longer here, that appends its figures.
    let mut soak = cargo_command();
    soak.args(["test", "--workspace", "--test", "soak", "--profile"]);
    soak.arg(if quick { "dev" } else { "bench" });
    soak.env("CHRYSALIS_SOAK_SECS", if quick { "10" } else { "60" });
    out.push(Step {
        name: "soak",
        unavailable: None,
        command: soak,
    });
    out
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

fn main() -> Result<()> {
    let args = BenchArgs::parse();
    driver::without_cargo_package_vars()?;
    run(args)
}

fn run(args: BenchArgs) -> Result<()> {
    let root = driver::repo_root();
    let out = args.out.clone().unwrap_or_else(|| {
        if args.quick {
            root.join("target/bench/benchmarks-quick.md")
        } else {
            root.join("docs/benchmarks.md")
        }
    });
    let work = root.join("target/bench");
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let figures_path = work.join("figures.jsonl");
    let _ = std::fs::remove_file(&figures_path);

    let started = Instant::now();
    let mut timings = Vec::new();
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for mut step in steps(args.quick) {
        if args.only.as_deref().is_some_and(|o| !step.name.contains(o)) {
            continue;
        }
        if let Some(why) = step.unavailable {
            eprintln!("bench: {}: skipped: {why}", step.name);
            skipped.push(format!("{}: {why}", step.name));
            continue;
        }
        eprintln!("bench: {}: running {:?}", step.name, step.command);
        step.command
            .current_dir(&root)
            .env("CHRYSALIS_BENCH_FIGURES", &figures_path);
        if args.quick {
            step.command.env("CHRYSALIS_BENCH_QUICK", "1");
        } else {
            step.command.env_remove("CHRYSALIS_BENCH_QUICK");
        }
        let t = Instant::now();
        let status = step
            .command
            .status()
            .with_context(|| format!("start the {} benchmark", step.name))?;
        let took = t.elapsed();
        eprintln!("bench: {}: {} in {}", step.name, status, secs(took));
        timings.push((step.name, took));
        if !status.success() {
            failures.push(format!("{}: {status}", step.name));
        }
    }
    // The image and the boot are timed here (full runs only: they need the built image and take
    // minutes).
    if !args.quick
        && args
            .only
            .as_deref()
            .is_none_or(|o| "image boot".contains(o))
    {
        let t = Instant::now();
        match image_and_boot(&root, &figures_path) {
            Ok(()) => {}
            Err(e) => failures.push(format!("image and boot: {e:#}")),
        }
        timings.push(("image and boot", t.elapsed()));
    }
    let figures = read_figures(&figures_path)?;
    let report = render(&figures, args.quick, &timings, &failures, &skipped);
    write_atomic(&out, &report)?;
    eprintln!(
        "bench: {} figures written to {} in {}",
        figures.len(),
        out.display(),
        secs(started.elapsed())
    );
    if !failures.is_empty() {
        bail!("benchmarks failed: {}", failures.join("; "));
    }
    // CI runs --quick to keep the harness honest: a benchmark that cannot run there is a failure.
    if args.quick && std::env::var("CI").is_ok_and(|v| v == "true") && !skipped.is_empty() {
        bail!("benchmarks skipped under CI: {}", skipped.join("; "));
    }
    Ok(())
}

fn read_figures(path: &Path) -> Result<Vec<Figure>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a figure: {l}", path.display(), i + 1))
        })
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// A value in its unit with sensible precision; seconds are shown in ms or µs.
fn show(v: f64, unit: &str) -> String {
    match unit {
        "s" if v < 1e-3 => format!("{:.1} µs", v * 1e6),
        "s" if v < 1.0 => format!("{:.3} ms", v * 1e3),
        "s" => format!("{v:.1} s"),
        _ if v.abs() >= 100.0 => format!("{v:.0} {unit}"),
        _ => format!("{v:.2} {unit}"),
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(|| "?".into(), |kb| format!("{} GiB", kb / (1024 * 1024)));
    format!("{cores} cores, {model}, {mem} RAM")
}

fn render(
    figures: &[Figure],
    quick: bool,
    timings: &[(&str, Duration)],
    failures: &[String],
    skipped: &[String],
) -> String {
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    s.push_str(
        "Written by `cargo xtask bench` (do not edit by hand). Every figure is measured with its \
         baseline in the same run; values are medians, `Runs` says of how many measurements. \
         Ratios are value / baseline.\n\n",
    );
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    s.push_str(&format!(
        "- Machine: {}\n- Mode: {}\n- Commit: {commit}\n- Load average when the report was written: {load}\n\n",
        machine(),
        if quick {
            "--quick (short runs of dev-profile builds: a harness check, figures not comparable)"
        } else {
            "full"
        },
    ));
    s.push_str(
        "| Figure | Value | Baseline | Baseline value | Ratio | Goal | Met | Runs | Note |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for f in figures {
        let cell = |o: Option<String>| o.unwrap_or_else(|| "—".into());
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.name,
            show(f.value, &f.unit),
            cell(f.baseline.clone()),
            cell(f.baseline_value.map(|v| show(v, &f.unit))),
            cell(f.ratio.map(|r| format!("{r:.2}×"))),
            cell(f.goal.clone()),
            match f.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            },
            cell(f.runs.map(|r| r.to_string())),
            cell(f.note.clone()),
        ));
    }
    s.push_str("\n## Steps\n\n");
    for (name, took) in timings {
        s.push_str(&format!("- {name}: {}\n", secs(*took)));
    }
    for f in failures {
        s.push_str(&format!("- FAILED {f}\n"));
    }
    for k in skipped {
        s.push_str(&format!("- skipped {k}\n"));
    }
    s
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("temp file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(path)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Cached rebuild of the cpu image, and boot to ready under the sim profile (median of 3 boots,
/// each a fresh host agent + QEMU under TCG, ready = the guest's RA-TLS port answers after its
/// first certificate).
fn image_and_boot(root: &Path, figures: &Path) -> Result<()> {
    use chrysalis_tests::chain::{AgentSpec, Boot, HostAgent, Tools};
    let build = || -> Result<Duration> {
        let t = Instant::now();
        let status = driver::xtask(&["image", "build", "--flavor", "cpu"])
            .status()
            .context("run xtask image build")?;
        if !status.success() {
            bail!("cargo xtask image build --flavor cpu: {status}");
        }
        Ok(t.elapsed())
    };
    let clean = clean_build()?;
    append(
        figures,
        &serde_json::json!({
            "name": "cpu image clean build (verified downloads cached, nothing built)", "unit": "s",
            "value": clean.as_secs_f64(), "goal": "<= 15 min", "met": clean.as_secs() <= 15 * 60, "runs": 1,
            "note": "build root, llama-cpp-python wheel from source, guest runtime release build, rootfs, initramfs, OVMF and TDVF from edk2 source",
        }),
    )?;
    build()?; // fills the cache if this checkout changed anything
    let rebuilds: Vec<f64> = (0..3)
        .map(|_| build().map(|d| d.as_secs_f64()))
        .collect::<Result<_>>()?;
    append(
        figures,
        &serde_json::json!({
            "name": "cpu image rebuild, everything cached", "unit": "s",
            "value": median(rebuilds), "runs": 3,
            "note": "rootfs assembly and erofs compression dominate",
        }),
    )?;

    let tools = Tools::build(root, false)?;
    let manifest = root.join("out/cpu/manifest.json");
    let work = tempfile::tempdir().context("temp dir")?;
    let mut boots = Vec::new();
    for i in 0..3 {
        let dir = work.path().join(format!("boot{i}"));
        let mut agent = HostAgent::start(&tools.host, &AgentSpec::sim(&manifest), &dir)?;
        let t = Instant::now();
        let boot = agent.wait_boot(Duration::from_secs(300), &mut |_| {})?;
        let took = t.elapsed().as_secs_f64();
        let _ = agent.stop();
        match boot {
            Boot::Ready(_) => boots.push(took),
            Boot::Failed(st) => bail!("boot {i} failed: {st}"),
        }
    }
    let b = median(boots);
    append(
        figures,
        &serde_json::json!({
            "name": "boot to ready under TCG (host agent start to guest RA-TLS port up)", "unit": "s",
            "value": b, "goal": "<= 15 s", "met": b <= 15.0, "runs": 3,
            "note": "sim profile: QEMU q35 TCG, direct kernel boot, dm-verity, first certificate over a sim quote",
        }),
    )?;
    Ok(())
}

/// Times one cpu image build against a cache that holds the verified downloads (content-addressed
/// files, the firmware sources and the crate registry, linked from the real cache so the network is
/// not timed) and no build product: no build root, wheel, cargo target directory or firmware.
fn clean_build() -> Result<Duration> {
    let cache = driver::cache_root();
    let scratch = tempfile::Builder::new()
        .prefix("bench-clean-")
        .tempdir_in(&cache)
        .with_context(|| format!("a scratch cache under {}", cache.display()))?;
    for shared in ["sha256", "sources", "cargo-home"] {
        let from = cache.join(shared);
        std::fs::create_dir_all(&from).with_context(|| format!("create {}", from.display()))?;
        std::os::unix::fs::symlink(&from, scratch.path().join(shared))
            .with_context(|| format!("link {} into the scratch cache", from.display()))?;
    }
    eprintln!(
        "bench: clean image build in the scratch cache {} (tens of minutes on 2 cores)",
        scratch.path().display()
    );
    let t = Instant::now();
    let status = driver::xtask(&[])
        .env("CHRYSALIS_CACHE", scratch.path())
        .args(["image", "build", "--flavor", "cpu", "--out"])
        .arg(scratch.path().join("out"))
        .status()
        .context("run xtask image build")?;
    let took = t.elapsed();
    if !status.success() {
        bail!("clean cargo xtask image build --flavor cpu: {status}");
    }
    Ok(took)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn append(path: &Path, figure: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    writeln!(f, "{figure}")?;
    Ok(())
}
