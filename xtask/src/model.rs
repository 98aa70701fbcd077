//! `cargo xtask model pack FILE… --out DIR`: a model pack (erofs + dm-verity tree) and its description.
//!
//! The pack is made with the tools of a flavor's locked build root (mkfs.erofs, veritysetup) and that
//! flavor's timestamp, so the same files always give the same root hash, on any build machine.

use std::path::PathBuf;

use anyhow::{Context, Result};
use chrysalis_image::modelpack::{self, MODEL_PACK_FORMAT, ModelPack};
use clap::{Args, Subcommand};

use crate::image::{BuildRoot, Ui, load_flavor, load_lock, open_cache, write_atomic};

/// `cargo xtask model …`.
#[derive(Subcommand)]
pub(crate) enum ModelCmd {
    /// Pack model files into DIR/model.img (erofs + verity tree) and DIR/model-pack.json.
    Pack(PackArgs),
}

/// `model pack`.
#[derive(Args)]
pub(crate) struct PackArgs {
    /// Model files; each keeps its file name inside the pack (the guest sees /models/<name>).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Flavor whose build root tools and timestamp make the pack.
    #[arg(long, default_value = "cpu")]
    flavor: String,
}

pub(crate) fn run(cmd: ModelCmd) -> Result<()> {
    let ModelCmd::Pack(a) = cmd;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let ui = Ui::new();
    crate::image::ensure_tools(&ui)?;
    let (flavor, flavor_sha) = load_flavor(&a.flavor)?;
    let (lock, _) = load_lock(&flavor, &flavor_sha)?;
    let cache = open_cache()?;
    let root = BuildRoot::ensure(&ui, &cache, &lock)?;
    let work = cache.temp_dir()?;
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
    let refs: Vec<(String, &std::path::Path)> = inputs
        .iter()
        .map(|(n, p)| (n.clone(), p.as_path()))
        .collect();
    let step = ui.step(&format!("Packing {} file(s)", refs.len()));
    let stage = work.path().join("stage");
    let files = modelpack::stage_files(&refs, &stage)?;
    std::fs::create_dir_all(&a.out)?;
    let out = a.out.canonicalize()?;
    let log = work.path().join("model-pack.log");
    let (image, verity) = crate::image::verity_image(
        &ui,
        &root,
        flavor.source_date_epoch,
        &stage,
        "",
        "model",
        &out,
        "model.img",
        &log,
    )?;
    let pack = ModelPack {
        format: MODEL_PACK_FORMAT,
        image,
        files,
        verity,
    };
    write_atomic(&out.join("model-pack.json"), pack.to_json().as_bytes())?;
    step.done("");
    ui.say(format!(
        "{}/model.img: {} bytes, sha256 {}\nverity root hash {} (chrysalis.model_verity), salt {}, {} data blocks",
        out.display(),
        pack.image.size,
        pack.image.sha256,
        pack.verity.root_hash,
        pack.verity.salt,
        pack.verity.data_blocks
    ));
    Ok(())
}
