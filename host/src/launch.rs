//! Command lines for the VM: QEMU for the `tdx`, `snp` and `sim` profiles, and vhost-device-vsock for `sim`.
//!
//! Building a [`LaunchPlan`] is pure: it reads the config and the manifest and returns argv vectors,
//! so `--dry-run` prints exactly what `run` executes and golden tests pin it.
//!
//! Common to every profile: direct kernel boot (`-kernel`, `-initrd`, `-append` with the manifest's
//! measured command line), the rootfs, model and config disks attached read-only as virtio-blk
//! disks in that order (serials `rootfs`, `model`, `config`: the guest init finds them by serial,
//! docs/image.md "Disks"), the guest serial console appended to
//! `<state_dir>/<name>-serial.log`, `-no-reboot` so that a guest that powers off or panics ends
//! QEMU (the supervisor then sees the failure), and no default devices.
//!
//! * `tdx`: KVM, `-cpu host`, a `tdx-guest` object (JSON syntax, the only one that takes the
//!   `quote-generation-socket` address) pointing at the host's QGS, split irqchip, TDVF via `-bios`,
//!   kernel vhost-vsock, VFIO GPUs behind PCIe root ports with iommufd.
//! * `snp`: KVM, a fixed vCPU model (it enters the measurement), memfd guest RAM, a `sev-snp-guest`
//!   object with `kernel-hashes=on` (kernel, initrd and command line are measured through OVMF's
//!   hash table), AmdSev OVMF via `-bios`, kernel vhost-vsock, VFIO GPUs.
//! * `sim`: TCG or KVM, shared memfd RAM as one NUMA node (vhost-user needs shareable memory),
//!   `vhost-user-vsock-pci` connected to a vhost-device-vsock process whose hybrid Unix socket the
//!   host uses as its vsock transport. The guest CID is a property of the backend, not of the QEMU
//!   device.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::config::{HostConfig, PlatformProfile, QgsAddress, SimAccel};
use crate::image::{FIRMWARE_SNP, FIRMWARE_TDX, LoadedImage};

/// Errors of building a launch plan.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A path cannot be passed to QEMU (not UTF-8, or a character QEMU's option syntax cannot carry).
    #[error("{what}: path {path} cannot be passed to QEMU ({reason})")]
    BadPath {
        /// Which path (config key or manifest field).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The profile needs firmware and neither host.toml nor the manifest names one.
    #[error(
        "qemu.firmware: the {0} profile needs firmware (TDVF for tdx, AmdSev OVMF for snp) and the manifest's firmware map has no \"{0}\" entry"
    )]
    NoFirmware(&'static str),
    /// The config does not describe a VM to launch (`vm.launch = false`).
    #[error("vm.launch is false: the agent does not launch a VM")]
    NotLaunched,
}

/// One program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    /// The program (path or name looked up in PATH).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

impl CommandLine {
    /// The command as one shell line, each option on its own continued line, quoted so that it can
    /// be pasted into a POSIX shell.
    pub fn to_shell(&self) -> String {
        let quote = |s: &str| {
            shlex::try_quote(s)
                .map(|c| c.into_owned())
                .unwrap_or_else(|_| format!("{s:?}"))
        };
        let mut out = quote(&self.program.to_string_lossy());
        let mut i = 0;
        while i < self.args.len() {
            out.push_str(" \\\n   ");
            // Keep an option and its value on one line.
            let a = &self.args[i];
            out.push(' ');
            out.push_str(&quote(a));
            if a.starts_with('-')
                && a.len() > 1
                && i + 1 < self.args.len()
                && !self.args[i + 1].starts_with('-')
            {
                out.push(' ');
                out.push_str(&quote(&self.args[i + 1]));
                i += 1;
            }
            i += 1;
        }
        out
    }
}

/// Everything needed to start the VM.
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    /// The profile.
    pub platform: PlatformProfile,
    /// vhost-device-vsock (sim only); started first, QEMU connects to its socket.
    pub vhost_vsock: Option<CommandLine>,
    /// The vhost-user control socket vhost-device-vsock creates (sim only).
    pub vhost_user_socket: Option<PathBuf>,
    /// The hybrid vsock Unix socket vhost-device-vsock creates (sim only).
    pub hybrid_socket: Option<PathBuf>,
    /// QEMU.
    pub qemu: CommandLine,
    /// The guest serial console log.
    pub serial_log: PathBuf,
    /// QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
    /// vhost-device-vsock's stdout and stderr (sim only).
    pub vhost_vsock_log: Option<PathBuf>,
}

impl LaunchPlan {
    /// The text `--dry-run` prints: each command, preceded by a comment line naming it.
    pub fn dry_run_text(&self) -> String {
        let mut out = String::new();
        if let Some(v) = &self.vhost_vsock {
            out.push_str(
                "# vhost-device-vsock (started first; QEMU connects to its vhost-user socket)\n",
            );
            out.push_str(&v.to_shell());
            out.push_str("\n\n");
        }
        out.push_str(&format!("# qemu ({} profile)\n", self.platform.as_str()));
        out.push_str(&self.qemu.to_shell());
        out.push('\n');
        out
    }
}

/// A UTF-8 path, for argv.
fn utf8<'a>(what: &'static str, p: &'a Path) -> Result<&'a str, LaunchError> {
    p.to_str().ok_or_else(|| LaunchError::BadPath {
        what,
        path: p.into(),
        reason: "not UTF-8",
    })
}

/// A path placed inside a QEMU `key=value,...` option: commas are doubled, as QEMU's option parser expects.
fn qemu_opt_path(what: &'static str, p: &Path) -> Result<String, LaunchError> {
    Ok(utf8(what, p)?.replace(',', ",,"))
}

/// A path placed inside vhost-device-vsock's `--vm k=v,...`, which has no comma escape.
fn vm_opt_path(what: &'static str, p: &Path) -> Result<String, LaunchError> {
    let s = utf8(what, p)?;
    if s.contains(',') || s.contains('=') {
        return Err(LaunchError::BadPath {
            what,
            path: p.into(),
            reason: "vhost-device-vsock cannot take ',' or '=' in a path",
        });
    }
    Ok(s.to_string())
}

/// Builds the command lines for `cfg` and the image's manifest. `kvm_usable` answers the sim profile's
/// `accel = "auto"` (whether /dev/kvm can be opened); it is a parameter so tests are deterministic.
pub fn plan(
    cfg: &HostConfig,
    image: &LoadedImage,
    kvm_usable: impl Fn() -> bool,
) -> Result<LaunchPlan, LaunchError> {
    if !cfg.vm.launch {
        return Err(LaunchError::NotLaunched);
    }
    let vm = &cfg.vm;
    let platform = vm.platform;
    let state = &vm.state_dir;
    let serial_log = state.join(format!("{}-serial.log", vm.name));
    let qemu_log = state.join(format!("{}-qemu.log", vm.name));
    let arts = &image.manifest.artifacts;
    let cvm = !platform.is_sim();
    // Confidential guests only accept virtio devices that use the DMA API (bounce buffers in shared memory).
    let virtio_cvm = if cvm {
        ",disable-legacy=on,iommu_platform=on"
    } else {
        ""
    };

    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("{},debug-threads=on", vm.name)]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);

    let mib = vm.memory_mib;
    let mut vhost_vsock = None;
    let mut vhost_user_socket = None;
    let mut hybrid_socket = None;
    let mut vhost_vsock_log = None;
    match platform {
        PlatformProfile::Tdx => {
            let qgs = match cfg.tdx.qgs_address().expect("validated") {
                QgsAddress::Vsock { cid, port } => {
                    serde_json::json!({"type": "vsock", "cid": cid.to_string(), "port": port.to_string()})
                }
                QgsAddress::Unix(p) => {
                    serde_json::json!({"type": "unix", "path": utf8("tdx.qgs", &p)?})
                }
            };
            let tdx = serde_json::json!({"qom-type": "tdx-guest", "id": "tdx0", "quote-generation-socket": qgs});
            push(&["-accel", "kvm"]);
            push(&[
                "-machine",
                "q35,kernel-irqchip=split,confidential-guest-support=tdx0",
            ]);
            push(&["-cpu", "host"]);
            push(&["-object", &tdx.to_string()]);
            push(&["-smp", &vm.vcpus.to_string()]);
            push(&["-m", &format!("{mib}M")]);
        }
        PlatformProfile::Snp => {
            let policy = cfg.snp.policy_value().expect("validated");
            push(&["-accel", "kvm"]);
            push(&[
                "-machine",
                "q35,confidential-guest-support=sev0,memory-backend=ram0",
            ]);
            push(&["-cpu", &cfg.snp.cpu]);
            push(&[
                "-object",
                &format!("memory-backend-memfd,id=ram0,size={mib}M,share=true,prealloc=false"),
            ]);
            push(&[
                "-object",
                &format!(
                    "sev-snp-guest,id=sev0,cbitpos={},reduced-phys-bits={},kernel-hashes=on,policy={policy:#x}",
                    cfg.snp.cbitpos, cfg.snp.reduced_phys_bits
                ),
            ]);
            push(&["-smp", &vm.vcpus.to_string()]);
            push(&["-m", &format!("{mib}M")]);
        }
        PlatformProfile::Sim | PlatformProfile::SimSnp => {
            let kvm = match cfg.sim.accel {
                SimAccel::Kvm => true,
                SimAccel::Tcg => false,
                SimAccel::Auto => kvm_usable(),
            };
            if kvm {
                push(&["-accel", "kvm", "-cpu", "host"]);
            } else {
                push(&["-accel", "tcg", "-cpu", "max"]);
            }
            push(&["-machine", "q35"]);
            push(&["-smp", &vm.vcpus.to_string()]);
            push(&["-m", &format!("{mib}M")]);
            push(&[
                "-object",
                &format!("memory-backend-memfd,id=mem0,size={mib}M,share=on"),
            ]);
            push(&["-numa", "node,memdev=mem0"]);
        }
    }

    // sim boots with QEMU's default SeaBIOS unless host.toml names firmware: the manifest's TDVF
    // and AmdSev OVMF images only boot inside their TEE.
    let role = match platform {
        PlatformProfile::Tdx => Some(FIRMWARE_TDX),
        PlatformProfile::Snp => Some(FIRMWARE_SNP),
        PlatformProfile::Sim | PlatformProfile::SimSnp => None,
    };
    let firmware = cfg.qemu.firmware.clone().or_else(|| {
        role.and_then(|r| image.firmware(r))
            .map(|f| image.path_of(f))
    });
    match (&firmware, platform) {
        (Some(fw), _) => push(&["-bios", utf8("qemu.firmware", fw)?]),
        (None, PlatformProfile::Tdx) => return Err(LaunchError::NoFirmware("tdx")),
        (None, PlatformProfile::Snp) => return Err(LaunchError::NoFirmware("snp")),
        (None, PlatformProfile::Sim | PlatformProfile::SimSnp) => {}
    }
    push(&[
        "-kernel",
        utf8("artifacts.kernel", &image.path_of(&arts.kernel))?,
    ]);
    push(&[
        "-initrd",
        utf8("artifacts.initramfs", &image.path_of(&arts.initramfs))?,
    ]);
    push(&["-append", &image.manifest.kernel_cmdline]);
    push(&[
        "-chardev",
        &format!(
            "file,id=serial0,path={},append=on",
            qemu_opt_path("vm.state_dir", &serial_log)?
        ),
    ]);
    push(&["-serial", "chardev:serial0"]);

    let disks = [
        ("rootfs", "artifacts.rootfs", &arts.rootfs),
        ("model", "artifacts.model", &arts.model),
        ("config", "artifacts.config_disk", &arts.config_disk),
    ];
    for (id, what, artifact) in disks {
        let file = qemu_opt_path(what, &image.path_of(artifact))?;
        push(&[
            "-drive",
            &format!("if=none,id={id},file={file},format=raw,readonly=on"),
        ]);
        push(&[
            "-device",
            &format!("virtio-blk-pci,drive={id},serial={id}{virtio_cvm}"),
        ]);
    }

    match platform {
        PlatformProfile::Tdx | PlatformProfile::Snp => {
            push(&[
                "-device",
                &format!("vhost-vsock-pci,guest-cid={}{virtio_cvm}", vm.guest_cid),
            ]);
            if !vm.gpus.is_empty() {
                push(&["-object", "iommufd,id=iommufd0"]);
                for (i, gpu) in vm.gpus.iter().enumerate() {
                    push(&[
                        "-device",
                        &format!("pcie-root-port,id=rp{i},bus=pcie.0,chassis={}", i + 1),
                    ]);
                    push(&[
                        "-device",
                        &format!("vfio-pci,host={gpu},bus=rp{i},iommufd=iommufd0"),
                    ]);
                }
                // GPU BARs are large; let OVMF place them in a 256 GiB 64-bit MMIO window.
                push(&["-fw_cfg", "name=opt/ovmf/X-PciMmio64Mb,string=262144"]);
            }
        }
        PlatformProfile::Sim | PlatformProfile::SimSnp => {
            let vu_sock = state.join(format!("{}-vhost-user-vsock.sock", vm.name));
            let hybrid = cfg.uds_path();
            push(&[
                "-chardev",
                &format!(
                    "socket,id=vsock0,path={}",
                    qemu_opt_path("vm.state_dir", &vu_sock)?
                ),
            ]);
            push(&["-device", "vhost-user-vsock-pci,chardev=vsock0"]);
            vhost_vsock = Some(CommandLine {
                program: cfg.sim.vhost_device_vsock.clone(),
                args: vec![
                    "--vm".into(),
                    format!(
                        "guest-cid={},socket={},uds-path={}",
                        vm.guest_cid,
                        vm_opt_path("vm.state_dir", &vu_sock)?,
                        vm_opt_path("transport.uds_path", &hybrid)?
                    ),
                ],
            });
            vhost_vsock_log = Some(state.join(format!("{}-vhost-device-vsock.log", vm.name)));
            vhost_user_socket = Some(vu_sock);
            hybrid_socket = Some(hybrid);
        }
    }

    Ok(LaunchPlan {
        platform,
        vhost_vsock,
        vhost_user_socket,
        hybrid_socket,
        qemu: CommandLine {
            program: cfg.qemu.binary.clone(),
            args: a,
        },
        serial_log,
        qemu_log,
        vhost_vsock_log,
    })
}

/// The sim profile's `accel = "auto"`: KVM when `/dev/kvm` can be opened for reading and writing
/// and the CPU advertises hardware virtualisation (`vmx` or `svm` in /proc/cpuinfo). Some sandboxes
/// expose a /dev/kvm on which real guests cannot run; without the CPU flag, TCG is the safe choice.
pub fn kvm_usable() -> bool {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    dev && hw
}

/// Whether a program name or path resolves to an executable file (for early, clear errors).
pub fn find_program(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return is_exec(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_exec(p))
}

/// `program` as an `OsStr`, for `Command::new`.
pub(crate) fn program_os(c: &CommandLine) -> &OsStr {
    c.program.as_os_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_text_quotes_and_pairs_options() {
        let c = CommandLine {
            program: "/usr/bin/qemu".into(),
            args: vec![
                "-append".into(),
                "console=ttyS0 ro".into(),
                "-no-reboot".into(),
                "-m".into(),
                "1M".into(),
            ],
        };
        assert_eq!(
            c.to_shell(),
            "/usr/bin/qemu \\\n    -append 'console=ttyS0 ro' \\\n    -no-reboot \\\n    -m 1M"
        );
        assert_eq!(
            shlex::split(&c.to_shell().replace("\\\n", "")).unwrap()[1..],
            c.args[..]
        );
    }

    #[test]
    fn commas_in_paths_are_escaped_or_rejected() {
        assert_eq!(qemu_opt_path("x", Path::new("/a,b/c")).unwrap(), "/a,,b/c");
        assert!(matches!(
            vm_opt_path("x", Path::new("/a,b")),
            Err(LaunchError::BadPath { what: "x", .. })
        ));
    }
}
