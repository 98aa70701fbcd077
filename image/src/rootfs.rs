//! What the builder adds to a staged rootfs beyond the packages' files, and the erofs options.
//!
//! Maintainer scripts do not run (they would need a shell and dpkg in the image, and many are not
//! reproducible), so the few things they would have done and the guest needs are done here, deterministically:
//! account files, the CA bundle (`update-ca-certificates` concatenates the enabled certificates; here all
//! of them, sorted by path), and the mount points the guest init expects. Files copied from the
//! repository get normalised modes, so a checkout's umask or permissions never reach the image.

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
