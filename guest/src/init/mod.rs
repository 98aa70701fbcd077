//! The guest init (PID 1): from the measured command line to a verified root and the runtime.
//!
//! ```text
//!  mount /proc /sys /dev ─▶ parse /proc/cmdline ─▶ load modules (modules.dep order)
//!   ─▶ find disks rootfs, model, config (virtio-blk serials)
//!   ─▶ dm-verity rootfs ─▶ /sysroot (erofs, ro)   dm-verity model ─▶ /sysroot/models (erofs, ro)
//!   ─▶ tmpfs /tmp /run /var ─▶ config sha256 check ─▶ /run/chrysalis/guest.toml
//!   ─▶ move /proc /sys /dev ─▶ switch_root ─▶ exec /usr/bin/chrysalis-guest --config …
//! ```
//!
//! Any failure prints one `chrysalis-init: FATAL: …` line on the console and powers the VM off;
//! there is no shell and no fallback. The contract with the image builder is docs/image.md, "Boot".

mod config;
mod disks;
mod dm;
mod error;
mod modules;
mod verity;

use std::convert::Infallible;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};

/// The runtime init hands over to.
pub(crate) const RUNTIME: &str = "/usr/bin/chrysalis-guest";
/// Where the verified config is written, as seen from the new root.
pub(crate) const CONFIG_PATH: &str = "/run/chrysalis/guest.toml";
/// Where the verified rootfs is assembled before switch_root.
const NEW_ROOT: &str = "/sysroot";
/// How long a disk may take to appear after virtio_blk is loaded.
const DISK_TIMEOUT: Duration = Duration::from_secs(10);

/// Prints one line on the console.
pub(crate) fn log(msg: &str) {
    // stderr is unbuffered, so lines keep their order with the kernel's and survive a power-off.
    eprintln!("chrysalis-init: {msg}");
}

/// Seconds since the kernel started, for the boot-time lines on the console.
fn uptime() -> String {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(|u| format!("{u} s")))
        .unwrap_or_else(|| "unknown".into())
}

/// Prints the error as a FATAL line and powers the VM off. Never returns.
pub(crate) fn fatal(err: &anyhow::Error) -> ! {
    eprintln!("chrysalis-init: FATAL: {err:#}");
    power_off()
}

fn power_off() -> ! {
    nix::unistd::sync();
    let Err(err) = reboot(RebootMode::RB_POWER_OFF);
    // Exiting PID 1 makes the kernel panic, which stops the VM too (panic=-1 and -no-reboot).
    eprintln!("chrysalis-init: FATAL: power-off failed: {err}");
    std::process::exit(1)
}

/// Runs the whole boot; returns only with an error (on success the process becomes the runtime).
pub(crate) fn run() -> anyhow::Result<Infallible> {
    mount_early()?;
    log(&format!("starting (uptime {})", uptime()));
    let cmdline = fs::read_to_string("/proc/cmdline").context("cannot read /proc/cmdline")?;
    let params = chrysalis_attestation::bootargs::parse(&cmdline)?;

    let release = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
    modules::load_all(&Path::new("/lib/modules").join(&release))?;
    mount_fs(
        "configfs",
        "/sys/kernel/config",
        "configfs",
        MsFlags::empty(),
        None,
    )
    .context("configfs-tsm needs configfs")?;

    let rootfs_disk = disks::wait_for("rootfs", DISK_TIMEOUT)?;
    let model_disk = disks::wait_for("model", DISK_TIMEOUT)?;
    let config_disk = disks::wait_for("config", DISK_TIMEOUT)?;

    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    let rootfs = open_verity("chrysalis-rootfs", &rootfs_disk, &params.rootfs)?;
    mount_fs(&rootfs, NEW_ROOT, "erofs", ro, None).context("cannot mount the rootfs")?;
    let model = open_verity("chrysalis-model", &model_disk, &params.model)?;
    mount_fs(
        &model,
        &in_root("/models"),
        "erofs",
        ro | MsFlags::MS_NOEXEC,
        None,
    )
    .context("cannot mount the model pack")?;
    let rw = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    mount_fs("tmpfs", &in_root("/tmp"), "tmpfs", rw, Some("mode=1777"))?;
    mount_fs(
        "tmpfs",
        &in_root("/run"),
        "tmpfs",
        rw | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )?;
    mount_fs("tmpfs", &in_root("/var"), "tmpfs", rw, Some("mode=0755"))?;

    let disk = File::open(&config_disk.node)
        .with_context(|| format!("cannot open {}", config_disk.node.display()))?;
    let config = config::verified(&config::read_disk(disk)?, params.config_sha256.as_bytes())?;
    write_config(&config)?;

    // Read the runtime once through dm-verity: a corrupted block then stops the boot here with a
    // clear line, instead of a SIGBUS in PID 1 after exec.
    let runtime = in_root(RUNTIME);
    let mut f =
        File::open(&runtime).with_context(|| format!("cannot open {RUNTIME} in the rootfs"))?;
    std::io::copy(&mut f, &mut std::io::sink())
        .with_context(|| format!("cannot read {RUNTIME}"))?;

    switch_root()?;
    log(&format!("starting {RUNTIME} (uptime {})", uptime()));
    let err = std::process::Command::new(RUNTIME)
        .args(["serve", "--config", CONFIG_PATH])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", "/root")
        .exec();
    bail!("cannot exec {RUNTIME}: {err}")
}

fn in_root(path: &str) -> String {
    format!("{NEW_ROOT}{path}")
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> anyhow::Result<()> {
    mount(Some(source), target, Some(fstype), flags, data)
        .with_context(|| format!("cannot mount {fstype} {source} on {target}"))
}

/// The kernel's own file systems, mounted on the initramfs.
fn mount_early() -> anyhow::Result<()> {
    let kernel_fs = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for dir in ["/proc", "/sys", "/dev", NEW_ROOT] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    mount_fs("proc", "/proc", "proc", kernel_fs, None)?;
    mount_fs("sysfs", "/sys", "sysfs", kernel_fs, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    fs::DirBuilder::new().mode(0o755).create("/dev/shm")?;
    mount_fs(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
}

/// Opens `disk` as a dm-verity device named `name` and returns its device node.
fn open_verity(
    name: &str,
    disk: &disks::Disk,
    p: &chrysalis_attestation::bootargs::VerityArgs,
) -> anyhow::Result<String> {
    let data_bytes = p.data_blocks * verity::BLOCK_BYTES;
    // The hash tree follows the data; a single data block has none (its hash is the root hash).
    if disk.bytes < data_bytes {
        bail!(
            "disk {} ({}) is {} bytes, less than its {} data blocks",
            disk.name,
            name,
            disk.bytes,
            p.data_blocks
        );
    }
    let target = verity::verity_target(disk.dev, p);
    let (_, minor) = dm::create_readonly(name, &target)
        .with_context(|| format!("cannot open dm-verity {name}"))?;
    let node = PathBuf::from(format!("/dev/dm-{minor}"));
    for _ in 0..500 {
        if node.exists() {
            log(&format!(
                "{name}: dm-verity on {} is {}",
                disk.name,
                node.display()
            ));
            return Ok(node.to_string_lossy().into_owned());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("{} did not appear for {name}", node.display())
}

fn write_config(config: &[u8]) -> anyhow::Result<()> {
    let path = in_root(CONFIG_PATH);
    let dir = Path::new(&path)
        .parent()
        .expect("CONFIG_PATH has a directory");
    fs::DirBuilder::new().mode(0o700).create(dir)?;
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&path)
        .with_context(|| format!("cannot create {path}"))?;
    f.write_all(config)?;
    Ok(())
}

/// Frees the initramfs, moves the kernel file systems into the new root and makes it `/`.
fn switch_root() -> anyhow::Result<()> {
    for dir in ["/proc", "/sys", "/dev", "/models", "/tmp", "/run", "/var"] {
        if !Path::new(&in_root(dir)).is_dir() {
            bail!("the rootfs lacks the directory {dir}");
        }
    }
    // The initramfs stays in RAM until it is emptied; its files are not needed any more.
    fs::remove_file("/init").context("cannot remove /init")?;
    fs::remove_dir_all("/lib").context("cannot remove /lib")?;
    for dir in ["/proc", "/sys", "/dev"] {
        mount(
            Some(dir),
            in_root(dir).as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .with_context(|| format!("cannot move {dir} into the new root"))?;
    }
    nix::unistd::chdir(NEW_ROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("cannot move the new root to /")?;
    nix::unistd::chroot(".").context("chroot failed")?;
    nix::unistd::chdir("/")?;
    Ok(())
}
