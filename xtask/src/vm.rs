//! `cargo xtask vm run`: boot a built image (or a kernel + initramfs + disks) under QEMU TCG, with an
//! optional vhost-user vsock device, and show the console.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrysalis_image::Manifest;
use chrysalis_image::vm::{Disk, Ending, TcgVm, VhostUserVsock};

/// Arguments of `vm run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// A built image: the directory of its manifest.json (`cargo xtask image build` writes
    /// out/<flavor>). Kernel, initramfs, command line and the rootfs/model/config disks come from it.
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "append", "disks"])]
    image: Option<PathBuf>,
    /// Kernel image (bzImage) for direct kernel boot.
    #[arg(long, required_unless_present = "image")]
    kernel: Option<PathBuf>,
    /// Initramfs.
    #[arg(long, required_unless_present = "image")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 panic=-1")]
    append: String,
    /// A read-only virtio-blk disk as SERIAL=PATH (serials rootfs, model, config for the guest init).
    #[arg(long = "disk", value_name = "SERIAL=PATH")]
    disks: Vec<Disk>,
    /// Give the guest a vsock device with this CID: a vhost-device-vsock process (on PATH or in
    /// ~/.cargo/bin) serves it, and host programs reach the guest through the hybrid vsock socket
    /// --vsock-uds (connect, then send "CONNECT <port>\n").
    #[arg(long)]
    vsock_cid: Option<u32>,
    /// The hybrid vsock Unix socket (default: a temporary directory's `vsock.sock`).
    #[arg(long, requires = "vsock_cid")]
    vsock_uds: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Stop QEMU (and succeed) once a console line contains this text.
    #[arg(long)]
    until: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Write the console to this file instead of stdout.
    #[arg(long)]
    log: Option<PathBuf>,
}

/// Boots the VM, streams the console, and prints when the init and the runtime started.
pub(crate) fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut vm = match &args.image {
        Some(dir) => {
            let path = dir.join("manifest.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let manifest = Manifest::from_json(&text)
                .with_context(|| format!("{} is not a valid manifest", path.display()))?;
            manifest.verify_artifacts(dir).with_context(|| {
                format!("artifacts in {} differ from the manifest", dir.display())
            })?;
            TcgVm::from_manifest(dir, &manifest)
        }
        None => {
            let (Some(kernel), Some(initrd)) = (&args.kernel, &args.initrd) else {
                bail!("give --image DIR, or --kernel and --initrd");
            };
            let mut vm = TcgVm::new(kernel, initrd, &args.append);
            vm.disks = args.disks.clone();
            vm
        }
    };
    vm.memory_mib = args.memory;
    vm.cpus = args.cpus;
    vm.qemu = args.qemu.clone();
    let tmp = tempfile::tempdir()?;
    let _backend = match args.vsock_cid {
        Some(cid) => {
            let uds = args
                .vsock_uds
                .clone()
                .unwrap_or_else(|| tmp.path().join("vsock.sock"));
            let socket = tmp.path().join("vhost-user-vsock.sock");
            let backend = start_vhost_device_vsock(cid, &socket, &uds, tmp.path())?;
            eprintln!(
                "vm: vsock CID {cid} through vhost-device-vsock; hybrid vsock socket {}",
                uds.display()
            );
            vm.vsock = Some(VhostUserVsock { socket });
            Some(backend)
        }
        None => None,
    };
    let mut sink: Box<dyn Write> = match &args.log {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    eprintln!("vm: {} {}", vm.qemu.display(), shell_words(&vm));
    let boot = vm.run(
        args.until.as_deref(),
        Duration::from_secs(args.timeout),
        |line| {
            let _ = writeln!(sink, "{}", line.text);
        },
    )?;
    for (what, needle) in [
        ("init started", "chrysalis-init: starting ("),
        ("runtime exec'd", "chrysalis-init: starting /"),
        ("init FATAL", "chrysalis-init: FATAL"),
    ] {
        if let Some(l) = boot.first(needle) {
            eprintln!("vm: {what} at {:.2} s", l.at.as_secs_f64());
        }
    }
    if let Some(until) = &args.until
        && let Some(l) = boot.first(until)
    {
        eprintln!("vm: {until:?} at {:.2} s", l.at.as_secs_f64());
    }
    match boot.ending {
        Ending::Matched => Ok(()),
        Ending::Exited(status) if args.until.is_none() => {
            eprintln!(
                "vm: QEMU exited ({status}) after {:.2} s",
                boot.elapsed.as_secs_f64()
            );
            Ok(())
        }
        Ending::Exited(status) => bail!(
            "QEMU exited ({status}) before the console showed {:?}",
            args.until.unwrap_or_default()
        ),
        Ending::TimedOut => bail!("timed out after {} s", args.timeout),
    }
}

/// vhost-device-vsock, killed and reaped when dropped.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts vhost-device-vsock for guest `cid` and waits until its vhost-user socket exists (QEMU
/// connects to it at start-up). Its output goes to `log_dir/vhost-device-vsock.log`.
fn start_vhost_device_vsock(
    cid: u32,
    socket: &Path,
    uds: &Path,
    log_dir: &Path,
) -> anyhow::Result<Backend> {
    let program = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin/vhost-device-vsock"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "vhost-device-vsock".into());
    for p in [socket, uds] {
        let s = p.to_str().context("socket path is not UTF-8")?;
        if s.contains([',', '=']) {
            bail!("vhost-device-vsock cannot take ',' or '=' in a path: {s}");
        }
    }
    let log = std::fs::File::create(log_dir.join("vhost-device-vsock.log"))?;
    let child = Command::new(&program)
        .arg("--vm")
        .arg(format!(
            "guest-cid={cid},socket={},uds-path={}",
            socket.display(),
            uds.display()
        ))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (cargo install --locked vhost-device-vsock)",
                program.display()
            )
        })?;
    let mut backend = Backend(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Some(status) = backend.0.try_wait()? {
            bail!(
                "vhost-device-vsock exited ({status}); see {}",
                log_dir.join("vhost-device-vsock.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "vhost-device-vsock did not create {} in 10 s",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(backend)
}

/// The command line, quoted enough to paste into a shell.
fn shell_words(vm: &TcgVm) -> String {
    vm.args()
        .iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
