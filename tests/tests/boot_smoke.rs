//! Boot smoke test: the real kernel, initramfs and guest init under QEMU TCG, with a rootfs and a
//! model pack behind dm-verity and a config pinned by sha256 (the contract of docs/image.md, "Boot").
//!
//! The rootfs holds a *test fixture* as /usr/bin/chrysalis-guest (tests/fixtures/fake_guest.rs)
//! that prints one marker line; it is built here and never shipped. The cases:
//! - the intact image boots to the marker: init verified and mounted everything and exec'd it;
//! - one flipped byte in the rootfs: dm-verity refuses the block, init prints FATAL, the VM
//!   powers off, and the marker never appears;
//! - a config that does not match `chrysalis.config_sha256`: FATAL and power-off likewise.
//!
//! Needs qemu-system-x86_64, mkfs.erofs, veritysetup, dpkg-deb, the musl Rust target, and the
//! Debian kernel package named by `CHRYSALIS_KERNEL_DEB` (a linux-image-*-amd64 .deb). Without
//! them the tests print why and pass, except under `CI=true`, where a missing tool fails them.
//! `CHRYSALIS_BOOT_SMOKE_OUT=<dir>` also writes the artifacts and command line there, to boot them
//! by hand with `cargo xtask vm run`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrysalis_image::initramfs::{GUEST_MODULES, build_initramfs};
use chrysalis_image::vm::{Boot, Disk, Ending, TcgVm};
use sha2::{Digest, Sha256};

const MARKER: &str = "CHRYSALIS-FIXTURE-GUEST-READY";
const CONFIG: &str = "# boot smoke fixture config\nmodel = \"fixture\"\n";
const MODEL_BYTES: usize = 300_000;
const SOURCE_DATE_EPOCH: u64 = 1_700_000_000;
/// Generous: TCG on a loaded 2-core CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .any(|d| d.join(tool).is_file())
    })
}

/// What is missing to run the boot tests, if anything.
fn missing() -> Option<String> {
    for tool in [
        "qemu-system-x86_64",
        "mkfs.erofs",
        "veritysetup",
        "dpkg-deb",
    ] {
        if !on_path(tool) {
            return Some(format!(
                "{tool} is not installed (apt-get install qemu-system-x86 erofs-utils cryptsetup-bin)"
            ));
        }
    }
    let sysroot = Command::new("rustc")
        .current_dir(workspace())
        .args(["--print", "sysroot"])
        .output();
    let musl = sysroot.ok().map(|o| {
        PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
            .join("lib/rustlib/x86_64-unknown-linux-musl")
    });
    if !musl.is_some_and(|d| d.is_dir()) {
        return Some("the Rust target x86_64-unknown-linux-musl is not installed (rustup target add x86_64-unknown-linux-musl; apt-get install musl-tools)".into());
    }
    match std::env::var_os("CHRYSALIS_KERNEL_DEB") {
        None => {
            Some("CHRYSALIS_KERNEL_DEB does not name the linux-image-*-amd64 .deb to boot".into())
        }
        Some(p) if !Path::new(&p).is_file() => Some(format!(
            "CHRYSALIS_KERNEL_DEB={} is not a file",
            p.to_string_lossy()
        )),
        Some(_) => None,
    }
}

/// Skips (prints why) or, under CI=true, fails when a prerequisite is missing.
fn prerequisites_met() -> bool {
    let Some(why) = missing() else { return true };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("boot smoke test cannot run in CI: {why}");
    }
    eprintln!("skipping boot smoke test: {why}");
    false
}

/// A disk image with its dm-verity tree appended, and the command-line values for it.
struct VerityDisk {
    path: PathBuf,
    root_hash: String,
    salt: String,
    blocks: u64,
}

/// Everything the three boots share; built once.
struct Fixture {
    _dir: tempfile::TempDir,
    kernel: PathBuf,
    initrd: PathBuf,
    rootfs: VerityDisk,
    model: VerityDisk,
    config: PathBuf,
    config_sha256: String,
}

fn build_init() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run(Command::new(cargo).current_dir(workspace()).args([
        "build",
        "--release",
        "--quiet",
        "--message-format=json",
        "-p",
        "chrysalis-guest",
        "--bin",
        "chrysalis-init",
        "--no-default-features",
        "--target",
        "x86_64-unknown-linux-musl",
    ]));
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "chrysalis-init")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no chrysalis-init executable")
}

fn build_fixture_guest(out: &Path) {
    let src = workspace().join("tests/fixtures/fake_guest.rs");
    run(Command::new("rustc")
        .current_dir(workspace())
        .args([
            "--edition",
            "2024",
            "--target",
            "x86_64-unknown-linux-musl",
            "-C",
            "opt-level=1",
            "-C",
            "strip=symbols",
            "-o",
        ])
        .arg(out)
        .arg(src));
}

/// Makes an erofs image of `tree` and appends its verity tree (docs/image.md layout).
fn verity_disk(tree: &Path, out: &Path, salt: &str) -> VerityDisk {
    run(Command::new("mkfs.erofs")
        .args([
            "--quiet",
            &format!("-T{SOURCE_DATE_EPOCH}"),
            "--all-root",
            "-U",
            "6c1b6e6a-7c3e-4d0b-9a52-000000000001",
        ])
        .arg(out)
        .arg(tree));
    let len = std::fs::metadata(out).unwrap().len();
    let blocks = len.div_ceil(4096);
    std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .unwrap()
        .set_len(blocks * 4096)
        .unwrap();
    let report = run(Command::new("veritysetup")
        .arg("format")
        .arg(out)
        .arg(out)
        .args([
            "--no-superblock",
            "--format=1",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
            &format!("--data-blocks={blocks}"),
            &format!("--hash-offset={}", blocks * 4096),
            &format!("--salt={salt}"),
        ]));
    let root_hash = report
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_owned())
        .expect("veritysetup printed no root hash");
    VerityDisk {
        path: out.into(),
        root_hash,
        salt: salt.into(),
        blocks,
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        let kernel_root = d.join("kernel");
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(std::env::var_os("CHRYSALIS_KERNEL_DEB").unwrap())
            .arg(&kernel_root));
        let find = |sub: &str, pred: &dyn Fn(&str) -> bool| -> PathBuf {
            let dir = kernel_root.join(sub);
            let mut hits: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| pred(&p.file_name().unwrap().to_string_lossy()))
                .collect();
            assert_eq!(
                hits.len(),
                1,
                "expected one match in {}: {hits:?}",
                dir.display()
            );
            hits.pop().unwrap()
        };
        let kernel = find("boot", &|n| n.starts_with("vmlinuz-"));
        let modules_root = find("usr/lib/modules", &|_| true);

        let init = build_init();
        let initrd = d.join("initrd.img");
        let image =
            build_initramfs(&init, &modules_root, GUEST_MODULES, SOURCE_DATE_EPOCH).unwrap();
        std::fs::write(&initrd, &image).unwrap();
        eprintln!("initramfs: {} bytes", image.len());

        let root_tree = d.join("rootfs");
        for dir in [
            "usr/bin", "proc", "sys", "dev", "models", "tmp", "run", "var",
        ] {
            std::fs::create_dir_all(root_tree.join(dir)).unwrap();
        }
        build_fixture_guest(&root_tree.join("usr/bin/chrysalis-guest"));
        let rootfs = verity_disk(&root_tree, &d.join("rootfs.img"), "a1b2c3d4");

        let model_tree = d.join("model");
        std::fs::create_dir_all(&model_tree).unwrap();
        let model_data: Vec<u8> = (0..MODEL_BYTES).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(model_tree.join("fixture-model.bin"), model_data).unwrap();
        let model = verity_disk(&model_tree, &d.join("model.img"), "-");

        let config = d.join("config.img");
        let mut padded = CONFIG.as_bytes().to_vec();
        padded.resize(CONFIG.len().next_multiple_of(4096), 0);
        std::fs::write(&config, padded).unwrap();

        let f = Fixture {
            kernel,
            initrd,
            rootfs,
            model,
            config,
            config_sha256: hex::encode(Sha256::digest(CONFIG)),
            _dir: dir,
        };
        if let Some(out) = std::env::var_os("CHRYSALIS_BOOT_SMOKE_OUT") {
            f.export(Path::new(&out));
        }
        f
    })
}

impl Fixture {
    /// Copies the artifacts to `out` with the command line, to rerun by hand with `cargo xtask vm run`.
    fn export(&self, out: &Path) {
        std::fs::create_dir_all(out).unwrap();
        for (from, name) in [
            (&self.kernel, "vmlinuz"),
            (&self.initrd, "initrd.img"),
            (&self.rootfs.path, "rootfs.img"),
            (&self.model.path, "model.img"),
            (&self.config, "config.img"),
        ] {
            std::fs::copy(from, out.join(name)).unwrap();
        }
        std::fs::write(out.join("cmdline.txt"), self.append(&self.config_sha256)).unwrap();
        eprintln!("boot smoke artifacts written to {}", out.display());
    }

    fn append(&self, config_sha256: &str) -> String {
        format!(
            "console=ttyS0 panic=-1 chrysalis.rootfs_verity={} chrysalis.rootfs_salt={} chrysalis.rootfs_blocks={} \
             chrysalis.model_verity={} chrysalis.model_salt={} chrysalis.model_blocks={} chrysalis.config_sha256={config_sha256}",
            self.rootfs.root_hash,
            self.rootfs.salt,
            self.rootfs.blocks,
            self.model.root_hash,
            self.model.salt,
            self.model.blocks,
        )
    }

    /// Boots with `rootfs` in place of the intact rootfs image, until the marker or power-off.
    fn boot(&self, rootfs: &Path, append: String) -> Boot {
        // One VM at a time: parallel TCG guests on two cores would only slow each other down.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let mut vm = TcgVm::new(&self.kernel, &self.initrd, append);
        vm.disks = vec![
            Disk {
                serial: "rootfs".into(),
                path: rootfs.into(),
            },
            Disk {
                serial: "model".into(),
                path: self.model.path.clone(),
            },
            Disk {
                serial: "config".into(),
                path: self.config.clone(),
            },
        ];
        let boot = vm
            .run(Some(MARKER), BOOT_TIMEOUT, |_| {})
            .expect("QEMU starts");
        eprintln!("----- console -----\n{}-------------------", boot.console());
        let at = |n: &str| {
            boot.first(n)
                .map(|l| format!("{:.2} s", l.at.as_secs_f64()))
                .unwrap_or_else(|| "-".into())
        };
        eprintln!(
            "boot: init started {}, runtime exec'd {}, marker {}, ended {:?} after {:.2} s",
            at("chrysalis-init: starting ("),
            at("chrysalis-init: starting /"),
            at(MARKER),
            boot.ending,
            boot.elapsed.as_secs_f64()
        );
        boot
    }
}

/// Asserts that the boot stopped on its own with a FATAL line mentioning `cause` and no marker.
fn assert_refused(boot: &Boot, cause: &str) {
    assert!(
        boot.first(MARKER).is_none(),
        "the runtime must not start:\n{}",
        boot.console()
    );
    let fatal = boot
        .first("chrysalis-init: FATAL:")
        .unwrap_or_else(|| panic!("no FATAL line:\n{}", boot.console()));
    assert!(
        fatal.text.contains(cause),
        "FATAL line does not name {cause:?}: {}",
        fatal.text
    );
    assert!(
        matches!(boot.ending, Ending::Exited(_)),
        "the VM must power off by itself, got {:?}",
        boot.ending
    );
}

#[test]
fn intact_image_boots_to_the_runtime() {
    if !prerequisites_met() {
        return;
    }
    let f = fixture();
    let boot = f.boot(&f.rootfs.path, f.append(&f.config_sha256));
    assert_eq!(
        boot.ending,
        Ending::Matched,
        "no marker:\n{}",
        boot.console()
    );
    let line = &boot.first(MARKER).unwrap().text;
    let expected = format!(
        "{MARKER} pid=1 args=[\"serve\", \"--config\", \"/run/chrysalis/guest.toml\"] config={CONFIG:?} \
         models=[\"fixture-model.bin\"] model_bytes={MODEL_BYTES} root_ro=true tmp_rw=true"
    );
    assert!(
        line.ends_with(&expected),
        "fixture saw a different hand-over:\n{line}\nexpected\n{expected}"
    );
    assert!(boot.first("chrysalis-init: FATAL").is_none());
    assert!(
        boot.first("chrysalis-rootfs: dm-verity on").is_some(),
        "{}",
        boot.console()
    );
}

#[test]
fn a_flipped_rootfs_byte_stops_the_boot() {
    if !prerequisites_met() {
        return;
    }
    let f = fixture();
    let mut bytes = std::fs::read(&f.rootfs.path).unwrap();
    // Flip a byte of the runtime's own code/data: the marker text inside the fixture binary.
    let data_end = (f.rootfs.blocks * 4096) as usize;
    let at = bytes[..data_end]
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())
        .expect("marker text is in the rootfs");
    bytes[at + 3] ^= 0x01;
    let tampered = f.rootfs.path.with_extension("tampered.img");
    std::fs::write(&tampered, bytes).unwrap();

    let boot = f.boot(&tampered, f.append(&f.config_sha256));
    assert_refused(&boot, "/usr/bin/chrysalis-guest");
    assert!(
        boot.lines
            .iter()
            .any(|l| l.text.contains("verity") && l.text.contains("is corrupted")),
        "dm-verity did not report the corrupted block:\n{}",
        boot.console()
    );
}

#[test]
fn a_config_not_pinned_on_the_command_line_stops_the_boot() {
    if !prerequisites_met() {
        return;
    }
    let f = fixture();
    let other = hex::encode(Sha256::digest(b"some other config\n"));
    let boot = f.boot(&f.rootfs.path, f.append(&other));
    assert_refused(&boot, "config sha256");
}
