//! `cargo xtask test`: the whole test suite, as CI runs it, on a fresh Debian machine.
//!
//! Phases: prerequisites ([`crate::setup`]), then the cpu image (`cargo xtask image reproduce`:
//! two builds compared, cached) in the background beside `cargo fmt --check`, `cargo clippy
//! --workspace --all-targets -- -D warnings`, the test build, every test that does not boot the
//! image, the quick benchmark harness and a short pass of every fuzz target (`cargo xtask fuzz
//! --ci`); then, once the image is there, the tests that boot it. Together these are
//! `cargo test --workspace`. Prints how long each phase took, also when one fails.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::setup::{self, TestEnv, run, step};

const IMAGE_PHASE: &str = "cargo xtask image reproduce --flavor cpu --out out/cpu";

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// Do not install prerequisites: use the paths of the env file an earlier `cargo xtask setup`
    /// wrote.
    #[arg(long)]
    no_setup: bool,
}

pub(crate) fn main(args: TestArgs) -> Result<()> {
    let total = Instant::now();
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let result = phases(&args, &mut timings);
    eprintln!("\nphase timings:");
    for (name, d) in &timings {
        eprintln!("  {:>7.1} s  {name}", d.as_secs_f64());
    }
    eprintln!("  {:>7.1} s  total", total.elapsed().as_secs_f64());
    match &result {
        Ok(()) => eprintln!("all phases passed"),
        Err(e) => eprintln!("FAILED: {e:#}"),
    }
    result
}

fn phases(args: &TestArgs, timings: &mut Vec<(String, Duration)>) -> Result<()> {
    let t = Instant::now();
    let env = if args.no_setup {
        TestEnv::load(&setup::cache_dir().join(setup::ENV_FILE))?
    } else {
        let (env, parts) = setup::ensure(false)?;
        timings.extend(parts.into_iter().map(|(n, d)| (format!("  setup: {n}"), d)));
        env
    };
    timings.insert(0, ("setup".into(), t.elapsed()));

    let root = crate::image::repo_root();
    let cargo = |args: &[&str]| {
        let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.current_dir(&root).args(args);
        env.apply(&mut c);
        c
    };
    // The phases below build the workspace, which may relink target/debug/xtask with other
    // features than `cargo xtask` built it with (features unify over the packages built): the
    // xtask processes this run starts (the image build, the benchmark driver's image and setup
    // calls) would then find their own executable deleted. They run a copy that stays put.
    let own = SelfCopy::new()?;
    let xtask = |args: &[&str]| -> Result<Command> {
        let mut c = Command::new(&own.0);
        c.current_dir(&root).args(args);
        env.apply(&mut c);
        Ok(c)
    };
    let phase =
        |timings: &mut Vec<(String, Duration)>, name: &str, cmd: &mut Command| -> Result<()> {
            step(name);
            let t = Instant::now();
            let r = run(cmd).with_context(|| format!("phase failed: {name}"));
            timings.push((name.to_owned(), t.elapsed()));
            r
        };
    let limited = |timings: &mut Vec<(String, Duration)>,
                   name: &str,
                   cmd: &mut Command,
                   limit: Duration|
     -> Result<()> {
        step(&format!("{name} (limit {} min)", limit.as_secs() / 60));
        let t = Instant::now();
        let r = run_limited(cmd, limit).with_context(|| format!("phase failed: {name}"));
        timings.push((name.to_owned(), t.elapsed()));
        r
    };
    // The image (the build root, the pinned source build, the firmware) is built twice and
    // compared, beside the compiler: both are long, and neither alone keeps two cores busy all the
    // time. Build A (the compile cache reused) goes to out/cpu, where the image tests boot it;
    // build B compiles the runtime from scratch. Its output goes to a log file; its time is counted
    // from start to finish, overlapping the phases below.
    let log_path = setup::cache_dir().join("logs/ci-image-build.log");
    std::fs::create_dir_all(log_path.parent().expect("a logs folder"))?;
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    // reproduce clears out/cpu first, so an image left from an earlier run is never booted.
    let out = root.join("out/cpu");
    let mut image = xtask(&["image", "reproduce", "--flavor", "cpu", "--out"])?;
    image.arg(&out).stdout(log.try_clone()?).stderr(log);
    step(&format!(
        "{IMAGE_PHASE}, in the background (log: {})",
        log_path.display()
    ));
    let image = Background::spawn(&mut image).context("cannot start the image build")?;

    phase(
        timings,
        "cargo fmt --check",
        &mut cargo(&["fmt", "--all", "--check"]),
    )?;
    phase(
        timings,
        "cargo clippy -D warnings",
        &mut cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    phase(
        timings,
        "cargo test --workspace --no-run",
        &mut cargo(&["test", "--workspace", "--no-run"]),
    )?;
    // Everything that does not boot the image runs while the image is still building: the
    // unit, integration and doc tests, then the benchmark harness.
    let (without_image, with_image) = integration_tests(&root)?;
    let mut unit = vec!["test", "--workspace", "--no-fail-fast", "--lib", "--bins"];
    for t in &without_image {
        unit.extend(["--test", t.as_str()]);
    }
    // A failing phase does not stop the later ones (as --no-fail-fast within a phase): all
    // failures are reported together at the end.
    let mut failed = Vec::new();
    failed.extend(
        limited(
            timings,
            "cargo test --workspace: everything but the image tests",
            &mut cargo(&unit),
            TEST_LIMIT,
        )
        .err(),
    );
    failed.extend(
        limited(
            timings,
            "cargo test --workspace --doc",
            &mut cargo(&["test", "--workspace", "--doc"]),
            TEST_LIMIT,
        )
        .err(),
    );
    // Keeps the benchmark harness from rotting (issue 9).
    let mut c = xtask(&["bench", "--quick"])?;
    failed.extend(limited(timings, "cargo xtask bench --quick", &mut c, BENCH_LIMIT).err());
    // The fuzz targets on their committed corpora, 20 s each, still beside the image build
    // (issue 17). The nightly toolchain, cargo-fuzz and the instrumented build are cached (the
    // build in <cache>/fuzz-target), so only a cold cache pays for them.
    let mut c = xtask(&["fuzz", "--ci"])?;
    failed.extend(limited(timings, "cargo xtask fuzz --ci", &mut c, FUZZ_LIMIT).err());
    step("waiting for the image build");
    let waited = Instant::now();
    let (took, status) = image.wait()?;
    timings.push((format!("{IMAGE_PHASE} (beside the phases above)"), took));
    eprintln!(
        "the image was {}",
        match waited.elapsed().as_secs_f64() {
            w if w >= 1.0 => format!("ready {w:.0} s after the phases beside it"),
            _ => "ready before the phases beside it ended".into(),
        }
    );
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = if status.success() { 16 } else { 60 };
    eprintln!("{}", lines[lines.len().saturating_sub(tail)..].join("\n"));
    if !out.join("manifest.json").is_file() {
        bail!(
            "phase failed: {IMAGE_PHASE} ({status}) wrote no image to boot; log: {}",
            log_path.display()
        );
    }
    // Two builds that differ, or a failed build B, fail the run; the image tests still boot A.
    if !status.success() {
        failed.push(anyhow::anyhow!(
            "phase failed: {IMAGE_PHASE} ({status}); log: {}",
            log_path.display()
        ));
    }
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    let mut boot = vec!["test", "--workspace", "--no-fail-fast"];
    for t in &with_image {
        boot.extend(["--test", t.as_str()]);
    }
    failed.extend(
        limited(
            timings,
            "cargo test --workspace: the image tests",
            &mut cargo(&boot),
            IMAGE_TEST_LIMIT,
        )
        .err(),
    );
    match failed.len() {
        0 => Ok(()),
        1 => Err(failed.remove(0)),
        _ => bail!(
            "{}",
            failed
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// The integration tests that boot the cpu image (package, test target).
const IMAGE_TESTS: &[(&str, &str)] = &[
    ("chrysalis-host", "boot_image"),
    ("chrysalis-tests", "boot_smoke"),
    ("chrysalis-tests", "e2e"),
    // No VM, but the built image's configuration and model pack.
    ("chrysalis-tests", "serve_local"),
];

/// The workspace's integration test targets, split into those that do not boot the image and
/// those that do. Every test target lands in one of the two, so none is left out by the split.
fn integration_tests(root: &std::path::Path) -> Result<(Vec<String>, Vec<String>)> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root)
        .args(["metadata", "--no-deps", "--format-version", "1", "--locked"])
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata printed no JSON")?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let pkg_name = pkg["name"].as_str().unwrap_or_default();
        for target in pkg["targets"].as_array().into_iter().flatten() {
            let is_test = target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
            let Some(name) = target["name"].as_str().filter(|_| is_test) else {
                continue;
            };
            if IMAGE_TESTS.contains(&(pkg_name, name)) {
                with.push(name.to_owned());
            } else {
                without.push(name.to_owned());
            }
        }
    }
    if with.len() != IMAGE_TESTS.len() {
        bail!("cargo metadata lists the image tests {with:?}, expected all of {IMAGE_TESTS:?}");
    }
    // `--test NAME` selects that target in every package: a name shared across the split would
    // run on both sides, or be skipped by neither.
    if let Some(dup) = without.iter().find(|n| with.contains(n)) {
        bail!("the test target name {dup} is used by an image test and another test");
    }
    without.sort();
    without.dedup();
    Ok((without, with))
}

/// A copy of the running xtask executable, removed when dropped.
struct SelfCopy(std::path::PathBuf);

impl SelfCopy {
    fn new() -> Result<Self> {
        let exe = std::env::current_exe().context("the path of xtask")?;
        let dir = setup::cache_dir().join("tmp");
        std::fs::create_dir_all(&dir)?;
        let copy = dir.join(format!("xtask-{}", std::process::id()));
        std::fs::copy(&exe, &copy)
            .with_context(|| format!("cannot copy {} to {}", exe.display(), copy.display()))?;
        Ok(Self(copy))
    }
}

impl Drop for SelfCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Ceilings on the phases that run our own code: several times what they take on 2 cores, so only
/// a hang reaches them. A hung test then fails its phase by name instead of the whole CI job
/// running into the job's own limit with nothing said.
const TEST_LIMIT: Duration = Duration::from_secs(30 * 60);
const BENCH_LIMIT: Duration = Duration::from_secs(15 * 60);
/// A cold fuzz phase builds every target with the nightly toolchain before its 20 s runs.
const FUZZ_LIMIT: Duration = Duration::from_secs(30 * 60);
/// The image tests boot the image under TCG and generate with the real model: on a slow Xeon
/// host one chat takes minutes and the e2e suite (TDX and SNP chains) about 25 min.
const IMAGE_TEST_LIMIT: Duration = Duration::from_secs(50 * 60);

/// [`run`] with a time limit. Past it, the command and every process below it are killed. The
/// child stays in our process group, so Ctrl-C still reaches all of them.
fn run_limited(cmd: &mut Command, limit: Duration) -> Result<()> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{shown} failed with {status}");
            }
            return Ok(());
        }
        if started.elapsed() > limit {
            // Twice: a process may fork between the walk and the kill.
            for _ in 0..2 {
                for pid in descendants(child.id()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{shown} was still running after {} min and was killed; the test that hung is the \
                 one reported above as \"running for over 60 seconds\"",
                limit.as_secs() / 60
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every process below `root`, from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // stat is "pid (comm) state ppid …"; comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// A background phase. A thread waits for the child, so its duration ends when it exits, not when
/// the foreground phases get round to asking. Dropped on an early error, it waits for the child
/// (which cleans up after itself) rather than leaving it running behind the failed test command.
struct Background {
    started: Instant,
    waiter: Option<std::thread::JoinHandle<std::io::Result<(Instant, std::process::ExitStatus)>>>,
}

impl Background {
    fn spawn(cmd: &mut Command) -> std::io::Result<Background> {
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let waiter = std::thread::spawn(move || {
            let status = child.wait()?;
            Ok((Instant::now(), status))
        });
        Ok(Background {
            started,
            waiter: Some(waiter),
        })
    }

    fn wait(mut self) -> Result<(Duration, std::process::ExitStatus)> {
        let waiter = self.waiter.take().expect("waited once");
        let (ended, status) = waiter
            .join()
            .map_err(|_| anyhow::anyhow!("the thread waiting for the image build panicked"))?
            .context("waiting for the image build")?;
        Ok((ended - self.started, status))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            eprintln!("waiting for the background image build to finish before exiting");
            let _ = waiter.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_phase_ends_when_its_child_exits_not_when_it_is_asked() {
        let bg = Background::spawn(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let (took, status) = bg.wait().unwrap();
        assert_eq!(status.code(), Some(3));
        // The child exits at once; two seconds of foreground work must not be counted as its.
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn a_command_past_its_limit_is_killed_with_its_children() {
        // The shell's child writes its pid, then sleeps far past the limit.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sh -c 'echo $$ > {0}.tmp && mv {0}.tmp {0} && exec sleep 600' & wait",
            pidfile.display()
        );
        let t = Instant::now();
        let err = run_limited(
            Command::new("sh").args(["-c", &script]),
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert!(err.to_string().contains("was killed"), "{err:#}");
        assert!(t.elapsed() < Duration::from_secs(60));
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Reaped by init once killed; allow it a moment.
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat"));
            stat.map_or(true, |s| s.contains(") Z "))
        });
        assert!(gone, "the grandchild {grandchild} outlived the limit");
    }

    #[test]
    fn a_failing_command_is_an_error_and_a_passing_one_is_not() {
        run_limited(&mut Command::new("true"), Duration::from_secs(60)).unwrap();
        let err = run_limited(&mut Command::new("false"), Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().contains("failed"), "{err:#}");
    }
}
