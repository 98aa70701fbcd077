//! Boot smoke test: the real kernel, initramfs and guest init under QEMU TCG, with a rootfs and a
//! model pack behind dm-verity and a config pinned by sha256 (the contract of docs/image.md, "Boot").
//!
//! Two groups of cases:
//! - the *built image* (`cargo xtask image build --flavor cpu` writes it to out/cpu, `image reproduce`
//!   to `<cache>/reproduce/cpu-a/out`; another directory with `CHRYSALIS_IMAGE_DIR`): it boots until the init hands over to
//!   `/usr/bin/chrysalis-guest serve`, and with one flipped byte in rootfs.img dm-verity stops the boot
//!   and the runtime never starts;
//! - a *fixture rootfs* holding a test program as /usr/bin/chrysalis-guest
//!   (tests/fixtures/fake_guest.rs) that prints one marker line, to check the hand-over in detail
//!   (arguments, config, model files, read-only root): the intact image boots to the marker; one
//!   flipped byte in the rootfs stops it (dm-verity); a config that does not match
//!   `chrysalis.config_sha256` stops it. The kernel and initramfs are the built image's when there is
//!   one; otherwise the initramfs is made here from chrysalis-init and the kernel package, which is
//!   `CHRYSALIS_KERNEL_DEB` if set, else the one image/locks/cpu.lock pins, taken from the image cache
//!   (`<repo>/.cache`, or `CHRYSALIS_CACHE`) where any `cargo xtask image build` left it.
//!
//! Needs qemu-system-x86_64, mkfs.erofs, veritysetup and the musl Rust target (fixture guest). When
//! something is missing the tests print why and how to get it, and pass, except under `CI=true`, where
//! they fail. `CHRYSALIS_BOOT_SMOKE_OUT=<dir>` also writes the fixture artifacts and command line there,
//! to boot them by hand with `cargo xtask vm run`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrysalis_image::initramfs::{GUEST_MODULES, build_initramfs};
use chrysalis_image::vm::{Boot, Disk, Ending, TcgVm};
use chrysalis_image::{Cache, Lock, Manifest};
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

/// How to get an image to boot.
const HOW_TO_BUILD: &str = "build one with `cargo xtask image build --flavor cpu` (writes out/cpu; see docs/image.md), \
     or set CHRYSALIS_IMAGE_DIR to a directory holding a manifest.json";

/// The image cache: `CHRYSALIS_CACHE`, else `<repo>/.cache` (as `cargo xtask image` uses it).
fn cache_root() -> PathBuf {
    std::env::var_os("CHRYSALIS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache"))
}

/// The directory of the built image to test: `CHRYSALIS_IMAGE_DIR` if set; else out/cpu of the
/// workspace (`cargo xtask image build --flavor cpu`) or the first build of
/// `cargo xtask image reproduce --flavor cpu` in the cache, whichever holds a manifest.json.
fn image_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CHRYSALIS_IMAGE_DIR") {
        let dir = PathBuf::from(dir);
        return dir.join("manifest.json").is_file().then_some(dir);
    }
    [
        workspace().join("out/cpu"),
        cache_root().join("reproduce/cpu-a/out"),
    ]
    .into_iter()
    .find(|d| d.join("manifest.json").is_file())
}

/// The built image, its artifacts checked against its manifest.
fn built_image() -> Option<&'static (PathBuf, Manifest)> {
    static IMAGE: OnceLock<Option<(PathBuf, Manifest)>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = image_dir()?;
            let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
            let m = Manifest::from_json(&text)
                .unwrap_or_else(|e| panic!("{}/manifest.json: {e}", dir.display()));
            m.verify_artifacts(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}; rebuild it ({HOW_TO_BUILD})", dir.display()));
            Some((dir, m))
        })
        .as_ref()
}

/// The kernel package for a fixture boot without a built image: `CHRYSALIS_KERNEL_DEB`, else the
/// locked one from the image cache.
fn kernel_deb() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CHRYSALIS_KERNEL_DEB") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "CHRYSALIS_KERNEL_DEB={} is not a file",
                p.display()
            ))
        };
    }
    let lock_path = workspace().join("image/locks/cpu.lock");
    let text =
        std::fs::read_to_string(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    let lock = Lock::parse(&text).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    let deb = lock.kernel_deb();
    let root = cache_root();
    let cache = Cache::open(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    match cache.get(&deb.name, &deb.sha256) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(format!(
            "there is no built image and the locked kernel package {} {} is not in the cache {}; {HOW_TO_BUILD}",
            deb.name,
            deb.version,
            root.display()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// What is missing to run the fixture boots, if anything.
fn missing() -> Option<String> {
    for tool in ["qemu-system-x86_64", "mkfs.erofs", "veritysetup"] {
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
    if built_image().is_some() {
        return None;
    }
    if !on_path("dpkg-deb") {
        return Some("dpkg-deb is not installed (apt-get install dpkg)".into());
    }
    kernel_deb().err()
}

/// Skips (prints why) or, under CI=true, fails when `why` says something is missing.
fn skip(why: Option<String>) -> bool {
    let Some(why) = why else { return false };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("boot smoke test cannot run in CI: {why}");
    }
    eprintln!("skipping boot smoke test: {why}");
    true
}

/// Whether the fixture boots can run (prints why not).
fn prerequisites_met() -> bool {
    !skip(missing())
}

/// The built image, or None after printing how to get one (a failure under CI=true).
fn image_for_test() -> Option<&'static (PathBuf, Manifest)> {
    if skip((!on_path("qemu-system-x86_64")).then(|| {
        "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".to_owned()
    })) {
        return None;
    }
    let image = built_image();
    if image.is_none() {
        skip(Some(format!(
            "no built image (looked in {}); {HOW_TO_BUILD}",
            std::env::var("CHRYSALIS_IMAGE_DIR")
                .unwrap_or_else(|_| "out/cpu and <cache>/reproduce/cpu-a/out".into())
        )));
    }
    image
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

/// The kernel of the package [`kernel_deb`] and an initramfs made here from chrysalis-init and its
/// modules.
fn kernel_and_initramfs_from_deb(d: &Path) -> (PathBuf, PathBuf) {
    let deb = kernel_deb().expect("checked by prerequisites_met");
    eprintln!("kernel from {}", deb.display());
    let kernel_root = d.join("kernel");
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
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
    let image = build_initramfs(&init, &modules_root, GUEST_MODULES, SOURCE_DATE_EPOCH).unwrap();
    std::fs::write(&initrd, &image).unwrap();
    eprintln!("initramfs: {} bytes", image.len());
    (kernel, initrd)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        let (kernel, initrd) = match built_image() {
            Some((dir, m)) => {
                eprintln!(
                    "kernel and initramfs of the built image in {}",
                    dir.display()
                );
                (
                    dir.join(&m.artifacts.kernel.file),
                    dir.join(&m.artifacts.initramfs.file),
                )
            }
            None => kernel_and_initramfs_from_deb(d),
        };

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

/// The init's line just before it execs the runtime (`serve --config /run/chrysalis/guest.toml`).
const HANDOVER: &str = "chrysalis-init: starting /usr/bin/chrysalis-guest";

/// Boots the built image with `rootfs` in place of its rootfs.img, until the init hands over to the
/// runtime or the VM stops.
fn boot_image(dir: &Path, m: &Manifest, rootfs: &Path) -> Boot {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut vm = TcgVm::from_manifest(dir, m);
    vm.memory_mib = 2048;
    for d in &mut vm.disks {
        if d.serial == "rootfs" {
            d.path = rootfs.into();
        }
    }
    let boot = vm
        .run(Some(HANDOVER), BOOT_TIMEOUT, |_| {})
        .expect("QEMU starts");
    eprintln!("----- console -----\n{}-------------------", boot.console());
    eprintln!(
        "built image: init started {:?}, hand-over {:?}, ended {:?} after {:.2} s",
        boot.first("chrysalis-init: starting (").map(|l| l.at),
        boot.first(HANDOVER).map(|l| l.at),
        boot.ending,
        boot.elapsed.as_secs_f64()
    );
    boot
}

#[test]
fn built_image_boots_to_the_runtime() {
    let Some((dir, m)) = image_for_test() else {
        return;
    };
    let boot = boot_image(dir, m, &dir.join(&m.artifacts.rootfs.file));
    assert_eq!(
        boot.ending,
        Ending::Matched,
        "the init did not start the runtime:\n{}",
        boot.console()
    );
    assert!(boot.first("chrysalis-init: FATAL").is_none());
    for disk in ["rootfs", "model"] {
        assert!(
            boot.first(&format!("chrysalis-{disk}: dm-verity on"))
                .is_some(),
            "{disk} was not opened through dm-verity:\n{}",
            boot.console()
        );
    }
}

#[test]
fn built_image_with_a_flipped_rootfs_byte_stops_the_boot() {
    let Some((dir, m)) = image_for_test() else {
        return;
    };
    // Block 0 holds the erofs superblock, which mounting reads first.
    let mut bytes = std::fs::read(dir.join(&m.artifacts.rootfs.file)).unwrap();
    bytes[1024 + 8] ^= 0x01;
    let tmp = tempfile::tempdir().unwrap();
    let tampered = tmp.path().join("rootfs.img");
    std::fs::write(&tampered, bytes).unwrap();

    let boot = boot_image(dir, m, &tampered);
    assert!(
        boot.first(HANDOVER).is_none(),
        "the runtime must not start:\n{}",
        boot.console()
    );
    assert!(
        boot.first("chrysalis-init: FATAL:").is_some(),
        "no FATAL line:\n{}",
        boot.console()
    );
    assert!(
        boot.lines
            .iter()
            .any(|l| l.text.contains("verity") && l.text.contains("is corrupted")),
        "dm-verity did not report the corrupted block:\n{}",
        boot.console()
    );
    assert!(
        matches!(boot.ending, Ending::Exited(_)),
        "the VM must power off by itself, got {:?}",
        boot.ending
    );
}
