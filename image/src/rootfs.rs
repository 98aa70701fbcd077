//! What the builder adds to a staged rootfs beyond the packages' files, and the erofs options.
//!
//! Maintainer scripts do not run (they would need a shell and dpkg in the image, and many are not
//! reproducible), so the few things they would have done and the guest needs are done here, deterministically:
//! account files, the CA bundle (`update-ca-certificates` concatenates the enabled certificates; here all
//! of them, sorted by path), and the mount points the guest init expects. Files copied from the
//! repository get normalised modes, so a checkout's umask or permissions never reach the image.
//!
//! The rules that make the rootfs reproducible live here, each pinned by a unit test: the order in
//! which the flavor's symlinks are added, the venv and byte-code steps (no pip cache, no compile at
//! install, a fixed hash seed, unchecked-hash `.pyc` files with build paths stripped), copied trees'
//! modes, and the erofs options (every timestamp the epoch, owner root, no xattrs, fixed UUID).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::deb::{DebError, Stage};
use crate::digest::Sha256Digest;

/// Directories the guest init mounts over or into (docs/image.md, "Boot").
pub const MOUNT_POINTS: [&str; 8] = ["dev", "proc", "sys", "run", "tmp", "var", "models", "root"];

/// Minimal account database: the runtime runs as root inside the VM; `nobody` for tools that want it.
const PASSWD: &str = "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Adds account files (unless a package shipped them), the CA bundle and the mount points.
pub fn add_system_files(stage: &mut Stage) -> Result<(), DebError> {
    for (path, text) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        if !stage.root().join(path).exists() {
            stage.add_file(path, text.as_bytes(), 0o644)?;
        }
    }
    for dir in MOUNT_POINTS {
        stage.add_dir(dir)?;
    }
    let certs = stage.root().join("usr/share/ca-certificates");
    if certs.is_dir() {
        let bundle = ca_bundle(&certs).map_err(|source| DebError::Io {
            package: "chrysalis-image".into(),
            path: certs.clone(),
            source,
        })?;
        stage.add_file("etc/ssl/certs/ca-certificates.crt", &bundle, 0o644)?;
    }
    Ok(())
}

/// All `*.crt` files under `dir`, sorted by relative path, concatenated (each ending in a newline).
pub fn ca_bundle(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.file_type().is_file() && entry.path().extension().is_some_and(|e| e == "crt") {
            let mut pem = fs::read(entry.path())?;
            if !pem.ends_with(b"\n") {
                pem.push(b'\n');
            }
            out.extend_from_slice(&pem);
        }
    }
    Ok(out)
}

/// Copies the tree `src` to `dest` (relative to the stage) with normalised modes: directories 0755, files
/// 0755 when the source has any execute bit, else 0644. Byte-code caches are skipped; symlinks are kept
/// as symlinks. Returns the number of files copied.
pub fn copy_tree(stage: &mut Stage, src: &Path, dest: &str) -> Result<u64, DebError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DebError::Io {
            package: "chrysalis-image".into(),
            path,
            source,
        }
    };
    stage.add_dir(dest)?;
    let mut n = 0;
    let walk = walkdir::WalkDir::new(src)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            name != "__pycache__" && !name.ends_with(".pyc")
        });
    for entry in walk {
        let entry = entry.map_err(|e| DebError::Io {
            package: "chrysalis-image".into(),
            path: src.to_owned(),
            source: std::io::Error::other(e),
        })?;
        let rel = entry
            .path()
            .strip_prefix(src)
            .expect("walk stays under src");
        let rel = rel.to_str().ok_or_else(|| DebError::UnsafePath {
            package: "chrysalis-image".into(),
            path: rel.display().to_string(),
        })?;
        let target = format!("{dest}/{rel}");
        let ft = entry.file_type();
        if ft.is_dir() {
            stage.add_dir(&target)?;
        } else if ft.is_symlink() {
            let link = fs::read_link(entry.path()).map_err(io(entry.path()))?;
            let abs = stage.root().join(&target);
            std::os::unix::fs::symlink(link, &abs).map_err(io(&abs))?;
        } else {
            let meta = entry.metadata().map_err(|e| DebError::Io {
                package: "chrysalis-image".into(),
                path: entry.path().to_owned(),
                source: std::io::Error::other(e),
            })?;
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let bytes = fs::read(entry.path()).map_err(io(entry.path()))?;
            stage.add_file(&target, &bytes, mode)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Adds the flavor's symlink table (path → target, both relative). A link may point at another
/// link of the table (libcuda.so -> libcuda.so.1 -> nvidia/…): each is added once its target
/// exists, in passes over the table in its sorted order, so the result does not depend on how the
/// flavor lists them. A target that never appears fails in [`Stage::add_symlink`], named.
pub fn add_links(stage: &mut Stage, links: &BTreeMap<String, String>) -> Result<(), DebError> {
    let mut pending: Vec<(&String, &String)> = links.iter().collect();
    while let Some(&(first_path, first_target)) = pending.first() {
        let before = pending.len();
        let mut later = Vec::new();
        for (path, target) in pending {
            let dir = Path::new(path).parent().unwrap_or(Path::new(""));
            if stage.root().join(dir).join(target).exists() {
                stage.add_symlink(path, target)?;
            } else {
                later.push((path, target));
            }
        }
        if later.len() == before {
            stage.add_symlink(first_path, first_target)?;
            return Err(DebError::UnsafePath {
                package: "chrysalis-image".into(),
                path: format!("{first_path} -> {first_target} (no such target)"),
            });
        }
        pending = later;
    }
    Ok(())
}

/// Environment of the venv step (besides the sandbox's own): pip does not look for a newer pip,
/// and Python's hash seed is fixed.
pub const VENV_ENV: [(&str, &str); 2] = [
    ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    ("PYTHONHASHSEED", "0"),
];

/// Environment of the byte-code step: a fixed hash seed, so that sets and frozensets in the
/// compiled code are marshalled in the same order on every run.
pub const BYTECODE_ENV: [(&str, &str); 1] = [("PYTHONHASHSEED", "0")];

/// The `sh -c` script that creates the venv at `/{venv}` (no pip inside it) and installs the
/// requirements file `requirements` from the wheel directory `wheels` only: hashes required, no
/// dependency resolution, no byte code at install time (the byte-code step writes it, reproducibly)
/// and no pip cache.
pub fn venv_script(venv: &str, wheels: &str, requirements: &str) -> String {
    format!(
        "set -eu\npython3 -m venv --without-pip /{venv}\npython3 -m pip --python /{venv}/bin/python install -q --no-index \
         --find-links {wheels} --require-hashes --no-deps --no-compile --no-cache-dir -r {requirements}\n"
    )
}

/// The argv that compiles the byte code of `dirs` (relative to the stage) with the stage mounted
/// at `stage`: `unchecked-hash` `.pyc` files (no source timestamps in them, and not re-validated
/// against the read-only sources at run time), the stage prefix stripped from the recorded paths.
pub fn compileall_argv(stage: &str, dirs: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "python3",
        "-m",
        "compileall",
        "-q",
        "--invalidation-mode",
        "unchecked-hash",
        "-s",
        stage,
        "-p",
        "/",
    ]
    .map(String::from)
    .to_vec();
    a.extend(dirs.iter().map(|d| format!("{stage}/{d}")));
    a
}

/// The erofs volume UUID for an image role: fixed (derived from the label), never random.
pub fn erofs_uuid(label: &str) -> String {
    let d = Sha256Digest::of_bytes(format!("chrysalis erofs uuid v1\0{label}").as_bytes());
    let mut b: [u8; 16] = d.as_bytes()[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `mkfs.erofs` arguments for a deterministic image of `source` (paths as the sandbox sees them):
/// 4 KiB blocks, every timestamp `epoch`, owner root, no extended attributes, fixed UUID, optional
/// compression (`lz4hc,12`; empty for none, as for model files that are mmapped).
pub fn mkfs_erofs_args(
    image: &str,
    source: &str,
    compression: &str,
    epoch: u64,
    label: &str,
) -> Vec<String> {
    let mut a = vec![
        "-b4096".to_owned(),
        "-x-1".to_owned(),
        format!("-T{epoch}"),
        "--all-time".to_owned(),
        "--all-root".to_owned(),
        format!("-U{}", erofs_uuid(label)),
        "--quiet".to_owned(),
    ];
    if !compression.is_empty() {
        a.push(format!("-z{compression}"));
    }
    a.push(image.into());
    a.push(source.into());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_files_and_bundle_are_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        let mut stage = Stage::new(&root, &[]).unwrap();
        stage
            .add_file("usr/share/ca-certificates/mozilla/B.crt", b"B", 0o644)
            .unwrap();
        stage
            .add_file("usr/share/ca-certificates/mozilla/A.crt", b"A\n", 0o644)
            .unwrap();
        stage
            .add_file("usr/share/ca-certificates/mozilla/readme", b"no", 0o644)
            .unwrap();
        add_system_files(&mut stage).unwrap();
        assert_eq!(
            fs::read(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap(),
            b"A\nB\n"
        );
        assert!(
            fs::read_to_string(root.join("etc/passwd"))
                .unwrap()
                .starts_with("root:x:0:0")
        );
        for d in MOUNT_POINTS {
            assert!(root.join(d).is_dir(), "{d}");
        }
    }

    #[test]
    fn copied_trees_get_normalised_modes_and_no_bytecode() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("pkg/__pycache__")).unwrap();
        fs::write(src.join("pkg/__init__.py"), b"x = 1\n").unwrap();
        fs::write(
            src.join("pkg/__pycache__/__init__.cpython-313.pyc"),
            b"junk",
        )
        .unwrap();
        fs::write(src.join("pkg/tool.py"), b"#!/usr/bin/python3\n").unwrap();
        fs::set_permissions(
            src.join("pkg/__init__.py"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::set_permissions(src.join("pkg/tool.py"), fs::Permissions::from_mode(0o700)).unwrap();
        let mut stage = Stage::new(&dir.path().join("r"), &[]).unwrap();
        assert_eq!(copy_tree(&mut stage, &src, "opt/x").unwrap(), 2);
        let mode = |p: &str| {
            fs::metadata(stage.root().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("opt/x/pkg/__init__.py"), 0o644);
        assert_eq!(mode("opt/x/pkg/tool.py"), 0o755);
        assert_eq!(mode("opt/x/pkg"), 0o755);
        assert!(!stage.root().join("opt/x/pkg/__pycache__").exists());
    }

    #[test]
    fn links_are_added_once_their_targets_exist_whatever_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = Stage::new(&dir.path().join("r"), &[]).unwrap();
        stage
            .add_file("usr/lib/nvidia/libcuda.so.1.2", b"elf", 0o644)
            .unwrap();
        // Sorted, the first link points at the second, which does not exist yet.
        let links = BTreeMap::from([
            ("usr/lib/libcuda.so".to_owned(), "libcuda.so.1".to_owned()),
            (
                "usr/lib/libcuda.so.1".to_owned(),
                "nvidia/libcuda.so.1.2".to_owned(),
            ),
        ]);
        add_links(&mut stage, &links).unwrap();
        let link = |p: &str| fs::read_link(stage.root().join(p)).unwrap();
        assert_eq!(link("usr/lib/libcuda.so"), Path::new("libcuda.so.1"));
        assert_eq!(
            link("usr/lib/libcuda.so.1"),
            Path::new("nvidia/libcuda.so.1.2")
        );
        assert_eq!(
            fs::read(stage.root().join("usr/lib/libcuda.so")).unwrap(),
            b"elf"
        );

        let missing = BTreeMap::from([("usr/lib/a.so".to_owned(), "a.so.1".to_owned())]);
        let err = add_links(&mut stage, &missing).unwrap_err();
        assert!(
            matches!(&err, DebError::UnsafePath { path, .. } if path == "usr/lib/a.so -> a.so.1 (no such target)"),
            "{err}"
        );
        assert!(fs::symlink_metadata(stage.root().join("usr/lib/a.so")).is_err());
    }

    #[test]
    fn python_steps_are_pinned() {
        assert_eq!(
            venv_script("opt/chrysalis/venv", "/wheels", "/inputs/requirements.txt"),
            "set -eu\n\
             python3 -m venv --without-pip /opt/chrysalis/venv\n\
             python3 -m pip --python /opt/chrysalis/venv/bin/python install -q --no-index --find-links /wheels \
             --require-hashes --no-deps --no-compile --no-cache-dir -r /inputs/requirements.txt\n"
        );
        assert_eq!(
            compileall_argv("/stage", &["usr/lib/python3.13", "opt/v/site-packages"]),
            [
                "python3",
                "-m",
                "compileall",
                "-q",
                "--invalidation-mode",
                "unchecked-hash",
                "-s",
                "/stage",
                "-p",
                "/",
                "/stage/usr/lib/python3.13",
                "/stage/opt/v/site-packages",
            ]
        );
        assert!(VENV_ENV.contains(&("PYTHONHASHSEED", "0")));
        assert!(VENV_ENV.contains(&("PIP_DISABLE_PIP_VERSION_CHECK", "1")));
        assert_eq!(BYTECODE_ENV, [("PYTHONHASHSEED", "0")]);
    }

    #[test]
    fn erofs_options_are_fixed() {
        let a = mkfs_erofs_args(
            "/out/rootfs.erofs",
            "/stage",
            "lz4hc,12",
            1767225600,
            "cpu rootfs",
        );
        assert!(a.contains(&"-T1767225600".to_owned()));
        assert!(a.contains(&"--all-root".to_owned()));
        assert!(a.contains(&"-zlz4hc,12".to_owned()));
        assert_eq!(a[a.len() - 2..], ["/out/rootfs.erofs", "/stage"]);
        assert_eq!(erofs_uuid("cpu rootfs"), erofs_uuid("cpu rootfs"));
        assert_ne!(erofs_uuid("cpu rootfs"), erofs_uuid("cpu model"));
        assert!(
            !mkfs_erofs_args("i", "s", "", 0, "m")
                .iter()
                .any(|x| x.starts_with("-z"))
        );
    }
}
