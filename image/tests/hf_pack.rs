//! Model packs of Hugging Face directories: what `modelpack::hf_directory` refuses, and that packing a
//! tiny generated directory twice gives the same image bytes and verity root while one changed byte
//! of a weight gives another root.
//!
//! The packing test runs mkfs.erofs and veritysetup from the host (`apt-get install erofs-utils
//! cryptsetup-bin`) through the same `verity::erofs_with_verity` the image build runs in the locked
//! build root. When they are missing it prints why and passes, except under `CI=true`, where it
//! fails. erofs-utils before 1.7 (bookworm's 1.5) has neither `-b` (its blocks are the page size,
//! 4 KiB) nor `--all-time` (its `-T` already applies to every file); the host runner drops those two
//! arguments for it and passes everything else as the build does.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrysalis_image::Sha256Digest;
use chrysalis_image::modelpack::{self, HfDirectory, ModelPackError};
use chrysalis_image::verity::{self, ErofsJob, ImageTools, VerityParams};

const EPOCH: u64 = 1_767_225_600;

/// A safetensors file holding one f32 tensor `w` of `values.len()` elements.
fn safetensors(values: &[f32]) -> Vec<u8> {
    let n = values.len() * 4;
    let mut header =
        format!(r#"{{"__metadata__":{{"format":"pt"}},"w":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{n}]}}}}"#, values.len())
            .into_bytes();
    // The format pads its header with spaces to a multiple of 8.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// A tiny Hugging Face model directory: config, tokenizer, one safetensors file, and the hidden
/// files `huggingface-cli download --local-dir` leaves.
fn tiny_model(dir: &Path) {
    fs::create_dir_all(dir.join(".cache/huggingface")).unwrap();
    fs::write(dir.join(".cache/huggingface/.gitignore"), "*\n").unwrap();
    fs::write(dir.join(".gitattributes"), "*.safetensors filter=lfs\n").unwrap();
    fs::write(
        dir.join("config.json"),
        r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4,"vocab_size":2}"#,
    )
    .unwrap();
    fs::write(
        dir.join("tokenizer.json"),
        r#"{"version":"1.0","model":{"type":"WordLevel","vocab":{"a":0,"b":1},"unk_token":"a"}}"#,
    )
    .unwrap();
    fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"chat_template":"{{ messages }}"}"#,
    )
    .unwrap();
    fs::write(
        dir.join("model.safetensors"),
        safetensors(&[0.5, -1.0, 2.0, 0.25]),
    )
    .unwrap();
}

fn names(d: &HfDirectory) -> Vec<&str> {
    d.files.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn a_model_directory_lists_its_top_level_files_sorted_without_hidden_ones() {
    let t = tempfile::tempdir().unwrap();
    tiny_model(t.path());
    let d = modelpack::hf_directory(t.path()).unwrap();
    assert_eq!(
        names(&d),
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    assert_eq!(d.skipped, [".cache", ".gitattributes"]);
}

#[test]
fn pickle_weights_are_refused_by_name() {
    for name in [
        "pytorch_model.bin",
        "consolidated.00.PTH",
        "training_args.bin",
        "x.ckpt",
        "x.pkl",
    ] {
        let t = tempfile::tempdir().unwrap();
        tiny_model(t.path());
        fs::write(t.path().join(name), b"\x80\x02}q\x00.").unwrap();
        match modelpack::hf_directory(t.path()) {
            Err(ModelPackError::PickleWeights(p)) => assert_eq!(p, t.path().join(name)),
            other => panic!("{name}: {other:?}"),
        }
    }
}

fn missing(dir: &Path) -> String {
    match modelpack::hf_directory(dir) {
        Err(e @ ModelPackError::Missing { .. }) => e.to_string(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_directory_without_config_tokenizer_or_safetensors_is_refused() {
    let t = tempfile::tempdir().unwrap();
    tiny_model(t.path());
    fs::remove_file(t.path().join("config.json")).unwrap();
    assert!(missing(t.path()).contains("config.json"));

    let t = tempfile::tempdir().unwrap();
    tiny_model(t.path());
    fs::remove_file(t.path().join("tokenizer.json")).unwrap();
    assert!(missing(t.path()).contains("tokenizer.json or tokenizer.model"));
    // A SentencePiece model is a tokenizer too.
    fs::write(t.path().join("tokenizer.model"), b"\x0a\x01a").unwrap();
    modelpack::hf_directory(t.path()).unwrap();

    let t = tempfile::tempdir().unwrap();
    tiny_model(t.path());
    fs::remove_file(t.path().join("model.safetensors")).unwrap();
    assert!(missing(t.path()).contains("*.safetensors"));
}

#[test]
fn every_shard_the_index_names_must_be_there() {
    let t = tempfile::tempdir().unwrap();
    tiny_model(t.path());
    fs::rename(
        t.path().join("model.safetensors"),
        t.path().join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    fs::write(
        t.path().join("model.safetensors.index.json"),
        r#"{"metadata":{"total_size":32},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = missing(t.path());
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    fs::write(
        t.path().join("model-00002-of-00002.safetensors"),
        safetensors(&[1.0]),
    )
    .unwrap();
    modelpack::hf_directory(t.path()).unwrap();
}

#[test]
fn a_truncated_or_foreign_safetensors_file_is_refused() {
    let t = tempfile::tempdir().unwrap();
    tiny_model(t.path());
    let path = t.path().join("model.safetensors");
    let full = fs::read(&path).unwrap();
    for bad in [
        &full[..full.len() - 1],
        b"GGUF\x03\x00\x00\x00....",
        b"\x01",
    ] {
        fs::write(&path, bad).unwrap();
        match modelpack::hf_directory(t.path()) {
            Err(ModelPackError::Malformed { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn links_must_stay_inside_and_subdirectories_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let dir = t.path().join("m");
    tiny_model(&dir);
    // A link within the directory (to a hidden file, as a blob store would be) is followed.
    fs::create_dir(dir.join(".blobs")).unwrap();
    fs::rename(dir.join("model.safetensors"), dir.join(".blobs/abc")).unwrap();
    std::os::unix::fs::symlink(".blobs/abc", dir.join("model.safetensors")).unwrap();
    modelpack::hf_directory(&dir).unwrap();
    // One to a file outside is refused, naming the link.
    fs::write(outside.path().join("generation_config.json"), "{}").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("generation_config.json"),
        dir.join("generation_config.json"),
    )
    .unwrap();
    match modelpack::hf_directory(&dir) {
        Err(ModelPackError::Refused { path, reason }) => {
            assert_eq!(path, dir.join("generation_config.json"));
            assert!(reason.contains("outside"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    fs::remove_file(dir.join("generation_config.json")).unwrap();
    fs::create_dir(dir.join("original")).unwrap();
    assert!(matches!(
        modelpack::hf_directory(&dir),
        Err(ModelPackError::Refused { path, .. }) if path == dir.join("original")
    ));
}

/// mkfs.erofs and veritysetup on the host (see the file's documentation for erofs-utils < 1.7).
struct HostTools {
    old_erofs: bool,
}

impl HostTools {
    /// The host's tools, or why they cannot run this test.
    fn new() -> Result<Self, String> {
        for (tool, arg) in [("mkfs.erofs", "--help"), ("veritysetup", "--version")] {
            if Command::new(tool).arg(arg).output().is_err() {
                return Err(format!(
                    "{tool} is not installed (apt-get install erofs-utils cryptsetup-bin)"
                ));
            }
        }
        let help = Command::new("mkfs.erofs").arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout) + String::from_utf8_lossy(&help.stderr);
        Ok(Self {
            old_erofs: !help.contains("--all-time"),
        })
    }
}

impl ImageTools for HostTools {
    fn run(&mut self, argv: &[String]) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let args = argv[1..].iter().filter(|a| {
            !(self.old_erofs && argv[0] == "mkfs.erofs" && (*a == "-b4096" || *a == "--all-time"))
        });
        let out = Command::new(&argv[0]).args(args).output()?;
        if !out.status.success() {
            return Err(format!(
                "{argv:?}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// Packs `src` as `cargo xtask image model-pack` does: check, stage, erofs + verity.
fn pack(tools: &mut HostTools, src: &Path, work: &Path) -> (Vec<u8>, VerityParams, String) {
    let d = modelpack::hf_directory(src).unwrap();
    let refs: Vec<(String, &Path)> = d
        .files
        .iter()
        .map(|(n, p)| (n.clone(), p.as_path()))
        .collect();
    let stage = work.join("stage");
    let files = modelpack::stage_files(&refs, &stage).unwrap();
    let image = work.join("model.img");
    let params = verity::erofs_with_verity(
        tools,
        &ErofsJob {
            stage: stage.to_str().unwrap(),
            image: image.to_str().unwrap(),
            host_image: &image,
            compression: "",
            epoch: EPOCH,
            label: "model",
        },
    )
    .unwrap();
    let described = modelpack::ModelPack {
        format: modelpack::MODEL_PACK_FORMAT,
        image: chrysalis_image::manifest::Artifact::describe(work, "model.img").unwrap(),
        files,
        verity: params.clone(),
        layout: modelpack::PackLayout::HfDirectory,
        id: Some("tiny".into()),
        builder: None,
    };
    // What `image build --model-pack` checks before taking a pack.
    described.check_image(&image).unwrap();
    (fs::read(&image).unwrap(), params, described.to_json())
}

fn set_mode_and_time(dir: &Path, mode: u32, secs: u64) {
    for e in fs::read_dir(dir).unwrap() {
        let p: PathBuf = e.unwrap().path();
        if p.is_file() {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }
}

#[test]
fn the_same_directory_packs_to_the_same_bytes_and_a_changed_byte_changes_the_root() {
    let mut tools = match HostTools::new() {
        Ok(t) => t,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let t = tempfile::tempdir().unwrap();
    // Two copies that differ in everything a pack must not depend on: path, modes, times.
    let (a, b) = (t.path().join("a/Tiny-Model"), t.path().join("b/other-name"));
    tiny_model(&a);
    tiny_model(&b);
    set_mode_and_time(&a, 0o600, 1_000_000_000);
    set_mode_and_time(&b, 0o664, 2_000_000_000);
    let (img_a, root_a, json_a) = pack(&mut tools, &a, &t.path().join("work-a"));
    let (img_b, root_b, json_b) = pack(&mut tools, &b, &t.path().join("work-b"));
    assert_eq!(root_a, root_b);
    assert!(img_a == img_b, "the two images differ");
    assert_eq!(json_a, json_b);
    // The tree the pack carries is the one recomputed from its data.
    let data = t.path().join("data");
    fs::write(&data, &img_a[..(root_a.data_blocks * 4096) as usize]).unwrap();
    let salt = hex::decode(&root_a.salt).unwrap();
    assert_eq!(
        verity::compute_root_hash(&data, &salt, 4096).unwrap(),
        root_a.root_hash
    );

    // One weight changed: another root hash.
    fs::write(
        b.join("model.safetensors"),
        safetensors(&[0.5, -1.0, 2.0, 0.5]),
    )
    .unwrap();
    let (_, root_c, _) = pack(&mut tools, &b, &t.path().join("work-c"));
    assert_ne!(root_c.root_hash, root_a.root_hash);
    assert_ne!(
        Sha256Digest::of_bytes(&img_a),
        Sha256Digest::of_file(&t.path().join("work-c/model.img")).unwrap()
    );
}

#[test]
fn a_build_takes_a_pack_only_from_its_own_builder_and_image() {
    let mut tools = match HostTools::new() {
        Ok(t) => t,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("m");
    tiny_model(&src);
    let work = t.path().join("work");
    let (_, _, json) = pack(&mut tools, &src, &work);
    let builder = modelpack::PackBuilder {
        flavor: "gpu".into(),
        source_date_epoch: EPOCH,
        mkfs_erofs: "mkfs.erofs (erofs-utils) 1.8.6".into(),
        veritysetup: "veritysetup 2.7.5".into(),
    };
    let mut p = modelpack::ModelPack::from_json(&json).unwrap();
    assert!(matches!(
        p.check_builder(&builder),
        Err(ModelPackError::OtherBuilder { made, .. }) if made == "none recorded"
    ));
    p.builder = Some(builder.clone());
    p.check_builder(&builder).unwrap();
    let newer = modelpack::PackBuilder {
        veritysetup: "veritysetup 2.8.0".into(),
        ..builder.clone()
    };
    assert!(matches!(
        p.check_builder(&newer),
        Err(ModelPackError::OtherBuilder { .. })
    ));
    // The description survives a round trip with its new fields.
    assert_eq!(modelpack::ModelPack::from_json(&p.to_json()).unwrap(), p);

    // One flipped byte in the data, or in the tree: refused.
    let image = work.join("model.img");
    let good = fs::read(&image).unwrap();
    for at in [100, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 1;
        fs::write(&image, &bad).unwrap();
        assert!(matches!(
            p.check_image(&image),
            Err(ModelPackError::ImageMismatch { .. })
        ));
    }
    // A description whose digest was edited to match a changed image: the tree still refuses it.
    let mut bad = good.clone();
    bad[100] ^= 1;
    fs::write(&image, &bad).unwrap();
    p.image.sha256 = Sha256Digest::of_bytes(&bad);
    match p.check_image(&image) {
        Err(ModelPackError::ImageMismatch { source, .. }) => {
            assert!(source.to_string().contains("root hash"), "{source}")
        }
        other => panic!("{other:?}"),
    }
}
