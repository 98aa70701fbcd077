//! `cargo xtask firmware build|reproduce`: the confidential-VM firmware from pinned edk2 sources.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrysalis_image::firmware::{
    self, AptFetcher, BuildOptions, BuiltFirmware, DirFetcher, Fetcher, HostEnv, Platform,
    Progress, SourceLock,
};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

/// Firmware tasks.
#[derive(Debug, Subcommand)]
pub(crate) enum FirmwareCommand {
    /// Build the firmware images (or take them from the cache) and copy them to --out.
    Build(BuildArgs),
    /// Build twice from scratch in different directories (other path length, job count) and
    /// compare the images byte for byte.
    Reproduce(CommonArgs),
}

/// Which platforms to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PlatformArg {
    /// AMD SEV-SNP (OvmfPkg/AmdSev).
    Snp,
    /// Intel TDX (OvmfPkg/IntelTdx).
    Tdx,
    /// Both.
    All,
}

impl PlatformArg {
    fn platforms(self) -> Vec<Platform> {
        match self {
            Self::Snp => vec![Platform::Snp],
            Self::Tdx => vec![Platform::Tdx],
            Self::All => firmware::BUILD_ORDER.to_vec(),
        }
    }
}

/// Options shared by the firmware tasks.
#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    /// Platform(s) to build.
    #[arg(long, value_enum, default_value = "all")]
    platform: PlatformArg,
    /// Cache directory (sources, built images, work trees).
    #[arg(long, env = "CHRYSALIS_CACHE")]
    cache: Option<PathBuf>,
    /// The lock file pinning the edk2 sources.
    #[arg(long)]
    lock: Option<PathBuf>,
    /// Parallel jobs for make and edk2's build (the images do not depend on it).
    #[arg(long, short = 'n', default_value_t = 2)]
    jobs: u32,
    /// Take the pinned source files from this folder instead of apt (they are verified all the same).
    #[arg(long)]
    sources: Option<PathBuf>,
    /// Do not install missing build tools with apt-get; fail instead.
    #[arg(long)]
    no_install: bool,
}

/// Options of `firmware build`.
#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Where to copy the images and their JSON records.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Build even if the cache holds the images, and compare with the cached hashes.
    #[arg(long)]
    rebuild: bool,
    /// Parent directory for the temporary edk2 tree (default: <cache>/work).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the edk2 tree after a successful build.
    #[arg(long)]
    keep_work: bool,
}

/// Runs a firmware task.
pub(crate) fn run(cmd: FirmwareCommand) -> anyhow::Result<()> {
    match cmd {
        FirmwareCommand::Build(args) => build(args),
        FirmwareCommand::Reproduce(args) => reproduce(args),
    }
}

struct Setup {
    lock: SourceLock,
    fetcher: Box<dyn Fetcher>,
    cache: PathBuf,
}

fn setup(common: &CommonArgs) -> anyhow::Result<Setup> {
    let root = crate::repo_root();
    let lock_path = common
        .lock
        .clone()
        .unwrap_or_else(|| root.join("image/lock/firmware.toml"));
    let lock = SourceLock::load(&lock_path)?;
    let fetcher: Box<dyn Fetcher> = match &common.sources {
        Some(dir) => Box::new(DirFetcher(dir.clone())),
        None => Box::new(AptFetcher),
    };
    let cache = common.cache.clone().unwrap_or_else(crate::cache_root);
    let cache = std::path::absolute(&cache)
        .with_context(|| format!("resolving cache directory {}", cache.display()))?;
    Ok(Setup {
        lock,
        fetcher,
        cache,
    })
}

fn options(common: &CommonArgs, cache: &Path) -> BuildOptions {
    BuildOptions {
        platforms: common.platform.platforms(),
        cache_dir: cache.to_owned(),
        work_dir: None,
        jobs: common.jobs,
        rebuild: false,
        keep_work: false,
        install_tools: !common.no_install,
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let s = setup(&args.common)?;
    let mut opts = options(&args.common, &s.cache);
    opts.rebuild = args.rebuild;
    opts.work_dir = args.work_dir.clone();
    opts.keep_work = args.keep_work;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| crate::repo_root().join("out/firmware"));
    let started = Instant::now();
    let progress = BarProgress::new();
    let built = firmware::build(&s.lock, &HostEnv, s.fetcher.as_ref(), &opts, &progress)?;
    let written = firmware::export(&built, &out)?;
    print_table(&built, started.elapsed());
    for path in written {
        println!("wrote {}", path.display());
    }
    let mut differs = false;
    for b in &built {
        if let Some(cached) = &b.cached_sha256 {
            if cached == &b.record.sha256 {
                println!(
                    "{}: rebuilt image is identical to the cached one",
                    b.record.platform
                );
            } else {
                differs = true;
                println!(
                    "{}: rebuilt image DIFFERS from the cached one: cached {cached}, rebuilt {} ({})",
                    b.record.platform,
                    b.record.sha256,
                    b.path.display()
                );
            }
        }
    }
    if differs {
        bail!("a rebuild differs from the cached image: the build is not reproducible here");
    }
    Ok(())
}

fn reproduce(common: CommonArgs) -> anyhow::Result<()> {
    let s = setup(&common)?;
    let base = s.cache.join("reproduce");
    // Different absolute paths of different lengths, and different job counts.
    let runs = [
        (base.join("a"), common.jobs.max(1)),
        (
            base.join("b-a-longer-directory-name-so-that-every-build-path-moves"),
            common.jobs.max(1) + 1,
        ),
    ];
    let mut results = Vec::new();
    for (dir, jobs) in &runs {
        let mut opts = options(&common, &s.cache);
        opts.rebuild = true;
        opts.work_dir = Some(dir.clone());
        opts.jobs = *jobs;
        println!("== build in {} with {jobs} jobs", dir.display());
        let started = Instant::now();
        let built = firmware::build(
            &s.lock,
            &HostEnv,
            s.fetcher.as_ref(),
            &opts,
            &BarProgress::new(),
        )?;
        print_table(&built, started.elapsed());
        // Keep each run's images: the cache keeps only one entry per key.
        let written = firmware::export(&built, &dir.join("out"))?;
        results.push(built.into_iter().zip(written).collect::<Vec<_>>());
    }
    let mut identical = true;
    for (a, b) in results[0].iter().zip(&results[1]) {
        let p = a.0.record.platform;
        if a.0.record.sha256 == b.0.record.sha256 {
            println!("{p}: identical, sha256 {}", a.0.record.sha256);
        } else {
            identical = false;
            println!(
                "{p}: DIFFERENT\n  {} {}\n  {} {}",
                a.0.record.sha256,
                a.1.display(),
                b.0.record.sha256,
                b.1.display()
            );
            println!(
                "  compare with: diffoscope {} {}",
                a.1.display(),
                b.1.display()
            );
        }
    }
    if !identical {
        bail!("the two builds differ");
    }
    Ok(())
}

fn print_table(built: &[BuiltFirmware], elapsed: Duration) {
    println!(
        "{:<4} {:<12} {:>9}  {:<64}  {:>8}  source",
        "plat", "file", "bytes", "sha256", "build s"
    );
    for b in built {
        let r = &b.record;
        println!(
            "{:<4} {:<12} {:>9}  {:<64}  {:>8.0}  {}",
            r.platform.as_str(),
            r.file,
            r.size,
            r.sha256,
            r.build_seconds,
            if b.from_cache { "cache" } else { "built" }
        );
    }
    println!("total {:.0} s", elapsed.as_secs_f64());
}

/// Progress on the terminal: one spinner per step with the elapsed time and the latest output,
/// or plain lines when stderr is not a terminal.
struct BarProgress {
    bar: RefCell<Option<ProgressBar>>,
    modules: RefCell<usize>,
    tty: bool,
}

impl BarProgress {
    fn new() -> Self {
        Self {
            bar: RefCell::new(None),
            modules: RefCell::new(0),
            tty: std::io::stderr().is_terminal(),
        }
    }
}

impl Progress for BarProgress {
    fn step(&self, name: &str) {
        *self.modules.borrow_mut() = 0;
        if !self.tty {
            eprintln!("-- {name}");
            return;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed_precise}] {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(name.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.bar.borrow_mut() = Some(bar);
    }

    fn line(&self, line: &str) {
        // edk2 announces each module it builds; compiler command lines are too long to show.
        let shown = if let Some(module) = line.strip_prefix("Building ... ") {
            *self.modules.borrow_mut() += 1;
            format!("module {}: {module}", self.modules.borrow())
        } else if line.starts_with('"') || line.len() > 160 {
            return;
        } else {
            line.to_owned()
        };
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.set_message(shown);
        }
    }

    fn done(&self, name: &str, elapsed: Duration) {
        match self.bar.borrow_mut().take() {
            Some(bar) => bar.finish_with_message(format!("done in {:.0} s", elapsed.as_secs_f64())),
            None => eprintln!("-- {name}: done in {:.0} s", elapsed.as_secs_f64()),
        }
    }

    fn note(&self, message: &str) {
        match self.bar.borrow().as_ref() {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
}
