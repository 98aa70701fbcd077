//! `cargo xtask model pack FILE… --out DIR` and `cargo xtask image model-pack --from DIR`: a model pack
//! (erofs + dm-verity tree) and its description.
//!
//! The pack is made with the tools of a flavor's locked build root (mkfs.erofs, veritysetup) and that
//! flavor's timestamp, so the same files always give the same root hash, on any build machine.
//! `--from DIR` packs a local Hugging Face model directory (checked by
//! `chrysalis_image::modelpack::hf_directory`), which the gpu flavor's vLLM loads as `/models`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrysalis_image::modelpack::{self, MODEL_PACK_FORMAT, ModelPack, PackBuilder, PackLayout};
use clap::{Args, Subcommand};

use crate::image::{BuildRoot, Ui, load_flavor, load_lock, open_cache, repo_root, write_atomic};

/// `cargo xtask model …`.
#[derive(Subcommand)]
pub(crate) enum ModelCmd {
    /// Pack model files (or, with --from, a Hugging Face model directory) into DIR/model.img
    /// (erofs + verity tree) and DIR/model-pack.json.
    Pack(PackArgs),
}

/// `model pack`.
#[derive(Args)]
pub(crate) struct PackArgs {
    /// Model files; each keeps its file name inside the pack (the guest sees /models/<name>).
    #[arg(required_unless_present = "from", conflicts_with = "from")]
    files: Vec<PathBuf>,
    /// A local Hugging Face model directory instead of files (as `image model-pack --from`).
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
    /// With --from: the model id served (default: the directory's name).
    #[arg(long, requires = "from")]
    id: Option<String>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Flavor whose build root tools and timestamp make the pack (default: cpu for files, gpu for
    /// --from, whose vLLM is the engine that loads a Hugging Face directory).
    #[arg(long)]
    flavor: Option<String>,
}

/// `image model-pack`.
#[derive(Args)]
pub(crate) struct HfPackArgs {
    /// A local Hugging Face model directory: config.json, tokenizer.json or tokenizer.model,
    /// *.safetensors (no pickle weights).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The model id served (default: the directory's name).
    #[arg(long)]
    id: Option<String>,
    /// Output directory (default: out/model-packs/<the directory's name> in the repository).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Flavor whose build root tools and timestamp make the pack; an image build takes a pack
    /// only from its own flavor.
    #[arg(long, default_value = "gpu")]
    flavor: String,
}

pub(crate) fn run(cmd: ModelCmd) -> Result<()> {
    let ModelCmd::Pack(a) = cmd;
    match a.from {
        Some(dir) => pack_hf(&dir, a.id, &a.out, a.flavor.as_deref().unwrap_or("gpu")),
        None => {
            let inputs: Vec<(String, PathBuf)> = a
                .files
                .iter()
                .map(|f| {
                    let name = f
                        .file_name()
                        .with_context(|| format!("{} has no file name", f.display()))?;
                    Ok((name.to_string_lossy().into_owned(), f.clone()))
                })
                .collect::<Result<_>>()?;
            let ui = Ui::new();
            pack(
                &ui,
                a.flavor.as_deref().unwrap_or("cpu"),
                &inputs,
                &a.out,
                PackLayout::Files,
                None,
            )
        }
    }
}

/// `image model-pack --from DIR`.
pub(crate) fn run_hf(a: HfPackArgs) -> Result<()> {
    let name = dir_name(&a.from)?;
    let out = a
        .out
        .unwrap_or_else(|| repo_root().join("out/model-packs").join(&name));
    pack_hf(&a.from, a.id, &out, &a.flavor)
}

fn dir_name(dir: &Path) -> Result<String> {
    let canonical = dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", dir.display()))?;
    Ok(canonical
        .file_name()
        .with_context(|| format!("{} has no name", dir.display()))?
        .to_string_lossy()
        .into_owned())
}

fn pack_hf(dir: &Path, id: Option<String>, out: &Path, flavor: &str) -> Result<()> {
    let ui = Ui::new();
    let step = ui.step(&format!(
        "Checking the Hugging Face model directory {}",
        dir.display()
    ));
    let hf = modelpack::hf_directory(dir)?;
    let bytes: u64 = hf
        .files
        .iter()
        .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    step.done(format!(
        "{} files, {:.2} GiB{}",
        hf.files.len(),
        bytes as f64 / f64::from(1u32 << 30),
        if hf.skipped.is_empty() {
            String::new()
        } else {
            format!("; left out (hidden): {}", hf.skipped.join(", "))
        }
    ));
    let id = match id {
        Some(id) => id,
        None => dir_name(dir)?,
    };
    if id.is_empty() || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        anyhow::bail!("model id {id:?}: give one without spaces or control characters (--id)");
    }
    pack(
        &ui,
        flavor,
        &hf.files,
        out,
        PackLayout::HfDirectory,
        Some(id),
    )
}

fn pack(
    ui: &Ui,
    flavor: &str,
    inputs: &[(String, PathBuf)],
    out: &Path,
    layout: PackLayout,
    id: Option<String>,
) -> Result<()> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    crate::image::ensure_tools(ui)?;
    let (flavor, flavor_sha) = load_flavor(flavor)?;
    let (lock, _) = load_lock(&flavor, &flavor_sha)?;
    let cache = open_cache()?;
    let root = BuildRoot::ensure(ui, &cache, &lock)?;
    let work = cache.temp_dir()?;
    let versions = root.tool_versions(work.path())?;
    let refs: Vec<(String, &Path)> = inputs
        .iter()
        .map(|(n, p)| (n.clone(), p.as_path()))
        .collect();
    let step = ui.step(&format!("Packing {} file(s)", refs.len()));
    let stage = work.path().join("stage");
    let files = modelpack::stage_files(&refs, &stage)?;
    std::fs::create_dir_all(out)?;
    let out = out.canonicalize()?;
    let log = work.path().join("model-pack.log");
    let (image, verity) = crate::image::verity_image(
        ui,
        &root,
        flavor.source_date_epoch,
        &stage,
        "",
        "model",
        &out,
        "model.img",
        &log,
    )?;
    let tool = |name: &str| versions.get(name).cloned().unwrap_or_default();
    let pack = ModelPack {
        format: MODEL_PACK_FORMAT,
        image,
        files,
        verity,
        layout,
        id,
        builder: Some(PackBuilder {
            flavor: flavor.name.clone(),
            source_date_epoch: flavor.source_date_epoch,
            mkfs_erofs: tool("mkfs.erofs"),
            veritysetup: tool("veritysetup"),
        }),
    };
    write_atomic(&out.join("model-pack.json"), pack.to_json().as_bytes())?;
    step.done("");
    ui.say(format!(
        "{}/model.img: {} bytes, sha256 {}\nverity root hash {} (chrysalis.model_verity), salt {}, {} data blocks{}",
        out.display(),
        pack.image.size,
        pack.image.sha256,
        pack.verity.root_hash,
        pack.verity.salt,
        pack.verity.data_blocks,
        match layout {
            PackLayout::Files => String::new(),
            PackLayout::HfDirectory => format!(
                "\nimage with it: cargo xtask image build --flavor {} --model-pack {}",
                flavor.name,
                out.display()
            ),
        }
    ));
    Ok(())
}
