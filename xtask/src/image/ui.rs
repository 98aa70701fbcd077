//! Progress and logging for the image pipeline: numbered steps with timings, spinners while a tool runs,
//! its output in a log file (the tail is printed when it fails), and the final artifact table.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Console output for one pipeline run.
#[derive(Clone)]
pub(crate) struct Ui {
    multi: MultiProgress,
    start: Instant,
}

/// One running step.
pub(crate) struct Step {
    bar: ProgressBar,
    name: String,
    start: Instant,
    ui: Ui,
}

impl Ui {
    pub(crate) fn new() -> Self {
        Self {
            multi: MultiProgress::new(),
            start: Instant::now(),
        }
    }

    /// Prints a line above any bars.
    pub(crate) fn say(&self, msg: impl AsRef<str>) {
        let line = msg.as_ref();
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// Starts a step: prints its name and shows a spinner with the elapsed time.
    pub(crate) fn step(&self, name: &str) -> Step {
        self.say(format!("==> {name}"));
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("    {spinner} {msg} [{elapsed}]")
                .expect("valid template"),
        );
        bar.set_message(name.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Step {
            bar,
            name: name.into(),
            start: Instant::now(),
            ui: self.clone(),
        }
    }

    /// A byte progress bar (downloads).
    pub(crate) fn bytes_bar(&self, total: u64, msg: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "    {msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        bar.set_message(msg.to_owned());
        bar
    }

    /// Time since this UI was created.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Step {
    /// Updates the spinner's text.
    pub(crate) fn detail(&self, msg: impl AsRef<str>) {
        self.bar
            .set_message(format!("{}: {}", self.name, msg.as_ref()));
    }

    /// Finishes the step, printing its duration and an optional note.
    pub(crate) fn done(self, note: impl AsRef<str>) -> Duration {
        let took = self.start.elapsed();
        self.bar.finish_and_clear();
        let note = note.as_ref();
        let sep = if note.is_empty() { "" } else { ": " };
        self.ui.say(format!(
            "    done in {:.1} s{sep}{note}",
            took.as_secs_f64()
        ));
        took
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Runs `cmd` with stdout and stderr appended to `log`. On failure the error names `what`, the exit
/// status, the log and its last lines.
pub(crate) fn run_logged(mut cmd: Command, log: &Path, what: &str) -> Result<()> {
    let file = open_log(log)?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("cannot start {what} ({:?})", cmd.get_program()))?;
    if !status.success() {
        bail!(
            "{what} failed ({status}); log {}:\n{}",
            log.display(),
            tail(log, 40)
        );
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout (stderr goes to `log`).
pub(crate) fn run_capture(mut cmd: Command, log: &Path, what: &str) -> Result<String> {
    let file = open_log(log)?;
    let out = cmd
        .stdin(Stdio::null())
        .stderr(file)
        .output()
        .with_context(|| format!("cannot start {what} ({:?})", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    {
        let mut f = open_log(log)?;
        std::io::Write::write_all(&mut f, stdout.as_bytes())?;
    }
    if !out.status.success() {
        bail!(
            "{what} failed ({}); log {}:\n{}",
            out.status,
            log.display(),
            tail(log, 40)
        );
    }
    Ok(stdout)
}

fn open_log(log: &Path) -> Result<File> {
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log {}", log.display()))
}

fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Human size.
pub(crate) fn size(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// A table with left-aligned columns.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, header.to_vec());
    line(
        &mut out,
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for r in rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

/// A log file path under `dir`.
pub(crate) fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.log"))
}
