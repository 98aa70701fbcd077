//! Kernel modules: modules.dep parsing, dependency-first load order, and loading with finit_module.
//!
//! The initramfs carries exactly the modules to load (the image builder computed the closure), so
//! init loads every module that modules.dep lists, each after its dependencies.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

use super::error::InitError;
use super::log;

/// `MODULE_INIT_COMPRESSED_FILE` from include/uapi/linux/module.h (Linux ≥ 6.4, needs
/// CONFIG_MODULE_DECOMPRESS): the kernel decompresses the module itself. nix does not name it.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// One modules.dep line: a module path relative to the modules directory and its dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DepLine {
    /// Path of the module file, e.g. `kernel/drivers/md/dm-verity.ko.xz`.
    pub(crate) path: String,
    /// Paths of the modules it needs.
    pub(crate) deps: Vec<String>,
}

/// Parses modules.dep (depmod's format: `path: dep dep …`, one module a line; blank lines and
/// `#` comments are skipped).
pub(crate) fn parse_modules_dep(text: &str) -> Result<Vec<DepLine>, InitError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| InitError::ModulesDep {
            line: i + 1,
            reason: reason.into(),
        };
        let (path, deps) = line.split_once(':').ok_or_else(|| bad("has no ':'"))?;
        let path = path.trim();
        if path.is_empty() {
            return Err(bad("names no module"));
        }
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(bad("module path must stay inside the modules directory"));
        }
        out.push(DepLine {
            path: path.to_owned(),
            deps: deps.split_whitespace().map(str::to_owned).collect(),
        });
    }
    Ok(out)
}

/// Returns every module of `lines` once, each after all of its dependencies; ties keep the order
/// of the file. Fails if a dependency has no line of its own, a module is listed twice, or the
/// dependencies form a cycle.
pub(crate) fn load_order(lines: &[DepLine]) -> Result<Vec<String>, InitError> {
    let mut index = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        if index.insert(l.path.as_str(), i).is_some() {
            return Err(InitError::ModuleGraph(format!(
                "{} is listed twice",
                l.path
            )));
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    let mut marks = vec![Mark::New; lines.len()];
    let mut order = Vec::with_capacity(lines.len());
    // Depth-first, iterative, so a hostile file cannot overflow PID 1's stack.
    for root in 0..lines.len() {
        let mut stack = vec![(root, 0usize)];
        while let Some((node, next_dep)) = stack.pop() {
            if next_dep == 0 {
                match marks[node] {
                    Mark::Done => continue,
                    Mark::Visiting => {
                        return Err(InitError::ModuleGraph(format!(
                            "dependency cycle through {}",
                            lines[node].path
                        )));
                    }
                    Mark::New => marks[node] = Mark::Visiting,
                }
            }
            if let Some(dep) = lines[node].deps.get(next_dep) {
                let &d = index.get(dep.as_str()).ok_or_else(|| {
                    InitError::ModuleGraph(format!(
                        "{} needs {dep}, which has no line of its own",
                        lines[node].path
                    ))
                })?;
                stack.push((node, next_dep + 1));
                if marks[d] == Mark::Visiting {
                    return Err(InitError::ModuleGraph(format!(
                        "dependency cycle through {dep}"
                    )));
                }
                if marks[d] == Mark::New {
                    stack.push((d, 0));
                }
            } else {
                marks[node] = Mark::Done;
                order.push(lines[node].path.clone());
            }
        }
    }
    Ok(order)
}

/// The first dependency of `path` (per `lines`) that is in `absent`, the modules whose init
/// answered ENODEV.
fn missing_dependency<'a>(lines: &'a [DepLine], path: &str, absent: &[String]) -> Option<&'a str> {
    lines
        .iter()
        .find(|l| l.path == path)?
        .deps
        .iter()
        .find(|d| absent.contains(d))
        .map(String::as_str)
}

/// Loads every module of `<dir>/modules.dep` in dependency order. A module whose init answers
/// ENODEV (the hardware it drives is absent: tdx-guest on SEV-SNP, sev-guest on TDX, both in
/// simulation) is reported and skipped, as long as no other module of the file needs it: a
/// module that depends on a skipped one is an error naming both (the GPU flavor's nvidia-uvm
/// without an NVIDIA GPU), since the image was built to drive that hardware.
/// EEXIST (already loaded) is fine; every other error is returned.
pub(crate) fn load_all(dir: &Path) -> anyhow::Result<()> {
    let dep_file = dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_file).with_context(|| {
        format!(
            "cannot read {} (initramfs built for another kernel?)",
            dep_file.display()
        )
    })?;
    let lines = parse_modules_dep(&text)?;
    let order = load_order(&lines)?;
    let mut absent = Vec::new();
    for path in order {
        if let Some(dep) = missing_dependency(&lines, &path, &absent) {
            bail!(
                "module {path} needs {dep}, which found no device here (ENODEV): this image needs the hardware {dep} drives"
            );
        }
        let file =
            File::open(dir.join(&path)).with_context(|| format!("cannot open module {path}"))?;
        let flags = if path.ends_with(".ko") {
            ModuleInitFlags::empty()
        } else {
            ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
        };
        match finit_module(&file, c"", flags) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(Errno::ENODEV) => {
                log(&format!("module {path}: no such device here, skipped"));
                absent.push(path);
            }
            Err(e) => bail!("cannot load module {path}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(text: &str) -> Result<Vec<String>, InitError> {
        load_order(&parse_modules_dep(text)?)
    }

    #[test]
    fn dependencies_load_first() {
        let text = "\
kernel/drivers/md/dm-verity.ko.xz: kernel/drivers/md/dm-bufio.ko.xz kernel/drivers/md/dm-mod.ko.xz kernel/lib/reed_solomon.ko.xz
kernel/drivers/md/dm-bufio.ko.xz: kernel/drivers/md/dm-mod.ko.xz
kernel/drivers/md/dm-mod.ko.xz:
# a comment

kernel/lib/reed_solomon.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
";
        assert_eq!(
            order(text).unwrap(),
            [
                "kernel/drivers/md/dm-mod.ko.xz",
                "kernel/drivers/md/dm-bufio.ko.xz",
                "kernel/lib/reed_solomon.ko.xz",
                "kernel/drivers/md/dm-verity.ko.xz",
                "kernel/drivers/block/virtio_blk.ko.xz",
            ]
        );
    }

    #[test]
    fn every_module_appears_once_after_its_deps() {
        // A diamond plus a chain, listed in an unhelpful order.
        let text = "d.ko: b.ko c.ko a.ko\nc.ko: a.ko\nb.ko: a.ko\na.ko:\ne.ko: d.ko\n";
        let got = order(text).unwrap();
        assert_eq!(got.len(), 5);
        let pos = |m: &str| got.iter().position(|x| x == m).unwrap();
        for (m, deps) in [
            ("b.ko", &["a.ko"][..]),
            ("c.ko", &["a.ko"]),
            ("d.ko", &["a.ko", "b.ko", "c.ko"]),
            ("e.ko", &["d.ko"]),
        ] {
            for d in deps {
                assert!(pos(d) < pos(m), "{d} must load before {m}: {got:?}");
            }
        }
    }

    #[test]
    fn a_module_needing_an_absent_one_is_named() {
        let lines = parse_modules_dep(
            "updates/nvidia.ko:\nupdates/nvidia-uvm.ko: updates/nvidia.ko\nkernel/tdx-guest.ko.xz: kernel/tsm.ko.xz\nkernel/tsm.ko.xz:\n",
        )
        .unwrap();
        let absent = vec!["updates/nvidia.ko".to_owned()];
        assert_eq!(
            missing_dependency(&lines, "updates/nvidia-uvm.ko", &absent),
            Some("updates/nvidia.ko")
        );
        assert_eq!(
            missing_dependency(&lines, "updates/nvidia.ko", &absent),
            None
        );
        // tdx-guest answering ENODEV (SEV-SNP, simulation) blocks nothing: no module needs it.
        let absent = vec!["kernel/tdx-guest.ko.xz".to_owned()];
        for l in &lines {
            assert_eq!(missing_dependency(&lines, &l.path, &absent), None);
        }
    }

    #[test]
    fn broken_graphs_are_rejected() {
        assert!(
            matches!(order("a.ko: b.ko\n"), Err(InitError::ModuleGraph(m)) if m.contains("b.ko"))
        );
        assert!(
            matches!(order("a.ko: b.ko\nb.ko: a.ko\n"), Err(InitError::ModuleGraph(m)) if m.contains("cycle"))
        );
        assert!(
            matches!(order("a.ko: a.ko\n"), Err(InitError::ModuleGraph(m)) if m.contains("cycle"))
        );
        assert!(
            matches!(order("a.ko:\na.ko:\n"), Err(InitError::ModuleGraph(m)) if m.contains("twice"))
        );
    }

    #[test]
    fn malformed_lines_are_rejected_with_their_number() {
        assert_eq!(
            parse_modules_dep("a.ko:\nno colon here\n"),
            Err(InitError::ModulesDep {
                line: 2,
                reason: "has no ':'".into()
            })
        );
        assert!(parse_modules_dep(": a.ko\n").is_err());
        assert!(parse_modules_dep("../../etc/x.ko:\n").is_err());
        assert!(parse_modules_dep("/abs/x.ko:\n").is_err());
    }
}
