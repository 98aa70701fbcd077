//! Command lines for the VM: QEMU for the `tdx`, `snp` and `sim` profiles, and vhost-device-vsock for `sim`.
//!
//! Building a [`LaunchPlan`] reads the config, the manifest and, for GPUs, their BAR sizes from
//! sysfs (under a root that tests replace), and returns argv vectors, so `--dry-run` prints exactly
//! what `run` executes and golden tests pin it. It refuses what would boot into measurements no
//! client accepts: a VM shape the manifest has no expected measurement for, firmware the manifest
//! does not list, and (SNP) a guest whose RAM and GPU BARs do not fit the firmware's 40-bit
//! physical address space.
//!
//! Common to every profile: direct kernel boot (`-kernel`, `-initrd`, `-append` with the manifest's
//! measured command line), the rootfs, model and config disks attached read-only as virtio-blk
//! disks in that order (serials `rootfs`, `model`, `config`: the guest init finds them by serial,
//! docs/image.md "Disks"), the guest serial console appended to
//! `<state_dir>/<name>-serial.log`, `-no-reboot` so that a guest that powers off or panics ends
//! QEMU (the supervisor then sees the failure), and no default devices.
//!
//! * `tdx` and `snp` use the versioned machine type [`CVM_MACHINE_TYPE`] with `hpet=off` (tdx:
//!   also `smm=off,pic=off`, as TDX forces them and as the RTMR0 calculator captured), so the
//!   ACPI tables (measured into RTMR0 on TDX) do not change with a QEMU upgrade, and GPUs are
//!   passed through with `rombar=0` (no option ROM runs in the guest) behind a 64-bit MMIO window
//!   (`opt/ovmf/X-PciMmio64Mb`) sized from their BARs; `run` checks the QEMU version first.
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
use std::fmt;
use std::path::{Path, PathBuf};

use chrysalis_attestation::manifest::VmShape;
use chrysalis_attestation::measure::image::DEFAULT_SNP_GUEST_FEATURES;
use chrysalis_attestation::measure::snp::SnpVcpuType;
use chrysalis_attestation::measure::tdx_acpi::{TDX_MACHINE_OPTIONS, TDX_VMM};

use crate::config::{HostConfig, PlatformProfile, QgsAddress, SimAccel};
use crate::image::{FIRMWARE_SNP, FIRMWARE_TDX};
use chrysalis_attestation::manifest::ImageDir;

/// The QEMU machine type of the `tdx` and `snp` profiles: the one whose ACPI tables the RTMR0
/// calculator models ([`TDX_VMM`]). A versioned type keeps the guest's ACPI tables, and with them
/// RTMR0 on TDX, the same when QEMU is upgraded; a newer QEMU still offers it.
pub const CVM_MACHINE_TYPE: &str = TDX_VMM.machine_type;

/// The oldest QEMU with upstream TDX support (it also offers [`CVM_MACHINE_TYPE`]).
pub const CVM_MIN_QEMU: QemuVersion = QemuVersion {
    major: 10,
    minor: 1,
    micro: 0,
};

/// The guest physical address width the AmdSev OVMF build maps: RAM and the 64-bit PCI window of
/// an SNP guest must end below 2^40.
pub const SNP_GUEST_PHYS_BITS: u32 = 40;

/// OVMF's 64-bit PCI MMIO window when no GPU is passed through (its PcdPciMmio64Size default).
const OVMF_DEFAULT_MMIO64: u64 = 32 << 30;

/// Room left in the 64-bit window beside the GPUs' BARs (virtio BARs, alignment slack).
const MMIO64_RESERVE: u64 = 1 << 30;

/// The machine type each profile launches (`sim` keeps the unversioned `q35`).
pub fn machine_type(platform: PlatformProfile) -> &'static str {
    match platform {
        PlatformProfile::Tdx | PlatformProfile::Snp => CVM_MACHINE_TYPE,
        PlatformProfile::Sim | PlatformProfile::SimSnp => "q35",
    }
}

/// The oldest QEMU a profile runs on; `None` for `sim`, which runs on any recent QEMU.
pub fn min_qemu(platform: PlatformProfile) -> Option<QemuVersion> {
    match platform {
        PlatformProfile::Tdx | PlatformProfile::Snp => Some(CVM_MIN_QEMU),
        PlatformProfile::Sim | PlatformProfile::SimSnp => None,
    }
}

/// A QEMU release, as `qemu-system-x86_64 --version` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

impl QemuVersion {
    /// Parses the first line of `--version` (`QEMU emulator version 10.1.0 (Debian 1:10.1.0+ds-1)`).
    pub fn parse_version_output(text: &str) -> Option<Self> {
        let rest = text.lines().next()?.split("version ").nth(1)?;
        let word = rest.split_whitespace().next()?;
        let mut it = word.split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = it.next()??;
        let minor = it.next()??;
        let micro = it.next().flatten().unwrap_or(0);
        Some(Self {
            major,
            minor,
            micro,
        })
    }
}

/// Runs `program --version` and parses it.
pub fn qemu_version(program: &Path) -> Result<QemuVersion, LaunchError> {
    let unusable = |reason: String| LaunchError::QemuUnusable {
        program: program.into(),
        reason,
    };
    let out = std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| unusable(format!("cannot run it: {e}")))?;
    if !out.status.success() {
        return Err(unusable(format!("--version exited with {}", out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    QemuVersion::parse_version_output(&text)
        .ok_or_else(|| unusable(format!("--version printed no version: {:?}", text.trim())))
}

/// Checks `program`'s version against what `platform` needs; returns the version found.
pub fn check_qemu_version(
    platform: PlatformProfile,
    program: &Path,
) -> Result<QemuVersion, LaunchError> {
    let found = qemu_version(program)?;
    if let Some(need) = min_qemu(platform)
        && found < need
    {
        return Err(LaunchError::QemuTooOld {
            program: program.into(),
            platform: platform.as_str(),
            found,
            need,
        });
    }
    Ok(found)
}

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
    /// The manifest has no expected measurement for this VM shape: the guest would boot into
    /// measurements that match no client's pin.
    #[error(
        "vm: the image manifest has no expected {platform} measurement for {shape}; it has: {available}. Use one of those shapes, or compute this shape's measurement ({measure}) and publish it in the manifest before serving"
    )]
    UnmeasuredShape {
        /// `tdx` or `snp`.
        platform: &'static str,
        /// The configured shape, in words.
        shape: String,
        /// The shapes the manifest has, in words (or `none`).
        available: String,
        /// The `chrysalis measure` command that computes this shape's measurement.
        measure: String,
    },
    /// A GPU's BARs could not be read from sysfs.
    #[error("vm.gpus: reading the BARs of {gpu} from {path} (is the device present?)")]
    GpuBars {
        /// The PCI address.
        gpu: String,
        /// The sysfs `resource` file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A sysfs `resource` file that does not parse.
    #[error("vm.gpus: {path}: line {line} is not \"start end flags\" in hex")]
    BadBars {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// An SNP guest's RAM and PCI window do not fit the firmware's physical address space.
    #[error(
        "vm: an snp guest with {memory_mib} MiB of RAM and a {mmio64_mib} MiB 64-bit PCI window (GPU BARs) would end at guest physical address {end:#x}, beyond the {bits}-bit address space the AmdSev OVMF firmware maps; use less memory or fewer GPUs"
    )]
    SnpAddressSpace {
        /// Guest RAM.
        memory_mib: u64,
        /// The 64-bit MMIO window.
        mmio64_mib: u64,
        /// The first address past the window.
        end: u64,
        /// [`SNP_GUEST_PHYS_BITS`].
        bits: u32,
    },
    /// The QEMU binary could not be run or did not print a version.
    #[error("qemu.binary: {program}: {reason}")]
    QemuUnusable {
        /// The binary.
        program: PathBuf,
        /// Why.
        reason: String,
    },
    /// The QEMU binary is older than the profile needs.
    #[error(
        "qemu.binary: {program} is QEMU {found}; the {platform} profile needs QEMU >= {need} (machine type {CVM_MACHINE_TYPE})"
    )]
    QemuTooOld {
        /// The binary.
        program: PathBuf,
        /// The profile.
        platform: &'static str,
        /// The version found.
        found: QemuVersion,
        /// The oldest accepted.
        need: QemuVersion,
    },
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
/// GPU BARs are read from the real `/sys`; see [`plan_in`].
pub fn plan(
    cfg: &HostConfig,
    image: &ImageDir,
    kvm_usable: impl Fn() -> bool,
) -> Result<LaunchPlan, LaunchError> {
    plan_in(cfg, image, kvm_usable, Path::new("/"))
}

/// [`plan`], reading GPU BARs from `<root>/sys/bus/pci/devices/<addr>/resource` (tests pass a
/// directory tree that fakes sysfs).
pub fn plan_in(
    cfg: &HostConfig,
    image: &ImageDir,
    kvm_usable: impl Fn() -> bool,
    root: &Path,
) -> Result<LaunchPlan, LaunchError> {
    if !cfg.vm.launch {
        return Err(LaunchError::NotLaunched);
    }
    check_measured_shape(cfg, image)?;
    let mmio64 = if cfg.vm.gpus.is_empty() {
        None
    } else {
        let mut bars = Vec::new();
        for gpu in &cfg.vm.gpus {
            bars.push(read_bars(root, gpu)?);
        }
        Some(mmio64_window(&bars))
    };
    if cfg.vm.platform == PlatformProfile::Snp {
        snp_address_space(cfg.vm.memory_mib, mmio64.unwrap_or(OVMF_DEFAULT_MMIO64))?;
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
                &format!(
                    "{CVM_MACHINE_TYPE},kernel-irqchip=split,confidential-guest-support=tdx0,{TDX_MACHINE_OPTIONS}"
                ),
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
                &format!(
                    "{CVM_MACHINE_TYPE},confidential-guest-support=sev0,memory-backend=ram0,hpet=off"
                ),
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
    // tdx and snp boot the manifest's firmware: qemu.firmware may only name a copy of it (`check`
    // and `run` compare its SHA-256), and without a manifest entry nothing can be pinned.
    let manifest_fw = role
        .and_then(|r| image.firmware(r))
        .map(|f| image.path_of(f));
    if let Some(r) = role
        && manifest_fw.is_none()
    {
        return Err(LaunchError::NoFirmware(if r == FIRMWARE_TDX {
            "tdx"
        } else {
            "snp"
        }));
    }
    if let Some(fw) = cfg.qemu.firmware.clone().or(manifest_fw) {
        push(&["-bios", utf8("qemu.firmware", &fw)?]);
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
                    // rombar=0: an option ROM would be measured into RTMR1 (TDX) or run
                    // unmeasured (SNP); the driver does not need it.
                    push(&[
                        "-device",
                        &format!("vfio-pci,host={gpu},bus=rp{i},iommufd=iommufd0,rombar=0"),
                    ]);
                }
                let window_mib = mmio64.expect("GPUs were read") >> 20;
                push(&[
                    "-fw_cfg",
                    &format!("name=opt/ovmf/X-PciMmio64Mb,string={window_mib}"),
                ]);
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

/// The shape in words, as errors name it.
fn describe_shape(shape: &VmShape, cpu: Option<&str>) -> String {
    match cpu {
        Some(cpu) => format!("{} vCPUs ({cpu}), {} MiB", shape.vcpus, shape.memory_mib),
        None => format!("{} vCPUs, {} MiB", shape.vcpus, shape.memory_mib),
    }
}

/// Refuses a tdx or snp (vCPUs, memory, CPU model) the manifest has no expected measurement for.
/// TDX guests run `-cpu host` (the TD's CPUID is fixed by its attributes, not by a model); SNP
/// entries must also match the CPU model and the VMSA features the launcher sets.
pub fn check_measured_shape(cfg: &HostConfig, image: &ImageDir) -> Result<(), LaunchError> {
    let shape = VmShape {
        vcpus: cfg.vm.vcpus,
        memory_mib: cfg.vm.memory_mib,
    };
    let expected = image.manifest.expected_measurements.as_ref();
    let measure = |platform: &str, cpu: &str| {
        format!(
            "chrysalis measure --manifest {} --platform {platform} --vcpus {} --memory {}{cpu}",
            image.path.display(),
            shape.vcpus,
            shape.memory_mib
        )
    };
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join("; ")
        }
    };
    match cfg.vm.platform {
        PlatformProfile::Sim | PlatformProfile::SimSnp => Ok(()),
        PlatformProfile::Tdx => {
            let entries: Vec<_> = expected
                .iter()
                .flat_map(|e| e.tdx.iter())
                .filter(|e| e.firmware == FIRMWARE_TDX)
                .collect();
            if entries.iter().any(|e| e.shape == shape) {
                return Ok(());
            }
            Err(LaunchError::UnmeasuredShape {
                platform: "tdx",
                shape: describe_shape(&shape, None),
                available: list(
                    entries
                        .iter()
                        .map(|e| describe_shape(&e.shape, None))
                        .collect(),
                ),
                measure: measure("tdx", ""),
            })
        }
        PlatformProfile::Snp => {
            let cpu: Option<SnpVcpuType> = cfg.snp.cpu.parse().ok();
            let entries: Vec<_> = expected
                .iter()
                .flat_map(|e| e.snp.iter())
                .filter(|e| {
                    e.firmware == FIRMWARE_SNP && e.guest_features == DEFAULT_SNP_GUEST_FEATURES
                })
                .collect();
            let same_cpu = |t: &str| cpu.is_some() && t.parse::<SnpVcpuType>().ok() == cpu;
            if entries
                .iter()
                .any(|e| e.shape == shape && same_cpu(&e.vcpu_type))
            {
                return Ok(());
            }
            Err(LaunchError::UnmeasuredShape {
                platform: "snp",
                shape: describe_shape(&shape, Some(cfg.snp.cpu.as_str())),
                available: list(
                    entries
                        .iter()
                        .map(|e| describe_shape(&e.shape, Some(e.vcpu_type.as_str())))
                        .collect(),
                ),
                measure: measure("snp", &format!(" --vcpu-type {}", cfg.snp.cpu)),
            })
        }
    }
}

/// The launch digest of the configured SNP shape, computed from the manifest's (verified) firmware,
/// kernel, initramfs and command line, for an owner who wants to publish a new shape.
pub fn snp_digest_for_config(
    cfg: &HostConfig,
    image: &ImageDir,
) -> Result<chrysalis_attestation::Measurement, Box<dyn std::error::Error + Send + Sync>> {
    use chrysalis_attestation::evidence::Platform;
    use chrysalis_attestation::measure::image::{ImageInputs, SnpShape, snp_for_shape};
    let inputs = ImageInputs::from_dir(image, &[Platform::Snp])?;
    let shape = SnpShape {
        shape: VmShape {
            vcpus: cfg.vm.vcpus,
            memory_mib: cfg.vm.memory_mib,
        },
        vcpu_type: cfg.snp.cpu.parse()?,
        guest_features: DEFAULT_SNP_GUEST_FEATURES,
    };
    Ok(snp_for_shape(&inputs, &shape, None)?.measurement)
}

/// One memory BAR of a PCI device, from sysfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// BAR index (0-5).
    pub index: usize,
    /// Size in bytes.
    pub size: u64,
    /// A 64-bit BAR (placed in the 64-bit MMIO window).
    pub is_64: bool,
}

// Linux's IORESOURCE_* flags in sysfs `resource`.
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_MEM_64: u64 = 0x0010_0000;

/// The memory BARs of `gpu`, from `<root>/sys/bus/pci/devices/<gpu>/resource` (one line per
/// resource, `start end flags` in hex; the first six are the BARs).
pub fn read_bars(root: &Path, gpu: &str) -> Result<Vec<Bar>, LaunchError> {
    let path = root.join("sys/bus/pci/devices").join(gpu).join("resource");
    let text = std::fs::read_to_string(&path).map_err(|source| LaunchError::GpuBars {
        gpu: gpu.into(),
        path: path.clone(),
        source,
    })?;
    let mut bars = Vec::new();
    for (i, line) in text.lines().enumerate().take(6) {
        let bad = || LaunchError::BadBars {
            path: path.clone(),
            line: i + 1,
        };
        let nums: Vec<u64> = line
            .split_whitespace()
            .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let [start, end, flags] = nums[..] else {
            return Err(bad());
        };
        if flags & IORESOURCE_MEM == 0 || end <= start {
            continue;
        }
        bars.push(Bar {
            index: i,
            size: end - start + 1,
            is_64: flags & IORESOURCE_MEM_64 != 0,
        });
    }
    Ok(bars)
}

/// The 64-bit MMIO window (bytes) OVMF must reserve for `gpus`: each GPU sits behind its own root
/// port, whose bridge window holds its 64-bit BARs (largest first, naturally aligned) and is
/// aligned to its largest BAR; the windows are packed largest alignment first, and
/// [`MMIO64_RESERVE`] is added for everything else. Rounded up to 1 GiB.
pub fn mmio64_window(gpus: &[Vec<Bar>]) -> u64 {
    let mut windows: Vec<(u64, u64)> = gpus
        .iter()
        .map(|bars| {
            let mut sizes: Vec<u64> = bars.iter().filter(|b| b.is_64).map(|b| b.size).collect();
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            let align = sizes.first().copied().unwrap_or(1).max(1 << 20);
            (align, sizes.iter().sum::<u64>())
        })
        .collect();
    windows.sort_unstable_by_key(|w| std::cmp::Reverse(w.0));
    let mut end = 0u64;
    for (align, size) in windows {
        end = end.div_ceil(align) * align + size;
    }
    (end + MMIO64_RESERVE).div_ceil(1 << 30) << 30
}

/// Where OVMF puts an SNP guest's RAM and 64-bit PCI window, and whether it fits
/// [`SNP_GUEST_PHYS_BITS`]. q35 keeps 2 GiB of RAM below 4 GiB when the guest has at least
/// 2.75 GiB (all of it otherwise) and maps the rest from 4 GiB; OVMF starts the window at the next
/// 1 GiB boundary above RAM, aligned to the largest power of two not above its size. Returns the
/// first address past the window.
pub fn snp_address_space(memory_mib: u64, mmio64: u64) -> Result<u64, LaunchError> {
    const GIB: u64 = 1 << 30;
    let mem = memory_mib << 20;
    let high = if mem >= 0xb000_0000 { mem - 2 * GIB } else { 0 };
    let ram_end = 4 * GIB + high;
    let align = 1u64 << (63 - mmio64.max(1).leading_zeros());
    let base = ram_end.div_ceil(GIB) * GIB;
    let base = base.div_ceil(align) * align;
    let end = base + mmio64;
    if end > 1u64 << SNP_GUEST_PHYS_BITS {
        return Err(LaunchError::SnpAddressSpace {
            memory_mib,
            mmio64_mib: mmio64 >> 20,
            end,
            bits: SNP_GUEST_PHYS_BITS,
        });
    }
    Ok(end)
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
    fn qemu_versions_parse() {
        let v = |t| QemuVersion::parse_version_output(t);
        assert_eq!(
            v("QEMU emulator version 10.1.0 (Debian 1:10.1.0+ds-1)\nCopyright"),
            Some(QemuVersion {
                major: 10,
                minor: 1,
                micro: 0
            })
        );
        assert_eq!(
            v("QEMU emulator version 9.2.50 (v9.2.0-1234-gabc)"),
            Some(QemuVersion {
                major: 9,
                minor: 2,
                micro: 50
            })
        );
        assert_eq!(
            v("QEMU emulator version 10.1"),
            Some(QemuVersion {
                major: 10,
                minor: 1,
                micro: 0
            })
        );
        assert_eq!(v("not qemu"), None);
        assert!(v("QEMU emulator version 10.0.2").unwrap() < CVM_MIN_QEMU);
    }

    fn bar(size: u64) -> Bar {
        Bar {
            index: 1,
            size,
            is_64: true,
        }
    }

    #[test]
    fn the_mmio64_window_holds_the_bars_of_each_root_port() {
        const G: u64 = 1 << 30;
        const M: u64 = 1 << 20;
        let h100 = vec![
            Bar {
                index: 0,
                size: 16 * M,
                is_64: false,
            },
            bar(128 * G),
            bar(32 * M),
        ];
        // 128 GiB + 32 MiB, + 1 GiB, rounded up.
        assert_eq!(mmio64_window(std::slice::from_ref(&h100)), 130 * G);
        // The second root port's window starts at the next 128 GiB boundary.
        assert_eq!(mmio64_window(&[h100.clone(), h100]), 386 * G);
        assert_eq!(mmio64_window(&[vec![]]), G);
    }

    #[test]
    fn snp_guests_must_end_below_1_tib() {
        const G: u64 = 1 << 30;
        // 64 GiB RAM ends at 66 GiB; a 130 GiB window is aligned to 128 GiB.
        assert_eq!(snp_address_space(65536, 130 * G).unwrap(), 258 * G);
        // Small guests keep all RAM below 4 GiB.
        assert_eq!(snp_address_space(2048, 32 * G).unwrap(), 64 * G);
        // 1 TiB of RAM does not fit.
        assert!(matches!(
            snp_address_space(1 << 20, 32 * G),
            Err(LaunchError::SnpAddressSpace { bits: 40, .. })
        ));
        // A window that ends exactly at 2^40 fits; one more GiB does not.
        assert_eq!(snp_address_space(2048, 512 * G).unwrap(), 1024 * G);
        assert!(snp_address_space(2048, 513 * G).is_err());
    }

    #[test]
    fn sysfs_resource_lines_become_bars() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sys/bus/pci/devices/0000:3b:00.0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("resource"),
            "0x00000000e2000000 0x00000000e2ffffff 0x0000000000040200\n\
             0x0000382000000000 0x0000383fffffffff 0x000000000014220c\n\
             0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
             0x000000000000e000 0x000000000000e07f 0x0000000000040101\n",
        )
        .unwrap();
        let bars = read_bars(dir.path(), "0000:3b:00.0").unwrap();
        assert_eq!(
            bars,
            [
                Bar {
                    index: 0,
                    size: 16 << 20,
                    is_64: false
                },
                Bar {
                    index: 1,
                    size: 128 << 30,
                    is_64: true
                },
            ]
        );
        std::fs::write(d.join("resource"), "0x1 zz 0x200\n").unwrap();
        assert!(matches!(
            read_bars(dir.path(), "0000:3b:00.0"),
            Err(LaunchError::BadBars { line: 1, .. })
        ));
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
