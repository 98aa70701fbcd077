//! Finding the virtio-blk disks by the serial the launcher gave them.
//!
//! Serials are host-controlled and so untrusted, like the disks themselves: they only say where to
//! look. A swapped or altered disk fails dm-verity or the config digest check.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A block device found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Disk {
    /// Kernel name, e.g. `vda`.
    pub(crate) name: String,
    /// Device node under devtmpfs, e.g. `/dev/vda`.
    pub(crate) node: PathBuf,
    /// Device number.
    pub(crate) dev: (u64, u64),
    /// Size in bytes.
    pub(crate) bytes: u64,
}

/// Parses a sysfs `dev` attribute (`major:minor`).
fn parse_dev(text: &str) -> Option<(u64, u64)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Looks once through `<sys_block>/vd*` for the disk whose serial is `serial`. Two disks with the
/// same serial are an error, not a choice.
fn scan(sys_block: &Path, serial: &str) -> anyhow::Result<Option<Disk>> {
    let mut found: Option<Disk> = None;
    let mut entries: Vec<_> = std::fs::read_dir(sys_block)
        .with_context(|| format!("cannot list {}", sys_block.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vd"))
        .collect();
    entries.sort();
    for name in entries {
        let dir = sys_block.join(&name);
        let Ok(s) = std::fs::read_to_string(dir.join("serial")) else {
            continue;
        };
        if s.trim() != serial {
            continue;
        }
        if let Some(first) = &found {
            bail!(
                "disks {} and {name} both have serial {serial:?}",
                first.name
            );
        }
        let dev_text = std::fs::read_to_string(dir.join("dev"))?;
        let dev = parse_dev(&dev_text)
            .with_context(|| format!("bad {}/dev: {dev_text:?}", dir.display()))?;
        let sectors: u64 = std::fs::read_to_string(dir.join("size"))?.trim().parse()?;
        found = Some(Disk {
            node: Path::new("/dev").join(&name),
            name,
            dev,
            bytes: sectors * 512,
        });
    }
    Ok(found)
}

/// Waits up to `timeout` for the virtio-blk disk with `serial` and its device node to appear.
pub(crate) fn wait_for(serial: &str, timeout: Duration) -> anyhow::Result<Disk> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(d) = scan(Path::new("/sys/block"), serial)?
            && d.node.exists()
        {
            return Ok(d);
        }
        if Instant::now() >= deadline {
            bail!("no virtio-blk disk with serial {serial:?} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(root: &Path, name: &str, serial: &str, dev: &str, sectors: u64) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("serial"), format!("{serial}\n")).unwrap();
        std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
        std::fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
    }

    #[test]
    fn finds_the_disk_by_serial() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path(), "vda", "rootfs", "254:0", 100);
        fake(t.path(), "vdb", "model", "254:16", 8);
        std::fs::create_dir(t.path().join("loop0")).unwrap();
        let d = scan(t.path(), "model").unwrap().unwrap();
        assert_eq!(
            d,
            Disk {
                name: "vdb".into(),
                node: "/dev/vdb".into(),
                dev: (254, 16),
                bytes: 4096
            }
        );
        assert!(scan(t.path(), "config").unwrap().is_none());
    }

    #[test]
    fn two_disks_with_one_serial_are_refused() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path(), "vda", "rootfs", "254:0", 100);
        fake(t.path(), "vdc", "rootfs", "254:32", 100);
        assert!(
            scan(t.path(), "rootfs")
                .unwrap_err()
                .to_string()
                .contains("both")
        );
    }

    #[test]
    fn dev_attribute_is_parsed() {
        assert_eq!(parse_dev("254:16\n"), Some((254, 16)));
        assert_eq!(parse_dev("254"), None);
        assert_eq!(parse_dev("a:1"), None);
    }
}
