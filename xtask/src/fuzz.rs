//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` (libFuzzer, nightly toolchain).
//!
//! Steps: the nightly toolchain (installed with rustup when missing: only this command needs
//! it) and cargo-fuzz (built once per version into the cache, [`crate::setup::cargo_fuzz`]);
//! one instrumented build of every target; then each target in turn for a fixed time on a
//! scratch copy of its committed corpus `fuzz/corpus/<target>`. A crash fails the command with the
//! path of the input that crashed (kept under `fuzz/artifacts/<target>/`), after the other
//! targets have run.
//!
//! A normal run keeps what it learnt: the scratch corpus is minimised (libFuzzer `-merge=1`, what
//! `cargo fuzz cmin` does) and its inputs that the committed corpus lacks are added to it,
//! smallest first, while it stays within [`CORPUS_BUDGET`]; and the figures of each target (executions, coverage, features) go into the
//! table of `docs/fuzzing.md`. `--ci` runs every target for [`CI_SECONDS`] and writes nothing
//! into the repository.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::Digest as _;

use crate::setup::{self, run, step};

/// The toolchain cargo-fuzz builds with (`-Zsanitizer`, `-Cpasses=sancov-module` are nightly-only).
const NIGHTLY: &str = "nightly";
/// How long `--ci` runs each target.
pub(crate) const CI_SECONDS: u64 = 20;
/// Largest committed corpus of one target: a minimised corpus above it is not kept.
const CORPUS_BUDGET: u64 = 200 * 1024;
/// The table of `docs/fuzzing.md` lies between these lines.
const TABLE_START: &str = "<!-- fuzz-table:start (cargo xtask fuzz writes this table) -->";
const TABLE_END: &str = "<!-- fuzz-table:end -->";

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each target runs on a scratch copy of fuzz/corpus/<target>. Without --ci, the corpus it grew is \
minimised, and its new inputs join the committed corpus, smallest first, up to 200 KiB per target; and docs/fuzzing.md gets the run's figures: \
total executions, edges covered (libFuzzer's cov), features (ft). A crash's input is kept in \
fuzz/artifacts/<target>/; replay it with `cargo +nightly fuzz run --sanitizer none <target> \
<file>` in fuzz/. The instrumented build goes to <cache>/fuzz-target unless --target-dir says \
otherwise.")]
pub(crate) struct FuzzArgs {
    /// Minutes each target runs.
    #[arg(long, default_value_t = 1.0, conflicts_with = "ci")]
    minutes: f64,
    /// Only this target (repeat for several); default: every target in fuzz/Cargo.toml.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// CI mode: each target for 20 s on the committed corpus; writes nothing into the repository.
    #[arg(long)]
    ci: bool,
    /// Cargo target directory of the instrumented build.
    #[arg(long, env = "CHRYSALIS_FUZZ_TARGET_DIR")]
    target_dir: Option<PathBuf>,
}

/// What libFuzzer reported at the end of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Stats {
    /// Inputs executed.
    execs: u64,
    /// Coverage: edges (PCs) reached.
    cov: u64,
    /// Features (edges with hit-count buckets, comparisons, …).
    ft: u64,
    /// Executions per second.
    exec_per_sec: u64,
}

/// One target's outcome.
struct Outcome {
    target: String,
    seconds: u64,
    stats: Stats,
    corpus: String,
}

pub(crate) fn main(args: FuzzArgs) -> Result<()> {
    let root = crate::repo_root();
    let fuzz_dir = root.join("fuzz");
    let all = targets(&fuzz_dir)?;
    let targets = if args.targets.is_empty() {
        all
    } else {
        if let Some(t) = args.targets.iter().find(|t| !all.contains(t)) {
            bail!(
                "no fuzz target {t:?}; fuzz/Cargo.toml has {}",
                all.join(", ")
            );
        }
        args.targets.clone()
    };
    let seconds = if args.ci {
        CI_SECONDS
    } else if args.minutes > 0.0 {
        (args.minutes * 60.0).round().max(1.0) as u64
    } else {
        bail!("--minutes must be positive");
    };
    let cache = setup::cache_dir();
    let target_dir = args
        .target_dir
        .clone()
        .unwrap_or_else(|| cache.join("fuzz-target"));

    let t = Instant::now();
    ensure_nightly()?;
    let cargo_fuzz = setup::cargo_fuzz(&cache, false)?.0;
    step(&format!(
        "building {} fuzz targets (nightly, into {})",
        targets.len(),
        target_dir.display()
    ));
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let mut build = cargo_fuzz_cmd(&cargo_fuzz, &root);
    build
        .args([
            "build",
            "--sanitizer",
            "none",
            "--release",
            "--target",
            &triple,
        ])
        .arg("--fuzz-dir")
        .arg(&fuzz_dir)
        .arg("--target-dir")
        .arg(&target_dir);
    run(&mut build)?;
    eprintln!("prepared in {:.0} s", t.elapsed().as_secs_f64());

    let bin_dir = target_dir.join(&triple).join("release");
    let log_dir = target_dir.join("fuzz-logs");
    std::fs::create_dir_all(&log_dir)?;
    let mut outcomes = Vec::new();
    let mut crashes = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        step(&format!(
            "[{}/{}] {target} for {seconds} s",
            i + 1,
            targets.len()
        ));
        match run_target(&fuzz_dir, &bin_dir, &log_dir, target, seconds, !args.ci) {
            Ok(o) => {
                eprintln!(
                    "    {target}: {} executions ({} /s), cov {}, ft {}; corpus {}",
                    o.stats.execs, o.stats.exec_per_sec, o.stats.cov, o.stats.ft, o.corpus
                );
                outcomes.push(o);
            }
            Err(e) => {
                eprintln!("    {target}: FAILED: {e:#}");
                crashes.push(format!("{target}: {e:#}"));
            }
        }
    }
    if !args.ci && !outcomes.is_empty() {
        let doc = root.join("docs/fuzzing.md");
        update_doc(&doc, &outcomes, &today()?)?;
        eprintln!("wrote the figures to {}", doc.display());
    }
    if !crashes.is_empty() {
        bail!(
            "{} fuzz target(s) failed:\n{}",
            crashes.len(),
            crashes.join("\n")
        );
    }
    Ok(())
}

/// The `[[bin]]` names of fuzz/Cargo.toml, in order.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let path = fuzz_dir.join("Cargo.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let manifest: toml::Table = text
        .parse()
        .with_context(|| format!("parse {}", path.display()))?;
    let names: Vec<String> = manifest
        .get("bin")
        .and_then(|b| b.as_array())
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect();
    if names.is_empty() {
        bail!("{} lists no [[bin]] targets", path.display());
    }
    Ok(names)
}

/// The nightly toolchain, installed (minimal profile) when rustup has none.
fn ensure_nightly() -> Result<()> {
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("cannot run rustup: cargo xtask fuzz needs rustup for a nightly toolchain")?;
    let listed = String::from_utf8_lossy(&list.stdout);
    if listed
        .lines()
        .any(|l| l.starts_with(&format!("{NIGHTLY}-")))
    {
        return Ok(());
    }
    step(&format!(
        "installing the {NIGHTLY} toolchain (cargo fuzz needs it)"
    ));
    run(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))
}

/// cargo-fuzz as `cargo fuzz` runs it, on the nightly toolchain. The variables of the stable
/// cargo that runs xtask must not leak into the nightly build.
fn cargo_fuzz_cmd(cargo_fuzz: &Path, root: &Path) -> Command {
    let mut c = Command::new(cargo_fuzz);
    c.arg("fuzz")
        .current_dir(root)
        .env("RUSTUP_TOOLCHAIN", NIGHTLY);
    for k in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "CARGO_TARGET_DIR",
        "RUSTC_WRAPPER",
    ] {
        c.env_remove(k);
    }
    c
}

/// Runs one target for `seconds` on a scratch copy of its corpus; with `keep`, the minimised
/// corpus replaces the committed one when it fits [`CORPUS_BUDGET`].
fn run_target(
    fuzz_dir: &Path,
    bin_dir: &Path,
    log_dir: &Path,
    target: &str,
    seconds: u64,
    keep: bool,
) -> Result<Outcome> {
    let bin = bin_dir.join(target);
    if !bin.is_file() {
        bail!("the build left no {}", bin.display());
    }
    let committed = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&committed)?;
    let scratch = tempfile::tempdir().context("a scratch directory")?;
    let work = scratch.path().join("corpus");
    copy_dir(&committed, &work)?;
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)?;
    let log_path = log_dir.join(format!("{target}.log"));
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;

    let mut cmd = Command::new(&bin);
    cmd.arg(&work)
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let mut text = String::new();
    let mut last_shown = Instant::now();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading libFuzzer's output")?;
        writeln!(log, "{line}")?;
        // Progress: libFuzzer's pulses at most every 10 s, and anything that is not a routine
        // corpus line (a crash report, the final stats).
        let routine = line.starts_with('#')
            && ["NEW", "REDUCE", "RELOAD", "pulse", "INITED", "DONE"]
                .iter()
                .any(|w| line.contains(w));
        let pulse = line.starts_with('#') && line.contains("pulse");
        let routine = routine || line.trim_start().starts_with("NEW_FUNC");
        if (!routine && !line.starts_with("INFO:") && !line.starts_with("stat::"))
            || (pulse && last_shown.elapsed() >= Duration::from_secs(10))
        {
            eprintln!("    {line}");
            last_shown = Instant::now();
        }
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait()?;
    if let Some(crash) = crash_artifact(&text) {
        bail!(
            "crashed ({status}); input: {crash}; log: {}",
            log_path.display()
        );
    }
    if !status.success() {
        bail!(
            "libFuzzer exited with {status}; log: {}",
            log_path.display()
        );
    }
    let stats =
        parse_stats(&text).with_context(|| format!("no final stats in {}", log_path.display()))?;

    let corpus = if keep {
        keep_corpus(&bin, scratch.path(), &work, &committed, log_dir, target)?
    } else {
        let (n, bytes) = dir_size(&committed)?;
        format!("{n} files, {} KiB (unchanged, --ci)", bytes.div_ceil(1024))
    };
    Ok(Outcome {
        target: target.to_owned(),
        seconds,
        stats,
        corpus,
    })
}

/// Minimises `work` (libFuzzer `-merge=1`) and adds to the committed corpus the inputs of the
/// minimised one that it lacks, smallest first, while the corpus stays within [`CORPUS_BUDGET`].
/// Committed inputs are never removed (the seeds among them reach the deep paths), so the corpus
/// grows to the budget and then stays; each file is written beside its place and renamed into
/// it. Returns a summary.
fn keep_corpus(
    bin: &Path,
    scratch: &Path,
    work: &Path,
    committed: &Path,
    log_dir: &Path,
    target: &str,
) -> Result<String> {
    let merged = scratch.join("merged");
    std::fs::create_dir_all(&merged)?;
    let log = std::fs::File::create(log_dir.join(format!("{target}.merge.log")))?;
    let status = Command::new(bin)
        .arg("-merge=1")
        .arg(&merged)
        .arg(work)
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()?;
    if !status.success() {
        bail!("minimising the corpus failed ({status})");
    }
    let have: std::collections::HashSet<Vec<u8>> = files(committed)?
        .iter()
        .map(|(p, _)| std::fs::read(p).map(|b| sha2::Sha256::digest(b).to_vec()))
        .collect::<std::io::Result<_>>()?;
    let mut candidates: Vec<(u64, PathBuf)> = Vec::new();
    for (p, len) in files(&merged)? {
        if !have.contains(&sha2::Sha256::digest(std::fs::read(&p)?).to_vec()) {
            candidates.push((len, p));
        }
    }
    let (minimised, _) = dir_size(&merged)?;
    let picked = pick_within(candidates, dir_size(committed)?.1, CORPUS_BUDGET);
    for p in &picked {
        let name = p.file_name().expect("a file name");
        let tmp = committed.join(format!(".{}.tmp", name.to_string_lossy()));
        std::fs::copy(p, &tmp)?;
        std::fs::rename(&tmp, committed.join(name))?;
    }
    let (n, bytes) = dir_size(committed)?;
    Ok(format!(
        "{n} files, {} KiB (+{} of the {minimised} minimised)",
        bytes.div_ceil(1024),
        picked.len()
    ))
}

/// The smallest of `candidates` (size, path) that fit in `budget` beside `used` bytes.
fn pick_within(mut candidates: Vec<(u64, PathBuf)>, mut used: u64, budget: u64) -> Vec<PathBuf> {
    candidates.sort();
    let mut picked = Vec::new();
    for (len, p) in candidates {
        if used + len > budget {
            break;
        }
        used += len;
        picked.push(p);
    }
    picked
}

/// The plain files of a directory with their sizes.
fn files(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_file() {
            out.push((e.path(), m.len()));
        }
    }
    Ok(out)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Files and bytes in a directory (not recursive).
fn dir_size(dir: &Path) -> Result<(usize, u64)> {
    let f = files(dir)?;
    Ok((f.len(), f.iter().map(|(_, n)| n).sum()))
}

/// The path of the input libFuzzer saved after a crash, leak, timeout or out-of-memory.
fn crash_artifact(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let (_, rest) = l.split_once("Test unit written to ")?;
        Some(rest.trim().to_owned())
    })
}

/// The final figures of a libFuzzer run: executions from `stat::number_of_executed_units` (else
/// the last status line's `#N`), cov and ft from the last status line that has them.
fn parse_stats(output: &str) -> Option<Stats> {
    let mut stats = Stats::default();
    let mut status_seen = false;
    let mut execs_stat = None;
    for line in output.lines() {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            execs_stat = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            stats.exec_per_sec = v.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.split_whitespace();
            let Some(n) = words.next().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let words: Vec<&str> = words.collect();
            let field = |name: &str| {
                words
                    .windows(2)
                    .find(|w| w[0] == name)
                    .and_then(|w| w[1].parse::<u64>().ok())
            };
            if let (Some(cov), Some(ft)) = (field("cov:"), field("ft:")) {
                stats.execs = n;
                stats.cov = cov;
                stats.ft = ft;
                status_seen = true;
            }
        }
    }
    if let Some(n) = execs_stat {
        stats.execs = n;
    }
    status_seen.then_some(stats)
}

/// Today's date (UTC), as the table shows it.
fn today() -> Result<String> {
    let now = time::OffsetDateTime::now_utc();
    Ok(format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    ))
}

/// Replaces the rows of the targets in `outcomes` in the table of `doc` (other rows stay, sorted
/// by target), writing a temporary file beside it and renaming it into place.
fn update_doc(doc: &Path, outcomes: &[Outcome], date: &str) -> Result<()> {
    let text = std::fs::read_to_string(doc).with_context(|| format!("read {}", doc.display()))?;
    let updated = with_rows(&text, outcomes, date)
        .with_context(|| format!("{} has no {TABLE_START} … {TABLE_END} block", doc.display()))?;
    let tmp = doc.with_extension("md.tmp");
    std::fs::write(&tmp, updated).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, doc).with_context(|| format!("rename to {}", doc.display()))?;
    Ok(())
}

const HEADER: &str = "| target | minutes | executions | exec/s | cov (edges) | ft (features) | corpus after the run | date |\n|---|---:|---:|---:|---:|---:|---|---|";

fn with_rows(text: &str, outcomes: &[Outcome], date: &str) -> Option<String> {
    let (before, rest) = text.split_once(TABLE_START)?;
    let (table, after) = rest.split_once(TABLE_END)?;
    let mut rows: Vec<(String, String)> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| target "))
        .filter_map(|l| {
            let name = l
                .trim_start_matches("| ")
                .split(" |")
                .next()?
                .trim_matches('`');
            Some((name.to_owned(), l.to_owned()))
        })
        .filter(|(name, _)| !outcomes.iter().any(|o| &o.target == name))
        .collect();
    for o in outcomes {
        let minutes = o.seconds as f64 / 60.0;
        rows.push((
            o.target.clone(),
            format!(
                "| `{}` | {} | {} | {} | {} | {} | {} | {date} |",
                o.target,
                if minutes.fract() == 0.0 {
                    format!("{minutes:.0}")
                } else {
                    format!("{minutes:.2}")
                },
                o.stats.execs,
                o.stats.exec_per_sec,
                o.stats.cov,
                o.stats.ft,
                o.corpus
            ),
        ));
    }
    rows.sort();
    let body: Vec<String> = rows.into_iter().map(|(_, r)| r).collect();
    Some(format!(
        "{before}{TABLE_START}\n{HEADER}\n{}\n{TABLE_END}{after}",
        body.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "\
INFO: Running with entropic power schedule (0xFF, 100).
INFO: Seed: 1234
#2\tINITED cov: 310 ft: 311 corp: 1/1b exec/s: 0 rss: 30Mb
#3\tNEW    cov: 312 ft: 315 corp: 2/5b lim: 4 exec/s: 0 rss: 30Mb L: 4/4 MS: 1 InsertByte-
#262144\tpulse  cov: 900 ft: 2100 corp: 80/3Kb lim: 260 exec/s: 87381 rss: 60Mb
#1048576\tDONE   cov: 1024 ft: 4321 corp: 120/6Kb lim: 4096 exec/s: 17476 rss: 70Mb
Done 1048576 runs in 61 second(s)
stat::number_of_executed_units: 1048577
stat::average_exec_per_sec:     17189
stat::new_units_added:          119
stat::slowest_unit_time_sec:    0
stat::peak_rss_mb:              70
";

    #[test]
    fn final_stats_come_from_the_stat_lines_and_the_last_status_line() {
        let s = parse_stats(RUN).unwrap();
        assert_eq!(
            s,
            Stats {
                execs: 1_048_577,
                cov: 1024,
                ft: 4321,
                exec_per_sec: 17189
            }
        );
    }

    #[test]
    fn without_stat_lines_the_status_line_counts_and_without_status_there_are_no_stats() {
        let cut: String = RUN.lines().take(6).map(|l| format!("{l}\n")).collect();
        let s = parse_stats(&cut).unwrap();
        assert_eq!((s.execs, s.cov, s.ft), (1_048_576, 1024, 4321));
        assert_eq!(parse_stats("INFO: Seed: 1\n#12 not a status line\n"), None);
    }

    #[test]
    fn a_crash_names_its_artifact() {
        let out = "\
thread '<unnamed>' panicked at fuzz_targets/x.rs:3:5:
==1234== ERROR: libFuzzer: deadly signal
artifact_prefix='/r/fuzz/artifacts/x/'; Test unit written to /r/fuzz/artifacts/x/crash-da39a3ee
Base64: AA==
";
        assert_eq!(
            crash_artifact(out).as_deref(),
            Some("/r/fuzz/artifacts/x/crash-da39a3ee")
        );
        assert_eq!(crash_artifact(RUN), None);
    }

    #[test]
    fn the_smallest_new_inputs_are_kept_within_the_budget() {
        let c = |n: u64, p: &str| (n, PathBuf::from(p));
        let picked = pick_within(vec![c(50, "b"), c(10, "a"), c(45, "c"), c(1, "d")], 40, 100);
        assert_eq!(
            picked,
            [PathBuf::from("d"), PathBuf::from("a"), PathBuf::from("c")]
        );
        assert!(pick_within(vec![c(61, "x")], 40, 100).is_empty());
    }

    fn outcome(target: &str, execs: u64) -> Outcome {
        Outcome {
            target: target.into(),
            seconds: 60,
            stats: Stats {
                execs,
                cov: 10,
                ft: 20,
                exec_per_sec: 5,
            },
            corpus: "3 files, 1 KiB".into(),
        }
    }

    #[test]
    fn rows_of_the_targets_run_are_replaced_and_the_others_kept_in_order() {
        let doc = format!("# Fuzzing\n\nintro\n\n{TABLE_START}\n{TABLE_END}\n\nafter\n");
        let one = with_rows(&doc, &[outcome("b", 1), outcome("a", 2)], "2026-01-01").unwrap();
        let two = with_rows(&one, &[outcome("b", 7)], "2026-01-02").unwrap();
        let rows: Vec<&str> = two.lines().filter(|l| l.starts_with("| `")).collect();
        assert_eq!(
            rows,
            [
                "| `a` | 1 | 2 | 5 | 10 | 20 | 3 files, 1 KiB | 2026-01-01 |",
                "| `b` | 1 | 7 | 5 | 10 | 20 | 3 files, 1 KiB | 2026-01-02 |",
            ]
        );
        assert!(two.starts_with("# Fuzzing\n\nintro\n\n") && two.ends_with("\n\nafter\n"));
        assert_eq!(two.matches("| target |").count(), 1);
        assert!(with_rows("no table", &[], "2026-01-01").is_none());
    }
}
