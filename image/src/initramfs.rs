//! The deterministic initramfs: the static guest init plus exactly the kernel modules it loads.
//!
//! Layout (docs/image.md, "Boot"):
//!
//! ```text
//! dev/  dev/console (c 5:1)          the console PID 1 starts with
//! init                               chrysalis-init (static, no ELF interpreter)
//! lib/modules/<release>/kernel/…     the wanted modules and their dependency closure, byte for
//!                                    byte as Debian ships them (.ko.xz, loaded with
//!                                    MODULE_INIT_COMPRESSED_FILE)
//! lib/modules/<release>/modules.dep  depmod's format, covering exactly those modules
//! proc/ sys/ sysroot/                mount points
//! ```
//!
//! The cpio archive is newc with entries sorted by name, owner 0:0, fixed modes, every mtime set
//! to `SOURCE_DATE_EPOCH` and inode numbers given in sorted order; it is compressed with gzip
//! (miniz_oxide, level 9, header mtime 0, OS byte 255), which every kernel with CONFIG_RD_GZIP
//! unpacks. The same inputs therefore give the same bytes on any machine.
//!
//! The dependency closure comes from the modules themselves (`depends=` and `softdep=pre:` in
//! their `.modinfo`), since Debian's package ships no modules.dep (depmod runs at install time).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};

/// The modules a chrysalis guest loads: block and vsock transport, dm-verity, erofs, the TEE
/// report interfaces (configfs-tsm, tdx-guest, sev-guest) and a fast sha256 for dm-verity.
/// `crc32c_generic` satisfies libcrc32c's `softdep pre: crc32c` (erofs needs it).
/// Names that are built into the kernel (virtio_pci, virtio_console) are accepted and skipped.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "vmw_vsock_virtio_transport",
    "dm_verity",
    "erofs",
    "crc32c_generic",
    "tsm",
    "tdx_guest",
    "sev_guest",
    "sha256_ssse3",
];

/// Errors of the initramfs builder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitramfsError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The modules directory's name is not a kernel release (`…/lib/modules/<release>`).
    #[error("{0} does not look like a kernel modules directory (lib/modules/<release>)")]
    ModulesRoot(PathBuf),
    /// A wanted module, or a dependency of one, is neither a file nor built into the kernel.
    #[error("kernel module {name} not found under {root} (needed by {needed_by})")]
    ModuleNotFound {
        /// The module name.
        name: String,
        /// The modules directory searched.
        root: PathBuf,
        /// What asked for it: `the wanted list` or a module name.
        needed_by: String,
    },
    /// Two module files have the same module name.
    #[error("kernel module {name} exists twice: {first} and {second}")]
    DuplicateModule {
        /// The module name.
        name: String,
        /// One file.
        first: String,
        /// The other file.
        second: String,
    },
    /// A module's compressed file could not be decompressed, or it is compressed with something
    /// other than xz.
    #[error("cannot decompress kernel module {path}: {reason}")]
    Decompress {
        /// The module file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A module file is not an x86-64 ELF object with a `.modinfo` section naming itself.
    #[error("kernel module {path} is malformed: {reason}")]
    BadModule {
        /// The module file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `softdep pre:` of an included module is provided by no included or built-in module.
    #[error(
        "kernel module {module} wants {wants} loaded first (softdep pre:); add a module that provides it to the wanted list"
    )]
    UnsatisfiedSoftdep {
        /// The module with the soft dependency.
        module: String,
        /// The module name or alias it wants.
        wants: String,
    },
    /// The init binary is not a static x86-64 executable (it would not run as PID 1).
    #[error("init {path} is unusable: {reason}")]
    BadInit {
        /// The init file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// SOURCE_DATE_EPOCH does not fit the newc header's 32-bit mtime.
    #[error("epoch {0} does not fit a cpio newc mtime (32 bits)")]
    EpochRange(u64),
    /// Writing the archive failed (out of memory, or a file over 4 GiB).
    #[error("cannot write the initramfs archive: {0}")]
    Archive(#[source] std::io::Error),
}

/// A module of the closure, as it goes into the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    /// Module name (`dm_verity`).
    pub name: String,
    /// File path relative to the modules directory (`kernel/drivers/md/dm-verity.ko.xz`).
    pub path: String,
    /// Names of the modules that must be loaded before it (hard and satisfied `pre:` soft
    /// dependencies), sorted.
    pub needs: Vec<String>,
}

/// What a module file declares in `.modinfo`.
struct ModInfo {
    depends: Vec<String>,
    softdep_pre: Vec<String>,
    aliases: Vec<String>,
}

/// Module names use `_`; files and `depends=` sometimes use `-`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn read(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    std::fs::read(path).map_err(|source| InitramfsError::Read {
        path: path.into(),
        source,
    })
}

/// Lists every module file under `root`: module name → path relative to `root`.
fn index_modules(root: &Path) -> Result<BTreeMap<String, String>, InitramfsError> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| InitramfsError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| InitramfsError::Read {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(|source| InitramfsError::Read {
                path: path.clone(),
                source,
            })?;
            if file_type.is_dir() {
                dirs.push(path);
                continue;
            }
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = file
                .strip_suffix(".ko.xz")
                .or_else(|| file.strip_suffix(".ko"))
            else {
                continue;
            };
            let rel = path
                .strip_prefix(root)
                .expect("walked from root")
                .to_string_lossy()
                .into_owned();
            if let Some(first) = out.insert(normalize(stem), rel.clone()) {
                return Err(InitramfsError::DuplicateModule {
                    name: normalize(stem),
                    first,
                    second: rel,
                });
            }
        }
    }
    Ok(out)
}

/// Names (and `name.alias=` aliases) of modules built into the kernel, from modules.builtin and
/// modules.builtin.modinfo. Missing files mean no built-ins.
fn builtins(root: &Path) -> Result<(BTreeSet<String>, BTreeSet<String>), InitramfsError> {
    let mut names = BTreeSet::new();
    let mut aliases = BTreeSet::new();
    let list = root.join("modules.builtin");
    if list.exists() {
        for line in String::from_utf8_lossy(&read(&list)?).lines() {
            if let Some(file) = line.rsplit('/').next().and_then(|f| f.strip_suffix(".ko")) {
                names.insert(normalize(file));
            }
        }
    }
    let info = root.join("modules.builtin.modinfo");
    if info.exists() {
        for field in read(&info)?.split(|&b| b == 0) {
            let field = String::from_utf8_lossy(field);
            if let Some((module, value)) = field.split_once(".alias=") {
                names.insert(normalize(module));
                aliases.insert(value.to_owned());
            }
        }
    }
    Ok((names, aliases))
}

/// Decompresses (if needed) a module file and reads its `.modinfo`.
fn modinfo(root: &Path, rel: &str, expected_name: &str) -> Result<ModInfo, InitramfsError> {
    let path = root.join(rel);
    let raw = read(&path)?;
    let data = if rel.ends_with(".xz") {
        let mut out = Vec::with_capacity(raw.len() * 5);
        std::io::Read::read_to_end(&mut liblzma::read::XzDecoder::new(&raw[..]), &mut out)
            .map_err(|e| InitramfsError::Decompress {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        out
    } else {
        raw
    };
    let bad = |reason: String| InitramfsError::BadModule {
        path: path.clone(),
        reason,
    };
    let header =
        elf::FileHeader64::<object::Endianness>::parse(&*data).map_err(|e| bad(e.to_string()))?;
    let endian = header.endian().map_err(|e| bad(e.to_string()))?;
    if header.e_machine(endian) != elf::EM_X86_64 || header.e_type(endian) != elf::ET_REL {
        return Err(bad("not an x86-64 relocatable object".into()));
    }
    let sections = header
        .sections(endian, &*data)
        .map_err(|e| bad(e.to_string()))?;
    let (_, section) = sections
        .section_by_name(endian, b".modinfo")
        .ok_or_else(|| bad("no .modinfo section".into()))?;
    let bytes = section
        .data(endian, &*data)
        .map_err(|e| bad(e.to_string()))?;

    let mut info = ModInfo {
        depends: vec![],
        softdep_pre: vec![],
        aliases: vec![],
    };
    let mut name = None;
    for field in bytes.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let field = String::from_utf8_lossy(field);
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "name" => name = Some(normalize(value)),
            "depends" => info
                .depends
                .extend(value.split(',').filter(|d| !d.is_empty()).map(normalize)),
            "alias" => info.aliases.push(value.to_owned()),
            // `softdep=pre: a b post: c`: only what must come before matters to a loader. NVIDIA's
            // modules separate names with commas (`pre: ecdh_generic,ecdsa_generic`).
            "softdep" => {
                let mut pre = false;
                for word in value.split(|c: char| c.is_whitespace() || c == ',') {
                    if word.is_empty() {
                        continue;
                    }
                    match word {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        w if pre => info.softdep_pre.push(w.to_owned()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match name {
        Some(n) if n == expected_name => Ok(info),
        Some(n) => Err(bad(format!(
            "its .modinfo names it {n}, its file name says {expected_name}"
        ))),
        None => Err(bad(".modinfo has no name=".into())),
    }
}

/// Computes the closure of `wanted` (module names, `-` or `_`) under hard and `pre:` soft
/// dependencies, in a load order (every module after what it needs; ties by name).
///
/// `modules_root` is a kernel's modules directory (`…/lib/modules/<release>`, as unpacked from
/// the linux-image package). Built-in modules are dropped silently. Fails if a module is missing,
/// malformed, or has a `pre:` soft dependency that nothing included or built in provides. It does
/// not check module signatures or that the modules match a particular kernel image.
pub fn module_closure(
    modules_root: &Path,
    wanted: &[&str],
) -> Result<Vec<KernelModule>, InitramfsError> {
    let index = index_modules(modules_root)?;
    let (builtin_names, builtin_aliases) = builtins(modules_root)?;
    let mut infos: BTreeMap<String, ModInfo> = BTreeMap::new();
    let mut queue: Vec<(String, String)> = wanted
        .iter()
        .map(|w| (normalize(w), "the wanted list".to_owned()))
        .collect();
    while let Some((name, needed_by)) = queue.pop() {
        if infos.contains_key(&name) || builtin_names.contains(&name) {
            continue;
        }
        let rel = index
            .get(&name)
            .ok_or_else(|| InitramfsError::ModuleNotFound {
                name: name.clone(),
                root: modules_root.into(),
                needed_by,
            })?;
        let info = modinfo(modules_root, rel, &name)?;
        queue.extend(info.depends.iter().map(|d| (d.clone(), name.clone())));
        infos.insert(name, info);
    }

    // Resolve `pre:` soft dependencies against what is included (by name or alias) or built in.
    let mut needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, info) in &infos {
        let entry = needs.entry(name.clone()).or_default();
        entry.extend(
            info.depends
                .iter()
                .filter(|d| infos.contains_key(*d))
                .cloned(),
        );
        for want in &info.softdep_pre {
            let providers: Vec<&String> = infos
                .iter()
                .filter(|(n, i)| **n == normalize(want) || i.aliases.iter().any(|a| a == want))
                .map(|(n, _)| n)
                .collect();
            if providers.is_empty()
                && !builtin_names.contains(&normalize(want))
                && !builtin_aliases.contains(want)
            {
                return Err(InitramfsError::UnsatisfiedSoftdep {
                    module: name.clone(),
                    wants: want.clone(),
                });
            }
            entry.extend(providers.into_iter().filter(|p| *p != name).cloned());
        }
    }

    // Kahn's algorithm over a sorted ready set: a deterministic load order.
    let mut order = Vec::with_capacity(needs.len());
    let mut done = BTreeSet::new();
    while done.len() < needs.len() {
        let ready: Vec<String> = needs
            .iter()
            .filter(|(n, deps)| !done.contains(*n) && deps.iter().all(|d| done.contains(d)))
            .map(|(n, _)| n.clone())
            .collect();
        if ready.is_empty() {
            let stuck: Vec<_> = needs
                .keys()
                .filter(|n| !done.contains(*n))
                .cloned()
                .collect();
            return Err(InitramfsError::BadModule {
                path: modules_root.into(),
                reason: format!("dependency cycle among {}", stuck.join(", ")),
            });
        }
        for n in ready {
            order.push(KernelModule {
                path: index[&n].clone(),
                needs: needs[&n].iter().cloned().collect(),
                name: n.clone(),
            });
            done.insert(n);
        }
    }
    Ok(order)
}

/// Renders modules.dep for `modules` in depmod's format: each line lists the module's whole
/// dependency closure, nearest first, so that loading the list backwards works as with modprobe.
pub fn modules_dep(modules: &[KernelModule]) -> String {
    let by_name: BTreeMap<&str, &KernelModule> =
        modules.iter().map(|m| (m.name.as_str(), m)).collect();
    let position: BTreeMap<&str, usize> = modules
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    let mut lines: Vec<String> = modules
        .iter()
        .map(|m| {
            let mut closure = BTreeSet::new();
            let mut stack: Vec<&str> = m.needs.iter().map(String::as_str).collect();
            while let Some(n) = stack.pop() {
                if closure.insert(n) {
                    stack.extend(by_name[n].needs.iter().map(String::as_str));
                }
            }
            // Reverse load order: the last to load comes first, as depmod writes it.
            let mut deps: Vec<&str> = closure.into_iter().collect();
            deps.sort_by_key(|n| std::cmp::Reverse(position[n]));
            let paths: Vec<&str> = deps.iter().map(|n| by_name[n].path.as_str()).collect();
            format!("{}: {}", m.path, paths.join(" "))
                .trim_end()
                .to_owned()
        })
        .collect();
    lines.sort();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Checks that `data` is an x86-64 ELF executable with no program interpreter (statically linked).
fn check_static_init(path: &Path, data: &[u8]) -> Result<(), InitramfsError> {
    let bad = |reason: String| InitramfsError::BadInit {
        path: path.into(),
        reason,
    };
    let header = elf::FileHeader64::<object::Endianness>::parse(data)
        .map_err(|e| bad(format!("not a 64-bit ELF file: {e}")))?;
    let endian = header.endian().map_err(|e| bad(e.to_string()))?;
    if header.e_machine(endian) != elf::EM_X86_64 {
        return Err(bad("not an x86-64 executable".into()));
    }
    if !matches!(header.e_type(endian), elf::ET_EXEC | elf::ET_DYN) {
        return Err(bad("not an executable".into()));
    }
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| bad(e.to_string()))?;
    if phdrs.iter().any(|p| p.p_type(endian) == elf::PT_INTERP) {
        return Err(bad(
            "dynamically linked (has an ELF interpreter); build it for x86_64-unknown-linux-musl"
                .into(),
        ));
    }
    Ok(())
}

/// One archive entry.
struct Entry {
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

const DIR: u32 = 0o040_755;
const FILE_EXEC: u32 = 0o100_755;
const FILE: u32 = 0o100_644;
const CONSOLE: u32 = 0o020_600;

/// Builds the gzip-compressed newc initramfs: `init` as `/init`, the closure of `wanted` from
/// `modules_root` (see [`module_closure`]) with its modules.dep, `/dev/console` and the mount
/// points, every mtime set to `epoch` (SOURCE_DATE_EPOCH). Returns Ok only if `init` is a static
/// x86-64 executable and every module resolves. Equal inputs give equal bytes.
pub fn build_initramfs(
    init: &Path,
    modules_root: &Path,
    wanted: &[&str],
    epoch: u64,
) -> Result<Vec<u8>, InitramfsError> {
    let mtime = u32::try_from(epoch).map_err(|_| InitramfsError::EpochRange(epoch))?;
    let release = modules_root
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && n.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .ok_or_else(|| InitramfsError::ModulesRoot(modules_root.into()))?;
    let init_bytes = read(init)?;
    check_static_init(init, &init_bytes)?;
    let modules = module_closure(modules_root, wanted)?;

    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let add_dirs = |entries: &mut BTreeMap<String, Entry>, path: &str| {
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            entries.entry(prefix.clone()).or_insert(Entry {
                mode: DIR,
                rdev: (0, 0),
                data: vec![],
            });
        }
    };
    for dir in ["dev", "proc", "sys", "sysroot"] {
        add_dirs(&mut entries, dir);
    }
    entries.insert(
        "dev/console".into(),
        Entry {
            mode: CONSOLE,
            rdev: (5, 1),
            data: vec![],
        },
    );
    entries.insert(
        "init".into(),
        Entry {
            mode: FILE_EXEC,
            rdev: (0, 0),
            data: init_bytes,
        },
    );
    let base = format!("lib/modules/{release}");
    add_dirs(&mut entries, &base);
    for m in &modules {
        let path = format!("{base}/{}", m.path);
        if let Some((parent, _)) = path.rsplit_once('/') {
            add_dirs(&mut entries, parent);
        }
        entries.insert(
            path,
            Entry {
                mode: FILE,
                rdev: (0, 0),
                data: read(&modules_root.join(&m.path))?,
            },
        );
    }
    entries.insert(
        format!("{base}/modules.dep"),
        Entry {
            mode: FILE,
            rdev: (0, 0),
            data: modules_dep(&modules).into_bytes(),
        },
    );

    // BTreeMap iteration is sorted by name; a parent directory always sorts before its children.
    let mut cpio = Vec::new();
    for (ino, (name, e)) in entries.into_iter().enumerate() {
        let size = u32::try_from(e.data.len()).map_err(|_| {
            InitramfsError::Archive(std::io::Error::other(format!("{name} is over 4 GiB")))
        })?;
        let mut w = cpio::NewcBuilder::new(&name)
            .ino(ino as u32 + 1)
            .mode(e.mode)
            .uid(0)
            .gid(0)
            .nlink(if e.mode == DIR { 2 } else { 1 })
            .mtime(mtime)
            .rdev_major(e.rdev.0)
            .rdev_minor(e.rdev.1)
            .write(&mut cpio, size);
        w.write_all(&e.data).map_err(InitramfsError::Archive)?;
        w.finish().map_err(InitramfsError::Archive)?;
    }
    cpio::newc::trailer(&mut cpio).map_err(InitramfsError::Archive)?;

    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::with_capacity(cpio.len()), flate2::Compression::best());
    gz.write_all(&cpio).map_err(InitramfsError::Archive)?;
    gz.finish().map_err(InitramfsError::Archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, needs: &[&str]) -> KernelModule {
        KernelModule {
            name: name.into(),
            path: format!("kernel/{name}.ko.xz"),
            needs: needs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn modules_dep_lists_the_closure_in_reverse_load_order() {
        let mods = [
            m("dm_mod", &[]),
            m("reed_solomon", &[]),
            m("dm_bufio", &["dm_mod"]),
            m("dm_verity", &["dm_bufio", "dm_mod", "reed_solomon"]),
        ];
        assert_eq!(
            modules_dep(&mods),
            "kernel/dm_bufio.ko.xz: kernel/dm_mod.ko.xz\n\
             kernel/dm_mod.ko.xz:\n\
             kernel/dm_verity.ko.xz: kernel/dm_bufio.ko.xz kernel/reed_solomon.ko.xz kernel/dm_mod.ko.xz\n\
             kernel/reed_solomon.ko.xz:\n"
        );
    }

    #[test]
    fn normalize_joins_dash_and_underscore() {
        assert_eq!(normalize("dm-verity"), "dm_verity");
        assert_eq!(normalize("virtio_blk"), "virtio_blk");
    }

    /// A relocatable x86-64 ELF whose `.modinfo` holds `name=<name>` and `fields`.
    fn ko(name: &str, fields: &[&str]) -> Vec<u8> {
        use object::write::Object;
        let mut obj = Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let section = obj.add_section(
            vec![],
            b".modinfo".to_vec(),
            object::SectionKind::ReadOnlyData,
        );
        let mut data = format!("name={name}\0").into_bytes();
        for f in fields {
            data.extend(f.as_bytes());
            data.push(0);
        }
        obj.append_section_data(section, &data, 1);
        obj.write().unwrap()
    }

    /// A fake `lib/modules/6.12.0-test` tree; returns its path.
    fn tree(
        dir: &Path,
        modules: &[(&str, &str, &[&str])],
        builtin: &str,
        builtin_modinfo: &[u8],
    ) -> PathBuf {
        let root = dir.join("lib/modules/6.12.0-test");
        for (rel, name, fields) in modules {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let elf = ko(name, fields);
            let bytes = if rel.ends_with(".xz") {
                let mut out = Vec::new();
                let mut enc = liblzma::write::XzEncoder::new(&mut out, 1);
                std::io::Write::write_all(&mut enc, &elf).unwrap();
                enc.finish().unwrap();
                out
            } else {
                elf
            };
            std::fs::write(path, bytes).unwrap();
        }
        std::fs::write(root.join("modules.builtin"), builtin).unwrap();
        std::fs::write(root.join("modules.builtin.modinfo"), builtin_modinfo).unwrap();
        root
    }

    fn standard(dir: &Path) -> PathBuf {
        tree(
            dir,
            &[
                ("kernel/drivers/md/dm-mod.ko.xz", "dm_mod", &[]),
                (
                    "kernel/drivers/md/dm-bufio.ko.xz",
                    "dm_bufio",
                    &["depends=dm-mod"],
                ),
                (
                    "kernel/drivers/md/dm-verity.ko.xz",
                    "dm_verity",
                    &["depends=dm-mod,dm-bufio", "license=GPL"],
                ),
                (
                    "kernel/lib/libcrc32c.ko.xz",
                    "libcrc32c",
                    &["depends=", "softdep=pre: crc32c post: nothing"],
                ),
                ("kernel/fs/erofs/erofs.ko", "erofs", &["depends=libcrc32c"]),
                (
                    "kernel/crypto/crc32c_generic.ko.xz",
                    "crc32c_generic",
                    &["alias=crypto-crc32c", "alias=crc32c"],
                ),
                ("kernel/drivers/net/virtio_net.ko.xz", "virtio_net", &[]),
            ],
            "kernel/drivers/virtio/virtio_pci.ko\n",
            b"virtio_pci.license=GPL\0sha256_generic.alias=sha256\0",
        )
    }

    #[test]
    fn closure_follows_depends_and_pre_softdeps_in_load_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = standard(dir.path());
        let got = module_closure(
            &root,
            &["dm-verity", "erofs", "crc32c_generic", "virtio_pci"],
        )
        .unwrap();
        let names: Vec<&str> = got.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "crc32c_generic",
                "dm_mod",
                "dm_bufio",
                "libcrc32c",
                "dm_verity",
                "erofs"
            ]
        );
        let verity = got.iter().find(|m| m.name == "dm_verity").unwrap();
        assert_eq!(verity.path, "kernel/drivers/md/dm-verity.ko.xz");
        assert_eq!(verity.needs, ["dm_bufio", "dm_mod"]);
        let crc = got.iter().find(|m| m.name == "libcrc32c").unwrap();
        assert_eq!(crc.needs, ["crc32c_generic"]);
    }

    #[test]
    fn unsatisfied_softdeps_and_missing_modules_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = standard(dir.path());
        match module_closure(&root, &["erofs"]) {
            Err(InitramfsError::UnsatisfiedSoftdep { module, wants }) => {
                assert_eq!((module.as_str(), wants.as_str()), ("libcrc32c", "crc32c"));
            }
            other => panic!("{other:?}"),
        }
        match module_closure(&root, &["dm_verity", "nope"]) {
            Err(InitramfsError::ModuleNotFound {
                name, needed_by, ..
            }) => {
                assert_eq!(
                    (name.as_str(), needed_by.as_str()),
                    ("nope", "the wanted list")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn comma_separated_softdeps_are_each_resolved() {
        // NVIDIA's nvidia.ko: `softdep=pre: ecdh_generic,ecdsa_generic`, one built in, one a module.
        let dir = tempfile::tempdir().unwrap();
        let root = tree(
            dir.path(),
            &[
                (
                    "updates/nvidia.ko",
                    "nvidia",
                    &["depends=", "softdep=pre: ecdh_generic,ecdsa_generic"],
                ),
                ("kernel/crypto/ecdh_generic.ko.xz", "ecdh_generic", &[]),
            ],
            "kernel/crypto/ecdsa_generic.ko\n",
            b"",
        );
        match module_closure(&root, &["nvidia"]) {
            Err(InitramfsError::UnsatisfiedSoftdep { module, wants }) => {
                assert_eq!(
                    (module.as_str(), wants.as_str()),
                    ("nvidia", "ecdh_generic")
                );
            }
            other => panic!("{other:?}"),
        }
        let got = module_closure(&root, &["nvidia", "ecdh_generic"]).unwrap();
        let names: Vec<&str> = got.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["ecdh_generic", "nvidia"]);
        assert_eq!(got[1].needs, ["ecdh_generic"]);
    }

    #[test]
    fn a_softdep_on_a_builtin_alias_is_satisfied() {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(
            dir.path(),
            &[("kernel/a.ko.xz", "a", &["softdep=pre: sha256"])],
            "",
            b"sha256_generic.alias=sha256\0",
        );
        assert_eq!(module_closure(&root, &["a"]).unwrap().len(), 1);
    }

    #[test]
    fn a_module_whose_modinfo_disagrees_with_its_file_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path(), &[("kernel/a.ko.xz", "b", &[])], "", b"");
        assert!(matches!(
            module_closure(&root, &["a"]),
            Err(InitramfsError::BadModule { .. })
        ));
        std::fs::write(root.join("kernel/a.ko.xz"), b"not xz").unwrap();
        assert!(matches!(
            module_closure(&root, &["a"]),
            Err(InitramfsError::Decompress { .. })
        ));
    }

    /// The smallest static x86-64 executable header: ET_EXEC, no program headers, no interpreter.
    fn static_elf() -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        h[16..18].copy_from_slice(&elf::ET_EXEC.to_le_bytes());
        h[18..20].copy_from_slice(&elf::EM_X86_64.to_le_bytes());
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[52..54].copy_from_slice(&64u16.to_le_bytes());
        h[54..56].copy_from_slice(&56u16.to_le_bytes());
        h[58..60].copy_from_slice(&64u16.to_le_bytes());
        h.extend(b"rest of the binary");
        h
    }

    /// One entry read back from an archive.
    struct Unpacked {
        name: String,
        mode: u32,
        owner: (u32, u32),
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    fn unpack(gz: &[u8]) -> Vec<Unpacked> {
        let mut cpio = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut cpio).unwrap();
        let mut out = Vec::new();
        let mut rest = &cpio[..];
        loop {
            let mut r = cpio::NewcReader::new(rest).unwrap();
            if r.entry().is_trailer() {
                return out;
            }
            let e = r.entry();
            let mut u = Unpacked {
                name: e.name().to_owned(),
                mode: e.mode(),
                owner: (e.uid(), e.gid()),
                mtime: e.mtime(),
                rdev: (e.rdev_major(), e.rdev_minor()),
                data: Vec::new(),
            };
            std::io::Read::read_to_end(&mut r, &mut u.data).unwrap();
            out.push(u);
            rest = r.finish().unwrap();
        }
    }

    #[test]
    fn initramfs_is_deterministic_sorted_and_owned_by_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = standard(dir.path());
        let init = dir.path().join("init");
        std::fs::write(&init, static_elf()).unwrap();
        let wanted = ["dm_verity", "virtio_pci"];
        let a = build_initramfs(&init, &root, &wanted, 1_700_000_000).unwrap();
        assert_eq!(
            a,
            build_initramfs(&init, &root, &wanted, 1_700_000_000).unwrap()
        );
        assert_eq!(
            &a[..10],
            &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255],
            "gzip header: mtime 0, OS 255"
        );

        let entries = unpack(&a);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let m = "lib/modules/6.12.0-test";
        assert_eq!(
            names,
            [
                "dev".to_owned(),
                "dev/console".into(),
                "init".into(),
                "lib".into(),
                "lib/modules".into(),
                m.into(),
                format!("{m}/kernel"),
                format!("{m}/kernel/drivers"),
                format!("{m}/kernel/drivers/md"),
                format!("{m}/kernel/drivers/md/dm-bufio.ko.xz"),
                format!("{m}/kernel/drivers/md/dm-mod.ko.xz"),
                format!("{m}/kernel/drivers/md/dm-verity.ko.xz"),
                format!("{m}/modules.dep"),
                "proc".into(),
                "sys".into(),
                "sysroot".into(),
            ]
        );
        for e in &entries {
            let name = &e.name;
            assert_eq!((e.owner, e.mtime), ((0, 0), 1_700_000_000), "{name}");
            match name.as_str() {
                "init" => assert_eq!((e.mode, e.data.clone()), (0o100755, static_elf())),
                "dev/console" => assert_eq!((e.mode, e.rdev), (0o020600, (5, 1))),
                n if n.ends_with(".ko.xz") || n.ends_with(".dep") => {
                    assert_eq!(e.mode, 0o100644, "{n}")
                }
                n => assert_eq!(e.mode, 0o040755, "{n}"),
            }
            if name.ends_with("dm-verity.ko.xz") {
                assert_eq!(
                    e.data,
                    std::fs::read(root.join("kernel/drivers/md/dm-verity.ko.xz")).unwrap()
                );
            }
            if name.ends_with("modules.dep") {
                assert_eq!(
                    String::from_utf8(e.data.clone()).unwrap(),
                    "kernel/drivers/md/dm-bufio.ko.xz: kernel/drivers/md/dm-mod.ko.xz\n\
                     kernel/drivers/md/dm-mod.ko.xz:\n\
                     kernel/drivers/md/dm-verity.ko.xz: kernel/drivers/md/dm-bufio.ko.xz kernel/drivers/md/dm-mod.ko.xz\n"
                );
            }
        }
        assert_ne!(
            a,
            build_initramfs(&init, &root, &wanted, 1_700_000_001).unwrap()
        );
        assert!(matches!(
            build_initramfs(&init, &root, &wanted, 1 << 32),
            Err(InitramfsError::EpochRange(_))
        ));
        assert!(matches!(
            build_initramfs(&init, dir.path(), &wanted, 0),
            Err(InitramfsError::ModulesRoot(_))
        ));
    }

    #[test]
    fn dynamic_inits_are_refused() {
        // The test binary itself is dynamically linked on the gnu host target.
        let me = std::env::current_exe().unwrap();
        let err = check_static_init(&me, &std::fs::read(&me).unwrap()).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
        assert!(check_static_init(&me, b"#!/bin/sh\n").is_err());
    }
}
