//! `cargo xtask vm run`: boot a kernel + initramfs (+ disks) under QEMU TCG and show the console.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chrysalis_image::vm::{Disk, Ending, TcgVm};

/// Arguments of `vm run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Kernel image (bzImage) for direct kernel boot.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs.
    #[arg(long)]
    initrd: PathBuf,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 panic=-1")]
    append: String,
    /// A read-only virtio-blk disk as SERIAL=PATH (serials rootfs, model, config for the guest init).
    #[arg(long = "disk", value_name = "SERIAL=PATH")]
    disks: Vec<Disk>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
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
    let mut vm = TcgVm::new(&args.kernel, &args.initrd, &args.append);
    vm.disks = args.disks;
    vm.memory_mib = args.memory;
    vm.cpus = args.cpus;
    vm.qemu = args.qemu;
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
