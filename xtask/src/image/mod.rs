//! `cargo xtask image …`: lock the inputs of a flavor, build its image, rebuild it twice and compare.
//!
//! The rules (lock format, cache, unpacking, verity, manifest) live in chrysalis-image; this module is the
//! pipeline: host tools, downloads, the build root, the steps in order, progress and timing.

mod build;
mod buildroot;
mod fetch;
mod lock;
mod reproduce;
mod tools;
mod ui;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrysalis_image::{Cache, Flavor, Lock, Sha256Digest};
use clap::{Args, Subcommand};

pub(crate) use build::verity_image;
pub(crate) use buildroot::BuildRoot;
pub(crate) use fetch::{Want, debian_archive, fetch_all};
pub(crate) use tools::ensure as ensure_tools;
pub(crate) use ui::Ui;

/// `cargo xtask image …`.
#[derive(Subcommand)]
pub(crate) enum ImageCmd {
    /// Resolve the flavor's inputs and write image/locks/<flavor>.lock (a deliberate refresh: needs the
    /// network, builds the source-built wheels to pin their hashes).
    Lock(FlavorArg),
    /// Build the image from the lock into --out (default out/<flavor>).
    Build(BuildArgs),
    /// Build twice from scratch in different directories, umasks, time zones and locales, and compare.
    Reproduce(ReproduceArgs),
    /// Install the host tools the builder needs (Debian: apt-get), then exit.
    Tools,
    /// Pack a local Hugging Face model directory (safetensors, config, tokenizer) into a model pack
    /// (erofs + dm-verity) for `image build --model-pack` (the same as `model pack --from`).
    ModelPack(crate::model::HfPackArgs),
}

/// The flavor to work on.
#[derive(Args, Clone)]
pub(crate) struct FlavorArg {
    /// Flavor name: image/flavors/<name>.toml.
    #[arg(long, default_value = "cpu")]
    pub(crate) flavor: String,
}

/// `image build`.
#[derive(Args, Clone)]
pub(crate) struct BuildArgs {
    #[command(flatten)]
    pub(crate) flavor: FlavorArg,
    /// Output directory (default: out/<flavor> in the repository).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Scratch directory (default: a fresh directory in the cache, removed afterwards).
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// Do not reuse the cached cargo target directory for the guest runtime (reproduce sets this).
    #[arg(long)]
    pub(crate) fresh: bool,
    /// Rebuild source-built wheels even when a verified copy is cached.
    #[arg(long)]
    pub(crate) rebuild_wheels: bool,
    /// Keep the scratch directory.
    #[arg(long)]
    pub(crate) keep_work: bool,
    /// Serve this model pack (made by `image model-pack --from` with this flavor) instead of the
    /// flavor's locked model: its root hash goes on the command line and into the manifest.
    #[arg(long, value_name = "DIR")]
    pub(crate) model_pack: Option<PathBuf>,
}

/// `image reproduce`.
#[derive(Args, Clone)]
pub(crate) struct ReproduceArgs {
    #[command(flatten)]
    pub(crate) flavor: FlavorArg,
    /// Also rebuild source-built wheels in both builds (slow) instead of using the verified cached one.
    #[arg(long)]
    pub(crate) rebuild_wheels: bool,
    /// Keep both builds' output (printed at the end).
    #[arg(long)]
    pub(crate) keep: bool,
    /// Write build A's output here and keep it (e.g. out/cpu, to boot it afterwards); default: a
    /// directory in the cache, removed at the end unless --keep.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Compile the runtime from scratch in build A too, not only in B (both builds then take the
    /// full compile time; the default reuses A's compile cache, which a cached CI run needs).
    #[arg(long)]
    pub(crate) both_fresh: bool,
    /// Both builds serve this model pack (see `image build --model-pack`).
    #[arg(long, value_name = "DIR")]
    pub(crate) model_pack: Option<PathBuf>,
}

pub(crate) fn run(cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Tools => tools::ensure(&Ui::new()),
        ImageCmd::Lock(a) => lock::run(&a.flavor),
        ImageCmd::Build(a) => build::run(&a),
        ImageCmd::Reproduce(a) => reproduce::run(&a),
        ImageCmd::ModelPack(a) => crate::model::run_hf(a),
    }
}

/// The repository root: `CHRYSALIS_REPO` when set (an installed xtask, e.g. from the flake), else the
/// checkout xtask was compiled in (it lives one level below the root).
pub(crate) fn repo_root() -> PathBuf {
    if let Some(r) = std::env::var_os("CHRYSALIS_REPO") {
        return PathBuf::from(r);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the repository")
        .to_owned()
}

/// The download and build cache (`$CHRYSALIS_CACHE`, default `~/.cache/chrysalis`).
pub(crate) fn open_cache() -> Result<Cache> {
    let root = crate::cache_root();
    Cache::open(&root).with_context(|| format!("cannot open the cache at {}", root.display()))
}

/// A flavor with its file's digest.
pub(crate) fn load_flavor(name: &str) -> Result<(Flavor, Sha256Digest)> {
    if !chrysalis_image::lock::is_simple_name(name) {
        bail!("flavor name {name:?}: use lowercase letters, digits and '-'");
    }
    let path = repo_root()
        .join("image/flavors")
        .join(format!("{name}.toml"));
    Ok(Flavor::load(&path)?)
}

/// Where a flavor's lock lives, relative to the repository root.
pub(crate) fn lock_rel_path(flavor: &str) -> String {
    format!("image/locks/{flavor}.lock")
}

/// The lock of a flavor, its text, checked against the flavor file.
pub(crate) fn load_lock(flavor: &Flavor, flavor_sha: &Sha256Digest) -> Result<(Lock, String)> {
    let rel = lock_rel_path(&flavor.name);
    let path = repo_root().join(&rel);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {rel}; create it with `cargo xtask image lock --flavor {}`",
            flavor.name
        )
    })?;
    let lock = Lock::parse(&text).with_context(|| format!("{rel} is not a valid lock"))?;
    if lock.flavor != flavor.name {
        bail!(
            "{rel} is the lock of flavor {:?}, not {:?}",
            lock.flavor,
            flavor.name
        );
    }
    if lock.flavor_sha256 != *flavor_sha {
        bail!(
            "{rel} was resolved from another version of image/flavors/{}.toml (lock records sha256 {}, the file \
             is {}); run `cargo xtask image lock --flavor {}`",
            flavor.name,
            lock.flavor_sha256,
            flavor_sha,
            flavor.name
        );
    }
    Ok((lock, text))
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no directory")?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    // Temporary files are created 0600; artifacts and locks are read by others (the host agent, git).
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    std::io::Write::write_all(&mut tmp, contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
